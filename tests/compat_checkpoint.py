"""Checkpoints saved by this checkout under one transformers release, to be loaded under another.

``python tests/compat_checkpoint.py FOLDER`` saves a decoder-only hybrid (delta, softmax and gated-delta layers
with short convolutions) and an encoder–decoder, each with its prompt and greedy continuation
(``expected.json``), as `save_pretrained` writes them for the Hub. `.ci/run` writes them under the pinned
transformers and points ``FWP_REFERENCE_CHECKPOINTS`` at them in its runs under the oldest and newest admitted
releases, where `test_transformers_compat.py` loads them with ``trust_remote_code=True`` in a process without
fwp_hf and checks the tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers

from fwp_hf import FWPConfig, FWPForCausalLM, FWPForConditionalGeneration

NEW_TOKENS = 8
SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_attention_heads=4, chunk_size=4,
             initializer_range=0.2)
CHECKPOINTS = {
    "causal_lm": (FWPForCausalLM, dict(attention_type=["delta", "softmax", "gated_delta"], num_hidden_layers=3,
                                       use_short_conv=True)),
    "seq2seq": (FWPForConditionalGeneration, dict(attention_type="delta", num_hidden_layers=2, num_decoder_layers=2,
                                                  is_encoder_decoder=True, pad_token_id=0, eos_token_id=1,
                                                  decoder_start_token_id=2)),
}


def greedy(model: torch.nn.Module, prompt: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        return model.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                              pad_token_id=0).tolist()


def write_reference_checkpoints(folder: Path) -> None:
    for seed, (name, (model_class, settings)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(seed)
        model = model_class(FWPConfig(**SIZES, **settings)).eval()
        prompt = torch.randint(3, SIZES["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(seed))
        model.save_pretrained(folder / name)
        expected = {"prompt": prompt.tolist(), "tokens": greedy(model, prompt),
                    "saved_with_transformers": transformers.__version__}
        (folder / name / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    write_reference_checkpoints(Path(sys.argv[1]))
