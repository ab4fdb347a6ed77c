"""Numerics of the feature maps and normalised reads: FAVOR+ with large inputs (no fp32 overflow, the
same function as the plain formula), layer outputs against hand computations from the layers' own
weights (FAVOR+'s read, the delta rule's sum-normalised φ), and the documented bf16 bound of DPFP's
normalised read where its normaliser is tiny.

References are computed in float64 from the plain formulas, written out here (they do not call the
kernels, which compute in fp32).
"""

from __future__ import annotations

import copy
import math

import pytest
import sum_rule_reference
import torch
import torch.nn.functional as F
from conftest import (
    LM_VARIANTS,
    SEQ2SEQ_BASE,
    assert_close,
    layer_types,
    lm_config,
    lm_config_from,
    make_lm,
    random_ids,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import fwp_hf.fast_weight_kernels as fwk
import fwp_hf.feature_maps_fwp as fm
from fwp_hf import FEATURE_MAPS, TOKEN_MIXERS
from fwp_hf.layers_fwp import FWPFastWeightAttention, MixerInputs, merge_heads, split_heads
from fwp_hf.modeling_fwp_seq2seq import FWPCrossAttention

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 1e-6  # the ε of the normalised read and of sum-normalisation

# From the registry: the sum rule whose φ is random features (FAVOR+), the feature map that is,
# and the LM variants whose layers sum-normalise φ (the delta rules, one per feature map).
FAVOR_MAP = next(name for name, spec in FEATURE_MAPS.items() if spec.random_features)
FAVOR_SUM_RULE = next(
    name for name, spec in TOKEN_MIXERS.items() if spec.attention_normalization and spec.feature_map == FAVOR_MAP
)
SUM_NORMALIZED_VARIANTS = [
    name
    for name, settings in LM_VARIANTS.items()
    if len(layer_types(settings)) == 1
    and lm_config(name).layer_options(layer_types(settings)[0]).get("key_normalization") == "sum"
]
# Sum rules with attention normalisation and a feature map that is not random (elu, DPFP), and those
# of them whose φ has exact zeros, so that z·φ(q) can be tiny or 0 (DPFP: products of ReLUs).
DETERMINISTIC_NORMALIZED_SUM_RULES = [
    name
    for name, spec in TOKEN_MIXERS.items()
    if spec.attention_normalization and spec.feature_map is not None
    and not FEATURE_MAPS[spec.feature_map].random_features
    and not FEATURE_MAPS[spec.feature_map].learned
]
SPARSE_FEATURE_SUM_RULES = [
    name
    for name in DETERMINISTIC_NORMALIZED_SUM_RULES
    if not FEATURE_MAPS[TOKEN_MIXERS[name].feature_map].learned
    and (FEATURE_MAPS[TOKEN_MIXERS[name].feature_map].apply(
        torch.tensor([1.0, -1.0, 0.5]), FEATURE_MAPS[TOKEN_MIXERS[name].feature_map].options(), {}) == 0).any()
]


# ----------------------------------------------------------------------------------------------
# Plain formulas in float64
# ----------------------------------------------------------------------------------------------


def favor_by_hand(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``φ(x) = (2m)^{-1/2} [exp(ωx̂ − |x̂|²/2), exp(−ωx̂ − |x̂|²/2)]``, ``x̂ = x / d^{1/4}``, in float64."""
    x, omega = x.double(), omega.double()
    x_hat = x / x.shape[-1] ** 0.25
    projected = x_hat @ omega.T
    half_sq_norm = 0.5 * (x_hat * x_hat).sum(dim=-1, keepdim=True)
    features = torch.cat([torch.exp(projected - half_sq_norm), torch.exp(-projected - half_sq_norm)], dim=-1)
    return features / math.sqrt(2 * omega.shape[0])


def normalized_read_by_hand(phi_q, phi_k, v, causal: bool = True) -> torch.Tensor:
    """``y_t = Σ_τ (φq_t·φk_τ) v_τ / (Σ_τ φq_t·φk_τ + ε)`` over τ ≤ t (causal) or all τ, float64."""
    scores = phi_q.double() @ phi_k.double().transpose(-1, -2)
    if causal:
        scores = scores.tril()
    return (scores @ v.double()) / (scores.sum(dim=-1, keepdim=True) + EPS)


def sum_normalize_by_hand(phi: torch.Tensor) -> torch.Tensor:
    phi = phi.double()
    return phi / phi.sum(dim=-1, keepdim=True).clamp_min(EPS)


def delta_rule_by_hand(q, k, v, beta) -> torch.Tensor:
    """``S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀk_t)ᵀ``, ``y_t = S_tᵀ q_t``, float64, token by token."""
    q, k, v, beta = q.double(), k.double(), v.double(), beta.double()
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[2]):
        k_t = k[:, :, t]
        retrieved = (k_t.unsqueeze(-2) @ state).squeeze(-2)
        state = state + k_t.unsqueeze(-1) * (beta[:, :, t, None] * (v[:, :, t] - retrieved)).unsqueeze(-2)
        outputs.append((q[:, :, t].unsqueeze(-2) @ state).squeeze(-2))
    return torch.stack(outputs, dim=2)


# ----------------------------------------------------------------------------------------------
# The shifted FAVOR+ map and the ε of the normalisations
# ----------------------------------------------------------------------------------------------


def large_inputs(omega: torch.Tensor, shape: tuple[int, ...], norm: float, seed: int) -> torch.Tensor:
    """Vectors of length ``norm``: half of them close to ±ω's longest row (FAVOR+'s largest features,
    where ``φ(q)·φ(k)`` overflows fp32), the others in random directions."""
    generator = torch.Generator().manual_seed(seed)
    top = omega[omega.norm(dim=-1).argmax()]
    noise = torch.randn(*shape, omega.shape[1], generator=generator)
    signs = torch.randint(0, 2, (*shape, 1), generator=generator) * 2.0 - 1.0
    aligned = torch.rand(*shape, 1, generator=generator) < 0.5
    x = torch.where(aligned, signs * top / top.norm() + 0.05 * noise / math.sqrt(omega.shape[1]), noise)
    return norm * x / x.norm(dim=-1, keepdim=True)


# (head size d, |x|) where the plain fp32 formulas overflow: at d = 64 the product of two features
# (the key shift c is 0 there: only the queries are shifted), at d = 128 with c > 0, and at d = 256
# a single feature (which the sum-normalised delta rule meets; see the last test for what the
# normalised read does there).
LARGE_CASES = [(64, 22.0), (128, 22.0), (256, 30.0)]
LARGE_IDS = [f"d{d}-norm{int(n)}" for d, n in LARGE_CASES]
READ_CASES, READ_IDS = LARGE_CASES[:2], LARGE_IDS[:2]
# fp32 rounds exponents of ~100 to ~1e-5 relative, and exp passes that on.
LARGE_RTOL = 2e-4


def _omega(dim: int, num_features: int = 256) -> torch.Tensor:
    """ω with m = 256 features (Performer's usual m): its longest rows make the largest features."""
    return fm.draw_orthogonal_random_features(num_features, dim, torch.Generator().manual_seed(dim))


@pytest.mark.parametrize("dim, norm", LARGE_CASES, ids=LARGE_IDS)
@pytest.mark.parametrize("per_token", [True, False], ids=["per-token", "constant"])
def test_shifted_favor_features_times_their_scale_are_the_plain_features(dim, norm, per_token):
    omega = _omega(dim)
    x = large_inputs(omega, (2, 3, 7), norm, seed=1)
    shifted, log_scale = fm.favor_feature_map_shifted(x, omega, per_token=per_token)
    assert torch.isfinite(shifted).all() and not log_scale.requires_grad
    if per_token:
        assert log_scale.shape == (2, 3, 7, 1)
        # every token's largest feature is (2m)^{-1/2}
        torch.testing.assert_close(shifted.amax(dim=-1), torch.full((2, 3, 7), (2 * 256) ** -0.5))
    else:
        assert log_scale.dim() == 0
        assert shifted.max() <= math.exp(fm.FAVOR_KEY_LOG_HEADROOM)
    # φ̃ = φ e^{−s}, token by token (relative to each token's largest feature; the exponents are ~100,
    # so fp32 rounds them to ~1e-5)
    expected = favor_by_hand(x, omega) * torch.exp(-log_scale.double())
    representable = expected.amax(dim=-1) > 1e-30  # (the constant shift may take a token below fp32's range)
    error = (shifted.double() - expected).abs().amax(dim=-1) / expected.amax(dim=-1)
    assert representable.any() and error[representable].max() < LARGE_RTOL


def test_favor_key_shift_is_zero_for_small_heads_and_bounds_keys_for_large_ones():
    assert fm.favor_key_log_scale(_omega(64)).item() == 0.0  # the keys are left exactly as they are
    omega = _omega(256)
    half_sq_norms = 0.5 * omega.pow(2).sum(dim=-1)
    assert half_sq_norms.max() > 88  # exp overflows fp32 here: a plain feature can be inf
    assert fm.favor_key_log_scale(omega).item() == pytest.approx(half_sq_norms.max().item() - fm.FAVOR_KEY_LOG_HEADROOM)


@pytest.mark.parametrize("log_scale", [-60.0, -20.0, 0.0, 30.0, 60.0])
def test_epsilon_of_the_normalisations_follows_the_shift(log_scale):
    """A read computed from features divided by ``e^s`` must divide by ``z·φ(q) + ε`` of the plain
    features (ε scaled by ``e^{−s}``), and sum-normalisation must keep its clamp at ε: checked where ε
    matters (normalisers of the order of ε and below) and where it does not."""
    generator = torch.Generator().manual_seed(3)
    normalizer = torch.tensor([1e-9, 3e-7, 1e-6, 4e-6, 1e-3, 2.0], dtype=torch.float64).reshape(1, 1, 6, 1)
    numerator = torch.randn(1, 1, 6, 5, generator=generator, dtype=torch.float64) * normalizer
    expected = numerator / (normalizer + EPS)
    shifted = torch.cat([numerator, normalizer], dim=-1) * math.exp(-log_scale)
    assert torch.isfinite(shifted.float()).all() and (shifted.float()[..., -1] > 0).all()  # in fp32's range
    scale = torch.full((1, 1, 6, 1), log_scale)
    actual = fwk.divide_by_normalizer(shifted.float(), torch.float32, log_scale=scale)
    assert_close(actual.double(), expected, rtol=1e-5, what="divide_by_normalizer")
    read = fwk.sum_rule_read(torch.eye(6).reshape(1, 1, 6, 6), shifted.float()[0, 0].reshape(1, 1, 6, 6),
                             log_scale=scale)
    assert_close(read.double(), expected, rtol=1e-5, what="sum_rule_read")

    phi = torch.rand(2, 6, 8, generator=generator, dtype=torch.float64) * normalizer.reshape(1, 6, 1) / 8
    phi_shifted = (phi * math.exp(-log_scale)).float()
    assert torch.isfinite(phi_shifted).all() and (phi_shifted > 0).all()
    actual = fwk.sum_normalize(phi_shifted, log_scale=torch.full((2, 6, 1), log_scale))
    assert_close(actual.double(), sum_normalize_by_hand(phi), rtol=1e-5, what="sum_normalize")


def test_gradients_through_shifted_features_are_those_of_the_plain_features():
    """The shifts carry no gradient (the reads are invariant to them), so the gradients of the
    normalised read and of φ/Σφ are exactly those of the plain formulas (float64)."""
    omega = fm.draw_orthogonal_random_features(16, 8, torch.Generator().manual_seed(0)).double()
    generator = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 2, 10, 8, generator=generator, dtype=torch.float64).requires_grad_() for _ in range(2))
    v = torch.randn(1, 2, 10, 4, generator=generator, dtype=torch.float64)

    def loss(phi_q, phi_k, read_log_scale, query_log_scale):
        scores = (phi_q @ phi_k.transpose(-1, -2)).tril()
        eps = EPS if read_log_scale is None else EPS * torch.exp(-read_log_scale)
        read = (scores @ v) / (scores.sum(dim=-1, keepdim=True) + eps)
        return read.pow(2).sum() + fwk.sum_normalize(phi_q, log_scale=query_log_scale).pow(3).sum()

    plain = torch.autograd.grad(
        loss(fm.favor_feature_map(q, omega), fm.favor_feature_map(k, omega), None, None), (q, k)
    )
    phi_q, query_shift = fm.favor_feature_map_shifted(q, omega, per_token=True)
    phi_k, key_shift = fm.favor_feature_map_shifted(k, omega, per_token=False)
    shifted = torch.autograd.grad(loss(phi_q, phi_k, query_shift + key_shift, query_shift), (q, k))
    for a, b in zip(shifted, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Kernels with large FAVOR+ inputs: finite and equal to the plain formula in float64
# ----------------------------------------------------------------------------------------------


def _large_qkv(dim: int, norm: float, length: int = 20):
    omega = _omega(dim)
    q = large_inputs(omega, (2, 2, length), norm, seed=5)
    k = large_inputs(omega, (2, 2, length), norm, seed=6)
    v = torch.randn(2, 2, length, 6, generator=torch.Generator().manual_seed(7))
    return omega, q, k, v


@pytest.mark.parametrize("dim, norm", LARGE_CASES, ids=LARGE_IDS)
def test_plain_favor_read_overflows_for_these_inputs(dim, norm):
    """The inputs of the tests below are in the regime of the bug: the plain fp32 formula is not finite."""
    omega, q, k, v = _large_qkv(dim, norm)
    y, _ = sum_rule_reference.normalized_sum_rule(fm.favor_feature_map(q, omega), fm.favor_feature_map(k, omega), v)
    assert not torch.isfinite(y).all()


@pytest.mark.parametrize("dim, norm", READ_CASES, ids=READ_IDS)
@pytest.mark.parametrize("form", ["chunk", "recurrent", "prefill-then-decode"])
def test_favor_normalized_sum_rule_is_finite_and_exact_for_large_inputs(dim, norm, form):
    omega, q, k, v = _large_qkv(dim, norm)
    expected = normalized_read_by_hand(favor_by_hand(q, omega), favor_by_hand(k, omega), v)
    phi_q, query_shift = fm.favor_feature_map_shifted(q, omega, per_token=True)
    phi_k, key_shift = fm.favor_feature_map_shifted(k, omega, per_token=False)
    log_scale = query_shift + key_shift
    if form == "prefill-then-decode":
        # The key shift is the same at every step, so a state written by a prefill continues exactly.
        split = 13
        y_prefill, state = sum_rule_reference.normalized_sum_rule(
            phi_q[:, :, :split], phi_k[:, :, :split], v[:, :, :split], log_scale=log_scale[:, :, :split], chunk_size=4
        )
        steps = []
        for t in range(split, q.shape[2]):
            y_t, state = sum_rule_reference.normalized_sum_rule(
                phi_q[:, :, t : t + 1], phi_k[:, :, t : t + 1], v[:, :, t : t + 1],
                initial_state=state, chunked=False, log_scale=log_scale[:, :, t : t + 1],
            )
            steps.append(y_t)
        y = torch.cat([y_prefill, *steps], dim=2)
    else:
        y, _ = sum_rule_reference.normalized_sum_rule(phi_q, phi_k, v, chunked=form == "chunk", log_scale=log_scale,
                                                      chunk_size=8)
    assert torch.isfinite(y).all()
    assert_close(y.double(), expected, rtol=LARGE_RTOL, what=form)


@pytest.mark.parametrize("dim, norm", READ_CASES, ids=READ_IDS)
def test_favor_bidirectional_read_is_finite_and_exact_for_large_inputs(dim, norm):
    omega, q, k, v = _large_qkv(dim, norm)
    expected = normalized_read_by_hand(favor_by_hand(q, omega), favor_by_hand(k, omega), v, causal=False)
    phi_q, query_shift = fm.favor_feature_map_shifted(q, omega, per_token=True)
    phi_k, key_shift = fm.favor_feature_map_shifted(k, omega, per_token=False)
    y, _ = sum_rule_reference.bidirectional_sum_rule(phi_q, phi_k, v, log_scale=query_shift + key_shift)
    assert torch.isfinite(y).all()
    assert_close(y.double(), expected, rtol=LARGE_RTOL, what="bidirectional read")
    # and as the encoder layer runs it: the causal kernels' signature, the normaliser column, the division
    y_col, _ = fwk.BIDIRECTIONAL_SUM_RULE(phi_q, phi_k, fwk.append_normalizer_column(v))
    y_col = fwk.divide_by_normalizer(y_col, v.dtype, log_scale=query_shift + key_shift)
    assert_close(y_col.double(), expected, rtol=LARGE_RTOL, what="bidirectional read with the normaliser column")


@pytest.mark.parametrize("dim, norm", LARGE_CASES, ids=LARGE_IDS)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunk", "recurrent"])
def test_favor_delta_rule_is_finite_and_exact_for_large_inputs(dim, norm, chunked):
    omega, q, k, v = _large_qkv(dim, norm)
    beta = torch.rand(2, 2, q.shape[2], generator=torch.Generator().manual_seed(8))
    expected = delta_rule_by_hand(
        sum_normalize_by_hand(favor_by_hand(q, omega)), sum_normalize_by_hand(favor_by_hand(k, omega)), v, beta
    )
    features = []
    for x in (q, k):
        phi, shift = fm.favor_feature_map_shifted(x, omega, per_token=True)
        features.append(fwk.sum_normalize(phi, log_scale=shift))
    kernel = fwk.chunk_delta_rule if chunked else fwk.recurrent_delta_rule
    y, _ = kernel(*features, v, beta=beta, chunk_size=8)
    assert torch.isfinite(y).all()
    assert_close(y.double(), expected, rtol=LARGE_RTOL, what="delta rule")


def test_favor_normalized_read_stays_finite_beyond_the_range_it_is_exact_in():
    """At d = 256 the key shift c ≈ 100 takes keys with no large feature below fp32's range (the
    documented limit of `favor_feature_map_shifted`); the read stays finite — a query that only sees
    such keys reads 0, as from an empty memory, not 0/0."""
    omega, q, k, v = _large_qkv(256, 30.0)
    phi_q, query_shift = fm.favor_feature_map_shifted(q, omega, per_token=True)
    phi_k, key_shift = fm.favor_feature_map_shifted(k, omega, per_token=False)
    assert (phi_k.amax(dim=-1) == 0).any()  # the regime this test is about
    y, _ = sum_rule_reference.normalized_sum_rule(phi_q, phi_k, v, log_scale=query_shift + key_shift, chunk_size=8)
    assert torch.isfinite(y).all()
    unseen = (phi_k.amax(dim=-1) > 0).long().cumsum(dim=-1) == 0  # queries that see no representable key
    assert unseen.any() and (y[unseen] == 0).all()


# ----------------------------------------------------------------------------------------------
# Layers against hand computations from their own weights
# ----------------------------------------------------------------------------------------------


def mixer_calls(model, ids: torch.Tensor) -> list[tuple[FWPFastWeightAttention, torch.Tensor, torch.Tensor]]:
    """``(layer, input, output)`` of every fast-weight layer in one forward of `model`."""
    calls = []

    def record(module, args, kwargs, output):
        hidden = (args[0] if args else kwargs["inputs"]).hidden_states
        calls.append((module, hidden.detach(), (output[0] if isinstance(output, tuple) else output).detach()))

    hooks = [
        module.register_forward_hook(record, with_kwargs=True)
        for module in model.modules()
        if isinstance(module, FWPFastWeightAttention)
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls, "no fast-weight layer ran"
    return calls


def projections_by_hand(layer: FWPFastWeightAttention, hidden: torch.Tensor):
    """q, k, v ``[B, H, T, d]`` and the gate logits ``[B, T, ·]`` from the layer's own weights, float64."""
    width = layer.projection_sizes[0]
    projected = hidden.double() @ layer.qkv_proj.weight.double().T
    q, k, v = (split_heads(projected[..., i * width : (i + 1) * width], layer.num_heads) for i in range(3))
    return q, k, v, projected[..., 3 * width :]


def favor_layer_by_hand(layer: FWPFastWeightAttention, hidden: torch.Tensor) -> torch.Tensor:
    """A causal FAVOR+ layer written out: ``o_proj(Σ_τ≤t (φq_t·φk_τ) v_τ / (Σ_τ≤t φq_t·φk_τ + ε))``."""
    q, k, v, _ = projections_by_hand(layer, hidden)
    omega = layer.feature_map.projection
    y = normalized_read_by_hand(favor_by_hand(q, omega), favor_by_hand(k, omega), v)
    return merge_heads(y) @ layer.o_proj.weight.double().T


def test_favor_layers_of_a_model_compute_the_favor_read_by_hand():
    """Model-level FAVOR+: each layer's output is the read written out from its weights and ω (a φ
    without its −|x|²/2 term weights the keys by e^{|k̂|²/2} and fails this)."""
    model = make_lm(FAVOR_SUM_RULE)
    for layer, hidden, output in mixer_calls(model, random_ids(2, 19)):
        assert_close(output.double(), favor_layer_by_hand(layer, hidden), rtol=1e-5, what=f"layer {layer.layer_idx}")


LARGE_HEAD_DIM, LARGE_HEADS = 64, 2
LARGE_MODEL_SIZES = dict(
    hidden_size=LARGE_HEAD_DIM * LARGE_HEADS, num_attention_heads=LARGE_HEADS, performer_num_features=256
)


@torch.no_grad()
def _align_with_longest_row(weight: torch.Tensor, omega: torch.Tensor, scale: float = 22.0) -> None:
    """Make a ``[heads·d, hidden]`` projection map every token to a vector of length ~``scale`` along
    ±(ω's longest row) in every head: FAVOR+'s largest features (d = 64, |x| ≈ 22)."""
    direction = omega[omega.norm(dim=-1).argmax()] / omega.norm(dim=-1).max()
    head_dim, hidden = omega.shape[1], weight.shape[1]
    generator = torch.Generator().manual_seed(weight.shape[0])
    for head in range(weight.shape[0] // head_dim):
        readout = torch.randn(hidden, generator=generator) / math.sqrt(hidden)  # u·x ~ N(0, 1) for RMS-normed x
        noise = 0.02 * torch.randn(head_dim, hidden, generator=generator)
        weight[head * head_dim : (head + 1) * head_dim] = scale * direction[:, None] * readout[None, :] + noise


def _performer_with_large_activations():
    """A one-layer FAVOR+ model (d = 64, m = 256) whose q and k are long and aligned with ±ω's longest row."""
    config = lm_config_from(dict(attention_type=FAVOR_SUM_RULE), num_hidden_layers=1, **LARGE_MODEL_SIZES)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    layer = next(module for module in model.modules() if isinstance(module, FWPFastWeightAttention))
    width = config.hidden_size
    _align_with_longest_row(layer.qkv_proj.weight[: 2 * width], layer.feature_map.projection)  # q, then k
    return model, layer


def test_performer_with_large_activations_is_finite_and_computes_the_favor_read():
    model, layer = _performer_with_large_activations()
    ids = random_ids(2, 24)
    (_, hidden, output), = mixer_calls(model, ids)
    q, k, _, _ = projections_by_hand(layer, hidden)
    assert q.norm(dim=-1).max() > 22 and k.norm(dim=-1).max() > 22
    # the plain fp32 φ(q)·φ(k) overflows for these activations
    omega = layer.feature_map.projection
    plain_scores = fm.favor_feature_map(q.float(), omega) @ fm.favor_feature_map(k.float(), omega).transpose(-1, -2)
    assert not torch.isfinite(plain_scores).all()

    assert torch.isfinite(output).all()
    assert_close(output.double(), favor_layer_by_hand(layer, hidden), rtol=LARGE_RTOL, what="layer output")
    with torch.no_grad():
        full = model(ids).logits
        # prefill, then one-token steps: the recurrent form continues the shifted state exactly
        prefill = model(ids[:, :20], use_cache=True)
        cache, steps = prefill.past_key_values, []
        for t in range(20, ids.shape[1]):
            step = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            steps.append(step.logits)
    assert torch.isfinite(full).all()
    assert_close(torch.cat([prefill.logits, *steps], dim=1), full, rtol=1e-4, what="prefill + decoding")


def _delta_layer_by_hand(layer: FWPFastWeightAttention, hidden: torch.Tensor) -> torch.Tensor:
    """A delta-rule layer from its weights: the plain φ of the config's map, then φ/Σφ written out,
    gates from their definitions, then the chunkwise kernel."""
    q, k, v, gate_logits = projections_by_hand(layer, hidden)
    feature_map = FEATURE_MAPS[layer.feature_map.kind]
    phi_q, phi_k = (
        feature_map.apply(x.float(), layer.feature_map.options, layer.feature_map.weights)
        for x in (q, k)
    )
    phi_q, phi_k = (phi / phi.sum(dim=-1, keepdim=True).clamp_min(EPS) for phi in (phi_q, phi_k))
    gates = {}
    for name, logits in zip(layer.gates, gate_logits.float().split(layer.num_heads, dim=-1)):
        if name == "beta":
            gates["beta"] = torch.sigmoid(logits).transpose(1, 2)
        else:
            gates["log_decay"] = (-layer.A_log.exp() * F.softplus(logits + layer.dt_bias)).transpose(1, 2)
    y, _ = fwk.chunk_delta_rule(phi_q.float(), phi_k.float(), v.float(), chunk_size=layer.chunk_size, **gates)
    return merge_heads(y).double() @ layer.o_proj.weight.double().T


@pytest.mark.parametrize("variant", SUM_NORMALIZED_VARIANTS)
def test_delta_layers_compute_the_kernel_on_explicitly_sum_normalized_features(variant):
    model = make_lm(variant)
    for layer, hidden, output in mixer_calls(model, random_ids(2, 19)):
        assert_close(output.double(), _delta_layer_by_hand(layer, hidden), rtol=1e-5, what=f"layer {layer.layer_idx}")


def test_favor_cross_attention_with_large_activations_is_finite_and_computes_the_favor_read():
    """The decoder's FAVOR+ cross-attention reads the source's fast weights without overflow: equal
    to ``Σ_j (φq·φk_j) v_j / (Σ_j φq·φk_j + ε)`` over the source, written out from its weights."""
    config = AutoConfig.for_model(
        "fwp", **{**SEQ2SEQ_BASE, **LARGE_MODEL_SIZES, "num_decoder_layers": 1, "num_hidden_layers": 1,
                  "cross_attention_type": FAVOR_SUM_RULE}
    )
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    cross = next(module for module in model.modules() if isinstance(module, FWPCrossAttention))
    omega = cross.feature_map.projection
    _align_with_longest_row(cross.q_proj.weight, omega)
    _align_with_longest_row(cross.k_proj.weight, omega)
    calls = []
    hook = cross.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((args, output[0] if isinstance(output, tuple) else output)),
        with_kwargs=True,
    )
    with torch.no_grad():
        out = model(input_ids=random_ids(2, 15, low=3), decoder_input_ids=random_ids(2, 9, seed=2, low=3))
    hook.remove()
    (args, output), = calls
    target, source = args[0].hidden_states.double(), args[0].encoder_hidden_states.double()
    q = split_heads(target @ cross.q_proj.weight.double().T, cross.num_heads)
    k = split_heads(source @ cross.k_proj.weight.double().T, cross.num_heads)
    v = split_heads(source @ cross.v_proj.weight.double().T, cross.num_heads)
    plain = fm.favor_feature_map(q.float(), omega) @ fm.favor_feature_map(k.float(), omega).transpose(-1, -2)
    assert not torch.isfinite(plain).all()  # the regime of the bug
    y = normalized_read_by_hand(favor_by_hand(q, omega), favor_by_hand(k, omega), v, causal=False)
    expected = merge_heads(y) @ cross.o_proj.weight.double().T
    assert torch.isfinite(out.logits).all()
    assert_close(output.double(), expected, rtol=LARGE_RTOL, what="cross-attention output")


# ----------------------------------------------------------------------------------------------
# DPFP in bf16: the documented bound of the normalised read where its normaliser is tiny
# ----------------------------------------------------------------------------------------------


def _normalized_read(layer: FWPFastWeightAttention, hidden: torch.Tensor):
    """The layer's normalised read before o_proj: ``(y, D = z·φ(q), v)`` in fp32, in the layer's dtype."""
    width = layer.projection_sizes[0]
    projected = layer.qkv_proj(hidden)
    q, k, log_scale = layer._feature_map_and_normalize(split_heads(projected[..., : 2 * width], 2 * layer.num_heads))
    v = split_heads(projected[..., 2 * width : 3 * width], layer.num_heads)
    y, _ = fwk.chunk_sum_rule(q, k, fwk.append_normalizer_column(v), chunk_size=layer.chunk_size)
    return fwk.divide_by_normalizer(y, torch.float32, log_scale=log_scale), y[..., -1].float(), v.float()


@pytest.mark.parametrize("sum_rule", SPARSE_FEATURE_SUM_RULES)
def test_bf16_normalized_read_adds_only_rounding_even_where_the_normalizer_is_tiny(sum_rule):
    """Documented bound (`divide_by_normalizer`): computed in bf16, the normalised read of a layer
    differs from the fp32 read of the same (bf16) weights and inputs by bf16 rounding only, ≤ 1% of
    the largest value read, at every token — also where ``D = z·φ(q)`` is of the order of ε or below.
    What remains between a bf16 and an fp32 model (up to ~0.06 in the logits of a tiny DPFP model,
    ~0.003 for elu) is the read's sensitivity there: ``y = ȳ·D/(D+ε)``, and D is then a sum of products
    of near-zero components, which any rounding of the weights or inputs changes by O(1)."""
    model = make_lm(sum_rule, initializer_range=0.02, dpfp_nu=1)
    low = copy.deepcopy(model).to(torch.bfloat16)
    rounded = copy.deepcopy(low).float()  # the bf16 weights, computed in fp32
    ids = random_ids(4, 64, seed=0)
    (layer_bf16, hidden, _), *_ = mixer_calls(low, ids)
    layer_fp32 = next(module for module in rounded.modules() if isinstance(module, FWPFastWeightAttention))
    with torch.no_grad():
        y_bf16, _, _ = _normalized_read(layer_bf16, hidden)
        y_fp32, normalizer, v = _normalized_read(layer_fp32, hidden.float())
    largest_value = v.abs().amax(dim=(-1, -2))[..., None]
    error = (y_bf16 - y_fp32).abs().amax(dim=-1) / largest_value
    assert (normalizer < 10 * EPS).any()  # the tokens the bound is about
    assert error.max() <= 0.01
    assert (y_fp32.abs().amax(dim=-1) <= largest_value * (1 + 1e-5)).all()  # |y| ≤ max |v|: a damped average


@pytest.mark.parametrize("sum_rule", DETERMINISTIC_NORMALIZED_SUM_RULES)
def test_bf16_logits_of_tiny_sum_rule_models_stay_within_the_documented_bound(sum_rule):
    model = make_lm(sum_rule, initializer_range=0.02, dpfp_nu=1)
    ids = random_ids(4, 64, seed=0)
    with torch.no_grad():
        reference = model(ids).logits
        bf16 = copy.deepcopy(model).to(torch.bfloat16)(ids).logits.float()
    # measured: DPFP 0.063, elu 0.003 (seeds 0-4: DPFP up to 0.063, elu up to 0.003)
    bound = 0.1 if sum_rule in SPARSE_FEATURE_SUM_RULES else 0.01
    assert (bf16 - reference).abs().max() <= bound


def test_favor_layer_with_a_large_head_equals_the_plain_formula():
    """A FAVOR+ sum-rule layer whose head size (128) makes the key shift c > 0: its output is the plain
    (unshifted) normalised read in float64, so the shifts cancel with the right signs inside the layer."""
    config = lm_config_from(dict(attention_type=FAVOR_SUM_RULE), hidden_size=256, num_attention_heads=2,
                            performer_num_features=256, chunk_size=8)
    torch.manual_seed(0)
    layer = FWPFastWeightAttention(config, 0, FAVOR_SUM_RULE).eval()
    omega = layer.feature_map.projection
    assert fm.favor_key_log_scale(omega).item() > 5.0  # the regime where the shift's sign matters
    hidden = torch.randn(2, 19, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, _ = layer(MixerInputs(hidden))
        q, k, v = layer.qkv_proj(hidden)[..., : layer.qkv_width].split(layer.projection_sizes[:3], dim=-1)
        read = normalized_read_by_hand(favor_by_hand(split_heads(q, 2), omega), favor_by_hand(split_heads(k, 2), omega),
                                       split_heads(v, 2))
        expected = layer.o_proj(merge_heads(read).float())
    assert_close(y, expected, rtol=1e-4, what="FAVOR+ layer, head size 128")
