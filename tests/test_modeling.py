"""Tests of the FWP language models (``fwp_hf.modeling_fwp``) on the Hugging Face stack.

Covered: Auto-class registration; the registry (every `TOKEN_MIXERS` entry builds its layer and a
cache of its declared state shape; `FastWeightCacheLayer` through transformers' cache API); the
loss, hidden-state and tuple outputs; tied and untied embeddings; gradient checkpointing; resizing
the vocabulary; save/load (also with a redrawn Performer projection and with the gated delta rule's
decay parameters, and with ``trust_remote_code`` in a process where ``fwp_hf`` cannot be imported);
bf16; the fixed-size fast-weight cache; prefill → decode and segment → segment continuity; right
and left padding; a few `transformers.Trainer` steps.

The variants come from `conftest.py` (derived from the registry): every attention type, every
feature map of the rules whose φ the config picks, and hybrids. Every model is tiny (the suite runs
on 2 CPU cores) and is built from a fixed seed.
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FAST_WEIGHT_LM_VARIANTS,
    FEATURE_MAP_LM_VARIANTS,
    HEADS,
    HIDDEN,
    LM_VARIANTS,
    RANDOM_FEATURE_LM_VARIANTS,
    TYPE_LM_VARIANTS,
    VOCAB,
    assert_close,
    fast_weight_states,
    lm_config,
    make_lm,
    random_ids,
    type_variant,
)
from isolation import run_without_fwp_hf
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, DynamicLayer
from transformers.cache_utils import LinearAttentionLayer

from fwp_hf import (
    FAST_WEIGHT_TYPES,
    MODEL_CODE_FILES,
    TOKEN_MIXERS,
    FastWeightCacheLayer,
    FWPConfig,
    FWPForCausalLM,
    FWPModel,
)
from fwp_hf.cache_fwp import prepare_fast_weight_cache, state_cache_layer
from fwp_hf.feature_maps_fwp import FWPFeatureMap
from fwp_hf.layers_fwp import MIXER_LAYERS, FWPBlock

pytestmark = pytest.mark.usefixtures("single_thread")

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def num_fast_weight_layers(model: FWPForCausalLM) -> int:
    return sum(TOKEN_MIXERS[kind].holds_state for kind in model.config.layer_attention_types)


def state_shape(config: FWPConfig, kind: str, batch: int) -> tuple[int, ...]:
    """``[B, H, d_key, d_value]`` of a layer of type `kind`, as its registry entry declares it."""
    return (batch, HEADS, *TOKEN_MIXERS[kind].state_shape(config))


@torch.no_grad()
def logits_of(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(input_ids, **kwargs).logits


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean shifted next-token cross-entropy of every row, -100 labels ignored."""
    token_losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    counts = (labels[:, 1:] != -100).sum(-1)
    return token_losses.sum(-1) / counts


def random_feature_maps(model: FWPForCausalLM) -> list[FWPFeatureMap]:
    """The feature maps of the model that hold a random projection ω (FAVOR+)."""
    return [m for m in model.modules() if isinstance(m, FWPFeatureMap) and m.spec.random_features]


# ----------------------------------------------------------------------------------------------
# Auto classes and outputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_auto_classes_build_fwp_models(variant):
    config = lm_config(variant)
    assert isinstance(config, FWPConfig) and config.model_type == "fwp"
    causal_lm = AutoModelForCausalLM.from_config(config)
    base = AutoModel.from_config(config)
    assert type(causal_lm) is FWPForCausalLM
    assert type(base) is FWPModel
    assert [layer.attention_type for layer in base.layers] == config.layer_attention_types
    ids = random_ids(2, 11)
    with torch.no_grad():
        assert base(ids).last_hidden_state.shape == (2, 11, HIDDEN)
        assert causal_lm(ids).logits.shape == (2, 11, VOCAB)


def test_blocks_are_fwp_blocks_and_do_not_split():
    model = make_lm("hybrid-all")
    assert model.config.model_type == "fwp"
    assert all(type(layer) is FWPBlock for layer in model.model.layers)
    assert set(model._no_split_modules) == {"FWPBlock"}


