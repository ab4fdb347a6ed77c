"""The evaluation of linearized students against their teacher (`fwp_hf.experiments.linearization_eval`,
`scripts/evaluate_linearization.py`) on a tiny Llama teacher (256 positions) and tiny students made
from it: all layers `hedgehog` (carries its state) and a hybrid keeping a softmax layer (cannot)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from gguf_fixture import TEXT, tiny_llama_and_tokenizer

from fwp_hf.conversion.linearize import linearize_model
from fwp_hf.experiments.linearization_eval import (
    CARD_SECTION_END,
    CARD_SECTION_START,
    PASSKEY_FILLER,
    PASSKEY_INTRO,
    chat_answers,
    heldout_perplexity,
    long_context_curve,
    main,
    passkey_answer_is_correct,
    passkey_prompt,
    passkey_retrieval,
    passkey_trial,
    sliding_window_token_losses,
)
from fwp_hf.training.costs import measure
from fwp_hf.training.lm_evaluation import perplexity_by_position, segment_perplexity

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models():
    teacher, tokenizer = tiny_llama_and_tokenizer()
    fast = linearize_model(teacher, attention_type="hedgehog", chunk_size=16).eval()
    hybrid = linearize_model(teacher, attention_type="delta", feature_map="hedgehog", keep_softmax_layers=[1],
                             chunk_size=16).eval()
    return teacher, fast, hybrid, tokenizer


@pytest.fixture(scope="module")
def stream(models):
    tokenizer = models[3]
    return tokenizer(TEXT * 3, add_special_tokens=False)["input_ids"][:400]


@torch.no_grad()
def direct_loss(model, ids: list[int], begin: int, target: int) -> float:
    """Loss of token `target` given exactly tokens begin … target − 1, in one fresh forward."""
    logits = model(torch.tensor([ids[begin:target]])).logits[0, -1]
    return F.cross_entropy(logits, torch.tensor(ids[target])).item()


def test_sliding_re_encoding_scores_every_target_once_with_a_bounded_context(models, stream):
    teacher = models[0]
    ids = stream[:120]
    with torch.no_grad():
        whole = F.cross_entropy(teacher(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]), reduction="none")
    assert torch.allclose(sliding_window_token_losses(teacher, ids, window=200, stride=50)[0], whole, atol=1e-5)
    window, stride = 40, 16
    losses = sliding_window_token_losses(teacher, ids, window, stride)[0]
    assert losses.shape == (len(ids) - 1,)
    for target in (1, 16, 17, 40, 41, 57, 100, 119):
        chunk_end = min(1 + ((target - 1) // stride + 1) * stride, len(ids))
        begin = max(0, chunk_end - 1 - window)
        context = target - begin
        assert context == target or window - stride <= context <= window
        assert losses[target - 1].item() == pytest.approx(direct_loss(teacher, ids, begin, target), abs=1e-5)
    with pytest.raises(ValueError, match="stride < window"):
        sliding_window_token_losses(teacher, ids, window=16, stride=16)


def test_long_context_curve_carries_the_state_where_it_can(models, stream):
    teacher, fast, hybrid, _ = models
    carried = long_context_curve(fast, stream, bucket_size=100, segment_length=64, window=8192, stride=64)
    expected = perplexity_by_position(fast, stream, 64, carry_state=True, bucket_size=100)
    assert carried["bucket_perplexity"] == pytest.approx(expected["bucket_perplexity"])
    assert carried["method"].startswith("state carried")
    for model in (teacher, hybrid):  # softmax layers: re-encoded within their 256 positions
        curve = long_context_curve(model, stream, bucket_size=100, segment_length=64, window=8192, stride=64)
        assert curve["window"] == 256 and curve["method"].startswith("sliding re-encoding: window 256, stride 64")
        assert curve["bucket_start"] == [0, 100, 200, 300] and curve["tokens"] == len(stream) - 1


def test_heldout_perplexity_reads_windows_from_an_empty_state(models, stream):
    teacher, fast = models[0], models[1]
    assert heldout_perplexity(fast, stream, 64)["perplexity"] == pytest.approx(
        segment_perplexity(fast, stream, 64, carry_state=False)["perplexity"])
    with pytest.raises(ValueError, match="exceeds the model's 256 positions"):
        heldout_perplexity(teacher, stream, 512)


def test_passkey_prompts_and_answers(models):
    tokenizer = models[3]
    key, depth = passkey_trial(300, 3)
    assert (key, depth) == passkey_trial(300, 3) and 10000 <= key <= 99999 and 0 <= depth <= 1
    assert passkey_trial(300, 4) != (key, depth)
    filler = len(tokenizer(PASSKEY_FILLER, add_special_tokens=False)["input_ids"])
    for length in (150, 300):
        ids = passkey_prompt(tokenizer, length, key, depth)
        assert length - filler < len(ids) <= length
        text = tokenizer.decode(ids)
        assert f"The pass key is {key}. Remember it." in text and text.endswith("What is the pass key? The pass key is")
    first = tokenizer.decode(passkey_prompt(tokenizer, 300, key, 0.0))
    assert first.startswith(PASSKEY_INTRO + f" The pass key is {key}")
    assert passkey_answer_is_correct(" 12345. Remember", 12345) and not passkey_answer_is_correct(" 1234 5", 12345)
    assert not passkey_answer_is_correct(" the key", 12345)


def test_passkey_retrieval_skips_what_a_model_cannot_read(models):
    teacher, fast, _, tokenizer = models
    within = passkey_retrieval(teacher, tokenizer, [150, 300], trials=2, max_new_tokens=4)
    assert within["300"] == {"skipped": "beyond the model's 256 positions"}
    assert within["150"]["trials"] == 2 and 0 <= within["150"]["correct"] <= 2 and len(within["150"]["answers"]) == 2
    beyond = passkey_retrieval(fast, tokenizer, [300], trials=1, max_new_tokens=4)
    assert beyond["300"]["trials"] == 1 and beyond["300"]["prompt_tokens"] <= 300 - 4


def test_a_passkey_length_counts_the_answer_so_a_model_is_asked_at_its_full_context(models):
    teacher, _, _, tokenizer = models  # 256 positions
    full = passkey_retrieval(teacher, tokenizer, [256], trials=1, max_new_tokens=4)["256"]
    assert full["trials"] == 1 and full["prompt_tokens"] <= 256 - 4


def test_chat_answers_are_greedy_and_side_by_side(models):
    teacher, fast, _, tokenizer = models
    prompts = ("What is the state of the union?", "Call me Ishmael?")
    answers = chat_answers(teacher, tokenizer, prompts, max_new_tokens=5)
    assert len(answers) == 2 and answers == chat_answers(teacher, tokenizer, prompts, max_new_tokens=5)
    assert len(chat_answers(fast, tokenizer, prompts, max_new_tokens=5)) == 2


def test_measure_records_time_and_the_peak_inside_the_block():
    with measure() as before:
        pass
    with measure() as cost:
        block = torch.ones(40 * 2**20 // 4)  # 40 MB touched
        del block
    assert cost["seconds"] >= 0 and cost["peak_memory_mb"] >= before["peak_memory_mb"] + 30


def test_evaluation_script_collects_models_and_renders_tables(models, tmp_path):
    teacher, fast, hybrid, tokenizer = models
    for name, model in (("teacher", teacher), ("fast", fast), ("hybrid", hybrid)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"id": i, "text": TEXT[i * 50:]}) + "\n" for i in range(3)))
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "long", "text": TEXT * 3}) + "\n")
    training = tmp_path / "linearization_results.json"
    training.write_text(json.dumps({"stages": {"attention transfer": {"steps": 2, "tokens": 128, "seconds": 1.5,
                                                                      "peak_memory_mb": 300.0}}}))
    results_json = tmp_path / "results.json"
    common = ["--results_json", str(results_json), "--heldout_file", str(heldout), "--long_file", str(long),
              "--contexts", "32", "64", "--long_max_tokens", "300", "--bucket_size", "100", "--segment_length", "64",
              "--stride", "64", "--passkey_lengths", "150", "300", "--passkey_trials", "1", "--max_new_tokens", "3"]
    for name in ("teacher", "fast", "hybrid"):
        extra = ["--training_results", str(training)] if name == "fast" else []
        main(common + ["--model_name_or_path", str(tmp_path / name), "--name", name] + extra)
    results = json.loads(results_json.read_text())
    assert list(results["models"]) == ["teacher", "fast", "hybrid"]
    assert results["models"]["fast"]["long_context"]["method"].startswith("state carried")
    markdown = tmp_path / "tables.md"
    main(["--results_json", str(results_json), "--render_markdown", str(markdown)])
    text = markdown.read_text()
    teacher_ppl = results["models"]["teacher"]["heldout_perplexity"]["64"]["perplexity"]
    fast_ppl = results["models"]["fast"]["heldout_perplexity"]["64"]["perplexity"]
    assert f"| teacher | {results['models']['teacher']['heldout_perplexity']['32']['perplexity']:.2f} | " \
           f"{teacher_ppl:.2f} | 100.0% | 100.0% |" in text
    assert f"{teacher_ppl / fast_ppl:.1%}" in text
    assert "| teacher | 0/1 | n/a (beyond the model's 256 positions) |" in text or \
           "| teacher | 1/1 | n/a (beyond the model's 256 positions) |" in text
    for heading in ("Held-out perplexity", "Perplexity by position", "Passkey retrieval", "Chat answers",
                    "Training cost per stage", "Evaluation cost"):
        assert f"### {heading}" in text
    assert "| fast | attention transfer | 2 | 128 | 2 | 300 |" in text


def _entry(perplexity: float, model: str) -> dict:
    cost = {"seconds": 1.0, "peak_memory_mb": 10.0}
    return {"model": model, "heldout_tokens": 64,
            "heldout_perplexity": {"64": {"perplexity": perplexity, "tokens": 64, "cost": cost}}}


def test_results_of_parallel_processes_merge_and_refuse_to_overwrite(tmp_path):
    first, second, merged = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    first.write_text(json.dumps({"models": {"teacher": _entry(10.0, "t")}}))
    second.write_text(json.dumps({"models": {"student": _entry(20.0, "s")},
                                  "training": {"student": {"stages": {}}}}))
    main(["--results_json", str(merged), "--merge_json", str(first), str(second)])
    results = json.loads(merged.read_text())
    assert list(results["models"]) == ["teacher", "student"] and "student" in results["training"]
    main(["--results_json", str(merged), "--merge_json", str(first)])  # the same entry again: nothing lost
    second.write_text(json.dumps({"models": {"teacher": _entry(11.0, "t")}}))
    with pytest.raises(ValueError, match="entry 'teacher' .* differs"):
        main(["--results_json", str(merged), "--merge_json", str(second)])
    assert json.loads(merged.read_text())["models"]["teacher"]["heldout_perplexity"]["64"]["perplexity"] == 10.0


def test_a_measurement_made_later_joins_its_model_and_replaces_only_on_request(tmp_path):
    merged, later = tmp_path / "all.json", tmp_path / "later.json"
    merged.write_text(json.dumps({"models": {"student": {**_entry(20.0, "s"), "passkey": {"1024": {"correct": 0}}}}}))
    cost = {"seconds": 3.0, "peak_memory_mb": 5.0, "device": "cuda: a GPU"}
    passkeys = {"model": "s", "passkey": {"1024": {"correct": 4, "trials": 20}}, "passkey_cost": cost}
    later.write_text(json.dumps({"models": {"student": passkeys}}))
    with pytest.raises(ValueError, match="'student' .* in 'passkey'.*--replace_measurements passkey"):
        main(["--results_json", str(merged), "--merge_json", str(later)])
    main(["--results_json", str(merged), "--merge_json", str(later), "--replace_measurements", "passkey",
          "passkey_cost"])
    student = json.loads(merged.read_text())["models"]["student"]
    assert student["passkey"]["1024"]["correct"] == 4 and student["heldout_perplexity"]["64"]["perplexity"] == 20.0
    markdown = tmp_path / "tables.md"
    main(["--results_json", str(merged), "--render_markdown", str(markdown)])
    assert "| student | passkey (on cuda: a GPU) | 3 | 5 |" in markdown.read_text()


def test_passkeys_measured_a_length_per_process_join_and_their_costs_add_up(tmp_path):
    merged = tmp_path / "all.json"
    for length, seconds, peak in ((4096, 30.0, 900.0), (1024, 5.0, 700.0)):
        part = tmp_path / f"passkey-{length}.json"
        entry = {"model": "s", "passkey": {str(length): {"correct": 1, "trials": 20}},
                 "passkey_cost": {"seconds": seconds, "peak_memory_mb": peak}}
        part.write_text(json.dumps({"models": {"student": entry}}))
        main(["--results_json", str(merged), "--merge_json", str(part)])
    main(["--results_json", str(merged), "--merge_json", str(tmp_path / "passkey-1024.json")])  # again: no change
    student = json.loads(merged.read_text())["models"]["student"]
    assert list(student["passkey"]) == ["1024", "4096"]
    assert student["passkey_cost"] == {"seconds": 35.0, "peak_memory_mb": 900.0}
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"models": {"student": {"passkey": {"1024": {"correct": 2, "trials": 20}}}}}))
    with pytest.raises(ValueError, match=r"'passkey' at lengths \['1024'\]"):
        main(["--results_json", str(merged), "--merge_json", str(clash)])


def test_model_cards_get_the_report_numbers_once(tmp_path, capsys):
    student = tmp_path / "student"
    stage = tmp_path / "stage_after_copying"
    student.mkdir()
    stage.mkdir()
    (student / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# student\n\nTraining numbers.\n")
    results_json = tmp_path / "results.json"
    results = {"models": {"teacher": _entry(10.0, str(tmp_path / "teacher")), "student": _entry(25.0, str(student)),
                          "student, after copying": _entry(400.0, str(stage)),
                          "elsewhere": _entry(30.0, str(tmp_path / "not_here"))}}
    results_json.write_text(json.dumps(results))
    for _ in range(2):  # a second run replaces the section instead of appending another
        main(["--results_json", str(results_json), "--update_model_cards"])
    assert "elsewhere: " + str(tmp_path / "not_here") + " is not a folder from here" in capsys.readouterr().out
    card = (student / "README.md").read_text()
    assert card.count(CARD_SECTION_START) == 1 and card.count(CARD_SECTION_END) == 1
    assert card.startswith("---\nlicense: apache-2.0\n---\n\n# student\n\nTraining numbers.\n")
    assert "#### Held-out perplexity" in card and "| student | 25.00 | 40.0% |" in card
    assert "| teacher | 10.00 | 100.0% |" in card and "400.00" not in card
    assert not (stage / "README.md").exists()
