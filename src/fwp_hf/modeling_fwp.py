"""Fast weight programmer (FWP) language models: `FWPModel` and `FWPForCausalLM`.

Structure follows transformers' Llama: Config → PreTrainedModel → Model → ForCausalLM. The math of
every token mixer lives in `fast_weight_kernels.py`; this file only projects, masks and routes
between the chunkwise form (training, prefill) and the recurrent form (one-token decoding).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_fwp import SUM_RULE_FEATURE_MAPS, FWPConfig
from .fast_weight_kernels import (
    bidirectional_sum_rule,
    chunk_delta_rule,
    chunk_fast_weights,
    chunk_sum_rule,
    dpfp_feature_map,
    draw_orthogonal_random_features,
    elu_plus_one_feature_map,
    favor_feature_map,
    normalized_sum_rule,
    recurrent_delta_rule,
    recurrent_fast_weights,
    recurrent_sum_rule,
    sum_normalize,
)

# ----------------------------------------------------------------------------------------------
# Cache: a fixed-size fast-weight state per layer
# ----------------------------------------------------------------------------------------------


class FastWeightCacheLayer(CacheLayerMixin):
    """Cache of one fast-weight layer: its state ``[B, H, d_key, d_value]`` (fp32) and a token count.

    The state has a fixed size whatever the context length. The model puts one in every
    non-softmax slot of the `DynamicCache` it is given (softmax layers keep transformers' usual
    `DynamicLayer`), see `_prepare_cache`.
    """

    is_compileable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.state: torch.Tensor | None = None
        self.seen_tokens = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("A fast-weight cache layer holds a state, not keys and values: use update_state().")

    def update_state(self, state: torch.Tensor, num_new_tokens: int) -> None:
        self.state = state
        self.seen_tokens += num_new_tokens
        self.is_initialized = True

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        if self.state is not None:
            self.state.zero_()
        self.seen_tokens = 0

    def offload(self) -> None:
        if self.state is not None:
            self.state = self.state.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        return None

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("A fast-weight state cannot be rolled back by cropping tokens.")

    def _select(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = self.state.index_select(0, indices.to(self.state.device))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self.state = self.state.repeat_interleave(repeats, dim=0)


def _prepare_cache(cache: Cache | None, kinds: list[str], use_cache: bool) -> Cache | None:
    """Return a cache whose layer i is a `FastWeightCacheLayer` for every fast-weight layer i.

    `generate` and users build a `DynamicCache`, whose layers are key/value `DynamicLayer`s: the
    still-empty ones in fast-weight slots are swapped for fast-weight state layers. `kinds` is the
    attention type of every layer that uses this cache ("softmax" keeps a key/value layer).
    """
    if cache is None:
        if not use_cache:
            return None
        cache = DynamicCache()
    if not isinstance(cache, Cache):
        raise TypeError(f"past_key_values must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
    untouched = all(isinstance(layer, DynamicLayer) and layer.keys is None for layer in cache.layers)
    if untouched and (cache.layer_class_to_replicate is not None or len(cache.layers) != len(kinds)):
        # A fresh cache (DynamicCache(), or one generate sized from another layer count): lay it out here.
        cache.layers = [DynamicLayer() for _ in kinds]
        cache.layer_class_to_replicate = None
    if len(cache.layers) != len(kinds):
        raise ValueError(
            f"past_key_values has {len(cache.layers)} layers, the model has {len(kinds)}; "
            "pass DynamicCache() or DynamicCache(config=model.config)"
        )
    for idx, (kind, layer) in enumerate(zip(kinds, cache.layers)):
        holds_state = hasattr(layer, "update_state")
        if kind == "softmax" and holds_state:
            raise ValueError(f"past_key_values layer {idx} holds a fast-weight state but layer {idx} is softmax")
        if kind != "softmax" and not holds_state:
            if isinstance(layer, DynamicLayer) and layer.keys is None:
                cache.layers[idx] = FastWeightCacheLayer()
            else:
                raise ValueError(
                    f"past_key_values layer {idx} holds keys/values but layer {idx} is a {kind!r} fast-weight layer"
                )
    return cache


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class FWPRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(dtype)


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


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding tables for ``position_ids [B, T]``: cos, sin ``[B, 1, T, head_dim]``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, T, H·d] -> [B, H, T, d]``."""
    batch, seq_len, _ = x.shape
    return x.view(batch, seq_len, num_heads, -1).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d] -> [B, T, H·d]``."""
    batch, heads, seq_len, dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq_len, heads * dim)


class FWPSoftmaxAttention(nn.Module):
    """Multi-head softmax attention (SDPA) with rotary positions: the baseline mixer.

    Causal in decoders; with ``is_causal=False`` (encoders) every token sees the whole sequence.
    """

    def __init__(self, config: FWPConfig, layer_idx: int, is_causal: bool = True) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.is_causal = is_causal
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask_4d: torch.Tensor | None,
        past_key_values: Cache | None,
        **kwargs,
    ) -> torch.Tensor:
        cos, sin = position_embeddings
        q = apply_rotary(_split_heads(self.q_proj(hidden_states), self.num_heads), cos, sin)
        k = apply_rotary(_split_heads(self.k_proj(hidden_states), self.num_heads), cos, sin)
        v = _split_heads(self.v_proj(hidden_states), self.num_heads)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        if attention_mask_4d is None:
            # Only reached without padding and without past tokens.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal and q.shape[2] > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask_4d)
        return self.o_proj(_merge_heads(y))


class FWPFeatureMap(nn.Module):
    """φ of a fast-weight layer: ``"elu"`` (elu+1), ``"dpfp"`` (DPFP(ν)) or ``"favor"`` (FAVOR+).

    For FAVOR+ the projection ω ``[m, head_dim]`` is a persistent buffer, drawn from
    ``seed`` so that a model built from the same config is the same model, and saved with it.
    """

    def __init__(
        self, kind: str, head_dim: int, dpfp_nu: int, num_features: int, seed: int, redraw: bool
    ) -> None:
        super().__init__()
        self.kind = kind
        self.head_dim = head_dim
        self.dpfp_nu = dpfp_nu
        self.num_features = num_features
        self.seed = seed
        self.redraw = redraw
        if kind == "favor":
            self.register_buffer("projection", self.seeded_projection(), persistent=True)

    def seeded_projection(self, device: torch.device | str | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return draw_orthogonal_random_features(self.num_features, self.head_dim, generator).to(device)

    @torch.no_grad()
    def redraw_projection(self) -> None:
        """Draw a fresh ω from torch's global RNG (Performer's redraw during training)."""
        fresh = draw_orthogonal_random_features(self.num_features, self.head_dim, device=self.projection.device)
        self.projection.copy_(fresh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "elu":
            return elu_plus_one_feature_map(x)
        if self.kind == "dpfp":
            return dpfp_feature_map(x, self.dpfp_nu)
        return favor_feature_map(x.float(), self.projection.float())


class FWPFastWeightAttention(nn.Module):
    """Fast-weight programmer layer: sum rule (``linear``/``performer``/``dpfp``) or delta rule.

    Slow weights project x_t to q_t, k_t, v_t (and β_t = sigmoid(W_β x_t) per head for the delta
    rule); the fast weights are programmed by the kernel in `fast_weight_kernels`.
    With ``is_causal=False`` (encoders) the sum rules read the fast weights written by the whole
    sequence, ``φ(Q)(φ(K)ᵀV)``; the delta rule has no order-free form (each write depends on the
    previous ones), so a non-causal delta layer still runs left to right.
    """

    def __init__(self, config: FWPConfig, layer_idx: int, attention_type: str, is_causal: bool = True) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_type = attention_type
        self.is_causal = is_causal
        self.num_heads = config.num_attention_heads
        self.chunk_size = config.chunk_size
        self.is_delta = attention_type == "delta"
        self.normalize_attention = config.attention_normalization and not self.is_delta
        feature_kind = config.feature_map if self.is_delta else SUM_RULE_FEATURE_MAPS[attention_type]
        self.feature_map = FWPFeatureMap(
            feature_kind,
            config.head_dim,
            config.dpfp_nu,
            config.performer_num_features,
            seed=config.performer_seed + layer_idx,
            redraw=config.performer_redraw,
        )
        # q, k, v (and the delta rule's β logits, one per head) come from one matmul: in one-token
        # decoding the layer's cost is mostly per-call overhead, not FLOPs.
        self.projection_sizes = [config.hidden_size] * 3 + ([config.num_attention_heads] if self.is_delta else [])
        self.qkv_proj = nn.Linear(config.hidden_size, sum(self.projection_sizes), bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def _feature_map_and_normalize(self, x: torch.Tensor) -> torch.Tensor:
        features = self.feature_map(x)
        return sum_normalize(features) if self.is_delta else features

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) (sum-normalised for the delta rule). When gradients are needed, φ is recomputed in the
        backward pass instead of keeping its intermediates (several d_dot-sized tensors per token):
        elementwise work traded for most of the layer's activation memory on long sequences."""
        # Not with Performer redraws: a recomputation must see the ω of its own forward pass.
        if torch.is_grad_enabled() and x.requires_grad and not self.feature_map.redraw:
            return checkpoint(self._feature_map_and_normalize, x, use_reentrant=False)
        return self._feature_map_and_normalize(x)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        **kwargs,
    ) -> torch.Tensor:
        if self.training and self.feature_map.kind == "favor" and self.feature_map.redraw:
            self.feature_map.redraw_projection()
        seq_len = hidden_states.shape[1]
        projections = self.qkv_proj(hidden_states)
        width = self.projection_sizes[0]
        # φ maps q and k in one call (the heads of q, then those of k): fewer ops per decoded token.
        q, k = self._features(_split_heads(projections[..., : 2 * width], 2 * self.num_heads)).chunk(2, dim=1)
        v = _split_heads(projections[..., 2 * width : 3 * width], self.num_heads)
        cache_layer = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        initial_state = cache_layer.state if cache_layer is not None else None
        use_chunks = seq_len > 1
        if self.is_delta:
            beta = torch.sigmoid(projections[..., 3 * width :].float()).transpose(1, 2)
            if token_mask is not None:
                beta = beta * token_mask[:, None, :]  # padded tokens write nothing
            if use_chunks:
                y, state = chunk_delta_rule(q, k, v, beta, initial_state, chunk_size=self.chunk_size)
            else:
                y, state = recurrent_delta_rule(q, k, v, beta, initial_state)
        else:
            if token_mask is not None:
                k = k * token_mask[:, None, :, None].to(k.dtype)  # no write into S nor the normaliser
            if not self.is_causal:
                y, state = bidirectional_sum_rule(q, k, v, normalize=self.normalize_attention)
            elif self.normalize_attention:
                y, state = normalized_sum_rule(q, k, v, initial_state, chunked=use_chunks, chunk_size=self.chunk_size)
            elif use_chunks:
                y, state = chunk_sum_rule(q, k, v, initial_state, chunk_size=self.chunk_size)
            else:
                y, state = recurrent_sum_rule(q, k, v, initial_state)
        if cache_layer is not None:
            cache_layer.update_state(state, seq_len)
        return self.o_proj(_merge_heads(y.to(hidden_states.dtype)))


