# Shared by the experiment scripts (sourced, not run):
# - `distill_into OUT ARGS...`: kd distill ARGS into OUT, resuming an interrupted run and
#   skipping a finished one;
# - `distill_seeds ROOT RECIPE...`: each recipe under seeds $SEEDS (default 1 2 3) into
#   ROOT/RECIPE-sSEED, with extra `kd distill` arguments from the array DISTILL_ARGS, and its
#   dev predictions;
# - `general_stage NAME`: the general recipe general-NAME into runs/general/NAME, linked as
#   runs/general-NAME, where task recipes' `student.init` and `student.from` read it;
# - `require_teacher DIR`: stops unless the fine-tuned teacher in DIR is finished;
# - `predict_dev MODEL_DIR`: writes MODEL_DIR/dev-predictions.jsonl for paired.py.
export HF_HOME=${HF_HOME:-../shared/hf-cache}
kd=${KD:-./target/release/kd}
[ -n "${KD:-}" ] || cargo build --release -p kd-experiments
dev=${DEV:-../shared/data/glue/SST-2/dev.tsv}

predict_dev() {
  [ -f "$1/dev-predictions.jsonl" ] || $kd predict --model "$1" --task SST-2 --input "$dev" \
    --output "$1/dev-predictions.jsonl" --force
}

distill_into() {
  local out=$1; shift
  if ! { [ -f "$out/summary.json" ] && grep -q '"interrupted": false' "$out/summary.json"; }; then
    local resume=(--force); [ -d "$out" ] && resume=(--resume)
    $kd distill "$@" --out "$out" "${resume[@]}"
  fi
}

distill_seeds() {
  local root=$1; shift
  for seed in ${SEEDS:-1 2 3}; do
    for recipe in "$@"; do
      distill_into "$root/$recipe-s$seed" --recipe "experiments/recipes/$recipe.toml" \
        --set "training.seed=$seed" ${DISTILL_ARGS[@]+"${DISTILL_ARGS[@]}"}
      predict_dev "$root/$recipe-s$seed"
    done
  done
}

general_stage() {
  distill_into "runs/general/$1" --recipe "experiments/recipes/general-$1.toml"
  [ -e "runs/general-$1" ] || ln -s "general/$1" "runs/general-$1"
}

require_teacher() {
  [ -f "$1/metrics.json" ] || { echo "no teacher in $1: run experiments/scripts/teachers.sh" >&2; exit 1; }
}
