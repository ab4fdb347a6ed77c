"""Tests of ``train_lm.py --carry_state true --reset_state_at_document_end true``: the fast-weight state
carried across segments is emptied at every document start.

Covered: the model — for every attention type whose layers all hold a state, two rows of several
documents fed in segments with a carried cache and ``seq_idx`` give each document its logits alone
(segment boundaries inside documents and exactly at document starts, where `reset_cache_rows` drops the
row's carried state and convolution window; documents starting inside chunks) and leave the last
document's state in the cache; without that reset the logits differ; softmax layers still refuse a
cache with packed rows. The trainer — the logged micro-batch losses equal each document run alone from
an empty state (and differ from carrying without resets); `stream_segments_dataset`'s ``seq_idx`` is laid
out like ``input_ids``. The flag without ``--carry_state`` is an error. The stream evaluation with
``document_ids`` equals each document scored alone. End to end: the carried-state evaluation of a run
trained with the flag resets too (and says so in the card and the curves), and an interrupted run resumed
from a checkpoint logs the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import shutil
from itertools import pairwise

import pytest
import test_lm_training
import torch
import torch.nn.functional as F
from conftest import LM_VARIANTS, assert_close, layer_types, make_lm, random_ids, type_variant
from test_carried_state_training import RESUME_FLAGS, RecordingTrainer, carried_trainer, interrupted_and_resumed
from test_lm_training import tiny_flags
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from fwp_hf.cache_fwp import reset_cache_rows
from fwp_hf.token_mixers import every_layer_holds_state
from fwp_hf.training.carried_state import stream_segments_dataset
from fwp_hf.training.lm import DataTrainingArguments, parse_lm_arguments, run_lm_training
from fwp_hf.training.lm_data import load_raw_lm_datasets, token_document_ids, token_stream, tokenize_texts
from fwp_hf.training.lm_evaluation import perplexity_by_position, segment_perplexity, stream_token_losses

data_files = test_lm_training.data_files  # the tiny Penn Treebank files and tokenizer of the LM training tests

pytestmark = pytest.mark.usefixtures("single_thread")

ALL_STATE_VARIANTS = [name for name, settings in LM_VARIANTS.items() if every_layer_holds_state(layer_types(settings))]


def runs_of(document_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of every run of equal ids in a 1-D tensor (a document from its first token here)."""
    starts = [0] + [t for t in range(1, len(document_ids)) if document_ids[t] != document_ids[t - 1]]
    return list(zip(starts, starts[1:] + [len(document_ids)]))


