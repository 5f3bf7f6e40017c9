#!/usr/bin/env bash
# Runs the shipped distillation recipes (hours on a 2-core CPU; each resumes if interrupted)
# and collects experiments/results/{sst2,mrpc,rte}.json.
# Needs the teachers of experiments/scripts/teachers.sh in runs/teachers/.
# Usage: experiments/scripts/students.sh [RECIPE...]   (from the repository root)
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
cargo build --release -p kd-experiments
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(sst2-distilbert-l3 sst2-distilbert-l3-nokd \
  sst2-distilbert-l3-backbone sst2-distilbert-l3-backbone-nokd sst2-distilbert-l3-aug \
  sst2-tinybert-l4 sst2-tinybert-l4-nokd sst2-tinybert-l4-aug mrpc-distilbert-l3 rte-distilbert-l3)
for recipe in "${recipes[@]}"; do
  if [[ "$recipe" == *-aug ]] && [ ! -f runs/augment/sst2-x4.tsv ]; then
    ./target/release/kd augment --model runs/teachers/SST-2 --task sst2 --per-example 4 \
      --out runs/augment/sst2-x4.tsv
  fi
  out=runs/$recipe
  if [ -f "$out/summary.json" ] && grep -q '"interrupted": false' "$out/summary.json"; then
    echo "$recipe: done in $out"; continue
  fi
  resume=(--force)
  [ -d "$out" ] && resume=(--resume)
  ./target/release/kd distill --recipe "experiments/recipes/$recipe.toml" --out "$out" "${resume[@]}"
done
python3 - <<'PY'
import json, os
rows = {}
teachers = {t["task"]: t for t in json.load(open("experiments/results/teachers.json"))}
for recipe in sorted(os.listdir("experiments/recipes")):
    name = recipe.removesuffix(".toml")
    path = f"runs/{name}/summary.json"
    if not os.path.exists(path):
        continue
    s = json.load(open(path))
    task = s["task"]
    table = rows.setdefault(task, {})
    teacher = s["teacher"]
    table.setdefault("teacher", {"name": f"teacher-{task}", "role": "teacher", "layers": teacher["layers"],
        "hidden": teacher["hidden"], "params": teacher["params"], f"dev_{s['metric']}": teacher["dev"][s["metric"]],
        "wall_time_s": round(teachers[task]["wall_time_s"], 1), "command": teachers[task]["command"]})
    student = s["student"]
    table[name] = {"name": name, "role": "baseline" if name.endswith("-nokd") else "student",
        "layers": student["layers"], "hidden": student["hidden"], "params": student["params"],
        f"dev_{s['metric']}": student["dev"][s["metric"]], "wall_time_s": round(s["wall_time_s"], 1),
        "command": s["command"]}
for task, table in rows.items():
    out = "experiments/results/sst2.json" if task == "SST-2" else f"experiments/results/{task.lower()}.json"
    json.dump(list(table.values()), open(out, "w"), indent=2)
    print(out, json.dumps(list(table.values()), indent=2))
PY
