#!/usr/bin/env bash
# Builds, on a machine without a GPU, all that gpu_check.sh needs on a GPU machine that can reach
# nothing, for the device tool to carry there with the checkout (64 MiB in all):
#   DIR/bin.tar.xz     kd and the tests/gpu.rs binary, built with CUDA and stripped (one archive:
#                      the two share most of their bytes, candle's kernels among them);
#   DIR/shared.tar.xz  the slice of ../shared the check reads: SST-2, one corpus file for the
#                      general stage's sample, all-MiniLM-L6-v2 in the hub cache's layout with
#                      its weights in f16 (`kd export --dtype f16`: half the bytes; kd reads
#                      them back as f32, so the check's figures are those of a MiniLM rounded
#                      to f16).
# On the GPU machine: KD_BUNDLE=DIR experiments/scripts/gpu_check.sh
# Usage: experiments/scripts/cuda_bundle.sh DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: $0 DIR}
shared=${KD_SHARED_DIR:-../shared}
minilm=hub/models--sentence-transformers--all-MiniLM-L6-v2
corpus=nltk_state_union.txt  # 2 MB: 109 of the general stage's steps a pass
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
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
strip -o "$work/bin/kd" "$target/release/kd"
strip -o "$work/bin/gpu-test" "$test"
XZ_OPT=-9 tar -C "$work" -cJf "$dir/bin.tar.xz" bin

# The shared slice. The hub cache's layout (refs/main naming the snapshot) lets kd and the tests
# resolve the model by its hub id, as they do from ../shared.
mkdir -p "$work/shared/data/glue/SST-2" "$work/shared/data/corpus"
cp "$shared"/data/glue/SST-2/{train,dev}.tsv "$work/shared/data/glue/SST-2/"
cp "$shared/data/corpus/$corpus" "$work/shared/data/corpus/"
revision=$(cat "$shared/hf-cache/$minilm/refs/main")
snapshot=$work/shared/hf-cache/$minilm/snapshots/$revision
mkdir -p "$snapshot" "$work/shared/hf-cache/$minilm/refs"
cp "$shared/hf-cache/$minilm/refs/main" "$work/shared/hf-cache/$minilm/refs/"
cp -r "$shared/hf-cache/$minilm/snapshots/$revision/." "$snapshot/"
rm "$snapshot/model.safetensors"
# kd with CUDA starts only where a libcuda is: on a machine without a driver, the link's stub
# (every call an error, so kd sees no GPU and works on the CPU).
LD_LIBRARY_PATH=${KD_CUDA_STUBS:+$KD_CUDA_STUBS:}${LD_LIBRARY_PATH:-} HF_HOME=$shared/hf-cache \
  "$work/bin/kd" export --model sentence-transformers/all-MiniLM-L6-v2 --dtype f16 \
  --out "$work/minilm-f16" >&2
cp "$work/minilm-f16/model.safetensors" "$snapshot/"
XZ_OPT=-9 tar -C "$work" -cJf "$dir/shared.tar.xz" shared

ls -l "$dir" >&2
# What travels with it: the tracked files and the untracked ones git does not ignore.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 | cut -f1)
total=$(( tree + $(du -cb "$dir"/*.tar.xz | tail -1 | cut -f1) ))
echo "the checkout and $dir: $(( total / 1048576 )) MiB of the device tool's 64" >&2
(( total < 64 * 1048576 )) || { echo "cuda_bundle: over 64 MiB: it would not travel" >&2; exit 1; }
