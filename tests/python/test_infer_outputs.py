"""`capfilt infer` as a user runs it: the synthetic web split plus corrupt rows through the seed
bundles; pyarrow and DuckDB read scored/cleaned/rejects, every input key appears once (scored or
rejected), and corrupt images are rejects with their reasons.

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


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("infer")
    r = subprocess.run([BIN, "synth", "--out", str(root / "bench"), "--web-rows", "300", "--seed-rows", "10",
                        "--eval-rows", "10", "--seed", "3"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    web = pq.read_table(root / "bench" / "web").select(["key", "url", "caption", "jpg"])
    good = web["jpg"][0].as_py()
    bad = pa.table({
        "key": ["bad-garbage", "bad-truncated", "bad-null"],
        "url": ["https://x.invalid/1", "https://x.invalid/2", "https://x.invalid/3"],
        "caption": ["a red circle on a blue background"] * 3,
        "jpg": pa.array([b"<html>404 not found</html>", good[: len(good) // 4], None], pa.binary()),
    })
    bad = bad.cast(pa.schema([pa.field(f.name, f.type) for f in web.schema]))
    web = web.cast(bad.schema)
    table = pa.concat_tables([web.slice(0, 150), bad, web.slice(150)])
    pq.write_table(table, root / "input.parquet", row_group_size=64)
    out = root / "out"
    r = subprocess.run([BIN, "infer", "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"),
                        "--input", str(root / "input.parquet"), "--output", str(out), "--json",
                        "--candidates", "2", "--cache-dir", str(root / "cache")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return {"out": out, "input": table, "summary": json.loads(r.stdout)}


def test_every_input_row_is_scored_or_rejected_once(run) -> None:
    out, table = run["out"], run["input"]
    scored = pq.read_table(out / "scored")
    rejects = pq.read_table(out / "rejects")
    scored_keys = set(scored["key"].to_pylist())
    reject_keys = rejects["key"].to_pylist()
    assert len(reject_keys) == len(set(reject_keys))
    assert scored_keys.isdisjoint(reject_keys)
    assert scored_keys | set(reject_keys) == set(table["key"].to_pylist())
    c = run["summary"]["counts"]
    assert c["rows_in"] == table.num_rows == c["rows_scored"] + c["rows_rejected"]
    reasons = dict(zip(rejects["key"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons == {"bad-garbage": "decode_error", "bad-truncated": "decode_error", "bad-null": "missing_image"}
    assert all(m for m in rejects["message"].to_pylist())


def test_scored_has_the_web_text_and_two_synthetic_texts_per_image(run) -> None:
    scored = pq.read_table(run["out"] / "scored")
    con = duckdb.connect()
    con.register("scored", scored)
    per_image = con.execute(
        "select key, count(*) filter (where origin = 'web') w, count(*) filter (where origin = 'synthetic') s "
        "from scored group by key").fetchall()
    c = run["summary"]["counts"]
    assert len(per_image) == c["rows_scored"]
    # A blank caption is no web text (counted as web_missing); every other image has one.
    captions = dict(zip(run["input"]["key"].to_pylist(), run["input"]["caption"].to_pylist()))
    assert all(w == (1 if (captions[k] or "").strip() else 0) and s == 2 for k, w, s in per_image)
    assert c["rows_scored"] == c["web_texts"] + c["web_missing"]
    seeds = con.execute("select count(*) from scored where origin = 'synthetic' and seed is null").fetchone()[0]
    assert seeds == 0
    assert con.execute("select min(itm_prob) >= 0 and max(itm_prob) <= 1 from scored").fetchone()[0]
    meta = pq.ParquetFile(next((run["out"] / "scored").glob("*.parquet"))).metadata.metadata
    prov = json.loads(meta[b"capfilt.provenance"])
    assert prov["captioner"]["bundle_sha256"] and prov["generation"]["decoding"] == "nucleus"


def test_cleaned_is_the_kept_part_of_scored_and_points_at_source_rows(run) -> None:
    out, table = run["out"], run["input"]
    con = duckdb.connect()
    con.register("scored", pq.read_table(out / "scored"))
    con.register("cleaned", pq.read_table(out / "cleaned"))
    kept = con.execute("select count(*) from scored where kept").fetchone()[0]
    assert con.execute("select count(*) from cleaned").fetchone()[0] == kept
    keys = table["key"].to_pylist()
    rows = con.execute("select key, source_row from cleaned").fetchall()
    assert all(keys[r] == k for k, r in rows)


def test_threshold_at_precision_takes_the_filter_bundles_recorded_threshold(run, tmp_path) -> None:
    recorded = json.loads((SEED / "filter" / "bundle.json").read_text())["provenance"]["metrics"]
    want = recorded["threshold_at_precision_0.98"]
    small = tmp_path / "small.parquet"
    pq.write_table(run["input"].slice(0, 40), small)
    common = [BIN, "infer", "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"), "--input", str(small),
              "--cache-dir", str(tmp_path / "cache")]
    r = subprocess.run(common + ["--output", str(tmp_path / "out"), "--threshold-at-precision", "0.98"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "out" / "scored").glob("*.parquet"))
    scored = pq.read_table(files[0])
    provenance = json.loads(pq.ParquetFile(files[0]).metadata.metadata[b"capfilt.provenance"])
    assert provenance["threshold"] == pytest.approx(want, abs=1e-6)
    assert all(k == (p >= provenance["threshold"]) for k, p in zip(scored["kept"].to_pylist(), scored["itm_prob"].to_pylist()))
    # A precision the bundle has no figure for: one line that says what to do.
    r = subprocess.run(common + ["--output", str(tmp_path / "out2"), "--threshold-at-precision", "0.9"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2
    assert "records no threshold for precision 0.9 (recorded: 0.95, 0.97, 0.98, 0.99); evaluate it with" in r.stderr
    assert not (tmp_path / "out2").exists()
    # --threshold and --threshold-at-precision together are a usage error.
    r = subprocess.run(common + ["--output", str(tmp_path / "out3"), "--threshold", "0.5", "--threshold-at-precision", "0.98"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "--threshold-at-precision" in r.stderr
