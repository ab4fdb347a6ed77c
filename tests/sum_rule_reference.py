"""Whole-sequence forms of the normalised sum rule that only the tests call (they do not ship in
checkpoints): ``y_t = S_tᵀ φ(q_t) / (z_t·φ(q_t) + ε)`` causal (`normalized_sum_rule`) and order-free
(`bidirectional_sum_rule`), composed from the shipped kernels of `fwp_hf.fast_weight_kernels` as a
layer composes them (the normaliser column of ones, then the division).
"""

from __future__ import annotations

import torch

from fwp_hf import fast_weight_kernels as fwk


def normalized_sum_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    chunked: bool = True,
    eps: float = 1e-6,
    chunk_size: int = fwk.DEFAULT_CHUNK_SIZE,
    log_scale: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum rule with attention normalisation: ``y_t = S_tᵀ φ(q_t) / (z_t·φ(q_t) + ε)``, ``z_t = Σ φ(k_τ)``.

    The normaliser ``z`` is carried as an extra value column of ones, so the state has shape
    ``[B, H, Dk, Dv + 1]`` (``seq_idx`` resets z with S at every document start).
    ``log_scale``: q and k are shifted features (see `fast_weight_kernels.divide_by_normalizer`).
    """
    kernel = fwk.chunk_sum_rule if chunked else fwk.recurrent_sum_rule
    y, state = kernel(q, k, fwk.append_normalizer_column(v), initial_state=initial_state, chunk_size=chunk_size,
                      seq_idx=seq_idx)
    return fwk.divide_by_normalizer(y, v.dtype, eps, log_scale), state


def bidirectional_sum_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
    log_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal linear attention ``φ(Q)(φ(K)ᵀV)`` (with normalisation): every query reads the
    fast weights written by the whole sequence. Returns ``(y [B, H, Tq, Dv], S fp32)``; q may have a
    different length than k and v. ``log_scale``: see `fast_weight_kernels.sum_rule_read`.
    """
    state = fwk.bidirectional_sum_rule_state(k, v, normalize)
    return fwk.sum_rule_read(q, state, normalize, eps, log_scale), state
