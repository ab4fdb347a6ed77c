"""Option groups of `FWPConfig`: the options of each layer kind, typed, validated and declared once.

`FWPConfig` keeps the model-level and transformers-standard fields at its top level and one nested group
per layer kind (`TokenMixerSpec.options` names the group of each registry entry):

- `FastWeightLayerOptions` (``config.fast_weight``): the sum and delta rules' layer,
- `SoftmaxAttentionOptions` (``config.softmax_attention``): softmax attention,
- `HebbianMemoryOptions` (``config.hebbian_memory``): Ba et al.'s memory (λ, η, S),

plus ``config.feature_maps``, the options of each feature map φ (`feature_maps_fwp.FEATURE_MAPS`).

Every field says, in its metadata (`option`), how it is checked, whether it changes what the weights compute
(so `FWPConfig.WEIGHT_MEANING_FIELDS` is derived from the groups), and whether it is a decoder-only layer
option that is off by default (refused where no layer of the model would use it). A group validates itself
(`OptionGroup.validate`) with errors that name ``FWPConfig.<group>.<field>``, what is wrong and what is allowed.

`LEGACY_FLAT_KEYS` maps the flat keys of configs written before the groups (``dpfp_nu``, ``use_short_conv``,
...) to their place in a group: `FWPConfig` reads them from ``config.json``, constructor arguments,
``from_pretrained`` overrides and ``--config_overrides``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

# Metadata keys of an option field.
CHECK = "check"  # value -> None when fine, else what is allowed ("must be ...")
WEIGHT_MEANING = "weight_meaning"  # a change alters the function the same weights compute
LAYER_OPTION = "layer_option"  # decoder-only, off by default: refused where no layer of the model uses it
APPLIES = "applies"  # TokenMixerSpec -> whether a layer of that entry uses the option (LAYER_OPTION fields)

Check = Callable[[Any], "str | None"]


def option(default: Any, *, check: Check, weight_meaning: bool, layer_option: bool = False,
           applies: Callable[[Any], bool] | None = None) -> Any:
    """A dataclass field of an option group with its check and its declarations (see the module docstring)."""
    metadata = {CHECK: check, WEIGHT_MEANING: weight_meaning, LAYER_OPTION: layer_option, APPLIES: applies}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------------------------
# Checks: None when the value is fine, else "must be ..." (what is allowed)
# ----------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def integer(value: Any) -> str | None:
    return None if _is_int(value) else "must be an integer"


def positive_integer(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else "must be a positive integer"


def positive_integer_or_none(value: Any) -> str | None:
    return None if value is None or (_is_int(value) and value > 0) else "must be a positive integer or None"


def integer_at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        return None if _is_int(value) and value >= minimum else f"must be an integer >= {minimum}"
    return check


def string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def one_of(*allowed: Any, note: str = "") -> Check:
    def check(value: Any) -> str | None:
        if (value is None or isinstance(value, str)) and value in allowed:
            return None
        return f"is unknown; allowed: {', '.join(repr(a) for a in allowed)}{note}"
    return check


def number_in_interval(low: float, high: float | None) -> Check:
    """A finite int or float in ``(low, high]`` (``high`` None: no upper bound)."""
    interval = f"in ({low:g}, {high:g}]" if high is not None else f"> {low:g}"

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number (int or float)"
        if not math.isfinite(value) or value <= low or (high is not None and value > high):
            return f"must be {interval}"
        return None
    return check


# The activations of the MLP (and of what a pretrained model's MLP may use): one list for the config and
# the linearizer.
HIDDEN_ACTIVATIONS = ("silu", "gelu", "relu")

# `SoftmaxAttentionOptions.rope_scaling` types: transformers' ROPE_INIT_FUNCTIONS whose frequencies do not
# depend on the sequence length (so they are computed once, as the pretrained model's rotary embedding does).
ROPE_SCALING_TYPES = ("default", "linear", "llama3", "yarn")


def rope_scaling_parameters(value: Any) -> str | None:
    if value is None or (isinstance(value, dict) and value.get("rope_type") in ROPE_SCALING_TYPES):
        return None
    return ("must be None or transformers' rope parameters with rope_type in "
            f"{', '.join(repr(t) for t in ROPE_SCALING_TYPES)}")


# ----------------------------------------------------------------------------------------------
# The base class
# ----------------------------------------------------------------------------------------------


@dataclass
class OptionGroup:
    """A group of options, one dataclass field each (declared with `option`)."""

    @classmethod
    def build(cls, value: Any, where: str) -> OptionGroup:
        """The group from None (all defaults), a group (copied) or a dict of field values (a config.json's
        nested object); `where` (``"FWPConfig.fast_weight"``) names it in errors."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return cls(**value.to_dict())
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a dict of its options (or None), got {value!r}")
        refuse_unknown_keys(value, cls.field_names(), where, "option")
        return cls(**value)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def weight_meaning_fields(cls) -> tuple[str, ...]:
        """The fields declared to change what the weights compute."""
        return tuple(f.name for f in fields(cls) if f.metadata[WEIGHT_MEANING])

    @classmethod
    def layer_option_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata[LAYER_OPTION])

    @classmethod
    def option_applies(cls, name: str, spec: Any) -> bool:
        """Whether a layer of registry entry `spec` uses option `name` of this group."""
        applies = next(f for f in fields(cls) if f.name == name).metadata[APPLIES]
        return spec.options is cls and (applies is None or applies(spec))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _copy_value(getattr(self, f.name)) for f in fields(self)}

    def changed_layer_options(self) -> list[str]:
        """The layer options (`LAYER_OPTION`) set to something other than their (off) default."""
        defaults = type(self)()
        return [name for name in self.layer_option_fields() if getattr(self, name) != getattr(defaults, name)]

    def validate(self, where: str) -> None:
        """A ValueError naming ``<where>.<field>`` for the first field whose value is not allowed."""
        for f in fields(self):
            value = getattr(self, f.name)
            problem = f.metadata[CHECK](value)
            if problem is not None:
                # "is unknown; allowed: ..." reads after the value, "must be ..." before it
                if problem.startswith("is "):
                    raise ValueError(f"{where}.{f.name} {value!r} {problem}")
                raise ValueError(f"{where}.{f.name} {problem}, got {value!r}")


