"""Synthetic experiments of the two papers: task generators and the small models that solve them.

* Schlag, Irie & Schmidhuber 2021, §4.1 — associative retrieval with a fast-weight memory
  (:func:`make_retrieval_batch`, :class:`RetrievalModel`): S (key, value) pairs are written into the
  memory with the sum or delta rule, then every key present is queried; the target is the one-hot
  value last written to it. Setting 1 (capacity): S unique keys, sequence length S. Setting 2
  (updates): sequence length 2S, keys drawn with replacement.
* Ba et al. 2016 — associative retrieval strings ``"c9k8j3f1??c" -> "9"``
  (:func:`make_ba_retrieval_dataset`), solved by an RNN with Ba et al.'s fast-weight memory
  (:class:`FastWeightsRNN`) or an LSTM of the same hidden size (:class:`LSTMClassifier`).

All fast-weight math (feature maps, sum/delta rules, Hebbian update, inner loop) comes from
:mod:`fast_weight_kernels`; this module only builds inputs, projections and read-outs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..fast_weight_kernels import (
    append_normalizer_column,
    divide_by_normalizer,
    fast_weights_inner_loop,
    hebbian_update,
    sum_normalize,
)
from ..feature_maps_fwp import FEATURE_MAPS, DPFPOptions, FavorOptions, draw_orthogonal_random_features
from ..shared.cli import parse_config_and_flags
from ..token_mixers import TOKEN_MIXERS

# ==============================================================================================
# Schlag et al. 2021 §4.1: associative retrieval with a fast-weight memory
# ==============================================================================================


@dataclass
class RetrievalBatch:
    """One batch of the Schlag et al. retrieval task.

    key_ids, value_ids: ``[B, T]`` the written pairs (ids in ``[0, num_keys)`` / ``[0, num_values)``);
    query_ids: ``[B, num_keys]`` every key id, queried in order; query_mask: ``[B, num_keys]`` True
    where the key occurs in the sequence; target_ids: ``[B, num_keys]`` the value last written to the
    queried key (``-1`` where the key does not occur).
    """

    key_ids: torch.Tensor
    value_ids: torch.Tensor
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    target_ids: torch.Tensor


def make_retrieval_batch(
    num_keys: int,
    batch_size: int,
    with_replacement: bool,
    generator: torch.Generator | None = None,
    num_values: int | None = None,
) -> RetrievalBatch:
    """Sample a batch of the retrieval task (Schlag et al. 2021, official ``synthetic/`` set-up).

    Setting 1 (``with_replacement=False``): the sequence is a random permutation of the S =
    ``num_keys`` keys, each paired with a distinct random value (sequence length S).
    Setting 2 (``with_replacement=True``): sequence length 2S, keys and values drawn uniformly with
    replacement, so keys repeat and the target of a key is the value written at its *last* occurrence.
    """
    if num_keys < 1 or batch_size < 1:
        raise ValueError(f"num_keys and batch_size must be >= 1, got {num_keys} and {batch_size}")
    num_values = num_keys if num_values is None else num_values
    if not with_replacement and num_values < num_keys:
        raise ValueError(f"setting 1 needs num_values >= num_keys for distinct values, got {num_values} < {num_keys}")
    if with_replacement:
        seq_len = 2 * num_keys
        key_ids = torch.randint(num_keys, (batch_size, seq_len), generator=generator)
        value_ids = torch.randint(num_values, (batch_size, seq_len), generator=generator)
    else:
        seq_len = num_keys
        key_ids = torch.rand(batch_size, num_keys, generator=generator).argsort(dim=-1)
        value_ids = torch.rand(batch_size, num_values, generator=generator).argsort(dim=-1)[:, :seq_len]
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    last_position = torch.full((batch_size, num_keys), -1, dtype=torch.long)
    last_position.scatter_reduce_(1, key_ids, positions, reduce="amax", include_self=True)
    query_mask = last_position >= 0
    target_ids = value_ids.gather(1, last_position.clamp_min(0)).masked_fill(~query_mask, -1)
    query_ids = torch.arange(num_keys).expand(batch_size, num_keys).clone()
    return RetrievalBatch(key_ids, value_ids, query_ids, query_mask, target_ids)


# The experiment's memories (the paper's names) and the registry entry whose update rule each uses;
# softmax is the baseline without fast weights.
RETRIEVAL_UPDATE_RULES = {"softmax": None, "sum": TOKEN_MIXERS["linear"], "delta": TOKEN_MIXERS["delta"]}
RETRIEVAL_MEMORIES = tuple(RETRIEVAL_UPDATE_RULES)
RETRIEVAL_FEATURE_MAPS = tuple(FEATURE_MAPS)


def parse_retrieval_method(method: str) -> dict:
    """Model kwargs for a method name: ``softmax``, ``[sum_|delta_]`` + ``linear|dpfp<ν>|favor<m>``.

    ``linear`` is φ = elu + 1; no prefix means the sum rule. E.g. ``dpfp2``, ``delta_linear``, ``favor64``.
    """
    if method == "softmax":
        return {"memory": "softmax"}
    memory, _, feature = method.rpartition("_")
    memory = memory or "sum"
    if memory not in ("sum", "delta"):
        raise ValueError(f"unknown update rule in method {method!r}; use 'sum_' or 'delta_' as prefix")
    if feature == "linear":
        return {"memory": memory, "feature_map": "elu"}
    if feature.startswith("dpfp") and feature[4:].isdigit():
        return {"memory": memory, "feature_map": "dpfp", "dpfp_nu": int(feature[4:])}
    if feature.startswith("favor") and feature[5:].isdigit():
        return {"memory": memory, "feature_map": "favor", "favor_features": int(feature[5:])}
    raise ValueError(
        f"unknown method {method!r}; expected 'softmax' or [sum_|delta_](linear|dpfp<nu>|favor<m>), e.g. 'dpfp2'"
    )


class RetrievalModel(nn.Module):
    """Key/value writer and query reader for the retrieval task (Schlag et al. 2021, §4.1).

    Write token t: ``x_t = [onehot(v_t), E k_t]``, key ``k_t = W_k x_t ∈ R^{d_key}``, value
    ``onehot(v_t)`` (not learned), rate ``β_t = σ(W_β x_t)`` (delta rule only). Query ``q = W_q E key``.
    The memory is written with every pair and then read once per query:

    * ``sum``:   sum rule with attention normalisation, ``ŷ = Wφ(q) / (z·φ(q))`` (official ``sum``);
    * ``delta``: delta rule with sum-normalised ``φ(k)``, ``φ(q)`` (official ``ours``);
    * ``softmax``: ``ŷ = softmax(K q / √d) V`` over the written pairs (baseline, no fast weights).

    Writes and reads both go through the library kernels: one call writes every pair and returns the
    state, a second call with zero keys (which write nothing) reads it with every query.
    FAVOR+ draws new random features ω at every forward pass, as in the official code.
    """

    def __init__(
        self,
        num_keys: int,
        num_values: int | None = None,
        key_dim: int = 64,
        embedding_dim: int = 64,
        memory: str = "sum",
        feature_map: str = "elu",
        dpfp_nu: int = 1,
        favor_features: int = 64,
    ) -> None:
        super().__init__()
        if memory not in RETRIEVAL_MEMORIES:
            raise ValueError(f"unknown memory {memory!r}; allowed: {RETRIEVAL_MEMORIES}")
        if memory != "softmax" and feature_map not in RETRIEVAL_FEATURE_MAPS:
            raise ValueError(f"unknown feature_map {feature_map!r}; allowed: {RETRIEVAL_FEATURE_MAPS}")
        self.num_keys = num_keys
        self.num_values = num_keys if num_values is None else num_values
        self.key_dim, self.memory, self.feature_map = key_dim, memory, feature_map
        self.update_rule = RETRIEVAL_UPDATE_RULES[memory]
        self.dpfp_nu, self.favor_features = dpfp_nu, favor_features
        options = {"dpfp": DPFPOptions(nu=dpfp_nu), "favor": FavorOptions(num_features=favor_features)}
        self.feature_map_options = options.get(feature_map) or (
            FEATURE_MAPS[feature_map].options() if feature_map in FEATURE_MAPS else None)
        self.key_embedding = nn.Embedding(num_keys, embedding_dim)
        nn.init.normal_(self.key_embedding.weight, std=1.0)
        write_dim = embedding_dim + self.num_values
        self.key_proj = nn.Linear(write_dim, key_dim)
        self.query_proj = nn.Linear(embedding_dim, key_dim)
        uses_beta = self.update_rule is not None and "beta" in self.update_rule.gates
        self.beta_proj = nn.Linear(write_dim, 1) if uses_beta else None
        bound = key_dim**-0.5
        nn.init.uniform_(self.key_proj.weight, -bound, bound)
        nn.init.uniform_(self.query_proj.weight, -bound, bound)

    @property
    def feature_dim(self) -> int:
        """d_dot, the size of φ's output (``key_dim`` for softmax)."""
        if self.update_rule is None:
            return self.key_dim
        return FEATURE_MAPS[self.feature_map].output_dim(self.key_dim, self.feature_map_options)

    def _features(self, x: torch.Tensor, projection: torch.Tensor | None) -> torch.Tensor:
        features = FEATURE_MAPS[self.feature_map].apply(x, self.feature_map_options, {"projection": projection})
        return sum_normalize(features) if self.update_rule.key_normalization == "sum" else features

    def forward(self, key_ids: torch.Tensor, value_ids: torch.Tensor, query_ids: torch.Tensor) -> torch.Tensor:
        """key_ids, value_ids: ``[B, T]``; query_ids: ``[B, Q]`` → predicted values ``[B, Q, num_values]``."""
        if key_ids.shape != value_ids.shape or key_ids.dim() != 2:
            raise ValueError(
                f"key_ids and value_ids must both be [B, T], got {tuple(key_ids.shape)}, {tuple(value_ids.shape)}"
            )
        values = F.one_hot(value_ids, self.num_values).float()
        write_input = torch.cat([values, self.key_embedding(key_ids)], dim=-1)
        keys = self.key_proj(write_input)  # [B, T, d]
        queries = self.query_proj(self.key_embedding(query_ids))  # [B, Q, d]
        rule = self.update_rule
        if rule is None:
            scores = queries @ keys.transpose(-1, -2) / math.sqrt(self.key_dim)
            return scores.softmax(dim=-1) @ values

        projection = None
        if FEATURE_MAPS[self.feature_map].random_features:
            projection = draw_orthogonal_random_features(self.favor_features, self.key_dim, device=keys.device)
        # Head dim of size 1. Write every pair (the kernel's outputs are not needed, only the state),
        # then read the state with all queries through the same kernel with zero writes.
        k, q = self._features(keys, projection).unsqueeze(1), self._features(queries, projection).unsqueeze(1)
        v = values.unsqueeze(1)
        if rule.attention_normalization:
            v = append_normalizer_column(v)  # the sum rule's read is divided by z·φ(q)
        num_writes, num_queries = k.shape[2], q.shape[2]
        write_gates, read_gates = {}, {}
        if self.beta_proj is not None:
            write_gates["beta"] = torch.sigmoid(self.beta_proj(write_input)).squeeze(-1).unsqueeze(1)  # [B, 1, T]
            read_gates["beta"] = q.new_zeros(q.shape[:3])
        _, state = rule.chunk(k, k, v, chunk_size=num_writes, **write_gates)  # state [B, 1, d_dot, Dv (+1)]
        no_values = v.new_zeros(v.shape[0], 1, num_queries, v.shape[-1])
        y, _ = rule.chunk(q, q.new_zeros(q.shape), no_values, initial_state=state, chunk_size=num_queries, **read_gates)
        if rule.attention_normalization:
            y = divide_by_normalizer(y, values.dtype)
        return y[:, 0]


