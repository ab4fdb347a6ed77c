"""Speed and memory benchmark of fwp_hf against softmax attention (Llama with SDPA) and the hardware.

    python scripts/benchmark.py   # full run (tens of minutes on a 2-core Xeon): benchmarks/results-cpu.*
    python scripts/benchmark.py --baseline_src /path/to/earlier/checkout/src   # also time that code's eager decoding
    python scripts/benchmark.py --quick --output_dir /tmp/bench   # seconds-long smoke run
    python scripts/benchmark.py --real_teacher /path/to/smollm2-135m --heldout_text held_out.jsonl   # + section 9
    python scripts/benchmark.py --only kernels --threads 1 --output_dir /tmp/k   # sections 1 and 4 only (< 1 min)
    python scripts/benchmark.py --only real_model --real_teacher /path/to/smollm2-135m --heldout_text held_out.jsonl

Every figure is a ratio of two measurements taken side by side in this one run, so that a noisy,
shared machine moves both sides together. Sections:

1. kernels: chunkwise vs per-token recurrent form, forward+backward (B=2, H=4, T=2048, D=64, fp32), each
   kernel's chunkwise time also ÷ the delta rule's (the gate's cost), with transformers' qwen3_next torch
   kernels of the gated delta rule as a peer row;
2. training tokens/s of FWPForCausalLM (6 layers, d_model 256, 8 heads, vocab 8192) per attention
   type vs the fair peer, transformers' LlamaForCausalLM of the same width/depth/heads/vocabulary and SwiGLU
   width with SDPA (`build_model("llama")`, the reference of every ratio and target), at T = 512, 2048, 4096,
   and the headline type and Llama at T = 8192, 16384 (where each fits); GPT-2 with SDPA stays as a weaker
   reference (its attention materialises the T×T scores), not used for targets; every training step runs in a
   child process with a memory limit, whose peak resident memory is section 5;
3. serving at batch 1: `generate` after a 4096-token prompt, every type eagerly, the delta rule also
   compiled (`FastWeightStaticCache` + transformers' `compile_config`), Llama and GPT-2 with their KV caches
   (DynamicCache), flash-linear-attention's DeltaNet converted with `fwp_hf.conversion.fla`, and
   (``--baseline_src``) an earlier checkout's eager delta rule; FLOPs per token and their fraction of the
   measured matmul rate; cache bytes at 1k vs 16k tokens;
4. achieved GFLOP/s of the chunkwise delta kernel vs torch.matmul on matrices of similar shape;
5. peak memory of a training step per attention type vs Llama;
6. batched generation: batch 1, 8, 32 after 1k-, 4k- and 16k-token prompts, delta vs Llama (prefill and decoding
   timed apart; resident memory while decoding and at the peak), each cell in a child process;
7. a GPT-2-small-sized model (12 layers, d_model 768, 12 heads, vocab 32000): training tokens/s at T=2048
   and decoding after a 4k prompt, delta vs Llama and GPT-2;
8. prefill of 16k- and 64k-token prompts (delta only; also 64k in chunks through `prefill_chunk_size`), then decoding;
9. (``--real_teacher <folder>``, off by default) the real model: a Llama-family teacher (the SmolLM2-135M
   folder) with SDPA and its KV cache against its students built by `linearize_model` without training (speed
   does not depend on trained values): every layer Hedgehog, and the hybrid that keeps softmax layers
   (18, 23, 27 of SmolLM2's 30, scaled to the teacher's depth). Prefill tokens/s and peak memory, decoding
   tokens/s and memory (eager and compiled), a training step (AdamW) and a LoRA step (peft), each cell in a
   child process; and int8 dynamic quantization / bf16 of the linear layers: decoding speed-up and
   perplexity change on held-out text (``--heldout_text``). Cells run in order of growing size; one larger than
   a cell of the same kind that ran out of time or memory is skipped (`CellRunner`).

The physical limit of decoding: at batch B a decoding step reads every weight matrix once for B tokens, so
``B × bandwidth ÷ weight bytes`` tokens/s (`benchmark_targets.weight_read_bound`, with the memory read bandwidth
that `measure_memory_bandwidth` measures on this machine) bounds it; every decoding figure is also reported as a
fraction of its bound (reads of the KV cache or state come on top, so softmax rows sit further from it).

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
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import CompileConfig, GPT2Config, GPT2LMHeadModel, HfArgumentParser, LlamaConfig, LlamaForCausalLM

from .. import FastWeightStaticCache, FWPConfig, FWPForCausalLM
from ..compat_fwp import (
    enable_activation_checkpointing,
    generate_cache_kwargs,
    is_activation_checkpointing,
    output_cache,
)
from ..conversion.fla import fla_config_to_fwp, fwp_state_dict_to_fla, load_fla_checkpoint
from ..fast_weight_kernels import append_normalizer_column, sum_normalize
from ..feature_maps_fwp import elu_plus_one_feature_map
from ..token_mixers import ATTENTION_TYPES, FAST_WEIGHT_TYPES, HEBBIAN_MEMORY_LAYER, TOKEN_MIXERS, TokenMixerSpec
from . import decode_timing
from .benchmark_report import crossover_sentence, write_kernel_report, write_real_model_report, write_report
from .benchmark_targets import (
    BASELINE_MODE,
    HEADLINE_TYPE,
    HYBRID,
    INT8,
    INT8_OUTLIER_RATIO,
    INT8_OUTLIERS_FLOAT,
    INT8_PER_CHANNEL_OUTLIERS_FLOAT,
    KERNEL_TARGETS,
    ONNXRUNTIME_MODE,
    PEER,
    REAL_MODEL_TARGETS,
    REAL_PARTS,
    STUDENT,
    TARGETS,
    TEACHER,
    WEAK_REFERENCE,
    evaluate_targets,
)
from .decode_timing import GIB, cache_bytes, current_rss_bytes, peak_rss_bytes, timed_generate

# Every registered token mixer is benchmarked; the cache-size check covers those with a fixed-size state.
FWP_TYPES = ATTENTION_TYPES
# The decoding row of flash-linear-attention's DeltaNet (its default layer options) loaded through the importer.
FLA_DELTA_NET_ROW = "FLA delta_net (converted)"
# The peer row of section 1: transformers' own torch kernels of the gated delta rule (Qwen3-Next).
QWEN3_NEXT_PEER_ROW = "gated_delta: transformers qwen3_next torch kernels (peer)"
# What `--only` can restrict a run to.
SECTIONS = ("kernels", "real_model")


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
                          "written to kernels-run-cpu.json/.md with the kernel targets; 'real_model' (the memory "
                          "bandwidth and section 9, with --real_teacher), written to real-model-cpu.json/.md with "
                          "section 9's targets."},
    )
    real_teacher: str | None = field(
        default=None,
        metadata={"help": "A Llama-family teacher folder (e.g. SmolLM2-135M): run section 9, the teacher against its "
                          "linearized students (untrained), at Sizes' real_* lengths (tiny ones with --quick)."},
    )
    real_parts: str = field(
        default=",".join(REAL_PARTS),
        metadata={"help": f"Comma-separated parts of section 9 to run (of {', '.join(REAL_PARTS)}); the targets of the "
                          "others are marked not run."},
    )
    trained_student: str | None = field(
        default=None,
        metadata={"help": "A trained student folder of --real_teacher (e.g. scripts/linearize.py's output): section "
                          "9's int8/bf16 cell measures it instead of the untrained student, so that the perplexity "
                          "change is that of a model whose perplexity means something. Speed cells keep the untrained "
                          "ones."},
    )
    heldout_text: str | None = field(
        default=None,
        metadata={"help": "A .jsonl ('text' field) or .txt file of held-out text, tokenized by the teacher's "
                          "tokenizer: section 9's perplexity change under int8/bf16 (skipped without it)."},
    )


@dataclass
class RealModelSizes:
    """Section 9's lengths and settings: the real teacher (`--real_teacher`) against its students."""

    student_type: str = "hedgehog"
    keep_softmax_layers: tuple[int, ...] = (18, 23, 27)  # of a reference_depth-layer teacher
    reference_depth: int = 30  # SmolLM2-135M's depth; other depths scale the kept layers
    prefill_lengths: tuple[int, ...] = (512, 2048, 8192, 32768)
    prefill_chunk: int = 2048
    decode_prompts: tuple[int, ...] = (4096, 16384, 32768)
    decode_batches: tuple[int, ...] = (1, 8)
    decode_tokens: int = 8
    decode_modes: tuple[str, ...] = ("eager", "compiled")
    train_lengths: tuple[int, ...] = (2048, 8192)
    # Training steps with gradient checkpointing (both models): the longest length's step may not fit without it
    checkpointed_train_lengths: tuple[int, ...] = (8192,)
    lora_rank: int = 8
    quantized_prompt: int = 512
    quantized_decode_tokens: int = 16
    perplexity_context: int = 512
    perplexity_tokens: int = 8192
    cell_time_limit_s: float = 1800.0  # the teacher's 32k-token prefill takes many minutes on 2 cores
    # Decoding cells run their prompt through the model (else its context is filled without a prefill,
    # `context_filled_cache`: the same decoding cost, minutes instead of hours for the teacher after 32k at batch 8).
    prefill_decode_prompts: bool = False
    # Profiles of a forward pass (teacher, student) at these lengths: the operators that take the time
    profile_lengths: tuple[int, ...] = (512, 8192)
    profile_top: int = 8


