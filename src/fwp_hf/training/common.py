"""What the language-model and translation pipelines share (`lm.py` and `translation.py` build on it).

- `BaseModelArguments`: the model fields both scripts take; each pipeline's `ModelArguments` extends it.
- `parse_run_arguments`: ``[config.yaml|config.json] [--flag value ...]`` into the argument dataclasses.
- `fwp_config_from_arguments` (with `parse_config_overrides`): an `FWPConfig` from the model
  arguments, ``--config_overrides`` and the tokenizer's vocabulary.
- `load_or_train_tokenizer`: the run's tokenizer; a sentencepiece tokenizer is trained on the texts
  it is given when there is none.
- `setup_logging`, `resolve_resume_checkpoint` (``--resume_from_checkpoint last``: the newest complete
  checkpoint) with `check_checkpoint`, `check_resume_matches_checkpoint` (a resume must keep what the
  weights mean and the data layout; `DataLayoutCallback` records the layout), `write_atomically`,
  `first_rows` (``--max_*_samples``), `train_and_save` (the Trainer's training step) and
  `save_model_for_inference` (the model folder, with `use_cache` back on).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
import transformers
from transformers import (
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import FEATURE_MAPS, FWPConfig
from ..options_fwp import LEGACY_FLAT_KEYS
from ..shared.cli import config_overrides_as_json, parse_config_and_flags
from ..token_mixers import ATTENTION_TYPES
from .tokenization import MODEL_TYPES, save_tokenizer, train_sentencepiece_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CHECKPOINT_REQUIRED_FILES = ("trainer_state.json", "config.json", "optimizer.pt", "scheduler.pt")
# Written by `DataLayoutCallback` into every checkpoint: the settings that lay the training data out.
DATA_LAYOUT_FILE = "data_layout.json"
# FWPConfig fields that come from the tokenizer, never from the arguments.
TOKENIZER_CONFIG_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")


@dataclass
class BaseModelArguments:
    """The model: a new FWP model from these fields, or `model_name_or_path` to start from."""

    # The fields that are FWPConfig fields of the same name (a subclass adds its own); `feature_map` is the
    # `fast_weight` group's. A feature map's own options (DPFP's ν, FAVOR+'s m, ...) go in `config_overrides`.
    CONFIG_FIELDS: ClassVar[tuple[str, ...]] = (
        "attention_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "chunk_size",
    )

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this saved model (folder or Hub id) instead of a new one."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer folder or Hub id. None: the one of model_name_or_path, else the one in output_dir, "
            "else train a sentencepiece tokenizer on the training split (both sides of it for translation)."
        },
    )
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of a trained tokenizer."})
    tokenizer_model_type: str = field(
        default="unigram", metadata={"help": f"sentencepiece model: {', '.join(MODEL_TYPES)}."}
    )
    attention_type: str = field(
        default="delta",
        metadata={
            "help": f"Token mixer of every layer (the encoder's in an encoder–decoder): {', '.join(ATTENTION_TYPES)} "
            "(a per-layer list goes in config_overrides)."
        },
    )
    feature_map: str = field(
        default="dpfp",
        metadata={
            "help": f"φ of the token mixers that let the config choose it (fast_weight.feature_map): "
            f"{', '.join(FEATURE_MAPS)}. Its options go in config_overrides, e.g. "
            '\'{"feature_maps": {"dpfp": {"nu": 2}}}\'.'
        },
    )
    hidden_size: int = field(default=256)
    intermediate_size: int = field(default=704)
    num_hidden_layers: int = field(default=4)
    num_attention_heads: int = field(default=4)
    chunk_size: int = field(default=64, metadata={"help": "Chunk length of the chunkwise-parallel kernels."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Other FWPConfig fields as a JSON object (a mapping in a YAML config), e.g. "
            '\'{"attention_type": ["delta", "softmax"], "hebbian_memory": {"decay": 0.9}, "feature_maps": '
            '{"favor": {"num_features": 32}}}\' (older flat keys such as "fast_weights_decay" are read too).'
        },
    )


def _in_config_overrides(name: str) -> Callable[[Any], tuple[str, str]]:
    """What replaces the retired flag `name`: ``config_overrides`` with the value at the flag's place in a group."""

    def replacement(value: Any) -> tuple[str, str]:
        (path,) = LEGACY_FLAT_KEYS[name]
        for part in reversed(path):
            value = {part: value}
        return "config_overrides", json.dumps(value)

    return replacement


# Model flags of earlier releases: a feature map's options are set in its group (`feature_maps`), through
# `config_overrides`; the flag (or config-file key) is refused naming that replacement.
RETIRED_MODEL_FLAGS = {name: _in_config_overrides(name) for name in ("dpfp_nu", "performer_num_features")}


