#!/usr/bin/env bash
# Attention heads on SST-2 (#15): `kd heads --curve` for the teacher and the 3-layer student
# into runs/heads/{teacher,student}, then the teacher pruned to 70% of its heads by each
# importance (no recovery training), each with its report (prune.json). Finished steps are
# kept. experiments/results/heads-sst2.md reads these.
# Usage: experiments/scripts/heads_sst2.sh   (from the repository root)
set -euo pipefail
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
declare -A models=([teacher]=runs/teachers/SST-2 [student]=runs/sst2-transfer/sst2-distilbert-l3-imdb-s1)
for name in teacher student; do
  out=runs/heads/$name
  [ -f "$out/curve.json" ] || $kd heads --curve --model "${models[$name]}" --task SST-2 --out "$out" --force
done
for by in mask gradient; do
  out=runs/heads/teacher-keep70-$by
  [ -f "$out/prune.json" ] && continue
  $kd prune --model runs/teachers/SST-2 --task SST-2 --keep-ratio 0.7 --by "$by" \
    --scores runs/heads/teacher/heads.json --out "$out" --force > "$out.json"
  mv "$out.json" "$out/prune.json"
done
