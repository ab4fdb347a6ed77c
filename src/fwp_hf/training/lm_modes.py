"""How `train_lm.py` lays out and reads its training data: one class per training mode.

- `BlockTraining` (the default): shuffled independent blocks of ``block_size`` tokens, each from an empty state.
- `PackedDocumentsTraining` (``--packing true``): whole documents packed into one row per batch
  (`packing.PackedDocumentsTrainer`), each from an empty state, with no padding.
- `CarriedStateTraining` (``--carry_state true``): parallel streams read in order with the fast-weight state
  carried across segments (`carried_state.CarriedStateTrainer`), with its two options
  ``--reset_state_at_document_end`` and ``--reset_state_every_segment``.

Every mode answers the same questions (`TrainingMode`): which arguments and which model it refuses, the
training dataset, the Trainer class (and its options), the files a resumable checkpoint must hold, and what
the model card says about how the model was trained. `run_lm_training` asks `select_training_mode` for one
and never branches on the mode's flags itself.

Adding a mode is one subclass here: give it a `flag` (a boolean field of `lm.DataTrainingArguments` that
selects it), its `options` (data arguments only it reads, each with the reason it needs the mode), override
what differs from `TrainingMode`, and append it to `TRAINING_MODES`; the exclusion rules, the resume check's
data layout and the refusals of stray options follow from those declarations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import datasets
from transformers import Trainer, TrainingArguments

from .carried_state import (
    CARRIED_STATE_FILE,
    CarriedStateTrainer,
    carried_state_num_streams,
    check_carry_state_arguments,
    check_carry_state_model,
    stream_segments_dataset,
)
from .common import first_rows
from .lm_data import token_document_ids, token_stream
from .packing import PackedDocumentsTrainer, packed_documents_dataset


class TrainingMode(ABC):
    """One way of training the language model; the base is what every mode shares (the plain `Trainer`, no
    refusals, no files of its own in checkpoints); a mode must say what it trains on (`training_dataset`).
    `data_args` is `lm.DataTrainingArguments`."""

    # The boolean data argument that selects this mode (None: the mode used when no flag is set).
    flag: ClassVar[str | None] = None
    # What the mode does, in the refusal of two flags together ("--a true and --b true exclude each other").
    summary: ClassVar[str] = ""
    # Data arguments only this mode reads → why they need it (the refusal when the mode is not selected).
    options: ClassVar[dict[str, str]] = {}

    def __init__(self, data_args) -> None:
        self.data_args = data_args

    @classmethod
    def check_options(cls, data_args) -> None:
        """Refuse option values that exclude each other within this mode (called with the mode selected)."""

    def check_arguments(self, model_args, training_args: TrainingArguments) -> None:
        """Refuse model or training arguments this mode cannot train with (before any data or model is built)."""

    def check_model(self, model) -> None:
        """Refuse a model this mode cannot train."""

    @abstractmethod
    def training_dataset(
        self, tokenized_train: datasets.Dataset, train_blocks: datasets.Dataset, training_args: TrainingArguments
    ) -> datasets.Dataset:
        """The Trainer's training dataset from the tokenised texts (one per document, each ended by the
        document separator) or their ``block_size`` blocks; ``max_train_samples`` applied."""

    def trainer_class(self) -> tuple[type[Trainer], dict[str, Any]]:
        """The Trainer subclass that trains in this mode and its extra keyword arguments."""
        return Trainer, {}

    def checkpoint_files(self, training_args: TrainingArguments) -> list[str]:
        """Files of this mode every checkpoint must hold to be resumed from (`common.resolve_resume_checkpoint`)."""
        return []

    def trained_note(self) -> str:
        """How the model was trained, for the model card's note on the stream evaluations."""
        return "The model was trained on independent blocks, so it never saw an older state."

    @property
    def resets_at_document_ends(self) -> bool:
        """Whether the carried state is emptied at document starts (in training and the stream evaluation)."""
        return False


class BlockTraining(TrainingMode):
    """Shuffled independent blocks of ``block_size`` tokens (the texts concatenated, then cut), each block
    from an empty state."""

    def training_dataset(self, tokenized_train, train_blocks, training_args):
        return first_rows(train_blocks, self.data_args.max_train_samples)


class PackedDocumentsTraining(TrainingMode):
    """Whole documents (cut at ``block_size`` tokens) packed into one row per batch by transformers'
    `DataCollatorWithFlattening`, each from an empty state; evaluation stays on blocks (`packing`)."""

    flag = "packing"
    summary = "packing trains every document from an empty state"

    def training_dataset(self, tokenized_train, train_blocks, training_args):
        return packed_documents_dataset(tokenized_train, self.data_args.block_size, self.data_args.max_train_samples,
                                        self.data_args.preprocessing_num_workers)

    def trainer_class(self):
        return PackedDocumentsTrainer, {}


