"""Tests of training with the fast-weight state carried across segments (`fwp_hf.training.carried_state`,
``train_lm.py --carry_state true``) and of the long-context curve (`lm_evaluation.perplexity_by_position`).

Covered: the stream layout (row b of a process's consecutive micro-batches is contiguous in the token
stream; with 2 processes each process reads its own streams); the Trainer's micro-batch losses equal a
hand-carried pass over the streams (with and without gradient accumulation, with a short-convolution
window carried too, and a reset where the streams restart) and differ from independent blocks; the
carried states are detached; an interrupted run resumed from a checkpoint logs the uninterrupted
run's losses (and a missing or emptied state file breaks that: an error, a different curve);
hybrids, Llama and gradient checkpointing are refused; an end-to-end run writes the curve; the curve's
bucket means average back to `segment_perplexity`; two processes through `accelerate launch` train the
same streams as one process with the global batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from itertools import chain
from pathlib import Path

import pytest
import test_lm_training
import torch
import torch.nn.functional as F
from accelerate.data_loader import BatchSamplerShard
from conftest import make_lm, random_ids, type_variant
from test_lm_training import REPO_ROOT, InterruptAtStep, logged_losses, tiny_flags
from torch.utils.data import BatchSampler, SequentialSampler
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, TrainingArguments, default_data_collator

from fwp_hf.training.carried_state import CarriedStateTrainer, stream_segments_dataset
from fwp_hf.training.lm import parse_lm_arguments, run_lm_training
from fwp_hf.training.lm_evaluation import perplexity_by_position, plot_perplexity_by_position, segment_perplexity

data_files = test_lm_training.data_files  # the tiny Penn Treebank files and tokenizer of the LM training tests

pytestmark = pytest.mark.usefixtures("single_thread")


def batches_of_process(dataset, batch_size: int, num_processes: int, process_index: int) -> list[list[list[int]]]:
    """The batches (rows of input_ids) process `process_index` reads: the Trainer's sequential batches,
    sharded as accelerate shards them (`BatchSamplerShard`, split_batches=False)."""
    sampler = BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    shard = BatchSamplerShard(sampler, num_processes=num_processes, process_index=process_index)
    return [[dataset[i]["input_ids"] for i in indices] for indices in shard]


@pytest.mark.parametrize("num_processes", [1, 2])
def test_each_row_continues_its_stream_and_processes_read_disjoint_streams(num_processes):
    rows_per_process, length = 2, 4
    stream = list(range(1000, 1000 + 2 * 3 * length * 2 + 5))  # 2 processes × 2 rows × 3 segments, and a tail
    dataset = stream_segments_dataset(stream, length, num_streams=num_processes * rows_per_process)
    assert dataset["labels"] == dataset["input_ids"]
    streams_of_process = []
    for process in range(num_processes):
        batches = batches_of_process(dataset, rows_per_process, num_processes, process)
        assert all(len(batch) == rows_per_process for batch in batches)
        rows = [list(chain.from_iterable(batch[b] for batch in batches)) for b in range(rows_per_process)]
        for row in rows:
            assert row == list(range(row[0], row[0] + len(row))), "a row is not a contiguous piece of the stream"
        streams_of_process.append(rows)
    every_row = [token for rows in streams_of_process for row in rows for token in row]
    assert sorted(every_row) == stream[: len(every_row)] and len(every_row) == len(stream) - 5  # disjoint, all used
    if num_processes == 2:  # process 0 reads the first two streams, process 1 the next two
        assert streams_of_process[0][1][-1] + 1 == streams_of_process[1][0][0]


class RecordingTrainer(CarriedStateTrainer):
    """Records every training micro-batch's mean loss (from its logits) and whether a carried tensor needs grad."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batch_losses: list[float] = []
        self.carried_needs_grad: list[bool] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            logits, labels = outputs.logits.detach().float(), inputs["labels"]
            mean = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:]).item()
            self.micro_batch_losses.append(mean)
            tensors = [tensor for layer in self.carried_cache.layers for tensor in layer.tensors()]
            self.carried_needs_grad.append(any(tensor.requires_grad or tensor.grad_fn for tensor in tensors))
        return (loss, outputs) if return_outputs else loss


def carried_trainer(model, dataset, output_dir, trainer_class=CarriedStateTrainer, reset_every_segment=False,
                    **overrides) -> CarriedStateTrainer:
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=2, report_to="none", disable_tqdm=True,
        save_strategy="no", use_cpu=True, logging_steps=1, seed=0, **overrides,
    )
    return trainer_class(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                         reset_every_segment=reset_every_segment)


