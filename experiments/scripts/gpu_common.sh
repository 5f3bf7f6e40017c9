# Sourced by the GPU scripts (gpu_check.sh, multi_gpu_check.sh, cuda_bundle.sh): what they do
# alike, before and around the checks' stages. The caller sets `device` (cuda, or cpu for a
# rehearsal) and `name` (the script's, which starts the messages); begin_check sets `started`,
# `deadline`, `out` and `shared`, which the stage functions read, and KD when a bundle brings it.

say() { echo "${name:-gpu}: $*" >&2; }
fail() { say "$*"; exit 1; }

# A command under what is left of the deadline (exit 124 when it is cut there).
limited() {
  local left=$(( deadline - $(date +%s) ))
  (( left >= 15 )) || return 124
  timeout "$left" "$@"
}

# Runs one stage (a name, then a command or function that runs its commands through `limited`,
# output to OUT/NAME.log) and notes in OUT/stages.tsv how it ended and how long it took.
stage() {
  local stage_name=$1 begun=$(date +%s) rc=0 status=passed
  shift
  if (( deadline - begun < 15 )); then
    status="skipped (past the deadline)"
  else
    "$@" >"$out/$stage_name.log" 2>&1 || rc=$?
    (( rc == 0 )) || status="FAILED (exit $rc)"
    (( rc != 124 )) || status="cut at the deadline"
  fi
  printf '%s\t%s\t%s\n' "$stage_name" "$status" "$(( $(date +%s) - begun ))" >>"$out/stages.tsv"
  say "$stage_name: $status ($(( $(date +%s) - begun )) s)"
}

# The start of a check, into the folder $1: the deadline from KD_DEADLINE (default an hour),
# `out` made absolute with its list of stages begun, the machine checked, and `shared` (what
# the check reads: ../shared, or KD_BUNDLE's slice, unpacked with the bundle's binaries).
begin_check() {
  started=$(date +%s)
  deadline=$(( started + ${KD_DEADLINE:-3600} ))
  mkdir -p "$1"
  out=$(cd "$1" && pwd)
  : >"$out/stages.tsv"
  check_machine
  shared=${KD_SHARED_DIR:-../shared}
  [ -z "${KD_BUNDLE:-}" ] || unpack_bundle
}

# The machine's GPUs and driver into OUT/gpu.txt (one line a GPU), or the CPU a rehearsal runs
# on; `gpus` is how many GPUs there are (0 in a rehearsal).
check_machine() {
  gpus=0
  if [ "$device" = cuda ]; then
    command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this machine has no NVIDIA driver"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      >"$out/gpu.txt" || fail "nvidia-smi found no GPU"
    gpus=$(grep -c . "$out/gpu.txt") || fail "nvidia-smi found no GPU"
    local gpu_name driver memory
    IFS=, read -r gpu_name driver memory <"$out/gpu.txt"
    driver=${driver// /}
    say "$gpus GPU(s):${gpu_name}, driver ${driver},${memory}"
    [ "${driver%%.*}" -ge 580 ] || fail "driver $driver: CUDA 13 (kd's toolkit) needs 580 or later"
  else
    echo "no GPU: a rehearsal on the CPU ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))" \
      >"$out/gpu.txt"
  fi
}

# KD_BUNDLE (from cuda_bundle.sh) unpacked outside OUT (the results are kept, the binaries are
# not): KD, KD_GPU_TEST where the bundle has it, `shared`, and the bundle's Open MPI (its
# mpirun on PATH) where it has one.
unpack_bundle() {
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  for archive in bin shared; do tar -C "$unpacked" -xJf "$KD_BUNDLE/$archive.tar.xz"; done
  KD=$unpacked/bin/kd shared=$unpacked/shared
  [ ! -x "$unpacked/bin/gpu-test" ] || KD_GPU_TEST=$unpacked/bin/gpu-test
  if [ -d "$unpacked/bin/openmpi" ]; then
    export OPAL_PREFIX=$unpacked/bin/openmpi
    export PATH=$OPAL_PREFIX/bin:$PATH LD_LIBRARY_PATH=$OPAL_PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
}

# The CUDA libraries KD loads (cuBLAS, cuRAND, NVRTC, the runtime; NCCL in a build with it) from
# the machine, wherever it keeps them: lib64 of a system toolkit, or the nvidia wheels of a
# Python. A rehearsal starts kd on the link's stub libcuda (cuda_toolkit.sh), which makes it see
# no GPU. Sets `toolkit` to the cuBLAS found, for the report.
cuda_libraries() {
  [ -x "$KD" ] || fail "no kd binary at $KD"
  if [ "$device" = cpu ]; then
    eval "$(experiments/scripts/cuda_toolkit.sh --env)"
    export LD_LIBRARY_PATH=${KD_CUDA_STUBS:+$KD_CUDA_STUBS:}$LD_LIBRARY_PATH
  fi
  local lib found missing
  for lib in $(ldd "$KD" | awk '/not found/ {print $1}'); do
    # Never a stub, nor a forward-compatibility libcuda, which fails beside another driver.
    found=$(find /usr/local /usr/lib /opt "$HOME/.cache/kd-cuda" -name "$lib" -not -path '*/stubs/*' \
      -not -path '*/compat/*' -print -quit 2>/dev/null || true)
    [ -z "$found" ] || export LD_LIBRARY_PATH=$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  done
  missing=$(ldd "$KD" | awk '/not found/ {print $1}' | tr '\n' ' ')
  [ -z "$missing" ] || fail "kd needs libraries this machine lacks: $missing"
  toolkit=$(ldd "$KD" | sed -n 's/.*libcublas\.so\.[0-9]* => \([^ ]*\).*/cuBLAS from \1/p' | head -1)
  toolkit=${toolkit:-no cuBLAS linked}
  say "$toolkit"
}

# The tests/gpu.rs binary built with CUDA in the target folder $1 (cargo builds it when it is
# not up to date): its path.
gpu_test_binary() {
  CARGO_TARGET_DIR=$1 cargo test --release --features cuda -p kd-experiments --test gpu --no-run \
    --message-format=json | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "gpu": print(m["executable"])'
}
