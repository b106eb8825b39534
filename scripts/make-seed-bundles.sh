#!/usr/bin/env bash
# Rebuilds the committed seed bundles models/shapes-seed/{captioner,filter} from scratch:
# the synthetic benchmark's seed split only (the same benchmark scripts/demo.sh writes), the small
# size preset, fixed seeds. 24 min 27 s on 2 CPU cores with AVX-512 BF16 (2026-12-07; the filter
# trains in bfloat16 autocast; on a CPU without it, expect the filter's 6,000 steps to take longer).
# Fixed seeds give the same bundles on the same machine; another CPU rounds differently and gives
# slightly different ones (trainer README, "Seed bundles").
#
# The recipe (trainer README, "Why the seed models did not see shapes"):
#   1. the captioner learns from 40,000 seed rows (8,000 steps) under the mask curriculum: its
#      first 15% of steps see the images' shape masks, the next 45% a blend that ends at the real
#      images;
#   2. the filter starts from the trained captioner (its vision tower, text transformer and
#      tokenizer, as BLIP's filter and captioner start from one pre-trained model; its text
#      transformer twice as deep, the captioner's two layers repeated), keeps the vision tower
#      frozen (its image embeddings computed once), and learns ITM with an extra negative for
#      every text: a swapped-attribute caption (60% of them with a shape word swapped, half of
#      those of two-object captions binding the other object's word) or, one time in ten, a text
#      that states nothing; from alt-text rewrites that drop articles one by one.
# Then both are exported and evaluated on a 2,000-row held-out split; the figures go into
# bundle.json. Then regenerate the golden files (testdata/README.md).
#
#   scripts/make-seed-bundles.sh [WORK_DIR]    (default: target/seed-bundles)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${1:-target/seed-bundles}
py=.venv/bin/python
export PYTHONPATH="$repo/trainer${PYTHONPATH:+:$PYTHONPATH}"

cargo build --locked -q -p capfilt
target/debug/capfilt synth --out "$work/bench" --seed-rows 40000 --web-rows 10000 --eval-rows 2000 --noise 0.4 --seed 0

$py -m capfilt_trainer train --kind captioner --data "$work/bench/seed" --out "$work/ckpt/captioner" \
  --size small --steps 8000 --batch-size 64 --lr 2e-3 --seed 0 --mask-curriculum 0.15:0.6 --log-every 500
$py -m capfilt_trainer train --kind filter --data "$work/bench/seed" --out "$work/ckpt/filter" \
  --size small --text-layers 4 --init-shared "$work/ckpt/captioner" --freeze-vision --swap-negatives 1.0 --swap-shape-share 0.6 \
  --swap-binding-share 0.5 --contentless-share 0.1 --steps 6000 --batch-size 64 --lr 2e-3 --bf16 --seed 0 --log-every 500

mkdir -p models/shapes-seed
$py -m capfilt_trainer export --checkpoint "$work/ckpt/captioner" --kind captioner \
  --out models/shapes-seed/captioner --name shapes-seed-captioner --verify-images "$work/bench/eval" --eval "$work/bench/eval"
$py -m capfilt_trainer export --checkpoint "$work/ckpt/filter" --kind filter \
  --out models/shapes-seed/filter --name shapes-seed-filter --verify-images "$work/bench/eval" --eval "$work/bench/eval"
