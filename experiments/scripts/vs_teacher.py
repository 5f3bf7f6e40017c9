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
import statistics

import dev_predictions
from dev_predictions import mcnemar, read_gold

parser = argparse.ArgumentParser()
parser.add_argument("--dev", required=True)
parser.add_argument("--teacher", required=True)
parser.add_argument("--label-column", default="label")
parser.add_argument("--out")
parser.add_argument("models", nargs="+")
args = parser.parse_args()

gold = read_gold(args.dev, args.label_column)


def predicted(model_dir):
    return dev_predictions.predicted(model_dir, len(gold))


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
    only_model, only_teacher, p = mcnemar(teacher_right, right)
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
