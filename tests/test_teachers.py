"""Teachers from wherever a user has them (`fwp_hf.conversion.teachers`, `scripts/linearize.py`,
`scripts/prepare_teacher.py`): a folder, a llama.cpp GGUF file (given as a path or as
``--teacher_gguf_file``), with its tokenizer.

The GGUF files are written in the test by the `gguf` package's writer the way llama.cpp writes a
SmolLM2-style Llama (tests/gguf_fixture.py: q/k rows permuted, MLP matrices in Q4_1, byte-level BPE
vocabulary with ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` and a chat template). Expectations are
independent of the loader: the source model with the `gguf` package's own Q4_1 round trip of the
quantized tensors must give the same logits, and the source tokenizer the same ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from gguf_fixture import TEXT, dequantized_reference, tiny_llama_and_tokenizer, write_llama_gguf
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from fwp_hf import FWPForCausalLM
from fwp_hf.conversion.linearize import linearize_model
from fwp_hf.conversion.teachers import (
    TeacherNotFoundError,
    dequantized_teacher,
    load_teacher,
    resolve_teacher_source,
    teacher_facts,
)
from fwp_hf.conversion.teachers import main as prepare_teacher_main
from fwp_hf.training.linearize import main as linearize_main

pytestmark = pytest.mark.usefixtures("single_thread")

GGUF_NAME = "tiny-llama.Q4_1.gguf"


@pytest.fixture(scope="module")
def source():
    return tiny_llama_and_tokenizer()


@pytest.fixture(scope="module")
def gguf_path(source, tmp_path_factory) -> Path:
    model, tokenizer = source
    return write_llama_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / GGUF_NAME)


def ids_of(text: str, tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_gguf_teacher_is_the_dequantized_model_with_its_tokenizer(source, gguf_path):
    model, tokenizer = source
    teacher, teacher_tokenizer = load_teacher(gguf_path)
    ids = ids_of(TEXT[:300], tokenizer)
    assert teacher_tokenizer(TEXT[:300], add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert (teacher_tokenizer.eos_token, teacher_tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert teacher_tokenizer.chat_template == tokenizer.chat_template
    with torch.no_grad():
        expected = dequantized_reference(model)(ids).logits
        unquantized = model(ids).logits
        logits = teacher(ids).logits
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
    assert (logits - unquantized).abs().max() > 1e-2  # the Q4_1 weights are the teacher, not the source's
    # The same file named as folder + --teacher_gguf_file.
    same, _ = load_teacher(gguf_path.parent, gguf_file=GGUF_NAME)
    with torch.no_grad():
        assert torch.equal(same(ids).logits, logits)


def test_gguf_teacher_saves_as_an_ordinary_folder(source, gguf_path, tmp_path):
    """transformers leaves a GGUF model flagged as quantized (save_pretrained refuses it);
    `dequantized_teacher` / `scripts/prepare_teacher.py` give an ordinary folder that loads without gguf."""
    raw = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=GGUF_NAME, dtype=torch.float32)
    with pytest.raises(ValueError, match="not serializable"):
        raw.save_pretrained(tmp_path / "raw")
    plain = dequantized_teacher(raw)
    plain.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())

    folder = prepare_teacher_main(["--teacher_model_name_or_path", str(gguf_path), "--output_dir",
                                   str(tmp_path / "teacher")])
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = ids_of(TEXT[:200], source[1])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, raw(ids).logits, atol=1e-6)
    assert reloaded_tokenizer(TEXT[:200], add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert reloaded.config.tie_word_embeddings
    # The folder keeps what the GGUF metadata said (licence, quantization) in its card, for the students' cards.
    facts = teacher_facts(resolve_teacher_source(folder))
    assert facts == teacher_facts(resolve_teacher_source(gguf_path))
    assert (facts.license, facts.quantization, facts.origin) == ("apache-2.0", "GGUF Q4_1, dequantized to fp32",
                                                                 str(gguf_path))
    assert teacher_facts(resolve_teacher_source(tmp_path / "plain")).license is None  # no card: not stated
    with pytest.raises(SystemExit) as exit_info:  # never writes into a folder that holds something
        prepare_teacher_main(["--teacher_gguf_file", str(gguf_path), "--output_dir", str(folder)])
    assert exit_info.value.code == 2


def test_teacher_sources_and_missing_ones(gguf_path, tmp_path, monkeypatch):
    folder = resolve_teacher_source(gguf_path)
    assert (folder.name_or_path, folder.gguf_file) == (str(gguf_path.parent), GGUF_NAME)
    assert resolve_teacher_source(None, gguf_path) == folder
    assert resolve_teacher_source(gguf_path.parent, GGUF_NAME) == folder
    hub = resolve_teacher_source("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (hub.name_or_path, hub.gguf_file, hub.is_local) == ("HuggingFaceTB/SmolLM2-135M-Instruct", None, False)
    for missing in (tmp_path / "missing.gguf", tmp_path / "missing_folder", "./missing_folder", "a/b/c"):
        with pytest.raises(TeacherNotFoundError, match="not found"):
            load_teacher(missing)
    with pytest.raises(TeacherNotFoundError, match="teacher GGUF file not found: .*other.gguf"):
        load_teacher(gguf_path.parent, gguf_file="other.gguf")
    with pytest.raises(ValueError, match="already a GGUF file"):
        resolve_teacher_source(gguf_path, GGUF_NAME)
    monkeypatch.setitem(sys.modules, "gguf", None)  # the package not installed
    with pytest.raises(ImportError, match=r"pip install 'fwp-hf\[gguf\]'"):
        load_teacher(gguf_path)


def test_softmax_student_of_a_teacher_without_sliding_window_is_the_teacher(gguf_path):
    """attention_type="softmax" (every layer kept) on a Llama without a sliding window."""
    teacher, tokenizer = load_teacher(gguf_path)
    assert getattr(teacher.config, "sliding_window", None) is None
    student = linearize_model(teacher, attention_type="softmax").eval()
    assert student.config.softmax_attention.sliding_window is None
    ids = ids_of(TEXT[:200], tokenizer)
    with torch.no_grad():
        assert torch.allclose(student(ids).logits, teacher(ids).logits, atol=1e-5, rtol=1e-5)


COMMON = dict(block_size=32, per_device_train_batch_size=2, per_device_eval_batch_size=4, max_eval_samples=4,
              report_to="none", disable_tqdm="true", seed=0, logging_steps=1, transfer_steps=2, max_steps=1,
              learning_rate=1e-3, attention_type="delta", feature_map="hedgehog",
              config_overrides=json.dumps({"chunk_size": 16}))


def flags(**values) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("text")
    sentences = [sentence.strip() + "." for sentence in TEXT.split(".") if sentence.strip()]
    files = {"train": folder / "train.txt", "validation": folder / "validation.txt"}
    files["train"].write_text("\n".join(sentences * 3) + "\n")
    files["validation"].write_text("\n".join(sentences) + "\n")
    return files


@pytest.mark.parametrize("how", ["path", "teacher_gguf_file"])
def test_linearize_script_takes_a_gguf_teacher(how, gguf_path, text_files, tmp_path):
    teacher = (dict(teacher_model_name_or_path=gguf_path) if how == "path"
               else dict(teacher_model_name_or_path=gguf_path.parent, teacher_gguf_file=GGUF_NAME))
    output_dir = tmp_path / "student"
    results = linearize_main(flags(**teacher, output_dir=output_dir, train_file=text_files["train"],
                                   validation_file=text_files["validation"], save_stage_checkpoints=how == "path",
                                   **COMMON))
    assert results["teacher"] == str(gguf_path) and results["teacher_gguf"]
    # Per stage: steps, tokens (steps × batch 2 × block 32), wall time, peak memory.
    assert results["stages"]["attention transfer"]["tokens"] == 2 * 2 * 32
    assert results["stages"]["fine-tuning"]["tokens"] == 1 * 2 * 32
    assert all(cost["seconds"] > 0 and cost["peak_memory_mb"] > 0 for cost in results["stages"].values())
    for stage in ("after_copying", "after_transfer"):
        assert (output_dir / f"stage_{stage}" / "config.json").is_file() == (how == "path")
    if how == "path":  # the stage checkpoint after copying holds the teacher's q/k/v rows exactly
        copied = FWPForCausalLM.from_pretrained(output_dir / "stage_after_copying")
        teacher_model, _ = load_teacher(gguf_path)
        q = teacher_model.model.layers[0].self_attn.q_proj.weight
        assert torch.equal(copied.model.layers[0].mixer.qkv_proj.weight[: q.shape[0]], q)
    assert results["document_separator"] == "<|endoftext|>"  # not the chat turn end <|im_end|>
    student = FWPForCausalLM.from_pretrained(output_dir)
    assert student.config.layer_attention_types == ["delta", "delta"]
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    _, teacher_tokenizer = load_teacher(gguf_path)
    assert tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    assert tokenizer.chat_template == teacher_tokenizer.chat_template
    card = (output_dir / "README.md").read_text()
    # The card names the teacher's licence and quantization (from the GGUF metadata) in its text and metadata.
    assert str(gguf_path) in card and "weights: GGUF Q4_1, dequantized to fp32" in card
    assert "licence is **apache-2.0**" in card and ModelCard(card).data.license == "apache-2.0"
    assert results["teacher_license"] == "apache-2.0"


def test_linearize_script_names_a_missing_teacher(text_files, tmp_path):
    for teacher in (dict(teacher_model_name_or_path=tmp_path / "nowhere.gguf"),
                    dict(teacher_model_name_or_path=tmp_path / "no_folder"),
                    dict(teacher_gguf_file=tmp_path / "nowhere.gguf")):
        with pytest.raises(SystemExit, match="not found"):
            linearize_main(flags(**teacher, output_dir=tmp_path / "out", train_file=text_files["train"], **COMMON))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", ["smollm2_hedgehog", "smollm2_hybrid"])
def test_committed_smollm2_configs_parse_and_map_onto_smollm2(config):
    """The committed SmolLM2 configs parse, and their students map onto SmolLM2-135M's architecture
    (a config only: 30 layers, 9 query heads over 3 k/v heads, no sliding window)."""
    from transformers import LlamaConfig

    from fwp_hf.conversion.linearize import student_config_from_teacher
    from fwp_hf.training.linearize import parse_linearize_arguments

    path = Path(__file__).resolve().parents[1] / "configs" / "linearize" / f"{config}.yaml"
    args, data_args, training_args = parse_linearize_arguments([str(path)])
    assert data_args.train_file.endswith("sotu_train.jsonl") and training_args.per_device_train_batch_size == 1
    smollm2 = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                          rope_theta=100000.0, tie_word_embeddings=True)
    student = student_config_from_teacher(smollm2, args.attention_type, args.feature_map, args.keep_softmax_layers)
    kinds = student.layer_attention_types
    assert [i for i, kind in enumerate(kinds) if kind == "softmax"] == sorted(args.keep_softmax_layers)
    assert set(kinds) - {"softmax"} == {"hedgehog"} and student.softmax_attention.sliding_window is None
