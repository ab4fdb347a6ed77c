"""The report of `benchmark`: results-cpu.json and its markdown, results-cpu.md (rendering only; the
measurements are `benchmark`'s, the targets and their verdicts `benchmark_targets`'s).

``python scripts/benchmark.py --from_json results-cpu.json`` re-renders an earlier run's markdown.
"""

from __future__ import annotations

import json
from pathlib import Path

from .benchmark_targets import (
    FLOAT32,
    HEADLINE_TYPE,
    INT8_OUTLIER_RATIO,
    INT8_OUTLIERS_FLOAT,
    INT8_PER_CHANNEL_OUTLIERS_FLOAT,
    ONNXRUNTIME_MODE,
    PEER,
    REAL_SECTION,
    TEACHER,
    WEAK_REFERENCE,
    decode_rate,
    divide,
    fraction_of_bound,
    fraction_of_gemv_bound,
    lookup,
    real_training_row,
    training_ratio,
)

# How the tables name the models that are not fwp_hf types.
MODEL_LABELS = {PEER: "Llama (SDPA, reference)", WEAK_REFERENCE: "GPT-2 (SDPA; weaker reference, not used for targets)"}


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def bandwidth_sentence(results: dict) -> str:
    """The measured memory bandwidth and what the "% of bound" columns divide by, in words."""
    bandwidth = results.get("memory_bandwidth")
    if not bandwidth:
        return "Memory bandwidth: not measured in this run (no \"% of bound\" figures)."
    return (f"Memory read bandwidth: {bandwidth['read_gb_s']:.1f} GB/s (best of {bandwidth['repeats']} sums of a "
            f"{bandwidth['bytes'] / 2**20:.0f} MiB float32 tensor; copy {bandwidth['copy_gb_s']:.1f} GB/s read + "
            "written). \"% of bound\": decoding tokens/s ÷ the weight-read bound, batch × bandwidth ÷ the bytes of "
            "the weight matrices a step reads (`weight_read_bound`); cache/state reads come on top."
            + (f" One-row matrix products (`F.linear` of a [1, 1024] row with that tensor as a matrix, what a "
               f"batch-1 decoding step does with every weight) stream it at only {bandwidth['gemv_gb_s']:.1f} GB/s "
               f"({bandwidth['gemv_gb_s'] / bandwidth['read_gb_s']:.2f} of the sum's rate): a step built of such "
               "products can reach at most that fraction of the bound." if "gemv_gb_s" in bandwidth else ""))


def _decode_efficiency(row: dict, matmul_gflops: float) -> tuple[str, str]:
    """(fraction of the matmul FLOP rate, weight bytes read per second) of a decoding row, as cells."""
    if "decode_tokens_per_s" not in row or "flops_per_token" not in row:
        return "—", "—"
    rate = row["decode_tokens_per_s"]
    return (f"{100 * row['flops_per_token'] * rate / (matmul_gflops * 1e9):.1f}%",
            f"{row['weight_bytes_per_token'] * rate / 1e9:.1f}")


# Whom the ratios of a run compare with: Llama+SDPA (sections 1–8), the real teacher (section 9 alone).
LLAMA_REFERENCE = (
    "The reference of every ratio (\"vs Llama\") and target is transformers' `LlamaForCausalLM` with SDPA and its KV "
    "cache, of the FWP model's width, depth, heads, vocabulary and SwiGLU width, embeddings tied as the FWP model's; "
    "GPT-2 with SDPA is kept as a weaker reference (its attention materialises the T×T scores on a CPU) and no target "
    "uses it.")
TEACHER_REFERENCE = ("The reference of every ratio (\"vs teacher\") and target is the teacher itself: transformers' "
                     "`LlamaForCausalLM` with SDPA and its KV cache.")


