"""`output_attentions` and the attention implementations (issue 14, item 1).

Softmax layers dispatch through transformers' attention interface: SDPA by default, or an eager
function (``attn_implementation="eager"``) that returns the attention weights ``[B, H, Tq, Tk]``.
Fast-weight layers have no T×T attention matrix: their entries are None, and a warning (once)
names them. Covered: the weights themselves (shape, rows sum to 1, causality, padded keys get zero
weight, and they reproduce the layer's output), eager == SDPA logits (full, padded, cached),
`set_attn_implementation`, the flags, the generate dict outputs (causal LM and encoder–decoder)
and the encoder–decoder's encoder/decoder/cross attentions.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import (
    HEADS,
    LM_VARIANTS,
    PAD,
    assert_close,
    layer_types,
    make_lm,
    make_seq2seq,
    random_ids,
)
from transformers import AutoModelForCausalLM
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging

from fwp_hf import TOKEN_MIXERS
from fwp_hf.layers_fwp import FWPSoftmaxAttention

pytestmark = pytest.mark.usefixtures("single_thread")

# Decoder-only variants with at least one softmax layer (one without a fixed-size state).
SOFTMAX_LM_VARIANTS = [
    name for name, settings in LM_VARIANTS.items()
    if any(not TOKEN_MIXERS[kind].holds_state for kind in layer_types(settings))
]
# `hybrid`: ["delta", "softmax"].
HYBRID = "hybrid"
SOFTMAX_ONLY = "softmax"


def has_matrix(kind: str) -> bool:
    return not TOKEN_MIXERS[kind].holds_state


def eager(model):
    model.set_attn_implementation("eager")
    return model


def left_padded(batch: int = 3, length: int = 9, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = random_ids(batch, length, seed=seed, low=PAD + 1)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, : 2 * row] = 0
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.fixture
def fresh_warnings():
    """transformers' `warning_once` caches messages process-wide: start each test with none seen."""
    hf_logging.warning_once.cache_clear()
    yield
    hf_logging.warning_once.cache_clear()


# ----------------------------------------------------------------------------------------------
# The weights
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_eager_weights_are_causal_distributions_that_ignore_padding():
    model = eager(make_lm(SOFTMAX_ONLY))
    ids, mask = left_padded()
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    batch, length = ids.shape
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    for weights in out.attentions:
        assert weights.shape == (batch, HEADS, length, length)
        assert_close(weights.sum(-1), torch.ones(batch, HEADS, length), what="rows sum to 1")
        assert torch.all(weights[..., future] == 0), "a query attends to a later key"
        for row in range(batch):
            real = mask[row].bool()
            # real queries give padded keys exactly zero weight
            assert torch.all(weights[row][:, real][..., ~real] == 0)
            assert torch.all(weights[row][:, real][..., real].sum(-1) > 0.999)
        assert (weights[..., ~future] > 0).float().mean() > 0.5, "most allowed keys get some weight"


@torch.no_grad()
def test_eager_weights_reproduce_the_layer_output():
    """The returned weights are the ones the layer used: softmax(QKᵀ)·V through o_proj gives its output."""
    model = eager(make_lm(SOFTMAX_ONLY))
    layer = model.model.layers[0]
    assert isinstance(layer.mixer, FWPSoftmaxAttention)
    ids = random_ids(2, 7)
    captured = {}
    layer.mixer.register_forward_hook(lambda module, args, kwargs_out: captured.update(out=kwargs_out))
    layer.mixer.v_proj.register_forward_hook(lambda module, args, out: captured.update(v=out))
    weights = model(ids, output_attentions=True).attentions[0]
    v = captured["v"].view(2, 7, HEADS, -1).transpose(1, 2)
    expected = layer.mixer.o_proj((weights @ v).transpose(1, 2).reshape(2, 7, -1))
    assert_close(captured["out"][0], expected, what="o_proj(weights · V)")


