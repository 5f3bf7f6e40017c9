#!/usr/bin/env bash
# The rest of TinyBERT's ablation on SST-2, beside general_tinybert.sh's pairs: the general
# stage alone (sst2-tinybert4-general-nokd: general-tinybert-l4 fine-tuned on hard labels) and
# both stages with augmentation (sst2-tinybert4-general-aug), seeds $SEEDS (default 1 2 3), under
# runs/sst2-general; then experiments/results/sst2-tinybert-ablation-{nokd,aug}.json, each
# paired against sst2-tinybert4-general. Every run resumes; finished ones are kept.
# Usage: experiments/scripts/tinybert_ablation.sh   (from the repository root)
set -euo pipefail
teacher=runs/teachers/SST-2
source "$(dirname "$0")/seeds.sh"
require_teacher $teacher
general_stage tinybert-l4
[ -f runs/augment/sst2-x4.tsv ] || $kd augment --model $teacher --task sst2 --per-example 4 \
  --out runs/augment/sst2-x4.tsv
distill_seeds runs/sst2-general sst2-tinybert4-general-nokd sst2-tinybert4-general-aug
for arm in nokd aug; do
  python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
    --baseline 'runs/sst2-general/sst2-tinybert4-general-s*' \
    --student "runs/sst2-general/sst2-tinybert4-general-$arm-s*" \
    --out "experiments/results/sst2-tinybert-ablation-$arm.json"
done
