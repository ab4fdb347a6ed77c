"""Timing of `generate`: prefill seconds, decoding tokens/s and resident memory, for any causal LM.

Used by the benchmark (`fwp_hf.experiments.benchmark`) and, run as a script, to time the decoding of
an earlier checkout of fwp_hf side by side with the current one (``--baseline_src`` of the
benchmark puts that checkout's ``src`` first on the child's ``PYTHONPATH``). This module therefore
imports nothing from fwp_hf at module level:

    PYTHONPATH=/path/to/old/src python decode_timing.py '{"config": {...}, "prompt_length": 4096, "new_tokens": 64}'
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

GIB = 1024**3


def current_rss_bytes() -> int:
    """This process's resident memory now (``VmRSS``; 0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def generation_cache(output):
    """The cache a `generate` output holds, read under the running transformers' name for it."""
    try:
        from fwp_hf.compat_fwp import output_cache
    except ImportError:  # a baseline checkout from before the cache's rename, which ran on transformers ≤ 5.23
        return output.past_key_values
    return output_cache(output)


def cache_bytes(cache) -> int:
    """Bytes of the tensors a generation cache holds: fast-weight states and convolution windows, or keys and values."""
    total = 0
    for layer in getattr(cache, "layers", []):
        held = list(layer.tensors()) if hasattr(layer, "tensors") else []
        held += [getattr(layer, "keys", None), getattr(layer, "values", None)]
        total += sum(tensor.numel() * tensor.element_size() for tensor in held if torch.is_tensor(tensor))
    return total


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the OS (glibc's ``malloc_trim``; nothing elsewhere), so that
    resident memory read afterwards is what live objects hold, not what a freed prefill left cached."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StepClock(LogitsProcessor):
    """A no-op logits processor that records when `generate` reaches each new token (after the prefill for
    the first one, after one decoding step for each later one) and the resident memory then. At the first
    token it first releases the memory the prefill freed (`release_free_memory`), so that the decoding
    steps' memory is measured apart from the prefill's."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.rss: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.times:
            release_free_memory()
        self.times.append(time.perf_counter())
        self.rss.append(current_rss_bytes())
        return scores


@torch.no_grad()
def timed_generate(model, prompt: torch.Tensor, new_tokens: int, **generate_kwargs) -> dict:
    """Greedy `generate` of exactly `new_tokens` (≥ 2) tokens after `prompt` ``[B, P]``.

    Returns ``prefill_s`` (the call's start to the first token's logits), ``decode_tokens_per_s``
    (B · (new_tokens − 1) tokens over the decoding steps after the first token), ``decode_rss_gib``
    (the highest resident memory seen while decoding, after the prefill's freed memory went back to the OS)
    and ``cache_bytes`` (the cache at the end).
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 (one prefill token, then decoding steps), got {new_tokens}")
    clock = StepClock()
    start = time.perf_counter()
    output = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]),
        return_dict_in_generate=True, **generate_kwargs,
    )
    decode_s = clock.times[-1] - clock.times[0]
    return {
        "prefill_s": clock.times[0] - start,
        "decode_tokens_per_s": prompt.shape[0] * (new_tokens - 1) / decode_s,
        "decode_rss_gib": max(clock.rss) / GIB,
        "cache_bytes": cache_bytes(generation_cache(output)),
    }


def main(argv: list[str] | None = None) -> dict:
    """Time greedy decoding of ``FWPForCausalLM(FWPConfig(**config))`` with whichever fwp_hf is importable;
    prints the best of ``repeats`` runs as JSON."""
    from fwp_hf import FWPConfig, FWPForCausalLM  # the fwp_hf on the path: possibly an earlier checkout's

    spec = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = FWPForCausalLM(FWPConfig(**spec["config"])).eval()
    prompt = torch.randint(0, spec["config"]["vocab_size"], (1, spec["prompt_length"]))
    runs = [timed_generate(model, prompt, spec["new_tokens"]) for _ in range(spec.get("repeats", 1))]
    best = max(runs, key=lambda run: run["decode_tokens_per_s"])
    print(json.dumps(best))
    return best


if __name__ == "__main__":
    main()
