"""`torch.export`, `torch.compile(fullgraph=True)`, compiled and exported generation, the `meta`
device and empty inputs.

Value checks (token ids in range, "is there any padding?") cannot run while a graph is traced or on
the meta device: they are skipped there and the padded path is taken unconditionally, which gives
the same result (`inputs_fwp.values_unreadable`). The export tests therefore trace with an all-ones
mask and then run the program on a padded batch: a program that baked in the no-padding shortcut
would get those rows wrong.

Compilation is slow on a CPU, so the compile tests use the "eager" dynamo backend (the graph capture,
which is what `fullgraph=True` checks) and one variant per attention type.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    HIDDEN,
    LM_VARIANTS,
    PAD,
    TYPE_LM_VARIANTS,
    assert_close,
    lm_config,
    make_lm,
    make_seq2seq,
    random_ids,
)
from transformers import AutoModelForCausalLM, CompileConfig, DynamicCache
from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

from fwp_hf.cache_fwp import FastWeightStateStep, FastWeightStaticCache

pytestmark = pytest.mark.usefixtures("single_thread")

NEW_TOKENS = 5


def left_padded_mask(batch: int, length: int, row: int, pads: int) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[row, :pads] = 0
    return mask


def logits(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def greedy(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD)


# ----------------------------------------------------------------------------------------------
# torch.export
# ----------------------------------------------------------------------------------------------


# One layer of every type in one model: one program covers every type's path without a mask.
EVERY_TYPE = "hybrid-all"


def test_export_with_input_ids_matches_eager():
    model = make_lm(EVERY_TYPE)
    exported = torch.export.export(model, (), {"input_ids": random_ids(2, 12), "use_cache": False}).module()
    other_ids = random_ids(2, 12, seed=5)
    assert_close(exported(input_ids=other_ids, use_cache=False).logits, logits(model, input_ids=other_ids),
                 what="exported with input_ids")


@pytest.mark.parametrize("variant", TYPE_LM_VARIANTS)
def test_export_with_attention_mask_matches_eager(variant):
    """Traced with a mask without padding, run with padding in either row."""
    model = make_lm(variant)
    traced_mask = torch.ones(2, 12, dtype=torch.long)
    exported = torch.export.export(
        model, (), {"input_ids": random_ids(2, 12), "attention_mask": traced_mask, "use_cache": False}
    ).module()
    other_ids = random_ids(2, 12, seed=5)
    for mask in (traced_mask, left_padded_mask(2, 12, 0, 4), left_padded_mask(2, 12, 1, 7)):
        assert_close(
            exported(input_ids=other_ids, attention_mask=mask, use_cache=False).logits,
            logits(model, input_ids=other_ids, attention_mask=mask),
            what=f"exported with attention_mask {mask.sum(-1).tolist()}",
        )


# ----------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)
# ----------------------------------------------------------------------------------------------


def compiled_matches_eager(variant: str, **inputs) -> None:
    torch._dynamo.reset()
    model = make_lm(variant)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises
    assert_close(logits(compiled, **inputs), logits(model, **inputs), what=f"compiled {variant}")


@pytest.mark.parametrize("variant", TYPE_LM_VARIANTS)
def test_compile_fullgraph_with_padding_matches_eager(variant):
    compiled_matches_eager(variant, input_ids=random_ids(2, 12), attention_mask=left_padded_mask(2, 12, 0, 3))


def test_compile_fullgraph_without_mask_matches_eager():
    compiled_matches_eager(EVERY_TYPE, input_ids=random_ids(2, 12))


@pytest.mark.parametrize("variant", ["delta", "hybrid"])
def test_seq2seq_compile_fullgraph_with_padded_source_matches_eager(variant):
    """The encoder's source mask goes through the same no-shortcut path while tracing."""
    torch._dynamo.reset()
    model = make_seq2seq(variant)
    source_mask = torch.ones(2, 9, dtype=torch.long)
    source_mask[1, 6:] = 0
    inputs = dict(input_ids=random_ids(2, 9), attention_mask=source_mask, decoder_input_ids=random_ids(2, 4))
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises
    assert_close(logits(compiled, **inputs), logits(model, **inputs), what=f"compiled seq2seq {variant}")


