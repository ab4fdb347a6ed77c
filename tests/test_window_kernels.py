"""The sliding-window softmax + sum rule kernels (LoLCATs' mixer, `hedgehog_window`): chunkwise and recurrent
forms against the full T×T reference, against causal softmax attention (window ≥ T, no linear part), carried
state (chunked prefill → decoding), padding and gradients."""

import pytest
import torch
import torch.nn.functional as F

from fwp_hf.fast_weight_kernels import (
    WindowState,
    chunk_window_sum_rule,
    naive_window_sum_rule,
    recurrent_window_sum_rule,
)


def _inputs(batch=2, heads=3, seq_len=23, dim=8, features=12, value_dim=5, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, positive=False):
        x = torch.rand(*shape, generator=generator, dtype=dtype) if positive else torch.randn(
            *shape, generator=generator, dtype=dtype)
        return x

    q, k = draw(batch, heads, seq_len, dim), draw(batch, heads, seq_len, dim)
    fq, fk = draw(batch, heads, seq_len, features, positive=True), draw(batch, heads, seq_len, features, positive=True)
    v = draw(batch, heads, seq_len, value_dim)
    gamma = torch.rand(heads, generator=generator, dtype=dtype)
    return q, k, fq, fk, v, gamma


def _run(kernel, tensors, **kwargs):
    """`kernel` on ``(q, k, φ(q), φ(k), v)``."""
    q, k, fq, fk, v = tensors
    return kernel(q, k, v, q_features=fq, k_features=fk, **kwargs)


def _split(tensors, start, end):
    return [x[:, :, start:end] for x in tensors]


@pytest.mark.parametrize("window_size", [1, 4, 7, 40])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 8, 64])
def test_chunk_form_equals_full_reference(window_size, chunk_size):
    q, k, fq, fk, v, gamma = _inputs()
    reference = naive_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma,
                                      window_size=window_size)
    y, state = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma,
                                     window_size=window_size,
                                     chunk_size=chunk_size)
    torch.testing.assert_close(y, reference, rtol=1e-10, atol=1e-12)
    assert state.keys.shape[2] == window_size - 1  # slots from the start: a fixed size


def test_recurrent_steps_equal_full_reference():
    q, k, fq, fk, v, gamma = _inputs(seq_len=17)
    reference = naive_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, linear_factor=0.7,
                                      window_size=5)
    state, outputs = None, []
    for t in range(q.shape[2]):
        y_t, state = _run(recurrent_window_sum_rule, _split((q, k, fq, fk, v), t, t + 1), window_factor=gamma,
                                               linear_factor=0.7, window_size=5, initial_state=state)
        outputs.append(y_t)
    torch.testing.assert_close(torch.cat(outputs, dim=2), reference, rtol=1e-10, atol=1e-12)
    whole, _ = recurrent_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma,
                                         linear_factor=0.7, window_size=5)
    torch.testing.assert_close(whole, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pieces,chunk_size", [((3, 10, 23), 4), ((1, 2, 23), 3), ((11, 12, 23), 8), ((2, 23), 64)])
def test_chunked_prefill_then_decode_equals_one_call(pieces, chunk_size):
    """Prefill in pieces (lengths below, above and not a multiple of the window or chunk), each continuing the
    state of the last, then decode token by token: the same outputs and final state as one call."""
    tensors = _inputs(seq_len=30)
    gamma, window = tensors[-1], 6
    reference, reference_state = _run(chunk_window_sum_rule, tensors[:-1], window_factor=gamma, window_size=window)
    outputs, state, start = [], None, 0
    for end in pieces:
        y, state = _run(chunk_window_sum_rule, _split(tensors[:-1], start, end), window_factor=gamma,
                        window_size=window,
                                         initial_state=state, chunk_size=chunk_size)
        outputs.append(y)
        start = end
    for t in range(start, 30):
        y, state = _run(recurrent_window_sum_rule, _split(tensors[:-1], t, t + 1), window_factor=gamma,
                                             window_size=window, initial_state=state)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=2), reference, rtol=1e-10, atol=1e-12)
    for name in WindowState._fields:
        torch.testing.assert_close(getattr(state, name), getattr(reference_state, name), rtol=1e-10, atol=1e-12)


