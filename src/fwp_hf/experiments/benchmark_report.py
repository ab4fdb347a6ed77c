"""The report of `benchmark`: results-cpu.json and its markdown, results-cpu.md (rendering only; the
measurements are `benchmark`'s, the targets and their verdicts `benchmark_targets`'s).

``python scripts/benchmark.py --from_json results-cpu.json`` re-renders an earlier run's markdown.
"""

from __future__ import annotations

import json
from pathlib import Path

from .benchmark_targets import HEADLINE_TYPE, ONNXRUNTIME_MODE, decode_rate, divide, lookup, training_ratio


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _decode_efficiency(row: dict, matmul_gflops: float) -> tuple[str, str]:
    """(fraction of the matmul FLOP rate, weight bytes read per second) of a decoding row, as cells."""
    if "decode_tokens_per_s" not in row or "flops_per_token" not in row:
        return "—", "—"
    rate = row["decode_tokens_per_s"]
    return (f"{100 * row['flops_per_token'] * rate / (matmul_gflops * 1e9):.1f}%",
            f"{row['weight_bytes_per_token'] * rate / 1e9:.1f}")


def _run_description(results: dict) -> list[str]:
    machine = results["machine"]
    return [
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores; torch {machine['torch']} "
        f"with {machine['torch_threads']} threads; Python {machine['python']}; {machine['platform']}.",
        f"Written by `{results.get('command', 'python scripts/benchmark.py')}` on {results['date']} "
        f"in {results['wall_s'] / 60:.1f} min. Each ratio compares two measurements taken in this run.",
        *([f"Conditions: {results['note']}"] if results.get("note") else []),
        *([f"Times of sections 1 and 4 are {results['clock']}."] if results.get("clock") else []),
    ]


