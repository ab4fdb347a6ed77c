"""Fast-weight kernels: the one home of every update rule in fwp_hf (feature maps φ: `feature_maps_fwp`).

Layout everywhere: ``[batch, heads, time, dim]``. A fast-weight state ``S`` has shape
``[batch, heads, d_key, d_value]`` (key dimension first, as in flash-linear-attention), so a read is
``y_t = S_tᵀ q_t`` and a write ``k_t ⊗ v_t`` is ``k_t v_tᵀ``.

Every update rule comes in two forms that compute the same function:

* a chunkwise-parallel form (``chunk_*``) used for training and prefill, and
* a recurrent form (``recurrent_*``) that walks over the tokens one at a time; with ``T = 1`` it is
  the decoding step, and over a whole sequence it is the plain per-token reference the tests use.

Both take an ``initial_state`` and return the final state, so that prefill → decode and
segment → next segment continue exactly. The kernels of one family share one signature, in the
spirit of transformers' ``torch_chunk_gated_delta_rule``:
``kernel(q, k, v, *, beta=None, log_decay=None, initial_state=None, chunk_size=...) -> (y, final_state)``
(the sum rule takes no ``beta``; the recurrent forms accept and ignore ``chunk_size``). The state is
always fp32; inputs of lower precision are upcast for the computation and the output is cast back to
the input dtype.

Packed documents (padding-free training, transformers' ``DataCollatorWithFlattening``): every kernel
and :func:`short_causal_conv` take ``seq_idx`` ``[B, T]`` (integer document ids, FLA's and Mamba's
name), one convention everywhere. A new document starts at every ``t > 0`` where
``seq_idx[:, t] != seq_idx[:, t-1]``; there the state is reset to zero (before that token's read and
write), so each document computes exactly what it computes alone. ``initial_state`` belongs to a row's
first document only. The chunkwise forms do this with masks inside the chunk computation (see
:func:`_chunk_documents`), not with a loop over documents and not with a huge negative log-decay
(whose cumulative sums would round the small decays away). ``seq_idx=None`` changes nothing.

Math (Schlag, Irie & Schmidhuber 2021; Ba et al. 2016), per head:

* sum rule:     ``S_t = γ_t S_{t-1} + k_t v_tᵀ``            (γ_t = 1 except for ``fast_weights``)
* delta rule:   ``S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t)ᵀ``
* gated delta:  ``S_t = α_t S_{t-1} + β_t k_t (v_t − α_t S_{t-1}ᵀ k_t)ᵀ`` with ``α_t = exp(g_t)``, g_t ≤ 0
  (Yang, Kautz & Hatamizadeh 2025; the delta rule's kernels with ``log_decay=g``)
* Ba et al.:    ``A_t = λ A_{t-1} + η h_t h_tᵀ`` read by an inner loop
  ``h^{s+1} = f(LN(z_t + A_{t-1} h^s))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 64


# ----------------------------------------------------------------------------------------------
# Normalisations of feature maps φ (the maps themselves: `feature_maps_fwp`)
# ----------------------------------------------------------------------------------------------


def sum_normalize(x: torch.Tensor, eps: float = 1e-6, log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``φ / max(Σ_i φ_i, ε)`` over the last dim (Schlag et al.'s normalisation for the delta rule).

    ``log_scale`` s: x holds ``φ̃ = φ · e^{−s}`` (a shifted feature map, s ``[..., 1]``); the result is
    the same function of φ, ``φ̃ / max(Σφ̃, ε e^{−s})``, with no overflow where φ itself is huge.
    """
    total = x.sum(dim=-1, keepdim=True)
    if log_scale is None:
        return x / total.clamp_min(eps)
    return x / torch.maximum(total, _scaled_eps(eps, log_scale, total.dtype))


