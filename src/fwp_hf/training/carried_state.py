"""Training with the fast-weight state carried across segments (truncated backpropagation through time).

As in Transformer-XL's memory and the carry-over option of IDSIA's `lmtool-fwp`: the training token
stream is laid out as ``S`` parallel streams (``S`` = processes × rows per process), each cut into
``K`` consecutive segments of `segment_length` tokens, and row ``b`` of a process's micro-batch
``m + 1`` continues row ``b`` of its micro-batch ``m``. The model starts every micro-batch from the
previous micro-batch's final fast-weight states, detached: gradients stop at the segment boundary.

- `stream_segments_dataset`: the layout. Dataset row ``i = m · S + s`` is segment ``m`` of stream
  ``s``; read in order in batches of ``B`` rows, process ``p`` of ``P`` gets batches ``p, p + P, …``
  (accelerate's `BatchSamplerShard`, ``split_batches=False``), i.e. always the same streams
  ``p · B … p · B + B − 1``, one segment further each time. One process with ``B · P`` rows sees the
  same streams.
- `CarriedStateTrainer`: a `Trainer` that reads that dataset in order (`SequentialSampler`) and, in
  training steps only, passes the carried states to the model (``past_key_values``) and keeps the
  new ones, detached; evaluation is untouched (independent blocks). Micro-batches of a gradient
  accumulation step carry the state in order. After ``K`` micro-batches (one epoch) the streams
  restart and so does the state.
- `CarriedStateCheckpointCallback` (added by the trainer): every checkpoint folder gets
  ``carried_state_rank{p}.pt`` per process (the states and the stream position); resuming from the
  checkpoint loads it, so the resumed run continues the streams exactly (the Trainer skips the
  batches of the epoch already seen, which with this layout are exactly the segments already read).

Resets at document ends (``--reset_state_at_document_end true``): `stream_segments_dataset` with
``document_ids`` (the document of every token: one text of the dataset, with its ``</s>``) adds a
``seq_idx`` column laid out like ``input_ids``. The trainer passes it to the model, whose kernels and
short convolutions then start every document that begins inside a segment from an empty state and
window (packed documents continuing a cache: `inputs_fwp.prepare_mixer_inputs`); where a row's first
token starts a document (its id differs from that of the row's previous token, the last of the
previous micro-batch), the trainer first drops that row's carried state (`cache_fwp.reset_cache_rows`).
Each document is thus trained as if alone from its first token, the state otherwise carried as
before. The last token ids are saved with the states, so a resumed run resets at the same places.

Models with a softmax layer (a key/value cache that grows with the stream) cannot carry a bounded
state and are refused, as are gradient checkpointing (the model then drops the cache in training)
and batch layouts the stream layout cannot follow.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch.utils.data import SequentialSampler
from transformers import DynamicCache, Trainer, TrainerCallback, TrainingArguments
from transformers.cache_utils import Cache
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..cache_fwp import FastWeightCacheLayer, WindowFastWeightCacheLayer, reset_cache_rows
from ..compat_fwp import output_cache
from .common import last_complete_checkpoint, write_atomically
from .lm_evaluation import growing_cache_layer_types, supports_carried_state

CARRIED_STATE_FILE = "carried_state_rank{rank}.pt"


def carried_state_num_streams(training_args: TrainingArguments) -> int:
    """The number of parallel training streams: rows per process × processes (the global batch)."""
    return training_args.train_batch_size * training_args.world_size


def check_carry_state_arguments(training_args: TrainingArguments) -> None:
    """Refuse the training settings the carried state cannot follow, naming the option."""
    if getattr(training_args, "activation_checkpointing", False) or training_args.gradient_checkpointing:
        raise ValueError(
            "--carry_state true cannot be combined with --activation_checkpointing "
            "(formerly --gradient_checkpointing): the model drops its cache (use_cache=False) under activation "
            "checkpointing in training, so no state could be carried"
        )
    if training_args.n_gpu > 1:
        raise ValueError(
            f"--carry_state true needs one device per process, but this process drives {training_args.n_gpu} GPUs "
            "(DataParallel): launch one process per GPU with accelerate launch / torchrun"
        )
    if training_args.auto_find_batch_size:
        raise ValueError("--carry_state true cannot use --auto_find_batch_size: the streams are laid out for a fixed "
                         "per_device_train_batch_size")
    if training_args.accelerator_config.split_batches:
        raise ValueError("--carry_state true needs accelerator_config split_batches=False (each process reads whole "
                         "batches: its own streams)")
    if training_args.ignore_data_skip:
        raise ValueError("--carry_state true cannot use --ignore_data_skip: a resumed run must skip the segments "
                         "already read to continue the streams where they were")
    if training_args.train_sampling_strategy not in ("random", "sequential"):
        raise ValueError(f"--carry_state true reads the streams in order; train_sampling_strategy "
                         f"{training_args.train_sampling_strategy!r} would reorder them (allowed: random, the "
                         "default, or sequential; both become sequential)")


def check_carry_state_model(model) -> None:
    """Refuse a model whose layers cannot carry a bounded state (softmax layers, non-FWP models)."""
    if not supports_carried_state(model):
        kinds = getattr(model.config, "layer_attention_types", [model.config.model_type])
        raise ValueError(
            "--carry_state true needs a model whose every layer keeps a fixed-size fast-weight state; the "
            f"{', '.join(growing_cache_layer_types(model))} layers of this model (layers: {list(kinds)}) keep a "
            "key/value cache that grows with the stream. Train it with --carry_state false (independent blocks)"
        )


def stream_segments_dataset(
    token_ids: Sequence[int] | torch.Tensor,
    segment_length: int,
    num_streams: int,
    document_ids: Sequence[int] | torch.Tensor | None = None,
) -> datasets.Dataset:
    """The token stream as `num_streams` parallel streams of ``K`` segments: row ``m · S + s`` (``S`` =
    `num_streams`) holds segment ``m`` of stream ``s``, i.e. tokens ``(s · K + m) · L … + L`` of the stream
    (``L`` = `segment_length`, ``K`` = ``len(token_ids) // (S · L)``; the tail is dropped).

    Columns ``input_ids`` and ``labels`` (equal: the model shifts the labels), each ``[L]`` per row; with
    `document_ids` (one integer per token, equal within a document, e.g. `lm_data.token_document_ids`)
    also ``seq_idx``, those ids laid out exactly like ``input_ids`` (the state then resets at every document
    start, see the module docstring).
    """
    if segment_length < 2 or num_streams < 1:
        raise ValueError(f"segment_length must be >= 2 and num_streams >= 1, got {segment_length} and {num_streams}")
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if document_ids is not None:
        documents = torch.as_tensor(document_ids, dtype=torch.long).flatten()
        if documents.shape != ids.shape:
            raise ValueError(f"document_ids must give one document per token: {documents.numel()} ids for "
                             f"{ids.numel()} tokens")
    segments_per_stream = ids.numel() // (num_streams * segment_length)
    if segments_per_stream < 1:
        raise ValueError(
            f"{ids.numel()} training tokens are too few for {num_streams} streams (processes × "
            f"per_device_train_batch_size) of at least one segment of {segment_length} tokens: lower the batch size "
            "or block_size, or give more data"
        )

    def segment_rows(tensor: torch.Tensor) -> list[list[int]]:  # [K · S, L], segment-major
        streams = tensor[: num_streams * segments_per_stream * segment_length].view(
            num_streams, segments_per_stream, segment_length
        )
        return streams.transpose(0, 1).reshape(-1, segment_length).tolist()

    rows = segment_rows(ids)
    columns = {"input_ids": rows, "labels": [list(row) for row in rows]}
    if document_ids is not None:
        columns["seq_idx"] = segment_rows(documents)
    return datasets.Dataset.from_dict(columns)


def cache_tensors(cache: Cache) -> list[dict[str, Any]]:
    """What each layer of a fast-weight cache carries, detached and on the CPU (for a checkpoint), and whether it
    is a softmax-window layer's (`WindowFastWeightCacheLayer`: a window of keys and values besides the state)."""
    return [{"tensors": [tensor.detach().cpu() for tensor in layer.tensors()], "seen_tokens": layer.seen_tokens,
             "window": bool(getattr(layer, "holds_window", False))}
            for layer in cache.layers]


def cache_from_tensors(layers: list[dict[str, Any]], device: torch.device | str) -> Cache:
    """The inverse of `cache_tensors`: a cache of `FastWeightCacheLayer`s (`WindowFastWeightCacheLayer`s where
    saved so) on `device`."""
    cache = Cache(layers=[WindowFastWeightCacheLayer() if saved.get("window") else FastWeightCacheLayer()
                          for saved in layers])
    for layer, saved in zip(cache.layers, layers):
        layer.load_tensors(*(tensor.to(device) for tensor in saved["tensors"]))
        layer.seen_tokens = saved["seen_tokens"]
    return cache


def detach_cache(cache: Cache) -> Cache:
    """Detach every carried tensor of `cache` in place (truncate backpropagation at this boundary)."""
    for layer in cache.layers:
        if not isinstance(layer, FastWeightCacheLayer):
            raise TypeError(f"a carried cache holds only fast-weight layers, got {type(layer).__name__}")
        layer.load_tensors(*(tensor.detach() for tensor in layer.tensors()))
    return cache


class CarriedStateTrainer(Trainer):
    """`Trainer` whose training micro-batches continue the previous micro-batch's streams with its final
    fast-weight states, detached (truncated BPTT); see the module docstring.

    With ``reset_every_segment=True`` nothing is carried: the streams are read in the same order, every
    segment from an empty state (the data-order control of carried-state training).

    `train_dataset` must be laid out by `stream_segments_dataset` with ``carried_state_num_streams(args)``
    streams; with its ``seq_idx`` column (``document_ids``) the state resets at every document start.
    Evaluation (``model.eval()``) runs as in `Trainer`: independent blocks.
    """

    def __init__(self, *args, reset_every_segment: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The data-order control: the same streams in the same order, every segment from an empty state.
        self.reset_every_segment = reset_every_segment
        check_carry_state_arguments(self.args)
        check_carry_state_model(self.model)
        self.num_streams = carried_state_num_streams(self.args)
        self.segments_per_stream = 0
        if self.train_dataset is not None:
            if len(self.train_dataset) % self.num_streams:
                raise ValueError(
                    f"the carried-state training dataset has {len(self.train_dataset)} rows, not a multiple of the "
                    f"{self.num_streams} streams (processes × per_device_train_batch_size): lay it out with "
                    "stream_segments_dataset"
                )
            self.segments_per_stream = len(self.train_dataset) // self.num_streams
        self.carried_cache: Cache | None = None  # the states after the last training micro-batch
        # With document resets: the document of each row's last token of that micro-batch ([B]), else None.
        self.carried_document_ids: torch.Tensor | None = None
        self.micro_batches_seen = 0  # training micro-batches this process has read, over all epochs
        self.add_callback(CarriedStateCheckpointCallback(self))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "seq_idx" not in self._signature_columns:  # a keyword of the model's **kwargs: keep the column
            self._signature_columns.append("seq_idx")

    def _get_train_sampler(self, train_dataset=None) -> SequentialSampler:
        return SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

    @property
    def segment_index(self) -> int:
        """The segment of its streams the next training micro-batch holds (0: the streams restart)."""
        return self.micro_batches_seen % self.segments_per_stream

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation during training: independent blocks, as in Trainer
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rows = inputs["input_ids"].shape[0]
        if rows != self.args.train_batch_size:
            raise ValueError(f"a carried-state micro-batch has {rows} rows, expected per_device_train_batch_size="
                             f"{self.args.train_batch_size} (one per stream of this process)")
        if self.segment_index == 0 or self.reset_every_segment:
            self.carried_cache = None  # an epoch begins (the streams restart), or the control carries nothing
            self.carried_document_ids = None
        document_ids = inputs.get("seq_idx")
        if document_ids is not None and self.carried_cache is not None:
            if self.carried_document_ids is None:
                raise ValueError(
                    "this micro-batch resets the state at document starts (a seq_idx column) but the carried "
                    "states came without the documents they end in (a checkpoint of a run without "
                    "--reset_state_at_document_end?): resume with the settings of the run that wrote them"
                )
            starts = document_ids[:, 0] != self.carried_document_ids.to(document_ids.device)
            reset_cache_rows(self.carried_cache, starts)  # a document starts at the row's first token
        cache = self.carried_cache if self.carried_cache is not None else DynamicCache()
        loss, outputs = super().compute_loss(
            model, {**inputs, "past_key_values": cache, "use_cache": True}, True, num_items_in_batch
        )
        self.carried_cache = detach_cache(output_cache(outputs))
        self.carried_document_ids = None if document_ids is None else document_ids[:, -1].detach().clone()
        self.micro_batches_seen += 1
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; resuming also loads the checkpoint's carried states (`load_carried_state`)."""
        if resume_from_checkpoint is True:  # the newest complete checkpoint (with this run's carried states)
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, self.carried_state_files())
        if isinstance(resume_from_checkpoint, str):
            self.load_carried_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def carried_state_files(self) -> list[str]:
        """The carried-state file names of every process (each checkpoint of this run has all of them)."""
        return [CARRIED_STATE_FILE.format(rank=rank) for rank in range(self.args.world_size)]

    def carried_state_path(self, checkpoint: str) -> str:
        """This process's carried-state file in `checkpoint`."""
        return os.path.join(checkpoint, CARRIED_STATE_FILE.format(rank=self.args.process_index))

    def save_carried_state(self, checkpoint: str) -> None:
        """Write this process's carried states and stream position into the checkpoint folder (atomically:
        a kill while writing leaves no half-written file)."""
        os.makedirs(checkpoint, exist_ok=True)
        saved = {
            "num_streams": self.num_streams,
            "segments_per_stream": self.segments_per_stream,
            "micro_batches_seen": self.micro_batches_seen,
            "global_step": self.state.global_step,
            "layers": None if self.carried_cache is None else cache_tensors(self.carried_cache),
            "document_ids": None if self.carried_document_ids is None else self.carried_document_ids.cpu(),
        }
        write_atomically(self.carried_state_path(checkpoint), lambda temporary: torch.save(saved, temporary))

    def load_carried_state(self, checkpoint: str) -> None:
        """Read this process's carried states and stream position from a checkpoint folder; a missing file
        or one written for another stream layout is an error (a zero state would not continue the streams)."""
        path = self.carried_state_path(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path!r} does not exist: resuming a --carry_state true run needs the fast-weight states carried at "
                "the checkpoint (written with every checkpoint of a carried-state run); without them the streams "
                "would restart from an empty state. Resume from a checkpoint of a carried-state run with the same "
                "number of processes"
            )
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except (EOFError, RuntimeError, OSError, pickle.UnpicklingError) as error:
            raise ValueError(
                f"{path!r} cannot be read ({type(error).__name__}: {error}): it is corrupt or was half-written; resume "
                "from an earlier checkpoint of this run (or delete this one and resume from the last)"
            ) from error
        layout = (saved["num_streams"], saved["segments_per_stream"])
        if layout != (self.num_streams, self.segments_per_stream):
            raise ValueError(
                f"{path!r} was written for {layout[0]} streams of {layout[1]} segments, this run lays the data out "
                f"as {self.num_streams} streams of {self.segments_per_stream}: resume with the same data, "
                "per_device_train_batch_size and number of processes"
            )
        self.micro_batches_seen = saved["micro_batches_seen"]
        layers = saved["layers"]
        self.carried_cache = None if layers is None else cache_from_tensors(layers, self.args.device)
        document_ids = saved.get("document_ids")  # absent in checkpoints written before document resets
        self.carried_document_ids = None if document_ids is None else document_ids.to(self.args.device)


class CarriedStateCheckpointCallback(TrainerCallback):
    """Saves each process's carried states into every checkpoint folder the trainer writes."""

    def __init__(self, trainer: CarriedStateTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.trainer.save_carried_state(checkpoint)


__all__ = [
    "CARRIED_STATE_FILE",
    "CarriedStateCheckpointCallback",
    "CarriedStateTrainer",
    "cache_from_tensors",
    "cache_tensors",
    "carried_state_num_streams",
    "check_carry_state_arguments",
    "check_carry_state_model",
    "detach_cache",
    "stream_segments_dataset",
]
