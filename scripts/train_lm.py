"""Train, evaluate and share an FWP language model (transformers' run_clm.py, for fast weight programmers).

    python scripts/train_lm.py configs/lm/tiny.yaml                      # a config file
    python scripts/train_lm.py configs/lm/delta.yaml --max_steps 100     # a config file, flags override it
    python scripts/train_lm.py --output_dir out --do_train --do_eval --attention_type linear   # flags only
    python scripts/train_lm.py configs/lm/delta_carry.yaml               # state carried across segments
    accelerate launch --multi_gpu --num_processes 2 scripts/train_lm.py configs/lm/tiny.yaml --use_cpu true
                                                              # two CPU processes (gloo); see docs/train_lm.md

Without data arguments it trains on the built-in Penn Treebank (offline). Without --tokenizer_name it
trains a sentencepiece tokenizer on the training split. The output folder holds the weights, config
(with auto_map), model code, tokenizer and a model card (README.md); --push_to_hub --hub_model_id
owner/name uploads it. See `python scripts/train_lm.py --help` and fwp_hf/training/lm.py.
"""

from fwp_hf.training.lm import main

if __name__ == "__main__":
    main()