# ----------------------------------------------------------------------------------------------
# The registry: every entry builds, and its cache holds the state it declares
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TOKEN_MIXERS))
def test_every_registry_entry_builds_a_model_with_the_state_shape_it_declares(kind):
    spec = TOKEN_MIXERS[kind]
    model = make_lm(type_variant(kind))
    config = model.config
    assert config.layer_attention_types == [kind] * config.num_hidden_layers
    for layer in model.model.layers:
        assert type(layer.mixer) is MIXER_LAYERS[spec.layer]
        for gate in ("A_log", "dt_bias"):  # a decay gate brings its per-head parameters
            assert hasattr(layer.mixer, gate) == ("log_decay" in spec.gates), gate
        if getattr(layer.mixer, "feature_map", None) is not None:
            # d_key of the declared state is the width φ really has
            width = layer.mixer.feature_map(torch.zeros(1, config.num_attention_heads, 1, config.head_dim)).shape[-1]
            assert spec.key_dim(config) == width

    cache = DynamicCache()
    with torch.no_grad():
        model(random_ids(2, 13), past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 13
    for idx, layer in enumerate(cache.layers):
        if spec.holds_state:
            # the layer the registry entry asks for (a softmax-window entry's also carries its window)
            assert type(layer) is type(state_cache_layer(kind)), f"layer {idx}"
            assert isinstance(layer, FastWeightCacheLayer)
            assert tuple(layer.state.shape) == state_shape(config, kind, 2)
            assert layer.state.dtype == torch.float32
        else:
            assert spec.state_shape(config) is None
            assert type(layer) is DynamicLayer and layer.keys.shape[2] == 13


def test_fast_weight_cache_works_through_transformers_cache_api():
    """An all-fast-weight cache: transformers' `get_recurrent_state(i)` reads each layer's state and
    `get_seq_length()` counts tokens (transformers' own linear-attention layers do not)."""
    model = make_lm("hybrid", attention_type=list(FAST_WEIGHT_TYPES))
    ids = random_ids(2, 12)
    cache = DynamicCache()
    with torch.no_grad():
        model(ids[:, :11], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == 11
        assert all(isinstance(layer, LinearAttentionLayer) for layer in cache.layers)
        states = [cache.get_recurrent_state(i) for i in range(len(cache.layers))]
        for idx, (kind, state) in enumerate(zip(model.config.layer_attention_types, states)):
            assert state is cache.layers[idx].state
            assert tuple(state.shape) == state_shape(model.config, kind, 2)

        model(ids[:, 11:], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == 12
        whole = model(ids, use_cache=True).past_key_values
    for idx in range(len(cache.layers)):
        assert cache.get_recurrent_state(idx) is not states[idx], "a new state per step"
        assert_close(cache.get_recurrent_state(idx), whole.get_recurrent_state(idx), what=f"state of layer {idx}")

    # A state written through transformers' API is what the next step reads: zeroed states make the
    # next token's logits those of the token alone. (A softmax-window layer's cache also holds the window's
    # keys and values, which that API does not reach: they are emptied first.)
    for layer in cache.layers:
        if getattr(layer, "holds_window", False):
            layer.reset_rows(torch.ones(2, dtype=torch.bool))
    for idx in range(len(cache.layers)):
        zeros = torch.zeros_like(cache.get_recurrent_state(idx))
        cache.update_recurrent_state(zeros, idx)
        assert cache.get_recurrent_state(idx) is zeros
    token = random_ids(2, 1, seed=9)
    assert_close(logits_of(model, token, past_key_values=cache), logits_of(model, token), what="from zeroed states")
    cache.reset()
    assert cache.get_seq_length() == 0
    assert all(cache.get_recurrent_state(i) is None for i in range(len(cache.layers)))


@pytest.mark.parametrize("variant", ["delta-dpfp", "hybrid"])
def test_loss_is_shifted_cross_entropy_ignoring_minus_100(variant):
    model = make_lm(variant)
    ids = random_ids(2, 19)
    labels = ids.clone()
    labels[0, 3:7] = -100
    labels[1, -4:] = -100
    labels[1, 0] = -100  # the first label is never predicted anyway
    with torch.no_grad():
        out = model(ids, labels=labels)
    logits = out.logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert_close(out.loss, expected, what="loss")
    # The shift matters: the unshifted cross-entropy is a different number.
    unshifted = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    assert not torch.allclose(out.loss, unshifted)


@pytest.mark.parametrize("variant", ["fast_weights", "hybrid"])
def test_hidden_states_and_tuple_outputs(variant):
    model = make_lm(variant)
    ids = random_ids(2, 13)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hidden = out.hidden_states
        assert len(hidden) == model.config.num_hidden_layers + 1
        assert all(h.shape == (2, 13, HIDDEN) for h in hidden)
        assert torch.equal(hidden[0], model.get_input_embeddings()(ids))
        assert_close(model.lm_head(hidden[-1]), out.logits, what="logits from the last hidden state")
        assert not torch.allclose(hidden[1], hidden[0])

        loss_tuple = model(ids, labels=ids, return_dict=False)
        assert isinstance(loss_tuple, tuple)
        assert torch.equal(loss_tuple[0], model(ids, labels=ids).loss)
        assert torch.equal(loss_tuple[1], out.logits)
        logits_tuple = model(ids, return_dict=False, use_cache=False)
        assert isinstance(logits_tuple, tuple)
        assert torch.equal(logits_tuple[0], out.logits)


# ----------------------------------------------------------------------------------------------
# Embeddings: tying, resizing
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_tied_and_untied_embeddings_save_and_load(tie, tmp_path):
    model = make_lm("delta-elu", tie_word_embeddings=tie)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (embedding.data_ptr() == head.data_ptr()) is tie
    if not tie:
        assert not torch.equal(embedding, head)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    loaded_embedding, loaded_head = loaded.get_input_embeddings().weight, loaded.get_output_embeddings().weight
    assert loaded.config.tie_word_embeddings is tie
    assert (loaded_embedding.data_ptr() == loaded_head.data_ptr()) is tie
    assert torch.equal(loaded_embedding, embedding)
    assert torch.equal(loaded_head, head)
    ids = random_ids(1, 12)
    assert torch.equal(logits_of(loaded, ids), logits_of(model, ids))


def test_resize_token_embeddings():
    model = make_lm("hybrid")
    new_size = VOCAB + 16
    ids = torch.tensor([[1, 5, new_size - 1, VOCAB, 7, 3]])
    with pytest.raises(ValueError):
        model(ids)
    old_embedding = model.get_input_embeddings().weight.detach().clone()

    model.resize_token_embeddings(new_size)
    assert model.config.vocab_size == new_size
    assert model.get_input_embeddings().weight.shape == (new_size, HIDDEN)
    assert model.get_output_embeddings().weight.shape == (new_size, HIDDEN)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert torch.equal(model.get_input_embeddings().weight[:VOCAB], old_embedding)
    out = model(ids, labels=ids)
    assert out.logits.shape == (1, 6, new_size)
    assert torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------------------
# Training: gradient checkpointing
# ----------------------------------------------------------------------------------------------


def loss_and_grads(model: FWPForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "variant, overrides",
    [(name, {}) for name in LM_VARIANTS] + [(name, {"performer_redraw": True}) for name in RANDOM_FEATURE_LM_VARIANTS],
)
def test_gradient_checkpointing_gives_same_loss_and_gradients(variant, overrides):
    # With performer_redraw the recomputation redraws ω again: checkpointing restores the RNG state,
    # so it must draw the same ω (both runs start from the same seed).
    model = make_lm(variant, **overrides).train()
    ids = random_ids(2, 21)
    mixer_calls = []
    model.model.layers[0].mixer.register_forward_hook(lambda *args: mixer_calls.append(1))

    torch.manual_seed(5)
    loss, grads = loss_and_grads(model, ids)
    assert len(mixer_calls) == 1
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    mixer_calls.clear()
    torch.manual_seed(5)
    checkpointed_loss, checkpointed_grads = loss_and_grads(model, ids)
    assert len(mixer_calls) == 2, "with checkpointing the mixer runs again in the backward pass"

    assert_close(checkpointed_loss, loss, what="loss")
    assert grads.keys() == checkpointed_grads.keys()
    assert "model.layers.0.mixer.o_proj.weight" in grads
    for name, grad in grads.items():
        assert_close(checkpointed_grads[name], grad, rtol=1e-4, what=name)


# ----------------------------------------------------------------------------------------------
# Serialization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_save_and_load_gives_identical_logits(variant, tmp_path):
    model = make_lm(variant)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is FWPForCausalLM
    assert not loaded.training
    assert loaded.config.layer_attention_types == model.config.layer_attention_types
    ids = random_ids(2, 19)
    assert torch.equal(logits_of(loaded, ids), logits_of(model, ids))
    loaded_state = loaded.state_dict()
    for name, tensor in model.state_dict().items():  # parameters and buffers (ω of FAVOR+)
        assert torch.equal(loaded_state[name], tensor), name


def test_save_writes_exactly_the_model_code_files(tmp_path):
    make_lm("hybrid-all").save_pretrained(tmp_path)
    assert sorted(path.name for path in tmp_path.glob("*.py")) == sorted(MODEL_CODE_FILES)


@pytest.mark.parametrize("kind", [kind for kind, spec in TOKEN_MIXERS.items() if "log_decay" in spec.gates])
def test_decay_parameters_are_initialised_and_saved(kind, tmp_path):
    """A learned decay's per-head A_log and dt_bias start as in Gated DeltaNet (A ∈ [1, 16],
    softplus(dt_bias) ∈ [1e-3, 0.1]) and reload unchanged (not re-initialised)."""
    model = make_lm(type_variant(kind))
    mixers = [layer.mixer for layer in model.model.layers]
    for mixer in mixers:
        a = mixer.A_log.detach().exp()
        dt = F.softplus(mixer.dt_bias.detach())
        assert mixer.A_log.shape == mixer.dt_bias.shape == (HEADS,)
        assert bool(((a >= 1 - 1e-5) & (a <= 16 + 1e-4)).all()), a
        assert bool(((dt >= 1e-4) & (dt <= 0.1 + 1e-6)).all()), dt
    assert not torch.equal(mixers[0].A_log, mixers[1].A_log), "drawn per layer"
    with torch.no_grad():  # a trained value, not the init: a reload must not re-draw it
        for mixer in mixers:
            mixer.A_log.add_(0.5)
            mixer.dt_bias.sub_(0.25)
    ids = random_ids(2, 19)
    logits = logits_of(model, ids)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for mixer, loaded_layer in zip(mixers, loaded.model.layers):
        assert torch.equal(loaded_layer.mixer.A_log, mixer.A_log)
        assert torch.equal(loaded_layer.mixer.dt_bias, mixer.dt_bias)
    assert torch.equal(logits_of(loaded, ids), logits)


@pytest.mark.parametrize("variant", RANDOM_FEATURE_LM_VARIANTS)
def test_save_and_load_keeps_a_redrawn_performer_projection(variant, tmp_path):
    model = make_lm(variant, performer_redraw=True)
    feature_maps = random_feature_maps(model)
    assert feature_maps
    for feature_map in feature_maps:
        assert torch.equal(feature_map.projection, feature_map.initial_weights()["projection"])
    model.train()
    model(random_ids(1, 9))  # a training forward redraws ω
    model.eval()
    redrawn = [feature_map.projection.clone() for feature_map in feature_maps]
    for feature_map, projection in zip(feature_maps, redrawn):
        assert not torch.equal(projection, feature_map.initial_weights()["projection"])
    ids = random_ids(2, 17)
    logits = logits_of(model, ids)
    # Eval forwards do not redraw.
    for feature_map, projection in zip(feature_maps, redrawn):
        assert torch.equal(feature_map.projection, projection)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for feature_map, projection in zip(random_feature_maps(loaded), redrawn, strict=True):
        assert torch.equal(feature_map.projection, projection)
    assert torch.equal(logits_of(loaded, ids), logits)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    model_dir, ids_path, out_path = sys.argv[1:4]
    ids = torch.load(ids_path)
    causal_lm = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        result = {
            "logits": causal_lm(ids).logits,
            "hidden": base(ids).last_hidden_state,
            "classes": [type(causal_lm).__name__, type(base).__name__],
            "modules": [type(causal_lm).__module__, type(base).__module__],
        }
    torch.save(result, out_path)
    """
)


def test_remote_code_round_trip_without_fwp_hf(tmp_path):
    model = make_lm("hybrid-all")  # one layer of every registered type
    model_dir = tmp_path / "checkpoint"
    model.save_pretrained(model_dir)

    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_fwp.FWPConfig",
        "AutoModel": "modeling_fwp.FWPModel",
        "AutoModelForCausalLM": "modeling_fwp.FWPForCausalLM",
    }
    assert sorted(path.name for path in model_dir.glob("*.py")) == sorted(MODEL_CODE_FILES)

    ids = random_ids(2, 19)
    torch.save(ids, tmp_path / "ids.pt")
    proc = run_without_fwp_hf(
        REMOTE_SCRIPT, [str(model_dir), "ids.pt", "out.pt"], cwd=tmp_path, extra_env={"HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = torch.load(tmp_path / "out.pt")
    assert result["classes"] == ["FWPForCausalLM", "FWPModel"]
    assert all(not module.startswith("fwp_hf") for module in result["modules"]), result["modules"]
    with torch.no_grad():
        assert torch.equal(result["logits"], model(ids).logits)
        assert torch.equal(result["hidden"], model.model(ids).last_hidden_state)


# ----------------------------------------------------------------------------------------------
# Precision and cache size
# ----------------------------------------------------------------------------------------------


def _to_fp32(value):
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


@pytest.mark.parametrize("variant", FAST_WEIGHT_LM_VARIANTS)
def test_bf16_forward_keeps_fp32_states(variant):
    """A bf16 model keeps fp32 fast-weight states, and every block computes in bf16 what it computes in
    fp32 from the same input. (Compared block by block: end to end, bf16 rounding compounds over the
    layers of a deep hybrid and is amplified where a normalised read divides two tiny numbers.)"""
    model = make_lm(variant)
    reference = copy.deepcopy(model)
    model.to(torch.bfloat16)
    ids = random_ids(2, 19)
    block_calls = []
    hooks = [
        block.register_forward_hook(lambda _, args, kwargs, out: block_calls.append((args, kwargs, out)),
                                    with_kwargs=True)
        for block in model.model.layers
    ]
    with torch.no_grad():
        out = model(ids, use_cache=True)
    for hook in hooks:
        hook.remove()
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits).all()

    states = fast_weight_states(out.past_key_values)
    assert len(states) == num_fast_weight_layers(model)
    reference_cache = prepare_fast_weight_cache(None, model.config.layer_attention_types, use_cache=True)
    assert len(block_calls) == len(reference.model.layers)
    for idx, ((args, kwargs, (output, _)), block) in enumerate(zip(block_calls, reference.model.layers)):
        assert output.dtype == torch.bfloat16
        kwargs = {**_to_fp32(kwargs), "past_key_values": reference_cache}
        with torch.no_grad():
            expected, _ = block(args[0].float(), **kwargs)  # (hidden states, attention weights)
        assert_close(output.float(), expected, rtol=0.05, what=f"bf16 block {idx}")
    for idx, state in states.items():
        assert state.dtype == torch.float32, f"layer {idx}"
        assert_close(state, reference_cache.layers[idx].state, rtol=0.05, what=f"bf16 state of layer {idx}")


@pytest.mark.parametrize("variant", FAST_WEIGHT_LM_VARIANTS)
def test_fast_weight_cache_has_a_fixed_size(variant):
    model = make_lm(variant)
    sizes = {}
    for length in (10, 40):
        with torch.no_grad():
            cache = model(random_ids(2, length), use_cache=True).past_key_values
        states = fast_weight_states(cache)
        assert len(states) == num_fast_weight_layers(model)
        for idx, state in states.items():
            kind = model.config.layer_attention_types[idx]
            assert tuple(state.shape) == state_shape(model.config, kind, 2), f"layer {idx} ({kind})"
            assert state.dtype == torch.float32
            assert cache.layers[idx].get_seq_length() == length
        sizes[length] = {idx: state.numel() * state.element_size() for idx, state in states.items()}
    assert sizes[10] == sizes[40]


# ----------------------------------------------------------------------------------------------
# Continuity: prefill → decode, segment → segment
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_prefill_then_decode_matches_full_forward(variant):
    model = make_lm(variant)
    total, decode_steps = 22, 5
    ids = random_ids(2, total)
    full = logits_of(model, ids, use_cache=False)

    with torch.no_grad():
        out = model(ids[:, : total - decode_steps], use_cache=True)
        pieces = [out.logits]
        cache = out.past_key_values
        for t in range(total - decode_steps, total):
            out = model(
                ids[:, t : t + 1],
                past_key_values=cache,
                attention_mask=torch.ones(2, t + 1, dtype=torch.long),
                position_ids=torch.full((2, 1), t),
                use_cache=True,
            )
            pieces.append(out.logits)
            cache = out.past_key_values
    assert cache.get_seq_length() == total
    assert_close(torch.cat(pieces, dim=1), full, what="prefill + decode vs full forward")


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_segment_streaming_matches_one_forward(variant):
    model = make_lm(variant)
    ids = random_ids(2, 30)
    split = 13  # both segments span chunk boundaries and end mid-chunk
    with torch.no_grad():
        whole = model(ids, use_cache=True)
        first = model(ids[:, :split], use_cache=True)
        # The mask may cover only the new tokens: the past counts as real tokens.
        new_tokens_mask = torch.ones(2, ids.shape[1] - split, dtype=torch.long)
        second = model(
            ids[:, split:], attention_mask=new_tokens_mask, past_key_values=first.past_key_values, use_cache=True
        )
    assert_close(second.logits, whole.logits[:, split:], what="second segment")
    whole_states = fast_weight_states(whole.past_key_values)
    for idx, state in fast_weight_states(second.past_key_values).items():
        assert_close(state, whole_states[idx], what=f"final state of layer {idx}")


# ----------------------------------------------------------------------------------------------
# Padding
# ----------------------------------------------------------------------------------------------


def pad_batch(rows: list[torch.Tensor], side: str, junk_seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1D id tensors to one length with random junk tokens (so that masking, not a zero pad
    embedding, must keep them out) and return ``(input_ids, attention_mask)``."""
    length = max(len(row) for row in rows)
    junk = random_ids(len(rows), length, seed=junk_seed)
    ids = junk.clone()
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_right_padding_matches_unpadded_samples(variant):
    model = make_lm(variant)
    rows = [random_ids(1, 21, seed=3)[0], random_ids(1, 12, seed=4)[0]]
    ids, mask = pad_batch(rows, "right")
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, labels=labels, use_cache=True)
    batch_losses = per_sample_loss(batch.logits, labels)
    batch_states = fast_weight_states(batch.past_key_values)

    token_losses, token_count = 0.0, 0
    for i, row in enumerate(rows):
        with torch.no_grad():
            alone = model(row[None], labels=row[None], use_cache=True)
        n = len(row)
        assert_close(batch.logits[i, :n], alone.logits[0], what=f"logits of sample {i}")
        assert_close(batch_losses[i], alone.loss, what=f"loss of sample {i}")
        for idx, state in fast_weight_states(alone.past_key_values).items():
            assert_close(batch_states[idx][i], state[0], what=f"state of layer {idx}, sample {i}")
        token_losses += alone.loss * (n - 1)
        token_count += n - 1
    assert_close(batch.loss, token_losses / token_count, what="batch loss = mean over real tokens")


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_left_padding_matches_unpadded_samples(variant):
    model = make_lm(variant)
    rows = [random_ids(1, 9, seed=5)[0], random_ids(1, 20, seed=6)[0]]
    ids, mask = pad_batch(rows, "left")
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=True)
    batch_states = fast_weight_states(batch.past_key_values)
    for i, row in enumerate(rows):
        with torch.no_grad():
            alone = model(row[None], use_cache=True)
        n = len(row)
        assert_close(batch.logits[i, -n:], alone.logits[0], what=f"logits of sample {i}")
        for idx, state in fast_weight_states(alone.past_key_values).items():
            assert_close(batch_states[idx][i], state[0], what=f"state of layer {idx}, sample {i}")


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------


def repetitive_dataset(num_samples: int, length: int, seed: int = 11) -> list[dict[str, torch.Tensor]]:
    """Windows of one fixed cycle through 16 tokens, at random offsets: the next token is a fixed
    function of the current one, learnable in a few steps (the untrained loss is ~ln(VOCAB))."""
    cycle = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))[:16]
    offsets = torch.randint(0, len(cycle), (num_samples,), generator=torch.Generator().manual_seed(seed))
    positions = (offsets[:, None] + torch.arange(length)) % len(cycle)
    return [{"input_ids": cycle[row], "labels": cycle[row].clone()} for row in positions]