@dataclass
class Sizes:
    """Problem sizes of one run (the issue's sizes, or tiny ones for --quick)."""

    kernel_shape: tuple[int, int, int, int] = (2, 4, 2048, 64)
    kernel_repeats: int = 5
    train_models: tuple[str, ...] = (*FWP_TYPES, PEER, WEAK_REFERENCE)
    train_lengths: tuple[int, ...] = (512, 2048, 4096)
    long_lengths: tuple[int, ...] = (8192, 16384)  # the headline type and the peer only
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
    batch_prompts: tuple[int, ...] = (1024, 4096, 16384)
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
    # the memory bandwidth measurement: a tensor far larger than the caches, best of several passes
    bandwidth_bytes: int = 1 << 30
    bandwidth_repeats: int = 5
    # 9. the real model (--real_teacher)
    real: RealModelSizes = field(default_factory=RealModelSizes)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            kernel_shape=(1, 2, 128, 16), kernel_repeats=1, train_models=(HEADLINE_TYPE, PEER, WEAK_REFERENCE),
            train_lengths=(64, 128), long_lengths=(256,),
            train_steps=1, decode_prompt=64, decode_tokens=4, cache_lengths=(32, 256), flops_shape=(1, 2, 256, 16),
            vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
            batch_sizes=(1, 2), batch_prompts=(32, 64), batch_decode_tokens=3,
            realistic_vocab_size=512, realistic_hidden_size=48, realistic_num_layers=2, realistic_num_heads=4,
            realistic_train_length=64, realistic_decode_prompt=64, realistic_decode_tokens=3,
            long_prompts=(256, 1024), long_prefill_chunk=256, long_decode_tokens=3, compile_backend="eager",
            bandwidth_bytes=1 << 25, bandwidth_repeats=2,
            real=RealModelSizes(prefill_lengths=(32, 128), prefill_chunk=32, decode_prompts=(32, 128),
                                decode_batches=(1, 2), decode_tokens=3, train_lengths=(32, 64), lora_rank=2,
                                quantized_prompt=32, quantized_decode_tokens=3, perplexity_context=32,
                                perplexity_tokens=128, cell_time_limit_s=180.0, profile_lengths=(32,)),
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
    """An FWP model of `kind`; `"llama"` (`PEER`): LlamaForCausalLM of the same width, depth, heads (no grouped
    k/v), vocabulary, SwiGLU width and tied embeddings as the FWP model, with SDPA; or `"gpt2"`: GPT2LMHeadModel
    of the same width/depth (a 4·d GELU MLP of the same parameter count) with SDPA."""
    if kind == PEER:
        fields = fwp_config_fields(HEADLINE_TYPE, sizes)
        config = LlamaConfig(
            vocab_size=sizes.vocab_size, hidden_size=sizes.hidden_size, intermediate_size=fields["intermediate_size"],
            num_hidden_layers=sizes.num_layers, num_attention_heads=sizes.num_heads,
            num_key_value_heads=sizes.num_heads, max_position_embeddings=max_length,
            tie_word_embeddings=FWPConfig().tie_word_embeddings, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        config._attn_implementation = "sdpa"
        return LlamaForCausalLM(config)
    if kind == WEAK_REFERENCE:
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
    return {**result, "model_rss_gib": model_rss / GIB, "peak_rss_gib": peak, "parameters": model.num_parameters(),
            "weight_bytes_per_token": weight_bytes_per_step(model)}


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
        # a state may be a tuple of tensors (the window kernels' `WindowState`)
        state_sum = sum(t.sum() for t in state if t.is_floating_point()) if isinstance(state, tuple) else state.sum()
        (output.sum() + state_sum).backward()
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
    if spec.softmax_window:  # rotated q, k for the window, their features for the fast weights (LoLCATs)
        inputs = {"q": randn(batch, heads, length, dim), "k": randn(batch, heads, length, dim), "v": values,
                  "q_features": features(), "k_features": features(), "window_factor": torch.full((heads,), 0.5),
                  "window_size": FWPConfig().fast_weight.window_size}
        return inputs, spec.chunk, spec.recurrent
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
    jobs += [(kind, length) for length in sizes.long_lengths for kind in (HEADLINE_TYPE, PEER)]
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


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of the weight matrices one decoding step reads (those of `_weight_matrices`, each at its own
    dtype; a dynamically quantized int8 linear layer's weight counts one byte per entry)."""
    from transformers.pytorch_utils import Conv1D

    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            total += module.weight.numel() * module.weight.element_size()
        elif isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight = module.weight()
            total += weight.numel() * weight.element_size()
    return total


# Width of the matrix whose one-row products `measure_memory_bandwidth` times (a hidden size's order).
GEMV_COLUMNS = 1024


def measure_memory_bandwidth(num_bytes: int, repeats: int = 5) -> dict:
    """This machine's memory bandwidth with torch's threads: the best of `repeats` sums of a float32 tensor of
    `num_bytes` (each byte read once: ``read_gb_s``, the bound's bandwidth), copies of it into another (read and
    written once: ``copy_gb_s`` counts both) and one-row products ``F.linear([1, 1024], [N, 1024])`` with it as a
    matrix (``gemv_gb_s``: the rate at which the BLAS a batch-1 decoding step calls streams a weight matrix from
    memory; every weight of a 135M model is read from memory, not cache, once per step)."""
    if num_bytes < 4 * GEMV_COLUMNS or repeats < 1:
        raise ValueError(f"need num_bytes >= {4 * GEMV_COLUMNS} and repeats >= 1, got {num_bytes} and {repeats}")
    source = torch.ones(num_bytes // 4)  # ones, not empty: every page is touched before timing
    target = torch.zeros_like(source)
    size = source.numel() * source.element_size()
    read_s = _best_seconds(source.sum, repeats)
    copy_s = _best_seconds(lambda: target.copy_(source), repeats)
    matrix = source[: source.numel() // GEMV_COLUMNS * GEMV_COLUMNS].view(-1, GEMV_COLUMNS)
    row = torch.ones(1, GEMV_COLUMNS)
    gemv_s = _best_seconds(lambda: torch.nn.functional.linear(row, matrix), repeats)
    return {"bytes": size, "repeats": repeats, "read_gb_s": size / read_s / 1e9, "copy_gb_s": 2 * size / copy_s / 1e9,
            "gemv_gb_s": matrix.numel() * matrix.element_size() / gemv_s / 1e9}


def decode_flops_per_token(model: torch.nn.Module, context_length: int) -> float:
    """FLOPs (multiply-add = 2) of one decoding step of one sequence: 2 per weight-matrix entry, plus per layer
    either 6 per fast-weight state entry (the delta rule's read k·S, rank-1 write and read q·S; an upper bound
    for the other rules) or, for softmax attention, 4·context·d_model (q·K and the weighted sum of V)."""
    config = model.config
    flops = 2.0 * _weight_matrices(model)
    if not isinstance(model, FWPForCausalLM):  # Llama or GPT-2: every layer reads its KV cache
        return flops + 4.0 * context_length * config.hidden_size * config.num_hidden_layers
    for kind in config.layer_attention_types:
        spec = TOKEN_MIXERS[kind]
        if spec.holds_state:
            flops += 6.0 * config.num_attention_heads * math.prod(spec.state_shape(config))
        else:
            flops += 4.0 * context_length * config.hidden_size
    return flops


def _decode_row(label: str, model: torch.nn.Module, mode: str, result: dict, context_length: int) -> dict:
    return {"model": label, "mode": mode, **result, "flops_per_token": decode_flops_per_token(model, context_length),
            "weight_bytes_per_token": weight_bytes_per_step(model)}


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
    references = (PEER, WEAK_REFERENCE)
    models = {kind: build_model(kind, sizes, max_length).eval() for kind in (*FWP_TYPES, *references)}
    context = sizes.decode_prompt + sizes.decode_tokens // 2
    best: dict[str, dict] = {}

    def keep_best(key: str, result: dict) -> None:
        if key not in best or result["decode_tokens_per_s"] > best[key]["decode_tokens_per_s"]:
            best[key] = result

    for kind in tqdm((*FWP_TYPES, *references), desc="3. decoding, eager", leave=False):
        keep_best(kind, timed_generate(models[kind], prompt, sizes.decode_tokens))
    compile_config = cpu_compile_config(sizes.compile_backend)
    headline = models[HEADLINE_TYPE]
    start = time.perf_counter()  # the first compiled call compiles the decoding step
    timed_generate(headline, prompt[:, :16], 3, **compiled_generation(headline, 1, compile_config))
    warmup_s = time.perf_counter() - start
    baseline = None
    for repeat in tqdm(range(2), desc="3. decoding: compiled, eager, Llama, GPT-2 side by side", leave=False):
        keep_best("compiled", timed_generate(headline, prompt, sizes.decode_tokens,
                                             **compiled_generation(headline, 1, compile_config)))
        keep_best(HEADLINE_TYPE, timed_generate(headline, prompt, sizes.decode_tokens))
        for kind in references:
            keep_best(kind, timed_generate(models[kind], prompt, sizes.decode_tokens))
        if args.baseline_src and repeat == 0:
            baseline = measure_baseline_decoding(sizes, args)
    decode = [_decode_row(kind, models[kind], "eager", best[kind], context) for kind in (*FWP_TYPES, *references)]
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
    """Section 6: every (prompt length, batch) cell for the headline type and Llama, each in a child process."""
    jobs = [(prompt, batch, kind) for prompt in sizes.batch_prompts for batch in sizes.batch_sizes
            for kind in (HEADLINE_TYPE, PEER)]
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
    for kind in tqdm((HEADLINE_TYPE, PEER, WEAK_REFERENCE), desc="7. GPT-2-small size", leave=False):
        length = sizes.realistic_train_length
        training.append({"model": kind, "seq_len": length, **measure_training_step(kind, length, big, args)})
        cell = (kind, big, 1, sizes.realistic_decode_prompt, sizes.realistic_decode_tokens)
        decoding.append({"model": kind, "prompt": sizes.realistic_decode_prompt,
                         **run_in_child(_generation_cell, cell, args, sizes.cell_time_limit_s)})
    return {"training": training, "decoding": decoding}


# ----------------------------------------------------------------------------------------------
# 9. The real model (--real_teacher)
# ----------------------------------------------------------------------------------------------

# The teacher and its students: every layer a fast-weight layer, and the hybrid that keeps some softmax layers.
REAL_MODELS = (TEACHER, STUDENT, HYBRID)


def scaled_layers(layers: tuple[int, ...], reference_depth: int, depth: int) -> list[int]:
    """`layers` of a `reference_depth`-layer model moved to the same relative depth of a `depth`-layer one
    (round(i · depth / reference_depth), at most depth − 1, duplicates dropped); unchanged when the depths agree."""
    if reference_depth < 1 or depth < 1:
        raise ValueError(f"depths must be >= 1, got reference_depth={reference_depth} and depth={depth}")
    bad = [i for i in layers if not 0 <= i < reference_depth]
    if bad:
        raise ValueError(f"layers {bad} are not layers of a {reference_depth}-layer model (0 … {reference_depth - 1})")
    return sorted({min(depth - 1, round(i * depth / reference_depth)) for i in layers})


def load_real_model(folder: str, model: str, sizes: Sizes) -> torch.nn.Module:
    """The teacher in `folder` (float32, SDPA), or one of its students built by `linearize_model` without
    training: `STUDENT` (every layer `sizes.real.student_type`) or `HYBRID` (the softmax layers
    `sizes.real.keep_softmax_layers` kept, scaled to the teacher's depth). In eval mode."""
    from transformers import AutoModelForCausalLM

    from ..conversion.linearize import linearize_model

    if model not in REAL_MODELS:
        raise ValueError(f"model must be one of {', '.join(REAL_MODELS)}, got {model!r}")
    teacher = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    if model == TEACHER:
        return teacher
    keep = ([] if model == STUDENT else
            scaled_layers(sizes.real.keep_softmax_layers, sizes.real.reference_depth, teacher.config.num_hidden_layers))
    return linearize_model(teacher, sizes.real.student_type, keep_softmax_layers=keep)


def _compiled_kwargs(model: torch.nn.Module, batch: int, backend: str, max_length: int) -> dict:
    """`generate` keyword arguments of compiled decoding: a fresh fast-weight student's `FastWeightStaticCache`,
    or the teacher's static KV cache of `max_length` positions (transformers' `StaticCache`); a ValueError for a
    model with both kinds of layer (the hybrid), which only `DynamicCache` holds. Either cache has the same shape
    whatever the prompt, so a short warm-up prompt compiles the graph the measured call runs."""
    from transformers import StaticCache

    compile_config = cpu_compile_config(backend)
    if isinstance(model, FWPForCausalLM):
        return compiled_generation(model, batch, compile_config)
    cache = StaticCache(config=model.config, max_cache_len=max_length)
    return {**generate_cache_kwargs(cache), "compile_config": compile_config}


def _real_prefill_cell(folder: str, model_name: str, sizes: Sizes, length: int, chunk: int | None) -> dict:
    """Prefill of one `length`-token prompt at batch 1 (`generate`'s first token, in `chunk`-token pieces
    through ``prefill_chunk_size`` when given): tokens/s and the process's peak memory."""
    torch.manual_seed(0)
    model = load_real_model(folder, model_name, sizes)
    prompt = torch.randint(0, model.config.vocab_size, (1, length))
    model_rss = current_rss_bytes()
    result = timed_generate(model, prompt, 2, **({} if chunk is None else {"prefill_chunk_size": chunk}))
    return {"prefill_s": result["prefill_s"], "prefill_tokens_per_s": length / result["prefill_s"],
            "model_rss_gib": model_rss / GIB, "peak_rss_gib": max(peak_rss_bytes() / GIB, result["decode_rss_gib"])}


@torch.no_grad()
def context_filled_cache(model: torch.nn.Module, batch: int, length: int, cache=None):
    """`cache` (default: the `DynamicCache` a forward pass makes) holding `length` tokens of context for `batch`
    rows, made without running a prompt: one real token lays the cache out (its layers, buffers and fast-weight
    states), then every key/value layer holds `length` random keys and values and every fast-weight layer counts
    `length` tokens (its state keeps the real token's: a fixed-size tensor whatever it has read).

    Decoding from it costs what decoding after a real `length`-token prompt costs — a step reads `length` keys
    and values per softmax layer, or a state of the same size — so speed and decoding memory are the same, the
    tokens mean nothing. For speed cells whose prompt would take far longer than the decoding they measure
    (a 32k-token prefill of a 135M teacher at batch 8 is hours on a 2-core CPU). Pass ``length + 1`` prompt tokens
    to ``generate`` with it: generate runs only the tokens past the cache's length."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    from ..cache_fwp import is_fast_weight_cache_layer

    ids = torch.zeros(batch, 1, dtype=torch.long)
    cache = DynamicCache() if cache is None else cache
    cache = output_cache(model(input_ids=ids, use_cache=True, **generate_cache_kwargs(cache)))
    generator = torch.Generator().manual_seed(0)
    for index, layer in enumerate(cache.layers):
        if is_fast_weight_cache_layer(layer):
            layer.seen_tokens = length
            continue
        rows, heads, _, head_dim = layer.keys.shape
        if getattr(layer, "max_cache_len", None) is not None:  # transformers' StaticLayer: buffers of fixed length
            if length > layer.max_cache_len:
                raise ValueError(f"layer {index}'s static cache holds {layer.max_cache_len} positions, not {length}")
            layer.keys[:, :, :length].normal_(generator=generator)
            layer.values[:, :, :length].normal_(generator=generator)
            layer.cumulative_length.fill_(length)
        elif type(layer) is DynamicLayer:  # not its sliding-window subclass, which keeps only a window
            layer.keys = torch.randn(rows, heads, length, head_dim, generator=generator, dtype=layer.keys.dtype)
            layer.values = torch.randn(rows, heads, length, head_dim, generator=generator, dtype=layer.values.dtype)
        else:
            raise ValueError(f"cannot fill layer {index}'s cache ({type(layer).__name__}) without a prefill: "
                             "DynamicLayer, static key/value layers and fast-weight layers can be filled")
    return cache


def _real_profile_cell(folder: str, model_name: str, sizes: Sizes, length: int) -> dict:
    """Where a batch-1 forward pass of `length` tokens spends its time (after one warm-up pass): torch.profiler's
    operators by self CPU time, the `real.profile_top` largest (share of the total, calls) and the rest summed."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = load_real_model(folder, model_name, sizes)
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            model(input_ids=ids, use_cache=False)
        seconds = time.perf_counter() - start
    events = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in events)
    top = [{"op": event.key, "share": event.self_cpu_time_total / total, "calls": event.count}
           for event in events[: sizes.real.profile_top]]
    rest = sum(event.self_cpu_time_total for event in events[sizes.real.profile_top:]) / total
    return {"forward_s": seconds, "ops": top, "other_share": rest}


def _real_decode_cell(folder: str, model_name: str, sizes: Sizes, prompt_length: int, batch: int,
                      compiled: bool) -> dict:
    """Greedy decoding after a `prompt_length`-token context at `batch`: `timed_generate`'s figures, the weight
    bytes a step reads and the process's peak. The context is filled without a prefill (`context_filled_cache`)
    unless `sizes.real.prefill_decode_prompts`. Compiled: a first call on a 16-token prompt, with a cache of the
    measured call's shape, compiles the decoding step (``compile_s``, not counted)."""
    torch.manual_seed(0)
    model = load_real_model(folder, model_name, sizes)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_length))
    new_tokens = sizes.real.decode_tokens
    # Filled: the cache holds the context but for its last token, which generate runs as the first step.
    fill = None if sizes.real.prefill_decode_prompts else prompt_length - 1
    extra, kwargs = {"context": "prefilled" if fill is None else "filled without prefill"}, {}
    if compiled:
        def compiled_kwargs() -> dict:
            return _compiled_kwargs(model, batch, sizes.compile_backend, prompt_length + new_tokens)

        try:
            compiled_kwargs()
        except ValueError as error:
            return {"error": f"not compiled: {str(error)[:160]}"}
        start = time.perf_counter()
        timed_generate(model, prompt[:, :16], new_tokens, **compiled_kwargs())
        extra["compile_s"] = time.perf_counter() - start
        kwargs = compiled_kwargs()
    if fill is not None:
        cache = next(iter(generate_cache_kwargs(None)))
        kwargs[cache] = context_filled_cache(model, batch, fill, kwargs.get(cache))
    result = timed_generate(model, prompt, new_tokens, **kwargs)
    peak = max(peak_rss_bytes() / GIB, result["decode_rss_gib"])
    return {**result, **extra, "peak_rss_gib": peak, "weight_bytes_per_token": weight_bytes_per_step(model)}


def _real_train_cell(folder: str, model_name: str, sizes: Sizes, length: int, lora: bool,
                     checkpointed: bool = False) -> dict:
    """One training step (forward + backward + AdamW) of batch 1 × `length` tokens, timed after one warm-up
    step: every parameter, or (`lora`) rank-`real_lora_rank` LoRA adapters on every linear layer but the LM head
    (peft's ``"all-linear"``); `checkpointed`: with transformers' gradient checkpointing (each decoder layer's
    activations recomputed in backward, non-reentrant). Tokens/s, the process's peak memory, trainable parameters."""
    torch.manual_seed(0)
    model = load_real_model(folder, model_name, sizes).train()
    if checkpointed:
        enable_activation_checkpointing(model, {"use_reentrant": False})
    if lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as error:  # the `peft` extra is optional
            return {"error": f"not measured: {error} (pip install 'fwp-hf[peft]')"}
        model = get_peft_model(model, LoraConfig(r=sizes.real.lora_rank, lora_alpha=2 * sizes.real.lora_rank,
                                                 target_modules="all-linear"))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"step_s": times[-1], "tokens_per_s": length / times[-1], "peak_rss_gib": peak_rss_bytes() / GIB,
            "trainable_parameters": sum(parameter.numel() for parameter in trainable),
            "recomputes_activations": is_activation_checkpointing(model)}


