"""Train and evaluate an FWP encoder–decoder translation model (transformers' run_translation.py, for FWPs).

    python scripts/prepare_data.py --output_dir data/bible_en_fr                       # the real corpus (once)
    python scripts/train_translation.py configs/translation/delta_small.yaml            # a config file
    python scripts/train_translation.py configs/translation/delta_small.yaml --max_steps 100   # flags override it
    python scripts/train_translation.py --output_dir out --do_train --do_predict --predict_with_generate \
        --train_file train.jsonl --test_file test.jsonl --source_lang en --target_lang fr --attention_type delta
    python scripts/train_translation.py --dataset_name wmt14 --dataset_config_name de-en \
        --source_lang en --target_lang de ...                                           # a Hub dataset (internet)

Without --tokenizer_name a joint source+target sentencepiece tokenizer is trained on the training
split. The output folder holds the model, tokenizer, checkpoints, {train,eval,test,all}_results.json
(test BLEU/chrF from sacrebleu next to a copy-the-source baseline), generated_predictions.txt and
test_predictions.jsonl. See `python scripts/train_translation.py --help` and fwp_hf/training/translation.py.
"""

from fwp_hf.training.translation import main

if __name__ == "__main__":
    main()