# ----------------------------------------------------------------------------------------------
# Compiled and exported generation (prefill + decoding) of a delta-rule model
# ----------------------------------------------------------------------------------------------


def test_generate_compiles_decoding_with_static_fast_weight_cache():
    """transformers' compiled generation: with a compileable cache other than `DynamicCache`,
    `generate` runs the prefill eagerly and every decoding step through `torch.compile`; the
    states stay in the buffers the cache allocated (updated in place)."""
    torch._dynamo.reset()
    model = make_lm("delta-dpfp")
    ids = random_ids(2, 10, low=PAD + 1)
    cache = FastWeightStaticCache(model.config, batch_size=2)
    assert cache.is_compileable and not DynamicCache().is_compileable
    buffers = [layer.recurrent_states[0].data_ptr() for layer in cache.layers]
    compile_config = CompileConfig(backend="eager", fullgraph=True, dynamic=True)
    compile_config._compile_all_devices = True  # compile on the CPU as well
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        compiled = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD,
                                  past_key_values=cache, compile_config=compile_config)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "generate did not compile the decoding steps"
    assert torch.equal(compiled, greedy(model, ids))
    assert [layer.recurrent_states[0].data_ptr() for layer in cache.layers] == buffers
    assert cache.get_seq_length() == 10 + NEW_TOKENS - 1


def test_compiled_decoding_step_is_compiled_once_with_fixed_shapes():
    """With fixed shapes (``dynamic=False``) the decoding step compiles once and is reused by every step and
    by a later `generate` with a fresh cache: nothing in it depends on a Python value that changes per token
    (the static layers count tokens in a tensor; `generate` hands a model whose every layer holds a state the
    new tokens' mask columns only), and a left-padded batch still generates as eagerly."""
    torch._dynamo.reset()
    model = make_lm("delta-dpfp")
    ids = random_ids(2, 10, low=PAD + 1)
    mask = left_padded_mask(2, 10, 1, 3)
    compile_config = CompileConfig(backend="eager", fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True
    torch._dynamo.utils.counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for new_tokens in (8, 12):
            cache = FastWeightStaticCache(model.config, batch_size=2)
            compiled = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=PAD, past_key_values=cache,
                                      compile_config=compile_config)
            eager = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   do_sample=False, pad_token_id=PAD)
            assert torch.equal(compiled, eager)
            assert cache.get_seq_length() == 10 + new_tokens - 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1, torch._dynamo.utils.counters["stats"]


def test_static_layer_counts_tokens_in_a_tensor():
    """A static layer's token count lives in a tensor on the state's device, updated in place (a dynamic
    layer's is a Python int); both read and set it through `seen_tokens`."""
    model = make_lm("delta-dpfp")
    cache = FastWeightStaticCache(model.config, batch_size=1)
    with torch.no_grad():
        model(input_ids=random_ids(1, 7), past_key_values=cache, use_cache=True)
    layer = cache.layers[0]
    assert torch.is_tensor(layer._token_count) and layer.seen_tokens == 7 == cache.get_seq_length()
    layer.seen_tokens = 3
    assert layer.seen_tokens == 3 and torch.is_tensor(layer._token_count)
    cache.reset()
    assert cache.get_seq_length() == 0
    dynamic = DynamicCache()
    with torch.no_grad():
        model(input_ids=random_ids(1, 7), past_key_values=dynamic, use_cache=True)
    assert dynamic.layers[0]._token_count == 7 and not torch.is_tensor(dynamic.layers[0]._token_count)


def test_masks_for_compiled_generation_keep_only_what_the_layers_read():
    """`create_masks_for_generate`: the new tokens' columns for a model whose every layer holds a state
    (fixed shape from step to step), the whole mask where softmax layers attend to past keys."""
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    step = torch.empty(2, 1, 0)
    assert torch.equal(make_lm("delta-dpfp").create_masks_for_generate(attention_mask=mask, inputs_embeds=step),
                       mask[:, -1:])
    assert make_lm("hybrid").create_masks_for_generate(attention_mask=mask, inputs_embeds=step) is mask


