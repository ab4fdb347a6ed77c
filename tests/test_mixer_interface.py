"""The one mixer interface and the one stack loop, by their behaviour.

- Every registry type's mixer answers one call, ``mixer(MixerInputs(...)) -> (y, weights or None)``:
  weights exactly where the registry entry declares a T×T matrix, outputs that depend on earlier
  tokens and never on later ones.
- The registry entry picks the kernel (`TokenMixerSpec.kernel`): an entry without kernels says so.
- The decoder's cross-attention of every `CROSS_ATTENTION_TYPES` entry equals an independent float64
  computation from its own weights (softmax: ``softmax(q kᵀ/√d) v``; a sum rule: ``Σ_j φ(q)·φ(k_j) v_j /
  (Σ_j φ(q)·φ(k_j) + ε)``) over the unpadded source, also when later steps read the source's memory
  from the cache instead of the source.
- ``hidden_states`` / ``attentions`` / ``cross_attentions`` of the decoder-only model, the encoder and the
  decoder have the documented lengths and contents: the input of every block, then the final
  normalised output; one attention entry per layer.
"""

from __future__ import annotations

import pytest
import torch
from conftest import HIDDEN, assert_close, make_lm, make_seq2seq, random_ids, type_variant
from transformers.cache_utils import DynamicCache

from fwp_hf import CROSS_ATTENTION_TYPES, TOKEN_MIXERS
from fwp_hf.cache_fwp import prepare_fast_weight_cache
from fwp_hf.inputs_fwp import prepare_mixer_inputs
from fwp_hf.layers_fwp import MixerInputs, merge_heads, split_heads

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 1e-6  # the ε of the normalised read
LENGTH, CUT = 9, 5  # tokens per row; the first changed token of the "future changed" inputs


def eager(model):
    model.set_attn_implementation("eager")
    return model


def mixer_inputs(config, kind: str, hidden: torch.Tensor, **fields) -> MixerInputs:
    """The inputs a stack prepares for one layer of type `kind` (no padding, no cache)."""
    prepared = prepare_mixer_inputs(config, [kind], None, None, hidden, 0)
    return MixerInputs(hidden, **prepared, **fields)


# ----------------------------------------------------------------------------------------------
# One call for every mixer
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TOKEN_MIXERS))
@torch.no_grad()
def test_every_mixer_answers_one_call_with_its_output_and_weights_where_it_has_them(kind):
    model = eager(make_lm(type_variant(kind)))
    layer = model.model.layers[0]
    assert layer.attention_type == kind
    config, spec = model.config, TOKEN_MIXERS[kind]
    hidden = torch.randn(2, LENGTH, HIDDEN, generator=torch.Generator().manual_seed(0))
    y, weights = layer.mixer(mixer_inputs(config, kind, hidden, output_attentions=True))
    assert y.shape == hidden.shape and torch.isfinite(y).all()
    assert (weights is not None) == spec.has_attention_matrix
    if weights is not None:
        heads = config.softmax_attention.heads(config.num_attention_heads)
        assert weights.shape == (2, heads, LENGTH, LENGTH)
        assert_close(weights.sum(-1), torch.ones(2, heads, LENGTH), what="rows sum to 1")
    # without output_attentions the same output (eager softmax still hands its weights over, as
    # transformers' eager function does; the stack keeps them only when asked)
    y_plain, _ = layer.mixer(mixer_inputs(config, kind, hidden))
    assert_close(y_plain, y, what="output without weights")

    # causal: later tokens change nothing before them; earlier tokens reach the last one
    future_changed = hidden.clone()
    future_changed[:, CUT:] = torch.randn(2, LENGTH - CUT, HIDDEN, generator=torch.Generator().manual_seed(1))
    y_future, _ = layer.mixer(mixer_inputs(config, kind, future_changed))
    assert torch.equal(y_future[:, :CUT], y_plain[:, :CUT]), "a token saw a later one"
    past_changed = hidden.clone()
    past_changed[:, 0] += 1.0
    y_past, _ = layer.mixer(mixer_inputs(config, kind, past_changed))
    assert (y_past[:, -1] - y_plain[:, -1]).abs().max() > 1e-6, "the last token does not see the first"


