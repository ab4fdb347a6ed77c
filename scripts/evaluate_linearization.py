"""Evaluate a teacher or a linearized student side by side with the others, into one results JSON;
render that JSON as the markdown tables of docs/linearization_smollm2.md.

    python scripts/evaluate_linearization.py --results_json docs/linearization_smollm2.json \
        --model_name_or_path teachers/smollm2-135m-instruct-q4_1 --name teacher \
        --heldout_file data/sotu_mobydick/sotu_validation.jsonl --long_file data/sotu_mobydick/moby_dick.jsonl
    python scripts/evaluate_linearization.py --results_json docs/linearization_smollm2.json \
        --render_markdown docs/linearization_smollm2_tables.md

Held-out perplexity at fixed contexts, perplexity by position over one long stream (carried state, or
sliding re-encoding for models with softmax layers), passkey retrieval, greedy chat answers, and the
cost of each. See fwp_hf/experiments/linearization_eval.py.
"""

from fwp_hf.experiments.linearization_eval import main

if __name__ == "__main__":
    main()
