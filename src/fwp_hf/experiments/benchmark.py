"""Speed and memory benchmark of fwp_hf against softmax attention (GPT-2 with SDPA) and the hardware.

    python scripts/benchmark.py   # full run (~5 min on the 2-core Xeon of the committed run), writes benchmarks/results-cpu.*
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # seconds-long smoke run

Every figure is a ratio of two measurements taken side by side in this one run, so that a noisy,
shared machine moves both sides together. Sections:

1. kernels: chunkwise vs per-token recurrent form, forward+backward (B=2, H=4, T=2048, D=64, fp32);
2. training tokens/s of FWPForCausalLM (6 layers, d_model 256, 8 heads, vocab 8192) per attention
   type vs GPT2LMHeadModel of the same size with SDPA at T = 512, 2048, 4096, and FWP alone at
   T = 8192, 16384; every training step runs in a child process with a memory limit, whose peak
   resident memory is section 5;
3. decoding tokens/s after a 4096-token prompt vs GPT-2 with its KV cache (also for flash-linear-attention's
   DeltaNet of the same size, converted with `fwp_hf.conversion.fla`), and cache bytes at 1k vs 16k;
4. achieved GFLOP/s of the chunkwise delta kernel vs torch.matmul on matrices of similar shape;
5. peak memory of a training step per attention type vs GPT-2.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser

from .. import FWPConfig, FWPForCausalLM
from ..conversion.fla import fla_config_to_fwp, fwp_state_dict_to_fla, load_fla_checkpoint
from ..fast_weight_kernels import append_normalizer_column, elu_plus_one_feature_map, sum_normalize
from ..token_mixers import ATTENTION_TYPES, FAST_WEIGHT_TYPES, HEBBIAN_MEMORY_LAYER, TOKEN_MIXERS, TokenMixerSpec

# Every registered token mixer is benchmarked; the cache-size check covers those with a fixed-size state.
FWP_TYPES = ATTENTION_TYPES
# The type whose figures the report's targets check (the delta rule of Schlag et al., the project's
# default attention type).
HEADLINE_TYPE = "delta"
# The decoding row of flash-linear-attention's DeltaNet (its default layer options) loaded through the importer.
FLA_DELTA_NET_ROW = "FLA delta_net (converted)"
GIB = 1024**3


@dataclass
class BenchmarkArguments:
    output_dir: str = field(default="benchmarks", metadata={"help": "Where results-cpu.json/.md are written."})
    quick: bool = field(default=False, metadata={"help": "Tiny sizes: checks the pipeline in seconds."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's choice)."})
    child_memory_limit_gib: float = field(
        default=20.0, metadata={"help": "Address-space limit of each measuring child process."}
    )
    note: str | None = field(default=None, metadata={"help": "A sentence on the run's conditions for the report."})
    from_json: str | None = field(
        default=None, metadata={"help": "Render the markdown of an earlier run's JSON (with --note) instead of measuring."}
    )


@dataclass
class Sizes:
    """Problem sizes of one run (the issue's sizes, or tiny ones for --quick)."""

    kernel_shape: tuple[int, int, int, int] = (2, 4, 2048, 64)
    kernel_repeats: int = 3
    train_models: tuple[str, ...] = (*FWP_TYPES, "gpt2")
    train_lengths: tuple[int, ...] = (512, 2048, 4096)
    long_lengths: tuple[int, ...] = (8192, 16384)
    train_steps: int = 2
    decode_prompt: int = 4096
    decode_tokens: int = 128
    cache_lengths: tuple[int, int] = (1024, 16384)
    flops_shape: tuple[int, int, int, int] = (2, 4, 4096, 64)
    vocab_size: int = 8192
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(
            kernel_shape=(1, 2, 128, 16), kernel_repeats=1, train_models=(HEADLINE_TYPE, "gpt2"),
            train_lengths=(64, 128), long_lengths=(256,),
            train_steps=1, decode_prompt=64, decode_tokens=4, cache_lengths=(32, 256), flops_shape=(1, 2, 256, 16),
            vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
        )


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def build_model(kind: str, sizes: Sizes, max_length: int) -> torch.nn.Module:
    """An FWP model of `kind`, or `"gpt2"`: GPT2LMHeadModel of the same width/depth with SDPA."""
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=sizes.vocab_size, n_positions=max_length, n_embd=sizes.hidden_size,
            n_layer=sizes.num_layers, n_head=sizes.num_heads, bos_token_id=0, eos_token_id=0,
        )
        config._attn_implementation = "sdpa"
        return GPT2LMHeadModel(config)
    # SwiGLU with 2.6875·d hidden units has the parameters of GPT-2's 4·d GELU MLP.
    intermediate = int(round(sizes.hidden_size * 2.6875 / 8)) * 8
    config = FWPConfig(
        vocab_size=sizes.vocab_size, hidden_size=sizes.hidden_size, intermediate_size=intermediate,
        num_hidden_layers=sizes.num_layers, num_attention_heads=sizes.num_heads, attention_type=kind,
    )
    return FWPForCausalLM(config)