@pytest.mark.parametrize("variant", TYPE_LM_VARIANTS)
def test_trainer_reduces_the_loss(variant, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = make_lm(variant).train()
    dataset = repetitive_dataset(64, 24)
    eval_batch = repetitive_dataset(16, 24, seed=12)
    eval_ids = torch.stack([s["input_ids"] for s in eval_batch])

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = model(eval_ids, labels=eval_ids).loss.item()
        model.train()
        return loss

    initial = eval_loss()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 30
    assert logged[-1] < 0.7 * logged[0], logged
    assert eval_loss() < 0.7 * initial


@pytest.mark.parametrize("variant", FEATURE_MAP_LM_VARIANTS)
def test_recomputed_feature_maps_give_the_same_gradients(variant):
    """Training recomputes φ in the backward pass (activation memory); gradients must not change."""
    model = make_lm(variant).train()
    ids = random_ids(2, 19)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    recomputed = gradients()
    mixers = [layer.mixer for layer in model.model.layers if hasattr(layer.mixer, "_feature_map_and_normalize")]
    assert mixers
    for mixer in mixers:  # the plain path keeps φ's intermediates
        mixer._features = mixer._feature_map_and_normalize
    kept = gradients()
    assert len(recomputed) == len(kept)
    for a, b in zip(recomputed, kept):
        assert_close(a, b, what="gradient")
