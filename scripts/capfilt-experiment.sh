#!/usr/bin/env bash
# The CapFilt effect on the synthetic benchmark (README "The CapFilt effect, measured"):
#   A  3 rounds from the seed bundles: nucleus captions, filtered (threshold 0.5), retraining
#      between rounds: eval figures seed -> round 1 -> round 2 bundles, and the cleaned web set's
#      precision / recall against the ground truth;
#   B  the ablation: the same retraining on the raw, unfiltered web set (threshold 0: every web
#      and synthetic text is kept);
#   C  beam search (3 beams) instead of nucleus sampling for the synthetic captions.
# Every variant starts from models/shapes-seed and uses the same benchmark (scripts/demo.sh's),
# the same training budget and seeds; the gate's tolerance is 1 so every variant runs through
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
"$bin" synth --out "$bench" --seed-rows 4000 --web-rows 10000 --eval-rows 500 --noise 0.4 --seed 0 >/dev/null

variant() { # name rounds extra-args...
  local name=$1 rounds=$2
  shift 2
  "$bin" run --rounds "$rounds" --input "$bench/web" --output "$work/$name" \
    --captioner models/shapes-seed/captioner --filter models/shapes-seed/filter \
    --seed-data "$bench/seed" --eval-data "$bench/eval" --tolerance 1 --workers 2 "$@" \
    > "$work/$name.log" 2>&1
}

t0=$(date +%s)
variant A-filtered-nucleus 3
variant B-raw-web 2 --threshold 0
variant C-filtered-beam 2 --decoding beam --num-beams 3
t1=$(date +%s)

echo "== A: bootstrap rounds (nucleus, filtered) =="
$py scripts/rounds_table.py --output "$work/A-filtered-nucleus" --truth "$bench/web"
echo
echo "== retrained after round 1: what the new bundles learned from (eval split, 500 rows) =="
$py - "$work" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
seed = json.loads((work / "A-filtered-nucleus" / "round-0001" / "eval.json").read_text())
rows = [("seed bundles (no retraining)", seed[0], seed[1])]
for name, label in [("A-filtered-nucleus", "seed + cleaned (nucleus, filtered)"),
                    ("B-raw-web", "seed + raw web (no filter)"),
                    ("C-filtered-beam", "seed + cleaned (beam, filtered)")]:
    p = json.loads((work / name / "round-0001" / "promotion.json").read_text())
    rows.append((label, p["captioner_eval"], p["filter_eval"]))
print(f"{'trained on':<38} {'exact':>6} {'colour':>7} {'shape':>6} {'bg':>6} {'AUC':>6} {'P@0.5':>6} {'R@0.5':>6}")
for label, c, f in rows:
    print(f"{label:<38} {c['exact_match']:>6.3f} {c['colour_acc']:>7.3f} {c['shape_acc']:>6.3f} {c['background_acc']:>6.3f} "
          f"{f['auc']:>6.3f} {f['precision_at_0.5']:>6.3f} {f['recall_at_0.5']:>6.3f}")
PY
echo "(all variants: $((t1 - t0)) s)"
