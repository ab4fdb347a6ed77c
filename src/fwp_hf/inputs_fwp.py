"""Inputs of an FWP layer stack: input checks, padding masks, attention masks and positions.

Shared by the decoder-only model and both stacks of the encoder–decoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_fwp import FWPConfig
from .layers_fwp import rotary_cos_sin
from .token_mixers import TOKEN_MIXERS


def values_unreadable(tensor: torch.Tensor) -> bool:
    """Whether a tensor's values cannot be read in Python here: while `torch.compile`/`torch.export`
    trace the model (a Python branch on a value is a graph break or a data-dependent guard), or on the
    ``meta`` device (no values at all). Checks on values are skipped then, and a shortcut taken only
    for some values (no padding) is replaced by the general path, which gives the same result."""
    return torch.compiler.is_compiling() or tensor.device.type == "meta"


def known_unpadded(padding_mask: torch.Tensor | None) -> bool:
    """True when `padding_mask` is None or can be read and has no padding: the shortcut paths. While
    tracing (or on meta) the values are unknown and the general padded path runs, with the same result."""
    return padding_mask is None or (not values_unreadable(padding_mask) and bool(padding_mask.all()))


def token_mask_from_padding(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The float ``[B, T]`` token mask fast-weight layers take (1 = token), or None without padding."""
    return None if known_unpadded(padding_mask) else padding_mask.float()



def padding_mask_2d(attention_mask: torch.Tensor | dict | None) -> torch.Tensor | None:
    """Accept a 2D padding mask, or generate's ``{layer_type: mask}`` dict of 2D masks."""
    if isinstance(attention_mask, dict):
        masks = [m for m in attention_mask.values() if m is not None]
        attention_mask = masks[0] if masks else None
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask must be a 2D padding mask [batch, past + new tokens] of 1 (token) and 0 (padding), "
            f"got shape {tuple(attention_mask.shape)}"
        )
    return attention_mask


