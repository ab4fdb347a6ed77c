"""Configuration of fast weight programmer (FWP) models."""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import sys
from typing import Annotated, Any

from transformers import PretrainedConfig
from transformers.utils import CONFIG_NAME, cached_file

from .feature_maps_fwp import FEATURE_MAPS
from .options_fwp import (
    FEATURE_MAPS_KEY,
    HIDDEN_ACTIVATIONS,
    LAYER_OPTION_GROUPS,
    LEGACY_FLAT_KEYS,
    ROPE_SCALING_TYPES,
    FastWeightLayerOptions,
    HebbianMemoryOptions,
    OptionGroup,
    SoftmaxAttentionOptions,
    refuse_unknown_keys,
)
from .token_mixers import (
    ATTENTION_TYPES,
    CROSS_ATTENTION_TYPES,
    FAST_WEIGHT_LAYER,
    HEBBIAN_MEMORY_LAYER,
    SOFTMAX_ATTENTION_LAYER,
    TOKEN_MIXERS,
)

# Marks a top-level field of `FWPConfig.__init__` that fixes what the weights compute (`weight_meaning_fields`).
WEIGHT_MEANING = "weight_meaning"

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
    r"""Configuration of an FWP language model (`FWPModel`, `FWPForCausalLM`) or encoder–decoder
    (`FWPForConditionalGeneration`).

    A decoder-only stack of pre-norm blocks (RMSNorm → token mixer → residual, RMSNorm → SwiGLU MLP
    → residual). The token mixer of each layer is chosen by `attention_type`, one of the names in
    `token_mixers.TOKEN_MIXERS` (the registry says what each one is):

    - `"softmax"`: causal multi-head softmax attention (torch SDPA) with rotary positions.
    - `"linear"`: sum rule with φ = elu + 1 (Katharopoulos et al.).
    - `"performer"`: sum rule with FAVOR+ random features (``feature_maps["favor"].num_features`` = m).
    - `"dpfp"`: sum rule with DPFP(ν), ν = ``feature_maps["dpfp"].nu``.
    - `"hedgehog"`: sum rule with Hedgehog's learned softmax-mimicking feature map (Zhang et al. 2024).
    - `"delta"`: Schlag et al.'s delta rule with learned per-token rates β; ``fast_weight.feature_map`` picks φ.
    - `"gated_delta"`: the delta rule with a learned per-head, per-token decay α_t = exp(g_t),
      g_t = −exp(A_log)·softplus(W_a x_t + dt_bias) (Yang et al. 2025); ``fast_weight.feature_map`` picks φ.
    - `"fast_weights"`: Ba et al.'s decaying Hebbian memory with an inner loop with layer norm.

    `attention_type` may also be a list with one entry per layer (a hybrid model, e.g. a few
    softmax layers among delta layers).

    With `is_encoder_decoder=True` (T5-style, `FWPForConditionalGeneration`) `num_hidden_layers` and
    `attention_type` describe the encoder, `num_decoder_layers` and `decoder_attention_type` (default:
    the same as the encoder) the decoder, and `cross_attention_type` (`"softmax"`, or a sum rule that
    reads the whole source at once: `"linear"`, `"performer"`, `"dpfp"`, `"hedgehog"`) the decoder's
    attention over the encoder output. Encoders run softmax and the sum rules without a causal mask; the
    delta rules and Ba et al.'s memory are recurrences with no order-free form and read the source left to
    right (`TokenMixerSpec.encoder_form`).

    The options of each layer kind are one nested group each (`options_fwp`; a dict in config.json):
    `fast_weight` (`FastWeightLayerOptions`: φ of the delta rules, the sum rules' normalisation, and FLA's /
    pretrained models' options: head dims, k/v heads, short convolution, key normalisation, query scale,
    β ∈ (0, 2), output norm / gate / bias, q/k norm), `softmax_attention` (`SoftmaxAttentionOptions`: heads,
    sliding window, rope scaling, output bias, q/k norm), `hebbian_memory` (`HebbianMemoryOptions`: Ba et
    al.'s λ, η, S) and `feature_maps` (each map's options by name, `feature_maps_fwp.FEATURE_MAPS`: DPFP's ν,
    FAVOR+'s m, seed and redraw). A group may be given as a dict of some of its fields (the rest default),
    e.g. ``FWPConfig(attention_type="delta", fast_weight={"use_short_conv": True})``. Flat keys of older
    configs (``dpfp_nu=2``, ``use_short_conv=True``, ...: `options_fwp.LEGACY_FLAT_KEYS`) are accepted
    everywhere a config is read and written back in the nested shape.

    Args:
        vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads:
            usual transformer sizes; `hidden_size` must be divisible by `num_attention_heads` (unless
            `head_dim`, or the fast-weight layers' own head dims, are given).
        attention_type (`str` or `list[str]`): token mixer, see above.
        hidden_act (`str`): the MLP's activation, one of `options_fwp.HIDDEN_ACTIVATIONS`.
        head_dim (`int` or None): per-head size (default ``hidden_size // num_attention_heads``) of softmax
            layers, Ba et al.'s memory (which needs ``num_attention_heads · head_dim == hidden_size``) and the
            fast-weight layers' default key / value head dims.
        num_key_value_heads (`int` or None): grouped-query attention in softmax layers; None resolves to as
            many as their query heads, as in transformers' Llama config.
        attention_bias (`bool`): biases on the q, k and v projections of softmax and fast-weight layers
            (fast-weight layers: on all their input projections, gates included). Decoder-only models.
        rope_theta (`float`): base of the rotary positions of softmax layers.
        rms_norm_eps (`float`), tie_word_embeddings (`bool`), initializer_range (`float`), use_cache (`bool`).
        num_decoder_layers, decoder_attention_type, cross_attention_type: encoder–decoder only, see above.
        fast_weight, softmax_attention, hebbian_memory, feature_maps: the option groups, see above.
        chunk_size (`int`): chunk length of the chunkwise-parallel kernels.
        max_position_embeddings (`int` or None): the positional limit of a model with rotary (softmax)
            layers (default 2048; generation warns past it). None for a model without such layers: the
            fast-weight layers have no positional limit, and a value given (or saved) for one is dropped.
        kwargs: transformers' generic fields (``pad_token_id``, ``bos_token_id``, ``eos_token_id`` — None
            unless given —, ``dtype``, ...) and the flat keys of older configs.
    """

    model_type = "fwp"
    # Trainer drops these output keys from evaluation logits: the cache under both its names (`compat_fwp`).
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        vocab_size: Annotated[int, WEIGHT_MEANING] = 32000,
        hidden_size: Annotated[int, WEIGHT_MEANING] = 512,
        intermediate_size: Annotated[int, WEIGHT_MEANING] = 1408,
        num_hidden_layers: Annotated[int, WEIGHT_MEANING] = 6,
        num_attention_heads: Annotated[int, WEIGHT_MEANING] = 8,
        attention_type: Annotated[str | list[str], WEIGHT_MEANING] = "delta",
        hidden_act: Annotated[str, WEIGHT_MEANING] = "silu",
        head_dim: Annotated[int | None, WEIGHT_MEANING] = None,
        num_key_value_heads: Annotated[int | None, WEIGHT_MEANING] = None,
        attention_bias: Annotated[bool, WEIGHT_MEANING] = False,
        rope_theta: Annotated[float, WEIGHT_MEANING] = 10000.0,
        rms_norm_eps: Annotated[float, WEIGHT_MEANING] = 1e-6,
        tie_word_embeddings: Annotated[bool, WEIGHT_MEANING] = True,
        is_encoder_decoder: Annotated[bool, WEIGHT_MEANING] = False,
        num_decoder_layers: Annotated[int | None, WEIGHT_MEANING] = None,
        decoder_attention_type: Annotated[str | list[str] | None, WEIGHT_MEANING] = None,
        cross_attention_type: Annotated[str, WEIGHT_MEANING] = "softmax",
        fast_weight: FastWeightLayerOptions | dict | None = None,
        softmax_attention: SoftmaxAttentionOptions | dict | None = None,
        hebbian_memory: HebbianMemoryOptions | dict | None = None,
        feature_maps: dict[str, OptionGroup | dict] | None = None,
        chunk_size: int = 64,
        max_position_embeddings: int | None = None,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        legacy = {key: kwargs.pop(key) for key in list(kwargs) if key in LEGACY_FLAT_KEYS}
        groups = nest_legacy_keys(
            {"fast_weight": fast_weight, "softmax_attention": softmax_attention, "hebbian_memory": hebbian_memory,
             FEATURE_MAPS_KEY: feature_maps, **legacy},
            kinds_of_model(attention_type, decoder_attention_type, is_encoder_decoder),
        )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            kwargs.setdefault(name, None)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.attention_type = list(attention_type) if isinstance(attention_type, (list, tuple)) else attention_type
        self.hidden_act = hidden_act
        self.head_dim = head_dim
        self.attention_bias = attention_bias
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.is_encoder_decoder = is_encoder_decoder
        self.num_decoder_layers = num_hidden_layers if num_decoder_layers is None else num_decoder_layers
        if isinstance(decoder_attention_type, (list, tuple)):
            decoder_attention_type = list(decoder_attention_type)
        self.decoder_attention_type = decoder_attention_type
        self.cross_attention_type = cross_attention_type
        for key in LAYER_OPTION_GROUPS:
            setattr(self, key, groups[key])
        self.feature_maps = groups[FEATURE_MAPS_KEY]
        self._validate_group_fields()  # before the resolutions below read them
        self.chunk_size = chunk_size
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        # Resolved as transformers' own configs do (Llama, Qwen): generic code (cache shape checks, serving engines
        # sizing key/value caches) reads it as a number. None in an older config.json means the same.
        self.num_key_value_heads = (self.softmax_attention.heads(num_attention_heads) if num_key_value_heads is None
                                    else num_key_value_heads)
        self._validate_fwp()
        self._resolve_max_position_embeddings()
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )

    def __setattr__(self, key: str, value: Any) -> None:
        # A group set from a dict (a load-time override, `config.fast_weight = {...}`) becomes the typed group;
        # a flat key of older configs has a place in a group now, and setting it would change nothing.
        if key in LAYER_OPTION_GROUPS:
            value = LAYER_OPTION_GROUPS[key].build(value, f"FWPConfig.{key}")
        elif key == FEATURE_MAPS_KEY:
            value = build_feature_maps(value)
        elif key in LEGACY_FLAT_KEYS:
            places = " and ".join("config." + ".".join(path) for path in LEGACY_FLAT_KEYS[key])
            raise AttributeError(f"FWPConfig.{key} is an option of a layer kind now: set {places}")
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """`PretrainedConfig.from_dict`, reading older flat keys (`LEGACY_FLAT_KEYS`) in `config_dict` and in
        the load-time overrides `kwargs`; an override of a group (``fast_weight={"conv_size": 2}``) changes
        only the fields it names. Overrides go through `__init__`'s validation."""
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if cls._is_config_key(key)}
        return super().from_dict(cls.merged_config_dict(config_dict, overrides), **kwargs)

    @classmethod
    def _is_config_key(cls, key: str) -> bool:
        return key in LEGACY_FLAT_KEYS or key in inspect.signature(cls.__init__).parameters

    @classmethod
    def merged_config_dict(cls, config_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """`config_dict` with `overrides` over it, both with their flat keys of older configs nested; a group
        override changes the fields it names (a feature map's, the fields of that map)."""

        def nested(values: dict[str, Any], kinds: set[str]) -> dict[str, Any]:
            values = {key: (value.to_dict() if isinstance(value, OptionGroup) else value)
                      for key, value in values.items()}
            return nest_legacy_keys(values, kinds, keep_objects=False)

        in_groups = {key: value for key, value in overrides.items()
                     if key in LEGACY_FLAT_KEYS or key in LAYER_OPTION_GROUPS or key == FEATURE_MAPS_KEY}
        merged = {**config_dict, **{key: value for key, value in overrides.items() if key not in in_groups}}
        kinds = kinds_of_model(merged.get("attention_type", "delta"), merged.get("decoder_attention_type"),
                               merged.get("is_encoder_decoder", False))
        merged = nested(merged, kinds)
        changes = nested(in_groups, kinds)
        for key in (*LAYER_OPTION_GROUPS, FEATURE_MAPS_KEY):
            change = changes.get(key)
            if change is None:
                continue
            if not isinstance(change, dict):
                raise ValueError(f"FWPConfig.{key} must be a dict of its options, got {change!r}")
            merged[key] = _merge_nested(merged.get(key) or {}, change)
        return merged

    def update_from_string(self, update_str: str) -> None:
        """``"key=value,key=value"`` (transformers' format), where a key is a top-level field, a flat key of
        older configs (``dpfp_nu``) or a dotted place in a group (``fast_weight.conv_size``,
        ``feature_maps.dpfp.nu``); values are parsed by the type of the current one. Validated as a whole."""
        overrides: dict[str, Any] = {}
        for item in update_str.split(","):
            key, _, text = item.partition("=")
            path = LEGACY_FLAT_KEYS[key][0] if key in LEGACY_FLAT_KEYS else tuple(key.split("."))
            current = self.to_dict()
            for part in path:
                if not isinstance(current, dict) or part not in current:
                    raise ValueError(f"key {key} isn't in the original config dict")
                current = current[part]
            value = _parse_like(text, current, key)
            if key in LEGACY_FLAT_KEYS:
                overrides[key] = value
            else:
                _merge_into(overrides, path, value)
        updated = type(self).from_dict(self.to_dict(), **overrides)
        self.__dict__.update(updated.__dict__)

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
        for key in LAYER_OPTION_GROUPS:
            output[key] = getattr(self, key).to_dict()
        # the maps with options (a map without any has nothing to save)
        output[FEATURE_MAPS_KEY] = {name: options.to_dict() for name, options in self.feature_maps.items()
                                    if options.field_names()}
        return output

    @property
    def softmax_head_dim(self) -> int:
        """Head size of the softmax layers (and of their rotary positions)."""
        heads = self.softmax_attention.num_heads
        return self.head_dim if heads is None else self.hidden_size // heads

    def options_of(self, kind: str) -> OptionGroup:
        """The option group that layers of type `kind` read (``config.fast_weight`` for ``"delta"``)."""
        return getattr(self, _GROUP_KEYS[TOKEN_MIXERS[kind].options])

    def layer_options(self, kind: str) -> dict[str, Any]:
        """The options that shape a layer of type `kind` under this config, with their values resolved (what
        its weights mean beyond the type; e.g. ``{"use_short_conv": True, "conv_size": 4, ...}``): the
        weight-meaning fields of its group that apply to it, head sizes and heads resolved, and the
        top-level options that its layer reads."""
        spec = TOKEN_MIXERS[kind]
        group = self.options_of(kind)
        options: dict[str, Any] = {
            name: getattr(group, name) for name in group.weight_meaning_fields()
            if group.option_applies(name, spec) and name not in ("feature_map", "attention_normalization")
        }
        if spec.layer == FAST_WEIGHT_LAYER:
            key_head_dim, value_head_dim = group.head_dims(self.head_dim)
            options.update(key_head_dim=key_head_dim, value_head_dim=value_head_dim,
                           key_value_heads=group.kv_heads(self.num_attention_heads), attention_bias=self.attention_bias)
            options.update(use_short_conv=(group.conv_size, group.conv_bias) if group.use_short_conv else None)
            del options["conv_size"], options["conv_bias"]
            if spec.key_normalization is not None:
                options["key_normalization"] = group.key_normalization_of(spec)
        elif spec.layer == SOFTMAX_ATTENTION_LAYER:
            options.update(num_heads=group.heads(self.num_attention_heads), head_dim=self.softmax_head_dim,
                           key_value_heads=self.num_key_value_heads, attention_bias=self.attention_bias)
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
    # What the weights mean: a load-time override of a `WEIGHT_MEANING_FIELDS` field would silently change
    # the function that a checkpoint's weights compute, so `FWPPreTrainedModel.from_pretrained` refuses it.
    # The list is derived (`weight_meaning_fields`): the top-level fields annotated WEIGHT_MEANING in
    # `__init__`, and the group fields (``fast_weight.conv_size``, ``feature_maps.dpfp.nu``) whose `option`
    # declares it. Not in it, because they do not change the function of the same weights: chunk_size (a
    # kernel block length), max_position_embeddings (rotary positions are computed for any position), FAVOR+'s
    # seed (ω is saved with the weights) and redraw (training only), initializer_range, use_cache, token ids.
    # ------------------------------------------------------------------------------------------

    def weights_meaning(self) -> dict[str, Any]:
        """What a model with this config computes from its weights, layer by layer (from the registry).

        Two configs with equal `weights_meaning()` give the same function for the same weights; e.g.
        ``fast_weight.feature_map`` counts only where a layer lets the config choose φ, a map's options only
        where a layer uses that map, ``hebbian_memory`` only for Ba et al.'s memory, `rope_theta` only for
        rotary layers.
        """

        def layer(kind: str) -> tuple:
            spec = TOKEN_MIXERS[kind]
            feature_map = spec.feature_map_name(self)
            phi = None
            if feature_map is not None:
                map_options = self.feature_maps[feature_map]
                phi = (feature_map, tuple((name, getattr(map_options, name))
                                          for name in map_options.weight_meaning_fields()))
            rope = self.rope_theta if spec.uses_rotary else None
            options = tuple(sorted(self.layer_options(kind).items()))
            return kind, phi, spec.normalizes(self), rope, options

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

    def field_value(self, name: str) -> Any:
        """The value of a `WEIGHT_MEANING_FIELDS` name: a top-level field, ``group.field`` or
        ``feature_maps.map.field``."""
        path = name.split(".")
        value = getattr(self, path[0], None)
        for part in path[1:]:
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        return value

    def with_field(self, name: str, value: Any) -> FWPConfig:
        """A copy of this config with field `name` (as in `field_value`) set to `value`, unvalidated."""
        changed = copy.deepcopy(self)
        path = name.split(".")
        if len(path) == 1:
            setattr(changed, name, value)
            return changed
        target = getattr(changed, path[0])
        for part in path[1:-1]:
            target = target[part] if isinstance(target, dict) else getattr(target, part)
        setattr(target, path[-1], value)
        return changed

    def weight_meaning_changes(self, other: FWPConfig) -> list[str]:
        """The `WEIGHT_MEANING_FIELDS` whose value in `other` changes what this config's weights compute."""
        if self.weights_meaning() == other.weights_meaning():
            return []
        changed = []
        for name in self.WEIGHT_MEANING_FIELDS:
            if self.field_value(name) == other.field_value(name):
                continue
            try:
                matters = self.with_field(name, other.field_value(name)).weights_meaning() != self.weights_meaning()
            except (TypeError, ValueError, KeyError, IndexError, AttributeError):  # e.g. a layer count without its list
                matters = True
            if matters:
                changed.append(name)
        return changed or [name for name in self.WEIGHT_MEANING_FIELDS
                           if self.field_value(name) != other.field_value(name)]

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
            overrides = {key: value for key, value in load_kwargs.items() if cls._is_config_key(key)}
            if not overrides:
                return
            source = f"the override(s) {', '.join(f'{key}={value!r}' for key, value in overrides.items())}"
            try:
                requested = cls.from_dict(saved_dict, **overrides)
            except ValueError as error:  # e.g. fewer softmax heads than the saved num_key_value_heads
                changed = list(overrides)
                raise ValueError(
                    f"loading {pretrained_model_name_or_path!s} with {source} changes {', '.join(changed)}, "
                    f"which would change what its weights compute, into a config that is not even valid ({error}); "
                    "load it without that change, or build a new model with from_config and train it"
                ) from error
        changed = saved.weight_meaning_changes(requested)
        if changed:
            details = "; ".join(
                f"{name}={saved.field_value(name)!r} saved, {requested.field_value(name)!r} requested"
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
        """Every top-level numeric or boolean field has the right type (a ValueError naming it, never a raw
        TypeError)."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "chunk_size", "max_position_embeddings", "num_decoder_layers"):
            value = getattr(self, name)
            if name == "max_position_embeddings" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                allowed = " (or None: no positional limit)" if name == "max_position_embeddings" else ""
                raise ValueError(f"FWPConfig.{name} must be a positive integer, got {value!r}{allowed}")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"FWPConfig.{name} must be a number (int or float), got {value!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FWPConfig.{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(
                f"FWPConfig.initializer_range must be a finite number >= 0, got {self.initializer_range!r}"
            )
        for name in ("use_cache", "is_encoder_decoder", "attention_bias"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"FWPConfig.{name} must be True or False, got {value!r}")
        for name in ("hidden_act", "cross_attention_type"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"FWPConfig.{name} must be a string, got {value!r}")
        for name in ("num_key_value_heads",):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"FWPConfig.{name} must be a positive integer or None, got {value!r}")
        head_dim = self.__dict__.get("_head_dim")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0):
            raise ValueError(f"FWPConfig.head_dim must be a positive integer or None, got {head_dim!r}")

    def _head_counts_that_must_divide_hidden_size(self) -> dict[str, int]:
        """``{field: heads}`` for every head count whose layers have head size ``hidden_size // heads``."""
        counts = {}
        cross_kinds = {self.cross_attention_type} if self.is_encoder_decoder else set()
        for kind in set(self.self_attention_types) | cross_kinds:
            layer = TOKEN_MIXERS[kind].layer
            if layer == SOFTMAX_ATTENTION_LAYER and self.softmax_attention.num_heads is not None:
                counts["softmax_attention.num_heads"] = self.softmax_attention.num_heads
            elif self.__dict__.get("_head_dim") is not None:
                continue  # an explicit head_dim (Ba et al.'s memory is checked on its own)
            elif (layer != FAST_WEIGHT_LAYER or self.fast_weight.key_head_dim is None
                  or self.fast_weight.value_head_dim is None):
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
                f"FWPConfig: {', '.join(map(repr, hebbian))} layers need "
                f"num_attention_heads ({self.num_attention_heads}) × head_dim ({self.head_dim}) "
                f"== hidden_size ({self.hidden_size})"
            )

    def _validate_group_fields(self) -> None:
        for key in LAYER_OPTION_GROUPS:
            getattr(self, key).validate(f"FWPConfig.{key}")
        for name, options in self.feature_maps.items():
            options.validate(f"FWPConfig.{FEATURE_MAPS_KEY}.{name}")

    def _validate_groups(self) -> None:
        """Each option group validates its fields; then its layer options (off by default) must be used by
        some layer of the model (the group ↔ registry link: `TokenMixerSpec.options`,
        `OptionGroup.option_applies`)."""
        self._validate_group_fields()
        specs = [TOKEN_MIXERS[kind] for kind in self.self_attention_types]
        set_options = {f"{key}.{name}": any(group.option_applies(name, spec) for spec in specs)
                       for key in LAYER_OPTION_GROUPS
                       for group in (getattr(self, key),) for name in group.changed_layer_options()}
        if self.attention_bias:
            set_options["attention_bias"] = any(s.layer in (FAST_WEIGHT_LAYER, SOFTMAX_ATTENTION_LAYER) for s in specs)
        if self.is_encoder_decoder and set_options:
            raise ValueError(
                f"FWPConfig: {', '.join(set_options)} are options of decoder-only models (FWPForCausalLM); "
                "the encoder–decoder model does not take them"
            )
        unused = [name for name, used in set_options.items() if not used]
        if unused:
            raise ValueError(
                f"FWPConfig: {', '.join(f'{name}={self.field_value(name)!r}' for name in unused)} would change no "
                f"layer of this model (attention types {sorted(set(self.self_attention_types))}); leave them at "
                "their defaults"
            )
        has_softmax_layers = any(s.layer == SOFTMAX_ATTENTION_LAYER for s in specs)
        softmax_heads = self.softmax_attention.heads(self.num_attention_heads)
        if has_softmax_layers and self.num_key_value_heads is not None and softmax_heads % self.num_key_value_heads:
            heads = self._softmax_heads_field()
            raise ValueError(
                f"FWPConfig.{heads} ({softmax_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}) (grouped-query attention)"
            )
        kv_heads = self.fast_weight.key_value_heads
        if kv_heads is not None and self.num_attention_heads % kv_heads:
            raise ValueError(
                f"FWPConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"fast_weight.key_value_heads ({kv_heads})"
            )

    def _validate_feature_maps(self) -> None:
        feature_map = self.fast_weight.feature_map
        if feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"FWPConfig.fast_weight.feature_map {feature_map!r} is unknown; allowed: {_allowed(FEATURE_MAPS)}"
            )
        for kind in dict.fromkeys(self.self_attention_types):
            spec = TOKEN_MIXERS[kind]
            if spec.layer != FAST_WEIGHT_LAYER or self.fast_weight.key_normalization_of(spec) != "sum":
                continue
            if not FEATURE_MAPS[spec.feature_map_name(self)].nonnegative:
                raise ValueError(
                    f"FWPConfig: {kind!r} layers sum-normalise φ (φ/Σφ), which needs φ ≥ 0, but feature_map "
                    f"{spec.feature_map_name(self)!r} can be negative; set fast_weight.key_normalization='l2' or a "
                    "fast_weight.feature_map from "
                    f"{_allowed(tuple(n for n, m in FEATURE_MAPS.items() if m.nonnegative))}"
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
        self._validate_groups()
        self._validate_head_dim()
        for field, heads in self._head_counts_that_must_divide_hidden_size().items():
            hint = (" (or give fast_weight.key_head_dim and value_head_dim for a model of fast-weight layers only)"
                    if field == "num_attention_heads" else "")
            if self.hidden_size % heads:
                raise ValueError(
                    f"FWPConfig.hidden_size ({self.hidden_size}) must be divisible by {field} ({heads}){hint}"
                )
        self._validate_feature_maps()
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"FWPConfig.hidden_act {self.hidden_act!r} is unknown; allowed: {_allowed(HIDDEN_ACTIVATIONS)}"
            )
        rotary = self.rotary_attention_types
        if rotary and self.softmax_head_dim % 2:
            heads = self._softmax_heads_field()
            raise ValueError(
                f"FWPConfig: {', '.join(map(repr, rotary))} layers use rotary positions, which need an even head size, "
                f"but hidden_size ({self.hidden_size}) / {heads} "
                f"({self.softmax_attention.heads(self.num_attention_heads)}) = "
                f"{self.softmax_head_dim}; choose hidden_size and {heads} with an even quotient"
            )

    def _softmax_heads_field(self) -> str:
        """The field that sets the softmax layers' query heads (for error messages)."""
        return "softmax_attention.num_heads" if self.softmax_attention.num_heads is not None else "num_attention_heads"


