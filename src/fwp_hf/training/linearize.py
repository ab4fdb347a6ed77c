"""Linearize a pretrained transformer into an FWP model, then fine-tune it: the library behind
`scripts/linearize.py`.

run_clm conventions: argument dataclasses parsed by `HfArgumentParser` (a YAML/JSON file and/or
flags), data as in `train_lm.py` (`--dataset_name`, `--train_file/--validation_file`, or the built-in
Penn Treebank), `Trainer` owning both training loops:

1. build the student from `--teacher_model_name_or_path` (a Hub id, a folder, or a llama.cpp ``.gguf``
   file, also given as `--teacher_gguf_file`: `conversion.teachers.load_teacher`; Llama, Mistral,
   Qwen2, Qwen3) — every layer `--attention_type` except `--keep_softmax_layers`;
2. attention transfer: `--transfer_steps` steps of `AttentionTransferModel` (only the new mixer
   parameters learn; per-layer MSE against the teacher's attention outputs);
3. fine-tuning with the LM loss for `--max_steps` steps (TrainingArguments): every weight, or with
   `--finetune_lora_rank r` LoRA adapters through peft (LoLCATs' recipe: peft's default targets for
   model_type fwp, every token mixer's projections), merged into the weights before saving;

then validation perplexity at every stage (teacher, student right after copying, after transfer,
after fine-tuning), an ordinary FWP checkpoint in `--output_dir` (remote code, the teacher's
tokenizer, a model card naming the teacher, its licence and quantization, the data, both stages and
every measured number) and `linearization_results.json`; `--push_to_hub` pushes that folder.
`--from_scratch true` trains the same student architecture from a random initialisation for
`transfer_steps + max_steps` LM steps instead: the baseline the conversion must beat.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import (
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from .. import FWPForCausalLM
from ..conversion.linearize import (
    SUPPORTED_TEACHER_TYPES,
    AttentionTransferModel,
    LinearizationError,
    linearize_model,
)
from ..conversion.teachers import (
    TeacherFacts,
    TeacherHubError,
    TeacherNotFoundError,
    TeacherSource,
    load_teacher,
    resolve_teacher_source,
    teacher_facts,
)
from ..shared.cli import argument_errors_exit
from ..shared.hub import HubPushError, check_repo_id, push_folder_to_hub
from ..shared.model_card import describe_architecture
from ..token_mixers import ATTENTION_TYPES
from . import common
from .costs import measure
from .lm import (
    DataTrainingArguments,
    evaluate_blocks,
    prepare_hub_push,
    prepare_lm_data,
    raw_datasets_from_arguments,
)
from .lm_data import BUILTIN_DATASET, document_separator_id

logger = logging.getLogger(__name__)


@dataclass
class LinearizeArguments:
    """The teacher, the student and the attention-transfer stage."""

    teacher_model_name_or_path: str = field(
        default=None,
        metadata={"help": "Pretrained teacher: a Hub id, a local folder, or a llama.cpp .gguf file (dequantized to "
                          f"fp32; needs the gguf extra) ({', '.join(SUPPORTED_TEACHER_TYPES)} families)."},
    )
    teacher_gguf_file: str | None = field(
        default=None,
        metadata={"help": "The teacher's .gguf file: a path, or a file name inside --teacher_model_name_or_path "
                          "(a folder or Hub repo holding GGUF files)."},
    )
    attention_type: str = field(
        default="delta", metadata={"help": f"Token mixer of the converted layers: {', '.join(ATTENTION_TYPES)}."}
    )
    feature_map: str | None = field(
        default="hedgehog", metadata={"help": "φ of the delta rules (hedgehog: learned by attention transfer)."}
    )
    keep_softmax_layers: list[int] = field(
        default_factory=list, metadata={"help": "Teacher layers that stay softmax attention (a hybrid), e.g. 1 3."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": 'Other FWPConfig fields of the student as JSON, e.g. \'{"chunk_size": 32}\'.'}
    )
    transfer_steps: int = field(default=200, metadata={"help": "Attention-transfer steps (0: skip the stage)."})
    transfer_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of attention transfer."})
    save_stage_checkpoints: bool = field(
        default=False,
        metadata={"help": "Also save the student (with the tokenizer) after copying the teacher's weights and after "
                          "attention transfer, in output_dir/stage_after_copying and output_dir/stage_after_transfer, "
                          "so that every stage can be evaluated (scripts/evaluate_linearization.py)."},
    )
    finetune_lora_rank: int = field(
        default=0,
        metadata={"help": "Fine-tune with LoRA adapters of this rank (peft; on every token mixer's projections), "
                          "merged into the weights before saving; 0: fine-tune every weight. Needs the peft extra."},
    )
    finetune_lora_alpha: float | None = field(default=None, metadata={"help": "LoRA's alpha (default: 2 × rank)."})
    from_scratch: bool = field(
        default=False,
        metadata={"help": "Baseline: the same student architecture, randomly initialised, trained with the LM loss "
                          "for transfer_steps + max_steps steps (no teacher weights, no attention transfer)."},
    )


def parse_linearize_arguments(argv: Sequence[str] | None = None):
    return common.parse_run_arguments((LinearizeArguments, DataTrainingArguments, TrainingArguments), argv)


def check_linearize_arguments(args: LinearizeArguments, training_args: TrainingArguments) -> None:
    resolve_teacher_source(args.teacher_model_name_or_path, args.teacher_gguf_file)  # names a missing folder/file
    if args.transfer_steps < 0:
        raise ValueError(f"--transfer_steps must be >= 0, got {args.transfer_steps}")
    if training_args.max_steps is None or training_args.max_steps < 0:
        raise ValueError("--max_steps (the fine-tuning steps) must be >= 0")
    if args.finetune_lora_rank < 0:
        raise ValueError(
            f"--finetune_lora_rank must be >= 0 (0: fine-tune every weight), got {args.finetune_lora_rank}")
    if args.finetune_lora_alpha is not None and not args.finetune_lora_alpha > 0:
        raise ValueError(f"--finetune_lora_alpha must be > 0, got {args.finetune_lora_alpha}")
    if args.finetune_lora_rank and args.from_scratch:
        raise ValueError("--finetune_lora_rank adapts pretrained weights; the --from_scratch baseline trains every "
                         "weight (leave --finetune_lora_rank 0)")
    if training_args.push_to_hub:
        check_repo_id(training_args.hub_model_id)


def _stage_arguments(training_args: TrainingArguments, stage: str, **changes) -> TrainingArguments:
    """The TrainingArguments of one stage: its own output folder, no checkpoints, the given changes."""
    return dataclasses.replace(
        training_args, output_dir=os.path.join(training_args.output_dir, stage), save_strategy="no",
        push_to_hub=False, eval_strategy="no", load_best_model_at_end=False, resume_from_checkpoint=None, **changes,
    )


def with_lora_adapters(model, rank: int, alpha: float | None = None):
    """`model` wrapped by peft with LoRA adapters of `rank` on peft's default targets for model_type fwp
    (`configuration_fwp.PEFT_TARGET_MODULES`: q/k/v/o, the fused qkv_proj, o_proj); only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model  # noqa: PLC0415 - optional dependency
    except ImportError as error:
        raise ImportError("--finetune_lora_rank needs peft: pip install 'fwp-hf[peft]'") from error
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha,
                                            task_type="CAUSAL_LM"))


