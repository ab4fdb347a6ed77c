"""Train a sentencepiece model and wrap it as a Hugging Face tokenizer.

`train_sentencepiece_tokenizer` trains sentencepiece on an iterable of texts and converts the
model into a `tokenizers`-backed `PreTrainedTokenizerFast` (transformers' own `SpmConverter`, with
sentencepiece's byte fallback kept), so that `AutoTokenizer.from_pretrained(folder)` loads it back
and encodes plain text to the same ids as sentencepiece itself. The sentencepiece model file is saved
next to it (`sentencepiece.model`).

Texts come from plain-text files (one text per line), JSON-lines / JSON files with a text column,
or JSON-lines translation files ``{"translation": {"en": ..., "fr": ...}}`` (both sides feed one
joint vocabulary), see `read_training_texts`.

Note: `T5Tokenizer(vocab_file=...)` silently builds a 4-token vocabulary in transformers 5.x, and
reading a sentencepiece model through transformers needs `protobuf`; this module avoids the former
and requires the latter.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, decoders, normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter

from ..shared.cli import argument_errors_exit, parse_config_and_flags
from .data_files import check_data_file
from .lm_data import builtin_corpus_texts

SENTENCEPIECE_MODEL_FILE = "sentencepiece.model"
# transformers name -> sentencepiece piece, in id order (0 pad, 1 unk, 2 bos, 3 eos).
SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
MODEL_TYPES = ("unigram", "bpe")
TEXT_SUFFIXES = (".txt", ".text", ".raw")
JSON_SUFFIXES = (".json", ".jsonl")
# A plain chat template for trained tokenizers (chat endpoints such as `transformers serve`'s
# /v1/chat/completions need one): "role: content" per message, then "assistant:" to prompt a reply. Set
# `tokenizer.chat_template` to another Jinja template to change it.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


class _ByteFallbackSpmConverter(SpmConverter):
    """transformers' sentencepiece converter, keeping byte fallback (unknown characters → byte pieces) and
    following the model's whitespace settings.

    A model trained here has no dummy prefix and keeps whitespace as it is (`train_sentencepiece_tokenizer`):
    a space belongs to the token after it, the first word of a text has none, and decoding is plain
    concatenation — ``decode(a + b) == decode(a) + decode(b)``, so a continuation decoded on its own (the
    text-generation pipeline, `transformers serve`, streaming) keeps the space before its first word. A
    model with sentencepiece's defaults (dummy prefix ``▁`` on every text, whitespace runs collapsed)
    converts as transformers converts it, its decoder stripping the prefix's space again.
    """

    handle_byte_fallback = True

    def normalizer(self, proto):
        if proto.normalizer_spec.remove_extra_whitespaces:
            return super().normalizer(proto)
        charsmap = proto.normalizer_spec.precompiled_charsmap
        return normalizers.Sequence([normalizers.Precompiled(charsmap)] if charsmap else [])

    def pre_tokenizer(self, replacement: str, add_prefix_space: bool):
        return super().pre_tokenizer(replacement, self.proto.normalizer_spec.add_dummy_prefix)

    def decoder(self, replacement: str, add_prefix_space: bool):
        steps = [decoders.Replace(replacement, " "), decoders.ByteFallback(), decoders.Fuse()]
        if self.proto.normalizer_spec.add_dummy_prefix:
            steps.append(decoders.Strip(content=" ", left=1))
        return decoders.Sequence(steps)


def read_training_texts(
    files: Iterable[str | os.PathLike],
    text_column: str = "text",
    source_lang: str | None = None,
    target_lang: str | None = None,
) -> Iterator[str]:
    """Yield the non-empty texts of `files` for tokenizer training.

    `.txt`/`.text`/`.raw` files give one text per line. `.json`/`.jsonl` files hold one JSON object per
    line (or a JSON list of objects): with `source_lang` and `target_lang` each object must be a
    translation record ``{"translation": {source_lang: ..., target_lang: ...}}`` and both sides are
    yielded (a joint vocabulary); otherwise the `text_column` field is yielded.
    """
    if (source_lang is None) != (target_lang is None):
        raise ValueError("give both source_lang and target_lang (a translation vocabulary) or neither")
    for file in files:
        path = check_data_file(file, "data file", TEXT_SUFFIXES + JSON_SUFFIXES)
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield line.strip()
        else:
            for number, record in _json_records(path):
                yield from _texts_of_record(record, path, number, text_column, source_lang, target_lang)


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        yield from enumerate(json.loads(text), start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(path)!r} line {number} is not valid JSON: {error}") from error


def _texts_of_record(record, path, number, text_column, source_lang, target_lang) -> Iterator[str]:
    where = f"{str(path)!r} record {number}"
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, expected a JSON object")
    if source_lang is None:
        if text_column not in record:
            raise ValueError(f"{where} has no {text_column!r} field (fields: {', '.join(record)})")
        if str(record[text_column]).strip():
            yield str(record[text_column]).strip()
        return
    pair = record.get("translation")
    if not isinstance(pair, dict):
        raise ValueError(f"{where} has no 'translation' object; expected {{\"translation\": {{lang: text}}}}")
    for lang in (source_lang, target_lang):
        if lang not in pair:
            raise ValueError(f"{where} has no {lang!r} text (languages: {', '.join(pair)})")
        if str(pair[lang]).strip():
            yield str(pair[lang]).strip()


def _special_token_options() -> dict[str, int | str]:
    """sentencepiece's trainer options for the special tokens: ids 0-3 and pieces in `SPECIAL_TOKENS`' order
    (``pad_id=0, pad_piece="<pad>", unk_id=1, ...``)."""
    options: dict[str, int | str] = {}
    for token_id, (name, piece) in enumerate(SPECIAL_TOKENS.items()):
        kind = name.removesuffix("_token")
        options[f"{kind}_id"], options[f"{kind}_piece"] = token_id, piece
    return options


def train_sentencepiece_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    max_sentence_length: int = 16384,
    max_training_texts: int = 0,
) -> PreTrainedTokenizerFast:
    """Train sentencepiece on `texts` and return it as a `PreTrainedTokenizerFast`.

    Ids 0-3 are ``<pad>``, ``<unk>``, ``<s>``, ``</s>``; byte fallback is on, so no text maps to
    ``<unk>``. `max_training_texts` > 0 trains on a random sample of that many texts (sentencepiece's
    ``input_sentence_size``). Call `save_tokenizer` to write it with its sentencepiece model.
    """
    import sentencepiece as spm  # noqa: PLC0415 - heavy import only when training

    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is unknown; allowed: {', '.join(MODEL_TYPES)}")
    if vocab_size < 260 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {260 + len(SPECIAL_TOKENS)} (256 byte pieces + specials), got {vocab_size}"
        )
    sentences = [text for text in texts if text.strip()]
    if not sentences:
        raise ValueError("no training text for the tokenizer: every given text is empty")
    with tempfile.TemporaryDirectory() as tmp:
        model_file = os.path.join(tmp, "spm.model")
        with open(model_file, "wb") as writer:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                byte_fallback=True,
                # Lossless: no "▁" prepended to a text, whitespace kept as written (see _ByteFallbackSpmConverter).
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                **_special_token_options(),
                max_sentence_length=max_sentence_length,
                input_sentence_size=max_training_texts,
                shuffle_input_sentence=True,
                hard_vocab_limit=False,
                num_threads=1,
                minloglevel=2,
            )
        return tokenizer_from_sentencepiece(model_file)


def tokenizer_from_sentencepiece(model_file: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Convert a sentencepiece model trained by `train_sentencepiece_tokenizer` to a fast tokenizer."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend  # noqa: PLC0415

    slow = SentencePieceBackend(vocab_file=str(model_file))
    backend = _ByteFallbackSpmConverter(slow).converted()
    # normalized=True: special tokens are matched after whitespace became "▁", so a literal "<unk>"
    # in the text (Penn Treebank has many) keeps the spaces around it when decoded.
    specials = {name: AddedToken(piece, special=True, normalized=True) for name, piece in SPECIAL_TOKENS.items()}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    tokenizer.sentencepiece_model_file = str(model_file)
    with open(model_file, "rb") as handle:
        tokenizer.sentencepiece_model_proto = handle.read()
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, output_dir: str | os.PathLike) -> list[str]:
    """`save_pretrained` plus the sentencepiece model (when the tokenizer was trained here)."""
    files = list(tokenizer.save_pretrained(output_dir))
    proto = getattr(tokenizer, "sentencepiece_model_proto", None)
    if proto is not None:
        path = Path(output_dir) / SENTENCEPIECE_MODEL_FILE
        path.write_bytes(proto)
        files.append(str(path))
    return files


@dataclass
class TokenizerTrainingArguments:
    """The flags of `scripts/train_tokenizer.py`."""

    output_dir: str = field(metadata={"help": "Folder to write the tokenizer to."})
    train_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Text (.txt: one text per line) or JSON-lines files; none: the built-in Penn Treebank."},
    )
    text_column: str = field(default="text", metadata={"help": "Field of JSON records that holds the text."})
    source_lang: str | None = field(default=None, metadata={"help": "Translation: source language key."})
    target_lang: str | None = field(default=None, metadata={"help": "Translation: target language key."})
    vocab_size: int = field(default=8000, metadata={"help": "Size of the vocabulary, special tokens included."})
    model_type: str = field(default="unigram", metadata={"help": f"sentencepiece model: {', '.join(MODEL_TYPES)}."})
    character_coverage: float = field(default=1.0, metadata={"help": "sentencepiece character_coverage."})
    max_training_texts: int = field(
        default=0, metadata={"help": "Train on a random sample of this many texts (0: all)."}
    )


def train_tokenizer_from_arguments(args: TokenizerTrainingArguments) -> PreTrainedTokenizerFast:
    """Train on `train_files` (or the built-in Penn Treebank training split) and save to `output_dir`."""
    if args.train_files:
        texts = read_training_texts(args.train_files, args.text_column, args.source_lang, args.target_lang)
    elif args.source_lang or args.target_lang:
        raise ValueError("a translation vocabulary (--source_lang/--target_lang) needs --train_files")
    else:
        texts = builtin_corpus_texts("train")
    tokenizer = train_sentencepiece_tokenizer(
        texts,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        max_training_texts=args.max_training_texts,
    )
    save_tokenizer(tokenizer, args.output_dir)
    return tokenizer


def main(argv: Sequence[str] | None = None) -> PreTrainedTokenizerFast:
    """Entry point of `scripts/train_tokenizer.py`: ``[config.yaml|config.json] [--flag value ...]``."""
    with argument_errors_exit("train_tokenizer.py"):
        (args,) = parse_config_and_flags([TokenizerTrainingArguments], sys.argv[1:] if argv is None else argv)
    tokenizer = train_tokenizer_from_arguments(args)
    print(f"tokenizer with {len(tokenizer)} tokens saved to {args.output_dir}")
    return tokenizer


__all__ = [
    "SPECIAL_TOKENS",
    "DEFAULT_CHAT_TEMPLATE",
    "MODEL_TYPES",
    "read_training_texts",
    "train_sentencepiece_tokenizer",
    "tokenizer_from_sentencepiece",
    "save_tokenizer",
    "TokenizerTrainingArguments",
    "train_tokenizer_from_arguments",
    "main",
]
