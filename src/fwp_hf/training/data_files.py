"""The one check of a data file that a pipeline or the tokenizer trainer is about to read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def check_data_file(path: str | os.PathLike, name: str, suffixes: Sequence[str]) -> Path:
    """`path` as a Path once it is a file with one of `suffixes` that holds more than white space.

    Raises FileNotFoundError or ValueError with `name` (the flag, e.g. ``"train_file"``) and the path.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    if file.suffix.lower() not in suffixes:
        raise ValueError(
            f"{name} {str(path)!r} has an unsupported extension {file.suffix!r}; allowed: {', '.join(suffixes)}"
        )
    with file.open(encoding="utf-8", errors="replace") as handle:
        if not any(line.strip() for line in handle):
            raise ValueError(f"{name} {str(path)!r} is empty")
    return file


__all__ = ["check_data_file"]
