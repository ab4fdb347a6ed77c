"""`scripts/compare_lm.py` (`fwp_hf.training.lm_comparison`): seeds, carried-state training pairs, resuming."""

from __future__ import annotations

import json
import statistics

import pytest
from test_lm_training import data_files  # noqa: F401 - the module-scoped PTB snippet fixture

from fwp_hf.training import lm_comparison
from fwp_hf.training.lm_comparison import group_runs, main, summarize

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config(path, data_files, attention_type: str) -> str:  # noqa: F811
    path.write_text("\n".join([
        f"attention_type: {attention_type}", f"train_file: {data_files['train']}",
        f"validation_file: {data_files['validation']}", "tokenizer_vocab_size: 400", "hidden_size: 32",
        "intermediate_size: 64", "num_hidden_layers: 2", "num_attention_heads: 2", "chunk_size: 16", "block_size: 32",
        "per_device_train_batch_size: 4", "per_device_eval_batch_size: 8", "max_eval_samples: 8",
        "streaming_eval_max_tokens: 600", "streaming_eval_num_streams: 1", "position_bucket_size: 200",
        "sample_max_new_tokens: 2", "max_steps: 2", "eval_strategy: steps", "eval_steps: 1", "logging_steps: 1",
        "save_strategy: 'no'", "report_to: none", "disable_tqdm: true", "do_train: true", "do_eval: true",
    ]) + "\n")
    return str(path)


def test_seeds_and_carried_pairs_are_summarised_and_a_finished_comparison_is_reused(data_files, tmp_path,  # noqa: F811
                                                                                   monkeypatch):
    delta = tiny_config(tmp_path / "delta.yaml", data_files, "delta")
    softmax = tiny_config(tmp_path / "softmax.yaml", data_files, "softmax")
    flags = ["--configs", delta, softmax, "--seeds", "0", "1", "--carried_state_configs", delta,
             "--in_order_control", "true", "--output_dir", str(tmp_path / "runs"),
             "--results_dir", str(tmp_path / "docs"), "--title", "tiny"]
    rows = main(flags)
    assert [(row["variant"], row["training"], row["seed"]) for row in rows] == [
        ("delta", "blocks", 0), ("softmax", "blocks", 0), ("delta", "in_order", 0), ("delta", "carried", 0),
        ("delta", "blocks", 1), ("softmax", "blocks", 1), ("delta", "in_order", 1), ("delta", "carried", 1),
    ]
    assert (tmp_path / "runs" / "delta_carried" / "seed1" / "comparison_run.json").is_file()
    delta_blocks = [row for row in rows if row["variant"] == "delta" and row["training"] == "blocks"]
    assert delta_blocks[0]["validation_perplexity"] != delta_blocks[1]["validation_perplexity"]  # seeds differ
    assert rows[1]["stream_carried_perplexity"] is None and rows[1]["perplexity_by_position"] is None  # softmax

    saved = json.loads((tmp_path / "docs" / "lm_comparison.json").read_text())
    summary = next(group for group in saved["summaries"]
                   if (group["variant"], group["training"]) == ("delta", "blocks"))
    values = [row["validation_perplexity"] for row in delta_blocks]
    assert summary["validation_perplexity"]["mean"] == pytest.approx(statistics.fmean(values))
    assert summary["validation_perplexity"]["sd"] == pytest.approx(statistics.stdev(values))
    assert summary["seeds"] == [0, 1] and len(summary["curve"]) == 2
    table = (tmp_path / "docs" / "lm_comparison.md").read_text()
    mean, sd = summary["validation_perplexity"]["mean"], summary["validation_perplexity"]["sd"]
    assert "| delta | " in table and f"{mean:.2f} ± {sd:.2f}" in table
    assert "## Training with the state carried across segments" in table
    carried_rows = [line for line in table.splitlines() if line.startswith("| delta | ") and "| 2 |" in line
                    and ("state carried |" in line or "no state |" in line or "shuffled" in line)]
    assert [line.split(" | ")[1] for line in carried_rows] == [
        "blocks (shuffled)", "streams in order, no state", "state carried"]
    by_seed = {(row["training"], row["seed"]): row for row in rows if row["variant"] == "delta"}
    differences = [by_seed["carried", seed]["stream_carried_perplexity"]
                   - by_seed[baseline, seed]["stream_independent_perplexity"]
                   for baseline in ("blocks", "in_order") for seed in (0, 1)]
    expected = " | ".join(f"{statistics.fmean(pair):.2f} ± {statistics.stdev(pair):.2f}"
                          for pair in (differences[:2], differences[2:]))
    assert carried_rows[-1].endswith(f"| {expected} |")
    for name in ("lm_comparison.png", "lm_comparison_positions.png"):
        assert (tmp_path / "docs" / name).stat().st_size > 1000

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(lm_comparison, "run_lm_training", no_training)
    assert main([*flags, "--reuse_finished_runs", "true"]) == json.loads(json.dumps(rows))