def test_window_covering_the_sequence_without_linear_part_is_causal_softmax():
    q, k, fq, fk, v, gamma = _inputs(seq_len=19)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for kernel in (chunk_window_sum_rule, recurrent_window_sum_rule):
        y, _ = kernel(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, linear_factor=0.0, window_size=19,
                      chunk_size=4)
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    # a sliding window alone (λ = 0) is sliding-window softmax attention
    position = torch.arange(19)
    mask = (position[:, None] >= position[None, :]) & (position[:, None] - position[None, :] < 5)
    y, _ = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, linear_factor=0.0,
                                 window_size=5, chunk_size=4)
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-10, atol=1e-12)


def test_far_tokens_are_read_through_the_features_only():
    """A window of one token (the query's own) with γ = 1: y_i = (e^0 v_i + Σ_{j<i} φ(q_i)·φ(k_j) v_j) / (1 + ...)
    written out by hand."""
    q, k, fq, fk, v, _ = _inputs(batch=1, heads=1, seq_len=6)
    y, _ = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=1.0, window_size=1, chunk_size=4)
    for i in range(6):
        weights = fq[0, 0, i] @ fk[0, 0, :i].T
        expected = (v[0, 0, i] + weights @ v[0, 0, :i]) / (1 + weights.sum())
        torch.testing.assert_close(y[0, 0, i], expected, rtol=1e-10, atol=1e-12)


def test_left_padding_reads_like_the_unpadded_row():
    q, k, fq, fk, v, gamma = _inputs(batch=1, seq_len=14)
    pad = 5
    padded = [torch.cat([torch.randn(*x.shape[:2], pad, x.shape[3], dtype=x.dtype).abs(), x], dim=2)
              for x in (q, k, fq, fk, v)]
    key_mask = torch.cat([torch.zeros(1, pad), torch.ones(1, 14)], dim=1)
    expected, _ = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=4,
                                        chunk_size=3)
    for kernel in (chunk_window_sum_rule, recurrent_window_sum_rule):
        y, state = _run(kernel, padded, window_factor=gamma, window_size=4, key_mask=key_mask, chunk_size=3)
        torch.testing.assert_close(y[:, :, pad:], expected, rtol=1e-10, atol=1e-12)
        assert torch.isfinite(y).all()
    reference = _run(naive_window_sum_rule, padded, window_factor=gamma, window_size=4, key_mask=key_mask)
    torch.testing.assert_close(reference[:, :, pad:], expected, rtol=1e-10, atol=1e-12)


def test_carried_state_has_a_fixed_size():
    sizes = []
    for seq_len in (64, 256):
        tensors = _inputs(batch=1, heads=2, seq_len=seq_len, dtype=torch.float32)
        _, state = _run(chunk_window_sum_rule, tensors[:-1], window_factor=tensors[-1], window_size=16)
        sizes.append([tuple(t.shape) for t in state])
    assert sizes[0] == sizes[1]
    assert sizes[0][0] == (1, 2, 15, 8)


def test_gradients_match_finite_differences():
    q, k, fq, fk, v, gamma = _inputs(batch=1, heads=2, seq_len=7, dim=3, features=4, value_dim=2)
    inputs = [x.clone().requires_grad_() for x in (q, k, fq, fk, v, gamma)]

    def chunked(q, k, fq, fk, v, gamma):
        return chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=3,
                                     chunk_size=2)[0]

    assert torch.autograd.gradcheck(chunked, inputs)
    # and the same gradients as the reference, through a carried state
    def split(q, k, fq, fk, v, gamma):
        first, state = _run(chunk_window_sum_rule, _split((q, k, fq, fk, v), 0, 4), window_factor=gamma, window_size=3)
        second, _ = _run(recurrent_window_sum_rule, _split((q, k, fq, fk, v), 4, 7), window_factor=gamma, window_size=3,
                                              initial_state=state)
        return torch.cat([first, second], dim=2)

    weights = torch.randn(1, 2, 7, 2, dtype=torch.float64)
    grads = torch.autograd.grad((split(*inputs) * weights).sum(), inputs)
    reference = torch.autograd.grad(
        (_run(naive_window_sum_rule, inputs[:-1], window_factor=inputs[-1], window_size=3) * weights).sum(), inputs)
    for grad, expected in zip(grads, reference):
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)


def test_float32_inputs_keep_their_dtype():
    tensors = _inputs(dtype=torch.float32)
    y, state = _run(chunk_window_sum_rule, tensors[:-1], window_factor=tensors[-1], window_size=4)
    assert y.dtype == torch.float32 and state.state.dtype == torch.float32


