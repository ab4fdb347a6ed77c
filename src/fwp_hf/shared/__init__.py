"""Library pieces both wings use (`training` and `conversion`; `experiments` may too), so that neither wing
imports the other for them:

- `hub`: create the Hub repo and push a finished model folder;
- `model_card`: render a model card (its Jinja2 templates ship in `model_cards/`, package data);
- `cli`: a script's argument dataclasses from a YAML/JSON config file overridden by flags.

Layering (tests/test_layering.py): this package imports the model files (the token-mixer registry, to
describe an architecture), huggingface_hub, transformers and yaml, never `training`, `conversion` or
`experiments`; it needs no `train` extra.
"""

from pathlib import Path

# Package data (pyproject.toml), so that an install from a wheel finds it too.
MODEL_CARD_TEMPLATES = Path(__file__).resolve().parent / "model_cards"
