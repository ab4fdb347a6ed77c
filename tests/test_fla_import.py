"""Importing flash-linear-attention (FLA) DeltaNet / Gated DeltaNet checkpoints (`fwp_hf.load_fla_checkpoint`,
`fwp_hf.convert_fla_checkpoint`, `scripts/convert_fla_checkpoint.py`).

FLA needs Triton and CUDA, so the checkpoints are built without it (`fla_reference`: FLA's config classes, FLA's
parameter names and shapes, safetensors as transformers writes them) and the converted models are compared with
`fla_reference.fla_reference_logits`, an independent per-token float64 transcription of FLA's model forward.

Covered: logits equal the reference for FLA's defaults and the options that change the function (gate,
negative eigenvalues, no short conv, sum/l2 norms, every q/k activation, expand_k/expand_v, a sliding-window GQA
softmax layer with q/k/v biases and its own rope_theta, Gated DeltaNet with and without gate/conv), sharded
checkpoints and FLA's training-only flags; cached decoding and `generate` with and without the cache; left-padded
batches; refusals (FLACheckpointError naming the option / parameter / shape) and no half-written output folder;
the converted folder loaded with remote code where fwp_hf is not importable; a few `Trainer` steps and a
save/reload; the CLI (from a folder and from a Hub id, pushing the result to the test Hub, where a
process without fwp_hf loads it) copying the tokenizer. The first tests check the
reference itself against FLA's own naive kernels and plain torch ops.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fla_reference as R
import pytest
import torch
import torch.nn.functional as F
from isolation import run_without_fwp_hf
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Trainer, TrainingArguments

import fwp_hf
import fwp_hf.conversion.fla
from fwp_hf import FLACheckpointError, FWPForCausalLM, convert_fla_checkpoint, load_fla_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 97
CHUNK = 16  # fwp chunk length the converted models run with: the test sequences cross chunk boundaries
ATOL = RTOL = 1e-4
PAD = 0


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def random_ids(batch: int, length: int, seed: int = 1, low: int = 1) -> torch.Tensor:
    """Ids in [low, VOCAB): by default never the pad id 0."""
    return torch.randint(low, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Tiny FLA configs
# ----------------------------------------------------------------------------------------------


def delta_net(**overrides) -> R.DeltaNetConfig:
    kwargs = {"hidden_size": 32, "num_heads": 4, "num_hidden_layers": 2, "vocab_size": VOCAB, "intermediate_size": 64}
    return R.DeltaNetConfig(**{**kwargs, **overrides})


def gated_deltanet(**overrides) -> R.GatedDeltaNetConfig:
    # FLA's defaults otherwise (use_gate, expand_v=2, short conv); num_heads * head_dim = 0.75 * hidden as FLA advises.
    kwargs = {"hidden_size": 32, "num_heads": 3, "head_dim": 8, "num_hidden_layers": 2, "vocab_size": VOCAB,
              "intermediate_size": 64}
    return R.GatedDeltaNetConfig(**{**kwargs, **overrides})


HYBRID_ATTN = {"layers": [1], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": True, "window_size": 8,
               "rope_theta": 500.0}

# name -> (config factory, sequence length). Every length crosses a CHUNK boundary.
LOGIT_CASES = {
    # FLA's defaults (short conv, silu, l2, beta, no gate), GatedMLP width from hidden_ratio (256).
    "delta_net-defaults": (lambda: delta_net(intermediate_size=None), 37),
    "delta_net-gate-negeig": (lambda: delta_net(use_gate=True, allow_neg_eigval=True, conv_size=3, norm_eps=1e-5), 33),
    # conv_bias in config.json: FLA's DeltaNetBlock never passes it to DeltaNet (conv_bias is not even a
    # DeltaNetConfig parameter, just an extra attribute), so FLA's model has no conv biases and computes without.
    "delta_net-convbias-in-config": (lambda: delta_net(use_gate=True, allow_neg_eigval=True, conv_bias=True), 33),
    "delta_net-noconv-sum-elu": (lambda: delta_net(use_short_conv=False, qk_norm="sum", qk_activation="elu"), 35),
    "delta_net-noconv-relu": (lambda: delta_net(use_short_conv=False, qk_activation="relu"), 34),
    "delta_net-conv-identity": (lambda: delta_net(qk_activation="identity", conv_size=2, use_gate=True), 33),
    "delta_net-conv-elu-sum": (lambda: delta_net(qk_activation="elu", qk_norm="sum"), 33),
    "delta_net-expand": (lambda: delta_net(expand_k=0.5, expand_v=2.0), 36),
    "delta_net-hybrid-window-gqa": (lambda: delta_net(num_hidden_layers=3, attn=dict(HYBRID_ATTN)), 40),
    # Flags that change nothing in inference (kernel choice, fused/unfused norms and losses, l2 warp).
    "delta_net-training-flags": (lambda: delta_net(attn_mode="fused_recurrent", fuse_norm=False, fuse_swiglu=False,
                                                   fuse_cross_entropy=False, use_l2warp=True, hidden_ratio=2,
                                                   intermediate_size=None), 33),
    "gated_deltanet-defaults": (lambda: gated_deltanet(), 37),
    "gated_deltanet-negeig": (lambda: gated_deltanet(allow_neg_eigval=True), 35),
    "gated_deltanet-nogate-noconv": (lambda: gated_deltanet(use_gate=False, use_short_conv=False, expand_v=1.0), 34),
    # A list of attn specs, defaults filled in by FLA (kv heads = heads, no bias, no window, theta 10000), layer 0.
    "gated_deltanet-hybrid": (lambda: gated_deltanet(num_heads=2, head_dim=12, num_hidden_layers=3,
                                                     attn=[{"layers": [0], "num_heads": 2}]), 36),
    # FLA's usual hybrids give the softmax layers their own head count (e.g. 6 GDN heads, 16 attention heads):
    # here 3 GDN heads of size 8 and 8 grouped-query softmax heads of size 4 over 2 key/value heads.
    "gated_deltanet-hybrid-head-counts": (
        lambda: gated_deltanet(num_hidden_layers=3, attn={"layers": [1], "num_heads": 8, "num_kv_heads": 2}), 31
    ),
}


def make_checkpoint(directory: Path, config, seed: int = 0, shards: int = 1) -> tuple[Path, dict]:
    state = R.random_fla_state_dict(config, seed=seed)
    R.write_fla_checkpoint(directory, config, state, shards=shards)
    return directory, state


def load(path, **kwargs) -> FWPForCausalLM:
    model = load_fla_checkpoint(str(path), chunk_size=CHUNK, **kwargs)
    assert isinstance(model, FWPForCausalLM)
    return model.eval()


def logits_of(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


@pytest.fixture(scope="module")
def case_checkpoints(tmp_path_factory):
    """{case: (folder, config, state)}, written once per module."""
    root = tmp_path_factory.mktemp("fla")
    out = {}
    for i, (name, (factory, _)) in enumerate(LOGIT_CASES.items()):
        config = factory()
        folder, state = make_checkpoint(root / name, config, seed=i)
        out[name] = (folder, config, state)
    return out


# ----------------------------------------------------------------------------------------------
# The reference itself
# ----------------------------------------------------------------------------------------------


def test_reference_short_conv_is_a_causal_depthwise_conv1d():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(6, 1, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    for b in (None, bias):
        expected = F.conv1d(x.T[None], weight, b, padding=3, groups=6)[0, :, :11].T  # nn.Conv1d(padding=W-1)[:T]
        torch.testing.assert_close(R.short_conv(x, weight, b, None), expected)
        torch.testing.assert_close(R.short_conv(x, weight, b, "silu"), F.silu(expected))
    # causal: changing a later token changes nothing before it
    y = x.clone()
    y[7] += 1
    assert torch.equal(R.short_conv(x, weight, bias, "silu")[:7], R.short_conv(y, weight, bias, "silu")[:7])


def _random_qkvb(batch, length, heads, d_k, d_v, seed):
    gen = torch.Generator().manual_seed(seed)
    q = R.l2norm(torch.randn(batch, length, heads, d_k, generator=gen, dtype=torch.float64))
    k = R.l2norm(torch.randn(batch, length, heads, d_k, generator=gen, dtype=torch.float64))
    v = torch.randn(batch, length, heads, d_v, generator=gen, dtype=torch.float64)
    beta = torch.rand(batch, length, heads, generator=gen, dtype=torch.float64)
    return q, k, v, beta


def test_reference_delta_rule_equals_flas_chunkwise_form():
    q, k, v, beta = _random_qkvb(2, 32, 3, 8, 5, seed=1)
    beta = 2 * beta  # negative eigenvalues too
    expected, expected_state = R.fla_delta_rule_chunkwise(*(x.transpose(1, 2) for x in (q, k, v, beta)), chunk_size=8)
    for b in range(2):
        o, state = R.delta_rule_recurrent(q[b] * 8 ** -0.5, k[b], v[b], beta[b])
        torch.testing.assert_close(o, expected[b].transpose(0, 1))
        torch.testing.assert_close(state, expected_state[b])


def test_reference_gated_delta_rule_equals_flas_naive_kernels():
    q, k, v, beta = _random_qkvb(2, 37, 3, 8, 6, seed=2)
    g = -torch.rand(2, 37, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    chunked, _chunked_state = R.fla_naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=16)  # T not a multiple
    recurrent, recurrent_state = R.fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g)
    torch.testing.assert_close(chunked, recurrent)
    for b in range(2):
        o, state = R.delta_rule_recurrent(q[b] * 8 ** -0.5, k[b], v[b], beta[b], g[b])
        torch.testing.assert_close(o, recurrent[b])
        torch.testing.assert_close(state, recurrent_state[b])


def test_reference_gated_delta_rule_with_grouped_value_heads():
    """FLA's GVA: value head hv reads q/k head hv // (HV / H): the same as repeating q, k per group."""
    q, k, _, _ = _random_qkvb(1, 9, 2, 4, 3, seed=4)
    _, _, v, beta = _random_qkvb(1, 9, 4, 4, 3, seed=5)
    g = -torch.rand(9, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    o, _ = R.delta_rule_recurrent(q[0], k[0], v[0], beta[0], g)
    o_rep, _ = R.delta_rule_recurrent(q[0].repeat_interleave(2, 1), k[0].repeat_interleave(2, 1), v[0], beta[0], g)
    torch.testing.assert_close(o, o_rep)


def test_reference_softmax_attention_masks_and_gqa():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(12, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(12, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(12, 2, 8, generator=gen, dtype=torch.float64)
    for window in (None, 5):
        i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
        allowed = (j <= i) & ((i - j < window) if window else True)
        expected = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1),
            attn_mask=allowed,
        ).transpose(0, 1)
        torch.testing.assert_close(R.softmax_attention(q, k, v, window), expected)
    # flash-attn window (w-1, 0): with equal scores a query averages exactly itself and the w-1 previous values
    out = R.softmax_attention(torch.zeros(12, 2, 8, dtype=torch.float64), k[:, :1], v[:, :1], 5)
    for t in range(12):
        torch.testing.assert_close(out[t, 1], v[max(0, t - 4):t + 1, 0].mean(0))


def test_reference_rotary_is_neox_style_rotation():
    """Pairs (x_j, x_{j+d/2}) rotate by angle pos * theta^(-2j/d); scores depend on relative positions only."""
    d, base = 8, 500.0
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(10, 1, d, generator=gen, dtype=torch.float64)
    cos, sin = R.rotary_cos_sin(d, base, 10)
    rotated = R.apply_rotary(x, cos, sin)
    angle = torch.arange(10, dtype=torch.float64)[:, None] * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[:, 0, : d // 2], x[:, 0, d // 2:]) * torch.exp(1j * angle)
    torch.testing.assert_close(rotated[:, 0], torch.cat([z.real, z.imag], -1), atol=1e-6, rtol=1e-6)
    a, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    same_a = R.apply_rotary(a.expand(10, 1, d), cos, sin)[:, 0]
    same_b = R.apply_rotary(b.expand(10, 1, d), cos, sin)[:, 0]
    torch.testing.assert_close(same_a[7] @ same_b[4], same_a[5] @ same_b[2], atol=1e-6, rtol=1e-6)


def test_reference_configs_serialise_like_flas():
    config = R.DeltaNetConfig()
    saved = config.to_dict()
    fla_defaults = {
        "attn_mode": "chunk", "hidden_size": 2048, "expand_k": 1.0, "expand_v": 1.0, "use_gate": False,
        "use_short_conv": True, "allow_neg_eigval": False, "conv_size": 4, "use_beta": True, "use_output_norm": True,
        "num_heads": 16, "qk_norm": "l2", "qk_activation": "silu", "hidden_ratio": 4, "intermediate_size": None,
        "hidden_act": "swish", "num_hidden_layers": 24, "norm_eps": 1e-6, "attn": None, "fuse_norm": True,
        "fuse_swiglu": True, "fuse_cross_entropy": True, "fuse_linear_cross_entropy": False, "use_l2warp": False,
        "vocab_size": 32000, "attnres_block_size": None, "tie_word_embeddings": False, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": None, "model_type": "delta_net",
    }
    for key, value in fla_defaults.items():
        assert saved[key] == value, key
    gdn = R.GatedDeltaNetConfig().to_dict()
    for key, value in {"expand_v": 2.0, "use_gate": True, "head_dim": 256, "num_heads": 6, "num_v_heads": None,
                       "num_hidden_layers": 21, "model_type": "gated_deltanet"}.items():
        assert gdn[key] == value, key
    # FLA normalises attn specs: defaults filled in, dict stays a dict, list stays a list
    assert delta_net(num_hidden_layers=3, attn={"layers": [1], "num_heads": 4}).attn == {
        "layers": [1], "num_heads": 4, "num_kv_heads": 4, "qkv_bias": False, "window_size": None, "rope_theta": 10000.0}
    assert isinstance(gated_deltanet(num_hidden_layers=3, attn=[{"layers": [0], "num_heads": 2}]).attn, list)
    with pytest.raises(ValueError, match="attnres_block_size"):
        R.DeltaNetConfig(attnres_block_size=3)
    with pytest.raises(ValueError, match="out-of-range"):
        delta_net(attn={"layers": [2], "num_heads": 4})
    # GatedMLP width: int(hidden * ratio * 2/3) rounded up to a multiple of 256 (FLA's 1.3B models: 5632)
    assert R.mlp_intermediate_size(R.DeltaNetConfig()) == 5632
    assert R.mlp_intermediate_size(delta_net(intermediate_size=None)) == 256


def test_written_checkpoint_reads_back(tmp_path):
    config = LOGIT_CASES["delta_net-hybrid-window-gqa"][0]()
    state = R.random_fla_state_dict(config, seed=3)
    R.write_fla_checkpoint(tmp_path / "one", config, state)
    R.write_fla_checkpoint(tmp_path / "three", config, state, shards=3)
    assert load_file(tmp_path / "one" / "model.safetensors").keys() == state.keys()
    index = json.loads((tmp_path / "three" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    merged = {}
    for name in sorted(set(index["weight_map"].values())):
        merged.update(load_file(tmp_path / "three" / name))
    assert merged.keys() == state.keys() and all(torch.equal(merged[n], state[n]) for n in state)
    saved = json.loads((tmp_path / "one" / "config.json").read_text())
    assert saved["model_type"] == "delta_net" and saved["attn"]["window_size"] == 8
    assert R.DeltaNetConfig.from_pretrained(tmp_path / "one").attn == config.attn
    logits = R.fla_reference_logits(config, state, random_ids(1, 12))
    assert logits.shape == (1, 12, VOCAB) and 0.3 < logits.std() < 10  # O(1) activations: a meaningful comparison


# ----------------------------------------------------------------------------------------------
# a. Logits equal the reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(LOGIT_CASES))
def test_converted_logits_equal_fla_reference(case, case_checkpoints):
    folder, config, state = case_checkpoints[case]
    length = LOGIT_CASES[case][1]
    ids = random_ids(2, length, seed=11)
    model = load(folder)
    expected = R.fla_reference_logits(config, state, ids)
    assert_logits_close(logits_of(model, ids), expected, case)


def test_sharded_checkpoint_equals_fla_reference(tmp_path):
    config = delta_net(num_hidden_layers=3, attn=dict(HYBRID_ATTN))
    folder, state = make_checkpoint(tmp_path / "sharded", config, seed=5, shards=4)
    ids = random_ids(2, 33, seed=12)
    assert_logits_close(logits_of(load(folder), ids), R.fla_reference_logits(config, state, ids), "sharded")


def test_load_fla_checkpoint_without_overrides(case_checkpoints):
    """Without chunk_size (fwp's default chunk) on a sequence longer than 64 tokens."""
    folder, config, state = case_checkpoints["gated_deltanet-defaults"]
    ids = random_ids(1, 70, seed=13)
    model = load_fla_checkpoint(str(folder)).eval()
    assert_logits_close(logits_of(model, ids), R.fla_reference_logits(config, state, ids), "default chunk")


def test_fla_without_beta_is_refused_by_name(tmp_path):
    """FLA's ``use_beta=False`` (β fixed to 1) has no fwp_hf counterpart: refused, naming the option."""
    folder, _ = make_checkpoint(tmp_path / "no-beta", delta_net(use_beta=False), seed=6)
    with pytest.raises(FLACheckpointError, match=r"use_beta=False"):
        load(folder)


def test_tied_word_embeddings_are_imported_exactly(tmp_path):
    config = delta_net(tie_word_embeddings=True)
    folder, state = make_checkpoint(tmp_path / "tied", config, seed=6)
    assert "lm_head.weight" not in state  # FLA saves the tied matrix once
    model = load(folder)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = random_ids(2, 20, seed=14)
    assert_logits_close(logits_of(model, ids), R.fla_reference_logits(config, state, ids), "tied")


def test_conv_biases_that_flas_model_would_drop_are_refused_by_name(tmp_path):
    """With conv_bias=True in config.json and conv biases in the weights, FLA's DeltaNetForCausalLM still has no conv
    biases (its block does not pass conv_bias on): from_pretrained drops them as unexpected keys. The importer refuses
    them, naming them, rather than compute with weights FLA ignores."""
    config = delta_net(conv_bias=True)
    state = R.random_fla_state_dict(config, seed=9)
    biased = dict(state)
    for i in range(config.num_hidden_layers):
        for part, size in (("q", 32), ("k", 32), ("v", 32)):
            biased[f"model.layers.{i}.attn.{part}_conv1d.bias"] = torch.full((size,), 0.5)
    folder = R.write_fla_checkpoint(tmp_path / "biased", config, biased)
    with pytest.raises(FLACheckpointError, match=r"no place in the converted model: model\.layers\.0\.attn\.k_conv1d"):
        load(folder)


@pytest.mark.parametrize(("hidden", "ratio", "expected"), [
    (32, 4, 256),     # int(85.33) = 85 → rounded up to 256
    (48, 4, 256),     # int(128.0) = 128 → 256
    (400, 4, 1280),   # int(1066.67) = 1066 → 1280
    (384, 4, 1024),   # exactly 1024: no rounding
    (200, 3, 512),    # int(400.0) = 400 → 512
])
def test_mlp_width_without_intermediate_size_follows_flas_rounding(hidden, ratio, expected):
    """FLA's GatedMLP: intermediate_size = 256 · ceil(int(hidden · ratio · 2/3) / 256) (values worked by hand)."""
    fla = delta_net(hidden_size=hidden, num_heads=4, intermediate_size=None, hidden_ratio=ratio).to_dict()
    assert fwp_hf.conversion.fla.fla_config_to_fwp(fla).intermediate_size == expected


def test_rounded_mlp_width_loads_and_equals_fla_reference(tmp_path):
    config = delta_net(intermediate_size=None, hidden_ratio=4)  # hidden 32: width 256
    folder, state = make_checkpoint(tmp_path / "rounded", config, seed=3)
    assert state["model.layers.0.mlp.gate_proj.weight"].shape[0] == 256
    model = load(folder)
    ids = random_ids(2, 20, seed=4)
    assert_logits_close(logits_of(model, ids), R.fla_reference_logits(config, state, ids), "rounded MLP width")


# ----------------------------------------------------------------------------------------------
# b. Cache and generate
# ----------------------------------------------------------------------------------------------

CACHE_CASES = ["delta_net-defaults", "delta_net-hybrid-window-gqa", "gated_deltanet-hybrid", "gated_deltanet-defaults",
               "gated_deltanet-hybrid-head-counts"]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_prefill_then_decoding_with_the_cache_equals_the_full_forward(case, case_checkpoints):
    folder, config, state = case_checkpoints[case]
    model = load(folder)
    ids = random_ids(2, 30, seed=15)
    full = logits_of(model, ids)
    assert_logits_close(full, R.fla_reference_logits(config, state, ids), case)
    prefill = 25  # then 5 single-token steps, past the window of 8 of the hybrid case
    with torch.no_grad():
        out = model(ids[:, :prefill], use_cache=True)
        assert_logits_close(out.logits, full[:, :prefill], f"{case} prefill")
        past = out.past_key_values
        for t in range(prefill, ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            assert_logits_close(out.logits[:, -1], full[:, t], f"{case} step {t}")


@pytest.mark.parametrize("case", CACHE_CASES)
def test_greedy_generate_same_with_and_without_cache(case, case_checkpoints):
    folder, _, _ = case_checkpoints[case]
    model = load(folder)
    ids = random_ids(2, 11, seed=16)
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": PAD}
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (2, 19) and torch.equal(cached[:, :11], ids)
    assert torch.equal(cached, uncached)


# ----------------------------------------------------------------------------------------------
# c. Left-padded batches
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["delta_net-hybrid-window-gqa", "gated_deltanet-hybrid", "delta_net-gate-negeig"])
def test_left_padded_batch_gives_each_sequence_its_logits_alone(case, case_checkpoints):
    folder, config, state = case_checkpoints[case]
    model = load(folder)
    sequences = [random_ids(1, n, seed=20 + n)[0] for n in (9, 35, 20)]
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), PAD)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = 1
    batch = logits_of(model, ids, attention_mask=mask)
    for i, s in enumerate(sequences):
        alone = R.fla_reference_logits(config, state, s[None])[0]
        assert_logits_close(batch[i, length - len(s):], alone, f"{case} row {i}")


@pytest.mark.parametrize("case", ["delta_net-hybrid-window-gqa", "gated_deltanet-hybrid"])
def test_left_padded_batch_generates_like_each_prompt_alone(case, case_checkpoints):
    folder, _, _ = case_checkpoints[case]
    model = load(folder)
    prompts = [random_ids(1, n, seed=60 + n)[0] for n in (5, 13)]  # then 8 new tokens: past the window of 8
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), PAD)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": PAD}
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, **kwargs)
        for i, p in enumerate(prompts):
            alone = model.generate(p[None], **kwargs)
            assert torch.equal(batch[i, length:], alone[0, len(p):]), f"{case} row {i}"


