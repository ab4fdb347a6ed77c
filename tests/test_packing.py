"""Tests of packed sequences without padding (transformers' `DataCollatorWithFlattening`).

Covered: every kernel pair with ``seq_idx`` (sum rule plain/decayed/exclusive/normalised, delta rule
ungated and gated, Ba et al. fast weights, the short convolution) equals each document run alone
through the recurrent reference — documents starting inside chunks and exactly at chunk boundaries,
a document longer than a chunk, ids that repeat, an initial state for the first document only — and
strong decays of one document do not round away the next one's; the model: for every LM variant a
packed row of 3 documents gives each document its logits alone and the token-weighted loss, also
from ``seq_idx`` / ``cu_seq_lens`` and for two packed rows; ordinary position_ids (monotonic, left
padding as generate writes it) are not packing; `Trainer` with the flattening collator trains; a
tiny `run_lm_training(packing=True)`; the errors (a packed row continuing a cache only with softmax layers).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import datasets
import pytest
import sum_rule_reference
import torch
import torch.nn.functional as F
from conftest import LM_VARIANTS, assert_close, make_lm, random_ids, type_variant
from transformers import (
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from fwp_hf import fast_weight_kernels as fwk
from fwp_hf.inputs_fwp import packed_document_ids
from fwp_hf.training.lm import parse_lm_arguments, run_lm_training
from fwp_hf.training.lm_data import builtin_corpus_texts
from fwp_hf.training.packing import PackedDocumentsTrainer, packed_documents_dataset
from fwp_hf.training.tokenization import save_tokenizer, train_sentencepiece_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

B, H, D, DV = 2, 2, 6, 5
RTOL = 1e-5

# Row 0: starts at 3 (inside a chunk of 4), 8 (exactly at a chunk boundary), 9 and 15; row 1: at 4 (a
# boundary) and 15, with an 11-token document spanning chunks, and ids that are neither 0-based nor
# increasing. T = 19 is not a multiple of 4 (the padded tail continues the last document).
DOC_LENGTHS = ([3, 5, 1, 6, 4], [4, 11, 4])
DOC_IDS = ([0, 1, 2, 3, 4], [7, 3, 9])
T = 19


def seq_idx_of(lengths=DOC_LENGTHS, ids=DOC_IDS) -> torch.Tensor:
    return torch.tensor([[i for i, n in zip(row_ids, row) for _ in range(n)] for row, row_ids in zip(lengths, ids)])


def spans(row_lengths: list[int]) -> list[tuple[int, int]]:
    ends = torch.tensor(row_lengths).cumsum(0).tolist()
    return list(zip([0, *ends[:-1]], ends))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kernel_inputs(kind: str, seed: int = 0) -> tuple[dict, tuple[int, ...]]:
    """Per-token tensors ([B, H, T, ...]) of a kernel case and the shape of its state."""
    g = gen(seed)
    if kind == "fast_weights":
        mask = torch.ones(B, H, T, dtype=torch.bool)
        mask[:, :, [2, 8, 12]] = False  # no-op tokens, one of them a document's first token
        return {"drive": torch.randn(B, H, T, D, generator=g), "mask": mask}, (B, H, D, D)
    q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, T, D, generator=g)
    tensors = {"v": torch.randn(B, H, T, DV, generator=g)}
    if kind.startswith("sum"):
        tensors.update(q=F.elu(q) + 1, k=F.elu(k) + 1)
    else:
        tensors.update(q=fwk.l2_normalize(q), k=fwk.l2_normalize(k), beta=torch.rand(B, H, T, generator=g))
    if "decay" in kind:
        tensors["log_decay"] = F.logsigmoid(torch.randn(B, H, T, generator=g) + 2.0)
    dv = DV + 1 if kind == "sum-normalized" else DV
    return tensors, (B, H, D, dv)


SUM_OPTIONS = {"sum": {}, "sum-decay": {}, "sum-exclusive": {"exclusive": True},
               "sum-decay-exclusive": {"exclusive": True}, "sum-normalized": {}}
KERNEL_CASES = [*SUM_OPTIONS, "delta", "gated-delta-decay", "fast_weights"]


def kernel_pair(kind: str, chunk_size: int):
    """(chunkwise, recurrent) callables of a case, both taking the case's tensors as keywords."""
    if kind == "fast_weights":
        common = dict(ln_weight=torch.linspace(0.5, 1.5, D), ln_bias=torch.linspace(-0.2, 0.2, D), decay=0.9,
                      learning_rate=0.7, num_steps=2)
        return (partial(fwk.chunk_fast_weights, chunk_size=chunk_size, **common),
                partial(fwk.recurrent_fast_weights, **common))
    if kind == "sum-normalized":
        return (partial(sum_rule_reference.normalized_sum_rule, chunked=True, chunk_size=chunk_size),
                partial(sum_rule_reference.normalized_sum_rule, chunked=False))
    if kind.startswith("sum"):
        options = SUM_OPTIONS[kind]
        return partial(fwk.chunk_sum_rule, chunk_size=chunk_size, **options), partial(fwk.recurrent_sum_rule, **options)
    return partial(fwk.chunk_delta_rule, chunk_size=chunk_size), fwk.recurrent_delta_rule