def refuse_unknown_keys(given: dict[str, Any], allowed: Any, where: str, what: str) -> None:
    """A ValueError naming the keys of `given` that are not in `allowed` (``"<where> has unknown <what>(s) ...;
    allowed: ..."``)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where} has unknown {what}(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(map(repr, allowed)) or 'none'}"
        )


def _copy_value(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


# ----------------------------------------------------------------------------------------------
# The groups of the layer kinds
# ----------------------------------------------------------------------------------------------


def _has_key_normalization(spec: Any) -> bool:
    return spec.key_normalization is not None


def _has_beta(spec: Any) -> bool:
    return "beta" in spec.gates


def _has_softmax_window(spec: Any) -> bool:
    return spec.softmax_window


@dataclass
class FastWeightLayerOptions(OptionGroup):
    """Options of the fast-weight layer (sum and delta rules; `layers_fwp.FWPFastWeightAttention`).

    feature_map: φ of the entries that let the config choose it (the delta rules), a `FEATURE_MAPS` name.
    attention_normalization: the sum rules divide the read by z_t·φ(q_t), z_t = Σ φ(k_τ).
    The rest are what flash-linear-attention's DeltaNet / Gated DeltaNet layers and pretrained attention
    layers use (`conversion.fla`, `conversion.linearize`), all off by default, decoder-only models:
    key_head_dim, value_head_dim: per-head size of q/k (before φ) and of v (default: the config's
    `head_dim`); the state is ``d_dot × value_head_dim``. key_value_heads: k/v heads, each repeated for its
    group of query heads like grouped-query attention (default: one per query head).
    use_short_conv, conv_size, conv_bias: a depthwise causal convolution of width `conv_size` over time on
    q, k and v before φ (its last inputs are carried in the cache). value_activation: ``"silu"`` on v.
    key_normalization: the delta rules' ``"sum"`` (φ/Σφ, Schlag et al.; the rule's own when None) or
    ``"l2"`` (φ/|φ|₂, FLA's). scale_queries: φ(q)·d_dot^{-1/2} after normalisation. allow_neg_eigval:
    β = 2·sigmoid(·) ∈ (0, 2). output_norm: per-head RMSNorm of the read. output_gate: the read times
    SiLU(W_g x) per head. output_bias: a bias on the output projection. qk_norm: per-head RMSNorm of q and k
    right after their projection.
    window_size: the exact softmax window of the entries that mix one (`TokenMixerSpec.softmax_window`,
    ``hedgehog_window``): w tokens, the query's own included (LoLCATs' default: 64).
    """

    feature_map: str = option("dpfp", check=string, weight_meaning=True)
    attention_normalization: bool = option(True, check=boolean, weight_meaning=True)
    key_head_dim: int | None = option(None, check=positive_integer_or_none, weight_meaning=True, layer_option=True)
    value_head_dim: int | None = option(None, check=positive_integer_or_none, weight_meaning=True, layer_option=True)
    key_value_heads: int | None = option(None, check=positive_integer_or_none, weight_meaning=True,
                                         layer_option=True)
    use_short_conv: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    conv_size: int = option(4, check=integer_at_least(1), weight_meaning=True)
    conv_bias: bool = option(False, check=boolean, weight_meaning=True)
    value_activation: str | None = option(None, check=one_of(None, "silu"), weight_meaning=True, layer_option=True)
    key_normalization: str | None = option(
        None, check=one_of(None, "sum", "l2", note=" (None: the rule's own)"), weight_meaning=True,
        layer_option=True, applies=_has_key_normalization,
    )
    scale_queries: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    allow_neg_eigval: bool = option(False, check=boolean, weight_meaning=True, layer_option=True, applies=_has_beta)
    output_norm: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    output_gate: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    output_bias: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    qk_norm: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    window_size: int = option(64, check=positive_integer, weight_meaning=True, applies=_has_softmax_window)

    def feature_map_of(self, spec: Any) -> str:
        """The φ of a layer of registry entry `spec`: the entry's own, or `feature_map` where it lets the
        config choose."""
        return self.feature_map if spec.feature_map is None else spec.feature_map

    def key_normalization_of(self, spec: Any) -> str | None:
        """The key normalisation of a layer of `spec`: None for entries that do not normalise, else
        `key_normalization` or (when None) the entry's own."""
        if spec.key_normalization is None:
            return None
        return self.key_normalization or spec.key_normalization

    def head_dims(self, head_dim: int) -> tuple[int, int]:
        """``(key_head_dim, value_head_dim)`` with `head_dim` (the config's) for those not given."""
        return (head_dim if self.key_head_dim is None else self.key_head_dim,
                head_dim if self.value_head_dim is None else self.value_head_dim)

    def kv_heads(self, num_heads: int) -> int:
        return num_heads if self.key_value_heads is None else self.key_value_heads

    def qkv_widths(self, num_heads: int, head_dim: int) -> tuple[int, int, int]:
        """Widths of q, k and v in the layer's fused projection (and its short convolution)."""
        key_dim, value_dim = self.head_dims(head_dim)
        kv_heads = self.kv_heads(num_heads)
        return num_heads * key_dim, kv_heads * key_dim, kv_heads * value_dim

    def short_conv_channels(self, num_heads: int, head_dim: int) -> int:
        """Channels of the short convolution over q, k, v (0 without one): its weight and its cache window."""
        return sum(self.qkv_widths(num_heads, head_dim)) if self.use_short_conv else 0


