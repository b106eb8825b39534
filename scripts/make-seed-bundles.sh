#!/usr/bin/env bash
# Rebuilds the committed seed bundles models/shapes-seed/{captioner,filter} from scratch:
# the synthetic benchmark's seed split only (the same benchmark scripts/demo.sh writes), the small
# size preset, fixed seeds. About 10 minutes on 2 idle CPU cores.
#
#   scripts/make-seed-bundles.sh [WORK_DIR]    (default: target/seed-bundles)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${1:-target/seed-bundles}
py=.venv/bin/python
export PYTHONPATH="$repo/trainer${PYTHONPATH:+:$PYTHONPATH}"

cargo build --locked -q -p capfilt
target/debug/capfilt synth --out "$work/bench" --seed-rows 4000 --web-rows 10000 --eval-rows 500 --noise 0.4 --seed 0

$py -m capfilt_trainer train --kind captioner --data "$work/bench/seed" --out "$work/ckpt/captioner" \
  --size small --steps 3000 --batch-size 64 --lr 2e-3 --seed 0
$py -m capfilt_trainer train --kind filter --data "$work/bench/seed" --out "$work/ckpt/filter" \
  --size small --steps 3000 --batch-size 64 --lr 1e-3 --seed 0

mkdir -p models/shapes-seed
$py -m capfilt_trainer export --checkpoint "$work/ckpt/captioner" --kind captioner \
  --out models/shapes-seed/captioner --name shapes-seed-captioner --verify-images "$work/bench/eval" --eval "$work/bench/eval"
$py -m capfilt_trainer export --checkpoint "$work/ckpt/filter" --kind filter \
  --out models/shapes-seed/filter --name shapes-seed-filter --verify-images "$work/bench/eval" --eval "$work/bench/eval"
