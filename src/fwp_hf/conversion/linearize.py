"""Linearize a pretrained softmax transformer (Llama, Mistral, Qwen2, Qwen3) into a fast weight programmer.

The student keeps the teacher's embeddings, norms and MLPs; each converted layer becomes a fast-weight
layer (`delta`, `gated_delta`, a sum rule, ...) whose q/k/v/o projections (with their biases and
Qwen3's q/k norms) are the teacher's, and whose new parameters (β and decay gates, a learned feature
map such as Hedgehog's) are freshly initialised; the layers in `keep_softmax_layers` stay softmax
attention with all their weights (a hybrid). Then (Kasai et al. 2021, T2R; Zhang et al. 2024,
Hedgehog; Zhang et al. 2025, LoLCATs):

1. attention transfer (`AttentionTransferModel`): only the new parameters are trained, so that each
   converted layer's output matches the teacher's attention output on the teacher's own hidden
   states (per-layer MSE; the teacher frozen);
2. fine-tuning of the whole student with the language-modelling loss.

`fwp_hf.training.linearize` (behind `scripts/linearize.py`) runs both with `Trainer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from ..configuration_fwp import FWPConfig
from ..layers_fwp import MixerInputs
from ..modeling_fwp import FWPForCausalLM
from ..options_fwp import HIDDEN_ACTIVATIONS
from ..token_mixers import FAST_WEIGHT_LAYER, SOFTMAX_ATTENTION_LAYER, TOKEN_MIXERS

SUPPORTED_TEACHER_TYPES = ("llama", "mistral", "qwen2", "qwen3")

# Which attention projections of each family have biases: (q/k/v, o).
_BIASES = {
    "llama": lambda c: (bool(getattr(c, "attention_bias", False)), bool(getattr(c, "attention_bias", False))),
    "mistral": lambda c: (False, False),
    "qwen2": lambda c: (True, False),
    "qwen3": lambda c: (bool(getattr(c, "attention_bias", False)), bool(getattr(c, "attention_bias", False))),
}


class LinearizationError(ValueError):
    """A teacher or option the linearization cannot map exactly; the message names it."""


def _teacher_sliding_windows(config: PretrainedConfig) -> list[int | None]:
    """The attention window of every teacher layer (None: full causal attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        window = None
    if layer_types is None:
        return [window] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else None for kind in layer_types]


def _rope(config: PretrainedConfig) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling_parameters or None) of a teacher config (transformers v5 `rope_parameters`)."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    theta = parameters.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = parameters.get("rope_type", "default")
    return float(theta), (None if rope_type == "default" else {**parameters})