_GROUP_KEYS: dict[type[OptionGroup], str] = {group: key for key, group in LAYER_OPTION_GROUPS.items()}


def weight_meaning_fields() -> tuple[str, ...]:
    """The fields that fix what weights compute: top-level fields annotated WEIGHT_MEANING in
    `FWPConfig.__init__`, then ``group.field`` and ``feature_maps.map.field`` for group fields declared so."""
    parameters = inspect.signature(FWPConfig.__init__, eval_str=True).parameters.values()
    top_level = [p.name for p in parameters if WEIGHT_MEANING in getattr(p.annotation, "__metadata__", ())]
    in_groups = [f"{key}.{name}" for key, group in LAYER_OPTION_GROUPS.items()
                 for name in group.weight_meaning_fields()]
    in_maps = [f"{FEATURE_MAPS_KEY}.{map_name}.{name}" for map_name, spec in FEATURE_MAPS.items()
               for name in spec.options.weight_meaning_fields()]
    return tuple(top_level + in_groups + in_maps)


FWPConfig.WEIGHT_MEANING_FIELDS = weight_meaning_fields()


def kinds_of_model(attention_type: Any, decoder_attention_type: Any, is_encoder_decoder: Any) -> set[str]:
    """The self-attention types named by these (unvalidated) fields."""
    kinds = set()
    for value in (attention_type, decoder_attention_type if is_encoder_decoder else None):
        if isinstance(value, str):
            kinds.add(value)
        elif isinstance(value, (list, tuple)):
            kinds.update(kind for kind in value if isinstance(kind, str))
    return kinds


