#!/usr/bin/env python3
"""Each model against its teacher on the same dev sentences, from `kd predict` outputs
(dev-predictions.jsonl in each directory, the teacher's included): accuracy, the difference
from the teacher's, agreement with it, the sentences only one of the two gets right with an
exact two-sided McNemar test, and a recipe run's last evaluation beside the kept (best) one;
then the mean and sample sd of the models after the first when there are several (seeds).

Usage: vs_teacher.py --dev DEV.tsv --teacher DIR MODEL_DIR... [--out FILE.json]
"""
import argparse
import glob
import json
import math
import statistics

parser = argparse.ArgumentParser()
parser.add_argument("--dev", required=True)
parser.add_argument("--teacher", required=True)
parser.add_argument("--label-column", default="label")
parser.add_argument("--out")
parser.add_argument("models", nargs="+")
args = parser.parse_args()

lines = [line.rstrip("\n").split("\t") for line in open(args.dev)]
label = lines[0].index(args.label_column)
gold = [row[label] for row in lines[1:]]


def predicted(model_dir):
    return [json.loads(line)["label"] for line in open(f"{model_dir}/dev-predictions.jsonl")]


def mcnemar(a, b):
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return only_a, only_b, p


def last_evaluation(model_dir):
    logs = sorted(glob.glob(f"{model_dir}/*/log.jsonl"))
    if not logs:
        return None
    evaluations = [json.loads(l)["evaluation"] for l in open(logs[-1]) if l.startswith('{"evaluation"')]
    return evaluations[-1]["dev"] if evaluations else None


teacher = predicted(args.teacher)
teacher_right = [p == g for p, g in zip(teacher, gold)]
teacher_accuracy = sum(teacher_right) / len(gold)
rows = []
for model in args.models:
    labels = predicted(model)
    right = [p == g for p, g in zip(labels, gold)]
    only_teacher, only_model, p = mcnemar(teacher_right, right)
    rows.append({
        "model": model,
        "accuracy": sum(right) / len(gold),
        "vs_teacher": sum(right) / len(gold) - teacher_accuracy,
        "agreement_with_teacher": sum(a == b for a, b in zip(labels, teacher)) / len(gold),
        "only_teacher_right": only_teacher,
        "only_model_right": only_model,
        "mcnemar_p": p,
        "last_evaluation": last_evaluation(model),
    })
    print(json.dumps(rows[-1]))
report = {"dev": args.dev, "teacher": {"dir": args.teacher, "accuracy": teacher_accuracy}, "models": rows}
seeds = [row["accuracy"] for row in rows[1:]]
if len(seeds) > 1:
    report["seeds"] = {"mean": statistics.mean(seeds), "sd": statistics.stdev(seeds),
                       "vs_teacher": statistics.mean(seeds) - teacher_accuracy}
    print(json.dumps(report["seeds"]))
if args.out:
    json.dump(report, open(args.out, "w"), indent=2)
