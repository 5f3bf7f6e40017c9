#!/usr/bin/env bash
# #16's fault harness. A quick `kd finetune` and a quick `kd distill` (teacher logits and hidden
# states cached, a hidden-state stage then a prediction stage) each run once straight; then, in
# trials, each is started and killed at random moments (SIGINT, SIGTERM or SIGKILL; 1 to 4
# times a trial, during training, evaluation, checkpoint or cache writes as they come),
# resumed after each kill (started again with --force when no checkpoint was written yet), and
# run to the end. The final weights must equal the straight run's byte for byte and the dev
# history its history. Kills per command: KILLS (50), counting those already in the trial log
# (a rerun continues). Results:
# experiments/results/reliability-kills.json.
# Usage: experiments/scripts/kill_resume.sh   (from the repository root)
set -uo pipefail
export HF_HOME=${HF_HOME:-../shared/hf-cache}
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
root=runs/kill-resume; mkdir -p $root
kills_wanted=${KILLS:-50}
finetune=(finetune --model sentence-transformers/all-MiniLM-L6-v2 --task SST-2
  --max-train-examples 320 --max-seq-len 32 --batch-size 16 --epochs 2 --eval-every 5)
distill=(distill --recipe experiments/recipes/sst2-tinybert4.toml --cache-dir $root/cache
  --max-train-examples 320 --set data.max_seq_len=32 --set training.batch_size=16
  --set training.eval_every=5 --set stages.0.epochs=1 --set stages.1.epochs=1
  --set "stages.0.objective.components=[{kind=\"hidden_mse\", layers=\"uniform\"}]")
signals=(INT TERM KILL)
log=$root/trials.jsonl

# `run_to_end OUT ARGS...`: resume OUT until the command succeeds.
run_to_end() {
  local out=$1; shift
  for _ in 1 2 3 4 5; do
    "$kd" "$@" --out "$out" --resume 2>>"$out.stderr" >/dev/null && return 0
    grep -q "cannot resume\|no checkpoint" "$out.stderr" &&
      { "$kd" "$@" --out "$out" --force 2>>"$out.stderr" >/dev/null && return 0; }
  done
  return 1
}

# `same STRAIGHT OUT`: identical weights and dev history.
same() {
  cmp -s "$1/model.safetensors" "$2/model.safetensors" || return 1
  python3 - "$1" "$2" <<'PY'
import glob, json, sys
def history(run):
    rows = []
    for log in sorted(glob.glob(f"{run}/**/log.jsonl", recursive=True)) + glob.glob(f"{run}/log.jsonl"):
        for line in open(log):
            entry = json.loads(line)
            if "evaluation" in entry:
                entry["evaluation"].pop("train_seconds", None)
                rows.append(entry["evaluation"])
    return rows
sys.exit(0 if history(sys.argv[1]) == history(sys.argv[2]) else 1)
PY
}

for name in finetune distill; do
  declare -n args=$name
  straight=$root/$name-straight
  [ -f "$straight/model.safetensors" ] || "$kd" "${args[@]}" --out "$straight" --force >/dev/null 2>&1
  start=$(date +%s.%N); "$kd" "${args[@]}" --out "$root/$name-timing" --force >/dev/null 2>&1
  seconds=$(python3 -c "print($(date +%s.%N) - $start)")
  # A rerun continues the counts recorded in $log.
  read -r kills trial < <(python3 - "$log" "$name" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
rows = [row for row in rows if row["command"] == sys.argv[2]]
print(sum(len(row["signals"].split()) for row in rows), max([row["trial"] for row in rows], default=0))
PY
)
  while [ $kills -lt "$kills_wanted" ]; do
    trial=$((trial + 1)); out=$root/$name-trial; rm -rf "$out" "$out.stderr"
    planned=$((RANDOM % 4 + 1)); sent=()
    first=(--force)
    for _ in $(seq $planned); do
      signal=${signals[$((RANDOM % 3))]}
      "$kd" "${args[@]}" --out "$out" "${first[@]}" >/dev/null 2>>"$out.stderr" &
      pid=$!
      sleep "$(python3 -c "import random; print(random.uniform(0.3, $seconds))")"
      if kill -0 $pid 2>/dev/null; then kill -s "$signal" $pid; sent+=("$signal"); kills=$((kills + 1)); fi
      wait $pid 2>/dev/null
      first=(--resume); [ -f "$out/checkpoint/state.json" ] || [ -f "$out/1-intermediate/checkpoint/state.json" ] || first=(--force)
    done
    if run_to_end "$out" "${args[@]}" && same "$straight" "$out"; then result=identical; else result=DIFFERENT; fi
    echo "{\"command\": \"$name\", \"trial\": $trial, \"signals\": \"${sent[*]}\", \"result\": \"$result\"}" | tee -a $log
  done
done
python3 - $log <<'PY'
import json, sys, collections
rows = [json.loads(line) for line in open(sys.argv[1])]
summary = {}
for command in ("finetune", "distill"):
    mine = [r for r in rows if r["command"] == command]
    signals = collections.Counter(s for r in mine for s in r["signals"].split())
    summary[command] = {"trials": len(mine), "kills": sum(signals.values()), "by_signal": signals,
                        "identical": sum(r["result"] == "identical" for r in mine)}
json.dump(summary, open("experiments/results/reliability-kills.json", "w"), indent=2)
print(json.dumps(summary))
PY