# ----------------------------------------------------------------------------------------------
# d. Refusals
# ----------------------------------------------------------------------------------------------


def test_fla_checkpoint_error_is_a_value_error():
    assert issubclass(FLACheckpointError, ValueError)


def test_unknown_model_type_is_refused(tmp_path):
    config = delta_net()
    folder = R.write_fla_checkpoint(tmp_path / "m", config, R.random_fla_state_dict(config))
    saved = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**saved, "model_type": "mamba2"}, indent=2))
    with pytest.raises(FLACheckpointError, match="mamba2"):
        load(folder)


def _attnres_parameters(config) -> dict[str, torch.Tensor]:
    """The extra parameters FLA's model has with attnres_block_size (fla/models/*/modeling_*.py)."""
    hidden = config.hidden_size
    extra = {"model.res_proj.weight": torch.zeros(1, hidden), "model.res_norm.weight": torch.ones(hidden)}
    for i in range(config.num_hidden_layers):
        for part in ("attn", "mlp"):
            extra[f"model.layers.{i}.{part}_res_proj.weight"] = torch.zeros(1, hidden)
            extra[f"model.layers.{i}.{part}_res_norm.weight"] = torch.ones(hidden)
    return extra


@pytest.mark.parametrize(
    "factory, overrides, name",
    [
        (delta_net, {"attnres_block_size": 2}, "attnres_block_size"),
        (gated_deltanet, {"attnres_block_size": 2}, "attnres_block_size"),
        (delta_net, {"hidden_act": "powlu"}, "powlu"),
        (gated_deltanet, {"num_heads": 2, "head_dim": 8, "num_v_heads": 4}, "num_v_heads"),
    ],
    ids=["delta_net-attnres", "gated_deltanet-attnres", "powlu", "num_v_heads"],
)
def test_unsupported_options_are_refused_by_name(tmp_path, factory, overrides, name):
    shapes = {key: value for key, value in overrides.items() if key != "attnres_block_size"}
    state = R.random_fla_state_dict(factory(**shapes))  # the parameters FLA's model has for this config
    config = factory(**overrides)
    if config.attnres_block_size is not None:
        state.update(_attnres_parameters(config))
    folder = R.write_fla_checkpoint(tmp_path / "c", config, state)
    with pytest.raises(FLACheckpointError, match=name):
        load(folder)


