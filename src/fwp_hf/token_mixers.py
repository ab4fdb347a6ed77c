"""The registry of token mixers: every `attention_type` of an FWP model, declared once as data.

Everything that depends on the attention type asks this registry — config validation and its
error messages, projection sizes, gates, feature maps, the cache kind, the encoder's non-causal
form, the model card, the benchmark, the comparison script and the tests' variant lists — so no
other module compares type names.

**Adding an update rule** is one kernel pair in `fast_weight_kernels.py` (a chunkwise and a
recurrent form with the family signature ``kernel(q, k, v, *, beta=None, log_decay=None,
initial_state=None, chunk_size=...) -> (y, final_state)``) and one `TokenMixerSpec` entry in
`TOKEN_MIXERS` below, plus a config in `configs/lm/` and its tests in `tests/conftest.py`'s lists.
A rule whose per-token inputs are β and/or a log-decay needs no model code: the generic
fast-weight layer projects the gates the entry names, and asks the entry which kernel to run
(`TokenMixerSpec.kernel`). A rule with an order-free form also names it (`bidirectional`, an
`OrderFreeKernel`: write the fast weights of a whole sequence, read them): encoders then run it, and
the decoder's cross-attention may use the type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .fast_weight_kernels import (
    BIDIRECTIONAL_SUM_RULE,
    chunk_delta_rule,
    chunk_fast_weights,
    chunk_sum_rule,
    chunk_window_sum_rule,
    recurrent_delta_rule,
    recurrent_fast_weights,
    recurrent_sum_rule,
    recurrent_window_sum_rule,
)
from .feature_maps_fwp import FEATURE_MAPS
from .options_fwp import FastWeightLayerOptions, HebbianMemoryOptions, OptionGroup, SoftmaxAttentionOptions

# Layer classes that run a mixer (`layers_fwp.MIXER_LAYERS` maps these to modules).
SOFTMAX_ATTENTION_LAYER = "softmax_attention"
FAST_WEIGHT_LAYER = "fast_weight"
HEBBIAN_MEMORY_LAYER = "hebbian_memory"

# What an encoder does with a mixer (`is_causal=False`).
ENCODER_BIDIRECTIONAL = "bidirectional"  # every token sees the whole source
ENCODER_LEFT_TO_RIGHT = "left_to_right"  # a recurrence with no order-free form: runs causally, documented

# Per-token gates a fast-weight layer can project (the kernel keyword of each).
GATES = ("beta", "log_decay")


@dataclass(frozen=True)
class TokenMixerSpec:
    """Declaration of one token mixer (one value of `FWPConfig.attention_type`).

    Attributes:
        name: the `attention_type` string.
        summary: one line for the README table, config docs and model cards.
        layer: the layer class that runs it (`SOFTMAX_ATTENTION_LAYER`, `FAST_WEIGHT_LAYER`,
            `HEBBIAN_MEMORY_LAYER`).
        options: its option group (`options_fwp`), the config's nested options its layers read.
        holds_state: True when the layer's cache is a fixed-size fast-weight state (else a growing
            key/value cache).
        feature_map: the φ it always uses, or None when ``config.fast_weight.feature_map`` chooses it.
        key_normalization: `"sum"` (φ/Σφ on keys and queries, Schlag et al.) or None; an entry that
            normalises lets ``config.fast_weight.key_normalization`` choose `"l2"` instead.
        gates: per-token inputs projected from x and passed to the kernel (`"beta"`, `"log_decay"`).
        attention_normalization: whether ``config.fast_weight.attention_normalization`` applies (divide the read
            by z·φ(q), z = Σ φ(k)).
        chunk, recurrent: the chunkwise (training, prefill) and recurrent (decoding) kernels.
        bidirectional: the order-free kernel (`fast_weight_kernels.OrderFreeKernel`: ``write(φ(K), V) -> S``,
            ``read(φ(Q), S)``) that encoders and the decoder's cross-attention use, or None.
        encoder_form: `ENCODER_BIDIRECTIONAL` or `ENCODER_LEFT_TO_RIGHT` (what a non-causal
            encoder layer of this type computes).
        uses_rotary: the layer rotates q and k by rotary position embeddings (rope θ and scaling count for it);
            unless it is a softmax-window layer, which counts its own positions, it reads the stack's rotary
            tables and 4D attention mask (`reads_stack_positions`).
        softmax_window: the layer mixes exact softmax attention over its last ``fast_weight.window_size``
            tokens (rotated q, k) with the fast-weight read of every older token under one normaliser
            (LoLCATs; `fast_weight_kernels.chunk_window_sum_rule`); its kernels take the rotated q, k, then v, and
            φ(q), φ(k) as ``q_features``, ``k_features``, and carry a `fast_weight_kernels.WindowState`.
    """

    name: str
    summary: str
    layer: str
    holds_state: bool
    options: type[OptionGroup]
    feature_map: str | None = None
    key_normalization: str | None = None
    gates: tuple[str, ...] = ()
    attention_normalization: bool = False
    chunk: Callable[..., Any] | None = None
    recurrent: Callable[..., Any] | None = None
    bidirectional: Callable[..., Any] | None = None
    encoder_form: str = ENCODER_BIDIRECTIONAL
    uses_rotary: bool = False
    softmax_window: bool = False

    @property
    def reads_stack_positions(self) -> bool:
        """Whether the stack must build rotary tables and a 4D attention mask for this layer (softmax attention).
        A softmax-window layer rotates at positions it counts itself and masks by its window, so a model of such
        layers builds neither (the mask over every past key would grow with the context)."""
        return self.uses_rotary and not self.softmax_window

    @property
    def has_attention_matrix(self) -> bool:
        """Whether the mixer computes a T×T attention matrix it can return (softmax attention); mixers
        that hold a fast-weight state have none (their ``attentions`` entries are None)."""
        return self.layer == SOFTMAX_ATTENTION_LAYER

    def kernel(self, seq_len: int, causal: bool = True) -> Callable[..., Any]:
        """The kernel a layer of this type runs on `seq_len` new tokens: the order-free form
        (`bidirectional`) for a non-causal layer (an encoder, cross-attention) whose `encoder_form` is
        bidirectional; otherwise the chunkwise form for several tokens and the recurrent one for one
        (a recurrence with no order-free form runs left to right in an encoder too)."""
        if self.chunk is None:
            raise ValueError(f"attention type {self.name!r} runs no fast-weight kernel (its layer is {self.layer!r})")
        if not causal and self.encoder_form == ENCODER_BIDIRECTIONAL:
            return self.bidirectional
        return self.chunk if seq_len > 1 else self.recurrent

    @property
    def config_chooses_feature_map(self) -> bool:
        """Whether ``config.fast_weight.feature_map`` picks this mixer's φ (the delta rules)."""
        return self.layer == FAST_WEIGHT_LAYER and self.feature_map is None

    def feature_map_name(self, config) -> str | None:
        """The φ a layer of this type uses under `config` (None for mixers without one)."""
        if self.layer != FAST_WEIGHT_LAYER:
            return None
        return config.fast_weight.feature_map_of(self)

    def key_dim(self, config) -> int:
        """d_dot: the size of φ(k) (the head size for mixers without a feature map)."""
        feature_map = self.feature_map_name(config)
        if feature_map is None:
            return config.head_dim
        key_head_dim = config.fast_weight.head_dims(config.head_dim)[0]
        return FEATURE_MAPS[feature_map].output_dim(key_head_dim, config.feature_maps[feature_map])

    def value_dim(self, config) -> int:
        """The per-head size of v and of the read."""
        return config.fast_weight.head_dims(config.head_dim)[1] if self.layer == FAST_WEIGHT_LAYER else config.head_dim

    def normalizes(self, config) -> bool:
        """Whether the read is divided by its normaliser z·φ(q) under `config` (always for a softmax-window entry,
        whose normaliser is shared with the window's softmax)."""
        return self.softmax_window or (self.attention_normalization and config.fast_weight.attention_normalization)

    def state_shape(self, config) -> tuple[int, int] | None:
        """``(d_key, d_value)`` of one head's fast-weight state, or None for a key/value cache (a softmax-window
        entry's lagged ``[S | z]``: its window of keys and values comes on top)."""
        if not self.holds_state:
            return None
        return self.key_dim(config), self.value_dim(config) + int(self.normalizes(config))


