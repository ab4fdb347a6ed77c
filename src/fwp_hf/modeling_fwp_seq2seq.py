"""FWP encoder–decoder (T5-style) for translation: `FWPSeq2SeqModel` and `FWPForConditionalGeneration`.

Built from the same `FWPConfig` with ``is_encoder_decoder=True``. The encoder runs every token mixer
in the form its registry entry's `encoder_form` names: order-free where one exists (softmax, and the
sum rules as ``φ(Q)(φ(K)ᵀV)``), left to right for the recurrences without one (the delta rules, Ba
et al.'s memory). The decoder runs the causal mixers with their recurrent state, then attends to the
encoder output (`cross_attention_type`: softmax, or a sum rule ``φ(q)ᵀS`` with the encoder's fast
weights S written once per source). All math comes from `fast_weight_kernels.py` through the layers
of `layers_fwp.py`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.loss.loss_utils import ForMaskedLMLoss
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .cache_fwp import prepare_fast_weight_cache
from .compat_fwp import cache_argument, cache_field, output_cache
from .configuration_fwp import FWPConfig
from .fast_weight_kernels import OrderFreeKernel, append_normalizer_column, divide_by_normalizer
from .inputs_fwp import padding_mask_2d, prepare_mixer_inputs, token_mask_from_padding
from .layers_fwp import (
    FWPMLP,
    FWPBlock,
    FWPRMSNorm,
    MixerInputs,
    attention_function_kwargs,
    build_feature_map,
    build_token_mixer,
    eager_attention_forward,
    merge_heads,
    residual_mix,
    split_heads,
)
from .modeling_fwp import MODEL_CODE_FILES, FWPPreTrainedModel, FWPStack
from .token_mixers import TOKEN_MIXERS

SEQ2SEQ_MODEL_CODE_FILES = (*MODEL_CODE_FILES, "modeling_fwp_seq2seq.py")

SEQ2SEQ_AUTO_MAP = {
    "AutoConfig": "configuration_fwp.FWPConfig",
    "AutoModel": "modeling_fwp_seq2seq.FWPSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_fwp_seq2seq.FWPForConditionalGeneration",
}


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: ``[start, y_0, …, y_{T-2}]`` with -100 replaced by the pad id."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class FWPCrossAttention(nn.Module):
    """Decoder → encoder attention. The encoder side (keys/values, or the linear fast weights) is
    computed once per source and kept in the cross-attention half of the cache during generation.

    - softmax (an entry without a fast-weight state): ``softmax(q kᵀ/√d) v`` over the unpadded
      source tokens (no positions), through the attention function ``config._attn_implementation``
      selects (SDPA by default; ``"eager"`` also returns the weights ``[B, H, T_target, T_source]``).
    - a sum rule (``"linear"``, ``"performer"``, ``"dpfp"``): ``S = Σ_j φ(k_j)[v_j, 1]ᵀ`` over the
      source, ``y = φ(q)ᵀS / normaliser``, with the entry's φ (always normalised); no T×T matrix.

    Returns ``(output, weights)``; weights are None unless softmax runs eagerly.
    """

    is_causal = False

    def __init__(self, config: FWPConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.kind = config.cross_attention_type
        self.uses_fast_weights = TOKEN_MIXERS[self.kind].holds_state
        self.num_heads = config.num_attention_heads
        self.scaling = 1 / math.sqrt(config.head_dim)  # exactly SDPA's default scale
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        if self.uses_fast_weights:
            self.feature_map = build_feature_map(config, TOKEN_MIXERS[self.kind], config.head_dim, layer_idx,
                                                 allow_redraw=False)

    def _order_free_kernel(self) -> OrderFreeKernel:
        """The order-free kernel of the registry entry of `cross_attention_type` (the sum rules; a
        non-causal kernel reads a whole source, whatever its length)."""
        return TOKEN_MIXERS[self.kind].kernel(0, causal=False)

    def _source_memory(self, inputs: MixerInputs):
        """The encoder side, computed once per source: softmax keys and values ``[B, H, S, d]``, or the
        fast weights ``S = write(φ(K), [V, 1])`` ``[B, H, d_dot, d + 1]`` (padded source tokens write
        nothing; φ(k) is shifted so that φ(q)·φ(k) cannot overflow, FAVOR+)."""
        k = split_heads(self.k_proj(inputs.encoder_hidden_states), self.num_heads)
        v = split_heads(self.v_proj(inputs.encoder_hidden_states), self.num_heads)
        if not self.uses_fast_weights:
            return k, v
        k = self.feature_map.key_features(k)
        if inputs.encoder_token_mask is not None:
            k = k * inputs.encoder_token_mask[:, None, :, None].to(k.dtype)
        return self._order_free_kernel().write(k, append_normalizer_column(v))

    def _softmax_read(self, inputs: MixerInputs, cache_layer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``softmax(q kᵀ/√d) v`` over the unpadded source tokens: ``(y [B, H, T, d], weights or None)``."""
        if cache_layer is not None and cache_layer.keys is not None:
            k, v = cache_layer.keys, cache_layer.values
        else:
            k, v = self._source_memory(inputs)
            if cache_layer is not None:
                cache_layer.update(k, v)
        q = split_heads(self.q_proj(inputs.hidden_states), self.num_heads)
        mask = None
        if inputs.encoder_token_mask is not None:
            mask = inputs.encoder_token_mask[:, None, None, :].bool()
        # Written out in this module (not behind a helper): transformers' _can_set_attn_implementation
        # allows set_attn_implementation only when a module's source contains this call.
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        y, weights = attention_interface(
            self, q, k, v, mask, scaling=self.scaling, **attention_function_kwargs(inputs.output_attentions)
        )
        return y.transpose(1, 2), weights  # back to [B, H, T, d], as the fast-weight read returns it

    def _fast_weight_read(self, inputs: MixerInputs, cache_layer) -> torch.Tensor:
        """``φ(q)ᵀS / (z·φ(q) + ε)`` from the source's fast weights: ``[B, H, T, d]``."""
        if cache_layer is not None and cache_layer.state is not None:
            state = cache_layer.state
        else:
            state = self._source_memory(inputs)
            if cache_layer is not None:
                cache_layer.update_state(state, inputs.encoder_hidden_states.shape[1])
        q, log_scale = self.feature_map.query_features(split_heads(self.q_proj(inputs.hidden_states), self.num_heads))
        y = self._order_free_kernel().read(q.float(), state)  # fp32: divided before any rounding
        return divide_by_normalizer(y, q.dtype, log_scale=log_scale)

    def forward(self, inputs: MixerInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reads ``inputs.encoder_hidden_states`` (``encoder_token_mask``: padded source tokens) from the
        decoder's ``inputs.hidden_states``; ``inputs.cache`` is the cross-attention half of the cache."""
        cache_layer = inputs.cache_layer(self.layer_idx)
        if self.uses_fast_weights:
            y, weights = self._fast_weight_read(inputs, cache_layer), None
        else:
            y, weights = self._softmax_read(inputs, cache_layer)
        return self.o_proj(merge_heads(y.to(inputs.hidden_states.dtype))), weights


class FWPSeq2SeqDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder block: causal self mixer, cross-attention to the encoder, SwiGLU MLP."""

    def __init__(self, config: FWPConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention_type = config.decoder_layer_attention_types[layer_idx]
        self.mixer = build_token_mixer(config, layer_idx, self.attention_type, is_causal=True)
        self.cross_attn = FWPCrossAttention(config, layer_idx)
        self.input_layernorm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.cross_attention_layernorm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = FWPMLP(config)

    def attention_types(self) -> tuple[str, ...]:
        """The attention type behind each attention-weights entry `forward` returns (self, cross)."""
        return self.attention_type, self.cross_attn.kind

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_token_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        cross_attention_cache: Cache | None = None,
        output_attentions: bool = False,
        **mixer_inputs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns ``(hidden_states, self-attention weights, cross-attention weights)``; the weights
        are None unless the (cross-)attention is softmax and runs eagerly. `mixer_inputs`: the self
        mixer's other `MixerInputs` fields (`inputs_fwp.prepare_mixer_inputs`)."""
        hidden_states, self_weights = residual_mix(
            self.mixer, self.input_layernorm, hidden_states, cache=past_key_values,
            output_attentions=output_attentions, **mixer_inputs,
        )
        hidden_states, cross_weights = residual_mix(
            self.cross_attn, self.cross_attention_layernorm, hidden_states, cache=cross_attention_cache,
            output_attentions=output_attentions, encoder_hidden_states=encoder_hidden_states,
            encoder_token_mask=encoder_token_mask,
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), self_weights, cross_weights


def _source_token_mask(attention_mask: torch.Tensor | dict | None, batch: int, length: int) -> torch.Tensor | None:
    mask = padding_mask_2d(attention_mask)
    if mask is None:
        return None
    if mask.shape != (batch, length):
        raise ValueError(
            f"the source attention_mask must have shape [batch={batch}, source tokens={length}], "
            f"got {tuple(mask.shape)}"
        )
    return token_mask_from_padding(mask)


class FWPEncoder(FWPStack):
    """The encoder stack: embeddings, `num_hidden_layers` non-causal blocks, final RMSNorm."""

    attention_names = ("encoder layers",)

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(
            config,
            lambda: [FWPBlock(config, i, kind, is_causal=False) for i, kind in enumerate(config.layer_attention_types)],
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """``attentions`` (with ``output_attentions=True``): one entry per encoder layer, as in
        `FWPModel.forward` (non-causal weights for softmax layers under eager attention)."""
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        output_attentions, output_hidden_states, return_dict = self.output_options(
            output_attentions, output_hidden_states, return_dict
        )
        mixer_inputs = prepare_mixer_inputs(
            self.config, self.config.layer_attention_types, attention_mask, None, inputs_embeds, 0, causal=False
        )
        stack = self.run_layers(
            inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            past_key_values=None, **mixer_inputs,
        )
        output = BaseModelOutput(
            last_hidden_state=stack.last_hidden_state, hidden_states=stack.hidden_states, attentions=stack.attentions[0]
        )
        return output if return_dict else output.to_tuple()


class FWPDecoder(FWPStack):
    """The decoder stack: embeddings, `num_decoder_layers` blocks with cross-attention, final RMSNorm."""

    attention_names = ("decoder layers", "cross-attention layers")

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config, lambda: [FWPSeq2SeqDecoderLayer(config, i) for i in range(config.num_decoder_layers)])

    def _prepare_caches(self, past_key_values: Cache | None, use_cache: bool) -> EncoderDecoderCache | None:
        if past_key_values is None:
            if not use_cache:
                return None
            past_key_values = EncoderDecoderCache(DynamicCache(), DynamicCache())
        if not isinstance(past_key_values, EncoderDecoderCache):
            raise TypeError(
                "past_key_values of an encoder-decoder model must be an EncoderDecoderCache, "
                f"got {type(past_key_values).__name__}"
            )
        prepare_fast_weight_cache(past_key_values.self_attention_cache, self.config.decoder_layer_attention_types, True)
        cross_kinds = [self.config.cross_attention_type] * self.config.num_decoder_layers
        prepare_fast_weight_cache(past_key_values.cross_attention_cache, cross_kinds, True)
        return past_key_values

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """With ``output_attentions=True``: ``attentions`` (self-attention) and ``cross_attentions``, one
        entry per decoder layer each, as in `FWPModel.forward` (softmax cross-attention gives
        ``[B, H, T_target, T_source]`` under eager attention; linear cross-attention gives None).
        The cache may be passed as ``cache`` or ``past_key_values`` (`compat_fwp`)."""
        past_key_values = cache_argument(cache, past_key_values)
        inputs_embeds = self.embed(input_ids, inputs_embeds, "decoder_input_ids", "decoder_inputs_embeds")
        if encoder_hidden_states is None:
            raise ValueError("the decoder needs encoder_hidden_states (pass input_ids or encoder_outputs)")
        use_cache = self.wants_cache(use_cache)
        output_attentions, output_hidden_states, return_dict = self.output_options(
            output_attentions, output_hidden_states, return_dict
        )
        if encoder_hidden_states.shape[0] != inputs_embeds.shape[0]:
            raise ValueError(
                f"encoder output has batch {encoder_hidden_states.shape[0]}, "
                f"decoder inputs have {inputs_embeds.shape[0]}"
            )
        past_key_values = self._prepare_caches(past_key_values, use_cache)
        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        cross_cache = past_key_values.cross_attention_cache if past_key_values is not None else None
        past_length = self_cache.get_seq_length if self_cache is not None else 0  # asked where needed
        kinds = self.config.decoder_layer_attention_types
        mixer_inputs = prepare_mixer_inputs(
            self.config, kinds, attention_mask, position_ids, inputs_embeds, past_length,
            mask_name="decoder_attention_mask"
        )
        encoder_token_mask = _source_token_mask(encoder_attention_mask, *encoder_hidden_states.shape[:2])

        stack = self.run_layers(
            inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            encoder_hidden_states=encoder_hidden_states, encoder_token_mask=encoder_token_mask,
            past_key_values=self_cache, cross_attention_cache=cross_cache, **mixer_inputs,
        )
        self_attentions, cross_attentions = stack.attentions
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=stack.last_hidden_state,
            **cache_field(BaseModelOutputWithPastAndCrossAttentions, past_key_values if use_cache else None),
            hidden_states=stack.hidden_states,
            attentions=self_attentions,
            cross_attentions=cross_attentions,
        )
        return output if return_dict else output.to_tuple()