@pytest.mark.parametrize("variant", SOFTMAX_LM_VARIANTS)
@torch.no_grad()
def test_eager_and_sdpa_give_the_same_logits(variant):
    sdpa = make_lm(variant)
    assert sdpa.config._attn_implementation == "sdpa"
    model = eager(make_lm(variant))
    ids, mask = left_padded()
    assert_close(model(ids).logits, sdpa(ids).logits, what="no padding")
    assert_close(model(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, what="padded")
    # a cached continuation (past keys, one new token, then three)
    eager_out, sdpa_out = model(ids[:, :6], attention_mask=mask[:, :6]), sdpa(ids[:, :6], attention_mask=mask[:, :6])
    for start, stop in ((6, 7), (7, 9)):
        eager_out = model(ids[:, start:stop], attention_mask=mask[:, :stop], past_key_values=eager_out.past_key_values)
        sdpa_out = sdpa(ids[:, start:stop], attention_mask=mask[:, :stop], past_key_values=sdpa_out.past_key_values)
        assert_close(eager_out.logits, sdpa_out.logits, what=f"cached tokens {start}:{stop}")


def test_set_attn_implementation_switches_the_function(monkeypatch):
    model = make_lm(HYBRID)
    ids = random_ids(2, 6)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    model(ids)
    assert len(calls) == 1, "the softmax layer runs SDPA by default"
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    out = model(ids, output_attentions=True)
    assert len(calls) == 1, "eager attention must not call SDPA"
    assert out.attentions[1] is not None
    model.set_attn_implementation("sdpa")
    model(ids)
    assert len(calls) == 2


def test_from_config_with_eager_attention(fresh_warnings):
    model = AutoModelForCausalLM.from_config(make_lm(HYBRID).config, attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    assert model(random_ids(1, 5), output_attentions=True).attentions[1].shape == (1, HEADS, 5, 5)


def test_attention_flags_are_honest():
    model = make_lm(HYBRID)
    assert model._supports_sdpa and not model._supports_attention_backend
    for unsupported in ("flash_attention_2", "flex_attention"):
        with pytest.raises((ValueError, ImportError)):
            model.set_attn_implementation(unsupported)
        assert model.config._attn_implementation == "sdpa"
    seq2seq = make_seq2seq("softmax")
    assert type(seq2seq)._can_set_attn_implementation(), "transformers must see the seq2seq attention interface"
    seq2seq.set_attn_implementation("eager")
    assert seq2seq.model.decoder.layers[0].cross_attn.config._attn_implementation == "eager"


# ----------------------------------------------------------------------------------------------
# Fast-weight layers and SDPA: None, and said so
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_hybrid_returns_weights_for_softmax_layers_and_warns_once_for_the_others(fresh_warnings, caplog):
    model = eager(make_lm("hybrid-all"))
    kinds = model.config.layer_attention_types
    ids = random_ids(2, 6)
    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        for _ in range(2):
            out = model(ids, output_attentions=True)
            assert len(out.attentions) == len(kinds)
            for kind, weights in zip(kinds, out.attentions):
                if has_matrix(kind):
                    assert weights.shape == (2, HEADS, 6, 6), kind
                else:
                    assert weights is None, kind
    warnings = [r.getMessage() for r in caplog.records if "no T×T attention matrix" in r.getMessage()]
    assert len(warnings) == 1, warnings
    for i, kind in enumerate(kinds):
        assert (f"{i} ({kind})" in warnings[0]) == (not has_matrix(kind)), (i, kind, warnings[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        model(ids)
        assert model(ids).attentions is None
    assert not caplog.records, "nothing to say without output_attentions"


@torch.no_grad()
def test_sdpa_softmax_layers_warn_like_transformers_models(fresh_warnings):
    """transformers 5.23's SDPA function cannot return weights: it warns and returns None (as for Llama)."""
    model = make_lm(SOFTMAX_ONLY)
    sdpa_logger = hf_logging.get_logger("transformers.integrations.sdpa_attention")
    with CaptureLogger(sdpa_logger) as captured:
        out = model(random_ids(1, 5), output_attentions=True)
    assert out.attentions == (None, None)
    assert "does not support `output_attentions=True`" in captured.out


# ----------------------------------------------------------------------------------------------
# generate(return_dict_in_generate=True, output_attentions=True)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 2])
@torch.no_grad()
def test_generate_returns_per_step_attentions(num_beams, fresh_warnings):
    model = eager(make_lm(HYBRID))
    ids, mask = left_padded(batch=2, length=7)
    new = 4
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=num_beams,
        pad_token_id=PAD, return_dict_in_generate=True, output_attentions=True,
    )
    assert len(out.attentions) == new
    kinds = model.config.layer_attention_types
    rows = 2 * num_beams
    for step, per_layer in enumerate(out.attentions):
        assert len(per_layer) == len(kinds)
        query_length = 7 if step == 0 else 1
        for kind, weights in zip(kinds, per_layer):
            if not has_matrix(kind):
                assert weights is None
                continue
            assert weights.shape == (rows, HEADS, query_length, 7 + step)
            assert_close(weights.sum(-1), torch.ones(rows, HEADS, query_length))
            # the left padding of row 1 (2 tokens) gets no weight from its real queries
            assert torch.all(weights[num_beams:, :, -1, :2] == 0)


@torch.no_grad()
def test_seq2seq_attentions_and_generate_dict():
    model = eager(make_seq2seq("softmax"))
    config = model.config
    source, source_mask = left_padded(batch=2, length=6)
    source_mask = source_mask.flip(-1)  # right-padded source
    source = source.flip(-1)
    target = random_ids(2, 5, seed=4, low=PAD + 3)
    out = model(source, attention_mask=source_mask, decoder_input_ids=target, output_attentions=True)
    assert len(out.encoder_attentions) == config.num_hidden_layers
    assert len(out.decoder_attentions) == len(out.cross_attentions) == config.num_decoder_layers
    padded_source = ~source_mask.bool()
    for weights in out.encoder_attentions:  # non-causal: later keys are seen
        assert weights.shape == (2, HEADS, 6, 6)
        assert torch.all(weights[:, :, 0, 1:4] > 0)
        assert torch.all(weights[1][:, ~padded_source[1]][..., padded_source[1]] == 0)
    for weights in out.decoder_attentions:
        assert weights.shape == (2, HEADS, 5, 5)
        assert torch.all(weights[..., torch.ones(5, 5, dtype=torch.bool).triu(1)] == 0)
    for weights in out.cross_attentions:
        assert weights.shape == (2, HEADS, 5, 6)
        assert_close(weights.sum(-1), torch.ones(2, HEADS, 5))
        assert torch.all(weights[1][..., padded_source[1]] == 0)
    sdpa = make_seq2seq("softmax")
    assert_close(out.logits, sdpa(source, attention_mask=source_mask, decoder_input_ids=target).logits)

    new = 3
    gen = model.generate(
        source, attention_mask=source_mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
        return_dict_in_generate=True, output_attentions=True,
    )
    assert len(gen.encoder_attentions) == config.num_hidden_layers
    assert gen.encoder_attentions[0].shape == (2, HEADS, 6, 6)
    assert len(gen.decoder_attentions) == len(gen.cross_attentions) == new
    for step in range(new):
        assert [w.shape for w in gen.decoder_attentions[step]] == [(2, HEADS, 1, step + 1)] * config.num_decoder_layers
        assert [w.shape for w in gen.cross_attentions[step]] == [(2, HEADS, 1, 6)] * config.num_decoder_layers


@torch.no_grad()
def test_seq2seq_hybrid_gives_none_for_fast_weight_and_linear_cross_layers(fresh_warnings, caplog):
    model = eager(make_seq2seq("hybrid"))
    config = model.config
    source, target = random_ids(2, 6, low=PAD + 3), random_ids(2, 4, seed=5, low=PAD + 3)
    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        out = model(source, decoder_input_ids=target, output_attentions=True)
    for kind, weights in zip(config.layer_attention_types, out.encoder_attentions):
        assert (weights is not None) == has_matrix(kind), kind
    for kind, weights in zip(config.decoder_layer_attention_types, out.decoder_attentions):
        assert (weights is not None) == has_matrix(kind), kind
    assert not has_matrix(config.cross_attention_type)
    assert out.cross_attentions == (None,) * config.num_decoder_layers
    messages = " | ".join(r.getMessage() for r in caplog.records)
    for where in ("encoder layers", "decoder layers", "cross-attention layers"):
        assert f"{where} " in messages, messages
