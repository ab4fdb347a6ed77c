"""Converters from other models into FWP models (library code; not shipped with checkpoints):
flash-linear-attention checkpoints (`fla`) and pretrained softmax transformers (`linearize`)."""

from .fla import FLACheckpointError, convert_fla_checkpoint, fla_config_to_fwp, load_fla_checkpoint
from .linearize import (
    SUPPORTED_TEACHER_TYPES,
    AttentionTransferModel,
    LinearizationError,
    linearize_model,
    student_config_from_teacher,
)

__all__ = [
    "AttentionTransferModel",
    "FLACheckpointError",
    "LinearizationError",
    "SUPPORTED_TEACHER_TYPES",
    "convert_fla_checkpoint",
    "fla_config_to_fwp",
    "linearize_model",
    "load_fla_checkpoint",
    "student_config_from_teacher",
]