@dataclass
class SoftmaxAttentionOptions(OptionGroup):
    """Options of softmax attention layers (decoder-only models; what pretrained Llama / Mistral / Qwen
    attention layers have, `conversion.linearize`), all off by default:
    num_heads: their query heads (default: the config's `num_attention_heads`), each of size
    ``hidden_size // num_heads``. sliding_window: a query sees itself and the `sliding_window` − 1 previous
    tokens. rope_scaling: transformers' rope parameters other than the default (``{"rope_type": "llama3",
    ...}``). output_bias: a bias on the output projection. qk_norm: per-head RMSNorm of q and k (Qwen3).
    """

    num_heads: int | None = option(None, check=positive_integer_or_none, weight_meaning=True, layer_option=True)
    sliding_window: int | None = option(None, check=positive_integer_or_none, weight_meaning=True,
                                        layer_option=True)
    rope_scaling: dict | None = option(None, check=rope_scaling_parameters, weight_meaning=True, layer_option=True)
    output_bias: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)
    qk_norm: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)

    def heads(self, num_attention_heads: int) -> int:
        return num_attention_heads if self.num_heads is None else self.num_heads


@dataclass
class HebbianMemoryOptions(OptionGroup):
    """Ba et al.'s decaying Hebbian memory ``A_t = λ A_{t−1} + η h_t h_tᵀ``, read by S inner-loop steps:
    decay λ ∈ (0, 1], learning_rate η > 0, inner_steps S ≥ 0."""

    decay: float = option(0.95, check=number_in_interval(0.0, 1.0), weight_meaning=True)
    learning_rate: float = option(0.5, check=number_in_interval(0.0, None), weight_meaning=True)
    inner_steps: int = option(1, check=integer_at_least(0), weight_meaning=True)


