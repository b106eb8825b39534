"""scripts/round_quality.py: precision, recall and coverage of a round's cleaned set against the
ground truth, with their intervals, on a hand-made round whose answers are known."""
import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from round_quality import paired_difference, quality, wilson  # noqa: E402

TRUTH = "a red circle on a blue background"


def write_round(root: Path) -> tuple[Path, Path]:
    # 4 images. k0: web matches, kept; synthetic correct, kept.  k1: web matches, dropped; synthetic
    # wrong, kept.  k2: web wrong, kept; synthetic correct, dropped.  k3: web wrong, dropped;
    # synthetic correct, kept (the image gains coverage).
    rows = [
        ("k0", "web", True, "a red circle, blue background"), ("k0", "synthetic", True, TRUTH),
        ("k1", "web", False, "red circle on blue background"), ("k1", "synthetic", True, "a red star on a blue background"),
        ("k2", "web", True, "a green star"), ("k2", "synthetic", False, TRUTH),
        ("k3", "web", False, ""), ("k3", "synthetic", True, TRUTH),
    ]
    rnd = root / "round-0001"
    (rnd / "_commits").mkdir(parents=True)
    (rnd / "scored").mkdir()
    # ITM probabilities: the kept texts at 0.6 and above, the dropped ones below.
    probs = [0.9, 0.8, 0.3, 0.7, 0.6, 0.2, 0.1, 0.95]
    pq.write_table(pa.table({"key": [r[0] for r in rows], "origin": [r[1] for r in rows], "kept": [r[2] for r in rows],
                             "text": [r[3] for r in rows], "itm_prob": probs}), rnd / "scored" / "part-0.parquet")
    (rnd / "_commits" / "00000.json").write_text(json.dumps({"files": {"scored": {"path": "scored/part-0.parquet"}}}))
    truth = root / "truth.parquet"
    pq.write_table(pa.table({"key": ["k0", "k1", "k2", "k3"], "gt_match": [True, True, False, False], "gt_caption": [TRUTH] * 4}), truth)
    return rnd, truth


def test_quality_counts_every_text_and_image_as_the_ground_truth_says(tmp_path):
    rnd, truth = write_round(tmp_path)
    q = quality(rnd, str(truth))
    assert (q["web_texts"], q["web_kept"], q["synthetic_texts"], q["synthetic_kept"]) == (4, 2, 4, 3)
    assert (q["kept_web_precision"]["k"], q["kept_web_precision"]["n"]) == (1, 2)
    assert (q["kept_web_recall"]["k"], q["kept_web_recall"]["n"]) == (1, 2)
    assert (q["kept_synthetic_precision"]["k"], q["kept_synthetic_precision"]["n"]) == (2, 3)
    assert (q["kept_synthetic_recall"]["k"], q["kept_synthetic_recall"]["n"]) == (2, 3)
    assert q["raw_web_precision"]["value"] == 0.5
    # raw coverage: k0, k1; cleaned: k0 (both), k3 (synthetic); k1 lost its only kept text's truth
    assert (q["raw_coverage"]["k"], q["cleaned_coverage"]["k"], q["images"]) == (2, 2, 4)
    assert (q["coverage_gain"]["gain"], q["coverage_gain"]["loss"], q["coverage_gain"]["value"]) == (1, 1, 0.0)
    # Web scores (k0 0.9 right, k1 0.3 right, k2 0.6 wrong, k3 0.1 wrong): one of four pairs misordered.
    assert q["web_scores"]["auc"] == 0.75
    # Fully precise only from 0.9, where it keeps k0 alone: half the matching web texts.
    assert q["web_scores"]["best_at_precision_0.98"] == {"threshold": 0.9, "precision": 1.0, "recall": 0.5}


def test_intervals_contain_the_estimate_and_narrow_with_more_data():
    small, large = wilson(45, 50), wilson(900, 1000)
    for x in (small, large):
        assert x["lo"] < x["value"] < x["hi"]
    assert large["hi"] - large["lo"] < small["hi"] - small["lo"]
    # Wilson at the boundary stays inside [0, 1] and is not degenerate (Wald's would be [1, 1]).
    top = wilson(20, 20)
    assert top["hi"] == 1.0 and 0.8 < top["lo"] < 1.0
    assert wilson(0, 0) is None
    # Known value: 95% Wilson interval of 8/10 is [0.490, 0.943].
    w = wilson(8, 10)
    assert math.isclose(w["lo"], 0.4902, abs_tol=1e-3) and math.isclose(w["hi"], 0.9433, abs_tol=1e-3)
    d = paired_difference(gain=300, loss=20, n=2000)
    assert math.isclose(d["value"], 0.14) and d["lo"] > 0.12 and d["hi"] < 0.16


def test_a_round_without_commit_records_is_refused(tmp_path):
    import subprocess
    script = Path(__file__).resolve().parents[2] / "scripts" / "round_quality.py"
    (tmp_path / "r").mkdir()
    r = subprocess.run([sys.executable, str(script), "--round", str(tmp_path / "r"), "--truth", "x.parquet"], capture_output=True, text=True)
    assert r.returncode == 2 and "no commit records" in r.stderr


def test_kept_web_texts_are_broken_down_by_the_benchmarks_noise_kind(tmp_path):
    rnd, truth = write_round(tmp_path)
    t = pq.read_table(truth)
    pq.write_table(t.append_column("noise", pa.array([None, None, "wrong_shape", "empty"])), truth)
    by = quality(rnd, str(truth))["web_kept_by_noise"]
    assert {k: (v["k"], v["n"]) for k, v in by.items()} == {"matching": (1, 2), "wrong_shape": (1, 1), "empty": (0, 1)}


def test_ablations_are_the_four_cleaned_sets_of_the_papers_table(tmp_path):
    rnd, truth = write_round(tmp_path)
    ab = quality(rnd, str(truth))["ablations"]
    got = {name: (a["texts"], a["precision"]["k"], a["coverage"]["k"], a["coverage_gain"]["gain"], a["coverage_gain"]["loss"])
           for name, a in ab.items()}
    # (texts, correct texts, covered images, images gained over raw, images lost), see write_round
    assert got == {
        "none": (4, 2, 2, 0, 0),
        "filter only": (2, 1, 1, 0, 1),
        "captioner only": (8, 5, 4, 2, 0),
        "captioner + filter": (5, 3, 2, 1, 1),
    }
    assert all(a["coverage"]["n"] == 4 for a in ab.values())


def test_a_synthetic_caption_is_correct_when_it_says_the_same_in_any_alt_text_form():
    from round_quality import same_content

    truth = "a red circle and a green star on a blue background"
    for said in [truth, "red circle and green star on blue background", "red circle, green star, blue background",
                 "image of a red circle and a green star on a blue background",
                 "red circle and green star on a blue background - stock illustration"]:
        assert same_content(said, truth), said
    for wrong in ["a green star and a red circle on a blue background",  # order: left to right
                  "a red circle on a blue background",  # one shape missing
                  "a red circle and a green square on a blue background",
                  "a red circle and a green star on a blue background red",  # a stray word
                  "", None]:
        assert not same_content(wrong, truth), wrong
