"""Tests for ``fwp_hf.fast_weight_kernels``.

Covered: chunkwise form == recurrent form (outputs, final states, gradients) for every update rule
(sum rule, decayed sum rule, delta rule, gated delta rule, Ba et al.) and every feature map of the
registry `FEATURE_MAPS`; both forms against hand-written naive math and against transformers'
independent gated-delta-rule implementation (Qwen3-Next), with and without gating; exact
continuation across segments and from prefill to decoding; no-op (padding) tokens; the feature-map
registry and the gates; input validation; dtypes.

Shapes are tiny (the suite runs on 2 CPU cores). All comparisons are in fp32 with errors measured
relative to the largest magnitude of the reference (``assert_close_scaled``).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import sum_rule_reference
import torch
import torch.nn.functional as F
from conftest import assert_close

from fwp_hf import TOKEN_MIXERS
from fwp_hf import fast_weight_kernels as fwk
from fwp_hf import feature_maps_fwp as fm

B, H, D, DV = 2, 2, 8, 6
CHUNK = 16
RTOL = 1e-5  # forms agree to ~1e-5 of the output scale in fp32 (observed: < 1e-6)
FAVOR_FEATURES = 12  # 1.5 blocks of D orthogonal directions
# φ of the kernel cases: every registered feature map, and DPFP with larger ν.
PHI = [*fm.FEATURE_MAPS, "dpfp-nu2", "dpfp-nu3"]
TIME_KEYS = {"q", "k", "v", "beta", "log_decay", "drive", "mask"}  # tensors with a time axis (dim 2)

pytestmark = pytest.mark.usefixtures("single_thread")
assert_close_scaled = partial(assert_close, rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def feature_map_options(spec, dpfp_nu: int = 1):
    """A map's options for these tests: ν for DPFP, `FAVOR_FEATURES` for FAVOR+, else its defaults."""
    if spec.options is fm.DPFPOptions:
        return fm.DPFPOptions(nu=dpfp_nu)
    if spec.options is fm.FavorOptions:
        return fm.FavorOptions(num_features=FAVOR_FEATURES)
    return spec.options()


def feature_map_weights(spec, options, gen: torch.Generator, heads: int = H) -> dict[str, torch.Tensor]:
    """What a map's weights are: ω of a random-feature map (drawn from `gen`), a trained-looking version of
    a learned one's (its initial weights plus noise), else none."""
    if spec.weights is None:
        return {}
    weights = spec.weights(options, D, heads, gen)
    if spec.learned:
        weights = {name: value + 0.3 * randn(gen, *value.shape) for name, value in weights.items()}
    return weights


