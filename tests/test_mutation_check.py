"""The mutation check's planting (`fwp_hf.experiments.mutation_check`): a mutant changes exactly one place in a
copy of the sources and never the working tree; a mutant whose text is gone or ambiguous is an error naming it;
every listed mutant still applies to the current code. (The mutants' test runs are `scripts/mutation_check.py`,
not part of the suite.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from fwp_hf.experiments.mutation_check import (
    MUTANTS,
    REPO_ROOT,
    Mutant,
    MutationError,
    baseline_selections,
    load_mutants,
    plant,
)


def test_plant_changes_the_copy_once_and_refuses_a_missing_or_ambiguous_text(tmp_path):
    file = tmp_path / "src" / "fwp_hf" / "example.py"
    file.parent.mkdir(parents=True)
    file.write_text("a = 1\nb = a + 1\n")
    plant(tmp_path, Mutant("plus-to-minus", "test", "src/fwp_hf/example.py", "a + 1", "a - 1", (), "sign"))
    assert file.read_text() == "a = 1\nb = a - 1\n"
    with pytest.raises(MutationError, match=r"mutant 'gone': the text to replace occurs 0 times"):
        plant(tmp_path, Mutant("gone", "test", "src/fwp_hf/example.py", "a + 1", "a", (), ""))
    with pytest.raises(MutationError, match=r"mutant 'twice': the text to replace occurs 2 times"):
        plant(tmp_path, Mutant("twice", "test", "src/fwp_hf/example.py", "a", "c", (), ""))
    with pytest.raises(MutationError, match=r"mutant 'nowhere': src/fwp_hf/missing.py does not exist"):
        plant(tmp_path, Mutant("nowhere", "test", "src/fwp_hf/missing.py", "a", "c", (), ""))


def test_every_mutant_applies_to_the_current_sources_and_names_existing_tests():
    assert len({mutant.name for mutant in MUTANTS}) == len(MUTANTS)
    for mutant in MUTANTS:
        text = (REPO_ROOT / mutant.path).read_text(encoding="utf-8")
        assert text.count(mutant.original) == 1, mutant.name
        assert mutant.original != mutant.replacement, mutant.name
        assert (REPO_ROOT / mutant.tests[0]).is_file(), mutant.name
        assert mutant.tests[0].startswith("tests/") and Path(mutant.tests[0]).suffix == ".py"


def test_baseline_runs_each_test_file_once_with_the_union_of_its_selections():
    def mutant(name, tests):
        return Mutant(name, "test", "src/fwp_hf/x.py", "a", "b", tests, "")

    selections = baseline_selections([
        mutant("one", ("tests/test_a.py", "-k", "beta or eigval")), mutant("two", ("tests/test_a.py", "-k", "gated")),
        mutant("three", ("tests/test_b.py",)), mutant("four", ("tests/test_b.py", "-k", "x")),
    ])
    assert selections == {"tests/test_a.py": ("tests/test_a.py", "-k", "(beta or eigval) or (gated)"),
                          "tests/test_b.py": ("tests/test_b.py",)}


def test_the_mutant_list_is_read_from_its_yaml_file_and_a_malformed_entry_is_named(tmp_path):
    listing = tmp_path / "mutants.yaml"
    listing.write_text(
        "kernels:\n"
        "  - {name: sign, file: x.py, original: 'a + 1', replacement: 'a - 1', tests: test_a.py, select: 'b or c',\n"
        "     bug: the sign}\n"
        "cache:\n"
        "  - {name: gone, file: y.py, original: a, replacement: b, tests: test_b.py, bug: no select}\n"
    )
    with pytest.raises(ValueError, match=r"mutant 0 of area 'cache' must have exactly the keys name, file, .*select"):
        load_mutants(listing)
    listing.write_text(listing.read_text().split("cache:")[0])
    assert load_mutants(listing) == (
        Mutant("sign", "kernels", "src/fwp_hf/x.py", "a + 1", "a - 1", ("tests/test_a.py", "-k", "b or c"), "the sign"),
    )