def _targets_table(targets: list[dict]) -> list[str]:
    lines = ["## Targets", "", "| target | measured | target | met |", "|---|---|---|---|"]
    for t in targets:
        op = "≥" if t.get("higher_is_better", t["unit"] != "GiB") else "≤"
        threshold = "" if isinstance(t["threshold"], bool) else f"{op} {t['threshold']:g} {t['unit']}".strip()
        verdict = "met" if t["met"] else "MISSED"
        lines.append(f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {threshold} | {verdict} |")
    return lines


def _kernel_section(results: dict) -> list[str]:
    b, h, length, d = results["sizes"]["kernel_shape"]
    lines = ["", f"## 1. Kernels: chunkwise vs recurrent, forward+backward (B={b}, H={h}, T={length}, D={d}, fp32)",
             "", f"| kernel | chunkwise s | recurrent s | speed-up | chunkwise ÷ {HEADLINE_TYPE}'s |",
             "|---|---|---|---|---|"]
    for row in results["kernels"]:
        ratio = row.get("vs_headline")
        lines.append(f"| {row['kernel']} | {row['chunk_s']:.3f} | {row['recurrent_s']:.3f} | {row['speedup']:.1f}× | "
                     f"{_fmt(ratio)}{'×' if ratio is not None else ''} |")
    return lines


def _flops_section(results: dict) -> list[str]:
    flops = results["flops"]
    return ["", f"## 4. Achieved GFLOP/s of the chunkwise delta kernel (forward, shape {flops['shape']}, "
            f"chunk {flops['chunk_size']})", "",
            "| measurement | GFLOP/s |", "|---|---|",
            "| chunkwise delta rule (FLOPs of the algorithm, see `delta_chunk_flops`) | "
            f"{flops['kernel_gflops']:.1f} |",
            f"| torch.matmul, batched [{flops['chunk_size']}×{flops['shape'][3]}]·"
            f"[{flops['shape'][3]}×{flops['chunk_size']}] | "
            f"{flops['matmul_similar_shape_gflops']:.1f} |",
            f"| torch.matmul 1024×1024 (for reference) | {flops['matmul_1024_gflops']:.1f} |",
            f"| kernel / similar-shape matmul | {flops['fraction_of_matmul']:.2f} |", ""]


def render_markdown(results: dict) -> str:
    sizes = results["sizes"]
    lines = ["# fwp_hf CPU benchmark", "", *_run_description(results), "", *_targets_table(results["targets"])]
    lines += _kernel_section(results)
    lines += ["", f"## 2 and 5. Training step (forward+backward+AdamW), batch 1, {sizes['num_layers']} layers, "
              f"d_model {sizes['hidden_size']}, {sizes['num_heads']} heads, vocabulary {sizes['vocab_size']}",
              "", "Each measurement runs in its own child process under an address-space limit; peak memory is that "
              "process's peak resident set (model, optimizer state, activations and the Python runtime).", ""]
    lines += _training_table(results["training"])
    lines += ["", results["crossover"], ""]
    lines += _decoding_section(results)
    lines += _flops_section(results)
    lines += _batched_section(results) + _realistic_section(results) + _long_prompt_section(results)
    return "\n".join(lines)


def _training_table(rows: list[dict]) -> list[str]:
    lines = ["| model | T | parameters | tokens/s | vs GPT-2 | step s | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['seq_len']} | — | — | — | — | {row['error']} |")
            continue
        ratio = training_ratio(rows, row["model"], row["seq_len"]) if row["model"] != "gpt2" else None
        lines.append(f"| {row['model']} | {row['seq_len']} | {row['parameters'] / 1e6:.2f}M | "
                     f"{row['tokens_per_s']:.0f} | "
                     f"{_fmt(ratio)}{'×' if ratio else ''} | {row['step_s']:.2f} | {row['peak_rss_gib']:.2f} |")
    return lines


def _decoding_section(results: dict) -> list[str]:
    sizes, decoding = results["sizes"], results["decoding"]
    matmul = results["flops"]["matmul_1024_gflops"]
    gpt2 = decode_rate(results, "gpt2")
    lines = [f"## 3. Serving at batch 1: `generate` after a {sizes['decode_prompt']}-token prompt "
             f"({sizes['decode_tokens']} greedy tokens)", "",
             "Decoding tokens/s counts the steps after the first new token; prefill is the prompt's forward pass. "
             "\"compiled\": `generate(..., past_key_values=FastWeightStaticCache(config, 1), compile_config="
             "CompileConfig(fullgraph=True, dynamic=False, mode=\"default\"))` (with `_compile_all_devices = True` "
             "on a "
             f"CPU); its first call compiled the decoding step in {decoding['compile_warmup_s']:.0f} s (not counted). "
             f"\"{ONNXRUNTIME_MODE}\": the same model exported by `scripts/export_onnx.py` (every mixer one opset-27 "
             "`LinearAttention` node; prefill and one-token decode programs with explicit states), greedy decoding "
             "with onnxruntime's CPU provider at the same thread count. "
             "FLOPs per token: 2 per weight-matrix entry plus the state's (or the KV cache's) work "
             "(`decode_flops_per_token`); \"% of matmul\" divides FLOPs/token × tokens/s by the 1024×1024 matmul rate "
             f"of section 4 ({matmul:.0f} GFLOP/s). At batch 1 every step reads every weight once, so the "
             "weight bytes read per second show how close a step is to the memory-bound limit.", "",
             "| model | mode | prefill s | decode tokens/s | vs GPT-2 | MFLOP/token | % of matmul | weight GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in decoding["decode"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['mode']} | — | — | — | — | — | {row['error']} |")
            continue
        fraction, bandwidth = _decode_efficiency(row, matmul)
        ratio = divide(row["decode_tokens_per_s"], gpt2)
        lines.append(f"| {row['model']} | {row['mode']} | {row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | "
                     f"{_fmt(ratio)}× | {row['flops_per_token'] / 1e6:.1f} | {fraction} | {bandwidth} |")
    small, large = sizes["cache_lengths"]
    lines += ["", f"Cache bytes after a {small}- and a {large}-token prompt:", "",
              f"| model | bytes at {small} | bytes at {large} | equal |", "|---|---|---|---|"]
    for row in decoding["cache"]:
        a, b2 = row[f"bytes_at_{small}"], row[f"bytes_at_{large}"]
        lines.append(f"| {row['model']} | {a:,} | {b2:,} | {'yes' if a == b2 else 'no'} |")
    return lines


def _generation_columns(row: dict) -> str:
    """prefill s | decode tokens/s | cache MiB | decoding memory GiB | peak memory GiB (or the row's error)."""
    if "error" in row:
        return f"— | — | — | — | {row['error']}"
    return (f"{row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | {row['cache_bytes'] / 2**20:.1f} | "
            f"{row['decode_rss_gib']:.2f} | {row['peak_rss_gib']:.2f}")


def _batched_section(results: dict) -> list[str]:
    sizes = results["sizes"]
    lines = ["", f"## 6. Batched generation ({sizes['batch_decode_tokens']} greedy tokens per sequence, eager)", "",
             "Each cell runs in its own child process (time limit "
             f"{sizes['cell_time_limit_s']:.0f} s); decoding memory is the highest resident memory seen during the "
             "decoding steps (model, cache and runtime), peak memory the process's peak (the prefill's). Decode "
             "tokens/s counts every sequence of the batch.", "",
             "| model | batch | prompt | prefill s | decode tokens/s | vs GPT-2 | cache MiB | decoding memory GiB | "
             "peak memory GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in results["batched"]:
        gpt2 = lookup(results["batched"], model="gpt2", batch=row["batch"], prompt=row["prompt"])
        ratio = (divide(row.get("decode_tokens_per_s"), gpt2.get("decode_tokens_per_s"))
                 if row["model"] != "gpt2" else None)
        columns = _generation_columns(row).split(" | ")
        columns.insert(2, f"{_fmt(ratio)}{'×' if ratio else ''}")
        lines.append(f"| {row['model']} | {row['batch']} | {row['prompt']} | {' | '.join(columns)} |")
    return lines


def _realistic_section(results: dict) -> list[str]:
    sizes, realistic = results["sizes"], results["realistic"]
    lines = ["", f"## 7. A GPT-2-small-sized model: {sizes['realistic_num_layers']} layers, d_model "
             f"{sizes['realistic_hidden_size']}, {sizes['realistic_num_heads']} heads, vocabulary "
             f"{sizes['realistic_vocab_size']}", "", f"Training step at T = {sizes['realistic_train_length']} "
             f"(best of {sizes['realistic_train_steps']} after one warm-up step; batch 1, AdamW):", ""]
    lines += _training_table(realistic["training"])
    lines += ["", f"Decoding after a {sizes['realistic_decode_prompt']}-token prompt "
              f"({sizes['realistic_decode_tokens']} "
              "greedy tokens, batch 1, eager):", "",
              "| model | prefill s | decode tokens/s | cache MiB | decoding memory GiB | peak memory GiB |",
              "|---|---|---|---|---|---|"]
    for row in realistic["decoding"]:
        lines.append(f"| {row['model']} | {_generation_columns(row)} |")
    return lines


def _long_prompt_section(results: dict) -> list[str]:
    sizes = results["sizes"]
    lines = ["", f"## 8. Very long prompts ({HEADLINE_TYPE}, benchmark size, batch 1, then "
             f"{sizes['long_decode_tokens']} greedy tokens)", "",
             "`generate` asks for the last position's logits only (`logits_to_keep=1`), so no prompt × vocabulary "
             "tensor is built; with `prefill_chunk_size` the prompt goes through the model in chunks that carry the "
             "state, which bounds the prefill's memory by the chunk instead of the prompt.", "",
             "| prompt | prefill chunks | prefill s | decode tokens/s | cache MiB | decoding memory GiB | "
             "peak memory GiB |", "|---|---|---|---|---|---|---|"]
    for row in results["long_prompts"]:
        chunks = f"{row['prefill_chunk_size']:,}" if row["prefill_chunk_size"] else "one call"
        lines.append(f"| {row['prompt']:,} | {chunks} | {_generation_columns(row)} |")
    return lines


def crossover_sentence(rows: list[dict], lengths: tuple[int, ...]) -> str:
    """Where the headline type starts to train faster than GPT-2, in words."""
    ratios = [(length, training_ratio(rows, HEADLINE_TYPE, length)) for length in lengths]
    ratios = [(length, r) for length, r in ratios if r is not None]
    if not ratios:
        return "Crossover: not measured."
    faster = [length for length, r in ratios if r >= 1.0]
    listing = ", ".join(f"{r:.2f}× at T={length}" for length, r in ratios)
    if len(faster) == len(ratios):
        return (f"Crossover: {HEADLINE_TYPE} trains faster than GPT-2 already at the shortest length measured "
                f"({listing}).")
    if not faster:
        return f"Crossover: {HEADLINE_TYPE} is slower than GPT-2 at every length measured ({listing})."
    return f"Crossover: {HEADLINE_TYPE} overtakes GPT-2 between the measured lengths ({listing})."


def render_kernel_markdown(results: dict) -> str:
    """The markdown of a kernel-only run (``--only kernels``): its targets, sections 1 and 4."""
    lines = ["# fwp_hf CPU kernel benchmark", "", *_run_description(results), "",
             *_targets_table(results["targets"]), *_kernel_section(results), *_flops_section(results)]
    return "\n".join(lines)


def write_kernel_report(results: dict, output_dir: Path) -> dict:
    """kernels-run-cpu.json and kernels-run-cpu.md of a kernel-only run (benchmarks/kernels-cpu.md is a report
    written by hand from several such runs)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "kernels-run-cpu.json").write_text(json.dumps(results, indent=2))
    markdown = render_kernel_markdown(results)
    (output_dir / "kernels-run-cpu.md").write_text(markdown)
    print(markdown)
    return results


def write_report(results: dict, output_dir: Path) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results-cpu.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (output_dir / "results-cpu.md").write_text(markdown)
    print(markdown)
    return results


__all__ = ["crossover_sentence", "render_kernel_markdown", "render_markdown", "write_kernel_report", "write_report"]
