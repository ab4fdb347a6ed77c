"""fwp_hf: fast weight programmers on the Hugging Face stack.

Importing the package registers the FWP classes with transformers' Auto classes, so that
``AutoModelForCausalLM.from_config(AutoConfig.for_model("fwp", ...))`` works, and marks them for
``save_pretrained`` to write an ``auto_map`` and copy the code (``trust_remote_code=True`` loading
where fwp_hf is not installed).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .cache_fwp import FastWeightCacheLayer, FastWeightStateStep, FastWeightStaticCache
from .configuration_fwp import PEFT_TARGET_MODULES, FWPConfig, declare_peft_target_modules
from .conversion.fla import FLACheckpointError, convert_fla_checkpoint, load_fla_checkpoint
from .conversion.linearize import AttentionTransferModel, LinearizationError, linearize_model
from .feature_maps_fwp import FEATURE_MAPS
from .modeling_fwp import MODEL_CODE_FILES, FWPForCausalLM, FWPModel, FWPPreTrainedModel
from .modeling_fwp_seq2seq import SEQ2SEQ_MODEL_CODE_FILES, FWPForConditionalGeneration, FWPSeq2SeqModel
from .token_mixers import ATTENTION_TYPES, CROSS_ATTENTION_TYPES, FAST_WEIGHT_TYPES, TOKEN_MIXERS, TokenMixerSpec

__version__ = "0.1.0"

AutoConfig.register(FWPConfig.model_type, FWPConfig, exist_ok=True)
AutoModel.register(FWPConfig, FWPModel, exist_ok=True)
AutoModelForCausalLM.register(FWPConfig, FWPForCausalLM, exist_ok=True)
AutoModelForSeq2SeqLM.register(FWPConfig, FWPForConditionalGeneration, exist_ok=True)

FWPConfig.register_for_auto_class()
FWPModel.register_for_auto_class("AutoModel")
FWPForCausalLM.register_for_auto_class("AutoModelForCausalLM")
FWPSeq2SeqModel.register_for_auto_class("AutoModel")
FWPForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = [
    "ATTENTION_TYPES",
    "CROSS_ATTENTION_TYPES",
    "FAST_WEIGHT_TYPES",
    "FEATURE_MAPS",
    "MODEL_CODE_FILES",
    "PEFT_TARGET_MODULES",
    "declare_peft_target_modules",
    "SEQ2SEQ_MODEL_CODE_FILES",
    "TOKEN_MIXERS",
    "TokenMixerSpec",
    "FWPConfig",
    "FWPPreTrainedModel",
    "FWPModel",
    "FWPForCausalLM",
    "FastWeightCacheLayer",
    "FastWeightStateStep",
    "FastWeightStaticCache",
    "FWPSeq2SeqModel",
    "FWPForConditionalGeneration",
    "FLACheckpointError",
    "convert_fla_checkpoint",
    "load_fla_checkpoint",
    "AttentionTransferModel",
    "LinearizationError",
    "linearize_model",
]
