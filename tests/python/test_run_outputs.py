"""`capfilt run` as a user runs it: a round over a synthetic web split with the seed bundles
(coordinator + 2 workers in one process); pyarrow and DuckDB read its output by following the
commit records; rows in = scored images + rejects, no key twice; a second run resumes and redoes
nothing.

Runs the capfilt binary (CAPFILT_BIN, default target/debug/capfilt).
"""
import json
import os
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
SEED = REPO / "models" / "shapes-seed"


def run(args, **kw):
    return subprocess.run([BIN, *args], capture_output=True, text=True, check=False, **kw)


@pytest.fixture(scope="module")
def rnd(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("run")
    r = run(["synth", "--out", str(root / "bench"), "--web-rows", "800", "--seed-rows", "10", "--eval-rows", "10",
             "--rows-per-file", "400", "--row-group-rows", "100", "--seed", "11"])
    assert r.returncode == 0, r.stderr
    args = ["run", "--input", str(root / "bench" / "web"), "--output", str(root / "out"),
            "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"),
            "--workers", "2", "--target-shard-rows", "200", "--cache-dir", str(root / "cache"), "--json"]
    r = run(args)
    assert r.returncode == 0, r.stderr
    return {"root": root, "round": root / "out" / "round-0001", "manifest": json.loads(r.stdout), "args": args}


def committed(round_dir: Path, table: str) -> pa.Table:
    commits = [json.loads(f.read_text()) for f in sorted((round_dir / "_commits").glob("*.json"))]
    return pa.concat_tables([pq.read_table(round_dir / c["files"][table]["path"]) for c in commits])


def test_rows_in_equal_scored_images_plus_rejects_with_no_key_twice(rnd) -> None:
    web = pq.read_table(rnd["root"] / "bench" / "web", columns=["key"])
    scored, rejects = committed(rnd["round"], "scored"), committed(rnd["round"], "rejects")
    con = duckdb.connect()
    con.register("scored", scored)
    con.register("rejects", rejects)
    images = con.execute("select count(distinct key) from scored").fetchone()[0]
    twice = con.execute("select count(*) from (select key from scored where origin = 'web' group by key having count(*) > 1)").fetchone()[0]
    assert twice == 0
    m = rnd["manifest"]
    assert m["totals"]["rows_in"] == web.num_rows == images + rejects.num_rows
    assert m["totals"]["rows_scored"] == images
    assert len(m["shards"]) == 4 and all(s["state"] == "committed" for s in m["shards"])
    on_disk = json.loads((rnd["round"] / "_manifest.json").read_text())
    assert on_disk["totals"] == m["totals"]


def test_cleaned_rows_are_the_kept_scored_rows(rnd) -> None:
    scored, cleaned = committed(rnd["round"], "scored"), committed(rnd["round"], "cleaned")
    con = duckdb.connect()
    con.register("scored", scored)
    con.register("cleaned", cleaned)
    assert con.execute("select count(*) from scored where kept").fetchone()[0] == cleaned.num_rows
    keep = con.execute("select avg(kept::int) from scored where origin = 'web'").fetchone()[0]
    assert abs(keep - rnd["manifest"]["web_keep_rate"]) < 1e-9


def test_running_the_same_command_again_redoes_nothing(rnd) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (rnd["round"] / "_commits").glob("*.json")}
    r = run(rnd["args"])
    assert r.returncode == 0, r.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (rnd["round"] / "_commits").glob("*.json")}
    assert after == before
    assert json.loads(r.stdout)["totals"] == rnd["manifest"]["totals"]
    scored_files = list((rnd["round"] / "scored").glob("*.parquet"))
    assert len(scored_files) == 4, "no shard processed twice"
