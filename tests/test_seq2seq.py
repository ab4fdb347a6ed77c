"""Tests of the FWP encoder–decoder (`FWPForConditionalGeneration`).

Covered for every variant of `conftest.SEQ2SEQ_VARIANTS` (every registered type as encoder and
decoder, every cross-attention type, a hybrid): loss with padded sources and padded labels equals
the per-sample unpadded loss; cached == uncached greedy and beam search; a padded batch generates
what each source generates alone. Also: the encoder form each registry entry declares (order-free
entries see the whole source, left-to-right ones are causal); the cache; save/load and the
remote-code round trip without fwp_hf; bad configs and input.
"""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import HEADS, PAD, SEQ2SEQ_BASE, SEQ2SEQ_VARIANTS, START, VOCAB, make_seq2seq, random_ids
from isolation import run_without_fwp_hf
from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderCache

from fwp_hf import CROSS_ATTENTION_TYPES, SEQ2SEQ_MODEL_CODE_FILES, TOKEN_MIXERS, FWPForConditionalGeneration

ENCODER_FORMS = {
    form: [kind for kind, spec in TOKEN_MIXERS.items() if spec.encoder_form == form]
    for form in ("bidirectional", "left_to_right")
}

pytestmark = pytest.mark.usefixtures("single_thread")


