"""Perplexity of a causal LM on a token stream: independent segments vs. a carried fast-weight state.

`segment_perplexity` cuts the stream into `num_streams` parallel streams (rows) and walks them in
segments of `segment_length` tokens. Both modes score exactly the same target tokens (the token
after every input token, also across segment boundaries):

- ``carry_state=False``: every segment starts from an empty state (the usual fixed-context evaluation).
- ``carry_state=True``: the fast-weight state (the model's cache) is carried from one segment to
  the next, so the context is unlimited (the papers' evaluation of fast weight programmers).

With ``document_ids`` (the document of every token, e.g. `lm_data.token_document_ids`) the state is
also emptied at every document start: inside a segment (the model's ``seq_idx``: packed documents)
and, carrying the state, where a document starts at a segment's first token (that row's carried state
is dropped, `cache_fwp.reset_cache_rows`) — the evaluation of a model trained with
``--reset_state_at_document_end``. Every document is then scored as if alone from its first token in
its stream (the prediction of a document's first token still comes from the previous token, the
``</s>`` of the document before, as without resets).

`perplexity_by_position` scores the same tokens grouped by their position in the stream (the
long-context curve: does the loss keep falling with more context?), walking the stream through
`stream_token_losses` as `segment_perplexity` does; `plot_perplexity_by_position` draws such curves.

Carrying the state needs every layer to keep a fixed-size state (the registry's `holds_state`):
a softmax layer's key/value cache would grow with the whole stream and its rotary positions run past
`max_position_embeddings`, so carried-state evaluation is refused for models with such layers
(`supports_carried_state`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..cache_fwp import reset_cache_rows
from ..compat_fwp import output_cache
from ..token_mixers import every_layer_holds_state, growing_cache_types


def growing_cache_layer_types(model) -> list[str]:
    """The model's layer types whose cache grows with the context (a key/value cache), in layer order."""
    if not hasattr(model.config, "layer_attention_types"):  # not an FWP model (e.g. a Llama baseline)
        return [model.config.model_type]
    return growing_cache_types(model.config.layer_attention_types)


def supports_carried_state(model) -> bool:
    """True when every layer of the model keeps a fixed-size state (a cache that does not grow)."""
    kinds = getattr(model.config, "layer_attention_types", None)
    return kinds is not None and every_layer_holds_state(kinds)


def _check_stream_arguments(model, segment_length: int, carry_state: bool, num_streams: int) -> None:
    if segment_length < 1 or num_streams < 1:
        raise ValueError(f"segment_length and num_streams must be >= 1, got {segment_length} and {num_streams}")
    if carry_state and not supports_carried_state(model):
        raise ValueError(
            "carry_state=True needs a model whose every layer keeps a fixed-size state; the key/value cache of "
            f"its {', '.join(growing_cache_layer_types(model))} layers grows with the stream (layers: "
            f"{model.config.layer_attention_types})"
        )


def stream_token_losses(
    model,
    token_ids: Sequence[int] | torch.Tensor,
    segment_length: int,
    carry_state: bool,
    num_streams: int = 1,
    max_tokens: int | None = None,
    document_ids: Sequence[int] | torch.Tensor | None = None,
    show_progress: bool = False,
) -> torch.Tensor:
    """Next-token losses of `model` on the stream, walked as in the module docstring (`show_progress`: a
    progress bar over the segments, on stderr).

    Returns ``[num_streams, stream_length − 1]`` fp32 losses on the CPU: entry ``[s, t]`` is the loss of
    predicting token ``t + 1`` of stream ``s`` (stream ``s`` = tokens ``s · stream_length …`` of the
    stream, ``stream_length = len(token_ids) // num_streams`` after `max_tokens` truncates it).
    `document_ids` (one integer per token of `token_ids`, equal within a document): empty the state at
    every document start (module docstring).
    """
    _check_stream_arguments(model, segment_length, carry_state, num_streams)
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    documents = None
    if document_ids is not None:
        documents = torch.as_tensor(document_ids, dtype=torch.long).flatten()
        if documents.numel() != ids.numel():
            raise ValueError(f"document_ids must give one document per token: {documents.numel()} ids for "
                             f"{ids.numel()} tokens")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    stream_length = ids.numel() // num_streams
    if stream_length < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {num_streams} streams")
    device = next(model.parameters()).device
    streams = ids[: stream_length * num_streams].view(num_streams, stream_length).to(device)
    if documents is not None:
        documents = documents[: stream_length * num_streams].view(num_streams, stream_length).to(device)
    was_training = model.training
    model.eval()
    cache = DynamicCache() if carry_state else None
    losses = []
    starts = range(0, stream_length - 1, segment_length)
    mode = "state carried" if carry_state else "independent segments"
    progress = tqdm(starts, desc=f"stream evaluation ({mode}, {num_streams} × {stream_length} tokens)",
                    unit="segment", disable=not show_progress)
    try:
        with torch.no_grad():
            for start in progress:
                end = min(start + segment_length, stream_length - 1)
                inputs, targets = streams[:, start:end], streams[:, start + 1 : end + 1]
                packing = {}
                if documents is not None:
                    packing["seq_idx"] = documents[:, start:end]
                    if carry_state and start > 0:  # a document starting at this segment's first token
                        reset_cache_rows(cache, documents[:, start] != documents[:, start - 1])
                output = model(input_ids=inputs, past_key_values=cache, use_cache=carry_state, **packing)
                cache = output_cache(output) if carry_state else None
                loss = F.cross_entropy(output.logits.float().transpose(1, 2), targets, reduction="none")
                losses.append(loss.cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses, dim=1)


