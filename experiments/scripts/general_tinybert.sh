#!/usr/bin/env bash
# TinyBERT's two stages on SST-2: general-tinybert-l4 (general distillation on the shared
# corpus, resumed until done), then sst2-tinybert4-general (task distillation from it) against
# sst2-tinybert4 (the same task recipe from random initialisation), three seeds each,
# interleaved; then experiments/results/sst2-general-tinybert.json. Every run resumes.
# Usage: experiments/scripts/general_tinybert.sh
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
teacher=runs/teachers/SST-2
[ -f $teacher/metrics.json ] || { echo "no SST-2 teacher: run experiments/scripts/teachers.sh SST-2" >&2; exit 1; }
source "$(dirname "$0")/seeds.sh"
general=runs/general/tinybert-l4
if ! { [ -f $general/summary.json ] && grep -q '"interrupted": false' $general/summary.json; }; then
  resume=(--force); [ -d $general ] && resume=(--resume)
  $kd distill --recipe experiments/recipes/general-tinybert-l4.toml --out $general "${resume[@]}"
fi
# The task recipe reads the general student from runs/general-tinybert-l4.
[ -e runs/general-tinybert-l4 ] || ln -s general/tinybert-l4 runs/general-tinybert-l4
predict_dev $teacher
distill_seeds runs/sst2-general sst2-tinybert4-general sst2-tinybert4
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
  --baseline 'runs/sst2-general/sst2-tinybert4-s*' \
  --student 'runs/sst2-general/sst2-tinybert4-general-s*' \
  --out experiments/results/sst2-general-tinybert.json
