#!/usr/bin/env bash
# bench.md's per-CPU figures in one go: `kd bench` beside PyTorch ($ROUNDS rounds of every
# case, default 4, kd and PyTorch taking turns to go first), then batch 1 for a student and a
# teacher beside ONNX Runtime and PyTorch eager, on the dev sentences of DATA (`kd bench`'s
# data arguments, e.g. `--dev my.tsv --text-column text --label-column label`; default
# `--task SST-2`). JSON goes to experiments/results/{bench,latency}-CPU-DATE.json, CPU read
# from lscpu; a second run the same day adds the time to DATE, so no earlier result is
# overwritten. Run on an idle machine
# (pause background runs first); needs .venv-ref (benches/setup.sh).
# Usage: experiments/scripts/bench_cpu.sh [STUDENT_DIR [TEACHER_DIR [DATA...]]]
set -euo pipefail
source experiments/scripts/seeds.sh
python=${PYTHON:-.venv-ref/bin/python}
[ -x "$python" ] || { echo "no $python: run benches/setup.sh first" >&2; exit 1; }
student=${1:-runs/sst2-ensemble/sst2-distilbert-l3-s1}
teacher=${2:-runs/teachers/SST-2}
data=("${@:3}")
[ ${#data[@]} -gt 0 ] || data=(--task SST-2)
for model in "$student" "$teacher"; do
  [ -f "$model/config.json" ] || {
    echo "no task model in $model: pass one, or train the defaults (teachers.sh, ensemble_sst2.sh)" >&2
    exit 1
  }
done
cpu=$(lscpu | sed -n 's/^Model name: *//p')
results=experiments/results
slug=$(echo "$cpu" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
name=$slug-$(date -u +%F)
compgen -G "$results/*-$name*.json" >/dev/null && name=$slug-$(date -u +%FT%H%M)
echo "$cpu, $(nproc) threads: $results/{bench,latency}-$name.json"
$kd bench --pytorch "$python" --rounds "${ROUNDS:-4}" --json "$results/bench-$name.json"
$kd bench --cases latency --model "$student" --model "$teacher" "${data[@]}" \
  --pytorch "$python" --json "$results/latency-$name.json"