def _perplexity(model, arguments: TrainingArguments, evaluation, block_size: int) -> float:
    trainer = Trainer(model=model, args=arguments, data_collator=default_data_collator)
    metrics, _ = evaluate_blocks(trainer, {"validation": evaluation}, block_size)
    return metrics["eval_perplexity"]


def _layer_losses(transfer: AttentionTransferModel, dataset, batches: int = 4, batch_size: int = 8) -> list[float]:
    """Mean per-layer MSE of attention transfer on the first `batches` validation batches."""
    totals = None
    with torch.no_grad():
        for start in range(0, min(len(dataset), batches * batch_size), batch_size):
            rows = dataset[start : start + batch_size]
            ids = torch.tensor(rows["input_ids"], device=transfer.student.device)
            losses = transfer(input_ids=ids)["layer_losses"]
            totals = losses if totals is None else totals + losses
    count = max(1, math.ceil(min(len(dataset), batches * batch_size) / batch_size))
    return (totals / count).tolist()


def _data_description(data_args: DataTrainingArguments) -> str:
    if data_args.train_file is not None:
        files = [data_args.train_file] + ([data_args.validation_file] if data_args.validation_file else [])
        return "local files " + ", ".join(f"`{os.path.basename(path)}`" for path in files)
    return f"the dataset `{data_args.dataset_name or BUILTIN_DATASET}`"


