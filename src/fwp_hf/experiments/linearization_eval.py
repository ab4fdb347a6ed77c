"""Evaluate a linearized student against its teacher: the measurements of docs/linearization_smollm2.md.

For one model (a teacher or a student at some stage), `evaluate_model` measures

- **held-out perplexity** at fixed contexts (e.g. 512 and 2048 tokens): the held-out documents (each
  ended by the document separator) concatenated into one stream and cut into non-overlapping windows of
  `context` tokens, every window read from an empty state (`lm_evaluation.segment_perplexity`);
- **perplexity by position** over one long stream (Moby-Dick, ≥ 64k tokens), bucketed by position:
  a model whose every layer keeps a fixed-size state reads the stream in segments *carrying its
  state* (`lm_evaluation.perplexity_by_position`, unlimited context); any other model (the softmax
  teacher, a hybrid student) by *sliding re-encoding* (`sliding_window_token_losses`): the stream is
  scored `stride` targets at a time, each chunk re-encoded with the up to ``window − stride`` tokens
  before it, so every target sees between ``window − stride`` and `window` tokens of context and no
  position exceeds `window` (≤ the model's `max_position_embeddings`);
- **passkey retrieval** (Mohtashami & Jaggi 2023's format): a 5-digit number hidden at a random depth
  of filler text of a given length, asked for at the end, answered greedily; `trials` seeded prompts
  per length, the same for every model; lengths beyond what a model can read (its
  `max_position_embeddings`, for models with softmax layers) are reported as not run;
- **chat answers**: the same prompts through the tokenizer's chat template, greedy, side by side;
- the wall time and peak resident memory of each measurement (`measure`).

`main` (behind `scripts/evaluate_linearization.py`) evaluates one model and merges its entry into a
results JSON (so models can be evaluated in separate processes); ``--render_markdown`` turns such a
JSON into the markdown tables (`render_markdown`); ``--merge_json`` joins the JSONs of processes run
in parallel and ``--update_model_cards`` writes each student's tables into its folder's card.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..training.costs import measure

PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                 "I will quiz you about the important information there.")
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = " What is the pass key? The pass key is"
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the ocean.",
    "What is 12 plus 7?",
    "Who wrote the novel Moby-Dick?",
)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

def read_texts(path: str | os.PathLike, text_column: str = "text") -> list[str]:
    """The texts of a JSON-lines file (`text_column` of every record) or of a .txt file (one text per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() in (".json", ".jsonl"):
        return [json.loads(line)[text_column] for line in lines if line.strip()]
    return [line for line in lines if line.strip()]


def document_stream(texts: Sequence[str], tokenizer, document_separator: str | None = None) -> list[int]:
    """Token ids of the texts, each ended by the document separator (`lm_data.document_separator_id`), concatenated."""
    from datasets import Dataset, DatasetDict

    from ..training.lm_data import token_stream, tokenize_texts

    tokenized = tokenize_texts(DatasetDict({"train": Dataset.from_dict({"text": list(texts)})}), tokenizer,
                               document_separator=document_separator)
    return token_stream(tokenized["train"])


# ----------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------

def model_max_context(model) -> int | None:
    """How many positions the model can read in one pass: None (unlimited) when every layer keeps a
    fixed-size state, else its `max_position_embeddings`."""
    from ..training.lm_evaluation import supports_carried_state

    if supports_carried_state(model):
        return None
    return getattr(model.config, "max_position_embeddings", None)


def heldout_perplexity(model, token_ids: Sequence[int], context: int, max_tokens: int | None = None) -> dict:
    """Perplexity on `token_ids` read in non-overlapping windows of `context` tokens, each from an empty
    state (`segment_perplexity` with one stream). Returns ``{"loss", "perplexity", "tokens", "context"}``."""
    from ..training.lm_evaluation import segment_perplexity

    limit = model_max_context(model)
    if limit is not None and context > limit:
        raise ValueError(f"context {context} exceeds the model's {limit} positions")
    return {**segment_perplexity(model, token_ids, context, carry_state=False, num_streams=1, max_tokens=max_tokens),
            "context": context}


@torch.no_grad()
def sliding_window_token_losses(model, token_ids: Sequence[int] | torch.Tensor, window: int, stride: int,
                                max_tokens: int | None = None) -> torch.Tensor:
    """Next-token losses ``[1, T − 1]`` of one stream by sliding re-encoding (module docstring): targets
    are scored `stride` at a time; each chunk of targets is encoded with up to ``window − stride``
    tokens before it, in a fresh forward with positions from 0 (entry ``[0, t]``: the loss of position
    ``t + 1``, the layout of `lm_evaluation.stream_token_losses`)."""
    if not 0 < stride <= window - 1:
        raise ValueError(f"need 0 < stride < window, got stride {stride} and window {window}")
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    length = ids.numel()
    if length < 2:
        raise ValueError(f"{length} tokens are too few to score")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses = torch.empty(length - 1)
    try:
        for first in range(1, length, stride):  # targets first … last − 1
            last = min(first + stride, length)
            begin = max(0, last - 1 - window)
            inputs = ids[begin : last - 1].unsqueeze(0).to(device)
            logits = model(input_ids=inputs, use_cache=False).logits[0, first - 1 - begin :]
            losses[first - 1 : last - 1] = F.cross_entropy(logits.float(), ids[first:last].to(device),
                                                           reduction="none").cpu()
    finally:
        model.train(was_training)
    return losses.unsqueeze(0)


def long_context_curve(model, token_ids: Sequence[int], bucket_size: int, segment_length: int, window: int,
                       stride: int, max_tokens: int | None = None) -> dict:
    """Perplexity by position over one stream: carried state where the model can carry it, else sliding
    re-encoding with ``window = min(window, max_position_embeddings)`` (module docstring). Adds
    ``"method"`` (a sentence saying which) to `lm_evaluation.losses_by_position`'s fields."""
    from ..training.lm_evaluation import losses_by_position, perplexity_by_position

    limit = model_max_context(model)
    if limit is None:
        curve = perplexity_by_position(model, token_ids, segment_length, carry_state=True, bucket_size=bucket_size,
                                       max_tokens=max_tokens)
        return {**curve, "method": f"state carried across segments of {segment_length} tokens"}
    window = min(window, limit)
    losses = sliding_window_token_losses(model, token_ids, window, stride, max_tokens)
    return {**losses_by_position(losses, bucket_size), "window": window, "stride": stride,
            "method": f"sliding re-encoding: window {window}, stride {stride} (every target sees "
                      f"{window - stride}–{window} tokens)"}


# ----------------------------------------------------------------------------------------------
# Passkey retrieval
# ----------------------------------------------------------------------------------------------

def passkey_trial(length: int, trial: int, seed: int = 0) -> tuple[int, float]:
    """(the 5-digit passkey, its depth in [0, 1]) of trial `trial` at `length`: the same for every model."""
    rng = random.Random(f"{seed}:{length}:{trial}")
    return rng.randint(10000, 99999), rng.random()


def passkey_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    """Token ids of a passkey prompt of at most `length` tokens: intro, filler with the needle after a
    `depth` share of the filler units, question. Pieces are tokenised apart and joined (every piece
    starts with a space), so the length is exact to a filler unit."""
    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    intro, filler = encode(PASSKEY_INTRO), encode(PASSKEY_FILLER)
    needle, question = encode(PASSKEY_NEEDLE.format(key=key)), encode(PASSKEY_QUESTION)
    units = (length - len(intro) - len(needle) - len(question)) // len(filler)
    if units < 1:
        raise ValueError(f"length {length} is too short for a passkey prompt (needs > "
                         f"{len(intro) + len(needle) + len(question) + len(filler)} tokens)")
    before = round(depth * units)
    return intro + filler * before + needle + filler * (units - before) + question


def passkey_answer_is_correct(answer: str, key: int) -> bool:
    """True when the answer's first number is the passkey."""
    digits = "".join(ch if ch.isdigit() else " " for ch in answer).split()
    return bool(digits) and digits[0] == str(key)


@torch.no_grad()
def passkey_retrieval(model, tokenizer, lengths: Sequence[int], trials: int = 20, seed: int = 0,
                      max_new_tokens: int = 8) -> dict[str, dict]:
    """Per length: ``{"trials", "correct", "accuracy", "prompt_tokens", "answers"}`` (greedy answers);
    ``{"skipped": reason}`` for a length beyond the model's positions (`model_max_context`). A length counts
    every position the model reads: the prompt (at most ``length − max_new_tokens`` tokens) and the answer, so
    a model of 8192 positions is asked at 8192."""
    limit = model_max_context(model)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: dict[str, dict] = {}
    for length in lengths:
        if limit is not None and length > limit:
            results[str(length)] = {"skipped": f"beyond the model's {limit} positions"}
            continue
        correct, answers, sizes = 0, [], []
        for trial in range(trials):
            key, depth = passkey_trial(length, trial, seed)
            ids = torch.tensor([passkey_prompt(tokenizer, length - max_new_tokens, key, depth)], device=device)
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad)
            answer = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)
            correct += passkey_answer_is_correct(answer, key)
            answers.append(answer)
            sizes.append(ids.shape[1])
        results[str(length)] = {"trials": trials, "correct": correct, "accuracy": correct / trials,
                                "prompt_tokens": max(sizes), "answers": answers}
    return results


