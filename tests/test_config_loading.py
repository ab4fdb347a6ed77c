"""Loading and using configs the way a user would (issue 14, items 3, 5 and 9).

Covered:
- a load-time change of what saved weights mean raises, naming the field: ``from_pretrained(path,
  attention_type=...)``, ``feature_map`` / ``dpfp_nu`` / ``performer_num_features`` where the layers
  use them, sizes, encoder–decoder fields, and ``config=`` a config that differs from the folder's
  config.json; harmless overrides (``use_cache``, ``chunk_size``, a ``feature_map`` a model does not
  use, ...) load and compute the same logits;
- generating past ``max_position_embeddings`` warns only for models with rotary (softmax) layers;
  models without them have no positional limit (``max_position_embeddings`` None, also for a
  checkpoint saved with 2048);
- an odd head size is refused only where rotary layers need an even one: every other type runs.
"""

from __future__ import annotations

import inspect
import logging
import re

import pytest
import torch
from conftest import LM_BASE, SEQ2SEQ_BASE, VOCAB
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
from transformers.utils import logging as hf_logging

from fwp_hf import FEATURE_MAPS, TOKEN_MIXERS, FWPConfig, FWPForCausalLM, FWPForConditionalGeneration
from fwp_hf.options_fwp import LEGACY_FLAT_KEYS

pytestmark = pytest.mark.usefixtures("single_thread")

IDS = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
ROTARY_TYPES = [kind for kind, spec in TOKEN_MIXERS.items() if spec.uses_rotary]
NON_ROTARY_TYPES = [kind for kind, spec in TOKEN_MIXERS.items() if not spec.uses_rotary]


def leaves(values: dict, prefix: str = "") -> dict:
    """The non-dict values of a nested dict by dotted path (``{"fast_weight.conv_size": 2}``)."""
    out = {}
    for key, value in values.items():
        out.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def saved_lm(folder, **fields) -> torch.Tensor:
    torch.manual_seed(0)
    model = FWPForCausalLM(FWPConfig(**{**LM_BASE, **fields})).eval()
    model.save_pretrained(folder)
    with torch.no_grad():
        return model(IDS).logits


# ----------------------------------------------------------------------------------------------
# A saved config whose weights meant something else does not load silently
# ----------------------------------------------------------------------------------------------

# (saved fields, load-time override — flat keys of older configs or a group's fields —, the field the error must name)
MEANING_CHANGES = [
    (dict(attention_type="linear"), dict(attention_type="dpfp"), "attention_type"),
    (dict(attention_type="linear"), dict(attention_type="performer"), "attention_type"),
    (dict(attention_type="delta", feature_map="dpfp"), dict(feature_map="elu"), "fast_weight.feature_map"),
    (dict(attention_type="gated_delta", feature_map="favor"), dict(feature_map="dpfp"), "fast_weight.feature_map"),
    (dict(attention_type="dpfp", dpfp_nu=1), dict(dpfp_nu=2), "feature_maps.dpfp.nu"),
    (dict(attention_type="delta", feature_map="dpfp"), dict(dpfp_nu=3), "feature_maps.dpfp.nu"),
    (dict(attention_type="performer"), dict(feature_maps={"favor": {"num_features": 4}}),
     "feature_maps.favor.num_features"),
    (dict(attention_type="linear"), dict(fast_weight={"attention_normalization": False}),
     "fast_weight.attention_normalization"),
    (dict(attention_type="fast_weights"), dict(fast_weights_decay=0.5), "hebbian_memory.decay"),
    (dict(attention_type="fast_weights"), dict(hebbian_memory={"inner_steps": 3}), "hebbian_memory.inner_steps"),
    (dict(attention_type="softmax"), dict(rope_theta=500.0), "rope_theta"),
    (dict(attention_type="delta"), dict(num_attention_heads=8), "num_attention_heads"),
    (dict(attention_type="delta"), dict(num_hidden_layers=1), "num_hidden_layers"),
    (dict(attention_type="delta"), dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_type=["delta", "softmax"]), dict(attention_type=["softmax", "delta"]), "attention_type"),
]


@pytest.mark.parametrize("saved, override, field", MEANING_CHANGES,
                         ids=[f"{s['attention_type']}-{f}" for s, _, f in MEANING_CHANGES])
