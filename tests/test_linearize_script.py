"""`scripts/linearize.py` end to end (`fwp_hf.training.linearize`), and the Llama teacher of `train_lm.py`.

A tiny Llama teacher is trained with `train_lm.py --architecture llama` on the first Penn Treebank
sentences; `linearize.py` converts it (all-delta with Hedgehog features; a hybrid keeping layer 1 as
softmax; the from-scratch baseline) with a few steps per stage, and the outputs are checked: every
stage's perplexity reported and finite, attention transfer lowering every converted layer's MSE,
an ordinary FWP checkpoint with the teacher's tokenizer and a card naming the teacher, and clear
errors for a teacher of an unsupported family.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hub_server import HubServer
from isolation import run_without_fwp_hf
from test_lm_hub import REPO_ROOT, hub_env
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from fwp_hf import MODEL_CODE_FILES, FWPForCausalLM
from fwp_hf.training.linearize import main as linearize_main
from fwp_hf.training.lm import main as train_lm_main
from fwp_hf.training.lm_data import builtin_corpus_texts

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ptb")
    files = {"train": folder / "train.txt", "validation": folder / "valid.txt"}
    files["train"].write_text("\n".join(builtin_corpus_texts("train")[:1500]) + "\n")
    files["validation"].write_text("\n".join(builtin_corpus_texts("validation")[:150]) + "\n")
    return files


def flags(**values) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


COMMON = dict(block_size=32, per_device_train_batch_size=4, per_device_eval_batch_size=8, max_eval_samples=8,
              report_to="none", disable_tqdm="true", seed=0, logging_steps=1)


@pytest.fixture(scope="module")
def teacher(data_files, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("teacher")
    metrics = train_lm_main(flags(
        output_dir=output_dir, train_file=data_files["train"], validation_file=data_files["validation"],
        architecture="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        config_overrides=json.dumps({"num_key_value_heads": 2}), tokenizer_vocab_size=400, max_steps=30,
        learning_rate=3e-3, do_train="true", do_eval="true", save_strategy="no", streaming_eval_max_tokens=600,
        sample_max_new_tokens=3, **COMMON,
    ))
    assert math.isfinite(metrics["eval_perplexity"])
    assert "eval_carried_state_perplexity" not in metrics  # a KV cache grows: no carried-state evaluation
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_key_value_heads == 2
    card = (output_dir / "README.md").read_text()
    assert "softmax-attention baseline, not a fast weight programmer" in card
    return output_dir


def run_linearize(teacher: Path, data_files, output_dir: Path, **values) -> dict:
    values = {**dict(teacher_model_name_or_path=teacher, output_dir=output_dir, train_file=data_files["train"],
                     validation_file=data_files["validation"], transfer_steps=12, max_steps=6, learning_rate=2e-3,
                     **COMMON), **values}
    return linearize_main(flags(**values))


def test_linearize_all_delta_then_fine_tune(teacher, data_files, tmp_path, capsys):
    output_dir = tmp_path / "student"
    results = run_linearize(teacher, data_files, output_dir, attention_type="delta", feature_map="hedgehog",
                            config_overrides=json.dumps({"chunk_size": 16}))
    stages = list(results["perplexity"])
    assert stages == ["teacher", "student after copying the teacher's weights", "after attention transfer",
                      "after fine-tuning"]
    assert all(math.isfinite(value) for value in results["perplexity"].values())
    before, after = results["layer_mse_before_transfer"], results["layer_mse_after_transfer"]
    assert len(before) == len(after) == 3 and all(a < b for a, b in zip(after, before)), (before, after)
    assert results["perplexity"]["after attention transfer"] < results["perplexity"][
        "student after copying the teacher's weights"]
    out = capsys.readouterr().out
    assert f"validation perplexity, after fine-tuning: {results['perplexity']['after fine-tuning']:.2f}" in out

    student = FWPForCausalLM.from_pretrained(output_dir)
    assert student.config.layer_attention_types == ["delta"] * 3
    assert student.config.fast_weight.feature_map == "hedgehog" and student.config.fast_weight.key_value_heads == 2
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher)
    # Fine-tuning trains everything (the embeddings moved: attention transfer froze them, release() gave them
    # back), but the embeddings started as the teacher's (not re-initialised).
    moved = (student.model.embed_tokens.weight - teacher_model.model.embed_tokens.weight).abs().max().item()
    assert 0 < moved < 0.05, moved
    text = "the company said"
    assert AutoTokenizer.from_pretrained(output_dir)(text)["input_ids"] == AutoTokenizer.from_pretrained(teacher)(
        text)["input_ids"]
    card = (output_dir / "README.md").read_text()
    assert str(teacher) in card and "attention transfer" in card and "fine-tuning" in card
    saved = json.loads((output_dir / "linearization_results.json").read_text())
    assert saved["perplexity"] == results["perplexity"]
    assert json.loads((output_dir / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]


def test_linearize_into_lolcats_window_layers(teacher, data_files, tmp_path):
    """`--attention_type hedgehog_window` (a softmax window narrower than the blocks, so the fast weights are read
    too): every stage runs, attention transfer lowers every layer's MSE and moves the window factors, and the saved
    student is an ordinary checkpoint with its window."""
    output_dir = tmp_path / "window"
    results = run_linearize(teacher, data_files, output_dir, attention_type="hedgehog_window",
                            config_overrides=json.dumps({"chunk_size": 16, "fast_weight": {"window_size": 8}}))
    assert all(math.isfinite(value) for value in results["perplexity"].values())
    before, after = results["layer_mse_before_transfer"], results["layer_mse_after_transfer"]
    assert len(before) == len(after) == 3 and all(a < b for a, b in zip(after, before)), (before, after)
    student = FWPForCausalLM.from_pretrained(output_dir)
    assert student.config.layer_attention_types == ["hedgehog_window"] * 3
    assert student.config.fast_weight.window_size == 8
    assert all(not torch.equal(layer.mixer.window_factors, torch.zeros(4)) for layer in student.model.layers)


def test_linearize_hybrid_keeps_a_softmax_layer_and_scratch_baseline(teacher, data_files, tmp_path):
    hybrid = run_linearize(teacher, data_files, tmp_path / "hybrid", attention_type="delta", feature_map="hedgehog",
                           keep_softmax_layers=1, max_steps=0)
    assert len(hybrid["layer_mse_before_transfer"]) == 2  # layers 0 and 2; layer 1 is the teacher's softmax layer
    student = FWPForCausalLM.from_pretrained(tmp_path / "hybrid")
    assert student.config.layer_attention_types == ["delta", "softmax", "delta"]
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher)
    assert torch.equal(student.model.layers[1].mixer.q_proj.weight,
                       teacher_model.model.layers[1].self_attn.q_proj.weight)
    # The teacher's q/k/v rows of a converted layer are untouched by attention transfer (only gates learn).
    width = student.model.layers[0].mixer.qkv_width
    teacher_qkv = torch.cat([teacher_model.model.layers[0].self_attn.get_submodule(p).weight
                             for p in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(student.model.layers[0].mixer.qkv_proj.weight[:width], teacher_qkv)

    scratch = run_linearize(teacher, data_files, tmp_path / "scratch", attention_type="delta", feature_map="hedgehog",
                            from_scratch="true")
    assert list(scratch["perplexity"]) == ["teacher", "student, random initialisation", "after 18 steps from scratch"]
    assert scratch["lm_steps"] == 18


def test_unsupported_teacher_gives_a_clear_error(tmp_path, data_files):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64))
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SystemExit, match=r"teacher model_type 'gpt2' is not supported; supported families: "
                                         r"llama, mistral, qwen2, qwen3"):
        run_linearize(tmp_path / "gpt2", data_files, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_lora_fine_tuning_trains_adapters_only_and_saves_a_plain_student(teacher, data_files, tmp_path):
    """`--finetune_lora_rank`: peft adapters on the mixers' projections, merged before saving: the embeddings and
    MLPs stay the teacher's, the projections move, and the folder is an ordinary FWP checkpoint."""
    output_dir = tmp_path / "lora"
    results = run_linearize(teacher, data_files, output_dir, attention_type="delta", feature_map="hedgehog",
                            transfer_steps=2, max_steps=4, finetune_lora_rank=4, learning_rate=1e-2)
    finetune = results["stages"]["fine-tuning"]
    student = FWPForCausalLM.from_pretrained(output_dir)
    assert finetune["lora_rank"] == 4 and 0 < finetune["trainable_parameters"] < student.num_parameters() / 5
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher)
    student_layer, teacher_layer = student.model.layers[0], teacher_model.model.layers[0]
    assert torch.equal(student.model.embed_tokens.weight, teacher_model.model.embed_tokens.weight)
    assert torch.equal(student_layer.mlp.down_proj.weight, teacher_layer.mlp.down_proj.weight)
    assert not torch.equal(student_layer.mixer.o_proj.weight, teacher_layer.self_attn.o_proj.weight)
    saved = set(safetensors.torch.load_file(output_dir / "model.safetensors"))
    assert not any("lora" in name or "base_model" in name for name in saved), sorted(saved)[:5]
    assert "LoRA adapters of rank 4" in (output_dir / "README.md").read_text()
    with pytest.raises(ValueError, match="--finetune_lora_rank must be >= 0"):
        run_linearize(teacher, data_files, tmp_path / "bad", finetune_lora_rank=-1)


