#!/usr/bin/env bash
# bench.md's end-to-end comparison: the SST-2 DistilBERT recipe to its step-500 evaluation,
# kd (full 3-epoch schedule, interrupted after that evaluation) beside the PyTorch reference
# with length-grouped, dynamically padded batches. kd runs twice: with a cold teacher cache
# (its logits and compared states computed first) and a warm one. Run on an idle machine.
# Usage: experiments/scripts/e2e_sst2.sh
set -euo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
kd=${KD:-./target/release/kd}
python=${PYTHON:-.venv-ref/bin/python}
cache=runs/e2e/cache
rm -rf $cache
mkdir -p runs/e2e
for run in cold warm; do
  out=runs/e2e/kd-$run
  rm -rf $out  # so that the wait below reads this run's log, not an earlier one's
  start=$(date +%s.%N)
  $kd distill --recipe experiments/recipes/sst2-distilbert-l3.toml --out $out --force \
    --cache-dir $cache > runs/e2e/kd-$run.log 2>&1 &
  pid=$!
  until grep -q '{"evaluation":{"step":500,' $out/1-distill/log.jsonl 2>/dev/null; do
    kill -0 $pid 2>/dev/null || { tail -5 runs/e2e/kd-$run.log >&2; exit 1; }
    sleep 0.5
  done
  # SIGTERM, which kd handles as Ctrl-C.
  kill -TERM $pid; wait $pid || true
  end=$(date +%s.%N)
  python3 - "$out" "$start" "$end" "$run" <<'PY'
import json, sys
out, start, end, run = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
evaluation = next(json.loads(l)["evaluation"] for l in open(f"{out}/1-distill/log.jsonl") if '"evaluation"' in l)
print(json.dumps({"run": f"kd ({run} cache)", "train_seconds": evaluation["train_seconds"],
                  "wall_seconds": end - start, "dev": evaluation["dev"]}))
PY
done
start=$(date +%s.%N)
( cd benches && ../$python pytorch_distill_sst2.py --teacher ../runs/teachers/SST-2 \
    --data ../../shared/data/glue/SST-2 --max-steps 500 --eval-every 500 --group-by-length ) \
  > runs/e2e/torch-grouped.log
echo "{\"run\": \"PyTorch grouped\", \"wall_seconds\": $(echo "$(date +%s.%N) - $start" | bc), \"last\": $(tail -1 runs/e2e/torch-grouped.log)}"
