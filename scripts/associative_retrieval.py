"""Ba et al. 2016: associative retrieval "c9k8j3f1??c" -> "9" with fast weights and an LSTM baseline.

    python scripts/associative_retrieval.py --config configs/synthetic/associative_retrieval.yaml
    python scripts/associative_retrieval.py --quick true --output_dir /tmp/q

Writes results.json, table.md and curves.png to --output_dir. The experiment:
fwp_hf/experiments/associative_retrieval.py; results next to the paper's in docs/associative_retrieval.md.
"""

from fwp_hf.experiments.associative_retrieval import main

if __name__ == "__main__":
    main()
