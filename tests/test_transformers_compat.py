"""What differs between the transformers releases fwp_hf supports, checked on whichever one is installed.

CI runs this file (with the model, generation, cache, export and remote-code tests) under the pinned release
and under the newest and the oldest that `pyproject.toml` admits (`.ci/run`). transformers 5.24 made a cache
layer's ``is_compileable`` a read-only property (assigning it broke every cached forward) and renamed the cache
``past_key_values`` → ``cache`` in generate's model inputs and in every ``ModelOutput`` (a forward that only
knew the old name silently lost its cache at every decoding step). The expectations here come from
transformers itself (its own Llama model's outputs, its Llama config, a manual greedy loop), not from
`fwp_hf.compat_fwp`.
"""

from __future__ import annotations

import logging as std_logging
import os
import warnings
from pathlib import Path

import pytest
import torch
from compat_checkpoint import CHECKPOINTS, write_reference_checkpoints
from conftest import LM_BASE, PAD, make_lm, make_seq2seq, random_ids
from isolation import run_without_fwp_hf
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from fwp_hf import FastWeightCacheLayer, FastWeightStaticCache, FWPConfig
from fwp_hf.compat_fwp import (
    enable_activation_checkpointing,
    generate_cache_kwargs,
    is_activation_checkpointing,
    output_cache,
)

pytestmark = pytest.mark.usefixtures("single_thread")

LM_VARIANTS_CHECKED = ["delta-elu", "gated_delta-silu", "linear", "softmax", "hybrid"]


def greedy_by_recomputation(model, ids: torch.Tensor, steps: int, **inputs) -> torch.Tensor:
    """Greedy continuation computed from scratch at every step (no cache at all)."""
    sequence = ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(sequence, use_cache=False, **inputs).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence


def test_cache_layers_build_and_say_whether_they_compile():
    # Fails on transformers ≥ 5.24 with a layer that assigns is_compileable (a read-only property there).
    assert FastWeightCacheLayer().is_compileable is False
    assert FastWeightCacheLayer(static=True).is_compileable is True
    config = FWPConfig(**{**LM_BASE, "attention_type": "delta"})
    assert FastWeightStaticCache(config, batch_size=2).is_compileable


@pytest.mark.parametrize("variant", LM_VARIANTS_CHECKED)
def test_generate_continues_the_cache_at_every_step(variant):
    model = make_lm(variant)
    ids = random_ids(2, 9, seed=3, low=PAD + 1)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    assert torch.equal(generated, greedy_by_recomputation(model, ids, 6))


def test_seq2seq_generate_continues_the_cache_at_every_step():
    model = make_seq2seq("delta")
    source = random_ids(2, 7, seed=4, low=3)
    with torch.no_grad():
        generated = model.generate(source, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        decoded = torch.full((2, 1), model.config.decoder_start_token_id)
        for _ in range(5):
            logits = model(input_ids=source, decoder_input_ids=decoded, use_cache=False).logits
            decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, decoded)


@pytest.mark.parametrize("variant", ["delta-elu", "softmax"])
def test_forward_takes_the_cache_under_either_name(variant):
    model = make_lm(variant)
    ids = random_ids(1, 12, seed=5)
    with torch.no_grad():
        whole = model(ids).logits
        first = model(ids[:, :8], use_cache=True)
        by_new_name = model(ids[:, 8:], cache=output_cache(first), use_cache=True).logits
        first = model(ids[:, :8], use_cache=True)
        by_old_name = model(ids[:, 8:], past_key_values=output_cache(first), use_cache=True).logits
        torch.testing.assert_close(by_new_name, whole[:, 8:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(by_old_name, whole[:, 8:], rtol=1e-4, atol=1e-5)
        cache = output_cache(model(ids[:, :8], use_cache=True))
        with pytest.raises(ValueError, match="not both"):
            model(ids[:, 8:], cache=cache, past_key_values=cache)


def test_outputs_name_the_cache_as_transformers_own_models_do():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4))
    ids = random_ids(1, 5)
    with torch.no_grad():
        expected_keys = list(llama(ids, use_cache=True).keys())
        output = make_lm("delta-elu")(ids, use_cache=True)
    assert list(output.keys()) == expected_keys
    assert output_cache(output) is output.to_tuple()[1]


