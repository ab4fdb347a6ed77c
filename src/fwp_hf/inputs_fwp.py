"""Inputs of an FWP layer stack: input checks, padding masks, attention masks and positions.

Shared by the decoder-only model and both stacks of the encoder–decoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_fwp import FWPConfig
from .fast_weight_kernels import document_numbers
from .layers_fwp import rotary_cos_sin
from .token_mixers import TOKEN_MIXERS, every_layer_holds_state, growing_cache_types


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
            f"got shape {tuple(attention_mask.shape)}. FWP models build their own masks: fast-weight layers keep "
            "one recurrent state per row and cannot follow a 4D (packed or paged, e.g. continuous-batching) mask; "
            "pack documents with restarting position_ids or seq_idx instead"
        )
    return attention_mask


def softmax_attention_mask(padding_mask: torch.Tensor | None, query_length: int, past_length: int,
                            batch_size: int, device: torch.device, causal: bool = True,
                            sliding_window: int | None = None,
                            document_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, past + T]`` mask (True = attend): no padded keys and, if `causal`, no future keys;
    with `sliding_window` w, no key more than w − 1 positions before the query; with `document_ids`
    ``[B, T]`` (packed documents, `packed_document_ids`) no key of another document (block-diagonal;
    past keys count as the row's first document).

    Every query may see its own position, so a padded query row is never empty (no NaN).
    Returns None when SDPA's own (causal or full) attention does the job (no padding, no past, no window
    narrower than the sequence, no packed documents).
    """
    window_applies = sliding_window is not None and past_length + query_length > sliding_window
    if past_length == 0 and known_unpadded(padding_mask) and not window_applies and document_ids is None:
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
    if document_ids is not None:
        key_documents = F.pad(document_ids, (past_length, 0), value=0)
        allowed = allowed & (document_ids[:, None, :, None] == key_documents[:, None, None, :])
    return allowed | (key_positions == query_positions)[None, None]