def _edited_state(edit: str):
    config = delta_net()
    state = R.random_fla_state_dict(config)
    if edit == "missing":
        del state["model.layers.1.attn.k_conv1d.weight"]
        name = "model.layers.1.attn.k_conv1d.weight"
    elif edit == "extra":
        state["model.layers.0.attn.r_proj.weight"] = torch.zeros(4, 32)
        name = "model.layers.0.attn.r_proj.weight"
    elif edit == "extra-conv-bias":  # FLA's DeltaNet LM has no conv biases: FLA itself would drop this tensor
        state["model.layers.0.attn.q_conv1d.bias"] = torch.ones(32)
        name = "model.layers.0.attn.q_conv1d.bias"
    elif edit == "wrong-shape":
        state["model.layers.0.attn.v_proj.weight"] = torch.zeros(48, 32)
        name = "model.layers.0.attn.v_proj.weight"
    return config, state, name


@pytest.mark.parametrize("edit", ["missing", "extra", "extra-conv-bias", "wrong-shape"])
def test_parameter_mismatches_are_refused_by_name(tmp_path, edit):
    config, state, name = _edited_state(edit)
    folder = R.write_fla_checkpoint(tmp_path / edit, config, state)
    with pytest.raises(FLACheckpointError) as info:
        load(folder)
    assert name in str(info.value)
    if edit == "wrong-shape":
        assert "48" in str(info.value) and "32" in str(info.value)


