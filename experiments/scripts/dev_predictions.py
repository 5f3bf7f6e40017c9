"""Shared by paired.py and vs_teacher.py: a dev TSV's gold labels, a model directory's
`kd predict` labels for it (dev-predictions.jsonl), and the exact McNemar test."""
import json
import math


def read_gold(dev, label_column):
    """The gold labels of the TSV `dev`, by its column `label_column`."""
    with open(dev, encoding="utf-8") as f:
        header, *rows = [line for line in f.read().splitlines() if line.strip()]
    label = header.split("\t").index(label_column)
    return [row.split("\t")[label] for row in rows]


def predicted(model_dir, count):
    """The labels of MODEL_DIR/dev-predictions.jsonl, which must hold `count` lines."""
    with open(f"{model_dir}/dev-predictions.jsonl") as f:
        labels = [json.loads(line)["label"] for line in f]
    assert len(labels) == count, model_dir
    return labels


def mcnemar(a, b):
    """Exact two-sided McNemar test of paired right/wrong lists: (b right only, a right only, p)."""
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return only_b, only_a, p
