"""Tests of LM training (`fwp_hf.training.lm`, `scripts/train_lm.py`) and evaluation (`fwp_hf.training.lm_evaluation`).

Covered: a tiny end-to-end run (output folder, card metadata = measured metrics); an interrupted run
resumed from its last checkpoint reproduces the uninterrupted loss curve; corrupt and half-written
checkpoints, unknown config keys, missing/empty data files and unknown config overrides give clear
errors; carried-state evaluation equals one forward pass over the whole stream for every registered
type that keeps a fixed-size state (and is refused for the others); two processes through
`accelerate launch`. Models have ~30k parameters and data is the first 2000 Penn Treebank sentences; the built-in
Penn Treebank splits have the standard sizes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_lm, random_ids, type_variant
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from fwp_hf import MODEL_CODE_FILES, FWPConfig
from fwp_hf.token_mixers import ATTENTION_TYPES, TOKEN_MIXERS, describe_token_mixer
from fwp_hf.training.common import DATA_LAYOUT_FILE, write_atomically
from fwp_hf.training.lm import main, parse_lm_arguments, run_lm_training
from fwp_hf.training.lm_comparison import ComparisonArguments
from fwp_hf.training.lm_data import (
    builtin_corpus_texts,
    group_into_blocks,
    load_raw_lm_datasets,
    token_stream,
    tokenize_texts,
)
from fwp_hf.training.lm_evaluation import (
    losses_by_position,
    plot_perplexity_by_position,
    segment_perplexity,
    stream_token_losses,
)
from fwp_hf.training.tokenization import save_tokenizer, train_sentencepiece_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ptb")
    files = {"train": folder / "train.txt", "validation": folder / "valid.txt"}
    files["train"].write_text("\n".join(builtin_corpus_texts("train")[:2000]) + "\n")
    files["validation"].write_text("\n".join(builtin_corpus_texts("validation")[:200]) + "\n")
    tokenizer_dir = folder / "tokenizer"
    save_tokenizer(train_sentencepiece_tokenizer(builtin_corpus_texts("train")[:2000], vocab_size=400), tokenizer_dir)
    files["tokenizer"] = tokenizer_dir
    return files


def tiny_flags(data_files: dict[str, Path], output_dir: Path, **overrides) -> list[str]:
    values = dict(
        output_dir=output_dir,
        train_file=data_files["train"],
        validation_file=data_files["validation"],
        tokenizer_name=data_files["tokenizer"],
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        chunk_size=16,
        block_size=32,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_eval_samples=8,
        streaming_eval_max_tokens=1200,
        streaming_eval_num_streams=2,
        sample_max_new_tokens=5,
        learning_rate=3e-3,
        max_steps=4,
        report_to="none",
        disable_tqdm="true",
        do_train="true",
        do_eval="true",
        seed=0,
        logging_steps=1,
        save_strategy="no",
    )
    values.update(overrides)
    return [item for key, value in values.items() if value is not None for item in (f"--{key}", str(value))]


def test_train_lm_end_to_end_writes_a_hub_ready_folder(data_files, tmp_path, capfd, recwarn):
    output_dir = tmp_path / "run"
    metrics = main(tiny_flags(data_files, output_dir, tokenizer_name=None, tokenizer_vocab_size=400,
                              save_strategy="steps", save_steps=4))
    out, err = capfd.readouterr()
    assert f"validation perplexity: {metrics['eval_perplexity']:.2f}" in out
    assert "sample: the company said" in out
    # No noise a newcomer would stumble on: no pin_memory warning on a CPU, no stray transformers log line after
    # the sample; the carried-state number comes with why it may be higher; the folder says what is shared.
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]
    assert "setting up devices" not in (out + err).split("sample: ")[-1]
    assert "never saw an older state" in out.split("eval_carried_state_perplexity")[-1].split("sample:")[0]
    assert "checkpoint-*/ folders in it hold optimizer states for --resume_from_checkpoint and are not uploaded" in out
    assert json.loads((output_dir / "perplexity_by_position.json").read_text())["carried_state"]["num_streams"] == 2
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert metrics["eval_carried_state_tokens"] == metrics["eval_independent_segments_tokens"] > 1000

    for name in (
        "model.safetensors",
        "config.json",
        *MODEL_CODE_FILES,
        "tokenizer.json",
        "tokenizer_config.json",
        "sentencepiece.model",
        "README.md",
        "all_results.json",
        "trainer_state.json",
    ):
        assert (output_dir / name).is_file(), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_fwp.FWPForCausalLM"
    assert config["use_cache"] is True, "the Trainer's training-time use_cache=False leaked into the shipped config"
    assert (config["vocab_size"], config["pad_token_id"], config["eos_token_id"]) == (400, 0, 3)
    # lm-eval's context length (lm_eval.models.utils.resolve_max_length): the first non-None of the config's
    # n_positions / max_position_embeddings / n_ctx, then the tokenizer's model_max_length. No rotary layers:
    # max_position_embeddings is None, and the tokenizer says the trained block size (not lm-eval's 2048).
    assert config["max_position_embeddings"] is None
    assert AutoTokenizer.from_pretrained(output_dir).model_max_length == 32

    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "transformers"
    assert "fwp_hf" in card.data.tags and card.data.datasets == ["custom"]
    measured = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert measured["perplexity (validation, blocks of 32)"] == round(metrics["eval_perplexity"], 3)
    assert measured["perplexity (validation stream, state carried across segments of 32)"] == round(
        metrics["eval_carried_state_perplexity"], 3
    )
    assert "trust_remote_code=True" in card.text and "max_steps: 4" in card.text
    assert f"2 × delta ({describe_token_mixer(FWPConfig.from_pretrained(output_dir), 'delta')})" in card.text


class InterruptAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated interruption at step {self.step}")


def logged_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def test_interrupted_run_resumes_with_the_same_loss_curve(data_files, tmp_path):
    flags = dict(max_steps=6, save_strategy="steps", save_steps=3, do_eval="false")
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path / "full", **flags)))
    uninterrupted = logged_losses(tmp_path / "full")
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_lm_training(
            *parse_lm_arguments(tiny_flags(data_files, interrupted, **flags)), callbacks=[InterruptAtStep(4)]
        )
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == ["checkpoint-3"]
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, interrupted, resume_from_checkpoint="last", **flags)))
    resumed = logged_losses(interrupted)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step, loss in uninterrupted.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    assert len(set(uninterrupted.values())) > 1  # the curve moves: the comparison is not vacuous


def test_corrupt_or_half_written_checkpoints_give_clear_errors(data_files, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_lm_training(
        *parse_lm_arguments(
            tiny_flags(data_files, run_dir, max_steps=2, save_strategy="steps", save_steps=2, do_eval="false")
        )
    )
    good = run_dir / "checkpoint-2"
    assert json.loads((good / DATA_LAYOUT_FILE).read_text())["block_size"] == 32
    half = run_dir / "checkpoint-4"  # a run killed while writing its second checkpoint
    half.mkdir()
    shutil.copy(good / "config.json", half / "config.json")
    explicit = parse_lm_arguments(tiny_flags(data_files, run_dir, max_steps=6, resume_from_checkpoint=half))
    with pytest.raises(
        ValueError, match=r"checkpoint-4' is incomplete \(missing trainer_state.json.*model.safetensors"
    ):
        run_lm_training(*explicit)
    # "last" skips the half-written newest checkpoint, saying so, and resumes from the complete one.
    args = parse_lm_arguments(tiny_flags(data_files, run_dir, max_steps=3, resume_from_checkpoint="last",
                                         do_eval="false", sample_max_new_tokens=1))
    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        run_lm_training(*args)
    assert re.search(r"skipping checkpoint \S*checkpoint-4: .*incomplete \(missing trainer_state.json", caplog.text)
    assert "resuming from" in caplog.text and "checkpoint-2, the newest complete checkpoint" in caplog.text
    assert sorted(logged_losses(run_dir)) == [1, 2, 3]  # steps 1-2 from checkpoint-2's state, then step 3

    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = parse_lm_arguments(tiny_flags(data_files, run_dir, max_steps=6, resume_from_checkpoint=corrupt))
    with pytest.raises(ValueError, match="model.safetensors cannot be read"):
        run_lm_training(*args)
    (corrupt / "trainer_state.json").write_text("{ half a json")
    with pytest.raises(ValueError, match="trainer_state.json is not valid JSON"):
        run_lm_training(*args)
    shutil.rmtree(corrupt)
    shutil.copytree(good, corrupt)
    (corrupt / "optimizer.pt").write_bytes(b"")  # killed while torch.save wrote it
    with pytest.raises(ValueError, match=r"corrupt'?: optimizer.pt cannot be read .*resume from an earlier checkpoint"):
        run_lm_training(*args)
    args = parse_lm_arguments(tiny_flags(data_files, tmp_path / "fresh", resume_from_checkpoint="last"))
    with pytest.raises(ValueError, match="has no checkpoint-\\* folder"):
        run_lm_training(*args)
    (tmp_path / "broken").mkdir()
    shutil.copytree(half, tmp_path / "broken" / "checkpoint-4")
    args = parse_lm_arguments(tiny_flags(data_files, tmp_path / "broken", resume_from_checkpoint="last"))
    with pytest.raises(ValueError, match="no checkpoint in .* can be resumed from: checkpoint directory .*incomplete"):
        run_lm_training(*args)


def test_write_atomically_keeps_the_old_file_when_the_writer_dies(tmp_path):
    target = tmp_path / "state.pt"
    write_atomically(target, lambda temporary: torch.save({"step": 1}, temporary))
    assert torch.load(target, weights_only=True) == {"step": 1}

    def dies_halfway(temporary):
        Path(temporary).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt  # Ctrl-C (or a kill) while writing

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, dies_halfway)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary left behind


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_type": "dpfp"}, r"attention_type: 'linear' → 'dpfp'"),
        ({"num_attention_heads": 4}, r"num_attention_heads: 2 → 4"),
        ({"config_overrides": '{"scale_queries": true}'}, r"scale_queries: False → True"),
        ({"block_size": 16}, r"block_size: 32 → 16"),
        ({"max_train_samples": 3}, r"max_train_samples: None → 3"),
    ],
)
def test_resume_refuses_another_model_meaning_or_data_layout(data_files, tmp_path, change, message):
    flags = dict(attention_type="linear", max_steps=1, save_strategy="steps", save_steps=1, do_eval="false",
                 sample_max_new_tokens=1)
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path, **flags)))
    resumed = {**flags, "max_steps": 2, "resume_from_checkpoint": "last", **change}
    with pytest.raises(ValueError,
                       match=r"resuming from .*checkpoint-1' would change what the run trains: .*" + message):
        run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path, **resumed)))
    # Changing nothing that matters (here the kernel block length) resumes.
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, tmp_path, **{**flags, "max_steps": 2, "chunk_size": 8,
                                                                            "resume_from_checkpoint": "last"})))
    assert sorted(logged_losses(tmp_path)) == [1, 2]


def test_config_files_and_bad_input_give_clear_errors(data_files, tmp_path):
    config = {
        "output_dir": str(tmp_path / "out"),
        "attention_type": "linear",
        "learning_rate": 1e-3,
        "config_overrides": {"fast_weights_decay": 0.9},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    model_args, data_args, training_args = parse_lm_arguments([str(path), "--learning_rate", "5e-4"])
    assert (model_args.attention_type, training_args.learning_rate) == ("linear", 5e-4)  # flags override the file
    assert json.loads(model_args.config_overrides) == {"fast_weights_decay": 0.9}
    parse_lm_arguments([str(REPO_ROOT / "configs" / "lm" / "tiny.yaml")])
    compared = [parse_lm_arguments([str(REPO_ROOT / path)])[0] for path in ComparisonArguments().configs]
    assert [args.attention_type for args in compared] == list(ATTENTION_TYPES)  # compare_lm runs every type

    path.write_text(yaml.safe_dump({**config, "learning_rat": 1e-3}))
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'learning_rat'"):
        parse_lm_arguments([str(path)])
    with pytest.raises(ValueError, match="config_overrides has unknown FWPConfig key\\(s\\) 'fast_weight_decay'"):
        run_lm_training(
            *parse_lm_arguments(tiny_flags(data_files, tmp_path / "o", config_overrides='{"fast_weight_decay": 1}'))
        )
    with pytest.raises(FileNotFoundError, match="train_file .*missing.txt' does not exist"):
        run_lm_training(
            *parse_lm_arguments(tiny_flags(data_files, tmp_path / "o", train_file=tmp_path / "missing.txt"))
        )
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="validation_file .*empty.txt' is empty"):
        run_lm_training(
            *parse_lm_arguments(tiny_flags(data_files, tmp_path / "o", validation_file=tmp_path / "empty.txt"))
        )


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_carried_state_evaluation_equals_one_pass_over_the_stream(attention_type):
    model = make_lm(type_variant(attention_type))  # the model tests' tiny model of this type
    stream = random_ids(2, 49).flatten().tolist()
    if not TOKEN_MIXERS[attention_type].holds_state:
        with pytest.raises(ValueError, match="carry_state=True needs a model whose every layer keeps a fixed-size "
                           f"state; the key/value cache of its {attention_type} layers grows"):
            segment_perplexity(model, stream, segment_length=7, carry_state=True)
        return
    whole = segment_perplexity(model, stream, segment_length=48, carry_state=False, num_streams=2)
    carried = segment_perplexity(model, stream, segment_length=7, carry_state=True, num_streams=2)
    independent = segment_perplexity(model, stream, segment_length=7, carry_state=False, num_streams=2)
    assert whole["tokens"] == carried["tokens"] == independent["tokens"] == 96
    assert carried["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert abs(independent["loss"] - whole["loss"]) > 1e-3


def test_stream_evaluation_reports_progress(capsys):
    """The stream evaluations walk the validation text segment by segment for minutes on a loaded CPU: with
    show_progress (train_lm.py: unless --disable_tqdm) a progress bar says how far they are, on stderr."""
    model = make_lm(type_variant("delta"))
    stream = random_ids(2, 49).flatten().tolist()
    stream_token_losses(model, stream, segment_length=7, carry_state=True, num_streams=2, show_progress=True)
    err = capsys.readouterr().err
    assert "stream evaluation (state carried, 2 × 49 tokens)" in err and "7/7" in err
    stream_token_losses(model, stream, segment_length=7, carry_state=False, num_streams=2)
    assert capsys.readouterr().err == ""  # silent by default (library calls)


def test_perplexity_by_position_plot_says_its_x_axis_is_one_streams_positions(tmp_path, monkeypatch):
    """With N parallel streams the curve's positions are those of one stream (each point pools that position
    range of every stream), not the count of all scored tokens: the axis label says so."""
    import matplotlib.figure

    labels = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda figure, path, **kwargs: labels.append(figure.axes[0].get_xlabel()))
    curve = losses_by_position(torch.rand(8, 63), bucket_size=16)
    assert curve["num_streams"] == 8
    plot_perplexity_by_position({"carried state": curve}, tmp_path / "plot.png")
    assert labels == ["token position within each of the 8 streams (bucket centre)"]


def test_accelerate_launch_trains_with_two_processes(data_files, tmp_path):
    output_dir = tmp_path / "ddp"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    # accelerate 1.15 runs `--cpu --num_processes 2` as one process unless MPI is set up; `--multi_gpu` starts
    # the processes with torchrun, and TrainingArguments.use_cpu makes them a gloo group on the CPU.
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO_ROOT / "scripts" / "train_lm.py"),
        "--use_cpu",
        "true",
        *tiny_flags(data_files, output_dir, max_steps=3, tokenizer_name=None, tokenizer_vocab_size=400),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in log  # 2 processes × 4
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in log  # the model card's argument list builds none
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_perplexity"] > 1 and (output_dir / "model.safetensors").is_file()
    assert (output_dir / "tokenizer.json").is_file() and (output_dir / "README.md").is_file()
    state = json.loads((output_dir / "trainer_state.json").read_text())
    steps_per_epoch = math.ceil(results["train_samples"] / 8)
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(3 / steps_per_epoch)


FSDP_CONFIG = '{"transformer_layer_cls_to_wrap": ["FWPBlock"]}'


def test_fsdp_on_two_cpu_processes_matches_one_process_and_saves_a_whole_model(data_files, tmp_path):
    """README's command: torchrun, 2 CPU processes (gloo), FSDP2 sharding every FWPBlock."""
    output_dir = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        str(REPO_ROOT / "scripts" / "train_lm.py"), "--use_cpu", "true",
        "--fsdp", "full_shard auto_wrap", "--fsdp_config", FSDP_CONFIG,
        *tiny_flags(data_files, output_dir, max_steps=3),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    # Sharded with FSDP (accelerate alone would have fallen back to DDP on CPU processes): one unit per block.
    assert "FSDP2 on 2 CPU processes (gloo), wrapping FWPBlock" in log
    units = dict(unit.split(" x ") for unit in re.search(r"FSDP units: (.*)", log).group(1).split(", "))
    assert units["FWPBlock"] == "2" and units["FWPForCausalLM"] == "1", units
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in log

    # The same global batch (8) on one process gives the same losses.
    single = tmp_path / "single"
    run_lm_training(*parse_lm_arguments(tiny_flags(data_files, single, max_steps=3, per_device_train_batch_size=8,
                                                   do_eval="false")))
    sharded_losses, single_losses = logged_losses(output_dir), logged_losses(single)
    assert sorted(sharded_losses) == [1, 2, 3]
    for step, loss in single_losses.items():
        assert sharded_losses[step] == pytest.approx(loss, rel=1e-4), step
    assert len(set(single_losses.values())) == 3  # the model learns: equal curves are not equal constants

    # The saved folder is the trained model: reloaded, it scores the run's evaluation blocks as the run did.
    results = json.loads((output_dir / "all_results.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    raw = load_raw_lm_datasets(train_file=str(data_files["train"]), validation_file=str(data_files["validation"]))
    blocks = group_into_blocks(tokenize_texts(raw, tokenizer), block_size=32)["validation"]
    input_ids = torch.tensor(blocks["input_ids"][:8])
    with torch.no_grad():
        loss = model(input_ids, labels=input_ids).loss.item()
    assert loss == pytest.approx(results["eval_loss"], rel=1e-5)
    # ... and the stream evaluation on the main process ran on the whole (gathered) model.
    stream = segment_perplexity(model, token_stream(tokenize_texts(raw, tokenizer)["validation"]), segment_length=32,
                                carry_state=True, num_streams=2, max_tokens=1200)
    assert stream["perplexity"] == pytest.approx(results["eval_carried_state_perplexity"], rel=1e-5)


def test_fsdp_auto_wrap_finds_the_block_class_by_default_and_rejects_the_old_name():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from transformers import TrainingArguments

    model = make_lm(type_variant("delta"))
    for fsdp_config in (None, {"transformer_layer_cls_to_wrap": ["FWPBlock"]}):
        args = TrainingArguments(output_dir="unused", use_cpu=True, fsdp="full_shard auto_wrap",
                                 fsdp_config=fsdp_config)
        policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(**args.fsdp_plugin_args), model)
        wrapped = [type(module).__name__ for module in model.modules() if policy(module)]
        assert wrapped == ["FWPBlock"] * model.config.num_hidden_layers, fsdp_config  # from _no_split_modules
    # FWPDecoderLayer was the block's old name: a config naming it fails loudly, never silently.
    args = TrainingArguments(output_dir="unused", use_cpu=True, fsdp="full_shard auto_wrap",
                             fsdp_config={"transformer_layer_cls_to_wrap": ["FWPDecoderLayer"]})
    with pytest.raises(ValueError, match="Could not find the transformer layer class FWPDecoderLayer"):
        fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(**args.fsdp_plugin_args), model)


def test_builtin_penn_treebank_splits():
    raw = load_raw_lm_datasets()  # no data arguments: the built-in corpus
    assert {name: len(split) for name, split in raw.items()} == {"train": 42068, "validation": 3370, "test": 3761}
    assert raw["train"][0]["text"].startswith("aer banknote berlitz")
    assert sum(len(text.split()) + 1 for text in raw["train"]["text"]) == 929589  # words + one <eos> per sentence
