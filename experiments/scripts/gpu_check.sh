#!/usr/bin/env bash
# kd on one NVIDIA GPU, in one command, each stage in order of what matters most:
#  1. the machine: GPU, driver (CUDA 13 needs 580 or later), the CUDA libraries kd loads;
#  2. kd built with CUDA (experiments/scripts/build_cuda.sh), unless KD_BUNDLE or KD names one;
#  3. tests/gpu.rs with KD_REQUIRE_GPU=1: MiniLM's logits and intermediates, one step's
#     gradients and AdamW's update on the GPU against the CPU, and bf16 logits against f32;
#  4. `kd bench --device cuda` in f32 (small and base shapes; gemm, inference, train, distill),
#     beside PyTorch eager on the same GPU when PYTHON has torch with CUDA;
#  5. the SST-2 DistilBERT recipe for STEPS steps (its teacher fine-tuned there from
#     all-MiniLM-L6-v2 first, for TEACHER_STEPS), beside pytorch_distill_sst2.py
#     --group-by-length;
#  6. the same benchmarks in bf16;
#  7. general-tinybert-l4's general stage for GENERAL_STEPS steps on one corpus file, from which
#     gpu_report.py projects a pass over the shared corpus (5,362 steps);
#  8. a batch past the GPU's memory, which must stop with the batch size to lower.
# Everything lands in OUT (default experiments/results/gpu-<date>): gpu.md (the figures, to copy
# into experiments/results/gpu.md), gpu.json, and each stage's own output (runs/ holds the
# models: leave it out of what is kept). A stage that fails or runs past KD_DEADLINE is named in
# the report and the next one starts; the report is written in any case.
#
# Usage: experiments/scripts/gpu_check.sh [OUT]
# Environment:
#   KD_BUNDLE    a folder from experiments/scripts/cuda_bundle.sh (kd and the tests/gpu.rs binary
#                built with CUDA on a CPU machine, and the slice of ../shared the check reads):
#                no build and no ../shared needed here
#   KD           or a kd built with --features cuda beforehand (build_cuda.sh) ...
#   KD_GPU_TEST  ... and the tests/gpu.rs binary built with it
#   PYTHON       a Python with torch (CUDA) and transformers (default .venv-ref/bin/python, else
#                python3); without one, the PyTorch columns say so
#   KD_DEADLINE  seconds the whole check may take (default 3600): each stage is cut there, and
#                those left are skipped
#   STEPS, TEACHER_STEPS, GENERAL_STEPS  300, 600 and 250 by default; SHAPES (small,base)
#   KD_CHECK_DEVICE  cuda, or cpu for a rehearsal on a machine without a GPU: every stage runs its
#                own commands on the CPU (the parity test skips), so the script, the bundle and
#                the report are checked before a GPU's minutes are spent on them
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-experiments/results/gpu-$(date -u +%Y-%m-%dT%H%M)}
device=${KD_CHECK_DEVICE:-cuda}
steps=${STEPS:-300}
teacher_steps=${TEACHER_STEPS:-600}
general_steps=${GENERAL_STEPS:-250}
shapes=${SHAPES:-small,base}
name=gpu_check
source experiments/scripts/gpu_common.sh

# 1. The machine, and what the check reads.
begin_check "$out"

# 2. kd with CUDA, the parity test's binary.
export KD_SHARED_DIR=$shared HF_HOME=$shared/hf-cache
target=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}
if [ -z "${KD:-}" ]; then
  experiments/scripts/build_cuda.sh
  KD=$target/release/kd
fi
[ -n "${KD_GPU_TEST:-}" ] || KD_GPU_TEST=$(gpu_test_binary "$target")
cuda_libraries

# 3. Parity (on the CPU, the test only says it skipped).
require_gpu=$([ "$device" = cuda ] && echo 1 || true)
stage parity limited env ${require_gpu:+KD_REQUIRE_GPU=1} "$KD_GPU_TEST" --nocapture

# 4. to 7.
python=${PYTHON:-}
if [ -z "$python" ]; then
  python=python3
  [ -x .venv-ref/bin/python ] && python=.venv-ref/bin/python
