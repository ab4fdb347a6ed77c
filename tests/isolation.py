"""Run Python code in a subprocess where fwp_hf cannot be imported.

fwp_hf is installed (editable) in CI, so removing PYTHONPATH is not enough: the code is prefixed with
an import hook that refuses `fwp_hf`, which is what a user without the package sees. Used by the
tests that load checkpoints with `trust_remote_code=True`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BLOCK_FWP_HF = '''
import importlib.abc
import sys


class _RefuseFwpHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fwp_hf" or name.startswith("fwp_hf."):
            raise ImportError(f"{name} is not installed in this process (remote-code test)")
        return None


sys.meta_path.insert(0, _RefuseFwpHf())
try:
    import fwp_hf  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("fwp_hf is importable in the subprocess: the remote-code test would prove nothing")
'''


def run_without_fwp_hf(
    script: str, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = 300,
    verbosity: str = "error",
) -> subprocess.CompletedProcess:
    """Write `script` (prefixed with the fwp_hf blocker) into `cwd` and run it with `args` (transformers'
    log level `verbosity`)."""
    path = Path(cwd) / "run_without_fwp_hf.py"
    path.write_text(BLOCK_FWP_HF + "\n" + script)
    env = {**os.environ, **(extra_env or {})}
    env.pop("PYTHONPATH", None)
    env.setdefault("HF_MODULES_CACHE", str(Path(cwd) / "hf_modules"))
    env.update(TRANSFORMERS_VERBOSITY=verbosity, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(path), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