def quantize_linear_int8(model: torch.nn.Module, keep_float: Collection[str] = (),
                         per_channel_weights: bool = False) -> torch.nn.Module:
    """A copy of `model` whose nn.Linear layers (the LM head included), all but those named in `keep_float`
    (module names, e.g. ``model.layers.11.mlp.down_proj``), are int8 with dynamic activation quantization and one
    weight scale per matrix, or per output channel (`per_channel_weights`):
    `torch.ao.quantization.quantize_dynamic`, which torch 2.13 still ships but marks deprecated (it warns, naming
    torchao's ``quantize_`` as the successor); the copy runs on the CPU (fbgemm/qnnpack). Its activation scale is
    one per call (per tensor), so one channel far larger than the others (`linear_input_outliers`) costs every
    other channel its resolution: keep such layers float.

    Saving: transformers' ``save_pretrained`` of the quantized copy fails (torch 2.13, transformers 5.23:
    ``AttributeError: 'torch.dtype' object has no attribute 'data_ptr'`` — the packed parameters are not
    tensors), so save the float model and quantize after ``from_pretrained`` (seconds); ``torch.save`` of the
    quantized copy's ``state_dict`` works but is not a transformers checkpoint."""
    import copy
    import warnings

    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = set(keep_float) - linears
    if unknown:
        raise ValueError(f"keep_float names {sorted(unknown)}, which are not nn.Linear modules of the model")
    qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if per_channel_weights
               else torch.ao.quantization.default_dynamic_qconfig)
    spec = {name: qconfig for name in sorted(linears - set(keep_float))}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(torch.ao.quantization|quantize_per_tensor).*deprecated")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


