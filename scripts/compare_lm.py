"""Train every configs/lm attention-type variant with the same budget; write a table, a plot and the curves.

    python scripts/compare_lm.py                                  # the six variants, budgets from their configs
    python scripts/compare_lm.py --max_steps 50 --results_dir /tmp/cmp \
        --configs configs/lm/delta.yaml configs/lm/dpfp.yaml

Flags that are not the ones below go to every training run (any scripts/train_lm.py flag). Results:
<results_dir>/lm_comparison.md (table), lm_comparison.png (validation perplexity vs steps) and
lm_comparison.json (numbers and curves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from fwp_hf.training.lm_comparison import compare_variants, write_comparison

VARIANTS = ("softmax", "linear", "performer", "dpfp", "delta", "fast_weights")


@dataclass
class ComparisonArguments:
    configs: list[str] = field(
        default_factory=lambda: [f"configs/lm/{name}.yaml" for name in VARIANTS],
        metadata={"help": "train_lm config files to compare."},
    )
    output_dir: str = field(default="outputs/compare_lm", metadata={"help": "Where the runs are written."})
    results_dir: str = field(default="docs", metadata={"help": "Where the table, plot and JSON are written."})
    title: str = field(default="FWP language models on Penn Treebank, equal parameters and budget (CPU)")
    notes_file: str | None = field(default=None, metadata={"help": "Markdown appended under the table."})


def main() -> None:
    args, run_flags = HfArgumentParser(ComparisonArguments).parse_args_into_dataclasses(return_remaining_strings=True)
    rows = compare_variants(args.configs, args.output_dir, run_flags)
    notes = open(args.notes_file, encoding="utf-8").read() if args.notes_file else ""
    for path in write_comparison(rows, args.results_dir, args.title, notes):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
