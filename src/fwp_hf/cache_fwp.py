"""Cache of FWP models: a fixed-size fast-weight state per fast-weight layer inside transformers' caches.

Fast-weight layers keep a `FastWeightCacheLayer` (built on transformers' `LinearAttentionLayer`, so
`cache.get_recurrent_state(i)` / `update_recurrent_state(...)` work as for qwen3_next); softmax
layers keep transformers' key/value `DynamicLayer`. `prepare_fast_weight_cache` lays a user's or
`generate`'s `DynamicCache` out that way.

`FastWeightStaticCache` is the cache of transformers' compiled generation (``generate(...,
past_key_values=FastWeightStaticCache(config, batch_size), compile_config=...)``) for models whose
every layer holds a state: its states are static buffers updated in place with ``copy_`` (the
`LinearAttentionLayer` convention, which CUDA graphs need), except in a forward pass that needs
gradients, where the new state is stored by reference so that it stays differentiable.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import (
    Cache,
    CacheLayerMixin,
    DynamicCache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionLayer,
    StaticLayer,
)

from .fast_weight_kernels import WindowState
from .token_mixers import FAST_WEIGHT_LAYER, TOKEN_MIXERS


class FastWeightCacheLayer(LinearAttentionLayer, CacheLayerMixin):
    """Cache of one fast-weight layer: its state ``[B, H, d_key, d_value]`` (fp32) and a token count.

    The state (transformers' ``recurrent_states[0]``) has a fixed size whatever the context length.
    Unlike transformers' `LinearAttentionLayer` this layer also counts the tokens it has seen, so
    `get_seq_length()` works on a cache whose every layer is a fast-weight layer (generation asks
    for it). By default it stores a new state by reference rather than copying it into a static
    buffer, so that a cached forward pass can still be differentiated and a state read from the cache
    stays what it was. With ``static=True`` (`FastWeightStaticCache`) it copies each new state into
    a buffer it allocated once (`lazy_initialization`) and keeps, as transformers' linear-attention
    layers do, and declares itself compileable; a state that carries gradients is still stored by
    reference (the next state that does not goes into a fresh buffer).
    """

    is_sliding = False
    is_croppable = False
    supports_early_init = False
    # What makes a cache layer a fast-weight layer, read by `is_fast_weight_cache_layer`: a declared attribute
    # rather than the class itself, since a checkpoint loaded with trust_remote_code=True uses the class of
    # its own copy of this file (transformers_modules...cache_fwp), not the class of the installed fwp_hf.
    holds_fast_weight_state = True

    def __init__(self, static: bool = False, **kwargs) -> None:
        CacheLayerMixin.__init__(self)
        LinearAttentionLayer.__init__(self, number_of_states=1)
        self.static = static
        # Tokens seen: a Python int, or in a static layer a 0-dim int64 tensor on the state's device (from
        # `lazy_initialization`) counted in place, so that a compiled decoding step neither reads nor
        # specialises on a Python value that changes every step.
        self._token_count: int | torch.Tensor = 0
        # Whether recurrent_states[i] is this layer's own buffer (else a tensor stored by reference,
        # which may be part of an autograd graph or held by the caller: never written in place).
        self.owns_buffer = dict.fromkeys(range(self.number_of_states), False)
        self.owns_conv_buffer = dict.fromkeys(range(self.number_of_states), False)  # the same, for conv_states

    @property
    def is_compileable(self) -> bool:
        """Only a static layer is compileable: generate compiles the forward pass for a cache whose every
        layer is, and builds 4D masks for it (see `FWPForCausalLM.create_masks_for_generate`)."""
        # A property, not an attribute set in __init__: transformers ≥ 5.24 made the base class's a read-only
        # property (5.23 had a class attribute); a property of our own overrides either.
        return self.static

    @property
    def state(self) -> torch.Tensor | None:
        """The fast-weight state, or None before the first update (and after `reset`)."""
        return self.recurrent_states[0] if self.has_previous_state[0] else None

    @property
    def conv_window(self) -> torch.Tensor | None:
        """The last inputs of the layer's short convolution ``[B, channels, width − 1]`` (transformers'
        ``conv_states[0]``), or None before the first update, after `reset`, and for layers without one."""
        return self.conv_states[0] if self.has_previous_state[0] and self.is_conv_states_initialized[0] else None

    def _store(self, states: dict, owns: dict, tensor: torch.Tensor, state_idx: int, allocate) -> torch.Tensor:
        """Put `tensor` into ``states[state_idx]``: copied into this layer's own buffer (static layers;
        `allocate(tensor)` makes one that fits), or by reference (dynamic layers, and any tensor that
        carries gradients, so that it stays differentiable)."""
        keeps_graph = torch.is_grad_enabled() and tensor.requires_grad
        if self.static and not keeps_graph:
            buffer = states[state_idx]
            fits = owns[state_idx] and buffer is not None and (buffer.shape, buffer.dtype, buffer.device) == (
                tensor.shape, tensor.dtype, tensor.device
            )
            if not fits:
                allocate(tensor)
            states[state_idx].copy_(tensor)
        else:
            states[state_idx] = tensor
            owns[state_idx] = False
        return states[state_idx]

    def update_conv_window(self, window: torch.Tensor) -> torch.Tensor:
        """Store the convolution window after the new tokens (call before `update_state`, which marks the
        layer as having seen them). Stored like the state: by reference, or copied into a static buffer."""
        stored = self._store(self.conv_states, self.owns_conv_buffer, window, 0,
                             lambda tensor: self.lazy_initialization(conv_states=tensor))
        self.is_conv_states_initialized[0] = True
        return stored

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("A fast-weight cache layer holds a state, not keys and values: use update_state().")

    def lazy_initialization(self, conv_states=None, recurrent_states=None, state_idx: int = 0, **kwargs) -> None:
        """Allocate this layer's own zero buffers shaped like `recurrent_states` / `conv_states` (static layers)."""
        LinearAttentionLayer.lazy_initialization(self, recurrent_states=recurrent_states, state_idx=state_idx)
        if conv_states is not None:
            self.conv_states[state_idx] = torch.zeros_like(conv_states)
            self.is_conv_states_initialized[state_idx] = True
            self.owns_conv_buffer[state_idx] = True
        if recurrent_states is not None:
            self.owns_buffer[state_idx] = True
            self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
            self.is_initialized = True
            if not torch.is_tensor(self._token_count):
                self._token_count = torch.tensor(self._token_count, dtype=torch.int64, device=recurrent_states.device)

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        self._store(self.recurrent_states, self.owns_buffer, recurrent_states, state_idx,
                    lambda tensor: self.lazy_initialization(recurrent_states=tensor, state_idx=state_idx))
        self.is_recurrent_states_initialized[state_idx] = True
        self.has_previous_state[state_idx] = True
        self.device, self.dtype = recurrent_states.device, recurrent_states.dtype
        self.is_initialized = True
        return self.recurrent_states[state_idx]

    def update_state(self, state: torch.Tensor, num_new_tokens: int) -> None:
        """Store the state after `num_new_tokens` more tokens."""
        self.update_recurrent_state(state)
        if torch.is_tensor(self._token_count):
            self._token_count.add_(num_new_tokens)
        else:
            self._token_count += num_new_tokens

    @property
    def seen_tokens(self) -> int:
        """How many tokens the state has seen."""
        return int(self._token_count)

    @seen_tokens.setter
    def seen_tokens(self, value: int) -> None:
        if torch.is_tensor(self._token_count):
            self._token_count.fill_(value)
        else:
            self._token_count = int(value)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen_tokens + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        # Zero only this layer's own buffers; a tensor stored by reference belongs to someone else.
        if self.is_recurrent_states_initialized[0] and not self.owns_buffer[0]:
            self.recurrent_states[0], self.is_recurrent_states_initialized[0] = None, False
        if self.is_conv_states_initialized[0] and not self.owns_conv_buffer[0]:
            self.conv_states[0], self.is_conv_states_initialized[0] = None, False
        LinearAttentionLayer.reset(self)
        self.seen_tokens = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("A fast-weight state cannot be rolled back by cropping tokens.")

    def _map_state(self, function) -> None:
        if self.is_recurrent_states_initialized[0]:
            self.recurrent_states[0] = function(self.recurrent_states[0])
            self.owns_buffer[0] = False  # a new tensor: the next static update allocates a buffer for it
        if self.is_conv_states_initialized[0]:
            self.conv_states[0] = function(self.conv_states[0])
            self.owns_conv_buffer[0] = False

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What this layer carries from one call to the next: the state, then the convolution window if any."""
        conv = (self.conv_states[0],) if self.is_conv_states_initialized[0] else ()
        return (self.recurrent_states[0], *conv)

    def load_tensors(self, state: torch.Tensor, conv_window: torch.Tensor | None = None) -> None:
        """Set what `tensors` returns (the inverse of `tensors`), as if the layer had seen earlier tokens."""
        if conv_window is not None:
            self.update_conv_window(conv_window)
        self.update_recurrent_state(state)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Empty the state and the convolution window of the batch rows where `rows` ``[B]`` (bool) is True, as
        if a new sequence started there (zeros: what a layer starts from); the other rows keep theirs. The
        tensors are replaced, never written in place (a tensor stored by reference may be the caller's). The
        token count is the batch's and stays."""
        keep = ~rows.to(torch.bool).flatten()

        def reset(tensor: torch.Tensor) -> torch.Tensor:
            if keep.numel() != tensor.shape[0]:
                raise ValueError(f"reset_rows got {keep.numel()} rows for a cached batch of {tensor.shape[0]}")
            mask = keep.to(tensor.device).view(-1, *(1,) * (tensor.dim() - 1))
            return torch.where(mask, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))

        self._map_state(reset)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_state(lambda state: state.index_select(0, beam_idx.to(state.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_state(lambda state: state.index_select(0, indices.to(state.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_state(lambda state: state.repeat_interleave(repeats, dim=0))


class WindowFastWeightCacheLayer(FastWeightCacheLayer):
    """Cache of one softmax-window layer (`TokenMixerSpec.softmax_window`, ``hedgehog_window``): the kernels'
    `WindowState` — the last ``window_size − 1`` tokens' rotated keys ``[B, H, n, d]``, values ``[B, H, n, d_v]``,
    features φ(k) ``[B, H, n, D]`` and key mask ``[B, n]`` (n = ``window_size − 1`` slots from the start, empty ones
    masked), and the lagged ``[S | z]`` ``[B, H, D, d_v + 1]`` (transformers' ``recurrent_states[0]``) — a fixed size.
    Stored by reference (dynamic only: there is no static, compileable form)."""

    # declared, as `holds_fast_weight_state` is, for copies of this file in remote-code checkpoints
    holds_window = True

    def __init__(self, static: bool = False, **kwargs) -> None:
        if static:
            raise ValueError("a softmax-window layer's cache (hedgehog_window) has no static form: use DynamicCache()")
        super().__init__(static=False)
        self._window: tuple[torch.Tensor, ...] | None = None  # keys, values, features, key_mask
        self._positions: torch.Tensor | None = None  # [B] int64: real tokens of each row's current document

    @property
    def window_state(self) -> WindowState | None:
        """The carried `WindowState`, or None before the first update (and after `reset`)."""
        if self._window is None or self.state is None:
            return None
        return WindowState(*self._window, state=self.state)

    @property
    def window_positions(self) -> torch.Tensor | None:
        """``[B]`` int64: the rotary position of each row's next token (`layers_fwp.window_positions`)."""
        return self._positions

    def update_window_state(self, state: WindowState, num_new_tokens: int, positions: torch.Tensor) -> None:
        """Store the state after `num_new_tokens` more tokens and each row's next rotary position."""
        self._window = (state.keys, state.values, state.features, state.key_mask)
        self._positions = positions
        self.update_state(state.state, num_new_tokens)

    def reset(self) -> None:
        self._window, self._positions = None, None
        super().reset()

    def _map_state(self, function) -> None:
        super()._map_state(function)
        if self._window is not None:
            self._window = tuple(function(tensor) for tensor in self._window)
            self._positions = function(self._positions)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The lagged state, the window's keys, values, features and key mask, and the rows' next positions."""
        positions = () if self._positions is None else (self._positions,)
        return (self.recurrent_states[0], *(self._window or ()), *positions)

    def load_tensors(self, state: torch.Tensor, *window: torch.Tensor) -> None:
        """Set what `tensors` returns (the inverse of `tensors`)."""
        *window, positions = window
        self.update_window_state(WindowState(*window, state=state), 0, positions)


def state_cache_layer(kind: str, static: bool = False) -> FastWeightCacheLayer:
    """A new, empty cache layer for a layer of type `kind` that holds a state (what its registry entry needs)."""
    if TOKEN_MIXERS[kind].softmax_window:
        return WindowFastWeightCacheLayer(static=static)
    return FastWeightCacheLayer(static=static)


def is_fast_weight_cache_layer(layer: object) -> bool:
    """Whether `layer` is a `FastWeightCacheLayer` of any copy of this file (installed fwp_hf, or the copy a
    remote-code checkpoint runs): it declares ``holds_fast_weight_state``."""
    return bool(getattr(layer, "holds_fast_weight_state", False))


def reset_cache_rows(cache: Cache, rows: torch.Tensor) -> Cache:
    """`FastWeightCacheLayer.reset_rows` on every layer of `cache`: the rows where `rows` ``[B]`` is True
    continue from an empty state (e.g. a new document starts at the next segment's first token). A cache
    with a key/value layer is refused: its keys cannot be dropped for some rows only. Returns `cache`."""
    for idx, layer in enumerate(cache.layers):
        if not is_fast_weight_cache_layer(layer):
            raise TypeError(f"reset_cache_rows needs a fast-weight state in every layer; layer {idx} is a "
                            f"{type(layer).__name__} (a key/value cache)")
        layer.reset_rows(rows)
    return cache


def prepare_fast_weight_cache(cache: Cache | None, attention_types: list[str], use_cache: bool) -> Cache | None:
    """Return a cache whose layer i is a `FastWeightCacheLayer` for every layer i whose mixer holds a state.

    `generate` and users build a `DynamicCache`, whose layers are key/value `DynamicLayer`s: the
    still-empty ones in fast-weight slots are swapped for fast-weight state layers. A `StaticCache`
    (``generate(..., cache_implementation="static")``) gets static state layers (as in
    `FastWeightStaticCache`); softmax layers do not take its fixed-length key/value layers.
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
        if isinstance(layer, StaticLayer) and not TOKEN_MIXERS[kind].holds_state:
            raise ValueError(
                f"past_key_values layer {idx} is a fixed-length key/value layer (StaticCache, "
                f"cache_implementation='static'), which {kind!r} layers do not support: use DynamicCache (the "
                "default). A static cache suits models whose every layer holds a fast-weight state."
            )
    for idx, (kind, layer) in enumerate(zip(attention_types, cache.layers)):
        # `DynamicCache(config=...)` gives every layer of a config with `sliding_window` a layer that drops
        # old keys; FWP's softmax layers keep all keys and apply the window in their mask instead.
        if isinstance(layer, DynamicSlidingWindowLayer) and layer.keys is None:
            cache.layers[idx] = layer = DynamicLayer()
        wants_state, has_state = TOKEN_MIXERS[kind].holds_state, is_fast_weight_cache_layer(layer)
        if has_state and not wants_state:
            raise ValueError(
                f"past_key_values layer {idx} holds a fast-weight state but layer {idx} is {kind} (a key/value layer)"
            )
        if wants_state and not has_state:
            if isinstance(layer, DynamicLayer) and layer.keys is None:
                cache.layers[idx] = state_cache_layer(kind)
            elif isinstance(layer, StaticLayer) and not layer.is_initialized:
                cache.layers[idx] = state_cache_layer(kind, static=True)
            else:
                raise ValueError(
                    f"past_key_values layer {idx} holds keys/values but layer {idx} is a {kind!r} fast-weight layer"
                )
    return cache


class FastWeightStaticCache(Cache):
    """The cache of a model whose every layer holds a fast-weight state, with the states allocated up
    front as static ``[batch_size, heads, d_key, d_value]`` fp32 buffers (and, with ``use_short_conv``,
    convolution windows ``[batch_size, channels, conv_size − 1]`` in `dtype`, the model's) that each step
    overwrites in place: what transformers' compiled generation (`generate` compiles the decoding steps for a
    compileable cache other than `DynamicCache`) and CUDA graphs need.

    A softmax layer's key/value cache grows with the context, so models with one are refused here;
    they generate with the default `DynamicCache`.
    """

    def __init__(self, config, batch_size: int, device: torch.device | str | None = None,
                 attention_types: list[str] | None = None, dtype: torch.dtype = torch.float32) -> None:
        kinds = list(config.layer_attention_types if attention_types is None else attention_types)
        for idx, kind in enumerate(kinds):
            if not TOKEN_MIXERS[kind].holds_state:
                raise ValueError(
                    f"FastWeightStaticCache needs a fast-weight state in every layer, but layer {idx} is {kind!r} "
                    "(a growing key/value cache): use DynamicCache() for this model"
                )
            if TOKEN_MIXERS[kind].softmax_window:
                raise ValueError(
                    f"FastWeightStaticCache has no static form of layer {idx}'s {kind!r} cache (a window of keys and "
                    "values plus a state): use DynamicCache() for this model"
                )
        layers = []
        for kind in kinds:
            layer = FastWeightCacheLayer(static=True)
            shape = (batch_size, config.num_attention_heads, *TOKEN_MIXERS[kind].state_shape(config))
            layer.lazy_initialization(recurrent_states=torch.zeros(shape, dtype=torch.float32, device=device))
            channels = short_conv_channels(config, kind)
            if channels:
                window = torch.zeros(batch_size, channels, config.fast_weight.conv_size - 1, dtype=dtype, device=device)
                layer.lazy_initialization(conv_states=window)
            layers.append(layer)
        super().__init__(layers=layers)


def short_conv_channels(config, kind: str) -> int:
    """Channels of the short convolution of a `kind` layer under `config` (q, k and v), 0 without one."""
    if TOKEN_MIXERS[kind].layer != FAST_WEIGHT_LAYER:
        return 0
    return config.fast_weight.short_conv_channels(config.num_attention_heads, config.head_dim)


class FastWeightStateStep(torch.nn.Module):
    """A model whose every layer holds a fast-weight state, as a function of explicit states, for
    `torch.export`: ``forward(input_ids, *states) -> (logits, *new_states)``, per layer its fp32 state
    ``[batch, heads, d_key, d_value]`` and, with ``use_short_conv``, its convolution window
    ``[batch, channels, conv_size − 1]`` (`FastWeightCacheLayer.tensors`); zeros before the first token
    (`zero_states`).

    Export it twice, with prompt-shaped ``input_ids`` (prefill: the chunkwise kernels) and with one
    token per sequence (decoding: the recurrent kernels), and hand each program's states to the next
    call. transformers' own recipe (`TorchExportableModuleForDecoderOnlyLM`) cannot take a recurrent
    state: it registers the key/value buffers of `StaticCache` layers, which state layers do not have.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.kinds = list(model.config.layer_attention_types)
        FastWeightStaticCache(model.config, 1, device="meta", attention_types=self.kinds)  # refuses key/value layers
        self.tensors_per_layer = [1 + bool(short_conv_channels(model.config, kind)) for kind in self.kinds]

    def zero_states(self, batch_size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
        """The states before the first token."""
        cache = FastWeightStaticCache(self.model.config, batch_size, device=device, attention_types=self.kinds,
                                      dtype=self.model.dtype)
        return tuple(tensor for layer in cache.layers for tensor in layer.tensors())

    def forward(self, input_ids: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(states) != sum(self.tensors_per_layer):
            raise ValueError(
                f"pass {sum(self.tensors_per_layer)} state tensors (per layer its state, then its convolution window "
                f"if it has one), got {len(states)}"
            )
        cache = Cache(layers=[FastWeightCacheLayer() for _ in self.kinds])
        position = 0
        for layer, count in zip(cache.layers, self.tensors_per_layer):
            layer.load_tensors(*states[position : position + count])
            position += count
        logits = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, return_dict=True).logits
        return (logits, *(tensor for layer in cache.layers for tensor in layer.tensors()))


__all__ = [
    "FastWeightCacheLayer", "FastWeightStateStep", "FastWeightStaticCache", "WindowFastWeightCacheLayer",
    "prepare_fast_weight_cache", "is_fast_weight_cache_layer", "reset_cache_rows", "state_cache_layer",
]