def softmax_attention_mask(padding_mask: torch.Tensor | None, query_length: int, past_length: int,
                            batch_size: int, device: torch.device, causal: bool = True,
                            sliding_window: int | None = None) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, past + T]`` mask (True = attend): no padded keys and, if `causal`, no future keys;
    with `sliding_window` w, no key more than w − 1 positions before the query.

    Every query may see its own position, so a padded query row is never empty (no NaN).
    Returns None when SDPA's own (causal or full) attention does the job (no padding, no past, no window
    narrower than the sequence).
    """
    window_applies = sliding_window is not None and past_length + query_length > sliding_window
    if past_length == 0 and known_unpadded(padding_mask) and not window_applies:
        return None
    key_length = past_length + query_length
    query_positions = torch.arange(past_length, key_length, device=device)[:, None]
    key_positions = torch.arange(key_length, device=device)[None, :]
    if causal:
        allowed = (key_positions <= query_positions)[None, None].expand(batch_size, 1, -1, -1)
    else:
        allowed = torch.ones(batch_size, 1, query_length, key_length, dtype=torch.bool, device=device)
    if window_applies:
        allowed = allowed & (key_positions > query_positions - sliding_window)[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :].bool()
    return allowed | (key_positions == query_positions)[None, None]


def validate_token_inputs(
    input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, embeddings: nn.Embedding,
    ids_name: str = "input_ids", embeds_name: str = "inputs_embeds",
) -> None:
    """Clear errors for token ids or embeddings a model cannot take (instead of a deep indexing error)."""
    vocab_size, hidden_size = embeddings.weight.shape
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"pass exactly one of {ids_name} or {embeds_name}")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"{ids_name} must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{ids_name} must be an int64 or int32 tensor of token ids, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError(f"{ids_name} is empty (shape {tuple(input_ids.shape)}): pass at least one token per sequence")
        if values_unreadable(input_ids):
            return
        if input_ids.numel():
            low, high = (int(value) for value in torch.aminmax(input_ids))
            if low < 0 or high >= vocab_size:
                raise ValueError(f"{ids_name} must lie in [0, vocab_size={vocab_size}), got values in [{low}, {high}]")
        return
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"{embeds_name} must be [batch, seq_len, hidden_size={hidden_size}], got shape {tuple(inputs_embeds.shape)}"
        )
    if inputs_embeds.shape[1] == 0:
        raise ValueError(f"{embeds_name} is empty (shape {tuple(inputs_embeds.shape)}): pass at least one token per sequence")
    if not inputs_embeds.is_floating_point():
        raise TypeError(f"{embeds_name} must be floating point, got {inputs_embeds.dtype}")
    if inputs_embeds.dtype != embeddings.weight.dtype:
        raise TypeError(
            f"{embeds_name} has dtype {inputs_embeds.dtype} but the model runs in {embeddings.weight.dtype}; "
            "cast them (or the model) first"
        )


def prepare_mixer_inputs(
    config: FWPConfig,
    kinds: list[str],
    attention_mask: torch.Tensor | dict | None,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor,
    past_length: int | Callable[[], int],
    causal: bool = True,
    mask_name: str = "attention_mask",
) -> dict:
    """What every layer of a stack needs besides its hidden states.

    Returns ``token_mask`` ([B, T] float, None without padding) for fast-weight layers, and for softmax
    layers ``attention_mask_4d`` (see `softmax_attention_mask`) and rotary ``position_embeddings``
    (positions count real tokens only, so left padding does not shift them).

    `past_length` (tokens already in the cache) may be a function that returns it: it is then asked
    only where it is needed — by softmax layers (positions, masks over past keys) and to check a mask's
    width — and not while `torch.compile` traces a stack whose every layer holds a state, where it would
    be a Python value read from the cache that changes every decoding step. There the mask's last T
    columns are the new tokens' (a mask of the new tokens only, [B, T], is what `generate` passes then).
    """
    batch_size, seq_len = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    uses_positions = any(TOKEN_MIXERS[kind].uses_rotary for kind in kinds)
    padding_mask = padding_mask_2d(attention_mask)
    if callable(past_length):
        past_length = past_length() if uses_positions or not torch.compiler.is_compiling() else None
    if padding_mask is not None:
        width = padding_mask.shape[1]
        allowed = (seq_len,) if past_length is None else (seq_len, past_length + seq_len)
        if padding_mask.shape[0] != batch_size or width not in allowed:
            expected = "new tokens" if past_length is None else f"past+new tokens={past_length + seq_len}"
            raise ValueError(
                f"{mask_name} must have shape [batch={batch_size}, {expected}] (or [batch, new tokens={seq_len}]), "
                f"got {tuple(padding_mask.shape)}"
            )
    token_mask = token_mask_from_padding(padding_mask[:, -seq_len:] if padding_mask is not None else None)

    position_embeddings, attention_mask_4d = None, None
    if uses_positions:
        if padding_mask is not None and padding_mask.shape[1] == seq_len and past_length > 0:
            padding_mask = F.pad(padding_mask, (past_length, 0), value=1)
        if position_ids is None:
            if padding_mask is not None:
                position_ids = (padding_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past_length, past_length + seq_len, device=device)[None]
        if position_ids.dim() != 2 or position_ids.shape[-1] != seq_len or position_ids.shape[0] not in (1, batch_size):
            raise ValueError(
                f"position_ids must be [batch, seq_len={seq_len}] with batch 1 or {batch_size}, "
                f"got {tuple(position_ids.shape)}"
            )
        position_embeddings = rotary_cos_sin(position_ids, config.softmax_head_dim, config.rope_theta, inputs_embeds.dtype,
                                             getattr(config, "rope_scaling_parameters", None),
                                             config.max_position_embeddings)
        attention_mask_4d = softmax_attention_mask(padding_mask, seq_len, past_length, batch_size, device, causal,
                                                   getattr(config, "sliding_window", None))
    return {"token_mask": token_mask, "attention_mask_4d": attention_mask_4d, "position_embeddings": position_embeddings}


__all__ = [
    "known_unpadded",
    "padding_mask_2d",
    "prepare_mixer_inputs",
    "softmax_attention_mask",
    "token_mask_from_padding",
    "validate_token_inputs",
    "values_unreadable",
]
