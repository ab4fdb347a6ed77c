"""`scripts/benchmark.py` runs end to end (``--quick``) and its child processes contain memory blow-ups."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fwp_hf
from fwp_hf.experiments import benchmark
from fwp_hf.experiments.benchmark import FLA_DELTA_NET_ROW
from fwp_hf.experiments.benchmark_report import bandwidth_sentence, render_markdown
from fwp_hf.experiments.benchmark_targets import (
    KERNEL_TARGETS,
    evaluate_targets,
    fraction_of_bound,
    fraction_of_gemv_bound,
    is_met,
    weight_read_bound,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
COMMITTED_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results-cpu.json"


def test_quick_benchmark_writes_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark.py"), "--quick", "--output_dir", str(tmp_path), "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results-cpu.json").read_text())
    markdown = (tmp_path / "results-cpu.md").read_text()

    assert results["machine"]["torch_threads"] == 1
    # One row per distinct kernel of the registered fast-weight types, every such type in one row.
    labels = [row["kernel"] for row in results["kernels"] if not row.get("peer")]
    assert sorted(name for label in labels for name in label.split("/")) == sorted(fwp_hf.FAST_WEIGHT_TYPES)
    sum_rules = "/".join(name for name in fwp_hf.FAST_WEIGHT_TYPES
                         if fwp_hf.TOKEN_MIXERS[name].chunk is fwp_hf.TOKEN_MIXERS["linear"].chunk)
    assert sum_rules.startswith("linear/performer/dpfp") and sum_rules in labels and "gated_delta" in labels
    # transformers' qwen3_next torch kernels of the gated delta rule: the one peer row
    assert [row["kernel"] for row in results["kernels"] if row.get("peer")] == [benchmark.QWEN3_NEXT_PEER_ROW]
    delta_chunk_s = next(row["chunk_s"] for row in results["kernels"] if row["kernel"] == "delta")
    for row in results["kernels"]:  # the speed-up is the ratio of the two timings, not any positive number
        assert row["chunk_s"] > 0 and row["speedup"] == pytest.approx(row["recurrent_s"] / row["chunk_s"]), row
        assert row["vs_headline"] == pytest.approx(row["chunk_s"] / delta_chunk_s), row
    assert f"| {benchmark.QWEN3_NEXT_PEER_ROW} |" in markdown
    for row in results["training"]:
        assert "error" not in row, row
        assert row["step_s"] > 0 and row["peak_rss_gib"] >= row["rss_before_steps_gib"] > 0, row
        assert row["tokens_per_s"] * row["step_s"] == pytest.approx(row["seq_len"]), row  # one sequence per step
    assert {(row["model"], row["seq_len"]) for row in results["training"]} == {
        ("delta", 64), ("llama", 64), ("gpt2", 64), ("delta", 128), ("llama", 128), ("gpt2", 128), ("delta", 256),
        ("llama", 256),
    }
    # Every ratio's reference is Llama; GPT-2 stays, labelled as the weaker reference.
    assert "| Llama (SDPA, reference) | 64 |" in markdown and "GPT-2 (SDPA; weaker reference, not used for" in markdown
    assert not any("GPT-2" in t["target"] for t in results["targets"])
    # The fixed-size state is a property, not a timing: it must hold even in the quick run.
    # flash-linear-attention's DeltaNet, written as an FLA checkpoint and loaded through the importer, decodes too.
    fla_rows = [row for row in results["decoding"]["decode"] if row["model"] == FLA_DELTA_NET_ROW]
    assert len(fla_rows) == 1 and fla_rows[0]["decode_tokens_per_s"] > 0, results["decoding"]["decode"]
    assert f"| {FLA_DELTA_NET_ROW} |" in markdown
    # The headline model exported to ONNX and decoded by onnxruntime (the `onnx` extra of the test install).
    (ort_row,) = [row for row in results["decoding"]["decode"] if row["mode"] == benchmark.ONNXRUNTIME_MODE]
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        assert ort_row["decode_tokens_per_s"] > 0 and ort_row["prefill_s"] > 0, ort_row
        assert f"| delta | {benchmark.ONNXRUNTIME_MODE} |" in markdown
    for row in results["decoding"]["cache"]:
        assert row["bytes_at_32"] == row["bytes_at_256"] > 0, row
    flops = results["flops"]
    assert flops["fraction_of_matmul"] == pytest.approx(flops["kernel_gflops"] / flops["matmul_similar_shape_gflops"])
    targets = {t["target"] for t in results["targets"]}
    assert len(targets) == len(results["targets"]), "two targets share a name (the markdown table would hide one)"
    assert any("chunkwise vs recurrent" in t for t in targets)
    assert "| Targets" not in markdown and "## Targets" in markdown
    # Every target has exactly one row in the markdown table whose verdict is the JSON's, and the JSON's
    # verdict is its value compared with its threshold.
    table = markdown.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table.splitlines() if line.startswith("| "))}
    del rows["target"]  # the header row
    assert sorted(rows) == sorted(targets)
    # Section 9 (the real model) is off without --real_teacher: its targets are listed as not run.
    not_run = [t for t in results["targets"] if t.get("not_run")]
    assert not_run and all(t["met"] is None and t["value"] is None and "student" in t["target"] for t in not_run)
    assert "Not run in this run (`python scripts/benchmark.py --real_teacher <folder>" in markdown
    for target in results["targets"]:
        value, threshold = target["value"], target["threshold"]
        if target.get("not_run"):
            assert rows[target["target"]][-1] == "not run"
            continue
        if isinstance(threshold, bool):
            expected = value is threshold
        elif value is None:
            expected = False
        else:
            expected = value >= threshold if target["higher_is_better"] else value <= threshold
        assert target["met"] is expected, target
        assert rows[target["target"]][-1] == ("met" if expected else "MISSED"), rows[target["target"]]

    # 3. serving: every type eagerly, the headline type also compiled, each with its work per token
    modes = {(row["model"], row["mode"]) for row in results["decoding"]["decode"]}
    assert ("delta", "compiled") in modes and ("llama", "eager") in modes and ("gpt2", "eager") in modes
    assert {kind for kind, mode in modes if mode == "eager"} >= set(fwp_hf.ATTENTION_TYPES)
    for row in results["decoding"]["decode"]:
        assert row["decode_tokens_per_s"] > 0 and row["flops_per_token"] > 2 * row["weight_bytes_per_token"] / 4, row
    # 6. batched generation: every cell of both models; the state does not grow with the prompt, a KV cache does
    cells = {(row["model"], row["batch"], row["prompt"]): row for row in results["batched"]}
    assert set(cells) == {(model, batch, prompt)
                          for model in ("delta", "llama") for batch in (1, 2) for prompt in (32, 64)}
    for row in cells.values():
        assert "error" not in row and row["decode_tokens_per_s"] > 0
        assert row["peak_rss_gib"] >= row["decode_rss_gib"] > 0
    # every decoding figure against its weight-read bound: the bytes of the model's weight matrices per step
    bandwidth = results["memory_bandwidth"]
    assert bandwidth["bytes"] == 1 << 25 and bandwidth["read_gb_s"] > 0 and bandwidth["copy_gb_s"] > 0
    assert "Memory read bandwidth:" in markdown and "% of bound" in markdown
    for (model, batch, _), row in cells.items():
        weights = benchmark.weight_bytes_per_step(benchmark.build_model(model, benchmark.Sizes.quick(), 64))
        assert row["weight_bytes_per_token"] == weights
        assert fraction_of_bound(row, bandwidth) == pytest.approx(
            row["decode_tokens_per_s"] * weights / (batch * bandwidth["read_gb_s"] * 1e9))
    for batch in (1, 2):
        assert cells[("delta", batch, 32)]["cache_bytes"] == cells[("delta", batch, 64)]["cache_bytes"] > 0
        assert cells[("llama", batch, 64)]["cache_bytes"] > cells[("llama", batch, 32)]["cache_bytes"]
    assert cells[("delta", 2, 64)]["cache_bytes"] == 2 * cells[("delta", 1, 64)]["cache_bytes"]
    # 7. the larger model: its own sizes, trained and decoded
    realistic = results["realistic"]
    assert [row["model"] for row in realistic["training"]] == ["delta", "llama", "gpt2"]
    assert [row["model"] for row in realistic["decoding"]] == ["delta", "llama", "gpt2"]
    big = benchmark.build_model("delta", benchmark.Sizes.quick().realistic(), 64)
    assert realistic["training"][0]["parameters"] == big.num_parameters()
    assert all("error" not in row for row in realistic["training"] + realistic["decoding"])
    # 8. long prompts: one call each, and the longest in chunks, with the same state size
    long_rows = {(row["prompt"], row["prefill_chunk_size"]): row for row in results["long_prompts"]}
    assert set(long_rows) == {(256, None), (1024, None), (1024, 256)}
    assert len({row["cache_bytes"] for row in long_rows.values()}) == 1
    for section in ("## 6. Batched generation", "## 7. A GPT-2-small-sized model", "## 8. Very long prompts"):
        assert section in markdown


def _committed_sizes(results: dict) -> benchmark.Sizes:
    """The `Sizes` a results JSON was measured at (JSON turned tuples into lists)."""
    def tuples(fields: dict) -> dict:
        return {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}

    fields = tuples(results["sizes"])
    real = fields.pop("real", None)
    return benchmark.Sizes(**fields, **({} if real is None else {"real": benchmark.RealModelSizes(**tuples(real))}))


def rejudge_committed(results: dict, targets=None) -> list[dict]:
    """The verdicts of `targets` (default: the full table) on a committed run, restricted to the targets it
    recorded; a target added since has no measurement in it (checked here)."""
    judged = evaluate_targets(results, _committed_sizes(results), *(() if targets is None else (targets,)))
    recorded = {row["target"] for row in results["targets"]}
    assert all(row["value"] is None for row in judged if row["target"] not in recorded)
    return [row for row in judged if row["target"] in recorded]


def test_the_target_table_judges_the_committed_run():
    """Re-judging the committed full run gives the verdicts it recorded (a target repeated over lengths
    included); every ratio target is against the Llama peer, none against GPT-2; section 9
    (the real model) is a separate run, so its targets are "not run" here."""
    results = json.loads(COMMITTED_RESULTS.read_text())
    assert rejudge_committed(results) == results["targets"]
    assert not any("GPT-2" in t["target"] for t in results["targets"])
    peer_targets = [t for t in results["targets"] if "Llama" in t["target"]]
    # a cell past its time limit (Llama at batch 32 after 16k-token prompts) leaves its target unmeasured
    assert len(peer_targets) >= 5 and sum(t["value"] is not None for t in peer_targets) >= 4, peer_targets
    assert all(t.get("not_run") for t in results["targets"] if "student" in t["target"])


def test_the_llama_peer_has_the_fwp_models_shape():
    """Same width, depth, heads (no grouped k/v), vocabulary, SwiGLU width and embedding tying; SDPA; its
    decoding work per token counts the KV cache like GPT-2's."""
    sizes = benchmark.Sizes.quick()
    fwp, llama = benchmark.build_model("delta", sizes, 64), benchmark.build_model("llama", sizes, 64)
    a, b = fwp.config, llama.config
    assert (b.hidden_size, b.num_hidden_layers, b.num_attention_heads, b.num_key_value_heads, b.vocab_size) == (
        a.hidden_size, a.num_hidden_layers, a.num_attention_heads, a.num_attention_heads, a.vocab_size)
    assert b.intermediate_size == a.intermediate_size and b.tie_word_embeddings == a.tie_word_embeddings is True
    assert b._attn_implementation == "sdpa" and b.max_position_embeddings == 64
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    matrices = sum(m.weight.numel() for m in llama.modules() if isinstance(m, torch.nn.Linear))
    assert matrices == 2 * (4 * 32 * 32 + 3 * 32 * a.intermediate_size) + 256 * 32
    assert benchmark.decode_flops_per_token(llama, 100) == 2 * matrices + 4 * 100 * 32 * 2