def call(kernel, tensors: dict, **kwargs):
    q_like = [tensors[name] for name in ("q", "k", "v") if name in tensors]
    rest = {name: value for name, value in tensors.items() if name not in ("q", "k", "v", "drive")}
    positional = q_like if q_like else [tensors["drive"]]
    return kernel(*positional, **rest, **kwargs)


def documents_alone(recurrent, tensors: dict, initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's documents run one by one through the recurrent reference, each from an empty state
    (the row's first from its initial state): outputs [B, H, T, ...] and each row's last final state."""
    outputs, finals = [], []
    for row, row_lengths in enumerate(DOC_LENGTHS):
        pieces, state = [], None
        for number, (start, end) in enumerate(spans(row_lengths)):
            piece = {name: value[row : row + 1, :, start:end] for name, value in tensors.items()}
            first_state = initial_state[row : row + 1] if initial_state is not None and number == 0 else None
            y, state = call(recurrent, piece, initial_state=first_state)
            pieces.append(y)
        outputs.append(torch.cat(pieces, dim=2))
        finals.append(state)
    return torch.cat(outputs), torch.cat(finals)


@pytest.mark.parametrize("chunk_size", [4, 16])
@pytest.mark.parametrize("with_initial_state", [False, True], ids=["empty", "initial-state"])
@pytest.mark.parametrize("kind", KERNEL_CASES)
def test_kernels_with_seq_idx_equal_each_document_alone(kind, with_initial_state, chunk_size):
    tensors, state_shape = kernel_inputs(kind)
    initial_state = 0.5 * torch.randn(*state_shape, generator=gen(5)) if with_initial_state else None
    expected_y, expected_state = documents_alone(kernel_pair(kind, chunk_size)[1], tensors, initial_state)
    for form, kernel in zip(("chunk", "recurrent"), kernel_pair(kind, chunk_size)):
        y, state = call(kernel, tensors, initial_state=initial_state, seq_idx=seq_idx_of())
        assert_close(y, expected_y, rtol=RTOL, what=f"{kind} {form} outputs")
        assert_close(state, expected_state, rtol=RTOL, what=f"{kind} {form} final state")


@pytest.mark.parametrize("kind", KERNEL_CASES)
def test_one_document_per_row_is_the_plain_kernel(kind):
    """seq_idx with no document start (constant ids) computes what seq_idx=None computes."""
    tensors, _ = kernel_inputs(kind, seed=3)
    for kernel in kernel_pair(kind, 4):
        expected_y, expected_state = call(kernel, tensors)
        y, state = call(kernel, tensors, seq_idx=torch.full((B, T), 5))
        assert_close(y, expected_y, rtol=RTOL, what=f"{kind} outputs")
        assert_close(state, expected_state, rtol=RTOL, what=f"{kind} state")


@pytest.mark.parametrize("kind", ["gated-delta-decay", "sum-decay", "sum-decay-exclusive"])
def test_strong_decays_of_one_document_do_not_round_away_the_next(kind):
    """A document whose log-decays sum to −10⁵ in the chunk before a document with small decays: the
    decays are summed per document, so the second one is exact (a cumulative sum over both would
    leave it only ~10⁻² of absolute precision)."""
    tensors, _ = kernel_inputs(kind, seed=4)
    tensors["log_decay"] = tensors["log_decay"].clone()
    for row, row_lengths in enumerate(DOC_LENGTHS):
        start, end = spans(row_lengths)[0]
        tensors["log_decay"][row, :, start:end] = -3e4
    chunk, recurrent = kernel_pair(kind, 16)
    expected_y, expected_state = documents_alone(recurrent, tensors, None)
    y, state = call(chunk, tensors, seq_idx=seq_idx_of())
    assert_close(y, expected_y, rtol=RTOL, what="outputs")
    assert_close(state, expected_state, rtol=RTOL, what="state")


def test_gradients_with_seq_idx_equal_the_recurrent_reference():
    tensors, _ = kernel_inputs("gated-delta-decay", seed=6)
    grads = []
    for kernel in kernel_pair("gated-delta-decay", 4):
        leaves = {name: value.clone().requires_grad_(value.is_floating_point()) for name, value in tensors.items()}
        y, state = call(kernel, leaves, seq_idx=seq_idx_of())
        (y.pow(2).sum() + state.sum()).backward()
        grads.append({name: leaf.grad for name, leaf in leaves.items()})
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], rtol=RTOL, what=f"d/d{name}")


@pytest.mark.parametrize("with_window", [False, True])
def test_short_convolution_does_not_mix_documents(with_window):
    g = gen(7)
    channels, width = 5, 4
    x, weight = torch.randn(B, T, channels, generator=g), torch.randn(channels, width, generator=g)
    bias = torch.randn(channels, generator=g)
    window = torch.randn(B, channels, width - 1, generator=g) if with_window else None
    y, new_window = fwk.short_causal_conv(x, weight, bias, window, seq_idx=seq_idx_of())
    for row, row_lengths in enumerate(DOC_LENGTHS):
        for number, (start, end) in enumerate(spans(row_lengths)):
            first_window = window[row : row + 1] if window is not None and number == 0 else None
            alone, alone_window = fwk.short_causal_conv(x[row : row + 1, start:end], weight, bias, first_window)
            assert_close(y[row : row + 1, start:end], alone, rtol=RTOL, what=f"row {row} document {number}")
        assert_close(new_window[row : row + 1], alone_window, rtol=RTOL, what=f"row {row} window")


@pytest.mark.parametrize("last_length", [1, 2])
def test_short_convolution_window_after_a_short_last_document_holds_only_it(last_length):
    """A last document shorter than the window (W − 1 = 3): the returned window is zeros, then its inputs only
    (what decoding that document alone would continue from), not the previous document's inputs."""
    g = gen(8)
    channels, width, length = 3, 4, 6
    x = torch.randn(1, length, channels, generator=g)
    seq_idx = torch.tensor([[0] * (length - last_length) + [1] * last_length])
    _, window = fwk.short_causal_conv(x, torch.randn(channels, width, generator=g), None, None, seq_idx=seq_idx)
    expected = torch.zeros(1, channels, width - 1)
    expected[0, :, width - 1 - last_length:] = x[0, length - last_length:].T
    torch.testing.assert_close(window, expected)


@pytest.mark.parametrize("kernel_name", ["chunk_sum_rule", "recurrent_sum_rule", "chunk_delta_rule",
                                         "recurrent_delta_rule"])
def test_bad_seq_idx_is_a_clear_error(kernel_name):
    tensors, _ = kernel_inputs("delta" if "delta" in kernel_name else "sum")
    kernel = getattr(fwk, kernel_name)
    with pytest.raises(ValueError, match=rf"{kernel_name}: seq_idx must have shape \[batch, time\]"):
        call(kernel, tensors, seq_idx=torch.zeros(B, T + 1, dtype=torch.long))
    with pytest.raises(TypeError, match=rf"{kernel_name}: seq_idx must be an integer tensor"):
        call(kernel, tensors, seq_idx=torch.zeros(B, T))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

# With the tiny models' chunks of 8: documents start exactly at a chunk boundary (8) and inside one
# (19); the 11-token document spans two chunks.
MODEL_DOC_LENGTHS = (8, 11, 5)


def model_documents(lengths=MODEL_DOC_LENGTHS, seed: int = 20) -> list[torch.Tensor]:
    return [random_ids(1, n, seed=seed + i)[0] for i, n in enumerate(lengths)]


def flattened(documents: list[torch.Tensor], **collator_options) -> dict:
    return DataCollatorWithFlattening(**collator_options)([{"input_ids": doc.tolist()} for doc in documents])


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_packed_row_gives_each_document_its_logits_and_loss_alone(variant):
    model = make_lm(variant)
    documents = model_documents()
    batch = flattened(documents)
    with torch.no_grad():
        packed = model(**batch)
        alone = [model(doc[None], labels=doc[None]) for doc in documents]
    for number, ((start, end), out) in enumerate(zip(spans(list(MODEL_DOC_LENGTHS)), alone)):
        assert_close(packed.logits[:, start:end], out.logits, what=f"{variant}: document {number}")
    targets = [len(doc) - 1 for doc in documents]
    expected = sum(out.loss * n for out, n in zip(alone, targets)) / sum(targets)
    assert_close(packed.loss, expected, what=f"{variant}: loss")


@pytest.mark.parametrize("variant", ["hybrid-all", "hybrid-fla"])
def test_flash_attention_kwargs_and_seq_idx_give_the_same_documents(variant):
    model = make_lm(variant)
    documents = model_documents()
    with torch.no_grad():
        expected = model(**flattened(documents)).logits
        everything = flattened(documents, return_flash_attn_kwargs=True, return_seq_idx=True)
        assert_close(model(**everything).logits, expected, what="all of DataCollatorWithFlattening's keywords")
        for key in ("seq_idx", "cu_seq_lens_q"):  # boundaries (and rotary positions) without position_ids
            only = {name: value for name, value in everything.items() if name != "position_ids"}
            if key == "seq_idx":
                only = {name: value for name, value in only.items() if not name.startswith(("cu_seq", "max_len"))}
            else:
                only.pop("seq_idx")
            assert_close(model(**only).logits, expected, what=f"from {key}")


def test_two_packed_rows_with_different_boundaries():
    model = make_lm("hybrid-all")
    rows = [(8, 11, 5), (3, 21)]
    documents = [model_documents(lengths, seed=30 + 10 * r) for r, lengths in enumerate(rows)]
    input_ids = torch.stack([torch.cat(docs) for docs in documents])
    position_ids = torch.stack([torch.cat([torch.arange(len(doc)) for doc in docs]) for docs in documents])
    with torch.no_grad():
        logits = model(input_ids, position_ids=position_ids).logits
        for r, (lengths, docs) in enumerate(zip(rows, documents)):
            for (start, end), doc in zip(spans(list(lengths)), docs):
                assert_close(logits[r : r + 1, start:end], model(doc[None]).logits, what=f"row {r} [{start}, {end})")


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "ordinary"])
def test_compile_fullgraph_with_position_ids_matches_eager(packed):
    """While tracing, document starts cannot be read: the document path runs for any position_ids (one
    document per row when they are ordinary) and gives the eager result, with no graph break."""
    torch._dynamo.reset()
    model = make_lm("hybrid-all")
    batch = flattened(model_documents())
    ids = batch["input_ids"]
    positions = batch["position_ids"] if packed else torch.arange(ids.shape[1])[None]
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # a graph break raises
    with torch.no_grad():
        expected = model(ids, position_ids=positions, use_cache=False).logits
        assert_close(compiled(ids, position_ids=positions, use_cache=False).logits, expected, what="compiled")


