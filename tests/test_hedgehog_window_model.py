"""`hedgehog_window` models (LoLCATs' sliding softmax window + Hedgehog fast weights) beyond the common variant
tests: a cache whose size does not grow with the prompt, left-padded batched generation against a full forward,
chunked prefill, the carried-state trainer's cache checkpoints, and the static cache refused clearly."""

import pytest
import torch
from conftest import assert_close, make_lm, random_ids
from transformers import DynamicCache

from fwp_hf import FastWeightStaticCache
from fwp_hf.cache_fwp import WindowFastWeightCacheLayer
from fwp_hf.training.carried_state import cache_from_tensors, cache_tensors, detach_cache

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOW = 5


def window_model(**overrides):
    return make_lm("hedgehog_window", fast_weight=dict(window_size=WINDOW), **overrides)


def cache_bytes(cache) -> int:
    return sum(tensor.numel() * tensor.element_size() for layer in cache.layers for tensor in layer.tensors())


def test_cache_size_does_not_grow_with_the_prompt():
    model = window_model()
    sizes = []
    for length in (64, 256):
        with torch.no_grad():
            cache = model(random_ids(2, length), use_cache=True).past_key_values
        assert all(isinstance(layer, WindowFastWeightCacheLayer) for layer in cache.layers)
        assert all(layer.window_state.keys.shape[2] == WINDOW - 1 for layer in cache.layers)
        sizes.append(cache_bytes(cache))
    assert sizes[0] == sizes[1]


def test_left_padded_batched_generation_equals_full_forwards():
    """Greedy generation of a left-padded batch (prompts longer than the window): every new token is the argmax of a
    full forward of its row alone, and the last logits equal that forward's."""
    model = window_model()
    prompts = [random_ids(1, n, seed=10 + n, low=3)[0] for n in (14, 9, 11)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    new = out.sequences[:, width:]
    for row, p in enumerate(prompts):
        sequence = torch.cat([p, new[row]])[None]
        with torch.no_grad():
            logits = model(sequence[:, :-1]).logits[0, len(p) - 1 :]
        assert torch.equal(logits.argmax(-1), new[row])
        assert_close(out.logits[-1][row], logits[-1], what=f"row {row}: last logits")


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_chunked_prefill_equals_one_prefill(chunk):
    model = window_model()
    ids = random_ids(2, 30, low=3)
    with torch.no_grad():
        whole = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        chunked = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, prefill_chunk_size=chunk)
        full = model(ids).logits
        cache, pieces = DynamicCache(), []
        for start in range(0, 30, chunk):
            pieces.append(model(ids[:, start : start + chunk], past_key_values=cache, use_cache=True).logits)
    assert torch.equal(whole, chunked)
    assert_close(torch.cat(pieces, dim=1), full, what="prefill in pieces")


def test_carried_state_checkpoint_round_trip():
    model = window_model()
    ids = random_ids(2, 20, low=3)
    with torch.no_grad():
        cache = model(ids[:, :13], use_cache=True).past_key_values
        expected = model(ids[:, 13:], past_key_values=cache, use_cache=True).logits
        cache = model(ids[:, :13], use_cache=True).past_key_values
        restored = cache_from_tensors(cache_tensors(detach_cache(cache)), "cpu")
        assert all(isinstance(layer, WindowFastWeightCacheLayer) for layer in restored.layers)
        assert restored.get_seq_length() == 13
        actual = model(ids[:, 13:], past_key_values=restored, use_cache=True).logits
    assert_close(actual, expected, what="continued from a restored cache")


def test_static_cache_is_refused_clearly():
    model = window_model()
    with pytest.raises(ValueError, match="no static form of layer 0's 'hedgehog_window' cache"):
        FastWeightStaticCache(model.config, 1)
    with pytest.raises(ValueError, match="has no static form: use DynamicCache"):
        model.generate(random_ids(1, 6, low=3), max_new_tokens=2, cache_implementation="static", pad_token_id=0)


REMOTE_GENERATE = """
import sys
import torch
from transformers import AutoModelForCausalLM

model_dir, ids_path, out_path = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
with torch.no_grad():
    tokens = model.generate(torch.load(ids_path), max_new_tokens=6, do_sample=False, pad_token_id=0)
torch.save({"tokens": tokens, "module": type(model).__module__}, out_path)
"""


def test_saved_model_generates_the_same_without_fwp_hf(tmp_path):
    """The shipped model files (kernels, layer, window cache) load with trust_remote_code where fwp_hf cannot be
    imported, and cached greedy decoding past the window gives the same tokens."""
    from isolation import run_without_fwp_hf

    model = window_model()
    model.save_pretrained(tmp_path / "checkpoint")
    ids = random_ids(2, 11, low=3)
    torch.save(ids, tmp_path / "ids.pt")
    proc = run_without_fwp_hf(REMOTE_GENERATE, [str(tmp_path / "checkpoint"), "ids.pt", "out.pt"], cwd=tmp_path,
                              extra_env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(tmp_path / "out.pt")
    assert not result["module"].startswith("fwp_hf")
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(result["tokens"], expected)


def test_the_layer_description_names_its_window():
    from fwp_hf.token_mixers import describe_token_mixer

    description = describe_token_mixer(window_model().config, "hedgehog_window")
    assert "LoLCATs" in description and description.endswith(f"window = {WINDOW} tokens")


def test_the_stack_builds_no_mask_over_past_keys():
    """A model of window layers has no growing mask: the layers count their own positions and mask by their
    window, so the stack builds neither rotary tables nor a 4D mask over every past key (a softmax layer needs
    both)."""
    from fwp_hf.inputs_fwp import prepare_mixer_inputs

    config, past = window_model().config, 100_000
    hidden = torch.zeros(1, 3, config.hidden_size)
    prepared = prepare_mixer_inputs(config, config.layer_attention_types, torch.ones(1, past + 3), None, hidden, past)
    assert prepared["attention_mask_4d"] is None and prepared["position_embeddings"] is None
    hybrid = prepare_mixer_inputs(config, ["hedgehog_window", "softmax"], torch.ones(1, past + 3), None, hidden, past)
    assert hybrid["attention_mask_4d"].shape == (1, 1, 3, past + 3)
