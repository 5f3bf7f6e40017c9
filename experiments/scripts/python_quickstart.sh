#!/usr/bin/env bash
# Issue #40's target: README's quick recipe (fine-tune the all-MiniLM-L6-v2 backbone on 2,000
# SST-2 sentences, then distil the 3-layer student from it) run by the kd command and by the
# Python package, seed for seed; prints both runs' dev metrics, which must agree to the last
# digit (experiments/results/python.md). About 5 minutes a side on 2 cores.
# Usage: experiments/scripts/python_quickstart.sh   (after experiments/scripts/python_tests.sh,
# which builds kd and installs the wheel in .venv-py)
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HOME=${HF_HOME:-../shared/hf-cache}
root=runs/python-quickstart
kd=${KD:-./target/release/kd}
mkdir -p $root
model=sentence-transformers/all-MiniLM-L6-v2
recipe=experiments/recipes/sst2-distilbert-l3.toml
$kd finetune --model $model --task sst2 --epochs 1 --max-train-examples 2000 \
  --lr 1e-4 --out $root/cli/teacher --force > $root/cli-teacher.json
$kd distill --recipe $recipe --set teacher.model=$root/cli/teacher \
  --set stages.0.epochs=1 --max-train-examples 4000 --out $root/cli/student --force \
  --cache-dir $root/cli/cache > $root/cli-student.json
.venv-py/bin/python - "$root" "$model" "$recipe" <<'PY'
import json, sys
import kd
root, model, recipe = sys.argv[1:]
teacher = kd.finetune(model, f"{root}/python/teacher", task="sst2", epochs=1,
                      data={"max_train_examples": 2000}, lr=1e-4, force=True)
student = kd.distill(recipe, overrides={"teacher.model": f"{root}/python/teacher",
                                         "stages.0.epochs": 1},
                     out=f"{root}/python/student", max_train_examples=4000, force=True,
                     cache_dir=f"{root}/python/cache")
json.dump(teacher, open(f"{root}/python-teacher.json", "w"))
json.dump(student, open(f"{root}/python-student.json", "w"))
PY
python3 - "$root" <<'PY'
import json, sys
root = sys.argv[1]
def load(name):
    return json.loads(open(f"{root}/{name}.json").read().strip().splitlines()[-1])
rows = [("teacher", load("cli-teacher")["value"], load("python-teacher")["value"]),
        ("student", load("cli-student")["student"]["dev"]["accuracy"],
         load("python-student")["student"]["dev"]["accuracy"])]
for name, cli, python in rows:
    print(f"{name}: kd command {cli!r}, Python {python!r}: {'same' if cli == python else 'DIFFERENT'}")
PY