class FWPBaFastWeights(nn.Module):
    """Ba et al. (2016) fast associative memory as a token mixer, per head of size d.

    ``z_t = W_z x_t`` (the slow input drive), ``h⁰_t = relu(z_t)``,
    ``h^{s+1}_t = relu(LN(z_t + A_{t-1} h^s_t))`` for s < S, ``A_t = λ A_{t-1} + η h⁰_t h⁰_tᵀ``,
    output ``W_o h^S_t``. The memory stores ``h⁰`` (not ``h^S``) so that it is independent of the
    inner loop and the whole layer has a chunkwise-parallel form; see `chunk_fast_weights`.
    """

    def __init__(self, config: FWPConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.chunk_size = config.chunk_size
        self.decay = config.fast_weights_decay
        self.learning_rate = config.fast_weights_learning_rate
        self.inner_steps = config.fast_weights_inner_steps
        self.drive_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.inner_norm = nn.LayerNorm(config.head_dim)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        **kwargs,
    ) -> torch.Tensor:
        seq_len = hidden_states.shape[1]
        drive = _split_heads(self.drive_proj(hidden_states), self.num_heads)
        mask = None
        if token_mask is not None:
            mask = token_mask[:, None, :].expand(-1, self.num_heads, -1)
        cache_layer = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        initial_state = cache_layer.state if cache_layer is not None else None
        args = (drive, self.inner_norm.weight.float(), self.inner_norm.bias.float(),
                self.decay, self.learning_rate, self.inner_steps, initial_state, mask)
        if seq_len > 1:
            y, state = chunk_fast_weights(*args, chunk_size=self.chunk_size)
        else:
            y, state = recurrent_fast_weights(*args)
        if cache_layer is not None:
            cache_layer.update_state(state, seq_len)
        return self.o_proj(_merge_heads(y.to(hidden_states.dtype)))


