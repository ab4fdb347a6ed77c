"""Tests of the FWP encoder–decoder (`FWPForConditionalGeneration`).

Covered for every encoder attention type, both cross-attention types and a hybrid: Auto-class
construction; loss with padded sources and padded labels equals the per-sample unpadded loss; the
non-causal encoder (sum rules read the whole source); cached == uncached greedy and beam search;
save/load and the remote-code round trip without fwp_hf; bad input.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from isolation import run_without_fwp_hf
from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderCache

import fwp_hf  # noqa: F401 - registers the Auto classes
from fwp_hf import FWPForConditionalGeneration

PAD, EOS, START = 0, 1, 2
VOCAB = 60
BASE = dict(
    is_encoder_decoder=True, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_decoder_layers=3, num_attention_heads=4, chunk_size=4, performer_num_features=8, initializer_range=0.2,
    pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=START,
)
VARIANTS = {
    "softmax": dict(attention_type="softmax"),
    "linear": dict(attention_type="linear"),
    "performer": dict(attention_type="performer"),
    "dpfp": dict(attention_type="dpfp", dpfp_nu=2),
    "delta": dict(attention_type="delta"),
    "fast_weights": dict(attention_type="fast_weights"),
    "delta-linear-cross": dict(attention_type="delta", cross_attention_type="linear"),
    "hybrid": dict(attention_type=["softmax", "dpfp"], decoder_attention_type=["delta", "softmax", "fast_weights"],
                   cross_attention_type="linear"),
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_model(variant: str, seed: int = 0) -> FWPForConditionalGeneration:
    torch.manual_seed(seed)
    config = AutoConfig.for_model("fwp", **{**BASE, **VARIANTS[variant]})
    return AutoModelForSeq2SeqLM.from_config(config).eval()


def sources() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sources of lengths 9 and 5, right-padded (pad ids are random: only the mask may hide them)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_batch_loss_equals_each_sample_alone(variant):
    model = make_model(variant)
    ids, mask = sources()
    labels = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
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


@pytest.mark.parametrize("variant", ["linear", "performer", "dpfp", "softmax"])
def test_encoder_is_non_causal(variant):
    """Changing the last source token changes the encoder output at the first position."""
    model = make_model(variant)
    ids, _ = sources()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (VOCAB - 3) + 3
    with torch.no_grad():
        first = model.get_encoder()(ids).last_hidden_state[:, 0]
        second = model.get_encoder()(changed).last_hidden_state[:, 0]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("variant", ["delta", "fast_weights"])
def test_recurrent_encoders_run_left_to_right(variant):
    """The delta rule and Ba et al.'s memory have no order-free form: their encoders are causal."""
    model = make_model(variant)
    ids, _ = sources()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1 - 3) % (VOCAB - 3) + 3
    with torch.no_grad():
        first = model.get_encoder()(ids).last_hidden_state[:, :-1]
        second = model.get_encoder()(changed).last_hidden_state[:, :-1]
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_cached_equals_uncached(variant, num_beams):
    model = make_model(variant)
    ids, mask = sources()
    kwargs = dict(attention_mask=mask, max_new_tokens=7, num_beams=num_beams, do_sample=False)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert (cached[:, 0] == START).all()
    assert cached.shape[0] == 2 and cached.shape[1] > 2


@pytest.mark.parametrize("variant", ["delta", "delta-linear-cross", "hybrid"])
def test_batched_generation_equals_each_source_alone(variant):
    model = make_model(variant)
    ids, mask = sources()
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, min_new_tokens=6)
        for row, length in enumerate([9, 5]):
            alone = model.generate(ids[row : row + 1, :length], max_new_tokens=6, do_sample=False, min_new_tokens=6)
            assert torch.equal(batch[row, : alone.shape[1]], alone[0])


def test_cache_holds_encoder_once_and_fixed_size_decoder_states():
    model = make_model("hybrid")
    ids, mask = sources()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5,
                             return_dict_in_generate=True)
    cache = out.past_key_values
    assert isinstance(cache, EncoderDecoderCache)
    kinds = ["delta", "softmax", "fast_weights"]
    for layer, kind in zip(cache.self_attention_cache.layers, kinds):
        if kind == "softmax":
            assert layer.keys.shape[2] == cache.get_seq_length()
        else:
            assert layer.state.dtype == torch.float32 and layer.state.dim() == 4
    for layer in cache.cross_attention_cache.layers:  # linear cross-attention: S of the source, written once
        assert layer.state.shape == (2, 4, 8, 9) and layer.get_seq_length() == 9


def test_save_load_and_remote_code_round_trip(tmp_path):
    model = make_model("hybrid")
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_fwp_seq2seq.FWPForConditionalGeneration"
    assert config["auto_map"]["AutoModel"] == "modeling_fwp_seq2seq.FWPSeq2SeqModel"
    for name in ("modeling_fwp_seq2seq.py", "modeling_fwp.py", "configuration_fwp.py", "fast_weight_kernels.py"):
        assert (tmp_path / "ckpt" / name).is_file()
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
    model = make_model("delta")
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
        AutoConfig.for_model("fwp", **{**BASE, **overrides})


def test_bad_inputs_give_clear_errors():
    model = make_model("delta")
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
    config = AutoConfig.for_model("fwp", **{**BASE, "decoder_start_token_id": None})
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        FWPForConditionalGeneration(config)(ids, labels=ids[:, :3])
