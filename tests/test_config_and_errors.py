"""Tests for ``FWPConfig`` validation and (de)serialisation, and for the model's input validation.

Covered:
- every invalid config fails at construction (``FWPConfig(...)`` and ``AutoConfig.for_model("fwp", ...)``)
  with a ValueError naming the field and the allowed values or range; boundary values are accepted;
- valid configs: every attention type and a hybrid list build a working model; ``to_dict``/``from_dict`` and
  ``save_pretrained``/``from_pretrained`` round-trip every field; ``layer_attention_types``; ``head_dim``;
- bad model inputs give a ValueError/TypeError naming the argument, raised by fwp_hf itself (not by torch
  deep inside a matmul or an embedding lookup).

"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import HIDDEN, LM_BASE, VOCAB, config_picks_feature_map, feature_map_settings
from transformers import AutoConfig, DynamicCache

from fwp_hf import (
    ATTENTION_TYPES,
    CROSS_ATTENTION_TYPES,
    FAST_WEIGHT_TYPES,
    FEATURE_MAPS,
    TOKEN_MIXERS,
    FWPConfig,
    FWPForCausalLM,
    FWPModel,
    TokenMixerSpec,
)
from fwp_hf.compat_fwp import output_cache
from fwp_hf.experiments.decode_timing import cache_bytes
from fwp_hf.options_fwp import LEGACY_FLAT_KEYS

BATCH, SEQ = 2, 5

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(**overrides) -> FWPConfig:
    return FWPConfig(**{**LM_BASE, **overrides})


def allowed_list(values) -> str:
    """Regex for the ``'a', 'b', 'c'`` list of allowed values in an error message."""
    return re.escape(", ".join(repr(v) for v in values))


def build_with_fwpconfig(**kwargs):
    return FWPConfig(**kwargs)


def build_with_autoconfig(**kwargs):
    return AutoConfig.for_model("fwp", **kwargs)


CONFIG_BUILDERS = pytest.mark.parametrize(
    "build", [build_with_fwpconfig, build_with_autoconfig], ids=["FWPConfig", "AutoConfig.for_model"]
)


# The types checkpoints have been saved with (tests/fixtures/reference_checkpoints and the
# gated delta rule): they must stay registered under these names.
SAVED_TYPES = ("softmax", "linear", "performer", "dpfp", "delta", "gated_delta", "fast_weights")


def test_saved_types_stay_registered_and_fast_weight_types_keep_a_fixed_size_cache():
    """Every name of ATTENTION_TYPES builds a model; FAST_WEIGHT_TYPES are exactly those whose cache holds as
    many bytes after 8 tokens as after 4 (a softmax layer's key/value cache grows)."""
    assert type(AutoConfig.for_model("fwp", **LM_BASE)) is FWPConfig
    assert set(SAVED_TYPES) <= set(ATTENTION_TYPES)
    assert set(CROSS_ATTENTION_TYPES) <= set(ATTENTION_TYPES)
    fixed_size = []
    for kind in ATTENTION_TYPES:
        model = FWPForCausalLM(tiny_config(attention_type=kind)).eval()
        with torch.no_grad():
            held = {cache_bytes(output_cache(model(torch.ones(1, length, dtype=torch.long), use_cache=True)))
                    for length in (4, 8)}
        if len(held) == 1:
            fixed_size.append(kind)
    assert tuple(fixed_size) == FAST_WEIGHT_TYPES


@pytest.mark.parametrize("kind", list(TOKEN_MIXERS))
def test_every_registry_entry_is_complete(kind):
    spec = TOKEN_MIXERS[kind]
    assert isinstance(spec, TokenMixerSpec) and spec.name == kind and spec.summary
    assert spec.encoder_form in ("bidirectional", "left_to_right")
    assert set(spec.gates) <= {"beta", "log_decay"}
    assert spec.feature_map is None or spec.feature_map in FEATURE_MAPS
    if spec.holds_state:
        assert callable(spec.chunk) and callable(spec.recurrent), "a state needs chunkwise and recurrent kernels"
    if kind in CROSS_ATTENTION_TYPES and spec.holds_state:
        assert spec.bidirectional is not None, "fast-weight cross-attention reads a whole source"


# ----------------------------------------------------------------------------------------------
# 1. Invalid configs
# ----------------------------------------------------------------------------------------------

SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "chunk_size",
    "max_position_embeddings",
)

