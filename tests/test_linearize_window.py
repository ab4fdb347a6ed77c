"""Linearizing into LoLCATs' mixer (`hedgehog_window`: a sliding softmax window + Hedgehog fast weights):
the student config and weights, the exactness oracle (a window covering the sequence is the teacher's attention,
whatever γ, since the linear part then reads nothing), cached decoding, and attention transfer of the feature maps
and window factors."""

import pytest
import torch
from test_linearize import (
    CHUNK,
    assert_logits_close,
    greedy,
    left_padded,
    logits_of,
    make_teacher,
    max_diff,
    positions_from_mask,
    random_ids,
)

from fwp_hf import FWPForCausalLM
from fwp_hf.conversion.linearize import (
    AttentionTransferModel,
    LinearizationError,
    linearize_model,
    student_config_from_teacher,
    transfer_parameter_names,
)

pytestmark = pytest.mark.usefixtures("single_thread")

WIDE = dict(fast_weight=dict(window_size=64))  # wider than every test sequence


@pytest.mark.parametrize("family, keep", [("qwen2", ()), ("qwen3", ()), ("llama", (1,))],
                         ids=["qwen2", "qwen3", "llama-hybrid"])
def test_a_window_covering_the_sequence_is_the_teacher(family, keep):
    """GQA, q/k/v biases, q/k norms (qwen3, head_dim 12), llama3 rope scaling (read from the kept softmax layer)."""
    teacher = make_teacher(family)
    student = linearize_model(teacher, "hedgehog_window", keep_softmax_layers=keep, chunk_size=CHUNK, **WIDE)
    assert isinstance(student, FWPForCausalLM)
    kinds = student.config.layer_attention_types
    assert kinds == ["softmax" if i in keep else "hedgehog_window" for i in range(len(kinds))]
    ids = random_ids(2, 30, seed=1)
    assert_logits_close(logits_of(student, ids), logits_of(teacher, ids), f"{family}: logits")

    padded, mask = left_padded(random_ids(3, 24, seed=2), [0, 5, 11])
    expected = logits_of(teacher, padded, attention_mask=mask, position_ids=positions_from_mask(mask))
    real = mask.bool()
    assert_logits_close(logits_of(student, padded, attention_mask=mask)[real], expected[real], f"{family}: padded")
    expected_tokens = greedy(teacher, padded, attention_mask=mask)
    assert torch.equal(greedy(student, padded, attention_mask=mask), expected_tokens)


def test_a_narrow_window_differs_from_the_teacher_and_its_cache_stays_fixed():
    """The control of the oracle above: with a window of 4 the fast weights read the older tokens and the logits
    move far from the teacher's; cached decoding still equals the student's own full forward."""
    teacher = make_teacher("qwen2")
    student = linearize_model(teacher, "hedgehog_window", chunk_size=CHUNK, fast_weight=dict(window_size=4))
    ids = random_ids(2, 30, seed=1)
    full = logits_of(student, ids)
    assert max_diff(full, logits_of(teacher, ids)) > 1e-2
    with torch.no_grad():
        prefill = student(ids[:, :17], use_cache=True)
        steps = [prefill.logits]
        cache = prefill.past_key_values
        for t in range(17, 30):
            out = student(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    assert_logits_close(torch.cat(steps, dim=1), full, "cached decoding")
    assert all(layer.window_state.keys.shape[2] == 3 for layer in cache.layers)


def test_student_config_and_new_parameters():
    teacher = make_teacher("qwen2")
    config = student_config_from_teacher(teacher.config, "hedgehog_window")
    assert config.fast_weight.window_size == 64  # LoLCATs' default window
    assert config.fast_weight.key_value_heads == 2 and config.max_position_embeddings == 128
    assert student_config_from_teacher(teacher.config, "hedgehog_window", fast_weight=dict(window_size=8)
                                       ).fast_weight.window_size == 8
    student = linearize_model(teacher, "hedgehog_window", chunk_size=CHUNK)
    names = transfer_parameter_names(student)
    for i in range(teacher.config.num_hidden_layers):
        mixer = student.model.layers[i].mixer
        assert f"model.layers.{i}.mixer.window_factors" in names
        assert any(name.startswith(f"model.layers.{i}.mixer.feature_map.") for name in names)
        # LoLCATs' initial window factor: logit 0, γ = 1/2
        assert torch.equal(mixer.window_factors.detach(), torch.zeros(teacher.config.num_attention_heads))


def test_rope_scaling_without_a_softmax_layer_is_refused_clearly():
    teacher = make_teacher("llama")  # llama3 rope scaling
    with pytest.raises(LinearizationError, match="rope scaling .* keep a softmax layer"):
        student_config_from_teacher(teacher.config, "hedgehog_window")


def test_attention_transfer_learns_feature_maps_and_window_factors():
    teacher = make_teacher("qwen2", num_hidden_layers=3)
    student = linearize_model(teacher, "hedgehog_window", keep_softmax_layers=[1], chunk_size=CHUNK,
                              fast_weight=dict(window_size=4))
    transfer = AttentionTransferModel(student, teacher)
    names = set(transfer_parameter_names(student))
    parameters = [p for name, p in student.named_parameters() if name in names]
    before_weights = {name: p.detach().clone() for name, p in student.named_parameters()}
    held_out = random_ids(4, 24, seed=50)
    with torch.no_grad():
        before = transfer(held_out)["layer_losses"]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    for step in range(30):
        loss = transfer(random_ids(8, 24, seed=100 + step))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = transfer(held_out)["layer_losses"]
    assert (after < before).all(), (before, after)
    moved = {name for name, p in student.named_parameters() if not torch.equal(p.detach(), before_weights[name])}
    assert any(name.endswith("window_factors") for name in moved), moved
    assert moved <= names, sorted(moved - names)
    transfer.release()
