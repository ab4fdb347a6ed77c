"""Configuration of fast weight programmer (FWP) models."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from typing import Any

from transformers import PretrainedConfig
from transformers.utils import CONFIG_NAME, cached_file

from .fast_weight_kernels import FEATURE_MAPS
from .token_mixers import (
    ATTENTION_TYPES,
    CROSS_ATTENTION_TYPES,
    FAST_WEIGHT_LAYER,
    HEBBIAN_MEMORY_LAYER,
    SOFTMAX_ATTENTION_LAYER,
    TOKEN_MIXERS,
)

# `rope_scaling_parameters` types: transformers' ROPE_INIT_FUNCTIONS whose frequencies do not depend on
# the sequence length (so they are computed once, as the pretrained model's rotary embedding does).
ROPE_SCALING_TYPES = ("default", "linear", "llama3", "yarn")

# The trained length of rotary positions when a model with softmax layers does not give one.
DEFAULT_MAX_POSITION_EMBEDDINGS = 2048


# PEFT's default LoRA targets for model_type "fwp": the input and output projections of every token
# mixer — softmax layers and encoder–decoder cross-attention `q_proj`, `k_proj`, `v_proj`, `o_proj`;
# fast-weight layers the fused `qkv_proj` (q, k, v and the β / decay / output-gate rows) and `o_proj`;
# Ba et al.'s memory `drive_proj` and `o_proj`. A name a model lacks (e.g. `q_proj` in a model without
# softmax layers) is simply not matched.
PEFT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "drive_proj", "o_proj")


def declare_peft_target_modules() -> bool:
    """Add model_type "fwp" → `PEFT_TARGET_MODULES` to PEFT's table of default LoRA targets, if peft is loaded.

    PEFT picks `target_modules` for ``LoraConfig()`` from
    ``peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[config.model_type]``, a table of
    built-in model types with no hook for a custom one. peft reads ``model.config.to_dict()`` right before it
    looks the type up, so `FWPConfig.to_dict` calls this: whatever the import order, and in remote-code
    checkpoints where fwp_hf is not installed (this file ships with them and must not import peft itself,
    so it only touches a peft that the process already imported). An entry already there is kept.
    Returns whether peft's table holds an "fwp" entry now.
    """
    constants = sys.modules.get("peft.utils.constants")
    mapping = getattr(constants, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", None)
    if not isinstance(mapping, dict):
        return False
    mapping.setdefault(FWPConfig.model_type, list(PEFT_TARGET_MODULES))
    return True


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(repr(v) for v in values)


def _per_layer(kinds: str | list[str], num_layers: int) -> list[str]:
    return list(kinds) if isinstance(kinds, list) else [kinds] * num_layers


class FWPConfig(PretrainedConfig):
    r"""Configuration of an FWP language model (`FWPModel`, `FWPForCausalLM`).

    A decoder-only stack of pre-norm blocks (RMSNorm → token mixer → residual, RMSNorm → SwiGLU MLP
    → residual). The token mixer of each layer is chosen by `attention_type`, one of the names in
    `token_mixers.TOKEN_MIXERS` (the registry says what each one is):

    - `"softmax"`: causal multi-head softmax attention (torch SDPA) with rotary positions.
    - `"linear"`: sum rule with φ = elu + 1 (Katharopoulos et al.).
    - `"performer"`: sum rule with FAVOR+ random features (`performer_num_features` = m).
    - `"dpfp"`: sum rule with DPFP(ν), ν = `dpfp_nu`.
    - `"delta"`: Schlag et al.'s delta rule with learned per-token rates β; `feature_map` picks φ.
    - `"gated_delta"`: the delta rule with a learned per-head, per-token decay α_t = exp(g_t),
      g_t = −exp(A_log)·softplus(W_a x_t + dt_bias) (Yang et al. 2025); `feature_map` picks φ.
    - `"fast_weights"`: Ba et al.'s decaying Hebbian memory with an inner loop with layer norm.

    `attention_type` may also be a list with one entry per layer (a hybrid model, e.g. a few
    softmax layers among delta layers).

    With `is_encoder_decoder=True` (T5-style, `FWPForConditionalGeneration`) `num_hidden_layers` and
    `attention_type` describe the encoder, `num_decoder_layers` and `decoder_attention_type` (default:
    the same as the encoder) the decoder, and `cross_attention_type` (`"softmax"`, or a sum rule that
    reads the whole source at once: `"linear"`, `"performer"`, `"dpfp"`) the decoder's attention over
    the encoder output. Encoders run softmax and the sum rules without a
    causal mask; the delta rules and Ba et al.'s memory are recurrences with no order-free form and
    read the source left to right (`TokenMixerSpec.encoder_form`).

    Args:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads:
            usual transformer sizes; `hidden_size` must be divisible by `num_attention_heads`.
        attention_type (`str` or `list[str]`): token mixer, see above.
        feature_map (`str`): φ of the delta rules, one of `"elu"`, `"favor"`, `"dpfp"`.
        dpfp_nu (`int`): ν of DPFP; d_dot = 2·ν·head_dim.
        performer_num_features (`int`): m random features of FAVOR+; d_dot = 2m.
        performer_seed (`int`): seed of the orthogonal projection ω (drawn per layer, saved with the model).
        performer_redraw (`bool`): draw a new ω at every training forward pass.
        attention_normalization (`bool`): sum rule divides by z_t·φ(q_t) with z_t = Σ φ(k_τ).
        fast_weights_decay (`float`): λ in (0, 1]; fast_weights_learning_rate (`float`): η > 0;
        fast_weights_inner_steps (`int`): S ≥ 0 inner-loop steps.
        chunk_size (`int`): chunk length of the chunkwise-parallel kernels.
        max_position_embeddings (`int` or None): the positional limit of a model with rotary (softmax)
            layers (default 2048; generation warns past it). None for a model without such layers: the
            fast-weight layers have no positional limit, and a value given (or saved) for one is dropped.
        num_decoder_layers, decoder_attention_type, cross_attention_type: encoder–decoder only, see above;
            `cross_attention_type` is `"softmax"` or a sum rule (`"linear"`, `"performer"`, `"dpfp"`).

    Options of the fast-weight layers (sum and delta rules), all off by default; they are what
    flash-linear-attention's DeltaNet / Gated DeltaNet layers use (`fla_checkpoints` maps those
    checkpoints onto them). Decoder-only models (`FWPForCausalLM`) only.
        key_head_dim, value_head_dim (`int` or None): per-head size of q/k (before φ) and of v
            (default ``hidden_size // num_attention_heads``); the state is ``d_dot × value_head_dim``.
        use_short_conv (`bool`), conv_size (`int`), conv_bias (`bool`): a depthwise causal convolution of
            width `conv_size` over time on q, k and v before φ (its last inputs are carried in the cache).
        value_activation (`str` or None): `"silu"` applies SiLU to v (after the convolution), as FLA does.
        key_normalization (`str` or None): for the delta rules, `"sum"` (φ/Σφ, Schlag et al.; the default)
            or `"l2"` (φ/|φ|₂, FLA's default).
        scale_queries (`bool`): multiply φ(q) by ``d_dot^{-1/2}`` after normalisation (FLA's kernels do).
        allow_neg_eigval (`bool`): β = 2·sigmoid(·) ∈ (0, 2) in the delta rules.
        output_norm (`bool`): per-head RMSNorm of the read (over `value_head_dim`, eps `rms_norm_eps`).
        output_gate (`bool`): multiply the (normed) read by ``SiLU(W_g x)`` per head.
    Options of the q/k/v projections of softmax and fast-weight layers alike (decoder-only models; what
    a pretrained Llama / Mistral / Qwen2 / Qwen3 attention layer has, `conversion.linearize`):
        head_dim (`int` or None): per-head size (default ``hidden_size // num_attention_heads``) of softmax
            layers, Ba et al.'s memory (which needs ``num_attention_heads · head_dim == hidden_size``) and the
            fast-weight layers' default `key_head_dim` / `value_head_dim`.
        attention_bias (`bool`): biases on the q, k and v projections (fast-weight layers: on all their
            projections, gates included); attention_output_bias (`bool`): a bias on the output projection.
        use_qk_norm (`bool`): per-head RMSNorm of q and k (eps `rms_norm_eps`) right after their projection.
        fast_weight_key_value_heads (`int` or None): key/value heads of the fast-weight layers (grouped
            like grouped-query attention: each serves ``num_attention_heads / fast_weight_key_value_heads``
            query heads; default one per query head).
        rope_scaling_parameters (`dict` or None): transformers' rope parameters other than the default
            (``{"rope_type": "llama3" | "linear" | ..., ...}``) for the rotary positions of softmax layers.
    Options of the softmax layers (decoder-only models):
        softmax_num_heads (`int` or None): their query heads (default `num_attention_heads`; a hybrid's
            softmax layers may have their own), each of size ``hidden_size // softmax_num_heads``.
        num_key_value_heads (`int` or None): grouped-query attention; None resolves to as many as the softmax query
            heads, as in transformers' Llama config.
        attention_bias (`bool`): biases on the q, k and v projections.
        sliding_window (`int` or None): a query sees itself and the `sliding_window` − 1 previous tokens.
    """

    model_type = "fwp"
    # Trainer drops these output keys from evaluation logits: the cache under both its names (`compat_fwp`).
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        intermediate_size: int = 1408,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 8,
        attention_type: str | list[str] = "delta",
        feature_map: str = "dpfp",
        dpfp_nu: int = 1,
        performer_num_features: int = 64,
        performer_seed: int = 0,
        performer_redraw: bool = False,
        attention_normalization: bool = True,
        fast_weights_decay: float = 0.95,
        fast_weights_learning_rate: float = 0.5,
        fast_weights_inner_steps: int = 1,
        chunk_size: int = 64,
        hidden_act: str = "silu",
        max_position_embeddings: int | None = None,
        rope_theta: float = 10000.0,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        is_encoder_decoder: bool = False,
        num_decoder_layers: int | None = None,
        decoder_attention_type: str | list[str] | None = None,
        cross_attention_type: str = "softmax",
        key_head_dim: int | None = None,
        value_head_dim: int | None = None,
        use_short_conv: bool = False,
        conv_size: int = 4,
        conv_bias: bool = False,
        value_activation: str | None = None,
        key_normalization: str | None = None,
        scale_queries: bool = False,
        allow_neg_eigval: bool = False,
        output_norm: bool = False,
        output_gate: bool = False,
        head_dim: int | None = None,
        attention_output_bias: bool = False,
        use_qk_norm: bool = False,
        fast_weight_key_value_heads: int | None = None,
        rope_scaling_parameters: dict | None = None,
        softmax_num_heads: int | None = None,
        num_key_value_heads: int | None = None,
        attention_bias: bool = False,
        sliding_window: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.attention_type = list(attention_type) if isinstance(attention_type, (list, tuple)) else attention_type
        self.feature_map = feature_map
        self.dpfp_nu = dpfp_nu
        self.performer_num_features = performer_num_features
        self.performer_seed = performer_seed
        self.performer_redraw = performer_redraw
        self.attention_normalization = attention_normalization
        self.fast_weights_decay = fast_weights_decay
        self.fast_weights_learning_rate = fast_weights_learning_rate
        self.fast_weights_inner_steps = fast_weights_inner_steps
        self.chunk_size = chunk_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.num_decoder_layers = num_hidden_layers if num_decoder_layers is None else num_decoder_layers
        if isinstance(decoder_attention_type, (list, tuple)):
            decoder_attention_type = list(decoder_attention_type)
        self.decoder_attention_type = decoder_attention_type
        self.cross_attention_type = cross_attention_type
        self.is_encoder_decoder = is_encoder_decoder
        self.key_head_dim = key_head_dim
        self.value_head_dim = value_head_dim
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.conv_bias = conv_bias
        self.value_activation = value_activation
        self.key_normalization = key_normalization
        self.scale_queries = scale_queries
        self.allow_neg_eigval = allow_neg_eigval
        self.output_norm = output_norm
        self.output_gate = output_gate
        self.head_dim = head_dim
        self.attention_output_bias = attention_output_bias
        self.use_qk_norm = use_qk_norm
        self.fast_weight_key_value_heads = fast_weight_key_value_heads
        self.rope_scaling_parameters = None if rope_scaling_parameters is None else dict(rope_scaling_parameters)
        self.softmax_num_heads = softmax_num_heads
        # Resolved as transformers' own configs do (Llama, Qwen): generic code (cache shape checks, serving engines
        # sizing key/value caches) reads it as a number. None in an older config.json means the same.
        self.num_key_value_heads = self.softmax_heads if num_key_value_heads is None else num_key_value_heads
        self.attention_bias = attention_bias
        self.sliding_window = sliding_window
        self._validate_fwp()
        self._resolve_max_position_embeddings()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        # transformers applies load-time overrides with setattr after __init__: validate them too.
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config._validate_fwp()
        config._resolve_max_position_embeddings()
        return result

    @property
    def head_dim(self) -> int:
        """Head size of softmax layers, Ba et al.'s memory and (by default) the fast-weight layers:
        the `head_dim` given, else ``hidden_size // num_attention_heads``."""
        explicit = self.__dict__.get("_head_dim")
        return self.hidden_size // self.num_attention_heads if explicit is None else explicit

    @head_dim.setter
    def head_dim(self, value: int | None) -> None:
        self.__dict__["_head_dim"] = value

    def to_dict(self) -> dict[str, Any]:
        declare_peft_target_modules()  # peft reads to_dict() before it looks up its default LoRA targets
        output = super().to_dict()
        output.pop("_head_dim", None)
        output["head_dim"] = self.__dict__.get("_head_dim")  # None: follows hidden_size / num_attention_heads
        return output

    @property
    def fast_weight_kv_heads(self) -> int:
        """Key/value heads of the fast-weight layers."""
        heads = self.fast_weight_key_value_heads
        return self.num_attention_heads if heads is None else heads

    @property
    def fast_weight_key_head_dim(self) -> int:
        """Per-head size of q and k (before φ) in the fast-weight layers."""
        return self.head_dim if self.key_head_dim is None else self.key_head_dim

    @property
    def fast_weight_value_head_dim(self) -> int:
        """Per-head size of v (and of the read) in the fast-weight layers."""
        return self.head_dim if self.value_head_dim is None else self.value_head_dim

    @property
    def fast_weight_qkv_widths(self) -> tuple[int, int, int]:
        """Widths of q, k and v in a fast-weight layer's fused projection (and its short convolution)."""
        key_dim, value_dim = self.fast_weight_key_head_dim, self.fast_weight_value_head_dim
        return self.num_attention_heads * key_dim, self.fast_weight_kv_heads * key_dim, self.fast_weight_kv_heads * value_dim

    @property
    def softmax_heads(self) -> int:
        """Query heads of the softmax layers."""
        return self.num_attention_heads if self.softmax_num_heads is None else self.softmax_num_heads

    @property
    def softmax_head_dim(self) -> int:
        """Head size of the softmax layers (and of their rotary positions)."""
        return self.head_dim if self.softmax_num_heads is None else self.hidden_size // self.softmax_num_heads

    @property
    def key_value_heads(self) -> int:
        """Key/value heads of softmax layers (grouped-query attention when fewer than the query heads)."""
        # None only where set by hand after __init__ (which resolves it).
        return self.softmax_heads if self.num_key_value_heads is None else self.num_key_value_heads

    # The options of the generic fast-weight layer and of softmax layers, with their off values (see the
    # class docstring): `_validate_layer_options` refuses one that no layer of the model would use.
    FAST_WEIGHT_LAYER_OPTIONS = {
        "key_head_dim": None, "value_head_dim": None, "use_short_conv": False, "value_activation": None,
        "scale_queries": False, "output_norm": False, "output_gate": False, "fast_weight_key_value_heads": None,
    }
    SOFTMAX_LAYER_OPTIONS = {"softmax_num_heads": None, "num_key_value_heads": None, "sliding_window": None,
                             "rope_scaling_parameters": None}
    PROJECTION_OPTIONS = {"attention_bias": False, "attention_output_bias": False, "use_qk_norm": False}

    def layer_options(self, kind: str) -> dict[str, Any]:
        """The options that shape a layer of type `kind` under this config, with their values (what its
        weights mean beyond the type; e.g. ``{"use_short_conv": True, "conv_size": 4, ...}``)."""
        spec = TOKEN_MIXERS[kind]
        options: dict[str, Any] = {}
        if spec.layer == FAST_WEIGHT_LAYER:
            options.update(
                key_head_dim=self.fast_weight_key_head_dim, value_head_dim=self.fast_weight_value_head_dim,
                key_value_heads=self.fast_weight_kv_heads, attention_bias=self.attention_bias,
                attention_output_bias=self.attention_output_bias, use_qk_norm=self.use_qk_norm,
                value_activation=self.value_activation, scale_queries=self.scale_queries,
                output_norm=self.output_norm, output_gate=self.output_gate,
                conv=(self.conv_size, self.conv_bias) if self.use_short_conv else None,
            )
            if spec.key_normalization is not None:
                options["key_normalization"] = self.key_normalization or spec.key_normalization
            if "beta" in spec.gates:
                options["allow_neg_eigval"] = self.allow_neg_eigval
        elif spec.layer == SOFTMAX_ATTENTION_LAYER:
            options.update(heads=self.softmax_heads, head_dim=self.softmax_head_dim,
                           key_value_heads=self.key_value_heads, attention_bias=self.attention_bias,
                           attention_output_bias=self.attention_output_bias, use_qk_norm=self.use_qk_norm,
                           sliding_window=self.sliding_window, rope_scaling=self.rope_scaling_parameters)
        elif spec.layer == HEBBIAN_MEMORY_LAYER:
            options.update(head_dim=self.head_dim)
        return options

    @property
    def layer_attention_types(self) -> list[str]:
        """The attention type of every (encoder) layer: a plain `attention_type` repeated, or the hybrid list."""
        return _per_layer(self.attention_type, self.num_hidden_layers)

    @property
    def decoder_layer_attention_types(self) -> list[str]:
        """The self-attention type of every decoder layer of an encoder–decoder model."""
        kinds = self.attention_type if self.decoder_attention_type is None else self.decoder_attention_type
        return _per_layer(kinds, self.num_decoder_layers)

    @property
    def self_attention_types(self) -> list[str]:
        """The self-attention type of every layer: the decoder-only stack, or the encoder's then the decoder's."""
        kinds = self.layer_attention_types
        return kinds + self.decoder_layer_attention_types if self.is_encoder_decoder else kinds

    @property
    def rotary_attention_types(self) -> list[str]:
        """The attention types of this model whose layers use rotary positions (the registry's `uses_rotary`)."""
        return sorted({kind for kind in self.self_attention_types if TOKEN_MIXERS[kind].uses_rotary})

    @property
    def has_positional_limit(self) -> bool:
        """Whether any layer uses rotary positions (fast-weight layers have no positional limit)."""
        return bool(self.rotary_attention_types)

    def _resolve_max_position_embeddings(self) -> None:
        # generate() reads config.max_position_embeddings: it warns past it and caps a default max_length at
        # it. None for a model without rotary layers (also when a checkpoint saved 2048 for one).
        if not self.has_positional_limit:
            self.max_position_embeddings = None
        elif self.max_position_embeddings is None:
            self.max_position_embeddings = DEFAULT_MAX_POSITION_EMBEDDINGS

    # ------------------------------------------------------------------------------------------
    # What the weights mean: a load-time override of these fields would silently change the function
    # that a checkpoint's weights compute, so `FWPPreTrainedModel.from_pretrained` refuses it.
    # Not listed, because they do not change the function of the same weights: chunk_size (a kernel
    # block length), max_position_embeddings (rotary positions are computed for any position),
    # performer_seed (ω is saved with the weights), performer_redraw (training only), initializer_range
    # (initialisation only), use_cache, special token ids, dropout-like and generation fields.
    # ------------------------------------------------------------------------------------------
    WEIGHT_MEANING_FIELDS = (
        "is_encoder_decoder",
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_decoder_layers",
        "num_attention_heads",
        "attention_type",
        "decoder_attention_type",
        "cross_attention_type",
        "feature_map",
        "dpfp_nu",
        "performer_num_features",
        "attention_normalization",
        "fast_weights_decay",
        "fast_weights_learning_rate",
        "fast_weights_inner_steps",
        "hidden_act",
        "rope_theta",
        "rms_norm_eps",
        "tie_word_embeddings",
        "key_head_dim",
        "value_head_dim",
        "use_short_conv",
        "conv_size",
        "conv_bias",
        "value_activation",
        "key_normalization",
        "scale_queries",
        "allow_neg_eigval",
        "output_norm",
        "output_gate",
        "head_dim",
        "attention_output_bias",
        "use_qk_norm",
        "fast_weight_key_value_heads",
        "rope_scaling_parameters",
        "softmax_num_heads",
        "num_key_value_heads",
        "attention_bias",
        "sliding_window",
    )

    def weights_meaning(self) -> dict[str, Any]:
        """What a model with this config computes from its weights, layer by layer (from the registry).

        Two configs with equal `weights_meaning()` give the same function for the same weights; e.g.
        `feature_map` counts only where a layer lets the config choose φ, `dpfp_nu` only where φ is
        DPFP, `fast_weights_*` only for Ba et al.'s memory, `rope_theta` only for rotary layers.
        """

        def layer(kind: str) -> tuple:
            spec = TOKEN_MIXERS[kind]
            feature_map = spec.feature_map_name(self)
            phi = None
            if feature_map is not None:
                phi = FEATURE_MAPS[feature_map].label(self.dpfp_nu, self.performer_num_features)
            hebbian = (
                (self.fast_weights_decay, self.fast_weights_learning_rate, self.fast_weights_inner_steps)
                if spec.layer == HEBBIAN_MEMORY_LAYER
                else None
            )
            rope = self.rope_theta if spec.uses_rotary else None
            options = tuple(sorted(self.layer_options(kind).items()))
            return kind, phi, spec.normalizes(self), hebbian, rope, options

        meaning: dict[str, Any] = {
            name: getattr(self, name)
            for name in ("is_encoder_decoder", "vocab_size", "hidden_size", "intermediate_size",
                         "num_attention_heads", "hidden_act", "rms_norm_eps", "tie_word_embeddings")
        }
        meaning["layers"] = [layer(kind) for kind in self.layer_attention_types]
        if self.is_encoder_decoder:
            meaning["decoder_layers"] = [layer(kind) for kind in self.decoder_layer_attention_types]
            meaning["cross_attention"] = layer(self.cross_attention_type)
        return meaning

    def weight_meaning_changes(self, other: "FWPConfig") -> list[str]:
        """The `WEIGHT_MEANING_FIELDS` whose value in `other` changes what this config's weights compute."""
        if self.weights_meaning() == other.weights_meaning():
            return []
        changed = []
        for name in self.WEIGHT_MEANING_FIELDS:
            if getattr(self, name, None) == getattr(other, name, None):
                continue
            alone = copy.copy(self)
            setattr(alone, name, getattr(other, name, None))
            try:
                matters = alone.weights_meaning() != self.weights_meaning()
            except (TypeError, ValueError, KeyError, IndexError):  # e.g. a layer count without its type list
                matters = True
            if matters:
                changed.append(name)
        return changed or [name for name in self.WEIGHT_MEANING_FIELDS
                           if getattr(self, name, None) != getattr(other, name, None)]

    @classmethod
    def check_loading_keeps_weight_meaning(cls, pretrained_model_name_or_path, load_kwargs: dict[str, Any]) -> None:
        """Raise a ValueError when `from_pretrained(pretrained_model_name_or_path, **load_kwargs)` would give
        the checkpoint's weights a different meaning than the config they were saved with: an override
        of a `WEIGHT_MEANING_FIELDS` field (``attention_type="dpfp"`` on a ``linear`` checkpoint), or
        ``config=`` a config that differs from the saved one in such a field. Other overrides
        (``use_cache``, ``chunk_size``, generation fields, ...) pass. A folder or Hub id without a
        config.json is left to transformers."""
        if pretrained_model_name_or_path is None or load_kwargs.get("gguf_file") is not None:
            return
        download = {key: load_kwargs[key] for key in ("cache_dir", "force_download", "proxies", "local_files_only",
                                                      "token", "revision") if key in load_kwargs}
        saved_file = cached_file(
            pretrained_model_name_or_path, CONFIG_NAME, subfolder=load_kwargs.get("subfolder") or "",
            _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False, **download,
        )
        if saved_file is None:
            return
        with open(saved_file, encoding="utf-8") as handle:
            saved_dict = json.load(handle)
        if saved_dict.get("model_type") != cls.model_type:
            return
        saved = cls.from_dict(saved_dict)
        requested = load_kwargs.get("config")
        if isinstance(requested, (str, os.PathLike)):
            requested = cls.from_pretrained(requested, **download)
        if isinstance(requested, PretrainedConfig):
            source = "config= (a config that differs from its config.json)"
        else:
            overrides = {key: value for key, value in load_kwargs.items() if key in cls.WEIGHT_MEANING_FIELDS}
            if not overrides:
                return
            source = f"the override(s) {', '.join(f'{key}={value!r}' for key, value in overrides.items())}"
            try:
                requested = cls.from_dict(saved_dict, **overrides)
            except ValueError as error:  # e.g. fewer softmax heads than the saved num_key_value_heads
                changed = [key for key, value in overrides.items() if getattr(saved, key, None) != value]
                raise ValueError(
                    f"loading {pretrained_model_name_or_path!s} with {source} changes {', '.join(changed)}, which would "
                    f"change what its weights compute, into a config that is not even valid ({error}); load it "
                    "without that change, or build a new model with from_config and train it"
                ) from error
        changed = saved.weight_meaning_changes(requested)
        if changed:
            details = "; ".join(
                f"{name}={getattr(saved, name, None)!r} saved, {getattr(requested, name, None)!r} requested"
                for name in changed
            )
            raise ValueError(
                f"loading {pretrained_model_name_or_path!s} with {source} changes {', '.join(changed)}, which would "
                f"change what its weights compute ({details}); load it without that change "
                "(FWPConfig.WEIGHT_MEANING_FIELDS lists the fields that fix what weights mean), or build a new model "
                "with from_config and train it"
            )

    def _validate_attention_types(self, field: str, kinds: str | list[str], num_layers: int, layers_field: str) -> None:
        if isinstance(kinds, list):
            if len(kinds) != num_layers:
                raise ValueError(
                    f"FWPConfig.{field} is a hybrid list of {len(kinds)} entries but {layers_field} is "
                    f"{num_layers}; give one attention type per layer"
                )
        else:
            kinds = [kinds]
        for kind in kinds:
            if kind not in ATTENTION_TYPES:
                raise ValueError(
                    f"FWPConfig.{field} {kind!r} is unknown; allowed: {_allowed(ATTENTION_TYPES)} "
                    "(or a list of these, one per layer)"
                )

    def _validate_types(self) -> None:
        """Every numeric or boolean field has the right type (a ValueError naming it, never a raw TypeError)."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "chunk_size", "performer_num_features", "max_position_embeddings", "num_decoder_layers"):
            value = getattr(self, name)
            if name == "max_position_embeddings" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                allowed = " (or None: no positional limit)" if name == "max_position_embeddings" else ""
                raise ValueError(f"FWPConfig.{name} must be a positive integer, got {value!r}{allowed}")
        for name in ("performer_seed",):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"FWPConfig.{name} must be an integer, got {value!r}")
        for name in ("fast_weights_decay", "fast_weights_learning_rate", "rope_theta", "rms_norm_eps",
                     "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"FWPConfig.{name} must be a number (int or float), got {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FWPConfig.{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(f"FWPConfig.initializer_range must be a finite number >= 0, got {self.initializer_range!r}")
        for name in ("performer_redraw", "attention_normalization", "use_cache", "is_encoder_decoder"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"FWPConfig.{name} must be True or False, got {value!r}")
        for name in ("feature_map", "hidden_act", "cross_attention_type"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"FWPConfig.{name} must be a string, got {value!r}")

    def _head_counts_that_must_divide_hidden_size(self) -> dict[str, int]:
        """``{field: heads}`` for every head count whose layers have head size ``hidden_size // heads``."""
        counts = {}
        for kind in set(self.self_attention_types) | ({self.cross_attention_type} if self.is_encoder_decoder else set()):
            layer = TOKEN_MIXERS[kind].layer
            if layer == SOFTMAX_ATTENTION_LAYER and self.softmax_num_heads is not None:
                counts["softmax_num_heads"] = self.softmax_num_heads
            elif self.__dict__.get("_head_dim") is not None:
                continue  # an explicit head_dim (Ba et al.'s memory is checked on its own)
            elif layer != FAST_WEIGHT_LAYER or self.key_head_dim is None or self.value_head_dim is None:
                counts["num_attention_heads"] = self.num_attention_heads
        return counts

    def _validate_head_dim(self) -> None:
        if self.__dict__.get("_head_dim") is None:
            return
        if self.is_encoder_decoder and self.num_attention_heads * self.head_dim != self.hidden_size:
            raise ValueError(
                f"FWPConfig.head_dim ({self.head_dim}) × num_attention_heads ({self.num_attention_heads}) must equal "
                f"hidden_size ({self.hidden_size}) in the encoder–decoder model (or leave head_dim None)"
            )
        hebbian = sorted({k for k in self.self_attention_types if TOKEN_MIXERS[k].layer == HEBBIAN_MEMORY_LAYER})
        if hebbian and self.num_attention_heads * self.head_dim != self.hidden_size:
            raise ValueError(
                f"FWPConfig: {', '.join(map(repr, hebbian))} layers need num_attention_heads ({self.num_attention_heads}) "
                f"× head_dim ({self.head_dim}) == hidden_size ({self.hidden_size})"
            )

    def _validate_layer_options(self) -> None:
        """The fast-weight and softmax layer options: types, allowed values, and that some layer uses each."""
        for name in ("key_head_dim", "value_head_dim", "softmax_num_heads", "num_key_value_heads", "sliding_window",
                     "fast_weight_key_value_heads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"FWPConfig.{name} must be a positive integer or None, got {value!r}")
        if isinstance(self.conv_size, bool) or not isinstance(self.conv_size, int) or self.conv_size < 1:
            raise ValueError(f"FWPConfig.conv_size must be an integer >= 1, got {self.conv_size!r}")
        for name in ("use_short_conv", "conv_bias", "scale_queries", "allow_neg_eigval", "output_norm", "output_gate",
                     "attention_bias", "attention_output_bias", "use_qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FWPConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.value_activation not in (None, "silu"):
            raise ValueError(f"FWPConfig.value_activation {self.value_activation!r} is unknown; allowed: None, 'silu'")
        if self.key_normalization not in (None, "sum", "l2"):
            raise ValueError(
                f"FWPConfig.key_normalization {self.key_normalization!r} is unknown; allowed: None (the rule's own), "
                "'sum', 'l2'"
            )
        head_dim = self.__dict__.get("_head_dim")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0):
            raise ValueError(f"FWPConfig.head_dim must be a positive integer or None, got {head_dim!r}")
        rope = self.rope_scaling_parameters
        if rope is not None and not (isinstance(rope, dict) and rope.get("rope_type") in ROPE_SCALING_TYPES):
            raise ValueError(
                f"FWPConfig.rope_scaling_parameters must be None or transformers' rope parameters with rope_type in "
                f"{_allowed(ROPE_SCALING_TYPES)}, got {self.rope_scaling_parameters!r}"
            )
        layer_specs = [TOKEN_MIXERS[kind] for kind in self.self_attention_types]
        used = {
            **dict.fromkeys(self.PROJECTION_OPTIONS, any(s.layer in (FAST_WEIGHT_LAYER, SOFTMAX_ATTENTION_LAYER)
                                                         for s in layer_specs)),
            **dict.fromkeys(self.FAST_WEIGHT_LAYER_OPTIONS, any(s.layer == FAST_WEIGHT_LAYER for s in layer_specs)),
            **dict.fromkeys(self.SOFTMAX_LAYER_OPTIONS, any(s.layer == SOFTMAX_ATTENTION_LAYER for s in layer_specs)),
            "key_normalization": any(s.key_normalization is not None for s in layer_specs),
            "allow_neg_eigval": any("beta" in s.gates for s in layer_specs),
        }
        off = {**self.FAST_WEIGHT_LAYER_OPTIONS, **self.SOFTMAX_LAYER_OPTIONS, **self.PROJECTION_OPTIONS,
               "key_normalization": None, "allow_neg_eigval": False}
        # Always set, like LlamaConfig's (resolved in __init__): a model without softmax layers ignores it.
        del off["num_key_value_heads"]
        set_options = [name for name, value in off.items() if getattr(self, name) != value]
        if self.is_encoder_decoder and set_options:
            raise ValueError(
                f"FWPConfig: {', '.join(set_options)} are options of decoder-only models (FWPForCausalLM); "
                "the encoder–decoder model does not take them"
            )
        unused = [name for name in set_options if not used[name]]
        if unused:
            raise ValueError(
                f"FWPConfig: {', '.join(f'{name}={getattr(self, name)!r}' for name in unused)} would change no layer "
                f"of this model (attention types {sorted(set(self.self_attention_types))}); leave them at their defaults"
            )
        has_softmax_layers = any(s.layer == SOFTMAX_ATTENTION_LAYER for s in layer_specs)
        if (has_softmax_layers and self.num_key_value_heads is not None
                and self.softmax_heads % self.num_key_value_heads):
            heads = "softmax_num_heads" if self.softmax_num_heads is not None else "num_attention_heads"
            raise ValueError(
                f"FWPConfig.{heads} ({self.softmax_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}) (grouped-query attention)"
            )
        kv_heads = self.fast_weight_key_value_heads
        if kv_heads is not None and self.num_attention_heads % kv_heads:
            raise ValueError(
                f"FWPConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"fast_weight_key_value_heads ({kv_heads})"
            )

    def _validate_fwp(self) -> None:
        self._validate_types()
        self._validate_attention_types("attention_type", self.attention_type, self.num_hidden_layers,
                                       "num_hidden_layers")
        if self.decoder_attention_type is not None:
            self._validate_attention_types("decoder_attention_type", self.decoder_attention_type,
                                           self.num_decoder_layers, "num_decoder_layers")
        elif self.is_encoder_decoder and isinstance(self.attention_type, list):
            self._validate_attention_types("attention_type (used for the decoder too)", self.attention_type,
                                           self.num_decoder_layers, "num_decoder_layers")
        if self.cross_attention_type not in CROSS_ATTENTION_TYPES:
            problem = (
                "has no order-free form to read a whole source with"
                if self.cross_attention_type in ATTENTION_TYPES
                else "is unknown"
            )
            raise ValueError(
                f"FWPConfig.cross_attention_type {self.cross_attention_type!r} {problem}; "
                f"allowed: {_allowed(CROSS_ATTENTION_TYPES)}"
            )
        self._validate_layer_options()
        self._validate_head_dim()
        for field, heads in self._head_counts_that_must_divide_hidden_size().items():
            if self.hidden_size % heads:
                hint = " (or give key_head_dim and value_head_dim for a model of fast-weight layers only)" * (
                    field == "num_attention_heads")
                raise ValueError(f"FWPConfig.hidden_size ({self.hidden_size}) must be divisible by {field} ({heads}){hint}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"FWPConfig.feature_map {self.feature_map!r} is unknown; allowed: {_allowed(FEATURE_MAPS)}")
        for kind in dict.fromkeys(self.self_attention_types):
            spec, normalization = TOKEN_MIXERS[kind], self.layer_options(kind).get("key_normalization")
            if normalization == "sum" and not FEATURE_MAPS[spec.feature_map_name(self)].nonnegative:
                raise ValueError(
                    f"FWPConfig: {kind!r} layers sum-normalise φ (φ/Σφ), which needs φ ≥ 0, but feature_map "
                    f"{spec.feature_map_name(self)!r} can be negative; set key_normalization='l2' or a feature_map "
                    f"from {_allowed(tuple(n for n, m in FEATURE_MAPS.items() if m.nonnegative))}"
                )
        if isinstance(self.dpfp_nu, bool) or not isinstance(self.dpfp_nu, int) or self.dpfp_nu < 1:
            raise ValueError(f"FWPConfig.dpfp_nu must be an integer >= 1, got {self.dpfp_nu!r}")
        if not 0.0 < self.fast_weights_decay <= 1.0:
            raise ValueError(f"FWPConfig.fast_weights_decay (λ) must be in (0, 1], got {self.fast_weights_decay!r}")
        if not self.fast_weights_learning_rate > 0.0:
            raise ValueError(
                f"FWPConfig.fast_weights_learning_rate (η) must be > 0, got {self.fast_weights_learning_rate!r}"
            )
        steps = self.fast_weights_inner_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"FWPConfig.fast_weights_inner_steps (S) must be an integer >= 0, got {steps!r}")
        if self.hidden_act not in ("silu", "gelu", "relu"):
            raise ValueError(f"FWPConfig.hidden_act {self.hidden_act!r} is unknown; allowed: 'silu', 'gelu', 'relu'")
        rotary = self.rotary_attention_types
        if rotary and self.softmax_head_dim % 2:
            heads = "softmax_num_heads" if self.softmax_num_heads is not None else "num_attention_heads"
            raise ValueError(
                f"FWPConfig: {', '.join(map(repr, rotary))} layers use rotary positions, which need an even head size, "
                f"but hidden_size ({self.hidden_size}) / {heads} ({self.softmax_heads}) = "
                f"{self.softmax_head_dim}; choose hidden_size and {heads} with an even quotient"
            )


__all__ = ["DEFAULT_MAX_POSITION_EMBEDDINGS", "FWPConfig", "ROPE_SCALING_TYPES"]
