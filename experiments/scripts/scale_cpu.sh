#!/usr/bin/env bash
# Data parallelism on this machine (experiments/results/scale.md): the SST-2 DistilBERT recipe
# for STEPS updates (default 300) as 1 process x 2 threads and as `mpirun -np 2` x 1 thread,
# alternating, ROUNDS times (default 2); per run, the training seconds (evaluation excluded) and
# the mean all-reduce time per step and the wait for the slower rank before it, from the stage
# log. The teacher's cache is built first.
# Needs kd built both ways: target/release/kd and (--features mpi) target/mpi/release/kd.
# Usage: experiments/scripts/scale_cpu.sh OUT_DIR   (prints one JSON line a run)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: scale_cpu.sh OUT_DIR}
steps=${STEPS:-300}
rounds=${ROUNDS:-2}
rm -rf "$out" && mkdir -p "$out"
export HF_HOME=${HF_HOME:-../shared/hf-cache} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
recipe=experiments/recipes/sst2-distilbert-l3.toml
args=(distill --recipe "$recipe" --cache-dir runs/cache --set training.eval_every=100000 --force)
RAYON_NUM_THREADS=2 target/release/kd "${args[@]}" --max-steps 1 --out "$out/warm" >/dev/null 2>"$out/warm.err"
args+=(--max-steps "$steps")
report() {
    python3 - "$1" "$2" <<'PY'
import json, sys
name, run = sys.argv[1], sys.argv[2]
log = [json.loads(l) for l in open(f"{run}/1-distill/log.jsonl")]
steps = [e for e in log if "step" in e]
evals = [e["evaluation"] for e in log if "evaluation" in e]
seconds = evals[-1]["train_seconds"]
comm = [e.get("allreduce_s", 0.0) for e in steps]
wait = [e.get("wait_s", 0.0) for e in steps]
print(json.dumps({"config": name, "steps": len(steps), "train_s": round(seconds, 2),
                  "steps_per_s": round(len(steps) / seconds, 3),
                  "allreduce_ms_per_step": round(1000 * sum(comm) / len(comm), 2),
                  "wait_ms_per_step": round(1000 * sum(wait) / len(wait), 2),
                  "dev": evals[-1]["dev"]}))
PY
}
for round in $(seq "$rounds"); do
    RAYON_NUM_THREADS=2 target/release/kd "${args[@]}" --out "$out/single-$round" >/dev/null 2>"$out/single-$round.err"
    report "1 process x 2 threads" "$out/single-$round"
    mpirun -np 2 -x RAYON_NUM_THREADS=1 target/mpi/release/kd "${args[@]}" --out "$out/ranks-$round" >/dev/null 2>"$out/ranks-$round.err"
    report "2 ranks x 1 thread" "$out/ranks-$round"
done