def test_ordinary_position_ids_are_not_packing():
    ids = torch.zeros(2, 6, dtype=torch.long)
    assert packed_document_ids(torch.arange(6)[None], None, 2, 6) is None
    assert packed_document_ids(torch.arange(4, 10).expand(2, -1), None, 2, 6) is None  # after past tokens
    # left padding with positions as generate writes them (padding at 1, real tokens from 0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    assert packed_document_ids(positions, mask, 2, 6) is None
    assert packed_document_ids(None, mask, *ids.shape) is None
    numbers = packed_document_ids(torch.tensor([[0, 1, 0, 1, 2, 0]]), None, 1, 6)
    assert numbers.tolist() == [[0, 0, 1, 1, 1, 2]]


def test_packed_documents_cannot_continue_a_cache_with_softmax_layers():
    """(A model whose every layer holds a state continues the row's first document instead:
    tests/test_document_resets.py.)"""
    model = make_lm("hybrid")
    batch = flattened(model_documents())
    with torch.no_grad():
        cache = model(random_ids(1, 4), use_cache=True).past_key_values
        with pytest.raises(ValueError, match="packed documents .* cannot continue a cache that holds 4 tokens in a "
                                             "model with softmax layers"):
            model(**batch, past_key_values=cache)
        model(**batch, use_cache=True)  # an empty cache is fine
        all_state = make_lm(type_variant("delta"))
        all_state(**batch, past_key_values=all_state(random_ids(1, 4), use_cache=True).past_key_values)


