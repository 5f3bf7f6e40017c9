"""The SST-2 DistilBERT recipe (experiments/recipes/sst2-distilbert-l3.toml) done the usual
PyTorch way, for `kd distill`'s end-to-end comparison: every batch padded to 128 tokens, the
teacher run on every step, no caching, no length bucketing. With --group-by-length, the best
ordinary practice instead: batches grouped by length as HF's `group_by_length` does
(`LengthGroupedSampler`) and padded to their longest sentence (dynamic padding).

Same recipe as kd's: a 3-layer student copied from teacher layers 0, 2, 4 (embeddings, pooler
and head too), 5 * soft cross-entropy (T = 2) + 2 * hard + 1 * cosine of the last hidden states
over real tokens, AdamW (lr 1e-4, weight decay 0.01 off biases and LayerNorm, clipping 1.0),
10% linear warmup then linear decay over 3 epochs, batch 32, dropout on, 2 threads.
Prints one JSON line per evaluation with the training time so far (evaluation excluded) and
stops after --max-steps.

Usage: .venv-ref/bin/python benches/pytorch_distill_sst2.py --teacher runs/teachers/SST-2 \
    --data ../shared/data/glue/SST-2 --max-steps 500 --eval-every 500 [--device cuda]
"""

import argparse
import copy
import csv
import json
import time

import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from pytorch_bench import distillation_loss, optimizer as adamw


def read_tsv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(row[0], int(row[1])) for row in rows[1:]]


def encode(tokenizer, rows, max_len):
    batch = tokenizer(
        [text for text, _ in rows], padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return batch["input_ids"], batch["attention_mask"], torch.tensor([label for _, label in rows])


def length_grouped_batches(lengths, batch_size):
    """HF's LengthGroupedSampler: a random order cut into megabatches of 50 batches, each sorted
    longest first and cut into batches."""
    order = torch.randperm(len(lengths)).tolist()
    megabatch = 50 * batch_size
    batches = []
    for start in range(0, len(order), megabatch):
        chunk = sorted(order[start : start + megabatch], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches


def student_of(teacher, layers):
    student = copy.deepcopy(teacher)
    student.bert.encoder.layer = torch.nn.ModuleList([copy.deepcopy(teacher.bert.encoder.layer[i]) for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student


@torch.no_grad()
def accuracy(model, ids, mask, labels, batch_size=128):
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(input_ids=ids[start : start + batch_size], attention_mask=mask[start : start + batch_size]).logits
        correct += (logits.argmax(-1) == labels[start : start + batch_size]).sum().item()
    model.train()
    return correct / len(labels)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--group-by-length", action="store_true", help="length-grouped batches, dynamic padding")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, as kd names them")
    args = parser.parse_args()
    device = torch.device(args.device)
    # A GPU runs asynchronously: a step ends when its kernels have.
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = BertTokenizerFast.from_pretrained(args.teacher)
    train_ids, train_mask, train_labels = encode(tokenizer, read_tsv(f"{args.data}/train.tsv"), 128)
    dev_ids, dev_mask, dev_labels = (t.to(device) for t in encode(tokenizer, read_tsv(f"{args.data}/dev.tsv"), 128))
    teacher = BertForSequenceClassification.from_pretrained(args.teacher, attn_implementation="eager").to(device).eval()
    student = student_of(teacher, [0, 2, 4]).train()

    optimizer = adamw(student, lr=1e-4)
    batch_size = 32
    steps_per_epoch = -(-len(train_labels) // batch_size)
    total = steps_per_epoch * args.epochs
    warmup = round(0.1 * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
    )

    step, train_seconds = 0, 0.0
    for epoch in range(args.epochs):
        if args.group_by_length:
            batches = length_grouped_batches(train_mask.sum(1).tolist(), batch_size)
        else:
            order = torch.randperm(len(train_labels))
            batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        for rows in batches:
            begun = time.perf_counter()
            ids, mask, labels = train_ids[rows], train_mask[rows], train_labels[rows]
            if args.group_by_length:
                width = int(mask.sum(1).max())
                ids, mask = ids[:, :width], mask[:, :width]
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            with torch.no_grad():
                teacher_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            student_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            loss = distillation_loss(student_out, teacher_out, labels, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            synchronize()
            step += 1
            train_seconds += time.perf_counter() - begun
            done = args.max_steps is not None and step >= args.max_steps
            if step % args.eval_every == 0 or done:
                dev = accuracy(student, dev_ids, dev_mask, dev_labels)
                print(json.dumps({"step": step, "epoch": epoch + 1, "train_seconds": train_seconds, "dev_accuracy": dev}), flush=True)
            if done:
                return


if __name__ == "__main__":
    main()
