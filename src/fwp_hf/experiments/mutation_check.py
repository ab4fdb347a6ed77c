"""Mutation check: plant named single bugs in the source and see whether the related tests catch them.

Each `Mutant` (listed in ``mutants.yaml`` beside this module) replaces one exact text (it must occur exactly
once) in one file under ``src/`` and names the tests that guard that code (pytest arguments: files, ``-k``
expressions). `run_mutants` copies
``src/`` into a temporary folder, plants one mutant at a time there (a fresh copy per mutant) and runs
its tests with that copy first on ``PYTHONPATH``, so the working tree is never modified: an interrupted
run (Ctrl-C, a kill) leaves nothing to revert, and the temporary folder is removed on exit.

A mutant is *caught* when its tests fail (pytest exit code 1), *survived* when they pass (0); any
other outcome (a timeout, a collection error, no test selected) is reported as an *error*, never as
caught. Before the mutants, the union of the selections of each test file runs once on the
unmodified copy (the baseline); a file whose selection fails there makes its mutants' results
meaningless, so they are reported as errors too. Output goes line by line (``log``), so a long run can
be followed; a kill (SIGTERM) or Ctrl-C stops the running pytest and removes the temporary copies.

    python scripts/mutation_check.py                       # every mutant, writes docs/mutation_report.md
    python scripts/mutation_check.py --only favor-key-shift-sign conv-window-unmasked --report /tmp/r.md
    python scripts/mutation_check.py --list_mutants true   # names, files and tests; checks every anchor
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Mutant:
    """One planted bug: in `path` (relative to the repository root), `original` becomes `replacement`."""

    name: str
    area: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: test files and options such as ("-k", "expression")
    bug: str  # what the change means, for the report


class MutationError(ValueError):
    """A mutant whose text is not found exactly once (the code it targets has changed)."""


def plant(source_root: Path, mutant: Mutant) -> None:
    """Apply `mutant` to the copy of the repository files under `source_root` (its ``src/`` tree)."""
    file = source_root / mutant.path
    if not file.is_file():
        raise MutationError(f"mutant {mutant.name!r}: {mutant.path} does not exist")
    text = file.read_text(encoding="utf-8")
    count = text.count(mutant.original)
    if count != 1:
        raise MutationError(
            f"mutant {mutant.name!r}: the text to replace occurs {count} times in {mutant.path} (must be once): "
            f"{mutant.original!r}; update the mutant to the current code"
        )
    file.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")


def copy_sources(destination: Path) -> Path:
    """Copy the repository's ``src/`` tree (without caches) to `destination`/src and link every other top-level
    entry (model_cards/, configs/, ...: files the package finds next to its source) there; return `destination`."""
    shutil.copytree(REPO_ROOT / "src", destination / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for entry in REPO_ROOT.iterdir():
        if entry.name not in ("src", ".git"):
            (destination / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return destination


def run_tests(source_root: Path, tests: Sequence[str], timeout_s: float) -> tuple[str, float, str]:
    """Run pytest on `tests` with ``source_root/src`` first on PYTHONPATH: ``(outcome, seconds, last line)``,
    outcome ``"passed"``, ``"failed"`` or ``"error"`` (anything but exit codes 0 and 1, or a timeout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root / "src"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        process = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
                                 check=False)
    except subprocess.TimeoutExpired:
        return "error", time.perf_counter() - start, f"timed out after {timeout_s:.0f} s"
    seconds = time.perf_counter() - start
    lines = [line for line in process.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else process.stderr.strip().splitlines()[-1:] or ""
    outcome = {0: "passed", 1: "failed"}.get(process.returncode, "error")
    return outcome, seconds, summary if isinstance(summary, str) else " ".join(summary)


def baseline_selections(mutants: Sequence[Mutant]) -> dict[str, tuple[str, ...]]:
    """Per test file, one pytest selection that runs exactly the union of the mutants' selections of that file
    (their ``-k`` expressions joined with ``or``; the whole file if one mutant takes it whole): one pytest start
    per file instead of one per mutant."""
    expressions: dict[str, list[str] | None] = {}
    for mutant in mutants:
        test_file, options = mutant.tests[0], mutant.tests[1:]
        if options[:1] == ("-k",) and len(options) == 2:
            if expressions.setdefault(test_file, []) is not None:
                expressions[test_file].append(options[1])
        else:
            expressions[test_file] = None  # the whole file (or options this cannot merge)
    return {test_file: (test_file,) if exprs is None else (test_file, "-k", " or ".join(f"({e})" for e in exprs))
            for test_file, exprs in expressions.items()}


@dataclass
class MutantResult:
    mutant: Mutant
    outcome: str  # "caught", "survived" or "error"
    seconds: float
    detail: str


def run_mutants(mutants: Sequence[Mutant], timeout_s: float = 300, baseline: bool = True,
                log=lambda message: print(message, flush=True)) -> list[MutantResult]:
    """Plant each mutant in a fresh copy of ``src/`` and run its tests (see the module docstring)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="fwp-mutation-") as scratch:
        clean = copy_sources(Path(scratch) / "clean")
        baseline_failures: dict[tuple[str, ...], str] = {}
        if baseline:
            for test_file, selections in baseline_selections(mutants).items():
                outcome, seconds, summary = run_tests(clean, selections, timeout_s)
                log(f"baseline {' '.join(selections)}: {outcome} in {seconds:.0f} s ({summary})")
                if outcome != "passed":
                    for mutant in mutants:
                        if mutant.tests[0] == test_file:
                            baseline_failures[mutant.tests] = f"baseline {outcome}: {summary}"
        for index, mutant in enumerate(mutants):
            if mutant.tests in baseline_failures:
                results.append(MutantResult(mutant, "error", 0.0, baseline_failures[mutant.tests]))
                continue
            planted = Path(scratch) / f"mutant-{index}"
            copy_sources(planted)
            try:
                plant(planted, mutant)
            except MutationError as error:
                results.append(MutantResult(mutant, "error", 0.0, str(error)))
                log(f"{mutant.name}: error ({error})")
                continue
            outcome, seconds, summary = run_tests(planted, mutant.tests, timeout_s)
            verdict = {"failed": "caught", "passed": "survived"}.get(outcome, "error")
            results.append(MutantResult(mutant, verdict, seconds, summary))
            log(f"{mutant.name}: {verdict} in {seconds:.0f} s ({summary})")
            shutil.rmtree(planted, ignore_errors=True)
    return results


def render_report(results: Sequence[MutantResult], total_seconds: float, command: str) -> str:
    """The Markdown report: a summary line and one row per mutant."""
    counts = {outcome: sum(result.outcome == outcome for result in results)
              for outcome in ("caught", "survived", "error")}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    lines = [
        "# Mutation check",
        "",
        f"`{command}` on {datetime.date.today().isoformat()} (commit {commit}, {total_seconds / 60:.1f} min): "
        f"**{counts['caught']} of {len(results)} planted bugs caught**, {counts['survived']} survived, "
        f"{counts['error']} could not be run.",
        "",
        "Each row is one single bug planted in a temporary copy of `src/` (`fwp_hf.experiments.mutation_check`); "
        "*caught* means the listed tests failed on it, *survived* that they all passed.",
        "",
        "| mutant | area | file | planted bug | tests | outcome | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        mutant = result.mutant
        tests = " ".join(mutant.tests).replace("|", "\\|")
        outcome = result.outcome if result.outcome == "caught" else f"**{result.outcome}**: {result.detail}"
        lines.append(f"| `{mutant.name}` | {mutant.area} | `{mutant.path.removeprefix('src/fwp_hf/')}` | "
                     f"{mutant.bug} | `{tests}` | {outcome} | {result.seconds:.0f} |")
    return "\n".join(lines) + "\n"


MUTANTS_FILE = Path(__file__).with_name("mutants.yaml")
_MUTANT_KEYS = ("name", "file", "original", "replacement", "tests", "select", "bug")


def load_mutants(path: Path = MUTANTS_FILE) -> tuple[Mutant, ...]:
    """The mutants listed in `path` (``mutants.yaml``: per area a list of mutants, each with the keys
    `_MUTANT_KEYS`; its header says what they mean); a ValueError names an entry that lacks or adds a key."""
    with open(path, encoding="utf-8") as handle:
        areas = yaml.safe_load(handle)
    mutants = []
    for area, entries in areas.items():
        for index, entry in enumerate(entries):
            keys = set(entry) if isinstance(entry, dict) else set()
            if keys != set(_MUTANT_KEYS):
                raise ValueError(f"{path}: mutant {index} of area {area!r} must have exactly the keys "
                                 f"{', '.join(_MUTANT_KEYS)}; got {entry!r}")
            mutants.append(Mutant(entry["name"], area, f"src/fwp_hf/{entry['file']}", entry["original"],
                                  entry["replacement"], (f"tests/{entry['tests']}", "-k", entry["select"]),
                                  entry["bug"]))
    return tuple(mutants)


# The planted bugs: realistic single mistakes in the code added for carried state, packing, the FLA importer
# and linearization, and in the kernels and cache they build on (`mutants.yaml`).
MUTANTS: tuple[Mutant, ...] = load_mutants()


@dataclass
class MutationCheckArguments:
    """Options of `scripts/mutation_check.py`."""

    report: str = field(default="docs/mutation_report.md", metadata={"help": "Markdown report to write."})
    only: list[str] = field(default_factory=list, metadata={"help": "Run only these mutants (names)."})
    timeout_s: float = field(default=300.0, metadata={"help": "Seconds one pytest run may take."})
    baseline: bool = field(default=True, metadata={"help": "First run every test selection on the unmodified code."})
    list_mutants: bool = field(default=False, metadata={"help": "List the mutants, check their anchors, run nothing."})


def main(argv: Sequence[str] | None = None) -> list[MutantResult]:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MutationCheckArguments, allow_abbrev=False).parse_args_into_dataclasses(args=argv)
    names = [mutant.name for mutant in MUTANTS]
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        raise ValueError(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(names)}")
    mutants = [mutant for mutant in MUTANTS if not args.only or mutant.name in args.only]
    if args.list_mutants:
        with tempfile.TemporaryDirectory(prefix="fwp-mutation-") as scratch:
            for mutant in mutants:
                copy = copy_sources(Path(scratch) / mutant.name)
                try:
                    plant(copy, mutant)
                    status = "ok"
                except MutationError as error:
                    status = f"ERROR: {error}"
                print(f"{mutant.name:40} {mutant.path:42} {' '.join(mutant.tests)}  [{status}]")
        return []
    # A kill (SIGTERM) ends like Ctrl-C: the running pytest is stopped and the temporary copies are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start = time.perf_counter()
    results = run_mutants(mutants, timeout_s=args.timeout_s, baseline=args.baseline)
    command = " ".join(["python scripts/mutation_check.py", *(sys.argv[1:] if argv is None else argv)])
    report = render_report(results, time.perf_counter() - start, command)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report, encoding="utf-8")
    caught = sum(result.outcome == "caught" for result in results)
    print(f"{caught} of {len(results)} mutants caught; report: {args.report}")
    return results


__all__ = ["MUTANTS", "MUTANTS_FILE", "Mutant", "MutantResult", "MutationError", "baseline_selections", "copy_sources",
           "load_mutants", "main", "plant", "render_report", "run_mutants", "run_tests"]