@pytest.mark.parametrize("edit", ["missing", "wrong-shape"])
def test_a_failed_conversion_leaves_no_checkpoint_behind(tmp_path, edit):
    config, state, name = _edited_state(edit)
    folder = R.write_fla_checkpoint(tmp_path / "fla", config, state)
    with pytest.raises(FLACheckpointError, match=name.replace(".", r"\.")):
        convert_fla_checkpoint(str(folder), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fla"]  # no output, no staging folder


def test_a_failure_while_writing_removes_the_staging_folder(tmp_path, monkeypatch):
    """The failure comes after the converted weights were written into the staging folder."""
    folder, _ = make_checkpoint(tmp_path / "fla", delta_net(), seed=2)
    seen = {}

    def failing_card(source, fla, model):
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        seen["staging"] = staging
        seen["files"] = sorted(p.name for p in staging[0].iterdir())
        raise OSError(28, "No space left on device", str(staging[0] / "README.md"))

    monkeypatch.setattr(fwp_hf.conversion.fla, "render_converted_model_card", failing_card)
    with pytest.raises(FLACheckpointError, match=r"writing the converted checkpoint .*out' failed \(No space left on "
                                                 r"device: .*README.md\); nothing was left behind"):
        convert_fla_checkpoint(str(folder), str(tmp_path / "out"))
    assert "model.safetensors" in seen["files"]
    # config.json, what makes a folder loadable, is not there yet: it is written last.
    assert "config.json" not in seen["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fla"]


def test_stale_staging_folders_of_killed_runs_are_removed(tmp_path):
    folder, _ = make_checkpoint(tmp_path / "fla", delta_net(), seed=2)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead_pid = int(finished.stdout)  # a process that has exited: its staging folder is stale
    stale = tmp_path / f".out.fwp-staging-{dead_pid}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    running = tmp_path / f".out.fwp-staging-{os.getpid()}-xyz"  # a conversion still running (this process)
    running.mkdir()
    other = tmp_path / f".other.fwp-staging-{dead_pid}-abc"  # another output's: not ours to judge
    other.mkdir()
    convert_fla_checkpoint(str(folder), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fla", "out", running.name, other.name])


def test_an_unwritable_destination_is_reported_before_loading(tmp_path, monkeypatch):
    folder, _ = make_checkpoint(tmp_path / "fla", delta_net(), seed=2)
    (tmp_path / "a-file").write_text("not a folder")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the destination was checked")

    monkeypatch.setattr(fwp_hf.conversion.fla, "load_fla_checkpoint", must_not_load)
    with pytest.raises(FLACheckpointError, match=r"cannot write the converted checkpoint to .*a-file/out' .*a-file"):
        convert_fla_checkpoint(str(folder), str(tmp_path / "a-file" / "out"))


def test_unreadable_source_files_are_errors_naming_the_file(tmp_path):
    folder, _ = make_checkpoint(tmp_path / "fla", delta_net(), seed=2)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FLACheckpointError, match=r"fla/model.safetensors' cannot be read .*truncated"):
        load(folder)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(FLACheckpointError, match=r"fla/config.json' is not a JSON file"):
        convert_fla_checkpoint(str(folder), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fla"]


def test_converted_folder_has_the_users_umask_modes_and_keeps_a_bf16_source_bf16(tmp_path):
    config = delta_net()
    state = {name: tensor.to(torch.bfloat16) for name, tensor in R.random_fla_state_dict(config, seed=2).items()}
    folder = R.write_fla_checkpoint(tmp_path / "fla-bf16", config, state)
    previous = os.umask(0o027)
    try:
        out = convert_fla_checkpoint(str(folder), str(tmp_path / "out"))
    finally:
        os.umask(previous)
    assert out.stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o640}
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {p.dtype for p in load_fla_checkpoint(str(folder)).parameters()} == {torch.bfloat16}


def test_a_failed_conversion_into_an_existing_folder_leaves_it_as_it_was(tmp_path):
    config, state, _name = _edited_state("missing")
    folder = R.write_fla_checkpoint(tmp_path / "fla", config, state)
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(FLACheckpointError):
        convert_fla_checkpoint(str(folder), str(output))
    assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------------------------
# e. The converted folder with remote code, without fwp_hf
# ----------------------------------------------------------------------------------------------

REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModelForCausalLM

    ids_path, out_path, *model_dirs = sys.argv[1:]
    ids = torch.load(ids_path)
    results = {}
    for model_dir in model_dirs:
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(ids).logits
            generated = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        results[model_dir] = {"logits": logits, "generated": generated, "module": type(model).__module__}
    torch.save(results, out_path)
    """
)
REMOTE_CASES = ["delta_net-hybrid-window-gqa", "gated_deltanet-hybrid"]


def test_converted_folders_load_with_remote_code_without_fwp_hf(tmp_path, case_checkpoints):
    converted = {}
    for case in REMOTE_CASES:
        folder = case_checkpoints[case][0]
        out = convert_fla_checkpoint(str(folder), str(tmp_path / case))
        assert Path(out) == tmp_path / case
        saved = json.loads((out / "config.json").read_text())
        assert saved["model_type"] == "fwp"
        assert saved["auto_map"]["AutoModelForCausalLM"] == "modeling_fwp.FWPForCausalLM"
        assert set(fwp_hf.MODEL_CODE_FILES) <= {p.name for p in out.glob("*.py")}
        assert list(out.glob("*.safetensors"))
        card = (out / "README.md").read_text()
        assert folder.name in card or str(folder) in card, "the model card names the source checkpoint"
        converted[case] = out

    ids = random_ids(2, 30, seed=30)
    torch.save(ids, tmp_path / "ids.pt")
    proc = run_without_fwp_hf(REMOTE_SCRIPT, ["ids.pt", "out.pt", *(str(converted[c]) for c in REMOTE_CASES)],
                              cwd=tmp_path, extra_env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(tmp_path / "out.pt")
    for case in REMOTE_CASES:
        folder, config, state = case_checkpoints[case]
        result = results[str(converted[case])]
        assert not result["module"].startswith("fwp_hf"), result["module"]
        assert_logits_close(result["logits"], R.fla_reference_logits(config, state, ids), f"{case} remote code")
        local = load_fla_checkpoint(str(folder)).eval()
        torch.testing.assert_close(result["logits"], logits_of(local, ids), atol=1e-6, rtol=1e-6)
        with torch.no_grad():
            expected = local.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(result["generated"], expected), case


# ----------------------------------------------------------------------------------------------
# f. Fine-tuning with Trainer
# ----------------------------------------------------------------------------------------------


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int):
        self.ids = random_ids(n, length, seed=40)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.mark.parametrize("case", ["delta_net-hybrid-window-gqa", "gated_deltanet-defaults"])
def test_trainer_fine_tunes_a_converted_model_and_it_reloads(tmp_path, case, case_checkpoints):
    folder, _, _ = case_checkpoints[case]
    converted = convert_fla_checkpoint(str(folder), str(tmp_path / "converted"))
    model = AutoModelForCausalLM.from_pretrained(converted, chunk_size=CHUNK)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Blocks(16, 24))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), losses
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before), sorted(set(before) - set(changed))

    trainer.save_model(str(tmp_path / "tuned"))
    model.eval()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tuned").eval()
    ids = random_ids(2, 20, seed=41)
    torch.testing.assert_close(logits_of(reloaded, ids), logits_of(model, ids), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# g. The CLI
# ----------------------------------------------------------------------------------------------

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "the", "fast", "weight", "programmer", "reads", "writes"]


def save_tiny_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def run_cli(args: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "convert_fla_checkpoint.py"), *args],
                          check=False, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def _check_converted_folder(out: Path, config, state, tokenizer, source_name: str):
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "README.md", "tokenizer.json", "tokenizer_config.json"} <= names, names
    assert set(fwp_hf.MODEL_CODE_FILES) <= names
    assert source_name in (out / "README.md").read_text()
    text = "the fast weight programmer writes"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == tokenizer(text)["input_ids"]
    ids = random_ids(1, 21, seed=50)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert_logits_close(logits_of(model, ids), R.fla_reference_logits(config, state, ids), "CLI output")


def test_cli_converts_a_folder_and_copies_the_tokenizer(tmp_path):
    config = delta_net(use_gate=True)
    folder, state = make_checkpoint(tmp_path / "fla-delta-tiny", config, seed=7)
    tokenizer = save_tiny_tokenizer(folder)
    out = tmp_path / "out"
    proc = run_cli(["--input", str(folder), "--output_dir", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _check_converted_folder(out, config, state, tokenizer, "fla-delta-tiny")


def test_cli_refusal_exits_nonzero_naming_the_parameter(tmp_path):
    config, state, name = _edited_state("wrong-shape")
    folder = R.write_fla_checkpoint(tmp_path / "fla", config, state)
    out = tmp_path / "out"
    proc = run_cli(["--input", str(folder), "--output_dir", str(out)])
    assert proc.returncode != 0
    assert name in proc.stderr + proc.stdout
    assert not (out / "config.json").exists()


def test_cli_converts_a_hub_checkpoint_and_pushes_the_result(tmp_path):
    """From an FLA repo on the (test) Hub to an FWP repo on it, loaded back where fwp_hf is not importable."""
    from hub_server import HubServer, _Repo

    config = gated_deltanet()
    folder, state = make_checkpoint(tmp_path / "fla", config, seed=8, shards=2)
    tokenizer = save_tiny_tokenizer(folder)
    repo_id, pushed_id = "fla-hub/gated-deltanet-tiny", "tester/gated-deltanet-tiny-fwp"
    ids = random_ids(2, 17, seed=51)
    torch.save(ids, tmp_path / "ids.pt")
    with HubServer() as hub:
        repo = hub.repos.setdefault(repo_id, _Repo())
        repo.commit({p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}, [], "upload")
        env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf_home"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="hf_test")
        out = tmp_path / "out"
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT / "scripts" / "convert_fla_checkpoint.py"), "--input", repo_id,
             "--output_dir", str(out), "--hub_model_id", pushed_id],
            check=False, capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"},
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:] + str(hub.unhandled)
        assert f"pushed to {hub.url}/{pushed_id}/commit/" in proc.stdout
        pushed = hub.repos[pushed_id].files
        expected = {"config.json", "model.safetensors", "README.md", "tokenizer.json", *fwp_hf.MODEL_CODE_FILES}
        assert expected <= set(pushed)
        assert pushed["model.safetensors"] == (out / "model.safetensors").read_bytes()
        load = run_without_fwp_hf(REMOTE_SCRIPT, ["ids.pt", "out.pt", pushed_id], cwd=tmp_path, extra_env=env)
        assert load.returncode == 0, load.stderr[-4000:]
    _check_converted_folder(out, config, state, tokenizer, repo_id)
    result = torch.load(tmp_path / "out.pt")[pushed_id]
    assert result["module"].startswith("transformers_modules"), result["module"]
    assert_logits_close(result["logits"], R.fla_reference_logits(config, state, ids), "pushed, loaded with remote code")