def _run_description(results: dict, reference: str = LLAMA_REFERENCE) -> list[str]:
    machine = results["machine"]
    return [
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores; torch {machine['torch']} "
        f"with {machine['torch_threads']} threads; Python {machine['python']}; {machine['platform']}.",
        f"Written by `{results.get('command', 'python scripts/benchmark.py')}` on {results['date']} "
        f"in {results['wall_s'] / 60:.1f} min. Each ratio compares two measurements taken in this run.",
        reference,
        *([f"Conditions: {results['note']}"] if results.get("note") else []),
        *([f"Times of sections 1 and 4 are {results['clock']}."] if results.get("clock") and "kernels" in results
          else []),
    ]


def _targets_table(targets: list[dict]) -> list[str]:
    lines = ["## Targets", "", "| target | measured | target | met |", "|---|---|---|---|"]
    for t in targets:
        op = "≥" if t.get("higher_is_better", t["unit"] != "GiB") else "≤"
        threshold = "" if isinstance(t["threshold"], bool) else f"{op} {t['threshold']:g} {t['unit']}".strip()
        verdict = "not run" if t.get("not_run") else "met" if t["met"] else "MISSED"
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
    lines += real_model_section(results)
    return "\n".join(lines)


def _training_table(rows: list[dict]) -> list[str]:
    lines = ["| model | T | parameters | tokens/s | vs Llama | step s | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {model_label(row['model'])} | {row['seq_len']} | — | — | — | — | {row['error']} |")
            continue
        ratio = training_ratio(rows, row["model"], row["seq_len"]) if row["model"] != PEER else None
        lines.append(f"| {model_label(row['model'])} | {row['seq_len']} | {row['parameters'] / 1e6:.2f}M | "
                     f"{row['tokens_per_s']:.0f} | "
                     f"{_fmt(ratio)}{'×' if ratio else ''} | {row['step_s']:.2f} | {row['peak_rss_gib']:.2f} |")
    return lines


def _decoding_section(results: dict) -> list[str]:
    sizes, decoding = results["sizes"], results["decoding"]
    matmul = results["flops"]["matmul_1024_gflops"]
    peer = decode_rate(results, PEER)
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
             bandwidth_sentence(results), "",
             "| model | mode | prefill s | decode tokens/s | vs Llama | MFLOP/token | % of matmul | weight GB/s | "
             "% of bound |", "|---|---|---|---|---|---|---|---|---|"]
    for row in decoding["decode"]:
        if "error" in row:
            lines.append(f"| {model_label(row['model'])} | {row['mode']} | — | — | — | — | — | — | {row['error']} |")
            continue
        fraction, bandwidth = _decode_efficiency(row, matmul)
        ratio = divide(row["decode_tokens_per_s"], peer)
        lines.append(f"| {model_label(row['model'])} | {row['mode']} | {row['prefill_s']:.2f} | "
                     f"{row['decode_tokens_per_s']:.1f} | "
                     f"{_fmt(ratio)}× | {row['flops_per_token'] / 1e6:.1f} | {fraction} | {bandwidth} | "
                     f"{_percent(fraction_of_bound(row, results.get('memory_bandwidth')))} |")
    small, large = sizes["cache_lengths"]
    lines += ["", f"Cache bytes after a {small}- and a {large}-token prompt:", "",
              f"| model | bytes at {small} | bytes at {large} | equal |", "|---|---|---|---|"]
    for row in decoding["cache"]:
        a, b2 = row[f"bytes_at_{small}"], row[f"bytes_at_{large}"]
        lines.append(f"| {row['model']} | {a:,} | {b2:,} | {'yes' if a == b2 else 'no'} |")
    return lines


def _generation_columns(row: dict, bandwidth: dict | None) -> str:
    """prefill s | decode tokens/s | % of bound | cache MiB | decoding memory GiB | peak memory GiB (or the
    row's error)."""
    if "error" in row:
        return f"— | — | — | — | — | {row['error']}"
    return (f"{row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | "
            f"{_percent(fraction_of_bound(row, bandwidth))} | {row['cache_bytes'] / 2**20:.1f} | "
            f"{row['decode_rss_gib']:.2f} | {row['peak_rss_gib']:.2f}")


