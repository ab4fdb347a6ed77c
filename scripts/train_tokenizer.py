"""Train a sentencepiece tokenizer and save it as a Hugging Face tokenizer folder.

Language modelling (one vocabulary from text files, or the built-in Penn Treebank training split):

    python scripts/train_tokenizer.py --output_dir outputs/tokenizer-ptb --vocab_size 8000
    python scripts/train_tokenizer.py --train_files corpus.txt more.jsonl --output_dir outputs/tok

Translation (one joint source + target vocabulary from JSON-lines {"translation": {...}} files):

    python scripts/train_tokenizer.py --train_files train.jsonl --source_lang en --target_lang fr \
        --output_dir outputs/tokenizer-en-fr

The folder loads with `AutoTokenizer.from_pretrained(output_dir)` and holds `sentencepiece.model` too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from fwp_hf.training.lm_data import builtin_corpus_texts
from fwp_hf.training.tokenization import MODEL_TYPES, read_training_texts, save_tokenizer, train_sentencepiece_tokenizer


@dataclass
class TokenizerTrainingArguments:
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


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(TokenizerTrainingArguments)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        (args,) = loader(argv[0], allow_extra_keys=False)
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
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
    print(f"tokenizer with {len(tokenizer)} tokens saved to {args.output_dir}")


if __name__ == "__main__":
    main()
