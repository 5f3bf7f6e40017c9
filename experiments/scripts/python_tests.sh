#!/usr/bin/env bash
# The Python package's tests (tests/python/): a venv .venv-py with the pinned pytest and maturin
# (tests/python/requirements.txt), the kd binary the tests compare with, the package's wheel
# built by `maturin build --release` (in target/wheels) and installed in the venv, then pytest.
# The kd binary is the one the README's test command built (`cargo test --release --workspace`,
# which this repeats with --no-run: nothing to do after it). maturin builds the extension alone,
# so cargo unifies its dependencies' features differently (pyo3's macros turn on a syn feature)
# and builds them once more: in $KD_PYTHON_TARGET when set (CI keeps it in ~/.cache, warm
# between runs), else in the workspace's target folder, where it costs that once.
# Usage: experiments/scripts/python_tests.sh [pytest arguments...]   (from the repository root;
# the shared data and model cache at ../shared, or KD_SHARED_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venv-py
[ -x $venv/bin/python ] || python3 -m venv $venv
$venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo test --release --workspace --no-run
rm -f target/wheels/kd_distill-*.whl
CARGO_TARGET_DIR=${KD_PYTHON_TARGET:-target} $venv/bin/maturin build --release \
    -m crates/python/Cargo.toml --interpreter $venv/bin/python --out target/wheels
$venv/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    target/wheels/kd_distill-*.whl
$venv/bin/python -m pytest tests/python -q -p no:cacheprovider --durations=5 "$@"
