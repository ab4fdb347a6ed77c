"""Feature maps φ of the fast-weight layers: each map's math, options and weights, and the registry.

`FEATURE_MAPS` holds one `FeatureMapSpec` per map (elu+1, FAVOR+, DPFP(ν), Hedgehog, and FLA's q/k
activations). A map owns its hyperparameters — its options class, an `options_fwp.OptionGroup` whose values
live in ``FWPConfig.feature_maps[name]`` — and its weights (a random ω saved with the model, a learned W), as
flash-linear-attention's ``DPFPFeatureMap(head_dim, nu)`` does. `FWPFeatureMap` is the module a layer holds.

**Adding a feature map** is its options class (if it has hyperparameters), its `FeatureMapSpec` entry in
`FEATURE_MAPS` and its tests: the config validates and saves its options, the delta rules can use it
(``fast_weight={"feature_map": name}``), and `FWPFeatureMap` builds and initialises its weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .fast_weight_kernels import sum_normalize
from .options_fwp import (
    OptionGroup,
    boolean,
    integer,
    integer_at_least,
    option,
    positive_integer,
    positive_integer_or_none,
)

# ----------------------------------------------------------------------------------------------
# The maps' math
# ----------------------------------------------------------------------------------------------


def elu_plus_one_feature_map(x: torch.Tensor) -> torch.Tensor:
    """Katharopoulos et al.: ``φ(x) = elu(x) + 1``; ``[..., d] -> [..., d]``."""
    return F.elu(x) + 1.0


def dpfp_feature_map(x: torch.Tensor, nu: int) -> torch.Tensor:
    """Deterministic parameter-free projection DPFP(ν); ``[..., d] -> [..., 2·ν·d]``.

    ``x' = [relu(x), relu(−x)]``, ``φ(x) = concat_{j=1..ν} x' ⊙ roll(x', j)``. Features are exactly 0
    wherever a component pair has opposite signs, so a normaliser ``z·φ(q)`` can be tiny or 0; see
    :func:`divide_by_normalizer` for what that means in bf16.
    """
    if nu < 1:
        raise ValueError(f"dpfp nu must be >= 1, got {nu}")
    x_both = F.relu(torch.cat([x, -x], dim=-1))
    products = [x_both * x_both.roll(shifts=j, dims=-1) for j in range(1, nu + 1)]
    return products[0] if nu == 1 else torch.cat(products, dim=-1)


def hedgehog_feature_map(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hedgehog (Zhang et al. 2024): a learned map that mimics softmax attention,
    ``φ(x) = [softmax(W x), softmax(−W x)]`` (softmax over the feature dim); ``[B, h, T, d] -> [B, h, T, 2d]``.

    weight ``[heads, d, d]``: one W per head; x may stack several groups of those heads on dim 1 (q's
    heads, then k's), which all use the same W. Every half sums to 1, so φ ≥ 0 and Σφ = 2.
    """
    heads = weight.shape[0]
    if x.dim() != 4 or x.shape[1] % heads:
        raise ValueError(f"hedgehog feature map: x must be [B, k·{heads} heads, T, d], got {tuple(x.shape)}")
    weight = weight.to(x.dtype).repeat(x.shape[1] // heads, 1, 1)
    projected = torch.einsum("bhtd,hed->bhte", x, weight)
    return torch.cat([projected.softmax(dim=-1), (-projected).softmax(dim=-1)], dim=-1)


def _favor_exponents(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The exponents of FAVOR+'s features, ``[ωx̂ − |x̂|²/2, −ωx̂ − |x̂|²/2]`` with ``x̂ = x / d^{1/4}``."""
    dim = projection.shape[1]
    if x.shape[-1] != dim:
        raise ValueError(f"favor feature map: input has last dim {x.shape[-1]}, projection expects {dim}")
    x = x * dim**-0.25
    projected = x @ projection.to(x.dtype).t()
    half_sq_norm = 0.5 * (x * x).sum(dim=-1, keepdim=True)
    return torch.cat([projected - half_sq_norm, -projected - half_sq_norm], dim=-1)


def favor_feature_map(x: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """FAVOR+ positive random features (Choromanski et al.); ``[..., d] -> [..., 2m]``.

    With ``x̂ = x / d^{1/4}`` (so that ``φ(q)·φ(k)`` estimates ``exp(q·k/√d)``) and ``projection = ω``
    of shape ``[m, d]``: ``φ(x) = (2m)^{-1/2} [exp(ωx̂ − |x̂|²/2), exp(−ωx̂ − |x̂|²/2)]``.
    The exponent is at most ``|ω_i|²/2`` whatever ``x`` is (``|ω_i|²/2 − |x̂ ∓ ω_i|²/2``), so φ itself
    stays finite in fp32 for head sizes up to ~150 — but a product ``φ(q)·φ(k)`` of two large features
    can overflow: reads that divide by a normaliser use :func:`favor_feature_map_shifted`.
    """
    num_features = projection.shape[0]
    return _favor_exponents(x, projection).exp() * (2 * num_features) ** -0.5


# How large a key feature of the shifted FAVOR+ map may be: e^60 ≈ 1e26, which leaves a factor
# e^28 ≈ 1e12 of fp32's range for the sum over tokens and the size of the values.
FAVOR_KEY_LOG_HEADROOM = 60.0


def favor_key_log_scale(projection: torch.Tensor) -> torch.Tensor:
    """The token-independent shift ``c = max(0, max_i |ω_i|²/2 − 60)`` of FAVOR+ key features (fp32 scalar).

    Every exponent is at most ``max_i |ω_i|²/2``, so ``φ(k)·e^{−c} ≤ e^{60}``: no key feature, and no
    sum of them over any realistic number of tokens, can overflow. ``c`` depends on ω only, so it is
    the same at every time step (prefill and decoding, segment and next segment write one state), and
    it is 0 for head sizes up to ~100, where the keys are left exactly as they are.
    """
    half_sq_norms = 0.5 * projection.float().pow(2).sum(dim=-1)
    return (half_sq_norms.max() - FAVOR_KEY_LOG_HEADROOM).clamp_min(0.0)


def favor_feature_map_shifted(
    x: torch.Tensor, projection: torch.Tensor, *, per_token: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAVOR+ features divided by a factor that cannot overflow, and the log of that factor:
    ``(φ̃, s)`` with ``φ(x) = φ̃ · e^s`` (:func:`favor_feature_map`).

    ``per_token``: ``s = max_i`` of each token's exponents (``[..., 1]``), so the largest feature of
    every token is ``(2m)^{-1/2}``. Otherwise ``s = c`` of :func:`favor_key_log_scale`, the same for
    every token (a 0-dim tensor). ``s`` carries no gradient: the reads that use φ̃ are invariant to it.

    Where the factors cancel this computes exactly what the plain φ computes, without overflow:
    in sum-normalisation φ/Σφ (per-token shift; :func:`sum_normalize` with ``log_scale=s`` keeps its
    ε clamp exact), and in a read divided by its normaliser, ``Sᵀφ(q) / (z·φ(q) + ε)``, with the
    per-token shift for queries and the constant one for keys (a per-key factor would weight keys
    differently; :func:`divide_by_normalizer` with ``log_scale = s_q + c`` keeps ε exact).
    """
    num_features = projection.shape[0]
    exponents = _favor_exponents(x, projection)
    if per_token:
        shift = exponents.detach().amax(dim=-1, keepdim=True)
    else:
        shift = favor_key_log_scale(projection).to(device=exponents.device, dtype=exponents.dtype)
    return (exponents - shift).exp() * (2 * num_features) ** -0.5, shift


def draw_orthogonal_random_features(
    num_features: int, dim: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Orthogonal random features ω for FAVOR+; ``[num_features, dim]``.

    Rows come in blocks of ``dim`` mutually orthogonal directions, each row scaled by the norm of a
    Gaussian vector so that rows are marginally ``N(0, I)``.
    """
    num_blocks = math.ceil(num_features / dim)
    gaussian = torch.randn(num_blocks, dim, dim, generator=generator, device=device)
    q, _ = torch.linalg.qr(gaussian)  # one batched QR: the columns of each block are orthonormal
    directions = q.transpose(-1, -2).reshape(num_blocks * dim, dim)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, device=device).norm(dim=-1, keepdim=True)
    return directions * norms


# ----------------------------------------------------------------------------------------------
# Options of the maps (values in ``FWPConfig.feature_maps[name]``)
# ----------------------------------------------------------------------------------------------


@dataclass
class NoFeatureMapOptions(OptionGroup):
    """A map without hyperparameters (its weights, if any, are sized by the layer)."""


@dataclass
class DPFPOptions(OptionGroup):
    """DPFP(ν): nu ν ≥ 1 rolls; d_dot = 2·ν·head_dim."""

    nu: int = option(1, check=integer_at_least(1), weight_meaning=True)


@dataclass
class FavorOptions(OptionGroup):
    """FAVOR+: num_features m random features (d_dot = 2m); ω is drawn from ``seed + layer index`` (and
    saved with the model, so the seed does not change what saved weights compute); redraw: draw a new ω
    at every training forward pass."""

    num_features: int = option(64, check=positive_integer, weight_meaning=True)
    seed: int = option(0, check=integer, weight_meaning=False)
    redraw: bool = option(False, check=boolean, weight_meaning=False)


@dataclass
class T2ROptions(OptionGroup):
    """T2R (Kasai et al. 2021, "Finetuning Pretrained Transformers into RNNs"; FLA's ``T2RFeatureMap``):
    feature_dim: d_dot, the width of ``relu(W x + b)`` (None: the head size); bias: learn b as well."""

    feature_dim: int | None = option(None, check=positive_integer_or_none, weight_meaning=True)
    bias: bool = option(False, check=boolean, weight_meaning=True)


def t2r_feature_map(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """T2R: a learned ``φ(x) = relu(W x + b)``, one W ``[d_dot, d]`` (and b ``[d_dot]``) for every head, as in
    FLA; ``[..., d] -> [..., d_dot]``. φ ≥ 0."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)).relu()


def _t2r_weights(options: T2ROptions, head_dim: int, num_heads: int, generator: torch.Generator | None) -> Weights:
    """``nn.Linear``'s initialisation: W and b uniform in ±head_dim^{-1/2}."""
    feature_dim, bound = options.feature_dim or head_dim, head_dim**-0.5
    weights = {"projection": (2 * torch.rand(feature_dim, head_dim, generator=generator) - 1) * bound}
    if options.bias:
        weights["bias"] = (2 * torch.rand(feature_dim, generator=generator) - 1) * bound
    return weights


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FeatureMapSpec:
    """One feature map φ.

    ``apply(x, options, weights)`` maps ``[..., d] -> [..., d_dot]`` (x may be ``[B, k·heads, T, d]``:
    q's heads then k's, for maps with per-head weights); ``output_dim(head_dim, options)`` is d_dot;
    ``label(options)`` names it with its settings (model cards).
    ``weights(options, head_dim, num_heads, generator) -> {name: tensor}``: the initial weights of a map
    that has some (None: no weights) — drawn with `generator` for a random-feature map (``random_features``:
    persistent buffers saved with the model, drawn from ``options.seed`` + layer index, redrawn in training
    with ``options.redraw``), else learned parameters.
    ``apply_shifted(x, options, weights, per_token) -> (φ̃, s)`` is the overflow-free form ``φ = φ̃ · e^s``
    of a map whose feature products can overflow fp32 (FAVOR+), else None; ``key_log_scale(weights)`` is its
    token-independent shift (the ``s`` of ``per_token=False``).
    ``nonnegative``: φ ≥ 0 everywhere, so that sum normalisation φ/Σφ is defined (maps that can be negative
    go with L2 normalisation).
    """

    name: str
    label: Callable[[OptionGroup], str]
    apply: Callable[[torch.Tensor, OptionGroup, Weights], torch.Tensor]
    output_dim: Callable[[int, OptionGroup], int]
    options: type[OptionGroup] = NoFeatureMapOptions
    weights: Callable[[OptionGroup, int, int, torch.Generator | None], Weights] | None = None
    random_features: bool = False
    nonnegative: bool = True
    apply_shifted: Callable[[torch.Tensor, OptionGroup, Weights, bool], tuple[torch.Tensor, torch.Tensor]] | None = None
    key_log_scale: Callable[[Weights], torch.Tensor] | None = None

    @property
    def learned(self) -> bool:
        """Whether the map has trained weights (parameters)."""
        return self.weights is not None and not self.random_features

    def shifted(
        self, x: torch.Tensor, options: OptionGroup, weights: Weights, *, per_token: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(φ̃, s)`` with ``φ = φ̃ · e^s`` for the reads where such a factor cancels (see
        :func:`favor_feature_map_shifted`): ``s`` per token (``[..., 1]``) or, with ``per_token=False``,
        one for all tokens. Maps whose products cannot overflow (``apply_shifted`` None) return ``(φ, None)``."""
        if self.apply_shifted is None:
            return self.apply(x, options, weights), None
        return self.apply_shifted(x, options, weights, per_token)


def _identity_per_head(options: OptionGroup, head_dim: int, num_heads: int,
                       generator: torch.Generator | None) -> Weights:
    return {"projection": torch.eye(head_dim).repeat(num_heads, 1, 1)}


def _favor_projection(options: FavorOptions, head_dim: int, num_heads: int,
                      generator: torch.Generator | None) -> Weights:
    return {"projection": draw_orthogonal_random_features(options.num_features, head_dim, generator)}


def _elementwise(name: str, label: str, function: Callable[[torch.Tensor], torch.Tensor],
                 nonnegative: bool = True) -> FeatureMapSpec:
    """The entry of a map applied element by element, without options or weights: d_dot = d."""
    return FeatureMapSpec(
        name,
        label=lambda options: label,
        apply=lambda x, options, weights: function(x),
        output_dim=lambda head_dim, options: head_dim,
        nonnegative=nonnegative,
    )


FEATURE_MAPS: dict[str, FeatureMapSpec] = {
    spec.name: spec
    for spec in (
        _elementwise("elu", "elu + 1", elu_plus_one_feature_map),
        FeatureMapSpec(
            "favor",
            label=lambda options: f"FAVOR+(m={options.num_features})",
            apply=lambda x, options, weights: favor_feature_map(x.float(), weights["projection"].float()),
            output_dim=lambda head_dim, options: 2 * options.num_features,
            options=FavorOptions,
            weights=_favor_projection,
            random_features=True,
            apply_shifted=lambda x, options, weights, per_token: favor_feature_map_shifted(
                x.float(), weights["projection"].float(), per_token=per_token
            ),
            key_log_scale=lambda weights: favor_key_log_scale(weights["projection"]),
        ),
        FeatureMapSpec(
            "dpfp",
            label=lambda options: f"DPFP(ν={options.nu})",
            apply=lambda x, options, weights: dpfp_feature_map(x, options.nu),
            output_dim=lambda head_dim, options: 2 * options.nu * head_dim,
            options=DPFPOptions,
        ),
        FeatureMapSpec(
            "hedgehog",
            label=lambda options: "Hedgehog (learned softmax features)",
            apply=lambda x, options, weights: hedgehog_feature_map(x, weights["projection"]),
            output_dim=lambda head_dim, options: 2 * head_dim,
            weights=_identity_per_head,
        ),
        FeatureMapSpec(
            "t2r",
            label=lambda options: f"T2R (learned relu(Wx{' + b' if options.bias else ''}))",
            apply=lambda x, options, weights: t2r_feature_map(x, weights["projection"], weights.get("bias")),
            output_dim=lambda head_dim, options: options.feature_dim or head_dim,
            options=T2ROptions,
            weights=_t2r_weights,
        ),
        # The q/k activations of flash-linear-attention's DeltaNet (`qk_activation`), meant to be followed by
        # an L2 or sum normalisation (`fast_weight.key_normalization`): they are not positive maps.
        _elementwise("silu", "SiLU", F.silu, nonnegative=False),
        _elementwise("relu", "ReLU", F.relu),
        _elementwise("identity", "identity", lambda x: x, nonnegative=False),
    )
}


def default_feature_map_options() -> dict[str, OptionGroup]:
    """Every map's options at their defaults (``FWPConfig.feature_maps`` of a config that sets none)."""
    return {name: spec.options() for name, spec in FEATURE_MAPS.items()}


def feature_map_output_dim(feature_map: str, head_dim: int, options: OptionGroup | None = None) -> int:
    """d_dot, the size of φ's output, for a feature map name (its default options when None)."""
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"unknown feature_map {feature_map!r}; allowed: {', '.join(map(repr, FEATURE_MAPS))}")
    spec = FEATURE_MAPS[feature_map]
    return spec.output_dim(head_dim, spec.options() if options is None else options)


# ----------------------------------------------------------------------------------------------
# The module a layer holds
# ----------------------------------------------------------------------------------------------


class FWPFeatureMap(nn.Module):
    """φ of one layer: a `FEATURE_MAPS` entry with its options and its weights.

    A random-feature map (FAVOR+) keeps ω ``[m, head_dim]`` as a persistent buffer drawn from
    ``options.seed + layer_idx`` (every layer its own ω; a model built from the same config is the same
    model, and ω is saved with it); ``redraw`` draws a new ω at every training forward pass (never where
    ``allow_redraw`` is False). A learned map (Hedgehog) keeps its weights as parameters (Hedgehog's W
    ``[num_heads, head_dim, head_dim]``, initialised to the identity).
    """

    def __init__(self, kind: str, options: OptionGroup, head_dim: int, num_heads: int, layer_idx: int,
                 allow_redraw: bool = True) -> None:
        super().__init__()
        self.kind = kind
        self.spec = FEATURE_MAPS[kind]
        self.options = options
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.seed = options.seed + layer_idx if self.spec.random_features else None
        self.redraw = allow_redraw and self.spec.random_features and options.redraw
        self.weight_names: tuple[str, ...] = ()
        if self.spec.weights is not None:
            initial = self.initial_weights()
            self.weight_names = tuple(initial)
            for name, value in initial.items():
                if self.spec.random_features:
                    self.register_buffer(name, value, persistent=True)
                else:
                    setattr(self, name, nn.Parameter(value))

    @property
    def output_dim(self) -> int:
        """d_dot."""
        return self.spec.output_dim(self.head_dim, self.options)

    def initial_weights(self, device: torch.device | str | None = None) -> Weights:
        """The weights a freshly built map has (the seeded ω, the identity W, ...)."""
        if self.spec.weights is None:
            return {}
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        return {name: value.to(device) for name, value in
                self.spec.weights(self.options, self.head_dim, self.num_heads, generator).items()}

    @property
    def weights(self) -> Weights:
        return {name: getattr(self, name) for name in self.weight_names}

    @torch.no_grad()
    def redraw_projection(self) -> None:
        """Draw fresh random weights (ω) from torch's global RNG (Performer's redraw during training)."""
        fresh = self.spec.weights(self.options, self.head_dim, self.num_heads, None)
        for name, value in fresh.items():
            getattr(self, name).copy_(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec.apply(x, self.options, self.weights)

    def shifted(self, x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(φ̃, s)`` with ``φ(x) = φ̃ · e^s`` (``s`` None for maps that need no shift); see
        `FeatureMapSpec.shifted`."""
        return self.spec.shifted(x, self.options, self.weights, per_token=per_token)

    def sum_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``φ(x) / Σ φ(x)``, computed from per-token shifted features (no overflow for large x)."""
        features, log_scale = self.shifted(x, per_token=True)
        return sum_normalize(features, log_scale=log_scale)

    def key_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(k) for a read divided by its normaliser: ``φ(k) e^{−c}`` with one shift c for all tokens."""
        return self.shifted(x, per_token=False)[0]

    def query_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """φ(q) for a read divided by its normaliser, over keys from `key_features`: ``(φ(q) e^{−s_q},
        s_q + c)``; the second is the ``log_scale`` that `divide_by_normalizer` / `sum_rule_read` need
        (None where no shift is applied). The shifts cancel, so the read is the one of the plain φ —
        without the fp32 overflow of ``φ(q)·φ(k)`` that FAVOR+ has for large q and k."""
        features, query_shift = self.shifted(x, per_token=True)
        if query_shift is None:
            return features, None
        return features, query_shift + self.spec.key_log_scale(self.weights).to(query_shift)


__all__ = [
    "FEATURE_MAPS",
    "DPFPOptions",
    "FWPFeatureMap",
    "FavorOptions",
    "FeatureMapSpec",
    "NoFeatureMapOptions",
    "T2ROptions",
    "default_feature_map_options",
    "dpfp_feature_map",
    "draw_orthogonal_random_features",
    "elu_plus_one_feature_map",
    "favor_feature_map",
    "favor_feature_map_shifted",
    "favor_key_log_scale",
    "feature_map_output_dim",
    "hedgehog_feature_map",
    "t2r_feature_map",
]
