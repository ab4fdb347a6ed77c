"""Section 9 of the benchmark (``--real_teacher``): a tiny Llama teacher saved to a folder against its untrained
students, each cell in a child process; int8/bf16 variants; the section's targets and report."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, StaticCache

from fwp_hf import FWPConfig, FWPForCausalLM
from fwp_hf.experiments import benchmark
from fwp_hf.experiments.benchmark_report import real_model_section, render_real_model_markdown
from fwp_hf.experiments.benchmark_targets import (
    HYBRID,
    REAL_MODEL_TARGETS,
    REAL_SECTION,
    STUDENT,
    TARGETS,
    TEACHER,
    evaluate_targets,
)

WORDS = "the of and to a in is it that was he for on are as with his they at be this from have or by".split()
# 4 layers of width 32, 4 query heads sharing 2 k/v heads (grouped, like SmolLM2), SwiGLU 64, tied embeddings.
TEACHER_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "tie_word_embeddings": True, "max_position_embeddings": 256}


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    vocab = {"<unk>": 0, "<eos>": 1, **{word: i + 2 for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), bos_token_id=1, eos_token_id=1, pad_token_id=1, **TEACHER_CONFIG)
    LlamaForCausalLM(config).save_pretrained(folder)
    text = "\n".join(" ".join(WORDS[(7 * i + 3 * j) % len(WORDS)] for j in range(40)) for i in range(20))
    (folder / "heldout.txt").write_text(text)
    return folder


def tiny_sizes(**changes) -> benchmark.Sizes:
    """Quick sizes with section 9 (`changes`: fields of `RealModelSizes`) shrunk to seconds."""
    tiny = {"prefill_lengths": (16, 64), "prefill_chunk": 16, "decode_prompts": (16, 64), "decode_batches": (1,),
            "decode_modes": ("eager",), "train_lengths": (16,), "checkpointed_train_lengths": (16,),
            "quantized_prompt": 16, "perplexity_context": 16, "perplexity_tokens": 96}
    quick = benchmark.Sizes.quick()
    return replace(quick, real=replace(quick.real, **{**tiny, **changes}))


COMMITTED_RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "real-model-cpu.json"
# The quiet --real_parts runs (decoding; int8 / bf16 of a trained student; prefill, profiles, training and int8 /
# bf16 again with the per-channel variant), each a report of its own.
COMMITTED_PART_RUNS = {parts: COMMITTED_RUN.parent / f"real-model-{parts}" / "real-model-cpu.json"
                       for parts in ("decode", "quantized", "prefill-training")}


@pytest.mark.parametrize("path", [COMMITTED_RUN, *COMMITTED_PART_RUNS.values()], ids=["full", *COMMITTED_PART_RUNS])
def test_a_committed_real_model_report_is_its_json_rendered_and_rejudged(path):
    from test_benchmark import rejudge_committed

    results = json.loads(path.read_text())
    assert rejudge_committed(results, REAL_MODEL_TARGETS) == results["targets"]
    assert render_real_model_markdown(results) == path.with_suffix(".md").read_text()


def test_the_committed_real_model_run_is_judged_by_section_9s_targets():
    """The committed section-9 run (re-judged and re-rendered above) covers the whole section; its report says it
    was not a quiet run; every fast-weight student's decoding memory is flat in the context (the fixed-size
    state)."""
    results = json.loads(COMMITTED_RUN.read_text())
    assert results["only"] == "real_model"
    assert "NOT a quiet run" in results["note"]
    decode = [row for row in results[REAL_SECTION]["decode"] if row["model"] == STUDENT and "error" not in row]
    assert len({row["cache_bytes"] for row in decode if row["batch"] == 1}) == 1
    teacher = [row for row in results[REAL_SECTION]["decode"] if row["model"] == TEACHER and "error" not in row]
    assert max(row["cache_bytes"] for row in teacher) > 100 * decode[0]["cache_bytes"]


def test_kept_softmax_layers_scale_to_the_teachers_depth():
    assert benchmark.scaled_layers((18, 23, 27), 30, 30) == [18, 23, 27]  # SmolLM2-135M: unchanged
    assert benchmark.scaled_layers((18, 23, 27), 30, 12) == [7, 9, 11]  # round(7.2), round(9.2), round(10.8)
    assert benchmark.scaled_layers((18, 23, 27), 30, 4) == [2, 3]  # 2.4 → 2, 3.07 → 3, 3.6 → 4 → last layer 3
    with pytest.raises(ValueError, match=r"layers \[30\] are not layers of a 30-layer model"):
        benchmark.scaled_layers((18, 30), 30, 4)


def test_real_model_section_on_a_tiny_llama(teacher_folder):
    sizes = tiny_sizes(prefill_lengths=(64,))
    args = benchmark.BenchmarkArguments(real_teacher=str(teacher_folder),
                                        heldout_text=str(teacher_folder / "heldout.txt"), threads=1)
    real = benchmark.bench_real_model(args.real_teacher, sizes, args)
    assert real["kept_softmax_layers"] == [2, 3] and real["teacher_layers"] == 4
    for key in ("prefill", "profiles", "decode", "training", "quantized"):
        assert all("error" not in row for row in real[key]), real[key]
    # The profile of each model's forward pass: its largest operators by self CPU time, shares summing to 1.
    assert [(row["model"], row["length"]) for row in real["profiles"]] == [(m, 32) for m in (TEACHER, STUDENT, HYBRID)]
    for row in real["profiles"]:
        assert len(row["ops"]) == 8 and row["forward_s"] > 0
        assert sum(op["share"] for op in row["ops"]) + row["other_share"] == pytest.approx(1.0)
        assert row["ops"][0]["share"] >= row["ops"][-1]["share"] > 0
    assert any("aten::" in op["op"] for op in real["profiles"][0]["ops"])

    prefill = {(row["model"], row["length"], row["prefill_chunk_size"]): row for row in real["prefill"]}
    assert set(prefill) == {(TEACHER, 64, None), (STUDENT, 64, None), (HYBRID, 64, None), (STUDENT, 64, 16)}
    for row in prefill.values():
        assert row["prefill_tokens_per_s"] * row["prefill_s"] == pytest.approx(row["length"])
        assert row["peak_rss_gib"] >= row["model_rss_gib"] > 0

    decode = {(row["model"], row["prompt"], row["batch"], row["mode"]): row for row in real["decode"]}
    assert set(decode) == {(model, prompt, 1, "eager") for model in (TEACHER, STUDENT, HYBRID) for prompt in (16, 64)}
    # The student's state does not grow with the prompt; the teacher's KV cache does, the hybrid's (2 of 4
    # layers softmax) by half as much.
    assert decode[(STUDENT, 16, 1, "eager")]["cache_bytes"] == decode[(STUDENT, 64, 1, "eager")]["cache_bytes"] > 0
    teacher_growth = decode[(TEACHER, 64, 1, "eager")]["cache_bytes"] - decode[(TEACHER, 16, 1, "eager")]["cache_bytes"]
    hybrid_growth = decode[(HYBRID, 64, 1, "eager")]["cache_bytes"] - decode[(HYBRID, 16, 1, "eager")]["cache_bytes"]
    assert teacher_growth == 2 * hybrid_growth == 4 * 48 * (2 * 2 * 8) * 4  # layers · tokens · (k+v)·heads·dim · fp32
    # A step reads every weight matrix: per layer q, o [32×32], k, v [16×32], the SwiGLU [3 × 32×64]; the tied head.
    weights = 4 * (4 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 64) + len(WORDS) * 32 + 2 * 32)
    assert all(row["weight_bytes_per_token"] == weights for row in real["decode"])

    training = {(row["model"], row["lora"], row["gradient_checkpointing"]): row for row in real["training"]}
    assert set(training) == {(model, lora, checkpointed) for model in (TEACHER, STUDENT)
                             for lora, checkpointed in ((False, False), (True, False), (False, True))}
    teacher_parameters = LlamaForCausalLM.from_pretrained(teacher_folder).num_parameters()
    assert training[(TEACHER, False, False)]["trainable_parameters"] == teacher_parameters
    for model in (TEACHER, STUDENT):
        full, lora, checkpointed = (training[(model, *kind)] for kind in ((False, False), (True, False), (False, True)))
        assert 0 < lora["trainable_parameters"] < full["trainable_parameters"] == checkpointed["trainable_parameters"]
        assert full["tokens_per_s"] * full["step_s"] == pytest.approx(16)
        # the checkpointed cell's model recomputes its layers' activations in backward; the others keep them
        assert checkpointed["recomputes_activations"] and not full["recomputes_activations"]

    quantized = {(row["model"], row["dtype"]): row for row in real["quantized"]}
    for model in (STUDENT, TEACHER):
        fp32, int8, bf16 = (quantized[(model, dtype)] for dtype in ("float32", "int8 dynamic", "bfloat16"))
        assert int8["weight_bytes_per_token"] * 4 == bf16["weight_bytes_per_token"] * 2 == weights
        assert fp32["perplexity"] > 1 and int8["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.05)
        assert bf16["perplexity"] == pytest.approx(fp32["perplexity"], rel=0.05)

    # The section's targets read these rows (no compiled row and one batch here: those targets are unmeasured
    # or do not apply); the report renders every table.
    results = {REAL_SECTION: real, "memory_bandwidth": {"read_gb_s": 1.0, "copy_gb_s": 1.0, "bytes": 1, "repeats": 1},
               "machine": {"bf16_instructions": False}}
    judged = evaluate_targets(results, tiny_sizes(), tuple(t for t in TARGETS if t.section))  # prefill at 16 and 64
    records = {t["target"]: t for t in judged}
    prefill_ratio = prefill[(STUDENT, 64, None)]["prefill_tokens_per_s"] / prefill[(TEACHER, 64, None)][
        "prefill_tokens_per_s"]
    assert records["hedgehog student prefill tok/s vs teacher at T=64"]["value"] == pytest.approx(prefill_ratio)
    assert records["hedgehog student prefill tok/s vs teacher at T=64"]["threshold"] == 2.0
    assert records["hedgehog student prefill tok/s vs teacher at T=16"]["threshold"] == 1.0  # no row: unmeasured
    assert records["hedgehog student prefill tok/s vs teacher at T=16"]["value"] is None
    decode_ratio = decode[(STUDENT, 64, 1, "eager")]["decode_tokens_per_s"] / decode[(TEACHER, 64, 1, "eager")][
        "decode_tokens_per_s"]
    assert records["hedgehog student eager decode tok/s vs teacher after 64 tokens, batch 1"]["value"] == pytest.approx(
        decode_ratio)
    change = abs(quantized[(STUDENT, "int8 dynamic")]["perplexity"] / quantized[(STUDENT, "float32")]["perplexity"] - 1)
    assert records["hedgehog student int8 perplexity change on held-out text"]["value"] == pytest.approx(change)
    assert records["hedgehog student compiled decode, fraction of the weight-read bound (batch 1)"]["value"] is None
    assert not any(t.get("not_run") for t in records.values())
    markdown = "\n".join(real_model_section(results))
    for header in ("| model | T | prefill chunks |", "| model | T | forward s | largest operators | rest |",
                   "| model | mode | batch | prompt |", "| model | T | step |",
                   "| model | dtype | decode tokens/s |"):
        assert header in markdown
    assert f"| {STUDENT} | 64 | 16 |" in markdown and "| student | int8 dynamic |" in markdown


def test_only_real_model_runs_section_9_and_judges_its_targets(teacher_folder, tmp_path, monkeypatch):
    sizes = tiny_sizes(prefill_lengths=(16,), decode_prompts=(16,))
    monkeypatch.setattr(benchmark.Sizes, "quick", classmethod(lambda cls: sizes))
    results = benchmark.main(["--only", "real_model", "--quick", "--real_teacher", str(teacher_folder),
                              "--threads", "1", "--output_dir", str(tmp_path)])
    assert set(results) >= {"memory_bandwidth", REAL_SECTION, "targets"} and "training" not in results
    assert {t["target"] for t in results["targets"]} == {
        t["target"] for t in evaluate_targets(results, sizes, REAL_MODEL_TARGETS)}
    assert all(t["target"].startswith("hedgehog student") for t in results["targets"])
    assert not any(t.get("not_run") for t in results["targets"])
    assert all("error" not in row for key in ("prefill", "decode", "training") for row in results[REAL_SECTION][key])
    markdown = (tmp_path / "real-model-cpu.md").read_text()
    assert "The reference of every ratio (\"vs teacher\") and target is the teacher itself" in markdown
    assert "filled without a prefill (`context_filled_cache`" in markdown and "Memory read bandwidth:" in markdown
    assert json.loads((tmp_path / "real-model-cpu.json").read_text())["targets"] == results["targets"]
    # --from_json renders a real-model run's JSON as that run's report again
    benchmark.main(["--from_json", str(tmp_path / "real-model-cpu.json"), "--output_dir", str(tmp_path / "again")])
    assert (tmp_path / "again" / "real-model-cpu.md").read_text() == markdown


def test_real_parts_run_only_the_parts_named(teacher_folder, tmp_path, monkeypatch):
    """--real_parts profiles,quantized: the other parts' rows stay empty, their targets are "not run" and their
    tables say so; the quantized targets are judged."""
    sizes = tiny_sizes()
    monkeypatch.setattr(benchmark.Sizes, "quick", classmethod(lambda cls: sizes))
    results = benchmark.main(["--only", "real_model", "--quick", "--real_teacher", str(teacher_folder),
                              "--real_parts", "quantized, profiles", "--heldout_text",
                              str(teacher_folder / "heldout.txt"), "--threads", "1", "--output_dir", str(tmp_path)])
    real = results[REAL_SECTION]
    assert real["parts"] == ["profiles", "quantized"]
    assert real["prefill"] == real["decode"] == real["training"] == [] and real["profiles"] and real["quantized"]
    verdicts = {t["target"]: t for t in results["targets"]}
    assert all(t.get("not_run") for name, t in verdicts.items() if "int8" not in name)
    assert [name for name, t in verdicts.items() if not t.get("not_run")] == [
        "hedgehog student int8 decode tok/s vs float32 (batch 1)",
        "hedgehog student int8 perplexity change on held-out text",
        "hedgehog student int8 (outlier layers float) decode tok/s vs float32 (batch 1)",
        "hedgehog student int8 (outlier layers float) perplexity change on held-out text",
        "hedgehog student int8 (per-channel weights, outlier layers float) decode tok/s vs float32 (batch 1)",
        "hedgehog student int8 (per-channel weights, outlier layers float) perplexity change on held-out text"]
    assert all(verdicts[name]["value"] is not None for name in verdicts if "int8" in name)
    markdown = (tmp_path / "real-model-cpu.md").read_text()
    assert "| student | int8 dynamic, outlier layers float |" in markdown and "largest ratios: model." in markdown
    for part in ("Prefill", "Decode", "Training"):
        assert f"{part}: not run in this run (`--real_parts`)." in markdown
    assert "| model | T | forward s | largest operators | rest |" in markdown
    with pytest.raises(ValueError, match="--real_parts takes a comma-separated list of prefill, profiles, decode, "
                                         "training, quantized, got 'prefill,speed'"):
        benchmark.main(["--only", "real_model", "--real_teacher", str(teacher_folder), "--real_parts", "prefill,speed"])


def test_compiled_decoding_cells(teacher_folder):
    """Compiled decoding: the student with its FastWeightStaticCache, the teacher with transformers' static KV
    cache; the hybrid (softmax layers) cannot be compiled and says so."""
    sizes = tiny_sizes()
    for model in (STUDENT, TEACHER):
        row = benchmark._real_decode_cell(str(teacher_folder), model, sizes, 16, 1, True)
        assert row["decode_tokens_per_s"] > 0 and row["compile_s"] > 0, row
    row = benchmark._real_decode_cell(str(teacher_folder), HYBRID, sizes, 16, 1, True)
    assert row == {"error": "not compiled: FastWeightStaticCache needs a fast-weight state in every layer, but layer 2 "
                            "is 'softmax' (a growing key/value cache): use DynamicCache() for this model"}


def test_decoding_cells_fill_the_context_without_a_prefill(teacher_folder):
    """By default a decoding cell's context is filled without running the prompt (`context_filled_cache`): the
    cache then holds what a real prefill of the same prompt leaves (the same bytes, the same length after
    decoding), so a step costs the same; `prefill_decode_prompts` runs the prompt instead."""
    filled, prefilled = tiny_sizes(), tiny_sizes(prefill_decode_prompts=True)
    for model in (TEACHER, STUDENT, HYBRID):
        fast = benchmark._real_decode_cell(str(teacher_folder), model, filled, 64, 2, False)
        slow = benchmark._real_decode_cell(str(teacher_folder), model, prefilled, 64, 2, False)
        assert (fast["context"], slow["context"]) == ("filled without prefill", "prefilled")
        assert fast["cache_bytes"] == slow["cache_bytes"] > 0, model
    teacher = LlamaForCausalLM.from_pretrained(teacher_folder).eval()
    cache = benchmark.context_filled_cache(teacher, 2, 40)
    assert cache.get_seq_length() == 40 and cache.layers[0].keys.shape == (2, 2, 40, 8)
    generated = teacher.generate(torch.ones(2, 41, dtype=torch.long), past_key_values=cache, max_new_tokens=3,
                                 min_new_tokens=3, do_sample=False, pad_token_id=1)
    assert generated.shape == (2, 44) and cache.get_seq_length() == 43  # only the 41st token ran as the prefill
    student = benchmark.load_real_model(str(teacher_folder), STUDENT, filled)
    cache = benchmark.context_filled_cache(student, 1, 1000)  # a fixed-size state: any length fits
    assert cache.get_seq_length() == 1000 and benchmark.cache_bytes(cache) == benchmark.cache_bytes(
        benchmark.context_filled_cache(student, 1, 10))
    with pytest.raises(ValueError, match="layer 0's static cache holds 32 positions, not 40"):
        benchmark.context_filled_cache(teacher, 1, 40, StaticCache(config=teacher.config, max_cache_len=32))


def test_int8_copy_quantizes_every_linear_and_does_not_save_pretrained(tmp_path):
    torch.manual_seed(0)
    model = FWPForCausalLM(FWPConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, attention_type="hedgehog")).eval()
    quantized = benchmark.quantize_linear_int8(model)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())  # a copy: the float model is untouched
    ids = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        reference, logits = model(ids).logits, quantized(ids).logits
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert benchmark.weight_bytes_per_step(quantized) * 4 == benchmark.weight_bytes_per_step(model)
    # What quantize_linear_int8's docstring says: transformers cannot save the quantized copy.
    with pytest.raises(AttributeError, match="'torch.dtype' object has no attribute 'data_ptr'"):
        quantized.save_pretrained(tmp_path)


def test_int8_keeps_float_the_named_layers_and_finds_the_outlier_inputs():
    torch.manual_seed(0)
    model = FWPForCausalLM(FWPConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, attention_type="hedgehog")).eval()
    with torch.no_grad():  # one channel of layer 1's MLP input 1000x the others: a "massive activation"
        model.model.layers[1].post_attention_layernorm.weight[5] = 1000.0
    ratios = benchmark.linear_input_outliers(model, torch.randint(0, 64, (1, 24)))
    assert set(ratios) == {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert max(ratios, key=ratios.get) == "model.layers.1.mlp.gate_up_proj"
    assert ratios["model.layers.1.mlp.gate_up_proj"] > 50 > ratios["model.layers.0.mlp.gate_up_proj"]
    kept = benchmark.quantize_linear_int8(model, ["model.layers.1.mlp.gate_up_proj"])
    assert type(kept.model.layers[1].mlp.gate_up_proj) is torch.nn.Linear
    assert type(kept.model.layers[0].mlp.gate_up_proj) is not torch.nn.Linear
    assert sum(isinstance(m, torch.nn.Linear) for m in kept.modules()) == 1
    with pytest.raises(ValueError, match=r"keep_float names \['model.norm'\], which are not nn.Linear"):
        benchmark.quantize_linear_int8(model, ["model.norm"])


def test_int8_per_channel_weights_keep_small_rows_resolved():
    """One weight scale per output channel: a row 1000x smaller than the others keeps its resolution, which one
    scale per matrix rounds to zero."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 8, bias=False))
    with torch.no_grad():
        model[0].weight[0] *= 1000.0
    per_tensor, per_channel = (benchmark.quantize_linear_int8(model, per_channel_weights=flag)[0].weight()
                               for flag in (False, True))
    assert per_tensor.qscheme() == torch.per_tensor_affine and per_channel.qscheme() == torch.per_channel_affine
    small = model[0].weight[1:]
    assert per_tensor.dequantize()[1:].abs().max() == 0  # every small row rounded away
    assert (per_channel.dequantize()[1:] - small).abs().max() < 0.01 * small.abs().max()


