"""Probe: task-adaptive masked-language-model training of MiniLM-L6 on a recipe's train split.

Continues pretraining the installed encoder with BERT's MLM objective (15% of tokens masked, HF's
``DataCollatorForLanguageModeling``) on the train split's texts only, then writes an encoder
folder that a recipe can fine-tune with ``model.pretrained=FOLDER``. MiniLM-L6 ships without its
MLM head, so the head starts fresh. Only masked positions are scored against the vocabulary.

    python bench/tapt_probe.py RECIPE OUTPUT_FOLDER [--epochs 10] [--lr 1e-4]
    kiln train RECIPE model.pretrained=OUTPUT_FOLDER
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    import kiln.data
    from kiln.config import load_recipe
    from kiln.data.tokenizer import resolve_pretrained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    recipe = load_recipe(args.recipe)
    source = resolve_pretrained(recipe.model.pretrained)
    texts = list(kiln.data.run(recipe).train.inputs)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(source / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    model = BertForMaskedLM.from_pretrained(str(source))
    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    encoded = tokenizer(texts, truncation=True, max_length=recipe.model.max_length)
    rows = [
        {"input_ids": i, "attention_mask": a}
        for i, a in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]
    steps_per_epoch = -(-len(rows) // args.batch_size)
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    # Linear warmup over 6% of the steps, then linear decay to 0.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / (0.06 * total), max(0.0, (total - s) / (0.94 * total)))
    )
    rng = np.random.default_rng(0)
    model.train()
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = rng.permutation(len(rows))
        losses = []
        for b in range(steps_per_epoch):
            batch = collate([rows[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]])
            labels = batch.pop("labels")
            masked = labels != -100
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = model.bert(**batch).last_hidden_state
                scores = model.cls(hidden[masked])
            loss = torch.nn.functional.cross_entropy(scores.float(), labels[masked])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        print(f"epoch {epoch + 1}: mlm loss {np.mean(losses):.3f}, {time.perf_counter() - started:.0f} s", flush=True)

    args.output.mkdir(parents=True, exist_ok=True)
    model.bert.save_pretrained(str(args.output))
    shutil.copy(source / "tokenizer.json", args.output / "tokenizer.json")
    print(f"encoder written to {args.output}")


if __name__ == "__main__":
    main()
