#!/usr/bin/env bash
# The README's first command: sets up a fresh machine, builds capfilt, writes the synthetic CapFilt
# benchmark and runs 2 bootstrap rounds over its web split from the committed seed bundles (a
# coordinator and 2 workers in one process, local filesystem, CPU; the trainer retrains captioner
# and filter between the rounds; each round keeps the texts above its filter's 99%-precision
# threshold on the eval split), then prints a table per round. Re-running it resumes.
#
#   scripts/demo.sh [OUT_DIR]     (default: demo-out/)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${1:-demo-out}

t0=$(date +%s)
# The set-up (Debian packages, ONNX Runtime, the Python venv with torch: minutes of downloads)
# runs while capfilt builds (minutes of compiling); the build needs neither.
mkdir -p "$out"
echo "[demo] set-up in the background (log: $out/setup.log); building capfilt (release)"
scripts/setup.sh > "$out/setup.log" 2>&1 &
setup_pid=$!
if ! cargo build --release --locked -p capfilt; then
  wait "$setup_pid" || true
  exit 1
fi
if ! wait "$setup_pid"; then
  echo "[demo] set-up failed; its log:" >&2
  tail -40 "$out/setup.log" >&2
  exit 1
fi
t1=$(date +%s)
bin=target/release/capfilt

echo "[demo] checking ONNX Runtime"
"$bin" doctor

echo "[demo] writing the synthetic benchmark to $out/bench"
"$bin" synth --out "$out/bench" --seed-rows 4000 --web-rows 10000 --eval-rows 2000 --noise 0.4 --seed 0
t2=$(date +%s)

echo "[demo] 2 bootstrap rounds over $out/bench/web from models/shapes-seed (retraining between them)"
"$bin" run --rounds 2 --input "$out/bench/web" --output "$out/rounds" \
  --captioner models/shapes-seed/captioner --filter models/shapes-seed/filter \
  --seed-data "$out/bench/seed" --eval-data "$out/bench/eval" --workers 2 --threshold-at-precision 0.99
t3=$(date +%s)

echo
echo "[demo] per round, against the benchmark's ground truth:"
.venv/bin/python scripts/rounds_table.py --output "$out/rounds" --truth "$out/bench/web"
echo "[demo] set-up + build: $((t1 - t0)) s, benchmark: $((t2 - t1)) s, rounds + training: $((t3 - t2)) s"
echo "[demo] round reports (plots and a sample gallery): $out/rounds/round-0001/report/index.html, $out/rounds/round-0002/report/index.html"
