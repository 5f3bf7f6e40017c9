#!/usr/bin/env bash
# DistilBERT's pre-training objective as a general stage: general-distilbert-l3 (layers 0, 2, 4
# of all-MiniLM-L6-v2; mlm + cosine + hidden_mse on the shared corpus, resumed until done), then
# SST-2 from it by the DistilBERT task recipe (sst2-distilbert-l3-general) and by hard labels
# (sst2-distilbert-l3-general-nokd), against the same recipes from the backbone's layers as they
# are (sst2-distilbert-l3-backbone, -backbone-nokd), seeds $SEEDS (default 1 2 3), interleaved;
# then experiments/results/sst2-general-distilbert{,-nokd}.json. Every run resumes.
# Usage: [SEEDS="1"] experiments/scripts/general_distilbert.sh   (from the repository root)
set -euo pipefail
teacher=runs/teachers/SST-2
source "$(dirname "$0")/seeds.sh"
require_teacher $teacher
general_stage distilbert-l3
predict_dev $teacher
distill_seeds runs/sst2-general-distilbert sst2-distilbert-l3-general sst2-distilbert-l3-backbone \
  sst2-distilbert-l3-general-nokd sst2-distilbert-l3-backbone-nokd
for kind in "" -nokd; do
  python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
    --baseline "runs/sst2-general-distilbert/sst2-distilbert-l3-backbone$kind-s*" \
    --student "runs/sst2-general-distilbert/sst2-distilbert-l3-general$kind-s*" \
    --out "experiments/results/sst2-general-distilbert$kind.json"
done
