"""What the model tests share: variant lists derived from the token-mixer registry, tiny configs,
model builders, tolerance checks and the `single_thread` fixture.

The variant lists are derived from `fwp_hf.TOKEN_MIXERS`, so an entry added to the registry is
picked up by every parametrised model test (kernels, modeling, generation, seq2seq, config) with no
edit here:

- `LM_VARIANTS` (decoder-only): one variant per attention type; an entry whose feature map comes
  from the config (`spec.feature_map is None` on a feature-map layer: the delta rules) gets one
  variant per `fwp_hf.FEATURE_MAPS` entry, named ``"<type>-<map>"``. Then `EXTRA_LM_VARIANTS`: settings
  that are options, not types (unnormalised linear attention, hybrids).
- `SEQ2SEQ_VARIANTS` (encoder–decoder): every type as encoder (and decoder); one variant per
  `CROSS_ATTENTION_TYPES` entry besides the default; a hybrid.

`TYPE_SETTINGS` holds the few non-default settings a type's variants run with (DPFP with ν = 2,
Ba et al. with two inner steps) so that those code paths are tested too; it is the one place that
names types.

Helpers are imported by the test modules (``from conftest import ...``). Modules opt in to one
intra-op thread with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from fwp_hf import (
    ATTENTION_TYPES,
    CROSS_ATTENTION_TYPES,
    FEATURE_MAPS,
    TOKEN_MIXERS,
    FastWeightCacheLayer,
    FWPConfig,
    FWPForCausalLM,
    FWPForConditionalGeneration,
)

# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------

VOCAB = 64
HIDDEN = 32
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
FAVOR_FEATURES = 8  # performer_num_features m: d_dot = 2m
CHUNK = 8
RTOL = 2e-5  # fp32: chunkwise and recurrent forms agree to ~1e-6 of the logit scale
PAD, EOS, START = 0, 1, 2  # special ids of the encoder–decoder configs

# `initializer_range` is raised from 0.02 to 0.2 so that the token mixers change the logits
# noticeably (with 0.02 the residual stream dominates, many checks would be weak and a tied model
# would just repeat its last input token in generation). Sequences of 10-40 tokens span several
# chunks of CHUNK tokens, so the chunkwise kernels carry states across chunk boundaries.
LM_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    chunk_size=CHUNK,
    performer_num_features=FAVOR_FEATURES,
    initializer_range=0.2,
)
# The encoder–decoder: 2 encoder layers, 3 decoder layers, shorter chunks (its sequences are shorter).
SEQ2SEQ_BASE = {**LM_BASE, "is_encoder_decoder": True, "num_decoder_layers": 3, "chunk_size": 4,
                "pad_token_id": PAD, "eos_token_id": EOS, "decoder_start_token_id": START}

# ----------------------------------------------------------------------------------------------
# Variants, from the registry
# ----------------------------------------------------------------------------------------------

def lm_config_from(settings: dict, **overrides) -> FWPConfig:
    kwargs = {**LM_BASE, **settings, **overrides}
    if isinstance(kwargs["attention_type"], list) and "num_hidden_layers" not in {**settings, **overrides}:
        kwargs["num_hidden_layers"] = len(kwargs["attention_type"])
    return AutoConfig.for_model("fwp", **kwargs)


# Non-default settings each type's variants run with (so that their code paths are covered).
TYPE_SETTINGS: dict[str, dict] = {
    "dpfp": dict(dpfp_nu=2),
    "fast_weights": dict(fast_weights_inner_steps=2),
    # a window narrower than the tests' sequences, so that the fast-weight part is read too
    "hedgehog_window": dict(fast_weight=dict(window_size=3)),
}


def config_picks_feature_map(name: str) -> bool:
    """Whether entry `name`'s φ is chosen by `config.fast_weight.feature_map` (the delta rules)."""
    return TOKEN_MIXERS[name].config_chooses_feature_map


def type_settings(name: str) -> dict:
    return {"attention_type": name, **TYPE_SETTINGS.get(name, {})}


# The fast-weight layer options flash-linear-attention's DeltaNet layers use (short convolutions, SiLU
# values, L2-normalised and scaled queries/keys, output RMSNorm and gate, β ∈ (0, 2), their own head
# sizes): the delta-rule variants of a φ that can be negative (FLA's q/k activations) run with all of them.
FLA_STYLE_SETTINGS = dict(
    key_normalization="l2", scale_queries=True, value_activation="silu", use_short_conv=True, conv_size=3,
    conv_bias=True, output_norm=True, output_gate=True, allow_neg_eigval=True, key_head_dim=6, value_head_dim=10,
)


def feature_map_settings(feature_map: str) -> dict:
    """A delta-rule variant's settings for φ = `feature_map`."""
    return {"feature_map": feature_map, **({} if FEATURE_MAPS[feature_map].nonnegative else FLA_STYLE_SETTINGS)}


def _type_variants() -> dict[str, dict]:
    variants = {}
    for name in TOKEN_MIXERS:
        if config_picks_feature_map(name):
            variants.update({f"{name}-{fm}": dict(type_settings(name), **feature_map_settings(fm))
                             for fm in FEATURE_MAPS})
        else:
            variants[name] = type_settings(name)
    return variants


