"""Tiny GGUF checkpoints for the tests, written the way llama.cpp's `convert_hf_to_gguf.py` writes a
Llama (SmolLM2's layout): llama.cpp's metadata keys, its q/k row permutation for rotary embeddings, a
byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) with control tokens ``<|endoftext|>`` (0),
``<|im_start|>`` (1, BOS) and ``<|im_end|>`` (2, EOS and padding) and a chat template, the output
projection left out when it is tied to the embeddings, and (optionally) the MLP matrices quantized to
Q4_1 by the `gguf` package's own quantizer.

`tiny_llama_and_tokenizer()` builds the source model and tokenizer; `write_llama_gguf()` writes them;
`dequantized_reference()` is the source model with every quantized weight replaced by the `gguf`
package's own dequantization of what was written: what a correct GGUF loader must reproduce.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = (
    "Fellow citizens of the Senate and House of Representatives. The state of the union is strong. "
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
    "I thought I would sail about a little and see the watery part of the world. "
) * 4
# Also learned by the tokenizer (not part of TEXT): the sentences of the passkey prompts
# (fwp_hf.experiments.linearization_eval), so that they take few tokens.
TOKENIZER_EXTRA = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                   "I will quiz you about the important information there. The grass is green. The sky is blue. "
                   "The sun is yellow. Here we go. There and back again. The pass key is 12345. Remember it. "
                   "What is the pass key? ") * 4
Q4_1_TENSORS = ("ffn_gate", "ffn_up", "ffn_down")  # quantized when `quantize=True` (rows of 32 = one Q4_1 block)


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 / SmolLM2 style) trained on `TEXT` and `TOKENIZER_EXTRA`, specials at
    ids 0-2."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([TEXT, TOKENIZER_EXTRA], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def tiny_llama_and_tokenizer(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A seeded tiny Llama (2 layers, hidden 32, 4 query heads over 2 k/v heads, tied embeddings) and its tokenizer."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so that a loader that dropped them would be caught
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    return model, tokenizer


def _llama_cpp_permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (rotary pairs (i, i + d/2) → adjacent), per head."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    config = model.config
    state = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}
    tensors = {"token_embd.weight": state["model.embed_tokens.weight"],
               "output_norm.weight": state["model.norm.weight"]}
    if not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        ours, theirs = f"model.layers.{i}.", f"blk.{i}."
        tensors[theirs + "attn_norm.weight"] = state[ours + "input_layernorm.weight"]
        tensors[theirs + "attn_q.weight"] = _llama_cpp_permute(state[ours + "self_attn.q_proj.weight"],
                                                                config.num_attention_heads)
        tensors[theirs + "attn_k.weight"] = _llama_cpp_permute(state[ours + "self_attn.k_proj.weight"],
                                                                config.num_key_value_heads)
        tensors[theirs + "attn_v.weight"] = state[ours + "self_attn.v_proj.weight"]
        tensors[theirs + "attn_output.weight"] = state[ours + "self_attn.o_proj.weight"]
        tensors[theirs + "ffn_norm.weight"] = state[ours + "post_attention_layernorm.weight"]
        for part in ("gate", "up", "down"):
            tensors[theirs + f"ffn_{part}.weight"] = state[ours + f"mlp.{part}_proj.weight"]
    return tensors


def write_llama_gguf(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path,
                     quantize: bool = True) -> Path:
    """Write `model` and `tokenizer` as a llama.cpp GGUF file at `path` (MLP matrices in Q4_1 if `quantize`)."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_license("apache-2.0")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type(3 if quantize else 0)  # MOSTLY_Q4_1 / ALL_F32
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    assert [index for _, index in vocabulary] == list(range(len(vocabulary)))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list([token for token, _ in vocabulary])
    writer.add_token_types([3 if token in SPECIAL_TOKENS else 1 for token, _ in vocabulary])  # 3: CONTROL, 1: NORMAL
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([merge if isinstance(merge, str) else " ".join(merge) for merge in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)
    for name, array in _gguf_tensors(model).items():
        if quantize and any(f".{part}." in name for part in Q4_1_TENSORS):
            writer.add_tensor(name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q4_1),
                              raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized_reference(model: LlamaForCausalLM, quantize: bool = True) -> LlamaForCausalLM:
    """`model` with every tensor `write_llama_gguf` quantizes replaced by the `gguf` package's own
    dequantization of it (Q4_1 round trip): the model a GGUF loader must give back."""
    import gguf

    reference = LlamaForCausalLM(model.config).eval()
    reference.load_state_dict(model.state_dict())
    if quantize:
        with torch.no_grad():
            for layer in reference.model.layers:
                for linear in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                    kind = gguf.GGMLQuantizationType.Q4_1
                    packed = gguf.quants.quantize(linear.weight.numpy(), kind)
                    linear.weight.copy_(torch.from_numpy(gguf.quants.dequantize(packed, kind).copy()))
    return reference
