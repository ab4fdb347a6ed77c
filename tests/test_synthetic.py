"""Synthetic experiments (`fwp_hf.experiments`): task generators, the small models, the --quick pipelines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fwp_hf.experiments import associative_retrieval, synthetic_retrieval
from fwp_hf.experiments.synthetic import (
    BA_VOCAB,
    FastWeightsRNN,
    LSTMClassifier,
    RetrievalModel,
    ba_decode,
    ba_encode,
    make_ba_retrieval_dataset,
    make_retrieval_batch,
    parse_args_with_config,
    parse_retrieval_method,
    retrieval_loss,
)
from fwp_hf.feature_maps_fwp import dpfp_feature_map, elu_plus_one_feature_map

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Schlag et al. retrieval task
# ----------------------------------------------------------------------------------------------


def test_setting1_batch_is_a_permutation_and_targets_are_the_paired_values():
    generator = torch.Generator().manual_seed(0)
    batch = make_retrieval_batch(num_keys=12, batch_size=5, with_replacement=False, generator=generator)
    assert batch.key_ids.shape == batch.value_ids.shape == (5, 12)
    assert batch.query_mask.all()
    for b in range(5):
        assert sorted(batch.key_ids[b].tolist()) == list(range(12))
        assert len(set(batch.value_ids[b].tolist())) == 12
        pairs = dict(zip(batch.key_ids[b].tolist(), batch.value_ids[b].tolist()))
        for query, target in zip(batch.query_ids[b].tolist(), batch.target_ids[b].tolist()):
            assert target == pairs[query]


def test_setting2_target_is_the_last_value_written_to_the_key():
    generator = torch.Generator().manual_seed(1)
    batch = make_retrieval_batch(num_keys=6, batch_size=8, with_replacement=True, generator=generator)
    assert batch.key_ids.shape == (8, 12)
    saw_repeat = False
    for b in range(8):
        last = {}
        for key, value in zip(batch.key_ids[b].tolist(), batch.value_ids[b].tolist()):
            saw_repeat |= key in last
            last[key] = value
        for query, target, valid in zip(
            batch.query_ids[b].tolist(), batch.target_ids[b].tolist(), batch.query_mask[b].tolist()
        ):
            assert valid == (query in last)
            assert target == (last[query] if valid else -1)
    assert saw_repeat  # 12 draws from 6 keys always repeat a key


def test_parse_retrieval_method():
    assert parse_retrieval_method("softmax") == {"memory": "softmax"}
    assert parse_retrieval_method("linear") == {"memory": "sum", "feature_map": "elu"}
    assert parse_retrieval_method("delta_dpfp2") == {"memory": "delta", "feature_map": "dpfp", "dpfp_nu": 2}
    assert parse_retrieval_method("favor64") == {"memory": "sum", "feature_map": "favor", "favor_features": 64}
    for bad in ("dpfp", "hebb_linear", "favorx", "cosine"):
        with pytest.raises(ValueError):
            parse_retrieval_method(bad)


@pytest.mark.parametrize("method", ["linear", "dpfp2"])
def test_sum_rule_model_reads_the_normalised_sum_of_its_writes(method):
    """The write call + zero-write read call equal ŷ = Σ_i (φ(k_i)·φ(q)) v_i / Σ_i φ(k_i)·φ(q)."""
    torch.manual_seed(0)
    model = RetrievalModel(7, **parse_retrieval_method(method))
    batch = make_retrieval_batch(7, 3, False, torch.Generator().manual_seed(0))
    prediction = model(batch.key_ids, batch.value_ids, batch.query_ids)
    values = torch.nn.functional.one_hot(batch.value_ids, 7).float()
    keys = model.key_proj(torch.cat([values, model.key_embedding(batch.key_ids)], dim=-1))
    queries = model.query_proj(model.key_embedding(batch.query_ids))
    phi = elu_plus_one_feature_map if method == "linear" else (lambda x: dpfp_feature_map(x, 2))
    weights = phi(queries) @ phi(keys).transpose(-1, -2)  # [B, Q, T]
    expected = (weights @ values) / (weights.sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(prediction, expected, rtol=1e-4, atol=1e-5)


def test_delta_model_overwrites_a_repeated_key():
    """With β = 1 and keys whose DPFP features are orthogonal, the delta rule keeps only the last value."""
    model = RetrievalModel(2, num_values=3, memory="delta", feature_map="dpfp", dpfp_nu=1, key_dim=2, embedding_dim=2)
    with torch.no_grad():
        model.key_embedding.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))  # φ: e_2 and e_1
        model.key_proj.weight.zero_()
        model.key_proj.weight[:, 3:].copy_(torch.eye(2))
        model.key_proj.bias.zero_()
        model.query_proj.weight.copy_(torch.eye(2))
        model.query_proj.bias.zero_()
        model.beta_proj.weight.zero_()
        model.beta_proj.bias.fill_(50.0)  # β ≈ 1
    key_ids = torch.tensor([[0, 1, 0]])
    value_ids = torch.tensor([[0, 1, 2]])
    prediction = model(key_ids, value_ids, torch.tensor([[0, 1]]))
    torch.testing.assert_close(prediction, torch.eye(3)[[2, 1]].unsqueeze(0), atol=1e-4, rtol=0)


def test_retrieval_loss_ignores_absent_keys():
    batch = make_retrieval_batch(4, 2, True, torch.Generator().manual_seed(3))
    perfect = torch.nn.functional.one_hot(batch.target_ids.clamp_min(0), 4).float()
    perfect[~batch.query_mask] = 5.0  # garbage where the key is absent must not count
    assert retrieval_loss(perfect, batch).item() == 0.0


def test_bad_retrieval_arguments():
    with pytest.raises(ValueError):
        make_retrieval_batch(0, 4, False)
    with pytest.raises(ValueError):
        RetrievalModel(4, memory="hebbian")
    with pytest.raises(ValueError):
        RetrievalModel(4, memory="sum", feature_map="tanh")


# ----------------------------------------------------------------------------------------------
# Ba et al. retrieval task
# ----------------------------------------------------------------------------------------------


def test_ba_dataset_string_format_and_target():
    data = make_ba_retrieval_dataset(200, num_pairs=4, seed=0)
    assert len(BA_VOCAB) == 37
    assert data.inputs.shape == (200, 11)
    pattern = re.compile(r"^(?:[a-z][0-9]){4}\?\?[a-z]$")
    for ids, target in zip(data.inputs, data.targets.tolist()):
        text = ba_decode(ids)
        assert pattern.match(text), text
        keys = text[0:8:2]
        assert len(set(keys)) == 4  # distinct keys
        query = text[-1]
        assert query in keys
        assert int(text[text.index(query) + 1]) == target
        assert torch.equal(ba_encode(text), ids)


def test_ba_dataset_is_deterministic_given_the_seed():
    first, second = make_ba_retrieval_dataset(50, seed=3), make_ba_retrieval_dataset(50, seed=3)
    other = make_ba_retrieval_dataset(50, seed=4)
    assert torch.equal(first.inputs, second.inputs) and torch.equal(first.targets, second.targets)
    assert not torch.equal(first.inputs, other.inputs)
    with pytest.raises(ValueError):
        ba_encode("c9!")
    with pytest.raises(ValueError):
        make_ba_retrieval_dataset(10, num_pairs=27)


def test_fast_weights_rnn_without_inner_steps_is_a_relu_rnn():
    """S = 0 inner steps: the memory is never read, so h_t = relu(W h_{t-1} + C x_t)."""
    torch.manual_seed(0)
    model = FastWeightsRNN(8, inner_steps=0)
    ids = make_ba_retrieval_dataset(4, seed=0).inputs
    hidden = torch.zeros(4, 8)
    for t in range(ids.shape[1]):
        hidden = torch.relu(model.recurrent(hidden) + model.input_proj(ids[:, t]))
    torch.testing.assert_close(model(ids), model.head(hidden))


def test_fast_weights_rnn_memory_changes_the_output():
    torch.manual_seed(0)
    with_memory = FastWeightsRNN(8, fast_learning_rate=0.5)
    without_memory = FastWeightsRNN(8, fast_learning_rate=0.0)
    without_memory.load_state_dict(with_memory.state_dict())
    ids = make_ba_retrieval_dataset(4, seed=0).inputs
    assert with_memory(ids).shape == LSTMClassifier(8)(ids).shape == (4, 10)
    assert not torch.allclose(with_memory(ids), without_memory(ids))
    with pytest.raises(ValueError):
        FastWeightsRNN(8, decay=1.5)


# ----------------------------------------------------------------------------------------------
# Config parsing and the scripts' --quick pipelines
# ----------------------------------------------------------------------------------------------


def test_config_file_is_overridden_by_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("setting: 2\nmethods: [delta_linear]\nsizes: [20, 40]\nbatch_size: 8\n")
    arguments = synthetic_retrieval.RetrievalExperimentArguments
    args = parse_args_with_config(arguments, ["--config", str(config), "--sizes", "10"])
    assert (args.setting, args.methods, args.sizes, args.batch_size) == (2, ["delta_linear"], [10], 8)
    config.write_text("not_an_argument: 1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\)"):
        parse_args_with_config(arguments, ["--config", str(config)])


@pytest.mark.parametrize("setting", [1, 2])
def test_synthetic_retrieval_quick_pipeline(tmp_path, setting):
    config = ROOT / "configs" / "synthetic" / f"retrieval_setting{setting}.yaml"
    results = synthetic_retrieval.main(
        ["--config", str(config), "--quick", "true", "--output_dir", str(tmp_path), "--show_progress", "false"]
    )
    assert results["runs"], "no run was trained"
    for run in results["runs"]:
        assert run["final_loss"] < run["initial_eval_loss"], run
        assert run["best_eval_loss"] < 0.8 * run["initial_eval_loss"], run
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == len(results["runs"])
    assert (tmp_path / "loss_vs_keys.png").stat().st_size > 0
    assert "| method |" in (tmp_path / "table.md").read_text()


def test_associative_retrieval_quick_pipeline(tmp_path):
    config = ROOT / "configs" / "synthetic" / "associative_retrieval.yaml"
    results = associative_retrieval.main(
        ["--config", str(config), "--quick", "true", "--output_dir", str(tmp_path), "--show_progress", "false"]
    )
    assert {run["model"] for run in results["runs"]} == {"fast_weights", "lstm"}
    for run in results["runs"]:
        first, last = run["curve"][0], run["curve"][-1]
        assert last["validation_loss"] < first["validation_loss"], run["curve"]
        assert 0.0 <= run["test_error"] <= 100.0
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "paper" in (tmp_path / "table.md").read_text()
