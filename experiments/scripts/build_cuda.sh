#!/usr/bin/env bash
# Builds `kd` with candle's CUDA back end: prepares a CUDA toolkit (cuda_toolkit.sh: the system's,
# or CUDA 13.0 from PyPI wheels in ~/.cache/kd-cuda), then `cargo build --release --features cuda`.
# Needs no GPU or driver to build; running the binary needs an NVIDIA driver >= 580 and the
# toolkit's libraries (LD_LIBRARY_PATH from `cuda_toolkit.sh --env`).
# CARGO_TARGET_DIR defaults to ~/.cache/kd-cuda-target, apart from the CPU build's target/ (the
# cuda feature changes candle-core, so sharing one folder would rebuild it at each switch) and
# outside the clone, so that a machine that built once rebuilds in seconds. The first build
# compiles candle's CUDA kernels with nvcc, the slow part of a cold build.
# Usage: experiments/scripts/build_cuda.sh [cargo build arguments...]
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), KD_CUDA_PREFIX, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
# --features nccl (data parallelism on GPUs) links NCCL as well.
[[ " $* " == *nccl* ]] && export KD_NCCL=1
eval "$(experiments/scripts/cuda_toolkit.sh --env)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}
cargo build --release --features cuda -p kd-experiments "$@"
echo "kd with CUDA: $CARGO_TARGET_DIR/release/kd" >&2
echo "to run it: eval \"\$(experiments/scripts/cuda_toolkit.sh --env)\" (for LD_LIBRARY_PATH)" >&2
