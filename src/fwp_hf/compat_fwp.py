"""What the model files need from transformers beyond its public model API, and the one place where the
transformers releases that fwp_hf supports differ.

A checkpoint pushed with ``trust_remote_code`` ships these files and keeps running them under whatever
transformers its users install later, so the model files lean on as few transformers internals as they can,
and every one they do lean on is listed here.

Internals used (tested on transformers 5.21 — the oldest release `pyproject.toml` admits —, 5.23 — the pinned
one —, 5.24 and 5.25; 5.5–5.20 have a ``LinearAttentionLayer`` without the multi-state interface and
``Cache.get_recurrent_state`` used here):
- ``cache_utils.LinearAttentionLayer`` and ``CacheLayerMixin``: `FastWeightCacheLayer` subclasses
  them so that ``Cache.get_recurrent_state`` / ``update_recurrent_state`` and generate's cache bookkeeping
  (``reorder_cache``, ``batch_select_indices``, ``is_compileable``, ``get_mask_sizes``, ``get_seq_length``)
  work on a fast-weight state. ``is_compileable`` is a class attribute up to 5.23 and a read-only property
  from 5.24: `FastWeightCacheLayer` overrides it with a property, which works on both.
- ``DynamicCache.layers`` / ``layer_class_to_replicate`` and the layer classes ``DynamicLayer``,
  ``DynamicSlidingWindowLayer``, ``StaticLayer``: `prepare_fast_weight_cache` lays out the cache that
  generate or a user built (`cache_fwp.py`).
- Generation hooks: ``create_masks_for_generate`` (the masks of a compileable cache), ``_is_stateful``
  (no assisted generation), the forward's ``__signature__`` (generate inspects it at every step of a
  custom-code model), ``_supports_sdpa`` and friends, ``GradientCheckpointingLayer``, ``ALL_ATTENTION_FUNCTIONS``.
- The cache's name: ``past_key_values`` in model inputs and ``ModelOutput`` fields up to 5.23, ``cache`` from
  5.24 (the old name still works there through a shim that logs a deprecation warning). The model forwards
  take either (`cache_argument`) and write their outputs under the name the running release's output
  classes declare (`cache_field`), so neither release sees a deprecated name from fwp_hf.
- Activation checkpointing: ``PreTrainedModel.activation_checkpointing_enable`` and
  ``is_activation_checkpointing`` from 5.23, which deprecates the ``gradient_checkpointing`` names (gone in v6);
  5.21 and 5.22 have only the old names (`enable_activation_checkpointing`, `is_activation_checkpointing`).
"""

from __future__ import annotations

from typing import Any


def cache_argument(cache: Any = None, past_key_values: Any = None) -> Any:
    """The cache passed to a forward under either name: ``cache`` (transformers ≥ 5.24, what its generate
    passes) or ``past_key_values`` (≤ 5.23, and every earlier caller). Both at once is an error."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def cache_output_name(output_class: type) -> str:
    """The field under which `output_class` (a transformers ``ModelOutput`` dataclass) holds the cache in the
    running transformers: ``cache`` from 5.24 on, ``past_key_values`` before."""
    fields = getattr(output_class, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


def cache_field(output_class: type, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass to `output_class(...)`, with the name it declares (`cache_output_name`)."""
    return {cache_output_name(output_class): cache}


def generate_cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass a cache to ``generate`` (e.g. a `FastWeightStaticCache` for compiled decoding):
    generate takes it under the name the release's model outputs use (renamed together in 5.24)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return cache_field(CausalLMOutputWithPast, cache)


def output_cache(outputs: Any) -> Any:
    """The cache held by a model output of the running transformers, read under its own field name (reading
    the other name would log transformers' deprecation warning, or fail)."""
    return getattr(outputs, cache_output_name(type(outputs)), None)


def enable_activation_checkpointing(model: Any, checkpoint_kwargs: dict[str, Any] | None = None) -> None:
    """Recompute each decoder layer's activations in backward (``torch.utils.checkpoint.checkpoint`` with
    `checkpoint_kwargs`) through the running release's name for it, so that no release warns."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(checkpoint_kwargs)


def is_activation_checkpointing(model: Any) -> bool:
    """Whether `model` recomputes its layers' activations in backward, read under the running release's name."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


__all__ = ["cache_argument", "cache_field", "cache_output_name", "enable_activation_checkpointing",
           "generate_cache_kwargs", "is_activation_checkpointing", "output_cache"]
