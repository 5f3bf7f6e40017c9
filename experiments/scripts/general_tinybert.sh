#!/usr/bin/env bash
# TinyBERT's two stages on SST-2: general-tinybert-l4 (general distillation on the shared
# corpus, resumed until done), then sst2-tinybert4-general (task distillation from it) against
# sst2-tinybert4 (the same task recipe from random initialisation), three seeds each,
# interleaved; then experiments/results/sst2-general-tinybert.json. Every run resumes.
# Usage: experiments/scripts/general_tinybert.sh
set -euo pipefail
teacher=runs/teachers/SST-2
source "$(dirname "$0")/seeds.sh"
require_teacher $teacher
general_stage tinybert-l4
predict_dev $teacher
distill_seeds runs/sst2-general sst2-tinybert4-general sst2-tinybert4
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
  --baseline 'runs/sst2-general/sst2-tinybert4-s*' \
  --student 'runs/sst2-general/sst2-tinybert4-general-s*' \
  --out experiments/results/sst2-general-tinybert.json
