#!/usr/bin/env bash
# MiniLM's value relation (issue #39, experiments/results/prune.md's last table): sst2-minilm4
# (last-layer attention KL and value relation, then the prediction layer) against
# sst2-minilm4-novr (the same without the value relation), seeds $SEEDS (default 1 2 3), each
# on the first $TRAIN (default 8000) SST-2 training sentences, in runs/value-relation; then
# paired.py's McNemar tests (experiments/results/value-relation.json). Resumable: a finished
# run is skipped, an interrupted one continued. Needs the SST-2 teacher (teachers.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/scripts/seeds.sh
teacher=runs/teachers/SST-2
require_teacher $teacher
predict_dev $teacher
DISTILL_ARGS=(--max-train-examples "${TRAIN:-8000}")
distill_seeds runs/value-relation sst2-minilm4-novr sst2-minilm4
python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
  --baseline "runs/value-relation/sst2-minilm4-novr-s*" \
  --student "runs/value-relation/sst2-minilm4-s*" --out experiments/results/value-relation.json
