"""Serve FWP checkpoints with transformers' own OpenAI-compatible server (`transformers serve`).

``python -m fwp_hf.serve [MODEL] [transformers serve options]`` (console script ``fwp-serve``) is
``transformers serve`` with the FWP architectures made known to it: transformers' server loads a model as
``getattr(transformers, config.architectures[0]).from_pretrained(...)``, i.e. only classes in the
``transformers`` namespace, and ignores a checkpoint's ``auto_map``. `register_with_transformers` puts the
FWP classes there (as ``import fwp_hf`` puts them in the Auto classes). The installed fwp_hf code runs the
checkpoint, as `AutoModelForCausalLM` does in any process that imported fwp_hf (transformers prefers an
explicitly registered class to a checkpoint's `auto_map` code, with or without ``--trust-remote-code``).

Continuous batching (``--continuous-batching``) is refused: transformers' scheduler stores every sequence
as pages of keys and values and runs the model on requests packed into one row with a 4D (paged) mask; a
fast-weight layer has no keys and values to page — it needs one recurrent state per sequence slot, which
that scheduler has no place for. Requests are served one ``generate()`` call each instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import transformers

from .modeling_fwp import FWPForCausalLM, FWPModel
from .modeling_fwp_seq2seq import FWPForConditionalGeneration, FWPSeq2SeqModel

# The classes a checkpoint's config.architectures may name.
SERVED_ARCHITECTURES = (FWPForCausalLM, FWPForConditionalGeneration, FWPModel, FWPSeq2SeqModel)

CONTINUOUS_BATCHING_REFUSAL = (
    "--continuous-batching is not supported for FWP models: transformers' continuous batching stores each "
    "sequence as pages of keys and values and runs requests packed into one row under a 4D paged-attention "
    "mask, but a fast-weight layer keeps one fixed-size recurrent state per sequence and has no keys or values "
    "to page. Serve without --continuous-batching: each request then runs its own generate() call."
)


def register_with_transformers() -> list[str]:
    """Make ``getattr(transformers, name)`` give the FWP class of that name, for every class in
    `SERVED_ARCHITECTURES` (a name transformers already defines is left alone). Returns the names registered."""
    registered = []
    for model_class in SERVED_ARCHITECTURES:
        if getattr(transformers, model_class.__name__, model_class) is model_class:
            setattr(transformers, model_class.__name__, model_class)
            registered.append(model_class.__name__)
    return registered


# At import, not only in `main`: from transformers 5.25 on the server loads the model in a process it spawns,
# which imports the entry point's module (this one, or the console script that imports it) afresh; the
# registration must happen there too.
register_with_transformers()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``fwp-serve [MODEL] [options of transformers serve]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--continuous-batching" in args:
        raise SystemExit(f"error: {CONTINUOUS_BATCHING_REFUSAL}")
    from transformers.cli.transformers import app  # noqa: PLC0415 - the CLI imports typer and the serving stack

    register_with_transformers()
    app(["serve", *args], prog_name="fwp-serve")


if __name__ == "__main__":
    main()
