"""The committed SmolLM2 linearization report is the rendering of its committed results: the tables file, the
page that embeds them and the students' cards cannot drift from docs/linearization_smollm2.json."""

import json
import shutil
from pathlib import Path

import pytest

from fwp_hf.experiments.linearization_eval import render_markdown, update_model_card

DOCS = Path(__file__).resolve().parents[1] / "docs"
RESULTS = json.loads((DOCS / "linearization_smollm2.json").read_text())


def test_the_tables_file_is_the_rendering_of_the_results_json():
    assert (DOCS / "linearization_smollm2_tables.md").read_text() == render_markdown(RESULTS)


def test_the_page_embeds_the_tables_one_level_down():
    assert render_markdown(RESULTS, heading_level=4).rstrip("\n") in (DOCS / "linearization_smollm2.md").read_text()


@pytest.mark.parametrize("card", sorted((DOCS / "linearization_smollm2_cards").glob("*.md")), ids=lambda p: p.stem)
def test_each_student_card_carries_the_report_numbers(card, tmp_path):
    name = f"{card.stem}, after fine-tuning"
    assert name in RESULTS["models"]
    shutil.copy(card, tmp_path / "README.md")
    assert update_model_card(tmp_path, RESULTS, name)
    assert (tmp_path / "README.md").read_text() == card.read_text()


def test_tables_render_at_the_heading_level_asked():
    assert render_markdown(RESULTS, heading_level=5).startswith("##### Held-out perplexity")
    with pytest.raises(ValueError, match="heading_level is a markdown heading level, 1 … 6, got 7"):
        render_markdown(RESULTS, heading_level=7)