_SUM_RULE = dict(
    layer=FAST_WEIGHT_LAYER,
    options=FastWeightLayerOptions,
    holds_state=True,
    attention_normalization=True,
    chunk=chunk_sum_rule,
    recurrent=recurrent_sum_rule,
    bidirectional=BIDIRECTIONAL_SUM_RULE,
    encoder_form=ENCODER_BIDIRECTIONAL,
)
_DELTA_RULE = dict(
    layer=FAST_WEIGHT_LAYER,
    options=FastWeightLayerOptions,
    holds_state=True,
    key_normalization="sum",
    chunk=chunk_delta_rule,
    recurrent=recurrent_delta_rule,
    encoder_form=ENCODER_LEFT_TO_RIGHT,
)

TOKEN_MIXERS: dict[str, TokenMixerSpec] = {
    spec.name: spec
    for spec in (
        TokenMixerSpec(
            "softmax", "causal softmax attention (SDPA, rotary positions) — the baseline",
            layer=SOFTMAX_ATTENTION_LAYER, holds_state=False, options=SoftmaxAttentionOptions, uses_rotary=True,
        ),
        TokenMixerSpec("linear", "sum rule (linear attention)", feature_map="elu", **_SUM_RULE),
        TokenMixerSpec("performer", "sum rule (Performer)", feature_map="favor", **_SUM_RULE),
        TokenMixerSpec("dpfp", "sum rule (DPFP)", feature_map="dpfp", **_SUM_RULE),
        TokenMixerSpec(
            "hedgehog", "sum rule with Hedgehog's learned softmax-mimicking feature map (Zhang et al. 2024)",
            feature_map="hedgehog", **_SUM_RULE,
        ),
        TokenMixerSpec(
            "hedgehog_window",
            "LoLCATs' mixer (Zhang et al. 2024): exact softmax attention over a sliding window of recent tokens plus "
            "Hedgehog linear attention over every older token, under one normaliser",
            layer=FAST_WEIGHT_LAYER, options=FastWeightLayerOptions, holds_state=True, feature_map="hedgehog",
            chunk=chunk_window_sum_rule, recurrent=recurrent_window_sum_rule, encoder_form=ENCODER_LEFT_TO_RIGHT,
            uses_rotary=True, softmax_window=True,
        ),
        TokenMixerSpec(
            "delta", "delta rule with learned per-token rates β (Schlag et al.)", gates=("beta",), **_DELTA_RULE
        ),
        TokenMixerSpec(
            "gated_delta",
            "gated delta rule: the delta rule with a learned per-token decay α = exp(g) (Yang et al. 2025)",
            gates=("beta", "log_decay"),
            **_DELTA_RULE,
        ),
        TokenMixerSpec(
            "fast_weights",
            "Ba et al.'s decaying Hebbian memory read by an inner loop with layer norm",
            layer=HEBBIAN_MEMORY_LAYER,
            holds_state=True,
            options=HebbianMemoryOptions,
            chunk=chunk_fast_weights,
            recurrent=recurrent_fast_weights,
            encoder_form=ENCODER_LEFT_TO_RIGHT,
        ),
    )
}

