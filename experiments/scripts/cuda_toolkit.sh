#!/usr/bin/env bash
# Prepares what `cargo build --features cuda` needs (candle 0.11.1's CUDA back end, cudarc 0.19)
# on a machine with or without a CUDA toolkit, GPU or driver. Safe to run again: it reuses what
# an earlier run left in the prefix.
#
# - A system toolkit ($CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc) is used as it
#   is.
# - Otherwise NVIDIA's CUDA 13.0 wheels from PyPI are installed into $KD_CUDA_PREFIX (default
#   ~/.cache/kd-cuda) and laid out as a toolkit in $KD_CUDA_PREFIX/toolkit (bin, include, nvvm,
#   lib64), which CUDA_HOME then names.
# - candle links cudarc dynamically, so the link needs a libcuda.so. Without a driver one, a stub
#   (every cu* entry point of cuda.h, each returning CUDA_ERROR_STUB_LIBRARY) is built into a
#   stubs folder that only the linker sees (LIBRARY_PATH); the binary then asks for libcuda.so.1,
#   which the GPU machine's driver provides at run time.
#
# Usage: experiments/scripts/cuda_toolkit.sh [--env]
#   --env  print `export ...` lines for the build (and for running the binary) on stdout:
#          eval "$(experiments/scripts/cuda_toolkit.sh --env)"; KD_CUDA_STUBS names the stub
#          libcuda's folder where one was built
# Everything else (what was found, progress) goes to stderr.
# Environment: KD_CUDA_PREFIX (where the wheels go), KD_NCCL=1 (NCCL too, for --features nccl),
# CUDA_COMPUTE_CAP (default 90: H100/H200; candle-kernels compiles its kernels for this one
# architecture, e.g. 80 for an A100), PYTHON (default python3, with pip).
set -euo pipefail
shopt -s nullglob

env_mode=0
case "${1:-}" in
  --env) env_mode=1 ;;
  "") ;;
  *) echo "usage: $0 [--env]" >&2; exit 2 ;;
esac

prefix=${KD_CUDA_PREFIX:-$HOME/.cache/kd-cuda}
compute_cap=${CUDA_COMPUTE_CAP:-90}
python=${PYTHON:-python3}
say() { echo "cuda_toolkit: $*" >&2; }
# Wheels into a folder (pip --target: no virtual environment to keep, only files). A stamp with
# the pinned list makes a rerun skip this; a changed list installs afresh beside the old one and
# swaps it in, so an interrupted install never leaves half a folder behind.
install_wheels() { # folder wheels...
  local folder=$1
  shift
  [[ -f "$folder/.kd-wheels" && "$(cat "$folder/.kd-wheels")" == "$*" ]] && return
  say "installing $* into $folder"
  mkdir -p "$(dirname "$folder")"
  rm -rf "$folder.new"
  "$python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    --only-binary=:all: --target "$folder.new" "$@" >&2
  echo "$*" >"$folder.new/.kd-wheels"
  rm -rf "$folder" && mv "$folder.new" "$folder"
}

# The CUDA 13.0 (update 2) wheels: cudarc 0.19 knows CUDA 11.4 to 13.4 and reads the version from
# `nvcc --version`, so the newest wheels (13.5) would fail its build script; exact pins keep the
# toolkit the same on every machine. cu13 wheels install under site-packages/nvidia/cu13/. (The
# cu12 nvidia-cuda-nvcc-cu12 wheels carry ptxas only, no nvcc: not usable here.)
wheels=(
  nvidia-cuda-nvcc==13.0.88      # nvcc, ptxas, fatbinary, nvlink, nvcc.profile
  nvidia-cuda-crt==13.0.88       # include/crt: nvcc's host/device headers
  nvidia-nvvm==13.0.88           # cicc and libdevice (nvcc's front end)
  nvidia-cuda-runtime==13.0.96   # cuda.h, cuda_runtime.h, libcudart (candle-kernels links it)
  nvidia-cuda-cccl==13.0.85      # include/cccl: CUB and libcu++ (candle's kernels include them)
  nvidia-cuda-nvrtc==13.0.88     # libnvrtc (cudarc's nvrtc feature)
  nvidia-cublas==13.1.0.3        # libcublas, libcublasLt (CUDA 13.0 update 2's cuBLAS)
  nvidia-curand==10.4.0.35       # libcurand (CUDA 13.0's cuRAND)
)