def make_feature_map(name: str, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """φ of a `PHI` entry through the registry: ``"<FEATURE_MAPS name>[-nu<ν>]"``."""
    base, _, nu = name.partition("-nu")
    spec = fm.FEATURE_MAPS[base]
    options = feature_map_options(spec, int(nu or 1))
    return partial(spec.apply, options=options, weights=feature_map_weights(spec, options, gen))


def log_decays(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """g ≤ 0 with α = exp(g) mostly in (0.5, 1) and a tail of strong decays."""
    return F.logsigmoid(randn(gen, *shape) + 2.0)


def time_slice(tensors: dict, start: int, stop: int, initial_state: torch.Tensor | None) -> dict:
    out = {name: (t[:, :, start:stop] if name in TIME_KEYS and t is not None else t) for name, t in tensors.items()}
    out["initial_state"] = initial_state
    return out


# ----------------------------------------------------------------------------------------------
# Test cases: one per kernel variant, each with a chunk and a recurrent callable on the same tensors
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    chunk: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # called as chunk(**tensors, chunk_size=...)
    recurrent: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # called as recurrent(**tensors)
    tensors: dict[str, torch.Tensor | None] = field(default_factory=dict)


def _sum_case(gen, T, feature_map, log_decay=False, exclusive=False, normalized=False):
    phi = make_feature_map(feature_map, gen)
    tensors = {"q": randn(gen, B, H, T, D), "k": randn(gen, B, H, T, D), "v": randn(gen, B, H, T, DV)}
    if log_decay:
        tensors["log_decay"] = log_decays(gen, B, H, T)

    def call(chunked, q, k, v, initial_state, log_decay=None, chunk_size=CHUNK):
        if normalized:
            return sum_rule_reference.normalized_sum_rule(
                phi(q), phi(k), v, initial_state=initial_state, chunked=chunked, chunk_size=chunk_size
            )
        kernel = partial(fwk.chunk_sum_rule, chunk_size=chunk_size) if chunked else fwk.recurrent_sum_rule
        return kernel(phi(q), phi(k), v, initial_state=initial_state, log_decay=log_decay, exclusive=exclusive)

    feature_dim = phi(torch.zeros(1, H, 1, D)).shape[-1]
    state_shape = (B, H, feature_dim, DV + 1 if normalized else DV)
    return Case(partial(call, True), partial(call, False), tensors), state_shape


def _delta_case(gen, T, feature_map, gated=False):
    phi = make_feature_map(feature_map, gen)
    tensors = {
        "q": randn(gen, B, H, T, D),
        "k": randn(gen, B, H, T, D),
        "v": randn(gen, B, H, T, DV),
        "beta": torch.rand(B, H, T, generator=gen) * 0.9 + 0.05,
    }
    if gated:
        tensors["log_decay"] = log_decays(gen, B, H, T)

    # Normalised features, as the model uses them (keeps the delta rule contractive): φ/Σφ for a φ ≥ 0,
    # φ/|φ|₂ for the maps that can be negative (FLA's q/k activations).
    nonnegative = fm.FEATURE_MAPS[feature_map.split("-")[0]].nonnegative
    normalize = fwk.sum_normalize if nonnegative else fwk.l2_normalize

    def call(kernel, q, k, v, initial_state, **kw):
        return kernel(normalize(phi(q)), normalize(phi(k)), v, initial_state=initial_state, **kw)

    feature_dim = phi(torch.zeros(1, H, 1, D)).shape[-1]
    chunk = partial(call, fwk.chunk_delta_rule)
    return Case(chunk, partial(call, fwk.recurrent_delta_rule), tensors), (B, H, feature_dim, DV)


FW_HYPER = {"decay": 0.9, "learning_rate": 0.5}


def _fast_weights_case(gen, T, num_steps, masked=False):
    tensors = {
        "drive": randn(gen, B, H, T, D),
        "ln_weight": 1.0 + randn(gen, D, scale=0.1),
        "ln_bias": randn(gen, D, scale=0.1),
        "mask": (torch.rand(B, H, T, generator=gen) > 0.3) if masked else None,
    }

    def call(kernel, drive, ln_weight, ln_bias, mask, initial_state, **kw):
        return kernel(
            drive, ln_weight=ln_weight, ln_bias=ln_bias, num_steps=num_steps, initial_state=initial_state, mask=mask,
            **kw, **FW_HYPER,
        )

    chunk = partial(call, fwk.chunk_fast_weights)
    return Case(chunk, partial(call, fwk.recurrent_fast_weights), tensors), (B, H, D, D)


def make_case(variant: str, T: int, with_init: bool, seed: int = 0) -> Case:
    """``variant`` is ``rule/option``: sum/<φ>, normalized/<φ>, decay/{inclusive,exclusive},
    delta/<φ>, gated/<φ> (gated delta rule), fw/<num_steps>[-masked]; φ is a `PHI` entry."""
    gen = generator(seed)
    rule, option = variant.split("/")
    if rule == "sum":
        case, state_shape = _sum_case(gen, T, option)
    elif rule == "normalized":
        case, state_shape = _sum_case(gen, T, option, normalized=True)
    elif rule == "decay":
        case, state_shape = _sum_case(gen, T, "elu", log_decay=True, exclusive=option == "exclusive")
    elif rule in ("delta", "gated"):
        case, state_shape = _delta_case(gen, T, option, gated=rule == "gated")
    elif rule == "fw":
        steps, _, masked = option.partition("-")
        case, state_shape = _fast_weights_case(gen, T, int(steps), masked=bool(masked))
    else:
        raise AssertionError(variant)
    init = randn(gen, *state_shape, scale=0.5) if with_init else None
    if init is not None and rule == "normalized":
        init = init.abs()  # the normaliser column must stay positive
    case.tensors["initial_state"] = init
    return case


VARIANTS = [
    *(f"sum/{m}" for m in PHI),
    "normalized/elu",
    "normalized/favor",
    "decay/inclusive",
    "decay/exclusive",
    *(f"delta/{m}" for m in PHI),
    *(f"gated/{m}" for m in PHI),
    "fw/0",
    "fw/1",
    "fw/2",
    "fw/2-masked",
]
WITH_INIT = pytest.mark.parametrize("with_init", [False, True], ids=["zero-state", "initial-state"])


# ----------------------------------------------------------------------------------------------
# 1. chunk form == recurrent form
# ----------------------------------------------------------------------------------------------


@WITH_INIT
@pytest.mark.parametrize("T", [1, 11, 32, 70])  # T == 1, T < chunk, T a multiple of chunk, T not
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_matches_recurrent(variant, T, with_init):
    case = make_case(variant, T, with_init)
    y_chunk, state_chunk = case.chunk(**case.tensors, chunk_size=CHUNK)
    y_rec, state_rec = case.recurrent(**case.tensors)
    assert state_chunk.dtype == state_rec.dtype == torch.float32
    assert_close_scaled(y_chunk, y_rec, what="output")
    assert_close_scaled(state_chunk, state_rec, what="final state")


@pytest.mark.parametrize("variant", ["sum/elu", "decay/exclusive", "delta/dpfp-nu2", "gated/dpfp-nu2", "fw/2-masked"])
def test_chunk_size_does_not_matter(variant):
    case = make_case(variant, 29, with_init=True)
    y_ref, state_ref = case.chunk(**case.tensors, chunk_size=64)
    for chunk_size in (1, 5, 29):
        y, state = case.chunk(**case.tensors, chunk_size=chunk_size)
        assert_close_scaled(y, y_ref, what=f"output, chunk_size={chunk_size}")
        assert_close_scaled(state, state_ref, what=f"state, chunk_size={chunk_size}")


@pytest.mark.parametrize("variant", ["sum/elu", "decay/inclusive", "normalized/elu", "delta/elu", "gated/elu", "fw/1"])
def test_empty_sequence_returns_initial_state(variant):
    case = make_case(variant, 0, with_init=True)
    for form, kwargs in ((case.chunk, {"chunk_size": CHUNK}), (case.recurrent, {})):
        y, state = form(**case.tensors, **kwargs)
        assert y.shape[2] == 0
        torch.testing.assert_close(state, case.tensors["initial_state"])


# ----------------------------------------------------------------------------------------------
# Recurrent forms against naive math written here (independent of the module)
# ----------------------------------------------------------------------------------------------


def naive_per_head(initial_state: torch.Tensor, T: int, out_dim: int, step: Callable):
    """A float64 reference by explicit loops over batch, head and token: ``state, y_t = step(state,
    b, h, t)`` from ``initial_state[b, h]``. Returns ``(y [B, H, T, out_dim], final states)``."""
    outputs = torch.empty(*initial_state.shape[:2], T, out_dim, dtype=torch.float64)
    final_states = torch.empty(initial_state.shape, dtype=torch.float64)
    for bi in range(initial_state.shape[0]):
        for hi in range(initial_state.shape[1]):
            state = initial_state[bi, hi].double()
            for t in range(T):
                state, outputs[bi, hi, t] = step(state, bi, hi, t)
            final_states[bi, hi] = state
    return outputs, final_states


@pytest.mark.parametrize("exclusive", [False, True])
def test_decayed_sum_rule_matches_quadratic_attention(exclusive):
    gen, T = generator(1), 23
    q, k = (F.elu(randn(gen, B, H, T, D)) + 1 for _ in range(2))
    v, g, s0 = randn(gen, B, H, T, DV), F.logsigmoid(randn(gen, B, H, T) + 1), randn(gen, B, H, D, DV)
    cum = g.double().cumsum(-1)  # G_t = Σ_{s≤t} g_s
    read = cum - g.double() if exclusive else cum  # log-decay from the start to the state being read
    pair = (read[..., :, None] - cum[..., None, :]).exp()
    visible = torch.ones(T, T, dtype=torch.bool).tril(-1 if exclusive else 0)
    scores = (q.double() @ k.double().transpose(-1, -2)) * pair * visible
    expected = scores @ v.double() + read.exp()[..., None] * (q.double() @ s0.double())
    expected_state = cum[..., -1, None, None].exp() * s0.double() + torch.einsum(
        "bht,bhtk,bhtv->bhkv", (cum[..., -1:] - cum).exp(), k.double(), v.double()
    )
    for kernel in (fwk.recurrent_sum_rule, partial(fwk.chunk_sum_rule, chunk_size=CHUNK)):
        y, state = kernel(q, k, v, initial_state=s0, log_decay=g, exclusive=exclusive)
        assert_close_scaled(y, expected.float(), what="output")
        assert_close_scaled(state, expected_state.float(), what="state")


def test_normalized_sum_rule_matches_linear_attention_formula():
    gen, T = generator(2), 19
    q, k = (F.elu(randn(gen, B, H, T, D)) + 1 for _ in range(2))
    v = randn(gen, B, H, T, DV)
    scores = (q.double() @ k.double().transpose(-1, -2)).tril()
    expected = (scores @ v.double()) / (scores.sum(-1, keepdim=True) + 1e-6)
    for chunked in (False, True):
        y, state = sum_rule_reference.normalized_sum_rule(q, k, v, chunked=chunked, chunk_size=CHUNK)
        assert_close_scaled(y, expected.float(), what=f"chunked={chunked}")
        assert_close_scaled(state[..., -1], k.sum(2), what="normaliser column")


def test_order_free_sum_rule_reads_the_whole_sequence_in_two_steps_a_cache_can_split():
    """`BIDIRECTIONAL_SUM_RULE`: every query reads ``Σ_j φ(q)·φ(k_j) [v_j, 1]`` over all keys (q may be
    shorter than k); ``write`` then ``read`` give what one call gives; no initial state."""
    gen = generator(4)
    q, k = (F.elu(randn(gen, B, H, T, D)) + 1 for T in (5, 11))
    values = fwk.append_normalizer_column(randn(gen, B, H, 11, DV))
    expected = (q.double() @ k.double().transpose(-1, -2)) @ values.double()
    y, state = fwk.BIDIRECTIONAL_SUM_RULE(q, k, values)
    assert_close_scaled(y, expected.float(), what="order-free read")
    assert torch.equal(fwk.BIDIRECTIONAL_SUM_RULE.read(q, fwk.BIDIRECTIONAL_SUM_RULE.write(k, values)), y)
    with pytest.raises(ValueError, match="reads one whole sequence; it takes no initial_state"):
        fwk.BIDIRECTIONAL_SUM_RULE(q, k, values, initial_state=state)


@pytest.mark.parametrize("num_steps", [0, 1, 3])
def test_fast_weights_match_ba_et_al_loop(num_steps):
    gen, T, decay, lr = generator(3), 13, 0.8, 0.3
    drive, s0 = randn(gen, B, H, T, D), randn(gen, B, H, D, D, scale=0.3)
    w, b = 1 + randn(gen, D, scale=0.1), randn(gen, D, scale=0.1)

    def step(memory, bi, hi, t):
        z = drive[bi, hi, t].double()
        h = torch.relu(z)
        for _ in range(num_steps):
            pre = z + memory.t() @ h  # read y = Sᵀ h (module convention: state is [d_key, d_value])
            normed = (pre - pre.mean()) / torch.sqrt(pre.var(unbiased=False) + 1e-5)
            h = torch.relu(normed * w.double() + b.double())
        return decay * memory + lr * torch.outer(torch.relu(z), torch.relu(z)), h

    expected, expected_state = naive_per_head(s0, T, D, step)
    for kernel in (fwk.recurrent_fast_weights, partial(fwk.chunk_fast_weights, chunk_size=5)):
        y, state = kernel(
            drive, ln_weight=w, ln_bias=b, decay=decay, learning_rate=lr, num_steps=num_steps, initial_state=s0
        )
        assert_close_scaled(y, expected.float(), what="output")
        assert_close_scaled(state, expected_state.float(), what="state")


# ----------------------------------------------------------------------------------------------
# 2. Gradients
# ----------------------------------------------------------------------------------------------


def _grads(fn: Callable, leaves: dict[str, torch.Tensor], weights: tuple[torch.Tensor, torch.Tensor]):
    y, state = fn()
    loss = (y * weights[0]).sum() + (state * weights[1]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(leaves, grads))


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_and_recurrent_gradients_match(variant):
    case = make_case(variant, 37, with_init=True)
    leaves = {n: t.requires_grad_() for n, t in case.tensors.items() if t is not None and t.is_floating_point()}
    y, state = case.recurrent(**case.tensors)
    gen = generator(7)
    weights = (randn(gen, *y.shape), randn(gen, *state.shape))
    grads_rec = _grads(lambda: case.recurrent(**case.tensors), leaves, weights)
    grads_chunk = _grads(lambda: case.chunk(**case.tensors, chunk_size=CHUNK), leaves, weights)
    rule = variant.split("/")[0]
    inputs = {
        "fw": {"drive", "ln_weight", "ln_bias"},
        "delta": {"q", "k", "v", "beta"},
        "gated": {"q", "k", "v", "beta", "log_decay"},
        "decay": {"q", "k", "v", "log_decay"},
    }.get(rule, {"q", "k", "v"})
    expected_names = inputs | {"initial_state"}
    assert expected_names <= set(leaves)
    unused = {"ln_weight", "ln_bias"} if variant == "fw/0" else set()  # no inner step reads the LN
    for name in leaves:
        assert (grads_rec[name].abs().max() > 0) != (name in unused), f"{name}: unexpected (non)zero gradient"
        assert_close_scaled(grads_chunk[name], grads_rec[name], rtol=2e-5, what=f"d/d{name}")


# ----------------------------------------------------------------------------------------------
# 3. Continuation across segments and from prefill to decoding
# ----------------------------------------------------------------------------------------------

CONTINUATION_VARIANTS = [
    "sum/elu",
    "sum/favor",
    "decay/inclusive",
    "decay/exclusive",
    "normalized/elu",
    "delta/elu",
    "delta/dpfp-nu2",
    "gated/elu",
    "gated/favor",
    "gated/dpfp-nu2",
    "fw/1",
    "fw/2-masked",
]


def _whole_sequence_and_first_segment(variant: str, with_init: bool, T: int, split: int):
    """The case, the chunk form over all T tokens, and over the first `split` tokens only."""
    case = make_case(variant, T, with_init)
    whole = case.chunk(**case.tensors, chunk_size=CHUNK)
    first = case.chunk(**time_slice(case.tensors, 0, split, case.tensors["initial_state"]), chunk_size=CHUNK)
    return case, whole, first


@WITH_INIT
@pytest.mark.parametrize("variant", CONTINUATION_VARIANTS)
def test_two_segments_continue_exactly(variant, with_init):
    T, split = 53, 21
    case, (y_full, state_full), (y1, state1) = _whole_sequence_and_first_segment(variant, with_init, T, split)
    y2, state2 = case.chunk(**time_slice(case.tensors, split, T, state1), chunk_size=CHUNK)
    assert_close_scaled(torch.cat([y1, y2], dim=2), y_full, what="output")
    assert_close_scaled(state2, state_full, what="final state")


@WITH_INIT
@pytest.mark.parametrize("variant", CONTINUATION_VARIANTS)
def test_chunk_prefill_then_recurrent_decode(variant, with_init):
    T, prefill = 45, 37
    case, (y_full, state_full), (y, state) = _whole_sequence_and_first_segment(variant, with_init, T, prefill)
    outputs = [y]
    for t in range(prefill, T):
        y_t, state = case.recurrent(**time_slice(case.tensors, t, t + 1, state))
        outputs.append(y_t)
    assert_close_scaled(torch.cat(outputs, dim=2), y_full, what="output")
    assert_close_scaled(state, state_full, what="final state")


@pytest.mark.parametrize("chunk_size", [33, 64])
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated-delta"])
def test_delta_rule_gradients_with_large_chunks_and_documents(gated, chunk_size):
    """Chunks larger than the triangular inverse's base block (16) take its halving path (33: uneven halves),
    forward and backward; packed documents mask the decayed pair products. Gradients equal the recurrent form's."""
    gen, T = generator(21), 90
    tensors = {"q": F.normalize(randn(gen, B, H, T, D), dim=-1), "k": F.normalize(randn(gen, B, H, T, D), dim=-1),
               "v": randn(gen, B, H, T, DV), "beta": torch.rand(B, H, T, generator=gen),
               "initial_state": randn(gen, B, H, D, DV, scale=0.5)}
    if gated:
        tensors["log_decay"] = log_decays(gen, B, H, T)
    leaves = {name: t.requires_grad_() for name, t in tensors.items()}
    seq_idx = torch.tensor([[0] * 25 + [1] * 40 + [2] * 25, [5] * T])  # documents start inside chunks
    weights = (randn(gen, B, H, T, DV), randn(gen, B, H, D, DV))
    grads_rec = _grads(lambda: fwk.recurrent_delta_rule(**tensors, seq_idx=seq_idx), leaves, weights)
    grads_chunk = _grads(lambda: fwk.chunk_delta_rule(**tensors, seq_idx=seq_idx, chunk_size=chunk_size), leaves,
                         weights)
    for name in leaves:
        assert grads_rec[name].abs().max() > 0, name
        assert_close_scaled(grads_chunk[name], grads_rec[name], rtol=2e-5, what=f"d/d{name}")


@pytest.mark.parametrize("size", [1, 5, 16, 17, 33, 64, 100])
def test_unit_lower_triangular_inverse_reads_the_strict_lower_triangle_only(size):
    """(I + L)⁻¹ of the strictly lower part, whatever the diagonal and upper triangle hold, argument untouched."""
    matrices = 0.3 * torch.randn(3, size, size, generator=generator(size), dtype=torch.float64)
    before = matrices.clone()
    inverse = fwk._unit_lower_triangular_inverse(matrices)
    expected = torch.linalg.inv(torch.eye(size, dtype=torch.float64) + matrices.tril(-1))
    torch.testing.assert_close(inverse, expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(matrices, before)


def test_pair_decay_backward_is_the_derivative_of_its_forward():
    """`_PairDecayed`'s hand-written backward against finite differences (float64), documents in the mask."""
    gen = generator(22)
    log_decay_cumsum = (-torch.rand(1, 2, 3, 6, generator=gen, dtype=torch.float64)).cumsum(-1).requires_grad_()
    first, second = (torch.randn(1, 2, 3, 6, 6, generator=gen, dtype=torch.float64).requires_grad_() for _ in "ab")
    documents = torch.tensor([0, 0, 1, 1, 1, 2])
    causal = torch.ones(6, 6, dtype=torch.bool).tril() & (documents[:, None] == documents[None, :])
    assert torch.autograd.gradcheck(lambda b, x, y: fwk._PairDecayed.apply(b, x, y, causal),
                                    (log_decay_cumsum, first, second))
    decayed, _ = fwk._PairDecayed.apply(log_decay_cumsum, first, second, causal)
    expected = first * (log_decay_cumsum[..., :, None] - log_decay_cumsum[..., None, :]).exp() * causal
    torch.testing.assert_close(decayed, expected)


# ----------------------------------------------------------------------------------------------
# 4. Delta rules against transformers' independent (Qwen3-Next) gated delta rule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True], ids=["delta-g=0", "gated-delta"])
@pytest.mark.parametrize("oracle_name", ["torch_recurrent_gated_delta_rule", "torch_chunk_gated_delta_rule"])
@pytest.mark.parametrize("form", ["chunk", "recurrent"])
def test_delta_rules_match_transformers(form, oracle_name, gated):
    qwen = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    oracle = getattr(qwen, oracle_name)
    gen, T = generator(4), 70  # several of our chunks (16) and of the oracle's (64), T a multiple of neither
    q, k = randn(gen, B, H, T, D), F.normalize(randn(gen, B, H, T, D), dim=-1)
    v, beta = randn(gen, B, H, T, DV), torch.rand(B, H, T, generator=gen)
    g = log_decays(gen, B, H, T) if gated else torch.zeros(B, H, T)
    s0 = randn(gen, B, H, D, DV, scale=0.5)
    assert bool((g < 0).all()) == gated

    def bthd(x):  # [B, H, T, ...] <-> [B, T, H, ...]
        return x.transpose(1, 2).contiguous()

    extra = {"chunk_size": 64} if "chunk" in oracle_name else {}  # a different chunking from ours
    y_ref, state_ref = oracle(
        bthd(q * math.sqrt(D)),  # the oracle scales queries by 1/√D
        bthd(k),
        bthd(v),
        g=bthd(g),
        beta=bthd(beta),
        initial_state=s0.clone(),
        output_final_state=True,
        use_qk_l2norm_in_kernel=False,
        **extra,
    )
    kernel = partial(fwk.chunk_delta_rule, chunk_size=CHUNK) if form == "chunk" else fwk.recurrent_delta_rule
    y, state = kernel(q, k, v, beta=beta, log_decay=g if gated else None, initial_state=s0)
    assert_close_scaled(y, bthd(y_ref), what="output")
    assert_close_scaled(state, state_ref, what="final state")


def test_gated_delta_rule_matches_its_definition():
    """S_t = α_t S_{t−1} + β_t k_t (v_t − α_t S_{t−1}ᵀ k_t)ᵀ, y_t = S_tᵀ q_t, in float64 by explicit loops."""
    gen, T = generator(13), 21
    q, k = (fwk.sum_normalize(F.elu(randn(gen, B, H, T, D)) + 1) for _ in range(2))
    v, beta, g = randn(gen, B, H, T, DV), torch.rand(B, H, T, generator=gen), log_decays(gen, B, H, T)
    s0 = randn(gen, B, H, D, DV)

    def step(state, bi, hi, t):
        alpha, k_t = math.exp(g[bi, hi, t].item()), k[bi, hi, t].double()
        error = v[bi, hi, t].double() - alpha * state.t() @ k_t
        state = alpha * state + beta[bi, hi, t].item() * torch.outer(k_t, error)
        return state, state.t() @ q[bi, hi, t].double()

    expected, expected_state = naive_per_head(s0, T, DV, step)
    for kernel in (fwk.recurrent_delta_rule, partial(fwk.chunk_delta_rule, chunk_size=5)):
        y, state = kernel(q, k, v, beta=beta, log_decay=g, initial_state=s0)
        assert_close_scaled(y, expected.float(), what="output")
        assert_close_scaled(state, expected_state.float(), what="state")


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_gated_delta_rule_with_zero_and_extreme_decays(chunk_size):
    """α = 1 (g = 0), α ≈ e⁻³⁰ (the state is wiped) and everything between, over 130 tokens: the
    chunk form's cumulative log-decays reach about −1000 without losing the recurrent form."""
    gen, T = generator(14), 130
    q, k = (fwk.sum_normalize(F.elu(randn(gen, B, H, T, D)) + 1) for _ in range(2))
    v, beta = randn(gen, B, H, T, DV), torch.rand(B, H, T, generator=gen)
    pick = torch.rand(B, H, T, generator=gen)
    g = torch.where(pick < 0.2, -30.0, torch.where(pick < 0.6, 0.0, -3.0 * torch.rand(B, H, T, generator=gen)))
    y_rec, state_rec = fwk.recurrent_delta_rule(q, k, v, beta=beta, log_decay=g)
    y, state = fwk.chunk_delta_rule(q, k, v, beta=beta, log_decay=g, chunk_size=chunk_size)
    assert bool(torch.isfinite(y).all())
    assert_close_scaled(y, y_rec, rtol=5e-5, what="output")
    assert_close_scaled(state, state_rec, rtol=5e-5, what="state")


# ----------------------------------------------------------------------------------------------
# 5. Feature maps
# ----------------------------------------------------------------------------------------------


def naive_dpfp(x: torch.Tensor, nu: int) -> torch.Tensor:
    """DPFP by explicit index loops: φ_{(j−1)·2d + i} = x'_i · x'_{(i − j) mod 2d}."""
    both = [max(float(a), 0.0) for a in x] + [max(-float(a), 0.0) for a in x]
    n = len(both)
    return torch.tensor([both[i] * both[(i - j) % n] for j in range(1, nu + 1) for i in range(n)])


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_dpfp_matches_explicit_definition(nu):
    x = randn(generator(5), 3, 4, D)
    phi = fm.dpfp_feature_map(x, nu)
    assert phi.shape == (3, 4, 2 * nu * D)
    assert phi.shape[-1] == fm.feature_map_output_dim("dpfp", D, fm.DPFPOptions(nu=nu))
    expected = torch.stack([naive_dpfp(row, nu) for row in x.reshape(-1, D)]).reshape(phi.shape)
    torch.testing.assert_close(phi, expected)


def test_dpfp_rejects_nu_below_one():
    with pytest.raises(ValueError, match="nu"):
        fm.dpfp_feature_map(torch.randn(2, D), 0)


def test_elu_plus_one_is_positive_and_shape_preserving():
    x = randn(generator(6), 4, D, scale=5.0)
    phi = fm.elu_plus_one_feature_map(x)
    assert phi.shape == x.shape and bool((phi > 0).all())
    torch.testing.assert_close(phi, torch.where(x > 0, x + 1, x.exp()))


def test_favor_is_positive_with_dim_2m_and_estimates_softmax_kernel():
    gen, m = generator(8), 4096
    projection = fm.draw_orthogonal_random_features(m, D, generator=gen)
    q, k = randn(gen, 16, D, scale=0.5), randn(gen, 16, D, scale=0.5)
    phi_q, phi_k = fm.favor_feature_map(q, projection), fm.favor_feature_map(k, projection)
    assert phi_q.shape == (16, 2 * m)
    assert phi_q.shape[-1] == fm.feature_map_output_dim("favor", D, fm.FavorOptions(num_features=m))
    assert bool((phi_q > 0).all()) and bool((phi_k > 0).all())
    estimate = (phi_q * phi_k).sum(-1)
    exact = ((q * k).sum(-1) / math.sqrt(D)).exp()
    assert exact.min() < 0.9 or exact.max() > 1.1  # the kernel is not trivially ≈ 1 here
    torch.testing.assert_close(estimate, exact, rtol=0.1, atol=0.0)


def test_favor_rejects_wrong_input_dim():
    projection = fm.draw_orthogonal_random_features(4, D, generator=generator(0))
    with pytest.raises(ValueError, match="projection"):
        fm.favor_feature_map(torch.randn(3, D + 1), projection)


def test_favor_does_not_overflow_for_huge_inputs():
    projection = fm.draw_orthogonal_random_features(16, D, generator=generator(0))
    phi = fm.favor_feature_map(torch.full((2, D), 1e4), projection)
    assert bool(torch.isfinite(phi).all())


def test_orthogonal_random_features():
    m = 20  # 2.5 blocks of D
    first = fm.draw_orthogonal_random_features(m, D, generator=generator(11))
    again = fm.draw_orthogonal_random_features(m, D, generator=generator(11))
    other = fm.draw_orthogonal_random_features(m, D, generator=generator(12))
    assert first.shape == (m, D)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    directions = F.normalize(first, dim=-1)
    for start in range(0, m, D):
        block = directions[start : start + D]
        torch.testing.assert_close(block @ block.t(), torch.eye(len(block)), rtol=0, atol=1e-5)
    # rows are marginally N(0, I): mean squared norm ≈ D
    many = fm.draw_orthogonal_random_features(4096, D, generator=generator(13))
    assert abs(many.pow(2).sum(-1).mean().item() - D) < 0.05 * D


def test_sum_normalize():
    x = torch.rand(3, 5, D, generator=generator(9)) + 0.01
    normed = fwk.sum_normalize(x)
    torch.testing.assert_close(normed.sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(normed * x.sum(-1, keepdim=True), x)
    assert bool(torch.isfinite(fwk.sum_normalize(torch.zeros(2, D))).all())


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [("elu", None, D), ("dpfp", fm.DPFPOptions(nu=3), 6 * D), ("dpfp", None, 2 * D),
     ("favor", fm.FavorOptions(num_features=12), 24)],
)
def test_feature_map_output_dim(name, options, expected):
    assert fm.feature_map_output_dim(name, D, options) == expected


def test_feature_map_output_dim_rejects_unknown_name():
    allowed = ", ".join(repr(name) for name in fm.FEATURE_MAPS)
    with pytest.raises(ValueError, match=rf"'softmax'.*allowed: {re.escape(allowed)}$"):
        fm.feature_map_output_dim("softmax", D)


@pytest.mark.parametrize("dpfp_nu", [1, 3])
@pytest.mark.parametrize("name", list(fm.FEATURE_MAPS))
def test_feature_map_registry_output_dim_is_the_width_of_apply(name, dpfp_nu):
    spec = fm.FEATURE_MAPS[name]
    options = feature_map_options(spec, dpfp_nu)
    assert spec.name == name and spec.label(options)
    gen = generator(16)
    x = randn(gen, 2, 3, 5, D)  # [batch, heads, time, d]
    phi = spec.apply(x, options, feature_map_weights(spec, options, gen, heads=3))
    assert phi.shape == (2, 3, 5, spec.output_dim(D, options))
    assert phi.shape[-1] == fm.feature_map_output_dim(name, D, options)
    assert bool(torch.isfinite(phi).all())
    # A map that says it is non-negative is (a valid kernel, fit for φ/Σφ); the others do take negative values.
    assert bool((phi >= 0).all()) if spec.nonnegative else bool((phi < 0).any()), "φ ≥ 0 exactly when it says so"


def test_l2_normalize():
    x = randn(generator(17), 3, 5, D, scale=4.0)
    normed = fwk.l2_normalize(x)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3, 5))
    torch.testing.assert_close(normed * x.norm(dim=-1, keepdim=True), x, rtol=1e-5, atol=1e-5)
    assert bool(torch.isfinite(fwk.l2_normalize(torch.zeros(2, D))).all())


# ----------------------------------------------------------------------------------------------
# Gates and the kernels' shared signature
# ----------------------------------------------------------------------------------------------


def test_gated_log_decay_is_minus_exp_a_log_times_softplus():
    gen = generator(18)
    logits = randn(gen, 3, 7, H, scale=4.0)  # [..., H]
    a_log = (1 + 15 * torch.rand(H, generator=gen)).log()  # A ∈ [1, 16], as Gated DeltaNet draws it
    dt_bias = randn(gen, H, scale=2.0)
    g = fwk.gated_log_decay(logits, a_log, dt_bias)
    assert g.shape == logits.shape and g.dtype == torch.float32
    assert bool((g <= 0).all())
    expected = -a_log.double().exp() * torch.log1p((logits.double() + dt_bias.double()).exp())
    assert_close_scaled(g, expected.float(), what="g")
    # Lower-precision inputs still give an fp32 decay, and huge logits do not overflow.
    assert fwk.gated_log_decay(logits.bfloat16(), a_log.bfloat16(), dt_bias.bfloat16()).dtype == torch.float32
    huge = fwk.gated_log_decay(torch.full((2, H), 1e4), a_log, dt_bias)
    assert bool(torch.isfinite(huge).all()) and bool((huge < 0).all())
    assert torch.equal(fwk.gated_log_decay(torch.full((2, H), -1e4), a_log, dt_bias), torch.zeros(2, H))


def test_delta_rule_beta_is_a_sigmoid_in_fp32():
    logits = randn(generator(19), 2, 5, H, scale=3.0).bfloat16()
    beta = fwk.delta_rule_beta(logits)
    assert beta.dtype == torch.float32
    torch.testing.assert_close(beta, torch.sigmoid(logits.float()))


def test_delta_rule_beta_with_negative_eigenvalues_is_twice_the_sigmoid():
    """``allow_neg_eigval``: β = 2·sigmoid ∈ (0, 2), so ``I − β k kᵀ`` (unit k) has the eigenvalue 1 − β < 0
    for β > 1 (Grazzi et al.); a large logit gives β ≈ 2."""
    logits = randn(generator(20), 2, 5, H, scale=3.0)
    beta = fwk.delta_rule_beta(logits, allow_neg_eigval=True)
    torch.testing.assert_close(beta, 2 * torch.sigmoid(logits))
    assert fwk.delta_rule_beta(torch.tensor([20.0]), allow_neg_eigval=True).item() == pytest.approx(2.0)


def _kernel_pairs() -> dict[str, tuple[Callable, Callable]]:
    pairs = {}
    for spec in TOKEN_MIXERS.values():
        if spec.chunk is not None:
            pairs.setdefault(spec.chunk.__name__, (spec.chunk, spec.recurrent))
    return pairs


@pytest.mark.parametrize("pair", list(_kernel_pairs()))
def test_chunk_and_recurrent_kernels_share_one_keyword_only_signature(pair):
    chunk, recurrent = _kernel_pairs()[pair]
    signatures = [inspect.signature(kernel).parameters for kernel in (chunk, recurrent)]
    assert list(signatures[0]) == list(signatures[1])
    for parameters in signatures:
        positional = [p.name for p in parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert positional in (["q", "k", "v"], ["drive"]), positional
        assert {"initial_state", "chunk_size"} <= set(parameters)


# ----------------------------------------------------------------------------------------------
# 6. Masked / no-op tokens are equivalent to removing them
# ----------------------------------------------------------------------------------------------

DROPPED = [0, 4, 5, 17, 30]  # includes the first token and a run of two


def _run_masked_and_removed(rule: str, form: str, T: int = 33):
    """Returns (y with no-op tokens, final state, y with tokens removed, its state, y without the no-op)."""
    gen = generator(10)
    keep = [t for t in range(T) if t not in DROPPED]
    chunked = form == "chunk"
    if rule == "fw":
        drive, s0 = randn(gen, B, H, T, D), randn(gen, B, H, D, D, scale=0.3)
        mask = torch.ones(B, H, T, dtype=torch.bool)
        mask[:, :, DROPPED] = False
        kernel = partial(fwk.chunk_fast_weights, chunk_size=CHUNK) if chunked else fwk.recurrent_fast_weights
        run = partial(kernel, ln_weight=None, ln_bias=None, num_steps=2, initial_state=s0, decay=0.7)
        return (*run(drive, mask=mask), *run(drive[:, :, keep]), run(drive)[0])
    q, k = (F.elu(randn(gen, B, H, T, D)) + 1 for _ in range(2))
    v, s0 = randn(gen, B, H, T, DV), randn(gen, B, H, D, DV)
    if rule in ("delta", "gated"):
        # A padded token of the delta rules has β = 0 (writes nothing) and g = 0 (decays nothing).
        k, q = fwk.sum_normalize(k), fwk.sum_normalize(q)
        gates = {"beta": torch.rand(B, H, T, generator=gen) * 0.9 + 0.1}
        if rule == "gated":
            gates["log_decay"] = log_decays(gen, B, H, T)
        noop_gates = {name: gate.clone() for name, gate in gates.items()}
        for gate in noop_gates.values():
            gate[:, :, DROPPED] = 0.0
        kernel = partial(fwk.chunk_delta_rule, chunk_size=CHUNK) if chunked else fwk.recurrent_delta_rule
        run = partial(kernel, initial_state=s0)
        removed = run(q[:, :, keep], k[:, :, keep], v[:, :, keep], **{n: g[:, :, keep] for n, g in gates.items()})
        return (*run(q, k, v, **noop_gates), *removed, run(q, k, v, **gates)[0])
    log_decay = F.logsigmoid(randn(gen, B, H, T) + 1)
    noop_k, noop_g = k.clone(), log_decay.clone()
    noop_k[:, :, DROPPED], noop_g[:, :, DROPPED] = 0.0, 0.0
    kernel = partial(fwk.chunk_sum_rule, chunk_size=CHUNK) if chunked else fwk.recurrent_sum_rule
    run = partial(kernel, initial_state=s0, exclusive=rule == "sum-exclusive")
    sub = (q[:, :, keep], k[:, :, keep], v[:, :, keep])
    removed = run(*sub, log_decay=log_decay[:, :, keep])
    return (*run(q, noop_k, v, log_decay=noop_g), *removed, run(q, k, v, log_decay=log_decay)[0])


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("rule", ["fw", "delta", "gated", "sum-inclusive", "sum-exclusive"])
def test_noop_tokens_equal_removed_tokens(rule, form):
    T = 33
    keep = [t for t in range(T) if t not in DROPPED]
    y_noop, state_noop, y_removed, state_removed, y_plain = _run_masked_and_removed(rule, form, T)
    assert_close_scaled(y_noop[:, :, keep], y_removed, what="outputs at kept positions")
    assert_close_scaled(state_noop, state_removed, what="final state")
    # the no-op tokens did matter when active, so the comparison above is not vacuous
    assert not torch.allclose(y_plain[:, :, keep], y_removed, atol=1e-3)


@pytest.mark.parametrize("kernel", [fwk.chunk_delta_rule, fwk.recurrent_delta_rule], ids=["chunk", "recurrent"])
def test_a_padded_token_leaves_the_gated_delta_state_unchanged(kernel):
    gen = generator(15)
    q, k, v = randn(gen, B, H, 3, D), F.normalize(randn(gen, B, H, 3, D), dim=-1), randn(gen, B, H, 3, DV)
    s0 = randn(gen, B, H, D, DV)
    zeros = torch.zeros(B, H, 3)
    y, state = kernel(q, k, v, beta=zeros, log_decay=zeros, initial_state=s0)
    assert torch.equal(state, s0)
    assert_close_scaled(y, q @ s0, what="reads of the unchanged state")


# ----------------------------------------------------------------------------------------------
# 7. Bad input
# ----------------------------------------------------------------------------------------------


def _qkv(T: int = 5, dtype=torch.float32):
    gen = generator(0)
    return randn(gen, B, H, T, D).to(dtype), randn(gen, B, H, T, D).to(dtype), randn(gen, B, H, T, DV).to(dtype)


def _sum_or_delta(kernel_name: str):
    kernel = getattr(fwk, kernel_name)
    if "delta" in kernel_name:
        return lambda q, k, v, **kw: kernel(q, k, v, **{"beta": torch.rand(*k.shape[:3]), **kw})
    return kernel


BAD_QKV = {
    "q-ndim": (lambda q, k, v: (q[0], k, v, {}), ValueError, r"\bq must be \[batch, heads, time, dim\]"),
    "k-ndim": (lambda q, k, v: (q, k[None], v, {}), ValueError, r"\bk must be \[batch, heads, time, dim\]"),
    "qk-mismatch": (lambda q, k, v: (q, k[..., :-1], v, {}), ValueError, "q and k must have the same shape"),
    "v-time": (lambda q, k, v: (q, k, v[:, :, :-1], {}), ValueError, r"\bv must share"),
    "state-shape": (
        lambda q, k, v: (q, k, v, {"initial_state": torch.zeros(B, H, DV, D)}),
        ValueError,
        r"initial_state must have shape \(2, 2, 8, 6\)",
    ),
    "int-q": (lambda q, k, v: (q.long(), k, v, {}), TypeError, r"\bq must be a floating-point"),
    "int-v": (lambda q, k, v: (q, k, v.int(), {}), TypeError, r"\bv must be a floating-point"),
}
SUM_AND_DELTA = ["chunk_sum_rule", "recurrent_sum_rule", "chunk_delta_rule", "recurrent_delta_rule"]


@pytest.mark.parametrize("bad", list(BAD_QKV))
@pytest.mark.parametrize("kernel_name", SUM_AND_DELTA)
def test_bad_qkv_raise_naming_the_argument(kernel_name, bad):
    make_args, error, pattern = BAD_QKV[bad]
    q, k, v, kwargs = make_args(*_qkv())
    with pytest.raises(error, match=pattern) as info:
        _sum_or_delta(kernel_name)(q, k, v, **kwargs)
    assert kernel_name in str(info.value)


@pytest.mark.parametrize("kernel_name", ["chunk_delta_rule", "recurrent_delta_rule"])
def test_bad_beta_shape(kernel_name):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"beta must have shape \[batch, heads, time\]"):
        getattr(fwk, kernel_name)(q, k, v, beta=torch.rand(B, H, 4))
    with pytest.raises(ValueError, match="beta"):
        getattr(fwk, kernel_name)(q, k, v, beta=torch.rand(B, H, 5, 1))
    with pytest.raises(TypeError):  # the gates are keyword-only
        getattr(fwk, kernel_name)(q, k, v, torch.rand(B, H, 5))


@pytest.mark.parametrize("kernel_name", SUM_AND_DELTA)
def test_bad_log_decay_shape(kernel_name):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"log_decay must have shape \[batch, heads, time\]"):
        _sum_or_delta(kernel_name)(q, k, v, log_decay=torch.zeros(B, H, 6))


