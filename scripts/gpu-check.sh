#!/usr/bin/env bash
# Everything only an NVIDIA GPU can show, in one command and about 10 minutes, with every
# figure written to one report file:
#
#   scripts/gpu-check.sh [--out DIR] [--images N] [--skip-build]
#   scripts/gpu-check.sh --build-only          # on the CPU side: build everything first
#
#  1. the GPU and its driver (nvidia-smi);
#  2. ONNX Runtime's GPU build (scripts/fetch-onnxruntime.sh --gpu, unless ORT_DYLIB_PATH is set);
#  3. `cargo build --release --features cuda` of capfilt and of the worker's tests (skipped with
#     --skip-build when target/ was built on the CPU side and carried along: --build-only);
#  4. `capfilt doctor --device cuda:0`: driver check, a test graph, a device row gather;
#  5. parity on the GPU: the worker's device-resident decoding and HF-parity tests with
#     CAPFILT_TEST_DEVICE=cuda:0, and `capfilt infer` (greedy) on the CPU and on the GPU
#     with the seed bundles, fp32 and fp16, compared by scripts/compare_runs.py;
#  6. BLIP-base-shape bundles with random weights, fp32 + fp16 (scripts/make-base-bundles.sh,
#     unless DIR/base exists), and capfilt-bench fp32 and fp16 against HF transformers on the
#     same GPU in the same run, batch 1, 8, 32 and 64, on real photos;
#  7. `capfilt run` over a 10,000-image web split with the base-shape fp16 bundles, one worker
#     with 4 slots sharing the GPU's engine, with continuous batching and without (img/s).
#
# The report is DIR/report.txt (default DIR: target/gpu-check). A failing step is recorded and
# the next one runs; the exit code is 1 if any step failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=target/gpu-check
images=64
skip_build=0
build_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
report="$out/report.txt"
py="$repo/.venv/bin/python"
bin="$repo/target/release/capfilt"
failed=0

build() {
  cargo build --release --locked --features cuda -p capfilt --bins &&
    cargo test --release --locked --features cuda -p capfilt-worker --test device_io --test parity --test continuous --test engine_hub --no-run
}
if [ "$build_only" = 1 ]; then
  build
  exit $?
fi

: > "$report"
note() { printf '%s\n' "$*" | tee -a "$report"; }
step() {
  local name=$1; shift
  note ""
  note "== $name =="
  local t0=$SECONDS log="$out/step.log"
  "$@" > "$log" 2>&1
  local rc=$?
  cat "$log" >> "$out/steps.log"
  grep -v '^[[:space:]]*$' "$log" | grep -v ' INFO ' | tail -n 25 | tee -a "$report"
  note "-- $name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || failed=1
}

note "capfilt gpu-check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
step "GPU" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
command -v nvidia-smi >/dev/null || { note "no nvidia-smi: this machine has no NVIDIA driver"; exit 1; }

if [ -z "${ORT_DYLIB_PATH:-}" ]; then
  step "ONNX Runtime GPU build" scripts/fetch-onnxruntime.sh --gpu
  # shellcheck disable=SC1091
  [ -f third_party/onnxruntime/gpu/env.sh ] && . third_party/onnxruntime/gpu/env.sh
fi
[ -x "$py" ] || step "Python environment" scripts/setup.sh
[ "$skip_build" = 1 ] || step "build (--features cuda)" build

export CAPFILT_DEVICE=cuda:0
step "capfilt doctor --device cuda:0" "$bin" doctor --device cuda:0

step "worker tests on cuda:0 (device-resident decoding, HF parity)" \
  env CAPFILT_TEST_DEVICE=cuda:0 cargo test --release --locked --features cuda -p capfilt-worker --test device_io --test parity --test continuous --test engine_hub

