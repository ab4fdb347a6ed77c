"""Speed and memory benchmark of fwp_hf against softmax attention (GPT-2 with SDPA) and the hardware.

    python scripts/benchmark.py   # full run (~12 min on the committed run's 2-core Xeon): benchmarks/results-cpu.*
    python scripts/benchmark.py --baseline_src /path/to/earlier/checkout/src   # also time that code's eager decoding
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # seconds-long smoke run
    python scripts/benchmark.py --only kernels --threads 1 --output_dir /tmp/k   # sections 1 and 4 only (< 1 min)

Every figure is a ratio of two measurements taken side by side in this one run, so that a noisy,
shared machine moves both sides together. Sections:

1. kernels: chunkwise vs per-token recurrent form, forward+backward (B=2, H=4, T=2048, D=64, fp32), each
   kernel's chunkwise time also ÷ the delta rule's (the gate's cost), with transformers' qwen3_next torch
   kernels of the gated delta rule as a peer row;
2. training tokens/s of FWPForCausalLM (6 layers, d_model 256, 8 heads, vocab 8192) per attention
   type vs GPT2LMHeadModel of the same size with SDPA at T = 512, 2048, 4096, and FWP alone at
   T = 8192, 16384; every training step runs in a child process with a memory limit, whose peak
   resident memory is section 5;
3. serving at batch 1: `generate` after a 4096-token prompt, every type eagerly, the delta rule also
   compiled (`FastWeightStaticCache` + transformers' `compile_config`), GPT-2 with its KV cache, flash-linear-
   attention's DeltaNet converted with `fwp_hf.conversion.fla`, and (``--baseline_src``) an earlier
   checkout's eager delta rule; FLOPs per token and their fraction of the measured matmul rate; cache bytes
   at 1k vs 16k tokens;
4. achieved GFLOP/s of the chunkwise delta kernel vs torch.matmul on matrices of similar shape;
5. peak memory of a training step per attention type vs GPT-2;
6. batched generation: batch 1, 8, 32 after 1k- and 4k-token prompts, delta vs GPT-2 (prefill and decoding
   timed apart; resident memory while decoding and at the peak), each cell in a child process;
7. a GPT-2-small-sized model (12 layers, d_model 768, 12 heads, vocab 32000): training tokens/s at T=2048
   and decoding after a 4k prompt, delta vs GPT-2;
8. prefill of 16k- and 64k-token prompts (delta only; also 64k in chunks through `prefill_chunk_size`), then decoding.

This module measures; the targets (one table) and their verdicts are `benchmark_targets`', the JSON and
markdown report `benchmark_report`'s.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CompileConfig, GPT2Config, GPT2LMHeadModel, HfArgumentParser

from .. import FastWeightStaticCache, FWPConfig, FWPForCausalLM
from ..compat_fwp import generate_cache_kwargs, output_cache
from ..conversion.fla import fla_config_to_fwp, fwp_state_dict_to_fla, load_fla_checkpoint
from ..fast_weight_kernels import append_normalizer_column, sum_normalize
from ..feature_maps_fwp import elu_plus_one_feature_map
from ..token_mixers import ATTENTION_TYPES, FAST_WEIGHT_TYPES, HEBBIAN_MEMORY_LAYER, TOKEN_MIXERS, TokenMixerSpec
from . import decode_timing
from .benchmark_report import crossover_sentence, write_kernel_report, write_report
from .benchmark_targets import BASELINE_MODE, HEADLINE_TYPE, KERNEL_TARGETS, ONNXRUNTIME_MODE, evaluate_targets
from .decode_timing import GIB, cache_bytes, current_rss_bytes, peak_rss_bytes, timed_generate

# Every registered token mixer is benchmarked; the cache-size check covers those with a fixed-size state.
FWP_TYPES = ATTENTION_TYPES
# The decoding row of flash-linear-attention's DeltaNet (its default layer options) loaded through the importer.
FLA_DELTA_NET_ROW = "FLA delta_net (converted)"
# The peer row of section 1: transformers' own torch kernels of the gated delta rule (Qwen3-Next).
QWEN3_NEXT_PEER_ROW = "gated_delta: transformers qwen3_next torch kernels (peer)"
# What `--only` can restrict a run to.
SECTIONS = ("kernels",)


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
        default=None,
        metadata={"help": "Render the markdown of an earlier run's JSON (with --note) instead of measuring."},
    )
    baseline_src: str | None = field(
        default=None,
        metadata={"help": "The src folder of an earlier fwp_hf checkout (e.g. a `git worktree` of an older commit): "
                          "its eager decoding of the headline type is timed in child processes, alternating with "
                          "this code's, and the decoding targets are checked against it."},
    )
    baseline_label: str | None = field(
        default=None, metadata={"help": "How the report names the baseline (e.g. its commit)."}
    )
    cpu_time: bool = field(
        default=False,
        metadata={"help": "With --only kernels --threads 1: time by the process's CPU time (time.process_time), not "
                          "wall-clock. On cores shared with other jobs a one-thread run's wall time includes the time "
                          "the others hold its core, which inflates a long kernel more than a short matmul."},
    )
    only: str | None = field(
        default=None,
        metadata={"help": "Run one part only: 'kernels' (sections 1 and 4: the kernel rows with the transformers "
                          "qwen3_next peer, and the GFLOP/s of the chunkwise delta kernel; well under a minute), "
                          "written to kernels-run-cpu.json/.md with the kernel targets."},
    )


@dataclass
class Sizes:
    """Problem sizes of one run (the issue's sizes, or tiny ones for --quick)."""

    kernel_shape: tuple[int, int, int, int] = (2, 4, 2048, 64)
    kernel_repeats: int = 5
    train_models: tuple[str, ...] = (*FWP_TYPES, "gpt2")
    train_lengths: tuple[int, ...] = (512, 2048, 4096)
    long_lengths: tuple[int, ...] = (8192, 16384)
    train_steps: int = 2
    decode_prompt: int = 4096
    decode_tokens: int = 64
    cache_lengths: tuple[int, int] = (1024, 16384)
    flops_shape: tuple[int, int, int, int] = (2, 4, 4096, 64)
    vocab_size: int = 8192
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    # 6. batched generation
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    batch_prompts: tuple[int, ...] = (1024, 4096)
    batch_decode_tokens: int = 16
    cell_time_limit_s: float = 180.0
    # 7. a GPT-2-small-sized model
    realistic_vocab_size: int = 32000
    realistic_hidden_size: int = 768
    realistic_num_layers: int = 12
    realistic_num_heads: int = 12
    realistic_train_length: int = 2048
    realistic_train_steps: int = 1
    realistic_decode_prompt: int = 4096
    realistic_decode_tokens: int = 8
    # 8. very long prompts
    long_prompts: tuple[int, ...] = (16384, 65536)
    long_prefill_chunk: int = 8192
    long_decode_tokens: int = 16
    # dynamo backend of the compiled decoding ("eager" in --quick: the same graph capture, no code generation)
    compile_backend: str = "inductor"

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            kernel_shape=(1, 2, 128, 16), kernel_repeats=1, train_models=(HEADLINE_TYPE, "gpt2"),
            train_lengths=(64, 128), long_lengths=(256,),
            train_steps=1, decode_prompt=64, decode_tokens=4, cache_lengths=(32, 256), flops_shape=(1, 2, 256, 16),
            vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
            batch_sizes=(1, 2), batch_prompts=(32, 64), batch_decode_tokens=3,
            realistic_vocab_size=512, realistic_hidden_size=48, realistic_num_layers=2, realistic_num_heads=4,
            realistic_train_length=64, realistic_decode_prompt=64, realistic_decode_tokens=3,
            long_prompts=(256, 1024), long_prefill_chunk=256, long_decode_tokens=3, compile_backend="eager",
        )

    def realistic(self) -> Sizes:
        """These sizes with the GPT-2-small-sized model's width, depth, heads and vocabulary (section 7)."""
        return replace(self, vocab_size=self.realistic_vocab_size, hidden_size=self.realistic_hidden_size,
                       num_layers=self.realistic_num_layers, num_heads=self.realistic_num_heads,
                       train_steps=self.realistic_train_steps)


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
    return FWPForCausalLM(FWPConfig(**fwp_config_fields(kind, sizes)))