def hand_carried_losses(model, streams: torch.Tensor, length: int, carry: bool) -> list[float]:
    """Per segment, the mean loss of the model on segment m of every stream, from segment m − 1's final state
    (carry) or from an empty state."""
    losses, cache = [], DynamicCache() if carry else None
    with torch.no_grad():
        for start in range(0, streams.shape[1], length):
            output = model(input_ids=streams[:, start : start + length], past_key_values=cache, use_cache=carry)
            cache = output.past_key_values if carry else None
            logits, targets = output.logits[:, :-1].float(), streams[:, start + 1 : start + length]
            losses.append(F.cross_entropy(logits.transpose(1, 2), targets).item())
    return losses


@pytest.mark.parametrize(
    ("variant", "accumulation"), [(type_variant("delta"), 1), (type_variant("delta"), 2), ("delta-silu", 1)]
)
def test_micro_batches_start_from_the_previous_final_state(variant, accumulation, tmp_path):
    """learning rate 0: the weights stay put, so the Trainer's micro-batch losses can be recomputed by hand."""
    length, segments = 8, 3
    model = make_lm(variant)  # delta-silu: a short convolution, whose window is carried too
    stream = random_ids(1, 2 * segments * length).flatten()
    dataset = stream_segments_dataset(stream, length, num_streams=2)
    micro_batches = 5  # one epoch of 3, then the streams restart
    trainer = carried_trainer(model, dataset, tmp_path, RecordingTrainer, learning_rate=0.0,
                              gradient_accumulation_steps=accumulation, max_steps=5 if accumulation == 1 else 3)
    trainer.train()
    assert len(trainer.micro_batch_losses) == micro_batches
    assert trainer.carried_needs_grad == [False] * micro_batches  # truncated at every segment boundary

    model.eval()
    streams = stream.view(2, segments * length)
    carried = hand_carried_losses(model, streams, length, carry=True)
    independent = hand_carried_losses(model, streams, length, carry=False)
    expected = carried + carried[: micro_batches - segments]  # a new epoch starts from an empty state
    assert trainer.micro_batch_losses == pytest.approx(expected, rel=1e-5)
    assert carried[0] == pytest.approx(independent[0], rel=1e-6)
    assert min(abs(c - i) for c, i in zip(carried[1:], independent[1:])) > 1e-3  # carrying changes the loss


def test_in_order_control_reads_the_same_streams_from_an_empty_state(tmp_path):
    """reset_every_segment: the micro-batches are the carried run's, in its order, each from an empty state."""
    length, segments = 8, 3
    model = make_lm(type_variant("delta"))
    stream = random_ids(1, 2 * segments * length).flatten()
    dataset = stream_segments_dataset(stream, length, num_streams=2)
    trainer = carried_trainer(model, dataset, tmp_path, RecordingTrainer, learning_rate=0.0, max_steps=segments,
                              reset_every_segment=True)
    trainer.train()
    model.eval()
    independent = hand_carried_losses(model, stream.view(2, segments * length), length, carry=False)
    assert trainer.micro_batch_losses == pytest.approx(independent, rel=1e-5)
    carried = hand_carried_losses(model, stream.view(2, segments * length), length, carry=True)
    assert abs(trainer.micro_batch_losses[-1] - carried[-1]) > 1e-3


def test_in_order_control_flags_are_checked(data_files, tmp_path):
    with pytest.raises(ValueError, match="--reset_state_every_segment true needs --carry_state true"):
        parse_lm_arguments(tiny_flags(data_files, tmp_path, reset_state_every_segment="true"))
    with pytest.raises(ValueError, match="--reset_state_every_segment true and --reset_state_at_document_end true "
                                         "exclude each other"):
        parse_lm_arguments(tiny_flags(data_files, tmp_path, carry_state="true", reset_state_every_segment="true",
                                      reset_state_at_document_end="true"))
    output_dir = tmp_path / "control"
    metrics = run_lm_training(*parse_lm_arguments(tiny_flags(
        data_files, output_dir, carry_state="true", reset_state_every_segment="true", max_steps=2,
        sample_max_new_tokens=1,
    )))
    assert metrics["eval_carried_state_perplexity"] > 1
    assert "every segment from an empty state (--reset_state_every_segment)" in (output_dir / "README.md").read_text()