# --- Which toolkit -------------------------------------------------------------------------------
cuda_home=""
system=0
ours() { # is this path inside our prefix (e.g. CUDA_HOME left over from an earlier eval)?
  local p
  p=$(readlink -f "$1" 2>/dev/null) || return 1
  [[ -d "$prefix" && "$p/" == "$(readlink -f "$prefix")/"* ]]
}
if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]] && ! ours "$CUDA_HOME/bin/nvcc"; then
  cuda_home=$CUDA_HOME system=1
elif nvcc_path=$(command -v nvcc 2>/dev/null) && ! ours "$nvcc_path"; then
  cuda_home=$(dirname "$(dirname "$nvcc_path")") system=1
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  cuda_home=/usr/local/cuda system=1
fi

if ((system)); then
  say "system CUDA toolkit: $cuda_home"
else
  site=$prefix/site
  install_wheels "$site" "${wheels[@]}"
  cu13=$site/nvidia/cu13
  [[ -x "$cu13/bin/nvcc" ]] || { say "no nvcc in $cu13/bin after the install"; exit 1; }

  # The toolkit folder: bin, include and nvvm as links to the wheels' folders (nvcc.profile finds
  # cicc and libdevice through ../nvvm, and cccl through include/cccl); lib64 with a link per
  # library under its own name and an unversioned one (libcublas.so -> libcublas.so.13) for -l.
  cuda_home=$prefix/toolkit
  mkdir -p "$cuda_home/lib64"
  for d in bin include nvvm; do ln -sfn "$cu13/$d" "$cuda_home/$d"; done
  for lib in "$cu13"/lib/*.so.*; do
    name=$(basename "$lib")
    ln -sfn "$lib" "$cuda_home/lib64/$name"
    ln -sfn "$name" "$cuda_home/lib64/${name%%.so.*}.so"
  done
  for lib in "$cu13"/lib/*.a; do ln -sfn "$lib" "$cuda_home/lib64/$(basename "$lib")"; done
fi

nvcc=$cuda_home/bin/nvcc
version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
say "CUDA $version: nvcc $("$nvcc" --version | sed -n 's/.*, V//p') ($nvcc)"
((system)) || say "from the wheels ${wheels[*]}"
case "$version" in
  11.* | 12.* | 13.[0-4]) ;;
  *) say "warning: cudarc 0.19 knows CUDA 11.4 to 13.4; its build script will refuse $version" ;;
esac

# --- libcuda.so for the link -----------------------------------------------------------------------
# A real toolkit has lib64/stubs/libcuda.so, and a driver install often has libcuda.so; either will
# do. Otherwise build the stub. Its soname is libcuda.so.1, so the binary looks for the driver's
# library at run time; the stubs folder must never be on LD_LIBRARY_PATH.
stubs=""
if [[ -e "$cuda_home/lib64/stubs/libcuda.so" && ! -e "$cuda_home/lib64/stubs/.kd-stub" ]] ||
  [[ -e "$cuda_home/lib/stubs/libcuda.so" ]] ||
  ldconfig -p 2>/dev/null | grep -q 'libcuda\.so '; then
  say "libcuda.so for the link: found (toolkit stubs or driver)"
else
  ((system)) && stubs=$prefix/stubs || stubs=$cuda_home/lib64/stubs
  header=$cuda_home/include/cuda.h
  [[ -f "$header" ]] || header=/usr/include/cuda.h
  if [[ ! -f "$stubs/libcuda.so" || "$header" -nt "$stubs/libcuda.so" ]]; then
    say "no driver library: building a stub libcuda.so in $stubs (link only)"
    mkdir -p "$stubs"
    # Every cu[A-Z]... name in cuda.h: the declared names and the versioned ones its #defines
    # map them to (cuMemAlloc -> cuMemAlloc_v2, *_ptds, *_ptsz), so whichever name cudarc's
    # bindings call is there; plus cudaProfiler.h's, the other header cudarc binds (the wheels
    # leave it out). 34 is CUDA_ERROR_STUB_LIBRARY, what NVIDIA's own stub returns.
    {
      echo "/* Generated by experiments/scripts/cuda_toolkit.sh from $header: link-time stub. */"
      {
        grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$header"
        printf '%s\n' cuProfilerInitialize cuProfilerStart cuProfilerStop
      } | sort -u | sed 's/.*/int &(void) { return 34; }/'
    } >"$stubs/libcuda.c"
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda.c"
    touch "$stubs/.kd-stub"
  fi
  # The name the binary asks for at start-up, in a folder of its own (KD_CUDA_STUBS below).
  mkdir -p "$stubs/run"
  ln -sfn ../libcuda.so "$stubs/run/libcuda.so.1"