def fwp_config_fields(kind: str, sizes: Sizes) -> dict:
    """The FWPConfig fields of the benchmark's FWP model of `kind` (also what the baseline child builds)."""
    # SwiGLU with 2.6875·d hidden units has the parameters of GPT-2's 4·d GELU MLP.
    intermediate = round(sizes.hidden_size * 2.6875 / 8) * 8
    return {"vocab_size": sizes.vocab_size, "hidden_size": sizes.hidden_size, "intermediate_size": intermediate,
            "num_hidden_layers": sizes.num_layers, "num_attention_heads": sizes.num_heads, "attention_type": kind}


def _limit_memory(limit_gib: float) -> None:
    limit = int(limit_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child_main(measure, arguments: tuple, threads: int | None, limit_gib: float, connection) -> None:
    """Child process: run ``measure(*arguments) -> dict`` under an address-space limit and send its result
    (or the error that stopped it) back. The pipe's `send` writes in this thread: a queue would start a
    feeder thread, which a child at its memory limit may fail to start or leave hanging at exit."""
    try:
        _limit_memory(limit_gib)
        if threads:
            torch.set_num_threads(threads)
        result = measure(*arguments)
    except MemoryError:
        result = {"error": f"out of memory under the {limit_gib} GiB limit"}
    except RuntimeError as error:  # torch reports failed allocations as RuntimeError
        result = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    connection.send(result)
    connection.close()


def run_in_child(measure, arguments: tuple, args: BenchmarkArguments, time_limit_s: float | None = None) -> dict:
    """``measure(*arguments)`` in a fresh child process with the memory limit of `args` (and a time limit):
    its peak resident memory is its own, and a blow-up or a run past the limit is a row's error, not the run's."""
    # forkserver: every child starts from a small server process that has imported torch once, so
    # its peak memory is its own (a plain fork would inherit this process's) and it starts fast.
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "transformers", "fwp_hf"])
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(measure, arguments, args.threads, args.child_memory_limit_gib, sender)
    )
    child.start()
    sender.close()  # the child holds the only write end: a child that dies makes the pipe readable (end of file)
    try:
        if not receiver.poll(time_limit_s):
            child.kill()
            return {"error": f"skipped: still running after {time_limit_s:.0f} s"}
        try:
            return receiver.recv()
        except EOFError:
            child.join()
            return {"error": f"child process died with exit code {child.exitcode} without a result "
                             "(killed for memory?)"}
    finally:
        child.join()
        receiver.close()


