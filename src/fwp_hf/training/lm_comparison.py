"""Train several `configs/lm` variants with one budget and one tokenizer, over seeds; tabulate and plot them.

Used by `scripts/compare_lm.py`. Each variant is a `scripts/train_lm.py` config file; every run gets
the same extra flags and the same tokenizer (trained once on the training split), so the runs differ
only in their token mixer (and the intermediate size that equalises the parameter counts). Every
variant is trained once per seed; the table gives the mean ± the sample standard deviation over seeds.
Variants named in ``carried_state_configs`` are also trained with ``--carry_state true`` (the same
model, data, budget and segment length, the state carried across segments: truncated BPTT), and a
second table and plot compare the two trainings on the validation stream; with ``in_order_control`` they
are also trained on the carried-state streams in the same order but without the state
(``--reset_state_every_segment true``), which separates the data order from the carried state.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from ..token_mixers import ATTENTION_TYPES
from .lm import PERPLEXITY_BY_POSITION_FILE, parse_lm_arguments, raw_datasets_from_arguments, run_lm_training
from .tokenization import save_tokenizer, train_sentencepiece_tokenizer

RUN_RESULT_FILE = "comparison_run.json"
TRAININGS = {  # training name -> train_lm flags
    "blocks": [],
    "in_order": ["--carry_state", "true", "--reset_state_every_segment", "true"],  # data-order control
    "carried": ["--carry_state", "true"],
}
TRAINING_LABELS = {"blocks": "blocks (shuffled)", "in_order": "streams in order, no state", "carried": "state carried"}
METRICS = ("validation_perplexity", "test_perplexity", "stream_independent_perplexity", "stream_carried_perplexity")


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


def run_variant(config_file: str, training: str, seed: int, run_dir: str, tokenizer_dir: str,
                extra_args: list[str]) -> dict:
    """Train one (config, training, seed) into `run_dir`; its result row is also written to
    run_dir/comparison_run.json."""
    args = [config_file, *extra_args, *TRAININGS[training], "--seed", str(seed), "--output_dir", run_dir,
            "--tokenizer_name", tokenizer_dir]
    start = time.perf_counter()
    metrics = run_lm_training(*parse_lm_arguments(args))
    model_args = parse_lm_arguments(args)[0]
    positions_file = Path(run_dir) / f"{PERPLEXITY_BY_POSITION_FILE}.json"
    row = {
        "variant": Path(config_file).stem,
        "attention_type": model_args.attention_type,
        "training": training,
        "seed": seed,
        "parameters": int(metrics["num_parameters"]),
        "steps": json.loads((Path(run_dir) / "trainer_state.json").read_text())["global_step"],
        "seconds": round(time.perf_counter() - start, 1),
        "validation_perplexity": metrics.get("eval_perplexity"),
        "test_perplexity": metrics.get("test_perplexity"),
        "stream_independent_perplexity": metrics.get("eval_independent_segments_perplexity"),
        "stream_carried_perplexity": metrics.get("eval_carried_state_perplexity"),
        "curve": validation_curve(run_dir),
        "perplexity_by_position": json.loads(positions_file.read_text()) if positions_file.is_file() else None,
    }
    (Path(run_dir) / RUN_RESULT_FILE).write_text(json.dumps(row, indent=1) + "\n")
    return row


def compare_variants(
    config_files: list[str],
    output_dir: str,
    extra_args: list[str],
    seeds: Sequence[int] = (0,),
    carried_state_configs: Sequence[str] = (),
    reuse_finished_runs: bool = False,
    in_order_control: bool = False,
) -> list[dict]:
    """Train every config once per seed (and the `carried_state_configs` also with ``--carry_state true``
    and, with `in_order_control`, with the streams in order but no state) into
    ``output_dir/<config name>[_carried|_in_order]/seed<k>``; return one result row per run.

    With `reuse_finished_runs` a run whose folder holds a `comparison_run.json` is read, not trained again
    (an interrupted comparison resumes where it stopped)."""
    if not config_files and not carried_state_configs:
        raise ValueError("no config files to compare: give --configs and/or --carried_state_configs")
    if not seeds:
        raise ValueError("no seeds: give at least one --seeds value")
    for config_file in [*config_files, *carried_state_configs]:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file!r} does not exist")
    runs = [(config, "blocks") for config in config_files]
    for config in carried_state_configs:
        runs += [(config, "in_order")] * in_order_control + [(config, "carried")]
    tokenizer_dir = os.path.join(output_dir, "tokenizer")
    if not (reuse_finished_runs and os.path.isfile(os.path.join(tokenizer_dir, "tokenizer_config.json"))):
        train_shared_tokenizer([*config_files, *carried_state_configs][0], tokenizer_dir, extra_args)
    rows = []
    for seed in seeds:  # seed-major: an interrupted comparison already has every variant's first seeds
        for config_file, training in runs:
            suffix = "" if training == "blocks" else f"_{training}"
            run_dir = os.path.join(output_dir, f"{Path(config_file).stem}{suffix}", f"seed{seed}")
            finished = Path(run_dir) / RUN_RESULT_FILE
            if reuse_finished_runs and finished.is_file():
                rows.append(json.loads(finished.read_text()))
            else:
                rows.append(run_variant(config_file, training, seed, run_dir, tokenizer_dir, extra_args))
    return rows


def summarize(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (0 for one value), min and max of the values that are not None."""
    present = [value for value in values if value is not None]
    if not present:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(present), "sd": statistics.stdev(present) if len(present) > 1 else 0.0,
            "min": min(present), "max": max(present), "n": len(present)}