def logits_alone(model, ids: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, V]`` with every run of equal document ids of every row run alone from an empty state."""
    with torch.no_grad():
        rows = [torch.cat([model(ids[row : row + 1, start:end]).logits for start, end in runs_of(document_ids[row])],
                          dim=1)
                for row in range(ids.shape[0])]
    return torch.cat(rows)


# ----------------------------------------------------------------------------------------------
# The model: packed rows continuing a cache
# ----------------------------------------------------------------------------------------------

# Two rows of 30 tokens with different documents (tiny models' chunks of 8: starts inside chunks and at 8, 16).
ROW_DOCUMENT_LENGTHS = ((5, 13, 3, 9), (8, 4, 11, 7))  # row 0 starts at 0, 5, 18, 21; row 1 at 0, 8, 12, 23
# Segment boundaries: at 5 row 0 starts a document (row 1 is inside one), at 12 row 1 does, 20 and 26 are
# inside documents of both rows; the second cut has a segment of 18 tokens (three chunks, four starts inside)
# and one at whose first token (23) only row 1 starts a document.
SEGMENT_CUTS = {"short": (5, 12, 20, 26), "long": (5, 23)}


def row_documents(seed: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.cat([random_ids(1, sum(lengths), seed=seed + row) for row, lengths in enumerate(ROW_DOCUMENT_LENGTHS)])
    documents = torch.stack([torch.repeat_interleave(torch.arange(len(lengths)) + 10 * row, torch.tensor(lengths))
                             for row, lengths in enumerate(ROW_DOCUMENT_LENGTHS)])
    return ids, documents


def segments_with_cache(model, ids, documents, cuts, reset: bool = True) -> tuple[torch.Tensor, DynamicCache]:
    """The rows fed in segments cut at `cuts`, the cache carried, seq_idx given, and (with `reset`) the
    carried state of a row dropped where a document starts at a segment's first token."""
    bounds = [0, *cuts, ids.shape[1]]
    cache, logits = DynamicCache(), []
    with torch.no_grad():
        for start, end in pairwise(bounds):
            if start > 0 and reset:
                reset_cache_rows(cache, documents[:, start] != documents[:, start - 1])
            output = model(ids[:, start:end], seq_idx=documents[:, start:end], past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            logits.append(output.logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("cuts", list(SEGMENT_CUTS.values()), ids=list(SEGMENT_CUTS))
@pytest.mark.parametrize("variant", ALL_STATE_VARIANTS)
def test_segments_with_a_carried_cache_and_seq_idx_give_each_document_alone(variant, cuts):
    model = make_lm(variant)
    ids, documents = row_documents()
    logits, cache = segments_with_cache(model, ids, documents, cuts)
    assert_close(logits, logits_alone(model, ids, documents), what=f"{variant}, cuts {cuts}")
    # The cache holds each row's state (and convolution window) after its last token: its last document's alone.
    with torch.no_grad():
        for row, lengths in enumerate(ROW_DOCUMENT_LENGTHS):
            last = model(ids[row : row + 1, -lengths[-1] :], use_cache=True).past_key_values
            for i, (layer, expected) in enumerate(zip(cache.layers, last.layers)):
                assert len(layer.tensors()) == len(expected.tensors())
                for carried, alone in zip(layer.tensors(), expected.tensors()):
                    assert_close(carried[row : row + 1], alone, what=f"{variant}: row {row}, layer {i}")


@pytest.mark.parametrize("variant", [type_variant("delta"), "delta-silu"])  # delta-silu: a short convolution
def test_without_dropping_the_carried_row_the_next_document_sees_the_old_one(variant):
    """The check above can fail: at a segment that starts a document, the carried state (and window) must go."""
    model = make_lm(variant)
    ids, documents = row_documents()
    logits, _ = segments_with_cache(model, ids, documents, SEGMENT_CUTS["long"], reset=False)
    expected = logits_alone(model, ids, documents)
    # Row 0 starts a document at the second segment's first token (5), row 1 at the third's (23).
    assert_close(logits[:, :5], expected[:, :5], what="the first segment")
    assert_close(logits[1:, :23], expected[1:, :23], what="row 1 before 23")
    assert (logits[0, 5:18] - expected[0, 5:18]).abs().max() > 1e-3  # row 0's document at 5 saw its past
    assert (logits[1, 23:] - expected[1, 23:]).abs().max() > 1e-3  # row 1's document at 23 saw its past


@pytest.mark.parametrize("variant", ["softmax", "hybrid", "hybrid-fla"])
def test_softmax_layers_still_refuse_packed_rows_with_a_cache(variant):
    model = make_lm(variant)
    ids, documents = row_documents()
    with torch.no_grad():
        cache = model(ids[:, :4], use_cache=True).past_key_values
        with pytest.raises(ValueError, match=r"packed documents .* cannot continue a cache that holds 4 tokens in a "
                                             r"model with softmax layers: their key/value cache"):
            model(ids[:, 4:], seq_idx=documents[:, 4:], past_key_values=cache)
        model(ids[:, 4:], seq_idx=documents[:, 4:], use_cache=True)  # an empty cache is fine


def test_reset_cache_rows_refuses_key_value_layers():
    model = make_lm("hybrid")
    with torch.no_grad():
        cache = model(random_ids(2, 4), use_cache=True).past_key_values
    with pytest.raises(TypeError, match="layer 1 is a DynamicLayer"):
        reset_cache_rows(cache, torch.tensor([True, False]))


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

# 48 tokens = 2 streams × 3 segments of 8. Documents start at 0, 8 (stream 0's second segment), 13, 19,
# 26, 28, 32 and 40 (stream 1's second and third segments); stream 1 (from 24) starts inside a document.
TRAIN_DOCUMENT_LENGTHS = (8, 5, 6, 7, 2, 4, 8, 8)


def test_stream_segments_dataset_lays_seq_idx_out_like_input_ids():
    tokens = torch.arange(100, 150)
    documents = torch.repeat_interleave(torch.arange(len(TRAIN_DOCUMENT_LENGTHS)), torch.tensor(TRAIN_DOCUMENT_LENGTHS))
    dataset = stream_segments_dataset(tokens, 8, 2, document_ids=torch.cat([documents, torch.tensor([99, 99])]))
    for row in dataset:
        assert row["seq_idx"] == [int(documents[token - 100]) for token in row["input_ids"]]
    assert "seq_idx" not in stream_segments_dataset(tokens, 8, 2).column_names
    with pytest.raises(ValueError, match="one document per token: 48 ids for 50 tokens"):
        stream_segments_dataset(tokens, 8, 2, document_ids=documents)


@pytest.mark.parametrize("variant", [type_variant("delta"), "delta-silu"])
def test_trainer_losses_equal_each_document_alone(variant, tmp_path):
    """learning rate 0: the Trainer's micro-batch losses (one epoch of 3 segments, then the streams restart)
    are recomputed with the model run on each document alone from an empty state."""
    length, segments = 8, 3
    model = make_lm(variant)
    stream = random_ids(1, 2 * segments * length, seed=7).flatten()
    documents = torch.repeat_interleave(torch.arange(len(TRAIN_DOCUMENT_LENGTHS)),
                                        torch.tensor(TRAIN_DOCUMENT_LENGTHS))
    losses = {}
    for resets in (True, False):
        dataset = stream_segments_dataset(stream, length, 2, document_ids=documents if resets else None)
        trainer = carried_trainer(make_lm(variant), dataset, tmp_path / str(resets), RecordingTrainer,
                                  learning_rate=0.0, max_steps=5)
        trainer.train()
        losses[resets] = trainer.micro_batch_losses
        assert trainer.carried_needs_grad == [False] * 5

    streams, stream_documents = stream.view(2, -1), documents.view(2, -1)
    alone = logits_alone(model, streams, stream_documents)  # a stream starting inside a document: from there
    expected = []
    for start in range(0, segments * length, length):
        logits, targets = alone[:, start : start + length - 1], streams[:, start + 1 : start + length]
        expected.append(F.cross_entropy(logits.float().transpose(1, 2), targets).item())
    assert losses[True] == pytest.approx(expected + expected[:2], rel=1e-5)
    # Without resets documents see their predecessors (every segment has a document start in some row).
    assert min(abs(plain - reset) for plain, reset in zip(losses[False], losses[True])) > 1e-4


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def test_the_flag_without_carry_state_is_an_error(data_files, tmp_path):
    message = r"--reset_state_at_document_end true needs --carry_state true"
    with pytest.raises(ValueError, match=message):
        parse_lm_arguments(tiny_flags(data_files, tmp_path, reset_state_at_document_end="true"))
    with pytest.raises(ValueError, match=message):
        DataTrainingArguments(reset_state_at_document_end=True)
    assert DataTrainingArguments(carry_state=True, reset_state_at_document_end=True).reset_state_at_document_end


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [type_variant("delta"), "delta-silu"])
def test_stream_evaluation_with_resets_equals_each_document_alone(variant):
    model = make_lm(variant)
    # 64 tokens = 2 streams of 32; documents start at 4, 13, 20 (one token), 21, 33, 39, 42, 52 and 57, of
    # which 21 and 39 are segment starts (segments of 7 from 0 and 32); stream 1 starts inside a document.
    lengths = (4, 9, 7, 1, 12, 6, 3, 10, 5, 7)
    stream = random_ids(1, sum(lengths), seed=9).flatten()
    documents = torch.repeat_interleave(torch.arange(len(lengths)) * 3 + 2, torch.tensor(lengths))
    args = {"segment_length": 7, "num_streams": 2}
    losses = stream_token_losses(model, stream, carry_state=True, document_ids=documents, **args)

    streams, stream_documents = stream.view(2, 32), documents.view(2, 32)
    logits = logits_alone(model, streams[:, :-1], stream_documents[:, :-1])
    expected = F.cross_entropy(logits.float().transpose(1, 2), streams[:, 1:], reduction="none")
    assert_close(losses, expected, rtol=1e-5, what="stream with resets vs each document alone")
    carried = stream_token_losses(model, stream, carry_state=True, **args)
    assert (carried - expected).abs().max() > 1e-3  # the comparison can fail: carrying across documents differs

    # The public wrappers pass the documents on.
    mean = expected.double().mean().item()
    assert segment_perplexity(model, stream, carry_state=True, document_ids=documents, **args)["loss"] == \
        pytest.approx(mean, rel=1e-5)
    curve = perplexity_by_position(model, stream, carry_state=True, document_ids=documents, bucket_size=8, **args)
    assert curve["loss"] == pytest.approx(mean, rel=1e-5) and curve["reset_at_document_starts"] is True
    with pytest.raises(ValueError, match="one document per token: 63 ids for 64 tokens"):
        stream_token_losses(model, stream, carry_state=True, document_ids=documents[:-1], **args)


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


def test_run_with_resets_evaluates_with_the_same_resets(data_files, tmp_path):
    output_dir = tmp_path / "run"
    flags = {"carry_state": "true", "reset_state_at_document_end": "true", "max_steps": 2,
             "position_bucket_size": 200, "sample_max_new_tokens": 1}
    metrics = run_lm_training(*parse_lm_arguments(tiny_flags(data_files, output_dir, **flags)))
    curves = json.loads((output_dir / "perplexity_by_position.json").read_text())
    assert curves["carried_state"]["reset_at_document_starts"] is True
    assert curves["independent_segments"]["reset_at_document_starts"] is False
    card = (output_dir / "README.md").read_text()
    assert "state carried across segments of 32, emptied at document ends" in card
    assert "emptied at every document end (--reset_state_at_document_end" in card

    # The carried-state row is the stream evaluation with the validation texts as documents.
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    raw = load_raw_lm_datasets(train_file=str(data_files["train"]), validation_file=str(data_files["validation"]))
    validation = tokenize_texts(raw, tokenizer)["validation"]
    stream, documents = token_stream(validation), token_document_ids(validation)
    assert len(documents) == len(stream) and documents[0] == 0 and documents[-1] == len(validation) - 1
    args = {"segment_length": 32, "carry_state": True, "num_streams": 2, "max_tokens": 1200}
    expected = each_document_alone_loss(model.eval(), torch.tensor(stream[:1200]), torch.tensor(documents[:1200]), 2)
    assert metrics["eval_carried_state_loss"] == pytest.approx(expected, rel=1e-4)
    with_resets = segment_perplexity(model, stream, document_ids=documents, **args)
    assert with_resets["loss"] == pytest.approx(expected, rel=1e-4)
    assert abs(segment_perplexity(model, stream, **args)["loss"] - expected) > 1e-4  # the resets matter


def each_document_alone_loss(model, stream: torch.Tensor, documents: torch.Tensor, num_streams: int) -> float:
    """The independent expectation of the carried-state stream loss with resets: every stream cut into its runs
    of one document, each run one forward pass from an empty state; the logits at a run's last token predict
    the next run's first token (as the carried evaluation scores it)."""
    length = stream.numel() // num_streams
    losses = []
    with torch.no_grad():
        for s in range(num_streams):
            ids, docs = stream[s * length : (s + 1) * length], documents[s * length : (s + 1) * length]
            starts = [0, *[t for t in range(1, length) if docs[t] != docs[t - 1]], length]
            logits = torch.cat([model(ids[None, a:b]).logits[0] for a, b in pairwise(starts)])
            losses.append(F.cross_entropy(logits[:-1].double(), ids[1:], reduction="none"))
    return torch.cat(losses).mean().item()


def test_interrupted_run_with_resets_resumes_with_the_same_loss_curve(data_files, tmp_path):
    flags = {**RESUME_FLAGS, "reset_state_at_document_end": "true", "max_steps": 10}
    _, checkpoint, saved = interrupted_and_resumed(data_files, tmp_path, flags)
    assert saved["document_ids"] is not None and saved["document_ids"].shape == (4,)  # the trainer got seq_idx

    # A checkpoint whose states come without their documents cannot be resumed with resets.
    bare = tmp_path / "bare" / "checkpoint-8"
    shutil.copytree(checkpoint, bare)
    torch.save({**saved, "document_ids": None}, bare / "carried_state_rank0.pt")
    with pytest.raises(ValueError, match="carried states came without the documents they end in"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, bare.parent, resume_from_checkpoint=bare,
                                                       **flags)))