def _limit_memory(limit_gib: float) -> None:
    limit = int(limit_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _train_step_child(kind: str, length: int, sizes: Sizes, threads: int | None, limit_gib: float, queue) -> None:
    """Child process: time `sizes.train_steps` training steps (after one warm-up) and report peak memory."""
    try:
        _limit_memory(limit_gib)
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(kind, sizes, max_length=length)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, sizes.vocab_size, (1, length))
        baseline = _peak_rss_bytes()
        times = []
        for _ in range(sizes.train_steps + 1):
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        best = min(times[1:])
        queue.put({"tokens_per_s": length / best, "step_s": best, "peak_rss_gib": _peak_rss_bytes() / GIB,
                   "rss_before_steps_gib": baseline / GIB, "parameters": model.num_parameters()})
    except MemoryError:
        queue.put({"error": f"out of memory under the {limit_gib} GiB limit"})
    except RuntimeError as error:  # torch reports failed allocations as RuntimeError
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})


def measure_training_step(kind: str, length: int, sizes: Sizes, args: BenchmarkArguments) -> dict:
    """Run one training measurement in a fresh child process with a memory limit."""
    # forkserver: every child starts from a small server process that has imported torch once, so
    # its peak memory is its own (a plain fork would inherit this process's) and it starts fast.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "fwp_hf"])
    queue = context.Queue()
    child = context.Process(
        target=_train_step_child, args=(kind, length, sizes, args.threads, args.child_memory_limit_gib, queue)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        return {"error": f"child process died with exit code {child.exitcode} (killed for memory?)"}
    return queue.get()


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _fwd_bwd_seconds(fn, inputs: dict, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        leaves = {k: v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        start = time.perf_counter()
        output, state = fn(**leaves)
        (output.sum() + state.sum()).backward()
        best = min(best, time.perf_counter() - start)
    return best


def kernel_cases() -> list[tuple[str, TokenMixerSpec]]:
    """One (label, registry entry) per distinct kernel of the fast-weight types: entries that run the
    same kernel with the same gates and normalisation (the sum rules, which differ only in φ) share a
    row labelled with all their names."""
    groups: dict[tuple, list[str]] = {}
    for name in FAST_WEIGHT_TYPES:
        spec = TOKEN_MIXERS[name]
        groups.setdefault((spec.chunk, spec.gates, spec.attention_normalization), []).append(name)
    return [("/".join(names), TOKEN_MIXERS[names[0]]) for names in groups.values()]


def kernel_inputs(spec: TokenMixerSpec, shape: tuple[int, int, int, int]) -> tuple[dict, object, object]:
    """Random inputs and the (chunk, recurrent) kernel pair of one registry entry, as its layer calls
    them (φ = elu + 1, so d_dot = D; sum-normalised keys, gates and the normaliser column as declared)."""
    batch, heads, length, dim = shape
    generator = torch.Generator().manual_seed(0)

    def randn(*size):
        return torch.randn(*size, generator=generator)

    if spec.layer == HEBBIAN_MEMORY_LAYER:
        inputs = {"drive": randn(batch, heads, length, dim), "ln_weight": torch.ones(dim), "ln_bias": torch.zeros(dim)}
        return inputs, spec.chunk, spec.recurrent

    def features():
        phi = elu_plus_one_feature_map(randn(batch, heads, length, dim))
        return sum_normalize(phi) if spec.key_normalization == "sum" else phi

    values = randn(batch, heads, length, dim)
    inputs = {"q": features(), "k": features(),
              "v": append_normalizer_column(values) if spec.attention_normalization else values}
    gate_values = {"beta": lambda: torch.rand(batch, heads, length, generator=generator),
                   "log_decay": lambda: -0.1 * torch.rand(batch, heads, length, generator=generator)}
    inputs.update({gate: gate_values[gate]() for gate in spec.gates})
    return inputs, spec.chunk, spec.recurrent


def bench_kernels(sizes: Sizes) -> list[dict]:
    rows = []
    for label, spec in tqdm(kernel_cases(), desc="1. kernels", leave=False):
        inputs, chunk_fn, recurrent_fn = kernel_inputs(spec, sizes.kernel_shape)
        chunk_s = _fwd_bwd_seconds(chunk_fn, inputs, sizes.kernel_repeats)
        recurrent_s = _fwd_bwd_seconds(recurrent_fn, inputs, 1)
        rows.append({"kernel": label, "chunk_s": chunk_s, "recurrent_s": recurrent_s, "speedup": recurrent_s / chunk_s})
    return rows


def bench_training(sizes: Sizes, args: BenchmarkArguments) -> list[dict]:
    jobs = [(kind, length) for length in sizes.train_lengths for kind in sizes.train_models]
    jobs += [(HEADLINE_TYPE, length) for length in sizes.long_lengths]
    rows = []
    for kind, length in tqdm(jobs, desc="2+5. training steps (child processes)", leave=False):
        rows.append({"model": kind, "seq_len": length, **measure_training_step(kind, length, sizes, args)})
    return rows


@torch.no_grad()
def converted_fla_delta_net(sizes: Sizes, folder: Path) -> torch.nn.Module:
    """flash-linear-attention's DeltaNet of the benchmark's size (FLA's default layer options: short
    convolutions, SiLU, L2 norm, output RMSNorm), written as an FLA checkpoint (random weights under FLA's
    names) and loaded back through the importer — the path a user's FLA checkpoint takes."""
    fla_config = {
        "model_type": "delta_net", "architectures": ["DeltaNetForCausalLM"], "vocab_size": sizes.vocab_size,
        "hidden_size": sizes.hidden_size, "num_hidden_layers": sizes.num_layers, "num_heads": sizes.num_heads,
        "expand_k": 1.0, "expand_v": 1.0, "use_gate": False, "use_short_conv": True, "conv_size": 4, "use_beta": True,
        "qk_activation": "silu", "qk_norm": "l2", "hidden_ratio": 4, "intermediate_size": None, "hidden_act": "swish",
        "norm_eps": 1e-6, "attn": None, "tie_word_embeddings": False,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fla_config), encoding="utf-8")
    source = FWPForCausalLM(fla_config_to_fwp(fla_config))
    save_file(fwp_state_dict_to_fla(source.state_dict(), source.config), str(folder / "model.safetensors"))
    return load_fla_checkpoint(folder)


def decode_tokens_per_s(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Prefill `prompt`, then `new_tokens` greedy one-token steps with the cache; returns (prefill s, decode tok/s)."""
    start = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True)
    prefill_s = time.perf_counter() - start
    cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return prefill_s, new_tokens / (time.perf_counter() - start)


def cache_bytes(cache) -> int:
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "state", None), getattr(layer, "keys", None), getattr(layer, "values", None)):
            if torch.is_tensor(tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def bench_decoding(sizes: Sizes) -> dict:
    torch.manual_seed(0)
    prompt = torch.randint(0, sizes.vocab_size, (1, sizes.decode_prompt))
    decode = []
    for kind in tqdm((*FWP_TYPES, "gpt2"), desc="3. decoding", leave=False):
        model = build_model(kind, sizes, max_length=sizes.decode_prompt + sizes.decode_tokens + 1).eval()
        prefill_s, tokens_per_s = decode_tokens_per_s(model, prompt, sizes.decode_tokens)
        decode.append({"model": kind, "prefill_s": prefill_s, "decode_tokens_per_s": tokens_per_s})
    with tempfile.TemporaryDirectory() as folder:
        model = converted_fla_delta_net(sizes, Path(folder))
    prefill_s, tokens_per_s = decode_tokens_per_s(model, prompt, sizes.decode_tokens)
    decode.append({"model": FLA_DELTA_NET_ROW, "prefill_s": prefill_s, "decode_tokens_per_s": tokens_per_s})
    cache_rows = []
    for kind in tqdm(FAST_WEIGHT_TYPES, desc="3. cache bytes", leave=False):
        model = build_model(kind, sizes, max_length=max(sizes.cache_lengths)).eval()
        row = {"model": kind}
        for length in sizes.cache_lengths:
            with torch.no_grad():
                out = model(input_ids=torch.randint(0, sizes.vocab_size, (1, length)), use_cache=True,
                            logits_to_keep=1)
            row[f"bytes_at_{length}"] = cache_bytes(out.past_key_values)
        cache_rows.append(row)
    return {"decode": decode, "cache": cache_rows}


def delta_chunk_flops(batch: int, heads: int, length: int, dim: int, chunk: int) -> float:
    """FLOPs of `chunk_delta_rule`'s forward (multiply-add = 2), Dk = Dv = dim, per chunk of C tokens:

    diag(β)K Kᵀ (2C²D), the inverse T of the unit lower-triangular system (a triangular solve with
    C right-hand sides, C³), W̃ = T diag(β)K and ũ = T diag(β)V (4C²D), W̃ S and Kᵀu in the state
    recursion (4CD²), Q Kᵀ (2C²D), Q S (2CD²) and tril(Q Kᵀ) u (2C²D).
    """
    per_chunk = 10 * chunk**2 * dim + chunk**3 + 6 * chunk * dim**2
    return batch * heads * math.ceil(length / chunk) * per_chunk


def _best_seconds(fn, repeats: int = 5) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def bench_flops(sizes: Sizes) -> dict:
    batch, heads, length, dim = sizes.flops_shape
    chunk = FWPConfig().chunk_size
    inputs, chunk_fn, _ = kernel_inputs(TOKEN_MIXERS[HEADLINE_TYPE], sizes.flops_shape)
    kernel_s = _best_seconds(lambda: chunk_fn(**inputs, chunk_size=chunk))
    kernel_gflops = delta_chunk_flops(batch, heads, length, dim, chunk) / kernel_s / 1e9
    # The kernel's matmuls are batched [C, D] x [D, C] and [C, D] x [D, D] products over all chunks.
    count = batch * heads * math.ceil(length / chunk)
    a, b = torch.randn(count, chunk, dim), torch.randn(count, dim, chunk)
    matmul_s = _best_seconds(lambda: torch.matmul(a, b))
    matmul_gflops = 2 * count * chunk * chunk * dim / matmul_s / 1e9
    big = torch.randn(1024, 1024)
    large_gflops = 2 * 1024**3 / _best_seconds(lambda: big @ big) / 1e9
    return {"shape": list(sizes.flops_shape), "chunk_size": chunk, "kernel_gflops": kernel_gflops,
            "matmul_similar_shape_gflops": matmul_gflops, "matmul_1024_gflops": large_gflops,
            "fraction_of_matmul": kernel_gflops / matmul_gflops}


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def machine_description(threads: int) -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads,
            "python": platform.python_version(), "platform": platform.platform()}


def _lookup(rows: list[dict], **match) -> dict:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return {}


def _ratio(rows: list[dict], kind: str, length: int) -> float | None:
    ours, gpt2 = _lookup(rows, model=kind, seq_len=length), _lookup(rows, model="gpt2", seq_len=length)
    if "tokens_per_s" in ours and "tokens_per_s" in gpt2:
        return ours["tokens_per_s"] / gpt2["tokens_per_s"]
    return None


def evaluate_targets(results: dict, sizes: Sizes) -> list[dict]:
    """The issue's targets, each with the measured value and met/missed."""
    targets = []

    def add(name: str, value: float | None, threshold: float, unit: str = "×", higher_is_better: bool = True):
        met = value is not None and (value >= threshold if higher_is_better else value <= threshold)
        targets.append({"target": name, "value": value, "threshold": threshold, "unit": unit, "met": met})

    headline_kernel = _lookup(results["kernels"], kernel=HEADLINE_TYPE)
    add(f"{HEADLINE_TYPE} chunkwise vs recurrent, fwd+bwd", headline_kernel.get("speedup"), 25.0)
    mid, long = sizes.train_lengths[1], sizes.train_lengths[-1]
    add(f"{HEADLINE_TYPE} training tok/s vs GPT-2 at T={mid}", _ratio(results["training"], HEADLINE_TYPE, mid), 1.0)
    if long != mid:  # the quick sizes have two lengths only; one name must not carry two thresholds
        add(f"{HEADLINE_TYPE} training tok/s vs GPT-2 at T={long}", _ratio(results["training"], HEADLINE_TYPE, long), 3.0)
    for length in sizes.long_lengths:
        row = _lookup(results["training"], model=HEADLINE_TYPE, seq_len=length)
        add(f"{HEADLINE_TYPE} training step peak memory at T={length}", row.get("peak_rss_gib"), 8.0, "GiB", False)
    decode = {row["model"]: row["decode_tokens_per_s"] for row in results["decoding"]["decode"]}
    add(f"{HEADLINE_TYPE} decode tok/s vs GPT-2 after {sizes.decode_prompt} prompt tokens", decode[HEADLINE_TYPE] / decode["gpt2"], 2.0)
    small, large = sizes.cache_lengths
    equal = all(row[f"bytes_at_{small}"] == row[f"bytes_at_{large}"] for row in results["decoding"]["cache"])
    targets.append({"target": f"cache bytes equal at {small} and {large} tokens, every fast-weight type",
                    "value": equal, "threshold": True, "unit": "", "met": equal})
    add(f"chunkwise {HEADLINE_TYPE} GFLOP/s vs torch.matmul GFLOP/s (similar shapes)",
        results["flops"]["fraction_of_matmul"], 0.4, "fraction")
    return targets


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(results: dict) -> str:
    machine, sizes = results["machine"], results["sizes"]
    lines = [
        "# fwp_hf CPU benchmark",
        "",
        f"Machine: {machine['cpu']}, {machine['logical_cores']} logical cores; torch {machine['torch']} "
        f"with {machine['torch_threads']} threads; Python {machine['python']}; {machine['platform']}.",
        f"Written by `{results.get('command', 'python scripts/benchmark.py')}` on {results['date']} "
        f"in {results['wall_s'] / 60:.1f} min. Each ratio compares two measurements taken in this run.",
        *([f"Conditions: {results['note']}"] if results.get("note") else []),
        "",
        "## Targets",
        "",
        "| target | measured | target | met |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        op = "≥" if t["unit"] != "GiB" else "≤"
        threshold = "" if isinstance(t["threshold"], bool) else f"{op} {t['threshold']} {t['unit']}".strip()
        lines.append(f"| {t['target']} | {_fmt(t['value'])} {t['unit']} | {threshold} | {'met' if t['met'] else 'MISSED'} |")
    b, h, length, d = sizes["kernel_shape"]
    lines += ["", f"## 1. Kernels: chunkwise vs recurrent, forward+backward (B={b}, H={h}, T={length}, D={d}, fp32)",
              "", "| kernel | chunkwise s | recurrent s | speed-up |", "|---|---|---|---|"]
    for row in results["kernels"]:
        lines.append(f"| {row['kernel']} | {row['chunk_s']:.3f} | {row['recurrent_s']:.3f} | {row['speedup']:.1f}× |")
    lines += ["", f"## 2 and 5. Training step (forward+backward+AdamW), batch 1, {sizes['num_layers']} layers, "
              f"d_model {sizes['hidden_size']}, {sizes['num_heads']} heads, vocabulary {sizes['vocab_size']}",
              "", "Each measurement runs in its own child process under an address-space limit; peak memory is that "
              "process's peak resident set (model, optimizer state, activations and the Python runtime).",
              "", "| model | T | parameters | tokens/s | vs GPT-2 | step s | peak memory GiB |", "|---|---|---|---|---|---|---|"]
    for row in results["training"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['seq_len']} | — | — | — | — | {row['error']} |")
            continue
        ratio = _ratio(results["training"], row["model"], row["seq_len"]) if row["model"] != "gpt2" else None
        lines.append(f"| {row['model']} | {row['seq_len']} | {row['parameters'] / 1e6:.2f}M | {row['tokens_per_s']:.0f} | "
                     f"{_fmt(ratio)}{'×' if ratio else ''} | {row['step_s']:.2f} | {row['peak_rss_gib']:.2f} |")
    lines += ["", results["crossover"], "",
              f"## 3. Decoding after a {sizes['decode_prompt']}-token prompt ({sizes['decode_tokens']} greedy tokens, batch 1)",
              "", "| model | prefill s | decode tokens/s | vs GPT-2 |", "|---|---|---|---|"]
    gpt2_decode = _lookup(results["decoding"]["decode"], model="gpt2")["decode_tokens_per_s"]
    for row in results["decoding"]["decode"]:
        lines.append(f"| {row['model']} | {row['prefill_s']:.2f} | {row['decode_tokens_per_s']:.1f} | "
                     f"{row['decode_tokens_per_s'] / gpt2_decode:.2f}× |")
    small, large = sizes["cache_lengths"]
    lines += ["", f"Cache bytes after a {small}- and a {large}-token prompt:", "",
              f"| model | bytes at {small} | bytes at {large} | equal |", "|---|---|---|---|"]
    for row in results["decoding"]["cache"]:
        a, b2 = row[f"bytes_at_{small}"], row[f"bytes_at_{large}"]
        lines.append(f"| {row['model']} | {a:,} | {b2:,} | {'yes' if a == b2 else 'no'} |")
    flops = results["flops"]
    lines += ["", f"## 4. Achieved GFLOP/s of the chunkwise delta kernel (forward, shape {flops['shape']}, "
              f"chunk {flops['chunk_size']})", "",
              "| measurement | GFLOP/s |", "|---|---|",
              f"| chunkwise delta rule (FLOPs of the algorithm, see `delta_chunk_flops`) | {flops['kernel_gflops']:.1f} |",
              f"| torch.matmul, batched [{flops['chunk_size']}×{flops['shape'][3]}]·[{flops['shape'][3]}×{flops['chunk_size']}] | "
              f"{flops['matmul_similar_shape_gflops']:.1f} |",
              f"| torch.matmul 1024×1024 (for reference) | {flops['matmul_1024_gflops']:.1f} |",
              f"| kernel / similar-shape matmul | {flops['fraction_of_matmul']:.2f} |", ""]
    return "\n".join(lines)


def crossover_sentence(rows: list[dict], lengths: tuple[int, ...]) -> str:
    """Where the headline type starts to train faster than GPT-2, in words."""
    ratios = [(length, _ratio(rows, HEADLINE_TYPE, length)) for length in lengths]
    ratios = [(length, r) for length, r in ratios if r is not None]
    if not ratios:
        return "Crossover: not measured."
    faster = [length for length, r in ratios if r >= 1.0]
    listing = ", ".join(f"{r:.2f}× at T={length}" for length, r in ratios)
    if len(faster) == len(ratios):
        return f"Crossover: {HEADLINE_TYPE} trains faster than GPT-2 already at the shortest length measured ({listing})."
    if not faster:
        return f"Crossover: {HEADLINE_TYPE} is slower than GPT-2 at every length measured ({listing})."
    return f"Crossover: {HEADLINE_TYPE} overtakes GPT-2 between the measured lengths ({listing})."


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results["note"] = args.note or results.get("note")
        return write_report(results, Path(args.output_dir))
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes.quick() if args.quick else Sizes()
    start = time.time()
    command = " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    results = {"quick": args.quick, "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine_description(torch.get_num_threads()), "sizes": asdict(sizes)}
    results["kernels"] = bench_kernels(sizes)
    results["flops"] = bench_flops(sizes)
    results["decoding"] = bench_decoding(sizes)
    results["training"] = bench_training(sizes, args)
    results["crossover"] = crossover_sentence(results["training"], sizes.train_lengths)
    results["targets"] = evaluate_targets(results, sizes)
    results["wall_s"] = time.time() - start
    results["note"] = args.note
    return write_report(results, Path(args.output_dir))


def write_report(results: dict, output_dir: Path) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results-cpu.json").write_text(json.dumps(results, indent=2))
    markdown = render_markdown(results)
    (output_dir / "results-cpu.md").write_text(markdown)
    print(markdown)
    return results

