#!/usr/bin/env bash
# BLIP-base-shape bundles with random weights, for performance work (ViT-B/16 at 384 px,
# BERT-base text, BLIP's 30,524-token vocabulary; about 1.7 GB of fp32 graphs per bundle, plus
# the same graphs at half the size in fp16 or at about a quarter in int8). Not committed: made
# where they are used.
#
#   scripts/make-base-bundles.sh OUT [PRECISIONS]     # fp32 (default), or e.g. fp32,fp16,int8
#
# Makes OUT/captioner and OUT/filter; a synthetic benchmark split under OUT/data gives the
# tokenizer its text and the export check its images. About 2 minutes on 2 cores for fp32, 3 with
# fp32,int8 (2026-12-07).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/make-base-bundles.sh OUT [fp32[,fp16][,int8]]}
precision=${2:-fp32}
py="$repo/.venv/bin/python"
capfilt=${CAPFILT_BIN:-$repo/target/release/capfilt}
export PYTHONPATH="$repo/trainer${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
if [ ! -d "$out/data/seed" ]; then
  "$capfilt" synth --out "$out/data" --seed-rows 64 --web-rows 64 --eval-rows 16 --seed 7
fi
for kind in captioner filter; do
  "$py" -m capfilt_trainer train --kind "$kind" --data "$out/data/seed" --out "$out/ckpt/$kind" \
    --size base --steps 0 --seed 0
  "$py" -m capfilt_trainer export --checkpoint "$out/ckpt/$kind" --kind "$kind" --out "$out/$kind" \
    --name "base-random-$kind" --precision "$precision" --verify-images "$out/data/eval"
done
echo "base-shape bundles: $out/captioner $out/filter ($precision)"
