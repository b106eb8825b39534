"""The synthetic benchmark as downstream Python tools read it (pyarrow, DuckDB).

Runs the capfilt binary (CAPFILT_BIN, default target/debug/capfilt) like a user would.
"""
import json
import os
import subprocess
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))


def synth(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, "synth", "--out", str(out), *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "x"
    r = synth(out, "--web-rows", "2000", "--seed-rows", "300", "--eval-rows", "200", "--seed", "7", "--noise", "0.35")
    assert r.returncode == 0, r.stderr
    return out


def test_pyarrow_reads_every_split_with_img2dataset_columns(bench: Path) -> None:
    for split, rows in [("seed", 300), ("web", 2000), ("eval", 200)]:
        table = pq.read_table(bench / split)
        assert table.num_rows == rows
        assert table.column_names[:4] == ["key", "url", "caption", "jpg"]
        assert {"gt_caption", "gt_match", "noise"} <= set(table.column_names)
        assert len(set(table["key"].to_pylist())) == rows, "keys are unique within a split"


def test_web_noise_share_is_within_two_points(bench: Path) -> None:
    web = pq.read_table(bench / "web")
    share = 1.0 - pc.mean(web["gt_match"].cast("int8")).as_py()
    assert abs(share - 0.35) <= 0.02, share
    seed = pq.read_table(bench / "seed")
    assert pc.all(seed["gt_match"]).as_py()
    assert seed["caption"].to_pylist() == seed["gt_caption"].to_pylist()


def test_files_have_several_row_groups_and_images_are_jpeg_or_png(bench: Path) -> None:
    files = sorted((bench / "web").glob("part-*.parquet"))
    assert len(files) >= 2
    for f in files:
        assert pq.ParquetFile(f).metadata.num_row_groups >= 2
    web = pq.read_table(bench / "web", columns=["jpg", "url"])
    magic = {bytes(b.as_py()[:4]) for b in web["jpg"]}
    assert magic <= {b"\xff\xd8\xff\xe0", b"\x89PNG"}, magic
    pngs = sum(u.endswith(".png") for u in web["url"].to_pylist())
    assert 0.05 * 2000 < pngs < 0.3 * 2000


def test_duckdb_queries_the_benchmark(bench: Path) -> None:
    con = duckdb.connect()
    rows = con.execute(
        f"select noise, count(*) from read_parquet('{bench}/web/*.parquet') group by noise order by noise nulls first"
    ).fetchall()
    counts = dict(rows)
    assert counts[None] == 1300
    assert sum(counts.values()) == 2000
    assert set(counts) - {None} <= {"wrong_colour", "wrong_shape", "wrong_background", "unrelated", "empty", "very_long"}


def test_summary_file_records_parameters(bench: Path) -> None:
    summary = json.loads((bench / "_synth.json").read_text())
    assert summary["seed"] == 7 and summary["noise"] == 0.35
    assert [s["split"] for s in summary["splits"]] == ["seed", "web", "eval"]
    assert summary["splits"][1]["noisy_rows"] == 700


def test_bad_noise_is_a_one_line_error_with_exit_2(tmp_path: Path) -> None:
    r = synth(tmp_path / "y", "--noise", "-0.1")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