def sources() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sources of lengths 9 and 5, right-padded (pad ids are random: only the mask may hide them)."""
    ids = random_ids(2, 9, seed=1, low=3)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("variant", SEQ2SEQ_VARIANTS)
def test_padded_batch_loss_equals_each_sample_alone(variant):
    model = make_seq2seq(variant)
    ids, mask = sources()
    labels = random_ids(2, 6, seed=2, low=3)
    labels[1, 4:] = -100
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, labels=labels)
        per_token = F.cross_entropy(batch.logits.transpose(1, 2), labels, reduction="none")
        for row, (length, target_length) in enumerate([(9, 6), (5, 4)]):
            alone = model(ids[row : row + 1, :length], labels=labels[row : row + 1, :target_length])
            torch.testing.assert_close(per_token[row, :target_length].mean(), alone.loss, rtol=2e-5, atol=2e-5)
            torch.testing.assert_close(batch.logits[row, :target_length], alone.logits[0], rtol=2e-5, atol=2e-5)
        expected = per_token[labels != -100].mean()
    torch.testing.assert_close(batch.loss, expected, rtol=1e-6, atol=1e-6)


def encoder_outputs_before_and_after_changing_the_last_token(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    model = make_seq2seq(kind)
    ids, _ = sources()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (VOCAB - 3) + 3
    with torch.no_grad():
        return model.get_encoder()(ids).last_hidden_state, model.get_encoder()(changed).last_hidden_state


def test_every_type_declares_an_encoder_form():
    assert sorted(kind for kinds in ENCODER_FORMS.values() for kind in kinds) == sorted(TOKEN_MIXERS)
    for kind in ENCODER_FORMS["bidirectional"]:  # an order-free form needs an order-free kernel or softmax
        assert TOKEN_MIXERS[kind].bidirectional is not None or not TOKEN_MIXERS[kind].holds_state, kind


@pytest.mark.parametrize("kind", ENCODER_FORMS["bidirectional"])
def test_bidirectional_encoders_see_the_whole_source(kind):
    """Changing the last source token changes the encoder output at the first position."""
    before, after = encoder_outputs_before_and_after_changing_the_last_token(kind)
    assert not torch.allclose(before[:, 0], after[:, 0])


@pytest.mark.parametrize("kind", ENCODER_FORMS["left_to_right"])
def test_left_to_right_encoders_are_causal(kind):
    """Recurrences with no order-free form (the delta rules, Ba et al.'s memory) read the source
    left to right: a later token changes no earlier position."""
    before, after = encoder_outputs_before_and_after_changing_the_last_token(kind)
    torch.testing.assert_close(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])


@pytest.mark.parametrize("variant", SEQ2SEQ_VARIANTS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_cached_equals_uncached(variant, num_beams):
    model = make_seq2seq(variant)
    ids, mask = sources()
    kwargs = dict(attention_mask=mask, max_new_tokens=7, num_beams=num_beams, do_sample=False)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == START).all()
    assert cached.shape[0] == 2 and cached.shape[1] > 2


@pytest.mark.parametrize("variant", SEQ2SEQ_VARIANTS)
def test_batched_generation_equals_each_source_alone(variant):
    model = make_seq2seq(variant)
    ids, mask = sources()
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        for row, length in enumerate([9, 5]):
            alone = model.generate(ids[row : row + 1, :length], max_new_tokens=6, do_sample=False, min_new_tokens=6)
            assert torch.equal(batch[row, : alone.shape[1]], alone[0])


def test_cache_holds_encoder_once_and_fixed_size_decoder_states():
    model = make_seq2seq("hybrid")
    ids, mask = sources()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                             return_dict_in_generate=True)
    cache = out.past_key_values
    assert isinstance(cache, EncoderDecoderCache)
    config = model.config
    kinds = config.decoder_layer_attention_types
    assert len(cache.self_attention_cache.layers) == len(kinds) == config.num_decoder_layers
    for layer, kind in zip(cache.self_attention_cache.layers, kinds):
        spec = TOKEN_MIXERS[kind]
        if not spec.holds_state:
            assert layer.keys.shape[2] == cache.get_seq_length()
        else:
            assert layer.state.dtype == torch.float32
            assert layer.state.shape == (2, HEADS, *spec.state_shape(config))
    cross = TOKEN_MIXERS[config.cross_attention_type]
    assert cross.holds_state
    for layer in cache.cross_attention_cache.layers:  # fast-weight cross-attention: S of the source, written once
        assert layer.state.shape == (2, HEADS, *cross.state_shape(config)) and layer.get_seq_length() == 9


def test_save_load_and_remote_code_round_trip(tmp_path):
    model = make_seq2seq("hybrid")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_fwp_seq2seq.FWPForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_fwp_seq2seq.FWPSeq2SeqModel"
    assert sorted(path.name for path in (tmp_path / "ckpt").glob("*.py")) == sorted(SEQ2SEQ_MODEL_CODE_FILES)
    ids, mask = sources()
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=6, num_beams=2)
        logits = model(ids, attention_mask=mask, decoder_input_ids=expected).logits
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids, attention_mask=mask, decoder_input_ids=expected).logits, logits)

    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        """
        import sys
        import torch
        from transformers import AutoModelForSeq2SeqLM
        model_dir, inputs_path, out_path = sys.argv[1:4]
        inputs = torch.load(inputs_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True).eval()
        with torch.no_grad():
            tokens = model.generate(inputs["ids"], attention_mask=inputs["mask"], max_new_tokens=6, num_beams=2)
            logits = model(inputs["ids"], attention_mask=inputs["mask"], decoder_input_ids=tokens).logits
        torch.save({"tokens": tokens, "logits": logits, "module": type(model).__module__}, out_path)
        """
    )
    proc = run_without_fwp_hf(script, [str(tmp_path / "ckpt"), "inputs.pt", "out.pt"], cwd=tmp_path,
                              extra_env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(tmp_path / "out.pt")
    assert not result["module"].startswith("fwp_hf")
    assert torch.equal(result["tokens"], expected)
    assert torch.equal(result["logits"], logits)


def test_trainer_style_decoder_inputs_from_labels():
    model = make_seq2seq("delta")
    labels = torch.tensor([[5, 6, 7, -100], [8, 9, -100, -100]])
    decoder_inputs = model.prepare_decoder_input_ids_from_labels(labels)
    assert decoder_inputs.tolist() == [[START, 5, 6, 7], [START, 8, 9, PAD]]


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(cross_attention_type="cosine"), "cross_attention_type"),
        (dict(num_decoder_layers=0), "num_decoder_layers"),
        (dict(decoder_attention_type=["delta"]), "decoder_attention_type"),
        (dict(decoder_attention_type="flash"), "decoder_attention_type"),
        (dict(attention_type=["delta", "softmax"], num_decoder_layers=3), r"attention_type \(used for the decoder"),
    ],
)
def test_bad_encoder_decoder_configs(overrides, field):
    with pytest.raises(ValueError, match=field):
        AutoConfig.for_model("fwp", **{**SEQ2SEQ_BASE, **overrides})


@pytest.mark.parametrize("kind", ["cosine", *(kind for kind in TOKEN_MIXERS if kind not in CROSS_ATTENTION_TYPES)])
def test_cross_attention_type_error_lists_exactly_the_cross_attention_types(kind):
    allowed = ", ".join(repr(name) for name in CROSS_ATTENTION_TYPES)
    # A registered type that cannot read a whole source is told apart from an unknown name.
    problem = "has no order-free form" if kind in TOKEN_MIXERS else "is unknown"
    with pytest.raises(ValueError, match=rf"cross_attention_type {kind!r} {problem}.*allowed: {re.escape(allowed)}$"):
        AutoConfig.for_model("fwp", **{**SEQ2SEQ_BASE, "cross_attention_type": kind})


def test_bad_inputs_give_clear_errors():
    model = make_seq2seq("delta")
    ids, mask = sources()
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch=2, past\+new tokens=9\]"):
        model(ids, attention_mask=mask[:, :4], decoder_input_ids=ids[:, :3])
    with pytest.raises(ValueError, match="decoder_input_ids must lie in"):
        model(ids, decoder_input_ids=torch.full((2, 3), VOCAB))
    with pytest.raises(ValueError, match="labels must have the shape"):
        model(ids, decoder_input_ids=ids[:, :3], labels=ids[:, :4])
    with pytest.raises(TypeError, match="EncoderDecoderCache"):
        from transformers import DynamicCache

        model(ids, decoder_input_ids=ids[:, :3], past_key_values=DynamicCache())
    config = AutoConfig.for_model("fwp", **{**SEQ2SEQ_BASE, "decoder_start_token_id": None})
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        FWPForConditionalGeneration(config)(ids, labels=ids[:, :3])