def test_carried_states_take_no_gradient_from_the_next_segment(tmp_path):
    """A real step (learning rate > 0): the carried state is a leaf without grad, and the model's gradient is
    the gradient of the current segment's loss from that fixed state."""
    length = 8
    model = make_lm(type_variant("delta"))
    dataset = stream_segments_dataset(random_ids(1, 2 * 2 * length).flatten(), length, num_streams=2)
    trainer = carried_trainer(model, dataset, tmp_path, learning_rate=1e-2, max_steps=1)
    trainer.train()
    carried = trainer.carried_cache
    assert all(not tensor.requires_grad and tensor.grad_fn is None
               for layer in carried.layers for tensor in layer.tensors())
    assert trainer.micro_batches_seen == 1 and trainer.segment_index == 1


def test_training_refuses_hybrids_llama_and_gradient_checkpointing(data_files, tmp_path):
    hybrid = make_lm("hybrid")
    with pytest.raises(ValueError, match=r"--carry_state true needs a model whose every layer keeps a fixed-size "
                                         r"fast-weight state; the softmax layers of this model \(layers: \['delta', "
                                         r"'softmax'\]\)"):
        carried_trainer(hybrid, stream_segments_dataset(range(64), 8, 2), tmp_path)
    flags = {"carry_state": "true", "max_steps": 1}
    with pytest.raises(ValueError, match="the softmax layers of this model"):
        run_lm_training(*parse_lm_arguments(tiny_flags(
            data_files, tmp_path / "h", config_overrides='{"attention_type": ["delta", "softmax"]}', **flags)))
    with pytest.raises(ValueError, match="--carry_state true needs an FWP model .* --architecture llama"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path / "l", architecture="llama", **flags)))
    with pytest.raises(ValueError, match=r"--carry_state true cannot be combined with --activation_checkpointing "
                                         r"\(formerly --gradient_checkpointing\)"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path / "g", gradient_checkpointing="true",
                                                       **flags)))
    with pytest.raises(ValueError, match="has 3 rows, not a multiple of the 2 streams"):
        carried_trainer(make_lm(type_variant("delta")), stream_segments_dataset(range(30), 8, 3), tmp_path)


RESUME_FLAGS = {  # 20 blocks of 32 = 4 streams × 5 segments: 12 steps cross two epoch ends
    "carry_state": "true", "max_train_samples": 20, "max_steps": 12, "save_strategy": "steps", "save_steps": 4,
    "do_eval": "false", "sample_max_new_tokens": 1,
}


def interrupted_and_resumed(data_files, tmp_path, flags: dict, checkpoint_step: int = 8,
                            ) -> tuple[dict[int, float], Path, dict]:
    """Train with `flags` uninterrupted, then interrupted one step after `checkpoint_step` and resumed from that
    checkpoint (by default checkpoint-8: epoch 2, 3 segments into the streams); assert that both log the same
    losses at every step. Returns the uninterrupted losses, the checkpoint and its saved carried state."""
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path / "full", **flags)))
    uninterrupted = logged_losses(tmp_path / "full")
    assert sorted(uninterrupted) == list(range(1, flags["max_steps"] + 1))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, interrupted, **flags)),
                        callbacks=[InterruptAtStep(checkpoint_step + 1)])
    checkpoint = interrupted / f"checkpoint-{checkpoint_step}"
    saved = torch.load(checkpoint / "carried_state_rank0.pt", weights_only=True)
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, interrupted, resume_from_checkpoint=checkpoint,
                                                   **flags)))
    resumed = logged_losses(interrupted)
    assert sorted(resumed) == sorted(uninterrupted)
    for step, loss in uninterrupted.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    return uninterrupted, checkpoint, saved


def test_interrupted_carried_state_run_resumes_with_the_same_loss_curve(data_files, tmp_path):
    uninterrupted, checkpoint, saved = interrupted_and_resumed(data_files, tmp_path, RESUME_FLAGS)
    assert (saved["micro_batches_seen"], saved["num_streams"], saved["segments_per_stream"]) == (8, 4, 5)

    # The comparison can fail: resumed from an empty state instead, step 9 scores differently ...
    emptied = tmp_path / "emptied"
    emptied_checkpoint = emptied / "checkpoint-8"
    shutil.copytree(checkpoint, emptied_checkpoint)
    torch.save({**saved, "layers": None}, emptied_checkpoint / "carried_state_rank0.pt")
    run_lm_training(*parse_lm_arguments(
        tiny_flags(data_files, emptied, resume_from_checkpoint=emptied_checkpoint, **{**RESUME_FLAGS, "max_steps": 9})
    ))
    assert abs(logged_losses(emptied)[9] - uninterrupted[9]) > 1e-3
    # ... so a checkpoint without its state file is refused rather than resumed from an empty state.
    (emptied_checkpoint / "carried_state_rank0.pt").unlink()
    with pytest.raises(ValueError, match=r"checkpoint-8' is incomplete \(missing carried_state_rank0.pt\)"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, emptied, resume_from_checkpoint=emptied_checkpoint,
                                                       **RESUME_FLAGS)))
    trainer = carried_trainer(make_lm(type_variant("delta")), stream_segments_dataset(range(64), 8, 2), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-8/carried_state_rank0.pt' does not exist: resuming a "
                                                r"--carry_state true run needs the fast-weight states"):
        trainer.load_carried_state(str(emptied_checkpoint))


