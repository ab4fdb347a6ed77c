"""The training modes of `train_lm.py` (`fwp_hf.training.lm_modes`): which flags select which mode, the refusals
each mode owns, and what each gives `run_lm_training` (training dataset, Trainer class, checkpoint files, card
note). The end-to-end runs are in test_lm_training.py, test_packing.py, test_carried_state_training.py and
test_document_resets.py; here each mode is asked directly, on a few hand-made token ids."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import datasets
import pytest
from transformers import Trainer, TrainingArguments

from fwp_hf.training import lm_modes
from fwp_hf.training.carried_state import CarriedStateTrainer
from fwp_hf.training.lm import DataTrainingArguments, training_data_layout
from fwp_hf.training.lm_modes import (
    BlockTraining,
    CarriedStateTraining,
    PackedDocumentsTraining,
    TrainingMode,
    select_training_mode,
)
from fwp_hf.training.packing import PackedDocumentsTrainer

# Three documents (texts with their separator, id 2) of 5, 3 and 8 tokens: 16 tokens.
DOCUMENTS = [[5, 6, 7, 8, 2], [9, 10, 2], [11, 12, 13, 14, 15, 16, 17, 2]]


@pytest.fixture(scope="module")
def training_args(tmp_path_factory) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path_factory.mktemp("modes")), per_device_train_batch_size=2,
                             use_cpu=True, report_to=[])


def tokenized_train() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"input_ids": DOCUMENTS})


def blocks_of(size: int) -> datasets.Dataset:
    stream = [token for document in DOCUMENTS for token in document]
    return datasets.Dataset.from_dict({"input_ids": [stream[i : i + size] for i in range(0, 16 - size + 1, size)]})


@pytest.mark.parametrize(
    ("flags", "mode"),
    [
        ({}, BlockTraining),
        ({"packing": True}, PackedDocumentsTraining),
        ({"carry_state": True}, CarriedStateTraining),
        ({"carry_state": True, "reset_state_at_document_end": True}, CarriedStateTraining),
        ({"carry_state": True, "reset_state_every_segment": True}, CarriedStateTraining),
    ],
)
def test_flags_select_one_mode(flags, mode):
    assert type(DataTrainingArguments(**flags).training_mode) is mode


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        ({"packing": True, "carry_state": True},
         ("--packing true and --carry_state true exclude each other: packing trains every document from an empty "
          "state, carry_state continues each row's state from the previous batch; pick one")),
        ({"reset_state_at_document_end": True},
         ("--reset_state_at_document_end true needs --carry_state true: it resets the state that carried-state "
          "training carries across segments (with --carry_state false every block already starts from an empty "
          "state)")),
        ({"packing": True, "reset_state_every_segment": True},
         ("--reset_state_every_segment true needs --carry_state true: it reads the carried-state streams in order "
          "without their state (with --carry_state false the blocks are shuffled and every block already starts "
          "from an empty state)")),
        ({"carry_state": True, "reset_state_every_segment": True, "reset_state_at_document_end": True},
         ("--reset_state_every_segment true and --reset_state_at_document_end true exclude each other: with the "
          "first no state is carried, so there is none to reset at document ends")),
    ],
)
def test_flags_that_exclude_each_other_are_refused_when_the_arguments_are_built(flags, refusal):
    with pytest.raises(ValueError) as caught:
        DataTrainingArguments(**flags)
    assert str(caught.value) == refusal


def test_carried_state_refuses_a_softmax_baseline_and_gradient_checkpointing(training_args):
    mode = DataTrainingArguments(carry_state=True).training_mode
    with pytest.raises(ValueError, match="--carry_state true needs an FWP model .* --architecture llama is a softmax"):
        mode.check_arguments(SimpleNamespace(architecture="llama"), training_args)
    checkpointing = TrainingArguments(output_dir=training_args.output_dir, use_cpu=True, gradient_checkpointing=True)
    with pytest.raises(ValueError, match=r"--carry_state true cannot be combined with --activation_checkpointing "
                                         r"\(formerly --gradient_checkpointing\)"):
        mode.check_arguments(SimpleNamespace(architecture="fwp"), checkpointing)
    for other in (BlockTraining, PackedDocumentsTraining):  # the other modes train either
        other(DataTrainingArguments()).check_arguments(SimpleNamespace(architecture="llama"), checkpointing)


def test_block_mode_trains_on_the_first_blocks(training_args):
    mode = DataTrainingArguments(block_size=4, max_train_samples=3).training_mode
    train = mode.training_dataset(tokenized_train(), blocks_of(4), training_args)
    assert train["input_ids"] == [[5, 6, 7, 8], [2, 9, 10, 2], [11, 12, 13, 14]]
    assert mode.trainer_class() == (Trainer, {}) and mode.checkpoint_files(training_args) == []


def test_packed_mode_trains_on_documents_cut_at_block_size(training_args):
    mode = DataTrainingArguments(packing=True, block_size=6).training_mode
    train = mode.training_dataset(tokenized_train(), blocks_of(6), training_args)
    assert train["input_ids"] == [[5, 6, 7, 8, 2], [9, 10, 2], [11, 12, 13, 14, 15, 16], [17, 2]]
    assert mode.trainer_class() == (PackedDocumentsTrainer, {})


def test_carried_state_mode_lays_out_one_stream_per_row(training_args):
    """2 streams (per_device_train_batch_size 2, one process) of 2 segments of 4: row m · 2 + s is segment m of
    stream s; with document resets the seq_idx column numbers each token's document."""
    mode = DataTrainingArguments(carry_state=True, block_size=4, reset_state_at_document_end=True).training_mode
    train = mode.training_dataset(tokenized_train(), blocks_of(4), training_args)
    assert train["input_ids"] == [[5, 6, 7, 8], [11, 12, 13, 14], [2, 9, 10, 2], [15, 16, 17, 2]]
    assert train["seq_idx"] == [[0, 0, 0, 0], [2, 2, 2, 2], [0, 1, 1, 1], [2, 2, 2, 2]]
    assert mode.trainer_class() == (CarriedStateTrainer, {"reset_every_segment": False})
    assert mode.checkpoint_files(training_args) == ["carried_state_rank0.pt"]
    control = DataTrainingArguments(carry_state=True, block_size=4, reset_state_every_segment=True).training_mode
    assert "seq_idx" not in control.training_dataset(tokenized_train(), blocks_of(4), training_args).column_names
    assert control.trainer_class() == (CarriedStateTrainer, {"reset_every_segment": True})


