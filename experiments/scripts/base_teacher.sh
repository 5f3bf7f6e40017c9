#!/usr/bin/env bash
# The base-size teacher of #38 (experiments/results/base-teacher.md), hours on a 2-core CPU;
# every step resumes where an interrupted run stopped and skips what is finished:
#   1. all-mpnet-base-v2 into runs/models (experiments/scripts/get_mpnet.sh);
#   2. runs/base-teacher/data/SST-2: the first $TRAIN (default 16000) sentences of SST-2's train
#      file and its whole dev file;
#   3. the teacher: all-mpnet-base-v2 fine-tuned on them (1 epoch, lr 2e-5, batch 32), in
#      runs/base-teacher/teacher, with its dev predictions;
#   4. students, seeds $SEEDS (default 1 2 3), each with its no-KD baseline and a paired test
#      (experiments/results/base-teacher-{distil6,tinybert4}.json):
#      distil6: sst2-mpnet-distil6(-nokd), a 6-layer MPNet student of the teacher's layers;
#      tinybert4: sst2-mpnet-tinybert4-aug/-nokd, TinyBERT-4 on the teacher's vocabulary, with
#      one augmented sentence per training sentence (runs/base-teacher/augment-x1.tsv);
#      tinybert4-aug4: sst2-mpnet-tinybert4-aug4 against the same baseline: two epochs of
#      intermediate layers and three of predictions over four augmented sentences per sentence;
#   5. compare: the teacher and both students' seed 1 with their ONNX exports in ONNX Runtime
#      (experiments/results/base-teacher-compare/), to run with the machine to itself.
# Usage: experiments/scripts/base_teacher.sh [teacher|distil6|tinybert4|tinybert4-aug4|compare ...]
#   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/scripts/seeds.sh
root=runs/base-teacher
teacher=$root/teacher
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(teacher distil6 tinybert4 compare)

experiments/scripts/get_mpnet.sh >/dev/null
if [ ! -f $root/data/SST-2/dev.tsv ]; then
  mkdir -p $root/data/SST-2.tmp
  head -n $((${TRAIN:-16000} + 1)) "$(dirname "$dev")/train.tsv" > $root/data/SST-2.tmp/train.tsv
  cp "$dev" $root/data/SST-2.tmp/dev.tsv
  mv $root/data/SST-2.tmp $root/data/SST-2
fi

paired() {
  python3 experiments/scripts/paired.py --dev "$dev" --teacher $teacher \
    --baseline "$root/$1-s*" --student "$root/$2-s*" --out "experiments/results/base-teacher-$3.json"
}

for step in "${steps[@]}"; do
  case $step in
    teacher)
      # metrics.json is written when the fine-tuning ends; the marker tells a finished teacher
      # from one whose run was cut off after an earlier one.
      if [ ! -f $teacher/metrics.json ] || [ -f $root/teacher.running ]; then
        touch $root/teacher.running
        resume=(); [ -d $teacher ] && resume=(--resume)
        $kd finetune --model runs/models/all-mpnet-base-v2 --task SST-2 --data-dir $root/data/SST-2 \
          --out $teacher --epochs 1 --lr 2e-5 --batch-size 32 --warmup 0.1 --seed 42 \
          --eval-every 125 "${resume[@]}"
        rm $root/teacher.running
      fi
      predict_dev $teacher ;;
    distil6)
      require_teacher $teacher
      distill_seeds $root sst2-mpnet-distil6 sst2-mpnet-distil6-nokd
      paired sst2-mpnet-distil6-nokd sst2-mpnet-distil6 distil6 ;;
    tinybert4)
      require_teacher $teacher
      [ -f $root/augment-x1.tsv ] || $kd augment --model $teacher --task SST-2 \
        --data-dir $root/data/SST-2 --per-example 1 --out $root/augment-x1.tsv
      distill_seeds $root sst2-mpnet-tinybert4-aug sst2-mpnet-tinybert4-nokd
      paired sst2-mpnet-tinybert4-nokd sst2-mpnet-tinybert4-aug tinybert4 ;;
    tinybert4-aug4)
      # The schedule of general.md's task-only TinyBERT-4 over four augmented sentences per
      # training sentence: about 75 minutes a seed here, over more than one session.
      require_teacher $teacher
      [ -f $root/augment-x4.tsv ] || $kd augment --model $teacher --task SST-2 \
        --data-dir $root/data/SST-2 --per-example 4 --out $root/augment-x4.tsv
      distill_seeds $root sst2-mpnet-tinybert4-aug4
      paired sst2-mpnet-tinybert4-nokd sst2-mpnet-tinybert4-aug4 tinybert4-aug4 ;;
    compare)
      # The teacher and each student's seed 1, in kd and as ONNX graphs in ONNX Runtime: size,
      # batch-1 latency, throughput, accuracy and agreement. Run it with the machine to itself.
      models=("$teacher" "$root/sst2-mpnet-distil6-s1" "$root/sst2-mpnet-tinybert4-aug-s1")
      graphs=()
      for model in "${models[@]}"; do
        graph=$root/onnx/$(basename "$model")
        [ -d "$graph" ] || $kd export --model "$model" --format onnx --out "$graph"
        graphs+=("$graph")
      done
      $kd compare --models "${models[@]}" "${graphs[@]}" --task SST-2 --data-dir $root/data/SST-2 \
        --onnx-python .venv-ref/bin/python --out experiments/results/base-teacher-compare --force ;;
    *) echo "unknown step $step: teacher, distil6, tinybert4, tinybert4-aug4 or compare" >&2; exit 2 ;;
  esac
done
