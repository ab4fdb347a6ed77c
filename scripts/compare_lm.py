"""Train every configs/lm attention-type variant with the same budget; write a table, a plot and the curves.

    python scripts/compare_lm.py                                  # every registered type, budgets from their configs
    python scripts/compare_lm.py --max_steps 50 --results_dir /tmp/cmp \
        --configs configs/lm/delta.yaml configs/lm/dpfp.yaml

Flags that are not the comparison's own (--configs, --output_dir, --results_dir, --title, --notes_file)
go to every training run (any scripts/train_lm.py flag). Results: <results_dir>/lm_comparison.md
(table), lm_comparison.png (validation perplexity vs steps) and lm_comparison.json (numbers and
curves). See fwp_hf/training/lm_comparison.py.
"""

from fwp_hf.training.lm_comparison import main

if __name__ == "__main__":
    main()
