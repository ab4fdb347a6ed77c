"""Checkpoints saved by an earlier version of fwp_hf must keep computing what they computed.

`tests/fixtures/reference_checkpoints/` holds one tiny checkpoint per attention type (and a hybrid,
and two encoder–decoders) with the logits of a fixed left-padded batch and a greedy generation,
both computed by the code that saved them (see `fixtures/make_reference_checkpoints.py`). Loading
them with today's code must give the same logits (to fp32 rounding) and the same tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fwp_hf  # noqa: F401 - registers the Auto classes
from fwp_hf import FWPForCausalLM, FWPForConditionalGeneration

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_reference_checkpoints import expected_outputs  # noqa: E402

CHECKPOINTS = sorted(path.name for path in (FIXTURES / "reference_checkpoints").iterdir() if path.is_dir())


def test_every_fixture_is_present():
    assert len(CHECKPOINTS) == 12


@pytest.mark.parametrize("name", CHECKPOINTS)
@torch.no_grad()
def test_saved_checkpoint_computes_what_it_computed(name):
    torch.set_num_threads(1)
    folder = FIXTURES / "reference_checkpoints" / name
    is_encoder_decoder = json.loads((folder / "config.json").read_text()).get("is_encoder_decoder", False)
    model_class = FWPForConditionalGeneration if is_encoder_decoder else FWPForCausalLM
    model = model_class.from_pretrained(folder).eval()
    expected = load_file(str(folder / "expected.safetensors"))
    actual = expected_outputs(model, is_encoder_decoder)
    torch.testing.assert_close(actual["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert torch.equal(actual["generated"], expected["generated"])
