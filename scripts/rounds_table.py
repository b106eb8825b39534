#!/usr/bin/env python3
"""The per-round table of a bootstrap run on the synthetic benchmark: rows processed, img/s, web
and synthetic texts kept, precision and recall of the kept web and synthetic texts and the
coverage of the cleaned set against the ground truth (each with its 95% interval, see
round_quality.py), the keep threshold each round used, and the held-out figures of the round's captioner (exact match, shape
accuracy) and filter (ROC-AUC); then per round the four cleaned sets of the paper's ablation
(none, filter only, captioner only, both).

    python scripts/rounds_table.py --output OUT --truth BENCH/web [--json]
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


sys.path.insert(0, str(HERE))
from round_quality import fmt, print_ablations, quality  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, help="the run's output folder (with _run.json)")
    p.add_argument("--truth", required=True, help="the benchmark split the rounds read")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = Path(args.output)
    run = json.loads((out / "_run.json").read_text())
    rows = []
    for r in run["rounds"]:
        rdir = out / f"round-{r['round']:04d}"
        q = quality(rdir, args.truth)
        manifest = json.loads((rdir / "_manifest.json").read_text())
        rows.append({
            "round": r["round"],
            "rows": r["totals"]["rows_in"],
            "images_per_second": r.get("images_per_second"),
            "threshold": manifest["params"]["threshold"],
            "web_kept": q["web_keep_rate"],
            "synthetic_kept": q["synthetic_keep_rate"],
            "raw_web_precision": q["raw_web_precision"],
            "kept_web_precision": q["kept_web_precision"],
            "kept_web_recall": q["kept_web_recall"],
            "kept_synthetic_precision": q["kept_synthetic_precision"],
            "kept_synthetic_recall": q["kept_synthetic_recall"],
            "raw_coverage": q["raw_coverage"],
            "cleaned_coverage": q["cleaned_coverage"],
            "coverage_gain": q["coverage_gain"],
            "ablations": q["ablations"],
            "captioner_exact_match": r["captioner_eval"].get("exact_match"),
            "captioner_shape_acc": r["captioner_eval"].get("shape_acc"),
            "filter_auc": r["filter_eval"].get("auc"),
            "promoted_after": (r.get("promotion") or {}).get("promoted"),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    pct = lambda v: "-" if v is None else f"{100 * v:5.1f}%"
    num = lambda v, f="{:.3f}": "-" if v is None else f.format(v)
    print(f"{'round':>5} {'rows':>7} {'img/s':>7} {'threshold':>9} {'web kept':>9} {'syn kept':>9} "
          f"{'capt. exact':>11} {'capt. shape':>11} {'filter AUC':>10}")
    for x in rows:
        print(f"{x['round']:>5} {x['rows']:>7} {num(x['images_per_second'], '{:.0f}'):>7} {num(x['threshold']):>9} "
              f"{pct(x['web_kept']):>9} {pct(x['synthetic_kept']):>9} {num(x['captioner_exact_match']):>11} "
              f"{num(x['captioner_shape_acc']):>11} {num(x['filter_auc']):>10}")
    print("against the ground truth, 95% intervals in brackets:")
    print(f"{'round':>5} {'kept-web precision':>20} {'kept-web recall':>20} {'kept-synthetic P':>20} {'kept-synthetic R':>20} "
          f"{'coverage':>20}")
    for x in rows:
        print(f"{x['round']:>5} {fmt(x['kept_web_precision']):>20} {fmt(x['kept_web_recall']):>20} "
              f"{fmt(x['kept_synthetic_precision']):>20} {fmt(x['kept_synthetic_recall']):>20} {fmt(x['cleaned_coverage']):>20}")
    if rows:
        print(f"raw web set (no filtering): precision {fmt(rows[0]['raw_web_precision'])}, coverage {fmt(rows[0]['raw_coverage'])}")
        for x in rows:
            print(f"round {x['round']}: coverage gain over raw {fmt(x['coverage_gain'])} points")
        for x in rows:
            print(f"round {x['round']}, the paper's ablation on this round's texts (which texts a trainer would get):")
            print_ablations(x["ablations"], indent="  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
