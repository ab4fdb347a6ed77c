"""Plant named single bugs in the kernels, cache, carried-state, packing, importer and linearization code and
report which ones the related tests catch (a temporary copy of src/ per bug; the working tree is never changed).

    python scripts/mutation_check.py   # all mutants (~20 min on 2 busy CPU cores), docs/mutation_report.md
    python scripts/mutation_check.py --only conv-window-unmasked favor-key-shift-sign --report /tmp/report.md
    python scripts/mutation_check.py --list_mutants true  # the mutants and their tests; checks that each still applies

The mutants and the report: fwp_hf/experiments/mutation_check.py.
"""

from fwp_hf.experiments.mutation_check import main

if __name__ == "__main__":
    main()
