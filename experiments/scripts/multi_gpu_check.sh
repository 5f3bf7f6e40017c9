#!/usr/bin/env bash
# Data parallelism on a machine with 2 or more GPUs (experiments/results/scale.md, pending a
# device), in one run:
#   1. equality: `kd finetune` of all-MiniLM-L6-v2 (dropout off) on 2,000 SST-2 sentences for 40
#      steps on one GPU, then under `mpirun -np 2` (NCCL): the weights' largest relative difference;
#   2. timing: the same for 200 steps on 1 GPU and on every count up to the GPUs there are
#      (2, 4, 8): steps/s, and the all-reduce's milliseconds a step from the log.
# Writes $OUT/multi_gpu.json and prints it.
# Needs: mpirun (Open MPI), and kd built with `--features cuda,nccl` (KD=path, or it builds one
# with experiments/scripts/build_cuda.sh --features nccl; NCCL's library on LIBRARY_PATH and
# LD_LIBRARY_PATH). DEVICE=cpu runs the same steps on the CPU, to check the script without GPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/multi-gpu}
device=${DEVICE:-cuda}
mkdir -p "$out"
export HF_HOME=${HF_HOME:-../shared/hf-cache} OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [[ $device == cuda ]]; then
    gpus=$(nvidia-smi -L | grep -c '^GPU')
    ((gpus >= 2)) || { echo "multi_gpu_check: $gpus GPU(s); data parallelism needs 2 or more" >&2; exit 1; }
    nvidia-smi -L >&2
    if [[ -z ${KD:-} ]]; then
        experiments/scripts/build_cuda.sh --features nccl
        KD=$HOME/.cache/kd-cuda-target/release/kd
        eval "$(experiments/scripts/cuda_toolkit.sh --env)"
    fi
else
    gpus=2
    KD=${KD:-target/mpi/release/kd}
fi
# all-MiniLM-L6-v2 without dropout: ranks draw their own dropout masks, a single device its one.
model=$out/minilm-no-dropout
python3 - "$model" <<'PY'
import json, os, shutil, sys, glob
src = glob.glob(os.path.expanduser(os.environ["HF_HOME"]) + "/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/*/")[0]
shutil.copytree(src, sys.argv[1], dirs_exist_ok=True)
path = os.path.join(sys.argv[1], "config.json")
config = json.load(open(path))
config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
os.remove(path); json.dump(config, open(path, "w"))
PY
data=$out/data
mkdir -p "$data"
head -2001 ../shared/data/glue/SST-2/train.tsv >"$data/train.tsv"
cp ../shared/data/glue/SST-2/dev.tsv "$data/dev.tsv"
finetune() { # ranks steps out
    local launch=()
    (($1 > 1)) && launch=(mpirun -np "$1" -x RAYON_NUM_THREADS=1)
    "${launch[@]}" "$KD" finetune --model "$model" --task sst2 --data-dir "$data" --device "$device" \
        --max-steps "$2" --eval-every 100000 --lr 1e-4 --batch-size 32 --out "$3" --force >/dev/null 2>"$3.err"
}
finetune 1 40 "$out/equal-1"
finetune 2 40 "$out/equal-2"
ranks=(1)
for n in 2 4 8; do ((n <= gpus)) && ranks+=("$n"); done
for n in "${ranks[@]}"; do finetune "$n" 200 "$out/time-$n"; done
python3 - "$out" "${ranks[@]}" <<'PY'
import json, struct, sys, array
out, ranks = sys.argv[1], sys.argv[2:]
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n)); data = f.read()
    return {k: array.array("f", data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"}
one, two = (tensors(f"{out}/equal-{n}/model.safetensors") for n in (1, 2))
worst = max(max(abs(x - y) for x, y in zip(one[k], two[k])) / max(max(map(abs, one[k])), 1e-12)
            for k in one if not k.endswith("key.bias"))
runs = {}
for n in ranks:
    log = [json.loads(l) for l in open(f"{out}/time-{n}/log.jsonl")]
    steps = [e for e in log if "step" in e]
    seconds = [e["evaluation"]["train_seconds"] for e in log if "evaluation" in e][-1]
    runs[n] = {"steps_per_s": round(len(steps) / seconds, 3),
               "allreduce_ms_per_step": round(1000 * sum(e.get("allreduce_s", 0) for e in steps) / len(steps), 3)}
report = {"largest_relative_difference_2_ranks_vs_1": worst, "timing": runs}
json.dump(report, open(f"{out}/multi_gpu.json", "w"), indent=1)
print(json.dumps(report, indent=1))
PY