def retrieval_loss(prediction: torch.Tensor, batch: RetrievalBatch) -> torch.Tensor:
    """``0.5‖y − ŷ‖²`` against the one-hot target, averaged over the valid queries of the batch."""
    target = F.one_hot(batch.target_ids.clamp_min(0), prediction.shape[-1]).float()
    per_query = 0.5 * (target - prediction).pow(2).sum(dim=-1)
    mask = batch.query_mask.float()
    return (per_query * mask).sum() / mask.sum()


# ==============================================================================================
# Ba et al. 2016: associative retrieval strings "c9k8j3f1??c" -> "9"
# ==============================================================================================

BA_LETTERS = string.ascii_lowercase
BA_DIGITS = string.digits
BA_VOCAB = BA_LETTERS + BA_DIGITS + "?"  # 37 symbols: letter i -> i, digit j -> 26 + j, '?' -> 36
BA_QUERY_MARK = BA_VOCAB.index("?")


@dataclass
class BaRetrievalDataset:
    """Token ids ``[N, 2·num_pairs + 3]`` (pairs, ``??``, query letter) and target digits ``[N]`` in 0..9."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


def make_ba_retrieval_dataset(num_sequences: int, num_pairs: int = 4, seed: int = 0) -> BaRetrievalDataset:
    """Ba et al.'s retrieval task: ``num_pairs`` distinct letter keys with random digit values, then
    ``??`` and one of the keys; the target is that key's digit. Deterministic given ``seed``.
    """
    if not 1 <= num_pairs <= len(BA_LETTERS):
        raise ValueError(f"num_pairs must be in 1..26, got {num_pairs}")
    if num_sequences < 1:
        raise ValueError(f"num_sequences must be >= 1, got {num_sequences}")
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(num_sequences, len(BA_LETTERS), generator=generator).argsort(dim=-1)[:, :num_pairs]
    digits = torch.randint(len(BA_DIGITS), (num_sequences, num_pairs), generator=generator)
    query_slot = torch.randint(num_pairs, (num_sequences, 1), generator=generator)
    pairs = torch.stack([keys, digits + len(BA_LETTERS)], dim=-1).reshape(num_sequences, 2 * num_pairs)
    marks = torch.full((num_sequences, 2), BA_QUERY_MARK, dtype=torch.long)
    inputs = torch.cat([pairs, marks, keys.gather(1, query_slot)], dim=1)
    return BaRetrievalDataset(inputs, digits.gather(1, query_slot).squeeze(1))


def ba_decode(token_ids: torch.Tensor) -> str:
    """Token ids ``[T]`` -> the task string, e.g. ``"c9k8j3f1??c"``."""
    return "".join(BA_VOCAB[i] for i in token_ids.tolist())


def ba_encode(text: str) -> torch.Tensor:
    """Task string -> token ids ``[T]``."""
    unknown = set(text) - set(BA_VOCAB)
    if unknown:
        raise ValueError(f"characters {sorted(unknown)} are not in the vocabulary (a-z, 0-9, '?')")
    return torch.tensor([BA_VOCAB.index(c) for c in text], dtype=torch.long)


def digit_head(hidden_size: int, output_hidden_size: int) -> nn.Sequential:
    """Both associative-retrieval models' classifier: the last hidden state ``h_T`` -> ``relu(U h_T)`` -> logits
    over the 10 digits (`BA_DIGITS`)."""
    return nn.Sequential(nn.Linear(hidden_size, output_hidden_size), nn.ReLU(),
                         nn.Linear(output_hidden_size, len(BA_DIGITS)))


class FastWeightsRNN(nn.Module):
    """RNN with Ba et al.'s fast associative memory over the task's characters, then `digit_head`.

    Per token: ``z_t = W h_{t-1} + C x_t``; inner loop ``h⁰ = relu(z_t)``,
    ``h^{s+1} = relu(LN(z_t + A_{t-1} h^s))`` for S steps (``fast_weights_inner_loop``);
    ``h_t = h^S``; memory ``A_t = λ A_{t-1} + η h_t h_tᵀ`` (``hebbian_update``). ``A_0 = 0``, ``h_0 = 0``.
    Logits over the 10 digits come from ``relu(U h_T)`` of the last token.
    """

    def __init__(
        self,
        hidden_size: int,
        output_hidden_size: int = 100,
        decay: float = 0.95,
        fast_learning_rate: float = 0.5,
        inner_steps: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay λ must be in (0, 1], got {decay}")
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        self.hidden_size, self.decay, self.fast_learning_rate, self.inner_steps = (
            hidden_size,
            decay,
            fast_learning_rate,
            inner_steps,
        )
        self.input_proj = nn.Embedding(len(BA_VOCAB), hidden_size)  # C x_t for one-hot x_t
        self.recurrent = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.eye_(self.recurrent.weight)
        self.recurrent.weight.data.mul_(0.05)  # Ba et al.: slow weights initialised to 0.05·I
        self.ln_weight = nn.Parameter(torch.ones(hidden_size))
        self.ln_bias = nn.Parameter(torch.zeros(hidden_size))
        self.head = digit_head(hidden_size, output_hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids ``[B, T]`` -> logits ``[B, 10]``."""
        batch, seq_len = input_ids.shape
        inputs = self.input_proj(input_ids)
        hidden = inputs.new_zeros(batch, self.hidden_size)
        memory = inputs.new_zeros(batch, self.hidden_size, self.hidden_size)
        log_decay = math.log(self.decay)
        for t in range(seq_len):
            drive = self.recurrent(hidden) + inputs[:, t]

            def read(h: torch.Tensor, a: torch.Tensor = memory) -> torch.Tensor:  # binds this step's A_{t-1}
                return torch.einsum("bk,bkv->bv", h, a)  # A_{t-1} h (A is symmetric)

            hidden = fast_weights_inner_loop(drive, read, self.inner_steps, self.ln_weight, self.ln_bias)
            memory = hebbian_update(memory, self.fast_learning_rate * hidden, hidden, log_decay)
        return self.head(hidden)


