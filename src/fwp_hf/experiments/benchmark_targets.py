"""The targets of `benchmark` in one table (`TARGETS`), and their judging (`evaluate_targets`).

Each `Target` names what it compares (a function of the run's results), its threshold and the direction
in which it is met; `benchmark` measures, this module judges, `benchmark_report` renders. A new target is
one row of `TARGETS`. Names and thresholds may use the run's figures (`figures`: the sizes that
`benchmark.Sizes` gives the measured rows), so the quick run's targets name its own lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The type whose figures the targets check (the delta rule of Schlag et al., the project's default type).
HEADLINE_TYPE = "delta"
# The reference of every ratio and target: transformers' LlamaForCausalLM with SDPA and its KV cache, of the
# benchmark model's size (`benchmark.build_model`). GPT-2 with SDPA stays in the tables as a weaker reference
# (its attention materialises the T×T scores on a CPU) and is used by no target.
PEER = "llama"
WEAK_REFERENCE = "gpt2"
# Section 9 (``--real_teacher``): the results key, and the teacher and its two untrained students.
REAL_SECTION = "real_model"
TEACHER, STUDENT, HYBRID = "teacher", "student", "hybrid student"
INT8, FLOAT32 = "int8 dynamic", "float32"
# The int8 recipe that keeps float every linear layer whose input has a channel this many times larger than its
# median channel (`benchmark.linear_input_outliers`, on held-out text not scored): per-tensor activation scales
# cannot represent such inputs.
INT8_OUTLIERS_FLOAT, INT8_OUTLIER_RATIO = "int8 dynamic, outlier layers float", 50.0
# The same with one weight scale per output channel instead of one per matrix.
INT8_PER_CHANNEL_OUTLIERS_FLOAT = "int8 dynamic, per-channel weights, outlier layers float"
# The decoding rows of ``--baseline_src``'s code and of the ONNX export run by onnxruntime.
BASELINE_MODE = "eager, baseline code"
ONNXRUNTIME_MODE = "onnxruntime (CPU)"

Value = float | bool | None


def lookup(rows: list[dict], **match) -> dict:
    """The first row whose fields equal `match` ({} when none does)."""
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return {}


def divide(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def training_ratio(rows: list[dict], kind: str, length: int, reference: str = PEER) -> float | None:
    """Training tokens/s of `kind` ÷ the `reference`'s (Llama) at sequence length `length` (None when either is
    missing)."""
    ours, peer = lookup(rows, model=kind, seq_len=length), lookup(rows, model=reference, seq_len=length)
    if "tokens_per_s" in ours and "tokens_per_s" in peer:
        return ours["tokens_per_s"] / peer["tokens_per_s"]
    return None


def weight_read_bound(row: dict, bandwidth: dict | None) -> float | None:
    """The physical limit of a decoding row in tokens/s: a step of a batch of B sequences reads every weight
    matrix once (``weight_bytes_per_token``: bytes per step), so at the measured read bandwidth (``bandwidth``:
    `benchmark.measure_memory_bandwidth`'s record) it makes at most ``B · read_bytes_per_s / weight_bytes``
    tokens/s. None when either is missing."""
    if not bandwidth or not row.get("weight_bytes_per_token"):
        return None
    return row.get("batch", 1) * bandwidth["read_gb_s"] * 1e9 / row["weight_bytes_per_token"]


def fraction_of_bound(row: dict, bandwidth: dict | None) -> float | None:
    """A decoding row's tokens/s ÷ its `weight_read_bound`."""
    return divide(row.get("decode_tokens_per_s"), weight_read_bound(row, bandwidth))


def fraction_of_gemv_bound(row: dict, bandwidth: dict | None) -> float | None:
    """A decoding row's tokens/s ÷ the weight-read bound at the rate one-row matrix products stream weights
    (``gemv_gb_s``) instead of the rate a sum reads memory: how far a step is from its BLAS calls' own limit.
    None for a run that did not measure that rate."""
    if not bandwidth or "gemv_gb_s" not in bandwidth:
        return None
    return fraction_of_bound(row, {**bandwidth, "read_gb_s": bandwidth["gemv_gb_s"]})


def decode_rate(results: dict, model: str, mode: str = "eager") -> float | None:
    """Batch-1 decoding tokens/s of one row of section 3."""
    return lookup(results["decoding"]["decode"], model=model, mode=mode).get("decode_tokens_per_s")


def figures(sizes) -> dict[str, Any]:
    """The sizes the targets' names, values and thresholds refer to (`sizes` is a `benchmark.Sizes`)."""
    return {
        "headline": HEADLINE_TYPE, "mid": sizes.train_lengths[1], "long": sizes.train_lengths[-1],
        "long_lengths": sizes.long_lengths, "prompt": sizes.decode_prompt, "small": min(sizes.cache_lengths),
        "large": max(sizes.cache_lengths), "batch": max(sizes.batch_sizes), "short_prompt": min(sizes.batch_prompts),
        "long_prompt": max(sizes.batch_prompts), "shortest": min(sizes.long_prompts),
        "longest": max(sizes.long_prompts), "growth": max(sizes.long_prompts) / min(sizes.long_prompts),
        # section 9
        "student_type": sizes.real.student_type, "real_prefill_lengths": sizes.real.prefill_lengths,
        "real_longest_prefill": max(sizes.real.prefill_lengths),
        "real_shortest_prompt": min(sizes.real.decode_prompts),
        "real_mid_prompt": sorted(sizes.real.decode_prompts)[(len(sizes.real.decode_prompts) - 1) // 2],
        "real_longest_prompt": max(sizes.real.decode_prompts), "real_batch": max(sizes.real.decode_batches),
        "real_train_length": max(sizes.real.train_lengths),
        "real_checkpointed_train_lengths": sizes.real.checkpointed_train_lengths,
    }


def _once(results: dict, f: dict) -> list[dict]:
    return [{}]


@dataclass(frozen=True)
class Target:
    """One target: `name` (formatted with `figures` and the case's own fields), what is `compared` (in
    words), `value` (results, figures → the measured value, None when not measured), `threshold` (a number,
    True for a property that must hold, or figures → number), `direction` (``"≥"`` / ``"≤"`` the threshold,
    ``"is"`` for a property) and `unit`. `cases` (results, figures → one dict of extra fields per row; none
    when the target does not apply to this run) repeats a target over several sizes. A target of an optional
    `section` (a results key) is recorded as not run when the run skipped that section, or the section's `part`
    (one of `REAL_PARTS`, for section 9's ``--real_parts``); its `cases` then depend on the figures only."""

    name: str
    compared: str
    value: Callable[[dict, dict], Value]
    threshold: float | bool | Callable[[dict], float]
    direction: str = "≥"
    unit: str = "×"
    cases: Callable[[dict, dict], list[dict]] = field(default=_once)
    section: str | None = None
    part: str | None = None


def _headline_kernel_speedup(results: dict, f: dict) -> Value:
    return lookup(results["kernels"], kernel=f["headline"]).get("speedup")


def _baseline_rate(results: dict) -> float | None:
    row = next((row for row in results["decoding"]["decode"] if row["mode"] == BASELINE_MODE), {})
    return row.get("decode_tokens_per_s")


def _with_baseline(results: dict, f: dict) -> list[dict]:
    return [{}] if any(row["mode"] == BASELINE_MODE for row in results["decoding"]["decode"]) else []


def _cache_bytes_equal(results: dict, f: dict) -> bool:
    return all(row[f"bytes_at_{f['small']}"] == row[f"bytes_at_{f['large']}"] for row in results["decoding"]["cache"])


def _batched(results: dict, f: dict, model: str, prompt_key: str) -> dict:
    return lookup(results["batched"], model=model, batch=f["batch"], prompt=f[prompt_key])


def _state_bytes_equal(results: dict, f: dict) -> bool:
    ours = _batched(results, f, f["headline"], "long_prompt")
    ours_short = _batched(results, f, f["headline"], "short_prompt")
    return "cache_bytes" in ours and ours.get("cache_bytes") == ours_short.get("cache_bytes")


def _one_call_prefill(results: dict, prompt: int) -> dict:
    return lookup(results["long_prompts"], prompt=prompt, prefill_chunk_size=None)


def _prefill_memory(row: dict) -> float | None:
    """What the prefill added to the process with the model built."""
    return row["peak_rss_gib"] - row["model_rss_gib"] if "peak_rss_gib" in row else None


def _real(results: dict, key: str, **match) -> dict:
    return lookup(results[REAL_SECTION][key], **match)


def real_training_row(rows: list[dict], model: str, seq_len: int, lora: bool = False,
                      checkpointed: bool = False) -> dict:
    """Section 9's training row of `model` at `seq_len` ({} when none): LoRA or not, with gradient checkpointing
    or not (rows of runs before the checkpointed cells existed have no such field: not checkpointed)."""
    return lookup([row for row in rows if bool(row.get("gradient_checkpointing")) == checkpointed],
                  model=model, seq_len=seq_len, lora=lora)


def _real_training_ratio(results: dict, length: int, checkpointed: bool = False) -> float | None:
    rows = results[REAL_SECTION]["training"]
    return divide(real_training_row(rows, STUDENT, length, checkpointed=checkpointed).get("tokens_per_s"),
                  real_training_row(rows, TEACHER, length, checkpointed=checkpointed).get("tokens_per_s"))


def _real_prefill_ratio(results: dict, f: dict) -> float | None:
    rate = "prefill_tokens_per_s"
    return divide(_real(results, "prefill", model=STUDENT, length=f["length"], prefill_chunk_size=None).get(rate),
                  _real(results, "prefill", model=TEACHER, length=f["length"], prefill_chunk_size=None).get(rate))


def _real_decode(results: dict, model: str, prompt: int, batch: int, mode: str = "eager") -> dict:
    return _real(results, "decode", model=model, prompt=prompt, batch=batch, mode=mode)


def _real_decode_ratio(results: dict, prompt: int, batch: int) -> float | None:
    rate = "decode_tokens_per_s"
    return divide(_real_decode(results, STUDENT, prompt, batch).get(rate),
                  _real_decode(results, TEACHER, prompt, batch).get(rate))


def _real_quantized(results: dict, dtype: str) -> dict:
    return _real(results, "quantized", model=STUDENT, dtype=dtype)


def _perplexity_change(results: dict, dtype: str) -> float | None:
    int8, fp32 = _real_quantized(results, dtype).get("perplexity"), _real_quantized(results, FLOAT32).get("perplexity")
    return abs(int8 / fp32 - 1) if int8 is not None and fp32 else None


TARGETS: tuple[Target, ...] = (
    Target("{headline} chunkwise vs recurrent, fwd+bwd",
           "section 1: recurrent ÷ chunkwise seconds of the headline kernel, forward+backward",
           _headline_kernel_speedup, 25.0),
    Target("{headline} training tok/s vs Llama at T={mid}",
           "section 2: training tokens/s of the headline type ÷ Llama's at the middle length",
           lambda r, f: training_ratio(r["training"], f["headline"], f["mid"]), 1.0),
    Target("{headline} training tok/s vs Llama at T={long}",
           "section 2: the same at the longest of the lengths every model trains at",
           lambda r, f: training_ratio(r["training"], f["headline"], f["long"]), 3.0,
           # the quick sizes have two lengths only; one name must not carry two thresholds
           cases=lambda r, f: [{}] if f["long"] != f["mid"] else []),
    Target("{headline} training step peak memory at T={length}",
           "section 5: peak resident memory of a training step's child process, the long lengths",
           lambda r, f: lookup(r["training"], model=f["headline"], seq_len=f["length"]).get("peak_rss_gib"), 8.0,
           "≤", "GiB", cases=lambda r, f: [{"length": length} for length in f["long_lengths"]]),
    Target("{headline} eager decode tok/s vs Llama after {prompt} prompt tokens",
           "section 3: batch-1 eager decoding tokens/s ÷ Llama's (with its KV cache)",
           lambda r, f: divide(decode_rate(r, f["headline"]), decode_rate(r, PEER)), 2.0),
    Target("{headline} compiled decode tok/s vs Llama after {prompt} prompt tokens",
           "section 3: batch-1 compiled decoding tokens/s ÷ Llama's eager",
           lambda r, f: divide(decode_rate(r, f["headline"], "compiled"), decode_rate(r, PEER)), 5.0),
    Target("{headline} eager decode tok/s vs the baseline code's eager decode",
           "section 3 (--baseline_src): this code's eager decoding ÷ the earlier checkout's",
           lambda r, f: divide(decode_rate(r, f["headline"]), _baseline_rate(r)), 1.5, cases=_with_baseline),
    Target("{headline} compiled decode tok/s vs the baseline code's eager decode",
           "section 3 (--baseline_src): this code's compiled decoding ÷ the earlier checkout's eager",
           lambda r, f: divide(decode_rate(r, f["headline"], "compiled"), _baseline_rate(r)), 3.0,
           cases=_with_baseline),
    Target("cache bytes equal at {small} and {large} tokens, every fast-weight type",
           "section 3: the cache of every fast-weight type holds the same bytes after a short and a long prompt",
           _cache_bytes_equal, True, "is", ""),
    Target("chunkwise {headline} GFLOP/s vs torch.matmul GFLOP/s (similar shapes)",
           "section 4: achieved GFLOP/s of the chunkwise kernel ÷ a batched matmul of the kernel's shapes",
           lambda r, f: r["flops"]["fraction_of_matmul"], 0.4, unit="fraction"),
    Target("{headline} decode tok/s vs Llama at batch {batch} after {long_prompt}-token prompts",
           "section 6: batched decoding tokens/s ÷ Llama's, largest batch and prompt",
           lambda r, f: divide(_batched(r, f, f["headline"], "long_prompt").get("decode_tokens_per_s"),
                               _batched(r, f, PEER, "long_prompt").get("decode_tokens_per_s")), 10.0),
    Target("{headline} state bytes equal at batch {batch} after {short_prompt}- and {long_prompt}-token prompts",
           "section 6: the state's bytes do not grow with the prompt",
           _state_bytes_equal, True, "is", ""),
    Target("{headline} decoding memory at batch {batch}, {long_prompt}- vs {short_prompt}-token prompts",
           "section 6: resident memory while decoding after the long prompt ÷ after the short one",
           lambda r, f: divide(_batched(r, f, f["headline"], "long_prompt").get("decode_rss_gib"),
                               _batched(r, f, f["headline"], "short_prompt").get("decode_rss_gib")), 1.1, "≤"),
    Target("{headline} peak memory, {longest}-token prefill then decoding",
           "section 8: peak resident memory of the longest prompt's prefill in one call, then decoding",
           lambda r, f: _one_call_prefill(r, f["longest"]).get("peak_rss_gib"), 2.0, "≤", "GiB"),
    Target("{headline} prefill memory growth {shortest} → {longest} tokens (linear: {growth:g}×)",
           "section 8: memory the prefill adds, longest prompt ÷ shortest: at most linear in the prompt",
           lambda r, f: divide(_prefill_memory(_one_call_prefill(r, f["longest"])),
                               _prefill_memory(_one_call_prefill(r, f["shortest"]))),
           lambda f: f["longest"] / f["shortest"], "≤"),
    # Section 9, the real model: issue 22's goals for the all-fast-weight student against its teacher.
    Target("{student_type} student prefill tok/s vs teacher at T={length}",
           "section 9: prefill tokens/s in one call (student chunkwise, teacher SDPA) ÷ the teacher's; no slower "
           "at every length, twice as fast at the longest",
           _real_prefill_ratio, lambda f: 2.0 if f["length"] == f["real_longest_prefill"] else 1.0,
           cases=lambda r, f: [{"length": length} for length in f["real_prefill_lengths"]], section=REAL_SECTION,
           part="prefill"),
    Target("{student_type} student eager decode tok/s vs teacher after {real_mid_prompt} tokens, batch 1",
           "section 9: batch-1 eager decoding tokens/s ÷ the teacher's (its KV cache)",
           lambda r, f: _real_decode_ratio(r, f["real_mid_prompt"], 1), 2.5, section=REAL_SECTION, part="decode"),
    Target("{student_type} student eager decode tok/s vs teacher after {real_mid_prompt} tokens, batch {real_batch}",
           "section 9: the same at the largest batch",
           lambda r, f: _real_decode_ratio(r, f["real_mid_prompt"], f["real_batch"]), 10.0,
           cases=lambda r, f: [{}] if f["real_batch"] != 1 else [], section=REAL_SECTION, part="decode"),
    Target("{student_type} student eager decode tok/s vs teacher after {real_longest_prompt} tokens, batch 1",
           "section 9: batch-1 decoding after the longest prompt",
           lambda r, f: _real_decode_ratio(r, f["real_longest_prompt"], 1), 4.0,
           cases=lambda r, f: [{}] if f["real_longest_prompt"] != f["real_mid_prompt"] else [], section=REAL_SECTION,
           part="decode"),
    Target("{student_type} student decoding memory after {real_longest_prompt} vs {real_shortest_prompt} tokens",
           "section 9: resident memory while decoding (batch 1, eager) after the longest prompt ÷ the shortest",
           lambda r, f: divide(_real_decode(r, STUDENT, f["real_longest_prompt"], 1).get("decode_rss_gib"),
                               _real_decode(r, STUDENT, f["real_shortest_prompt"], 1).get("decode_rss_gib")),
           1.1, "≤", section=REAL_SECTION, part="decode"),
    Target("{student_type} student training step tok/s vs teacher at T={real_train_length}",
           "section 9: one forward+backward+AdamW step's tokens/s ÷ the teacher's, every parameter trained",
           lambda r, f: _real_training_ratio(r, f["real_train_length"]), 2.0, section=REAL_SECTION,
           part="training"),
    Target("{student_type} student training step tok/s vs teacher at T={real_train_length}, both with gradient "
           "checkpointing",
           "section 9: the same step with each decoder layer's activations recomputed in backward (the memory "
           "that lets the student's longest step fit), tokens/s ÷ the teacher's likewise",
           lambda r, f: _real_training_ratio(r, f["real_train_length"], checkpointed=True), 2.0,
           cases=lambda r, f: [{}] if f["real_train_length"] in f["real_checkpointed_train_lengths"] else [],
           section=REAL_SECTION, part="training"),
    Target("{student_type} student compiled decode, fraction of the weight-read bound (batch 1)",
           "section 9: compiled batch-1 decoding tokens/s after the middle prompt ÷ `weight_read_bound`",
           lambda r, f: fraction_of_bound(_real_decode(r, STUDENT, f["real_mid_prompt"], 1, "compiled"),
                                          r.get("memory_bandwidth")), 0.5, unit="fraction", section=REAL_SECTION,
           part="decode"),
    *(target
      for dtype, label, what in ((INT8, "int8", "the int8 dynamically quantized student"),
                                 (INT8_OUTLIERS_FLOAT, "int8 (outlier layers float)",
                                  "the int8 student whose outlier-input layers stay float"),
                                 (INT8_PER_CHANNEL_OUTLIERS_FLOAT, "int8 (per-channel weights, outlier layers float)",
                                  "the int8 student with per-channel weight scales whose outlier-input layers stay "
                                  "float"))
      for target in (
          Target(f"{{student_type}} student {label} decode tok/s vs float32 (batch 1)",
                 f"section 9: batch-1 decoding of {what} ÷ the float32 student",
                 lambda r, f, dtype=dtype: divide(_real_quantized(r, dtype).get("decode_tokens_per_s"),
                                                  _real_quantized(r, FLOAT32).get("decode_tokens_per_s")),
                 1.8, section=REAL_SECTION, part="quantized"),
          Target(f"{{student_type}} student {label} perplexity change on held-out text",
                 f"section 9 (--heldout_text): |perplexity ÷ float32 − 1| of {what}",
                 lambda r, f, dtype=dtype: _perplexity_change(r, dtype), 0.02, "≤", "fraction", section=REAL_SECTION,
                 part="quantized"))),
)

# The kernel-only run (``--only kernels``: sections 1 and 4) is judged by these: issue 22's goals for the kernels.
KERNEL_TARGETS: tuple[Target, ...] = (
    TARGETS[0],
    Target("gated_delta chunkwise fwd+bwd seconds vs {headline}'s (the gate's cost)",
           "section 1: chunkwise forward+backward seconds of the gated delta rule ÷ the plain delta rule's",
           lambda r, f: lookup(r["kernels"], kernel="gated_delta").get("vs_headline"), 1.2, "≤"),
    Target("chunkwise {headline} GFLOP/s vs torch.matmul GFLOP/s (similar shapes), issue 22's goal",
           "section 4: achieved GFLOP/s of the chunkwise kernel ÷ a batched matmul of the kernel's shapes",
           lambda r, f: r["flops"]["fraction_of_matmul"], 0.5, unit="fraction"),
)

# The parts of section 9 (``--real_parts``), in the order they run.
REAL_PARTS = ("prefill", "profiles", "decode", "training", "quantized")

# The section-9-only run (``--only real_model``) is judged by section 9's targets.
REAL_MODEL_TARGETS: tuple[Target, ...] = tuple(target for target in TARGETS if target.section == REAL_SECTION)


def is_met(value: Value, threshold: float | bool, direction: str) -> bool:
    """A property (``"is"``) must equal its threshold; a figure must be measured and on the right side."""
    if direction == "is":
        return value is threshold
    if direction not in ("≥", "≤"):
        raise ValueError(f"a target's direction is '≥', '≤' or 'is', got {direction!r}")
    return value is not None and (value >= threshold if direction == "≥" else value <= threshold)


def evaluate_targets(results: dict, sizes, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """Every row of `targets` that applies to this run, with its measured value and met/missed, as the
    records of results-cpu.json: target, value, threshold, unit, higher_is_better, met (None, with
    ``not_run: True``, for a target of a section the run skipped)."""
    base = figures(sizes)
    records = []
    for target in targets:
        section = results.get(target.section) if target.section is not None else None
        skipped = target.section is not None and (
            not section or (target.part is not None and target.part not in section.get("parts", REAL_PARTS)))
        for case in target.cases(results, base):
            f = {**base, **case}
            value = None if skipped else target.value(results, f)
            threshold = target.threshold(f) if callable(target.threshold) else target.threshold
            record = {"target": target.name.format(**f), "value": value, "threshold": threshold, "unit": target.unit,
                      "higher_is_better": target.direction != "≤",
                      "met": None if skipped else is_met(value, threshold, target.direction)}
            records.append({**record, "not_run": True} if skipped else record)
    return records


__all__ = [
    "BASELINE_MODE", "FLOAT32", "HEADLINE_TYPE", "HYBRID", "INT8", "INT8_OUTLIER_RATIO", "INT8_OUTLIERS_FLOAT",
    "INT8_PER_CHANNEL_OUTLIERS_FLOAT", "KERNEL_TARGETS", "ONNXRUNTIME_MODE", "PEER",
    "REAL_MODEL_TARGETS", "REAL_PARTS", "REAL_SECTION", "STUDENT", "TARGETS", "TEACHER", "WEAK_REFERENCE", "Target",
    "decode_rate", "divide", "evaluate_targets", "figures", "fraction_of_bound", "fraction_of_gemv_bound", "is_met",
    "lookup", "real_training_row", "training_ratio", "weight_read_bound",
]