def test_bad_inputs_are_refused_with_a_clear_error():
    q, k, fq, fk, v, gamma = _inputs(seq_len=4)
    with pytest.raises(ValueError, match="window_size must be a positive integer"):
        chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=0)
    with pytest.raises(ValueError, match="seq_idx must have shape"):
        chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=2,
                              seq_idx=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="φ\\(q\\) and φ\\(k\\)"):
        chunk_window_sum_rule(q, k, v, q_features=fq[..., :3], k_features=fk, window_factor=gamma, window_size=2)
    with pytest.raises(ValueError, match="key_mask must be"):
        chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=2,
                              key_mask=torch.ones(2, 3))
    _, state = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=4)
    with pytest.raises(ValueError, match="carries window_size − 1 = 1"):
        chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma, window_size=2,
                              initial_state=state)


@pytest.mark.parametrize("where", ["right", "middle"])
def test_padding_anywhere_is_absent_from_outputs_and_state(where):
    """Padding takes no place in the window: the real tokens' outputs and the carried state (continued by
    decoding) are those of the unpadded row."""
    q, k, fq, fk, v, gamma = _inputs(batch=1, seq_len=12)
    at = 12 if where == "right" else 7
    pad = 4

    def padded(x):
        return torch.cat([x[:, :, :at], torch.randn(*x.shape[:2], pad, x.shape[3], dtype=x.dtype).abs(),
                          x[:, :, at:]], dim=2)

    key_mask = torch.ones(1, 12 + pad)
    key_mask[:, at : at + pad] = 0
    real = key_mask[0].bool()
    expected, expected_state = chunk_window_sum_rule(q, k, v, q_features=fq, k_features=fk, window_factor=gamma,
                                                     window_size=4)
    later = _inputs(batch=1, seq_len=3, seed=1)[:-1]
    expected_next, _ = _run(recurrent_window_sum_rule, later, window_factor=gamma, window_size=4,
                                                 initial_state=expected_state)
    for kernel in (chunk_window_sum_rule, recurrent_window_sum_rule):
        y, state = _run(kernel, (padded(x) for x in (q, k, fq, fk, v)), window_factor=gamma, window_size=4,
                          key_mask=key_mask, chunk_size=3)
        torch.testing.assert_close(y[:, :, real], expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.state, expected_state.state, rtol=1e-10, atol=1e-12)
        following, _ = _run(recurrent_window_sum_rule, later, window_factor=gamma, window_size=4, initial_state=state)
        torch.testing.assert_close(following, expected_next, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 16])
def test_packed_documents_each_compute_what_they_compute_alone(chunk_size):
    """A row packing documents of 2, 9 and 6 tokens (ids that repeat: 0, 1, 0) after a carried state: the first
    document continues the state, the others start empty, and the returned state is the last document's."""
    tensors = _inputs(batch=1, seq_len=17, seed=3)
    gamma, inputs = tensors[-1], tensors[:-1]
    earlier = _inputs(batch=1, seq_len=5, seed=4)[:-1]
    lengths, ids = (2, 9, 6), (0, 1, 0)
    seq_idx = torch.cat([torch.full((1, n), i) for n, i in zip(lengths, ids)], dim=1)
    _, carried = _run(chunk_window_sum_rule, earlier, window_factor=gamma, window_size=4)
    y, state = _run(chunk_window_sum_rule, inputs, window_factor=gamma, window_size=4, seq_idx=seq_idx,
                                     initial_state=carried, chunk_size=chunk_size)
    start = 0
    for number, length in enumerate(lengths):
        piece = _split(inputs, start, start + length)
        alone, alone_state = _run(chunk_window_sum_rule, piece, window_factor=gamma, window_size=4,
                                                   initial_state=carried if number == 0 else None)
        torch.testing.assert_close(y[:, :, start : start + length], alone, rtol=1e-10, atol=1e-12)
        start += length
    # the last document's state: it continues exactly as the document alone would
    following = _inputs(batch=1, seq_len=3, seed=5)[:-1]
    expected, _ = _run(recurrent_window_sum_rule, following, window_factor=gamma, window_size=4,
                       initial_state=alone_state)
    continued, _ = _run(recurrent_window_sum_rule, following, window_factor=gamma, window_size=4, initial_state=state)
    torch.testing.assert_close(continued, expected, rtol=1e-10, atol=1e-12)
    reference = _run(naive_window_sum_rule, inputs, window_factor=gamma, window_size=4, seq_idx=seq_idx)
    torch.testing.assert_close(y[:, :, 2:], reference[:, :, 2:], rtol=1e-10, atol=1e-12)
