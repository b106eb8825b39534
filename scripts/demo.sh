#!/usr/bin/env bash
# The README's first command: sets up a fresh machine, builds capfilt, writes the synthetic CapFilt
# benchmark and runs a CapFilt round over its web split with the committed seed bundles
# (a coordinator and 2 workers in one process, local filesystem, CPU), then shows the round's
# totals and how well the kept web texts match the ground truth.
#
#   scripts/demo.sh [OUT_DIR]     (default: demo-out/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${1:-demo-out}

t0=$(date +%s)
scripts/setup.sh
echo "[demo] building capfilt (release)"
cargo build --release --locked -p capfilt
t1=$(date +%s)
bin=target/release/capfilt

echo "[demo] checking ONNX Runtime"
"$bin" doctor

echo "[demo] writing the synthetic benchmark to $out/bench"
"$bin" synth --out "$out/bench" --seed-rows 4000 --web-rows 10000 --eval-rows 500 --noise 0.4 --seed 0
t2=$(date +%s)

echo "[demo] CapFilt round 1 over $out/bench/web with models/shapes-seed"
rm -rf "$out/rounds/round-0001"
"$bin" run --input "$out/bench/web" --output "$out/rounds" \
  --captioner models/shapes-seed/captioner --filter models/shapes-seed/filter --workers 2
t3=$(date +%s)

echo "[demo] kept web texts against the benchmark's ground truth"
.venv/bin/python scripts/round_quality.py --round "$out/rounds/round-0001" --truth "$out/bench/web"
echo "[demo] set-up + build: $((t1 - t0)) s, benchmark: $((t2 - t1)) s, round: $((t3 - t2)) s"