# ----------------------------------------------------------------------------------------------
# Chat
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def chat_answers(model, tokenizer, prompts: Sequence[str] = CHAT_PROMPTS, max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to each prompt given as one user turn of the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_dict=True, return_tensors="pt")["input_ids"].to(device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


# ----------------------------------------------------------------------------------------------
# One model, all measurements
# ----------------------------------------------------------------------------------------------

def evaluate_model(model, tokenizer, heldout_texts: Sequence[str], long_text: str | None, *,
                   contexts: Sequence[int] = (512, 2048), heldout_max_tokens: int | None = None,
                   long_max_tokens: int = 65536, bucket_size: int = 4096, segment_length: int = 2048,
                   window: int = 8192, stride: int = 2048, passkey_lengths: Sequence[int] = (1024, 2048, 4096, 8192,
                                                                                            16384),
                   passkey_trials: int = 20, seed: int = 0, prompts: Sequence[str] = CHAT_PROMPTS,
                   max_new_tokens: int = 48, document_separator: str | None = None) -> dict[str, Any]:
    """Every measurement of the module docstring for one model; each with its ``"cost"`` (`measure`).
    Parts with nothing to run (no contexts, no `long_text`, no passkey lengths, no prompts) are left out."""
    model.eval()
    result: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                              "architecture": type(model).__name__, "max_context": model_max_context(model)}
    if contexts:
        heldout = document_stream(heldout_texts, tokenizer, document_separator)
        result["heldout_tokens"] = (len(heldout) if heldout_max_tokens is None
                                    else min(len(heldout), heldout_max_tokens))
        result["heldout_perplexity"] = {}
    for context in contexts:
        with measure() as cost:
            value = heldout_perplexity(model, heldout, context, heldout_max_tokens)
        result["heldout_perplexity"][str(context)] = {**value, "cost": cost}
    if long_text is not None:
        stream = document_stream([long_text], tokenizer, document_separator)
        with measure() as cost:
            curve = long_context_curve(model, stream, bucket_size, segment_length, window, stride, long_max_tokens)
        result["long_context"] = {**curve, "cost": cost}
    if passkey_lengths:
        with measure() as cost:
            result["passkey"] = passkey_retrieval(model, tokenizer, passkey_lengths, passkey_trials, seed)
        result["passkey_cost"] = cost
    if prompts:
        with measure() as cost:
            result["chat"] = {"prompts": list(prompts), "answers": chat_answers(model, tokenizer, prompts,
                                                                               max_new_tokens)}
        result["chat"]["cost"] = cost
    return result


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: dict[str, Any], teacher: str = "teacher", heading_level: int = 3) -> str:
    """The markdown tables of a results JSON (``{"models": {name: evaluate_model result, ...}}``, plus
    optional ``"training"``: {name: linearization_results.json}): held-out perplexity and retention
    (teacher perplexity / model perplexity), perplexity by position, passkey retrieval, chat answers,
    training cost per stage and evaluation cost, each under a heading of `heading_level` (3: ``###``; a page
    or card that embeds the tables in a section of its own passes the level below that section's)."""
    if not 1 <= heading_level <= 6:
        raise ValueError(f"heading_level is a markdown heading level, 1 … 6, got {heading_level}")
    heading = "#" * heading_level
    models: dict[str, dict] = results["models"]
    names = list(models)
    lines: list[str] = []
    contexts = sorted({int(c) for m in models.values() for c in m.get("heldout_perplexity", {})})
    reference = models.get(teacher, {}).get("heldout_perplexity", {})
    lines += [heading + " Held-out perplexity (SOTU validation addresses)", "",
              "| model | " + " | ".join(f"ppl @ {c}" for c in contexts) + " | "
              + " | ".join(f"retention @ {c}" for c in contexts) + " |",
              "|---|" + "---|" * (2 * len(contexts))]
    for name in names:
        values = models[name].get("heldout_perplexity", {})
        ppl = [values.get(str(c), {}).get("perplexity") for c in contexts]
        retention = [(reference[str(c)]["perplexity"] / p) if (p and str(c) in reference) else None
                     for c, p in zip(contexts, ppl)]
        lines.append(f"| {name} | " + " | ".join("—" if p is None else f"{p:.2f}" for p in ppl) + " | "
                     + " | ".join("—" if r is None else f"{r:.1%}" for r in retention) + " |")
    tokens = {m.get("heldout_tokens") for m in models.values()} - {None}
    lines += ["", f"Tokens scored per context: {', '.join(map(str, sorted(tokens)))} (non-overlapping windows, "
                  "each from an empty state). Retention = teacher perplexity / model perplexity.", ""]

    curves = {name: m["long_context"] for name, m in models.items() if "long_context" in m}
    if curves:
        starts = sorted({s for c in curves.values() for s in c["bucket_start"]})
        lines += [heading + " Perplexity by position (Moby-Dick as one stream)", "",
                  "| positions | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
        for start in starts:
            row = []
            for curve in curves.values():
                index = curve["bucket_start"].index(start) if start in curve["bucket_start"] else None
                row.append("—" if index is None else f"{curve['bucket_perplexity'][index]:.2f}")
            size = next(iter(curves.values()))["bucket_size"]
            lines.append(f"| {max(start, 1)}–{start + size - 1} | " + " | ".join(row) + " |")
        lines += [""] + [f"- {name}: {curve['method']}; overall {curve['perplexity']:.2f} over "
                         f"{int(curve['tokens'])} tokens." for name, curve in curves.items()] + [""]

    passkeys = {name: m["passkey"] for name, m in models.items() if "passkey" in m}
    if passkeys:
        lengths = sorted({int(length) for p in passkeys.values() for length in p}, key=int)
        lines += [heading + " Passkey retrieval (greedy; correct / trials)", "",
                  "| model | " + " | ".join(f"{length:,} tokens" for length in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for name, table in passkeys.items():
            cells = []
            for length in lengths:
                entry = table.get(str(length))
                cells.append("—" if entry is None else f"n/a ({entry['skipped']})" if "skipped" in entry
                             else f"{entry['correct']}/{entry['trials']}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")

    chats = {name: m["chat"] for name, m in models.items() if "chat" in m}
    if chats:
        lines += [heading + " Chat answers (greedy, the tokenizer's chat template)", ""]
        prompts = next(iter(chats.values()))["prompts"]
        for index, prompt in enumerate(prompts):
            lines += [f"**{_cell(prompt)}**", "", "| model | answer |", "|---|---|"]
            lines += [f"| {name} | {_cell(chat['answers'][index]) or '(empty)'} |" for name, chat in chats.items()
                      if index < len(chat["answers"])]
            lines.append("")

    training = results.get("training", {})
    if training:
        lines += [heading + " Training cost per stage", "", "| student | stage | steps | tokens | wall time (s) | "
                  "peak memory (MB) |", "|---|---|---|---|---|---|"]
        for name, run in training.items():
            for stage, cost in run.get("stages", {}).items():
                lines.append(f"| {name} | {stage} | {cost.get('steps', '—')} | {cost.get('tokens', '—'):,} | "
                             f"{cost['seconds']:.0f} | {cost['peak_memory_mb']:.0f} |")
        lines.append("")
    lines += [heading + " Evaluation cost", "", "| model | measurement | wall time (s) | peak memory (MB) |",
              "|---|---|---|---|"]
    for name, m in models.items():
        lines += [f"| {name} | {what}" + (f" (on {cost['device']})" if "device" in cost else "")
                  + f" | {cost['seconds']:.0f} | {cost['peak_memory_mb']:.0f} |" for what, cost in _costs(m).items()]
    if any("device" in cost for m in models.values() for cost in _costs(m).values()):
        lines += ["", "Peak memory is the process's resident memory on the host, also for a measurement run on an "
                      "accelerator."]
    return "\n".join(lines) + "\n"


def _costs(entry: dict[str, Any]) -> dict[str, dict]:
    """The cost record of each measurement in a model's entry, by measurement name (the same dicts, not copies)."""
    costs = {f"perplexity @ {c}": v["cost"] for c, v in entry.get("heldout_perplexity", {}).items()}
    if "long_context" in entry:
        costs["perplexity by position"] = entry["long_context"]["cost"]
    if "passkey_cost" in entry:
        costs["passkey"] = entry["passkey_cost"]
    if "chat" in entry:
        costs["chat"] = entry["chat"]["cost"]
    return costs


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def merge_results(results: dict[str, Any], other: dict[str, Any], source: str = "another JSON",
                  replace: Sequence[str] = ()) -> None:
    """Add `other`'s model and training entries to `results` (in place), so that models evaluated by separate
    processes, each into its own JSON, end up side by side. A model present in both is merged measurement by
    measurement (e.g. passkeys measured later, on another machine, join the entry of the same model); passkeys
    of one model measured in several processes, some lengths each, join length by length and their costs add
    up. A measurement present in both with different content is an error, since one of the two would be lost,
    unless its key is in `replace` (then `other`'s wins: a re-measurement, e.g. with more trials)."""
    for name, entry in other.get("models", {}).items():
        target = results.setdefault("models", {}).setdefault(name, {})
        entry = dict(entry)
        if "passkey" not in replace and "passkey" in target and "passkey" in entry:
            _join_passkey_lengths(target, entry, name, source)
        for key, value in entry.items():
            if key in target and target[key] != value and key not in replace:
                raise ValueError(f"models entry {name!r} of {source} differs from the one already in the results in "
                                 f"{key!r}; rename one of them (--name), drop it, or re-measure it on purpose "
                                 f"(--replace_measurements {key})")
            target[key] = value
    training = results.setdefault("training", {})
    for name, entry in other.get("training", {}).items():
        if name in training and training[name] != entry:
            raise ValueError(f"training entry {name!r} of {source} differs from the one already in the results; "
                             "rename one of them (--name) or drop it before merging")
        training[name] = entry


def _join_passkey_lengths(target: dict[str, Any], entry: dict[str, Any], name: str, source: str) -> None:
    """Move `entry`'s passkey lengths (and their cost) into `target`'s passkeys where they are new; a length
    measured in both must agree. Leaves in `entry` nothing that the caller's merge would see as a conflict."""
    ours, theirs = target["passkey"], entry.pop("passkey")
    cost = entry.pop("passkey_cost", None)
    clashing = [length for length in theirs if length in ours and ours[length] != theirs[length]]
    if clashing:
        raise ValueError(f"models entry {name!r} of {source} differs from the one already in the results in "
                         f"'passkey' at lengths {clashing}; re-measure on purpose with --replace_measurements passkey "
                         "passkey_cost")
    new = {length: result for length, result in theirs.items() if length not in ours}
    if not new:
        return
    target["passkey"] = dict(sorted({**ours, **new}.items(), key=lambda item: int(item[0])))
    if cost is not None:
        earlier = target.get("passkey_cost")
        target["passkey_cost"] = cost if earlier is None else {
            **earlier, "seconds": earlier["seconds"] + cost["seconds"],
            "peak_memory_mb": max(earlier["peak_memory_mb"], cost["peak_memory_mb"])}


CARD_SECTION_START = "<!-- fwp_hf evaluation: start -->"
CARD_SECTION_END = "<!-- fwp_hf evaluation: end -->"


def update_model_card(folder: str | os.PathLike, results: dict[str, Any], name: str, teacher: str = "teacher") -> bool:
    """Write the evaluation tables of `name` beside its teacher (`render_markdown` of those two entries and
    `name`'s training cost) into ``folder/README.md`` between `CARD_SECTION_START` / `CARD_SECTION_END`,
    replacing an earlier such section, so the card carries the same numbers as the report. Returns False
    (and writes nothing) where the folder has no README.md card."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return False
    names = [n for n in (teacher, name) if n in results["models"]]
    subset = {"models": {n: results["models"][n] for n in names},
              "training": {n: v for n, v in results.get("training", {}).items() if n == name}}
    section = (f"{CARD_SECTION_START}\n## Evaluation (`scripts/evaluate_linearization.py`)\n\n"
               + render_markdown(subset, teacher, heading_level=4)  # one level below the card's "##" section
               + f"{CARD_SECTION_END}\n")
    text = card.read_text(encoding="utf-8")
    if CARD_SECTION_START in text and CARD_SECTION_END in text:
        head, rest = text.split(CARD_SECTION_START, 1)
        text = head + section + rest.split(CARD_SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text, encoding="utf-8")
    return True


def _load(model_name_or_path: str, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import fwp_hf  # noqa: F401, PLC0415 - registers the fwp model type

    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=torch.float32).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_name_or_path)


def _device_name(device: str) -> str:
    """`device` as a report names it: "cpu", or the accelerator's model (e.g. "cuda: NVIDIA H200")."""
    device = torch.device(device)
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False,
                                     description="Evaluate a teacher or linearized student (held-out perplexity, "
                                     "perplexity by position, passkey retrieval, chat answers) into a results JSON, "
                                     "or render such a JSON as markdown.")
    parser.add_argument("--results_json", required=True, help="JSON that collects every model's entry (merged).")
    parser.add_argument("--model_name_or_path", default=None, help="Folder of the model to evaluate.")
    parser.add_argument("--name", default=None, help="Its row name, e.g. 'teacher' or 'hedgehog, after fine-tuning'.")
    parser.add_argument("--heldout_file", default=None, help="Held-out documents (.jsonl with 'text', or .txt).")
    parser.add_argument("--long_file", default=None, help="The long stream (.jsonl/.txt; its texts are joined).")
    parser.add_argument("--contexts", type=int, nargs="*", default=[512, 2048],
                        help="Held-out perplexity contexts; none skips the held-out perplexity.")
    parser.add_argument("--device", default="cpu",
                        help="Where the model runs (e.g. cuda); a cost measured elsewhere than the CPU names it.")
    parser.add_argument("--heldout_max_tokens", type=int, default=None)
    parser.add_argument("--long_max_tokens", type=int, default=65536)
    parser.add_argument("--bucket_size", type=int, default=4096)
    parser.add_argument("--segment_length", type=int, default=2048, help="Segments of a carried-state stream.")
    parser.add_argument("--window", type=int, default=8192,
                        help="Sliding re-encoding window (models that cannot carry).")
    parser.add_argument("--stride", type=int, default=2048, help="Sliding re-encoding stride.")
    parser.add_argument("--passkey_lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--passkey_trials", type=int, default=20)
    parser.add_argument("--max_new_tokens", type=int, default=48, help="Of the chat answers.")
    parser.add_argument("--no_chat", action="store_true", help="Skip the chat answers.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--training_results", default=None,
                        help="linearization_results.json of this student: its per-stage training cost goes "
                             "to the JSON.")
    parser.add_argument("--merge_json", nargs="+", default=[],
                        help="Results JSONs of other processes whose entries are merged into --results_json "
                             "(measurement by measurement).")
    parser.add_argument("--replace_measurements", nargs="+", default=[],
                        help="Measurement keys (e.g. passkey passkey_cost) that --merge_json may overwrite.")
    parser.add_argument("--render_markdown", default=None, help="Write the JSON's tables to this markdown file.")
    parser.add_argument("--update_model_cards", action="store_true",
                        help="Write each evaluated model's tables (beside the teacher's) into the README.md card of "
                             "its folder, where it has one (the final students; stage folders have none).")
    parser.add_argument("--teacher_name", default="teacher", help="Row that retention is relative to.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of `scripts/evaluate_linearization.py`."""
    args = parse_arguments(argv)
    path = Path(args.results_json)
    results = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    for other in args.merge_json:
        merge_results(results, json.loads(Path(other).read_text()), other, args.replace_measurements)
    if args.merge_json and args.model_name_or_path is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    if args.model_name_or_path is not None:
        if not args.name or not args.heldout_file:
            raise SystemExit("evaluate_linearization: error: --name and --heldout_file are required with "
                             "--model_name_or_path")
        model, tokenizer = _load(args.model_name_or_path, args.device)
        long_text = None if args.long_file is None else "\n".join(read_texts(args.long_file))
        entry = evaluate_model(
            model, tokenizer, read_texts(args.heldout_file), long_text, contexts=args.contexts,
            heldout_max_tokens=args.heldout_max_tokens, long_max_tokens=args.long_max_tokens,
            bucket_size=args.bucket_size, segment_length=args.segment_length, window=args.window, stride=args.stride,
            passkey_lengths=args.passkey_lengths, passkey_trials=args.passkey_trials, seed=args.seed,
            prompts=() if args.no_chat else CHAT_PROMPTS, max_new_tokens=args.max_new_tokens)
        entry["model"] = args.model_name_or_path
        if torch.device(args.device).type != "cpu":
            for cost in _costs(entry).values():
                cost["device"] = _device_name(args.device)
        results["models"][args.name] = entry
        if args.training_results is not None:
            results.setdefault("training", {})[args.name] = json.loads(Path(args.training_results).read_text())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{args.name}: " + ", ".join(f"ppl@{c} {v['perplexity']:.2f}"
                                            for c, v in entry.get("heldout_perplexity", {}).items()))
    if args.render_markdown is not None:
        Path(args.render_markdown).write_text(render_markdown(results, args.teacher_name))
    if args.update_model_cards:
        for name, entry in results["models"].items():
            if name == args.teacher_name:
                continue
            if not os.path.isdir(entry["model"]):  # paths are as given when evaluated (often relative)
                print(f"{name}: {entry['model']} is not a folder from here; its card is not updated")
            elif update_model_card(entry["model"], results, name, args.teacher_name):
                print(f"{name}: evaluation written into {os.path.join(entry['model'], 'README.md')}")
    return results


__all__ = [
    "CHAT_PROMPTS", "chat_answers", "document_stream", "evaluate_model", "heldout_perplexity", "long_context_curve",
    "main", "measure", "merge_results", "model_max_context", "passkey_answer_is_correct", "passkey_prompt",
    "passkey_retrieval", "passkey_trial", "read_texts", "render_markdown", "sliding_window_token_losses",
    "update_model_card",
]