# The config attribute of each layer group (``config.fast_weight`` ...).
LAYER_OPTION_GROUPS: dict[str, type[OptionGroup]] = {
    "fast_weight": FastWeightLayerOptions,
    "softmax_attention": SoftmaxAttentionOptions,
    "hebbian_memory": HebbianMemoryOptions,
}
# The config attribute holding each feature map's options (``config.feature_maps["dpfp"].nu``).
FEATURE_MAPS_KEY = "feature_maps"


# Configs written before the groups had flat keys: each maps to its place, a path
# ``(group, field)`` or ``("feature_maps", map, field)``. A key with several places (an option that both
# softmax and fast-weight layers have) goes to those of the layer kinds the model has.
LEGACY_FLAT_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    "feature_map": (("fast_weight", "feature_map"),),
    "attention_normalization": (("fast_weight", "attention_normalization"),),
    "key_head_dim": (("fast_weight", "key_head_dim"),),
    "value_head_dim": (("fast_weight", "value_head_dim"),),
    "fast_weight_key_value_heads": (("fast_weight", "key_value_heads"),),
    "use_short_conv": (("fast_weight", "use_short_conv"),),
    "conv_size": (("fast_weight", "conv_size"),),
    "conv_bias": (("fast_weight", "conv_bias"),),
    "value_activation": (("fast_weight", "value_activation"),),
    "key_normalization": (("fast_weight", "key_normalization"),),
    "scale_queries": (("fast_weight", "scale_queries"),),
    "allow_neg_eigval": (("fast_weight", "allow_neg_eigval"),),
    "output_norm": (("fast_weight", "output_norm"),),
    "output_gate": (("fast_weight", "output_gate"),),
    "attention_output_bias": (("fast_weight", "output_bias"), ("softmax_attention", "output_bias")),
    "use_qk_norm": (("fast_weight", "qk_norm"), ("softmax_attention", "qk_norm")),
    "softmax_num_heads": (("softmax_attention", "num_heads"),),
    "sliding_window": (("softmax_attention", "sliding_window"),),
    "rope_scaling_parameters": (("softmax_attention", "rope_scaling"),),
    "fast_weights_decay": (("hebbian_memory", "decay"),),
    "fast_weights_learning_rate": (("hebbian_memory", "learning_rate"),),
    "fast_weights_inner_steps": (("hebbian_memory", "inner_steps"),),
    "dpfp_nu": ((FEATURE_MAPS_KEY, "dpfp", "nu"),),
    "performer_num_features": ((FEATURE_MAPS_KEY, "favor", "num_features"),),
    "performer_seed": ((FEATURE_MAPS_KEY, "favor", "seed"),),
    "performer_redraw": ((FEATURE_MAPS_KEY, "favor", "redraw"),),
}


__all__ = [
    "FEATURE_MAPS_KEY",
    "HIDDEN_ACTIVATIONS",
    "LAYER_OPTION_GROUPS",
    "LEGACY_FLAT_KEYS",
    "ROPE_SCALING_TYPES",
    "FastWeightLayerOptions",
    "HebbianMemoryOptions",
    "OptionGroup",
    "SoftmaxAttentionOptions",
    "option",
]