def _batched_section(results: dict) -> list[str]:
    sizes = results["sizes"]
    lines = ["", f"## 6. Batched generation ({sizes['batch_decode_tokens']} greedy tokens per sequence, eager)", "",
             "Each cell runs in its own child process (time limit "
             f"{sizes['cell_time_limit_s']:.0f} s); decoding memory is the highest resident memory seen during the "
             "decoding steps (model, cache and runtime), peak memory the process's peak (the prefill's). Decode "
             "tokens/s counts every sequence of the batch.", "",
             "| model | batch | prompt | prefill s | decode tokens/s | vs Llama | % of bound | cache MiB | "
             "decoding memory GiB | peak memory GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["batched"]:
        peer = lookup(results["batched"], model=PEER, batch=row["batch"], prompt=row["prompt"])
        ratio = (divide(row.get("decode_tokens_per_s"), peer.get("decode_tokens_per_s"))
                 if row["model"] != PEER else None)
        columns = _generation_columns(row, results.get("memory_bandwidth")).split(" | ")
        columns.insert(2, f"{_fmt(ratio)}{'×' if ratio else ''}")
        lines.append(f"| {model_label(row['model'])} | {row['batch']} | {row['prompt']} | {' | '.join(columns)} |")
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
              "| model | prefill s | decode tokens/s | % of bound | cache MiB | decoding memory GiB | "
              "peak memory GiB |",
              "|---|---|---|---|---|---|---|"]
    for row in realistic["decoding"]:
        lines.append(f"| {model_label(row['model'])} | {_generation_columns(row, results.get('memory_bandwidth'))} |")
    return lines


def _long_prompt_section(results: dict) -> list[str]:
    sizes = results["sizes"]
    lines = ["", f"## 8. Very long prompts ({HEADLINE_TYPE}, benchmark size, batch 1, then "
             f"{sizes['long_decode_tokens']} greedy tokens)", "",
             "`generate` asks for the last position's logits only (`logits_to_keep=1`), so no prompt × vocabulary "
             "tensor is built; with `prefill_chunk_size` the prompt goes through the model in chunks that carry the "
             "state, which bounds the prefill's memory by the chunk instead of the prompt.", "",
             "| prompt | prefill chunks | prefill s | decode tokens/s | % of bound | cache MiB | decoding memory GiB | "
             "peak memory GiB |", "|---|---|---|---|---|---|---|---|"]
    for row in results["long_prompts"]:
        chunks = f"{row['prefill_chunk_size']:,}" if row["prefill_chunk_size"] else "one call"
        lines.append(f"| {row['prompt']:,} | {chunks} | {_generation_columns(row, results.get('memory_bandwidth'))} |")
    return lines


def _decode_context_sentence(rows: list[dict]) -> str:
    """How section 9's decoding cells made their context: by a prefill, or filled without one."""
    if not any(row.get("context") == "filled without prefill" for row in rows):
        return "Each prompt ran through the model (\"prefill s\" is its prefill)."
    return ("The prompt's context was filled without a prefill (`context_filled_cache`: every softmax layer holds the "
            "prompt's length of random keys and values, every fast-weight layer counts its tokens; a step then reads "
            "what it reads after a real prompt), so \"prefill s\" is the prompt's last token only.")


def _quantized_student_sentence(real: dict) -> str:
    if real.get("trained_student"):
        return (f"The student here is the trained one in `{real['trained_student']}` (`--trained_student`); its "
                "perplexity change under int8/bf16 is the figure.")
    return "The student is untrained, so its perplexity is high; its change under int8/bf16 is the figure."