fi
torch_flags=()
torch_device=$([ "$device" = cuda ] && echo 'torch.cuda.is_available()' || echo True)
if "$python" -c "import torch, transformers; assert $torch_device" 2>/dev/null; then
  torch_flags=(--pytorch "$python")
  torch_note="PyTorch $("$python" -c 'import torch; print(torch.__version__)') on the same $device"
else
  torch_note="no PyTorch with $device here ($python): kd alone"
fi
say "$torch_note"
bench() {
  limited "$KD" bench --device "$device" --precision "$1" --shapes "$shapes" \
    --cases gemm,inference,train,distill --runs 10 --warmup 3 "${torch_flags[@]}" \
    --json "$out/bench-$1.json"
}
stage bench-f32 bench f32

runs=$out/runs
recipe() {
  limited "$KD" finetune --device "$device" --model sentence-transformers/all-MiniLM-L6-v2 \
    --task sst2 --epochs 1 --max-steps "$teacher_steps" --lr 1e-4 --out "$runs/teacher" --force \
    >"$out/teacher.json" || return
  local begun
  begun=$(date +%s%N)
  limited "$KD" distill --device "$device" --recipe experiments/recipes/sst2-distilbert-l3.toml \
    --set teacher.model="$runs/teacher" --set training.eval_every="$steps" --max-steps "$steps" \
    --cache-dir "$runs/cache" --out "$runs/student" --force >"$out/student.json" || return
  echo $(( ($(date +%s%N) - begun) / 1000000 )) >"$out/recipe-wall-ms.txt"
  if [ ${#torch_flags[@]} -gt 0 ]; then
    limited "$python" benches/pytorch_distill_sst2.py --device "$device" --teacher "$runs/teacher" \
      --data "$shared/data/glue/SST-2" --group-by-length --max-steps "$steps" \
      --eval-every "$steps" >"$out/pytorch-distill.jsonl"
  fi
}
stage recipe recipe
stage bench-bf16 bench bf16

# The general stage's sample, on one corpus file (passes over it as needed): evaluations every
# 50 steps time it past the first (warm-up) ones.
corpus=("$shared"/data/corpus/*.txt)
stage general limited "$KD" distill --device "$device" --recipe experiments/recipes/general-tinybert-l4.toml \
  --set "data.corpus=[\"${corpus[0]}\"]" --set stages.0.epochs=10 \
  --set training.eval_every=50 --max-steps "$general_steps" --cache-dir "$runs/cache" \
  --out "$runs/general" --force

# Out of GPU memory: a batch past any GPU's memory (4,096 sequences of 512 tokens; one layer's
# attention scores alone take 51 GB) must stop with the batch size to lower. GPU only: on the
# CPU such a batch would take the machine's memory, not fail.
long_texts() {
  python3 -c 'import sys
print("text\tlabel")
for i in range(4096): print(" ".join(["word"] * 600) + f"\t{i % 2}")' >"$1"
}
out_of_memory() {
  mkdir -p "$runs" && long_texts "$runs/long.tsv"
  local said rc=0
  said=$(limited "$KD" finetune --device "$device" --model sentence-transformers/all-MiniLM-L6-v2 \
    --train "$runs/long.tsv" --dev "$runs/long.tsv" --text-column text --label-column label \
    --max-seq-len 512 --batch-size 4096 --max-steps 1 --out "$runs/oom" --force 2>&1) || rc=$?
  echo "$said"
  (( rc != 124 )) || return 124
  (( rc != 0 )) || { echo "gpu_check: no out-of-memory error at batch size 4096"; return 1; }
  grep -q "out of memory at batch size 4096" <<<"$said"
}
if [ "$device" = cuda ]; then
  stage oom out_of_memory
else
  printf 'oom\tskipped (GPU only)\t0\n' >>"$out/stages.tsv"
fi

python3 experiments/scripts/gpu_report.py "$out" "$torch_note" "$toolkit" "$steps" \
  "$(( $(date +%s) - started ))"
say "written: $out/gpu.md, $out/gpu.json"
