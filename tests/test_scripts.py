"""Every file in `scripts/` is a thin entry point: it imports `main` from the library and calls it.

The scripts are loaded under a name other than ``__main__`` (so nothing runs); a script that defines
a function or class of its own carries logic that belongs in `fwp_hf.training` or
`fwp_hf.experiments` (or `fwp_hf.conversion`), where it can be imported and tested.
"""

from __future__ import annotations

import inspect
import runpy
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_script_is_a_thin_entry_point(script: Path):
    namespace = runpy.run_path(str(script), run_name="script_under_test")
    main = namespace.get("main")
    assert callable(main), f"{script.name} has no main"
    assert main.__module__.startswith(
        ("fwp_hf.training.", "fwp_hf.experiments.", "fwp_hf.conversion.")
    ), main.__module__
    assert "argv" in inspect.signature(main).parameters  # callable from tests and other code with a list of flags
    own = [name for name, value in namespace.items()
           if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == "script_under_test"]
    assert not own, f"{script.name} defines {own}: move them into the library"
    source = script.read_text(encoding="utf-8")
    assert source.rstrip().endswith('if __name__ == "__main__":\n    main()'), script.name
