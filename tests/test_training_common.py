"""The core the LM and translation pipelines share (`fwp_hf.training.common`): one set of model
arguments, one config step with one `--config_overrides` check, one tokenizer step.

Both pipelines are held to the same behaviour here: the same fields, the same errors for bad
overrides, the same warning when a tokenizer of another size is reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path

import pytest
from transformers import TrainingArguments

from fwp_hf.training import lm, translation
from fwp_hf.training.common import BaseModelArguments, fwp_config_from_arguments, load_or_train_tokenizer
from fwp_hf.training.tokenization import save_tokenizer, train_sentencepiece_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {
    "lm": (lm.ModelArguments, fwp_config_from_arguments),
    "translation": (translation.ModelArguments, translation.fwp_seq2seq_config_from_arguments),
}


class SentencepieceIds:
    """Stands in for a tokenizer: its size and the special ids of the tokenizers trained here."""

    pad_token_id, unk_token_id, bos_token_id, eos_token_id = 0, 1, 2, 3

    def __init__(self, size: int = 8000) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_both_pipelines_extend_the_same_model_arguments():
    shared = [f.name for f in fields(BaseModelArguments)]
    for arguments, _ in PIPELINES.values():
        assert issubclass(arguments, BaseModelArguments)
        assert [f.name for f in fields(arguments)][: len(shared)] == shared
    assert set(translation.ModelArguments.CONFIG_FIELDS) > set(lm.ModelArguments.CONFIG_FIELDS)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ('{"fast_weight_decay": 0.9}', r"config_overrides has unknown FWPConfig key\(s\) 'fast_weight_decay'"),
        ('{"fast_weights_decay": 0.9,}', r"config_overrides must be a JSON object, got .*: Expecting property name"),
        ('[["fast_weights_decay", 0.9]]', r"config_overrides must be a JSON object, got '\[\["),
        ('{"vocab_size": 100}', r"config_overrides sets 'vocab_size', which come from the tokenizer"),
    ],
)
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_bad_config_overrides_give_the_same_error_in_both_pipelines(pipeline, overrides, error):
    arguments, config_from_arguments = PIPELINES[pipeline]
    with pytest.raises(ValueError, match=error):
        config_from_arguments(arguments(config_overrides=overrides), SentencepieceIds())


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_config_from_arguments_and_overrides(pipeline):
    arguments, config_from_arguments = PIPELINES[pipeline]
    model_args = arguments(hidden_size=64, config_overrides='{"fast_weights_decay": 0.9, "hidden_size": 32}')
    config = config_from_arguments(model_args, SentencepieceIds(500))
    assert (config.hidden_size, config.hebbian_memory.decay, config.vocab_size) == (32, 0.9, 500)  # overrides win
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 2, 3)
    assert config.is_encoder_decoder == (pipeline == "translation")


def test_tokenizer_step_trains_on_texts_then_reuses_with_a_warning_on_another_size(tmp_path, caplog):
    output_dir = tmp_path / "run"
    training_args = TrainingArguments(output_dir=str(output_dir), report_to="none")
    texts = [f"sentence number {i} about the {word}" for i in range(200) for word in ("market", "garden")]
    trained = load_or_train_tokenizer(BaseModelArguments(tokenizer_vocab_size=300), training_args, iter(texts))
    assert len(trained) == 300 and (output_dir / "tokenizer.json").is_file()

    with caplog.at_level(logging.WARNING, logger="fwp_hf"):
        reused = load_or_train_tokenizer(BaseModelArguments(tokenizer_vocab_size=500), training_args, None)
    assert len(reused) == 300
    assert f"Reusing the 300-token tokenizer in {output_dir} (tokenizer_vocab_size=500 is ignored)" in caplog.text

    with pytest.raises(ValueError, match="no tokenizer: give --tokenizer_name or --model_name_or_path"):
        load_or_train_tokenizer(BaseModelArguments(), TrainingArguments(output_dir=str(tmp_path / "new")), None)
    save_tokenizer(train_sentencepiece_tokenizer(texts, vocab_size=320), tmp_path / "named")
    named = load_or_train_tokenizer(BaseModelArguments(tokenizer_name=str(tmp_path / "named")), training_args, None)
    assert named.name_or_path == str(tmp_path / "named")  # tokenizer_name wins over the one in output_dir


# The committed configs of the two scripts (configs/linearize/teacher_llama.yaml trains a Llama, not an FWP model).
COMMITTED_CONFIGS = {
    "lm": sorted((REPO_ROOT / "configs" / "lm").glob("*.yaml")),
    "translation": sorted((REPO_ROOT / "configs" / "translation").glob("*.yaml")),
}


@pytest.mark.parametrize(("pipeline", "path"), [(pipeline, path) for pipeline, paths in COMMITTED_CONFIGS.items()
                                                for path in paths], ids=lambda value: getattr(value, "name", value))
def test_every_committed_config_builds_its_model_config(pipeline, path):
    """A committed config has no retired or unknown key and builds an FWPConfig; the feature-map options it sets
    (in config_overrides, the one place for them) are the model's."""
    parse = lm.parse_lm_arguments if pipeline == "lm" else translation.parse_translation_arguments
    model_args = parse([str(path)])[0]
    config = PIPELINES[pipeline][1](model_args, SentencepieceIds(2000))
    assert config.fast_weight.feature_map == model_args.feature_map
    for name, options in json.loads(model_args.config_overrides or "{}").get("feature_maps", {}).items():
        for option, value in options.items():
            assert getattr(config.feature_maps[name], option) == value, (name, option)