@torch.no_grad()
def linear_input_outliers(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, float]:
    """Per nn.Linear of `model`, the outlier ratio of its input on one forward of `input_ids` [B, T]: the
    largest channel's max |x| over the median channel's (channels = input features; Dettmers et al. 2022 and
    Sun et al. 2024's "massive activations" are such channels). A per-tensor int8 activation scale is set by
    the largest channel, so a ratio of r leaves the median channel about 127 / r levels."""
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            peak = inputs[0].detach().abs().flatten(0, -2).amax(0)
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)]
    try:
        model(input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (peak.max() / peak.median().clamp_min(1e-12)).item() for name, peak in peaks.items()}


def _real_quantized_cell(folder: str, model_name: str, sizes: Sizes, heldout_text: str | None,
                         trained_student: str | None = None) -> dict:
    """Batch-1 eager decoding (after `real_quantized_prompt` tokens; best of 2, the variants alternating) and
    held-out perplexity (windows of `real_perplexity_context` tokens, the first `real_perplexity_tokens` of
    `heldout_text` under the teacher's tokenizer) of float32, int8 (`quantize_linear_int8`), int8 with the
    outlier-input layers float (`linear_input_outliers` > `INT8_OUTLIER_RATIO`) and bfloat16. The student is
    `trained_student`'s model when given."""
    from .linearization_eval import document_stream, heldout_perplexity, read_texts

    torch.manual_seed(0)
    if model_name == STUDENT and trained_student:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(trained_student, dtype=torch.float32).eval()
    else:
        model = load_real_model(folder, model_name, sizes)
    heldout_ids = None
    if heldout_text:
        from transformers import AutoTokenizer

        heldout_ids = document_stream(read_texts(heldout_text), AutoTokenizer.from_pretrained(folder))
    outliers = linear_input_outliers(model, _quantization_calibration_ids(heldout_ids, model, sizes))
    keep_float = sorted(name for name, ratio in outliers.items() if ratio > INT8_OUTLIER_RATIO)
    variants = {"float32": model, INT8: quantize_linear_int8(model),
                INT8_OUTLIERS_FLOAT: quantize_linear_int8(model, keep_float),
                INT8_PER_CHANNEL_OUTLIERS_FLOAT: quantize_linear_int8(model, keep_float, per_channel_weights=True),
                "bfloat16": _bfloat16_copy(model)}
    prompt = torch.randint(0, model.config.vocab_size, (1, sizes.real.quantized_prompt))
    best: dict[str, dict] = {}
    for _ in range(2):
        for name, variant in variants.items():
            result = timed_generate(variant, prompt, sizes.real.quantized_decode_tokens)
            if name not in best or result["decode_tokens_per_s"] > best[name]["decode_tokens_per_s"]:
                best[name] = result
    rows = {name: {**best[name], "weight_bytes_per_token": weight_bytes_per_step(variant)}
            for name, variant in variants.items()}
    rows[INT8_OUTLIERS_FLOAT]["float_layers"] = {name: outliers[name] for name in keep_float}
    rows[INT8]["largest_outlier_ratios"] = dict(sorted(outliers.items(), key=lambda item: -item[1])[:5])
    if heldout_ids is not None:
        ids = heldout_ids[: sizes.real.perplexity_tokens]
        for name, variant in variants.items():
            rows[name]["perplexity"] = heldout_perplexity(variant, ids, sizes.real.perplexity_context)["perplexity"]
    return rows


