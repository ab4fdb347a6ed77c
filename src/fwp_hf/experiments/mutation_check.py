"""Mutation check: plant named single bugs in the source and see whether the related tests catch them.

Each `Mutant` replaces one exact text (it must occur exactly once) in one file under ``src/`` and names
the tests that guard that code (pytest arguments: files, ``-k`` expressions). `run_mutants` copies
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


def _mutant(name: str, area: str, path: str, original: str, replacement: str, tests: Sequence[str], bug: str) -> Mutant:
    return Mutant(name, area, f"src/fwp_hf/{path}", original, replacement, tuple(tests), bug)


def _k(test_file: str, expression: str) -> tuple[str, ...]:
    return (f"tests/{test_file}", "-k", expression)


# The planted bugs: realistic single mistakes in the code added for carried state, packing, the FLA importer
# and linearization, and in the kernels and cache they build on (issue 23 lists the ten that once survived).
MUTANTS: tuple[Mutant, ...] = (
    # Kernels
    _mutant("neg-eigval-beta-not-doubled", "kernels", "fast_weight_kernels.py",
            "return 2.0 * beta if allow_neg_eigval else beta", "return beta",
            _k("test_kernels.py", "beta or eigval"), "β stays in (0, 1) with allow_neg_eigval"),
    _mutant("delta-rule-step-sign", "kernels", "fast_weight_kernels.py",
            "state = state + k.transpose(-1, -2) * (beta * (v - retrieved))",
            "state = state + k.transpose(-1, -2) * (beta * (v + retrieved))",
            _k("test_kernels.py", "delta"), "the recurrent delta rule adds the retrieved value"),
    _mutant("exclusive-sum-rule-reads-new-state", "kernels", "fast_weight_kernels.py",
            "(read_state if exclusive else state)", "(state if exclusive else state)",
            _k("test_kernels.py", "exclusive"), "the exclusive read includes the current token"),
    _mutant("gated-decay-sign", "kernels", "fast_weight_kernels.py",
            "return -a_log.float().exp() * F.softplus(logits.float() + dt_bias.float())",
            "return a_log.float().exp() * F.softplus(logits.float() + dt_bias.float())",
            _k("test_kernels.py", "gated"), "the gated delta rule's log-decay is positive (growth)"),
    _mutant("document-resets-ignored", "kernels", "fast_weight_kernels.py",
            "keeps = (~document_starts(seq_idx)).float()", "keeps = (document_starts(seq_idx) | True).float()",
            _k("test_packing.py", "kernels_with_seq_idx"), "recurrent kernels never reset at a document start"),
    _mutant("conv-window-unmasked", "kernels", "fast_weight_kernels.py",
            "return y.transpose(1, 2), window * last", "return y.transpose(1, 2), window",
            _k("test_packing.py", "short_convolution"), "the returned conv window keeps earlier documents' inputs"),
    _mutant("favor-key-shift-sign", "kernels", "feature_maps_fwp.py",
            "return features, query_shift + self.spec.key_log_scale(self.weights).to(query_shift)",
            "return features, query_shift - self.spec.key_log_scale(self.weights).to(query_shift)",
            _k("test_numerics.py", "favor"), "the FAVOR+ key shift enters the layer's read with the wrong sign"),
    _mutant("normalizer-eps-unscaled", "kernels", "fast_weight_kernels.py",
            "denominator = (y[..., -1:] + _scaled_eps(eps, log_scale, y.dtype))",
            "denominator = (y[..., -1:] + eps)",
            _k("test_numerics.py", "favor"), "ε is not rescaled for shifted FAVOR+ features"),
    # Cache
    _mutant("cache-token-count-frozen", "cache", "cache_fwp.py",
            "            self._token_count += num_new_tokens", "            pass",
            _k("test_modeling.py", "cache"), "the fast-weight cache does not count new tokens"),
    _mutant("cache-reset-rows-inverted", "cache", "cache_fwp.py",
            "keep = ~rows.to(torch.bool).flatten()", "keep = rows.to(torch.bool).flatten()",
            _k("test_document_resets.py", "carried_cache or old_one"), "reset_rows empties the other rows"),
    _mutant("cache-reorder-ignored", "cache", "cache_fwp.py",
            "self._map_state(lambda state: state.index_select(0, beam_idx.to(state.device)))",
            "self._map_state(lambda state: state)",
            _k("test_generation.py", "beam"), "beam search does not reorder the fast-weight states"),
    # Carried state
    _mutant("carried-position-counts-steps", "carried state", "training/carried_state.py",
            '"micro_batches_seen": self.micro_batches_seen,',
            '"micro_batches_seen": self.state.global_step * self.args.gradient_accumulation_steps,',
            _k("test_carried_state_training.py", "inside_an_epoch"),
            "the saved stream position counts optimizer steps × accumulation"),
    _mutant("carried-state-not-detached", "carried state", "training/carried_state.py",
            "layer.load_tensors(*(tensor.detach() for tensor in layer.tensors()))",
            "layer.load_tensors(*layer.tensors())",
            _k("test_carried_state_training.py", "no_gradient"), "gradients flow into the previous segment"),
    _mutant("streams-never-restart", "carried state", "training/carried_state.py",
            "if self.segment_index == 0 or self.reset_every_segment:", "if self.reset_every_segment:",
            _k("test_carried_state_training.py", "previous_final_state"),
            "the state is carried across the epoch boundary"),
    _mutant("stream-layout-not-transposed", "carried state", "training/carried_state.py",
            "return streams.transpose(0, 1).reshape(-1, segment_length).tolist()",
            "return streams.reshape(-1, segment_length).tolist()",
            _k("test_carried_state_training.py", "continues_its_stream"),
            "consecutive rows hold consecutive segments of one stream"),
    _mutant("document-start-test-inverted", "carried state", "training/carried_state.py",
            "starts = document_ids[:, 0] != self.carried_document_ids.to(document_ids.device)",
            "starts = document_ids[:, 0] == self.carried_document_ids.to(document_ids.device)",
            _k("test_document_resets.py", "trainer_losses"), "the carried state is dropped inside documents"),
    _mutant("stream-losses-doubled", "carried state", "training/lm_evaluation.py",
            "losses.append(loss.cpu())", "losses.append(2 * loss.cpu())",
            _k("test_carried_state_training.py", "position"), "every stream loss is doubled"),
    _mutant("position-curves-arithmetic-mean", "carried state", "training/lm_comparison.py",
            "return math.exp(statistics.fmean(math.log(value) for value in perplexities))",
            "return statistics.fmean(perplexities)",
            _k("test_lm_comparison.py", "log_space or summaries"), "seeds' perplexities averaged arithmetically"),
    _mutant("resume-config-unchecked", "carried state", "training/lm.py",
            "        common.check_resume_matches_checkpoint(resume_checkpoint, model.config, layout)", "        pass",
            _k("test_lm_training.py", "refuses_another"), "a resume may change the model or the data layout"),
    _mutant("resume-last-unchecked", "carried state", "training/common.py",
            "            check_checkpoint(folder, required_files)\n", "            pass\n",
            _k("test_carried_state_training.py", "kill_while"),
            "resume from the last checkpoint takes an incomplete one"),
    # Packing
    _mutant("packed-eval-collator-kept", "packing", "training/packing.py",
            "            self.data_collator = evaluation_collator", "            pass",
            _k("test_packing.py", "packs_training"), "evaluation batches are flattened too"),
    _mutant("packed-positions-ignored", "packing", "inputs_fwp.py",
            "starts = positions[:, 1:] != positions[:, :-1] + 1", "starts = positions[:, 1:] != positions[:, 1:]",
            _k("test_packing.py", "packed_row_gives and delta"), "restarting position_ids start no document"),
    _mutant("padding-starts-documents", "packing", "inputs_fwp.py",
            "starts = starts & real[:, 1:] & real[:, :-1]", "starts = starts",
            _k("test_packing.py", "ordinary_position_ids"), "left padding's positions count as packing"),
    _mutant("long-documents-truncated", "packing", "training/packing.py",
            "for ids in batch[\"input_ids\"] for start in range(0, len(ids), max_length)]",
            "for ids in batch[\"input_ids\"] for start in range(0, min(len(ids), max_length), max_length)]",
            _k("test_packing.py", "cuts_long"), "documents longer than block_size lose their tail"),
    # FLA importer
    _mutant("fla-mlp-width-rounded-down", "importer", "conversion/fla.py",
            "return 256 * ((size + 256 - 1) // 256)", "return 256 * (size // 256)",
            _k("test_fla_import.py", "mlp"), "FLA's MLP width is rounded down"),
    _mutant("fla-dtype-always-fp32", "importer", "conversion/fla.py",
            "return max(set(floating), key=floating.count) if floating else torch.float32", "return torch.float32",
            _k("test_fla_import.py", "bf16"), "a bf16 source is converted to fp32"),
    _mutant("fla-tied-embeddings-refused", "importer", "conversion/fla.py",
            'tie_word_embeddings=bool(fla.get("tie_word_embeddings", False)),',
            'tie_word_embeddings=_require(not fla.get("tie_word_embeddings"), "tie_word_embeddings") or False,',
            _k("test_fla_import.py", "tied"), "the importer refuses tied embeddings"),
    _mutant("fla-stale-staging-kept", "importer", "conversion/fla.py",
            "if pid.isdigit() and not _process_is_alive(int(pid)):", "if False:",
            _k("test_fla_import.py", "stale"), "staging folders of killed runs are never removed"),
    _mutant("fla-umask-ignored", "importer", "conversion/fla.py",
            "        _user_permissions(staging)\n", "",
            _k("test_fla_import.py", "umask"), "converted folders keep mkdtemp's 0700"),
    _mutant("fla-gate-bias-into-a-log", "importer", "conversion/fla.py",
            'groups[mixer + "dt_bias"] = [(attn + "dt_bias", (heads,))]',
            'groups[mixer + "dt_bias"] = [(attn + "A_log", (heads,))]',
            _k("test_fla_import.py", "equal_fla_reference and gated_deltanet-defaults"),
            "Gated DeltaNet's dt_bias is read from A_log"),
    # Linearization
    _mutant("transfer-mse-counts-padding", "linearization", "conversion/linearize.py",
            "weights = torch.ones(input_ids.shape, device=input_ids.device) if token_mask is None else token_mask",
            "weights = torch.ones(input_ids.shape, device=input_ids.device)",
            _k("test_linearize.py", "padded_batch"), "the transfer MSE averages over padded tokens too"),
    _mutant("release-leaves-student-frozen", "linearization", "conversion/linearize.py",
            "parameter.requires_grad_(self._was_trainable.get(name, True))", "pass",
            _k("test_linearize.py", "release"), "release() keeps the transfer's trainable flags"),
    _mutant("transfer-trains-teacher-rows", "linearization", "conversion/linearize.py",
            "mask[: mixer.qkv_width] = 0", "mask[: mixer.qkv_width] = 1",
            _k("test_linearize.py", "attention_transfer_with_trainer and delta-hedgehog"),
            "attention transfer changes the copied q/k/v rows"),
    # Config and inputs
    _mutant("scale-queries-not-weight-meaning", "config", "options_fwp.py",
            "scale_queries: bool = option(False, check=boolean, weight_meaning=True, layer_option=True)",
            "scale_queries: bool = option(False, check=boolean, weight_meaning=False, layer_option=True)",
            _k("test_config_loading.py", "every_field"), "fast_weight.scale_queries not declared weight-meaning"),
    _mutant("non-finite-embeddings-accepted", "config", "inputs_fwp.py",
            "if not values_unreadable(inputs_embeds) and not bool(torch.isfinite(inputs_embeds).all()):",
            "if False:",
            _k("test_config_and_errors.py", "non_finite"), "NaN embeddings run (and break causality)"),
)


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


__all__ = ["MUTANTS", "Mutant", "MutantResult", "MutationError", "baseline_selections", "copy_sources", "main", "plant",
           "render_report", "run_mutants", "run_tests"]
