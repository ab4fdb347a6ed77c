"""The training wing of fwp_hf: everything behind `scripts/` that the model never imports.

Language modelling (`lm`, `lm_data`, `lm_evaluation`, `lm_comparison`), translation (`translation`,
`translation_data`), tokenizers (`tokenization`), model cards (`model_card`), Hub pushes (`hub`) and the config-file +
flags parsing of the scripts (`cli`).

The model files (`configuration_fwp.py`, `modeling_fwp*.py`, the kernels and the registry) stay flat
at the top of the package and never import from here: a pushed checkpoint ships only those siblings.
Importing this package imports nothing heavy; import the module you need.
"""
