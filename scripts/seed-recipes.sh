#!/usr/bin/env bash
# What took the seed bundles from shape accuracy 0.84 / filter ROC-AUC 0.96 to their current
# figures (trainer README, "What was left after the curriculum"): the seed captioner at 4,000 and
# 8,000 steps and with 12 px patches, then filters on the captioners' towers with the previous and
# the current swapped-negative recipes. Every run is pinned to one core (`taskset`), two at a time
# on a 2-core machine, so their steps/s compare with each other (not with make-seed-bundles.sh's
# 2-thread runs). Then one `diagnose errors` line per checkpoint on the 2,000-row eval split.
# About 50 minutes on 2 idle cores. The filter recipes here were measured before alt-text
# rewrites dropped articles one by one (trainer README, "What kept the cleaned set from 98%
# precision"); run this at commit 8857e5d for those figures.
#
#   scripts/seed-recipes.sh [WORK_DIR]    (default: target/seed-recipes)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${1:-target/seed-recipes}
py=.venv/bin/python
export PYTHONPATH="$repo/trainer${PYTHONPATH:+:$PYTHONPATH}"
cargo build --locked -q -p capfilt
bench=$work/bench
# The same benchmark as make-seed-bundles.sh's.
[ -f "$bench/_synth.json" ] || target/debug/capfilt synth --out "$bench" --seed-rows 40000 --web-rows 10000 --eval-rows 2000 \
  --noise 0.4 --seed 0 >/dev/null
mkdir -p "$work/logs"

train() { # core, name, train flags...
  local core=$1 name=$2
  shift 2
  [ -f "$work/$name/train.json" ] && return 0
  taskset -c "$core" $py -m capfilt_trainer train --data "$bench/seed" --out "$work/$name" --batch-size 64 --seed 0 \
    --log-every 1000 "$@" >"$work/logs/$name.log" 2>&1
}
captioner=(--kind captioner --size small --lr 2e-3 --mask-curriculum 0.15:0.6)
filter=(--kind filter --size small --freeze-vision --steps 3000)

train 0 cap-p16-4000 "${captioner[@]}" --steps 4000 &
train 1 cap-p12-4000 "${captioner[@]}" --steps 4000 --patch-size 12 &
wait
train 0 cap-p16-8000 "${captioner[@]}" --steps 8000 &
train 1 filt-p12-4000-swap0.5 "${filter[@]}" --patch-size 12 --init-shared "$work/cap-p12-4000" --swap-negatives 0.5 --lr 1e-3 &
wait
train 0 filt-p16-8000-swap0.5 "${filter[@]}" --init-shared "$work/cap-p16-8000" --swap-negatives 0.5 --lr 1e-3 &
train 1 filt-p16-8000-swap1.0 "${filter[@]}" --init-shared "$work/cap-p16-8000" --swap-negatives 1.0 --lr 1e-3 &
wait
train 0 filt-p16-8000-swap1.0-shape0.6 "${filter[@]}" --init-shared "$work/cap-p16-8000" --swap-negatives 1.0 --swap-shape-share 0.6 --lr 1e-3 &
train 1 filt-p16-8000-swap1.0-shape0.6-4000steps "${filter[@]}" --init-shared "$work/cap-p16-8000" --swap-negatives 1.0 --swap-shape-share 0.6 \
  --lr 1e-3 --steps 4000 &
wait
train 0 filt-p16-8000-swap1.0-shape0.6-lr2e-3 "${filter[@]}" --init-shared "$work/cap-p16-8000" --swap-negatives 1.0 --swap-shape-share 0.6 --lr 2e-3

echo "== captioners (eval 2,000 rows; greedy) =="
for name in cap-p16-4000 cap-p12-4000 cap-p16-8000; do
  echo "-- $name ($(grep -o '[0-9.]* steps/s' "$work/logs/$name.log" | tail -1) on one core)"
  $py -m capfilt_trainer diagnose errors --checkpoint "$work/$name" --eval "$bench/eval" --eval-limit 2000 2>/dev/null
done
echo
echo "== filters (eval 2,000 rows: 1,200 matching texts, 800 not) =="
for name in filt-p12-4000-swap0.5 filt-p16-8000-swap0.5 filt-p16-8000-swap1.0 filt-p16-8000-swap1.0-shape0.6 filt-p16-8000-swap1.0-shape0.6-4000steps \
  filt-p16-8000-swap1.0-shape0.6-lr2e-3; do
  echo "-- $name ($(grep -o '[0-9.]* steps/s' "$work/logs/$name.log" | tail -1) on one core)"
  $py -m capfilt_trainer diagnose errors --checkpoint "$work/$name" --eval "$bench/eval" --eval-limit 2000 2>/dev/null
done
