#!/usr/bin/env python3
"""transformers against kd on a model's dev sentences: runs tests/fixtures/check_hf_load.py
(with the reference environment's Python) on the texts of MODEL_DIR/dev-predictions.jsonl
(`kd predict` output) and prints how many labels agree and the largest difference between the
two sets of class probabilities. A pruned model needs `kd export --restore-heads` first
(transformers 5 has no pruned_heads): give the pruned model's predictions with --predictions.

Usage: hf_vs_kd.py MODEL_DIR [--predictions FILE.jsonl] [--python .venv-ref/bin/python]
(from the repository root; FILE defaults to MODEL_DIR/dev-predictions.jsonl)
"""
import argparse
import json
import math
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--predictions")
parser.add_argument("--python", default=".venv-ref/bin/python")
args = parser.parse_args()

with open(args.predictions or f"{args.model}/dev-predictions.jsonl") as f:
    rows = [json.loads(line) for line in f]
run = subprocess.run(
    [args.python, "tests/fixtures/check_hf_load.py", args.model] + [row["text"] for row in rows],
    capture_output=True, text=True)
if run.returncode:
    sys.exit(run.stderr[-2000:])
worst, same = 0.0, 0
for row, line in zip(rows, run.stdout.splitlines(), strict=True):
    answer = json.loads(line)
    top = max(answer["logits"])
    exps = [math.exp(logit - top) for logit in answer["logits"]]
    probabilities = [e / sum(exps) for e in exps]
    worst = max(worst, max(abs(p - row["probabilities"][str(i)]) for i, p in enumerate(probabilities)))
    same += answer["label"] == row["label"]
print(json.dumps({"model": args.model, "sentences": len(rows), "same_label": same,
                  "max_abs_probability_diff": worst}))
