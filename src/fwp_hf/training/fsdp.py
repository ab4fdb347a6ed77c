"""FSDP with `Trainer` on CPU processes, and the unsharded model after an FSDP run.

`--fsdp "full_shard auto_wrap"` makes `TrainingArguments` build an accelerate FSDP plugin, but
accelerate 1.15 applies it only to GPU-like process groups: with ``--use_cpu true`` (a gloo group of
CPU processes) it silently trains with DDP instead. PyTorch's FSDP2 (`fully_shard`) works on CPU
tensors over gloo, so `enable_fsdp_on_cpu` switches the accelerator's state to FSDP where accelerate
would have dropped the plugin. `unsharded_model` gives the main process a plain, whole copy of a
sharded model for work that runs on one process only (stream evaluation, the sample, the card).
"""

from __future__ import annotations

import logging
from collections import Counter

from transformers import Trainer

logger = logging.getLogger(__name__)


def enable_fsdp_on_cpu(trainer: Trainer) -> bool:
    """Make a CPU `Trainer` with an FSDP plugin (``--fsdp``) shard with FSDP, as it would on GPUs.

    Returns whether FSDP was switched on here; a no-op (False) without ``--fsdp``, on one process, or
    where accelerate already chose FSDP. Call it after the Trainer is built and before training.
    """
    from accelerate.state import AcceleratorState, PartialState  # noqa: PLC0415
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin  # noqa: PLC0415

    state = trainer.accelerator.state
    if trainer.args.fsdp_plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    # AcceleratorState copies PartialState's fields whenever it is instantiated: set both.
    PartialState().distributed_type = DistributedType.FSDP
    AcceleratorState().distributed_type = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True
    logger.info("FSDP%d on %d CPU processes (gloo), wrapping %s", plugin.fsdp_version, trainer.args.world_size,
                ", ".join(plugin.transformer_cls_names_to_wrap or ["per the auto-wrap policy"]))
    return True


def unsharded_model(trainer: Trainer):
    """`trainer.model`, or after FSDP a whole, unsharded copy of it on the main process (None elsewhere).

    Under FSDP this is a collective: every process must call it. The copy holds the full weights that
    `save_model` writes, so it scores and generates exactly as the saved folder does.
    """
    if not trainer.is_fsdp_enabled:
        return trainer.model
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    sharded = trainer.accelerator.unwrap_model(trainer.model)
    units = Counter(_original_class(type(module)).__name__ for module in sharded.modules()
                    if isinstance(module, FSDPModule))
    logger.info("FSDP units: %s", ", ".join(f"{name} x {count}" for name, count in sorted(units.items())))
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # gathered onto the main process
    if not trainer.is_world_process_zero():
        return None
    model = _original_class(type(sharded))(sharded.config)
    model.load_state_dict(state_dict)
    return model.to(trainer.args.device).eval()


def _original_class(cls: type) -> type:
    """The module class that `fully_shard` subclassed (it turns a module's class into ``FSDP<class>``)."""
    from torch.distributed.fsdp import FSDPModule  # noqa: PLC0415

    return next(base for base in cls.__mro__ if not issubclass(base, FSDPModule))


__all__ = ["enable_fsdp_on_cpu", "unsharded_model"]
