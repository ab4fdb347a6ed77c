"""An independent plain-PyTorch transcription of flash-linear-attention's (FLA) DeltaNet and Gated DeltaNet
language models, and FLA-format checkpoints built without FLA (FLA needs Triton and CUDA).

Written from FLA's source (fla-org/flash-linear-attention, ``fla/models/{delta_net,gated_deltanet}``,
``fla/layers/{delta_net,gated_deltanet,attn}.py``, ``fla/models/hybrid.py``, ``fla/modules/*``,
``fla/ops/{delta_rule,gated_delta_rule}/naive.py``), not from fwp_hf, so that the tests of fwp_hf's FLA importer
compare two independent readings of the same model:

- `DeltaNetConfig`, `GatedDeltaNetConfig`: FLA's config classes (same ``__init__`` parameters and defaults, the
  hybrid ``attn`` normalisation of ``fla.models.hybrid``), so that ``save_pretrained`` writes the config.json FLA
  writes. Not registered with ``AutoConfig``.
- `random_fla_state_dict`: a seeded state dict with the parameter names and shapes of FLA's
  ``DeltaNetForCausalLM`` / ``GatedDeltaNetForCausalLM`` (what ``save_pretrained`` of those models writes).
- `write_fla_checkpoint`: config.json (+ generation_config.json) and ``model.safetensors``, or shards with
  ``model.safetensors.index.json``, as transformers writes them.
- `fla_reference_logits`: the logits of FLA's model, one token at a time: explicit loops over time for the
  short convolution (window sums) and the (gated) delta rule (state S of shape [d_k, d_v] per head), explicit
  masked softmax attention for hybrid layers. float64 throughout; unpadded inputs only.
- Transcriptions of FLA's own naive kernels (``delta_rule_chunkwise``, ``naive_chunk_gated_delta_rule``,
  ``naive_recurrent_gated_delta_rule``) for sanity tests of the per-token recurrences.

Facts of FLA's models that matter (checked in FLA's source):
- ``DeltaNetBlock``/``GatedDeltaNetBlock`` never pass ``conv_bias`` to the layer, so FLA's LMs have no short-conv
  biases whatever config.json says (a ``conv_bias`` key there is an ignored extra attribute).
- ``use_output_norm`` is passed to ``DeltaNet`` but swallowed by ``**kwargs``: ``o_norm`` always exists.
- DeltaNet's conv activation on q/k is SiLU only when ``qk_activation == 'silu'``; v's conv is always SiLU.
- The delta-rule kernels l2-normalise q, k inside the kernel (``x / sqrt(sum x^2 + 1e-6)``) when
  ``qk_norm == 'l2'`` and always scale q by ``head_k_dim ** -0.5``.
- Gated DeltaNet: ``beta = sigmoid(b_proj x)`` (x2 with ``allow_neg_eigval``),
  ``g = -exp(A_log) * softplus(a_proj x + dt_bias)``, value head ``hv`` reads q/k head ``hv // (HV / H)``.
- Hybrid ``attn`` layers: ``fla.layers.attn.Attention`` (flash-attn, causal, window ``(w - 1, 0)``, GQA, rotary
  GPT-NeoX style with fp32 ``inv_freq``), no qk norm.
"""

# ruff: noqa: TRY004  (FLA raises ValueError for wrongly typed attn fields; transcribed as is)

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GenerationConfig, PretrainedConfig

# ----------------------------------------------------------------------------------------------
# Configs (transcriptions of fla/models/{delta_net,gated_deltanet}/configuration_*.py and fla/models/hybrid.py)
# ----------------------------------------------------------------------------------------------


def _spec_context(spec_index):
    return "attn specification" if spec_index is None else f"attn specification at index {spec_index}"


def _positive_int(value, *, field, context):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{context} field {field!r} must be a positive integer; got {value!r}")
    return value