data="$out/data"
[ -d "$data/eval" ] || "$bin" synth --out "$data" --seed-rows 10 --web-rows 10 --eval-rows 512 --seed 11 >/dev/null
evalfile=$(ls "$data"/eval/*.parquet | head -n 1)
seed16="$out/seed16"
if [ ! -f "$seed16/filter/bundle.json" ]; then
  for kind in captioner filter; do
    step "fp16 export of the seed $kind" env PYTHONPATH=trainer "$py" -m capfilt_trainer export \
      --checkpoint "models/shapes-seed/$kind/checkpoint" --kind "$kind" --out "$seed16/$kind" --precision fp32,fp16
  done
fi
infer() { # DEVICE PRECISION OUT
  "$bin" infer --captioner "$seed16/captioner" --filter "$seed16/filter" --input "$evalfile" --output "$3" \
    --decoding greedy --device "$1" --precision "$2" --cache-dir "$out/cache" --json > /dev/null
}
step "infer cpu fp32" infer cpu fp32 "$out/infer-cpu-fp32"
step "infer cuda:0 fp32" infer cuda:0 fp32 "$out/infer-cuda-fp32"
step "infer cuda:0 fp16" infer cuda:0 fp16 "$out/infer-cuda-fp16"
step "infer cuda:0 fp32, host decoding" "$bin" infer --captioner "$seed16/captioner" \
  --filter "$seed16/filter" --input "$evalfile" --output "$out/infer-cuda-host" --decoding greedy --device cuda:0 \
  --precision fp32 --host-decoding --cache-dir "$out/cache" --json
step "parity: cpu vs cuda:0 (fp32)" "$py" scripts/compare_runs.py "$out/infer-cpu-fp32" "$out/infer-cuda-fp32" --label "cpu fp32 vs cuda:0 fp32"
step "parity: cuda:0 fp32 vs fp16" "$py" scripts/compare_runs.py "$out/infer-cuda-fp32" "$out/infer-cuda-fp16" --label "cuda:0 fp32 vs cuda:0 fp16"
step "parity: cuda:0 device-resident vs host decoding" "$py" scripts/compare_runs.py "$out/infer-cuda-fp32" "$out/infer-cuda-host" --label "cuda:0 bound vs host"

base="$out/base"
[ -f "$base/filter/bundle.json" ] || step "base-shape bundles (fp32 + fp16)" env CAPFILT_BIN="$bin" scripts/make-base-bundles.sh "$base" fp32,fp16
.venv/bin/python scripts/make_photo_bench.py --out "$out/photos.parquet" --count "$images" >/dev/null
# Two one-second windows per preprocessing figure (not the bench's five): the GPU's figures are
# what this script is for, and its time on a lent machine is short.
for precision in fp32 fp16; do
  step "capfilt-bench base shape, cuda:0, $precision, vs HF transformers" target/release/capfilt-bench \
    --captioner "$base/captioner" --filter "$base/filter" --data "$out/photos.parquet" --images "$images" \
    --batch-sizes 1,8,32,64 --threads 8 --device cuda:0 --precision "$precision" --windows 2
done
web="$out/web10k"
[ -d "$web/web" ] || "$bin" synth --out "$web" --seed-rows 10 --web-rows 10000 --eval-rows 10 --seed 5 >/dev/null
printf '[worker]\nslots = 4\n' > "$out/run.toml"
pipeline() { # CONTINUOUS
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" run --config "$out/run.toml" --input "$web/web" --output "$out/run-continuous-$1" --captioner "$base/captioner" \
    --filter "$base/filter" --workers 1 --device cuda:0 --continuous-batching "$1" --cache-dir "$out/cache" || return 1
  t1=$(date +%s.%N)
  echo "capfilt run, 10000 images, 1 worker x 4 slots, continuous batching $1: $(echo "10000 / ($t1 - $t0)" | bc -l | cut -c1-7) img/s end to end"
}
step "capfilt run on cuda:0, continuous batching" pipeline true
step "capfilt run on cuda:0, batch by batch" pipeline false
note ""
note "report: $report ($([ "$failed" = 0 ] && echo 'every step ok' || echo 'some steps FAILED'))"
exit "$failed"