def test_normalized_sum_rule_checks_state_shape():
    q, k, v = _qkv()
    for chunked in (True, False):
        with pytest.raises(ValueError, match="initial_state"):
            sum_rule_reference.normalized_sum_rule(q, k, v, initial_state=torch.zeros(B, H, D, DV), chunked=chunked)


FW_KERNELS = ["chunk_fast_weights", "recurrent_fast_weights"]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"decay": 0.0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"decay": -0.5}, "decay"),
        ({"decay": float("nan")}, "decay"),
        ({"num_steps": -1}, "num_steps"),
    ],
)
@pytest.mark.parametrize("kernel_name", FW_KERNELS)
def test_fast_weights_bad_hyperparameters(kernel_name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        getattr(fwk, kernel_name)(torch.randn(B, H, 5, D), ln_weight=None, ln_bias=None, **kwargs)


@pytest.mark.parametrize("kernel_name", FW_KERNELS)
def test_fast_weights_decay_one_is_allowed_and_bad_drive_ndim_rejected(kernel_name):
    kernel = getattr(fwk, kernel_name)
    kernel(torch.randn(B, H, 5, D), ln_weight=None, ln_bias=None, decay=1.0)
    with pytest.raises(ValueError, match=r"drive must be \[batch, heads, time, dim\]"):
        kernel(torch.randn(H, 5, D), ln_weight=None, ln_bias=None)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"initial_state": torch.zeros(B, H, D, D + 1)}, ValueError, "initial_state"),
        ({"mask": torch.ones(B, H, 4)}, ValueError, "mask"),
        ({"drive": torch.ones(B, H, 5, D, dtype=torch.long)}, TypeError, "drive"),
    ],
    ids=["initial_state-shape", "mask-shape", "int-drive"],
)
@pytest.mark.parametrize("kernel_name", FW_KERNELS)
def test_fast_weights_bad_state_mask_dtype(kernel_name, kwargs, error, pattern):
    kwargs = {"drive": torch.randn(B, H, 5, D), **kwargs}
    with pytest.raises(error, match=pattern):
        getattr(fwk, kernel_name)(ln_weight=None, ln_bias=None, **kwargs)