def test_resume_inside_an_epoch_under_gradient_accumulation_counts_micro_batches(data_files, tmp_path):
    # 5 segments per stream read 2 micro-batches per optimizer step: steps of 2, 2, 1 micro-batches per epoch.
    # checkpoint-4 is one step into epoch 2: 5 + 2 = 7 micro-batches read (not 4 steps × 2 = 8).
    flags = {**RESUME_FLAGS, "gradient_accumulation_steps": 2, "max_steps": 6}
    uninterrupted, _, saved = interrupted_and_resumed(data_files, tmp_path, flags, checkpoint_step=4)
    assert (saved["micro_batches_seen"], saved["global_step"]) == (7, 4)
    assert len(set(uninterrupted.values())) == len(uninterrupted)  # every step scores differently


def test_a_kill_while_checkpointing_leaves_the_run_resumable(data_files, tmp_path, caplog):
    flags = {**RESUME_FLAGS, "max_steps": 8}
    run_dir = tmp_path / "run"
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, run_dir, **flags)))
    # A kill after the Trainer's trainer_state.json but before the carried states of checkpoint-8 ...
    (run_dir / "checkpoint-8" / "carried_state_rank0.pt").unlink()
    # ... so resuming from "last" skips checkpoint-8, says so, and continues from checkpoint-4.
    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, run_dir, resume_from_checkpoint="last",
                                                       **{**flags, "max_steps": 5})))
    assert re.search(r"skipping checkpoint \S*checkpoint-8: .*missing carried_state_rank0.pt", caplog.text)
    assert "checkpoint-4, the newest complete checkpoint" in caplog.text
    # A state file left empty (killed while torch.save wrote it, before atomic writes) names the file.
    checkpoint = run_dir / "checkpoint-4"
    (checkpoint / "carried_state_rank0.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint-4'?: carried_state_rank0.pt cannot be read .*resume from an "
                                         "earlier checkpoint"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, run_dir, resume_from_checkpoint=checkpoint,
                                                       **flags)))
    trainer = carried_trainer(make_lm(type_variant("delta")), stream_segments_dataset(range(64), 8, 2), tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint-4/carried_state_rank0.pt' cannot be read \(EOFError"):
        trainer.load_carried_state(str(checkpoint))
    # Every checkpoint this run wrote holds its state file whole, with no temporary left beside it.
    for folder in run_dir.glob("checkpoint-*"):
        assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_carried_state_resume_with_another_block_size_is_refused(data_files, tmp_path):
    run_dir = tmp_path / "run"
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, run_dir, **{**RESUME_FLAGS, "max_steps": 4})))
    # 20 blocks' tokens, 4 streams: 5 segments of 16 tokens or of 32, so the stream layout alone agrees.
    with pytest.raises(ValueError, match=r"would change what the run trains: block_size: 32 → 16"):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, run_dir, resume_from_checkpoint="last",
                                                       **{**RESUME_FLAGS, "block_size": 16})))