def test_the_weight_read_bound_is_batch_times_bandwidth_over_weight_bytes():
    row = {"weight_bytes_per_token": 4_000_000, "batch": 8, "decode_tokens_per_s": 400.0}
    bandwidth = {"read_gb_s": 2.0, "copy_gb_s": 3.0, "bytes": 1 << 20, "repeats": 1}
    assert weight_read_bound(row, bandwidth) == 8 * 2e9 / 4e6 == 4000
    assert fraction_of_bound(row, bandwidth) == pytest.approx(0.1)
    assert weight_read_bound({**row, "batch": 1}, bandwidth) == 500  # section 3's rows carry no batch: batch 1
    assert weight_read_bound({"weight_bytes_per_token": 4_000_000}, None) is None  # an older run: not measured
    assert fraction_of_bound({"error": "skipped"}, bandwidth) is None


def test_memory_bandwidth_is_measured_and_bad_sizes_are_refused():
    record = benchmark.measure_memory_bandwidth(1 << 22, 2)
    assert record["bytes"] == 1 << 22 and record["repeats"] == 2
    assert record["read_gb_s"] > 0 < record["copy_gb_s"] and record["gemv_gb_s"] > 0
    with pytest.raises(ValueError, match="need num_bytes >= 4096 and repeats >= 1, got 4096 and 0"):
        benchmark.measure_memory_bandwidth(4096, 0)
    with pytest.raises(ValueError, match="need num_bytes >= 4096 and repeats >= 1, got 1024 and 1"):
        benchmark.measure_memory_bandwidth(1024, 1)