def test_bad_packing_keywords_are_clear_errors():
    model = make_lm(type_variant("delta"))
    documents = model_documents()
    batch = flattened(documents, return_flash_attn_kwargs=True)
    batch.pop("position_ids")
    with torch.no_grad():
        with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k differ"):
            model(**{**batch, "cu_seq_lens_k": torch.tensor([0, 8, 20, 24], dtype=torch.int32)})
        with pytest.raises(ValueError, match="pass both cu_seq_lens_q and cu_seq_lens_k"):
            model(**{key: value for key, value in batch.items() if key != "cu_seq_lens_k"})
        with pytest.raises(ValueError, match=r"cu_seq_lens_q must rise strictly from 0 to seq_len=24"):
            model(**{**batch, "cu_seq_lens_q": torch.tensor([0, 8, 20]), "cu_seq_lens_k": torch.tensor([0, 8, 20])})
        with pytest.raises(ValueError, match="cu_seq_lens_q/k describe one packed row"):
            model(**{**batch, "input_ids": batch["input_ids"].expand(2, -1)})
        with pytest.raises(ValueError, match=r"seq_idx must be \[batch, seq_len=24\]"):
            model(batch["input_ids"], seq_idx=torch.zeros(1, 23, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_trainer_with_flattening_collator_trains(tmp_path):
    model = make_lm("hybrid-fla").train()
    lengths = [5, 9, 3, 12, 7, 4, 10, 6, 8, 2, 11, 5]
    dataset = datasets.Dataset.from_dict({"input_ids": [random_ids(1, n, seed=50 + i)[0].tolist()
                                                        for i, n in enumerate(lengths)]})
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithFlattening())
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))) and result.global_step == 3
    assert any(not torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_packed_trainer_packs_training_batches_and_evaluates_blocks(tmp_path):
    """Training batches: one flattened row, positions restarting per document; evaluation batches: the blocks of
    the Trainer's own collator, unchanged (and the trainer's collator is that one again afterwards)."""
    model = make_lm("hybrid-fla")
    train = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9], [10, 11, 12, 13]]})
    blocks = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 3, "labels": [[5, 6, 7, 8]] * 3})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, per_device_eval_batch_size=3,
                             report_to="none", use_cpu=True, disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = PackedDocumentsTrainer(model=model, args=args, train_dataset=train, eval_dataset=blocks,
                                     data_collator=default_data_collator)
    train_batch = next(iter(trainer.get_train_dataloader()))
    assert train_batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert train_batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert trainer.data_collator is default_data_collator
    eval_batch = next(iter(trainer.get_eval_dataloader()))
    assert set(eval_batch) == {"input_ids", "labels"} and eval_batch["input_ids"].shape == (3, 4)