def test_a_cell_larger_than_one_that_ran_out_of_time_is_skipped():
    cells = benchmark.CellRunner(benchmark.BenchmarkArguments(), time_limit_s=1)
    assert cells.run(time.sleep, (30,), ("teacher", False), (4096, 8)) == {"error": "skipped: still running after 1 s"}
    start = time.perf_counter()
    skipped = cells.run(time.sleep, (30,), ("teacher", False), (16384, 8))  # larger in every size: not started
    assert skipped == {"error": "skipped: the smaller cell (4096, 8) of this model ran out of time or memory"}
    assert time.perf_counter() - start < 0.5
    assert cells.run(dict, (), ("teacher", False), (16384, 1)) == {}  # a smaller batch still runs
    assert cells.run(dict, (), ("teacher", True), (16384, 8)) == {}  # another kind (compiled) still runs


def test_int8_cell_measures_a_trained_student_when_given(teacher_folder, tmp_path):
    """--trained_student: the int8/bf16 cell loads that folder as the student (here a student saved with other
    weights than the untrained one, so its float32 perplexity differs)."""
    sizes = tiny_sizes()
    student = benchmark.load_real_model(str(teacher_folder), STUDENT, sizes)
    with torch.no_grad():
        student.lm_head.weight.mul_(3.0)  # tied: the embeddings too
    student.save_pretrained(tmp_path / "trained")
    heldout = str(teacher_folder / "heldout.txt")
    untrained = benchmark._real_quantized_cell(str(teacher_folder), STUDENT, sizes, heldout)
    trained = benchmark._real_quantized_cell(str(teacher_folder), STUDENT, sizes, heldout, str(tmp_path / "trained"))
    assert trained["float32"]["perplexity"] != pytest.approx(untrained["float32"]["perplexity"], rel=1e-3)
    with pytest.raises(ValueError, match="--trained_student is read by section 9 only"):
        benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(trained_student=str(tmp_path / "trained")))
    with pytest.raises(ValueError, match="--trained_student .* must be a model folder holding a config.json"):
        benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(real_teacher=str(teacher_folder),
                                                                          trained_student=str(tmp_path)))


def test_real_model_arguments_are_checked_first(tmp_path):
    with pytest.raises(ValueError, match="--heldout_text is read by section 9 only: give --real_teacher too"):
        benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(heldout_text="x.txt"))
    with pytest.raises(ValueError, match="must be a model folder holding a config.json"):
        benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(real_teacher=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a file"):
        benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(real_teacher=str(tmp_path),
                                                                          heldout_text=str(tmp_path / "none.txt")))
    benchmark.check_real_model_arguments(benchmark.BenchmarkArguments(real_teacher=str(tmp_path)))
    with pytest.raises(ValueError, match="must be one of teacher, student, hybrid student, got 'llama'"):
        benchmark.load_real_model(str(tmp_path), "llama", tiny_sizes())
