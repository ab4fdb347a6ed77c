"""The config's option groups (`options_fwp`): each group validates itself, older flat configs keep loading
(one legacy map, for config.json, constructor arguments, load-time overrides and `update_from_string`) and
build the same model, and a config is saved in the nested shape."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch
from conftest import LM_BASE

from fwp_hf import FWPConfig, FWPForCausalLM
from fwp_hf.feature_maps_fwp import FEATURE_MAPS
from fwp_hf.options_fwp import LAYER_OPTION_GROUPS, LEGACY_FLAT_KEYS
from fwp_hf.training.common import parse_overrides_json

# conftest's LM_BASE with its flat keys of older configs left out (this file gives groups)
BASE = {key: value for key, value in LM_BASE.items() if key not in LEGACY_FLAT_KEYS}
IDS = torch.randint(0, BASE["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))

# A config.json as fwp_hf wrote it before the option groups (flat keys), and the same config in the new shape.
FLAT_HYBRID = {
    **BASE, "model_type": "fwp", "attention_type": ["gated_delta", "softmax"], "feature_map": "elu",
    "use_short_conv": True, "conv_size": 3, "conv_bias": True, "value_activation": "silu", "key_normalization": "l2",
    "scale_queries": True, "allow_neg_eigval": True, "output_norm": True, "output_gate": True,
    "attention_output_bias": True, "use_qk_norm": True, "attention_bias": True, "fast_weight_key_value_heads": 1,
    "softmax_num_heads": 4, "num_key_value_heads": 2, "sliding_window": 5,
    "rope_scaling_parameters": {"rope_type": "linear", "factor": 2.0}, "dpfp_nu": 2, "performer_num_features": 6,
    "performer_seed": 3, "performer_redraw": False, "attention_normalization": True, "fast_weights_decay": 0.9,
    "fast_weights_learning_rate": 0.4, "fast_weights_inner_steps": 2,
}
NESTED_HYBRID = {
    **BASE, "attention_type": ["gated_delta", "softmax"], "attention_bias": True, "num_key_value_heads": 2,
    "fast_weight": {"feature_map": "elu", "use_short_conv": True, "conv_size": 3, "conv_bias": True,
                    "value_activation": "silu", "key_normalization": "l2", "scale_queries": True,
                    "allow_neg_eigval": True, "output_norm": True, "output_gate": True, "output_bias": True,
                    "qk_norm": True, "key_value_heads": 1},
    "softmax_attention": {"num_heads": 4, "sliding_window": 5, "output_bias": True, "qk_norm": True,
                          "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "feature_maps": {"dpfp": {"nu": 2}, "favor": {"num_features": 6, "seed": 3}},
    "hebbian_memory": {"decay": 0.9, "learning_rate": 0.4, "inner_steps": 2},
}


def logits(config: FWPConfig) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return FWPForCausalLM(config).eval()(IDS).logits


def test_init_takes_at_most_25_named_fields():
    parameters = [p for name, p in inspect.signature(FWPConfig.__init__).parameters.items()
                  if name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(parameters) <= 25, [p.name for p in parameters]


def test_every_legacy_key_has_a_place_in_a_group():
    saved = FWPConfig().to_dict()
    for key, places in LEGACY_FLAT_KEYS.items():
        for path in places:
            place = saved
            for part in path:
                assert isinstance(place, dict) and part in place, (key, path)
                place = place[part]


def test_a_flat_config_json_loads_as_the_nested_config_and_computes_the_same(tmp_path):
    flat = FWPConfig.from_dict(FLAT_HYBRID)
    nested = FWPConfig(**NESTED_HYBRID)
    assert flat.to_dict() == nested.to_dict()
    torch.testing.assert_close(logits(flat), logits(nested), rtol=0, atol=0)
    # an older checkpoint folder: its flat config.json loads, and is saved back in the nested shape
    (tmp_path / "config.json").write_text(json.dumps(FLAT_HYBRID))
    loaded = FWPConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == nested.to_dict()
    loaded.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert not set(LEGACY_FLAT_KEYS) & set(saved)
    assert saved["fast_weight"]["conv_size"] == 3 and saved["feature_maps"]["dpfp"] == {"nu": 2}


def test_flat_constructor_arguments_still_work():
    config = FWPConfig(**{**BASE, "attention_type": "delta", "dpfp_nu": 2, "use_short_conv": True})
    assert config.feature_maps["dpfp"].nu == 2 and config.fast_weight.use_short_conv
    assert config.to_dict() == FWPConfig(**BASE, attention_type="delta", feature_maps={"dpfp": {"nu": 2}},
                                         fast_weight={"use_short_conv": True}).to_dict()


def test_a_shared_legacy_key_goes_to_the_groups_of_the_layer_kinds_the_model_has():
    delta = FWPConfig(**BASE, attention_type="delta", attention_output_bias=True)
    assert delta.fast_weight.output_bias and not delta.softmax_attention.output_bias
    hybrid = FWPConfig(**{**BASE, "attention_type": ["delta", "softmax"], "use_qk_norm": True})
    assert hybrid.fast_weight.qk_norm and hybrid.softmax_attention.qk_norm


def test_a_flat_key_and_its_group_field_with_different_values_are_refused():
    with pytest.raises(ValueError, match=r"dpfp_nu=2 \(a flat key of older configs\) and feature_maps\.dpfp\.nu=3"):
        FWPConfig(**BASE, dpfp_nu=2, feature_maps={"dpfp": {"nu": 3}})


def test_setting_a_flat_key_on_a_config_names_its_new_place():
    config = FWPConfig(**BASE)
    with pytest.raises(AttributeError, match=r"config\.feature_maps\.dpfp\.nu"):
        config.dpfp_nu = 2
    config.fast_weight = {"use_short_conv": True}  # a group set from a dict becomes the typed group
    assert config.fast_weight.use_short_conv and config.fast_weight.conv_size == 4


def test_load_time_overrides_in_either_shape(tmp_path):
    FWPConfig(**BASE, attention_type="delta", fast_weight={"feature_map": "elu"}).save_pretrained(tmp_path)
    assert FWPConfig.from_pretrained(tmp_path, dpfp_nu=3).feature_maps["dpfp"].nu == 3
    # a group override changes the fields it names, and keeps the saved ones
    config = FWPConfig.from_pretrained(tmp_path, fast_weight={"use_short_conv": True})
    assert config.fast_weight.use_short_conv and config.fast_weight.feature_map == "elu"
    # the weight-meaning check reads both shapes
    for override in ({"use_short_conv": True}, {"fast_weight": {"use_short_conv": True}}):
        with pytest.raises(ValueError, match=r"changes fast_weight\.use_short_conv"):
            FWPForCausalLM.from_pretrained(tmp_path, **override)


def test_update_from_string_reads_flat_and_dotted_keys():
    config = FWPConfig(**BASE, attention_type="fast_weights")
    config.update_from_string("fast_weights_decay=0.5,hebbian_memory.inner_steps=3,feature_maps.dpfp.nu=2,chunk_size=8")
    assert (config.hebbian_memory.decay, config.hebbian_memory.inner_steps) == (0.5, 3)
    assert config.feature_maps["dpfp"].nu == 2 and config.chunk_size == 8
    with pytest.raises(ValueError, match=r"hebbian_memory\.decay must be in \(0, 1\], got 2\.0"):
        config.update_from_string("hebbian_memory.decay=2.0")
    with pytest.raises(ValueError, match="key fast_weight.conv_sizes isn't in the original config dict"):
        config.update_from_string("fast_weight.conv_sizes=3")


def test_config_overrides_accept_flat_keys_and_groups():
    overrides = parse_overrides_json('{"dpfp_nu": 2, "hebbian_memory": {"decay": 0.9}}')
    config = FWPConfig(**FWPConfig.merged_config_dict(dict(BASE, attention_type="fast_weights"), overrides))
    assert config.feature_maps["dpfp"].nu == 2 and config.hebbian_memory.decay == 0.9
    with pytest.raises(ValueError, match="unknown FWPConfig key"):
        parse_overrides_json('{"dpfp_nus": 2}')


# ----------------------------------------------------------------------------------------------
# Each group validates itself
# ----------------------------------------------------------------------------------------------

GROUP_FIELDS = [(key, name) for key, group in LAYER_OPTION_GROUPS.items() for name in group.field_names()]
MAP_FIELDS = [(name, field) for name, spec in FEATURE_MAPS.items() for field in spec.options.field_names()]


@pytest.mark.parametrize("key, name", GROUP_FIELDS, ids=[f"{k}.{n}" for k, n in GROUP_FIELDS])
def test_every_group_field_refuses_a_value_of_the_wrong_kind(key, name):
    with pytest.raises(ValueError, match=rf"^FWPConfig\.{key}\.{name} .*(must be|is unknown; allowed: )"):
        FWPConfig(**BASE, **{key: {name: ["x"]}})


@pytest.mark.parametrize("map_name, name", MAP_FIELDS, ids=[f"{m}.{n}" for m, n in MAP_FIELDS])
def test_every_feature_map_option_refuses_a_value_of_the_wrong_kind(map_name, name):
    with pytest.raises(ValueError, match=rf"^FWPConfig\.feature_maps\.{map_name}\.{name} must be .*got \['x'\]"):
        FWPConfig(**BASE, feature_maps={map_name: {name: ["x"]}})


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"fast_weight": {"conv_sizes": 3}}, (r"FWPConfig\.fast_weight has unknown option\(s\) 'conv_sizes'; allowed: "
                                             r"'feature_map', .*'conv_size'")),
        ({"softmax_attention": "window"}, r"FWPConfig\.softmax_attention must be a dict of its options"),
        ({"feature_maps": {"dpfq": {}}}, r"FWPConfig\.feature_maps has unknown feature map\(s\) 'dpfq'; allowed: "
                                        + re.escape(", ".join(map(repr, FEATURE_MAPS)))),
        ({"feature_maps": {"dpfp": {"mu": 2}}}, (r"FWPConfig\.feature_maps\.dpfp has unknown option\(s\) 'mu'; "
                                                r"allowed: 'nu'")),
        ({"hebbian_memory": {"decay": 1.5}}, r"FWPConfig\.hebbian_memory\.decay must be in \(0, 1\], got 1\.5"),
        ({"fast_weight": {"key_normalization": "l1"}},
         r"FWPConfig\.fast_weight\.key_normalization 'l1' is unknown; allowed: None, 'sum', 'l2' "
         r"\(None: the rule's own\)"),
        ({"attention_type": "linear", "fast_weight": {"use_short_conv": True}, "is_encoder_decoder": True},
         r"fast_weight\.use_short_conv are options of decoder-only models"),
        ({"attention_type": "softmax", "fast_weight": {"output_gate": True}},
         r"fast_weight\.output_gate=True would change no layer of this model"),
        ({"attention_type": "linear", "fast_weight": {"allow_neg_eigval": True}},
         r"fast_weight\.allow_neg_eigval=True would change no layer"),  # the sum rule has no β
        ({"attention_type": "delta", "softmax_attention": {"sliding_window": 4}},
         r"softmax_attention\.sliding_window=4 would change no layer"),
    ],
    ids=["unknown-field", "not-a-dict", "unknown-map", "unknown-map-option", "decay", "key_normalization",
         "decoder-only", "unused-fast-weight-option", "unused-beta-option", "unused-softmax-option"],
)
def test_group_errors_name_the_group_the_field_and_what_is_allowed(fields, message):
    with pytest.raises(ValueError, match=message):
        FWPConfig(**{**BASE, **fields})


def test_a_group_override_of_the_importers_keeps_the_fields_they_set():
    """The linearizer's student config (a Qwen3 teacher: q/k norm) with an override of one fast-weight option keeps
    the group's other fields, which the teacher's weights need."""
    from transformers import Qwen3Config

    from fwp_hf.conversion.linearize import student_config_from_teacher

    teacher = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    student = student_config_from_teacher(teacher, "delta", fast_weight={"use_short_conv": True})
    assert student.fast_weight.use_short_conv and student.fast_weight.qk_norm
    assert student.fast_weight.key_value_heads == 2