def test_an_entry_without_kernels_says_so_when_asked_for_one():
    spec = next(spec for spec in TOKEN_MIXERS.values() if spec.chunk is None)
    with pytest.raises(ValueError, match=rf"attention type '{spec.name}' runs no fast-weight kernel"):
        spec.kernel(4)


@pytest.mark.parametrize("kind", [name for name, spec in TOKEN_MIXERS.items() if spec.holds_state])
def test_the_registry_picks_the_recurrent_kernel_for_one_token_and_the_chunkwise_one_for_more(kind):
    """Behaviour of the choice: one mixer fed token by token from its cache computes what it computes
    over the whole sequence at once (the two kernels the entry names, fed through one interface)."""
    model = make_lm(type_variant(kind))
    mixer, config = model.model.layers[0].mixer, model.config
    hidden = torch.randn(2, LENGTH, HIDDEN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole, _ = mixer(mixer_inputs(config, kind, hidden))
        cache = prepare_fast_weight_cache(None, [kind] * config.num_hidden_layers, True)
        # each token with what a stack prepares for it after t cached tokens (rotary positions where used)
        steps = [mixer(MixerInputs(hidden[:, t : t + 1], cache=cache,
                                   **prepare_mixer_inputs(config, [kind], None, None, hidden[:, t : t + 1], t)))[0]
                 for t in range(LENGTH)]
    assert_close(torch.cat(steps, dim=1), whole, what="token by token against the whole sequence")


# ----------------------------------------------------------------------------------------------
# Cross-attention through the registry
# ----------------------------------------------------------------------------------------------


def cross_attention_by_hand(cross, target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor):
    """``(output, weights)`` of a decoder's cross-attention in float64 from its own weights: softmax
    over the real source tokens, or the normalised read of φ (the layer's feature map, unshifted)."""
    heads = cross.num_heads
    q = split_heads(target.double() @ cross.q_proj.weight.double().T, heads)
    k = split_heads(source.double() @ cross.k_proj.weight.double().T, heads)
    v = split_heads(source.double() @ cross.v_proj.weight.double().T, heads)
    real = source_mask.bool()[:, None, None, :]
    if not TOKEN_MIXERS[cross.kind].holds_state:
        scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(~real, float("-inf"))
        weights = scores.softmax(-1)
    else:
        phi_q, phi_k = (cross.feature_map(x.float()).double() for x in (q, k))
        scores = (phi_q @ phi_k.transpose(-1, -2)) * real
        weights = scores / (scores.sum(-1, keepdim=True) + EPS)
    return merge_heads(weights @ v) @ cross.o_proj.weight.double().T, weights


@pytest.mark.parametrize("kind", CROSS_ATTENTION_TYPES)
@torch.no_grad()
def test_cross_attention_of_every_cross_attention_type_equals_an_independent_computation(kind):
    model = eager(make_seq2seq("hybrid", cross_attention_type=kind))
    cross = model.model.decoder.layers[0].cross_attn
    generator = torch.Generator().manual_seed(3)
    target, source = torch.randn(2, 6, HIDDEN, generator=generator), torch.randn(2, 7, HIDDEN, generator=generator)
    source_mask = torch.ones(2, 7)
    source_mask[1, -3:] = 0  # padded source tokens
    expected, expected_weights = cross_attention_by_hand(cross, target, source, source_mask)

    inputs = dict(encoder_hidden_states=source, encoder_token_mask=source_mask, output_attentions=True)
    y, weights = cross(MixerInputs(target, **inputs))
    assert_close(y.double(), expected, rtol=1e-5, what=f"{kind} cross-attention")
    assert (weights is not None) == TOKEN_MIXERS[kind].has_attention_matrix
    if weights is not None:
        assert_close(weights.double(), expected_weights, rtol=1e-5, what="cross-attention weights")

    # generation: the first step writes the source's memory into the cache, later steps only read it
    cache = prepare_fast_weight_cache(DynamicCache(), [kind] * model.config.num_decoder_layers, True)
    first, _ = cross(MixerInputs(target[:, :2], cache=cache, **inputs))
    later_inputs = {**inputs, "encoder_hidden_states": torch.zeros_like(source)}  # must not be read again
    later = [cross(MixerInputs(target[:, t : t + 1], cache=cache, **later_inputs))[0] for t in range(2, 6)]
    assert_close(torch.cat([first, *later], dim=1).double(), expected, rtol=1e-5, what="cached cross-attention")


# ----------------------------------------------------------------------------------------------
# One stack loop: hidden states and attentions of every stack
# ----------------------------------------------------------------------------------------------


def block_outputs(stack, run) -> list[torch.Tensor]:
    """The hidden states each block of `stack` returns while `run()` runs."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, args, out: outputs.append(out[0])) for layer in stack.layers]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def check_stack_outputs(stack, embeddings, block_out, hidden_states, attention_lists, attention_types, last):
    """``hidden_states``: the embeddings, every block's output but the last, then the final normalised
    output (``last``); every attention tuple has one entry per layer, weights exactly for layers with a
    T×T matrix."""
    layers = len(stack.layers)
    assert len(block_out) == layers
    assert len(hidden_states) == layers + 1
    assert torch.equal(hidden_states[0], embeddings)
    for i in range(1, layers):
        assert torch.equal(hidden_states[i], block_out[i - 1]), f"hidden state {i}"
    assert torch.equal(hidden_states[-1], last)
    assert_close(hidden_states[-1], stack.norm(block_out[-1]), what="the last entry is the normalised output")
    for attentions, kinds in zip(attention_lists, attention_types, strict=True):
        assert len(attentions) == layers
        for weights, kind in zip(attentions, kinds, strict=True):
            assert (weights is not None) == TOKEN_MIXERS[kind].has_attention_matrix, kind


@torch.no_grad()
def test_decoder_only_stack_returns_every_block_input_and_one_attention_entry_per_layer():
    model = eager(make_lm("hybrid"))
    assert {TOKEN_MIXERS[kind].has_attention_matrix for kind in model.config.layer_attention_types} == {True, False}
    ids = random_ids(2, LENGTH, low=3)
    out = {}
    block_out = block_outputs(
        model.model, lambda: out.update(o=model(ids, output_hidden_states=True, output_attentions=True))
    )
    out = out["o"]
    base = model.model(ids)
    check_stack_outputs(model.model, model.model.embed_tokens(ids), block_out, out.hidden_states, [out.attentions],
                        [model.config.layer_attention_types], base.last_hidden_state)
    # the config's defaults stand where the call says nothing; return_dict=False gives the same tuple entries
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    as_tuple = model(ids, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert len(as_tuple[-2]) == len(out.hidden_states) and len(as_tuple[-1]) == len(out.attentions)
    config_flags = eager(make_lm("hybrid", output_hidden_states=True, output_attentions=True))
    by_config = config_flags(ids)
    assert len(by_config.hidden_states) == len(out.hidden_states) and len(by_config.attentions) == len(out.attentions)


@torch.no_grad()
def test_encoder_and_decoder_stacks_return_every_block_input_and_per_layer_self_and_cross_attentions():
    model = eager(make_seq2seq("hybrid"))
    config = model.config
    source, target = random_ids(2, 7, low=3), random_ids(2, 4, seed=5, low=3)
    out, encoder_out = {}, []

    def run():
        out.update(o=model(source, decoder_input_ids=target, output_hidden_states=True, output_attentions=True))

    decoder_out = block_outputs(model.model.decoder,
                                lambda: encoder_out.extend(block_outputs(model.model.encoder, run)))
    out = out["o"]
    embed = model.get_input_embeddings()
    check_stack_outputs(model.model.encoder, embed(source), encoder_out, out.encoder_hidden_states,
                        [out.encoder_attentions], [config.layer_attention_types], out.encoder_last_hidden_state)
    decoder_last = model.model(source, decoder_input_ids=target).last_hidden_state
    check_stack_outputs(
        model.model.decoder, embed(target), decoder_out, out.decoder_hidden_states,
        [out.decoder_attentions, out.cross_attentions],
        [config.decoder_layer_attention_types, [config.cross_attention_type] * config.num_decoder_layers],
        decoder_last,
    )
    plain = model(source, decoder_input_ids=target)
    assert plain.encoder_hidden_states is None and plain.decoder_attentions is None and plain.cross_attentions is None

