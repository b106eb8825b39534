"""Bootstrap rounds end to end with the capfilt binary and the trainer (tiny budgets):
`capfilt run --rounds 2` writes both rounds, the trainer stage's bundles, evaluations and
promotion record, and `_run.json`; re-running resumes without redoing anything; a kill -9 during
training resumes without redoing round 1; a worse retrained bundle is refused by the gate.

Runs the capfilt binary (CAPFILT_BIN, default target/debug/capfilt) and the repository's .venv.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
SEED = REPO / "models" / "shapes-seed"
PY = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rounds")
    r = subprocess.run([BIN, "synth", "--out", str(root / "bench"), "--web-rows", "400", "--seed-rows", "200",
                        "--eval-rows", "60", "--seed", "21"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return root / "bench"


def rounds_cmd(bench: Path, out: Path, *extra: str) -> list[str]:
    return [BIN, "run", "--rounds", "2", "--input", str(bench / "web"), "--output", str(out),
            "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"),
            "--seed-data", str(bench / "seed"), "--eval-data", str(bench / "eval"),
            "--cache-dir", str(out.parent / f"{out.name}-cache"), "--python", PY, *extra]


def mtimes(paths) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in paths}


def test_two_rounds_record_everything_and_resume_without_redoing(bench, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = rounds_cmd(bench, out, "--captioner-steps", "20", "--filter-steps", "10", "--tolerance", "1")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r1, r2 = out / "round-0001", out / "round-0002"
    for f in ["_manifest.json", "eval.json", "promotion.json", "bundles/captioner/bundle.json", "bundles/filter/bundle.json"]:
        assert (r1 / f).is_file(), f
    assert (r2 / "_manifest.json").is_file()
    run = json.loads((out / "_run.json").read_text())
    assert run["status"] == "done" and [x["round"] for x in run["rounds"]] == [1, 2]
    promo = json.loads((r1 / "promotion.json").read_text())
    assert promo["promoted"] is True
    assert set(promo["captioner_eval"]) >= {"exact_match", "colour_acc", "shape_acc"}
    assert "auc" in promo["filter_eval"]
    # Round 2 ran with the promoted bundles.
    m2 = json.loads((r2 / "_manifest.json").read_text())
    new_cap = json.loads((r1 / "bundles" / "captioner" / "bundle.json").read_text())
    assert m2["captioner"]["url"].endswith("round-0001/bundles/captioner")
    assert new_cap["provenance"]["parent"], "the new bundle names its parent"
    assert "round 2 done" in r.stdout and "promoted" in r.stdout

    before = mtimes(list((r1 / "_commits").glob("*.json")) + [r1 / "promotion.json", r1 / "bundles" / "captioner" / "bundle.json"])
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert mtimes(before_paths := [Path(p) for p in before]) == before, before_paths
    assert "the run is already finished" in again.stderr


def test_kill_during_training_resumes_without_redoing_round_one(bench, tmp_path) -> None:
    out = tmp_path / "out"
    cmd = rounds_cmd(bench, out, "--captioner-steps", "400", "--filter-steps", "10", "--tolerance", "1")
    log = open(tmp_path / "first.log", "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while "captioner step" not in (tmp_path / "first.log").read_text():
        assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "training never started"
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)  # capfilt and its trainer subprocess
    p.wait()
    commits = mtimes((out / "round-0001" / "_commits").glob("*.json"))
    assert commits and not (out / "round-0001" / "promotion.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert mtimes((out / "round-0001" / "_commits").glob("*.json")) == commits, "round 1 was not redone"
    assert (out / "round-0002" / "_manifest.json").is_file()


def test_a_worse_retrained_bundle_is_refused_by_the_gate(bench, tmp_path) -> None:
    out = tmp_path / "out"
    # New models from scratch with a handful of steps are far worse than the seed bundles.
    cmd = rounds_cmd(bench, out, "--train-init", "scratch", "--captioner-steps", "5", "--filter-steps", "5",
                     "--tolerance", "0.02")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "not promoted" in r.stderr and "exact match" in r.stderr and "ROC-AUC" in r.stderr, r.stderr[-2000:]
    promo = json.loads((out / "round-0001" / "promotion.json").read_text())
    assert promo["promoted"] is False
    old, new = promo["filter_auc"]
    assert new < old - 0.02 or promo["captioner_exact_match"][1] < promo["captioner_exact_match"][0] - 0.02
    assert not (out / "round-0002").exists()
    assert json.loads((out / "_run.json").read_text())["status"] == "stopped"


def test_a_resumed_run_refuses_bundles_other_than_it_was_started_with(bench, tmp_path) -> None:
    import shutil
    cap, fil = tmp_path / "captioner", tmp_path / "filter"
    shutil.copytree(SEED / "captioner", cap)
    shutil.copytree(SEED / "filter", fil)
    out = tmp_path / "out"

    def cmd(captioner: Path) -> list[str]:
        c = rounds_cmd(bench, out)
        c[c.index("--rounds") + 1] = "1"
        c[c.index("--captioner") + 1] = str(captioner)
        c[c.index("--filter") + 1] = str(fil)
        return c

    first = subprocess.run(cmd(cap), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    # Same paths, other contents: the finished run's results belong to the old bundles.
    manifest = json.loads((cap / "bundle.json").read_text())
    manifest["name"] = manifest["name"] + "-changed"
    (cap / "bundle.json").write_text(json.dumps(manifest, indent=1))
    again = subprocess.run(cmd(cap), capture_output=True, text=True)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "its contents changed" in again.stderr and "new --output" in again.stderr, again.stderr
    # Other paths: refused too.
    other = subprocess.run(cmd(SEED / "captioner"), capture_output=True, text=True)
    assert other.returncode == 2, other.stderr[-3000:]
    assert "was started with captioner" in other.stderr, other.stderr
