"""Converters from other projects' checkpoints into FWP models (library code; not shipped with checkpoints)."""

from .fla import FLACheckpointError, convert_fla_checkpoint, fla_config_to_fwp, load_fla_checkpoint

__all__ = ["FLACheckpointError", "convert_fla_checkpoint", "fla_config_to_fwp", "load_fla_checkpoint"]
