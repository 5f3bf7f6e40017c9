#!/usr/bin/env bash
# kd on one NVIDIA GPU, in one command (about 8 minutes on an H100/H200 with kd prebuilt):
#  1. the machine: GPU, driver (CUDA 13 needs 580 or later) and toolkit found;
#  2. kd built with CUDA (experiments/scripts/build_cuda.sh), unless KD names a prebuilt one;
#  3. tests/gpu.rs with KD_REQUIRE_GPU=1: MiniLM's logits and intermediates, one step's
#     gradients and AdamW's update on the GPU against the CPU, and bf16 logits against f32;
#  4. `kd bench --device cuda` (small and base shapes; gemm, inference, train, distill), f32 and
#     bf16, beside PyTorch eager on the same GPU when PYTHON has torch with CUDA;
#  5. the SST-2 DistilBERT recipe for 300 steps on the GPU (its teacher fine-tuned there from
#     all-MiniLM-L6-v2 first), beside benches/pytorch_distill_sst2.py --group-by-length.
# Everything lands in OUT (default experiments/results/gpu-<date>): gpu.md (the figures, to copy
# into experiments/results/gpu.md), gpu.json, and each step's own output.
#
# Usage: experiments/scripts/gpu_check.sh [OUT]
# Environment:
#   KD_BUNDLE    a folder from experiments/scripts/cuda_bundle.sh (kd and the tests/gpu.rs
#                binary, built with CUDA on a CPU machine, gzipped): no build here, so that the
#                GPU's minutes go to measuring
#   KD           or a kd built with --features cuda beforehand (build_cuda.sh) ...
#   KD_GPU_TEST  ... and the tests/gpu.rs binary built with it
#   PYTHON       a Python with torch (CUDA) and transformers (default .venv-ref/bin/python);
#                without one, the PyTorch columns say so
#   STEPS        the recipe's steps (default 300)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/results/gpu-$(date -u +%Y-%m-%dT%H%M)}
steps=${STEPS:-300}
shared=${KD_SHARED_DIR:-../shared}
export HF_HOME=${HF_HOME:-$shared/hf-cache}
mkdir -p "$out"
say() { echo "gpu_check: $*" >&2; }
fail() { say "$*"; exit 1; }
started=$(date +%s)

# 1. The machine.
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 \
  >"$out/gpu.txt" || fail "nvidia-smi found no GPU"
IFS=, read -r gpu_name driver memory <"$out/gpu.txt"
driver=${driver// /}
say "GPU:${gpu_name}, driver ${driver},${memory}"
[ "${driver%%.*}" -ge 580 ] || fail "driver $driver: CUDA 13 (kd's toolkit) needs 580 or later"
eval "$(experiments/scripts/cuda_toolkit.sh --env)"
toolkit=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
say "toolkit: CUDA $toolkit in $CUDA_HOME"

# 2. kd with CUDA, and the parity test's binary.
target=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}
if [ -n "${KD_BUNDLE:-}" ]; then
  bin=$(mktemp -d)  # not under $out: the results are committed, the binaries are not
  for name in kd gpu-test; do
    gunzip -c "$KD_BUNDLE/$name.gz" >"$bin/$name" && chmod +x "$bin/$name"
  done
  KD=$bin/kd KD_GPU_TEST=$bin/gpu-test
fi
if [ -z "${KD:-}" ]; then
  experiments/scripts/build_cuda.sh
  KD=$target/release/kd
fi
if [ -z "${KD_GPU_TEST:-}" ]; then
  KD_GPU_TEST=$(CARGO_TARGET_DIR=$target cargo test --release --features cuda -p kd-experiments \
    --test gpu --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "gpu": print(m["executable"])')
fi
[ -x "$KD" ] || fail "no kd binary at $KD"

# 3. Parity.
parity=passed
KD_REQUIRE_GPU=1 "$KD_GPU_TEST" --nocapture >"$out/parity.txt" 2>&1 || parity=FAILED
say "parity (tests/gpu.rs): $parity"

# 4. Steps beside PyTorch.
python=${PYTHON:-.venv-ref/bin/python}
torch_flags=()
if [ -x "$python" ] && "$python" -c 'import torch, transformers; assert torch.cuda.is_available()' 2>/dev/null; then
  torch_flags=(--pytorch "$python")
  torch_note="PyTorch $("$python" -c 'import torch; print(torch.__version__)') on the same GPU"
else
  torch_note="no PyTorch with CUDA here ($python): kd alone"
fi
say "$torch_note"
for precision in f32 bf16; do
  "$KD" bench --device cuda --precision "$precision" --shapes small,base \
    --cases gemm,inference,train,distill --runs 10 --warmup 3 "${torch_flags[@]}" \
    --json "$out/bench-$precision.json" | tee "$out/bench-$precision.txt"
done

# 5. The recipe, 300 steps, with its teacher fine-tuned here.
runs=$out/runs
"$KD" finetune --device cuda --model sentence-transformers/all-MiniLM-L6-v2 --task sst2 \
  --epochs 1 --lr 1e-4 --out "$runs/teacher" --force >"$out/teacher.json" 2>"$out/teacher.log"
recipe_started=$(date +%s%N)
"$KD" distill --device cuda --recipe experiments/recipes/sst2-distilbert-l3.toml \
  --set teacher.model="$runs/teacher" --set training.eval_every="$steps" --max-steps "$steps" \
  --cache-dir "$runs/cache" --out "$runs/student" --force >"$out/student.json" 2>"$out/student.log"
recipe_wall=$(( ($(date +%s%N) - recipe_started) / 1000000 ))
if [ ${#torch_flags[@]} -gt 0 ]; then
  "$python" benches/pytorch_distill_sst2.py --device cuda --teacher "$runs/teacher" \
    --data "$shared/data/glue/SST-2" --group-by-length --max-steps "$steps" \
    --eval-every "$steps" >"$out/pytorch-distill.jsonl"
fi

python3 experiments/scripts/gpu_report.py "$out" "$parity" "$torch_note" "$toolkit" "$recipe_wall" \
  "$steps" "$(( $(date +%s) - started ))"
say "written: $out/gpu.md, $out/gpu.json"