def _normalize_spec(spec, *, num_hidden_layers, spec_index, assigned_layers):
    context = _spec_context(spec_index)
    normalized = dict(spec)
    for field in ("layers", "num_heads"):
        if field not in normalized:
            raise ValueError(f"{context} field {field!r} is required; got <missing>")
    layers = normalized["layers"]
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"{context} field 'layers' must be a list or tuple of integer layer indices; got {layers!r}")
    normalized_layers, seen = [], set()
    for layer_idx in layers:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise ValueError(f"{context} field 'layers' must contain only integer layer indices; got {layer_idx!r}")
        if layer_idx < 0 or layer_idx >= num_hidden_layers:
            raise ValueError(f"{context} field 'layers' contains out-of-range layer {layer_idx!r}; "
                             f"expected a value in [0, {num_hidden_layers})")
        if layer_idx in seen:
            raise ValueError(f"{context} field 'layers' contains duplicate layer {layer_idx!r}; got {layers!r}")
        if layer_idx in assigned_layers:
            raise ValueError(f"{context} assigns conflicting layer {layer_idx!r}, which is already assigned by "
                             f"{_spec_context(assigned_layers[layer_idx])}")
        seen.add(layer_idx)
        assigned_layers[layer_idx] = spec_index
        normalized_layers.append(layer_idx)
    normalized["layers"] = normalized_layers
    normalized["num_heads"] = _positive_int(normalized["num_heads"], field="num_heads", context=context)
    num_kv_heads = normalized.get("num_kv_heads")
    if num_kv_heads is None:
        num_kv_heads = normalized["num_heads"]
    normalized["num_kv_heads"] = _positive_int(num_kv_heads, field="num_kv_heads", context=context)
    qkv_bias = normalized.get("qkv_bias", False)
    if not isinstance(qkv_bias, bool):
        raise ValueError(f"{context} field 'qkv_bias' must be a Boolean; got {qkv_bias!r}")
    normalized["qkv_bias"] = qkv_bias
    window_size = normalized.get("window_size")
    if window_size is not None:
        window_size = _positive_int(window_size, field="window_size", context=context)
    normalized["window_size"] = window_size
    rope_theta = normalized.get("rope_theta", 10000.)
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, (int, float)) or not math.isfinite(rope_theta) \
            or rope_theta <= 0:
        raise ValueError(f"{context} field 'rope_theta' must be positive and finite; got {rope_theta!r}")
    normalized["rope_theta"] = rope_theta
    return normalized


def normalize_hybrid_attention_config(attn, *, num_hidden_layers):
    """``fla.models.hybrid.normalize_hybrid_attention_config``: defaults filled in, dict or list kept."""
    if attn is None:
        return None
    if not isinstance(attn, (dict, list)):
        raise ValueError(f"attn must be None, a dictionary, or a list of dictionaries; got {attn!r}")
    single = isinstance(attn, dict)
    specs = [attn] if single else attn
    assigned: dict = {}
    normalized = []
    for index, spec in enumerate(specs):
        current = None if single else index
        if not isinstance(spec, dict):
            raise ValueError(f"{_spec_context(current)} must be a dictionary; got {spec!r}")
        normalized.append(_normalize_spec(spec, num_hidden_layers=num_hidden_layers, spec_index=current,
                                          assigned_layers=assigned))
    return normalized[0] if single else normalized


class _HybridAttentionConfigMixin:
    """``fla.models.hybrid._HybridAttentionConfigMixin``: ``attn`` is normalised on every assignment."""

    @property
    def attn(self):
        return self.__dict__.get("attn")

    @attn.setter
    def attn(self, value):
        self.__dict__["attn"] = normalize_hybrid_attention_config(value, num_hidden_layers=self.num_hidden_layers)


def get_hybrid_attention_spec(attn, *, layer_idx):
    """``fla.models.hybrid.get_hybrid_attention_spec``: the softmax-attention spec of a layer, or None."""
    if attn is None:
        return None
    for spec in [attn] if isinstance(attn, dict) else attn:
        if layer_idx in spec["layers"]:
            return spec
    return None


def _check_fuse_and_attnres(fuse_cross_entropy, fuse_linear_cross_entropy, attnres_block_size):
    if fuse_cross_entropy and fuse_linear_cross_entropy:
        raise ValueError("`fuse_cross_entropy` and `fuse_linear_cross_entropy` cannot be True at the same time.")
    if attnres_block_size is not None and attnres_block_size != 1 and (
        attnres_block_size < 2 or attnres_block_size % 2 != 0
    ):
        raise ValueError(
            "`attnres_block_size` must be `None`, `1` (full mode), or an even integer (one block "
            f"contains `attnres_block_size // 2` transformer layers); got {attnres_block_size}."
        )


