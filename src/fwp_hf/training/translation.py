"""Train and evaluate an FWP encoder–decoder on translation: the library behind `scripts/train_translation.py`.

Modelled on transformers' `examples/pytorch/translation/run_translation.py`: three argument
dataclasses parsed by `HfArgumentParser` (from a YAML/JSON file in `configs/translation/`, flags, or
a file followed by flags that override it); data from the Hub (`dataset_name`) or JSON-lines files
``{"translation": {"en": ..., "fr": ...}}``; a sentencepiece tokenizer trained on both sides of the
training split unless one is given; `Seq2SeqTrainer` with `predict_with_generate` (greedy or beam
search), BLEU and chrF through `evaluate` (the Hub's "sacrebleu" and "chrf" modules, or offline the
same modules shipped in `fwp_hf.training.evaluate_metrics`), checkpoints and resuming. The test split
is scored together with a copy-the-source baseline on the same references.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np
import pyarrow.compute as pc
from torch.utils.data import SequentialSampler
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_utils import has_length

from .. import CROSS_ATTENTION_TYPES, FWPConfig, FWPForConditionalGeneration
from ..shared.cli import argument_errors_exit
from . import common
from .data_files import check_data_file
from .evaluate_metrics import METRICS_DIR

logger = logging.getLogger(__name__)

DATA_FILE_SUFFIXES = (".json", ".jsonl")
PREDICTIONS_FILE = "test_predictions.jsonl"
GENERATED_PREDICTIONS_FILE = "generated_predictions.txt"
EVALUATE_RESULTS_FILE = "evaluate_results.json"  # evaluate.save's record of the run's metrics
# The translation metrics: `evaluate` module name on the Hub -> the equivalent module fwp_hf ships.
TRANSLATION_METRICS = {"sacrebleu": METRICS_DIR / "sacrebleu.py", "chrf": METRICS_DIR / "chrf.py"}
TRUNCATED_SOURCE, TRUNCATED_TARGET = "source_truncated", "target_truncated"
SPLIT_FLAGS = {"train": "do_train", "validation": "do_eval", "test": "do_predict"}


@dataclass
class ModelArguments(common.BaseModelArguments):
    """The model: a new FWP encoder–decoder from these fields, or `model_name_or_path` to start from.

    `num_hidden_layers` and `attention_type` describe the encoder; the decoder's fields follow.
    """

    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = (
        *common.BaseModelArguments.CONFIG_FIELDS,
        "decoder_attention_type",
        "cross_attention_type",
        "num_decoder_layers",
    )

    num_hidden_layers: int = field(default=3, metadata={"help": "Encoder layers."})
    decoder_attention_type: str | None = field(
        default=None, metadata={"help": "Decoder self-attention token mixer (default: attention_type)."}
    )
    cross_attention_type: str = field(
        default="softmax",
        metadata={"help": f"Decoder attention over the encoder: {', '.join(CROSS_ATTENTION_TYPES)}."},
    )
    num_decoder_layers: int = field(default=3, metadata={"help": "Decoder layers."})


@dataclass
class DataTrainingArguments:
    """The data, its preprocessing and the decoding for evaluation."""

    source_lang: str | None = field(
        default=None, metadata={"help": "Source language key of the 'translation' records, e.g. en."}
    )
    target_lang: str | None = field(default=None, metadata={"help": "Target language key, e.g. fr."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset with a 'translation' column, e.g. wmt14."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, e.g. de-en."})
    train_file: str | None = field(
        default=None, metadata={"help": "JSON-lines file of {\"translation\": {lang: text}} records."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, same format."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, same format."})
    max_source_length: int = field(
        default=128,
        metadata={"help": "Source tokens kept (with </s>); longer sources are truncated (counted in the metrics)."},
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Target tokens kept (with </s>) in training; longer ones are truncated."}
    )
    val_max_target_length: int | None = field(
        default=None, metadata={"help": "Maximum generated length in evaluation and test (default: max_target_length)."}
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beam size of evaluation and test (default: generation_num_beams or 1)."}
    )
    source_prefix: str = field(default="", metadata={"help": "Text put before every source (T5-style task prefix)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many training pairs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many validation pairs."}
    )
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first this many test pairs."}
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    num_sample_translations: int = field(default=5, metadata={"help": "Test translations printed at the end."})
    max_train_minutes: float | None = field(
        default=None,
        metadata={
            "help": "Time box: stop training (saving a checkpoint) after this many minutes, even before max_steps."
        },
    )


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments)


def parse_translation_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments]:
    """Parse ``[config.yaml|config.json] [--flag value ...]``: flags override the file's values.

    An unknown key in the file raises a ValueError naming it.
    """
    return common.parse_run_arguments(ARGUMENT_CLASSES, argv)


def check_translation_split(dataset: datasets.Dataset, split: str, source_lang: str, target_lang: str) -> None:
    """Raise a ValueError naming the problem when a record of `dataset` lacks a source or target text.

    When every record has the same languages (Hub datasets, clean files) only the Arrow column is read,
    which is cheap on large datasets too; records with differing keys are checked one by one.
    """
    if len(dataset) == 0:
        raise ValueError(f"the {split} split has no records")
    if "translation" not in dataset.column_names:
        raise ValueError(f"the {split} split has no 'translation' column (columns: {', '.join(dataset.column_names)}); "
                         "expected records {\"translation\": {lang: text}}")
    feature = dataset.features["translation"]
    if isinstance(feature, (datasets.Translation, dict)):  # one struct type: check the Arrow column
        present = list(feature.languages) if isinstance(feature, datasets.Translation) else list(feature)
        _check_languages_present(present, split, source_lang, target_lang)
        for lang in (source_lang, target_lang):
            texts = pc.struct_field(dataset.data.column("translation"), lang)
            if texts.null_count:
                first = pc.index(pc.is_null(texts), True).as_py()
                raise ValueError(f"record {first} (counting from 0) of the {split} split has no {lang!r} text "
                                 f"({texts.null_count} record(s) lack it; languages present: {', '.join(present)})")
        return
    # Records with differing keys load as free-form JSON objects: check them one by one.
    pairs = dataset["translation"]
    for index, pair in enumerate(pairs):
        if not isinstance(pair, dict):
            raise ValueError(f"record {index} (counting from 0) of the {split} split has a 'translation' "
                             f"{type(pair).__name__}, expected an object {{lang: text}}")
    _check_languages_present(sorted({lang for pair in pairs for lang in pair}), split, source_lang, target_lang)
    for index, pair in enumerate(pairs):
        for lang in (source_lang, target_lang):
            if not isinstance(pair.get(lang), str):
                raise ValueError(f"record {index} (counting from 0) of the {split} split has no {lang!r} text "
                                 f"(languages: {', '.join(pair)})")


def _check_languages_present(present: list[str], split: str, source_lang: str, target_lang: str) -> None:
    for lang, role in ((source_lang, "source_lang"), (target_lang, "target_lang")):
        if lang not in present:
            raise ValueError(f"{role} {lang!r} is not a language of the {split} split "
                             f"(languages present: {', '.join(present)})")


def load_translation_datasets(data_args: DataTrainingArguments) -> datasets.DatasetDict:
    """The raw splits ('train', 'validation', 'test' where given), each checked for both languages."""
    if not data_args.source_lang or not data_args.target_lang:
        raise ValueError("give --source_lang and --target_lang (the keys of the 'translation' records, e.g. en fr)")
    if data_args.source_lang == data_args.target_lang:
        raise ValueError(f"source_lang and target_lang are both {data_args.source_lang!r}")
    if data_args.dataset_name is not None:
        raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        files = {split: path for split, path in (("train", data_args.train_file),
                                                 ("validation", data_args.validation_file),
                                                 ("test", data_args.test_file)) if path is not None}
        if not files:
            raise ValueError("give --dataset_name or at least one of --train_file, --validation_file, --test_file")
        for split, path in files.items():
            check_data_file(path, f"{split}_file", DATA_FILE_SUFFIXES)
        raw = datasets.load_dataset("json", data_files=files)
    for split, dataset in raw.items():
        check_translation_split(dataset, split, data_args.source_lang, data_args.target_lang)
    return raw


def translation_texts(dataset: datasets.Dataset, langs: Sequence[str]) -> Iterator[str]:
    """Every text of `langs` in `dataset`'s 'translation' column (for tokenizer training)."""
    for pair in dataset["translation"]:
        for lang in langs:
            yield pair[lang]