def test_the_matrix_vector_bound_scales_the_weight_read_bound():
    row = {"weight_bytes_per_token": 4_000_000, "batch": 1, "decode_tokens_per_s": 100.0}
    bandwidth = {"read_gb_s": 2.0, "copy_gb_s": 3.0, "bytes": 1 << 20, "repeats": 1}
    assert fraction_of_gemv_bound(row, bandwidth) is None  # an older run: not measured
    assert fraction_of_bound(row, bandwidth) == pytest.approx(0.2)  # bound 500 tokens/s
    assert fraction_of_gemv_bound(row, {**bandwidth, "gemv_gb_s": 0.5}) == pytest.approx(0.8)  # bound 125
    sentence = bandwidth_sentence({"memory_bandwidth": {**bandwidth, "gemv_gb_s": 0.5}})
    assert "stream it at only 0.5 GB/s (0.25 of the sum's rate)" in sentence


def test_an_older_runs_json_renders_without_a_bandwidth():
    results = json.loads(COMMITTED_RESULTS.read_text())
    del results["memory_bandwidth"]  # as a run from before the bandwidth measurement wrote it
    markdown = render_markdown(results)
    assert "Memory bandwidth: not measured in this run" in markdown and "| — |" in markdown


def test_a_target_is_met_on_its_side_of_the_threshold():
    assert is_met(2.0, 2.0, "≥") and not is_met(1.9, 2.0, "≥") and not is_met(None, 1.0, "≥")
    assert is_met(1.1, 1.1, "≤") and not is_met(1.2, 1.1, "≤") and not is_met(None, 1.1, "≤")
    assert is_met(True, True, "is") and not is_met(False, True, "is") and not is_met(1, True, "is")
    with pytest.raises(ValueError, match="a target's direction is '≥', '≤' or 'is', got '>'"):
        is_met(1.0, 1.0, ">")


