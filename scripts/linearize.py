"""Linearize a pretrained transformer (Llama, Mistral, Qwen2, Qwen3) into a fast weight programmer,
then fine-tune it, with Trainer (attention transfer, then the LM loss):

    python scripts/linearize.py --teacher_model_name_or_path Qwen/Qwen2.5-0.5B --attention_type delta \
        --feature_map hedgehog --keep_softmax_layers 11 --transfer_steps 300 --max_steps 1000 \
        --output_dir outputs/qwen2.5-0.5b-delta
    python scripts/linearize.py configs/linearize/delta.yaml      # the committed local run (docs/linearization.md)
    python scripts/linearize.py configs/linearize/smollm2_hedgehog.yaml   # SmolLM2-135M (docs/linearization_smollm2.md)

The teacher: a Hub id, a local folder, or a llama.cpp .gguf file (`--teacher_gguf_file`, or a .gguf path;
`pip install 'fwp-hf[gguf]'`), saved with its tokenizer next to the student.

Data as in train_lm.py (--dataset_name, --train_file/--validation_file, or the built-in Penn Treebank).
See fwp_hf/training/linearize.py and fwp_hf/conversion/linearize.py.
"""

from fwp_hf.training.linearize import main

if __name__ == "__main__":
    main()
