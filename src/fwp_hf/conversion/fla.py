"""Import flash-linear-attention (FLA) DeltaNet and Gated DeltaNet checkpoints as FWP models.

FLA's `DeltaNetForCausalLM` (``model_type`` "delta_net") and `GatedDeltaNetForCausalLM`
("gated_deltanet") run only where FLA's Triton kernels run. Their layers are fwp_hf's ``delta`` and
``gated_delta`` mixers with the options FLA uses (`FWPConfig`: short convolutions, SiLU q/k/v,
L2-normalised keys, d_k^{-1/2} query scale, per-head output RMSNorm and gate, β ∈ (0, 2) with
``allow_neg_eigval``, separate key/value head sizes), their hybrid ``attn`` layers are fwp_hf's
softmax layers (grouped-query, q/k/v bias, sliding window, rotary θ), and their block is fwp_hf's
(pre-norm RMSNorm, SwiGLU MLP). So a converted checkpoint is an ordinary FWP checkpoint: it runs on
any CPU with the Auto classes (remote code), `generate`, `Trainer` and `push_to_hub`.

    model = load_fla_checkpoint("fla-hub/delta_net-1.3B-100B")       # in memory
    convert_fla_checkpoint("fla-hub/delta_net-1.3B-100B", "delta_net-1.3B-fwp")   # a folder

Everything that cannot be mapped exactly is refused with `FLACheckpointError` (an unknown
``model_type``, an FLA option fwp_hf does not implement, missing or extra parameters, wrong shapes):
never a partial load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, ModelCardData, snapshot_download
from safetensors.torch import load_file

from ..configuration_fwp import FWPConfig
from ..modeling_fwp import FWPForCausalLM
from ..shared.hub import HubPushError, check_repo_id, push_folder_to_hub
from ..shared.model_card import describe_architecture
from ..token_mixers import FAST_WEIGHT_LAYER, SOFTMAX_ATTENTION_LAYER, TOKEN_MIXERS


class FLACheckpointError(ValueError):
    """An FLA checkpoint that cannot be mapped exactly onto an FWP model; the message names what."""


# FLA model type → the fwp_hf attention type of its (non-softmax) layers.
FLA_MODEL_TYPES = {"delta_net": "delta", "gated_deltanet": "gated_delta"}

# FLA's q/k activation → fwp_hf's feature map (FLA's "elu" is elu + 1, as fwp_hf's).
FLA_QK_ACTIVATIONS = {"silu": "silu", "relu": "relu", "elu": "elu", "identity": "identity"}

# Files a converted folder takes over from the FLA folder when present.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "added_tokens.json",
    "vocab.json", "merges.txt", "generation_config.json",
)

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise FLACheckpointError(message)


def _attention_specs(fla: dict[str, Any]) -> list[dict[str, Any]]:
    attn = fla.get("attn")
    if attn is None:
        return []
    specs = [attn] if isinstance(attn, dict) else attn
    _require(isinstance(specs, list) and all(isinstance(s, dict) for s in specs),
             f"FLA config 'attn' must be None, a dict or a list of dicts, got {attn!r}")
    return specs


def _softmax_settings(fla: dict[str, Any], specs: list[dict[str, Any]]) -> dict[str, Any]:
    """fwp_hf's softmax-layer settings from FLA's hybrid ``attn`` specs (one setting for all of them): the
    ``softmax_attention`` group and the top-level fields that softmax layers read."""
    settings = []
    for spec in specs:
        _require("layers" in spec and "num_heads" in spec, f"FLA 'attn' spec {spec!r} lacks 'layers' or 'num_heads'")
        settings.append({
            "num_heads": spec["num_heads"],
            "num_kv_heads": spec.get("num_kv_heads") or spec["num_heads"],
            "qkv_bias": bool(spec.get("qkv_bias", False)),
            "window_size": spec.get("window_size"),
            "rope_theta": float(spec.get("rope_theta", 10000.0)),
        })
        unknown = sorted(set(spec) - {"layers", "num_heads", "num_kv_heads", "qkv_bias", "window_size", "rope_theta"})
        _require(not unknown, f"FLA 'attn' option(s) {unknown} are not supported by fwp_hf's softmax layers")
    _require(all(s == settings[0] for s in settings),
             f"FLA 'attn' specs with different settings ({settings}) are not supported: fwp_hf's softmax layers "
             "share one setting")
    chosen = settings[0]
    _require(fla["hidden_size"] % chosen["num_heads"] == 0,
             f"FLA 'attn' num_heads={chosen['num_heads']} does not divide hidden_size={fla['hidden_size']}")
    return {
        "softmax_attention": {
            "num_heads": None if chosen["num_heads"] == fla["num_heads"] else chosen["num_heads"],
            "sliding_window": chosen["window_size"],
        },
        "num_key_value_heads": None if chosen["num_kv_heads"] == chosen["num_heads"] else chosen["num_kv_heads"],
        "attention_bias": chosen["qkv_bias"],
        "rope_theta": chosen["rope_theta"],
    }


def _head_dims(fla: dict[str, Any]) -> tuple[int, int]:
    """(head_k_dim, head_v_dim) as FLA's layer computes them."""
    heads, hidden = fla["num_heads"], fla["hidden_size"]
    if fla["model_type"] == "delta_net":
        key_dim, value_dim = int(hidden * fla.get("expand_k", 1.0)), int(hidden * fla.get("expand_v", 1.0))
        _require(key_dim % heads == 0 and value_dim % heads == 0,
                 f"FLA key dim {key_dim} / value dim {value_dim} (hidden_size × expand_k / expand_v) must be divisible "
                 f"by num_heads={heads}")
        return key_dim // heads, value_dim // heads
    head_dim, expand_v = fla.get("head_dim", 256), fla.get("expand_v", 2.0)
    _require(math.isclose(head_dim * expand_v, int(head_dim * expand_v), rel_tol=1e-5),
             f"FLA head_dim={head_dim} × expand_v={expand_v} is not an integer")
    return head_dim, int(head_dim * expand_v)