class CarriedStateTraining(TrainingMode):
    """The training stream (its first ``max_train_samples · block_size`` tokens) as one stream per row of the
    global batch, read in order with the fast-weight state carried across segments (truncated BPTT;
    `carried_state`). With ``reset_state_at_document_end`` the state is emptied at every document start (the
    dataset's ``seq_idx`` column); with ``reset_state_every_segment`` nothing is carried (the data-order
    control)."""

    flag = "carry_state"
    summary = "carry_state continues each row's state from the previous batch"
    options: ClassVar[dict[str, str]] = {
        "reset_state_at_document_end": "it resets the state that carried-state training carries across segments "
                                       "(with --carry_state false every block already starts from an empty state)",
        "reset_state_every_segment": "it reads the carried-state streams in order without their state (with "
                                     "--carry_state false the blocks are shuffled and every block already starts "
                                     "from an empty state)",
    }

    @classmethod
    def check_options(cls, data_args) -> None:
        if data_args.reset_state_every_segment and data_args.reset_state_at_document_end:
            raise ValueError("--reset_state_every_segment true and --reset_state_at_document_end true exclude each "
                             "other: with the first no state is carried, so there is none to reset at document ends")

    def check_arguments(self, model_args, training_args):
        if model_args.architecture != "fwp":
            raise ValueError(f"--carry_state true needs an FWP model whose every layer keeps a fixed-size state; "
                             f"--architecture {model_args.architecture} is a softmax transformer (a key/value cache "
                             "that grows with the stream)")
        check_carry_state_arguments(training_args)

    def check_model(self, model):
        check_carry_state_model(model)

    def training_dataset(self, tokenized_train, train_blocks, training_args):
        stream = token_stream(tokenized_train)
        if self.data_args.max_train_samples is not None:
            stream = stream[: self.data_args.max_train_samples * self.data_args.block_size]
        documents = token_document_ids(tokenized_train)[: len(stream)] if self.resets_at_document_ends else None
        return stream_segments_dataset(stream, self.data_args.block_size, carried_state_num_streams(training_args),
                                       documents)

    def trainer_class(self):
        return CarriedStateTrainer, {"reset_every_segment": self.data_args.reset_state_every_segment}

    def checkpoint_files(self, training_args):
        return [CARRIED_STATE_FILE.format(rank=rank) for rank in range(training_args.world_size)]

    def trained_note(self) -> str:
        block_size = self.data_args.block_size
        if self.data_args.reset_state_every_segment:
            note = (f"The model was trained on the carried-state streams read in order, in segments of "
                    f"{block_size}, but every segment from an empty state "
                    "(--reset_state_every_segment), so it never saw an older state.")
        else:
            note = (f"The model was trained with the state carried across segments of {block_size} "
                    "(truncated backpropagation through time).")
        if self.resets_at_document_ends:
            note += (" In training and in the carried-state row the state was emptied at every document end "
                     "(--reset_state_at_document_end; a document is one text with its </s>), so that row "
                     "scores every document from its own first token only.")
        return note

    @property
    def resets_at_document_ends(self) -> bool:
        return self.data_args.reset_state_at_document_end


# The modes `select_training_mode` chooses from; the first (no flag) when none of the others' flags is set.
TRAINING_MODES: tuple[type[TrainingMode], ...] = (BlockTraining, PackedDocumentsTraining, CarriedStateTraining)


def select_training_mode(data_args) -> TrainingMode:
    """The mode whose flag `data_args` sets (`BlockTraining` when none is), after refusing two modes' flags
    together, an option of a mode that is not selected, and options of the selected one that exclude each
    other — each a ValueError naming the flags."""
    selected = [mode for mode in TRAINING_MODES if mode.flag is not None and getattr(data_args, mode.flag)]
    if len(selected) > 1:
        first, second = selected[:2]
        raise ValueError(f"--{first.flag} true and --{second.flag} true exclude each other: {first.summary}, "
                         f"{second.summary}; pick one")
    (mode,) = selected or [mode for mode in TRAINING_MODES if mode.flag is None]
    for other in TRAINING_MODES:
        if other is mode:
            continue
        for option, reason in other.options.items():
            if getattr(data_args, option):
                raise ValueError(f"--{option} true needs --{other.flag} true: {reason}")
    mode.check_options(data_args)
    return mode(data_args)


def training_mode_arguments() -> tuple[str, ...]:
    """Every data argument that selects a mode or configures one (part of a run's recorded data layout)."""
    return tuple(name for mode in TRAINING_MODES for name in (mode.flag, *mode.options) if name is not None)


__all__ = [
    "TRAINING_MODES",
    "BlockTraining",
    "CarriedStateTraining",
    "PackedDocumentsTraining",
    "TrainingMode",
    "select_training_mode",
    "training_mode_arguments",
]
