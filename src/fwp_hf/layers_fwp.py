"""Layers of FWP models: norms, the MLP, rotary positions, the token mixers and the pre-norm block.

Which mixer a layer runs, and with which feature map, gates, normalisation and kernels, comes from
the registry in `token_mixers.py`; the math comes from `fast_weight_kernels.py`. This file only
projects and masks; the registry entry picks the kernel (`TokenMixerSpec.kernel`: chunkwise for
training and prefill, recurrent for one-token decoding, order-free in an encoder).

Every token mixer has one interface: ``mixer(MixerInputs(...)) -> (y, attention weights or None)``
(`MixerInputs` holds everything a stack passes; each mixer reads the fields it needs), and whether a
type has a T×T matrix to return is declared by its registry entry (`TokenMixerSpec.has_attention_matrix`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_fwp import FWPConfig
from .fast_weight_kernels import (
    append_normalizer_column,
    delta_rule_beta,
    divide_by_normalizer,
    document_starts,
    gated_log_decay,
    l2_normalize,
    short_causal_conv,
)
from .feature_maps_fwp import FWPFeatureMap
from .token_mixers import (
    FAST_WEIGHT_LAYER,
    HEBBIAN_MEMORY_LAYER,
    SOFTMAX_ATTENTION_LAYER,
    TOKEN_MIXERS,
    TokenMixerSpec,
)

logger = logging.get_logger(__name__)

# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class FWPRMSNorm(nn.Module):
    """``weight · x / sqrt(mean(x²) + ε)`` over the last dim, computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # torch's rms_norm: the same x·rsqrt(mean(x²) + ε) (bit-identical on CPU, where it is itself a few
        # ops), and a fused kernel on backends that have one.
        normalized = F.rms_norm(hidden_states.float(), hidden_states.shape[-1:], eps=self.eps)
        return self.weight * normalized.to(hidden_states.dtype)


class FWPMLP(nn.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: FWPConfig) -> None:
        super().__init__()
        # gate and up projections in one matmul
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


_SCALED_ROPE: dict[tuple, tuple[torch.Tensor, float]] = {}


def scaled_rope_frequencies(
    rope_scaling_parameters: dict, head_dim: int, theta: float, max_position_embeddings: int | None
) -> tuple[torch.Tensor, float]:
    """``(inv_freq [head_dim/2], attention scaling)`` of a scaled rope (e.g. Llama 3's), computed by
    transformers' own `ROPE_INIT_FUNCTIONS` exactly as the pretrained model's rotary embedding does."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    key = (json.dumps(rope_scaling_parameters, sort_keys=True), head_dim, theta, max_position_embeddings)
    if key not in _SCALED_ROPE:
        parameters = {**rope_scaling_parameters, "rope_theta": theta}
        shim = LlamaConfig(hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim, rope_parameters=parameters,
                           max_position_embeddings=max_position_embeddings or 2048)
        _SCALED_ROPE[key] = ROPE_INIT_FUNCTIONS[rope_scaling_parameters["rope_type"]](shim, torch.device("cpu"))
    return _SCALED_ROPE[key]


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype,
    rope_scaling_parameters: dict | None = None, max_position_embeddings: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding tables for ``position_ids [B, T]``: cos, sin ``[B, 1, T, head_dim]``;
    ``inv_freq = θ^{−2i/d}``, or the frequencies and attention scaling of `rope_scaling_parameters`."""
    scaling = 1.0
    if rope_scaling_parameters is None or rope_scaling_parameters.get("rope_type") == "default":
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    else:
        inv_freq, scaling = scaled_rope_frequencies(rope_scaling_parameters, head_dim, theta, max_position_embeddings)
        inv_freq = inv_freq.to(position_ids.device)
    angles = position_ids.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, d]`` by the rotary tables of :func:`rotary_cos_sin`."""
    return x * cos + _rotate_half(x) * sin


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, T, H·d] -> [B, H, T, d]``."""
    batch, seq_len, _ = x.shape
    return x.view(batch, seq_len, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d] -> [B, T, H·d]``."""
    batch, heads, seq_len, dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq_len, heads * dim)


# ----------------------------------------------------------------------------------------------
# Softmax attention functions: transformers' attention interface
# ----------------------------------------------------------------------------------------------
# Softmax layers (and softmax cross-attention) pick their attention function from
# `config._attn_implementation`, as transformers' own models do: "sdpa" (the default) is
# transformers' `sdpa_attention_forward` from `ALL_ATTENTION_FUNCTIONS`, "eager" is
# `eager_attention_forward` below, which also returns the attention weights. Masks follow one
# convention throughout: boolean ``[B, 1, Tq, Tk]``, True = attend (`inputs_fwp.softmax_attention_mask`),
# or None for plain causal (``module.is_causal`` and more than one query) or full attention.


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out: ``(output [B, Tq, H, d], weights [B, H, Tq, Tk])``.

    key/value may have fewer heads than the query (grouped-query attention): each is shared by
    ``module.num_key_value_groups`` consecutive query heads. The weights are computed in fp32 and cast
    to the query dtype; masked keys get exactly zero weight.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is None and module.is_causal and query.shape[2] > 1:
        query_length, key_length = query.shape[2], key.shape[2]
        attention_mask = torch.ones(query_length, key_length, dtype=torch.bool, device=query.device).tril(
            key_length - query_length
        )
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def attention_function_kwargs(output_attentions: bool) -> dict:
    """Keywords for an attention function: transformers' SDPA function warns (once) that it cannot
    return weights when it is asked to, as it does for transformers' own models."""
    return {"output_attentions": True} if output_attentions else {}


