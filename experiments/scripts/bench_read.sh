#!/usr/bin/env bash
# Reading users' files (#40): SST-2's 67,349 training sentences as TSV (GLUE's file) and the
# same rows as CSV, JSON Lines and Parquet (written by pandas/pyarrow from the reference
# environment, benches/setup.sh plus `pip install pyarrow`), each read whole by
# `kd bench --cases read`. Usage: experiments/scripts/bench_read.sh [OUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/../.."
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
python=${PYTHON:-.venv-ref/bin/python}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
tsv=${KD_SHARED_DIR:-../shared}/data/glue/SST-2/train.tsv
"$python" - "$tsv" "$dir" <<'PY'
import csv, sys
import pandas as pd
tsv, out = sys.argv[1:]
frame = pd.read_csv(tsv, sep="\t", quoting=csv.QUOTE_NONE, dtype={"sentence": str})
frame.to_csv(f"{out}/train.csv", index=False)
frame.to_json(f"{out}/train.jsonl", orient="records", lines=True, force_ascii=False)
frame.to_parquet(f"{out}/train.parquet", index=False)
PY
$kd bench --cases read --runs 5 --warmup 1 --task SST-2 \
  --read-files "$tsv,$dir/train.csv,$dir/train.jsonl,$dir/train.parquet" \
  ${1:+--json "$1"}
