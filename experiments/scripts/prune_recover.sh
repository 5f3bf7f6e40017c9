#!/usr/bin/env bash
# Prune, then recover by distillation (#39, experiments/results/prune.md), resumable:
#   1. the SST-2 teacher ($TEACHER, default runs/teachers/SST-2: experiments/scripts/teachers.sh
#      makes it) pruned to $HEADS heads a layer (default 8) and FFN $FFN (default 768) by
#      gradient importance on the dev set, into runs/pruned/sst2-h$HEADS-f$FFN, with its dev
#      predictions (the "before recovery" row);
#   2. for seeds $SEEDS (default 1 2 3): the pruned model distilled from the unpruned teacher by
#      experiments/recipes/sst2-prune-recover.toml into runs/prune-recover/h$HEADS-f$FFN-sSEED,
#      with its dev predictions.
#   3. with the argument `tinybert`, instead: the rival of the same size, a TinyBERT-style
#      student distilled from the same teacher by experiments/recipes/sst2-tinybert-18m.toml,
#      seeds $SEEDS, into runs/prune-recover/sst2-tinybert-18m-sSEED;
#   4. with the argument `compare` (the machine to itself): `kd compare` of the teacher, the
#      pruned model, seed 1's recovered one and seed 1's TinyBERT-style one (each when there), in kd
#      and as ONNX graphs in ONNX Runtime (size, batch-1 latency, throughput, accuracy,
#      agreement), into experiments/results/prune-compare-h$HEADS-f$FFN.
# Extra `kd distill` arguments (a quick setting, say) come from $DISTILL_ARGS, split on spaces;
# $RUNS (default runs) holds the outputs.
# Usage: [TEACHER=DIR] [HEADS=8] [FFN=768] experiments/scripts/prune_recover.sh [tinybert|compare]
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/scripts/seeds.sh
teacher=${TEACHER:-runs/teachers/SST-2}
heads=${HEADS:-8}
ffn=${FFN:-768}
require_teacher "$teacher"
runs=${RUNS:-runs}
pruned=$runs/pruned/sst2-h$heads-f$ffn
if [ ! -f "$pruned/prune.json" ]; then
  $kd prune --model "$teacher" --task SST-2 --heads-per-layer "$heads" --ffn-size "$ffn" \
    --out "$pruned" --force
fi
predict_dev "$pruned"
# shellcheck disable=SC2206 # split on purpose
extra=(${DISTILL_ARGS:-})
tinybert=sst2-tinybert-18m
if [ "${1:-}" = tinybert ]; then
  DISTILL_ARGS=(--set "teacher.model=$teacher" ${extra[@]+"${extra[@]}"})
  distill_seeds "$runs/prune-recover" $tinybert
  exit
fi
if [ "${1:-}" = compare ]; then
  models=("$teacher" "$pruned")
  for model in "$runs/prune-recover/h$heads-f$ffn-s1" "$runs/prune-recover/$tinybert-s1"; do
    [ -f "$model/summary.json" ] && models+=("$model")
  done
  graphs=()
  for model in "${models[@]}"; do
    # Each graph as its model is: the pruned ones with 8 heads a layer (runs/onnx/NAME held,
    # before kd wrote pruned heads, graphs with those heads put back as zeros).
    graph=$runs/onnx/$(basename "$model")-graph
    [ -d "$graph" ] || $kd export --model "$model" --format onnx --out "$graph"
    graphs+=("$graph")
  done
  $kd compare --models "${models[@]}" "${graphs[@]}" --task SST-2 \
    --onnx-python "${ONNX_PYTHON:-.venv-ref/bin/python}" \
    --out "experiments/results/prune-compare-h$heads-f$ffn" --force
  exit
fi
for seed in ${SEEDS:-1 2 3}; do
  out=$runs/prune-recover/h$heads-f$ffn-s$seed
  distill_into "$out" --recipe experiments/recipes/sst2-prune-recover.toml \
    --set "teacher.model=$teacher" --set "student.model=$pruned" --set "training.seed=$seed" \
    ${extra[@]+"${extra[@]}"}
  predict_dev "$out"
done
