"""Train several `configs/lm` variants with one budget and one tokenizer; tabulate and plot them.

Used by `scripts/compare_lm.py`. Each variant is a `scripts/train_lm.py` config file; every run gets
the same extra flags and the same tokenizer (trained once on the training split), so the runs differ
only in their token mixer (and the intermediate size that equalises the parameter counts).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..token_mixers import ATTENTION_TYPES
from .lm import parse_lm_arguments, raw_datasets_from_arguments, run_lm_training
from .tokenization import save_tokenizer, train_sentencepiece_tokenizer


def validation_curve(output_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, validation perplexity) of every evaluation in a run's `trainer_state.json`."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [(entry["step"], math.exp(entry["eval_loss"])) for entry in state["log_history"] if "eval_loss" in entry]


def train_shared_tokenizer(config_file: str, output_dir: str, extra_args: list[str]) -> str:
    """Train the tokenizer that every variant uses, from the data and vocabulary of `config_file`."""
    model_args, data_args, _ = parse_lm_arguments([config_file, *extra_args, "--output_dir", output_dir])
    raw = raw_datasets_from_arguments(data_args)
    tokenizer = train_sentencepiece_tokenizer(
        raw["train"][data_args.text_column], model_args.tokenizer_vocab_size, model_args.tokenizer_model_type
    )
    save_tokenizer(tokenizer, output_dir)
    return output_dir


def compare_variants(config_files: list[str], output_dir: str, extra_args: list[str]) -> list[dict]:
    """Train every config (outputs under `output_dir/<config name>`) and return one result row each."""
    if not config_files:
        raise ValueError("no config files to compare")
    for config_file in config_files:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file!r} does not exist")
    tokenizer_dir = train_shared_tokenizer(config_files[0], os.path.join(output_dir, "tokenizer"), extra_args)
    rows = []
    for config_file in config_files:
        name = Path(config_file).stem
        run_dir = os.path.join(output_dir, name)
        args = [config_file, *extra_args, "--output_dir", run_dir, "--tokenizer_name", tokenizer_dir]
        start = time.perf_counter()
        metrics = run_lm_training(*parse_lm_arguments(args))
        model_args = parse_lm_arguments(args)[0]
        rows.append(
            {
                "variant": name,
                "attention_type": model_args.attention_type,
                "parameters": int(metrics["num_parameters"]),
                "steps": json.loads((Path(run_dir) / "trainer_state.json").read_text())["global_step"],
                "seconds": round(time.perf_counter() - start, 1),
                "validation_perplexity": metrics.get("eval_perplexity"),
                "test_perplexity": metrics.get("test_perplexity"),
                "stream_independent_perplexity": metrics.get("eval_independent_segments_perplexity"),
                "stream_carried_perplexity": metrics.get("eval_carried_state_perplexity"),
                "curve": validation_curve(run_dir),
            }
        )
    return rows


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_comparison(rows: list[dict], results_dir: str, title: str, notes: str = "") -> list[str]:
    """Write `lm_comparison.json`, `lm_comparison.png` (perplexity vs steps) and `lm_comparison.md`."""
    import matplotlib  # noqa: PLC0415 - optional dependency of the examples

    matplotlib.use("Agg")
    import matplotlib.ticker  # noqa: PLC0415
    import matplotlib.pyplot as plt  # noqa: PLC0415

    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    json_path, png_path, md_path = (results / f"lm_comparison.{ext}" for ext in ("json", "png", "md"))
    json_path.write_text(json.dumps(rows, indent=2) + "\n")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        steps, perplexities = zip(*row["curve"]) if row["curve"] else ((), ())
        axis.plot(steps, perplexities, marker="o", label=row["variant"])
    axis.set_xlabel("training step")
    axis.set_ylabel("validation perplexity")
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)

    lines = [
        f"# {title}",
        "",
        "| variant | parameters | validation ppl (blocks) | test ppl (blocks) | stream, independent segments | "
        "stream, state carried | training + evaluation time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r["validation_perplexity"] or float("inf")):
        lines.append(
            f"| {row['variant']} | {row['parameters']:,} | {_format(row['validation_perplexity'])} | "
            f"{_format(row['test_perplexity'])} | {_format(row['stream_independent_perplexity'])} | "
            f"{_format(row['stream_carried_perplexity'])} | {row['seconds']:.0f} |"
        )
    lines += ["", f"![validation perplexity vs steps]({png_path.name})", "", f"Curves and numbers: `{json_path.name}`."]
    if notes:
        lines += ["", notes.strip()]
    md_path.write_text("\n".join(lines) + "\n")
    return [str(json_path), str(png_path), str(md_path)]


@dataclass
class ComparisonArguments:
    """The flags of `scripts/compare_lm.py`; any other flag goes to every training run."""

    configs: list[str] = field(
        default_factory=lambda: [f"configs/lm/{name}.yaml" for name in ATTENTION_TYPES],
        metadata={"help": "train_lm configs to compare (default: configs/lm/<type>.yaml, every registered type)."},
    )
    output_dir: str = field(default="outputs/compare_lm", metadata={"help": "Where the runs are written."})
    results_dir: str = field(default="docs", metadata={"help": "Where the table, plot and JSON are written."})
    title: str = field(default="FWP language models on Penn Treebank, equal parameters and budget (CPU)")
    notes_file: str | None = field(default=None, metadata={"help": "Markdown appended under the table."})


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Entry point of `scripts/compare_lm.py`: train every config, write the table, plot and JSON."""
    args, run_flags = HfArgumentParser(ComparisonArguments).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    rows = compare_variants(args.configs, args.output_dir, run_flags)
    notes = Path(args.notes_file).read_text(encoding="utf-8") if args.notes_file else ""
    for path in write_comparison(rows, args.results_dir, args.title, notes):
        print(f"wrote {path}")
    return rows


__all__ = ["ComparisonArguments", "compare_variants", "validation_curve", "write_comparison", "main"]
