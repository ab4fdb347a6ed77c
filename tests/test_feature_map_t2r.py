"""The T2R feature map (Kasai et al. 2021; FLA's ``T2RFeatureMap``): φ(x) = relu(W x + b), a learned map with
a hyperparameter of its own (its width d_dot, and whether it has a bias) — added as a registry entry and its
options only. Checked against a plain-loop transcription of the formula, and in a model."""

from __future__ import annotations

import pytest
import torch
from conftest import LM_BASE

from fwp_hf import FWPConfig, FWPForCausalLM
from fwp_hf.feature_maps_fwp import FEATURE_MAPS, T2ROptions, t2r_feature_map
from fwp_hf.options_fwp import LEGACY_FLAT_KEYS

BASE = {key: value for key, value in LM_BASE.items() if key not in LEGACY_FLAT_KEYS}


def t2r_by_hand(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """φ(x)_i = max(0, Σ_j W_ij x_j + b_i), one vector at a time with Python loops."""
    rows = []
    for vector in x.reshape(-1, x.shape[-1]).tolist():
        row = []
        for i, weights_i in enumerate(weight.tolist()):
            total = sum(w * value for w, value in zip(weights_i, vector)) + (0.0 if bias is None else bias[i].item())
            row.append(max(0.0, total))
        rows.append(row)
    return torch.tensor(rows, dtype=x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@pytest.mark.parametrize("feature_dim, bias", [(None, False), (7, True), (3, False)])
def test_t2r_matches_the_formula(feature_dim, bias):
    spec, options = FEATURE_MAPS["t2r"], T2ROptions(feature_dim=feature_dim, bias=bias)
    generator = torch.Generator().manual_seed(0)
    weights = spec.weights(options, 5, 2, generator)
    assert weights["projection"].shape == (feature_dim or 5, 5) and ("bias" in weights) == bias
    x = torch.randn(2, 2, 4, 5, generator=generator, dtype=torch.float64)
    weights = {name: value.double() for name, value in weights.items()}
    phi = spec.apply(x, options, weights)
    assert phi.shape == (2, 2, 4, spec.output_dim(5, options)) == (2, 2, 4, feature_dim or 5)
    expected = t2r_by_hand(x, weights["projection"], weights.get("bias"))
    torch.testing.assert_close(phi, expected)
    torch.testing.assert_close(t2r_feature_map(x, weights["projection"], weights.get("bias")), expected)
    assert (phi >= 0).all() and (phi == 0).any() and spec.nonnegative and spec.learned


def test_t2r_in_a_delta_model_has_its_width_and_weights_and_round_trips(tmp_path):
    config = FWPConfig(**BASE, attention_type="delta", fast_weight={"feature_map": "t2r"},
                       feature_maps={"t2r": {"feature_dim": 6, "bias": True}})
    torch.manual_seed(0)
    model = FWPForCausalLM(config).eval()
    mixer = model.model.layers[0].mixer
    head_dim = config.head_dim
    assert mixer.feature_map.projection.shape == (6, head_dim) and mixer.feature_map.bias.shape == (6,)
    assert isinstance(mixer.feature_map.projection, torch.nn.Parameter)  # learned, not a buffer
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model(ids, use_cache=True)
    state = output.past_key_values.layers[0].recurrent_states[0]
    assert state.shape[-2] == 6  # d_dot = the map's feature_dim
    model.save_pretrained(tmp_path)
    loaded = FWPForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.feature_maps["t2r"] == T2ROptions(feature_dim=6, bias=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, output.logits)
    # its hyperparameters fix what the weights mean: a load-time change of them is refused
    with pytest.raises(ValueError, match=r"changes feature_maps\.t2r\.feature_dim"):
        FWPForCausalLM.from_pretrained(tmp_path, feature_maps={"t2r": {"feature_dim": 4}})


def test_t2r_options_are_validated():
    with pytest.raises(ValueError, match=r"FWPConfig\.feature_maps\.t2r\.feature_dim must be a positive integer or "
                                         r"None, got 0"):
        FWPConfig(**BASE, feature_maps={"t2r": {"feature_dim": 0}})