def parse_run_arguments(argument_classes: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse ``[config.yaml|config.json] [--flag value ...]`` (default: sys.argv): flags override the file.

    An unknown key in the file raises a ValueError naming it, a retired flag (`RETIRED_MODEL_FLAGS`) one naming
    its replacement; ``config_overrides`` may be a mapping there.
    """
    argv = sys.argv[1:] if argv is None else argv
    parsed = parse_config_and_flags(argument_classes, argv, convert_values=config_overrides_as_json,
                                    retired=RETIRED_MODEL_FLAGS)
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            pin_memory_only_with_an_accelerator(arguments)
    return parsed


def pin_memory_only_with_an_accelerator(training_args: TrainingArguments) -> None:
    """Turn `dataloader_pin_memory` (default True) off where nothing would use pinned memory (no accelerator, or
    ``--use_cpu``): torch's DataLoader warns at every training and evaluation start otherwise."""
    if training_args.dataloader_pin_memory and (training_args.use_cpu or not torch.accelerator.is_available()):
        training_args.dataloader_pin_memory = False


def parse_overrides_json(config_overrides: str | None, config_class: type = FWPConfig) -> dict[str, Any]:
    """The fields of a ``--config_overrides`` JSON object, each a field of `config_class`; a ValueError says
    what is wrong with it."""
    if not config_overrides:
        return {}
    try:
        overrides = json.loads(config_overrides)
    except json.JSONDecodeError as error:
        raise ValueError(f"config_overrides must be a JSON object, got {config_overrides!r}: {error}") from error
    if not isinstance(overrides, dict):
        raise ValueError(f"config_overrides must be a JSON object, got {config_overrides!r}")
    known = set(config_class().to_dict())
    if issubclass(config_class, FWPConfig):
        known |= set(LEGACY_FLAT_KEYS)  # flat keys of configs written before the option groups
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"config_overrides has unknown {config_class.__name__} key(s) {', '.join(map(repr, unknown))}"
        )
    return overrides


def parse_config_overrides(config_overrides: str | None) -> dict[str, Any]:
    """The FWPConfig fields of a ``--config_overrides`` JSON object; a ValueError says what is wrong with it."""
    overrides = parse_overrides_json(config_overrides)
    from_tokenizer = sorted(set(overrides) & set(TOKENIZER_CONFIG_FIELDS))
    if from_tokenizer:
        raise ValueError(
            f"config_overrides sets {', '.join(map(repr, from_tokenizer))}, which come from the tokenizer"
        )
    return overrides


def fwp_config_from_arguments(
    model_args: BaseModelArguments, tokenizer: PreTrainedTokenizerBase, **fixed: Any
) -> FWPConfig:
    """An `FWPConfig`: the model arguments that are config fields, `config_overrides` over them, the
    tokenizer's size and special ids, and `fixed` (e.g. ``is_encoder_decoder=True``)."""
    values = {name: getattr(model_args, name) for name in model_args.CONFIG_FIELDS}
    values["fast_weight"] = {"feature_map": model_args.feature_map}
    # the overrides over the flags, a group's fields one by one (`{"fast_weight": {...}}` over `--feature_map`)
    values = FWPConfig.merged_config_dict(values, parse_config_overrides(model_args.config_overrides))
    return FWPConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fixed,
        **values,
    )


def load_or_train_tokenizer(
    model_args: BaseModelArguments, training_args: TrainingArguments, texts: Iterable[str] | None
) -> PreTrainedTokenizerBase:
    """The run's tokenizer: `tokenizer_name`; else `model_name_or_path`'s; else the one already in
    output_dir (a warning when its size is not `tokenizer_vocab_size`); else a sentencepiece tokenizer
    trained on `texts` and saved to output_dir.

    `texts` is read only when a tokenizer is trained; None means there is nothing to train one on.
    """
    if model_args.tokenizer_name:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    if model_args.model_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    output_dir = training_args.output_dir
    with training_args.main_process_first(desc="training the tokenizer"):
        if os.path.isfile(os.path.join(output_dir, "tokenizer.json")):
            tokenizer = AutoTokenizer.from_pretrained(output_dir)
            if len(tokenizer) != model_args.tokenizer_vocab_size:
                logger.warning(
                    "Reusing the %d-token tokenizer in %s (tokenizer_vocab_size=%d is ignored)",
                    len(tokenizer),
                    output_dir,
                    model_args.tokenizer_vocab_size,
                )
            return tokenizer
        if texts is None:
            raise ValueError(
                "no tokenizer: give --tokenizer_name or --model_name_or_path, or training data to train one on"
            )
        logger.info("Training a %d-token sentencepiece tokenizer on the training split",
                    model_args.tokenizer_vocab_size)
        tokenizer = train_sentencepiece_tokenizer(
            texts, vocab_size=model_args.tokenizer_vocab_size, model_type=model_args.tokenizer_model_type
        )
        if training_args.process_index == 0:
            os.makedirs(output_dir, exist_ok=True)
            save_tokenizer(tokenizer, output_dir)
        return tokenizer