@dataclass
class MixerInputs:
    """What every token mixer's ``forward`` takes; each mixer reads the fields it needs and returns
    ``(y [B, T, hidden], attention weights [B, H, Tq, Tk] or None)``.

    Attributes:
        hidden_states: ``[B, T, hidden]``, the normalised input of the mixer.
        token_mask: ``[B, T]`` float, 1 for real tokens and 0 for padding (None without padding):
            padded tokens write nothing into a fast-weight state.
        attention_mask_4d: boolean ``[B, 1, T, T_past + T]`` (softmax layers; `inputs_fwp.softmax_attention_mask`).
        position_embeddings: rotary ``(cos, sin)``, each ``[B, 1, T, head_dim]`` (softmax layers).
        cache: the `Cache` whose layer ``layer_idx`` the mixer reads and updates (a decoder's
            cross-attention gets the cross-attention half), or None.
        output_attentions: return the T×T weights where the mixer has them (softmax under eager attention).
        document_ids: ``[B, T]`` packed documents (`inputs_fwp.packed_document_ids`): fast-weight
            mixers start every document from an empty state (softmax layers see them in the mask).
        encoder_hidden_states: cross-attention: the source it reads, ``[B, S, hidden]``.
        encoder_token_mask: cross-attention: ``[B, S]``, 1 for real source tokens (None without padding).
    """

    hidden_states: torch.Tensor
    token_mask: torch.Tensor | None = None
    attention_mask_4d: torch.Tensor | None = None
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    cache: Cache | None = None
    output_attentions: bool = False
    document_ids: torch.Tensor | None = None
    encoder_hidden_states: torch.Tensor | None = None
    encoder_token_mask: torch.Tensor | None = None

    def cache_layer(self, layer_idx: int):
        """The mixer's layer of `cache` (None without a cache)."""
        return self.cache.layers[layer_idx] if self.cache is not None else None


