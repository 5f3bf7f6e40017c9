#!/usr/bin/env bash
# MT-DNN on GLUE: the teachers of the five tasks (teachers.sh), each task's single-task 3-layer
# student (sst2-distilbert-l3-backbone's recipe with that task's data and teacher) and the one
# multi-task student of the same shape (glue-mtdnn-distilbert-l3), all under runs/glue; then
# experiments/results/mtdnn-glue.json. Every run resumes; finished ones are kept.
# Usage: experiments/scripts/mtdnn_glue.sh   (from the repository root)
set -euo pipefail
source "$(dirname "$0")/seeds.sh"
tasks=(SST-2 CoLA MRPC RTE STS-B)
KD=$kd experiments/scripts/teachers.sh "${tasks[@]}"

for task in "${tasks[@]}"; do
  name=$(echo "$task" | tr 'A-Z' 'a-z' | tr -d -)-distilbert-l3-backbone
  distill_into "runs/glue/$name" --recipe experiments/recipes/sst2-distilbert-l3-backbone.toml \
    --set "name=$name" --set "data.task=$task" --set "teacher.model=runs/teachers/$task"
done
distill_into runs/glue/glue-mtdnn-distilbert-l3 --recipe experiments/recipes/glue-mtdnn-distilbert-l3.toml

python3 - <<'PY'
import json
multi = json.load(open("runs/glue/glue-mtdnn-distilbert-l3/summary.json"))
rows = []
for task in multi["tasks"]:
    name = task["name"].lower().replace("-", "") + "-distilbert-l3-backbone"
    single = json.load(open(f"runs/glue/{name}/summary.json"))
    metric = task["metric"]
    rows.append({
        "task": task["name"], "metric": metric,
        "teacher": task["teacher"]["dev"][metric],
        "single_task": single["student"]["dev"][metric],
        "multi_task": task["student_dev"][metric],
        "single_task_params": single["student"]["params"],
        "single_task_wall_time_s": single["wall_time_s"],
        "single_task_command": single["command"],
    })
result = {
    "rows": rows,
    "mean": {key: sum(r[key] for r in rows) / len(rows)
             for key in ("teacher", "single_task", "multi_task")},
    "multi_task_params": multi["student"]["params"],
    "single_task_params_total": sum(r["single_task_params"] for r in rows),
    "multi_task_wall_time_s": multi["wall_time_s"],
    "multi_task_command": multi["command"],
}
json.dump(result, open("experiments/results/mtdnn-glue.json", "w"), indent=2)
print(json.dumps(result["mean"]))
PY