def test_no_deprecation_warning_of_fwp_hfs_making(tmp_path):
    """Forward with a cache, generate (decoder-only, compiled-cache kwargs, encoder–decoder) and Trainer's
    evaluation step name the cache as the running transformers expects: nothing logs its deprecation."""
    records: list[str] = []

    class Collect(std_logging.Handler):
        def emit(self, record: std_logging.LogRecord) -> None:
            records.append(record.getMessage())

    std_logging.Logger.warning_once.cache_clear()  # transformers logs each such warning once per process
    handler = Collect(level=std_logging.WARNING)
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = make_lm("delta-elu")
            ids = random_ids(1, 6, low=PAD + 1)
            with torch.no_grad():
                out = model(ids, use_cache=True)
                model(ids[:, :1], cache=output_cache(out), use_cache=True)
                model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=PAD)
                model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=PAD,
                               **generate_cache_kwargs(FastWeightStaticCache(model.config, 1)))
                make_seq2seq("delta").generate(ids, max_new_tokens=3, do_sample=False)
            args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=1)
            trainer = Trainer(model=model, args=args)
            _, logits, _ = trainer.prediction_step(model, {"input_ids": ids, "labels": ids}, False)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    messages = records + [str(warning.message) for warning in caught]
    assert not [m for m in messages if "deprecated" in m.lower() and "cache" in m], messages
    # Trainer drops the cache from the evaluation outputs under either name (keys_to_ignore_at_inference).
    assert torch.is_tensor(logits) and logits.shape == (1, 6, model.config.vocab_size)


def test_activation_checkpointing_is_enabled_without_a_deprecation_warning():
    """`enable_activation_checkpointing` turns checkpointing on (non-reentrant here) and
    `is_activation_checkpointing` reads it, under the running release's names: no FutureWarning from 5.23 on, and
    the old names on 5.21/5.22, which lack the new ones."""
    model = make_lm("delta-elu").train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not is_activation_checkpointing(model)
        enable_activation_checkpointing(model, {"use_reentrant": False})
        assert is_activation_checkpointing(model)
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    ids = random_ids(1, 6, low=PAD + 1)
    model(ids, labels=ids).loss.backward()  # a checkpointed step runs backward
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("settings", [
    {"attention_type": "softmax"},
    {"attention_type": "softmax", "num_key_value_heads": 2},
    {"attention_type": "delta"},
])
def test_num_key_value_heads_resolves_as_in_transformers_llama(settings):
    heads = 4
    fwp = FWPConfig(**{**LM_BASE, "num_attention_heads": heads, **settings})
    llama = LlamaConfig(num_attention_heads=heads, num_key_value_heads=settings.get("num_key_value_heads"))
    assert fwp.num_key_value_heads == llama.num_key_value_heads
    # An older config.json's null (the default then) still loads, to one k/v head per query head.
    assert FWPConfig.from_dict({**fwp.to_dict(), "num_key_value_heads": None}).num_key_value_heads == heads


LOAD_AND_GENERATE = """
import json, sys
from pathlib import Path
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

folder = Path(sys.argv[1])
expected = json.loads((folder / "expected.json").read_text())
auto = AutoModelForSeq2SeqLM if sys.argv[2] == "seq2seq" else AutoModelForCausalLM
model = auto.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
prompt = torch.tensor(expected["prompt"])
with torch.no_grad():
    tokens = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0).tolist()
assert tokens == expected["tokens"], (tokens, expected)
print("generated the saved tokens under transformers", transformers.__version__, "; saved under",
      expected["saved_with_transformers"])
"""


@pytest.fixture(scope="module")
def reference_checkpoints(tmp_path_factory) -> Path:
    """The checkpoints `.ci/run` saved under another transformers release (``FWP_REFERENCE_CHECKPOINTS``), or
    ones saved here and now."""
    given = os.environ.get("FWP_REFERENCE_CHECKPOINTS")
    if given:
        return Path(given)
    folder = tmp_path_factory.mktemp("reference_checkpoints")
    write_reference_checkpoints(folder)
    return folder


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_saved_checkpoint_generates_the_same_tokens_without_fwp_hf(reference_checkpoints, name, tmp_path):
    folder = reference_checkpoints / name
    assert (folder / "expected.json").is_file(), f"no reference checkpoint in {folder}"
    run = run_without_fwp_hf(LOAD_AND_GENERATE, [str(folder), name], cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "generated the saved tokens" in run.stdout