def residual_mix(
    mixer: nn.Module, norm: nn.Module, hidden_states: torch.Tensor, **inputs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x + mixer(norm(x)), the mixer's attention weights or None)``; `inputs` are the other
    `MixerInputs` fields."""
    mixed, weights = mixer(MixerInputs(norm(hidden_states), **inputs))
    return hidden_states + mixed, weights


def warn_layers_without_attention_matrix(attention_types: list[str], where: str) -> None:
    """Say once (per set of layers) which layers have no T×T attention matrix to return.

    `attention_types` holds the type of each layer, in the order of the ``attentions`` tuple; the
    registry entry says whether that type has a matrix (`TokenMixerSpec.has_attention_matrix`).
    Fast-weight mixers hold a fixed-size state instead: their entries are None.
    """
    missing = [f"{i} ({kind})" for i, kind in enumerate(attention_types) if not TOKEN_MIXERS[kind].has_attention_matrix]
    if missing:
        logger.warning_once(
            f"output_attentions=True: {where} {', '.join(missing)} have no T×T attention matrix (fast-weight "
            "layers hold a fixed-size state instead); their entries are None. Softmax layers return their "
            "weights [batch, heads, query, key] with attn_implementation='eager'."
        )


class FWPSoftmaxAttention(nn.Module):
    """Multi-head softmax attention with rotary positions: the baseline mixer (with the options of its group,
    ``config.softmax_attention``: heads, output bias, q/k norm and ``sliding_window`` — the window is in the
    mask, `inputs_fwp.softmax_attention_mask` —, and the config's grouped-query ``num_key_value_heads`` and q/k/v
    ``attention_bias``).

    Causal in decoders; with ``is_causal=False`` (encoders) every token sees the whole sequence.
    The attention function comes from ``config._attn_implementation``:
    SDPA by default, or ``"eager"``, which also returns the attention weights ``[B, H, Tq, Tk]``.
    Returns ``(output, weights)``; weights are None under SDPA.
    """

    def __init__(
        self, config: FWPConfig, layer_idx: int, attention_type: str | None = None, is_causal: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        options = config.softmax_attention
        self.num_heads = options.heads(config.num_attention_heads)
        self.num_key_value_heads = config.num_key_value_heads
        # transformers' attention functions repeat each key/value head for this many query heads (GQA)
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.softmax_head_dim
        self.scaling = 1 / math.sqrt(self.head_dim)  # exactly SDPA's default scale
        self.rope_theta = config.rope_theta
        kv_width = self.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.attention_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv_width, bias=config.attention_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv_width, bias=config.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=options.output_bias)
        # Qwen3's per-head q/k norm, before the rotation
        self.q_norm = FWPRMSNorm(self.head_dim, eps=config.rms_norm_eps) if options.qk_norm else None
        self.k_norm = FWPRMSNorm(self.head_dim, eps=config.rms_norm_eps) if options.qk_norm else None

    def forward(self, inputs: MixerInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_states = inputs.hidden_states
        cos, sin = inputs.position_embeddings
        q = split_heads(self.q_proj(hidden_states), self.num_heads)
        k = split_heads(self.k_proj(hidden_states), self.num_key_value_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        v = split_heads(self.v_proj(hidden_states), self.num_key_value_heads)
        if inputs.cache is not None:
            k, v = inputs.cache.update(k, v, self.layer_idx)
        # attention_mask_4d is None only without padding and without past tokens.
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        y, weights = attention_interface(
            self, q, k, v, inputs.attention_mask_4d, scaling=self.scaling,
            **attention_function_kwargs(inputs.output_attentions),
        )
        return self.o_proj(y.reshape(*hidden_states.shape[:2], -1)), weights


def window_positions(
    batch: int, seq_len: int, token_mask: torch.Tensor | None, document_ids: torch.Tensor | None,
    offset: torch.Tensor | None, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary positions of a softmax-window layer's new tokens: ``(positions [B, T], offset after them [B])``.

    A token's position is the number of real tokens (``token_mask``) before it in its document (packed
    ``document_ids`` restart the count; the row's first document continues `offset` ``[B]``, the count the cache
    carries): what the document computes alone from position 0, since rotary scores depend on differences only.
    """
    real = torch.ones(batch, seq_len, device=device) if token_mask is None else token_mask.to(torch.float32)
    before = real.cumsum(dim=-1) - real  # real tokens before each token in the call
    base = torch.zeros_like(before)
    first_document = torch.ones_like(before, dtype=torch.bool)
    if document_ids is not None:
        starts = document_starts(document_ids)
        base = torch.where(starts, before, base).cummax(dim=-1).values
        first_document = starts.long().cumsum(dim=-1) == 0
    if offset is not None:
        base = base - torch.where(first_document, offset[:, None].to(base.dtype), torch.zeros_like(base))
    positions = before - base
    if seq_len:
        next_offset = positions[:, -1] + real[:, -1]
    else:
        next_offset = offset if offset is not None else real.new_zeros(batch)
    return positions.long(), next_offset.long()


def build_feature_map(config: FWPConfig, spec: TokenMixerSpec, head_dim: int, layer_idx: int,
                      allow_redraw: bool = True) -> FWPFeatureMap:
    """The φ of layer `layer_idx` of registry entry `spec` (self- or cross-attention): its map under the config
    (`FastWeightLayerOptions.feature_map_of`) with that map's options (``config.feature_maps``)."""
    kind = config.fast_weight.feature_map_of(spec)
    return FWPFeatureMap(kind, config.feature_maps[kind], head_dim, config.num_attention_heads, layer_idx,
                         allow_redraw=allow_redraw)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


class FWPShortConvolution(nn.Conv1d):
    """Depthwise causal convolution over time of width `kernel_size` on q, k and v (FLA's ShortConvolution).

    The weight has `nn.Conv1d`'s layout ``[channels, 1, kernel_size]``; the math is
    `fast_weight_kernels.short_causal_conv`, which carries the last ``kernel_size − 1`` inputs.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(
        self, x: torch.Tensor, window: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, T, C]``, window ``[B, C, kernel_size − 1]`` or None, seq_idx ``[B, T]`` (packed documents,
        which the window then never crosses) or None -> (y ``[B, T, C]``, new window)."""
        return short_causal_conv(x, self.weight[:, 0], self.bias, window, seq_idx=seq_idx)


class FWPFastWeightAttention(nn.Module):
    """Fast-weight programmer layer for every registry entry that runs on `FAST_WEIGHT_LAYER`
    (the sum rules ``linear``/``performer``/``dpfp``/``hedgehog``, the delta rules ``delta``/``gated_delta``),
    with the options of its group, ``config.fast_weight`` (`options_fwp.FastWeightLayerOptions`).

    Slow weights project x_t to q_t, k_t (``key_head_dim`` per head), v_t (``value_head_dim``), the
    per-token gates the entry names and, with ``output_gate``, the output gate — all in one matmul (in
    one-token decoding the layer's cost is mostly per-call overhead, not FLOPs): β_t = sigmoid(W_β x_t)
    per head (×2 with ``allow_neg_eigval``), and for a decay g_t = −exp(A_log)·softplus(W_a x_t + dt_bias)
    per head. With ``use_short_conv`` q, k, v first pass a causal depthwise convolution over time
    (its last inputs are kept in the cache); ``value_activation`` applies SiLU to v. From a pretrained
    attention layer (`conversion.linearize`): the config's ``attention_bias`` / ``output_bias``, per-head q/k
    RMSNorm (``qk_norm``), and k, v with ``key_value_heads`` heads, each repeated for its
    group of query heads (every query head keeps its own state).
    φ(q), φ(k) come from the feature map (the entry's, or ``fast_weight.feature_map`` for the delta rules),
    then the entry's key normalisation (sum, or ``fast_weight.key_normalization``: sum or L2), then with
    ``scale_queries`` φ(q)·d_dot^{-1/2}. The fast weights are programmed by the entry's kernels; the read
    is optionally RMS-normalised per head (``output_norm``) and gated by SiLU(W_g x) (``output_gate``).
    With ``is_causal=False`` (encoders) an entry whose `encoder_form` is bidirectional reads the fast
    weights written by the whole sequence, ``φ(Q)(φ(K)ᵀV)``; the others are recurrences with no
    order-free form and run left to right.
    """

    def __init__(self, config: FWPConfig, layer_idx: int, attention_type: str, is_causal: bool = True) -> None:
        super().__init__()
        spec = TOKEN_MIXERS[attention_type]
        self.spec = spec
        self.layer_idx = layer_idx
        self.attention_type = attention_type
        self.is_causal = is_causal
        options = config.fast_weight
        self.num_heads = config.num_attention_heads
        self.chunk_size = config.chunk_size
        self.normalize_attention = spec.normalizes(config)
        self.key_normalization = options.key_normalization_of(spec)
        self.query_scale = spec.key_dim(config) ** -0.5 if options.scale_queries else None
        self.allow_neg_eigval = options.allow_neg_eigval
        self.value_activation = ACT2FN[options.value_activation] if options.value_activation else None
        key_head_dim, value_head_dim = options.head_dims(config.head_dim)
        self.feature_map = build_feature_map(config, spec, key_head_dim, layer_idx)
        self.gates = spec.gates
        # k and v may have fewer heads than q (grouped like grouped-query attention; each is repeated
        # for its group of query heads, so every query head still has its own state).
        self.num_kv_heads = options.kv_heads(self.num_heads)
        self.kv_groups = self.num_heads // self.num_kv_heads
        self.query_width, self.key_width, self.value_width = options.qkv_widths(self.num_heads, config.head_dim)
        self.qkv_width = self.query_width + self.key_width + self.value_width
        self.projection_sizes = [self.query_width, self.key_width, self.value_width]
        self.projection_sizes += [self.num_heads] * len(spec.gates)
        if options.output_gate:
            self.projection_sizes.append(self.num_heads * value_head_dim)
        self.qkv_proj = nn.Linear(config.hidden_size, sum(self.projection_sizes), bias=config.attention_bias)
        conv_channels = options.short_conv_channels(self.num_heads, config.head_dim)
        self.qkv_conv = (FWPShortConvolution(conv_channels, options.conv_size, options.conv_bias)
                         if conv_channels else None)
        self.q_norm = FWPRMSNorm(key_head_dim, eps=config.rms_norm_eps) if options.qk_norm else None
        self.k_norm = FWPRMSNorm(key_head_dim, eps=config.rms_norm_eps) if options.qk_norm else None
        self.o_norm = FWPRMSNorm(value_head_dim, eps=config.rms_norm_eps) if options.output_norm else None
        self.output_gate = options.output_gate
        self.o_proj = nn.Linear(self.num_heads * value_head_dim, config.hidden_size, bias=options.output_bias)
        if "log_decay" in spec.gates:
            self.A_log = nn.Parameter(torch.zeros(config.num_attention_heads))
            self.dt_bias = nn.Parameter(torch.zeros(config.num_attention_heads))
        if spec.softmax_window:
            if key_head_dim != config.softmax_head_dim:
                raise ValueError(
                    f"{attention_type!r} layers rotate q and k by the rotary tables of size softmax_head_dim = "
                    f"{config.softmax_head_dim}, but fast_weight.key_head_dim is {key_head_dim}: leave key_head_dim "
                    "unset (or equal to the head size)"
                )
            self.window_size = options.window_size
            self.rotary_dim, self.rope_theta = config.softmax_head_dim, config.rope_theta
            self.rope_scaling = config.softmax_attention.rope_scaling
            self.max_position_embeddings = config.max_position_embeddings
            # γ = sigmoid(window_factors) per head; LoLCATs initialises the logit at 0 (γ = 1/2)
            self.window_factors = nn.Parameter(torch.zeros(self.num_heads))

    @torch.no_grad()
    def initial_decay_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated DeltaNet's initialisation: A ~ U(1, 16) (A_log = log A) and a time step
        dt ~ logU(0.001, 0.1) stored as dt_bias = softplus⁻¹(dt), so that α = exp(−A·dt) starts
        spread over slow and fast decays."""
        heads = self.A_log.shape[0]
        a_log = torch.empty(heads).uniform_(1.0, 16.0).log()
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
        return a_log, _inverse_softplus(dt)

    def _feature_map_and_normalize(
        self, qk: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(φ(q), φ(k), log_scale)`` from q and k stacked on the head dim (q's heads first).

        Sum-normalised entries: ``φ/Σφ`` (one call for q and k); L2: ``φ/|φ|₂``. A read divided by its
        normaliser: FAVOR+ features shifted so that ``φ(q)·φ(k)`` cannot overflow fp32, and the
        ``log_scale`` that `divide_by_normalizer` needs to compute the read of the plain φ (None for maps
        that need no shift). The unnormalised read has no normaliser to cancel a factor: it uses the plain
        φ, so its output (which grows with the inputs) can overflow for huge q and k. With
        ``scale_queries`` φ(q) is then multiplied by d_dot^{-1/2}.
        """
        q, k, log_scale = self._normalized_features(qk)
        return (q if self.query_scale is None else q * self.query_scale), k, log_scale

    def _normalized_features(self, qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.key_normalization == "sum":
            q, k = self.feature_map.sum_normalized(qk).chunk(2, dim=1)
            return q, k, None
        if self.key_normalization == "l2":
            q, k = l2_normalize(self.feature_map(qk)).chunk(2, dim=1)
            return q, k, None
        if self.normalize_attention and self.feature_map.spec.apply_shifted is not None:
            q, k = qk.chunk(2, dim=1)
            q, log_scale = self.feature_map.query_features(q)
            return q, self.feature_map.key_features(k), log_scale
        q, k = self.feature_map(qk).chunk(2, dim=1)
        return q, k, None

    def _features(self, qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`_feature_map_and_normalize`. When gradients are needed, φ is recomputed in
        the backward pass instead of keeping its intermediates (several d_dot-sized tensors per
        token): elementwise work traded for most of the layer's activation memory on long sequences."""
        # Not with Performer redraws: a recomputation must see the ω of its own forward pass.
        if torch.is_grad_enabled() and qk.requires_grad and not self.feature_map.redraw:
            return checkpoint(self._feature_map_and_normalize, qk, use_reentrant=False)
        return self._feature_map_and_normalize(qk)

    def _gates(self, gate_logits: torch.Tensor, token_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-token gates ``[B, H, T]`` from their logits ``[B, T, H·len(gates)]``; padded tokens get
        β = 0 (no write) and g = 0 (no decay)."""
        gates = {}
        for name, logits in zip(self.gates, gate_logits.split(self.num_heads, dim=-1)):
            if name == "beta":
                gate = delta_rule_beta(logits, self.allow_neg_eigval)
            else:
                gate = gated_log_decay(logits, self.A_log, self.dt_bias)
            gate = gate.transpose(1, 2)
            gates[name] = gate if token_mask is None else gate * token_mask[:, None, :]
        return gates

    def _project(self, inputs: MixerInputs, cache_layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One matmul for everything projected from x: ``(q|k|v [B, T, qkv_width], gate logits
        [B, T, H·len(gates)], output-gate logits [B, T, H·d_v] (empty without ``output_gate``))``; q, k, v
        then pass the short convolution (`_short_conv`)."""
        projections = self.qkv_proj(inputs.hidden_states)
        gate_end = self.qkv_width + self.num_heads * len(self.gates)
        qkv = self._short_conv(projections[..., : self.qkv_width], inputs, cache_layer)
        return qkv, projections[..., self.qkv_width : gate_end], projections[..., gate_end:]

    def _short_conv(self, qkv: torch.Tensor, inputs: MixerInputs, cache_layer) -> torch.Tensor:
        """The causal depthwise convolution over q, k, v (``use_short_conv``), continuing the cache's
        window and starting every packed document from an empty one; identity without a convolution."""
        if self.qkv_conv is None:
            return qkv
        if inputs.token_mask is not None:  # padding must not enter the convolution window of later tokens
            qkv = qkv * inputs.token_mask[..., None].to(qkv.dtype)
        window = cache_layer.conv_window if cache_layer is not None else None
        qkv, window = self.qkv_conv(qkv, window, seq_idx=inputs.document_ids)
        if cache_layer is not None:
            cache_layer.update_conv_window(window)
        return qkv

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(qk [B, 2H, T, d_k], v [B, H, T, d_v])``: q's heads, then k's, stacked for one φ call;
        v through ``value_activation``; per-head q/k RMSNorm (``use_qk_norm``); k and v repeated for their
        group of query heads when they have fewer heads than q."""
        qk_width = self.query_width + self.key_width
        v = qkv[..., qk_width:]
        if self.value_activation is not None:
            v = self.value_activation(v)
        v = split_heads(v, self.num_kv_heads)
        if self.q_norm is None and self.kv_groups == 1:
            # q and k as one view (the heads of q, then those of k): φ maps both in one call, fewer ops per token
            return split_heads(qkv[..., :qk_width], 2 * self.num_heads), v
        q = split_heads(qkv[..., : self.query_width], self.num_heads)
        k = split_heads(qkv[..., self.query_width : qk_width], self.num_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.kv_groups > 1:
            k, v = k.repeat_interleave(self.kv_groups, dim=1), v.repeat_interleave(self.kv_groups, dim=1)
        return torch.cat([q, k], dim=1), v

    def _program_and_read(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gates: dict[str, torch.Tensor],
        read_log_scale: torch.Tensor | None, inputs: MixerInputs, cache_layer,
    ) -> torch.Tensor:
        """Write the fast weights and read them with the kernel the registry entry picks
        (`TokenMixerSpec.kernel`), from the cached state; ``[B, H, T, d_v]``. A normalised read carries
        its normaliser ``z`` as a value column of ones and is divided by ``z·φ(q)`` afterwards."""
        seq_len = q.shape[2]
        if inputs.token_mask is not None and "beta" not in gates:
            # a zero key writes nothing into S nor the normaliser
            k = k * inputs.token_mask[:, None, :, None].to(k.dtype)
        kernel = self.spec.kernel(seq_len, causal=self.is_causal)
        values = append_normalizer_column(v) if self.normalize_attention else v
        # the encoder's order-free kernel takes no documents
        documents = {} if inputs.document_ids is None else {"seq_idx": inputs.document_ids}
        initial_state = cache_layer.state if cache_layer is not None else None
        y, state = kernel(q, k, values, initial_state=initial_state, chunk_size=self.chunk_size, **gates, **documents)
        if self.normalize_attention:
            y = divide_by_normalizer(y, v.dtype, log_scale=read_log_scale)
        if cache_layer is not None:
            cache_layer.update_state(state, seq_len)
        return y

    def _window_read(
        self, qk: torch.Tensor, q_features: torch.Tensor, k_features: torch.Tensor, v: torch.Tensor,
        inputs: MixerInputs, cache_layer,
    ) -> torch.Tensor:
        """A softmax-window entry (`TokenMixerSpec.softmax_window`, LoLCATs): exact softmax attention of the rotated
        q, k over the last ``window_size`` tokens plus the sum rule of φ(q), φ(k) over every older token, under one
        normaliser, γ = sigmoid(window_factors) per head and λ = 1 (LoLCATs' default, ``affine_attention_factors``
        off); ``[B, H, T, d_v]``. The cache carries the window's keys, values and features and the lagged state.

        q and k are rotated at the positions of `window_positions` (each real token's index in its document,
        continuing the cache's count), not the stack's: only their differences matter to the softmax, and these
        stay right across padding and packed documents that continue a cache.

        Against LoLCATs' source (HazyResearch/lolcats, `linear_window_attention_sw.py`): the same window (w tokens,
        the query's own included; older tokens go to the linear part), the same γ = sigmoid(factor) with the
        factor initialised at 0 and λ = 1 (its default, ``affine_attention_factors=False``), the same score scale
        d^{-1/2} and the same max-shift of the window's scores only. Different: φ maps the unrotated q, k (as the
        `hedgehog` type does; LoLCATs maps the rotated ones), and the window slides token by token (LoLCATs'
        default training layer, `linear_window_attention_tk.py`, uses a terraced window of w to 2w tokens)."""
        carried = cache_layer.window_state if cache_layer is not None else None
        offset = cache_layer.window_positions if carried is not None else None
        positions, next_offset = window_positions(qk.shape[0], qk.shape[2], inputs.token_mask, inputs.document_ids,
                                                  offset, qk.device)
        cos, sin = rotary_cos_sin(positions, self.rotary_dim, self.rope_theta, qk.dtype, self.rope_scaling,
                                  self.max_position_embeddings)
        q, k = (apply_rotary(x, cos, sin) for x in qk.chunk(2, dim=1))
        kernel = self.spec.kernel(q.shape[2], causal=self.is_causal)
        y, state = kernel(
            q, k, v, q_features=q_features, k_features=k_features, window_factor=torch.sigmoid(self.window_factors),
            linear_factor=1.0, window_size=self.window_size, key_mask=inputs.token_mask, initial_state=carried,
            chunk_size=self.chunk_size, seq_idx=inputs.document_ids,
        )
        if cache_layer is not None:
            cache_layer.update_window_state(state, q.shape[2], next_offset)
        return y

    def _read_out(self, y: torch.Tensor, output_gate_logits: torch.Tensor) -> torch.Tensor:
        """``o_proj`` of the read ``[B, H, T, d_v]``, per head RMS-normalised (``output_norm``) and gated by
        SiLU(W_g x) (``output_gate``)."""
        if self.o_norm is not None:
            y = self.o_norm(y)
        if self.output_gate:
            y = y * F.silu(split_heads(output_gate_logits, self.num_heads))
        return self.o_proj(merge_heads(y))

    def forward(self, inputs: MixerInputs) -> tuple[torch.Tensor, None]:
        """``(y [B, T, hidden], None)``: a fast-weight layer has no T×T attention matrix. With
        ``inputs.document_ids`` (packed documents) the short convolution and the kernel start every
        document from an empty window and state."""
        if self.training and self.feature_map.redraw:
            self.feature_map.redraw_projection()
        cache_layer = inputs.cache_layer(self.layer_idx)
        qkv, gate_logits, output_gate_logits = self._project(inputs, cache_layer)
        qk, v = self._heads(qkv)
        q, k, read_log_scale = self._features(qk)
        if self.spec.softmax_window:
            y = self._window_read(qk, q, k, v, inputs, cache_layer)
            return self._read_out(y.to(inputs.hidden_states.dtype), output_gate_logits), None
        gates = self._gates(gate_logits, inputs.token_mask)
        y = self._program_and_read(q, k, v, gates, read_log_scale, inputs, cache_layer)
        return self._read_out(y.to(inputs.hidden_states.dtype), output_gate_logits), None


class FWPBaFastWeights(nn.Module):
    """Ba et al. (2016) fast associative memory as a token mixer, per head of size d.

    ``z_t = W_z x_t`` (the slow input drive), ``h⁰_t = relu(z_t)``,
    ``h^{s+1}_t = relu(LN(z_t + A_{t-1} h^s_t))`` for s < S, ``A_t = λ A_{t-1} + η h⁰_t h⁰_tᵀ``,
    output ``W_o h^S_t``. The memory stores ``h⁰`` (not ``h^S``) so that it is independent of the
    inner loop and the whole layer has a chunkwise-parallel form; see `chunk_fast_weights`.
    A recurrence with no order-free form: in an encoder it still reads left to right.
    """

    def __init__(self, config: FWPConfig, layer_idx: int, attention_type: str, is_causal: bool = True) -> None:
        super().__init__()
        self.spec = TOKEN_MIXERS[attention_type]
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.chunk_size = config.chunk_size
        options = config.hebbian_memory
        self.decay = options.decay
        self.learning_rate = options.learning_rate
        self.inner_steps = options.inner_steps
        self.drive_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.inner_norm = nn.LayerNorm(config.head_dim)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, inputs: MixerInputs) -> tuple[torch.Tensor, None]:
        """``(y [B, T, hidden], None)``; ``inputs.document_ids`` ``[B, T]``: packed documents, each read
        from an empty memory."""
        hidden_states = inputs.hidden_states
        seq_len = hidden_states.shape[1]
        drive = split_heads(self.drive_proj(hidden_states), self.num_heads)
        mask = None
        if inputs.token_mask is not None:
            mask = inputs.token_mask[:, None, :].expand(-1, self.num_heads, -1)
        cache_layer = inputs.cache_layer(self.layer_idx)
        initial_state = cache_layer.state if cache_layer is not None else None
        kernel = self.spec.kernel(seq_len)  # a recurrence with no order-free form: left to right in an encoder too
        y, state = kernel(
            drive, ln_weight=self.inner_norm.weight.float(), ln_bias=self.inner_norm.bias.float(), decay=self.decay,
            learning_rate=self.learning_rate, num_steps=self.inner_steps, initial_state=initial_state, mask=mask,
            chunk_size=self.chunk_size, seq_idx=inputs.document_ids,
        )
        if cache_layer is not None:
            cache_layer.update_state(state, seq_len)
        return self.o_proj(merge_heads(y.to(hidden_states.dtype))), None


# The module class of each `TokenMixerSpec.layer`.
MIXER_LAYERS: dict[str, type[nn.Module]] = {
    SOFTMAX_ATTENTION_LAYER: FWPSoftmaxAttention,
    FAST_WEIGHT_LAYER: FWPFastWeightAttention,
    HEBBIAN_MEMORY_LAYER: FWPBaFastWeights,
}


def build_token_mixer(config: FWPConfig, layer_idx: int, attention_type: str, is_causal: bool = True) -> nn.Module:
    """The token mixer of one layer, as the registry entry of `attention_type` declares it."""
    return MIXER_LAYERS[TOKEN_MIXERS[attention_type].layer](config, layer_idx, attention_type, is_causal=is_causal)


class FWPBlock(GradientCheckpointingLayer):
    """Pre-norm block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``.

    The layer of the decoder-only model and the encoder layer of the encoder–decoder model
    (``is_causal=False``).
    """

    def __init__(
        self, config: FWPConfig, layer_idx: int, attention_type: str | None = None, is_causal: bool = True
    ) -> None:
        super().__init__()
        self.attention_type = attention_type or config.layer_attention_types[layer_idx]
        self.mixer = build_token_mixer(config, layer_idx, self.attention_type, is_causal)
        self.input_layernorm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FWPMLP(config)

    def attention_types(self) -> tuple[str, ...]:
        """The attention type behind each attention-weights entry `forward` returns."""
        return (self.attention_type,)

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_key_values: Cache | None = None,
        output_attentions: bool = False,
        **mixer_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(hidden_states, attention weights)``: the weights ``[B, H, Tq, Tk]`` of a softmax
        mixer under ``attn_implementation="eager"``, else None (SDPA, or a mixer without a T×T matrix).
        `mixer_inputs`: the other `MixerInputs` fields the stack prepares (`inputs_fwp.prepare_mixer_inputs`:
        token mask, 4D mask, rotary tables, packed ``document_ids``)."""
        hidden_states, attn_weights = residual_mix(
            self.mixer, self.input_layernorm, hidden_states, cache=past_key_values,
            output_attentions=output_attentions, **mixer_inputs,
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), attn_weights


__all__ = [
    "FWPBaFastWeights",
    "FWPBlock",
    "FWPFastWeightAttention",
    "FWPMLP",
    "FWPRMSNorm",
    "FWPShortConvolution",
    "FWPSoftmaxAttention",
    "MIXER_LAYERS",
    "MixerInputs",
    "apply_rotary",
    "build_token_mixer",
    "eager_attention_forward",
    "merge_heads",
    "residual_mix",
    "rotary_cos_sin",
    "split_heads",
]