def _scaled_eps(eps: float, log_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``ε · e^{−s}``, computed from logs (inf where φ was so small that ε dominates: the result is then 0)."""
    return torch.exp(math.log(eps) - log_scale.float()).to(dtype)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / |x|₂`` over the last dim (flash-linear-attention's normalisation of delta-rule keys)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


# ----------------------------------------------------------------------------------------------
# Short causal convolution (flash-linear-attention's ShortConvolution before q, k, v)
# ----------------------------------------------------------------------------------------------


def short_causal_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, window: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution over time with a carried window of past inputs.

    ``y_t[c] = bias[c] + Σ_{i<W} weight[c, i] · x_{t−W+1+i}[c]``, where inputs before the first one come
    from `window` (zeros when None: the start of a sequence).

    x ``[B, T, C]``; weight ``[C, W]``; bias ``[C]`` or None; window ``[B, C, W−1]`` (the last W−1 inputs
    before x). Returns ``(y [B, T, C], new window [B, C, W−1])``: decoding one token at a time with the
    returned window gives exactly the outputs of the whole sequence at once.

    seq_idx ``[B, T]`` (packed documents, see the module docstring): ``x_s`` enters ``y_t`` only if s and t
    are in one document (the window counts as the row's first document), so each document is convolved
    as if alone; the returned window keeps only the last document's inputs.
    """
    batch, _, channels = x.shape
    width = weight.shape[-1]
    inputs = x.transpose(1, 2)
    if window is None:
        window = inputs.new_zeros(batch, channels, width - 1)
    inputs = torch.cat([window.to(inputs.dtype), inputs], dim=-1)
    if seq_idx is not None:
        _check_seq_idx("short_causal_conv", seq_idx, batch, x.shape[1])
        return _short_causal_conv_documents(inputs, weight, bias, seq_idx)
    y = F.conv1d(inputs, weight.unsqueeze(1).to(inputs.dtype), None if bias is None else bias.to(inputs.dtype),
                 groups=channels)
    return y.transpose(1, 2), inputs[..., inputs.shape[-1] - (width - 1):]


def _short_causal_conv_documents(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`short_causal_conv` over packed documents: inputs ``[B, C, W−1+T]`` (window first). A sum of W
    shifted inputs, each masked to the query's document (a plain conv1d cannot mask per output)."""
    width, seq_len = weight.shape[-1], seq_idx.shape[1]
    numbers = F.pad(document_numbers(seq_idx), (width - 1, 0), value=0)  # the window: the first document
    weight = weight.to(inputs.dtype)
    y = inputs.new_zeros(inputs.shape[0], inputs.shape[1], seq_len)
    if bias is not None:
        y = y + bias.to(inputs.dtype)[:, None]
    current = numbers[:, width - 1:]
    for i in range(width):  # weight[:, i] multiplies x_{t−W+1+i}
        same = (numbers[:, i : i + seq_len] == current).to(inputs.dtype)[:, None, :]
        y = y + weight[:, i, None] * inputs[..., i : i + seq_len] * same
    window = inputs[..., inputs.shape[-1] - (width - 1):]
    last = (numbers[:, numbers.shape[1] - (width - 1):] == numbers[:, -1:]).to(inputs.dtype)[:, None, :]
    return y.transpose(1, 2), window * last


# ----------------------------------------------------------------------------------------------
# Per-token gates
# ----------------------------------------------------------------------------------------------


def delta_rule_beta(logits: torch.Tensor, allow_neg_eigval: bool = False) -> torch.Tensor:
    """Learning rate of the delta rule: ``β_t = sigmoid(W_β x_t)`` ∈ (0, 1), computed in fp32.

    With `allow_neg_eigval`, ``β_t = 2·sigmoid(W_β x_t)`` ∈ (0, 2): the transition ``I − β_t k_t k_tᵀ``
    (unit-norm k) may then have a negative eigenvalue (Grazzi et al. 2025, state tracking).
    """
    beta = torch.sigmoid(logits.float())
    return 2.0 * beta if allow_neg_eigval else beta


def gated_log_decay(logits: torch.Tensor, a_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """Log-decay of the gated delta rule (Gated DeltaNet's Mamba-2 parametrisation), per head and token:
    ``g_t = −exp(A_log) · softplus(W_a x_t + dt_bias)`` ≤ 0, so ``α_t = exp(g_t)`` ∈ (0, 1].

    logits ``[..., H]`` (``W_a x_t``); a_log, dt_bias ``[H]``. Returns fp32 ``[..., H]``.
    """
    return -a_log.float().exp() * F.softplus(logits.float() + dt_bias.float())


# ----------------------------------------------------------------------------------------------
# Attention normalisation (sum rule): the normaliser z_t·φ(q_t) as an extra value column of ones
# ----------------------------------------------------------------------------------------------


def append_normalizer_column(v: torch.Tensor) -> torch.Tensor:
    """``[v, 1]``: with it any sum-rule state also carries ``z = Σ φ(k_τ)`` in its last value column."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def divide_by_normalizer(
    y: torch.Tensor, out_dtype: torch.dtype, eps: float = 1e-6, log_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``y[..., :-1] / (y[..., -1] + ε)``: the read of ``[v, 1]`` divided by its normaliser ``z·φ(q)``.

    ``log_scale`` s (broadcastable to ``[..., 1]``): the read was computed from shifted features whose
    products are ``φ(q)·φ(k) e^{−s}`` (:func:`favor_feature_map_shifted`, ``s = s_q + c``); ε is
    scaled by ``e^{−s}`` so that the result is the same function of the unshifted φ.

    Precision (bf16 models): the division is done in fp32, and ``|y| ≤ max_τ |v_τ|`` always
    (``y = ȳ·D/(D+ε)`` with ``ȳ`` an average of the values read and ``D = z·φ(q)``). Computed in bf16, a
    layer's read differs from the fp32 read of the same weights and inputs by bf16 rounding only
    (≤ 1% of ``max |v|``), also where D ≲ ε. But where D ≲ ε the read is ill-conditioned: with a
    feature map whose features vanish (DPFP: products of ReLUs) D is then a sum of products of
    near-zero components, which any rounding of weights or inputs changes by O(1), and ``D/(D+ε)``
    with it (by up to ``r/4`` for a relative change r of D). So a bf16 model's logits differ from its
    fp32 original more for DPFP than for the other maps (tiny models: up to 0.06 against 0.003; the
    fp32 model with its weights rounded to bf16 already differs by 0.02–0.06) — not fixable by
    computing φ, the projections or the read in fp32 (measured: no change); tests/test_numerics.py
    pins this bound.
    """
    y = y.float()
    if log_scale is None:
        return (y[..., :-1] / (y[..., -1:] + eps)).to(out_dtype)
    # With shifted features both terms can underflow (a query that only sees keys below fp32's range
    # at the keys' shift): that read is 0, as from an empty memory, not 0/0.
    denominator = (y[..., -1:] + _scaled_eps(eps, log_scale, y.dtype)).clamp_min(torch.finfo(y.dtype).tiny)
    return (y[..., :-1] / denominator).to(out_dtype)


# ----------------------------------------------------------------------------------------------
# Input checks shared by the kernels
# ----------------------------------------------------------------------------------------------


def _read(query: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``Sᵀ q`` per batch and head: query ``[B, H, Dk]``, state ``[B, H, Dk, Dv]`` -> ``[B, H, Dv]``."""
    return (query.unsqueeze(-2) @ state).squeeze(-2)


def _check_inputs(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None) -> None:
    for label, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor.dim() != 4:
            raise ValueError(f"{name}: {label} must be [batch, heads, time, dim], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name}: {label} must be a floating-point tensor, got {tensor.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"{name}: q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"{name}: v must share [batch, heads, time] with k, got {tuple(v.shape)} and {tuple(k.shape)}"
        )
    if state is not None:
        expected = (k.shape[0], k.shape[1], k.shape[3], v.shape[3])
        if tuple(state.shape) != expected:
            raise ValueError(f"{name}: initial_state must have shape {expected}, got {tuple(state.shape)}")


def _check_per_token(name: str, label: str, x: torch.Tensor | None, k: torch.Tensor) -> None:
    if x is not None and tuple(x.shape) != tuple(k.shape[:3]):
        raise ValueError(
            f"{name}: {label} must have shape [batch, heads, time] = {tuple(k.shape[:3])}, got {tuple(x.shape)}"
        )


def _concat_time(outputs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The per-token outputs ``[B, H, 1, D]`` of a recurrent kernel as ``[B, H, T, D]`` (no copy for one token)."""
    if not outputs:
        return like.new_zeros(like.shape)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def _zero_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return k.new_zeros(k.shape[0], k.shape[1], k.shape[3], v.shape[3], dtype=torch.float32)


def _pad_time(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Zero-pad dim 2 to a multiple of ``chunk_size``: zero keys/rates/log-decays write nothing."""
    pad = (-x.shape[2]) % chunk_size
    if pad == 0:
        return x
    padding = [0, 0] * (x.dim() - 3) + [0, pad]
    return F.pad(x, padding)


def _chunked(x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[B, H, T, ...] -> [B, H, T/C, C, ...]`` (T already a multiple of C)."""
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] // chunk_size, chunk_size, *x.shape[3:])


# ----------------------------------------------------------------------------------------------
# Packed documents: where the state resets
# ----------------------------------------------------------------------------------------------


def _check_seq_idx(name: str, seq_idx: torch.Tensor | None, batch: int, seq_len: int) -> None:
    if seq_idx is None:
        return
    if seq_idx.dtype.is_floating_point or seq_idx.dtype.is_complex or seq_idx.dtype == torch.bool:
        raise TypeError(f"{name}: seq_idx must be an integer tensor of document ids, got {seq_idx.dtype}")
    if tuple(seq_idx.shape) != (batch, seq_len):
        raise ValueError(
            f"{name}: seq_idx must have shape [batch, time] = {(batch, seq_len)}, got {tuple(seq_idx.shape)}"
        )


def document_starts(seq_idx: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, T]``: True where a new document starts, i.e. at ``t > 0`` with
    ``seq_idx[:, t] != seq_idx[:, t-1]`` (never at t = 0: a row's first document continues its initial state)."""
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def document_numbers(seq_idx: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` int64: 0 for each row's first document, +1 at every document start (`document_starts`).

    Unlike raw ids these never decrease, so equal numbers mean the same contiguous document (ids that
    repeat later in a row, e.g. ``[0, 0, 1, 0]``, still start a new document)."""
    return document_starts(seq_idx).long().cumsum(dim=-1)


@dataclass(frozen=True)
class _ChunkDocuments:
    """Which interactions of a chunked computation stay inside one document, for chunks of C tokens.

    Shapes carry a head axis of 1 so that they broadcast against ``[B, H, N, C, ...]``:

    * ``same`` ``[B, 1, N, C, C]``: tokens i and j of a chunk belong to the same document;
    * ``reads_start`` ``[B, 1, N, C, 1]``: token i belongs to the document that the chunk-start state
      holds (the chunk's first document, if it began before the chunk; for the first chunk the row's
      first document, which owns ``initial_state``);
    * ``to_end`` ``[B, 1, N, C, 1]``: token j belongs to the chunk's last document (only its writes
      reach the next chunk);
    * ``keeps_state`` ``[B, 1, N, 1, 1]``: no document starts in the chunk (the incoming state is
      carried on; otherwise it is dropped).
    """

    same: torch.Tensor
    reads_start: torch.Tensor
    to_end: torch.Tensor
    keeps_state: torch.Tensor


def _chunk_documents(seq_idx: torch.Tensor, chunk_size: int) -> _ChunkDocuments:
    """The masks of :class:`_ChunkDocuments` for ``seq_idx [B, T]`` (T padded up to whole chunks; padded
    positions continue the row's last document, so they change nothing)."""
    numbers = document_numbers(seq_idx)
    pad = (-numbers.shape[1]) % chunk_size
    if pad:
        numbers = torch.cat([numbers, numbers[:, -1:].expand(-1, pad)], dim=1)
    numbers = numbers.reshape(numbers.shape[0], 1, -1, chunk_size)  # [B, 1, N, C]
    # the document of the token before each chunk (the state's owner); 0 before the first chunk
    before = torch.cat([numbers.new_zeros(numbers.shape[:2] + (1,)), numbers[..., :-1, -1]], dim=-1)
    last = numbers[..., -1]
    return _ChunkDocuments(
        same=numbers.unsqueeze(-1) == numbers.unsqueeze(-2),
        reads_start=(numbers == before.unsqueeze(-1)).unsqueeze(-1),
        to_end=(numbers == last.unsqueeze(-1)).unsqueeze(-1),
        keeps_state=(last == before)[..., None, None],
    )


def _state_keeps(seq_idx: torch.Tensor | None, seq_len: int) -> list[torch.Tensor | None]:
    """Per token, the factor ``[B, 1, 1, 1]`` (fp32) a recurrent form multiplies its state by before
    the token: 0 where a document starts (reset), 1 elsewhere; None for every token without documents."""
    if seq_idx is None:
        return [None] * seq_len
    keeps = (~document_starts(seq_idx)).float()[:, :, None, None, None]  # [B, T, 1, 1, 1]
    return list(keeps.unbind(dim=1))


def _reset(state: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The state before a token: zeroed where a document starts (`_state_keeps`)."""
    return state if keep is None else state * keep


def _chunk_log_decay_cumsum(log_decay: torch.Tensor, documents: _ChunkDocuments | None) -> torch.Tensor:
    """``b_i = Σ_{j ≤ i} g_j`` within each chunk (``[B, H, N, C]``); with `documents` only over the j of
    token i's own document, summed afresh from its start (not a difference of cumulative sums over
    earlier documents, which would round a document's small decays away after another's large ones)."""
    if documents is None:
        return log_decay.cumsum(dim=-1)
    chunk_size = log_decay.shape[-1]
    lower = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=log_decay.device).tril()
    return log_decay.unsqueeze(-2).masked_fill(~(lower & documents.same), 0.0).sum(dim=-1)


# ----------------------------------------------------------------------------------------------
# Sum rule (linear attention), optionally with a per-token decay γ_t = exp(g_t)
# ----------------------------------------------------------------------------------------------


def recurrent_sum_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    exclusive: bool = False,
    chunk_size: int | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum rule, one token at a time (decoding step and reference).

    ``S_t = exp(g_t) S_{t-1} + k_t v_tᵀ``; ``y_t = S_tᵀ q_t`` (``exclusive``: ``y_t = S_{t-1}ᵀ q_t``).
    q, k: ``[B, H, T, Dk]``; v: ``[B, H, T, Dv]``; log_decay g: ``[B, H, T]`` (≤ 0) or None;
    initial_state: ``[B, H, Dk, Dv]``; seq_idx: ``[B, T]`` document ids or None (``S_{t-1} := 0`` where
    a document starts, see the module docstring). Returns ``(y [B, H, T, Dv], S_T [B, H, Dk, Dv] fp32)``.
    ``chunk_size`` is unused (accepted so that both forms share one signature).
    """
    _check_inputs("recurrent_sum_rule", q, k, v, initial_state)
    _check_per_token("recurrent_sum_rule", "log_decay", log_decay, k)
    _check_seq_idx("recurrent_sum_rule", seq_idx, k.shape[0], k.shape[2])
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    state = _zero_state(k, v) if initial_state is None else initial_state.float()
    decay = log_decay.float().exp().unsqueeze(-1) if log_decay is not None else None
    if q.shape[2] == 1:  # one-token decoding: the step itself, no slicing (no document starts at t = 0)
        y, state = _sum_rule_step(q, k, v, decay, state, exclusive)
        return y.to(out_dtype), state
    outputs = []
    for t, keep in enumerate(_state_keeps(seq_idx, q.shape[2])):
        step = slice(t, t + 1)  # token t with its time dim kept: [B, H, 1, D]
        y_t, state = _sum_rule_step(q[:, :, step], k[:, :, step], v[:, :, step],
                                    decay[:, :, step] if decay is not None else None, _reset(state, keep),
                                    exclusive)
        outputs.append(y_t)
    return _concat_time(outputs, v).to(out_dtype), state


def _sum_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor | None, state: torch.Tensor,
    exclusive: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`recurrent_sum_rule` (shapes as in `_delta_rule_step`): ``S' = γ S + k vᵀ``,
    ``y = S'ᵀ q`` (``exclusive``: ``y = Sᵀ q``), the read as an elementwise product summed over Dk."""
    read_state = state
    if decay is not None:
        state = state * decay
    state = state + k.transpose(-1, -2) * v
    return (q.transpose(-1, -2) * (read_state if exclusive else state)).sum(dim=-2, keepdim=True), state


def _sum_rule_chunk_states(
    k: torch.Tensor, v: torch.Tensor, log_decay_cumsum: torch.Tensor | None, initial_state: torch.Tensor,
    documents: _ChunkDocuments | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """States at the start of every chunk and the final state.

    k: ``[B, H, N, C, Dk]``, v: ``[B, H, N, C, Dv]``, log_decay_cumsum b: ``[B, H, N, C]`` (cumulative
    within each chunk). Chunk n adds ``Σ_j exp(b_last − b_j) k_j v_jᵀ`` after decaying by ``exp(b_last)``.
    With `documents`, only the writes of the chunk's last document are added (``to_end``) and the
    incoming state is dropped where a document starts in the chunk (``keeps_state``).
    Returns ``([B, H, N, Dk, Dv], [B, H, Dk, Dv])``.
    """
    if log_decay_cumsum is None and documents is None:
        chunk_writes = k.transpose(-1, -2) @ v
        # Without decay the chunk-start states are an exclusive prefix sum: no sequential loop.
        inclusive = torch.cumsum(chunk_writes, dim=2) + initial_state.unsqueeze(2)
        starts = torch.cat([initial_state.unsqueeze(2), inclusive[:, :, :-1]], dim=2)
        return starts, inclusive[:, :, -1]
    if log_decay_cumsum is None:
        # Resets make the prefix sum a segmented one; the chunk loop keeps it exact (no subtraction).
        keys_to_end, chunk_decay = k * documents.to_end, documents.keeps_state.to(k.dtype)
    else:
        last = log_decay_cumsum[..., -1:]
        to_end_log = last - log_decay_cumsum
        if documents is not None:
            # Masked before the exp: b_C − b_j of an earlier document's token can be large and positive.
            to_end_log = to_end_log.masked_fill(~documents.to_end.squeeze(-1), float("-inf"))
        keys_to_end = k * to_end_log.exp().unsqueeze(-1)
        chunk_decay = last.exp().unsqueeze(-1)  # [B, H, N, 1, 1]
        if documents is not None:
            chunk_decay = chunk_decay * documents.keeps_state
    chunk_writes = keys_to_end.transpose(-1, -2) @ v
    starts = []
    state = initial_state
    for decay_n, write_n in zip(chunk_decay.unbind(dim=2), chunk_writes.unbind(dim=2)):
        starts.append(state)
        state = decay_n * state + write_n
    return torch.stack(starts, dim=2), state


def _sum_rule_chunk_readout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_starts: torch.Tensor,
    log_decay_cumsum: torch.Tensor | None,
    log_decay: torch.Tensor | None,
    exclusive: bool,
    documents: _ChunkDocuments | None = None,
) -> torch.Tensor:
    """Outputs of the sum rule given the chunk-start states; all inputs chunked ``[B, H, N, C, ...]``.

    With `documents`, query i reads key j of its chunk only if both belong to one document (``same``),
    and reads the chunk-start state only if it belongs to the state's document (``reads_start``).
    """
    diagonal = -1 if exclusive else 0
    scores = q @ k.transpose(-1, -2)
    if log_decay_cumsum is None:
        if documents is None:
            return torch.matmul(scores.tril_(diagonal), v).add_(q @ chunk_starts)
        intra = torch.matmul(scores.tril_(diagonal).masked_fill_(~documents.same, 0.0), v)
        return intra.add_((q * documents.reads_start) @ chunk_starts)
    chunk_size = q.shape[3]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril(diagonal)
    if documents is not None:
        causal = causal & documents.same
    # The read at position i sees the state after step i (inclusive) or after step i-1 (exclusive).
    read_log = log_decay_cumsum - log_decay if exclusive else log_decay_cumsum
    pair_log = (read_log.unsqueeze(-1) - log_decay_cumsum.unsqueeze(-2)).masked_fill(~causal, float("-inf"))
    intra = (scores * pair_log.exp()) @ v
    read_decay = read_log.exp().unsqueeze(-1)
    if documents is not None:
        read_decay = read_decay * documents.reads_start
    inter = (q * read_decay) @ chunk_starts
    return inter + intra


def chunk_sum_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    exclusive: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel sum rule; same arguments and result as :func:`recurrent_sum_rule`.

    Within a chunk the outputs are a masked (and decayed) ``q kᵀ`` times ``v``; across chunks the
    state at each chunk start is carried, so no ``T × T`` matrix is ever built. With ``seq_idx`` the
    intra-chunk matrix is masked to pairs of one document and the chunk-start states to the document
    that owns them (`_ChunkDocuments`).
    """
    _check_inputs("chunk_sum_rule", q, k, v, initial_state)
    _check_per_token("chunk_sum_rule", "log_decay", log_decay, k)
    _check_seq_idx("chunk_sum_rule", seq_idx, k.shape[0], k.shape[2])
    out_dtype, seq_len = q.dtype, q.shape[2]
    state = _zero_state(k, v) if initial_state is None else initial_state.float()
    if seq_len == 0:
        return v.new_zeros(v.shape), state
    q, k, v = (_chunked(_pad_time(x.float(), chunk_size), chunk_size) for x in (q, k, v))
    documents = _chunk_documents(seq_idx, chunk_size) if seq_idx is not None else None
    if log_decay is not None:
        log_decay = _chunked(_pad_time(log_decay.float(), chunk_size), chunk_size)
        log_decay_cumsum = _chunk_log_decay_cumsum(log_decay, documents)
    else:
        log_decay_cumsum = None
    starts, final_state = _sum_rule_chunk_states(k, v, log_decay_cumsum, state, documents)
    y = _sum_rule_chunk_readout(q, k, v, starts, log_decay_cumsum, log_decay, exclusive, documents)
    y = y.reshape(y.shape[0], y.shape[1], -1, y.shape[-1])[:, :, :seq_len]
    return y.to(out_dtype), final_state


def bidirectional_sum_rule_state(k: torch.Tensor, v: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Fast weights written by a whole (non-causal) sequence: ``S = Σ_τ φ(k_τ) v_τᵀ``.

    k: ``[B, H, T, Dk]`` (already φ-mapped; zero rows for padding write nothing); v: ``[B, H, T, Dv]``.
    With ``normalize`` a column of ones is appended to v, so ``S[..., -1] = z = Σ_τ φ(k_τ)``.
    Returns ``[B, H, Dk, Dv (+1)]`` fp32.
    """
    _check_inputs("bidirectional_sum_rule_state", k, k, v, None)
    k, v = k.float(), v.float()
    if normalize:
        v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
    return k.transpose(-1, -2) @ v


def sum_rule_read(
    q: torch.Tensor,
    state: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    log_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read fast weights: ``y = Sᵀ φ(q)``, or ``Sᵀ φ(q) / (z·φ(q) + ε)`` when ``normalize``.

    q: ``[B, H, T, Dk]``; state from :func:`bidirectional_sum_rule_state`. Returns ``[B, H, T, Dv]``.
    ``log_scale`` (only with ``normalize``): q and the keys are shifted features (see
    :func:`divide_by_normalizer`).
    """
    y = q.float() @ state
    if normalize:
        return divide_by_normalizer(y, q.dtype, eps, log_scale)
    if log_scale is not None:
        raise ValueError("sum_rule_read: log_scale applies to a normalised read only (normalize=True)")
    return y.to(q.dtype)


@dataclass(frozen=True)
class OrderFreeKernel:
    """The order-free (non-causal) form of an update rule, in the two steps a cache can keep apart:
    ``S = write(φ(K), V)``, the fast weights written by a whole sequence, and ``Y = read(φ(Q), S)``.

    Called as ``kernel(q, k, v)`` it has the causal kernels' signature and returns ``(read(q, S), S)``
    (an encoder layer); a decoder's cross-attention writes its source once (`write`), keeps S in the
    cache and reads it at every step (`read`). q may have a different length than k and v. As with
    the causal forms, a normalised read passes v with its normaliser column
    (:func:`append_normalizer_column`) and divides afterwards (:func:`divide_by_normalizer`).
    """

    write: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    read: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, initial_state: torch.Tensor | None = None,
        **unused,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if initial_state is not None:
            raise ValueError("an order-free kernel reads one whole sequence; it takes no initial_state")
        state = self.write(k, v)
        return self.read(q, state), state


# ``φ(Q)(φ(K)ᵀV)``: every query reads the fast weights written by the whole sequence.
BIDIRECTIONAL_SUM_RULE = OrderFreeKernel(
    write=partial(bidirectional_sum_rule_state, normalize=False), read=partial(sum_rule_read, normalize=False)
)


# ----------------------------------------------------------------------------------------------
# Delta rule (Schlag et al. 2021)
# ----------------------------------------------------------------------------------------------


def recurrent_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta rule (gated when ``log_decay`` is given), one token at a time (decoding step and reference).

    ``S' = exp(g_t) S_{t-1}`` (``S' = S_{t-1}`` without decay); ``v̄_t = S'ᵀ k_t``;
    ``S_t = S' + β_t k_t (v_t − v̄_t)ᵀ``; ``y_t = S_tᵀ q_t``.
    q, k: ``[B, H, T, Dk]``; v: ``[B, H, T, Dv]``; beta, log_decay g (≤ 0): ``[B, H, T]``;
    initial_state ``[B, H, Dk, Dv]``; seq_idx ``[B, T]`` document ids or None (``S_{t-1} := 0`` where a
    document starts). Returns ``(y [B, H, T, Dv], S_T fp32)``. ``chunk_size`` is unused.
    """
    _check_inputs("recurrent_delta_rule", q, k, v, initial_state)
    _check_per_token("recurrent_delta_rule", "beta", beta, k)
    _check_per_token("recurrent_delta_rule", "log_decay", log_decay, k)
    _check_seq_idx("recurrent_delta_rule", seq_idx, k.shape[0], k.shape[2])
    out_dtype = q.dtype
    q, k, v, beta = q.float(), k.float(), v.float(), beta.float()
    decay = log_decay.float().exp() if log_decay is not None else None
    state = _zero_state(k, v) if initial_state is None else initial_state.float()
    beta = beta.unsqueeze(-1)
    decay = decay.unsqueeze(-1) if decay is not None else None
    if q.shape[2] == 1:  # one-token decoding: the step itself, no slicing
        y, state = _delta_rule_step(q, k, v, beta, decay, state)
        return y.to(out_dtype), state
    outputs = []
    for t, keep in enumerate(_state_keeps(seq_idx, q.shape[2])):
        step = slice(t, t + 1)  # token t with its time dim kept: [B, H, 1, D]
        y_t, state = _delta_rule_step(q[:, :, step], k[:, :, step], v[:, :, step], beta[:, :, step],
                                      decay[:, :, step] if decay is not None else None, _reset(state, keep))
        outputs.append(y_t)
    return _concat_time(outputs, v).to(out_dtype), state


def _delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, decay: torch.Tensor | None,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`recurrent_delta_rule`: q, k ``[B, H, 1, Dk]``, v ``[B, H, 1, Dv]``, beta and
    decay (γ = exp(g)) ``[B, H, 1, 1]``, state ``[B, H, Dk, Dv]`` -> ``(y [B, H, 1, Dv], new state)``.
    Reads are elementwise products summed over Dk: at one token they are a few small ops where a batched
    matmul is six (expand, reshape, bmm, view), and one-token decoding is bound by the number of ops."""
    if decay is not None:
        state = state * decay
    retrieved = (k.transpose(-1, -2) * state).sum(dim=-2, keepdim=True)
    state = state + k.transpose(-1, -2) * (beta * (v - retrieved))
    return (q.transpose(-1, -2) * state).sum(dim=-2, keepdim=True), state


def chunk_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: torch.Tensor,
    log_decay: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel delta rule, gated when ``log_decay`` is given (WY representation / UT
    transform); same contract as :func:`recurrent_delta_rule`.

    Within a chunk that starts from state ``S`` with cumulative log-decays ``b_i = Σ_{j≤i} g_j``
    (all 0 without gating), the written values are ``u = ũ − W̃ S`` with ``W̃ = T diag(β e^b) K``,
    ``ũ = T diag(β) V`` and ``T = (I + tril(diag(β) (K Kᵀ ⊙ e^{b_i − b_j}), −1))⁻¹`` (the inverse of
    a unit lower-triangular matrix, for all chunks at once: `_unit_lower_triangular_inverse`). Then per chunk
    ``S ← e^{b_C} S + (K ⊙ e^{b_C − b})ᵀ u``, and for all chunks at once
    ``Y = (Q ⊙ e^b) S_start + (tril(Q Kᵀ) ⊙ e^{b_i − b_j}) u``.

    With ``seq_idx`` (`_ChunkDocuments`): the strictly lower ``K Kᵀ`` of T and the intra-chunk scores
    keep pairs of one document only (T is then block-diagonal per document), ``W̃`` and the read of
    ``S_start`` keep the rows of tokens of the state's document, and the next chunk's state keeps the
    writes of the chunk's last document only (and ``S`` only if no document starts in the chunk).
    """
    _check_inputs("chunk_delta_rule", q, k, v, initial_state)
    _check_per_token("chunk_delta_rule", "beta", beta, k)
    _check_per_token("chunk_delta_rule", "log_decay", log_decay, k)
    _check_seq_idx("chunk_delta_rule", seq_idx, k.shape[0], k.shape[2])
    out_dtype, seq_len = q.dtype, q.shape[2]
    state = _zero_state(k, v) if initial_state is None else initial_state.float()
    if seq_len == 0:
        return v.new_zeros(v.shape), state
    q, k, v = (_chunked(_pad_time(x.float(), chunk_size), chunk_size) for x in (q, k, v))
    beta = _chunked(_pad_time(beta.float(), chunk_size), chunk_size).unsqueeze(-1)
    documents = _chunk_documents(seq_idx, chunk_size) if seq_idx is not None else None
    if log_decay is None:
        y, state = _chunk_delta_rule_ungated(q, k, v, beta, state, chunk_size, documents)
    else:
        log_decay_chunks = _chunked(_pad_time(log_decay.float(), chunk_size), chunk_size)
        log_decay_cumsum = _chunk_log_decay_cumsum(log_decay_chunks, documents)
        y, state = _chunk_delta_rule_gated(q, k, v, beta, log_decay_cumsum, state, documents)
    y = y.reshape(y.shape[0], y.shape[1], -1, y.shape[-1])[:, :, :seq_len]
    return y.to(out_dtype), state


# Diagonal blocks up to this size are inverted by LAPACK's triangular solve; larger ones are merged from two halves.
_TRIANGULAR_INVERSE_BLOCK = 16


def _unit_lower_triangular_inverse(strict_lower: torch.Tensor) -> torch.Tensor:
    """``(I + L)⁻¹`` for strictly lower-triangular ``L`` ``[..., C, C]`` (only its strict lower triangle is read).

    Recursive halving, as FLA's ``solve_tril`` merges 16×16 inverses: with ``I + L = [[A, 0], [B, D]]``,
    ``(I + L)⁻¹ = [[A⁻¹, 0], [−D⁻¹ B A⁻¹, D⁻¹]]``; blocks of at most ``_TRIANGULAR_INVERSE_BLOCK`` rows go to
    one batched triangular solve. On a CPU this is ~1.5× faster than one solve of the whole C×C system (forward
    and backward): LAPACK's solve runs one small matrix at a time, the merges are batched matmuls."""
    size = strict_lower.shape[-1]
    if size <= _TRIANGULAR_INVERSE_BLOCK:
        identity = torch.eye(size, dtype=strict_lower.dtype, device=strict_lower.device)
        return torch.linalg.solve_triangular(
            strict_lower, identity.expand_as(strict_lower), upper=False, unitriangular=True
        )
    half = size // 2
    upper_left = _unit_lower_triangular_inverse(strict_lower[..., :half, :half])
    lower_right = _unit_lower_triangular_inverse(strict_lower[..., half:, half:])
    lower_left = -(lower_right @ (strict_lower[..., half:, :half] @ upper_left))
    upper_right = strict_lower.new_zeros(*strict_lower.shape[:-2], half, size - half)
    top, bottom = torch.cat([upper_left, upper_right], dim=-1), torch.cat([lower_left, lower_right], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _delta_chunk_state_recursion(
    w_keys: torch.Tensor, u_values: torch.Tensor, keys_to_end: torch.Tensor, state_factor: torch.Tensor | None,
    state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one sequential part of the chunkwise delta rules: per chunk n, ``S_n`` (the chunk-start state),
    ``u_n = Ũ_n − W̃_n S_n`` (what the chunk writes) and ``S_{n+1} = a_n S_n + K̂_nᵀ u_n``.

    w_keys W̃, u_values Ũ, keys_to_end K̂: ``[B, H, N, C, ·]``; state_factor a ``[B, H, N, 1, 1]`` (the
    chunk's decay, or 0 where a document starts in it) or None for 1. Returns ``(starts [B, H, N, Dk, Dv],
    written [B, H, N, C, Dv], final state)``. (unbind, not indexing in the loop: indexing's backward would
    zero-fill a full-size gradient tensor per chunk.)
    """
    batch, heads = state.shape[:2]

    def per_chunk(x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # [B, H, N, ...] -> N × [B·H, ...] (views)
        return x.flatten(0, 1).unbind(dim=1)

    factors = per_chunk(state_factor.expand(batch, heads, *state_factor.shape[2:])) if state_factor is not None \
        else [None] * w_keys.shape[2]
    state = state.flatten(0, 1)
    starts, written = [], []
    for w_n, u_n, k_n, factor_n in zip(per_chunk(w_keys), per_chunk(u_values), per_chunk(keys_to_end), factors):
        starts.append(state)
        written_n = torch.baddbmm(u_n, w_n, state, alpha=-1.0)  # fused u − W̃ S: one op less per chunk
        written.append(written_n)
        carried = state if factor_n is None else factor_n * state
        state = torch.baddbmm(carried, k_n.transpose(-1, -2), written_n)
    starts, written = torch.stack(starts, dim=1), torch.stack(written, dim=1)
    return starts.unflatten(0, (batch, heads)), written.unflatten(0, (batch, heads)), state.unflatten(0, (batch, heads))


def _chunk_delta_rule_ungated(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, state: torch.Tensor, chunk_size: int,
    documents: _ChunkDocuments | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain delta rule's chunk loop; chunked inputs ``[B, H, N, C, ...]``, beta ``[B, H, N, C, 1]``.

    With `documents` (packed documents; without them the computation is exactly the plain one):
    ``T = (I + tril(diag(β) K Kᵀ ⊙ same, −1))⁻¹``, ``u = T diag(β) V − T diag(β ⊙ r) K S`` with r =
    ``reads_start``; ``Y = (Q ⊙ r) S + (tril(Q Kᵀ) ⊙ same) u``; ``S ← keeps·S + (K ⊙ to_end)ᵀ u``."""
    keys_beta = k * beta
    pairs = keys_beta @ k.transpose(-1, -2)
    keys_reading_start, keys_to_end, queries_reading_start, keeps = keys_beta, k, q, None
    if documents is not None:
        pairs = pairs.masked_fill_(~documents.same, 0.0)
        keys_reading_start = keys_beta * documents.reads_start
        keys_to_end = k * documents.to_end
        queries_reading_start = q * documents.reads_start
        keeps = documents.keeps_state.to(k.dtype)
    transform = _unit_lower_triangular_inverse(pairs)  # reads the strict lower triangle only: no tril needed
    w_keys, u_values = transform @ keys_reading_start, transform @ (v * beta)

    starts, written, state = _delta_chunk_state_recursion(w_keys, u_values, keys_to_end, keeps, state)
    intra_scores = (q @ k.transpose(-1, -2)).tril_()
    if documents is not None:
        intra_scores = intra_scores.masked_fill_(~documents.same, 0.0)
    return torch.matmul(intra_scores, written).add_(queries_reading_start @ starts), state


class _PairDecayed(torch.autograd.Function):
    """``(A ⊙ P, B ⊙ P)`` with ``P_ij = e^{b_i − b_j}`` where ``causal`` (j ≤ i, same document) and 0 elsewhere:
    the decay between two tokens of a chunk applied to the key–key products of the WY system and to the
    query–key scores. b ``[B, H, N, C]``; A, B ``[B, H, N, C, C]``; causal ``[C, C]`` or broadcastable.

    Autograd would take nine passes over ``[..., C, C]`` tensors for the backward of the three ops; this
    takes six: ``∂A = g_A ⊙ P``, ``∂B = g_B ⊙ P``, and with ``Δ = g_A ⊙ (A ⊙ P) + g_B ⊙ (B ⊙ P)`` (the
    gradient of ``b_i − b_j``, from the saved outputs: ``∂P/∂(b_i − b_j) = P``), ``∂b_i = Σ_j Δ_ij − Σ_j Δ_ji``.
    Not twice differentiable."""

    @staticmethod
    def forward(ctx, log_decay_cumsum, first, second, causal):
        # masked before the exp (e^{b_i − b_j} of j > i can overflow); in place: two fewer [.., C, C] buffers
        pair_decay = (log_decay_cumsum.unsqueeze(-1) - log_decay_cumsum.unsqueeze(-2)).masked_fill_(
            ~causal, float("-inf")
        ).exp_()
        first_decayed, second_decayed = first * pair_decay, second * pair_decay
        ctx.save_for_backward(pair_decay, first_decayed, second_decayed)
        return first_decayed, second_decayed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_first, grad_second):
        pair_decay, first_decayed, second_decayed = ctx.saved_tensors
        grad_log_decay = None
        if ctx.needs_input_grad[0]:
            grad_difference = (grad_first * first_decayed).addcmul_(grad_second, second_decayed)
            grad_log_decay = grad_difference.sum(dim=-1) - grad_difference.sum(dim=-2)
        grad_a = grad_first * pair_decay if ctx.needs_input_grad[1] else None
        grad_b = grad_second * pair_decay if ctx.needs_input_grad[2] else None
        return grad_log_decay, grad_a, grad_b, None


def _chunk_delta_rule_gated(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    log_decay_cumsum: torch.Tensor,
    state: torch.Tensor,
    documents: _ChunkDocuments | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule's chunk loop; ``log_decay_cumsum`` b ``[B, H, N, C]`` (cumulative within chunks).
    `documents`: pairs of different documents get decay 0 (masked before the exp, so exactly 0), and
    the factors to and from the chunk-start state are masked as in `_chunk_delta_rule_ungated`."""
    chunk_size = q.shape[3]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    if documents is not None:
        causal = causal & documents.same
    decay_from_start = log_decay_cumsum.exp().unsqueeze(-1)  # e^{b_i}: [B, H, N, C, 1]
    to_end_log = log_decay_cumsum[..., -1:] - log_decay_cumsum
    if documents is not None:  # masked before the exp: b_C − b_j of an earlier document's token can be > 0
        to_end_log = to_end_log.masked_fill(~documents.to_end.squeeze(-1), float("-inf"))
    decay_to_end = to_end_log.exp().unsqueeze(-1)  # e^{b_C − b_j}
    chunk_decay = log_decay_cumsum[..., -1].exp()[..., None, None]  # e^{b_C}: [B, H, N, 1, 1]
    if documents is not None:
        decay_from_start = decay_from_start * documents.reads_start
        chunk_decay = chunk_decay * documents.keeps_state

    keys_beta = k * beta
    pairs, intra_scores = _PairDecayed.apply(
        log_decay_cumsum, keys_beta @ k.transpose(-1, -2), q @ k.transpose(-1, -2), causal
    )
    transform = _unit_lower_triangular_inverse(pairs)
    w_keys, u_values = transform @ (keys_beta * decay_from_start), transform @ (v * beta)
    keys_to_end = k * decay_to_end

    starts, written, state = _delta_chunk_state_recursion(w_keys, u_values, keys_to_end, chunk_decay, state)
    return torch.matmul(intra_scores, written).add_((q * decay_from_start) @ starts), state


# ----------------------------------------------------------------------------------------------
# Ba et al. 2016 fast associative memory with an inner loop
# ----------------------------------------------------------------------------------------------


def fast_weights_inner_loop(
    drive: torch.Tensor,
    read: Callable[[torch.Tensor], torch.Tensor],
    num_steps: int,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Ba et al.'s inner loop: ``h⁰ = f(z)``; ``h^{s+1} = f(LN(z + A h^s))`` for ``s < num_steps``.

    ``drive`` z: ``[..., d]``; ``read(h)`` returns ``A h`` for the memory in use; f = ReLU; LN over
    the last dim with the given gain/bias. Returns ``h^{num_steps}``.
    """
    ln_weight = ln_weight.to(drive.dtype) if ln_weight is not None else None
    ln_bias = ln_bias.to(drive.dtype) if ln_bias is not None else None
    hidden = F.relu(drive)
    for _ in range(num_steps):
        hidden = F.relu(F.layer_norm(drive + read(hidden), drive.shape[-1:], ln_weight, ln_bias, eps))
    return hidden


def hebbian_update(
    state: torch.Tensor, key: torch.Tensor, value: torch.Tensor, log_decay: torch.Tensor | float
) -> torch.Tensor:
    """One decayed Hebbian write ``A ← exp(g) A + k vᵀ`` (Ba et al.: ``A ← λA + η h hᵀ`` with k = ηh, v = h).

    state: ``[..., Dk, Dv]``; key: ``[..., Dk]``; value: ``[..., Dv]``; log_decay g: ``[...]`` or a float.
    """
    decay = log_decay.exp()[..., None, None] if torch.is_tensor(log_decay) else math.exp(log_decay)
    return decay * state + key[..., :, None] * value[..., None, :]


def _check_fast_weights(
    name: str,
    drive: torch.Tensor,
    decay: float,
    num_steps: int,
    initial_state: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> None:
    if drive.dim() != 4:
        raise ValueError(f"{name}: drive must be [batch, heads, time, dim], got shape {tuple(drive.shape)}")
    if not drive.is_floating_point():
        raise TypeError(f"{name}: drive must be a floating-point tensor, got {drive.dtype}")
    _check_per_token(name, "mask", mask, drive)
    if initial_state is not None:
        expected = (drive.shape[0], drive.shape[1], drive.shape[3], drive.shape[3])
        if tuple(initial_state.shape) != expected:
            raise ValueError(f"{name}: initial_state must have shape {expected}, got {tuple(initial_state.shape)}")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"{name}: decay λ must be in (0, 1], got {decay}")
    if num_steps < 0:
        raise ValueError(f"{name}: num_steps must be >= 0, got {num_steps}")


class _FastWeightsStart(NamedTuple):
    """What both Ba et al. kernels start from (`_fast_weights_start`), all fp32."""

    drive: torch.Tensor  # z_t [B, H, T, d]
    keys: torch.Tensor  # η h⁰_t, zero on masked tokens
    values: torch.Tensor  # h⁰_t = relu(z_t)
    log_decay: torch.Tensor  # log λ per token [B, H, T], zero on masked tokens
    state: torch.Tensor  # A_0 [B, H, d, d]


def _fast_weights_start(
    name: str,
    drive: torch.Tensor,
    decay: float,
    learning_rate: float,
    num_steps: int,
    initial_state: torch.Tensor | None,
    mask: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
) -> _FastWeightsStart:
    """The arguments of kernel `name` checked, then the drive in fp32, the memory writes ``η h⁰_t`` (keys),
    ``h⁰_t`` (values) and log-decays (masked tokens neither write nor decay), and the initial memory."""
    _check_fast_weights(name, drive, decay, num_steps, initial_state, mask)
    _check_seq_idx(name, seq_idx, drive.shape[0], drive.shape[2])
    drive = drive.float()
    hidden0 = F.relu(drive)
    log_decay = drive.new_full(drive.shape[:3], math.log(decay))
    keys = learning_rate * hidden0
    if mask is not None:
        mask = mask.to(drive.dtype)
        keys = keys * mask.unsqueeze(-1)
        log_decay = log_decay * mask
    state = _zero_state(drive, drive) if initial_state is None else initial_state.float()
    return _FastWeightsStart(drive, keys, hidden0, log_decay, state)


def recurrent_fast_weights(
    drive: torch.Tensor,
    *,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    decay: float = 0.95,
    learning_rate: float = 0.5,
    num_steps: int = 1,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ba et al. fast weights as a token mixer, one token at a time (decoding step and reference).

    Per head with drive ``z_t`` (the slow input ``C x_t``): ``h⁰_t = relu(z_t)``; the inner loop reads
    ``A_{t-1}`` (the memory before token t, as in the paper); then ``A_t = λ_t A_{t-1} + η h⁰_t h⁰_tᵀ``
    with ``λ_t = λ`` (1 for masked tokens, which also write nothing).
    drive: ``[B, H, T, d]``; mask: ``[B, H, T]`` or None; state ``[B, H, d, d]``; seq_idx ``[B, T]``
    document ids or None (``A_{t-1} := 0`` where a document starts, before that token's inner loop reads it).
    Returns ``(h^S [B, H, T, d], A_T fp32)``. ``chunk_size`` is unused.
    """
    out_dtype = drive.dtype
    drive, keys, values, log_decay, state = _fast_weights_start(
        "recurrent_fast_weights", drive, decay, learning_rate, num_steps, initial_state, mask, seq_idx
    )
    outputs = []
    for t, keep in enumerate(_state_keeps(seq_idx, drive.shape[2])):
        state = _reset(state, keep)
        read = partial(_read, state=state)  # binds this step's memory A_{t-1}
        outputs.append(fast_weights_inner_loop(drive[:, :, t], read, num_steps, ln_weight, ln_bias))
        state = hebbian_update(state, keys[:, :, t], values[:, :, t], log_decay[:, :, t])
    y = torch.stack(outputs, dim=2) if outputs else drive.new_zeros(drive.shape)
    return y.to(out_dtype), state


def chunk_fast_weights(
    drive: torch.Tensor,
    *,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    decay: float = 0.95,
    learning_rate: float = 0.5,
    num_steps: int = 1,
    initial_state: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunkwise-parallel form of :func:`recurrent_fast_weights` (same contract).

    The memory written by token t is ``η h⁰_t h⁰_tᵀ`` with ``h⁰_t = relu(z_t)``, which does not depend
    on the inner loop, so ``A_{t-1} h = η Σ_{τ<t} λ^{t-1-τ} h⁰_τ (h⁰_τ·h)`` is an exclusive, decayed sum
    rule: the chunk-start states are computed once and every inner step is one parallel read.
    The inner loop itself is sequential in s (it is a fixed point iteration) but runs S times over
    the whole sequence, not S times per token. ``seq_idx``: the exclusive sum rule's document masks
    (`_ChunkDocuments`), computed once for all inner steps.
    """
    out_dtype, seq_len = drive.dtype, drive.shape[2]
    drive, keys, values, log_decay, state = _fast_weights_start(
        "chunk_fast_weights", drive, decay, learning_rate, num_steps, initial_state, mask, seq_idx
    )
    if seq_len == 0:
        return drive.to(out_dtype), state
    keys_c, values_c = (_chunked(_pad_time(x, chunk_size), chunk_size) for x in (keys, values))
    log_decay_c = _chunked(_pad_time(log_decay, chunk_size), chunk_size)
    documents = _chunk_documents(seq_idx, chunk_size) if seq_idx is not None else None
    log_decay_cumsum = _chunk_log_decay_cumsum(log_decay_c, documents)
    starts, final_state = _sum_rule_chunk_states(keys_c, values_c, log_decay_cumsum, state, documents)

    def read(hidden: torch.Tensor) -> torch.Tensor:
        query = _chunked(_pad_time(hidden, chunk_size), chunk_size)
        y = _sum_rule_chunk_readout(query, keys_c, values_c, starts, log_decay_cumsum, log_decay_c, exclusive=True,
                                    documents=documents)
        return y.reshape(y.shape[0], y.shape[1], -1, y.shape[-1])[:, :, :seq_len]

    y = fast_weights_inner_loop(drive, read, num_steps, ln_weight, ln_bias)
    return y.to(out_dtype), final_state


# ----------------------------------------------------------------------------------------------
# Sliding-window softmax + sum rule under one normaliser (LoLCATs, Zhang et al. 2024)
# ----------------------------------------------------------------------------------------------
# Per head, for query i, window size w, s_ij = q_i·k_j·scale (q, k rotated), m_i = max_{i−w<j≤i} s_ij:
#
#     y_i = ( Σ_{i−w<j≤i} γ e^{s_ij − m_i} v_j  +  Σ_{j≤i−w} λ φ(q_i)·φ(k_j) v_j )
#           / ( Σ_{i−w<j≤i} γ e^{s_ij − m_i}    +  Σ_{j≤i−w} λ φ(q_i)·φ(k_j) )
#
# The window holds w tokens including i (LoLCATs' `linear_window_attention_sw.get_masks`: the linear part is
# ``tril(−w)``, the window the causal rest). Padding (``key_mask`` 0) is absent: it takes no place in the window
# and writes nothing, so distances count real tokens and a padded row computes what it computes alone. The
# carried state of both forms (`WindowState`) is the last ``w − 1`` tokens' rotated keys, values, features φ(k)
# and key mask (w − 1 slots from the start, empty ones masked), and the lagged sum-rule state
# ``[S | z] = Σ_{j older than the window} φ(k_j) [v_j, 1]ᵀ``: a fixed size whatever the context. Every form
# walks the sequence with one step, `_window_sum_rule_block`, on blocks of new tokens (C tokens for the
# chunkwise form, one for the recurrent form): the block's queries attend to the carried window plus the
# block (``w − 1 + C`` keys, so O(C·(C + w)·d) per block) and read ``[S | z]``; the tokens that leave the
# window are then added into ``[S | z]``.


class WindowState(NamedTuple):
    """The carried state of the window kernels (fp32 — fp64 for fp64 inputs — except `keys`/`values`, kept in
    the inputs' dtype).

    keys: ``[B, H, n, d]`` the last rotated keys; values: ``[B, H, n, d_v]``; features:
    ``[B, H, n, D]`` their φ(k); key_mask: ``[B, n]`` 1 for real tokens, 0 for empty slots (zeros); n = w − 1
    always (`empty_window_state`); state: ``[B, H, D, d_v + 1]`` the lagged ``[S | z]`` of every older token.
    """

    keys: torch.Tensor
    values: torch.Tensor
    features: torch.Tensor
    key_mask: torch.Tensor
    state: torch.Tensor


def empty_window_state(q: torch.Tensor, fq: torch.Tensor, v: torch.Tensor, window_size: int) -> WindowState:
    """The state before the first token: ``w − 1`` window slots of padding (key mask 0, zeros), so that the state
    has its one size from the start, and ``[S | z] = 0``."""
    batch, heads, slots = q.shape[0], q.shape[1], window_size - 1
    return WindowState(
        keys=q.new_zeros(batch, heads, slots, q.shape[-1]), values=v.new_zeros(batch, heads, slots, v.shape[-1]),
        features=fq.new_zeros(batch, heads, slots, fq.shape[-1], dtype=_window_compute_dtype(fq)),
        key_mask=q.new_zeros(batch, slots, dtype=_window_compute_dtype(q)),
        state=fq.new_zeros(batch, heads, fq.shape[-1], v.shape[-1] + 1, dtype=_window_compute_dtype(fq)),
    )


def _check_window_inputs(
    name: str, q: torch.Tensor, k: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor,
    window_size: int, key_mask: torch.Tensor | None, initial_state: WindowState | None,
) -> None:
    _check_inputs(name, q, k, v, None)
    if fq.shape != fk.shape or fq.shape[:3] != q.shape[:3]:
        raise ValueError(f"{name}: φ(q) and φ(k) must be [batch, heads, time, D] like q, got "
                         f"{tuple(fq.shape)} and {tuple(fk.shape)} for q {tuple(q.shape)}")
    if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
        raise ValueError(f"{name}: window_size must be a positive integer, got {window_size!r}")
    if key_mask is not None and tuple(key_mask.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(f"{name}: key_mask must be [batch, time] = {(q.shape[0], q.shape[2])}, "
                         f"got {tuple(key_mask.shape)}")
    if initial_state is not None:
        if not isinstance(initial_state, WindowState):
            raise TypeError(f"{name}: initial_state must be a WindowState, got {type(initial_state).__name__}")
        expected = (q.shape[0], q.shape[1], fq.shape[-1], v.shape[-1] + 1)
        if tuple(initial_state.state.shape) != expected:
            raise ValueError(f"{name}: initial_state.state must have shape {expected}, "
                             f"got {tuple(initial_state.state.shape)}")
        if initial_state.keys.shape[2] != window_size - 1:
            raise ValueError(f"{name}: initial_state holds {initial_state.keys.shape[2]} window slots, but a window of "
                             f"{window_size} tokens carries window_size − 1 = {window_size - 1}")


def _window_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (the tests' gradient checks)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _head_factor(factor: torch.Tensor | float, heads: int, dtype: torch.dtype) -> torch.Tensor | float:
    """A per-head factor ``[H]`` as ``[1, H, 1, 1]`` in `dtype`; a float stays a float."""
    if torch.is_tensor(factor):
        if factor.numel() not in (1, heads):
            raise ValueError(f"a window kernel factor must have 1 or {heads} (heads) entries, got {factor.numel()}")
        return factor.to(dtype).reshape(1, -1, 1, 1)
    return float(factor)


def _window_softmax_weights(scores: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``e^{s − m}`` on the window (0 elsewhere), m the row's maximum over the window (0 for a row whose window
    is empty: a padded query)."""
    scores = scores.masked_fill(~window, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    return torch.exp(scores - row_max)


def _combine_window_read(numerator: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """``[..., d_v + 1]`` (the value columns, then the normaliser) -> ``y = value columns / normaliser``; a row
    with a zero normaliser (a padded query: nothing to read) reads 0."""
    denominator = numerator[..., -1:]
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return (numerator[..., :-1] / denominator).to(out_dtype)


def _window_masks(
    key_mask: torch.Tensor, num_queries: int, window_size: int, documents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(in_window, below_window)`` boolean ``[B, 1, C, L]`` for the last C of L keys as queries.

    Distances count real tokens only (padding, ``key_mask`` 0, is absent: it is read by no query and takes no
    place in the window), so a padded row computes what the row computes alone: query i and an earlier real key
    j are ``r_i − r_j`` apart, r the number of real tokens up to and including a position. `documents` ``[B, L]``
    (non-decreasing document numbers): a query reads the keys of its own document only.
    """
    num_keys = key_mask.shape[1]
    rank = key_mask.cumsum(dim=-1)
    distance = rank[:, -num_queries:, None] - rank[:, None, :]  # [B, C, L]
    positions = torch.arange(num_keys, device=key_mask.device)
    causal = positions[-num_queries:, None] >= positions[None, :]
    valid = causal & key_mask.bool()[:, None, :]
    if documents is not None:
        valid = valid & (documents[:, -num_queries:, None] == documents[:, None, :])
    return (valid & (distance < window_size)).unsqueeze(1), (valid & (distance >= window_size)).unsqueeze(1)


class _BlockDocuments(NamedTuple):
    """Packed documents inside one window-kernel call: the document number (`document_numbers`; the carried
    state's is 0) of each carried window entry ``[B, n]`` and of the lagged state ``[B]``."""

    window: torch.Tensor
    state: torch.Tensor


def _window_sum_rule_block(
    q: torch.Tensor, k: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
    carried: WindowState, window_factor: torch.Tensor | float, linear_factor: torch.Tensor | float,
    window_size: int, scale: float, block_documents: torch.Tensor | None = None,
    carried_documents: _BlockDocuments | None = None,
) -> tuple[torch.Tensor, WindowState, _BlockDocuments | None]:
    """One block of C new tokens after the carried window (n = w − 1 slots) and lagged ``[S | z]``.

    Keys of the block's queries: the n carried then the C new ones (L = n + C), masked by `_window_masks`;
    ``[S | z]`` covers every older token. Afterwards the window keeps the last ``min(L, w − 1)`` entries that are
    real tokens (empty slots fill it while it has fewer real tokens), and the real tokens that leave it are
    added into ``[S | z]``. With packed documents (`block_documents` ``[B, C]``, `carried_documents`) a query
    reads keys and ``[S | z]`` of its own document only, and ``[S | z]`` restarts when a later document's tokens
    leave the window. Returns ``(numerator [B, H, C, d_v + 1]: the value columns, then the normaliser; the new
    state; the new documents)``.
    """
    keys = torch.cat([carried.keys.to(k.dtype), k], dim=2)
    features = torch.cat([carried.features, fk], dim=2)
    values = append_normalizer_column(torch.cat([carried.values.to(v.dtype), v], dim=2))
    mask = torch.cat([carried.key_mask, key_mask], dim=1)
    documents = None if block_documents is None else torch.cat([carried_documents.window, block_documents], dim=1)
    in_window, below_window = _window_masks(mask, q.shape[2], window_size, documents)
    window_weights = window_factor * _window_softmax_weights((q @ keys.transpose(-1, -2)) * scale, in_window)
    linear_weights = (linear_factor * (fq @ features.transpose(-1, -2))).masked_fill(~below_window, 0.0)
    lagged_read = fq @ carried.state
    if documents is not None:  # the lagged state is read by the queries of its document only
        reads_state = carried_documents.state[:, None] == block_documents  # [B, C]
        lagged_read = lagged_read * reads_state[:, None, :, None]
    numerator = (window_weights + linear_weights) @ values + linear_factor * lagged_read
    # The entries the window keeps: the latest real tokens first, then (while it has fewer) the latest padding;
    # kept in their order (a rank is a running count along the window).
    total = keys.shape[2]
    positions = torch.arange(total, device=mask.device)
    priority = torch.where(mask.bool(), positions + total, positions)
    kept = priority.topk(min(total, window_size - 1), dim=-1).indices.sort(dim=-1).values  # [B, n']
    leaving = mask.scatter(1, kept, 0.0)  # real tokens that leave the window
    state, new_documents = carried.state, None
    if documents is not None:
        # the lagged state holds the latest document that has left the window (documents never decrease)
        latest = documents.masked_fill(leaving == 0, -1).amax(dim=-1)
        state_document = torch.where(latest >= 0, latest, carried_documents.state)
        state = state * (carried_documents.state == state_document).to(state.dtype)[:, None, None, None]
        leaving = leaving * (documents == state_document[:, None]).to(leaving.dtype)
        new_documents = _BlockDocuments(window=documents.gather(1, kept), state=state_document)
    state = state + (features * leaving[:, None, :, None]).transpose(-1, -2) @ values

    def take(x: torch.Tensor) -> torch.Tensor:
        return x.gather(2, kept[:, None, :, None].expand(*x.shape[:2], kept.shape[1], x.shape[3]))

    new = WindowState(keys=take(keys), values=take(values[..., :-1]), features=take(features),
                      key_mask=mask.gather(1, kept), state=state)
    return numerator, new, new_documents


def _window_kernel(
    name: str, block_size: int, q: torch.Tensor, k: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor,
    v: torch.Tensor, window_factor: torch.Tensor | float, linear_factor: torch.Tensor | float, window_size: int,
    scale: float | None, key_mask: torch.Tensor | None, initial_state: WindowState | None, seq_idx,
) -> tuple[torch.Tensor, WindowState]:
    _check_window_inputs(name, q, k, fq, fk, v, window_size, key_mask, initial_state)
    _check_seq_idx(name, seq_idx, q.shape[0], q.shape[2])
    out_dtype, seq_len, heads = q.dtype, q.shape[2], q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    carried = empty_window_state(q, fq, v, window_size) if initial_state is None else initial_state
    compute = _window_compute_dtype(q)
    carried = carried._replace(features=carried.features.to(compute), key_mask=carried.key_mask.to(compute),
                               state=carried.state.to(compute))
    key_mask = q.new_ones(q.shape[0], seq_len, dtype=compute) if key_mask is None else key_mask.to(compute)
    window_factor, linear_factor = (_head_factor(window_factor, heads, compute),
                                    _head_factor(linear_factor, heads, compute))
    q, k, fq, fk, v = (x.to(compute) for x in (q, k, fq, fk, v))
    numbers = carried_documents = None
    if seq_idx is not None:  # the carried state belongs to the row's first document (number 0)
        numbers = document_numbers(seq_idx)
        carried_documents = _BlockDocuments(window=numbers.new_zeros(carried.key_mask.shape),
                                            state=numbers.new_zeros(numbers.shape[0]))
    outputs = []
    # torch.split, not a slice per block: the backward of a slice writes a zero tensor of the whole sequence
    blocks = [x.split(block_size, dim=2) for x in (q, k, fq, fk, v)]
    block_masks = key_mask.split(block_size, dim=1)
    block_numbers = [None] * len(block_masks) if numbers is None else numbers.split(block_size, dim=1)
    for q_b, k_b, fq_b, fk_b, v_b, mask_b, numbers_b in zip(*blocks, block_masks, block_numbers):
        numerator, carried, carried_documents = _window_sum_rule_block(
            q_b, k_b, fq_b, fk_b, v_b, mask_b, carried, window_factor, linear_factor, window_size, scale, numbers_b,
            carried_documents,
        )
        outputs.append(_combine_window_read(numerator, out_dtype))
    if numbers is not None and seq_len > 0:
        # what carries on is the row's last document: its window entries and its lagged state only
        last = numbers[:, -1]
        carried = carried._replace(
            key_mask=carried.key_mask * (carried_documents.window == last[:, None]).to(compute),
            state=carried.state * (carried_documents.state == last).to(compute)[:, None, None, None],
        )
    # Slots that hold no real token of the carried document are zeros (one state for one history, however it was
    # fed); the window's keys and values keep the inputs' dtype (a bf16 cache stays bf16), features and [S | z] fp32.
    slot = carried.key_mask[:, None, :, None]
    carried = carried._replace(keys=(carried.keys * slot).to(out_dtype), values=(carried.values * slot).to(out_dtype),
                               features=carried.features * slot)
    return _concat_time(outputs, v.to(out_dtype)), carried


def chunk_window_sum_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_features: torch.Tensor, k_features: torch.Tensor,
    window_factor: torch.Tensor | float, linear_factor: torch.Tensor | float = 1.0, window_size: int,
    scale: float | None = None, key_mask: torch.Tensor | None = None, initial_state: WindowState | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE, seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """Sliding-window softmax + sum rule (LoLCATs; the equation above), chunkwise: O(T·(C + w)·d).

    q, k: ``[B, H, T, d]`` rotated (as the softmax attention they stand in for); q_features, k_features:
    ``[B, H, T, D]`` their features φ (of the unrotated q, k in `hedgehog_window`); v: ``[B, H, T, d_v]``;
    window_factor γ, linear_factor λ: per-head ``[H]`` tensors or floats; scale: of the scores (default
    ``d^{-1/2}``); key_mask: ``[B, T]`` 1 for real tokens, 0 for padding (absent: read by no query, no place in
    the window, no write; a padded query's output is meaningless); initial_state: the `WindowState` of earlier
    tokens, which continues the row's first document; seq_idx: ``[B, T]`` packed document ids (a query reads its
    own document only; the returned state is the row's last document's). Returns ``(y [B, H, T, d_v] in q's
    dtype, WindowState after the last token)``.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_window_sum_rule: chunk_size must be a positive integer, got {chunk_size!r}")
    return _window_kernel("chunk_window_sum_rule", chunk_size, q, k, q_features, k_features, v, window_factor,
                          linear_factor, window_size, scale, key_mask, initial_state, seq_idx)


def recurrent_window_sum_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_features: torch.Tensor, k_features: torch.Tensor,
    window_factor: torch.Tensor | float, linear_factor: torch.Tensor | float = 1.0, window_size: int,
    scale: float | None = None, key_mask: torch.Tensor | None = None, initial_state: WindowState | None = None,
    chunk_size: int | None = None, seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, WindowState]:
    """:func:`chunk_window_sum_rule` one token at a time (the decoding step): the token's query reads the
    ``w − 1`` carried tokens, itself and ``[S | z]``; the oldest carried token then moves into ``[S | z]``.
    ``chunk_size`` is unused."""
    return _window_kernel("recurrent_window_sum_rule", 1, q, k, q_features, k_features, v, window_factor, linear_factor,
                          window_size, scale, key_mask, initial_state, seq_idx)


def naive_window_sum_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, q_features: torch.Tensor, k_features: torch.Tensor,
    window_factor: torch.Tensor | float, linear_factor: torch.Tensor | float = 1.0, window_size: int,
    scale: float | None = None, key_mask: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """The equation above written out with full ``T × T`` masks (O(T²)): the tests' reference for the
    chunkwise and recurrent forms (same arguments, no carried state)."""
    fq, fk = q_features, k_features
    _check_window_inputs("naive_window_sum_rule", q, k, fq, fk, v, window_size, key_mask, None)
    _check_seq_idx("naive_window_sum_rule", seq_idx, q.shape[0], q.shape[2])
    out_dtype, seq_len, heads = q.dtype, q.shape[2], q.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = _window_compute_dtype(q)
    window_factor, linear_factor = (_head_factor(window_factor, heads, compute),
                                    _head_factor(linear_factor, heads, compute))
    q, k, fq, fk, v = (x.to(compute) for x in (q, k, fq, fk, v))
    key_mask = q.new_ones(q.shape[0], seq_len) if key_mask is None else key_mask.to(compute)
    documents = None if seq_idx is None else document_numbers(seq_idx)
    in_window, below_window = _window_masks(key_mask, seq_len, window_size, documents)
    scores = (q @ k.transpose(-1, -2)) * scale
    weights = window_factor * _window_softmax_weights(scores, in_window)
    weights = weights + (linear_factor * (fq @ fk.transpose(-1, -2))).masked_fill(~below_window, 0.0)
    return _combine_window_read(weights @ append_normalizer_column(v), out_dtype)
