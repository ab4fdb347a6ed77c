"""Cache of FWP models: a fixed-size fast-weight state per fast-weight layer inside transformers' caches.

Fast-weight layers keep a `FastWeightCacheLayer` (built on transformers' `LinearAttentionLayer`, so
`cache.get_recurrent_state(i)` / `update_recurrent_state(...)` work as for qwen3_next); softmax
layers keep transformers' key/value `DynamicLayer`. `prepare_fast_weight_cache` lays a user's or
`generate`'s `DynamicCache` out that way.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, DynamicLayer, LinearAttentionLayer

from .token_mixers import TOKEN_MIXERS


class FastWeightCacheLayer(LinearAttentionLayer, CacheLayerMixin):
    """Cache of one fast-weight layer: its state ``[B, H, d_key, d_value]`` (fp32) and a token count.

    The state (transformers' ``recurrent_states[0]``) has a fixed size whatever the context length.
    Unlike transformers' `LinearAttentionLayer` this layer also counts the tokens it has seen, so
    `get_seq_length()` works on a cache whose every layer is a fast-weight layer (generation asks
    for it), and it stores a new state by reference rather than copying it into a static buffer,
    so that a cached forward pass can still be differentiated.
    """

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, **kwargs) -> None:
        CacheLayerMixin.__init__(self)
        LinearAttentionLayer.__init__(self, number_of_states=1)
        self.seen_tokens = 0

    @property
    def state(self) -> torch.Tensor | None:
        """The fast-weight state, or None before the first update (and after `reset`)."""
        return self.recurrent_states[0] if self.has_previous_state[0] else None

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("A fast-weight cache layer holds a state, not keys and values: use update_state().")

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        self.recurrent_states[state_idx] = recurrent_states
        self.is_recurrent_states_initialized[state_idx] = True
        self.has_previous_state[state_idx] = True
        self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
        self.is_initialized = True
        return recurrent_states

    def update_state(self, state: torch.Tensor, num_new_tokens: int) -> None:
        """Store the state after `num_new_tokens` more tokens."""
        self.update_recurrent_state(state)
        self.seen_tokens += num_new_tokens

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        LinearAttentionLayer.reset(self)
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("A fast-weight state cannot be rolled back by cropping tokens.")

    def _map_state(self, function) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = function(self.recurrent_states[0])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_state(lambda state: state.index_select(0, beam_idx.to(state.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_state(lambda state: state.index_select(0, indices.to(state.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_state(lambda state: state.repeat_interleave(repeats, dim=0))


def prepare_fast_weight_cache(cache: Cache | None, attention_types: list[str], use_cache: bool) -> Cache | None:
    """Return a cache whose layer i is a `FastWeightCacheLayer` for every layer i whose mixer holds a state.

    `generate` and users build a `DynamicCache`, whose layers are key/value `DynamicLayer`s: the
    still-empty ones in fast-weight slots are swapped for fast-weight state layers.
    `attention_types` has one entry per layer that uses this cache.
    """
    if cache is None:
        if not use_cache:
            return None
        cache = DynamicCache()
    if not isinstance(cache, Cache):
        raise TypeError(f"past_key_values must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
    untouched = all(isinstance(layer, DynamicLayer) and layer.keys is None for layer in cache.layers)
    if untouched and (cache.layer_class_to_replicate is not None or len(cache.layers) != len(attention_types)):
        # A fresh cache (DynamicCache(), or one generate sized from another layer count): lay it out here.
        cache.layers = [DynamicLayer() for _ in attention_types]
        cache.layer_class_to_replicate = None
    if len(cache.layers) != len(attention_types):
        raise ValueError(
            f"past_key_values has {len(cache.layers)} layers, the model has {len(attention_types)}; "
            "pass DynamicCache() or DynamicCache(config=model.config)"
        )
    for idx, (kind, layer) in enumerate(zip(attention_types, cache.layers)):
        wants_state, has_state = TOKEN_MIXERS[kind].holds_state, isinstance(layer, FastWeightCacheLayer)
        if has_state and not wants_state:
            raise ValueError(
                f"past_key_values layer {idx} holds a fast-weight state but layer {idx} is {kind} (a key/value layer)"
            )
        if wants_state and not has_state:
            if isinstance(layer, DynamicLayer) and layer.keys is None:
                cache.layers[idx] = FastWeightCacheLayer()
            else:
                raise ValueError(
                    f"past_key_values layer {idx} holds keys/values but layer {idx} is a {kind!r} fast-weight layer"
                )
    return cache


__all__ = ["FastWeightCacheLayer", "prepare_fast_weight_cache"]