def test_each_mode_says_how_the_model_was_trained():
    notes = {name: DataTrainingArguments(block_size=32, **flags).training_mode.trained_note() for name, flags in {
        "blocks": {}, "carried": {"carry_state": True}, "control": {"carry_state": True,
                                                                    "reset_state_every_segment": True},
        "resets": {"carry_state": True, "reset_state_at_document_end": True}}.items()}
    assert "independent blocks" in notes["blocks"]
    assert notes["carried"].startswith("The model was trained with the state carried across segments of 32")
    assert "every segment from an empty state (--reset_state_every_segment)" in notes["control"]
    assert notes["resets"].startswith(notes["carried"]) and "emptied at every document end" in notes["resets"]


def test_a_new_mode_is_one_class(monkeypatch):
    """A mode declared by its flag and options gets the exclusion rules, the refusal of its options without it
    and its place in the recorded data layout from `TRAINING_MODES` alone."""

    class CurriculumTraining(TrainingMode):
        flag = "curriculum"
        summary = "curriculum sorts the documents by length"
        options: ClassVar[dict[str, str]] = {"curriculum_steps": "it sets how fast the curriculum grows"}

        def training_dataset(self, tokenized_train, train_blocks, training_args):
            return tokenized_train.sort("length")

    monkeypatch.setattr(lm_modes, "TRAINING_MODES", (*lm_modes.TRAINING_MODES, CurriculumTraining))
    base = {"packing": False, "carry_state": False, "reset_state_at_document_end": False,
            "reset_state_every_segment": False, "curriculum": False, "curriculum_steps": False,
            "block_size": 8, "max_train_samples": None}
    assert isinstance(select_training_mode(SimpleNamespace(**{**base, "curriculum": True})), CurriculumTraining)
    with pytest.raises(ValueError, match="--carry_state true and --curriculum true exclude each other: carry_state "
                                         "continues .*, curriculum sorts the documents by length; pick one"):
        select_training_mode(SimpleNamespace(**{**base, "curriculum": True, "carry_state": True}))
    with pytest.raises(ValueError, match="--curriculum_steps true needs --curriculum true: it sets how fast"):
        select_training_mode(SimpleNamespace(**{**base, "curriculum_steps": True}))
    assert list(training_data_layout(SimpleNamespace(**base))) == [
        "block_size", "max_train_samples", "packing", "carry_state", "reset_state_at_document_end",
        "reset_state_every_segment", "curriculum", "curriculum_steps"]
