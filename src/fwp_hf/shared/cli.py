"""Command-line arguments of the fwp_hf scripts: a YAML/JSON config file overridable by flags."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import yaml
from transformers import HfArgumentParser

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def script_argument_parser(argument_classes: Sequence[type] | type) -> HfArgumentParser:
    """The `HfArgumentParser` of a script, with prefix matching off: argparse would otherwise take a misspelt
    ``--carry_stat true`` for ``--carry_state true`` (or any flag the prefix starts) without a word."""
    return HfArgumentParser(argument_classes, allow_abbrev=False)


@contextmanager
def argument_errors_exit(prog: str | None = None) -> Iterator[None]:
    """Turn a ValueError raised while reading or checking a script's arguments into what argparse does with a
    bad flag: ``<prog>: error: <message>`` on stderr and exit status 2, without a traceback.

    Only the argument step of a script runs inside it; errors of the run itself keep their traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as error:
        name = prog or os.path.basename(sys.argv[0]) or "fwp_hf"
        print(f"{name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def allowed_argument_names(argument_classes: Sequence[type]) -> list[str]:
    """Every key a config file for these argument dataclasses may hold."""
    return sorted({f.name for cls in argument_classes for f in fields(cls) if f.init})


def _pop_config_file(argv: list[str]) -> str | None:
    """The config file: a leading positional ``config.yaml`` or a ``--config FILE`` anywhere."""
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        return argv.pop(0)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("--config needs a YAML or JSON file")
        config_file = argv[index + 1]
        del argv[index : index + 2]
        return config_file
    return None


def read_config_file(config_file: str, allowed: Sequence[str], retired: Sequence[str] = ()) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file; an unknown key (neither `allowed` nor `retired`: a retired key is
    the caller's to refuse with its replacement) is a ValueError that names it."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    with open(config_file, encoding="utf-8") as handle:
        values = json.load(handle) if config_file.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"config file {config_file!r} must hold a mapping of argument names to values")
    unknown = sorted(set(values) - set(allowed) - set(retired))
    if unknown:
        raise ValueError(
            f"config file {config_file!r} has unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    return values


def config_overrides_as_json(values: dict[str, Any]) -> dict[str, Any]:
    """A config file may give ``config_overrides`` as a mapping; the field takes a JSON string."""
    if isinstance(values.get("config_overrides"), dict):
        values = {**values, "config_overrides": json.dumps(values["config_overrides"])}
    return values


# What replaces a retired argument, given the value it was given: e.g. ``config_overrides`` and its value.
Replacement = Callable[[Any], tuple[str, str]]


def refuse_retired_arguments(argv: Sequence[str], retired: Mapping[str, Replacement],
                             file_values: Mapping[str, Any] | None = None, config_file: str | None = None) -> None:
    """A ValueError for the first retired argument in `argv` (``--name value`` or ``--name=value``, also with
    dashes for underscores, as `HfArgumentParser` accepts them) or among the `file_values` read from
    `config_file`, naming the argument that replaces it (as a flag or as a file key)."""
    for index, word in enumerate(argv):
        flag, has_value, inline = word.removeprefix("--").partition("=")
        name = flag.replace("-", "_")
        if word.startswith("--") and name in retired:
            given = inline if has_value else (argv[index + 1] if index + 1 < len(argv) else "...")
            try:
                value = json.loads(given)
            except json.JSONDecodeError:
                value = given
            replaced_by, replacement = retired[name](value)
            raise ValueError(f"--{flag} was removed; give --{replaced_by} '{replacement}' instead")
    for name, value in (file_values or {}).items():
        if name in retired:
            key, replacement = retired[name](value)
            raise ValueError(f"config file {config_file!r}: key {name!r} was removed; write {key}: {replacement} "
                             "instead")


def parse_config_and_flags(
    argument_classes: Sequence[type],
    argv: Sequence[str],
    convert_values: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    retired: Mapping[str, Replacement] | None = None,
) -> tuple:
    """Parse ``[config.yaml|config.json] [--flag value ...]`` (or ``--config FILE``) into the dataclasses.

    The file's values become the parser's defaults, so flags override them; `convert_values` may
    reshape the file's values first (e.g. a mapping for a field that takes a JSON string). A `retired`
    argument, as a flag or a file key, is refused naming its replacement (`refuse_retired_arguments`).
    """
    argv = list(argv)
    parser = script_argument_parser(argument_classes)
    config_file = _pop_config_file(argv)
    retired = retired or {}
    refuse_retired_arguments(argv, retired)
    if config_file is not None:
        values = read_config_file(config_file, allowed_argument_names(argument_classes), list(retired))
        refuse_retired_arguments([], retired, values, config_file)
        if convert_values is not None:
            values = convert_values(values)
        parser.set_defaults(**values)
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in values:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)