fi

# --- NCCL for the link (KD_NCCL=1: kd with --features nccl) ----------------------------------------
# cudarc links NCCL dynamically too: the link needs a libnccl.so. A system NCCL serves as it is;
# otherwise NVIDIA's NCCL wheel (200 MB, fetched only when asked) in $prefix/nccl, with the
# unversioned name the linker wants. The binary then asks for libnccl.so.2, which the GPU
# machine's own NCCL provides at run time (PyTorch's CUDA wheels bring one).
nccl_lib=""
if [[ ${KD_NCCL:-0} == 1 ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so ' &&
  [[ ! -e "$cuda_home/lib64/libnccl.so" ]]; then
  install_wheels "$prefix/nccl" nvidia-nccl-cu13==2.27.7
  nccl_lib=$prefix/nccl/nvidia/nccl/lib
  ln -sfn libnccl.so.2 "$nccl_lib/libnccl.so"
  say "NCCL for the link: $nccl_lib"
fi

# --- Driver and GPU (informational: building needs neither) ----------------------------------------
if command -v nvidia-smi >/dev/null 2>&1 &&
  gpu=$(nvidia-smi --query-gpu=driver_version,name,compute_cap --format=csv,noheader 2>/dev/null); then
  while IFS=', ' read -r driver name_and_cap; do
    say "driver $driver, GPU ${name_and_cap}"
    major=${driver%%.*}
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 580)); then
      say "warning: CUDA 13 PTX needs driver >= 580; this one is $driver"
    fi
  done <<<"$gpu"
  gpu_cap=$(head -1 <<<"$gpu" | awk -F', ' '{print $NF}' | tr -d .)
  [[ "$gpu_cap" == "$compute_cap" ]] ||
    say "warning: kernels are built for compute capability $compute_cap, the GPU has $gpu_cap (set CUDA_COMPUTE_CAP=$gpu_cap)"
else
  say "no NVIDIA driver (nvidia-smi) here: building only; the binary needs a driver >= 580 to run"
fi
say "CUDA_COMPUTE_CAP=$compute_cap"

# The toolkit's libraries (cudart, cuBLAS, cuRAND, NVRTC): for the link (candle-kernels asks for
# -lcudart without a search path of its own) and for running the binary. Never the stubs.
lib_dir=""
[[ -d "$cuda_home/lib64" ]] && lib_dir=$cuda_home/lib64

if ((env_mode)); then
  echo "export CUDA_HOME='$cuda_home'"
  echo "export CUDA_COMPUTE_CAP='$compute_cap'"
  # cudarc's build script runs `nvcc --version` from PATH.
  echo "export PATH='$cuda_home/bin':\"\$PATH\""
  link_path=${stubs:+$stubs:}${nccl_lib:+$nccl_lib:}$lib_dir
  link_path=${link_path%:}
  if [[ -n "$link_path" ]]; then
    echo "export LIBRARY_PATH='$link_path'\"\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
  fi
  run_path=${nccl_lib:+$nccl_lib:}$lib_dir
  run_path=${run_path%:}
  if [[ -n "$run_path" ]]; then
    echo "export LD_LIBRARY_PATH='$run_path'\"\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
  fi
  # Where the stub is, for starting a CUDA build of kd on this machine without a driver (on the
  # CPU, e.g. cuda_bundle.sh's f16 export): never on a machine with one, where it would hide it.
  if [[ -n "$stubs" ]]; then
    echo "export KD_CUDA_STUBS='$stubs/run'"
  fi
else
  say "ready; for a shell: eval \"\$($0 --env)\""
fi