def student_config_from_teacher(
    teacher_config: PretrainedConfig,
    attention_type: str = "delta",
    feature_map: str | None = None,
    keep_softmax_layers: tuple[int, ...] | list[int] = (),
    **overrides: Any,
) -> FWPConfig:
    """The `FWPConfig` of a student that holds the teacher's weights exactly.

    Every layer is `attention_type` except those in `keep_softmax_layers` (softmax, with the teacher's
    window). `feature_map` is φ for the delta rules (default: FWPConfig's). `overrides` go to FWPConfig.
    Raises `LinearizationError` for an unsupported family, a bad layer index or an attention type that
    cannot take the teacher's q/k/v.
    """
    model_type = getattr(teacher_config, "model_type", None)
    if model_type not in SUPPORTED_TEACHER_TYPES:
        raise LinearizationError(
            f"teacher model_type {model_type!r} is not supported; supported families: "
            f"{', '.join(SUPPORTED_TEACHER_TYPES)} (Llama-style decoders with q/k/v/o projections and a gated MLP)"
        )
    spec = TOKEN_MIXERS.get(attention_type)
    if spec is None or spec.layer not in (FAST_WEIGHT_LAYER, SOFTMAX_ATTENTION_LAYER):
        convertible = [name for name, s in TOKEN_MIXERS.items() if s.layer == FAST_WEIGHT_LAYER]
        raise LinearizationError(
            f"attention_type {attention_type!r} cannot be initialised from a teacher's q/k/v/o; use one of "
            f"{', '.join(convertible)}"
        )
    layers = teacher_config.num_hidden_layers
    keep = sorted(set(keep_softmax_layers))
    bad = [i for i in keep if not isinstance(i, int) or not 0 <= i < layers]
    if bad:
        raise LinearizationError(f"keep_softmax_layers {bad} are not layer indices of the teacher (0 … {layers - 1})")
    if getattr(teacher_config, "hidden_act", "silu") not in HIDDEN_ACTIVATIONS:
        raise LinearizationError(
            f"teacher hidden_act {teacher_config.hidden_act!r} is not supported ({', '.join(HIDDEN_ACTIVATIONS)})"
        )
    kinds = ["softmax" if i in keep else attention_type for i in range(layers)]
    # The teacher's windows of the layers that stay softmax (the kept ones, or all of them with
    # attention_type="softmax"); None: full causal attention.
    windows = _teacher_sliding_windows(teacher_config)
    softmax_layers = [i for i, kind in enumerate(kinds) if kind == "softmax"]
    kept_windows = {windows[i] for i in softmax_layers}
    if len(kept_windows) > 1:
        raise LinearizationError(
            f"the softmax layers {softmax_layers} (keep_softmax_layers, or every layer with attention_type='softmax') "
            "mix sliding-window and full attention layers of the teacher "
            f"(windows {sorted(kept_windows, key=str)}); FWP's softmax layers share one window"
        )
    has_softmax = "softmax" in kinds
    has_fast = any(kind != "softmax" for kind in kinds)
    theta, rope_scaling_parameters = _rope(teacher_config)
    qkv_bias, o_bias = _BIASES[model_type](teacher_config)
    heads = teacher_config.num_attention_heads
    kv_heads = getattr(teacher_config, "num_key_value_heads", None) or heads
    head_dim = getattr(teacher_config, "head_dim", None) or teacher_config.hidden_size // heads
    values: dict[str, Any] = dict(
        vocab_size=teacher_config.vocab_size,
        hidden_size=teacher_config.hidden_size,
        intermediate_size=teacher_config.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        head_dim=head_dim,
        attention_type=kinds if len(set(kinds)) > 1 else kinds[0],
        hidden_act=teacher_config.hidden_act,
        rms_norm_eps=teacher_config.rms_norm_eps,
        tie_word_embeddings=bool(getattr(teacher_config, "tie_word_embeddings", False)),
        rope_theta=theta,
        attention_bias=qkv_bias,
        pad_token_id=getattr(teacher_config, "pad_token_id", None),
        bos_token_id=getattr(teacher_config, "bos_token_id", None),
        eos_token_id=getattr(teacher_config, "eos_token_id", None),
    )
    # The teacher's attention layer, as the option group of each layer kind the student has.
    projection = dict(output_bias=o_bias, qk_norm=model_type == "qwen3")
    if has_fast:
        values["fast_weight"] = dict(projection, key_value_heads=None if kv_heads == heads else kv_heads)
        if feature_map is not None:
            values["fast_weight"]["feature_map"] = feature_map
        if spec.uses_rotary:  # a fast-weight layer that rotates q and k (hedgehog_window's softmax window)
            if rope_scaling_parameters is not None and not has_softmax:
                raise LinearizationError(
                    f"the teacher's rope scaling {rope_scaling_parameters!r} is read from the softmax layers' options; "
                    f"a student of {attention_type!r} layers only cannot take it yet: keep a softmax layer "
                    "(keep_softmax_layers) or use a teacher with default rope"
                )
            values["max_position_embeddings"] = getattr(teacher_config, "max_position_embeddings", None)
    if has_softmax:
        values["softmax_attention"] = dict(projection, sliding_window=kept_windows.pop(),
                                           rope_scaling=rope_scaling_parameters)
        values.update(num_key_value_heads=None if kv_heads == heads else kv_heads,
                      max_position_embeddings=getattr(teacher_config, "max_position_embeddings", None))
    # an override of a group changes the fields it names (flat keys of older configs are read too)
    values = FWPConfig.merged_config_dict(values, overrides)
    try:
        return FWPConfig(**values)
    except ValueError as error:
        raise LinearizationError(f"the {model_type} teacher maps onto an invalid FWPConfig: {error}") from error


def _copy(target: dict[str, torch.Tensor], name: str, source: torch.Tensor) -> None:
    if target[name].shape != source.shape:
        raise LinearizationError(
            f"student parameter {name} has shape {tuple(target[name].shape)}, the teacher's "
            f"{tuple(source.shape)}: the student config does not match the teacher"
        )
    target[name] = source.detach().to(target[name].dtype).clone()


