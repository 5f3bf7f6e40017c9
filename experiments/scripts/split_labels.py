#!/usr/bin/env python3
"""Splits a labelled TSV into a seeded sample of N labelled rows and the rest without labels.

Usage: split_labels.py TRAIN.tsv N SEED OUT_DIR [LABEL_COLUMN]
Writes OUT_DIR/train.tsv (the N rows, all columns), OUT_DIR/unlabeled.tsv (the other rows,
label column dropped) and OUT_DIR/ids.txt (the kept rows' line numbers in TRAIN.tsv, the
header being line 1). Refuses to overwrite an existing OUT_DIR/train.tsv.
"""
import os
import random
import sys

path, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
label_column = sys.argv[5] if len(sys.argv) > 5 else "label"
with open(path, encoding="utf-8") as f:
    header, *rows = f.read().splitlines()
rows = [(number, row) for number, row in enumerate(rows, start=2) if row.strip()]
kept = sorted(random.Random(seed).sample(range(len(rows)), n))
kept_set = set(kept)
columns = header.split("\t")
label = columns.index(label_column)
os.makedirs(out, exist_ok=True)
if os.path.exists(os.path.join(out, "train.tsv")):
    sys.exit(f"{out}/train.tsv exists")


def without_label(line):
    return "\t".join(field for i, field in enumerate(line.split("\t")) if i != label)


with open(os.path.join(out, "unlabeled.tsv.tmp"), "w", encoding="utf-8") as f:
    f.write(without_label(header) + "\n")
    f.writelines(without_label(row) + "\n" for i, (_, row) in enumerate(rows) if i not in kept_set)
with open(os.path.join(out, "ids.txt.tmp"), "w") as f:
    f.writelines(f"{rows[i][0]}\n" for i in kept)
with open(os.path.join(out, "train.tsv.tmp"), "w", encoding="utf-8") as f:
    f.write(header + "\n")
    f.writelines(rows[i][1] + "\n" for i in kept)
for name in ["unlabeled.tsv", "ids.txt", "train.tsv"]:
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
print(f"{n} labelled rows of {len(rows)} in {out}/train.tsv, {len(rows) - n} in {out}/unlabeled.tsv")