def test_memory_blow_up_fails_the_measurement_not_the_run():
    # Far below what the child has mapped already: every allocation that needs a new mapping fails (a 65k-token
    # step's activations need many; a few tiny ones might still fit into memory the allocator holds).
    args = benchmark.BenchmarkArguments(child_memory_limit_gib=0.05)
    row = benchmark.measure_training_step("delta", 1 << 16, benchmark.Sizes.quick(), args)
    assert "error" in row and "tokens_per_s" not in row, row


def test_a_child_past_its_time_limit_is_stopped_and_reported():
    start = time.perf_counter()
    row = benchmark.run_in_child(time.sleep, (60,), benchmark.BenchmarkArguments(), time_limit_s=2)
    assert row == {"error": "skipped: still running after 2 s"} and time.perf_counter() - start < 30


def test_delta_flop_count_matches_a_hand_count():
    # One chunk of C = 4 tokens, D = 2: 10·16·2 + 4³ + 6·4·4 = 320 + 64 + 96.
    assert benchmark.delta_chunk_flops(1, 1, 4, 2, 4) == 480
    # T = 5 spans two chunks (the second padded).
    assert benchmark.delta_chunk_flops(2, 3, 5, 2, 4) == 2 * 3 * 2 * 480


def test_decode_flop_count_matches_a_hand_count():
    """2 FLOPs per weight-matrix entry (LM head included, embedding lookup not) plus the state's work: 6 per
    state entry for a fast-weight layer, 4·context·d_model for a KV-cache layer."""
    sizes = benchmark.Sizes.quick()  # 2 layers, d_model 32, 4 heads of 8, vocab 256
    delta = benchmark.build_model("delta", sizes, 64)
    config = delta.config
    matrices = sum(module.weight.numel() for module in delta.modules() if isinstance(module, torch.nn.Linear))
    assert matrices == config.num_hidden_layers * (
        32 * (3 * 32 + 4) + 32 * 32 + 32 * 2 * config.intermediate_size + config.intermediate_size * 32) + 256 * 32
    state = 4 * 16 * 8  # per layer: 4 heads × d_dot (DPFP ν=1: 2·8) × d_v
    assert benchmark.decode_flops_per_token(delta, 100) == 2 * matrices + 2 * 6 * state
    gpt2 = benchmark.build_model("gpt2", sizes, 128)
    gpt2_matrices = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 256 * 32
    assert benchmark.decode_flops_per_token(gpt2, 100) == 2 * gpt2_matrices + 4 * 100 * 32 * 2