def fwp_seq2seq_config_from_arguments(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> FWPConfig:
    """An encoder–decoder `FWPConfig` from the model arguments, `config_overrides` and the tokenizer's ids.

    The decoder starts from ``<s>`` (``<pad>`` where the tokenizer has no ``<s>``).
    """
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs a pad and an eos token for translation")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    return common.fwp_config_from_arguments(
        model_args, tokenizer, is_encoder_decoder=True, decoder_start_token_id=start
    )


def build_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase):
    """`model_name_or_path` through `AutoModelForSeq2SeqLM`, else a new `FWPForConditionalGeneration`."""
    if model_args.model_name_or_path:
        return AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)
    return FWPForConditionalGeneration(fwp_seq2seq_config_from_arguments(model_args, tokenizer))


def encode_with_eos(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text cut to `max_length` - 1, then ``</s>``; and whether each text was cut.

    The tokenizer's own special tokens are not added (sentencepiece tokenizers trained here add none).
    """
    if max_length < 2:
        raise ValueError(f"a maximum length must leave room for a token and </s>, got {max_length}")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return ([ids[: max_length - 1] + [tokenizer.eos_token_id] for ids in encoded],
            [len(ids) > max_length - 1 for ids in encoded])


def make_preprocess_function(tokenizer: PreTrainedTokenizerBase, data_args: DataTrainingArguments) -> Callable:
    """A batched `Dataset.map` function: 'translation' → input_ids, attention_mask, labels, and truncation flags."""

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        sources = [data_args.source_prefix + pair[data_args.source_lang] for pair in batch["translation"]]
        targets = [pair[data_args.target_lang] for pair in batch["translation"]]
        input_ids, source_cut = encode_with_eos(tokenizer, sources, data_args.max_source_length)
        labels, target_cut = encode_with_eos(tokenizer, targets, data_args.max_target_length)
        return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids], "labels": labels,
                TRUNCATED_SOURCE: source_cut, TRUNCATED_TARGET: target_cut}

    return preprocess


def tokenize_splits(selected: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase,
                    data_args: DataTrainingArguments) -> tuple[dict[str, datasets.Dataset], dict[str, int]]:
    """Tokenise every split; return them and, per split, how many sources and targets were truncated."""
    preprocess = make_preprocess_function(tokenizer, data_args)
    tokenized, truncated = {}, {}
    for split, dataset in selected.items():
        encoded = dataset.map(preprocess, batched=True, remove_columns=dataset.column_names,
                              num_proc=data_args.preprocessing_num_workers, desc=f"tokenizing {split}")
        prefix = "eval" if split == "validation" else split
        for column, kind, limit in ((TRUNCATED_SOURCE, "sources", "max_source_length"),
                                    (TRUNCATED_TARGET, "targets", "max_target_length")):
            count = int(sum(encoded[column]))
            truncated[f"{prefix}_truncated_{kind}"] = count
            if count:
                logger.warning("%d of %d %s %s were cut to %s = %d tokens", count, len(encoded), split, kind, limit,
                               getattr(data_args, limit))
        tokenized[split] = encoded.remove_columns([TRUNCATED_SOURCE, TRUNCATED_TARGET])
    return tokenized, truncated


def load_metric(name: str):
    """``evaluate.load(name)`` from the Hub, or where that fails (offline) the module fwp_hf ships for it.

    Both compute the same scores with sacrebleu; the fallback is logged.
    """
    import evaluate  # noqa: PLC0415 - slow to import; only runs that score translations need it

    try:
        return evaluate.load(name)
    except (OSError, ValueError) as error:  # FileNotFoundError/ConnectionError offline
        shipped = TRANSLATION_METRICS[name]
        logger.info("evaluate.load(%r) failed (%s: %s); using the module fwp_hf ships, %s",
                    name, type(error).__name__, str(error).splitlines()[0][:200], shipped)
        return evaluate.load(str(shipped))


@functools.lru_cache(maxsize=1)
def translation_metrics():
    """BLEU and chrF as one `evaluate.combine` (results prefixed with each module's name), loaded once."""
    import evaluate  # noqa: PLC0415

    modules = [load_metric(name) for name in TRANSLATION_METRICS]
    return evaluate.combine(modules, force_prefix=True), [module.name for module in modules]


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenisation, chrF n=6, β=2) of hypotheses against one
    reference each."""
    combined, (bleu, chrf) = translation_metrics()
    results = combined.compute(predictions=list(hypotheses), references=[[reference] for reference in references])
    return {"bleu": float(results[f"{bleu}_score"]), "chrf": float(results[f"{chrf}_score"])}


def decode_ids(tokenizer: PreTrainedTokenizerBase, ids: np.ndarray) -> list[str]:
    """Decode generated ids or labels (-100 as padding), without special tokens, stripped."""
    ids = np.where(np.asarray(ids) < 0, tokenizer.pad_token_id, np.asarray(ids))
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def make_compute_metrics(tokenizer: PreTrainedTokenizerBase) -> Callable:
    """`compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: bleu, chrf, gen_len."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        hypotheses, references = decode_ids(tokenizer, predictions), decode_ids(tokenizer, labels)
        scores = corpus_scores(hypotheses, references)
        lengths = np.count_nonzero(
            (np.asarray(predictions) >= 0) & (np.asarray(predictions) != tokenizer.pad_token_id), axis=1
        )
        scores["gen_len"] = float(np.mean(lengths))
        return {name: round(value, 4) for name, value in scores.items()}

    return compute_metrics


class OrderedEvalSeq2SeqTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose evaluation and prediction batches keep the dataset order.

    transformers 5 also groups evaluation batches by length when ``train_sampling_strategy`` is
    ``"group_by_length"``; that would pair each test translation with another example's source.
    """

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class TrainingTimeLimitCallback(TrainerCallback):
    """Stops training, with a checkpoint, once `max_minutes` of wall-clock time have passed since it began."""

    def __init__(self, max_minutes: float) -> None:
        if max_minutes <= 0:
            raise ValueError(f"max_train_minutes must be positive, got {max_minutes}")
        self.max_seconds = 60.0 * max_minutes
        self.started: float | None = None
        self.stopped_early = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        out_of_time = self.started is not None and time.monotonic() - self.started >= self.max_seconds
        if out_of_time and state.global_step < state.max_steps:
            logger.warning(
                "max_train_minutes reached after %d of %d steps: stopping", state.global_step, state.max_steps
            )
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = True


def select_splits(raw: datasets.DatasetDict, data_args: DataTrainingArguments,
                  training_args: Seq2SeqTrainingArguments) -> datasets.DatasetDict:
    """The splits the run uses (train for --do_train, validation for --do_eval, test for --do_predict),
    each cut to its ``--max_*_samples``; a ValueError names a split the data lacks."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    selected = datasets.DatasetDict()
    for split, flag in SPLIT_FLAGS.items():
        if not getattr(training_args, flag):
            continue
        if split not in raw:
            raise ValueError(f"{flag} needs a {split} split (--{split}_file or a Hub dataset with one); "
                             f"the data has {', '.join(raw)}")
        selected[split] = common.first_rows(raw[split], limits[split])
    return selected


def set_generation_arguments(
    data_args: DataTrainingArguments, training_args: Seq2SeqTrainingArguments
) -> tuple[int, int]:
    """The maximum generated length and beam size of evaluation and test, also set on `training_args`."""
    training_args.generation_max_length = data_args.val_max_target_length or data_args.max_target_length
    training_args.generation_num_beams = data_args.num_beams or training_args.generation_num_beams or 1
    return training_args.generation_max_length, training_args.generation_num_beams


def run_translation_training(model_args: ModelArguments, data_args: DataTrainingArguments,
                             training_args: Seq2SeqTrainingArguments,
                             callbacks: list[TrainerCallback] | None = None) -> dict[str, float]:
    """Train, evaluate and test as the arguments say; write model, metrics and predictions to output_dir.

    Returns every metric. ``eval_bleu``/``eval_chrf`` score the validation split against its tokenised
    references (truncated to max_target_length); ``test_bleu``/``test_chrf`` and the copy-the-source
    baseline ``test_copy_source_bleu``/``test_copy_source_chrf`` score the test split against its raw
    reference texts.
    """
    common.setup_logging(training_args)
    if training_args.do_predict and not training_args.predict_with_generate:
        raise ValueError("do_predict needs predict_with_generate=True (BLEU/chrF of generated translations)")
    resume_checkpoint = common.resolve_resume_checkpoint(training_args)
    set_seed(training_args.seed)
    selected = select_splits(load_translation_datasets(data_args), data_args, training_args)
    langs = (data_args.source_lang, data_args.target_lang)
    texts = translation_texts(selected["train"], langs) if "train" in selected else None
    tokenizer = common.load_or_train_tokenizer(model_args, training_args, texts)
    model = build_model(model_args, tokenizer)
    if resume_checkpoint is not None and training_args.do_train:
        common.check_resume_matches_checkpoint(resume_checkpoint, model.config)
    logger.info("seq2seq model %s: %.2fM parameters", type(model).__name__, model.num_parameters() / 1e6)
    max_generated, num_beams = set_generation_arguments(data_args, training_args)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized, truncated = tokenize_splits(selected, tokenizer, data_args)

    time_limit = TrainingTimeLimitCallback(data_args.max_train_minutes) if data_args.max_train_minutes else None
    trainer = OrderedEvalSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized.get("train"),
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=[*(callbacks or []), *([time_limit] if time_limit else [])],
    )
    metrics: dict[str, float] = {"num_parameters": float(model.num_parameters()), **truncated}
    if training_args.do_train:
        train_metrics = common.train_and_save(trainer, resume_checkpoint)
        if time_limit is not None:
            train_metrics["train_stopped_by_time_limit"] = int(time_limit.stopped_early)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate(max_length=max_generated, num_beams=num_beams, metric_key_prefix="eval")
        eval_metrics["eval_samples"] = len(tokenized["validation"])
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.do_predict:
        metrics.update(_predict_and_score(trainer, tokenizer, selected["test"], tokenized["test"], data_args,
                                          max_generated, num_beams))
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics, combined=False)
        if training_args.predict_with_generate:  # the scores came from `evaluate`: record them its way too
            import evaluate  # noqa: PLC0415

            evaluate.save(str(Path(training_args.output_dir) / EVALUATE_RESULTS_FILE), **metrics)
    return metrics


def _predict_and_score(trainer: Seq2SeqTrainer, tokenizer: PreTrainedTokenizerBase, raw_test: datasets.Dataset,
                       tokenized_test: datasets.Dataset, data_args: DataTrainingArguments,
                       max_generated: int, num_beams: int) -> dict[str, float]:
    """Translate the test split, score it and the copy-the-source baseline, write predictions and metrics."""
    # Score against the raw reference texts (not the tokenised, truncated labels) so that the model and
    # the copy baseline are measured on exactly the same references.
    compute_metrics, trainer.compute_metrics = trainer.compute_metrics, None
    try:
        result = trainer.predict(
            tokenized_test, max_length=max_generated, num_beams=num_beams, metric_key_prefix="test"
        )
    finally:
        trainer.compute_metrics = compute_metrics
    hypotheses = decode_ids(tokenizer, result.predictions)
    sources = [pair[data_args.source_lang] for pair in raw_test["translation"]]
    references = [pair[data_args.target_lang] for pair in raw_test["translation"]]
    test_metrics = dict(result.metrics)
    for prefix, texts in (("test", hypotheses), ("test_copy_source", sources)):
        test_metrics.update(
            {f"{prefix}_{name}": round(value, 4) for name, value in corpus_scores(texts, references).items()}
        )
    test_metrics["test_samples"] = len(tokenized_test)
    test_metrics["test_num_beams"] = num_beams
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    if trainer.is_world_process_zero():
        output = Path(trainer.args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / GENERATED_PREDICTIONS_FILE).write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
        ids = raw_test["id"] if "id" in raw_test.column_names else list(range(len(raw_test)))
        with (output / PREDICTIONS_FILE).open("w", encoding="utf-8") as handle:
            for record_id, source, reference, hypothesis in zip(ids, sources, references, hypotheses):
                handle.write(json.dumps({"id": record_id, "source": source, "reference": reference,
                                         "prediction": hypothesis}, ensure_ascii=False) + "\n")
        print(f"test BLEU {test_metrics['test_bleu']:.2f} chrF {test_metrics['test_chrf']:.2f}; copy-the-source "
              f"baseline BLEU {test_metrics['test_copy_source_bleu']:.2f} "
              f"chrF {test_metrics['test_copy_source_chrf']:.2f}")
        samples = list(zip(sources, references, hypotheses))[:data_args.num_sample_translations]
        for source, reference, hypothesis in samples:
            print(f"  source:     {source}\n  reference:  {reference}\n  prediction: {hypothesis}\n")
    return test_metrics


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of `scripts/train_translation.py`: a bad flag is one line and exit status 2."""
    with argument_errors_exit("train_translation.py"):
        arguments = parse_translation_arguments(argv)
    return run_translation_training(*arguments)


__all__ = [
    "ModelArguments", "DataTrainingArguments", "parse_translation_arguments", "load_translation_datasets",
    "select_splits", "check_translation_split", "fwp_seq2seq_config_from_arguments", "encode_with_eos",
    "corpus_scores", "load_metric", "translation_metrics", "run_translation_training", "main"
]
