#!/usr/bin/env bash
# Fine-tunes K teachers of one task, one per seed, for an ensemble (MT-DNN's): all-MiniLM-L6-v2
# with teachers.sh's settings into runs/teachers/TASK-sSEED. An interrupted teacher resumes
# from its checkpoint; a finished one is kept.
# Usage: SEEDS="1 2 3" experiments/scripts/teacher_seeds.sh TASK   (from the repository root)
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
task=${1:?usage: teacher_seeds.sh TASK}
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
epochs=3; [ "$task" = SST-2 ] && epochs=2
for seed in ${SEEDS:-1 2 3}; do
  out=runs/teachers/$task-s$seed
  if [ -f "$out/metrics.json" ] && grep -q '"interrupted": false' "$out/metrics.json"; then
    echo "teacher $task seed $seed: already in $out"; continue
  fi
  resume=(--force); [ -f "$out/checkpoint/state.json" ] && resume=(--resume)
  $kd finetune --model sentence-transformers/all-MiniLM-L6-v2 --task "$task" --out "$out" \
    --epochs $epochs --lr 1e-4 --batch-size 32 --seed "$seed" --eval-every 500 "${resume[@]}"
done
