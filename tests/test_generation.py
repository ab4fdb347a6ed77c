"""Tests of `generate` with FWP models (`GenerationMixin` and the fast-weight cache).

Covered, for every attention type (and every feature map of delta) and a hybrid model: greedy,
beam search and sampling give the same tokens with and without the cache; left-padded batched
generation gives every row the tokens of generating its prompt alone; the cache returned by
`generate` holds fixed-size fp32 fast-weight states equal to those of one forward pass, and
generation continues from it.

Models are tiny and seeded; `initializer_range` is raised to 0.2 so that generations are not
degenerate (with 0.02 a tied model just repeats its last input token).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicLayer

from fwp_hf import FastWeightCacheLayer, FWPForCausalLM

VOCAB = 64
HEADS = 4
HEAD_DIM = 8
PAD = 0
NEW_TOKENS = 8
RTOL = 2e-5

BASE_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=HEADS * HEAD_DIM,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    chunk_size=8,
    performer_num_features=8,
    initializer_range=0.2,
)

VARIANTS = {
    "softmax": dict(attention_type="softmax"),
    "linear": dict(attention_type="linear"),
    "linear-unnormalized": dict(attention_type="linear", attention_normalization=False),
    "performer": dict(attention_type="performer"),
    "dpfp": dict(attention_type="dpfp", dpfp_nu=2),
    "delta-elu": dict(attention_type="delta", feature_map="elu"),
    "delta-favor": dict(attention_type="delta", feature_map="favor"),
    "delta-dpfp": dict(attention_type="delta", feature_map="dpfp"),
    "fast_weights": dict(attention_type="fast_weights", fast_weights_inner_steps=2),
    "hybrid": dict(attention_type=["delta", "softmax"]),
    "hybrid-all": dict(attention_type=["fast_weights", "softmax", "performer"]),
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: the tensors are tiny, and on a busy 2-core machine two spinning OpenMP
    threads make every op up to 100× slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_model(variant: str, seed: int = 0) -> FWPForCausalLM:
    kwargs = {**BASE_CONFIG, **VARIANTS[variant]}
    if isinstance(kwargs["attention_type"], list):
        kwargs["num_hidden_layers"] = len(kwargs["attention_type"])
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model("fwp", **kwargs)).eval()


def prompt(length: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Prompt ids avoiding the pad id, so that every pad in a batch is a real pad."""
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def generate(model: FWPForCausalLM, input_ids: torch.Tensor, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": PAD, **kwargs}
    with torch.no_grad():
        return model.generate(input_ids, **kwargs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, what: str = "") -> None:
    """max |actual − expected| ≤ rtol · max |expected| (same shape and dtype)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= rtol * scale, f"{what}: max |diff| {err:.3g} > {rtol:g} × scale {scale:.3g}"


parametrize_variants = pytest.mark.parametrize("variant", list(VARIANTS))


# ----------------------------------------------------------------------------------------------
# Cached decoding == uncached decoding
# ----------------------------------------------------------------------------------------------


@parametrize_variants
def test_greedy_generation_same_with_and_without_cache(variant):
    model = make_model(variant)
    ids = prompt(11, seed=1, batch=2)
    cached = generate(model, ids, use_cache=True)
    uncached = generate(model, ids, use_cache=False)
    assert cached.shape == (2, 11 + NEW_TOKENS)
    assert torch.equal(cached[:, :11], ids)
    assert torch.equal(cached, uncached)
    assert len(set(cached[:, 11:].flatten().tolist())) > 2, "degenerate generations prove little"


@parametrize_variants
def test_beam_search_same_with_and_without_cache(variant):
    model = make_model(variant)
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
    model = make_model(variant)
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
    model = make_model(variant)
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
    model = make_model(variant)
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
        if kind == "softmax":
            assert type(layer) is DynamicLayer
            assert layer.keys.shape == (2, HEADS, seen, HEAD_DIM)
            continue
        assert isinstance(layer, FastWeightCacheLayer), f"layer {idx} ({kind}) is {type(layer).__name__}"
        state = layer.state
        assert state.dim() == 4 and state.dtype == torch.float32
        normalized_sum_rule = kind in ("linear", "performer", "dpfp") and model.config.attention_normalization
        assert state.shape[:2] == (2, HEADS)
        assert state.shape[-1] == HEAD_DIM + int(normalized_sum_rule), "d_value (+1: the normaliser column)"
        assert state.shape == reference.layers[idx].state.shape
        assert_close(state, reference.layers[idx].state, what=f"state of layer {idx} after generate")

    # Generation continues from the returned cache as if it had never stopped.
    continued = generate(model, sequences, past_key_values=cache, max_new_tokens=4)
    assert torch.equal(continued, generate(model, ids, max_new_tokens=NEW_TOKENS + 4))