def test_packed_documents_dataset_cuts_long_documents():
    tokenized = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4] * 10, [5]]})
    assert packed_documents_dataset(tokenized, 4)["input_ids"] == [[1, 2, 3], [4] * 4, [4] * 4, [4, 4], [5]]
    assert len(packed_documents_dataset(tokenized, 4, max_documents=2)) == 2


class FirstTrainingBatch(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.batch = next(iter(train_dataloader))


@pytest.fixture(scope="module")
def small_data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ptb_small")
    texts = builtin_corpus_texts("train")[:400]
    files = {"train": folder / "train.txt", "validation": folder / "valid.txt", "tokenizer": folder / "tokenizer"}
    files["train"].write_text("\n".join(texts) + "\n")
    files["validation"].write_text("\n".join(builtin_corpus_texts("validation")[:100]) + "\n")
    save_tokenizer(train_sentencepiece_tokenizer(texts, vocab_size=300), files["tokenizer"])
    return files


def tiny_packing_flags(files: dict[str, Path], output_dir: Path, **overrides) -> list[str]:
    values = dict(output_dir=output_dir, train_file=files["train"], validation_file=files["validation"],
                  tokenizer_name=files["tokenizer"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, chunk_size=16, block_size=32, per_device_train_batch_size=8,
                  per_device_eval_batch_size=8, max_eval_samples=4, streaming_eval="false", sample_max_new_tokens=3,
                  max_steps=2, report_to="none", disable_tqdm="true", do_train="true", do_eval="true", seed=0,
                  logging_steps=1, save_strategy="no", packing="true")
    values.update(overrides)
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def test_run_lm_training_with_packing(small_data_files, tmp_path):
    spy = FirstTrainingBatch()
    metrics = run_lm_training(*parse_lm_arguments(tiny_packing_flags(small_data_files, tmp_path / "run")),
                              callbacks=[spy])
    assert torch.isfinite(torch.tensor(metrics["train_loss"])) and "eval_loss" in metrics
    batch = spy.batch
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    restarts = int((batch["position_ids"][0, 1:] == 0).sum())
    assert restarts == 7, "8 whole documents in one row, positions restarting at each"
    assert int((batch["labels"] == -100).sum()) == 8
    assert "packing: true" in (tmp_path / "run" / "README.md").read_text()


def test_packing_with_carry_state_is_refused(tmp_path):
    flags = tiny_packing_flags({"train": "x.txt", "validation": "y.txt", "tokenizer": "t"}, tmp_path,
                               carry_state="true")
    with pytest.raises(ValueError, match="--packing true and --carry_state true exclude each other"):
        run_lm_training(*parse_lm_arguments(flags))
