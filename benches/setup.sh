#!/usr/bin/env bash
# Creates .venv-ref, the Python environment of PyTorch + HF transformers that the benchmark
# reference (benches/pytorch_bench.py) and the parity fixtures (tests/fixtures/) use.
# PyPI's Linux torch wheel is the CUDA build; on a machine without a GPU it runs on the CPU
# with the same kernels as the CPU-only wheel (oneDNN/MKL), so it is a fair reference.
# Usage (from the repository root): benches/setup.sh, then
#   cargo run --release -p kd-experiments -- bench --pytorch .venv-ref/bin/python
set -euo pipefail
python3 -m venv .venv-ref
.venv-ref/bin/pip install -r tests/fixtures/reference-requirements.txt
# ONNX Runtime (the interop checks' pinned versions, tests/fixtures/onnx-requirements.txt) and
# the exporter's package, for `kd bench --cases latency --pytorch`.
.venv-ref/bin/pip install -r tests/fixtures/onnx-requirements.txt onnxscript
.venv-ref/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