def _quantization_calibration_ids(heldout_ids: list[int] | None, model, sizes: Sizes) -> torch.Tensor:
    """[1, perplexity_context] token ids that choose the layers kept float: the held-out tokens *after* those
    whose perplexity is measured (so the choice is not fitted to them), else random tokens."""
    start, context = sizes.real.perplexity_tokens, sizes.real.perplexity_context
    if heldout_ids is not None and len(heldout_ids) >= start + context:
        return torch.tensor([heldout_ids[start:start + context]])
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, model.config.vocab_size, (1, context), generator=generator)


def _bfloat16_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).to(torch.bfloat16).eval()


def real_parts(args: BenchmarkArguments) -> list[str]:
    """The parts of section 9 that `args.real_parts` names, in `REAL_PARTS`' order (unknown names kept last)."""
    names = [name.strip() for name in args.real_parts.split(",") if name.strip()]
    return [part for part in REAL_PARTS if part in names] + [name for name in names if name not in REAL_PARTS]


def check_real_model_arguments(args: BenchmarkArguments) -> None:
    """Section 9's arguments, checked before any measurement: a teacher folder with a config.json, a held-out
    text file that exists, and no held-out text without a teacher."""
    if args.heldout_text and not args.real_teacher:
        raise ValueError("--heldout_text is read by section 9 only: give --real_teacher too")
    if args.real_teacher and not (Path(args.real_teacher) / "config.json").is_file():
        raise ValueError(f"--real_teacher {args.real_teacher!r} must be a model folder holding a config.json")
    parts = real_parts(args)
    if not parts or set(parts) - set(REAL_PARTS):
        raise ValueError(f"--real_parts takes a comma-separated list of {', '.join(REAL_PARTS)}, "
                         f"got {args.real_parts!r}")
    if args.trained_student and not args.real_teacher:
        raise ValueError("--trained_student is read by section 9 only: give --real_teacher too")
    if args.trained_student and not (Path(args.trained_student) / "config.json").is_file():
        raise ValueError(f"--trained_student {args.trained_student!r} must be a model folder holding a config.json")
    if args.heldout_text and not Path(args.heldout_text).is_file():
        raise ValueError(f"--heldout_text {args.heldout_text!r} is not a file (.jsonl with a 'text' field, or .txt)")