def setup_logging(training_args: TrainingArguments) -> None:
    """Log to stdout for fwp_hf, transformers and datasets alike, as transformers' example scripts do:
    the main process at info level (or `--log_level`), the others at `--log_level_replica` (warning)."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:  # the "passive" log level then means info
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logging.getLogger("fwp_hf").setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result to `path` (``os.replace``, atomic on POSIX).

    A kill while writing leaves `path` as it was (absent or the old file), never half-written; the
    temporary file (``.<name>.tmp-*`` next to `path`) is removed when `write` raises.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename makes it visible
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_checkpoint(checkpoint: str, required_files: Sequence[str] = ()) -> None:
    """Raise a ValueError naming what is missing or unreadable in a Trainer checkpoint folder.

    Besides the Trainer's files, `required_files` (file names, e.g. the carried states) must be there.
    JSON files must parse, the weights must load and every torch file (``*.pt``, ``*.pth``, a zip archive)
    must have an intact archive directory (a truncated or empty file fails that).
    """
    path = Path(checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {checkpoint!r} does not exist")
    missing = [name for name in (*CHECKPOINT_REQUIRED_FILES, *required_files) if not (path / name).is_file()]
    weights = [path / name for name in CHECKPOINT_WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        missing.append(" or ".join(CHECKPOINT_WEIGHT_FILES))
    hint = "it is corrupt or was half-written; resume from an earlier checkpoint or delete it"
    if missing:
        raise ValueError(f"checkpoint directory {checkpoint!r} is incomplete (missing {', '.join(missing)}): {hint}")
    for name in ("trainer_state.json", "config.json"):
        try:
            json.loads((path / name).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"checkpoint {checkpoint!r}: {name} is not valid JSON ({error}): {hint}") from error
    for torch_file in sorted([*path.glob("*.pt"), *path.glob("*.pth")]):
        try:
            with zipfile.ZipFile(torch_file) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(
                f"checkpoint {checkpoint!r}: {torch_file.name} cannot be read ({error}): {hint}") from error
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


def checkpoint_folders(output_dir: str) -> list[str]:
    """The ``checkpoint-<step>`` folders of `output_dir`, newest (highest step) first."""
    steps = {}
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = int(match.group(1))
    return sorted(steps, key=steps.get, reverse=True)


def last_complete_checkpoint(output_dir: str, required_files: Sequence[str] = ()) -> str:
    """The newest checkpoint of `output_dir` that `check_checkpoint` accepts; newer ones that it refuses (a
    run killed while writing them) are skipped with a warning naming them and what is wrong."""
    folders = checkpoint_folders(output_dir) if os.path.isdir(output_dir) else []
    if not folders:
        raise ValueError(f"resume from the last checkpoint was asked, but output_dir {output_dir!r} has no "
                         "checkpoint-* folder")
    problems = []
    for folder in folders:
        try:
            check_checkpoint(folder, required_files)
        except (ValueError, FileNotFoundError) as error:
            logger.warning("skipping checkpoint %s: %s", folder, error)
            problems.append(str(error))
            continue
        if problems:
            logger.warning("resuming from %s, the newest complete checkpoint", folder)
        return folder
    raise ValueError(f"no checkpoint in {output_dir!r} can be resumed from: " + "; ".join(problems))


def resolve_resume_checkpoint(training_args: TrainingArguments, required_files: Sequence[str] = ()) -> str | None:
    """The checkpoint to resume from: an explicit path, ``"last"`` (the newest complete one in output_dir:
    `last_complete_checkpoint`), or None. `required_files`: files the run adds to every checkpoint."""
    requested = training_args.resume_from_checkpoint
    if requested is None or requested in ("", "False", "false"):
        return None
    if requested in ("last", "True", "true"):
        return last_complete_checkpoint(training_args.output_dir, required_files)
    check_checkpoint(requested, required_files)
    return requested


def weight_meaning_mismatches(saved_config: dict[str, Any], config: PretrainedConfig) -> list[str]:
    """The fields in which `config` (the model a run builds) gives weights another meaning than
    `saved_config` (a checkpoint's config.json as a dict), as ``"name: saved → now"`` strings.

    For FWP models the fields are `FWPConfig.WEIGHT_MEANING_FIELDS`, judged by `weight_meaning_changes`
    (which counts a field only where some layer uses it); other models are compared on those of the same
    fields that their config has. Another ``model_type`` is always a mismatch.
    """
    if saved_config.get("model_type") != config.model_type:
        return [f"model_type: {saved_config.get('model_type')!r} → {config.model_type!r}"]
    if isinstance(config, FWPConfig):
        saved = FWPConfig.from_dict(saved_config)
        return [f"{name}: {saved.field_value(name)!r} → {config.field_value(name)!r}"
                for name in saved.weight_meaning_changes(config)]
    saved = type(config).from_dict(saved_config)
    changed = [name for name in FWPConfig.WEIGHT_MEANING_FIELDS  # the top-level ones other configs may have
               if "." not in name and hasattr(config, name) and getattr(saved, name, None) != getattr(config, name)]
    return [f"{name}: {getattr(saved, name, None)!r} → {getattr(config, name, None)!r}" for name in changed]


def check_resume_matches_checkpoint(checkpoint: str, config: PretrainedConfig,
                                    data_layout: dict[str, Any] | None = None) -> None:
    """Refuse to resume from `checkpoint` with a model whose config gives its weights another meaning
    (`weight_meaning_mismatches`) or with another data layout than the checkpoint's `DATA_LAYOUT_FILE`
    (block size, packing, ...: the Trainer skips the batches already seen by count, so another layout
    would continue from another place). Checkpoints written before the layout file are not layout-checked."""
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        saved_config = json.load(handle)
    problems = weight_meaning_mismatches(saved_config, config)
    layout_file = os.path.join(checkpoint, DATA_LAYOUT_FILE)
    if data_layout is not None and os.path.isfile(layout_file):
        try:
            with open(layout_file, encoding="utf-8") as handle:
                saved_layout = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{layout_file!r} is not valid JSON ({error}): it is corrupt; resume from an earlier "
                             "checkpoint or delete it") from error
        problems += [f"{name}: {saved_layout.get(name)!r} → {value!r}" for name, value in data_layout.items()
                     if saved_layout.get(name) != value]
    elif data_layout is not None:
        logger.warning("%s has no %s (written before data layouts were recorded): the data layout of the resumed "
                       "run cannot be checked against it", checkpoint, DATA_LAYOUT_FILE)
    if problems:
        raise ValueError(
            f"resuming from {checkpoint!r} would change what the run trains: {'; '.join(problems)} (checkpoint → "
            "this run). Resume with the checkpoint's settings, or start a new run (another output_dir, without "
            "--resume_from_checkpoint)"
        )


class DataLayoutCallback(TrainerCallback):
    """Writes `data_layout` (the settings that fix which training example each step reads) as `DATA_LAYOUT_FILE`
    into every checkpoint folder, atomically, for `check_resume_matches_checkpoint`."""

    def __init__(self, data_layout: dict[str, Any]) -> None:
        self.data_layout = dict(data_layout)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            text = json.dumps(self.data_layout, indent=2, sort_keys=True) + "\n"
            write_atomically(os.path.join(checkpoint, DATA_LAYOUT_FILE),
                             lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def first_rows(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first `limit` rows of `dataset` (all of them when `limit` is None)."""
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def save_model_for_inference(trainer: Trainer) -> None:
    """`trainer.save_model()` with the config a user of the saved model expects: caching on.

    `Trainer` sets ``model.config.use_cache = args.use_cache`` (False by default: no cache while
    training) when it is built; saved as is, the shipped config.json would say ``use_cache: false``
    and a loaded model would not cache when generating. The training value is restored afterwards.
    """
    config = trainer.model.config
    training_value, config.use_cache = config.use_cache, True
    try:
        trainer.save_model()
    finally:
        config.use_cache = training_value


def train_and_save(trainer: Trainer, resume_checkpoint: str | None) -> dict[str, float]:
    """Train (resuming from `resume_checkpoint`), save the model and the trainer state (loss curves).

    Returns the Trainer's training metrics with ``train_samples`` and ``train_steps``.
    """
    result = trainer.train(resume_from_checkpoint=resume_checkpoint)
    save_model_for_inference(trainer)
    trainer.save_state()
    return {
        **result.metrics,
        "train_samples": len(trainer.train_dataset),
        "train_steps": trainer.state.global_step,
    }


__all__ = [
    "BaseModelArguments",
    "RETIRED_MODEL_FLAGS",
    "parse_run_arguments",
    "parse_config_overrides",
    "fwp_config_from_arguments",
    "load_or_train_tokenizer",
    "setup_logging",
    "DATA_LAYOUT_FILE",
    "DataLayoutCallback",
    "check_checkpoint",
    "check_resume_matches_checkpoint",
    "last_complete_checkpoint",
    "resolve_resume_checkpoint",
    "weight_meaning_mismatches",
    "write_atomically",
    "first_rows",
    "save_model_for_inference",
    "train_and_save",
]
