#!/usr/bin/env python3
"""How good a CapFilt round's filtering is, against the synthetic benchmark's ground truth.

Follows the round's commit records (never raw listings) to its scored files and joins them with
the input's gt_match / gt_caption columns: precision and recall of the kept web texts, the keep
rates, and how many kept synthetic captions equal the ground-truth caption.

    python scripts/round_quality.py --round OUT/round-0001 --truth BENCH/web [--json]
"""
import argparse
import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--round", required=True, help="a local round folder (with _commits/)")
    p.add_argument("--truth", required=True, help="the benchmark split the round read (gt_match, gt_caption)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rnd = Path(args.round)
    commits = [json.loads(f.read_text()) for f in sorted((rnd / "_commits").glob("*.json"))]
    if not commits:
        print(f"no commit records under {rnd}/_commits", file=sys.stderr)
        return 2
    scored = pa.concat_tables([pq.read_table(rnd / c["files"]["scored"]["path"]) for c in commits])
    truth = pq.read_table(args.truth, columns=["key", "gt_match", "gt_caption"])
    con = duckdb.connect()
    con.register("scored", scored)
    con.register("truth", truth)
    web = con.execute("""
        select count(*) filter (where kept and gt_match), count(*) filter (where kept),
               count(*) filter (where gt_match), count(*)
        from scored s join truth t using (key) where origin = 'web'""").fetchone()
    syn = con.execute("""
        select count(*) filter (where kept), count(*),
               count(*) filter (where kept and text = gt_caption), count(*) filter (where text = gt_caption)
        from scored s join truth t using (key) where origin = 'synthetic'""").fetchone()
    tp, kept, positives, total = web
    out = {
        "web_texts": total,
        "web_kept": kept,
        "web_keep_rate": kept / total if total else None,
        "raw_web_precision": positives / total if total else None,
        "kept_web_precision": tp / kept if kept else None,
        "kept_web_recall": tp / positives if positives else None,
        "synthetic_texts": syn[1],
        "synthetic_kept": syn[0],
        "synthetic_keep_rate": syn[0] / syn[1] if syn[1] else None,
        "synthetic_exact": syn[3] / syn[1] if syn[1] else None,
        "kept_synthetic_exact": syn[2] / syn[0] if syn[0] else None,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    f = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    print(f"web texts       {total}: kept {kept} ({f(out['web_keep_rate'])})")
    print(f"web precision   raw {f(out['raw_web_precision'])} -> kept {f(out['kept_web_precision'])} "
          f"(recall {f(out['kept_web_recall'])})")
    print(f"synthetic texts {syn[1]}: kept {syn[0]} ({f(out['synthetic_keep_rate'])}); "
          f"equal to the ground truth: {f(out['synthetic_exact'])} of all, {f(out['kept_synthetic_exact'])} of kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
