#!/usr/bin/env bash
# The README's first command: sets up a fresh machine, builds capfilt, writes the synthetic CapFilt
# benchmark and checks ONNX Runtime. Later stages (inference, bootstrap rounds) extend it as they land.
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

echo "[demo] writing the synthetic benchmark to $out/"
"$bin" synth --out "$out" --seed-rows 2000 --web-rows 10000 --eval-rows 500 --noise 0.4 --seed 0
t2=$(date +%s)
echo "[demo] set-up + build: $((t1 - t0)) s, benchmark: $((t2 - t1)) s"