class LSTMClassifier(nn.Module):
    """LSTM baseline of the same hidden size: one-hot input over the task's characters, ``nn.LSTM``, the same
    `digit_head`."""

    def __init__(self, hidden_size: int, output_hidden_size: int = 100) -> None:
        super().__init__()
        self.lstm = nn.LSTM(len(BA_VOCAB), hidden_size, batch_first=True)
        self.head = digit_head(hidden_size, output_hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids ``[B, T]`` -> logits ``[B, 10]``."""
        outputs, _ = self.lstm(F.one_hot(input_ids, len(BA_VOCAB)).float())
        return self.head(outputs[:, -1])


# ==============================================================================================
# Running an experiment: arguments (a YAML/JSON config file overridable by flags), results, plots
# ==============================================================================================


def parse_args_with_config(dataclass_type: type, argv: list[str] | None = None):
    """Parse ``argv`` into ``dataclass_type``: ``--config FILE`` (YAML or JSON) sets the defaults, any
    other flag overrides them; unknown keys in the file are an error."""
    return parse_config_and_flags([dataclass_type], sys.argv[1:] if argv is None else argv)[0]


def start_experiment(
    dataclass_type: type,
    argv: list[str] | None,
    quick_arguments: Callable[[Any], Any],
    check_arguments: Callable[[Any], None],
) -> tuple[Any, Path]:
    """The experiment's arguments (``--quick`` applied, then checked) and its output folder, created.

    Experiments run on one torch thread, so that their timings do not depend on the machine's cores.
    """
    args = parse_args_with_config(dataclass_type, argv)
    if args.quick:
        args = quick_arguments(args)
    check_arguments(args)
    torch.set_num_threads(1)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return args, output_dir


def check_counts(args: Any, names: Sequence[str]) -> None:
    """A ValueError naming the first of the arguments `names` (counts: sequences, steps, ...) that is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")


def new_figure():
    """A (figure, axes) pair of the experiments' plots, drawn without a display."""
    import matplotlib  # noqa: PLC0415 - optional dependency of the examples

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt.subplots(figsize=(7, 4.5))


def save_figure(figure, axes, path: Path) -> None:
    """Add the legend, save `figure` to `path` and close it."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def finish_experiment(
    args, output_dir: Path, started: float, table: str, figure_name: str, draw: Callable[[Path], None], **fields
) -> dict:
    """Write ``results.json`` (the arguments, timing and `fields`), ``table.md`` and the figure; print the table."""
    results = {
        "arguments": dataclasses.asdict(args),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
        **fields,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    (output_dir / "table.md").write_text(table)
    draw(output_dir / figure_name)
    print(table)
    print(f"wrote {output_dir / 'results.json'}, table.md and {figure_name} in {results['total_seconds']:.0f}s")
    return results