# Options that are not types.
EXTRA_LM_VARIANTS: dict[str, dict] = {
    "linear-unnormalized": dict(attention_type="linear", attention_normalization=False),
    "hybrid": dict(attention_type=["delta", "softmax"]),
    "hybrid-all": dict(attention_type=list(ATTENTION_TYPES)),  # one layer of every type
    # FLA's hybrids: grouped-query softmax layers with q/k/v biases and a window narrower than the tests' sequences
    "hybrid-fla": dict(attention_type=["gated_delta", "softmax", "delta"], **FLA_STYLE_SETTINGS, feature_map="silu",
                       softmax_num_heads=8, num_key_value_heads=2, attention_bias=True, sliding_window=5),
}
LM_VARIANTS: dict[str, dict] = {**_type_variants(), **EXTRA_LM_VARIANTS}


def layer_types(settings: dict, field: str = "attention_type") -> list[str]:
    kinds = settings[field]
    return list(kinds) if isinstance(kinds, list) else [kinds]


def _lm_variants_where(predicate) -> list[str]:
    return [name for name, settings in LM_VARIANTS.items() if any(predicate(kind) for kind in layer_types(settings))]


def _feature_map_of(settings: dict, kind: str) -> str | None:
    return TOKEN_MIXERS[kind].feature_map_name(lm_config_from(settings))


# Variants with at least one fast-weight state (a fixed-size cache layer).
FAST_WEIGHT_LM_VARIANTS = _lm_variants_where(lambda kind: TOKEN_MIXERS[kind].holds_state)


def _variants_by_feature_map(predicate) -> list[str]:
    return [
        name
        for name, settings in LM_VARIANTS.items()
        if any(
            (fm := _feature_map_of(settings, kind)) is not None and predicate(FEATURE_MAPS[fm])
            for kind in layer_types(settings)
        )
    ]


# Variants with a layer that maps q, k through a feature map φ / a random-feature φ (FAVOR+).
FEATURE_MAP_LM_VARIANTS = _variants_by_feature_map(lambda spec: True)
RANDOM_FEATURE_LM_VARIANTS = _variants_by_feature_map(lambda spec: spec.random_features)

DEFAULT_FEATURE_MAP = FWPConfig().fast_weight.feature_map
DEFAULT_CROSS_ATTENTION = FWPConfig().cross_attention_type


def type_variant(name: str) -> str:
    """The `LM_VARIANTS` entry of attention type `name` (with the default φ where the config picks it)."""
    return f"{name}-{DEFAULT_FEATURE_MAP}" if config_picks_feature_map(name) else name


# One decoder-only variant per attention type (for the slower tests).
TYPE_LM_VARIANTS = [type_variant(name) for name in TOKEN_MIXERS]

CROSS_VARIANT_SELF_ATTENTION = "delta"  # the self-attention of the cross-attention variants
SEQ2SEQ_VARIANTS: dict[str, dict] = {
    **{name: type_settings(name) for name in TOKEN_MIXERS},
    **{
        f"{CROSS_VARIANT_SELF_ATTENTION}-{cross}-cross": dict(
            type_settings(CROSS_VARIANT_SELF_ATTENTION), cross_attention_type=cross
        )
        for cross in CROSS_ATTENTION_TYPES
        if cross != DEFAULT_CROSS_ATTENTION  # every type variant already uses the default
    },
    "hybrid": dict(
        attention_type=["softmax", "dpfp"],
        decoder_attention_type=list(ATTENTION_TYPES),
        num_decoder_layers=len(ATTENTION_TYPES),
        cross_attention_type="linear",
    ),
}

# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def lm_config(variant: str, **overrides) -> FWPConfig:
    """The tiny decoder-only config of an `LM_VARIANTS` entry."""
    return lm_config_from(LM_VARIANTS[variant], **overrides)


def make_lm(variant: str, seed: int = 0, **overrides) -> FWPForCausalLM:
    """A tiny seeded `FWPForCausalLM` of an `LM_VARIANTS` entry, in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(lm_config(variant, **overrides)).eval()


def seq2seq_config(variant: str, **overrides) -> FWPConfig:
    """The tiny encoder–decoder config of a `SEQ2SEQ_VARIANTS` entry."""
    return AutoConfig.for_model("fwp", **{**SEQ2SEQ_BASE, **SEQ2SEQ_VARIANTS[variant], **overrides})


def make_seq2seq(variant: str, seed: int = 0, **overrides) -> FWPForConditionalGeneration:
    """A tiny seeded `FWPForConditionalGeneration` of a `SEQ2SEQ_VARIANTS` entry, in eval mode."""
    torch.manual_seed(seed)
    return AutoModelForSeq2SeqLM.from_config(seq2seq_config(variant, **overrides)).eval()


def random_ids(batch: int, length: int, seed: int = 1, low: int = 0) -> torch.Tensor:
    """Seeded token ids in [low, VOCAB)."""
    return torch.randint(low, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    """max |actual − expected| ≤ rtol · max |expected| (same shape and dtype)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.numel() == 0:
        return
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} × scale {scale:.3g}"


def fast_weight_states(cache) -> dict[int, torch.Tensor]:
    """{layer index: state} of the fast-weight layers of a cache."""
    return {i: layer.state for i, layer in enumerate(cache.layers) if isinstance(layer, FastWeightCacheLayer)}


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: the tensors are tiny, and on a busy 2-core machine two spinning OpenMP
    threads make every op up to 100× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
