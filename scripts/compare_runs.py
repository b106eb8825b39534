"""Compare two `capfilt infer` outputs of the same input (e.g. the CPU and a GPU, or fp32 and
fp16 graphs): the share of identical synthetic captions per (key, candidate), and the largest
and mean |difference| of the ITM probability and ITC similarity of the same web texts. Prints
one line; with --json, a JSON object.

    .venv/bin/python scripts/compare_runs.py OUT_A OUT_B [--label "cpu vs cuda:0"]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def rows(out: Path) -> dict:
    table = pq.read_table(out / "scored").to_pylist()
    return {(r["key"], r["origin"], r.get("candidate")): r for r in table}


def compare(a: Path, b: Path) -> dict:
    ra, rb = rows(a), rows(b)
    synth = [k for k in ra if k[1] == "synthetic"]
    web = [k for k in ra if k[1] == "web" and k in rb]
    same = sum(ra[k]["text"] == rb.get(k, {}).get("text") for k in synth)
    itm = [abs(ra[k]["itm_prob"] - rb[k]["itm_prob"]) for k in web]
    itc = [abs(ra[k]["itc_sim"] - rb[k]["itc_sim"]) for k in web if ra[k].get("itc_sim") is not None]
    kept = sum(ra[k]["kept"] == rb[k]["kept"] for k in web)
    return {
        "captions": len(synth),
        "captions_identical": same,
        "web_texts": len(web),
        "web_kept_agree": kept,
        "itm_max_abs_diff": max(itm, default=0.0),
        "itm_mean_abs_diff": sum(itm) / max(len(itm), 1),
        "itc_max_abs_diff": max(itc, default=0.0),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--label", default="")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        c = compare(Path(args.a), Path(args.b))
    except (OSError, KeyError) as e:
        print(f"error: cannot compare {args.a} and {args.b}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(c))
    else:
        print(f"{args.label + ': ' if args.label else ''}{c['captions_identical']} of {c['captions']} captions identical "
              f"({100 * c['captions_identical'] / max(c['captions'], 1):.1f}%), keep decision agrees on {c['web_kept_agree']} of "
              f"{c['web_texts']} web texts, ITM |d| max {c['itm_max_abs_diff']:.2e} mean {c['itm_mean_abs_diff']:.2e}, "
              f"ITC |d| max {c['itc_max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