class FWPSeq2SeqPreTrainedModel(FWPPreTrainedModel):
    _auto_map = SEQ2SEQ_AUTO_MAP
    _code_files = SEQ2SEQ_MODEL_CODE_FILES
    _no_split_modules = ["FWPBlock", "FWPSeq2SeqDecoderLayer"]


class FWPSeq2SeqModel(FWPSeq2SeqPreTrainedModel):
    """The bare FWP encoder–decoder: shared embeddings, `FWPEncoder`, `FWPDecoder`."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.encoder = FWPEncoder(config)
        self.decoder = FWPDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> FWPEncoder:
        return self.encoder

    def get_decoder(self) -> FWPDecoder:
        return self.decoder

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> Seq2SeqModelOutput | tuple:
        """With ``output_attentions=True``: ``encoder_attentions``, ``decoder_attentions`` and
        ``cross_attentions``, one entry per layer (see `FWPEncoder.forward`, `FWPDecoder.forward`); the
        cache as ``cache`` or ``past_key_values``."""
        past_key_values = cache_argument(cache, past_key_values)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            position_ids=decoder_position_ids,
            past_key_values=past_key_values,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **cache_field(Seq2SeqModelOutput, output_cache(decoder_outputs)),
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class FWPForConditionalGeneration(FWPSeq2SeqPreTrainedModel, GenerationMixin):
    """FWP encoder–decoder with a language-modelling head; ``labels`` give the token-level loss
    (decoder inputs are ``labels`` shifted right behind `decoder_start_token_id`)."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config)
        self.model = FWPSeq2SeqModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> FWPEncoder:
        return self.model.encoder

    def get_decoder(self) -> FWPDecoder:
        return self.model.decoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.config.pad_token_id is None or self.config.decoder_start_token_id is None:
            raise ValueError(
                "FWPConfig needs pad_token_id and decoder_start_token_id to shift labels into decoder inputs"
            )
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        decoder_inputs_embeds: torch.FloatTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        """Attention outputs (with ``output_attentions=True``): see `FWPSeq2SeqModel.forward`."""
        past_key_values = cache_argument(cache, past_key_values)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            decoder_position_ids=decoder_position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels must have the shape of the decoder inputs {tuple(logits.shape[:2])}, "
                    f"got {tuple(labels.shape)}"
                )
            loss = ForMaskedLMLoss(logits, labels, self.config.vocab_size, **kwargs)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **cache_field(Seq2SeqLMOutput, output_cache(outputs)),
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SEQ2SEQ_MODEL_CODE_FILES", "FWPSeq2SeqModel", "FWPForConditionalGeneration", "FWPEncoder", "FWPDecoder"]
