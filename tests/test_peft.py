"""PEFT LoRA on every attention type with no hand-written `target_modules`.

`FWPConfig` gives PEFT's default-target table an entry for model_type "fwp"
(`configuration_fwp.declare_peft_target_modules`), so ``get_peft_model(model, LoraConfig(task_type=...))``
works as for a built-in model type. Each test: LoRA lands on every linear projection of every token mixer
(and nowhere else), a training step moves the output, the saved adapter reloads onto a fresh base model
with the same logits, and the merged model computes what the adapter model computes.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft", reason="peft is not installed (the `test` extra installs it)")

from conftest import (  # noqa: E402
    SEQ2SEQ_VARIANTS,
    TYPE_LM_VARIANTS,
    assert_close,
    make_lm,
    make_seq2seq,
    random_ids,
    type_variant,
)
from isolation import run_without_fwp_hf  # noqa: E402

from fwp_hf import PEFT_TARGET_MODULES, TOKEN_MIXERS  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

MIXER_MODULES = ("mixer", "cross_attn")  # the token mixers of a block (self and, in decoders, cross)


def mixer_projections(model: nn.Module) -> set[str]:
    """Names of every `nn.Linear` inside a token mixer (self- or cross-attention) of `model`."""
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(f".{part}." in f".{name}." for part in MIXER_MODULES)
    }


def lora_wrapped(peft_model) -> set[str]:
    """Names (in the base model's naming) of the modules that carry a LoRA adapter."""
    prefix = "base_model.model."
    return {
        name[len(prefix):]
        for name, module in peft_model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }


def train_one_step(peft_model, batch: dict) -> None:
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    peft_model(**batch).loss.backward()
    optimizer.step()
    peft_model.eval()


def check_lora_round_trip(make_model, task_type: str, batch: dict, forward: dict, tmp_path) -> None:
    base = make_model()
    expected_targets = mixer_projections(base)
    with torch.no_grad():
        base_logits = base(**forward).logits
    peft_model = peft.get_peft_model(base, peft.LoraConfig(task_type=task_type, r=4, lora_alpha=8))
    assert lora_wrapped(peft_model) == expected_targets  # every mixer projection, no MLP, no lm_head
    with torch.no_grad():  # LoRA starts as the identity (B = 0)
        assert_close(peft_model(**forward).logits, base_logits, what="untrained adapter")

    train_one_step(peft_model, batch)
    with torch.no_grad():
        adapted_logits = peft_model(**forward).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-4, "the LoRA step did not change the model"

    peft_model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert set(saved["target_modules"]) == set(PEFT_TARGET_MODULES)
    reloaded = peft.PeftModel.from_pretrained(make_model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**forward).logits, adapted_logits, rtol=0, atol=0)

    merged = reloaded.merge_and_unload()
    assert not lora_wrapped_modules(merged)
    with torch.no_grad():
        assert_close(merged(**forward).logits, adapted_logits, what="merged")


def lora_wrapped_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)]


@pytest.mark.parametrize("variant", [*TYPE_LM_VARIANTS, "hybrid-fla"])
def test_lora_without_target_modules_trains_saves_reloads_and_merges(variant, tmp_path):
    ids = random_ids(2, 12, seed=3)
    check_lora_round_trip(
        lambda: make_lm(variant, seed=0),
        "CAUSAL_LM",
        batch=dict(input_ids=ids, labels=ids),
        forward=dict(input_ids=random_ids(2, 10, seed=4)),
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("variant", ["hybrid"])
def test_lora_on_the_encoder_decoder(variant, tmp_path):
    assert "hybrid" in SEQ2SEQ_VARIANTS
    source, target = random_ids(2, 9, seed=5, low=3), random_ids(2, 7, seed=6, low=3)
    check_lora_round_trip(
        lambda: make_seq2seq(variant, seed=0),
        "SEQ_2_SEQ_LM",
        batch=dict(input_ids=source, labels=target),
        forward=dict(input_ids=source, decoder_input_ids=target),
        tmp_path=tmp_path,
    )


def test_lora_on_the_fused_projection_also_moves_the_gate_rows():
    """`qkv_proj` holds q, k, v and the β / decay rows: LoRA's B·A updates all of them (README)."""
    model = make_lm(type_variant("gated_delta"))
    layer = model.model.layers[0].mixer
    assert layer.gates == ("beta", "log_decay")
    before = layer.qkv_proj.weight.detach().clone()
    peft_model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4))
    ids = random_ids(2, 12, seed=3)
    train_one_step(peft_model, dict(input_ids=ids, labels=ids))
    after = peft_model.merge_and_unload().model.layers[0].mixer.qkv_proj.weight
    gate_rows = slice(layer.qkv_width, layer.qkv_width + 2 * layer.num_heads)
    assert (after[gate_rows] - before[gate_rows]).abs().max() > 0
    assert (after[: layer.qkv_width] - before[: layer.qkv_width]).abs().max() > 0


def test_peft_target_modules_cover_every_registry_layer_class():
    """A new mixer layer class with a projection name outside `PEFT_TARGET_MODULES` fails here."""
    for name in TOKEN_MIXERS:
        model = make_lm(type_variant(name))
        leaf_names = {projection.rsplit(".", 1)[-1] for projection in mixer_projections(model)}
        assert leaf_names <= set(PEFT_TARGET_MODULES), (name, leaf_names)


REMOTE_CODE_LORA = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=2))
wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
                  and not n.endswith(("lora_A", "lora_B"))})
print("WRAPPED", ",".join(wrapped))
"""


def test_lora_defaults_reach_remote_code_checkpoints_without_fwp_hf(tmp_path):
    make_lm(type_variant("delta")).save_pretrained(tmp_path / "model")
    result = run_without_fwp_hf(REMOTE_CODE_LORA, [str(tmp_path / "model")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WRAPPED o_proj,qkv_proj" in result.stdout, result.stdout
