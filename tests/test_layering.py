"""The package's layers, read from the import statements of every module under src/fwp_hf (with `ast`, so
imports inside functions count too, and so do ``importlib.import_module("...")`` calls with a literal name):

- the model files (`SEQ2SEQ_MODEL_CODE_FILES`, which holds `MODEL_CODE_FILES`) ship inside every checkpoint
  and are loaded there as loose siblings, so they import only each other, torch, transformers, safetensors
  and the standard library;
- `shared` (Hub push, model cards, config-file + flags parsing) serves both wings, so it imports neither of
  them (nor `experiments`);
- `training` is what stands behind `scripts/`: only `training` itself, `experiments` and the installed entry
  points import it — in particular `conversion` (library code) never does, nor does the package root, so
  ``import fwp_hf`` needs no `train` extra;
- `experiments` (paper reproductions, measurements) sit on top: nothing in the library imports them, except
  `experiments` itself and the installed entry points (`console_scripts`, the counterparts of `scripts/`,
  which are outside the package and may import anything).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwp_hf import SEQ2SEQ_MODEL_CODE_FILES

PACKAGE = "fwp_hf"
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
MODEL_FILE_DEPENDENCIES = frozenset({"torch", "transformers", "safetensors"})
# The installed entry points (each runs one script's `main`): like scripts/, they may import any wing.
ENTRY_POINTS = frozenset({f"{PACKAGE}.console_scripts"})


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    """``fwp_hf.training.lm`` for src/fwp_hf/training/lm.py (``fwp_hf.training`` for its __init__.py)."""
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False,
                     known_modules: frozenset[str] = frozenset()) -> Iterator[str]:
    """The absolute names of the modules `source` (the text of `module`) imports: ``import a.b``; ``from a
    import b`` (``a.b`` where that is one of `known_modules`, else ``a``); relative forms resolved against
    `module`; ``importlib.import_module`` / ``__import__`` calls with a literal name."""
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known_modules else base
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def package_sources(root: Path = PACKAGE_ROOT) -> dict[str, tuple[str, bool]]:
    """Every module of the package: name → (source, is a package's __init__)."""
    return {module_name(path, root): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
            for path in sorted(root.rglob("*.py"))}


KNOWN_MODULES = frozenset(package_sources())


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(sources: dict[str, tuple[str, bool]], model_files: tuple[str, ...]) -> list[str]:
    """Each import that breaks a rule of the module docstring, as ``importer imports imported (rule)``."""
    model_modules = {f"{PACKAGE}.{Path(name).stem}" for name in model_files}
    wings = {wing: f"{PACKAGE}.{wing}" for wing in ("training", "conversion", "experiments", "shared")}
    violations = []
    for module, (source, is_package) in sources.items():
        for imported in dict.fromkeys(imported_modules(source, module, is_package, KNOWN_MODULES)):
            top = imported.split(".")[0]
            if module in model_modules:
                allowed = (imported in model_modules or top in MODEL_FILE_DEPENDENCIES
                           or top in sys.stdlib_module_names)
                if not allowed:
                    violations.append(f"{module} imports {imported} (a model file imports only its siblings, "
                                      "torch, transformers, safetensors and the standard library)")
                continue
            if within(module, wings["shared"]) and any(
                within(imported, wings[wing]) for wing in ("training", "conversion", "experiments")
            ):
                violations.append(f"{module} imports {imported} (shared serves training and conversion)")
            if module in ENTRY_POINTS:
                continue
            if within(imported, wings["training"]) and not any(
                within(module, wings[wing]) for wing in ("training", "experiments")
            ):
                violations.append(f"{module} imports {imported} (only training, experiments and the entry points "
                                  "import training)")
            if within(imported, wings["experiments"]) and not within(module, wings["experiments"]):
                violations.append(f"{module} imports {imported} (nothing in the library imports experiments)")
    return violations


def test_the_package_keeps_its_layers():
    sources = package_sources()
    assert {f"{PACKAGE}.{Path(name).stem}" for name in SEQ2SEQ_MODEL_CODE_FILES} <= set(sources)
    assert layering_violations(sources, SEQ2SEQ_MODEL_CODE_FILES) == []


@pytest.mark.parametrize(
    ("module", "source", "rule"),
    [
        (f"{PACKAGE}.layers_fwp", "from .training.lm import build_lm\n", "a model file imports only"),
        (f"{PACKAGE}.layers_fwp", "def f():\n    import datasets\n", "a model file imports only"),
        (f"{PACKAGE}.modeling_fwp", "from . import serve\n", "a model file imports only"),
        (f"{PACKAGE}.conversion.fla", "from ..training.hub import check_repo_id\n", "only training, experiments"),
        (PACKAGE, "from .training import lm\n", "only training, experiments"),
        (f"{PACKAGE}.shared.hub", "import fwp_hf.conversion.fla\n", "shared serves"),
        (f"{PACKAGE}.training.lm", "from ..experiments import benchmark\n", "nothing in the library imports"),
        (f"{PACKAGE}.serve", "import importlib\nimportlib.import_module('fwp_hf.experiments.synthetic')\n",
         "nothing in the library imports"),
    ],
)
def test_a_wrong_import_is_reported(module, source, rule):
    """Each rule catches a module that breaks it (module-level, inside a function, relative or dynamic)."""
    sources = {module: (source, module == PACKAGE)}  # the package root is its __init__.py
    (violation,) = layering_violations(sources, SEQ2SEQ_MODEL_CODE_FILES)
    assert violation.startswith(f"{module} imports ") and rule in violation


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (f"{PACKAGE}.layers_fwp", ("import math\nimport torch.nn.functional as F\nfrom .cache_fwp import x\n"
                                   "from transformers.cache_utils import Cache\n")),
        (f"{PACKAGE}.training.lm", "from ..shared.hub import push_folder_to_hub\nfrom ..conversion import fla\n"),
        (f"{PACKAGE}.experiments.benchmark", "from .benchmark_report import render\nfrom ..training import lm\n"),
        (f"{PACKAGE}.console_scripts", "import importlib\nimportlib.import_module('fwp_hf.experiments.benchmark')\n"),
    ],
)
def test_an_allowed_import_is_not_reported(module, source):
    assert layering_violations({module: (source, False)}, SEQ2SEQ_MODEL_CODE_FILES) == []


def test_relative_imports_resolve_against_the_importing_module():
    def imports(source: str, module: str, is_package: bool = False) -> list[str]:
        return list(imported_modules(source, module, is_package, KNOWN_MODULES))

    assert imports("from ..shared import hub\n", f"{PACKAGE}.training.lm") == [f"{PACKAGE}.shared.hub"]
    assert imports("from .lm import main\n", f"{PACKAGE}.training", is_package=True) == [f"{PACKAGE}.training.lm"]
    assert imports("from . import FWPConfig\n", f"{PACKAGE}.serve") == [PACKAGE]
    assert imports("from .cache_fwp import x\n", f"{PACKAGE}.layers_fwp") == [f"{PACKAGE}.cache_fwp"]