def copy_teacher_weights(student: FWPForCausalLM, teacher: PreTrainedModel) -> list[str]:
    """Copy every teacher weight into its place in `student` (built from `student_config_from_teacher`);
    return the names of the student parameters that are new (not from the teacher)."""
    theirs = teacher.state_dict()
    ours = student.state_dict()
    copied: set[str] = set()

    def take(name: str, source_name: str) -> None:
        _copy(ours, name, theirs[source_name])
        copied.add(name)

    take("model.embed_tokens.weight", "model.embed_tokens.weight")
    take("model.norm.weight", "model.norm.weight")
    if not student.config.tie_word_embeddings:
        take("lm_head.weight", "lm_head.weight")
    for i, layer in enumerate(student.model.layers):
        ours_prefix, theirs_prefix = f"model.layers.{i}.", f"model.layers.{i}."
        take(ours_prefix + "input_layernorm.weight", theirs_prefix + "input_layernorm.weight")
        take(ours_prefix + "post_attention_layernorm.weight", theirs_prefix + "post_attention_layernorm.weight")
        gate_up = torch.cat([theirs[theirs_prefix + "mlp.gate_proj.weight"],
                             theirs[theirs_prefix + "mlp.up_proj.weight"]])
        _copy(ours, ours_prefix + "mlp.gate_up_proj.weight", gate_up)
        copied.add(ours_prefix + "mlp.gate_up_proj.weight")
        take(ours_prefix + "mlp.down_proj.weight", theirs_prefix + "mlp.down_proj.weight")
        mixer, attn = ours_prefix + "mixer.", theirs_prefix + "self_attn."
        for suffix in ("o_proj.weight", "o_proj.bias", "q_norm.weight", "k_norm.weight"):
            if mixer + suffix in ours:
                take(mixer + suffix, attn + suffix)
        if TOKEN_MIXERS[layer.attention_type].layer == SOFTMAX_ATTENTION_LAYER:
            for part in ("q_proj", "k_proj", "v_proj"):
                for kind in ("weight", "bias"):
                    if f"{mixer}{part}.{kind}" in ours:
                        take(f"{mixer}{part}.{kind}", f"{attn}{part}.{kind}")
            continue
        # The fused projection: the teacher's q, k, v rows, then the new gate rows (left as initialised).
        width = layer.mixer.qkv_width
        for kind in ("weight", "bias"):
            name = f"{mixer}qkv_proj.{kind}"
            if name not in ours:
                continue
            qkv = torch.cat([theirs[f"{attn}{part}.{kind}"] for part in ("q_proj", "k_proj", "v_proj")])
            fused = ours[name].clone()
            if fused[:width].shape != qkv.shape:
                raise LinearizationError(
                    f"student {name} holds q/k/v of shape {tuple(fused[:width].shape)}, the teacher's are "
                    f"{tuple(qkv.shape)}: the student config does not match the teacher"
                )
            fused[:width] = qkv.to(fused.dtype)
            ours[name] = fused
    student.load_state_dict(ours)
    fused_names = {f"model.layers.{i}.mixer.qkv_proj.{kind}" for i in range(len(student.model.layers))
                   for kind in ("weight", "bias")}
    return [name for name, _ in student.named_parameters() if name not in copied and name not in fused_names]


def linearize_model(
    teacher: PreTrainedModel,
    attention_type: str = "delta",
    feature_map: str | None = None,
    keep_softmax_layers: tuple[int, ...] | list[int] = (),
    **overrides: Any,
) -> FWPForCausalLM:
    """The student of `teacher` (see `student_config_from_teacher`) with the teacher's weights copied
    and the new mixer parameters initialised; in the teacher's dtype, in eval mode."""
    config = student_config_from_teacher(teacher.config, attention_type, feature_map, keep_softmax_layers,
                                         **overrides)
    student = FWPForCausalLM(config).to(teacher.dtype)
    copy_teacher_weights(student, teacher)
    student.generation_config = teacher.generation_config
    return student.eval()


def converted_layers(student: FWPForCausalLM) -> list[int]:
    """Indices of the student's layers that are fast-weight layers (not kept as softmax)."""
    return [i for i, kind in enumerate(student.config.layer_attention_types)
            if TOKEN_MIXERS[kind].layer == FAST_WEIGHT_LAYER]


def transfer_parameter_names(student: FWPForCausalLM) -> list[str]:
    """The parameters attention transfer trains: per converted layer, its learned feature map, its decay
    parameters, its window factors (a softmax-window layer's γ per head), and its fused projection — of which
    only the gate rows learn (`AttentionTransferModel` masks the gradient of the teacher's q/k/v rows)."""
    names = []
    for i in converted_layers(student):
        mixer = student.model.layers[i].mixer
        prefix = f"model.layers.{i}.mixer."
        if mixer.feature_map.spec.learned:
            names += [f"{prefix}feature_map.{name}" for name in mixer.feature_map.weight_names]
        if mixer.gates:
            names.append(prefix + "qkv_proj.weight")
            if mixer.qkv_proj.bias is not None:
                names.append(prefix + "qkv_proj.bias")
        names += [prefix + name for name in ("A_log", "dt_bias", "window_factors") if hasattr(mixer, name)]
    return names