def test_generate_with_cache_implementation_static():
    """transformers' `StaticCache` gets static fast-weight state layers; softmax layers refuse its
    fixed-length key/value layers with a clear error (they generate with the default cache)."""
    model = make_lm("delta-dpfp")
    ids = random_ids(2, 10, low=PAD + 1)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=PAD,
                             cache_implementation="static", return_dict_in_generate=True)
    assert torch.equal(out.sequences, greedy(model, ids))
    assert all(layer.static and layer.owns_buffer[0] for layer in out.past_key_values.layers)
    with pytest.raises(ValueError, match="layer 1 is a fixed-length key/value layer .*'softmax' layers do not support"):
        greedy_static = make_lm("hybrid")
        greedy_static.generate(ids, max_new_tokens=2, pad_token_id=PAD, cache_implementation="static")


def test_exported_prefill_and_decode_steps_generate_like_eager():
    """transformers' export recipe cannot take a recurrent state (it registers `StaticCache` key/value
    buffers, and the model refuses key/value layers in fast-weight slots); `FastWeightStateStep` exports
    a prefill program and a one-token decoding program that pass the states explicitly."""
    model = make_lm("delta-dpfp")
    recipe_model = make_lm("delta-dpfp")
    recipe_model.generation_config.cache_implementation = "static"
    recipe = TorchExportableModuleForDecoderOnlyLM(recipe_model, batch_size=1, max_cache_len=16)
    with pytest.raises(ValueError, match="layer 0 holds keys/values but layer 0 is a 'delta' fast-weight layer"):
        recipe.export(input_ids=random_ids(1, 1), strict=False)

    ids = random_ids(2, 10, low=PAD + 1)
    step = FastWeightStateStep(model)
    states = step.zero_states(2)
    prefill = torch.export.export(step, (ids, *states)).module()
    decode = torch.export.export(step, (ids[:, :1], *states)).module()
    out, *states = prefill(ids, *states)
    tokens = [ids]
    for _ in range(NEW_TOKENS):
        tokens.append(out[:, -1].argmax(-1, keepdim=True))
        out, *states = decode(tokens[-1], *states)
    assert torch.equal(torch.cat(tokens, dim=1), greedy(model, ids))

    with pytest.raises(ValueError, match="layer 1 is 'softmax'"):
        FastWeightStateStep(make_lm("hybrid"))


def test_state_step_of_grouped_heads_with_short_convolutions_carries_windows_of_the_right_width():
    """The explicit states of a model with short convolutions include each layer's window, as wide as the
    fused q/k/v it convolves (with grouped k/v heads narrower than heads × (2·d_k + d_v)); a step from the
    zero states equals the plain forward, and stepping on equals the longer forward."""
    model = make_lm("delta-silu", fast_weight_key_value_heads=2)
    step = FastWeightStateStep(model)
    ids = random_ids(2, 10, low=PAD + 1)
    states = step.zero_states(2)
    with torch.no_grad():
        out, *after = step(ids[:, :6], *states)
        last, *_ = step(ids[:, 6:], *after)
        full = model(ids).logits
    assert [tuple(t.shape) for t in after] == [tuple(t.shape) for t in states]
    conv_channels = model.config.fast_weight.short_conv_channels(model.config.num_attention_heads,
                                                                 model.config.head_dim)
    assert states[1].shape[1] == conv_channels == model.model.layers[0].mixer.qkv_width
    assert_close(out, full[:, :6], what="prefill from zero states")
    assert_close(last, full[:, 6:], what="continued from the returned states")


# ----------------------------------------------------------------------------------------------
# The static fast-weight cache and autograd
# ----------------------------------------------------------------------------------------------


