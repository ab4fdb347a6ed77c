"""The LM data pipeline (`fwp_hf.training.lm_data`) unit by unit, with a tiny word-level tokenizer."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

import fwp_hf.training.data_files
from fwp_hf.training.lm_data import (
    document_separator_id,
    group_into_blocks,
    load_raw_lm_datasets,
    token_stream,
    tokenize_texts,
)

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def splits(train: list[str], validation: list[str]) -> DatasetDict:
    return DatasetDict(
        {"train": Dataset.from_dict({"text": train}), "validation": Dataset.from_dict({"text": validation})}
    )


def test_every_text_ends_with_eos_and_nothing_else_is_added(tokenizer):
    tokenized = tokenize_texts(splits(["a b c", "d", "e e a b"], ["c d"]), tokenizer)
    assert tokenized["train"]["input_ids"] == [[4, 5, 6, 3], [7, 3], [8, 8, 4, 5, 3]]  # no <s>, one </s> each
    assert tokenized["validation"]["input_ids"] == [[6, 7, 3]]
    assert tokenized["train"].column_names == ["input_ids"]
    assert token_stream(tokenized["train"]) == [4, 5, 6, 3, 7, 3, 8, 8, 4, 5, 3]


CHAT_WORDS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>' }}"
                 "{% endfor %}")


def chat_tokenizer(words=CHAT_WORDS, template=CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """An instruct tokenizer as SmolLM2-Instruct's: EOS <|im_end|> ends chat turns, <|endoftext|> separates
    documents."""
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token=words[0], bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>", chat_template=template)


def test_documents_end_with_the_document_separator_not_the_chat_turn_end():
    tokenizer = chat_tokenizer()
    tokenized = tokenize_texts(splits(["a b", "c"], ["b"]), tokenizer)
    assert tokenized["train"]["input_ids"] == [[3, 4, 0], [5, 0]]  # <|endoftext|> (0), not <|im_end|> (2)
    assert tokenize_texts(splits(["a"], ["b"]), tokenizer, document_separator="<|im_end|>")["train"]["input_ids"] == [
        [3, 2]]  # an explicit choice wins
    # Without a chat template (or one that does not write the EOS) the EOS is the separator.
    assert document_separator_id(chat_tokenizer(template=None)) == 2
    with pytest.raises(ValueError, match="'<sep>' is not a token of the tokenizer's vocabulary"):
        document_separator_id(tokenizer, "<sep>")
    no_separator = chat_tokenizer(words=["<unk>", "<|im_start|>", "<|im_end|>", "a"])
    with pytest.raises(ValueError, match="ends chat turns .* --document_separator"):
        document_separator_id(no_separator)


@pytest.mark.parametrize("block_size", [2, 3, 4, 5, 11, 12])
def test_n_tokens_give_floor_n_over_b_full_blocks_in_order(tokenizer, block_size):
    texts = ["a b c", "d", "e e a b", "c", "a a"]  # 4 + 2 + 5 + 2 + 3 = 16 tokens with the </s>
    tokenized = tokenize_texts(splits(texts, texts), tokenizer)
    stream = token_stream(tokenized["train"])
    assert len(stream) == 16
    blocks = group_into_blocks(tokenized, block_size)["train"]
    expected = [stream[i : i + block_size] for i in range(0, 16 // block_size * block_size, block_size)]
    assert len(blocks) == 16 // block_size
    assert blocks["input_ids"] == expected  # full blocks only: the last partial one is dropped
    assert blocks["labels"] == blocks["input_ids"]  # the model shifts the labels itself


def test_too_few_tokens_or_a_block_of_one_are_errors(tokenizer):
    tokenized = tokenize_texts(splits(["a b c d e a b c"], ["a"]), tokenizer)
    with pytest.raises(ValueError, match="the validation split has fewer than block_size=4 tokens"):
        group_into_blocks(tokenized, 4)
    with pytest.raises(ValueError, match="block_size must be at least 2, got 1"):
        group_into_blocks(tokenized, 1)


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 3])  # 3: the bad byte and a split character cross chunk ends
def test_non_utf8_training_data_is_refused_naming_the_file_and_byte(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(fwp_hf.training.data_files, "_CHUNK_BYTES", chunk_bytes)
    train = tmp_path / "train.txt"
    # 14 + 9 bytes of UTF-8 (é and ö are 2 bytes each), then Latin-1 "café": byte 23 + 3 = 26 is 0xe9.
    train.write_bytes("héllo wörld\nline two\n".encode() + "café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train_file '.*train.txt' is not UTF-8 text: byte 26 \(line 3\) is e9"):
        load_raw_lm_datasets(train_file=str(train))
    train.write_bytes(b"ok\n" + "é".encode()[:1])  # a character cut off at the end
    with pytest.raises(ValueError, match=r"byte 3 \(line 2\) is c3 \(unexpected end of data\)"):
        load_raw_lm_datasets(train_file=str(train))
    train.write_bytes("héllo\nwörld\n".encode() * 3)
    assert load_raw_lm_datasets(train_file=str(train), validation_split_percentage=50)["train"].num_rows == 3