class _TeacherTargetsCaptured(Exception):
    """Raised by the hook on the last converted layer's teacher attention: the rest of the teacher is not needed."""


class AttentionTransferModel(nn.Module):
    """Stage 1 of the linearization, as a model `Trainer` can train: ``forward(input_ids, attention_mask)``
    runs the frozen teacher, takes each converted layer's attention input (the teacher's normed hidden
    states) and output, runs the student's mixer of that layer on the same input, and returns
    ``{"loss": mean over layers of the per-layer MSE, "layer_losses": [n_converted]}`` (MSE over real
    tokens and hidden units).

    Only `transfer_parameter_names(student)` have gradients; in a fused projection the teacher's q/k/v
    rows get a zero gradient, so Adam leaves them exactly as copied — provided the optimizer has no
    weight decay (AdamW's decay would still shrink them; `training.linearize` sets it to 0). Call
    `release()` afterwards to restore the student's trainable flags and remove the gradient masks.
    """

    def __init__(self, student: FWPForCausalLM, teacher: PreTrainedModel) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval()
        self.layers = converted_layers(student)
        if not self.layers:
            raise LinearizationError("the student has no converted (fast-weight) layer to transfer attention to")
        trainable = set(transfer_parameter_names(student))
        if not trainable:
            kind = student.config.layer_attention_types[self.layers[0]]
            raise LinearizationError(
                f"{kind!r} layers with feature map {student.model.layers[self.layers[0]].mixer.feature_map.kind!r} "
                "have no new parameters to learn by attention transfer; use feature_map='hedgehog', the 'hedgehog' "
                "sum rule, or a delta rule (its β gate)"
            )
        self._was_trainable = {name: p.requires_grad for name, p in student.named_parameters()}
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(name in trainable)
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self._hooks = []
        for i in self.layers:
            mixer = student.model.layers[i].mixer
            for parameter in (mixer.qkv_proj.weight, mixer.qkv_proj.bias):
                if parameter is not None and parameter.requires_grad:
                    mask = torch.ones(parameter.shape[0], *([1] * (parameter.dim() - 1)), device=parameter.device)
                    mask[: mixer.qkv_width] = 0
                    self._hooks.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype)))
        self.config = student.config  # what Trainer reads (e.g. for logging); saving is the caller's

    def _teacher_attention(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """{converted layer: (its attention input, its attention output)} of the teacher on the batch.

        Only as much of the teacher runs as the targets need: its decoder (`base_model`, no LM head and
        no logits over the vocabulary), stopped right after the last converted layer's attention."""
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = []
        last = self.layers[-1]
        for i in self.layers:
            def hook(module, args, kwargs, output, i=i):
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                captured[i] = (hidden, output[0] if isinstance(output, tuple) else output)
                if i == last:
                    raise _TeacherTargetsCaptured
            handles.append(self.teacher.model.layers[i].self_attn.register_forward_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.teacher.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _TeacherTargetsCaptured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> dict:
        captured = self._teacher_attention(input_ids, attention_mask)
        token_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.float()
        weights = torch.ones(input_ids.shape, device=input_ids.device) if token_mask is None else token_mask
        losses = []
        for i in self.layers:
            hidden, target = captured[i]
            mixer = self.student.model.layers[i].mixer
            output, _ = mixer(MixerInputs(hidden.to(self.student.dtype), token_mask=token_mask))
            error = (output.float() - target.float()).pow(2).mean(dim=-1)
            losses.append((error * weights).sum() / weights.sum())
        layer_losses = torch.stack(losses)
        return {"loss": layer_losses.mean(), "layer_losses": layer_losses.detach()}

    def release(self) -> None:
        """Remove the gradient masks and give every student parameter its trainable flag back."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for name, parameter in self.student.named_parameters():
            parameter.requires_grad_(self._was_trainable.get(name, True))


__all__ = [
    "AttentionTransferModel",
    "LinearizationError",
    "SUPPORTED_TEACHER_TYPES",
    "converted_layers",
    "copy_teacher_weights",
    "linearize_model",
    "student_config_from_teacher",
    "transfer_parameter_names",
]
