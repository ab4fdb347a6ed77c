"""The installed counterparts of `scripts/` (``[project.scripts]`` in pyproject.toml): ``fwp-train-lm`` runs what
``python scripts/train_lm.py`` runs, for an install from a wheel or the package index, which has no scripts/
folder. Each `main` returns its results for library callers; a console command exits 0 on success instead of
printing them again as its exit status. Like scripts/, nothing in the library imports this module. (``fwp-serve``
is `fwp_hf.serve.main` itself.)"""

from __future__ import annotations

import importlib
from functools import partial


def _run(module: str, function: str = "main") -> None:
    """Import `module` (only when its command runs: the others' imports stay unloaded) and call its `function`."""
    getattr(importlib.import_module(module), function)()


# One command each: ``fwp-<name with dashes>`` in pyproject.toml calls ``<name>()``.
train_lm = partial(_run, "fwp_hf.training.lm")
train_tokenizer = partial(_run, "fwp_hf.training.tokenization")
compare_lm = partial(_run, "fwp_hf.training.lm_comparison")
linearize = partial(_run, "fwp_hf.training.linearize")
prepare_data = partial(_run, "fwp_hf.training.lm_text_data", "prepare_data_main")  # both corpora, by --corpus
prepare_teacher = partial(_run, "fwp_hf.conversion.teachers")
evaluate_linearization = partial(_run, "fwp_hf.experiments.linearization_eval")
train_translation = partial(_run, "fwp_hf.training.translation")
convert_fla_checkpoint = partial(_run, "fwp_hf.conversion.fla")
export_onnx = partial(_run, "fwp_hf.conversion.onnx_export")
benchmark = partial(_run, "fwp_hf.experiments.benchmark")
