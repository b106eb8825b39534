#!/usr/bin/env bash
# The CapFilt effect on the synthetic benchmark (README "The CapFilt effect, measured"):
#   A  3 rounds from the seed bundles: nucleus captions, filtered (each round at its filter's
#      99%-precision threshold on the eval split, --threshold-at-precision 0.99), retraining
#      between rounds: eval figures seed -> round 1 -> round 2 bundles, and the cleaned web set's
#      precision / recall against the ground truth;
#   B  the ablation: the same retraining on the raw, unfiltered web set (threshold 0: every web
#      and synthetic text is kept);
#   C  beam search (3 beams) instead of nucleus sampling for the synthetic captions.
# Every variant starts from models/shapes-seed and uses the same benchmark (scripts/demo.sh's),
# the same training budget and seeds (eval split 2,000 rows; intervals are 95%: Wilson for
# rates, Hanley-McNeil for ROC-AUC, see scripts/round_quality.py); the gate's tolerance is 1 so every variant runs through
# and its figures are recorded whichever way they fall. About 12 to 25 minutes on 2 cores (machines differ) after a
# release build.
#
#   scripts/capfilt-experiment.sh [WORK_DIR]     (default: target/experiment)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
work=${1:-target/experiment}
bin=target/release/capfilt
py=.venv/bin/python
cargo build --release --locked -q -p capfilt
bench=$work/bench
# A re-run resumes the variants' runs; runs made from other seed bundles are started afresh.
mkdir -p "$work"
stamp=$(cat models/shapes-seed/captioner/bundle.json models/shapes-seed/filter/bundle.json | sha256sum | cut -c1-16)
if [ "$(cat "$work/seed-bundles.stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$work"/A-* "$work"/B-* "$work"/C-*
  echo "$stamp" > "$work/seed-bundles.stamp"
fi
"$bin" synth --out "$bench" --seed-rows 4000 --web-rows 10000 --eval-rows 2000 --noise 0.4 --seed 0 >/dev/null

variant() { # name rounds extra-args...
  local name=$1 rounds=$2
  shift 2
  "$bin" run --rounds "$rounds" --input "$bench/web" --output "$work/$name" \
    --captioner models/shapes-seed/captioner --filter models/shapes-seed/filter \
    --seed-data "$bench/seed" --eval-data "$bench/eval" --tolerance 1 --workers 2 "$@" \
    > "$work/$name.log" 2>&1
}

t0=$(date +%s)
variant A-filtered-nucleus 3 --threshold-at-precision 0.99
variant B-raw-web 2 --threshold 0
variant C-filtered-beam 2 --decoding beam --num-beams 3 --threshold-at-precision 0.99
t1=$(date +%s)

echo "== A: bootstrap rounds (nucleus, filtered) =="
$py scripts/rounds_table.py --output "$work/A-filtered-nucleus" --truth "$bench/web"
echo
echo "== retrained after round 1: what the new bundles learned from (eval split, 95% intervals) =="
$py - "$work" "$bench/eval" <<'PY'
import json, math, sys
from pathlib import Path
import pyarrow.parquet as pq
sys.path.insert(0, "scripts")
from round_quality import wilson
work = Path(sys.argv[1])
truth = pq.read_table(sys.argv[2], columns=["gt_match", "gt_caption"])
labels = truth["gt_match"].to_pylist()
shapes = sum(c.count(" and ") + 1 for c in truth["gt_caption"].to_pylist())  # shape accuracy's denominator
npos, nneg = sum(labels), len(labels) - sum(labels)

def auc_ci(a):
    # Hanley & McNeil (1982) standard error of a ROC-AUC with npos positives and nneg negatives.
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (npos - 1) * (q1 - a * a) + (nneg - 1) * (q2 - a * a)) / (npos * nneg))
    return f"{a:.3f} [{a - 1.96 * se:.3f}, {min(1.0, a + 1.96 * se):.3f}]"

def rate_ci(value, n):
    w = wilson(round(value * n), n)
    return f"{value:.3f} [{w['lo']:.3f}, {w['hi']:.3f}]"

seed = json.loads((work / "A-filtered-nucleus" / "round-0001" / "eval.json").read_text())
rows = [("seed bundles (no retraining)", seed[0], seed[1])]
for name, label in [("A-filtered-nucleus", "seed + cleaned (nucleus, filtered)"),
                    ("B-raw-web", "seed + raw web (no filter)"),
                    ("C-filtered-beam", "seed + cleaned (beam, filtered)")]:
    p = json.loads((work / name / "round-0001" / "promotion.json").read_text())
    rows.append((label, p["captioner_eval"], p["filter_eval"]))
print(f"eval rows: {len(labels)} ({npos} matching, {nneg} not)")
print(f"{'trained on':<36} {'exact match':>21} {'shape acc':>21} {'colour acc':>21} {'background acc':>21} {'filter ROC-AUC':>21}")
for label, c, f in rows:
    n = int(c["eval_rows"])
    print(f"{label:<36} {rate_ci(c['exact_match'], n):>21} {rate_ci(c['shape_acc'], shapes):>21} {rate_ci(c['colour_acc'], shapes):>21} "
          f"{rate_ci(c['background_acc'], n):>21} {auc_ci(f['auc']):>21}")
PY
echo "(all variants: $((t1 - t0)) s)"
