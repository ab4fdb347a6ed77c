"""Perplexity of a causal LM on a token stream: independent segments vs. a carried fast-weight state.

`segment_perplexity` cuts the stream into `num_streams` parallel streams (rows) and walks them in
segments of `segment_length` tokens. Both modes score exactly the same target tokens (the token
after every input token, also across segment boundaries):

- ``carry_state=False``: every segment starts from an empty state (the usual fixed-context evaluation).
- ``carry_state=True``: the fast-weight state (the model's cache) is carried from one segment to
  the next, so the context is unlimited (the papers' evaluation of fast weight programmers).

Carrying the state needs every layer to keep a fixed-size state (the registry's `holds_state`):
a softmax layer's key/value cache would grow with the whole stream and its rotary positions run past
`max_position_embeddings`, so carried-state evaluation is refused for models with such layers
(`supports_carried_state`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..token_mixers import TOKEN_MIXERS


def growing_cache_layer_types(model) -> list[str]:
    """The model's layer types whose cache grows with the context (a key/value cache), in layer order."""
    if not hasattr(model.config, "layer_attention_types"):  # not an FWP model (e.g. a Llama baseline)
        return [model.config.model_type]
    kinds = dict.fromkeys(model.config.layer_attention_types)
    return [kind for kind in kinds if not TOKEN_MIXERS[kind].holds_state]


def supports_carried_state(model) -> bool:
    """True when every layer of the model keeps a fixed-size state (a cache that does not grow)."""
    kinds = getattr(model.config, "layer_attention_types", None)
    return kinds is not None and all(TOKEN_MIXERS[kind].holds_state for kind in kinds)


@torch.no_grad()
def segment_perplexity(
    model,
    token_ids: Sequence[int] | torch.Tensor,
    segment_length: int,
    carry_state: bool,
    num_streams: int = 1,
    max_tokens: int | None = None,
) -> dict[str, float]:
    """Mean next-token loss and perplexity of `model` on `token_ids` (see the module docstring).

    Returns ``{"loss", "perplexity", "tokens"}``; `max_tokens` truncates the stream first.
    """
    if segment_length < 1 or num_streams < 1:
        raise ValueError(f"segment_length and num_streams must be >= 1, got {segment_length} and {num_streams}")
    if carry_state and not supports_carried_state(model):
        raise ValueError(
            "carry_state=True needs a model whose every layer keeps a fixed-size state; the key/value cache of "
            f"its {', '.join(growing_cache_layer_types(model))} layers grows with the stream (layers: "
            f"{model.config.layer_attention_types})"
        )
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    stream_length = ids.numel() // num_streams
    if stream_length < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for {num_streams} streams")
    device = next(model.parameters()).device
    streams = ids[: stream_length * num_streams].view(num_streams, stream_length).to(device)
    was_training = model.training
    model.eval()
    cache = DynamicCache() if carry_state else None
    total_loss, total_tokens = 0.0, 0
    try:
        for start in range(0, stream_length - 1, segment_length):
            end = min(start + segment_length, stream_length - 1)
            inputs, targets = streams[:, start:end], streams[:, start + 1 : end + 1]
            output = model(input_ids=inputs, past_key_values=cache, use_cache=carry_state)
            cache = output.past_key_values if carry_state else None
            loss = F.cross_entropy(output.logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
            total_loss += loss.item()
            total_tokens += targets.numel()
    finally:
        model.train(was_training)
    mean = total_loss / total_tokens
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": float(total_tokens)}


__all__ = ["growing_cache_layer_types", "segment_perplexity", "supports_carried_state"]
