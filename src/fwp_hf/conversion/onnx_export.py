"""Export FWP language models to ONNX with the standard `LinearAttention` and `CausalConvWithState` ops (opset 27).

Two programs per model, both functions of explicit states (`cache_fwp.FastWeightStateStep`):

- ``prefill.onnx``: ``(input_ids [B, T ≥ 2], *states) -> (logits [B, T, V], *new_states)``;
- ``decode.onnx``:  ``(input_ids [B, 1], *states) -> (logits [B, 1, V], *new_states)``.

Per layer the states are its fp32 fast-weight state ``[B, H, d_key, d_value]`` and, with ``use_short_conv``,
its convolution window ``[B, channels, conv_size − 1]``; zeros before the first token. Batch and prompt length
are dynamic.

Every fast-weight mixer whose recurrence ONNX's `LinearAttention` expresses is emitted as that op: the sum
rules (``linear``, ``performer``, ``dpfp``, ``hedgehog``) as ``update_rule="linear"`` — the normaliser
``z = Σ φ(k)`` rides along as an extra value column of ones (the state is ``d_key × (d_value + 1)``, as in
PyTorch), and the read is divided by it with ordinary ops —, ``delta`` as ``"delta"`` and ``gated_delta`` as
``"gated_delta"`` (per-head log-decay g and rate β as the op's ``decay`` / ``beta`` inputs). φ, the key
normalisation, query scaling (the op's ``scale`` is 1), the gates' projections, output norm and gate stay
ordinary ops around it. The short convolution is `CausalConvWithState`. During export the mixers' kernels are
swapped for two torch custom ops (`fwp_hf_onnx::linear_attention`, `fwp_hf_onnx::causal_conv_with_state`)
whose PyTorch implementation *is* fwp_hf's kernels and whose translation for torch's dynamo exporter is the
ONNX op; the model is left as it was.

Not exported, with a clear error: softmax layers (hybrids included; a key/value cache, which the state-step
programs do not carry — `FastWeightStateStep` refuses them) and Ba et al.'s ``fast_weights`` (its memory
is read *before* the write and then passed through an inner loop, which `LinearAttention`'s read-after-write
cannot express). Padding masks and packed documents are not inputs of the exported programs.

torch's exporter builds ordinary ops at its own opset (20) and its version converter has no adapter for the
opset-27 ops (it logs that and keeps the graph): the default-domain import is then set to 27, which the
ordinary ops it emits (unchanged in meaning since opset 20) allow; `onnx.checker` validates the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cache_fwp import FastWeightStateStep
from ..fast_weight_kernels import (
    chunk_delta_rule,
    chunk_sum_rule,
    recurrent_delta_rule,
    recurrent_sum_rule,
    short_causal_conv,
)
from ..layers_fwp import FWPShortConvolution
from ..token_mixers import FAST_WEIGHT_LAYER, TOKEN_MIXERS, TokenMixerSpec

ONNX_OPSET = 27  # LinearAttention and CausalConvWithState
PREFILL_FILE, DECODE_FILE, METADATA_FILE = "prefill.onnx", "decode.onnx", "fwp_onnx.json"

# LinearAttention's update rule for each fwp_hf kernel family, without / with a per-token log-decay.
_UPDATE_RULES = {chunk_sum_rule: ("linear", "gated"), chunk_delta_rule: ("delta", "gated_delta")}
_KERNELS = {
    "linear": (chunk_sum_rule, recurrent_sum_rule), "gated": (chunk_sum_rule, recurrent_sum_rule),
    "delta": (chunk_delta_rule, recurrent_delta_rule), "gated_delta": (chunk_delta_rule, recurrent_delta_rule),
}


class OnnxExportError(ValueError):
    """The model has a layer the ONNX export cannot express."""


def linear_attention_rule(attention_type: str) -> str | None:
    """`LinearAttention`'s ``update_rule`` for a layer type, or None when the op cannot express it."""
    spec = TOKEN_MIXERS[attention_type]
    if spec.layer != FAST_WEIGHT_LAYER or spec.chunk not in _UPDATE_RULES:
        return None
    return _UPDATE_RULES[spec.chunk]["log_decay" in spec.gates]


# ------------------------------------------------------------------------------------------------
# Custom ops: fwp_hf's kernels in PyTorch, the ONNX ops in the exported graph
# ------------------------------------------------------------------------------------------------

