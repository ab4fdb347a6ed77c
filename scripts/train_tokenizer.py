"""Train a sentencepiece tokenizer and save it as a Hugging Face tokenizer folder.

Language modelling (one vocabulary from text files, or the built-in Penn Treebank training split):

    python scripts/train_tokenizer.py --output_dir outputs/tokenizer-ptb --vocab_size 8000
    python scripts/train_tokenizer.py --train_files corpus.txt more.jsonl --output_dir outputs/tok

Translation (one joint source + target vocabulary from JSON-lines {"translation": {...}} files):

    python scripts/train_tokenizer.py --train_files train.jsonl --source_lang en --target_lang fr \
        --output_dir outputs/tokenizer-en-fr

The folder loads with `AutoTokenizer.from_pretrained(output_dir)` and holds `sentencepiece.model` too.
See `--help` and fwp_hf/training/tokenization.py.
"""

from fwp_hf.training.tokenization import main

if __name__ == "__main__":
    main()
