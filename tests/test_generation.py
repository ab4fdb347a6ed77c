"""Tests of `generate` with FWP models (`GenerationMixin` and the fast-weight cache).

Covered, for every variant of `conftest.LM_VARIANTS` (every attention type of the registry, every
feature map where the config picks it, hybrids): greedy, beam search and sampling give the same
tokens with and without the cache; left-padded batched generation gives every row the tokens of
generating its prompt alone; the cache returned by `generate` holds fixed-size fp32 fast-weight
states equal to those of one forward pass, and generation continues from it.

Models are tiny and seeded (`initializer_range` 0.2, so that generations are not degenerate).
"""

from __future__ import annotations

import pytest
import torch
from conftest import HEAD_DIM, HEADS, LM_VARIANTS, PAD, assert_close, make_lm, random_ids
from transformers import DynamicLayer

from fwp_hf import TOKEN_MIXERS, FastWeightCacheLayer, FWPForCausalLM

NEW_TOKENS = 8

pytestmark = pytest.mark.usefixtures("single_thread")


def prompt(length: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Prompt ids avoiding the pad id, so that every pad in a batch is a real pad."""
    return random_ids(batch, length, seed=seed, low=PAD + 1)


def generate(model: FWPForCausalLM, input_ids: torch.Tensor, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": PAD, **kwargs}
    with torch.no_grad():
        return model.generate(input_ids, **kwargs)


parametrize_variants = pytest.mark.parametrize("variant", list(LM_VARIANTS))


# ----------------------------------------------------------------------------------------------
# Cached decoding == uncached decoding
# ----------------------------------------------------------------------------------------------


@parametrize_variants
def test_greedy_generation_same_with_and_without_cache(variant):
    model = make_lm(variant)
    ids = prompt(11, seed=1, batch=2)
    cached = generate(model, ids, use_cache=True)
    uncached = generate(model, ids, use_cache=False)
    assert cached.shape == (2, 11 + NEW_TOKENS)
    assert torch.equal(cached[:, :11], ids)
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, 11:].flatten().tolist())) > 2, "degenerate generations prove little"


@parametrize_variants
def test_beam_search_same_with_and_without_cache(variant):
    model = make_lm(variant)
    ids = prompt(10, seed=2, batch=2)
    best = {cache: generate(model, ids, num_beams=3, use_cache=cache) for cache in (True, False)}
    assert torch.equal(best[True], best[False])
    assert best[True].shape == (2, 10 + NEW_TOKENS)

    all_beams = {
        cache: generate(model, ids, num_beams=3, num_return_sequences=3, use_cache=cache) for cache in (True, False)
    }
    assert all_beams[True].shape == (2 * 3, 10 + NEW_TOKENS)
    assert torch.equal(all_beams[True], all_beams[False])
    assert torch.equal(all_beams[True][::3], best[True]), "the first returned beam is the best one"
    assert len({tuple(row) for row in all_beams[True][:3].tolist()}) == 3, "the beams differ"


@parametrize_variants
def test_sampling_same_with_and_without_cache(variant):
    model = make_lm(variant)
    ids = prompt(9, seed=3, batch=2)
    samples = {}
    for cache in (True, False):
        torch.manual_seed(1234)
        samples[cache] = generate(model, ids, do_sample=True, top_k=10, use_cache=cache)
    assert torch.equal(samples[True], samples[False])
    assert not torch.equal(samples[True], generate(model, ids)), "sampling should not be greedy here"


# ----------------------------------------------------------------------------------------------
# Left-padded batches
# ----------------------------------------------------------------------------------------------


@parametrize_variants
def test_left_padded_batch_generates_like_each_prompt_alone(variant):
    model = make_lm(variant)
    prompts = [prompt(5, seed=4)[0], prompt(13, seed=5)[0]]  # 13 spans a chunk boundary
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), PAD)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1

    batch = generate(model, ids, attention_mask=mask)
    assert batch.shape == (2, length + NEW_TOKENS)
    for i, p in enumerate(prompts):
        alone = generate(model, p[None])
        assert torch.equal(batch[i, length:], alone[0, len(p):]), f"row {i}"


# ----------------------------------------------------------------------------------------------
# The cache that generate returns
# ----------------------------------------------------------------------------------------------


@parametrize_variants
def test_generate_returns_fixed_size_fast_weight_cache(variant):
    model = make_lm(variant)
    prompt_length = 12
    ids = prompt(prompt_length, seed=6, batch=2)
    out = generate(model, ids, return_dict_in_generate=True)
    sequences, cache = out.sequences, out.past_key_values
    # The last generated token is never fed back, so the cache has seen one token less.
    seen = prompt_length + NEW_TOKENS - 1
    assert cache.get_seq_length() == seen

    with torch.no_grad():
        reference = model(sequences[:, :-1], use_cache=True).past_key_values
    kinds = model.config.layer_attention_types
    assert len(cache.layers) == len(kinds)
    for idx, (kind, layer) in enumerate(zip(kinds, cache.layers)):
        assert layer.get_seq_length() == seen, f"layer {idx}"
        spec = TOKEN_MIXERS[kind]
        if not spec.holds_state:
            assert type(layer) is DynamicLayer
            assert layer.keys.shape == (2, model.config.num_key_value_heads, seen, model.config.softmax_head_dim)
            continue
        assert isinstance(layer, FastWeightCacheLayer), f"layer {idx} ({kind}) is {type(layer).__name__}"
        state = layer.state
        assert state.dim() == 4 and state.dtype == torch.float32
        assert state.shape == (2, HEADS, *spec.state_shape(model.config))
        value_dim = model.config.fast_weight.value_head_dim or HEAD_DIM
        assert state.shape[-1] == value_dim + int(spec.normalizes(model.config)), "d_value (+1: the normaliser column)"
        assert state.shape == reference.layers[idx].state.shape
        assert_close(state, reference.layers[idx].state, what=f"state of layer {idx} after generate")

    # Generation continues from the returned cache as if it had never stopped.
    # (An explicit mask: a generated token may equal the pad id, and generate would take it for padding.)
    mask = torch.ones_like(sequences)
    continued = generate(model, sequences, attention_mask=mask, past_key_values=cache, max_new_tokens=4)
    assert torch.equal(continued, generate(model, ids, max_new_tokens=NEW_TOKENS + 4))


def test_generate_computes_logits_of_the_last_position_only():
    """`generate` passes ``logits_to_keep=1``: the LM head never sees more than one position per sequence,
    also in the prefill of a long prompt (no prompt × vocabulary tensor), and the forward honours the argument."""
    model = make_lm("delta-dpfp")
    positions = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: positions.append(inputs[0].shape[1]))
    try:
        with torch.no_grad():
            model.generate(prompt(300, seed=0, batch=2), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                           pad_token_id=PAD)
    finally:
        hook.remove()
    assert positions == [1, 1, 1, 1]
    ids = prompt(20, seed=1)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        last = model(input_ids=ids, logits_to_keep=1).logits
        chosen = model(input_ids=ids, logits_to_keep=torch.tensor([3, 7])).logits
    assert last.shape == (1, 1, model.config.vocab_size) and chosen.shape == (1, 2, model.config.vocab_size)
    assert_close(last[:, 0], full[:, -1], what="logits_to_keep=1")  # one row vs all rows: matmul rounding may differ
    assert_close(chosen, full[:, [3, 7]], what="logits_to_keep as positions")
