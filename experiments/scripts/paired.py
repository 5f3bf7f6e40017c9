#!/usr/bin/env python3
"""Compares students with their baselines on the same dev sentences, from `kd predict` outputs.

Each model directory holds dev-predictions.jsonl (`kd predict --input DEV --output ...`) and,
for distilled models, summary.json. Seeds pair up by the `-sN` suffix of the directory names.
Reports accuracy per model, mean and sample standard deviation over seeds, the share of the
teacher's accuracy kept, agreement with the teacher's predictions, and exact McNemar tests
(two-sided) for each seed pair and pooled. Runs not finished (no summary.json, one that says
interrupted, or no predictions yet) are skipped with a message, so interim results can be read
while seeds run.

Usage: paired.py --dev DEV.tsv --teacher DIR --baseline GLOB --student GLOB --out FILE.json
"""
import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys

import dev_predictions
from dev_predictions import mcnemar, read_gold

parser = argparse.ArgumentParser()
parser.add_argument("--dev", required=True)
parser.add_argument("--teacher", required=True)
parser.add_argument("--baseline", required=True)
parser.add_argument("--student", required=True)
parser.add_argument("--label-column", default="label")
parser.add_argument("--out", required=True)
args = parser.parse_args()

gold = read_gold(args.dev, args.label_column)


def predicted(model_dir):
    return dev_predictions.predicted(model_dir, len(gold))


def correct(model_dir):
    return [p == g for p, g in zip(predicted(model_dir), gold)]


def runs(pattern):
    found = {}
    for path in sorted(glob.glob(pattern)):
        seed = int(re.search(r"-s(\d+)$", path).group(1))
        summary_path, predictions_path = f"{path}/summary.json", f"{path}/dev-predictions.jsonl"
        summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
        # Finished as seeds.sh's distill_into counts it: a summary that says not interrupted.
        if summary is None or summary["interrupted"] or not os.path.exists(predictions_path):
            print(f"skipping {path}: not finished (no summary.json saying it was not "
                  "interrupted, or no dev-predictions.jsonl)", file=sys.stderr)
            continue
        labels = predicted(path)
        found[seed] = {"dir": path, "correct": [p == g for p, g in zip(labels, gold)],
                       "agreement": sum(p == t for p, t in zip(labels, teacher_labels)) / len(gold),
                       "wall_time_s": summary["wall_time_s"], "command": summary["command"]}
    return found


def accuracy(right):
    return sum(right) / len(right)


teacher_labels = predicted(args.teacher)
teacher = [p == g for p, g in zip(teacher_labels, gold)]
baseline, student = runs(args.baseline), runs(args.student)
for pattern, found in ((args.baseline, baseline), (args.student, student)):
    if not found:
        sys.exit(f"no finished runs match {pattern}")
seeds = sorted(set(baseline) & set(student))
pairs, pooled_a, pooled_b = [], [], []
for seed in seeds:
    a, b = baseline[seed]["correct"], student[seed]["correct"]
    only_student, only_baseline, p = mcnemar(a, b)
    pairs.append({"seed": seed, "baseline": accuracy(a), "student": accuracy(b),
                  "student_only_right": only_student, "baseline_only_right": only_baseline,
                  "mcnemar_p": p})
    pooled_a += a
    pooled_b += b


def stats(found):
    values = [accuracy(found[s]["correct"]) for s in seeds]
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values, "agreement_with_teacher": [found[s]["agreement"] for s in seeds],
            "wall_time_s": [found[s]["wall_time_s"] for s in seeds],
            "commands": [found[s]["command"] for s in seeds]}


cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
           platform.processor())
result = {
    "dev": args.dev,
    "teacher": {"dir": args.teacher, "accuracy": accuracy(teacher)},
    "baseline": stats(baseline) | {"glob": args.baseline},
    "student": stats(student) | {"glob": args.student},
    "pairs": pairs,
    "pooled_mcnemar": dict(zip(["student_only_right", "baseline_only_right", "p"], mcnemar(pooled_a, pooled_b))),
    "cpu": cpu,
    "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
}
result["gain_points"] = 100 * (result["student"]["mean"] - result["baseline"]["mean"])
result["student_of_teacher"] = result["student"]["mean"] / result["teacher"]["accuracy"]
with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: v for k, v in result.items() if k not in ("baseline", "student")}, indent=2))
print("baseline", result["baseline"]["mean"], "+-", result["baseline"]["sd"])
print("student ", result["student"]["mean"], "+-", result["student"]["sd"])
