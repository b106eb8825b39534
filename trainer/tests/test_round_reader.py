"""Reading a finished round's cleaned pairs through its manifest and commit records."""
import json

import pyarrow as pa
import pyarrow.parquet as pq

from capfilt_trainer.data import read_round_cleaned


def test_cleaned_pairs_follow_commit_records_and_reference_source_images(tmp_path):
    src = tmp_path / "input" / "part-0.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"key": ["k0", "k1", "k2"], "caption": ["x", "y", "z"], "jpg": [b"img0", b"img1", b"img2"]}), src)
    rnd = tmp_path / "out" / "round-0001"
    (rnd / "cleaned").mkdir(parents=True)
    (rnd / "_commits").mkdir()
    cleaned = pa.table({
        "key": ["k2", "k0", "k0"], "url": [None] * 3, "source_file": [str(src)] * 3, "source_row": pa.array([2, 0, 0], pa.uint64()),
        "text": ["a red circle", "web text", "a blue star"], "origin": ["synthetic", "web", "synthetic"],
    })
    pq.write_table(cleaned, rnd / "cleaned" / "part-s0-2.parquet")
    # A losing attempt's file is present but no commit record points at it.
    pq.write_table(cleaned.slice(0, 1), rnd / "cleaned" / "part-s0-1.parquet")
    commit = {"files": {"cleaned": {"path": "cleaned/part-s0-2.parquet", "rows": 3, "bytes": 1}}}
    (rnd / "_commits" / "s0.json").write_text(json.dumps(commit))
    manifest = {"shards": [
        {"shard": {"shard_id": "s0"}, "state": "committed", "commit": "_commits/s0.json"},
        {"shard": {"shard_id": "s1"}, "state": "quarantined", "last_error": "boom"},
    ]}
    (rnd / "_manifest.json").write_text(json.dumps(manifest))

    pairs = read_round_cleaned(str(rnd))
    assert [(p.key, p.text, p.image) for p in pairs] == [
        ("k0", "a blue star", b"img0"), ("k0", "web text", b"img0"), ("k2", "a red circle", b"img2"),
    ]
