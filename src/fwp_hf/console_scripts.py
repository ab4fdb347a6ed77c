"""The installed counterparts of `scripts/` (``[project.scripts]`` in pyproject.toml): ``fwp-train-lm`` runs what
``python scripts/train_lm.py`` runs, for an install from a wheel or the package index, which has no scripts/
folder. Each `main` returns its results for library callers; a console command exits 0 on success instead of
printing them again as its exit status. Like scripts/, nothing in the library imports this module. (``fwp-serve``
is `fwp_hf.serve.main` itself.)"""

from __future__ import annotations

import importlib


def _run(module: str, function: str = "main") -> None:
    getattr(importlib.import_module(module), function)()


def train_lm() -> None:
    _run("fwp_hf.training.lm")


def train_tokenizer() -> None:
    _run("fwp_hf.training.tokenization")


def compare_lm() -> None:
    _run("fwp_hf.training.lm_comparison")


def linearize() -> None:
    _run("fwp_hf.training.linearize")


def prepare_data() -> None:
    _run("fwp_hf.training.lm_text_data", "prepare_data_main")  # both corpora, chosen by --corpus


def prepare_teacher() -> None:
    _run("fwp_hf.conversion.teachers")


def evaluate_linearization() -> None:
    _run("fwp_hf.experiments.linearization_eval")


def train_translation() -> None:
    _run("fwp_hf.training.translation")


def convert_fla_checkpoint() -> None:
    _run("fwp_hf.conversion.fla")


def export_onnx() -> None:
    _run("fwp_hf.conversion.onnx_export")


def benchmark() -> None:
    _run("fwp_hf.experiments.benchmark")