INVALID_CONFIGS = [
    # (id, overrides of LM_BASE, regex the message must match)
    ("attention_type-unknown", dict(attention_type="gated"),
     rf"attention_type 'gated' is unknown; allowed: {allowed_list(ATTENTION_TYPES)} \(or a list"),
    ("attention_type-wrong-case", dict(attention_type="Softmax"),
     rf"attention_type 'Softmax' is unknown; allowed: {allowed_list(ATTENTION_TYPES)} \(or a list"),
    ("feature_map-unknown", dict(feature_map="softplus"),
     rf"fast_weight\.feature_map 'softplus' is unknown; allowed: {allowed_list(FEATURE_MAPS)}$"),
    ("feature_map-unknown-non-delta", dict(attention_type="linear", feature_map="softplus"),
     rf"fast_weight\.feature_map 'softplus' is unknown; allowed: {allowed_list(FEATURE_MAPS)}$"),
    ("dpfp_nu-0", dict(dpfp_nu=0), r"feature_maps\.dpfp\.nu must be an integer >= 1, got 0"),
    ("dpfp_nu-neg", dict(dpfp_nu=-1), r"feature_maps\.dpfp\.nu must be an integer >= 1, got -1"),
    ("dpfp_nu-float", dict(dpfp_nu=1.5), r"feature_maps\.dpfp\.nu must be an integer >= 1, got 1\.5"),
    ("dpfp_nu-bool", dict(dpfp_nu=True), r"feature_maps\.dpfp\.nu must be an integer >= 1, got True"),
    ("heads-not-dividing", dict(hidden_size=16, num_attention_heads=3),
     r"hidden_size \(16\) must be divisible by num_attention_heads \(3\)"),
    ("heads-not-dividing-2", dict(hidden_size=18, num_attention_heads=4),
     r"hidden_size \(18\) must be divisible by num_attention_heads \(4\)"),
    ("decay-0", dict(fast_weights_decay=0.0), r"hebbian_memory\.decay must be in \(0, 1\], got 0\.0"),
    ("decay-neg", dict(fast_weights_decay=-0.1), r"hebbian_memory\.decay must be in \(0, 1\], got -0\.1"),
    ("decay-above-1", dict(fast_weights_decay=1.5), r"hebbian_memory\.decay must be in \(0, 1\], got 1\.5"),
    ("decay-nan", dict(fast_weights_decay=float("nan")), r"hebbian_memory\.decay must be in \(0, 1\]"),
    ("lr-0", dict(fast_weights_learning_rate=0.0), r"hebbian_memory\.learning_rate must be > 0, got 0\.0"),
    ("lr-neg", dict(fast_weights_learning_rate=-0.5), r"hebbian_memory\.learning_rate must be > 0, got -0\.5"),
    ("lr-nan", dict(fast_weights_learning_rate=float("nan")), r"hebbian_memory\.learning_rate must be > 0"),
    ("inner_steps-neg", dict(fast_weights_inner_steps=-1),
     r"hebbian_memory\.inner_steps must be an integer >= 0, got -1"),
    ("inner_steps-float", dict(fast_weights_inner_steps=1.5),
     r"hebbian_memory\.inner_steps must be an integer >= 0, got 1\.5"),
    ("hybrid-too-long", dict(attention_type=["softmax", "delta", "delta"]),
     r"attention_type is a hybrid list of 3 entries but num_hidden_layers is 2"),
    ("hybrid-too-short", dict(attention_type=["delta"]),
     r"attention_type is a hybrid list of 1 entries but num_hidden_layers is 2"),
    ("hybrid-empty", dict(attention_type=[]),
     r"attention_type is a hybrid list of 0 entries but num_hidden_layers is 2"),
    ("hybrid-unknown-entry", dict(attention_type=["softmax", "mamba"]),
     rf"attention_type 'mamba' is unknown; allowed: {allowed_list(ATTENTION_TYPES)} \(or a list"),
    ("hybrid-tuple-unknown-entry", dict(attention_type=("delta", "rnn")),
     rf"attention_type 'rnn' is unknown; allowed: {allowed_list(ATTENTION_TYPES)} \(or a list"),
    ("hidden_act-unknown", dict(hidden_act="tanh"),
     r"hidden_act 'tanh' is unknown; allowed: 'silu', 'gelu', 'relu'"),
] + [
    (f"{field}-{value}", {field: value}, rf"{field} must be a positive integer, got {re.escape(repr(value))}")
    for field in SIZE_FIELDS
    for value in (0, -1)
] + [
    (f"performer_num_features-{value}", {"performer_num_features": value},
     rf"feature_maps\.favor\.num_features must be a positive integer, got {value}")
    for value in (0, -1)
] + [
    ("chunk_size-float", dict(chunk_size=2.5), r"chunk_size must be a positive integer, got 2\.5"),
    ("hidden_size-bool", dict(hidden_size=True), r"hidden_size must be a positive integer, got True"),
    # A string (or another wrong type) where a number or a bool belongs: a ValueError naming the field.
    ("lr-string", dict(fast_weights_learning_rate="0.5"),
     r"hebbian_memory\.learning_rate must be a number \(int or float\), got '0\.5'"),
    ("decay-string", dict(fast_weights_decay="0.9"),
     r"hebbian_memory\.decay must be a number \(int or float\), got '0\.9'"),
    ("decay-none", dict(fast_weights_decay=None), r"hebbian_memory\.decay must be a number \(int or float\), got None"),
    ("rope_theta-string", dict(rope_theta="10000"), r"rope_theta must be a number \(int or float\), got '10000'"),
    ("rope_theta-0", dict(rope_theta=0.0), r"rope_theta must be a finite number > 0, got 0\.0"),
    ("rms_norm_eps-string", dict(rms_norm_eps="1e-6"), r"rms_norm_eps must be a number \(int or float\), got '1e-6'"),
    ("rms_norm_eps-neg", dict(rms_norm_eps=-1e-6), r"rms_norm_eps must be a finite number > 0, got -1e-06"),
    ("initializer_range-string", dict(initializer_range="0.02"),
     r"initializer_range must be a number \(int or float\), got '0\.02'"),
    ("initializer_range-neg", dict(initializer_range=-0.02),
     r"initializer_range must be a finite number >= 0, got -0\.02"),
    ("performer_seed-string", dict(performer_seed="0"), r"feature_maps\.favor\.seed must be an integer, got '0'"),
    ("performer_num_features-string", dict(performer_num_features="8"),
     r"feature_maps\.favor\.num_features must be a positive integer, got '8'"),
    ("inner_steps-string", dict(fast_weights_inner_steps="1"),
     r"hebbian_memory\.inner_steps must be an integer >= 0, got '1'"),
    ("dpfp_nu-string", dict(dpfp_nu="2"), r"feature_maps\.dpfp\.nu must be an integer >= 1, got '2'"),
    ("attention_normalization-string", dict(attention_normalization="false"),
     r"fast_weight\.attention_normalization must be True or False, got 'false'"),
    ("attention_normalization-int", dict(attention_normalization=0),
     r"fast_weight\.attention_normalization must be True or False, got 0"),
    ("performer_redraw-string", dict(performer_redraw="true"),
     r"feature_maps\.favor\.redraw must be True or False, got 'true'"),
    ("use_cache-string", dict(use_cache="yes"), r"use_cache must be True or False, got 'yes'"),
    ("feature_map-list", dict(feature_map=["dpfp"]), r"fast_weight\.feature_map must be a string, got \['dpfp'\]"),
    ("max_position_embeddings-string", dict(max_position_embeddings="2048"),
     r"max_position_embeddings must be a positive integer, got '2048'"),
    # Rotary positions rotate pairs of channels: softmax layers need an even head size (36 / 4 = 9).
    ("odd-head-size-softmax", dict(hidden_size=36, num_attention_heads=4, attention_type="softmax"),
     r"'softmax' layers use rotary positions, which need an even head size, but hidden_size \(36\) / "
     r"num_attention_heads \(4\) = 9"),
    ("odd-head-size-hybrid", dict(hidden_size=36, num_attention_heads=4, attention_type=["delta", "softmax"]),
     r"'softmax' layers use rotary positions, which need an even head size, but hidden_size \(36\)"),
    ("odd-head-size-seq2seq-decoder",
     dict(hidden_size=36, num_attention_heads=4, is_encoder_decoder=True, decoder_attention_type="softmax"),
     r"'softmax' layers use rotary positions, which need an even head size.*= 9"),
]


