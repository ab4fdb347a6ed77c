"""Tests of `fwp_hf.training.tokenization` (behind `scripts/train_tokenizer.py`).

The sentencepiece tokenizer, saved as a Hugging Face tokenizer, must load back through
`AutoTokenizer` with the same ids as sentencepiece itself, keep the special tokens at ids 0-3 and
decode what it encoded. Training data: the first 3000 Penn Treebank sentences (a second or two).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from fwp_hf.training.lm_data import builtin_corpus_texts
from fwp_hf.training.tokenization import main, read_training_texts, save_tokenizer, train_sentencepiece_tokenizer

VOCAB = 600


@pytest.fixture(scope="module")
def ptb_sentences() -> list[str]:
    return builtin_corpus_texts("train")[:3000]


@pytest.fixture(scope="module")
def saved_tokenizer(ptb_sentences, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_sentencepiece_tokenizer(ptb_sentences, vocab_size=VOCAB), folder)
    return folder


def test_reloaded_tokenizer_matches_sentencepiece_ids_and_special_tokens(saved_tokenizer, ptb_sentences):
    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    processor = spm.SentencePieceProcessor(model_file=str(saved_tokenizer / "sentencepiece.model"))
    assert len(tokenizer) == processor.get_piece_size() == VOCAB
    assert (tokenizer.pad_token, tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
    )
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id()) == (0, 1, 2, 3)
    # Unseen words, capitals, digits and non-Latin characters (the latter two through byte fallback).
    texts = [s for s in builtin_corpus_texts("validation")[:200] if "<unk>" not in s] + [
        "Zebras quietly jumped over 42 lazy dogs.",
        "Ünïcödé café — 日本語 naïve façade",
    ]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == processor.encode(text), text
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in tokenizer.encode(texts[-1], add_special_tokens=False)


def test_decode_recovers_text_with_literal_special_token_strings(saved_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    text = "mr. <unk> is chairman of <unk> n.v. the dutch publishing group"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids.count(tokenizer.unk_token_id) == 2  # Penn Treebank's rare-word marker is one token
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.replace("<unk>", "")
    batch = tokenizer(["the market", "stocks fell sharply again"], padding=True)
    assert (
        batch["input_ids"][0].count(tokenizer.pad_token_id) == sum(1 for m in batch["attention_mask"][0] if m == 0) > 0
    )


def test_a_continuation_decoded_alone_keeps_its_leading_space(saved_tokenizer):
    """Decoding is concatenation: what generation code decodes piecewise (the text-generation pipeline
    decodes only the new tokens and appends them to the prompt; streaming) joins to the whole text."""
    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    text = "the company said the market fell  sharply"
    ids = tokenizer.encode(text, add_special_tokens=False)
    for split in range(1, len(ids)):
        assert tokenizer.decode(ids[:split]) + tokenizer.decode(ids[split:]) == text, split
    assert tokenizer.decode(tokenizer.encode(" the", add_special_tokens=False)) == " the"


def test_text_generation_pipeline_joins_prompt_and_continuation_with_the_space(saved_tokenizer):
    from transformers import pipeline

    from fwp_hf import FWPConfig, FWPForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(saved_tokenizer)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = FWPConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, attention_type="delta", pad_token_id=0, eos_token_id=3)
    model = FWPForCausalLM(config).eval()
    prompt = "the company said"
    # Force a continuation that is one ordinary word token ("▁the"): its space must survive.
    (word,) = tokenizer.encode(" the", add_special_tokens=False)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    output = generator(prompt, max_new_tokens=1, do_sample=False, sequence_bias={(word,): 100.0})
    assert output[0]["generated_text"] == "the company said the"


def test_joint_translation_vocabulary_from_json_lines(tmp_path):
    pairs = [
        ("the house is small", "la maison est petite"),
        ("the garden is beautiful", "le jardin est beau"),
        ("we eat bread in the morning", "nous mangeons du pain le matin"),
    ] * 40
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"translation": {"en": en, "fr": fr}}) for en, fr in pairs))
    texts = list(read_training_texts([path], source_lang="en", target_lang="fr"))
    assert texts[:2] == ["the house is small", "la maison est petite"]
    main(  # the entry point of scripts/train_tokenizer.py
        [
            "--train_files",
            str(path),
            "--source_lang",
            "en",
            "--target_lang",
            "fr",
            "--vocab_size",
            "300",
            "--output_dir",
            str(tmp_path / "tok"),
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    byte_pieces = {i for token, i in tokenizer.get_vocab().items() if token.startswith("<0x")}
    for text in ("la maison est petite", "the garden is beautiful"):  # both languages are in the vocabulary
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert not byte_pieces & set(ids)
        assert tokenizer.decode(ids) == text


def test_bad_training_input_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt.*does not exist"):
        list(read_training_texts([tmp_path / "missing.txt"]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        list(read_training_texts([tmp_path / "empty.txt"]))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported extension '.csv'"):
        list(read_training_texts([tmp_path / "data.csv"]))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"translation": {"en": "hello", "de": "hallo"}}) + "\n")
    with pytest.raises(ValueError, match="no 'fr' text"):
        list(read_training_texts([tmp_path / "pairs.jsonl"], source_lang="en", target_lang="fr"))
    with pytest.raises(ValueError, match="no 'text' field"):
        list(read_training_texts([tmp_path / "pairs.jsonl"]))
    with pytest.raises(ValueError, match="model_type 'wordpiece' is unknown"):
        train_sentencepiece_tokenizer(["a b c"], vocab_size=300, model_type="wordpiece")
