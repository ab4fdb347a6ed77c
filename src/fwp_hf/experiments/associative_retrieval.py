"""Ba et al. 2016: associative retrieval "c9k8j3f1??c" -> "9" with fast weights and an LSTM baseline.

    python scripts/associative_retrieval.py --config configs/synthetic/associative_retrieval.yaml
    python scripts/associative_retrieval.py --quick true --output_dir /tmp/q

A fixed data set (``train_sequences`` training, ``validation_sequences`` validation and
``test_sequences`` test sequences, generated from ``seed``) is shared by every model. For each hidden
size R and each model (``fast_weights``: an RNN with Ba et al.'s fast-weight memory, λ, η, S inner
steps and layer norm, see :class:`fwp_hf.experiments.synthetic.FastWeightsRNN`; ``lstm``: ``nn.LSTM`` with R
units), Adam trains on shuffled minibatches for ``max_steps`` steps; the parameters with the lowest
validation error are evaluated on the test set.

Writes ``results.json`` (every run with its curves), ``table.md`` (test error next to the paper's
Table 1) and ``curves.png`` to ``output_dir``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .synthetic import (
    BaRetrievalDataset,
    FastWeightsRNN,
    LSTMClassifier,
    ba_decode,
    check_counts,
    finish_experiment,
    make_ba_retrieval_dataset,
    new_figure,
    save_figure,
    start_experiment,
)

MODELS = ("fast_weights", "lstm")
# Ba et al. 2016, Table 1: test error (%) on associative retrieval.
PAPER_TABLE1 = {
    ("fast_weights", 20): 1.81,
    ("lstm", 20): 60.81,
    ("fast_weights", 50): 0.0,
    ("lstm", 50): 1.85,
}


@dataclass
class AssociativeRetrievalArguments:
    """Arguments of the Ba et al. associative retrieval experiment."""

    models: list[str] = field(default_factory=lambda: list(MODELS), metadata={"help": "fast_weights | lstm"})
    hidden_sizes: list[int] = field(default_factory=lambda: [20, 50, 100], metadata={"help": "R, hidden units"})
    num_pairs: int = field(default=4, metadata={"help": "key-value pairs per sequence (4: 'c9k8j3f1??c')"})
    train_sequences: int = 100_000
    validation_sequences: int = 10_000
    test_sequences: int = 20_000
    batch_size: int = 128
    learning_rate: float = 1e-3
    max_grad_norm: float = 5.0
    max_steps: int = 3000
    eval_every: int = 250
    decay: float = field(default=0.95, metadata={"help": "fast-weight decay λ"})
    fast_learning_rate: float = field(default=0.5, metadata={"help": "fast-weight learning rate η"})
    inner_steps: int = field(default=1, metadata={"help": "inner-loop steps S"})
    output_hidden_size: int = 100
    seed: int = 0
    output_dir: str = "docs/associative_retrieval"
    quick: bool = field(default=False, metadata={"help": "tiny run that checks the pipeline end to end in seconds"})
    show_progress: bool = True


# The ``--quick`` run: R = 20 only, a small data set, 80 steps.
QUICK_OVERRIDES = {"hidden_sizes": (20,), "train_sequences": 4000, "validation_sequences": 500,
                   "test_sequences": 500, "batch_size": 64, "learning_rate": 3e-3, "max_steps": 80, "eval_every": 40}


def quick_arguments(args: AssociativeRetrievalArguments) -> AssociativeRetrievalArguments:
    """`args` with `QUICK_OVERRIDES` applied (``hidden_sizes`` as a fresh list, as the argument parser gives)."""
    overrides = {**QUICK_OVERRIDES, "hidden_sizes": list(QUICK_OVERRIDES["hidden_sizes"])}
    return dataclasses.replace(args, **overrides)


def check_arguments(args: AssociativeRetrievalArguments) -> None:
    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; allowed: {MODELS}")
    if not args.hidden_sizes or min(args.hidden_sizes) < 1:
        raise ValueError(f"hidden_sizes must be a non-empty list of positive ints, got {args.hidden_sizes}")
    check_counts(
        args, ("train_sequences", "validation_sequences", "test_sequences", "batch_size", "max_steps", "eval_every")
    )


def build_model(args: AssociativeRetrievalArguments, model_name: str, hidden_size: int) -> nn.Module:
    if model_name == "fast_weights":
        return FastWeightsRNN(
            hidden_size,
            output_hidden_size=args.output_hidden_size,
            decay=args.decay,
            fast_learning_rate=args.fast_learning_rate,
            inner_steps=args.inner_steps,
        )
    return LSTMClassifier(hidden_size, output_hidden_size=args.output_hidden_size)


@torch.no_grad()
def error_and_loss(model: nn.Module, data: BaRetrievalDataset, batch_size: int = 2000) -> tuple[float, float]:
    """Classification error (%) and mean cross-entropy of ``model`` on ``data``."""
    model.eval()
    wrong, total_loss = 0, 0.0
    for start in range(0, len(data), batch_size):
        inputs, targets = data.inputs[start : start + batch_size], data.targets[start : start + batch_size]
        logits = model(inputs)
        wrong += (logits.argmax(dim=-1) != targets).sum().item()
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
    model.train()
    return 100.0 * wrong / len(data), total_loss / len(data)


def train_one(
    args: AssociativeRetrievalArguments,
    model_name: str,
    hidden_size: int,
    splits: dict[str, BaRetrievalDataset],
    progress: tqdm,
) -> dict:
    """Train one model; returns its record with the test error of the best-validation parameters."""
    torch.manual_seed(args.seed)
    model = build_model(args, model_name, hidden_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    order_generator = torch.Generator().manual_seed(args.seed + 1)
    train = splits["train"]
    permutation, cursor = torch.randperm(len(train), generator=order_generator), 0
    valid_error, valid_loss = error_and_loss(model, splits["validation"])
    curve = [{"step": 0, "train_loss": None, "validation_error": valid_error, "validation_loss": valid_loss}]
    best_error, best_state, best_step = valid_error, copy.deepcopy(model.state_dict()), 0
    running_loss, running_count = 0.0, 0
    start = time.perf_counter()
    for step in range(1, args.max_steps + 1):
        if cursor + args.batch_size > len(train):
            permutation, cursor = torch.randperm(len(train), generator=order_generator), 0
        index = permutation[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        loss = F.cross_entropy(model(train.inputs[index]), train.targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        running_loss, running_count = running_loss + loss.item(), running_count + 1
        progress.update(1)
        progress.set_postfix(model=model_name, R=hidden_size, loss=f"{loss.item():.3f}", refresh=False)
        if step % args.eval_every == 0 or step == args.max_steps:
            valid_error, valid_loss = error_and_loss(model, splits["validation"])
            curve.append(
                {
                    "step": step,
                    "train_loss": running_loss / running_count,
                    "validation_error": valid_error,
                    "validation_loss": valid_loss,
                }
            )
            running_loss, running_count = 0.0, 0
            if valid_error < best_error:
                best_error, best_state, best_step = valid_error, copy.deepcopy(model.state_dict()), step
    train_seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    test_error, test_loss = error_and_loss(model, splits["test"])
    return {
        "model": model_name,
        "hidden_size": hidden_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": args.max_steps,
        "best_step": best_step,
        "best_validation_error": best_error,
        "test_error": test_error,
        "test_loss": test_loss,
        "paper_test_error": PAPER_TABLE1.get((model_name, hidden_size)),
        "train_seconds": round(train_seconds, 1),
        "curve": curve,
    }


def markdown_table(runs: list[dict]) -> str:
    """Test error (%) per model and R, ours beside the paper's Table 1."""
    lines = [
        "| R | model | parameters | test error (ours) | test error (paper, Table 1) | best step | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in sorted(runs, key=lambda r: (r["hidden_size"], r["model"])):
        paper = "-" if run["paper_test_error"] is None else f"{run['paper_test_error']:.2f}%"
        lines.append(
            f"| {run['hidden_size']} | {run['model']} | {run['parameters']:,} | {run['test_error']:.2f}% | {paper} "
            f"| {run['best_step']} | {run['train_seconds']:.0f}s |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    """Validation error vs training step, one line per (model, R)."""
    fig, ax = new_figure()
    for run in runs:
        steps = [point["step"] for point in run["curve"]]
        errors = [point["validation_error"] for point in run["curve"]]
        style = "-" if run["model"] == "fast_weights" else "--"
        ax.plot(steps, errors, style, marker=".", label=f"{run['model']} R={run['hidden_size']}")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation error (%)")
    ax.set_title("Associative retrieval (Ba et al. 2016)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    save_figure(fig, ax, path)


def main(argv: list[str] | None = None) -> dict:
    """Generate the data, train every (model, R), write and return the results."""
    args, output_dir = start_experiment(AssociativeRetrievalArguments, argv, quick_arguments, check_arguments)

    splits = {
        "train": make_ba_retrieval_dataset(args.train_sequences, args.num_pairs, seed=args.seed),
        "validation": make_ba_retrieval_dataset(args.validation_sequences, args.num_pairs, seed=args.seed + 10_000),
        "test": make_ba_retrieval_dataset(args.test_sequences, args.num_pairs, seed=args.seed + 20_000),
    }
    example = splits["train"]
    print(f"example: {ba_decode(example.inputs[0])} -> {example.targets[0].item()}")

    runs = []
    start = time.perf_counter()
    total = len(args.hidden_sizes) * len(args.models) * args.max_steps
    with tqdm(total=total, desc="associative retrieval", disable=not args.show_progress) as progress:
        for hidden_size in args.hidden_sizes:
            for model_name in args.models:
                run = train_one(args, model_name, hidden_size, splits, progress)
                runs.append(run)
                tqdm.write(
                    f"{model_name:>12} R={hidden_size:3d}: test error {run['test_error']:.2f}% "
                    f"(best validation {run['best_validation_error']:.2f}% at step {run['best_step']}, "
                    f"{run['train_seconds']:.0f}s)"
                )

    return finish_experiment(
        args, output_dir, start, markdown_table(runs), "curves.png", lambda path: plot(runs, path),
        example=f"{ba_decode(example.inputs[0])} -> {example.targets[0].item()}", runs=runs,
    )

