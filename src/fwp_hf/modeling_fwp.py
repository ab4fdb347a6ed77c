"""Fast weight programmer (FWP) language models: `FWPPreTrainedModel`, `FWPModel` and `FWPForCausalLM`.

Structure follows transformers' Llama: Config → PreTrainedModel → Model → ForCausalLM. The layers
live in `layers_fwp.py`, the cache in `cache_fwp.py`, input checks and masks in `inputs_fwp.py`,
what each attention type is in `token_mixers.py`, the options of each layer kind in `options_fwp.py`,
the feature maps φ in `feature_maps_fwp.py`, and the update rules in `fast_weight_kernels.py`.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_fwp import prepare_fast_weight_cache
from .compat_fwp import cache_argument, cache_field, output_cache
from .configuration_fwp import FWPConfig
from .feature_maps_fwp import FWPFeatureMap
from .inputs_fwp import PACKING_KWARGS, prepare_mixer_inputs, validate_token_inputs
from .layers_fwp import (
    FWPBlock,
    FWPFastWeightAttention,
    FWPRMSNorm,
    warn_layers_without_attention_matrix,
)
from .token_mixers import every_layer_holds_state

# The files a checkpoint ships so that `trust_remote_code=True` loads it where fwp_hf is not
# installed (transformers copies sibling imports itself; `save_pretrained` checks and completes the
# set, and the tests compare saved folders with it).
MODEL_CODE_FILES = (
    "compat_fwp.py",
    "configuration_fwp.py",
    "fast_weight_kernels.py",
    "options_fwp.py",
    "feature_maps_fwp.py",
    "token_mixers.py",
    "cache_fwp.py",
    "layers_fwp.py",
    "inputs_fwp.py",
    "modeling_fwp.py",
)


# Written into config.json by save_pretrained so that every Auto class loads the checkpoint with
# trust_remote_code=True (transformers itself only records the class that was saved).
AUTO_MAP = {
    "AutoConfig": "configuration_fwp.FWPConfig",
    "AutoModel": "modeling_fwp.FWPModel",
    "AutoModelForCausalLM": "modeling_fwp.FWPForCausalLM",
}


class FWPPreTrainedModel(PreTrainedModel):
    config_class = FWPConfig
    config: FWPConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["FWPBlock"]
    # Softmax layers run transformers' SDPA function (the default) or their own eager function
    # (`attn_implementation="eager"`, which returns attention weights); both take the boolean masks
    # of `inputs_fwp.softmax_attention_mask`. Flash/flex attention and other registered backends
    # (which expect transformers' own mask formats and caches) are not supported.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    # The fast-weight state cannot be rolled back, which assisted generation would need.
    _is_stateful = True

    _auto_map = AUTO_MAP
    _code_files = MODEL_CODE_FILES

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # `generate` asks for the forward's signature at every decoding step of a custom-code model (whether it
        # takes `cache_position`); built from the code each time, that costs as much as several of a one-token
        # step's ops. A signature computed once answers at once.
        if "forward" in cls.__dict__:
            cls.forward.__signature__ = inspect.signature(cls.forward)

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = {**self._auto_map, **(getattr(self.config, "auto_map", None) or {})}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if Path(save_directory).is_dir():  # not for a dry run that wrote nothing
            here = Path(__file__).parent
            for name in self._code_files:
                if not (Path(save_directory) / name).exists():
                    shutil.copy(here / name, Path(save_directory) / name)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        # A load-time override (or `config=`) that changes what the saved weights compute raises,
        # naming the field (FWPConfig.WEIGHT_MEANING_FIELDS); harmless overrides pass through.
        cls.config_class.check_loading_keeps_weight_meaning(pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FWPFeatureMap):
            for name, value in module.initial_weights().items():
                init.copy_(getattr(module, name), value.to(getattr(module, name).device))
        if isinstance(module, FWPFastWeightAttention) and hasattr(module, "A_log"):
            a_log, dt_bias = module.initial_decay_parameters()
            init.copy_(module.A_log, a_log.to(module.A_log.device))
            init.copy_(module.dt_bias, dt_bias.to(module.dt_bias.device))


@dataclass
class StackOutput:
    """What `run_stack` returns.

    Attributes:
        last_hidden_state: ``[B, T, hidden]``, after the final norm.
        hidden_states: with ``output_hidden_states``, ``num_layers + 1`` entries: the input of every
            block, then the final normalised output (as transformers' models return them); else None.
        attentions: one entry per attention the blocks return (self-attention; a decoder's blocks also
            cross-attention): with ``output_attentions`` a tuple of ``num_layers`` weights (None for a
            layer without a T×T matrix), else None.
    """

    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[tuple[torch.Tensor | None, ...] | None, ...]


class FWPStack(FWPPreTrainedModel):
    """Token embeddings, a stack of blocks and a final RMSNorm: the frame that `FWPModel`, `FWPEncoder`
    and `FWPDecoder` share, with the one stack loop (`run_layers`) and the resolution of the output
    options. `build_layers` builds the blocks (called between the embeddings and the norm, so that
    modules are created, and randomly initialised, in that order). ``get/set_input_embeddings`` are
    transformers' own (they find ``embed_tokens``), as are the heads' input and output embeddings
    (``model.embed_tokens`` or the base model's, ``lm_head``)."""

    # What each block's attention-weights entries are called in the warning about layers without a
    # T×T matrix (one name per entry a block returns; `FWPDecoder`: self- and cross-attention).
    attention_names: tuple[str, ...] = ("layers",)

    def __init__(self, config: FWPConfig, build_layers: Callable[[], list[nn.Module]]) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(build_layers())
        self.norm = FWPRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def embed(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, *names: str) -> torch.Tensor:
        """Checked inputs (`inputs_fwp.validate_token_inputs`; `names` of the two arguments in errors) as
        embeddings ``[B, T, hidden]``."""
        validate_token_inputs(input_ids, inputs_embeds, self.embed_tokens, *names)
        return self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds

    def output_options(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """``(output_attentions, output_hidden_states, return_dict)``: the call's, else the config's."""
        config = self.config
        return (
            config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states,
            config.return_dict if return_dict is None else return_dict,
        )

    def wants_cache(self, use_cache: bool | None) -> bool:
        """The call's ``use_cache``, else the config's; never while training with gradient checkpointing
        (recomputing a block would update its cache a second time)."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return use_cache and not (self.gradient_checkpointing and self.training)

    def run_layers(
        self, hidden_states: torch.Tensor, *, output_attentions: bool, output_hidden_states: bool, **layer_inputs
    ) -> StackOutput:
        """Run the blocks in order, then the final norm, collecting what ``output_hidden_states`` /
        ``output_attentions`` ask for.

        Every block is called as ``block(hidden_states, output_attentions=..., **layer_inputs)`` and returns
        ``(hidden_states, *attention weights)``, one weights entry per attention it runs, whose types it
        names in ``block.attention_types()`` (the registry says which have a T×T matrix).
        """
        all_hidden_states, all_weights = [], [[] for _ in self.attention_names]
        for layer in self.layers:
            all_hidden_states.append(hidden_states)
            hidden_states, *weights = layer(hidden_states, output_attentions=output_attentions, **layer_inputs)
            for collected, entry in zip(all_weights, weights, strict=True):
                collected.append(entry)
        if output_attentions:
            for index, where in enumerate(self.attention_names):
                warn_layers_without_attention_matrix([layer.attention_types()[index] for layer in self.layers], where)
        hidden_states = self.norm(hidden_states)
        all_hidden_states.append(hidden_states)
        return StackOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(tuple(collected) if output_attentions else None for collected in all_weights),
        )


class FWPModel(FWPStack):
    """The bare FWP decoder: embeddings, `num_hidden_layers` blocks and a final RMSNorm."""

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config, lambda: [FWPBlock(config, i) for i in range(config.num_hidden_layers)])

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        """``output_attentions=True`` gives ``attentions``, one entry per layer: ``[B, H, Tq, Tk]``
        weights for a softmax layer under ``attn_implementation="eager"`` (None under SDPA, which
        transformers warns about), None for a fast-weight layer (no T×T matrix; warned once).

        Packed documents (padding-free batches of transformers' `DataCollatorWithFlattening`): where
        ``position_ids`` restart inside a row, or with ``seq_idx`` / ``cu_seq_lens_q/k`` (keywords of
        `inputs_fwp.PACKING_KWARGS`), every document is computed as if alone: fast-weight states reset at
        each document start, softmax layers attend within the document (`inputs_fwp.packed_document_ids`).
        A model whose every layer holds a state may also continue a cache with packed rows: the cache then
        continues each row's first document (`inputs_fwp.prepare_mixer_inputs`).

        The cache may be passed as ``cache`` (transformers ≥ 5.24's name) or ``past_key_values``; the output holds
        it under the name the running transformers declares (`compat_fwp`)."""
        past_key_values = cache_argument(cache, past_key_values)
        inputs_embeds = self.embed(input_ids, inputs_embeds)
        use_cache = self.wants_cache(use_cache)
        output_attentions, output_hidden_states, return_dict = self.output_options(
            output_attentions, output_hidden_states, return_dict
        )
        kinds = self.config.layer_attention_types
        past_key_values = prepare_fast_weight_cache(past_key_values, kinds, use_cache)
        past_length = past_key_values.get_seq_length if past_key_values is not None else 0  # asked where needed
        packing = {key: kwargs[key] for key in PACKING_KWARGS if kwargs.get(key) is not None}
        mixer_inputs = prepare_mixer_inputs(self.config, kinds, attention_mask, position_ids, inputs_embeds,
                                            past_length, packing=packing)

        stack = self.run_layers(
            inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            past_key_values=past_key_values, **mixer_inputs,
        )
        output = BaseModelOutputWithPast(
            last_hidden_state=stack.last_hidden_state,
            **cache_field(BaseModelOutputWithPast, past_key_values if use_cache else None),
            hidden_states=stack.hidden_states,
            attentions=stack.attentions[0],
        )
        return output if return_dict else output.to_tuple()


class FWPForCausalLM(FWPPreTrainedModel, GenerationMixin):
    """FWP decoder with a language-modelling head; ``labels`` give the shifted next-token loss."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: FWPConfig) -> None:
        super().__init__(config)
        self.model = FWPModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def create_masks_for_generate(self, attention_mask=None, inputs_embeds=None, **kwargs):
        """`generate` asks this for the masks of a compileable cache (`FastWeightStaticCache`): every
        layer takes the 2D padding mask and builds what it needs itself (`inputs_fwp`). A model whose
        every layer holds a state needs only the new tokens' columns: passing just those keeps the
        mask's shape fixed from one decoding step to the next, so a compiled step is compiled once."""
        if (attention_mask is None or inputs_embeds is None
                or not every_layer_holds_state(self.config.layer_attention_types)):
            return attention_mask
        return attention_mask[:, -inputs_embeds.shape[1] :]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """``attentions`` (with ``output_attentions=True``) and packed documents (``position_ids`` restarting
        inside a row, ``seq_idx``, ``cu_seq_lens_q/k``, ``max_length_q/k``) and the cache's two names: see
        `FWPModel.forward`."""
        past_key_values = cache_argument(cache, past_key_values)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        packing = {key: kwargs.pop(key) for key in PACKING_KWARGS if key in kwargs}
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **packing,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])

        loss = None
        if labels is not None:
            if labels.shape != hidden_states.shape[:2]:
                raise ValueError(
                    f"labels must have the shape of input_ids {tuple(hidden_states.shape[:2])}, "
                    f"got {tuple(labels.shape)}"
                )
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_field(CausalLMOutputWithPast, output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "AUTO_MAP", "MODEL_CODE_FILES", "FWPPreTrainedModel", "FWPModel", "FWPForCausalLM", "FWPStack", "StackOutput"
]