def write_linearized_model_card(output_dir: str, args: LinearizeArguments, student, results: dict,
                                data_args: DataTrainingArguments, source: TeacherSource, facts: TeacherFacts) -> None:
    """README.md of the student: the teacher (origin, licence, quantization), the data, the recipe, and every
    number of `results` (perplexity per stage; steps, tokens, wall time and peak memory per stage)."""
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="text-generation",
        tags=["fwp_hf", "fast-weight-programmer", "linearized", args.attention_type],
        base_model=None if source.is_local or source.gguf_file else source.name_or_path,  # a Hub id
        **{key: value for key, value in facts.card_metadata().items() if key != "teacher"},
    )
    teacher = f"`{facts.origin}`" + (
        f" (weights: {facts.quantization}; the teacher is the quantized model)" if facts.quantization else "")
    licence = (f"The teacher's licence is **{facts.license}**; this derived model is under the same licence."
               if facts.license else "The teacher's licence is not stated where it came from: check it before use.")
    finetune = (f"LoRA adapters of rank {args.finetune_lora_rank} (peft; merged into the weights)"
                if args.finetune_lora_rank else "every weight")
    stages = (
        f"trained from a random initialisation for {results['lm_steps']} steps (the from-scratch baseline)"
        if args.from_scratch else
        f"linearized from {teacher}: its embeddings, norms, MLPs and q/k/v/o projections "
        f"copied; layers {args.keep_softmax_layers or 'none'} kept as softmax attention; then {args.transfer_steps} "
        "steps of attention transfer (only the new mixer parameters learn to reproduce each teacher attention "
        f"layer's output, per-layer MSE) and {results['lm_steps']} steps of fine-tuning with the LM loss ({finetune})"
    )
    perplexities = "\n".join(f"| {stage} | {value:.2f} |" for stage, value in results["perplexity"].items())
    costs = "\n".join(
        f"| {stage} | {cost['steps']} | {cost['tokens']:,} | {cost['seconds']:.0f} | {cost['peak_memory_mb']:.0f} |"
        for stage, cost in results["stages"].items())
    content = f"""---
{card_data.to_yaml()}
---

# {os.path.basename(os.path.abspath(output_dir))}

A fast weight programmer ({describe_architecture(student.config)}; {student.num_parameters():,} parameters),
{stages}, with `fwp_hf` (`scripts/linearize.py`). {licence}

Data: {_data_description(data_args)}, in blocks of {data_args.block_size} tokens, documents separated by
`{results['document_separator']}`.

| stage | validation perplexity |
|---|---|
{perplexities}

| training stage | steps | tokens | wall seconds | peak memory (MiB) |
|---|---|---|---|---|
{costs}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder or repo>", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("<this folder or repo>", config=model.config)
```
"""
    ModelCard(content).save(os.path.join(output_dir, "README.md"))


