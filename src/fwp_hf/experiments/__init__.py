"""Paper reproductions and measurements built on fwp_hf's kernels and models (never imported by them).

`synthetic` (task generators and small models of the two papers' synthetic experiments),
`synthetic_retrieval` (Schlag et al. 2021 §4.1 sweeps), `associative_retrieval` (Ba et al. 2016),
`benchmark` (CPU speed and memory against GPT-2). Each experiment module has a `main(argv)` that its
`scripts/` entry point calls.
"""