# ----------------------------------------------------------------------------------------------
# 8. Dtypes: the state is always fp32, the output follows the input
# ----------------------------------------------------------------------------------------------


def _cast(tensors: dict, dtype: torch.dtype, names=TIME_KEYS) -> dict:
    def cast(name, t):
        return t.to(dtype) if name in names and t is not None and t.is_floating_point() else t

    return {name: cast(name, t) for name, t in tensors.items()}


@pytest.mark.parametrize("form", ["chunk", "recurrent"])
@pytest.mark.parametrize("variant", ["sum/elu", "decay/exclusive", "normalized/elu", "delta/elu", "gated/elu", "fw/1"])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
def test_bf16_inputs_give_bf16_output_and_fp32_state(variant, form, state_dtype):
    case = make_case(variant, 21, with_init=True)
    inputs_bf16 = _cast(case.tensors, torch.bfloat16)  # q, k, v, beta, log_decay, drive (not LN params)
    inputs_bf16["initial_state"] = case.tensors["initial_state"].to(state_dtype)
    inputs_fp32 = _cast(inputs_bf16, torch.float32, names=set(inputs_bf16))  # same values, fp32 tensors
    run = partial(case.chunk, chunk_size=CHUNK) if form == "chunk" else case.recurrent
    y, state = run(**inputs_bf16)
    assert y.dtype == torch.bfloat16
    assert state.dtype == torch.float32
    y_ref, state_ref = run(**inputs_fp32)
    # feature maps run in bf16 on bf16 inputs, so allow bf16 rounding (not fp32 agreement)
    assert_close_scaled(y.float(), y_ref, rtol=2e-2, what="bf16 output")
    assert_close_scaled(state, state_ref, rtol=2e-2, what="state")


@pytest.mark.parametrize("kernel_name", FW_KERNELS)
def test_fast_weights_bf16_layer_norm_parameters(kernel_name):
    case = make_case("fw/2", 9, with_init=True)
    inputs = _cast(case.tensors, torch.bfloat16, names={"drive", "ln_weight", "ln_bias"})
    y, state = getattr(fwk, kernel_name)(**inputs, num_steps=2)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
