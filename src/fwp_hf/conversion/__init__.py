"""Converters from other models into FWP models (library code; not shipped with checkpoints):
flash-linear-attention checkpoints (`fla`), pretrained softmax transformers (`linearize`) and the
loading of their teachers from a Hub id, a folder or a GGUF file (`teachers`)."""

from .fla import FLACheckpointError, convert_fla_checkpoint, fla_config_to_fwp, load_fla_checkpoint
from .linearize import (
    SUPPORTED_TEACHER_TYPES,
    AttentionTransferModel,
    LinearizationError,
    linearize_model,
    student_config_from_teacher,
)
from .teachers import TeacherNotFoundError, dequantized_teacher, load_teacher, save_teacher_folder

__all__ = [
    "AttentionTransferModel",
    "FLACheckpointError",
    "LinearizationError",
    "TeacherNotFoundError",
    "SUPPORTED_TEACHER_TYPES",
    "convert_fla_checkpoint",
    "dequantized_teacher",
    "fla_config_to_fwp",
    "linearize_model",
    "load_teacher",
    "load_fla_checkpoint",
    "save_teacher_folder",
    "student_config_from_teacher",
]