def test_an_override_that_changes_what_the_weights_mean_raises(tmp_path, saved, override, field):
    saved_lm(tmp_path, **saved)
    saved_value = FWPConfig(**{**LM_BASE, **saved}).field_value(field)
    requested_value = FWPConfig(**FWPConfig.merged_config_dict({**LM_BASE, **saved}, override)).field_value(field)
    with pytest.raises(ValueError, match=rf"changes {re.escape(field)}\b") as excinfo:
        FWPForCausalLM.from_pretrained(tmp_path, **override)
    assert f"{field}={saved_value!r} saved, {requested_value!r} requested" in str(excinfo.value)
    with pytest.raises(ValueError, match=rf"changes {re.escape(field)}\b"):  # the Auto class goes the same way
        AutoModelForCausalLM.from_pretrained(tmp_path, **override)


@pytest.mark.parametrize("saved, override, field", MEANING_CHANGES[:7] + MEANING_CHANGES[-3:],
                         ids=[f"{s['attention_type']}-{f}" for s, _, f in MEANING_CHANGES[:7] + MEANING_CHANGES[-3:]])
def test_a_config_that_differs_from_the_saved_one_raises(tmp_path, saved, override, field):
    saved_lm(tmp_path, **saved)
    other = FWPConfig.from_pretrained(tmp_path, **override)
    with pytest.raises(ValueError, match=rf"config= .*changes {re.escape(field)}\b"):
        FWPForCausalLM.from_pretrained(tmp_path, config=other)


@pytest.mark.parametrize(
    "saved, override",
    [
        (dict(attention_type="delta"), dict(use_cache=False)),
        (dict(attention_type="delta"), dict(chunk_size=2)),
        (dict(attention_type="linear"), dict(feature_map="elu")),  # the sum rules fix their own φ
        (dict(attention_type="delta", feature_map="elu"), dict(dpfp_nu=3)),  # ν only matters for DPFP
        (dict(attention_type="performer"), dict(performer_seed=5, performer_redraw=True)),  # ω is saved
        (dict(attention_type="softmax"), dict(max_position_embeddings=16)),
        (dict(attention_type="delta"), dict(attention_type=["delta", "delta"])),  # the same layers, spelt out
        (dict(attention_type="delta"), dict(fast_weights_decay=0.5, rope_theta=50.0)),  # not used by delta
        (dict(attention_type="delta", feature_map="elu"), dict(feature_maps={"dpfp": {"nu": 3}})),  # the new shape
    ],
    ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()),
)
def test_harmless_overrides_still_load_and_compute_the_same(tmp_path, saved, override):
    expected = saved_lm(tmp_path, **saved)
    model = FWPForCausalLM.from_pretrained(tmp_path, **override).eval()
    for key, value in override.items():
        if isinstance(value, dict):  # a group's fields
            for path, field_value in leaves(value, f"{key}.").items():
                assert model.config.field_value(path) == field_value
        elif key != "max_position_embeddings":
            path = ".".join(LEGACY_FLAT_KEYS[key][0]) if key in LEGACY_FLAT_KEYS else key
            assert model.config.field_value(path) == value
    same_config = FWPConfig.from_pretrained(tmp_path, **override)
    loaded_with_config = FWPForCausalLM.from_pretrained(tmp_path, config=same_config).config.to_dict()
    assert {k: v for k, v in loaded_with_config.items() if k != "_name_or_path"} == {
        k: v for k, v in same_config.to_dict().items() if k != "_name_or_path"}
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, expected)


def test_loading_unchanged_and_with_the_saved_config_works(tmp_path):
    expected = saved_lm(tmp_path, attention_type=["softmax", "performer"])
    for model in (FWPForCausalLM.from_pretrained(tmp_path),
                  FWPForCausalLM.from_pretrained(tmp_path, config=FWPConfig.from_pretrained(tmp_path)),
                  AutoModelForCausalLM.from_pretrained(tmp_path, config=str(tmp_path))):
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(IDS).logits, expected)


@pytest.mark.parametrize(
    "override, field",
    [(dict(decoder_attention_type="dpfp"), "decoder_attention_type"),
     (dict(cross_attention_type="linear"), "cross_attention_type"),
     (dict(num_decoder_layers=2, decoder_attention_type=["linear", "linear"]), "num_decoder_layers")],
    ids=["decoder_attention_type", "cross_attention_type", "num_decoder_layers"],
)
def test_encoder_decoder_fields_are_checked_too(tmp_path, override, field):
    config = FWPConfig(**{**SEQ2SEQ_BASE, "decoder_attention_type": "linear"})
    FWPForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"changes .*{field}\b"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, **override)
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path, use_cache=False).config.use_cache is False


