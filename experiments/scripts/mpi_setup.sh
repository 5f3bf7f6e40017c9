#!/usr/bin/env bash
# Installs what data-parallel kd needs, from Debian's packages, where it is missing: Open MPI
# (mpirun, and the headers and mpicc that the `mpi` crate builds against) and libclang (the
# crate generates its bindings with bindgen). Then `cargo build --release --features mpi` builds
# a kd that `mpirun -np N` runs data-parallel.
set -euo pipefail
need=()
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    need+=(openmpi-bin libopenmpi-dev)
fi
if ! ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
if ((${#need[@]} == 0)); then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
echo "installing ${need[*]}" >&2
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
install || { $sudo apt-get update -qq && install; }