def build_token_mixer(config: FWPConfig, layer_idx: int, attention_type: str, is_causal: bool = True) -> nn.Module:
    """The token mixer of one layer. Ba et al.'s memory is a recurrence and is always causal."""
    if attention_type == "softmax":
        return FWPSoftmaxAttention(config, layer_idx, is_causal=is_causal)
    if attention_type == "fast_weights":
        return FWPBaFastWeights(config, layer_idx)
    return FWPFastWeightAttention(config, layer_idx, attention_type, is_causal=is_causal)


class FWPDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))``.

    Also the encoder block of the encoder–decoder model (``is_causal=False``).
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

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_mask: torch.Tensor | None = None,
        attention_mask_4d: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.mixer(
            self.input_layernorm(hidden_states),
            token_mask=token_mask,
            attention_mask_4d=attention_mask_4d,
            position_embeddings=position_embeddings,
            past_key_values=past_key_values,
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


# ----------------------------------------------------------------------------------------------
# Pretrained model classes
# ----------------------------------------------------------------------------------------------


# Written into config.json by save_pretrained so that every Auto class loads the checkpoint with
# trust_remote_code=True (transformers itself only records the class that was saved).
AUTO_MAP = {
    "AutoConfig": "configuration_fwp.FWPConfig",
    "AutoModel": "modeling_fwp.FWPModel",
    "AutoModelForCausalLM": "modeling_fwp.FWPForCausalLM",
}


class FWPPreTrainedModel(PreTrainedModel):
    config_class = FWPConfig
    config: FWPConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FWPDecoderLayer"]
    _supports_sdpa = True
    # The fast-weight state cannot be rolled back, which assisted generation would need.
    _is_stateful = True

    _auto_map = AUTO_MAP

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = {**self._auto_map, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FWPFeatureMap) and module.kind == "favor":
            init.copy_(module.projection, module.seeded_projection(module.projection.device))


def _padding_mask_2d(attention_mask: torch.Tensor | dict | None) -> torch.Tensor | None:
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


def _softmax_attention_mask(padding_mask: torch.Tensor | None, query_length: int, past_length: int,
                            batch_size: int, device: torch.device, causal: bool = True) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, past + T]`` mask (True = attend): no padded keys and, if `causal`, no future keys.

    Every query may see its own position, so a padded query row is never empty (no NaN).
    Returns None when SDPA's own (causal or full) attention does the job (no padding, no past).
    """
    if past_length == 0 and (padding_mask is None or bool(padding_mask.all())):
        return None
    key_length = past_length + query_length
    query_positions = torch.arange(past_length, key_length, device=device)[:, None]
    key_positions = torch.arange(key_length, device=device)[None, :]
    if causal:
        allowed = (key_positions <= query_positions)[None, None].expand(batch_size, 1, -1, -1)
    else:
        allowed = torch.ones(batch_size, 1, query_length, key_length, dtype=torch.bool, device=device)
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, None, :].bool()
    return allowed | (key_positions == query_positions)[None, None]


def check_model_inputs(
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
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
            raise ValueError(
                f"{ids_name} must lie in [0, vocab_size={vocab_size}), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        return
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"{embeds_name} must be [batch, seq_len, hidden_size={hidden_size}], got shape {tuple(inputs_embeds.shape)}"
        )
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
    past_length: int,
    causal: bool = True,
    mask_name: str = "attention_mask",
) -> dict:
    """What every layer of a stack needs besides its hidden states.

    Returns ``token_mask`` ([B, T] float, None without padding) for fast-weight layers, and for softmax
    layers ``attention_mask_4d`` (see `_softmax_attention_mask`) and rotary ``position_embeddings``
    (positions count real tokens only, so left padding does not shift them).
    """
    batch_size, seq_len = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    padding_mask = _padding_mask_2d(attention_mask)
    if padding_mask is not None:
        if padding_mask.shape[1] == seq_len and past_length > 0:
            padding_mask = F.pad(padding_mask, (past_length, 0), value=1)
        if padding_mask.shape != (batch_size, past_length + seq_len):
            raise ValueError(
                f"{mask_name} must have shape [batch={batch_size}, past+new tokens={past_length + seq_len}] "
                f"(or [batch, new tokens={seq_len}]), got {tuple(padding_mask.shape)}"
            )
    token_mask = None
    if padding_mask is not None and not bool(padding_mask[:, -seq_len:].all()):
        token_mask = padding_mask[:, -seq_len:].float()

    position_embeddings, attention_mask_4d = None, None
    if "softmax" in kinds:
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
        position_embeddings = rotary_cos_sin(position_ids, config.head_dim, config.rope_theta, inputs_embeds.dtype)
        attention_mask_4d = _softmax_attention_mask(padding_mask, seq_len, past_length, batch_size, device, causal)
    return {"token_mask": token_mask, "attention_mask_4d": attention_mask_4d,
            "position_embeddings": position_embeddings, "padding_mask": padding_mask}


class FWPModel(FWPPreTrainedModel):
    """The bare FWP decoder: embeddings, `num_hidden_layers` blocks and a final RMSNorm."""

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([FWPDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        check_model_inputs(input_ids, inputs_embeds, self.embed_tokens)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        kinds = self.config.layer_attention_types
        past_key_values = _prepare_cache(past_key_values, kinds, use_cache)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        mixer_inputs = prepare_mixer_inputs(self.config, kinds, attention_mask, position_ids, inputs_embeds, past_length)
        mixer_inputs.pop("padding_mask")

        hidden_states = inputs_embeds
        all_hidden_states = [] if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, past_key_values=past_key_values, **mixer_inputs)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class FWPForCausalLM(FWPPreTrainedModel, GenerationMixin):
    """FWP decoder with a language-modelling head; ``labels`` give the shifted next-token loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config)
        self.model = FWPModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            if labels.shape != hidden_states.shape[:2]:
                raise ValueError(
                    f"labels must have the shape of input_ids {tuple(hidden_states.shape[:2])}, got {tuple(labels.shape)}"
                )
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["FWPPreTrainedModel", "FWPModel", "FWPForCausalLM", "FastWeightCacheLayer"]
