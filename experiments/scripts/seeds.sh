# Shared by the multi-seed experiment scripts (sourced, not run): `distill_seeds ROOT RECIPE...`
# runs each recipe under seeds $SEEDS (default 1 2 3) into ROOT/RECIPE-sSEED, resuming an
# interrupted run and skipping a finished one, with extra `kd distill` arguments from the
# array DISTILL_ARGS; `predict_dev MODEL_DIR` writes MODEL_DIR/dev-predictions.jsonl for
# experiments/scripts/paired.py.
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
dev=${DEV:-../shared/data/glue/SST-2/dev.tsv}

predict_dev() {
  [ -f "$1/dev-predictions.jsonl" ] || $kd predict --model "$1" --task SST-2 --input "$dev" \
    --output "$1/dev-predictions.jsonl" --force
}

distill_seeds() {
  local root=$1; shift
  for seed in ${SEEDS:-1 2 3}; do
    for recipe in "$@"; do
      local out=$root/$recipe-s$seed
      if ! { [ -f "$out/summary.json" ] && grep -q '"interrupted": false' "$out/summary.json"; }; then
        local resume=(--force); [ -d "$out" ] && resume=(--resume)
        $kd distill --recipe "experiments/recipes/$recipe.toml" --set "training.seed=$seed" \
          ${DISTILL_ARGS[@]+"${DISTILL_ARGS[@]}"} --out "$out" "${resume[@]}"
      fi
      predict_dev "$out"
    done
  done
}