# Errors of a cell that ran out of time or memory (`run_in_child`'s and `_child_main`'s wording).
_OUTGROWN = ("skipped: still running", "out of memory", "child process died", "RuntimeError")


class CellRunner:
    """Runs section 9's cells in child processes, in order of growing size, and skips a cell when a cell of the
    same kind that is no larger in every size ran out of time or memory (it would only burn its time limit)."""

    def __init__(self, args: BenchmarkArguments, time_limit_s: float) -> None:
        self.args, self.time_limit_s = args, time_limit_s
        self.outgrown: list[tuple[tuple, tuple[int, ...]]] = []

    def run(self, measure, arguments: tuple, kind: tuple, size: tuple[int, ...]) -> dict:
        for failed_kind, failed_size in self.outgrown:
            if failed_kind == kind and all(a <= b for a, b in zip(failed_size, size, strict=True)):
                return {"error": f"skipped: the smaller cell {failed_size} of this model ran out of time or memory"}
        cell = run_in_child(measure, arguments, self.args, self.time_limit_s)
        if cell.get("error", "").startswith(_OUTGROWN):
            self.outgrown.append((kind, size))
        return cell


def bench_real_model(folder: str, sizes: Sizes, args: BenchmarkArguments) -> dict:
    """Section 9: the teacher in `folder` against its untrained students (module docstring), each cell in a child
    process with the memory and `real_cell_time_limit_s` limits; the parts `args.real_parts` names (the others'
    lists stay empty)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    keep = scaled_layers(sizes.real.keep_softmax_layers, sizes.real.reference_depth, config.num_hidden_layers)
    cells = CellRunner(args, sizes.real.cell_time_limit_s)
    parts = real_parts(args)
    rows: dict[str, list[dict]] = {part: [] for part in REAL_PARTS}
    unknown = set(sizes.real.decode_modes) - {"eager", "compiled"}
    if unknown:
        raise ValueError(f"real.decode_modes are 'eager' and/or 'compiled', got {sorted(unknown)}")
    if "prefill" in parts:
        jobs = [(length, model, None) for length in sorted(sizes.real.prefill_lengths) for model in REAL_MODELS]
        jobs += [(length, STUDENT, sizes.real.prefill_chunk) for length in sorted(sizes.real.prefill_lengths)]
        for length, model, chunk in tqdm(jobs, desc="9. real model: prefill", leave=False):
            cell = cells.run(_real_prefill_cell, (folder, model, sizes, length, chunk), (model, chunk), (length,))
            rows["prefill"].append({"model": model, "length": length, "prefill_chunk_size": chunk, **cell})
    if "profiles" in parts:
        for length in sorted(sizes.real.profile_lengths):
            for model in REAL_MODELS:
                cell = cells.run(_real_profile_cell, (folder, model, sizes, length), (model, "profile"), (length,))
                rows["profiles"].append({"model": model, "length": length, **cell})
    if "decode" in parts:
        jobs = [(prompt, batch, model, mode == "compiled") for prompt in sorted(sizes.real.decode_prompts)
                for batch in sorted(sizes.real.decode_batches) for mode in sizes.real.decode_modes
                for model in REAL_MODELS]
        for prompt, batch, model, compiled in tqdm(jobs, desc="9. real model: decoding", leave=False):
            cell = cells.run(_real_decode_cell, (folder, model, sizes, prompt, batch, compiled), (model, compiled),
                             (prompt, batch))
            rows["decode"].append({"model": model, "prompt": prompt, "batch": batch,
                                   "mode": "compiled" if compiled else "eager", **cell})
    if "training" in parts:
        models = (TEACHER, STUDENT)
        jobs = [(length, model, False, False) for length in sorted(sizes.real.train_lengths) for model in models]
        jobs += [(min(sizes.real.train_lengths), model, True, False) for model in models]
        jobs += [(length, model, False, True) for length in sorted(sizes.real.checkpointed_train_lengths)
                 for model in models]
        for length, model, lora, checkpointed in tqdm(jobs, desc="9. real model: training steps", leave=False):
            cell = cells.run(_real_train_cell, (folder, model, sizes, length, lora, checkpointed),
                             (model, lora, checkpointed), (length,))
            rows["training"].append({"model": model, "seq_len": length, "lora": lora,
                                     "gradient_checkpointing": checkpointed, **cell})
    if "quantized" in parts:
        for model in tqdm((STUDENT, TEACHER), desc="9. real model: int8 and bf16", leave=False):
            cell = run_in_child(_real_quantized_cell, (folder, model, sizes, args.heldout_text, args.trained_student),
                                args, sizes.real.cell_time_limit_s)
            found = [{"dtype": "all", **cell}] if "error" in cell else [{"dtype": k, **v} for k, v in cell.items()]
            rows["quantized"] += [{"model": model, **row} for row in found]
    return {"teacher": folder, "teacher_layers": config.num_hidden_layers, "kept_softmax_layers": keep,
            "student_type": sizes.real.student_type, "heldout_text": args.heldout_text,
            "trained_student": args.trained_student, "parts": parts, **rows}


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
            "python": platform.python_version(), "platform": platform.platform(),
            "bf16_instructions": cpu_has_bf16_instructions()}


def cpu_has_bf16_instructions() -> bool | None:
    """Whether /proc/cpuinfo lists a bfloat16 instruction set (avx512_bf16 or amx_bf16); None where it cannot
    be read."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[1].split()))