class DeltaNetConfig(_HybridAttentionConfigMixin, PretrainedConfig):
    """``fla.models.delta_net.configuration_delta_net.DeltaNetConfig``."""

    model_type = "delta_net"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_gate: bool = False,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        use_beta: bool = True,
        use_output_norm: bool = True,
        num_heads: int = 16,
        qk_norm: str = "l2",
        qk_activation: str = "silu",
        max_position_embeddings: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        num_hidden_layers: int = 24,
        norm_eps: float = 1e-6,
        attn=None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        fuse_linear_cross_entropy: bool = False,
        use_l2warp: bool = False,
        vocab_size: int = 32000,
        attnres_block_size: int | None = None,
        **kwargs,
    ):
        self.attn_mode = attn_mode
        self.hidden_size = hidden_size
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_beta = use_beta
        self.use_output_norm = use_output_norm
        self.num_heads = num_heads
        self.qk_norm = qk_norm
        self.qk_activation = qk_activation
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.num_hidden_layers = num_hidden_layers
        self.norm_eps = norm_eps
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.use_l2warp = use_l2warp
        self.vocab_size = vocab_size
        self.allow_neg_eigval = allow_neg_eigval
        self.attnres_block_size = attnres_block_size
        _check_fuse_and_attnres(fuse_cross_entropy, fuse_linear_cross_entropy, attnres_block_size)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class GatedDeltaNetConfig(_HybridAttentionConfigMixin, PretrainedConfig):
    """``fla.models.gated_deltanet.configuration_gated_deltanet.GatedDeltaNetConfig``."""

    model_type = "gated_deltanet"
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        expand_v: float = 2.0,
        use_gate: bool = True,
        use_short_conv: bool = True,
        allow_neg_eigval: bool = False,
        conv_size: int = 4,
        head_dim: int = 256,
        num_heads: int = 6,
        num_v_heads: int | None = None,
        max_position_embeddings: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        num_hidden_layers: int = 21,
        norm_eps: float = 1e-6,
        attn=None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        fuse_linear_cross_entropy: bool = False,
        use_l2warp: bool = False,
        vocab_size: int = 32000,
        attnres_block_size: int | None = None,
        **kwargs,
    ):
        self.attn_mode = attn_mode
        self.hidden_size = hidden_size
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.num_v_heads = num_v_heads
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.num_hidden_layers = num_hidden_layers
        self.norm_eps = norm_eps
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.use_l2warp = use_l2warp
        self.vocab_size = vocab_size
        self.allow_neg_eigval = allow_neg_eigval
        self.attnres_block_size = attnres_block_size
        _check_fuse_and_attnres(fuse_cross_entropy, fuse_linear_cross_entropy, attnres_block_size)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


# ----------------------------------------------------------------------------------------------
# Shapes (what FLA's modules allocate)
# ----------------------------------------------------------------------------------------------


