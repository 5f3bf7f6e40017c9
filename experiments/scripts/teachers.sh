#!/usr/bin/env bash
# Fine-tunes all-MiniLM-L6-v2 into a teacher for each GLUE task (hours on a 2-core CPU) and
# collects the results into experiments/results/teachers.json.
# Usage: experiments/scripts/teachers.sh [TASK...]   (from the repository root)
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
model=sentence-transformers/all-MiniLM-L6-v2
epochs_for() { case $1 in SST-2) echo 2 ;; *) echo 3 ;; esac; }
tasks=("$@")
[ ${#tasks[@]} -gt 0 ] || tasks=(SST-2 CoLA MRPC RTE STS-B)
for task in "${tasks[@]}"; do
  out=runs/teachers/$task
  eval_every=(); [ "$task" = SST-2 ] && eval_every=(--eval-every 500)
  if [ -f "$out/metrics.json" ] && [ -f "$out/model.safetensors" ] && [ ! -f "$out/.running" ]; then
    echo "teacher $task: already in $out"; continue
  fi
  mkdir -p "$out" && touch "$out/.running"
  $kd finetune --model "$model" --task "$task" --out "$out" --force \
    --epochs "$(epochs_for "$task")" --lr 1e-4 --batch-size 32 --seed 42 "${eval_every[@]}"
  rm -f "$out/.running"
done
python3 - <<'PY'
# Rows of the teachers in runs/teachers replace those recorded before; the others are kept.
import json, os
out = "experiments/results/teachers.json"
rows = {row["task"]: row for row in (json.load(open(out)) if os.path.exists(out) else [])}
for task in ["SST-2", "CoLA", "MRPC", "RTE", "STS-B"]:
    path = f"runs/teachers/{task}/metrics.json"
    if os.path.exists(path):
        m = json.load(open(path))
        best = next(h for h in m["history"] if h["step"] == m["best_step"])["dev"]
        rows[task] = {k: m[k] for k in ["task", "metric", "value", "epochs", "wall_time_s", "examples_per_s", "command"]} | {"best_epoch": m["best_epoch"], "best_step": m["best_step"], "dev": best}
json.dump(list(rows.values()), open(out, "w"), indent=2)
print(json.dumps(list(rows.values()), indent=2))
PY
