"""ONNX export with the standard opset-27 `LinearAttention` / `CausalConvWithState` ops (`conversion.onnx_export`).

One model holds a delta, a gated-delta and a linear-attention layer, each with a short convolution, so a
single export (prefill + one-token decode, ~30 s on 2 CPU cores) covers the three update rules and the
convolution; onnxruntime (CPU) must give PyTorch's prefill logits and its 32 greedy tokens. Layers the op
cannot express are refused with the reason. Skipped without onnx / onnxruntime / onnxscript (`.[onnx]`).
"""

from __future__ import annotations

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[onnx]')")

from conftest import lm_config_from, make_lm, random_ids, type_variant  # noqa: E402

from fwp_hf import FWPForCausalLM  # noqa: E402
from fwp_hf.conversion.onnx_export import (  # noqa: E402
    DECODE_FILE,
    ONNX_OPSET,
    PREFILL_FILE,
    OnnxExportError,
    OnnxFastWeightLM,
    compare_with_pytorch,
    export_onnx,
    onnx_kernels,
)

RULES = ["delta", "gated_delta", "linear"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = FWPForCausalLM(lm_config_from(dict(attention_type=RULES, use_short_conv=True, conv_size=3))).eval()
    folder = tmp_path_factory.mktemp("onnx")
    metadata = export_onnx(model, folder)
    return model, folder, metadata


@pytest.mark.parametrize("program", [PREFILL_FILE, DECODE_FILE])
def test_every_mixer_is_a_linear_attention_node_and_every_convolution_a_causal_conv(exported, program):
    _, folder, metadata = exported
    graph = onnx.load(folder / program)
    assert {(entry.domain, entry.version) for entry in graph.opset_import} == {("", ONNX_OPSET)}
    nodes = graph.graph.node
    rules = [onnx.helper.get_attribute_value(attribute).decode()
             for node in nodes if node.op_type == "LinearAttention"
             for attribute in node.attribute if attribute.name == "update_rule"]
    assert rules == RULES
    assert sum(node.op_type == "CausalConvWithState" for node in nodes) == len(RULES)
    assert all(node.domain == "" for node in nodes)  # no fwp_hf custom op left in the graph
    assert metadata["update_rules"] == {str(i): rule for i, rule in enumerate(RULES)}


def test_onnxruntime_matches_pytorch_prefill_and_32_greedy_steps(exported):
    model, folder, _ = exported
    check = compare_with_pytorch(model, folder, random_ids(2, 11, seed=3, low=3), new_tokens=32)
    assert check["prefill_max_abs_logit_difference"] < 1e-4
    assert check["greedy_tokens_equal"]


def test_decode_states_continue_the_prefill_exactly(exported):
    """Prefill of t tokens then one decode step == prefill of t + 1 tokens (last logits and states)."""
    _, folder, _ = exported
    runtime = OnnxFastWeightLM(folder)
    ids = random_ids(2, 9, seed=5, low=3).numpy()
    logits, states = runtime.run(ids[:, :-1], runtime.zero_states(2), decode=False)
    step_logits, step_states = runtime.run(ids[:, -1:], states, decode=True)
    full_logits, full_states = runtime.run(ids, runtime.zero_states(2), decode=False)
    torch.testing.assert_close(torch.from_numpy(step_logits[:, -1]), torch.from_numpy(full_logits[:, -1]),
                               rtol=1e-4, atol=1e-5)
    for state, full in zip(step_states, full_states):
        torch.testing.assert_close(torch.from_numpy(state), torch.from_numpy(full), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention_type", ["softmax", "fast_weights", ["delta", "softmax"]])
def test_layers_the_op_cannot_express_are_refused(attention_type, tmp_path):
    name = attention_type if isinstance(attention_type, str) else "hybrid"
    model = make_lm(type_variant(name)) if name != "hybrid" else FWPForCausalLM(
        lm_config_from(dict(attention_type=attention_type)))
    with pytest.raises(OnnxExportError, match="cannot be exported: ONNX's LinearAttention expresses"):
        export_onnx(model, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_kernel_swap_is_undone_after_the_block():
    model = FWPForCausalLM(lm_config_from(dict(attention_type=RULES, use_short_conv=True, conv_size=3))).eval()
    mixers = [layer.mixer for layer in model.model.layers]
    specs = [mixer.spec for mixer in mixers]
    ids = random_ids(1, 10, seed=2)
    with torch.no_grad():
        before = model(ids).logits
        with onnx_kernels(model):
            assert all(mixer.spec is not spec for mixer, spec in zip(mixers, specs))
            assert "forward" in vars(mixers[0].qkv_conv)
            swapped = model(ids).logits  # the custom ops' PyTorch implementation: the same kernels
        after = model(ids).logits
    assert all(mixer.spec is spec for mixer, spec in zip(mixers, specs))
    assert "forward" not in vars(mixers[0].qkv_conv)
    torch.testing.assert_close(swapped, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_timed_greedy_reports_prefill_and_decode_rates(exported):
    _, folder, _ = exported
    timing = OnnxFastWeightLM(folder).timed_greedy(random_ids(2, 8, seed=1, low=3).numpy(), 4)
    assert timing["prefill_s"] > 0 and timing["decode_tokens_per_s"] > 0
    with pytest.raises(ValueError, match="new_tokens must be at least 2"):
        OnnxFastWeightLM(folder).timed_greedy(random_ids(1, 8, seed=1).numpy(), 1)


def test_export_script_writes_the_programs_and_checks_them(tmp_path, capsys):
    from fwp_hf.conversion.onnx_export import main

    torch.manual_seed(0)
    model = FWPForCausalLM(lm_config_from(dict(attention_type="linear"), num_hidden_layers=1))
    model.save_pretrained(tmp_path / "model")
    metadata = main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "onnx"),
                     "--check_tokens", "8"])
    written = sorted(path.name for path in (tmp_path / "onnx").iterdir())
    assert written == ["decode.onnx", "fwp_onnx.json", "prefill.onnx"]
    assert metadata["update_rules"] == {"0": "linear"} and metadata["inputs"] == ["input_ids", "state.0"]
    assert metadata["check"]["greedy_tokens_equal"] and metadata["check"]["prefill_max_abs_logit_difference"] < 1e-4
    assert '"greedy_tokens_equal": true' in capsys.readouterr().out
