#!/usr/bin/env bash
# Why the seed captioner does not name shapes (trainer README, "Why the seed models do not see
# shapes"): a linear probe on the seed bundles' vision towers, then the same BLIP vision tower
# trained from scratch to do nothing but classify the first shape, on the images as they are, on
# their luminance, on their shape masks, and with 10x the images and steps; a small CNN as the
# control; then the fix, the mask curriculum. Prints one line per experiment. About 22 minutes on 2
# idle cores.
#
#   scripts/diagnose-shapes.sh [WORK_DIR]    (default: target/diagnose-shapes)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${1:-target/diagnose-shapes}
py=.venv/bin/python
export PYTHONPATH="$repo/trainer${PYTHONPATH:+:$PYTHONPATH}"
cargo build --locked -q -p capfilt
bin=target/debug/capfilt
[ -f "$work/bench/_synth.json" ] || "$bin" synth --out "$work/bench" --seed-rows 4000 --web-rows 10 --eval-rows 2000 --noise 0.4 --seed 0 >/dev/null
[ -f "$work/big/_synth.json" ] || "$bin" synth --out "$work/big" --seed-rows 40000 --web-rows 10 --eval-rows 10 --noise 0.4 --seed 5 >/dev/null
seed=$work/bench/seed
eval=$work/bench/eval

line() { # label, then the JSON line of one diagnose run
  $py -c 'import json,sys; r=json.loads(sys.argv[2]); print("%-58s %.3f" % (sys.argv[1], r["final_eval_shape_acc"]))' "$1" "$2"
}
echo "== linear probe of the seed bundles' vision towers (train 4000 seed rows, eval 1000 rows) =="
for kind in captioner filter; do
  $py -m capfilt_trainer diagnose probe --checkpoint models/shapes-seed/$kind --train "$seed" --eval "$eval" --json 2>/dev/null \
    | tail -1 | $py -c 'import json,sys; r=json.loads(sys.stdin.read()); k=sys.argv[1]
print("%-10s colour: cls %.3f mean %.3f all %.3f (chance 0.083)   shape: cls %.3f mean %.3f all %.3f (majority %.3f)" % (k,
  r["cls_colour_acc"], r["mean_patch_colour_acc"], r["all_patches_colour_acc"], r["cls_shape_acc"], r["mean_patch_shape_acc"],
  r["all_patches_shape_acc"], r["shape_chance"]))' $kind
done
echo
echo "== the seed preset's vision tower trained only to classify the first shape (eval shape accuracy, 1000 rows) =="
run() { $py -m capfilt_trainer diagnose classify --train "$1" --eval "$eval" --json "${@:2}" 2>/dev/null | tail -1; }
line "BLIP ViT, 4,000 images, 1,200 steps" "$(run "$seed" --steps 1200)"
line "  same, luminance only" "$(run "$seed" --steps 1200 --gray)"
line "  same, shape masks (white on black)" "$(run "$seed" --steps 1200 --binarise)"
line "  same, 8 px patches" "$(run "$seed" --steps 1200 --patch 8)"
line "  same, 4,000 steps" "$(run "$seed" --steps 4000 --eval-every 1000)"
line "BLIP ViT, 40,000 images, 8,000 steps" "$(run "$work/big/seed" --steps 8000 --eval-every 2000)"
line "4-layer CNN, 4,000 images, 1,200 steps (control)" "$(run "$seed" --steps 1200 --cnn)"
echo
echo "== the fix: the mask curriculum (shape masks first, blended to the real images from 30% to 80% of the steps) =="
line "BLIP ViT, 40,000 images, 2,000 steps, real images only" "$(run "$work/big/seed" --steps 2000 --eval-every 1000)"
line "BLIP ViT, 40,000 images, 2,000 steps, mask curriculum" "$(run "$work/big/seed" --steps 2000 --eval-every 1000 --mask-curriculum 0.3:0.8)"
line "BLIP ViT, 40,000 images, 4,000 steps, mask curriculum" "$(run "$work/big/seed" --steps 4000 --eval-every 1000 --mask-curriculum 0.3:0.8)"