@CONFIG_BUILDERS
@pytest.mark.parametrize(
    "overrides, message", [pytest.param(o, m, id=i) for i, o, m in INVALID_CONFIGS]
)
def test_invalid_config_raises_value_error(build, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**{**LM_BASE, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(fast_weights_decay=1.0),
        dict(fast_weights_decay=1e-6),
        dict(fast_weights_learning_rate=1e-8),
        dict(fast_weights_inner_steps=0),
        dict(dpfp_nu=1),
        dict(dpfp_nu=3),
        dict(chunk_size=1),
        dict(num_hidden_layers=1, attention_type=["softmax"]),
        dict(hidden_size=16, num_attention_heads=16),
        dict(hidden_size=36, num_attention_heads=4),  # odd head size: fine without rotary (softmax) layers
        dict(hidden_size=36, num_attention_heads=2, attention_type="softmax"),  # head size 18
        dict(rope_theta=500),  # an int where a float is expected is a number
        dict(initializer_range=0.0),
        dict(hidden_act="gelu"),
        dict(hidden_act="relu"),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
@CONFIG_BUILDERS
def test_boundary_values_are_accepted(build, overrides):
    config = build(**{**LM_BASE, **overrides})
    for key, value in overrides.items():
        assert config.field_value(".".join(LEGACY_FLAT_KEYS[key][0]) if key in LEGACY_FLAT_KEYS else key) == value


@pytest.mark.parametrize("loader", ["from_dict", "from_pretrained"])
@pytest.mark.parametrize(
    "overrides", [dict(dpfp_nu=0), dict(num_hidden_layers=3), dict(fast_weights_decay=2.0)],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_invalid_overrides_when_loading_raise(tmp_path, loader, overrides):
    config = tiny_config(attention_type=["softmax", "delta"])
    with pytest.raises(ValueError):
        if loader == "from_dict":
            FWPConfig.from_dict(config.to_dict(), **overrides)
        else:
            config.save_pretrained(tmp_path)
            AutoConfig.from_pretrained(tmp_path, **overrides)


# ----------------------------------------------------------------------------------------------
# 2. Valid configs
# ----------------------------------------------------------------------------------------------


def run_model(config: FWPConfig) -> torch.Tensor:
    torch.manual_seed(0)
    model = FWPForCausalLM(config).eval()
    input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    with torch.no_grad():
        logits = model(input_ids).logits
    assert logits.shape == (BATCH, SEQ, config.vocab_size)
    assert torch.isfinite(logits).all()
    return model


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@CONFIG_BUILDERS
def test_every_attention_type_builds(build, attention_type):
    config = build(**LM_BASE, attention_type=attention_type)
    assert config.attention_type == attention_type
    assert config.layer_attention_types == [attention_type] * LM_BASE["num_hidden_layers"]
    model = run_model(config)
    assert [layer.attention_type for layer in model.model.layers] == [attention_type] * LM_BASE["num_hidden_layers"]


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
@pytest.mark.parametrize("attention_type", [kind for kind in TOKEN_MIXERS if config_picks_feature_map(kind)])
def test_every_feature_map_builds_where_the_config_picks_it(attention_type, feature_map):
    model = run_model(tiny_config(attention_type=attention_type, **feature_map_settings(feature_map)))
    assert all(layer.mixer.feature_map.kind == feature_map for layer in model.model.layers)


@CONFIG_BUILDERS
def test_hybrid_list_builds(build):
    kinds = list(reversed(ATTENTION_TYPES))  # every type, one layer each
    config = build(**{**LM_BASE, "num_hidden_layers": len(kinds)}, attention_type=kinds)
    assert config.attention_type == kinds and isinstance(config.attention_type, list)
    assert config.layer_attention_types == kinds
    model = run_model(config)
    assert [layer.attention_type for layer in model.model.layers] == kinds


def test_hybrid_tuple_is_stored_as_list():
    config = tiny_config(attention_type=("linear", "softmax"))
    assert config.attention_type == ["linear", "softmax"]
    assert isinstance(config.attention_type, list)


def test_layer_attention_types_returns_a_copy():
    config = tiny_config(attention_type=["softmax", "delta"])
    config.layer_attention_types.append("linear")
    config.layer_attention_types[0] = "linear"
    assert config.attention_type == ["softmax", "delta"]
    assert config.layer_attention_types == ["softmax", "delta"]


@pytest.mark.parametrize(
    "hidden_size, heads, head_dim", [(16, 2, 8), (16, 1, 16), (16, 16, 1), (24, 3, 8), (512, 8, 64)]
)
def test_head_dim(hidden_size, heads, head_dim):
    assert tiny_config(hidden_size=hidden_size, num_attention_heads=heads).head_dim == head_dim


# Every FWP field set to a non-default value, so a field dropped on save would be noticed.
NON_DEFAULT_FIELDS = dict(
    vocab_size=51,
    hidden_size=24,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=3,
    attention_type=["softmax", "performer", "fast_weights"],
    fast_weight={"feature_map": "elu", "attention_normalization": False},
    feature_maps={"dpfp": {"nu": 2}, "favor": {"num_features": 12, "seed": 7, "redraw": True}},
    hebbian_memory={"decay": 0.8, "learning_rate": 0.25, "inner_steps": 2},
    chunk_size=8,
    hidden_act="gelu",
    max_position_embeddings=128,
    rope_theta=500.0,
    initializer_range=0.05,
    rms_norm_eps=1e-5,
    use_cache=False,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def leaves(values: dict, prefix: str = "") -> dict:
    """``{"fast_weight.feature_map": "elu", ...}``: the non-dict values of a nested dict by dotted path."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_non_default_fields_really_differ_from_defaults():
    defaults = FWPConfig()
    for path, value in leaves(NON_DEFAULT_FIELDS).items():
        assert defaults.field_value(path) != value, path


def assert_same_config(loaded: FWPConfig, original: FWPConfig) -> None:
    assert type(loaded) is FWPConfig
    for path, value in leaves(NON_DEFAULT_FIELDS).items():
        assert loaded.field_value(path) == value, path
        assert type(loaded.field_value(path)) is type(value), path
    ignore = {"_name_or_path", "transformers_version", "auto_map"}
    loaded_dict = {k: v for k, v in loaded.to_dict().items() if k not in ignore}
    original_dict = {k: v for k, v in original.to_dict().items() if k not in ignore}
    assert loaded_dict == original_dict
    assert loaded.layer_attention_types == NON_DEFAULT_FIELDS["attention_type"]
    assert loaded.head_dim == original.head_dim == 8


def test_to_dict_from_dict_round_trip():
    config = FWPConfig(**NON_DEFAULT_FIELDS)
    as_dict = config.to_dict()
    assert as_dict["model_type"] == "fwp"
    assert as_dict["attention_type"] == NON_DEFAULT_FIELDS["attention_type"]
    assert_same_config(FWPConfig.from_dict(as_dict), config)


@pytest.mark.parametrize("loader", [FWPConfig.from_pretrained, AutoConfig.from_pretrained],
                         ids=["FWPConfig", "AutoConfig"])
def test_save_pretrained_from_pretrained_round_trip(tmp_path, loader):
    config = FWPConfig(**NON_DEFAULT_FIELDS)
    config.save_pretrained(tmp_path)
    assert_same_config(loader(tmp_path), config)


def test_model_save_pretrained_keeps_hybrid_config(tmp_path):
    config = tiny_config(attention_type=["delta", "softmax"])
    FWPForCausalLM(config).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is FWPConfig
    assert loaded.attention_type == ["delta", "softmax"]
    assert loaded.layer_attention_types == ["delta", "softmax"]


# ----------------------------------------------------------------------------------------------
# 3. Bad model input
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_model() -> FWPForCausalLM:
    """Softmax layer (rotary, SDPA mask) followed by a delta layer (token mask, fast-weight cache)."""
    torch.manual_seed(0)
    return FWPForCausalLM(tiny_config(attention_type=["softmax", "delta"])).eval()


@pytest.fixture(scope="module")
def softmax_model() -> FWPForCausalLM:
    torch.manual_seed(0)
    return FWPForCausalLM(tiny_config(attention_type="softmax")).eval()


@pytest.fixture(scope="module")
def delta_model() -> FWPForCausalLM:
    torch.manual_seed(0)
    return FWPForCausalLM(tiny_config(attention_type="delta")).eval()


def good_ids() -> torch.Tensor:
    return torch.randint(0, LM_BASE["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def assert_clear_error(call, argument: str, exc_types=(ValueError, TypeError)) -> pytest.ExceptionInfo:
    """The call raises ValueError/TypeError naming ``argument``, from fwp_hf code (not from deep in torch)."""
    with torch.no_grad(), pytest.raises(exc_types, match=argument) as excinfo:
        call()
    raising_file = str(excinfo.traceback[-1].path)
    assert "fwp_hf" in raising_file, f"raised from {raising_file}, not from fwp_hf: {excinfo.value}"
    return excinfo


def test_good_inputs_work(hybrid_model):
    """Positive control: each bad-input test below changes one argument of these working calls."""
    ids = good_ids()
    with torch.no_grad():
        out = hybrid_model(ids, attention_mask=torch.ones(BATCH, SEQ, dtype=torch.long), labels=ids,
                           position_ids=torch.arange(SEQ).expand(BATCH, SEQ), past_key_values=DynamicCache())
        embeds = hybrid_model(inputs_embeds=hybrid_model.get_input_embeddings()(ids))
        hybrid_model(ids[:, :1], past_key_values=out.past_key_values)
    assert out.logits.shape == (BATCH, SEQ, LM_BASE["vocab_size"])
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(embeds.logits, out.logits)


BAD_INPUT_IDS = [
    ("1-D", lambda ids: ids[0], ValueError, r"input_ids must be \[batch, seq_len\], got shape \(5,\)"),
    ("3-D", lambda ids: ids[..., None], ValueError, r"input_ids must be \[batch, seq_len\], got shape \(2, 5, 1\)"),
    ("float", lambda ids: ids.float(), TypeError, r"input_ids must be an int64 or int32 tensor.*float32"),
    ("bool", lambda ids: ids > 10, TypeError, r"input_ids must be an int64 or int32 tensor.*bool"),
    ("id-equal-vocab", lambda ids: ids.index_fill(1, torch.tensor([2]), VOCAB), ValueError,
     rf"input_ids must lie in \[0, vocab_size={VOCAB}\), got values in \[\d+, {VOCAB}\]"),
    ("id-above-vocab", lambda ids: ids.index_fill(1, torch.tensor([0]), 1000), ValueError,
     rf"input_ids must lie in \[0, vocab_size={VOCAB}\)"),
    ("id-negative", lambda ids: ids.index_fill(1, torch.tensor([4]), -1), ValueError,
     rf"input_ids must lie in \[0, vocab_size={VOCAB}\), got values in \[-1, \d+\]"),
]


@pytest.mark.parametrize(
    "mutate, exc_type, message", [pytest.param(m, e, r, id=i) for i, m, e, r in BAD_INPUT_IDS]
)
def test_bad_input_ids(hybrid_model, mutate, exc_type, message):
    assert_clear_error(lambda: hybrid_model(mutate(good_ids())), message, exc_type)


def test_int32_input_ids_give_the_int64_logits(hybrid_model):
    ids = good_ids()
    with torch.no_grad():
        torch.testing.assert_close(hybrid_model(ids.to(torch.int32)).logits, hybrid_model(ids).logits)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int8, torch.uint8], ids=str)
def test_narrow_integer_input_ids_are_rejected_clearly(hybrid_model, dtype):
    assert_clear_error(lambda: hybrid_model(good_ids().to(dtype)),
                       rf"input_ids must be an int64 or int32 tensor of token ids, got {dtype}", TypeError)


def test_both_input_ids_and_inputs_embeds(hybrid_model):
    ids = good_ids()
    embeds = hybrid_model.get_input_embeddings()(ids).detach()
    assert_clear_error(lambda: hybrid_model(ids, inputs_embeds=embeds),
                       r"pass exactly one of input_ids or inputs_embeds")


def test_neither_input_ids_nor_inputs_embeds(hybrid_model):
    assert_clear_error(lambda: hybrid_model(attention_mask=torch.ones(BATCH, SEQ)),
                       r"pass exactly one of input_ids or inputs_embeds")


@pytest.mark.parametrize(
    "shape, dtype, exc_type, message",
    [
        ((BATCH, SEQ, HIDDEN - 1), torch.float32, ValueError,
         rf"inputs_embeds must be \[batch, seq_len, hidden_size={HIDDEN}\], got shape \(2, 5, {HIDDEN - 1}\)"),
        ((BATCH, SEQ, 2 * HIDDEN), torch.float32, ValueError,
         rf"inputs_embeds must be .*hidden_size={HIDDEN}.*\(2, 5, {2 * HIDDEN}\)"),
        ((BATCH, HIDDEN), torch.float32, ValueError, rf"inputs_embeds must be .*hidden_size={HIDDEN}.*\(2, {HIDDEN}\)"),
        ((BATCH, SEQ, HIDDEN), torch.long, TypeError, r"inputs_embeds must be floating point, got torch.int64"),
    ],
    ids=["hidden-too-small", "hidden-too-large", "2-D", "integer"],
)
def test_bad_inputs_embeds(hybrid_model, shape, dtype, exc_type, message):
    embeds = torch.ones(shape, dtype=dtype)
    assert_clear_error(lambda: hybrid_model(inputs_embeds=embeds), message, exc_type)


def test_inputs_embeds_of_another_float_dtype_are_rejected_clearly(hybrid_model):
    embeds = hybrid_model.get_input_embeddings()(good_ids()).detach()
    assert_clear_error(lambda: hybrid_model(inputs_embeds=embeds.double()),
                       r"inputs_embeds has dtype torch.float64 but the model runs in torch.float32; cast them",
                       TypeError)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_embeds_are_refused_naming_the_position(hybrid_model, value):
    """Outputs are causal for finite inputs only (a NaN at t reaches earlier positions through 0 · NaN in the
    chunkwise and attention products), so non-finite embeddings are refused rather than spread."""
    embeds = hybrid_model.get_input_embeddings()(good_ids()).detach().clone()
    embeds[1, 3, 0] = value
    assert_clear_error(lambda: hybrid_model(inputs_embeds=embeds),
                       r"inputs_embeds holds non-finite values \(NaN or inf\), first at row 1, position 3")


@pytest.mark.parametrize("kind", ["delta", "linear", "softmax"])
def test_an_all_padding_row_is_accepted_and_leaves_the_other_rows_and_its_state_alone(kind):
    """Documented behaviour (README): a row of only padding (an empty text in a padded batch) is accepted; its
    outputs are finite and meaningless, the other rows' are those of their own forward, and nothing enters its
    fast-weight state (it stays the empty state)."""
    torch.manual_seed(0)
    model = FWPForCausalLM(tiny_config(attention_type=kind)).eval()
    ids = good_ids()
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True)
        alone = model(ids[:1]).logits
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.logits[:1], alone, rtol=1e-5, atol=1e-5)
    if kind != "softmax":
        for layer in out.past_key_values.layers:
            assert layer.state[0].abs().sum() > 0 and not layer.state[1].any()


@pytest.mark.parametrize(
    "shape, message",
    [
        ((SEQ,), r"attention_mask must be a 2D padding mask.*got shape \(5,\)"),
        ((BATCH, 1, SEQ), r"attention_mask must be a 2D padding mask.*got shape \(2, 1, 5\)"),
        ((BATCH, 1, SEQ, SEQ),
         r"attention_mask must be a 2D padding mask.*got shape \(2, 1, 5, 5\).*continuous-batching"),
        ((BATCH, SEQ - 1), r"attention_mask must have shape \[batch=2, past\+new tokens=5\].*got \(2, 4\)"),
        ((BATCH, SEQ + 2), r"attention_mask must have shape \[batch=2, past\+new tokens=5\].*got \(2, 7\)"),
        ((BATCH + 1, SEQ), r"attention_mask must have shape \[batch=2, .*got \(3, 5\)"),
    ],
    ids=["1-D", "3-D", "4-D", "too-short", "too-long", "wrong-batch"],
)
@pytest.mark.parametrize("model_name", ["hybrid_model", "delta_model"])
def test_bad_attention_mask(request, model_name, shape, message):
    model = request.getfixturevalue(model_name)
    mask = torch.ones(shape, dtype=torch.long)
    assert_clear_error(lambda: model(good_ids(), attention_mask=mask), message)


def test_attention_mask_of_wrong_length_with_a_cache(hybrid_model):
    ids = good_ids()
    with torch.no_grad():
        cache = hybrid_model(ids, use_cache=True).past_key_values
    mask = torch.ones(BATCH, SEQ + 3, dtype=torch.long)  # neither new (1) nor past + new (6) tokens
    assert_clear_error(lambda: hybrid_model(ids[:, :1], attention_mask=mask, past_key_values=cache),
                       r"attention_mask must have shape \[batch=2, past\+new tokens=6\] \(or \[batch, new tokens=1\]\)")


@pytest.mark.parametrize(
    "shape",
    [(BATCH, SEQ + 1), (BATCH, SEQ - 1), (BATCH * SEQ,), (BATCH + 1, SEQ), (BATCH, SEQ, 1)],
    ids=["too-long", "too-short", "flat", "wrong-batch", "3-D"],
)
def test_labels_of_another_shape(hybrid_model, shape):
    labels = torch.zeros(shape, dtype=torch.long)
    assert_clear_error(lambda: hybrid_model(good_ids(), labels=labels),
                       r"labels must have the shape of input_ids \(2, 5\), got " + re.escape(str(tuple(shape))))


@pytest.mark.parametrize(
    "past_key_values",
    [
        ((torch.zeros(BATCH, 2, SEQ, 8), torch.zeros(BATCH, 2, SEQ, 8)),) * 2,
        [],
        {"layers": []},
    ],
    ids=["legacy-tuple", "list", "dict"],
)
def test_past_key_values_of_wrong_type(hybrid_model, past_key_values):
    assert_clear_error(lambda: hybrid_model(good_ids(), past_key_values=past_key_values),
                       r"past_key_values must be a transformers Cache \(e.g. DynamicCache\), got "
                       + type(past_key_values).__name__, TypeError)


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("model_name", ["hybrid_model", "softmax_model", "delta_model"])
def test_cache_filled_by_a_model_with_another_number_of_layers(request, model_name, num_layers):
    model = request.getfixturevalue(model_name)
    other = FWPForCausalLM(tiny_config(num_hidden_layers=num_layers, attention_type="softmax"))
    cache = DynamicCache()
    with torch.no_grad():
        other(good_ids(), past_key_values=cache, use_cache=True)
    assert len(cache.layers) == num_layers
    assert_clear_error(lambda: model(good_ids(), past_key_values=cache),
                       rf"past_key_values has {num_layers} layers, the model has 2")


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("model_name", ["hybrid_model", "softmax_model", "delta_model"])
def test_empty_cache_sized_for_another_model_is_laid_out_for_this_one(request, model_name, num_layers):
    """generate builds DynamicCache(config) from a text config whose layer count may differ
    (encoder–decoder models): an untouched cache is re-laid out, nothing in it is lost."""
    model = request.getfixturevalue(model_name)
    cache = DynamicCache(config=tiny_config(num_hidden_layers=num_layers, attention_type="softmax"))
    with torch.no_grad():
        out = model(good_ids(), past_key_values=cache, use_cache=True)
    assert len(out.past_key_values.layers) == 2
    assert out.past_key_values.get_seq_length() == SEQ


@pytest.mark.parametrize("model_name", ["hybrid_model", "softmax_model", "delta_model"])
def test_cache_built_for_the_model_config_works(request, model_name):
    model = request.getfixturevalue(model_name)
    with torch.no_grad():
        out = model(good_ids(), past_key_values=DynamicCache(config=model.config))
    assert out.past_key_values.get_seq_length() == SEQ


def test_fast_weight_cache_in_a_softmax_slot(softmax_model, delta_model):
    with torch.no_grad():
        cache = delta_model(good_ids(), use_cache=True).past_key_values
    assert_clear_error(lambda: softmax_model(good_ids(), past_key_values=cache),
                       r"past_key_values layer 0 holds a fast-weight state but layer 0 is softmax")


def test_key_value_cache_in_a_fast_weight_slot(softmax_model, delta_model):
    with torch.no_grad():
        cache = softmax_model(good_ids(), use_cache=True).past_key_values
    assert_clear_error(lambda: delta_model(good_ids(), past_key_values=cache),
                       r"past_key_values layer 0 holds keys/values but layer 0 is a 'delta' fast-weight layer")


@pytest.mark.parametrize(
    "position_ids",
    [
        torch.arange(SEQ),
        torch.arange(SEQ + 1).expand(BATCH, -1),
        torch.arange(SEQ - 1).expand(BATCH, -1),
        torch.arange(SEQ).expand(BATCH, -1)[..., None],
        torch.arange(SEQ).expand(1, BATCH, -1),
    ],
    ids=["1-D", "too-long", "too-short", "3-D", "extra-leading-dim"],
)
@pytest.mark.parametrize("model_name", ["softmax_model", "hybrid_model"])
def test_position_ids_of_wrong_shape(request, model_name, position_ids):
    model = request.getfixturevalue(model_name)
    assert_clear_error(lambda: model(good_ids(), position_ids=position_ids),
                       r"position_ids must be \[batch, seq_len=5\] with batch 1 or 2, got "
                       + re.escape(str(tuple(position_ids.shape))))


def test_position_ids_of_wrong_batch_size(softmax_model):
    position_ids = torch.arange(SEQ).expand(BATCH + 1, -1)
    assert_clear_error(lambda: softmax_model(good_ids(), position_ids=position_ids), r"position_ids")


def test_position_ids_broadcast_over_batch(softmax_model):
    """A [1, T] position_ids (as many callers pass) is valid and equals the default positions."""
    ids = good_ids()
    with torch.no_grad():
        default = softmax_model(ids).logits
        explicit = softmax_model(ids, position_ids=torch.arange(SEQ)[None]).logits
    torch.testing.assert_close(explicit, default)


def test_bare_model_validates_inputs_too():
    model = FWPModel(tiny_config(attention_type="linear")).eval()
    assert_clear_error(lambda: model(good_ids()[0]), r"input_ids must be \[batch, seq_len\]")
    assert_clear_error(lambda: model(good_ids(), attention_mask=torch.ones(BATCH, 1, SEQ)),
                       r"attention_mask must be a 2D padding mask")