def _train_steps(kind: str, length: int, sizes: Sizes) -> dict:
    """Time `sizes.train_steps` training steps (after one warm-up) of one model; peak memory of the process."""
    torch.manual_seed(0)
    model = build_model(kind, sizes, max_length=length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, sizes.vocab_size, (1, length))
    baseline = peak_rss_bytes()
    times = []
    for _ in range(sizes.train_steps + 1):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    best = min(times[1:])
    return {"tokens_per_s": length / best, "step_s": best, "peak_rss_gib": peak_rss_bytes() / GIB,
            "rss_before_steps_gib": baseline / GIB, "parameters": model.num_parameters()}


def measure_training_step(kind: str, length: int, sizes: Sizes, args: BenchmarkArguments) -> dict:
    """One training measurement in a fresh child process with a memory limit."""
    return run_in_child(_train_steps, (kind, length, sizes), args)


def _generation_cell(kind: str, sizes: Sizes, batch: int, prompt_length: int, new_tokens: int,
                     prefill_chunk_size: int | None = None) -> dict:
    """Greedy generation of one model in this (child) process: `timed_generate`'s figures, the resident
    memory with the model built, and the process's peak."""
    torch.manual_seed(0)
    model = build_model(kind, sizes, max_length=prompt_length + new_tokens + 1).eval()
    prompt = torch.randint(0, sizes.vocab_size, (batch, prompt_length))
    model_rss = current_rss_bytes()
    extra = {} if prefill_chunk_size is None else {"prefill_chunk_size": prefill_chunk_size}
    result = timed_generate(model, prompt, new_tokens, **extra)
    # Linux updates the peak (ru_maxrss) lazily: it can trail the resident memory read during decoding.
    peak = max(peak_rss_bytes() / GIB, result["decode_rss_gib"])
    return {**result, "model_rss_gib": model_rss / GIB, "peak_rss_gib": peak, "parameters": model.num_parameters()}


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def _fwd_bwd_seconds(fn, inputs: dict, repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    best = math.inf
    for _ in range(repeats):
        leaves = {k: v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        start = clock()
        output, state = fn(**leaves)
        (output.sum() + state.sum()).backward()
        best = min(best, clock() - start)
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


def qwen3_next_peer(inputs: dict) -> tuple[dict, Callable, Callable] | None:
    """transformers' ``torch_chunk_gated_delta_rule`` / ``torch_recurrent_gated_delta_rule`` (Qwen3-Next) on the
    gated delta rule's `kernel_inputs`, as (inputs, chunk, recurrent) called like ours and returning ``(y, state)``;
    None when this transformers has no qwen3_next.

    Their layout is ``[B, T, H, D]`` and they scale queries by 1/√D: the inputs are transposed and the queries
    multiplied by √D here, outside the timing, so both compute the same function. The functions are unwrapped from
    transformers' hub-kernel decorator, which would route them to FLA's Triton kernels where ``fla`` is importable:
    the row times the torch code."""
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next as qwen  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on the transformers version
        return None

    def bthd(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).contiguous()

    def peer(kernel: Callable, **extra) -> Callable:
        def call(q, k, v, g, beta):
            return kernel(q, k, v, g=g, beta=beta, initial_state=None, output_final_state=True,
                          use_qk_l2norm_in_kernel=False, **extra)
        return call

    scale = math.sqrt(inputs["q"].shape[-1])
    peer_inputs = {"q": bthd(inputs["q"] * scale), "k": bthd(inputs["k"]), "v": bthd(inputs["v"]),
                   "g": bthd(inputs["log_decay"]), "beta": bthd(inputs["beta"])}
    chunk = peer(inspect.unwrap(qwen.torch_chunk_gated_delta_rule), chunk_size=FWPConfig().chunk_size)
    return peer_inputs, chunk, peer(inspect.unwrap(qwen.torch_recurrent_gated_delta_rule))


def bench_kernels(sizes: Sizes, clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    """Section 1: per kernel row (and the qwen3_next peer), the best of `kernel_repeats` chunkwise forward+backward
    timings, the rows interleaved (a busy machine slows them alike), and one recurrent timing; ``vs_headline`` is
    a row's chunkwise seconds ÷ the headline (delta) kernel's."""
    cases = []
    for label, spec in kernel_cases():
        inputs, chunk_fn, recurrent_fn = kernel_inputs(spec, sizes.kernel_shape)
        cases.append({"kernel": label, "inputs": inputs, "chunk": chunk_fn, "recurrent": recurrent_fn})
        if label == "gated_delta" and (peer := qwen3_next_peer(inputs)) is not None:
            cases.append({"kernel": QWEN3_NEXT_PEER_ROW, "inputs": peer[0], "chunk": peer[1], "recurrent": peer[2],
                          "peer": True})
    chunk_s = {case["kernel"]: math.inf for case in cases}
    for _ in tqdm(range(sizes.kernel_repeats), desc="1. kernels, chunkwise", leave=False):
        for case in cases:
            seconds = _fwd_bwd_seconds(case["chunk"], case["inputs"], 1, clock)
            chunk_s[case["kernel"]] = min(chunk_s[case["kernel"]], seconds)
    rows = []
    for case in tqdm(cases, desc="1. kernels, recurrent", leave=False):
        recurrent_s = _fwd_bwd_seconds(case["recurrent"], case["inputs"], 1, clock)
        label = case["kernel"]
        rows.append({"kernel": label, "chunk_s": chunk_s[label], "recurrent_s": recurrent_s,
                     "speedup": recurrent_s / chunk_s[label], "vs_headline": chunk_s[label] / chunk_s[HEADLINE_TYPE],
                     **({"peer": True} if case.get("peer") else {})})
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


def compiled_generation(model, batch_size: int, compile_config: CompileConfig) -> dict:
    """`generate` keyword arguments that compile the decoding steps (transformers' static-cache convention):
    a fresh `FastWeightStaticCache` of `batch_size` rows and `compile_config`."""
    return {**generate_cache_kwargs(FastWeightStaticCache(model.config, batch_size, dtype=model.dtype)),
            "compile_config": compile_config}


def cpu_compile_config(backend: str = "inductor") -> CompileConfig:
    """One fixed-shape graph for the decoding step; transformers compiles on a CPU only when asked to."""
    config = CompileConfig(fullgraph=True, dynamic=False, mode="default", backend=backend)
    config._compile_all_devices = True
    return config


def _weight_matrices(model: torch.nn.Module) -> int:
    """Entries of the matrices a decoding step multiplies by: every nn.Linear (and GPT-2's Conv1D) weight,
    the LM head included; the embedding lookup reads one row only."""
    from transformers.pytorch_utils import Conv1D

    return sum(module.weight.numel() for module in model.modules() if isinstance(module, (torch.nn.Linear, Conv1D)))


def decode_flops_per_token(model: torch.nn.Module, context_length: int) -> float:
    """FLOPs (multiply-add = 2) of one decoding step of one sequence: 2 per weight-matrix entry, plus per layer
    either 6 per fast-weight state entry (the delta rule's read k·S, rank-1 write and read q·S; an upper bound
    for the other rules) or, for softmax attention, 4·context·d_model (q·K and the weighted sum of V)."""
    config = model.config
    flops = 2.0 * _weight_matrices(model)
    if isinstance(model, GPT2LMHeadModel):
        return flops + 4.0 * context_length * config.n_embd * config.n_layer
    for kind in config.layer_attention_types:
        spec = TOKEN_MIXERS[kind]
        if spec.holds_state:
            flops += 6.0 * config.num_attention_heads * math.prod(spec.state_shape(config))
        else:
            flops += 4.0 * context_length * config.hidden_size
    return flops


def _decode_row(label: str, model: torch.nn.Module, mode: str, result: dict, context_length: int) -> dict:
    return {"model": label, "mode": mode, **result, "flops_per_token": decode_flops_per_token(model, context_length),
            "weight_bytes_per_token": _weight_matrices(model) * next(model.parameters()).element_size()}


def onnxruntime_decode_row(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, context_length: int) -> dict:
    """The headline model exported to ONNX (`conversion.onnx_export`: `LinearAttention` nodes) and decoded
    greedily by onnxruntime on the CPU (best of 2); an ``error`` row when the `onnx` extra is missing."""
    try:
        from ..conversion.onnx_export import OnnxFastWeightLM, export_onnx  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        return {"model": HEADLINE_TYPE, "mode": ONNXRUNTIME_MODE, "error": f"not measured: {error}"}
    with tempfile.TemporaryDirectory() as folder:
        try:
            export_onnx(model, folder)
            runtime = OnnxFastWeightLM(folder, threads=torch.get_num_threads())
        except ImportError as error:  # pragma: no cover
            return {"model": HEADLINE_TYPE, "mode": ONNXRUNTIME_MODE, "error": f"not measured: {error}"}
        ids = prompt.numpy()
        runtime.timed_greedy(ids[:, :16], 3)  # first runs allocate
        result = max((runtime.timed_greedy(ids, new_tokens) for _ in range(2)), key=lambda r: r["decode_tokens_per_s"])
    return _decode_row(HEADLINE_TYPE, model, ONNXRUNTIME_MODE, result, context_length)


def measure_baseline_decoding(sizes: Sizes, args: BenchmarkArguments) -> dict:
    """Eager decoding of the headline type by the fwp_hf under ``args.baseline_src``, in a child process
    (`decode_timing`'s script, the same measurement as this run's)."""
    spec = {"config": fwp_config_fields(HEADLINE_TYPE, sizes), "prompt_length": sizes.decode_prompt,
            "new_tokens": sizes.decode_tokens, "threads": args.threads, "repeats": 2}
    process = subprocess.run([sys.executable, decode_timing.__file__, json.dumps(spec)],
                             env=_baseline_environment(args.baseline_src), capture_output=True, text=True, check=False)
    if process.returncode != 0:
        return {"error": process.stderr.strip().splitlines()[-1][:200] if process.stderr.strip() else "failed"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def _baseline_environment(baseline_src: str) -> dict:
    path = os.pathsep.join([str(Path(baseline_src).resolve()), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def check_baseline_src(baseline_src: str) -> str:
    """The file of the fwp_hf that a child with `baseline_src` first on its path imports; a ValueError when
    that is not `baseline_src`'s (checked before any measurement)."""
    probe = "import fwp_hf, sys; sys.stdout.write(fwp_hf.__file__)"
    process = subprocess.run([sys.executable, "-c", probe], env=_baseline_environment(baseline_src),
                             capture_output=True, text=True, check=False)
    location = process.stdout.strip()
    if process.returncode != 0 or not Path(location).resolve().is_relative_to(Path(baseline_src).resolve()):
        raise ValueError(f"--baseline_src {baseline_src!r} must be the src folder of an fwp_hf checkout (a child "
                         "process "
                         f"with it first on PYTHONPATH imported {location or 'no fwp_hf'})")
    return location


def bench_decoding(sizes: Sizes, args: BenchmarkArguments) -> dict:
    """Section 3: batch-1 `generate` after a `decode_prompt`-token prompt (see the module docstring)."""
    torch.manual_seed(0)
    prompt = torch.randint(0, sizes.vocab_size, (1, sizes.decode_prompt))
    max_length = sizes.decode_prompt + sizes.decode_tokens + 1
    models = {kind: build_model(kind, sizes, max_length).eval() for kind in (*FWP_TYPES, "gpt2")}
    context = sizes.decode_prompt + sizes.decode_tokens // 2
    best: dict[str, dict] = {}

    def keep_best(key: str, result: dict) -> None:
        if key not in best or result["decode_tokens_per_s"] > best[key]["decode_tokens_per_s"]:
            best[key] = result

    for kind in tqdm((*FWP_TYPES, "gpt2"), desc="3. decoding, eager", leave=False):
        keep_best(kind, timed_generate(models[kind], prompt, sizes.decode_tokens))
    compile_config = cpu_compile_config(sizes.compile_backend)
    headline = models[HEADLINE_TYPE]
    start = time.perf_counter()  # the first compiled call compiles the decoding step
    timed_generate(headline, prompt[:, :16], 3, **compiled_generation(headline, 1, compile_config))
    warmup_s = time.perf_counter() - start
    baseline = None
    for repeat in tqdm(range(2), desc="3. decoding: compiled, eager, GPT-2 side by side", leave=False):
        keep_best("compiled", timed_generate(headline, prompt, sizes.decode_tokens,
                                             **compiled_generation(headline, 1, compile_config)))
        keep_best(HEADLINE_TYPE, timed_generate(headline, prompt, sizes.decode_tokens))
        keep_best("gpt2", timed_generate(models["gpt2"], prompt, sizes.decode_tokens))
        if args.baseline_src and repeat == 0:
            baseline = measure_baseline_decoding(sizes, args)
    decode = [_decode_row(kind, models[kind], "eager", best[kind], context) for kind in (*FWP_TYPES, "gpt2")]
    decode.append(_decode_row(HEADLINE_TYPE, headline, "compiled", best["compiled"], context))
    with tempfile.TemporaryDirectory() as folder:
        fla = converted_fla_delta_net(sizes, Path(folder)).eval()
    fla_timing = timed_generate(fla, prompt, sizes.decode_tokens)
    decode.append(_decode_row(FLA_DELTA_NET_ROW, fla, "eager", fla_timing, context))
    decode.append(onnxruntime_decode_row(headline, prompt, sizes.decode_tokens, context))
    if baseline is not None:
        same_model = decode[FWP_TYPES.index(HEADLINE_TYPE)]  # the same architecture and sizes: the same work per token
        decode.append({"model": f"{HEADLINE_TYPE} at {args.baseline_label or args.baseline_src}", "mode": BASELINE_MODE,
                       **baseline, **{key: same_model[key] for key in ("flops_per_token", "weight_bytes_per_token")}})
    cache_rows = []
    for kind in tqdm(FAST_WEIGHT_TYPES, desc="3. cache bytes", leave=False):
        model = models[kind]
        row = {"model": kind}
        for length in sizes.cache_lengths:
            with torch.no_grad():
                out = model(input_ids=torch.randint(0, sizes.vocab_size, (1, length)), use_cache=True, logits_to_keep=1)
            row[f"bytes_at_{length}"] = cache_bytes(output_cache(out))
        cache_rows.append(row)
    return {"decode": decode, "cache": cache_rows, "compile_warmup_s": warmup_s}


def bench_batched_generation(sizes: Sizes, args: BenchmarkArguments) -> list[dict]:
    """Section 6: every (prompt length, batch) cell for the headline type and GPT-2, each in a child process."""
    jobs = [(prompt, batch, kind) for prompt in sizes.batch_prompts for batch in sizes.batch_sizes
            for kind in (HEADLINE_TYPE, "gpt2")]
    rows = []
    for prompt, batch, kind in tqdm(jobs, desc="6. batched generation (child processes)", leave=False):
        result = run_in_child(_generation_cell, (kind, sizes, batch, prompt, sizes.batch_decode_tokens), args,
                              sizes.cell_time_limit_s)
        rows.append({"model": kind, "batch": batch, "prompt": prompt, **result})
    return rows


def bench_realistic_size(sizes: Sizes, args: BenchmarkArguments) -> dict:
    """Section 7: the GPT-2-small-sized model, training at `realistic_train_length` and decoding after a long prompt."""
    big = sizes.realistic()
    training, decoding = [], []
    for kind in tqdm((HEADLINE_TYPE, "gpt2"), desc="7. GPT-2-small size", leave=False):
        length = sizes.realistic_train_length
        training.append({"model": kind, "seq_len": length, **measure_training_step(kind, length, big, args)})
        cell = (kind, big, 1, sizes.realistic_decode_prompt, sizes.realistic_decode_tokens)
        decoding.append({"model": kind, "prompt": sizes.realistic_decode_prompt,
                         **run_in_child(_generation_cell, cell, args, sizes.cell_time_limit_s)})
    return {"training": training, "decoding": decoding}


def bench_long_prompts(sizes: Sizes, args: BenchmarkArguments) -> list[dict]:
    """Section 8: prefill of very long prompts in one call (and the longest in chunks), then decoding."""
    jobs = [(prompt, None) for prompt in sizes.long_prompts] + [(max(sizes.long_prompts), sizes.long_prefill_chunk)]
    rows = []
    for prompt, chunk in tqdm(jobs, desc="8. long prompts (child processes)", leave=False):
        cell = (HEADLINE_TYPE, sizes, 1, prompt, sizes.long_decode_tokens, chunk)
        rows.append({"model": HEADLINE_TYPE, "prompt": prompt, "prefill_chunk_size": chunk,
                     **run_in_child(_generation_cell, cell, args, sizes.cell_time_limit_s)})
    return rows


def delta_chunk_flops(batch: int, heads: int, length: int, dim: int, chunk: int) -> float:
    """FLOPs of `chunk_delta_rule`'s forward (multiply-add = 2), Dk = Dv = dim, per chunk of C tokens:

    diag(β)K Kᵀ (2C²D), the inverse T of the unit lower-triangular system (a triangular solve with
    C right-hand sides, C³), W̃ = T diag(β)K and ũ = T diag(β)V (4C²D), W̃ S and Kᵀu in the state
    recursion (4CD²), Q Kᵀ (2C²D), Q S (2CD²) and tril(Q Kᵀ) u (2C²D).
    """
    per_chunk = 10 * chunk**2 * dim + chunk**3 + 6 * chunk * dim**2
    return batch * heads * math.ceil(length / chunk) * per_chunk


def _best_seconds(fn, repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


@torch.no_grad()
def bench_flops(sizes: Sizes, repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Section 4: GFLOP/s of the chunkwise delta kernel's forward (`delta_chunk_flops`) and of torch.matmul on
    the kernel's batched [C, D]·[D, C] shape, timed alternately (best of `repeats` each)."""
    batch, heads, length, dim = sizes.flops_shape
    chunk = FWPConfig().chunk_size
    inputs, chunk_fn, _ = kernel_inputs(TOKEN_MIXERS[HEADLINE_TYPE], sizes.flops_shape)
    # The kernel's matmuls are batched [C, D] x [D, C] and [C, D] x [D, D] products over all chunks.
    count = batch * heads * math.ceil(length / chunk)
    a, b = torch.randn(count, chunk, dim), torch.randn(count, dim, chunk)
    kernel_s = matmul_s = math.inf
    for _ in range(repeats):  # alternately: a busy machine slows both alike
        kernel_s = min(kernel_s, _best_seconds(lambda: chunk_fn(**inputs, chunk_size=chunk), 1, clock))
        matmul_s = min(matmul_s, _best_seconds(lambda: torch.matmul(a, b), 1, clock))
    kernel_gflops = delta_chunk_flops(batch, heads, length, dim, chunk) / kernel_s / 1e9
    matmul_gflops = 2 * count * chunk * chunk * dim / matmul_s / 1e9
    big = torch.randn(1024, 1024)
    large_gflops = 2 * 1024**3 / _best_seconds(lambda: big @ big, clock=clock) / 1e9
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


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments, allow_abbrev=False).parse_args_into_dataclasses(args=argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results["note"] = args.note or results.get("note")
        return write_report(results, Path(args.output_dir))
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and (args.threads != 1 or args.only != "kernels"):
        raise ValueError("--cpu_time times sections 1 and 4 by the process's CPU time: it needs --threads 1 "
                         f"and --only kernels, got --threads {args.threads} and --only {args.only}")
    if args.only is not None and args.only not in SECTIONS:
        raise ValueError(f"--only must be one of {', '.join(SECTIONS)} (or absent for the whole run), "
                         f"got {args.only!r}")
    sizes = Sizes.quick() if args.quick else Sizes()
    baseline_file = check_baseline_src(args.baseline_src) if args.baseline_src else None
    start = time.time()
    command = " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    results = {"quick": args.quick, "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine_description(torch.get_num_threads()), "sizes": asdict(sizes),
               "baseline": {"src": args.baseline_src, "label": args.baseline_label, "fwp_hf": baseline_file}}
    clock = time.process_time if args.cpu_time else time.perf_counter
    results["clock"] = "process CPU time" if args.cpu_time else "wall-clock"
    results["kernels"] = bench_kernels(sizes, clock)
    results["flops"] = bench_flops(sizes, clock=clock)
    if args.only == "kernels":
        results["targets"] = evaluate_targets(results, sizes, KERNEL_TARGETS)
        results["wall_s"] = time.time() - start
        results["note"] = args.note
        return write_kernel_report(results, Path(args.output_dir))
    results["decoding"] = bench_decoding(sizes, args)
    results["training"] = bench_training(sizes, args)
    results["batched"] = bench_batched_generation(sizes, args)
    results["realistic"] = bench_realistic_size(sizes, args)
    results["long_prompts"] = bench_long_prompts(sizes, args)
    results["crossover"] = crossover_sentence(results["training"], sizes.train_lengths)
    results["targets"] = evaluate_targets(results, sizes)
    results["wall_s"] = time.time() - start
    results["note"] = args.note
    return write_report(results, Path(args.output_dir))