# The keywords of transformers' `DataCollatorWithFlattening` besides input_ids, labels and position_ids
# (`return_seq_idx=True`, `return_flash_attn_kwargs=True`) that `FWPForCausalLM.forward` accepts.
PACKING_KWARGS = ("seq_idx", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _check_position_ids(position_ids: torch.Tensor, batch_size: int, seq_len: int) -> None:
    if position_ids.dim() != 2 or position_ids.shape[-1] != seq_len or position_ids.shape[0] not in (1, batch_size):
        raise ValueError(
            f"position_ids must be [batch, seq_len={seq_len}] with batch 1 or {batch_size}, "
            f"got {tuple(position_ids.shape)}"
        )


def packed_document_ids(
    position_ids: torch.Tensor | None,
    padding_mask: torch.Tensor | None,
    batch_size: int,
    seq_len: int,
    seq_idx: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
) -> torch.Tensor | None:
    """Document numbers ``[B, T]`` of rows that pack several documents (0 for each row's first document,
    +1 at every start; `fast_weight_kernels.document_numbers`), or None where every row is one sequence.

    The boundaries come from, in this order: ``seq_idx`` ``[B or 1, T]`` (document ids), ``cu_seq_lens_q/k``
    (cumulative lengths ``[n + 1]`` of a single packed row, FlashAttention's varlen form; both must be
    equal, self-attention), or ``position_ids`` as transformers' `DataCollatorWithFlattening` writes them: a
    document starts wherever a position is not its predecessor + 1 (transformers'
    `find_packed_sequence_indices`), between two real tokens (`padding_mask`; a left-padded row with
    positions restarting after its padding is one sequence). ``max_length_q/k`` are accepted and unused.

    Where values can be read, rows without a document start give None, so ordinary inputs take the
    unchanged paths; while tracing (`values_unreadable`) the numbers are returned as computed — the
    general path, which gives the same result for one document per row.
    """
    del max_length_q, max_length_k  # FlashAttention's kernel sizes: nothing to size here
    if seq_len < 2:  # (a shape, not a value: no branch on data) one token starts no document
        return None
    if seq_idx is not None:
        if seq_idx.dim() != 2 or seq_idx.shape[1] != seq_len or seq_idx.shape[0] not in (1, batch_size):
            raise ValueError(f"seq_idx must be [batch, seq_len={seq_len}] (batch 1 or {batch_size}) of document ids, "
                             f"got {tuple(seq_idx.shape)}")
        if seq_idx.dtype.is_floating_point or seq_idx.dtype == torch.bool:
            raise TypeError(f"seq_idx must be an integer tensor of document ids, got {seq_idx.dtype}")
        numbers = document_numbers(seq_idx.expand(batch_size, -1))
    elif cu_seq_lens_q is not None or cu_seq_lens_k is not None:
        numbers = _document_numbers_from_cu_seq_lens(cu_seq_lens_q, cu_seq_lens_k, batch_size, seq_len)
    elif position_ids is not None:
        _check_position_ids(position_ids, batch_size, seq_len)
        positions = position_ids.expand(batch_size, -1)
        starts = positions[:, 1:] != positions[:, :-1] + 1
        if padding_mask is not None:
            real = padding_mask[:, -seq_len:].bool()
            starts = starts & real[:, 1:] & real[:, :-1]
        numbers = F.pad(starts.long(), (1, 0), value=0).cumsum(dim=-1)
    else:
        return None
    if not values_unreadable(numbers) and not bool(numbers[:, -1].any()):
        return None
    return numbers


def _positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Rotary positions of packed rows given by ``seq_idx``/``cu_seq_lens`` without ``position_ids``: each
    document counts from 0, as it would alone. document_ids ``[B, T]`` -> ``[B, T]``."""
    index = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    first = torch.ones_like(document_ids[:, :1], dtype=torch.bool)
    starts = torch.cat([first, document_ids.diff(dim=-1) != 0], dim=-1)
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values


def _document_numbers_from_cu_seq_lens(
    cu_seq_lens_q: torch.Tensor | None, cu_seq_lens_k: torch.Tensor | None, batch_size: int, seq_len: int
) -> torch.Tensor:
    """`packed_document_ids` from FlashAttention's cumulative sequence lengths ``[0, l₁, l₁+l₂, …, T]``."""
    if cu_seq_lens_q is None or cu_seq_lens_k is None:
        raise ValueError("pass both cu_seq_lens_q and cu_seq_lens_k (as DataCollatorWithFlattening does), or neither")
    if cu_seq_lens_q.dim() != 1 or cu_seq_lens_q.shape != cu_seq_lens_k.shape:
        raise ValueError(f"cu_seq_lens_q and cu_seq_lens_k must be 1-D of equal length, got "
                         f"{tuple(cu_seq_lens_q.shape)} and {tuple(cu_seq_lens_k.shape)}")
    if batch_size != 1:
        raise ValueError(f"cu_seq_lens_q/k describe one packed row (input_ids [1, total]); got a batch of {batch_size} "
                         "rows: pass seq_idx or packed position_ids for several rows")
    cu = cu_seq_lens_q.long()
    if not values_unreadable(cu):
        if not torch.equal(cu, cu_seq_lens_k.long()):
            raise ValueError("cu_seq_lens_q and cu_seq_lens_k differ; a decoder's self-attention needs the same "
                             "documents for queries and keys")
        if cu.numel() < 2 or int(cu[0]) != 0 or int(cu[-1]) != seq_len or bool((cu.diff() <= 0).any()):
            raise ValueError(f"cu_seq_lens_q must rise strictly from 0 to seq_len={seq_len}, got {cu.tolist()}")
    positions = torch.arange(seq_len, device=cu.device)
    return torch.searchsorted(cu[1:-1].contiguous(), positions, right=True)[None]


def validate_token_inputs(
    input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, embeddings: nn.Embedding,
    ids_name: str = "input_ids", embeds_name: str = "inputs_embeds",
) -> None:
    """Clear errors for token ids or embeddings a model cannot take (instead of a deep indexing error or NaN
    outputs at other positions): ids outside the vocabulary, embeddings of another shape or dtype, or
    non-finite embeddings. Value checks are skipped while tracing (`values_unreadable`)."""
    vocab_size, hidden_size = embeddings.weight.shape
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"pass exactly one of {ids_name} or {embeds_name}")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"{ids_name} must be [batch, seq_len], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{ids_name} must be an int64 or int32 tensor of token ids, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError(
                f"{ids_name} is empty (shape {tuple(input_ids.shape)}): pass at least one token per sequence"
            )
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
        raise ValueError(
            f"{embeds_name} is empty (shape {tuple(inputs_embeds.shape)}): pass at least one token per sequence"
        )
    if not inputs_embeds.is_floating_point():
        raise TypeError(f"{embeds_name} must be floating point, got {inputs_embeds.dtype}")
    if inputs_embeds.dtype != embeddings.weight.dtype:
        raise TypeError(
            f"{embeds_name} has dtype {inputs_embeds.dtype} but the model runs in {embeddings.weight.dtype}; "
            "cast them (or the model) first"
        )
    # Causality holds for finite inputs only: a NaN/inf at position t would reach earlier positions (0 · NaN
    # is NaN in the chunkwise matrix products of fast-weight layers, back to the start of t's chunk, and in
    # softmax layers' attention products over the row), so non-finite embeddings are refused here.
    if not values_unreadable(inputs_embeds) and not bool(torch.isfinite(inputs_embeds).all()):
        row, position = (int(index) for index in (~torch.isfinite(inputs_embeds)).any(-1).nonzero()[0])
        raise ValueError(
            f"{embeds_name} holds non-finite values (NaN or inf), first at row {row}, position {position}: they "
            "would spread to other positions (outputs are causal for finite inputs only); pass finite embeddings "
            "(padding positions too: any finite value, e.g. 0, with attention_mask 0)"
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
    packing: dict | None = None,
) -> dict:
    """What every layer of a stack needs besides its hidden states.

    Returns ``token_mask`` ([B, T] float, None without padding) for fast-weight layers, and for softmax
    layers ``attention_mask_4d`` (see `softmax_attention_mask`) and rotary ``position_embeddings``
    (positions count real tokens only, so left padding does not shift them).

    `packing` (a decoder-only stack: a dict of `PACKING_KWARGS`, possibly empty; None elsewhere): rows may
    pack several documents (`packed_document_ids`, from those keywords or from `position_ids`). Then
    ``document_ids`` ([B, T], else None) goes to every layer: fast-weight layers reset their state at
    each document start, softmax layers get a block-diagonal causal mask and the given positions. In a
    stack whose every layer holds a fixed-size state, a packed row may continue a cache that already holds
    tokens (carried-state training with resets at document ends): the cache's state and convolution window
    continue the row's first document, later documents start empty, and the cache afterwards holds the
    state after the row's last token. With softmax layers that is a clear error (their past keys have no
    document and their positions would restart).

    `past_length` (tokens already in the cache) may be a function that returns it: it is then asked
    only where it is needed — by softmax layers (positions, masks over past keys) and to check a mask's
    width — and not while `torch.compile` traces a stack whose every layer holds a state, where it would
    be a Python value read from the cache that changes every decoding step. There the mask's last T
    columns are the new tokens' (a mask of the new tokens only, [B, T], is what `generate` passes then).
    """
    batch_size, seq_len = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    uses_positions = any(TOKEN_MIXERS[kind].reads_stack_positions for kind in kinds)
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
    document_ids = None
    if packing is not None:
        document_ids = packed_document_ids(position_ids, padding_mask, batch_size, seq_len, **packing)
    if (document_ids is not None and not values_unreadable(document_ids) and past_length
            and not every_layer_holds_state(kinds)):
        growing = ", ".join(growing_cache_types(kinds))
        raise ValueError(
            f"packed documents (position_ids restarting inside a row, seq_idx or cu_seq_lens) cannot continue a "
            f"cache that holds {past_length} tokens in a model with {growing} layers: their key/value cache holds "
            "past keys of no document and positions that a packed row would restart. Pass them without "
            "past_key_values (a packed row starts every document from an empty state); only models whose every "
            "layer holds a fixed-size state continue a packed row's first document from a cache"
        )

    position_embeddings, attention_mask_4d = None, None
    if uses_positions:
        if padding_mask is not None and padding_mask.shape[1] == seq_len and past_length > 0:
            padding_mask = F.pad(padding_mask, (past_length, 0), value=1)
        if position_ids is None and document_ids is not None:
            position_ids = _positions_within_documents(document_ids)
        if position_ids is None:
            if padding_mask is not None:
                position_ids = (padding_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past_length, past_length + seq_len, device=device)[None]
        _check_position_ids(position_ids, batch_size, seq_len)
        position_embeddings = rotary_cos_sin(position_ids, config.softmax_head_dim, config.rope_theta,
                                             inputs_embeds.dtype, config.softmax_attention.rope_scaling,
                                             config.max_position_embeddings)
        attention_mask_4d = softmax_attention_mask(padding_mask, seq_len, past_length, batch_size, device, causal,
                                                   config.softmax_attention.sliding_window, document_ids)
    inputs = {"token_mask": token_mask, "attention_mask_4d": attention_mask_4d,
              "position_embeddings": position_embeddings}
    if packing is not None:  # only stacks that can pack take the key (the encoder–decoder's layers do not)
        inputs["document_ids"] = document_ids
    return inputs


__all__ = [
    "PACKING_KWARGS",
    "known_unpadded",
    "packed_document_ids",
    "padding_mask_2d",
    "prepare_mixer_inputs",
    "softmax_attention_mask",
    "token_mask_from_padding",
    "validate_token_inputs",
    "values_unreadable",
]