# The report of each kind of run (`--only`), also what `--from_json` renders a run's JSON with.
REPORT_WRITERS = {None: write_report, "kernels": write_kernel_report, "real_model": write_real_model_report}


def _judge_and_write(results: dict, sizes: Sizes, targets: tuple, start: float, args: BenchmarkArguments) -> dict:
    """Judge the run by `targets`, record its wall time and note, and write the report of its kind."""
    results["targets"] = evaluate_targets(results, sizes, targets)
    results["wall_s"] = time.time() - start
    results["note"] = args.note
    return REPORT_WRITERS[args.only](results, Path(args.output_dir))


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(BenchmarkArguments, allow_abbrev=False).parse_args_into_dataclasses(args=argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        results["note"] = args.note or results.get("note")
        return REPORT_WRITERS[results.get("only")](results, Path(args.output_dir))
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
    check_real_model_arguments(args)
    if args.only == "real_model" and not args.real_teacher:
        raise ValueError("--only real_model runs section 9: give --real_teacher <folder> too")
    baseline_file = check_baseline_src(args.baseline_src) if args.baseline_src else None
    start = time.time()
    command = " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    results = {"quick": args.quick, "command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": machine_description(torch.get_num_threads()), "sizes": asdict(sizes),
               "baseline": {"src": args.baseline_src, "label": args.baseline_label, "fwp_hf": baseline_file},
               "only": args.only}
    clock = time.process_time if args.cpu_time else time.perf_counter
    results["clock"] = "process CPU time" if args.cpu_time else "wall-clock"
    if args.only == "real_model":
        results["memory_bandwidth"] = measure_memory_bandwidth(sizes.bandwidth_bytes, sizes.bandwidth_repeats)
        results["real_model"] = bench_real_model(args.real_teacher, sizes, args)
        return _judge_and_write(results, sizes, REAL_MODEL_TARGETS, start, args)
    results["kernels"] = bench_kernels(sizes, clock)
    results["flops"] = bench_flops(sizes, clock=clock)
    if args.only == "kernels":
        return _judge_and_write(results, sizes, KERNEL_TARGETS, start, args)
    results["memory_bandwidth"] = measure_memory_bandwidth(sizes.bandwidth_bytes, sizes.bandwidth_repeats)
    results["decoding"] = bench_decoding(sizes, args)
    results["training"] = bench_training(sizes, args)
    results["batched"] = bench_batched_generation(sizes, args)
    results["realistic"] = bench_realistic_size(sizes, args)
    results["long_prompts"] = bench_long_prompts(sizes, args)
    results["real_model"] = bench_real_model(args.real_teacher, sizes, args) if args.real_teacher else None
    results["crossover"] = crossover_sentence(results["training"], sizes.train_lengths)
    return _judge_and_write(results, sizes, TARGETS, start, args)
