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


def training_ratio(rows: list[dict], kind: str, length: int) -> float | None:
    """Training tokens/s of `kind` ÷ GPT-2's at sequence length `length` (None when either is missing)."""
    ours, gpt2 = lookup(rows, model=kind, seq_len=length), lookup(rows, model="gpt2", seq_len=length)
    if "tokens_per_s" in ours and "tokens_per_s" in gpt2:
        return ours["tokens_per_s"] / gpt2["tokens_per_s"]
    return None


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
    }


def _once(results: dict, f: dict) -> list[dict]:
    return [{}]


@dataclass(frozen=True)
class Target:
    """One target: `name` (formatted with `figures` and the case's own fields), what is `compared` (in
    words), `value` (results, figures → the measured value, None when not measured), `threshold` (a number,
    True for a property that must hold, or figures → number), `direction` (``"≥"`` / ``"≤"`` the threshold,
    ``"is"`` for a property) and `unit`. `cases` (results, figures → one dict of extra fields per row; none
    when the target does not apply to this run) repeats a target over several sizes."""

    name: str
    compared: str
    value: Callable[[dict, dict], Value]
    threshold: float | bool | Callable[[dict], float]
    direction: str = "≥"
    unit: str = "×"
    cases: Callable[[dict, dict], list[dict]] = field(default=_once)


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


TARGETS: tuple[Target, ...] = (
    Target("{headline} chunkwise vs recurrent, fwd+bwd",
           "section 1: recurrent ÷ chunkwise seconds of the headline kernel, forward+backward",
           _headline_kernel_speedup, 25.0),
    Target("{headline} training tok/s vs GPT-2 at T={mid}",
           "section 2: training tokens/s of the headline type ÷ GPT-2's at the middle length",
           lambda r, f: training_ratio(r["training"], f["headline"], f["mid"]), 1.0),
    Target("{headline} training tok/s vs GPT-2 at T={long}",
           "section 2: the same at the longest length shared with GPT-2",
           lambda r, f: training_ratio(r["training"], f["headline"], f["long"]), 3.0,
           # the quick sizes have two lengths only; one name must not carry two thresholds
           cases=lambda r, f: [{}] if f["long"] != f["mid"] else []),
    Target("{headline} training step peak memory at T={length}",
           "section 5: peak resident memory of a training step's child process, lengths without GPT-2",
           lambda r, f: lookup(r["training"], model=f["headline"], seq_len=f["length"]).get("peak_rss_gib"), 8.0,
           "≤", "GiB", cases=lambda r, f: [{"length": length} for length in f["long_lengths"]]),
    Target("{headline} eager decode tok/s vs GPT-2 after {prompt} prompt tokens",
           "section 3: batch-1 eager decoding tokens/s ÷ GPT-2's (with its KV cache)",
           lambda r, f: divide(decode_rate(r, f["headline"]), decode_rate(r, "gpt2")), 2.0),
    Target("{headline} compiled decode tok/s vs GPT-2 after {prompt} prompt tokens",
           "section 3: batch-1 compiled decoding tokens/s ÷ GPT-2's eager",
           lambda r, f: divide(decode_rate(r, f["headline"], "compiled"), decode_rate(r, "gpt2")), 5.0),
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
    Target("{headline} decode tok/s vs GPT-2 at batch {batch} after {long_prompt}-token prompts",
           "section 6: batched decoding tokens/s ÷ GPT-2's, largest batch and prompt",
           lambda r, f: divide(_batched(r, f, f["headline"], "long_prompt").get("decode_tokens_per_s"),
                               _batched(r, f, "gpt2", "long_prompt").get("decode_tokens_per_s")), 10.0),
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


def is_met(value: Value, threshold: float | bool, direction: str) -> bool:
    """A property (``"is"``) must equal its threshold; a figure must be measured and on the right side."""
    if direction == "is":
        return value is threshold
    if direction not in ("≥", "≤"):
        raise ValueError(f"a target's direction is '≥', '≤' or 'is', got {direction!r}")
    return value is not None and (value >= threshold if direction == "≥" else value <= threshold)


def evaluate_targets(results: dict, sizes, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """Every row of `targets` that applies to this run, with its measured value and met/missed, as the
    records of results-cpu.json: target, value, threshold, unit, higher_is_better, met."""
    base = figures(sizes)
    records = []
    for target in targets:
        for case in target.cases(results, base):
            f = {**base, **case}
            value = target.value(results, f)
            threshold = target.threshold(f) if callable(target.threshold) else target.threshold
            records.append({"target": target.name.format(**f), "value": value, "threshold": threshold,
                            "unit": target.unit, "higher_is_better": target.direction != "≤",
                            "met": is_met(value, threshold, target.direction)})
    return records


__all__ = [
    "BASELINE_MODE", "HEADLINE_TYPE", "KERNEL_TARGETS", "ONNXRUNTIME_MODE", "TARGETS", "Target", "decode_rate",
    "divide", "evaluate_targets", "figures", "is_met", "lookup", "training_ratio",
]
