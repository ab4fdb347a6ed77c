r"""Schlag et al. 2021 §4.1: associative retrieval — memory capacity (setting 1) and update rules (setting 2).

    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting1.yaml
    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting2.yaml
    python scripts/synthetic_retrieval.py --config configs/synthetic/retrieval_setting1.yaml \
        --quick true --output_dir /tmp/q

Writes results.json, loss_vs_keys.png and table.md to --output_dir. The experiment:
fwp_hf/experiments/synthetic_retrieval.py; results next to the paper's in docs/synthetic_retrieval.md.
"""

from fwp_hf.experiments.synthetic_retrieval import main

if __name__ == "__main__":
    main()