def test_baseline_src_must_hold_an_fwp_hf_package(tmp_path):
    with pytest.raises(ValueError, match="must be the src folder of an fwp_hf checkout"):
        benchmark.check_baseline_src(str(tmp_path))
    src = Path(fwp_hf.__file__).resolve().parents[1]
    assert benchmark.check_baseline_src(str(src)) == str(Path(fwp_hf.__file__).resolve())
    arguments = benchmark.BenchmarkArguments(baseline_src=str(src))
    row = benchmark.measure_baseline_decoding(benchmark.Sizes.quick(), arguments)
    assert row["decode_tokens_per_s"] > 0 and row["prefill_s"] > 0, row


def test_kernel_only_run_writes_sections_1_and_4_with_the_kernel_targets(tmp_path):
    results = benchmark.main(["--only", "kernels", "--quick", "--threads", "1", "--cpu_time", "--output_dir",
                              str(tmp_path)])
    assert json.loads((tmp_path / "kernels-run-cpu.json").read_text()) == json.loads(json.dumps(results))
    assert not (tmp_path / "results-cpu.json").exists() and "training" not in results
    markdown = (tmp_path / "kernels-run-cpu.md").read_text()
    assert "## 1. Kernels" in markdown and "## 4. Achieved GFLOP/s" in markdown and "## 2 and 5" not in markdown
    assert results["clock"] == "process CPU time" and "Times of sections 1 and 4 are process CPU time." in markdown
    gated = next(row for row in results["kernels"] if row["kernel"] == "gated_delta")
    names = [t["target"] for t in results["targets"]]
    assert names == [target.name.format(headline="delta") for target in KERNEL_TARGETS]
    (gate_cost,) = [t for t in results["targets"] if "the gate's cost" in t["target"]]
    assert gate_cost["value"] == gated["vs_headline"] and gate_cost["met"] is (gated["vs_headline"] <= 1.2)
    for target in results["targets"]:
        assert f"| {target['target']} |" in markdown


def test_only_names_the_parts_it_can_run():
    with pytest.raises(ValueError, match="--only must be one of kernels, real_model .* got 'training'"):
        benchmark.main(["--only", "training", "--quick"])
    with pytest.raises(ValueError, match="--only real_model runs section 9: give --real_teacher <folder> too"):
        benchmark.main(["--only", "real_model", "--quick"])
    with pytest.raises(ValueError, match="--cpu_time .* needs --threads 1 and --only kernels, got --threads 2"):
        benchmark.main(["--only", "kernels", "--quick", "--threads", "2", "--cpu_time"])


def test_qwen3_next_peer_row_computes_our_gated_delta_rule():
    """The peer row times the same function as ours: its inputs (transposed, queries ×√D) give our outputs."""
    inputs, chunk_fn, recurrent_fn = benchmark.kernel_inputs(fwp_hf.TOKEN_MIXERS["gated_delta"], (1, 2, 100, 8))
    peer_inputs, peer_chunk, peer_recurrent = benchmark.qwen3_next_peer(inputs)
    y, state = chunk_fn(**inputs)
    for peer in (peer_chunk, peer_recurrent):
        peer_y, peer_state = peer(**peer_inputs)
        torch.testing.assert_close(peer_y.transpose(1, 2), y, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(peer_state, state, rtol=1e-4, atol=1e-5)
