"""The training wing of fwp_hf: everything behind `scripts/` that the model never imports.

- language modelling: `lm` (arguments and the Trainer run of `train_lm.py`), `lm_data`,
  `lm_evaluation` (segment/stream perplexity, perplexity by position), `lm_modes` (the training modes:
  blocks, packed documents, carried state), `packing` and `carried_state` (their Trainers and data
  layouts), `lm_comparison` (`compare_lm.py`); the card and the Hub push come from `fwp_hf.shared`
  (which `conversion` uses too);
- translation: `translation` (arguments and the Seq2SeqTrainer run of `train_translation.py`),
  `translation_data` (the Bible-verse data builder of `prepare_data.py`);
- shared by both pipelines: `common` (the model arguments, config, tokenizer, logging and resume steps both pipelines
  use), `data_files` (the data-file check), `tokenization` (sentencepiece → HF tokenizer,
  `train_tokenizer.py`); the config file + flags parsing of the scripts is `fwp_hf.shared.cli`.

The model files (`configuration_fwp.py`, `modeling_fwp*.py`, the kernels and the registry) stay flat
at the top of the package and never import from here: a pushed checkpoint ships only those siblings.
Importing this package imports nothing heavy; import the module you need.
"""

from importlib.util import find_spec as _find_spec

# The `train` extra (pyproject.toml); the models themselves need only torch and transformers.
_TRAIN_EXTRA_MODULES = {"datasets": "datasets", "accelerate": "accelerate", "evaluate": "evaluate",
                        "sentencepiece": "sentencepiece"}


def _missing_train_packages() -> list[str]:
    missing = []
    for module, package in _TRAIN_EXTRA_MODULES.items():
        try:
            found = _find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(package)
    return missing


if _missing_train_packages():
    raise ImportError(
        f"fwp_hf.training (the scripts, Trainer runs, data and evaluation) needs the 'train' extra; missing: "
        f"{', '.join(_missing_train_packages())}. Install it with: pip install 'fwp-hf[train]'"
    )
