#!/usr/bin/env bash
# Full labels plus a transfer set (SST-2): sst2-distilbert-l3 with 50,000 unlabeled IMDB
# sentences added (sst2-distilbert-l3-imdb) against its hard-label baseline
# (sst2-distilbert-l3-nokd), three seeds each, against the SST-2 teacher of
# experiments/scripts/teachers.sh; then experiments/results/sst2-transfer.json.
# EPOCHS (default 1, the shipped recipes say 3) sets both arms' epochs to fit a session;
# every run resumes. Usage: experiments/scripts/full_labels_transfer.sh
set -euo pipefail
teacher=runs/teachers/SST-2
DISTILL_ARGS=(--set "stages.0.epochs=${EPOCHS:-1}")
source "$(dirname "$0")/seeds.sh"
require_teacher $teacher
predict_dev $teacher
distill_seeds runs/sst2-transfer sst2-distilbert-l3-nokd sst2-distilbert-l3-imdb
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
  --baseline 'runs/sst2-transfer/sst2-distilbert-l3-nokd-s*' \
  --student 'runs/sst2-transfer/sst2-distilbert-l3-imdb-s*' \
  --out experiments/results/sst2-transfer.json
