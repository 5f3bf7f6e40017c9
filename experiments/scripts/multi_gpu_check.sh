#!/usr/bin/env bash
# Data parallelism on a machine with 2 or more GPUs (experiments/results/scale.md, pending a
# device), in one command:
#   1. equality: `kd finetune` of all-MiniLM-L6-v2 (dropout off) on 2,000 SST-2 sentences for 40
#      steps on one GPU, then under `mpirun -np 2` (NCCL): the weights' largest relative difference;
#   2. timing: the same for 200 steps on 1 GPU and on every count up to the GPUs there are
#      (2, 4, 8): steps/s, and the all-reduce's milliseconds a step from the log.
# Everything lands in OUT (default runs/multi-gpu): multi_gpu.json (printed at the end),
# stages.tsv (each run: how it ended, seconds), each run's output (runs/ holds the models: leave
# it out of what is kept). A run that fails or runs past KD_DEADLINE is named there and the next
# one starts; the report is written in any case.
#
# Usage: experiments/scripts/multi_gpu_check.sh [OUT]
# Environment:
#   KD_BUNDLE    a folder from `experiments/scripts/cuda_bundle.sh --multi-gpu` (kd built with CUDA
#                and NCCL, Open MPI, the slice of ../shared): nothing to build or install here
#   KD           or a kd built with --features nccl beforehand (else build_cuda.sh --features nccl
#                builds one), launched by the machine's mpirun (Open MPI)
#   KD_DEADLINE  seconds the whole check may take (default 3600)
#   TIME_STEPS   the timing runs' steps (default 200)
#   KD_CHECK_DEVICE  cuda, or cpu for a rehearsal on a machine without GPUs: the same runs on the
#                CPU with 2 ranks (KD defaults to target/mpi/release/kd, a CPU build with MPI)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/multi-gpu}
device=${KD_CHECK_DEVICE:-cuda}
name=multi_gpu_check
source experiments/scripts/gpu_common.sh

begin_check "$out"
if [ "$device" = cuda ]; then
  (( gpus >= 2 )) || fail "$gpus GPU(s); data parallelism needs 2 or more"
else
  gpus=2
fi
export HF_HOME=$shared/hf-cache OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -z "${KD:-}" ] && [ "$device" = cuda ]; then
  experiments/scripts/build_cuda.sh --features nccl
  KD=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}/release/kd
fi
KD=${KD:-target/mpi/release/kd}
# A kd with CUDA needs the machine's CUDA libraries and NCCL (a CPU build with MPI, none).
if ldd "$KD" | grep -q libcuda; then cuda_libraries; fi
command -v mpirun >/dev/null || fail "no mpirun here (KD_BUNDLE brings Open MPI)"
say "$(mpirun --version | head -1); $(ldd "$KD" | sed -n 's/.*\(libnccl[^ ]*\) => \([^ ]*\).*/\1 from \2/p')"

# all-MiniLM-L6-v2 without dropout: ranks draw their own dropout masks, a single device its one.
runs=$out/runs
model=$runs/minilm-no-dropout
mkdir -p "$runs"
python3 - "$model" <<'PY'
import json, os, shutil, sys, glob
src = glob.glob(os.path.expanduser(os.environ["HF_HOME"]) + "/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*/")[0]
shutil.copytree(src, sys.argv[1], dirs_exist_ok=True)
path = os.path.join(sys.argv[1], "config.json")
config = json.load(open(path))
config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
os.remove(path); json.dump(config, open(path, "w"))
PY
data=$runs/data
mkdir -p "$data"
head -2001 "$shared/data/glue/SST-2/train.tsv" >"$data/train.tsv"
cp "$shared/data/glue/SST-2/dev.tsv" "$data/dev.tsv"
finetune() { # ranks steps run-name
  local launch=()
  (( $1 == 1 )) || launch=(mpirun -np "$1" -x RAYON_NUM_THREADS=1)
  limited "${launch[@]}" "$KD" finetune --model "$model" --task sst2 --data-dir "$data" \
    --device "$device" --max-steps "$2" --eval-every 100000 --lr 1e-4 --batch-size 32 \
    --out "$runs/$3" --force
}
stage equal-1 finetune 1 40 equal-1
stage equal-2 finetune 2 40 equal-2
ranks=(1)
for n in 2 4 8; do (( n > gpus )) || ranks+=("$n"); done
for n in "${ranks[@]}"; do stage "time-$n" finetune "$n" "${TIME_STEPS:-200}" "time-$n"; done

python3 - "$out" "$(( $(date +%s) - started ))" "${ranks[@]}" <<'PY'
import json, struct, sys, array
from pathlib import Path
out, seconds, ranks = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n)); data = f.read()
    return {k: array.array("f", data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"}
worst = None
models = [out / f"runs/equal-{n}/model.safetensors" for n in (1, 2)]
if all(m.exists() for m in models):
    one, two = map(tensors, models)
    worst = max(max(abs(x - y) for x, y in zip(one[k], two[k])) / max(max(map(abs, one[k])), 1e-12)
                for k in one if not k.endswith("key.bias"))
runs = {}
for n in ranks:
    log_path = out / f"runs/time-{n}/log.jsonl"
    if not log_path.exists():
        continue
    log = [json.loads(line) for line in open(log_path)]
    steps = [e for e in log if "step" in e]
    evaluations = [e["evaluation"]["train_seconds"] for e in log if "evaluation" in e]
    if not (steps and evaluations):
        continue
    runs[n] = {"steps_per_s": round(len(steps) / evaluations[-1], 3),
               "allreduce_ms_per_step": round(1000 * sum(e.get("allreduce_s", 0) for e in steps) / len(steps), 3)}
stages = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()]
report = {"machine": (out / "gpu.txt").read_text().strip(), "check_seconds": seconds,
          "stages": {name: {"status": status, "seconds": int(took)} for name, status, took in stages},
          "largest_relative_difference_2_ranks_vs_1": worst, "timing": runs}
json.dump(report, open(out / "multi_gpu.json", "w"), indent=1)
print(json.dumps(report, indent=1))
PY
