#!/usr/bin/env bash
# experiments/results/compare-sst2.md's table: the SST-2 teacher, a DistilBERT-style and a
# TinyBERT-style student, each student's int8 export, its smallest export (vocabulary pruned
# to SST-2's train sentences, f16, int8 dense layers and word embeddings) and its ONNX exports
# (f32, and pruned + int8) run by ONNX Runtime, in one `kd compare` on the dev set.
# Run with the machine otherwise idle: the latencies are measured one sentence at a time.
# Usage: experiments/scripts/compare_sst2.sh [TEACHER DISTILBERT_STUDENT TINYBERT_STUDENT]
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
python=${PYTHON:-.venv-ref/bin/python}
teacher=${1:-runs/teachers/SST-2}
students=("${2:-runs/sst2-transfer/sst2-distilbert-l3-imdb-s1}" "${3:-runs/sst2-general/sst2-tinybert4-general-s1}")
exports=runs/exports
mkdir -p $exports
texts=$exports/sst2-train-sentences.txt
tail -n +2 ../shared/data/glue/SST-2/train.tsv | cut -f1 > $texts
models=("$teacher")
for student in "${students[@]}"; do
  name=$(basename "$student")
  export_to() { # NAME FROM [kd export flags...]
    local out=$exports/$1 from=$2; shift 2
    [ -d "$out" ] || $kd export --model "$from" --out "$out" "$@"
    models+=("$out")
  }
  models+=("$student")
  export_to "$name-int8" "$student" --quantize int8
  export_to "$name-small" "$student" --prune-vocab $texts --dtype f16 --quantize int8-embeddings
  export_to "$name-onnx" "$student" --format onnx
  [ -d $exports/$name-pruned ] || $kd export --model "$student" --out $exports/$name-pruned --prune-vocab $texts
  export_to "$name-onnx-small" $exports/$name-pruned --format onnx --quantize int8-embeddings
done
$kd compare --models "${models[@]}" --task SST-2 --onnx-python "$python" --out runs/compare-sst2 --force