def test_a_linearized_student_pushes_and_loads_from_the_hub_without_fwp_hf(teacher, data_files, tmp_path):
    """A tiny student, as the SmolLM2 students are shipped: pushed with its tokenizer, code and card, then loaded
    with trust_remote_code=True where fwp_hf is not installed; it generates the local student's tokens."""
    output_dir = tmp_path / "student"
    with HubServer() as hub:
        env = hub_env(tmp_path, hub.url)  # huggingface_hub reads the endpoint at import: a process of its own
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])
        values = {**dict(teacher_model_name_or_path=teacher, output_dir=output_dir, train_file=data_files["train"],
                         validation_file=data_files["validation"], attention_type="delta", feature_map="hedgehog",
                         transfer_steps=2, max_steps=2, push_to_hub="true", hub_model_id="tester/student"), **COMMON}
        run = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "linearize.py"), *flags(**values)],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"pushed to {hub.url}/tester/student/commit/" in run.stdout
        pushed = set(hub.repos["tester/student"].files)
        assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", *MODEL_CODE_FILES} <= pushed
        load = run_without_fwp_hf(GENERATE_SCRIPT, ["tester/student", "out.pt"], cwd=tmp_path, extra_env=env)
        assert load.returncode == 0, load.stderr[-4000:]
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules"), result["module"]
    local = FWPForCausalLM.from_pretrained(output_dir).eval()
    ids = AutoTokenizer.from_pretrained(output_dir)("the company said", return_tensors="pt")["input_ids"]
    expected = local.generate(ids, max_new_tokens=6, do_sample=False)
    assert result["tokens"] == expected[0].tolist()


GENERATE_SCRIPT = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

repo_id, out_path = sys.argv[1:3]
model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=False)
ids = tokenizer("the company said", return_tensors="pt")["input_ids"]
tokens = model.generate(ids, max_new_tokens=6, do_sample=False)[0].tolist()
torch.save({"tokens": tokens, "module": type(model).__module__}, out_path)
"""