def _real_prefill_table(real: dict, results: dict) -> list[str]:
    lines = ["Prefill (batch 1; `generate`'s first token):", "",
             "| model | T | prefill chunks | prefill s | tokens/s | vs teacher | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in real["prefill"]:
        chunks = f"{row['prefill_chunk_size']:,}" if row["prefill_chunk_size"] else "one call"
        if "error" in row:
            lines.append(f"| {row['model']} | {row['length']:,} | {chunks} | — | — | — | {row['error']} |")
            continue
        teacher = lookup(real["prefill"], model=TEACHER, length=row["length"], prefill_chunk_size=None)
        ratio = divide(row["prefill_tokens_per_s"], teacher.get("prefill_tokens_per_s"))
        lines.append(f"| {row['model']} | {row['length']:,} | {chunks} | {row['prefill_s']:.2f} | "
                     f"{row['prefill_tokens_per_s']:.0f} | {_fmt(ratio)}× | {row['peak_rss_gib']:.2f} |")
    return lines


def _real_profile_table(real: dict, results: dict) -> list[str]:
    """Where each model's forward pass spends its time: the operators with the largest self CPU time."""
    lines = ["Where a forward pass spends its time (batch 1, after a warm-up pass; torch.profiler, operators by "
             "self CPU time, share of the pass's total):", "", "| model | T | forward s | largest operators | rest |",
             "|---|---|---|---|---|"]
    for row in real.get("profiles", []):
        if "error" in row:
            lines.append(f"| {row['model']} | {row['length']:,} | — | {row['error']} | — |")
            continue
        ops = ", ".join(f"{op['op']} {100 * op['share']:.0f}% ({op['calls']})" for op in row["ops"])
        lines.append(f"| {row['model']} | {row['length']:,} | {row['forward_s']:.2f} | {ops} | "
                     f"{100 * row['other_share']:.0f}% |")
    return lines


def _real_decode_table(real: dict, results: dict) -> list[str]:
    bandwidth = results.get("memory_bandwidth")
    lines = ["Decoding (greedy; \"vs teacher\" compares the same mode, batch and prompt; compiled: the student's "
             "`FastWeightStaticCache`, the teacher's static KV cache, the first call's compilation not counted). "
             f"{_decode_context_sentence(real['decode'])}", "",
             "| model | mode | batch | prompt | prefill s | decode tokens/s | vs teacher | % of bound | cache MiB | "
             "decoding memory GiB | peak memory GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in real["decode"]:
        head = f"| {row['model']} | {row['mode']} | {row['batch']} | {row['prompt']:,} |"
        if "error" in row:
            lines.append(f"{head} — | — | — | — | — | — | {row['error']} |")
            continue
        teacher = lookup(real["decode"], model=TEACHER, mode=row["mode"], batch=row["batch"], prompt=row["prompt"])
        ratio = divide(row["decode_tokens_per_s"], teacher.get("decode_tokens_per_s"))
        lines.append(f"{head} {row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | {_fmt(ratio)}× | "
                     f"{_percent(fraction_of_bound(row, bandwidth))} | {row['cache_bytes'] / 2**20:.1f} | "
                     f"{row['decode_rss_gib']:.2f} | {row['peak_rss_gib']:.2f} |")
    gemv = [f"{row['model']} {row['mode']} after {row['prompt']:,}: {_percent(fraction)}" for row in real["decode"]
            if row["batch"] == 1 and (fraction := fraction_of_gemv_bound(row, bandwidth)) is not None]
    if gemv:
        lines += ["", f"Batch 1 against the bound at the matrix-vector rate ({bandwidth['gemv_gb_s']:.1f} GB/s): "
                  + "; ".join(gemv) + "."]
    return lines


def _real_training_table(real: dict, results: dict) -> list[str]:
    lines = ["Training step (batch 1, forward + backward + AdamW, timed after one warm-up step; LoRA: peft "
             "adapters on every linear layer but the LM head):", "",
             "| model | T | step | trainable parameters | tokens/s | vs teacher | peak memory GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in real["training"]:
        checkpointed = bool(row.get("gradient_checkpointing"))
        step = ("LoRA" if row["lora"] else "full") + (", gradient checkpointing" if checkpointed else "")
        if "error" in row:
            lines.append(f"| {row['model']} | {row['seq_len']:,} | {step} | — | — | — | {row['error']} |")
            continue
        teacher = real_training_row(real["training"], TEACHER, row["seq_len"], row["lora"], checkpointed)
        ratio = divide(row["tokens_per_s"], teacher.get("tokens_per_s"))
        lines.append(f"| {row['model']} | {row['seq_len']:,} | {step} | {row['trainable_parameters']:,} | "
                     f"{row['tokens_per_s']:.0f} | {_fmt(ratio)}× | {row['peak_rss_gib']:.2f} |")
    return lines


def _real_quantized_table(real: dict, results: dict) -> list[str]:
    bandwidth = results.get("memory_bandwidth")
    bf16 = results["machine"].get("bf16_instructions")
    heldout = f" ({real['heldout_text']})" if real.get("heldout_text") else " (not measured: no --heldout_text)"
    lines = ["int8 dynamic quantization of every nn.Linear, or of all but the outlier-input ones "
             "(`quantize_linear_int8`: "
             "`torch.ao.quantization.quantize_dynamic`, deprecated in torch 2.13 in favour of torchao) and bfloat16, "
             f"batch-1 eager decoding and held-out perplexity{heldout}. {_quantized_student_sentence(real)} "
             f"This CPU {'has' if bf16 else 'lacks' if bf16 is not None else 'may lack'} bf16 instructions "
             "(avx512_bf16/amx_bf16). The int8 model does not save through `save_pretrained`: save the float model "
             "and quantize after loading.", "",
             "| model | dtype | decode tokens/s | vs float32 | weight MiB/step | % of bound | perplexity | change |",
             "|---|---|---|---|---|---|---|---|"]
    for row in real["quantized"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['dtype']} | — | — | — | — | — | {row['error']} |")
            continue
        fp32 = lookup(real["quantized"], model=row["model"], dtype=FLOAT32)
        ratio = divide(row["decode_tokens_per_s"], fp32.get("decode_tokens_per_s"))
        perplexity, reference = row.get("perplexity"), fp32.get("perplexity")
        change = f"{100 * (perplexity / reference - 1):+.2f}%" if perplexity is not None and reference else "—"
        lines.append(f"| {row['model']} | {row['dtype']} | {row['decode_tokens_per_s']:.1f} | {_fmt(ratio)}× | "
                     f"{row['weight_bytes_per_token'] / 2**20:.2f} | {_percent(fraction_of_bound(row, bandwidth))} | "
                     f"{_fmt(perplexity)} | {change} |")
    outliers = [row for row in real["quantized"] if "largest_outlier_ratios" in row or "float_layers" in row]
    if outliers:
        lines += ["", "Input outlier ratio of a linear layer: its largest input channel's max |x| ÷ the median "
                  "channel's, on held-out text that is not scored (`linear_input_outliers`); a per-tensor int8 scale "
                  "set by that channel leaves the median one about 127 ÷ ratio levels. "
                  f"`{INT8_OUTLIERS_FLOAT}` keeps float every layer whose ratio exceeds {INT8_OUTLIER_RATIO:g}."
                  + (f" `{INT8_PER_CHANNEL_OUTLIERS_FLOAT}` keeps the same layers float and gives every other weight "
                     "matrix one scale per output channel instead of one per matrix."
                     if lookup(real["quantized"], dtype=INT8_PER_CHANNEL_OUTLIERS_FLOAT) else ""), ""]
        for row in outliers:
            named = row.get("largest_outlier_ratios") or row.get("float_layers")
            what = "largest ratios" if "largest_outlier_ratios" in row else "kept float"
            listed = ", ".join(f"{name} {ratio:,.0f}" for name, ratio in named.items()) or "none"
            lines.append(f"- {row['model']}, {row['dtype']}: {what}: {listed}.")
    return lines


# Section 9's tables, one per part of `REAL_PARTS`.
_REAL_PART_TABLES = {"prefill": _real_prefill_table, "profiles": _real_profile_table, "decode": _real_decode_table,
                     "training": _real_training_table, "quantized": _real_quantized_table}


def real_model_section(results: dict) -> list[str]:
    """Section 9: the teacher against its untrained students (prefill, profiles, decoding, training, int8/bf16);
    a part the run left out (``--real_parts``) says so."""
    lines = ["", "## 9. The real model: the teacher against its fast-weight students", ""]
    real = results.get(REAL_SECTION)
    if not real:
        return lines + ["Not run in this run (`python scripts/benchmark.py --real_teacher <folder> "
                        "[--heldout_text <file>]`); its targets are marked \"not run\"."]
    lines.append(f"Teacher `{real['teacher']}` ({real['teacher_layers']} layers; float32, SDPA, its KV cache). "
                 f"Students built by `linearize_model` without training (speed does not depend on trained values): "
                 f"\"student\" has {real['student_type']} in every layer, \"hybrid student\" keeps softmax layers "
                 f"{real['kept_softmax_layers']}. Each cell runs in its own child process; peak memory is its peak "
                 "resident set.")
    run = real.get("parts", list(_REAL_PART_TABLES))
    for part, table in _REAL_PART_TABLES.items():
        if part in run:
            lines += ["", *table(real, results)]
        else:
            lines += ["", f"{part.capitalize()}: not run in this run (`--real_parts`)."]
    return lines


def crossover_sentence(rows: list[dict], lengths: tuple[int, ...]) -> str:
    """Where the headline type starts to train faster than Llama, in words."""
    ratios = [(length, training_ratio(rows, HEADLINE_TYPE, length)) for length in lengths]
    ratios = [(length, r) for length, r in ratios if r is not None]
    if not ratios:
        return "Crossover: not measured."
    faster = [length for length, r in ratios if r >= 1.0]
    listing = ", ".join(f"{r:.2f}× at T={length}" for length, r in ratios)
    if len(faster) == len(ratios):
        return (f"Crossover: {HEADLINE_TYPE} trains faster than Llama already at the shortest length measured "
                f"({listing}).")
    if not faster:
        return f"Crossover: {HEADLINE_TYPE} is slower than Llama at every length measured ({listing})."
    return f"Crossover: {HEADLINE_TYPE} overtakes Llama between the measured lengths ({listing})."


def render_kernel_markdown(results: dict) -> str:
    """The markdown of a kernel-only run (``--only kernels``): its targets, sections 1 and 4."""
    lines = ["# fwp_hf CPU kernel benchmark", "", *_run_description(results), "",
             *_targets_table(results["targets"]), *_kernel_section(results), *_flops_section(results)]
    return "\n".join(lines)


def write_kernel_report(results: dict, output_dir: Path) -> dict:
    """kernels-run-cpu.json and kernels-run-cpu.md of a kernel-only run (benchmarks/kernels-cpu.md is a report
    written by hand from several such runs)."""
    return write_report(results, output_dir, "kernels-run-cpu", render_kernel_markdown)


def render_real_model_markdown(results: dict) -> str:
    """The markdown of a section-9-only run (``--only real_model``): its targets, the memory bandwidth, section 9."""
    lines = ["# fwp_hf CPU benchmark: the real model", "", *_run_description(results, TEACHER_REFERENCE), "",
             bandwidth_sentence(results), "", *_targets_table(results["targets"]), *real_model_section(results)]
    return "\n".join(lines)


def write_real_model_report(results: dict, output_dir: Path) -> dict:
    """real-model-cpu.json and real-model-cpu.md of a section-9-only run."""
    return write_report(results, output_dir, "real-model-cpu", render_real_model_markdown)


def write_report(results: dict, output_dir: Path, stem: str = "results-cpu", render=render_markdown) -> dict:
    """``output_dir/<stem>.json`` (the results) and ``<stem>.md`` (`render` of them, also printed)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    markdown = render(results)
    (output_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    return results


__all__ = [
    "bandwidth_sentence", "crossover_sentence", "model_label", "real_model_section", "render_kernel_markdown",
    "render_markdown", "render_real_model_markdown", "write_kernel_report", "write_real_model_report",
    "write_report",
]