def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, T, H·D]`` → ``[B, H, T, D]``."""
    return x.view(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


@torch.library.custom_op("fwp_hf_onnx::linear_attention", mutates_args=())
def linear_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, past_state: torch.Tensor,
    decay: torch.Tensor | None, beta: torch.Tensor | None, update_rule: str, num_heads: int, chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX `LinearAttention` (scale 1, ``q_num_heads = kv_num_heads = num_heads``) computed by fwp_hf's kernels.

    query, key ``[B, T, H·d_k]``, value ``[B, T, H·d_v]``, past_state ``[B, H, d_k, d_v]``, decay (log α) and
    beta ``[B, T, H]`` or None -> (output ``[B, T, H·d_v]``, present_state ``[B, H, d_k, d_v]``).
    """
    chunk, recurrent = _KERNELS[update_rule]
    kernel = chunk if query.shape[1] > 1 else recurrent
    gates = {}
    if decay is not None:
        gates["log_decay"] = decay.transpose(1, 2)
    if beta is not None:
        gates["beta"] = beta.transpose(1, 2)
    y, state = kernel(_heads(query, num_heads), _heads(key, num_heads), _heads(value, num_heads),
                      initial_state=past_state, chunk_size=chunk_size, **gates)
    return y.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1).contiguous(), state.contiguous()


@linear_attention.register_fake
def _linear_attention_shape(query, key, value, past_state, decay, beta, update_rule, num_heads, chunk_size):
    return value.new_empty(value.shape, dtype=torch.float32), past_state.new_empty(past_state.shape)