def test_summaries_of_one_and_several_values():
    assert summarize([3.0]) == {"mean": 3.0, "sd": 0.0, "min": 3.0, "max": 3.0, "n": 1}
    assert summarize([None, None])["mean"] is None
    several = summarize([1.0, 2.0, None, 4.0])
    assert several["n"] == 3 and several["sd"] == pytest.approx(statistics.stdev([1.0, 2.0, 4.0]))
    rows = [{"variant": "v", "training": "blocks", "attention_type": "delta", "parameters": 1, "seed": seed,
             "seconds": 1.0, "curve": [(1, ppl)], "perplexity_by_position": None, "validation_perplexity": ppl,
             "test_perplexity": None, "stream_independent_perplexity": None, "stream_carried_perplexity": None}
            for seed, ppl in ((0, 10.0), (1, 40.0))]
    (group,) = group_runs(rows)
    assert group["curve"] == [(1, pytest.approx(20.0))]  # geometric mean of the curves' perplexities


def test_perplexity_by_position_buckets_average_over_seeds_in_log_space():
    def curve(bucket_perplexity):
        return {"bucket_size": 100, "bucket_start": [0, 100], "bucket_tokens": [99, 100],
                "bucket_perplexity": bucket_perplexity}

    rows = [{"variant": "v", "training": "carried", "attention_type": "delta", "parameters": 1, "seed": seed,
             "seconds": 1.0, "curve": [(1, 5.0)], "validation_perplexity": 5.0, "test_perplexity": None,
             "stream_independent_perplexity": None, "stream_carried_perplexity": None,
             "perplexity_by_position": {"carried_state": curve(carried), "independent_segments": curve(independent)}}
            for seed, carried, independent in ((0, [10.0, 100.0], [2.0, 3.0]), (1, [40.0, 1.0], [8.0, 3.0]))]
    (group,) = group_runs(rows)
    positions = group["perplexity_by_position"]
    # √(10·40) = 20, √(100·1) = 10 (the arithmetic means would be 25 and 50.5); √(2·8) = 4, √(3·3) = 3.
    assert positions["carried_state"]["bucket_perplexity"] == pytest.approx([20.0, 10.0])
    assert positions["independent_segments"]["bucket_perplexity"] == pytest.approx([4.0, 3.0])
    assert positions["carried_state"]["bucket_start"] == [0, 100]
    rows[1]["perplexity_by_position"] = None  # a seed without the curve: no mean curve
    assert group_runs(rows)[0]["perplexity_by_position"] is None


def test_missing_configs_and_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no config files to compare: give --configs and/or --carried_state_configs"):
        lm_comparison.compare_variants([], str(tmp_path), [])
    with pytest.raises(ValueError, match="no seeds"):
        lm_comparison.compare_variants(["configs/lm/delta.yaml"], str(tmp_path), [], seeds=[])
    with pytest.raises(FileNotFoundError, match="config file 'nope.yaml' does not exist"):
        main(["--configs", "configs/lm/delta.yaml", "--carried_state_configs", "nope.yaml",
              "--output_dir", str(tmp_path)])