def test_weight_meaning_fields_are_config_fields():
    saved = FWPConfig().to_dict()
    for name in FWPConfig.WEIGHT_MEANING_FIELDS:
        place = saved
        for part in name.split("."):  # a top-level key, or a place in a group of the saved config
            assert isinstance(place, dict) and part in place, name
            place = place[part]
    assert {"chunk_size", "use_cache", "max_position_embeddings"}.isdisjoint(FWPConfig.WEIGHT_MEANING_FIELDS)


# ----------------------------------------------------------------------------------------------
# The "maximum length" warning only for models with positional limits
# ----------------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def max_length_warnings(model, max_new_tokens: int) -> list[str]:
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    logging.Logger.warning_once.cache_clear()  # transformers' warning_once remembers the messages it gave
    try:
        with torch.no_grad():
            output = model.generate(IDS[:, :3], max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert output.shape[1] == 3 + max_new_tokens
    return [message for message in handler.messages if "maximum length" in message]


@pytest.mark.parametrize("kind", ROTARY_TYPES + NON_ROTARY_TYPES[:1] + ["hybrid"])
def test_generating_past_max_position_embeddings_warns_only_with_a_positional_limit(kind):
    attention_type = ["delta", ROTARY_TYPES[0]] if kind == "hybrid" else kind
    torch.manual_seed(0)
    model = FWPForCausalLM(FWPConfig(**LM_BASE, attention_type=attention_type, max_position_embeddings=7)).eval()
    warnings = max_length_warnings(model, max_new_tokens=8)
    if model.config.has_positional_limit:
        assert model.config.max_position_embeddings == 7
        assert any("maximum length (7)" in message for message in warnings), warnings
    else:
        assert model.config.max_position_embeddings is None
        assert warnings == []


def test_a_checkpoint_saved_with_2048_has_no_positional_limit_without_rotary_layers(tmp_path):
    saved_lm(tmp_path, attention_type="delta")
    config_json = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(config_json.replace('"max_position_embeddings": null',
                                                              '"max_position_embeddings": 6'))
    assert '"max_position_embeddings": 6' in (tmp_path / "config.json").read_text()
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert model.config.max_position_embeddings is None
    assert max_length_warnings(model, max_new_tokens=6) == []


def test_max_position_embeddings_default():
    assert FWPConfig(**LM_BASE, attention_type="softmax").max_position_embeddings == 2048
    assert FWPConfig(**LM_BASE, attention_type="delta").max_position_embeddings is None
    seq2seq = FWPConfig(**{**SEQ2SEQ_BASE, "attention_type": "delta", "decoder_attention_type": "softmax"})
    assert seq2seq.max_position_embeddings == 2048


# ----------------------------------------------------------------------------------------------
# Odd head sizes: accepted without rotary positions, refused with them
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", NON_ROTARY_TYPES)
def test_odd_head_sizes_run_for_layers_without_rotary_positions(kind):
    torch.manual_seed(0)
    config = FWPConfig(**{**LM_BASE, "hidden_size": 36, "num_attention_heads": 4, "attention_type": kind})
    assert config.head_dim == 9
    with torch.no_grad():
        logits = FWPForCausalLM(config).eval()(IDS).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ROTARY_TYPES)
def test_odd_head_sizes_are_refused_at_config_time_for_rotary_layers(kind):
    with pytest.raises(ValueError, match=rf"{kind!r} layers use rotary positions, which need an even head size"):
        AutoConfig.for_model("fwp", **{**LM_BASE, "hidden_size": 36, "num_attention_heads": 4, "attention_type": kind})


# ----------------------------------------------------------------------------------------------
# The weight-meaning list, derived from what the registry says a config's layers compute
# ----------------------------------------------------------------------------------------------

# Values to try for the fields whose type alone does not say which values are allowed.
NAMED_VALUES = {
    "attention_type": list(TOKEN_MIXERS), "decoder_attention_type": list(TOKEN_MIXERS),
    "cross_attention_type": list(TOKEN_MIXERS), "fast_weight.feature_map": list(FEATURE_MAPS),
    "hidden_act": ["gelu", "relu"], "fast_weight.value_activation": ["silu"],
    "fast_weight.key_normalization": ["l2", "sum"],
    "softmax_attention.rope_scaling": [{"rope_type": "linear", "factor": 2.0}],
}
GROUP_KEYS = ("fast_weight", "softmax_attention", "hebbian_memory", "feature_maps")


def candidate_values(name: str, default):
    if name in NAMED_VALUES:
        return [value for value in NAMED_VALUES[name] if value != default]
    if isinstance(default, bool):
        return [not default]
    if isinstance(default, int):
        return [default + 1, 2 * default]
    if isinstance(default, float):
        return [default / 2]
    if default is None:
        return [1, 2, 8, 16]
    return []


