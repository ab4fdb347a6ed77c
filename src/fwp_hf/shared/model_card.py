"""Model cards of trained FWP language models: Hub YAML metadata (with `model-index`) and text.

The card is rendered by `huggingface_hub.ModelCard.from_template` from a Jinja2 template (the
default ships in the package, `fwp_hf/shared/model_cards/fwp_lm_card.md`); the metadata block comes from
`ModelCardData`, whose `eval_results` become the `model-index` the Hub shows as results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..token_mixers import describe_token_mixer


@dataclass
class LMEvaluation:
    """One measured result: its name in the card, split, mean loss (nats/token) and perplexity."""

    name: str
    split: str
    loss: float
    perplexity: float


def describe_architecture(config) -> str:
    """A short human description of an FWP config's layers, one part per layer type (the registry's
    `describe_token_mixer`), e.g. ``"4 × delta (delta rule …; φ = DPFP(ν=1), …) layers, hidden size 256"``."""
    if not hasattr(config, "layer_attention_types"):  # a transformers baseline (e.g. the Llama teacher)
        return (f"here a softmax-attention baseline, not a fast weight programmer: transformers' own "
                f"{config.model_type} with {config.num_hidden_layers} layers, hidden size {config.hidden_size}")
    kinds = config.layer_attention_types
    parts = [f"{kinds.count(kind)} × {kind} ({describe_token_mixer(config, kind)})" for kind in dict.fromkeys(kinds)]
    return ", ".join(parts) + f" layers, hidden size {config.hidden_size}"


def render_lm_model_card(
    template_path: str | os.PathLike,
    *,
    repo_id: str,
    config,
    parameter_count: int,
    evaluations: list[LMEvaluation],
    dataset_id: str,
    dataset_name: str,
    dataset_description: str,
    training_config: str,
    sample_prompt: str,
    sample_text: str,
    sample_decoding: str,
    results_note: str = "",
    license: str | None = None,
) -> ModelCard:
    """Render the card of a trained model; `evaluations` go into the table and the `model-index`.

    `repo_id` is the Hub id (``owner/name``) or, for a model that is not pushed, its local folder.
    """
    if not os.path.isfile(template_path):
        raise FileNotFoundError(f"model card template {str(template_path)!r} does not exist")
    model_name = Path(repo_id).name
    eval_results = [
        EvalResult(
            task_type="text-generation",
            task_name="Language modelling",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split=evaluation.split,
            metric_type="perplexity",
            metric_name=f"perplexity ({evaluation.name})",
            metric_value=round(evaluation.perplexity, 3),
        )
        for evaluation in evaluations
    ]
    card_data = ModelCardData(
        language="en",
        license=license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[
            "fwp_hf",
            "fast-weight-programmer",
            "linear-transformer",
            f"fwp-{config.layer_attention_types[0]}" if hasattr(config, "layer_attention_types") else config.model_type,
            "custom_code",
        ],
        datasets=[dataset_id],
        metrics=["perplexity"],
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=repo_id,
        architecture=describe_architecture(config),
        parameter_count=f"{parameter_count / 1e6:.2f}M",
        vocab_size=config.vocab_size,
        results_rows=evaluations,
        results_note=results_note,
        dataset_description=dataset_description,
        training_config=training_config.strip(),
        sample_prompt=sample_prompt,
        sample_text=sample_text.replace("\n", " "),
        sample_decoding=sample_decoding,
    )


__all__ = ["LMEvaluation", "describe_architecture", "render_lm_model_card"]
