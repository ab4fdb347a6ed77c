"""Export an FWP causal LM to ONNX (opset 27: `LinearAttention`, `CausalConvWithState`) and check it in onnxruntime.

    python scripts/export_onnx.py --model_name_or_path outputs/tiny --output_dir outputs/tiny-onnx

Writes `prefill.onnx` (input_ids [B, T ≥ 2] and the per-layer states → logits and new states), `decode.onnx`
(one token per sequence) and `fwp_onnx.json` (input/output names, state shapes), then compares onnxruntime
(CPU) with PyTorch: prefill logits and `--check_tokens` greedy steps. Needs `pip install -e ".[onnx]"`.
Softmax layers and Ba et al.'s fast weights are refused with the reason. See fwp_hf/conversion/onnx_export.py.
"""

from fwp_hf.conversion.onnx_export import main

if __name__ == "__main__":
    main()