def run_linearization(
    args: LinearizeArguments, data_args: DataTrainingArguments, training_args: TrainingArguments
) -> dict:
    """The three stages (or the from-scratch baseline); returns the results written to
    ``output_dir/linearization_results.json``."""
    common.setup_logging(training_args)
    check_linearize_arguments(args, training_args)
    push = prepare_hub_push(training_args)
    set_seed(training_args.seed)
    teacher, tokenizer = load_teacher(args.teacher_model_name_or_path, args.teacher_gguf_file)
    source = resolve_teacher_source(args.teacher_model_name_or_path, args.teacher_gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    overrides = common.parse_config_overrides(args.config_overrides)
    student = linearize_model(teacher, args.attention_type, args.feature_map, args.keep_softmax_layers, **overrides)
    raw = raw_datasets_from_arguments(data_args)
    data = prepare_lm_data(raw, tokenizer, data_args, training_args)
    validation = data.evaluation["validation"]
    evaluate_args = _stage_arguments(training_args, "evaluation")
    block = data_args.block_size
    results: dict = {"teacher": source.describe(), "teacher_gguf": source.gguf_file is not None,
                     "document_separator": tokenizer.convert_ids_to_tokens(
                         document_separator_id(tokenizer, data_args.document_separator)),
                     "attention_type": args.attention_type,
                     "feature_map": args.feature_map, "keep_softmax_layers": list(args.keep_softmax_layers),
                     "from_scratch": args.from_scratch, "perplexity": {}, "seconds": {}, "stages": {}}
    tokens_per_step = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                       * training_args.world_size * block)

    def save_stage(name: str) -> None:
        if args.save_stage_checkpoints:
            folder = os.path.join(training_args.output_dir, f"stage_{name}")
            student.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

    results["perplexity"]["teacher"] = _perplexity(teacher, evaluate_args, validation, block)
    lm_steps = training_args.max_steps
    if args.from_scratch:
        student = FWPForCausalLM(student.config)  # the same architecture, randomly initialised
        results["perplexity"]["student, random initialisation"] = _perplexity(student, evaluate_args, validation, block)
        lm_steps = args.transfer_steps + training_args.max_steps
    else:
        results["perplexity"]["student after copying the teacher's weights"] = _perplexity(
            student, evaluate_args, validation, block)
        save_stage("after_copying")
        if args.transfer_steps:
            transfer = AttentionTransferModel(student, teacher)
            results["layer_mse_before_transfer"] = _layer_losses(transfer, validation)
            stage = _stage_arguments(training_args, "attention_transfer", max_steps=args.transfer_steps,
                                     learning_rate=args.transfer_learning_rate, weight_decay=0.0)
            with measure() as cost:
                Trainer(model=transfer, args=stage, train_dataset=data.train,
                        data_collator=default_data_collator).train()
            results["seconds"]["attention transfer"] = cost["seconds"]
            results["stages"]["attention transfer"] = {
                "steps": args.transfer_steps, "tokens": args.transfer_steps * tokens_per_step, **cost}
            results["layer_mse_after_transfer"] = _layer_losses(transfer, validation)
            transfer.release()
            results["perplexity"]["after attention transfer"] = _perplexity(student, evaluate_args, validation, block)
            save_stage("after_transfer")
    results["lm_steps"] = lm_steps
    if lm_steps:
        finetune = _stage_arguments(training_args, "fine_tuning", max_steps=lm_steps)
        trained = student
        if args.finetune_lora_rank:
            trained = with_lora_adapters(student, args.finetune_lora_rank, args.finetune_lora_alpha)
        trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
        with measure() as cost:
            Trainer(model=trained, args=finetune, train_dataset=data.train, data_collator=default_data_collator).train()
        if args.finetune_lora_rank:
            student = trained.merge_and_unload()  # a plain FWPForCausalLM again: the adapters are in its weights
        stage_name = "fine-tuning" if not args.from_scratch else "training from scratch"
        results["seconds"][stage_name] = cost["seconds"]
        results["stages"][stage_name] = {"steps": lm_steps, "tokens": lm_steps * tokens_per_step,
                                         "trainable_parameters": trainable,
                                         "lora_rank": args.finetune_lora_rank or None, **cost}
        name = "after fine-tuning" if not args.from_scratch else f"after {lm_steps} steps from scratch"
        results["perplexity"][name] = _perplexity(student, evaluate_args, validation, block)
    student.save_pretrained(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    facts = teacher_facts(source)
    results["teacher_license"], results["teacher_quantization"] = facts.license, facts.quantization
    write_linearized_model_card(training_args.output_dir, args, student, results, data_args, source, facts)
    with open(os.path.join(training_args.output_dir, "linearization_results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    for stage, value in results["perplexity"].items():
        print(f"validation perplexity, {stage}: {value:.2f}")
    if push:
        url = push_folder_to_hub(training_args.output_dir, training_args.hub_model_id, token=training_args.hub_token,
                                 private=training_args.hub_private_repo, commit_message="Upload linearized FWP model")
        print(f"pushed to {url}")
    return results


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point of `scripts/linearize.py`: a bad flag, a missing teacher or an unreachable Hub is one line."""
    with argument_errors_exit("linearize.py"):
        arguments = parse_linearize_arguments(argv)
    try:
        return run_linearization(*arguments)
    except (LinearizationError, TeacherNotFoundError, TeacherHubError, ImportError, HubPushError) as error:
        raise SystemExit(f"linearize: error: {error}") from error


__all__ = ["LinearizeArguments", "main", "run_linearization"]