def _intermediate_size(fla: dict[str, Any]) -> int:
    """FLA GatedMLP's width: ``intermediate_size``, or hidden·ratio·2/3 rounded up to a multiple of 256."""
    if fla.get("intermediate_size") is not None:
        return fla["intermediate_size"]
    ratio = fla.get("hidden_ratio") or 4
    size = int(fla["hidden_size"] * ratio * 2 / 3)
    return 256 * ((size + 256 - 1) // 256)


def fla_config_to_fwp(fla: dict[str, Any], **overrides: Any) -> FWPConfig:
    """The `FWPConfig` that computes what FLA's model with config dict `fla` computes.

    Raises `FLACheckpointError` for an unknown model type or an option fwp_hf does not implement.
    `overrides` are passed to `FWPConfig` (e.g. ``chunk_size``).
    """
    model_type = fla.get("model_type")
    _require(model_type in FLA_MODEL_TYPES,
             f"FLA model_type {model_type!r} is not supported; supported: {', '.join(map(repr, FLA_MODEL_TYPES))}")
    unsupported = []
    if fla.get("attnres_block_size") is not None:
        unsupported.append(f"attnres_block_size={fla['attnres_block_size']!r} (attention residuals)")
    if fla.get("num_v_heads") not in (None, fla.get("num_heads")):
        unsupported.append(f"num_v_heads={fla['num_v_heads']!r} (grouped value heads; needs num_v_heads == num_heads)")
    if fla.get("hidden_act", "swish") not in ("swish", "silu"):
        unsupported.append(f"hidden_act={fla['hidden_act']!r} (only 'swish')")
    if fla.get("use_beta", True) is not True:
        unsupported.append("use_beta=False (β fixed to 1)")
    if model_type == "delta_net":
        if fla.get("qk_activation", "silu") not in FLA_QK_ACTIVATIONS:
            unsupported.append(f"qk_activation={fla['qk_activation']!r} (allowed: {', '.join(FLA_QK_ACTIVATIONS)})")
        if fla.get("qk_norm", "l2") not in ("l2", "sum"):
            unsupported.append(f"qk_norm={fla['qk_norm']!r} (allowed: 'l2', 'sum')")
    _require(not unsupported, f"FLA {model_type} option(s) not supported by fwp_hf: {'; '.join(unsupported)}")

    kind = FLA_MODEL_TYPES[model_type]
    layers = fla["num_hidden_layers"]
    specs = _attention_specs(fla)
    softmax_layers = sorted({layer for spec in specs for layer in spec.get("layers", [])})
    _require(all(isinstance(i, int) and 0 <= i < layers for i in softmax_layers),
             f"FLA 'attn' layers {softmax_layers} must lie in [0, num_hidden_layers={layers})")
    attention_type: str | list[str] = kind
    softmax = {}
    if softmax_layers:
        attention_type = ["softmax" if i in softmax_layers else kind for i in range(layers)]
        softmax = _softmax_settings(fla, specs)
    key_head_dim, value_head_dim = _head_dims(fla)
    qk_activation = fla.get("qk_activation", "silu") if model_type == "delta_net" else "silu"
    qk_norm = fla.get("qk_norm", "l2") if model_type == "delta_net" else "l2"
    use_short_conv = bool(fla.get("use_short_conv", True))
    config = dict(
        vocab_size=fla["vocab_size"],
        hidden_size=fla["hidden_size"],
        intermediate_size=_intermediate_size(fla),
        num_hidden_layers=layers,
        num_attention_heads=fla["num_heads"],
        attention_type=attention_type,
        fast_weight=dict(
            feature_map=FLA_QK_ACTIVATIONS[qk_activation],
            key_normalization=qk_norm,
            scale_queries=True,
            value_activation="silu",
            key_head_dim=key_head_dim,
            value_head_dim=value_head_dim,
            use_short_conv=use_short_conv,
            # FLA's default width where it has no convolution: the config then says nothing it does not use
            conv_size=fla.get("conv_size", 4) if use_short_conv else 4,
            conv_bias=False,  # FLA's blocks never pass a conv_bias to their layers (a config key of that name is inert)
            allow_neg_eigval=bool(fla.get("allow_neg_eigval", False)),
            output_norm=True,  # FLA's layers always normalise the read (`o_norm`), whatever use_output_norm says
            output_gate=bool(fla.get("use_gate", model_type == "gated_deltanet")),
        ),
        hidden_act="silu",
        rms_norm_eps=fla.get("norm_eps", 1e-6),
        tie_word_embeddings=bool(fla.get("tie_word_embeddings", False)),
        initializer_range=fla.get("initializer_range", 0.02),
        pad_token_id=fla.get("pad_token_id"),
        bos_token_id=fla.get("bos_token_id"),
        eos_token_id=fla.get("eos_token_id"),
        max_position_embeddings=fla.get("max_position_embeddings") if softmax_layers else None,
        **softmax,
    )
    config = FWPConfig.merged_config_dict(config, overrides)  # a group override changes the fields it names
    try:
        return FWPConfig(**config)
    except ValueError as error:
        raise FLACheckpointError(f"FLA {model_type} config maps onto an invalid FWPConfig: {error}") from error


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


def _fla_parameter_groups(config: FWPConfig) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """For every fwp parameter: the FLA parameters (name, shape) it is made of, in order (concatenated on dim 0)."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {
        "model.embed_tokens.weight": [("model.embeddings.weight", (config.vocab_size, hidden))],
        "model.norm.weight": [("model.norm.weight", (hidden,))],
    }
    if not config.tie_word_embeddings:
        groups["lm_head.weight"] = [("lm_head.weight", (config.vocab_size, hidden))]
    inter = config.intermediate_size
    for i, kind in enumerate(config.layer_attention_types):
        fla, ours, spec = f"model.layers.{i}.", f"model.layers.{i}.", TOKEN_MIXERS[kind]
        groups[ours + "input_layernorm.weight"] = [(fla + "attn_norm.weight", (hidden,))]
        groups[ours + "post_attention_layernorm.weight"] = [(fla + "mlp_norm.weight", (hidden,))]
        groups[ours + "mlp.gate_up_proj.weight"] = [(fla + "mlp.gate_proj.weight", (inter, hidden)),
                                                    (fla + "mlp.up_proj.weight", (inter, hidden))]
        groups[ours + "mlp.down_proj.weight"] = [(fla + "mlp.down_proj.weight", (hidden, inter))]
        attn, mixer = fla + "attn.", ours + "mixer."
        if spec.layer == SOFTMAX_ATTENTION_LAYER:
            q_width = config.softmax_attention.heads(config.num_attention_heads) * config.softmax_head_dim
            kv_width = config.num_key_value_heads * config.softmax_head_dim
            for name, width in (("q_proj", q_width), ("k_proj", kv_width), ("v_proj", kv_width)):
                groups[f"{mixer}{name}.weight"] = [(f"{attn}{name}.weight", (width, hidden))]
                if config.attention_bias:
                    groups[f"{mixer}{name}.bias"] = [(f"{attn}{name}.bias", (width,))]
            groups[mixer + "o_proj.weight"] = [(attn + "o_proj.weight", (hidden, q_width))]
            continue
        _require(spec.layer == FAST_WEIGHT_LAYER, f"layer {i} ({kind}) has no FLA counterpart")
        options = config.fast_weight
        query_width, key_width, value_width = options.qkv_widths(heads, config.head_dim)
        value_head_dim = options.head_dims(config.head_dim)[1]
        read_width = heads * value_head_dim  # the output gate's and o_proj's
        gate_sources = {"beta": "b_proj", "log_decay": "a_proj"}
        projections = [(attn + "q_proj.weight", (query_width, hidden)), (attn + "k_proj.weight", (key_width, hidden)),
                       (attn + "v_proj.weight", (value_width, hidden))]
        projections += [(f"{attn}{gate_sources[gate]}.weight", (heads, hidden)) for gate in spec.gates]
        if options.output_gate:
            projections.append((attn + "g_proj.weight", (read_width, hidden)))
        groups[mixer + "qkv_proj.weight"] = projections
        if options.use_short_conv:
            width = options.conv_size
            conv_widths = (("q", query_width), ("k", key_width), ("v", value_width))
            groups[mixer + "qkv_conv.weight"] = [(f"{attn}{name}_conv1d.weight", (size, 1, width))
                                                 for name, size in conv_widths]
            if options.conv_bias:
                groups[mixer + "qkv_conv.bias"] = [(f"{attn}{name}_conv1d.bias", (size,))
                                                   for name, size in conv_widths]
        if "log_decay" in spec.gates:
            groups[mixer + "A_log"] = [(attn + "A_log", (heads,))]
            groups[mixer + "dt_bias"] = [(attn + "dt_bias", (heads,))]
        groups[mixer + "o_norm.weight"] = [(attn + "o_norm.weight", (value_head_dim,))]
        groups[mixer + "o_proj.weight"] = [(attn + "o_proj.weight", (hidden, read_width))]
    return groups


def fla_state_dict_to_fwp(state_dict: dict[str, torch.Tensor], config: FWPConfig) -> dict[str, torch.Tensor]:
    """Map FLA parameter names and layouts onto the FWP model of `config` (from `fla_config_to_fwp`).

    Raises `FLACheckpointError` listing missing FLA parameters, parameters that have no place in the
    FWP model, and shape mismatches — all of them at once.
    """
    groups = _fla_parameter_groups(config)
    expected = {name: shape for parts in groups.values() for name, shape in parts}
    optional = set()
    if config.tie_word_embeddings:
        optional.add("lm_head.weight")  # a tied head may be saved alongside the embeddings
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected) - optional)
    wrong = [f"{name}: {tuple(state_dict[name].shape)} in the checkpoint, {shape} expected"
             for name, shape in expected.items() if name in state_dict and tuple(state_dict[name].shape) != shape]
    problems = []
    if missing:
        problems.append(f"missing parameter(s): {', '.join(missing)}")
    if extra:
        problems.append(f"parameter(s) with no place in the converted model: {', '.join(extra)}")
    if wrong:
        problems.append(f"shape mismatch(es): {'; '.join(wrong)}")
    _require(not problems, "cannot map the FLA checkpoint exactly — " + " | ".join(problems))
    mapped = {ours: torch.cat([state_dict[name] for name, _ in parts], dim=0) if len(parts) > 1
              else state_dict[parts[0][0]] for ours, parts in groups.items()}
    if config.attention_bias:
        # FLA's hybrid `qkv_bias` is for its softmax layers; fwp_hf's `attention_bias` also gives the
        # fast-weight layers' fused projections a bias, which is zero here (the same function).
        for i, kind in enumerate(config.layer_attention_types):
            if TOKEN_MIXERS[kind].layer == FAST_WEIGHT_LAYER:
                weight = mapped[f"model.layers.{i}.mixer.qkv_proj.weight"]
                mapped[f"model.layers.{i}.mixer.qkv_proj.bias"] = weight.new_zeros(weight.shape[0])
    return mapped


def fwp_state_dict_to_fla(state_dict: dict[str, torch.Tensor], config: FWPConfig) -> dict[str, torch.Tensor]:
    """The inverse of `fla_state_dict_to_fwp`: an FWP model's weights (of a config from
    `fla_config_to_fwp`) under FLA's parameter names and layouts."""
    fla: dict[str, torch.Tensor] = {}
    for i, kind in enumerate(config.layer_attention_types):
        bias = state_dict.get(f"model.layers.{i}.mixer.qkv_proj.bias")
        if bias is not None and TOKEN_MIXERS[kind].layer == FAST_WEIGHT_LAYER and bool(bias.any()):
            raise FLACheckpointError(
                f"layer {i}'s fused projection has a non-zero bias, which FLA's layers do not have"
            )
    for ours, parts in _fla_parameter_groups(config).items():
        pieces = state_dict[ours].split([shape[0] for _, shape in parts], dim=0)
        fla.update({name: piece.contiguous() for (name, _), piece in zip(parts, pieces)})
    return fla


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def resolve_fla_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                       token: str | bool | None = None) -> Path:
    """A local folder as is; a Hub id downloaded (config, weights and tokenizer files only)."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    if path.exists():
        raise FLACheckpointError(f"{str(path)!r} is a file; pass an FLA checkpoint folder or a Hub id")
    try:
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token,
                                      allow_patterns=_WEIGHT_PATTERNS))
    except Exception as error:  # noqa: BLE001 - any failure to fetch is reported with the id
        raise FLACheckpointError(
            f"{str(path_or_repo_id)!r} is neither a local folder nor a Hub id that could be downloaded ({error})"
        ) from error


def read_fla_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    _require(config_file.is_file(), f"{str(folder)!r} has no config.json")
    try:
        with open(config_file, encoding="utf-8") as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FLACheckpointError(f"{str(config_file)!r} is not a JSON file ({error}); an FLA checkpoint folder needs "
                                 "the config.json that FLA's save_pretrained writes") from error
    except OSError as error:
        raise FLACheckpointError(f"{str(config_file)!r} cannot be read ({error.strerror or error})") from error
    _require(isinstance(config, dict), f"{str(config_file)!r} holds a JSON {type(config).__name__}, not an object")
    return config


def _read_weights_file(loader, path: Path) -> dict[str, torch.Tensor]:
    """`loader(path)`, an unreadable file (truncated, not a weights file, no permission) an `FLACheckpointError`
    naming it."""
    try:
        return loader(str(path))
    except Exception as error:  # safetensors and torch raise their own types for truncated/corrupt files
        raise FLACheckpointError(
            f"{str(path)!r} cannot be read ({type(error).__name__}: {error}): it is truncated or not a weights "
            "file; download or copy it again"
        ) from error


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder: model.safetensors, sharded safetensors (with their index), or
    pytorch_model.bin (sharded too)."""
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _load_torch_file)):
        index_file = folder / index_name
        if index_file.is_file():
            try:
                with open(index_file, encoding="utf-8") as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError) as error:
                raise FLACheckpointError(f"{str(index_file)!r} is not a shard index (JSON with a 'weight_map' "
                                         f"object): {error!r}") from error
            missing = [shard for shard in shards if not (folder / shard).is_file()]
            _require(not missing, f"{index_name} names shard(s) that are not in {str(folder)!r}: {', '.join(missing)}")
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_weights_file(loader, folder / shard))
            return state
    if (folder / "model.safetensors").is_file():
        return _read_weights_file(load_file, folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _read_weights_file(_load_torch_file, folder / "pytorch_model.bin")
    raise FLACheckpointError(f"{str(folder)!r} has no model.safetensors, pytorch_model.bin or sharded index")


def _load_torch_file(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _resolve_dtype(dtype: torch.dtype | str, state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype == "auto":
        floating = [t.dtype for t in state_dict.values() if t.is_floating_point()]
        return max(set(floating), key=floating.count) if floating else torch.float32
    if isinstance(dtype, str):
        _require(isinstance(getattr(torch, dtype, None), torch.dtype),
                 f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or 'auto'")
        return getattr(torch, dtype)
    return dtype


def load_fla_checkpoint(
    path_or_repo_id: str | os.PathLike,
    *,
    dtype: torch.dtype | str = "auto",
    revision: str | None = None,
    token: str | bool | None = None,
    **config_overrides: Any,
) -> FWPForCausalLM:
    """An FLA DeltaNet / Gated DeltaNet checkpoint (folder or Hub id) as an `FWPForCausalLM`, in memory.

    `dtype`: the model's dtype (``"auto"``, the default: the checkpoint's, so a bf16 source stays bf16).
    `config_overrides` go to `FWPConfig` (settings that do not change what the weights compute, e.g. ``chunk_size``).
    Raises `FLACheckpointError` for anything that cannot be mapped exactly.
    """
    folder = resolve_fla_folder(path_or_repo_id, revision=revision, token=token)
    fla = read_fla_config(folder)
    config = fla_config_to_fwp(fla, **config_overrides)
    state_dict = read_state_dict(folder)
    mapped = fla_state_dict_to_fwp(state_dict, config)
    torch_dtype = _resolve_dtype(dtype, state_dict)
    with torch.device("meta"):
        model = FWPForCausalLM(config)
    # Parameters come from the checkpoint (no random initialisation of a large model first).
    model.load_state_dict({name: tensor.to(torch_dtype) for name, tensor in mapped.items()},
                          strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    _require(not leftover, f"the converted model has parameter(s) the checkpoint does not fill: {', '.join(leftover)}")
    model.config.dtype = torch_dtype
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()


def render_converted_model_card(source: str, fla: dict[str, Any], model: FWPForCausalLM) -> ModelCard:
    """The README of a converted folder: where it came from and what was verified."""
    is_hub_id = not Path(source).exists()
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["fwp_hf", "fast-weight-programmer", "delta-rule", "flash-linear-attention", fla["model_type"]],
        base_model=source if is_hub_id else None,
    )
    parameters = sum(p.numel() for p in model.parameters())
    content = f"""---
{card_data.to_yaml()}
---

# {Path(source).name} (fwp_hf)

The flash-linear-attention `{fla['model_type']}` checkpoint **{source}**, converted with
`fwp_hf` (`scripts/convert_fla_checkpoint.py`) into an FWP checkpoint that runs on any machine (CPU
included) without flash-linear-attention or Triton: {describe_architecture(model.config)};
{parameters:,} parameters.

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("<this folder or repo>", trust_remote_code=True)
```

The weights are those of the source, renamed (q/k/v/β/decay/gate projections and the q/k/v
short convolutions concatenated); nothing was trained. The conversion refuses any FLA option it
does not implement exactly. Licence and training data: those of the source checkpoint.
"""
    return ModelCard(content)


STAGING_MARK = ".fwp-staging-"  # hidden staging folders: .<output name>.fwp-staging-<pid>-<random>


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging_folders(output_dir: Path) -> list[Path]:
    """Delete the staging folders of earlier conversions into `output_dir` whose process is gone (killed
    before it could clean up); return them. Folders of a conversion still running are kept."""
    removed = []
    prefix = f".{output_dir.name}{STAGING_MARK}"
    if not output_dir.parent.is_dir():
        return removed
    for candidate in output_dir.parent.iterdir():
        if not (candidate.name.startswith(prefix) and candidate.is_dir()):
            continue
        pid = candidate.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_is_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _user_permissions(directory: Path) -> None:
    """Give `directory` and its files the modes a new folder gets from the user's umask (mkdtemp makes 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for file in directory.rglob("*"):
        file.chmod((0o777 if file.is_dir() else 0o666) & ~umask)


def convert_fla_checkpoint(
    path_or_repo_id: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    dtype: torch.dtype | str = "auto",
    revision: str | None = None,
    token: str | bool | None = None,
    **config_overrides: Any,
) -> Path:
    """Convert an FLA checkpoint (folder or Hub id) into an FWP checkpoint folder `output_dir`:
    config.json (with ``auto_map``), safetensors, the model code, the tokenizer files of the source
    when present, and a model card naming the source. `dtype` ``"auto"`` keeps the source's.

    Nothing half-written is left behind: the folder is written under a hidden staging name next to
    `output_dir` (created before the checkpoint is loaded, so an unwritable destination is reported
    first), config.json (what makes a folder loadable) last, then renamed; any exception removes it,
    and staging folders that killed earlier runs left are removed at the start. An existing non-empty
    `output_dir` is refused. The result gets the user's umask modes.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FLACheckpointError(f"output_dir {str(output_dir)!r} exists and is not an empty folder; choose a new one")
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging_folders(output_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}{STAGING_MARK}{os.getpid()}-",
                                        dir=output_dir.parent))
    except OSError as error:
        raise FLACheckpointError(
            f"cannot write the converted checkpoint to {str(output_dir)!r} ({error.strerror or error}: "
            f"{error.filename or output_dir.parent}); choose an output_dir in a folder you can write to"
        ) from error
    try:
        folder = resolve_fla_folder(path_or_repo_id, revision=revision, token=token)
        model = load_fla_checkpoint(folder, dtype=dtype, **config_overrides)
        fla = read_fla_config(folder)
        pending = staging / ".pending"  # save_pretrained writes config.json first; it moves up last
        model.save_pretrained(pending)
        for file in sorted(pending.iterdir()):
            if file.name != "config.json":
                file.rename(staging / file.name)
        for name in TOKENIZER_FILES:  # the source's generation settings replace the defaults just written
            if (folder / name).is_file():
                shutil.copy(folder / name, staging / name)
        render_converted_model_card(str(path_or_repo_id), fla, model).save(staging / "README.md")
        (pending / "config.json").rename(staging / "config.json")
        pending.rmdir()
        _user_permissions(staging)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked above
        staging.rename(output_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise FLACheckpointError(
            f"writing the converted checkpoint {str(output_dir)!r} failed ({error.strerror or error}: "
            f"{error.filename or staging}); nothing was left behind"
        ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Convert a flash-linear-attention DeltaNet / Gated DeltaNet checkpoint (folder or Hub id) "
        "into an FWP checkpoint that runs on any CPU (AutoModelForCausalLM with trust_remote_code=True)."
    )
    parser.add_argument("--input", required=True,
                        help="FLA checkpoint folder or Hub id, e.g. fla-hub/delta_net-1.3B-100B")
    parser.add_argument("--output_dir", required=True, help="new folder for the FWP checkpoint")
    parser.add_argument("--dtype", default="auto",
                        help="dtype of the saved weights: auto (the source's), float32, bfloat16")
    parser.add_argument("--revision", default=None, help="Hub revision of --input")
    parser.add_argument("--hub_model_id", default=None,
                        help="also push the converted folder to this Hub repo (owner/name; HF_TOKEN or --hub_token)")
    parser.add_argument("--hub_token", default=None, help="Hub token for --hub_model_id (default: the logged-in one)")
    args = parser.parse_args(argv)
    if args.hub_model_id is not None:
        try:
            check_repo_id(args.hub_model_id)
        except ValueError as error:
            parser.error(str(error))
    try:
        output = convert_fla_checkpoint(args.input, args.output_dir, dtype=args.dtype, revision=args.revision)
    except FLACheckpointError as error:
        parser.exit(2, f"convert_fla_checkpoint: error: {error}\n")
    print(f"wrote {output}")
    if args.hub_model_id is not None:
        try:
            url = push_folder_to_hub(output, args.hub_model_id, token=args.hub_token,
                                     commit_message=f"FWP conversion of the FLA checkpoint {args.input}")
        except HubPushError as error:
            parser.exit(1, f"convert_fla_checkpoint: {error} (the converted folder {output} is complete)\n")
        print(f"pushed to {url}")
    return output


__all__ = [
    "FLACheckpointError",
    "FLA_MODEL_TYPES",
    "convert_fla_checkpoint",
    "fla_config_to_fwp",
    "fla_state_dict_to_fwp",
    "fwp_state_dict_to_fla",
    "load_fla_checkpoint",
    "main",
]
