#!/usr/bin/env bash
# Few labels, much text (SST-2): a seeded sample of 1,000 labelled training sentences, a teacher
# fine-tuned on them, and the 3-layer backbone student trained (a) on the labels alone and
# (b) distilled with the other training sentences as an unlabeled transfer set, three seeds each,
# and (c) distilled on the 1,000 labelled sentences alone (soft targets without a transfer set);
# then dev predictions of every model, experiments/results/sst2-few-labels.json ((b) against
# (a)) and sst2-few-labels-kd-only.json ((c) against (a)).
# Every step resumes or is skipped when done. Usage: experiments/scripts/few_labels.sh
set -euo pipefail
source "$(dirname "$0")/seeds.sh"
split=runs/data/sst2-1k
[ -f $split/train.tsv ] || python3 experiments/scripts/split_labels.py \
  ../shared/data/glue/SST-2/train.tsv 1000 1 $split
teacher=runs/teachers/SST-2-1k
if [ ! -f $teacher/metrics.json ]; then
  resume=(--force); [ -f $teacher/checkpoint/state.json ] && resume=(--resume)
  $kd finetune --model sentence-transformers/all-MiniLM-L6-v2 --task SST-2 --train $split/train.tsv \
    --out $teacher --epochs 10 --lr 1e-4 --batch-size 32 --seed 42 "${resume[@]}"
fi
predict_dev $teacher
distill_seeds runs/sst2-1k sst2-1k-distilbert-l3-backbone-nokd sst2-1k-distilbert-l3-backbone-transfer \
  sst2-1k-distilbert-l3-backbone-kd
runs=runs/sst2-1k/sst2-1k-distilbert-l3-backbone
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher --baseline "$runs-nokd-s*" \
  --student "$runs-transfer-s*" --out experiments/results/sst2-few-labels.json
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher --baseline "$runs-nokd-s*" \
  --student "$runs-kd-s*" --out experiments/results/sst2-few-labels-kd-only.json