def build_feature_maps(value: Any) -> dict[str, OptionGroup]:
    """``FWPConfig.feature_maps``: every `FEATURE_MAPS` entry's options, from a dict ``{map: options or dict}``
    of those given (the others default)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"FWPConfig.{FEATURE_MAPS_KEY} must be a dict {{feature map: its options}}, got {value!r}")
    refuse_unknown_keys(value, tuple(FEATURE_MAPS), f"FWPConfig.{FEATURE_MAPS_KEY}", "feature map")
    return {name: spec.options.build(value.get(name), f"FWPConfig.{FEATURE_MAPS_KEY}.{name}")
            for name, spec in FEATURE_MAPS.items()}


def nest_legacy_keys(values: dict[str, Any], kinds: set[str], keep_objects: bool = True) -> dict[str, Any]:
    """`values` with the flat keys of older configs (`LEGACY_FLAT_KEYS`) moved to their places in the groups.

    A flat key with several places (``attention_output_bias``: the fast-weight and the softmax layers') goes
    to the groups of the layer kinds in `kinds` (all of them if none is there, so that validation names an
    unused option). With `keep_objects` (the constructor) the groups come back built (`OptionGroup`s), else
    as dicts (a config dict)."""
    values = dict(values)
    legacy = {key: values.pop(key) for key in list(values) if key in LEGACY_FLAT_KEYS}
    groups: dict[str, dict[str, Any]] = {}
    for key in (*LAYER_OPTION_GROUPS, FEATURE_MAPS_KEY):
        given = values.get(key)
        if isinstance(given, OptionGroup):
            given = given.to_dict()
        elif key == FEATURE_MAPS_KEY and isinstance(given, dict):
            given = {name: (o.to_dict() if isinstance(o, OptionGroup) else o) for name, o in given.items()}
        groups[key] = copy.deepcopy(given) if given is not None else {}
    used_groups = {_GROUP_KEYS[TOKEN_MIXERS[kind].options] for kind in kinds if kind in TOKEN_MIXERS}
    for key, value in legacy.items():
        places = LEGACY_FLAT_KEYS[key]
        if len(places) > 1 and any(path[0] in used_groups for path in places):
            places = tuple(path for path in places if path[0] in used_groups)
        for path in places:
            target = groups[path[0]]
            if not isinstance(target, dict):
                raise ValueError(f"FWPConfig.{path[0]} must be a dict of its options, got {target!r}")
            given = target
            for part in path[1:]:
                given = given.get(part, _MISSING) if isinstance(given, dict) else _MISSING
            if given is not _MISSING and given is not value and given != value:
                raise ValueError(
                    f"FWPConfig: {key}={value!r} (a flat key of older configs) and {'.'.join(path)}={given!r} are "
                    "both given; give one of them"
                )
            _merge_into(target, path[1:], value)
    for key in LAYER_OPTION_GROUPS:
        values[key] = LAYER_OPTION_GROUPS[key].build(groups[key], f"FWPConfig.{key}") if keep_objects else groups[key]
    maps = groups[FEATURE_MAPS_KEY]
    values[FEATURE_MAPS_KEY] = build_feature_maps(maps) if keep_objects else maps
    return values


_MISSING = object()


def _merge_into(target: dict[str, Any], path: tuple[str, ...] | list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"FWPConfig: {'.'.join(path)} is not a place in a group of options")
    target[path[-1]] = value


def _merge_nested(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`base` with `change` over it, dicts merged key by key (a feature map's options field by field)."""
    merged = copy.deepcopy(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "rope_scaling":
            merged[key] = _merge_nested(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_like(text: str, current: Any, key: str) -> Any:
    """`text` as a value of the type of `current` (transformers' `update_from_string` rules; None: JSON)."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "y", "yes"):
            return True
        if text.lower() in ("false", "0", "n", "no"):
            return False
        raise ValueError(f"can't derive true or false from {text} (key {key})")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


__all__ = ["DEFAULT_MAX_POSITION_EMBEDDINGS", "FWPConfig", "ROPE_SCALING_TYPES", "WEIGHT_MEANING"]