ATTENTION_TYPES: tuple[str, ...] = tuple(TOKEN_MIXERS)
FAST_WEIGHT_TYPES: tuple[str, ...] = tuple(name for name, spec in TOKEN_MIXERS.items() if spec.holds_state)
# Decoder → encoder attention: a mixer that can read a whole source at once.
CROSS_ATTENTION_TYPES: tuple[str, ...] = tuple(
    name for name, spec in TOKEN_MIXERS.items()
    if spec.bidirectional is not None or spec.layer == SOFTMAX_ATTENTION_LAYER
)


def growing_cache_types(kinds: Iterable[str]) -> list[str]:
    """The distinct layer types of `kinds`, in order, whose cache grows with the context (key/value caches)."""
    return [kind for kind in dict.fromkeys(kinds) if not TOKEN_MIXERS[kind].holds_state]


def every_layer_holds_state(kinds: Iterable[str]) -> bool:
    """True when every layer type in `kinds` keeps a fixed-size state (no key/value cache that grows)."""
    return all(TOKEN_MIXERS[kind].holds_state for kind in kinds)


def describe_token_mixer(config, name: str) -> str:
    """Short text of one layer type under `config`, e.g. ``"delta rule …, φ = DPFP(ν=1), d_dot = 32"``."""
    spec = TOKEN_MIXERS[name]
    feature_map = spec.feature_map_name(config)
    if feature_map is None:
        return spec.summary
    phi = FEATURE_MAPS[feature_map].label(config.feature_maps[feature_map])
    normalization = {"sum": ", sum-normalised", "l2": ", L2-normalised"}.get(
        config.fast_weight.key_normalization_of(spec), "")
    window = f", window = {config.fast_weight.window_size} tokens" if spec.softmax_window else ""
    return f"{spec.summary}; φ = {phi}{normalization}, d_dot = {spec.key_dim(config)}{window}"


__all__ = [
    "ATTENTION_TYPES",
    "CROSS_ATTENTION_TYPES",
    "FAST_WEIGHT_TYPES",
    "TOKEN_MIXERS",
    "TokenMixerSpec",
    "describe_token_mixer",
    "every_layer_holds_state",
    "growing_cache_types",
]