def segment_perplexity(
    model,
    token_ids: Sequence[int] | torch.Tensor,
    segment_length: int,
    carry_state: bool,
    num_streams: int = 1,
    max_tokens: int | None = None,
    document_ids: Sequence[int] | torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean next-token loss and perplexity of `model` on `token_ids` (see the module docstring).

    Returns ``{"loss", "perplexity", "tokens"}``; `max_tokens` truncates the stream first; `document_ids`:
    the state is emptied at every document start (`stream_token_losses`).
    """
    losses = stream_token_losses(model, token_ids, segment_length, carry_state, num_streams, max_tokens,
                                 document_ids)
    mean = losses.double().sum().item() / losses.numel()
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": float(losses.numel())}


def perplexity_by_position(
    model,
    token_ids: Sequence[int] | torch.Tensor,
    segment_length: int,
    carry_state: bool,
    num_streams: int = 1,
    bucket_size: int = 1024,
    max_tokens: int | None = None,
    document_ids: Sequence[int] | torch.Tensor | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """`segment_perplexity`'s scored tokens grouped by their position in their stream (the long-context curve).

    The target at stream position ``t`` (1 … stream_length − 1) falls into bucket ``t // bucket_size``.
    Returns ``{"loss", "perplexity", "tokens"}`` over all tokens (as `segment_perplexity`), plus
    ``"bucket_size"``, ``"segment_length"``, ``"carry_state"``, ``"reset_at_document_starts"`` (whether
    `document_ids` were given: `stream_token_losses`) and per bucket the lists ``"bucket_start"``
    (first position), ``"bucket_loss"``, ``"bucket_perplexity"`` and ``"bucket_tokens"``: the bucket
    means weighted by their tokens average to ``"loss"``.
    """
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    losses = stream_token_losses(model, token_ids, segment_length, carry_state, num_streams, max_tokens,
                                 document_ids, show_progress)
    return {**losses_by_position(losses, bucket_size), "segment_length": segment_length, "carry_state": carry_state,
            "reset_at_document_starts": document_ids is not None}


def losses_by_position(losses: torch.Tensor, bucket_size: int) -> dict[str, Any]:
    """Next-token `losses` ``[streams, stream_length − 1]`` (entry ``[s, t]``: the loss of stream position
    ``t + 1``, as `stream_token_losses` returns them) grouped by position: the target at position ``t``
    falls into bucket ``t // bucket_size``. Returns ``{"loss", "perplexity", "tokens", "bucket_size"}`` and
    per bucket ``"bucket_start"`` (first position), ``"bucket_loss"``, ``"bucket_perplexity"``,
    ``"bucket_tokens"`` (the bucket means weighted by their tokens average to ``"loss"``), and ``"num_streams"``
    (the positions are those of one stream: each bucket pools that position range of every stream)."""
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
    losses = losses.double()
    positions = torch.arange(1, losses.shape[1] + 1)
    buckets = positions // bucket_size
    sums = torch.zeros(int(buckets[-1]) + 1, dtype=torch.float64).index_add_(0, buckets, losses.sum(0))
    counts = torch.bincount(buckets) * losses.shape[0]
    keep = counts > 0  # position 0 is never a target: bucket 0 may start at 1
    bucket_loss = (sums[keep] / counts[keep]).tolist()
    mean = losses.sum().item() / losses.numel()
    return {
        "loss": mean,
        "perplexity": math.exp(mean),
        "tokens": float(losses.numel()),
        "bucket_size": bucket_size,
        "bucket_start": [int(index) * bucket_size for index in torch.nonzero(keep).flatten()],
        "bucket_loss": bucket_loss,
        "bucket_perplexity": [math.exp(min(loss, 50.0)) for loss in bucket_loss],
        "bucket_tokens": counts[keep].tolist(),
        "num_streams": losses.shape[0],
    }


def plot_perplexity_by_position(curves: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Plot `perplexity_by_position` results (one line per label) against the token position; save to `path`."""
    import matplotlib  # optional: only this plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        centres = [start + curve["bucket_size"] / 2 for start in curve["bucket_start"]]
        axes.plot(centres, curve["bucket_perplexity"], marker="o", label=label)
    # The x-axis covers one stream's positions, not all scored tokens: with N streams each point pools the same
    # position range of every stream (curves saved before "num_streams" was recorded say nothing about N).
    streams = {curve.get("num_streams") for curve in curves.values()}
    per_stream = (f"position within each of the {streams.pop()} streams" if len(streams) == 1 and None not in streams
                  else "position within one stream")
    axes.set_xlabel(f"token {per_stream} (bucket centre)")
    axes.set_ylabel("perplexity")
    axes.set_title("perplexity by position in the stream (x: one stream's positions)", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


__all__ = [
    "growing_cache_layer_types", "losses_by_position", "perplexity_by_position", "plot_perplexity_by_position",
    "segment_perplexity", "stream_token_losses", "supports_carried_state",
]