@torch.library.custom_op("fwp_hf_onnx::causal_conv_with_state", mutates_args=())
def causal_conv_with_state(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, past_state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONNX `CausalConvWithState` (no activation) computed by `short_causal_conv`: x ``[B, C, T]``, weight
    ``[C, 1, W]``, past_state ``[B, C, W − 1]`` -> (y ``[B, C, T]``, present_state ``[B, C, W − 1]``)."""
    y, window = short_causal_conv(x.transpose(1, 2), weight[:, 0], bias, past_state)
    return y.transpose(1, 2).contiguous(), window.contiguous()


@causal_conv_with_state.register_fake
def _causal_conv_shape(x, weight, bias, past_state):
    return x.new_empty(x.shape), past_state.new_empty(past_state.shape)


def _onnx_translations() -> dict:
    """The dynamo exporter's translation of each custom op into its opset-27 ONNX op."""
    from onnxscript import values  # noqa: PLC0415 - optional dependency (the `onnx` extra)

    opset = values.Opset("", ONNX_OPSET)

    def linear_attention_onnx(query, key, value, past_state, decay, beta, update_rule: str, num_heads: int,
                              chunk_size: int):
        return opset.LinearAttention(
            query, key, value, past_state, decay, beta, update_rule=update_rule, q_num_heads=num_heads,
            kv_num_heads=num_heads, scale=1.0, chunk_size=chunk_size, _outputs=2,
        )

    def causal_conv_onnx(x, weight, bias, past_state):
        return opset.CausalConvWithState(x, weight, bias, past_state, activation="none", _outputs=2)

    return {
        torch.ops.fwp_hf_onnx.linear_attention.default: linear_attention_onnx,
        torch.ops.fwp_hf_onnx.causal_conv_with_state.default: causal_conv_onnx,
    }


# ------------------------------------------------------------------------------------------------
# Swapping the kernels of a model for the custom ops (for the duration of an export)
# ------------------------------------------------------------------------------------------------

def _linear_attention_kernel(update_rule: str):
    """A kernel with the family signature (``[B, H, T, D]`` layout) that calls `linear_attention`."""

    def kernel(q, k, v, *, beta=None, log_decay=None, initial_state=None, chunk_size=64, seq_idx=None):
        if seq_idx is not None:
            raise OnnxExportError("packed documents (seq_idx) are not an input of the exported programs")
        batch, heads, length, _ = q.shape
        if initial_state is None:
            initial_state = q.new_zeros(batch, heads, k.shape[-1], v.shape[-1], dtype=torch.float32)
        packed = [x.transpose(1, 2).reshape(batch, length, -1) for x in (q, k, v)]
        gates = [None if gate is None else gate.transpose(1, 2) for gate in (log_decay, beta)]
        y, state = torch.ops.fwp_hf_onnx.linear_attention(*packed, initial_state, *gates, update_rule, heads,
                                                         chunk_size)
        return _heads(y, heads), state

    return kernel


def _conv_forward(conv: FWPShortConvolution):
    def forward(x, window=None, seq_idx=None):
        if seq_idx is not None:
            raise OnnxExportError("packed documents (seq_idx) are not an input of the exported programs")
        if window is None:
            window = x.new_zeros(x.shape[0], x.shape[2], conv.weight.shape[-1] - 1)
        y, new_window = torch.ops.fwp_hf_onnx.causal_conv_with_state(x.transpose(1, 2), conv.weight, conv.bias,
                                                                    window.to(x.dtype))
        return y.transpose(1, 2), new_window

    return forward


def check_exportable(config) -> None:
    """Raise `OnnxExportError` naming the layers the export cannot express (see the module docstring)."""
    kinds = list(config.layer_attention_types)
    refused = sorted({kind for kind in kinds if linear_attention_rule(kind) is None})
    if getattr(config, "is_encoder_decoder", False):
        raise OnnxExportError("the ONNX export covers decoder-only FWPForCausalLM models, not the encoder–decoder")
    if refused:
        expressible = sorted(name for name in TOKEN_MIXERS if linear_attention_rule(name) is not None)
        raise OnnxExportError(
            f"layer types {refused} cannot be exported: ONNX's LinearAttention expresses the read-after-write "
            f"recurrences of {expressible}; softmax layers keep a growing key/value cache and Ba et al.'s memory "
            "is read before its write and through an inner loop"
        )


@contextmanager
def onnx_kernels(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every fast-weight mixer of `model` runs `linear_attention` and every short
    convolution `causal_conv_with_state` (same values: their implementation is fwp_hf's kernels)."""
    check_exportable(model.config)
    swapped = []
    for module in model.modules():
        spec = getattr(module, "spec", None)
        if isinstance(spec, TokenMixerSpec) and spec.layer == FAST_WEIGHT_LAYER:
            kernel = _linear_attention_kernel(linear_attention_rule(spec.name))
            swapped.append((module, "spec", module.spec))
            module.spec = dataclasses.replace(spec, chunk=kernel, recurrent=kernel)
        elif isinstance(module, FWPShortConvolution):
            swapped.append((module, "forward", None))
            module.forward = _conv_forward(module)
    try:
        yield
    finally:
        for module, name, original in swapped:
            if original is None:
                del module.forward  # back to the class's method
            else:
                setattr(module, name, original)


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

def state_names(step: FastWeightStateStep) -> list[str]:
    """Names of the state inputs, in `FastWeightStateStep` order: ``state.{layer}`` then ``conv_window.{layer}``."""
    names = []
    for layer, count in enumerate(step.tensors_per_layer):
        names += [f"state.{layer}", f"conv_window.{layer}"][:count]
    return names


def _export_program(step, input_ids, states, path: Path, prefill: bool) -> None:
    import onnx  # noqa: PLC0415 - optional dependency

    names = state_names(step)
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("sequence", min=2)
    dynamic_shapes = ({0: batch, 1: length} if prefill else {0: batch}, tuple({0: batch} for _ in states))
    with torch.no_grad():
        program = torch.onnx.export(
            step, (input_ids, *states), dynamo=True, input_names=["input_ids", *names],
            output_names=["logits", *(f"present_{name}" for name in names)],
            dynamic_shapes=dynamic_shapes, custom_translation_table=_onnx_translations(), optimize=True,
            opset_version=ONNX_OPSET, verbose=False,
        )
    model = program.model_proto
    for entry in model.opset_import:
        if entry.domain == "":
            entry.version = ONNX_OPSET
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(model: torch.nn.Module, output_dir: str | os.PathLike, prompt_length: int = 8) -> dict:
    """Write ``prefill.onnx``, ``decode.onnx`` and ``fwp_onnx.json`` (input/output names, state shapes) for
    an FWP causal LM into `output_dir`; raises `OnnxExportError` for layers it cannot express."""
    check_exportable(model.config)
    model = model.eval()
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        raise OnnxExportError("export an fp32 model (the exported states and kernels are fp32)")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    step = FastWeightStateStep(model).eval()
    states = step.zero_states(2)
    written = [output / PREFILL_FILE, output / DECODE_FILE]
    try:
        with onnx_kernels(model):
            _export_program(step, torch.ones(2, prompt_length, dtype=torch.long), states, written[0], True)
            _export_program(step, torch.ones(2, 1, dtype=torch.long), states, written[1], False)
    except BaseException:
        for path in written:  # nothing half-written
            path.unlink(missing_ok=True)
        raise
    metadata = {
        "opset": ONNX_OPSET,
        "programs": {"prefill": PREFILL_FILE, "decode": DECODE_FILE},
        "inputs": ["input_ids", *state_names(step)],
        "outputs": ["logits", *(f"present_{name}" for name in state_names(step))],
        "state_shapes_per_sequence": {name: list(tensor.shape[1:]) for name, tensor in
                                      zip(state_names(step), states)},
        "update_rules": {str(i): linear_attention_rule(kind) for i, kind in enumerate(step.kinds)},
    }
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


class OnnxFastWeightLM:
    """Greedy generation with the exported programs in onnxruntime (CPU): prefill once, then one-token steps."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime  # noqa: PLC0415 - optional dependency

        folder = Path(folder)
        self.metadata = json.loads((folder / METADATA_FILE).read_text())
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.prefill_session = onnxruntime.InferenceSession(str(folder / PREFILL_FILE), options,
                                                            providers=["CPUExecutionProvider"])
        self.decode_session = onnxruntime.InferenceSession(str(folder / DECODE_FILE), options,
                                                           providers=["CPUExecutionProvider"])

    def zero_states(self, batch_size: int) -> list:
        import numpy as np  # noqa: PLC0415

        shapes = self.metadata["state_shapes_per_sequence"]
        return [np.zeros((batch_size, *shapes[name]), dtype=np.float32) for name in self.metadata["inputs"][1:]]

    def run(self, input_ids, states, decode: bool):
        """One program call: returns (logits, new states)."""
        session = self.decode_session if decode else self.prefill_session
        feeds = dict(zip(self.metadata["inputs"], [input_ids, *states]))
        logits, *new_states = session.run(None, feeds)
        return logits, new_states

    def timed_greedy(self, input_ids, new_tokens: int) -> dict:
        """Greedy decoding of `new_tokens` (≥ 2) after ``input_ids [B, T ≥ 2]``, timed as the benchmark's
        `timed_generate`: ``prefill_s`` (start to the first token's logits) and ``decode_tokens_per_s``
        (B · (new_tokens − 1) tokens over the one-token steps after the first token)."""
        import time  # noqa: PLC0415

        if new_tokens < 2:
            raise ValueError(
                f"new_tokens must be at least 2 (one prefill token, then decoding steps), got {new_tokens}"
            )
        start = time.perf_counter()
        logits, states = self.run(input_ids, self.zero_states(input_ids.shape[0]), decode=False)
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = logits[:, -1].argmax(-1)[:, None].astype(input_ids.dtype)
            logits, states = self.run(token, states, decode=True)
        end = time.perf_counter()
        return {"prefill_s": first - start,
                "decode_tokens_per_s": input_ids.shape[0] * (new_tokens - 1) / (end - first)}

    def greedy(self, input_ids, max_new_tokens: int):
        """Greedy continuation ``[B, max_new_tokens]`` of a prompt ``[B, T ≥ 2]`` (int64 numpy)."""
        import numpy as np  # noqa: PLC0415

        logits, states = self.run(input_ids, self.zero_states(input_ids.shape[0]), decode=False)
        tokens = []
        for _ in range(max_new_tokens):
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            tokens.append(token)
            logits, states = self.run(token, states, decode=True)
        return np.concatenate(tokens, axis=1)


# ------------------------------------------------------------------------------------------------
# CLI (scripts/export_onnx.py)
# ------------------------------------------------------------------------------------------------

@dataclass
class OnnxExportArguments:
    model_name_or_path: str = field(metadata={"help": "FWP checkpoint folder or Hub id (an FWPForCausalLM)."})
    output_dir: str = field(metadata={"help": "Folder for prefill.onnx, decode.onnx and fwp_onnx.json."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Load the checkpoint's own model code."})
    check_tokens: int = field(
        default=32, metadata={"help": "Greedy steps to compare onnxruntime with PyTorch (0: skip)."}
    )


def compare_with_pytorch(model, folder, prompt: torch.Tensor, new_tokens: int) -> dict:
    """Prefill logits and greedy tokens of onnxruntime against PyTorch: max |Δlogit| and whether tokens agree."""
    runtime = OnnxFastWeightLM(folder)
    ids = prompt.numpy()
    ort_logits, _ = runtime.run(ids, runtime.zero_states(ids.shape[0]), decode=False)
    with torch.no_grad():
        torch_logits = model(prompt).logits.numpy()
        torch_tokens = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False)[:, prompt.shape[1]:].numpy()
    ort_tokens = runtime.greedy(ids, new_tokens)
    return {"prefill_max_abs_logit_difference": float(abs(ort_logits - torch_logits).max()),
            "greedy_tokens_equal": bool((ort_tokens == torch_tokens).all()), "greedy_tokens": new_tokens}


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of `scripts/export_onnx.py`."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from ..shared.cli import argument_errors_exit, parse_config_and_flags  # noqa: PLC0415

    with argument_errors_exit("export_onnx.py"):
        (args,) = parse_config_and_flags([OnnxExportArguments], sys.argv[1:] if argv is None else argv)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code,
                                                 dtype=torch.float32)
    metadata = export_onnx(model, args.output_dir)
    print(f"wrote {PREFILL_FILE} and {DECODE_FILE} to {args.output_dir} (update rules: {metadata['update_rules']})")
    if args.check_tokens:
        prompt = torch.randint(4, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
        check = compare_with_pytorch(model, args.output_dir, prompt, args.check_tokens)
        print(json.dumps(check))
        metadata["check"] = check
    return metadata


__all__ = [
    "ONNX_OPSET", "OnnxExportError", "OnnxFastWeightLM", "OnnxExportArguments", "check_exportable",
    "compare_with_pytorch", "export_onnx", "linear_attention", "causal_conv_with_state", "linear_attention_rule",
    "onnx_kernels", "state_names", "main",
]
