#!/usr/bin/env bash
# MT-DNN's ensemble on SST-2: three teachers fine-tuned with seeds 1, 2, 3 (teacher_seeds.sh),
# then sst2-distilbert-l3-ensemble (soft targets averaged over the three) against
# sst2-distilbert-l3 distilled from the first of them alone (the teacher whose layers both
# students copy), student seeds $SEEDS (default 1 2 3), under runs/sst2-ensemble; then
# experiments/results/sst2-ensemble.json. Every run resumes; finished ones are kept.
# Usage: experiments/scripts/ensemble_sst2.sh   (from the repository root)
set -euo pipefail
source "$(dirname "$0")/seeds.sh"
SEEDS="1 2 3" KD=$kd experiments/scripts/teacher_seeds.sh SST-2
teacher=runs/teachers/SST-2-s1
predict_dev $teacher
distill_seeds runs/sst2-ensemble sst2-distilbert-l3-ensemble
DISTILL_ARGS=(--set "teacher.model=$teacher")
distill_seeds runs/sst2-ensemble sst2-distilbert-l3
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
  --baseline 'runs/sst2-ensemble/sst2-distilbert-l3-s*' \
  --student 'runs/sst2-ensemble/sst2-distilbert-l3-ensemble-s*' \
  --out experiments/results/sst2-ensemble.json
