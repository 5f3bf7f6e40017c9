#!/usr/bin/env bash
# Builds, on a machine without a GPU, what gpu_check.sh runs on one: kd and the tests/gpu.rs
# binary with CUDA, stripped and gzipped into DIR (about 32 MB together, small enough to travel
# with a checkout), so that the GPU's minutes go to measuring. On the GPU machine:
#   KD_BUNDLE=DIR experiments/scripts/gpu_check.sh
# Usage: experiments/scripts/cuda_bundle.sh DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
eval "$(experiments/scripts/cuda_toolkit.sh --env)"
target=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}
experiments/scripts/build_cuda.sh
test=$(CARGO_TARGET_DIR=$target cargo test --release --features cuda -p kd-experiments --test gpu \
  --no-run --message-format=json |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "gpu": print(m["executable"])')
for pair in "kd:$target/release/kd" "gpu-test:$test"; do
  strip -o "$dir/${pair%%:*}" "${pair#*:}"
  gzip -f "$dir/${pair%%:*}"
done
ls -l "$dir" >&2