def mlp_intermediate_size(config) -> int:
    """``fla.modules.mlp.GatedMLP``: ``int(hidden * ratio * 2 / 3)`` rounded up to a multiple of 256."""
    if config.intermediate_size is not None:
        return config.intermediate_size
    ratio = 4 if config.hidden_ratio is None else config.hidden_ratio
    size = int(config.hidden_size * ratio * 2 / 3)
    return 256 * ((size + 256 - 1) // 256)


def linear_dims(config) -> dict:
    """Head counts and sizes of the linear-attention layer of `config` (DeltaNet or Gated DeltaNet)."""
    if config.model_type == "delta_net":
        key_dim = int(config.hidden_size * config.expand_k)
        value_dim = int(config.hidden_size * config.expand_v)
        heads = config.num_heads
        assert key_dim % heads == 0 and value_dim % heads == 0
        return {"num_heads": heads, "num_v_heads": heads, "head_k_dim": key_dim // heads,
                "head_v_dim": value_dim // heads, "key_dim": key_dim, "value_dim": value_dim}
    if config.model_type == "gated_deltanet":
        heads = config.num_heads
        v_heads = config.num_v_heads if config.num_v_heads is not None else heads
        head_v_dim = int(config.head_dim * config.expand_v)
        assert math.isclose(config.head_dim * config.expand_v, head_v_dim, rel_tol=1e-5)
        assert v_heads <= heads or v_heads % heads == 0
        return {"num_heads": heads, "num_v_heads": v_heads, "head_k_dim": config.head_dim,
                "head_v_dim": head_v_dim, "key_dim": heads * config.head_dim, "value_dim": v_heads * head_v_dim}
    raise NotImplementedError(f"model_type {config.model_type!r}")


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of FLA's ``*ForCausalLM`` for `config` (no conv biases: see module doc)."""
    if getattr(config, "attnres_block_size", None) is not None:
        raise NotImplementedError("attnres_block_size is not transcribed")
    hidden, vocab = config.hidden_size, config.vocab_size
    dims = linear_dims(config)
    shapes: dict[str, tuple[int, ...]] = {"model.embeddings.weight": (vocab, hidden)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "attn_norm.weight"] = (hidden,)
        spec = get_hybrid_attention_spec(config.attn, layer_idx=i)
        if spec is not None:
            head_dim = hidden // spec["num_heads"]
            kv_dim = spec["num_kv_heads"] * head_dim
            shapes[p + "attn.q_proj.weight"] = (hidden, hidden)
            shapes[p + "attn.k_proj.weight"] = (kv_dim, hidden)
            shapes[p + "attn.v_proj.weight"] = (kv_dim, hidden)
            if spec["qkv_bias"]:
                shapes[p + "attn.q_proj.bias"] = (hidden,)
                shapes[p + "attn.k_proj.bias"] = (kv_dim,)
                shapes[p + "attn.v_proj.bias"] = (kv_dim,)
            shapes[p + "attn.o_proj.weight"] = (hidden, hidden)
        else:
            key_dim, value_dim, v_heads = dims["key_dim"], dims["value_dim"], dims["num_v_heads"]
            shapes[p + "attn.q_proj.weight"] = (key_dim, hidden)
            shapes[p + "attn.k_proj.weight"] = (key_dim, hidden)
            shapes[p + "attn.v_proj.weight"] = (value_dim, hidden)
            if config.model_type == "gated_deltanet":
                shapes[p + "attn.a_proj.weight"] = (v_heads, hidden)
                shapes[p + "attn.b_proj.weight"] = (v_heads, hidden)
                shapes[p + "attn.A_log"] = (v_heads,)
                shapes[p + "attn.dt_bias"] = (v_heads,)
            elif config.use_beta:
                shapes[p + "attn.b_proj.weight"] = (v_heads, hidden)
            if config.use_short_conv:
                w = config.conv_size
                shapes[p + "attn.q_conv1d.weight"] = (key_dim, 1, w)
                shapes[p + "attn.k_conv1d.weight"] = (key_dim, 1, w)
                shapes[p + "attn.v_conv1d.weight"] = (value_dim, 1, w)
            if config.use_gate:
                shapes[p + "attn.g_proj.weight"] = (value_dim, hidden)
            shapes[p + "attn.o_norm.weight"] = (dims["head_v_dim"],)
            shapes[p + "attn.o_proj.weight"] = (hidden, value_dim)
        inter = mlp_intermediate_size(config)
        shapes[p + "mlp_norm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    if not config.tie_word_embeddings:  # tied: save_pretrained drops the tied lm_head.weight
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


# ----------------------------------------------------------------------------------------------
# Random checkpoints
# ----------------------------------------------------------------------------------------------


def random_fla_state_dict(config, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A seeded FLA state dict for `config`, scaled so that activations stay O(1).

    Linear weights ~ N(0, 1/fan_in); norm weights ~ U(0.5, 1.5); conv weights ~ N(0, 0.5²); embeddings ~ N(0, 1);
    softmax-attention biases ~ N(0, 0.1²); ``A_log`` and ``dt_bias`` drawn as FLA's init draws them
    (A ~ U(0, 16); dt log-uniform in [1e-3, 0.1], floored at 1e-4, stored as softplus⁻¹(dt)).
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in parameter_shapes(config).items():
        if name.endswith("norm.weight"):
            t = 0.5 + torch.rand(shape, generator=gen, dtype=torch.float64)
        elif name.endswith("A_log"):
            t = torch.log(torch.rand(shape, generator=gen, dtype=torch.float64) * 16 + 1e-3)
        elif name.endswith("dt_bias"):
            u = torch.rand(shape, generator=gen, dtype=torch.float64)
            dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
            t = dt + torch.log(-torch.expm1(-dt))
        elif "conv1d" in name:
            t = 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name == "model.embeddings.weight":
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        else:
            assert name.endswith(".weight") and len(shape) == 2, name
            t = torch.randn(shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[1])
        state[name] = t.to(dtype).contiguous()
    return state


def write_fla_checkpoint(directory, config, state_dict: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """Write `config` and `state_dict` as transformers' ``save_pretrained`` of an FLA model writes them.

    ``shards == 1``: config.json, generation_config.json, model.safetensors. ``shards > 1``:
    ``model-0000k-of-0000n.safetensors`` (names split into `shards` consecutive groups) and
    ``model.safetensors.index.json`` with ``metadata`` and ``weight_map``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    GenerationConfig.from_model_config(config).save_pretrained(directory)
    tensors = {name: t.detach().contiguous() for name, t in state_dict.items()}
    metadata = {"format": "pt"}
    if shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata=metadata)
        return directory
    names = list(tensors)
    assert len(names) >= shards
    bounds = [round(i * len(names) / shards) for i in range(shards + 1)]
    weight_map = {}
    for k in range(shards):
        filename = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        group = {name: tensors[name] for name in names[bounds[k]:bounds[k + 1]]}
        save_file(group, str(directory / filename), metadata=metadata)
        weight_map.update({name: filename for name in group})
    index = {
        "metadata": {
            "total_parameters": sum(t.numel() for t in tensors.values()),
            "total_size": sum(t.numel() * t.element_size() for t in tensors.values()),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory


# ----------------------------------------------------------------------------------------------
# Building blocks (float64, one sequence: [T, ...])
# ----------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dim (fla.modules.RMSNorm / nn.RMSNorm)."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """FLA's l2norm: ``x / sqrt(sum(x²) + eps)`` over the last dim."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps)


def short_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None
) -> torch.Tensor:
    """``ShortConvolution``: causal depthwise conv, ``y_t = b + Σ_i w[:, 0, i] x_{t-W+1+i}`` (zeros before
    the start), as an explicit window sum; then SiLU when `activation` is 'silu'/'swish'. x: [T, C]."""
    length, channels = x.shape
    width = weight.shape[-1]
    w = weight[:, 0, :]
    y = torch.zeros_like(x)
    for t in range(length):
        acc = torch.zeros(channels, dtype=x.dtype) if bias is None else bias.clone()
        for i in range(width):
            s = t - width + 1 + i
            if s >= 0:
                acc = acc + w[:, i] * x[s]
        y[t] = acc
    if activation in ("silu", "swish"):
        y = F.silu(y)
    else:
        assert activation is None, activation
    return y


def delta_rule_recurrent(q, k, v, beta, g=None):
    """The (gated) delta rule one token at a time, as FLA's fused_recurrent kernels compute it.

    q, k: [T, H, d_k] (already normalised and with q scaled); v: [T, HV, d_v]; beta, g: [T, HV] (g: log decay
    or None). Value head ``hv`` reads q/k head ``hv // (HV // H)``. Per token and head:
    ``S ← exp(g) S``; ``u = β (v − Sᵀk)``; ``S ← S + k uᵀ``; ``o = Sᵀ q``. Returns o [T, HV, d_v] and the
    final states [HV, d_k, d_v].
    """
    length, heads, d_k = q.shape
    v_heads, d_v = v.shape[1], v.shape[2]
    group = v_heads // heads
    S = torch.zeros(v_heads, d_k, d_v, dtype=v.dtype)
    o = torch.zeros(length, v_heads, d_v, dtype=v.dtype)
    for t in range(length):
        for hv in range(v_heads):
            h = hv // group
            if g is not None:
                S[hv] = S[hv] * torch.exp(g[t, hv])
            u = beta[t, hv] * (v[t, hv] - S[hv].T @ k[t, h])
            S[hv] = S[hv] + torch.outer(k[t, h], u)
            o[t, hv] = S[hv].T @ q[t, h]
    return o, S


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(head_dim: int, base: float, length: int):
    """``fla.modules.RotaryEmbedding`` tables: fp32 ``inv_freq = 1 / base^(arange(0, d, 2) / d)``, fp32 positions."""
    inv_freq = 1.0 / (float(base) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return torch.cos(freqs).double(), torch.sin(freqs).double()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved (GPT-NeoX) rotary on x [T, H, D] with cos/sin [T, D/2]."""
    cos = torch.cat([cos, cos], -1)[:, None, :]
    sin = torch.cat([sin, sin], -1)[:, None, :]
    return x * cos + rotate_half(x) * sin


def softmax_attention(q, k, v, window_size: int | None):
    """Causal softmax attention with an optional flash-attn window ``(w - 1, 0)``, GQA by repeat_interleave.
    q: [T, H, D], k, v: [T, KV, D]; explicit score matrix and mask. Returns [T, H, D]."""
    length, heads, head_dim = q.shape
    group = heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(head_dim)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    allowed = j <= i
    if window_size is not None:
        allowed = allowed & (i - j < window_size)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hij,jhd->ihd", scores.softmax(-1), v)


# ----------------------------------------------------------------------------------------------
# Layers and the model
# ----------------------------------------------------------------------------------------------


def _linear(x, state, name):
    y = x @ state[name + ".weight"].T
    bias = state.get(name + ".bias")
    return y if bias is None else y + bias


def softmax_attention_layer(x, state, prefix, spec, hidden_size):
    """``fla.layers.attn.Attention`` on one sequence x [T, hidden]."""
    length = x.shape[0]
    head_dim = hidden_size // spec["num_heads"]
    q = _linear(x, state, prefix + "q_proj").reshape(length, -1, head_dim)
    k = _linear(x, state, prefix + "k_proj").reshape(length, -1, head_dim)
    v = _linear(x, state, prefix + "v_proj").reshape(length, -1, head_dim)
    cos, sin = rotary_cos_sin(head_dim, spec["rope_theta"], length)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    o = softmax_attention(q, k, v, spec["window_size"])
    return _linear(o.reshape(length, -1), state, prefix + "o_proj")


def delta_net_layer(x, state, prefix, config):
    """``fla.layers.delta_net.DeltaNet`` on one sequence x [T, hidden]."""
    length = x.shape[0]
    dims = linear_dims(config)
    heads, d_k, d_v = dims["num_heads"], dims["head_k_dim"], dims["head_v_dim"]
    act = config.qk_activation
    assert act in ("silu", "relu", "elu", "identity") and config.qk_norm in ("l2", "sum")
    q = _linear(x, state, prefix + "q_proj")
    k = _linear(x, state, prefix + "k_proj")
    v = _linear(x, state, prefix + "v_proj")
    if config.use_short_conv:
        qk_conv_act = "silu" if act == "silu" else None
        q = short_conv(q, state[prefix + "q_conv1d.weight"], None, qk_conv_act)
        k = short_conv(k, state[prefix + "k_conv1d.weight"], None, qk_conv_act)
        v = short_conv(v, state[prefix + "v_conv1d.weight"], None, "silu")
    else:
        if act == "silu":
            q, k = F.silu(q), F.silu(k)
        v = F.silu(v)
    q, k = q.reshape(length, heads, d_k), k.reshape(length, heads, d_k)
    v = v.reshape(length, heads, d_v)
    if act == "relu":
        q, k = q.relu(), k.relu()
    elif act == "elu":
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    if config.qk_norm == "sum":
        q = q / q.sum(-1, keepdim=True)
        k = k / k.sum(-1, keepdim=True)
    if config.use_beta:
        beta = torch.sigmoid(_linear(x, state, prefix + "b_proj"))
    else:
        beta = torch.ones(length, heads, dtype=x.dtype)
    if config.allow_neg_eigval:
        beta = beta * 2.0
    if config.qk_norm == "l2":  # use_qk_l2norm_in_kernel
        q, k = l2norm(q), l2norm(k)
    q = q * d_k ** -0.5
    o, _ = delta_rule_recurrent(q, k, v, beta)
    return _output_norm_and_proj(o, x, state, prefix, config, d_v)


def gated_delta_net_layer(x, state, prefix, config):
    """``fla.layers.gated_deltanet.GatedDeltaNet`` on one sequence x [T, hidden]."""
    length = x.shape[0]
    dims = linear_dims(config)
    heads, v_heads, d_k, d_v = dims["num_heads"], dims["num_v_heads"], dims["head_k_dim"], dims["head_v_dim"]
    q = _linear(x, state, prefix + "q_proj")
    k = _linear(x, state, prefix + "k_proj")
    v = _linear(x, state, prefix + "v_proj")
    if config.use_short_conv:
        q = short_conv(q, state[prefix + "q_conv1d.weight"], None, "silu")
        k = short_conv(k, state[prefix + "k_conv1d.weight"], None, "silu")
        v = short_conv(v, state[prefix + "v_conv1d.weight"], None, "silu")
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    q, k = q.reshape(length, heads, d_k), k.reshape(length, heads, d_k)
    v = v.reshape(length, v_heads, d_v)
    beta = torch.sigmoid(_linear(x, state, prefix + "b_proj"))
    if config.allow_neg_eigval:
        beta = beta * 2.0
    a = _linear(x, state, prefix + "a_proj") + state[prefix + "dt_bias"]
    g = -torch.exp(state[prefix + "A_log"]) * F.softplus(a)
    q, k = l2norm(q), l2norm(k)
    q = q * d_k ** -0.5
    o, _ = delta_rule_recurrent(q, k, v, beta, g)
    return _output_norm_and_proj(o, x, state, prefix, config, d_v)


def _output_norm_and_proj(o, x, state, prefix, config, d_v):
    """o_norm per head over d_v (RMSNorm, or FusedRMSNormGated: rmsnorm(o) * weight * silu(g)), then o_proj."""
    length = o.shape[0]
    o = rms_norm(o, state[prefix + "o_norm.weight"], config.norm_eps)
    if config.use_gate:
        gate = _linear(x, state, prefix + "g_proj").reshape(length, -1, d_v)
        o = o * F.silu(gate)
    return _linear(o.reshape(length, -1), state, prefix + "o_proj")


def _check_state_dict(config, state):
    expected = parameter_shapes(config)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(n for n in expected if n in state and tuple(state[n].shape) != expected[n])
    if missing or extra or wrong:
        raise ValueError(f"not the state dict of FLA's model for this config: missing {missing}, extra {extra}, "
                         f"wrong shapes {wrong}")


def fla_reference_hidden_states(config, state_dict, input_ids: torch.Tensor) -> torch.Tensor:
    """The final (normed) hidden states [B, T, hidden] of FLA's model, float64, one row at a time."""
    if config.model_type not in ("delta_net", "gated_deltanet"):
        raise NotImplementedError(config.model_type)
    if config.hidden_act != "swish":
        raise NotImplementedError(f"hidden_act {config.hidden_act!r}")
    _check_state_dict(config, state_dict)
    state = {name: t.detach().double() for name, t in state_dict.items()}
    eps = config.norm_eps
    layer_fn = delta_net_layer if config.model_type == "delta_net" else gated_delta_net_layer
    rows = []
    for ids in input_ids:
        x = state["model.embeddings.weight"][ids]
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, state[p + "attn_norm.weight"], eps)
            spec = get_hybrid_attention_spec(config.attn, layer_idx=i)
            if spec is not None:
                x = x + softmax_attention_layer(h, state, p + "attn.", spec, config.hidden_size)
            else:
                x = x + layer_fn(h, state, p + "attn.", config)
            h = rms_norm(x, state[p + "mlp_norm.weight"], eps)
            gate = h @ state[p + "mlp.gate_proj.weight"].T
            up = h @ state[p + "mlp.up_proj.weight"].T
            x = x + (F.silu(gate) * up) @ state[p + "mlp.down_proj.weight"].T
        rows.append(rms_norm(x, state["model.norm.weight"], eps))
    return torch.stack(rows)


def fla_reference_logits(config, state_dict, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] (float64) of FLA's ``DeltaNetForCausalLM`` / ``GatedDeltaNetForCausalLM`` with
    `state_dict`, for unpadded `input_ids` [B, T]."""
    hidden = fla_reference_hidden_states(config, state_dict, input_ids)
    head = state_dict.get("lm_head.weight")
    if config.tie_word_embeddings:
        head = state_dict["model.embeddings.weight"]
    return hidden @ head.double().T


# ----------------------------------------------------------------------------------------------
# Transcriptions of FLA's naive kernels (fla/ops/{delta_rule,gated_delta_rule}/naive.py), for sanity tests
# ----------------------------------------------------------------------------------------------


def fla_delta_rule_chunkwise(q, k, v, beta, chunk_size=32):
    """``fla.ops.delta_rule.naive.delta_rule_chunkwise`` (q, k, v: [B, H, T, D], beta [B, H, T];
    T a multiple of chunk_size; scales q by d_k^-0.5 itself)."""
    b, h, length, d_k = q.shape
    d_v = v.shape[-1]
    q = q * (d_k ** -0.5)
    v = v * beta[..., None]
    k_beta = k * beta[..., None]
    assert length % chunk_size == 0
    n = length // chunk_size

    def chunks(x):
        return x.reshape(b, h, n, chunk_size, x.shape[-1])

    mask = torch.triu(torch.ones(chunk_size, chunk_size, dtype=torch.bool), diagonal=0)
    q, k, v, k_beta = map(chunks, [q, k, v, k_beta])
    attn = -(k_beta @ k.transpose(-1, -2)).masked_fill(mask, 0)
    for i in range(1, chunk_size):
        attn[..., i, :i] = attn[..., i, :i] + (attn[..., i, :, None].clone() * attn[..., :, :i].clone()).sum(-2)
    attn = attn + torch.eye(chunk_size, dtype=q.dtype)
    u = attn @ v
    w = attn @ k_beta
    S = k.new_zeros(b, h, d_k, d_v)
    o = torch.zeros_like(v)
    mask = torch.triu(torch.ones(chunk_size, chunk_size, dtype=torch.bool), diagonal=1)
    for i in range(n):
        q_i, k_i = q[:, :, i], k[:, :, i]
        attn = (q_i @ k_i.transpose(-1, -2)).masked_fill_(mask, 0)
        u_i = u[:, :, i] - w[:, :, i] @ S
        o[:, :, i] = q_i @ S + attn @ u_i
        S = S + k_i.transpose(-1, -2) @ u_i
    return o.reshape(b, h, length, d_v), S


def fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=None):
    """``fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule`` (q, k, v: [B, T, H, D]; beta, g:
    [B, T, H]), computed in q's dtype."""
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    B, H, T, K, V = *k.shape, v.shape[-1]
    o = torch.zeros(B, H, T, V, dtype=v.dtype)
    h = torch.zeros(B, H, K, V, dtype=v.dtype)
    if scale is None:
        scale = 1 / (q.shape[-1] ** 0.5)
    q = q * scale
    for i in range(T):
        b_q, b_k, b_v = q[:, :, i], k[:, :, i], v[:, :, i].clone()
        h = h.clone() * g[:, :, i].exp()[..., None, None]
        b_v = b_v - (h.clone() * b_k[..., None]).sum(-2)
        b_v = b_v * beta[:, :, i][..., None]
        h = h.clone() + b_k.unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", b_q, h)
    return o.transpose(1, 2).contiguous(), h


def fla_naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64, scale=None):
    """``fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule`` (q, k, v: [B, T, H, D]; g, beta:
    [B, T, H]; T padded up to a multiple of chunk_size), computed in q's dtype."""
    BT = chunk_size
    if scale is None:
        scale = 1 / (q.shape[-1] ** 0.5)
    q, k, v, beta, g = (x.transpose(1, 2).contiguous() for x in (q, k, v, beta, g))
    T = q.shape[-2]
    pad_len = (BT - (T % BT)) % BT
    if pad_len > 0:
        q, k, v = (F.pad(x, (0, 0, 0, pad_len)) for x in (q, k, v))
        beta, g = F.pad(beta, (0, pad_len)), F.pad(g, (0, pad_len))
    b, h, length, d_k = q.shape
    d_v = v.shape[-1]
    n = length // BT
    q = q * scale
    v = v * beta[..., None]
    k_beta = k * beta[..., None]
    mask = torch.triu(torch.ones(BT, BT, dtype=torch.bool), diagonal=0)

    def chunks(x):
        return x.reshape(b, h, n, BT, x.shape[-1])

    q, k, v, k_beta, decay = map(chunks, [q, k, v, k_beta, g.unsqueeze(-1)])
    decay = decay.squeeze(-1).cumsum(-1)
    decay_exp = decay.exp()[..., None]
    L_mask = ((decay.unsqueeze(-1) - decay.unsqueeze(-2)).tril().exp()).tril()
    attn = -((k_beta @ k.transpose(-1, -2)) * L_mask).masked_fill(mask, 0)
    for i in range(1, BT):
        attn[..., i, :i] = attn[..., i, :i].clone() + (
            attn[..., i, :i, None].clone() * attn[..., :i, :i].clone()
        ).sum(-2)
    attn = attn + torch.eye(BT, dtype=q.dtype)
    v = attn @ v
    k_cumdecay = attn @ (k_beta * decay_exp)
    S = k.new_zeros(b, h, d_k, d_v)
    o = torch.zeros_like(v)
    mask = torch.triu(torch.ones(BT, BT, dtype=torch.bool), diagonal=1)
    for i in range(n):
        q_i, k_i, v_i = q[:, :, i], k[:, :, i], v[:, :, i]
        attn = (q_i @ k_i.transpose(-1, -2) * L_mask[:, :, i]).masked_fill_(mask, 0)
        v_new = v_i - k_cumdecay[:, :, i] @ S
        o[:, :, i] = (q_i * decay[:, :, i, :, None].exp()) @ S + attn @ v_new
        S = S * decay[:, :, i, -1, None, None].exp() + (
            k_i * (decay[:, :, i, -1, None] - decay[:, :, i]).exp()[..., None]
        ).transpose(-1, -2) @ v_new
    o = o.reshape(b, h, length, d_v)[:, :, :T].transpose(1, 2)
    return o, S
