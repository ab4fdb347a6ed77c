r"""Schlag et al. 2021 §4.1: associative retrieval — memory capacity (setting 1) and update rules (setting 2).

    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting1.yaml
    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting2.yaml
    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting1.yaml \
        --quick true --output_dir /tmp/q

For every method (``softmax``, ``linear``, ``dpfp<ν>``, ``favor<m>``, optionally prefixed ``sum_`` /
``delta_``) and every number of keys S, a fresh :class:`fwp_hf.experiments.synthetic.RetrievalModel` is trained
with Adam on fresh random sequences until the evaluation loss 0.5‖y − ŷ‖² (all keys of
``eval_sequences`` held-out sequences queried) is ≤ ``stop_loss``, stops improving for ``patience``
evaluations, or ``max_steps`` is reached. Sizes are run in increasing order; after
``skip_after_failures`` consecutive sizes whose best loss stays above ``failure_loss`` the larger
sizes of that method are skipped (they are recorded as skipped, not as results).

Writes ``results.json`` (every run with its loss curve), ``loss_vs_keys.png`` and ``table.md`` to
``output_dir``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .synthetic import (
    RetrievalModel,
    check_counts,
    finish_experiment,
    make_retrieval_batch,
    new_figure,
    parse_retrieval_method,
    retrieval_loss,
    save_figure,
    start_experiment,
)

# Largest S with ≈ 0 loss in the paper (official logs, d_key = 64); None: never reaches ≈ 0.
PAPER_CAPACITY_SETTING1 = {
    "softmax": "≈ 480",
    "linear": "≈ 40–60",
    "dpfp1": "≈ 100–120",
    "dpfp2": "≈ 240–260",
    "dpfp3": "≈ 340–360",
    "favor64": "never ≈ 0",
    "favor128": "never ≈ 0",
    "favor512": "never ≈ 0",
}
PAPER_SETTING2 = {
    "sum_linear": "fails early",
    "sum_dpfp1": "fails early",
    "sum_dpfp2": "fails early",
    "delta_linear": "low loss (delta rule)",
    "delta_dpfp1": "low loss (delta rule)",
    "delta_dpfp2": "≈ 0.001 up to S = 200",
}


@dataclass
class RetrievalExperimentArguments:
    """Arguments of the retrieval experiments (defaults: a small setting-1 sweep)."""

    setting: int = field(default=1, metadata={"help": "1: capacity (unique keys, length S); 2: updates (length 2S)"})
    methods: list[str] = field(
        default_factory=lambda: ["linear", "dpfp1"],
        metadata={"help": "softmax | [sum_|delta_](linear|dpfp<nu>|favor<m>)"},
    )
    sizes: list[int] = field(default_factory=lambda: [20, 40], metadata={"help": "numbers of keys S"})
    key_dim: int = field(default=64, metadata={"help": "d_key, the size of keys/queries before φ"})
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_steps: int = 1000
    eval_every: int = 50
    eval_sequences: int = 8
    final_eval_sequences: int = 32
    stop_loss: float = field(default=1e-3, metadata={"help": "stop training once the eval loss is at most this"})
    patience: int = field(default=6, metadata={"help": "stop after this many evaluations without improvement"})
    failure_loss: float = field(default=0.05, metadata={"help": "a run whose best eval loss stays above this failed"})
    solved_loss: float = field(default=0.01, metadata={"help": "a run whose final loss is at most this is ≈ 0 loss"})
    skip_after_failures: int = field(
        default=2, metadata={"help": "skip larger S after this many failures in a row (0: never)"}
    )
    seed: int = 0
    output_dir: str = "docs/synthetic_retrieval/setting1"
    quick: bool = field(default=False, metadata={"help": "tiny sweep that checks the pipeline end to end in seconds"})
    show_progress: bool = True


QUICK_OVERRIDES = {
    1: {"methods": ["linear", "dpfp1"], "sizes": [8, 12]},
    2: {"methods": ["sum_linear", "delta_linear"], "sizes": [8]},
}


def quick_arguments(args: RetrievalExperimentArguments) -> RetrievalExperimentArguments:
    """The ``--quick`` sweep: 2 small sizes, 60 steps, small batches."""
    return dataclasses.replace(
        args,
        **QUICK_OVERRIDES[args.setting],
        batch_size=16,
        max_steps=60,
        eval_every=20,
        eval_sequences=4,
        final_eval_sequences=8,
        learning_rate=1e-2,
        patience=100,
        skip_after_failures=0,
    )


def check_arguments(args: RetrievalExperimentArguments) -> None:
    if args.setting not in (1, 2):
        raise ValueError(f"setting must be 1 or 2, got {args.setting}")
    for method in args.methods:
        parse_retrieval_method(method)
    if not args.sizes or min(args.sizes) < 2:
        raise ValueError(f"sizes must be a non-empty list of numbers of keys >= 2, got {args.sizes}")
    check_counts(args, ("batch_size", "max_steps", "eval_every", "eval_sequences", "final_eval_sequences"))


@torch.no_grad()
def evaluate(
    model: RetrievalModel, num_keys: int, setting: int, num_sequences: int, generator: torch.Generator
) -> float:
    """Mean 0.5‖y − ŷ‖² over every key of ``num_sequences`` fresh sequences."""
    model.eval()
    batch = make_retrieval_batch(num_keys, num_sequences, setting == 2, generator)
    loss = retrieval_loss(model(batch.key_ids, batch.value_ids, batch.query_ids), batch).item()
    model.train()
    return loss


def train_one(args: RetrievalExperimentArguments, method: str, num_keys: int, progress: tqdm) -> dict:
    """Train one model on S = ``num_keys`` keys; returns its record (losses, steps, time)."""
    torch.manual_seed(args.seed)
    model = RetrievalModel(num_keys, key_dim=args.key_dim, **parse_retrieval_method(method))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    train_generator = torch.Generator().manual_seed(args.seed * 1_000_003 + num_keys)
    eval_generator = torch.Generator().manual_seed(args.seed * 1_000_003 + num_keys + 500_000)
    curve = [(0, evaluate(model, num_keys, args.setting, args.eval_sequences, eval_generator))]
    best, since_best, stopped_by, step = curve[0][1], 0, "max_steps", 0
    start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        batch = make_retrieval_batch(num_keys, args.batch_size, args.setting == 2, train_generator)
        loss = retrieval_loss(model(batch.key_ids, batch.value_ids, batch.query_ids), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(method=method, S=num_keys, step=step, loss=f"{loss.item():.4f}", refresh=False)
        if step % args.eval_every == 0 or step == args.max_steps:
            eval_loss = evaluate(model, num_keys, args.setting, args.eval_sequences, eval_generator)
            curve.append((step, eval_loss))
            if eval_loss < best:
                best, since_best = eval_loss, 0
            else:
                since_best += 1
            if eval_loss <= args.stop_loss:
                stopped_by = "stop_loss"
                break
            if since_best >= args.patience:
                stopped_by = "patience"
                break
    train_seconds = time.perf_counter() - start
    final_generator = torch.Generator().manual_seed(10**9 + num_keys)
    final_loss = evaluate(model, num_keys, args.setting, args.final_eval_sequences, final_generator)
    return {
        "method": method,
        "num_keys": num_keys,
        "sequence_length": num_keys * (2 if args.setting == 2 else 1),
        "d_dot": model.feature_dim,
        "steps": step,
        "stopped_by": stopped_by,
        "initial_eval_loss": curve[0][1],
        "best_eval_loss": min(loss for _, loss in curve),
        "final_loss": final_loss,
        "train_seconds": round(train_seconds, 1),
        "curve": curve,
    }


def largest_solved(runs: list[dict], method: str, solved_loss: float) -> int | None:
    """Largest S of ``method`` whose final loss is ≤ ``solved_loss`` with every smaller S solved too."""
    largest = None
    for run in sorted((r for r in runs if r["method"] == method), key=lambda r: r["num_keys"]):
        if run["final_loss"] > solved_loss:
            break
        largest = run["num_keys"]
    return largest


def markdown_table(args: RetrievalExperimentArguments, runs: list[dict], skipped: dict[str, list[int]]) -> str:
    """One row per method: d_dot, final loss at each S, our largest solved S and the paper's."""
    header = ["method", "d_dot"] + [f"S={s}" for s in args.sizes]
    header += [f"largest S with loss ≤ {args.solved_loss:g} (ours)", "paper"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paper = PAPER_CAPACITY_SETTING1 if args.setting == 1 else PAPER_SETTING2
    for method in args.methods:
        by_size = {r["num_keys"]: r for r in runs if r["method"] == method}
        d_dot = next(iter(by_size.values()))["d_dot"] if by_size else "-"
        cells = []
        for size in args.sizes:
            if size in by_size:
                cells.append(f"{by_size[size]['final_loss']:.4f}")
            else:
                cells.append("skipped" if size in skipped.get(method, []) else "-")
        solved = largest_solved(runs, method, args.solved_loss)
        row = [method, str(d_dot)] + cells + [str(solved) if solved else "none", paper.get(method, "-")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(args: RetrievalExperimentArguments, runs: list[dict], path: Path) -> None:
    """Final loss vs S, one line per method (log y axis)."""
    fig, ax = new_figure()
    for method in args.methods:
        points = sorted((r["num_keys"], r["final_loss"]) for r in runs if r["method"] == method)
        if points:
            ax.plot(*zip(*points), marker="o", label=method)
    ax.axhline(args.solved_loss, color="grey", linestyle=":", linewidth=1, label=f"loss = {args.solved_loss:g}")
    ax.set_yscale("log")
    ax.set_xlabel("number of unique keys S")
    ax.set_ylabel("final loss 0.5‖y − ŷ‖²")
    title = (
        "setting 1: capacity (sequence length S)" if args.setting == 1 else "setting 2: updates (sequence length 2S)"
    )
    ax.set_title(f"Associative retrieval, d_key = {args.key_dim} — {title}")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, ax, path)


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep; returns the results dictionary that is also written to ``results.json``."""
    args, output_dir = start_experiment(RetrievalExperimentArguments, argv, quick_arguments, check_arguments)

    runs: list[dict] = []
    skipped: dict[str, list[int]] = {}
    sizes = sorted(args.sizes)
    start = time.perf_counter()
    progress = tqdm(
        total=len(args.methods) * len(sizes), desc=f"setting {args.setting}", disable=not args.show_progress
    )
    for method in args.methods:
        failures_in_a_row = 0
        for size in sizes:
            if args.skip_after_failures and failures_in_a_row >= args.skip_after_failures:
                skipped.setdefault(method, []).append(size)
            else:
                run = train_one(args, method, size, progress)
                runs.append(run)
                failures_in_a_row = failures_in_a_row + 1 if run["best_eval_loss"] > args.failure_loss else 0
                tqdm.write(
                    f"{method:>14} S={size:4d}: final loss {run['final_loss']:.5f} after {run['steps']} steps "
                    f"({run['stopped_by']}, {run['train_seconds']:.0f}s)"
                )
            progress.update(1)
    progress.close()

    return finish_experiment(
        args, output_dir, start, markdown_table(args, runs, skipped), "loss_vs_keys.png",
        lambda path: plot(args, runs, path),
        runs=runs, skipped=skipped, largest_solved={m: largest_solved(runs, m, args.solved_loss) for m in args.methods},
    )