def group_runs(rows: list[dict]) -> list[dict]:
    """One entry per (variant, training): its runs' seeds, metric summaries, mean validation curve and mean
    perplexity-by-position curves (bucket perplexities averaged over seeds, in log space)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["variant"], row["training"]), []).append(row)
    summaries = []
    for (variant, training), runs in groups.items():
        summary = {"variant": variant, "training": training, "attention_type": runs[0]["attention_type"],
                   "parameters": runs[0]["parameters"], "seeds": [run["seed"] for run in runs],
                   "seconds": statistics.fmean(run["seconds"] for run in runs)}
        summary.update({metric: summarize([run[metric] for run in runs]) for metric in METRICS})
        steps = [step for step, _ in runs[0]["curve"]]
        curves = [dict(run["curve"]) for run in runs]
        summary["curve"] = [(step, _geometric_mean([curve[step] for curve in curves]))
                            for step in steps if all(step in curve for curve in curves)]
        positions = [run.get("perplexity_by_position") for run in runs]
        summary["perplexity_by_position"] = None
        if all(positions):
            summary["perplexity_by_position"] = {
                mode: {**positions[0][mode], "bucket_perplexity": [
                    _geometric_mean(bucket)
                    for bucket in zip(*(curves[mode]["bucket_perplexity"] for curves in positions))
                ]}
                for mode in positions[0]
            }
        summaries.append(summary)
    return summaries


def _geometric_mean(perplexities: Sequence[float]) -> float:
    """Perplexities average in log space (the mean loss)."""
    return math.exp(statistics.fmean(math.log(value) for value in perplexities))


def _format(summary: dict) -> str:
    if summary["mean"] is None:
        return "n/a"
    return f"{summary['mean']:.2f}" if summary["n"] == 1 else f"{summary['mean']:.2f} ± {summary['sd']:.2f}"


def _carried_sets(groups: list[dict]) -> list[dict[str, dict]]:
    """Per variant trained with the carried state and on blocks: its groups by training name."""
    by_key = {(group["variant"], group["training"]): group for group in groups}
    return [{training: by_key[(group["variant"], training)] for training in TRAININGS
             if (group["variant"], training) in by_key}
            for group in groups if group["training"] == "carried" and (group["variant"], "blocks") in by_key]


def _log_axis(axis, matplotlib) -> None:
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    axis.grid(True, which="both", alpha=0.3)


def plot_position_curves(sets: list[dict[str, dict]], path: Path, matplotlib) -> None:
    """One panel per carried-state variant: perplexity by stream position for each of its trainings."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 4), squeeze=False)
    lines = (("blocks", "independent_segments", "block training, independent segments"),
             ("blocks", "carried_state", "block training, state carried"),
             ("in_order", "independent_segments", "in-order control, independent segments"),
             ("carried", "independent_segments", "carried training, independent segments"),
             ("carried", "carried_state", "carried training, state carried"))
    for axis, trainings in zip(axes[0], sets):
        for training, mode, label in lines:
            if training not in trainings:
                continue
            curve = (trainings[training]["perplexity_by_position"] or {}).get(mode)
            if curve is not None:
                centres = [start + curve["bucket_size"] / 2 for start in curve["bucket_start"]]
                axis.plot(centres, curve["bucket_perplexity"], marker="o", markersize=3, label=label,
                          linestyle="-" if mode == "carried_state" else ":")
        axis.set_title(trainings["blocks"]["variant"])
        axis.set_xlabel("token position in the validation stream")
        _log_axis(axis, matplotlib)
    axes[0][0].set_ylabel("perplexity (mean over seeds)")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_comparison(rows: list[dict], results_dir: str, title: str, notes: str = "") -> list[str]:
    """Write `lm_comparison.json` (every run and the per-variant summaries), `lm_comparison.png` (mean
    validation perplexity vs steps), `lm_comparison.md` and, where variants were also trained with the
    state carried, `lm_comparison_positions.png` (perplexity by stream position)."""
    import matplotlib  # noqa: PLC0415 - optional dependency of the examples

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import matplotlib.ticker  # noqa: PLC0415

    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    json_path, png_path, md_path = (results / f"lm_comparison.{ext}" for ext in ("json", "png", "md"))
    groups = group_runs(rows)
    json_path.write_text(json.dumps({"runs": rows, "summaries": groups}, indent=1) + "\n")

    figure, axis = plt.subplots(figsize=(9.5, 4.5))
    variants = list(dict.fromkeys(group["variant"] for group in groups))
    colours = matplotlib.colormaps["tab10" if len(variants) <= 10 else "tab20"]
    styles = {"blocks": "-", "in_order": ":", "carried": "--"}
    for group in groups:  # one colour per variant, one line style per training
        steps, perplexities = zip(*group["curve"]) if group["curve"] else ((), ())
        label = (group["variant"] if group["training"] == "blocks"
                 else f"{group['variant']} ({TRAINING_LABELS[group['training']]})")
        axis.plot(steps, perplexities, marker="o", markersize=4, label=label, linestyle=styles[group["training"]],
                  color=colours(variants.index(group["variant"])))
    axis.set_xlabel("training step")
    axis.set_ylabel("validation perplexity (blocks; mean over seeds)")
    _log_axis(axis, matplotlib)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    written = [str(json_path), str(png_path), str(md_path)]

    seeds = sorted({seed for group in groups for seed in group["seeds"]})
    blocks = sorted((group for group in groups if group["training"] == "blocks"),
                    key=lambda group: group["validation_perplexity"]["mean"] or float("inf"))
    lines = [
        f"# {title}",
        "",
        (f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))} (one run per variant and seed)."
         if len(seeds) > 1 else f"One run per variant (seed {seeds[0]})."),
        "",
        "| variant | parameters | seeds | validation ppl (blocks) | test ppl (blocks) | stream, independent segments | "
        "stream, state carried | time per run (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group in blocks:
        lines.append(
            f"| {group['variant']} | {group['parameters']:,} | {len(group['seeds'])} | "
            f"{_format(group['validation_perplexity'])} | {_format(group['test_perplexity'])} | "
            f"{_format(group['stream_independent_perplexity'])} | {_format(group['stream_carried_perplexity'])} | "
            f"{group['seconds']:.0f} |"
        )
    lines += ["", f"![validation perplexity vs steps]({png_path.name})"]

    sets = _carried_sets(groups)
    if sets:
        positions_path = results / "lm_comparison_positions.png"
        plot_position_curves(sets, positions_path, matplotlib)
        written.append(str(positions_path))
        lines += [
            "",
            "## Training with the state carried across segments",
            "",
            "The same variants trained on shuffled independent blocks, with `--carry_state true` (truncated BPTT: "
            "the streams read in order, the state carried) and, where run, on the same streams in the same order "
            "without the state (`--reset_state_every_segment true`: the data-order control); the stream columns "
            "score the same validation tokens. The last two columns are the carried-state training's carried-state "
            "stream perplexity minus the independent-segments stream perplexity of block training and of the "
            "in-order control, per seed (negative: the unlimited context helps).",
            "",
            "| variant | training | seeds | validation ppl (blocks) | stream, independent segments | "
            "stream, state carried | carried − blocks | carried − in-order control |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for trainings in sets:
            gains = [_format(_paired_difference(rows, trainings["carried"], trainings[baseline]))
                     if baseline in trainings else "n/a" for baseline in ("blocks", "in_order")]
            for training, group in trainings.items():
                gain_text = " | ".join(gains) if training == "carried" else " | "
                lines.append(
                    f"| {group['variant']} | {TRAINING_LABELS[training]} | {len(group['seeds'])} | "
                    f"{_format(group['validation_perplexity'])} | {_format(group['stream_independent_perplexity'])} | "
                    f"{_format(group['stream_carried_perplexity'])} | {gain_text} |"
                )
        lines += ["", f"![perplexity by position in the validation stream]({positions_path.name})"]
    lines += ["", f"Every run, the summaries and the curves: `{json_path.name}`."]
    if notes:
        lines += ["", notes.strip()]
    md_path.write_text("\n".join(lines) + "\n")
    return written


def _runs_of(rows: list[dict], group: dict) -> list[dict]:
    return [row for row in rows if row["variant"] == group["variant"] and row["training"] == group["training"]]


def _paired_difference(rows: list[dict], carried_group: dict, baseline_group: dict) -> dict:
    """Per seed: the carried-state training's carried-state stream perplexity minus the baseline's
    independent-segments stream perplexity; summarised over the seeds both have."""
    baselines = {run["seed"]: run["stream_independent_perplexity"] for run in _runs_of(rows, baseline_group)}
    return summarize([run["stream_carried_perplexity"] - baselines[run["seed"]] for run in _runs_of(rows, carried_group)
                      if run["seed"] in baselines and run["stream_carried_perplexity"] is not None])


@dataclass
class ComparisonArguments:
    """The flags of `scripts/compare_lm.py`; any other flag goes to every training run."""

    configs: list[str] = field(
        default_factory=lambda: [f"configs/lm/{name}.yaml" for name in ATTENTION_TYPES],
        metadata={"help": "train_lm configs to compare (default: configs/lm/<type>.yaml, every registered type)."},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Train every variant once per seed."})
    carried_state_configs: list[str] = field(
        default_factory=list,
        metadata={"help": "Configs also trained with --carry_state true (models whose every layer keeps a state); "
                          "compared with their block training in a second table and a position plot."},
    )
    in_order_control: bool = field(
        default=False,
        metadata={"help": "Also train the carried_state_configs on the same streams in the same order without the "
                          "state (--reset_state_every_segment true): the data-order control."},
    )
    reuse_finished_runs: bool = field(
        default=False,
        metadata={"help": "Read runs whose folder already holds comparison_run.json instead of training them again."},
    )
    output_dir: str = field(default="outputs/compare_lm", metadata={"help": "Where the runs are written."})
    results_dir: str = field(default="docs", metadata={"help": "Where the table, plots and JSON are written."})
    title: str = field(default="FWP language models on Penn Treebank, equal parameters and budget (CPU)")
    notes_file: str | None = field(default=None, metadata={"help": "Markdown appended under the tables."})


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Entry point of `scripts/compare_lm.py`: train every config and seed, write the tables, plots and JSON."""
    args, run_flags = HfArgumentParser(ComparisonArguments, allow_abbrev=False).parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    rows = compare_variants(args.configs, args.output_dir, run_flags, args.seeds, args.carried_state_configs,
                            args.reuse_finished_runs, args.in_order_control)
    notes = Path(args.notes_file).read_text(encoding="utf-8") if args.notes_file else ""
    for path in write_comparison(rows, args.results_dir, args.title, notes):
        print(f"wrote {path}")
    return rows


__all__ = [
    "ComparisonArguments", "compare_variants", "group_runs", "run_variant", "summarize", "validation_curve",
    "write_comparison", "main",
]
