"""The training wing of fwp_hf: everything behind `scripts/` that the model never imports.

- language modelling: `lm` (arguments and the Trainer run of `train_lm.py`), `lm_data`,
  `lm_evaluation` (segment/stream perplexity, perplexity by position), `carried_state` (training with the
  state carried across segments), `lm_comparison` (`compare_lm.py`), `model_card`, `hub`;
- translation: `translation` (arguments and the Seq2SeqTrainer run of `train_translation.py`),
  `translation_data` (the Bible-verse data builder of `prepare_data.py`);
- shared: `common` (the model arguments, config, tokenizer, logging and resume steps both pipelines
  use), `data_files` (the data-file check), `tokenization` (sentencepiece → HF tokenizer,
  `train_tokenizer.py`), `cli` (config file + flags parsing of the scripts).

The model files (`configuration_fwp.py`, `modeling_fwp*.py`, the kernels and the registry) stay flat
at the top of the package and never import from here: a pushed checkpoint ships only those siblings.
Importing this package imports nothing heavy; import the module you need.
"""