def as_override(name: str, value) -> dict:
    """The load-time override that sets field `name` (``"fast_weight.conv_size"``: ``{"fast_weight":
    {"conv_size": value}}``)."""
    *parents, leaf = name.split(".")
    override = {leaf: value}
    for parent in reversed(parents):
        override = {parent: override}
    return override


def every_field() -> list[str]:
    """Every field of FWPConfig: the top-level arguments of `__init__`, and every field of every group."""
    parameters = [name for name, parameter in inspect.signature(FWPConfig.__init__).parameters.items()
                  if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD and name not in GROUP_KEYS]
    saved = FWPConfig().to_dict()
    groups = [f"{key}.{name}" for key in GROUP_KEYS[:3] for name in saved[key]]
    maps = [f"feature_maps.{m}.{name}" for m, options in saved["feature_maps"].items() for name in options]
    return parameters + groups + maps


def meaning_witnesses() -> dict[str, tuple[dict, object]]:
    """Per field of FWPConfig (`every_field`): a (config fields, new value) pair where changing the field changes
    `weights_meaning()` (the registry's account of what each layer computes), for every field where one exists
    among every attention type, with short convolutions, a hybrid and an encoder–decoder."""
    bases = [{**LM_BASE, "attention_type": kind} for kind in TOKEN_MIXERS]
    bases += [{**LM_BASE, "attention_type": kind, "fast_weight": {"use_short_conv": True}}
              for kind in ("delta", "linear")]
    bases += [{**LM_BASE, "attention_type": ["delta", "softmax"]}]
    # every feature map where the config picks it (so that each map's own options are tried)
    bases += [{**LM_BASE, "attention_type": "delta",
               "fast_weight": {"feature_map": name, **({} if spec.nonnegative else {"key_normalization": "l2"})}}
              for name, spec in FEATURE_MAPS.items()]
    bases += [{**SEQ2SEQ_BASE, "attention_type": kind} for kind in ("delta", "softmax")]
    witnesses = {}
    for base in bases:
        config = FWPConfig(**base)
        meaning = config.weights_meaning()
        for name in every_field():
            if name in witnesses:
                continue
            for value in candidate_values(name, config.field_value(name)):
                try:
                    changed = FWPConfig(**FWPConfig.merged_config_dict(base, as_override(name, value)))
                    changed = changed.weights_meaning() != meaning
                except (ValueError, TypeError, KeyError, IndexError):
                    continue  # a value this config refuses
                if changed:
                    witnesses[name] = (base, value)
                    break
    return witnesses


def test_every_field_that_changes_what_weights_mean_is_refused_as_a_load_override(tmp_path):
    witnesses = meaning_witnesses()
    assert {"fast_weight.scale_queries", "attention_type", "fast_weight.conv_size", "feature_maps.dpfp.nu",
            "cross_attention_type", "hebbian_memory.decay", "softmax_attention.sliding_window"} <= set(witnesses)
    # Fields that cannot change what weights compute never do (the derivation is not vacuous the other way).
    assert {"chunk_size", "use_cache", "initializer_range", "feature_maps.favor.seed",
            "feature_maps.favor.redraw"}.isdisjoint(witnesses)
    for name, (base, value) in witnesses.items():
        folder = tmp_path / name
        FWPConfig(**base).save_pretrained(folder)
        with pytest.raises(ValueError, match=rf"changes .*\b{re.escape(name)}\b"):
            FWPConfig.check_loading_keeps_weight_meaning(str(folder), as_override(name, value))
    # The list derived from the fields' declarations is exactly the fields that change what weights mean.
    assert set(FWPConfig.WEIGHT_MEANING_FIELDS) == set(witnesses)


def test_harmless_fields_pass_as_load_overrides(tmp_path):
    """Every field not in WEIGHT_MEANING_FIELDS passes as a load-time override (with a value the config takes)."""
    FWPConfig(**LM_BASE, attention_type="performer").save_pretrained(tmp_path)
    harmless = [name for name in every_field() if name not in FWPConfig.WEIGHT_MEANING_FIELDS]
    assert {"chunk_size", "use_cache", "feature_maps.favor.seed", "feature_maps.favor.redraw"} <= set(harmless)
    for name in harmless:
        value = candidate_values(name, FWPConfig(**LM_BASE, attention_type="performer").field_value(name))[0]
        FWPConfig.check_loading_keeps_weight_meaning(str(tmp_path), as_override(name, value))