def test_static_cache_keeps_cached_forward_differentiable():
    """In a forward that needs gradients the static cache stores the state by reference (a copy into
    its buffer would cut the graph); the next step without gradients goes into a fresh buffer and
    leaves that state, which autograd may still need, untouched. Values and gradients are those of
    the default cache."""
    model = make_lm("delta-dpfp")
    ids = random_ids(2, 10)

    def two_steps(cache):
        model.zero_grad()
        model(ids[:, :9], past_key_values=cache, use_cache=True)
        out = model(ids[:, 9:], past_key_values=cache, use_cache=True).logits
        out.square().sum().backward()
        return out.detach(), model.model.embed_tokens.weight.grad.clone()

    static = FastWeightStaticCache(model.config, batch_size=2)
    static_logits, static_grad = two_steps(static)
    dynamic_logits, dynamic_grad = two_steps(DynamicCache())
    assert_close(static_logits, dynamic_logits, what="logits")
    assert_close(static_grad, dynamic_grad, what="gradient through the cached state")

    kept = static.layers[0].state
    assert kept.requires_grad and not static.layers[0].owns_buffer[0]
    snapshot = kept.detach().clone()
    with torch.no_grad():
        model(ids[:, :1], past_key_values=static, use_cache=True)
    assert static.layers[0].owns_buffer[0] and static.layers[0].state is not kept
    assert torch.equal(kept.detach(), snapshot)


# ----------------------------------------------------------------------------------------------
# The meta device
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_forward_and_cached_step_run_on_meta_device(variant):
    """Model and inputs made on the meta device, the forward run outside that context: a tensor the
    model creates on the CPU by default (no ``device=``) meets a meta tensor and raises, as does a
    value read (``.item()``, ``bool(tensor)``)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(lm_config(variant)).eval()
        ids = torch.zeros(2, 12, dtype=torch.long)
        mask = torch.ones(2, 12, dtype=torch.long)
        step_mask = torch.ones(2, 13, dtype=torch.long)
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 12, model.config.vocab_size)
    step = model(input_ids=ids[:, :1], attention_mask=step_mask, past_key_values=out.past_key_values, use_cache=True)
    assert step.logits.device.type == "meta" and step.logits.shape == (2, 1, model.config.vocab_size)
    assert step.past_key_values.get_seq_length() == 13


# ----------------------------------------------------------------------------------------------
# Empty inputs
# ----------------------------------------------------------------------------------------------


def test_empty_input_is_a_clear_error():
    model = make_lm("delta-dpfp")
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(2, 0\)\)"):
        model(input_ids=torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"inputs_embeds is empty"):
        model(inputs_embeds=torch.zeros(2, 0, HIDDEN))
    seq2seq = make_seq2seq("delta")
    source, target = random_ids(2, 5), random_ids(2, 3)
    with pytest.raises(ValueError, match=r"^input_ids is empty"):
        seq2seq(input_ids=torch.zeros(2, 0, dtype=torch.long), decoder_input_ids=target)
    with pytest.raises(ValueError, match=r"^decoder_input_ids is empty"):
        seq2seq(input_ids=source, decoder_input_ids=torch.zeros(2, 0, dtype=torch.long))


REMOTE_CODE_COMPILED_GENERATION = """
import sys

import torch
from transformers import AutoModelForCausalLM, CompileConfig

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
from fwp_hf import FastWeightStaticCache  # imported after the remote-code load: a different cache class
from fwp_hf.compat_fwp import generate_cache_kwargs

ids = torch.tensor([[5, 6, 7, 8, 9]])
compile_config = CompileConfig(backend="eager", fullgraph=True, dynamic=False)
compile_config._compile_all_devices = True
cache = FastWeightStaticCache(model.config, batch_size=1)
with torch.no_grad():
    compiled = model.generate(ids, max_new_tokens=4, do_sample=False, compile_config=compile_config,
                              **generate_cache_kwargs(cache))
    eager = model.generate(ids, max_new_tokens=4, do_sample=False)
assert torch.equal(compiled, eager), (compiled, eager)
print("same tokens")
"""


def test_compiled_generation_recipe_works_for_a_remote_code_model(tmp_path):
    """The README's compiled-generation recipe on a model loaded with trust_remote_code=True before
    `import fwp_hf`: the cache layers of the installed package are recognised by what they declare
    (`holds_fast_weight_state`), not by being the remote module's class."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    make_lm("delta-dpfp").save_pretrained(tmp_path / "ckpt")
    script = tmp_path / "run.py"
    script.write_text(REMOTE_CODE_COMPILED_GENERATION)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "same tokens" in run.stdout, run.stderr[-3000:]