def validation_stream(data_files, output_dir: Path, max_tokens: int) -> torch.Tensor:
    """The first `max_tokens` tokens of the validation texts, each followed by </s>, with the run's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    texts = [line for line in data_files["validation"].read_text().splitlines() if line.strip()]
    ids = [token for text in texts for token in
           [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]]
    return torch.tensor(ids[:max_tokens])


def test_carried_state_run_end_to_end_writes_the_position_curve(data_files, tmp_path):
    output_dir = tmp_path / "run"
    metrics = run_lm_training(*parse_lm_arguments(tiny_flags(
        data_files, output_dir, carry_state="true", max_steps=3, position_bucket_size=100, sample_max_new_tokens=1,
    )))
    assert metrics["train_samples"] % 4 == 0 and metrics["eval_perplexity"] > 1
    curves = json.loads((output_dir / "perplexity_by_position.json").read_text())
    assert set(curves) == {"independent_segments", "carried_state"}
    stream = validation_stream(data_files, output_dir, 1200)
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    for mode, curve in curves.items():
        expected = whole_stream_token_losses(model, stream, 32, mode == "carried_state", 2).mean().item()
        assert metrics[f"eval_{mode}_loss"] == pytest.approx(expected, rel=1e-4)
        assert curve["loss"] == pytest.approx(expected, rel=1e-4)
        assert curve["bucket_start"] == list(range(0, 600, 100)) and sum(curve["bucket_tokens"]) == 2 * 599
    assert (output_dir / "perplexity_by_position.png").stat().st_size > 1000
    card = (output_dir / "README.md").read_text()
    assert "trained with the state carried across segments of 32" in card and "carry_state: true" in card


def test_block_trained_run_writes_the_position_curve_too(data_files, tmp_path):
    # The curve of a model trained on independent blocks is the baseline of the carried-state curve.
    output_dir = tmp_path / "run"
    metrics = run_lm_training(*parse_lm_arguments(tiny_flags(
        data_files, output_dir, max_steps=2, position_bucket_size=200, sample_max_new_tokens=1,
    )))
    curves = json.loads((output_dir / "perplexity_by_position.json").read_text())
    assert set(curves) == {"independent_segments", "carried_state"}
    stream = validation_stream(data_files, output_dir, 1200)
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    for mode, curve in curves.items():
        expected = math.exp(whole_stream_token_losses(model, stream, 32, mode == "carried_state", 2).mean().item())
        assert metrics[f"eval_{mode}_perplexity"] == pytest.approx(expected, rel=1e-4)
        assert curve["perplexity"] == pytest.approx(expected, rel=1e-4)
        assert curve["bucket_start"] == [0, 200, 400]


def whole_stream_token_losses(model, stream: torch.Tensor, segment_length: int, carry_state: bool,
                              num_streams: int) -> torch.Tensor:
    """The independent expectation of `stream_token_losses`: ``[S, N − 1]`` next-token losses, with the state
    carried = one forward pass over each whole stream (a fast-weight model's chunkwise form equals its
    recurrence), else one forward pass per segment of `segment_length` targets."""
    streams = stream[: stream.numel() // num_streams * num_streams].view(num_streams, -1)
    with torch.no_grad():
        if carry_state:
            logits = model(streams[:, :-1]).logits
        else:
            logits = torch.cat([model(streams[:, start : min(start + segment_length, streams.shape[1] - 1)]).logits
                                for start in range(0, streams.shape[1] - 1, segment_length)], dim=1)
    return F.cross_entropy(logits.double().transpose(1, 2), streams[:, 1:], reduction="none")


@pytest.mark.parametrize("carry_state", [False, True])
def test_perplexity_by_position_equals_hand_computed_bucket_means(carry_state, tmp_path):
    model = make_lm(type_variant("delta"))
    stream = random_ids(3, 41).flatten()  # 3 streams of 41 tokens: targets at positions 1 … 40
    expected = whole_stream_token_losses(model, stream, 7, carry_state, 3)
    args = {"segment_length": 7, "carry_state": carry_state, "num_streams": 3}
    curve = perplexity_by_position(model, stream, bucket_size=16, **args)
    reference = segment_perplexity(model, stream, **args)
    assert curve["bucket_start"] == [0, 16, 32] and curve["bucket_tokens"] == [3 * 15, 3 * 16, 3 * 9]
    # Targets at positions 1-15, 16-31, 32-40 are columns 0-14, 15-30, 31-39 of the [S, N − 1] losses.
    hand_buckets = [expected[:, :15].mean().item(), expected[:, 15:31].mean().item(), expected[:, 31:].mean().item()]
    assert curve["bucket_loss"] == pytest.approx(hand_buckets, rel=1e-5)
    assert curve["bucket_perplexity"] == pytest.approx([math.exp(loss) for loss in hand_buckets], rel=1e-5)
    assert reference["loss"] == pytest.approx(expected.mean().item(), rel=1e-5) and reference["tokens"] == 120
    assert curve["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    plot_perplexity_by_position({"a": curve, "b": curve}, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_two_processes_train_the_same_streams_as_one_process_with_the_global_batch(data_files, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    flags = {"carry_state": "true", "max_train_samples": 24, "max_steps": 4, "do_eval": "false",
             "sample_max_new_tokens": 1, "per_device_train_batch_size": 2}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO_ROOT / "scripts" / "train_lm.py"),
        "--use_cpu", "true", *tiny_flags(data_files, tmp_path / "ddp", **flags),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = tmp_path / "single"
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, single, **{**flags, "per_device_train_batch_size": 4})))
    two_processes, one_process = logged_losses(tmp_path / "ddp"), logged_losses(single)
    assert sorted(two_processes) == [1, 2, 3, 4]  # 24 blocks = 4 streams × 6 segments: one epoch, no restart
    for step, loss in one_process.items():
        assert two_processes[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
