"""Bootstrap rounds on a cluster of processes: one `capfilt coordinator --rounds 2` drives both
rounds, the trainer stage and the gate for two separate `capfilt worker` processes that stay
connected across rounds; the coordinator survives SIGKILL during the trainer stage and during
round 2's leases. Waits are on conditions (files, status) with generous deadlines.

Runs the capfilt binary (CAPFILT_BIN, default target/debug/capfilt) and the repository's .venv.
"""
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
SEED = REPO / "models" / "shapes-seed"
PY = str(REPO / ".venv" / "bin" / "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    r = subprocess.run([BIN, "synth", "--out", str(root / "bench"), "--web-rows", "800", "--seed-rows", "200",
                        "--eval-rows", "60", "--seed", "23", "--row-group-rows", "50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return root / "bench"


class Cluster:
    def __init__(self, bench: Path, tmp: Path):
        self.bench, self.tmp = bench, tmp
        self.out = tmp / "out"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.procs: list[subprocess.Popen] = []

    def coordinator_cmd(self) -> list[str]:
        return [BIN, "coordinator", "--insecure", "--listen", f"127.0.0.1:{self.port}", "--rounds", "2", "--exit-when-done",
                "--input", str(self.bench / "web"), "--output", str(self.out),
                "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"),
                "--seed-data", str(self.bench / "seed"), "--eval-data", str(self.bench / "eval"),
                "--captioner-steps", "30", "--filter-steps", "10", "--tolerance", "1",
                "--target-shard-rows", "50", "--batch-size", "8",
                "--poll-interval-ms", "100", "--lease-timeout-ms", "3000", "--output-lease-s", "2",
                "--cache-dir", str(self.tmp / "coordinator-cache"), "--python", PY]

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def coordinator(self, name: str) -> subprocess.Popen:
        return self.start(name, self.coordinator_cmd())

    def worker(self, worker_id: str) -> subprocess.Popen:
        return self.start(worker_id, [BIN, "worker", "--coordinator", self.url, "--worker-id", worker_id,
                                      "--exit-when-done", "--intra-threads", "1", "--drain-timeout-s", "5",
                                      "--cache-dir", str(self.tmp / f"{worker_id}-cache")])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def logs_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
                         for p in sorted(self.logs.glob("*.log")))

    def status(self) -> dict | None:
        r = subprocess.run([BIN, "status", "--coordinator", self.url, "--json"], capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def wait(self, what: str, cond, secs: float = 300, every: float = 0.05):
        deadline = time.time() + secs
        while True:
            v = cond()
            if v:
                return v
            assert time.time() < deadline, f"timed out waiting for {what}\n{self.logs_tail()}"
            time.sleep(every)

    def commits(self, round_no: int) -> dict[str, dict]:
        d = self.out / f"round-{round_no:04d}" / "_commits"
        return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")} if d.is_dir() else {}

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def cluster(bench, tmp_path):
    c = Cluster(bench, tmp_path)
    yield c
    c.stop_all()


def test_one_coordinator_drives_two_rounds_for_two_worker_processes(cluster) -> None:
    c = cluster
    coord = c.coordinator("coordinator")
    workers = {w: c.worker(w) for w in ("wA", "wB")}
    # While the trainer stage runs, status shows the phase and why the workers idle.
    training = c.wait("the training phase in status",
                      lambda: (s := c.status()) and s.get("run") and s["run"]["phase"] == "training"
                      and all(w["state"] == "idle: training after round 1" for w in s["workers"])
                      and len(s["workers"]) == 2 and s, every=0.2)
    assert training["run"]["round"] == 1 and training["run"]["rounds_requested"] == 2
    assert training["run"]["rounds"][0]["totals"]["rows_in"] == 800
    assert coord.wait(timeout=300) == 0, c.logs_tail()
    for w, p in workers.items():
        assert p.wait(timeout=60) == 0, f"{w} did not exit after the run\n{c.logs_tail()}"

    m1 = json.loads((c.out / "round-0001" / "_manifest.json").read_text())
    m2 = json.loads((c.out / "round-0002" / "_manifest.json").read_text())
    assert m2["captioner"]["url"].endswith("round-0001/bundles/captioner")
    assert m2["captioner"]["bundle_json_sha256"] != m1["captioner"]["bundle_json_sha256"]
    assert m2["filter"]["bundle_json_sha256"] != m1["filter"]["bundle_json_sha256"]
    for r, m in ((1, m1), (2, m2)):
        commits = c.commits(r)
        assert len(commits) == 16 and m["totals"]["rows_in"] == 800
        # The same two worker processes (started once) committed the shards of both rounds.
        assert {x["worker_id"] for x in commits.values()} == {"wA", "wB"}, r
        # Round 2's leases named the promoted bundles.
        assert {x["captioner_sha256"] for x in commits.values()} == {m["captioner"]["bundle_json_sha256"]}
    run = json.loads((c.out / "_run.json").read_text())
    assert run["status"] == "done" and run["phase"] == {"phase": "done", "round": 2}
    assert [x["round"] for x in run["rounds"]] == [1, 2]
    assert run["rounds"][0]["promotion"]["promoted"] is True
    assert run["rounds"][0]["promotion"]["captioner"].endswith("round-0001/bundles/captioner")
    # Each round's record carries its bundles' figures; round 2's are the promoted bundles' own.
    assert run["rounds"][0]["captioner_eval"]["exact_match"] >= 0
    assert run["rounds"][1]["captioner_eval"] == run["rounds"][0]["promotion"]["captioner_eval"]
    assert run["rounds"][1]["filter_eval"]["auc"] == run["rounds"][0]["promotion"]["filter_eval"]["auc"]
    # A long-lived worker drops the engines of bundles no longer leased.
    assert any("engines of older bundles evicted" in c.log(w) or "engine of older bundles evicted" in c.log(w)
               for w in workers), c.logs_tail()
    assert "run finished: exiting" in c.log("wA")


def test_coordinator_killed_in_training_and_in_round_two_finishes_without_redoing_work(cluster) -> None:
    c = cluster
    coord = c.coordinator("coordinator-1")
    workers = [c.worker(w) for w in ("w1", "w2")]
    # 1. Kill the coordinator (and its trainer child) once the captioner's training is finished
    #    and uploaded, while the filter is still in the trainer stage.
    c.wait("the captioner's bundle uploaded", lambda: "captioner: uploaded bundle" in c.log("coordinator-1"), every=0.02)
    os.killpg(coord.pid, signal.SIGKILL)
    coord.wait()
    round1 = c.commits(1)
    assert len(round1) == 16 and not (c.out / "round-0001" / "promotion.json").exists()
    # 2. The same command again: the captioner is not trained again; kill it in round 2's leases.
    coord = c.coordinator("coordinator-2")
    c.wait("round 2 under way", lambda: len(c.commits(2)) >= 1, every=0.01)
    os.killpg(coord.pid, signal.SIGKILL)
    coord.wait()
    round2_before = c.commits(2)
    assert not (c.out / "round-0002" / "_manifest.json").exists(), "round 2 finished before the kill: the test needs more shards"
    assert 1 <= len(round2_before) < 16
    files_before = {p.name for p in (c.out / "round-0002" / "scored").glob("*.parquet")}
    # 3. And again: it finishes the run.
    coord = c.coordinator("coordinator-3")
    assert coord.wait(timeout=300) == 0, c.logs_tail()
    for p in workers:
        assert p.wait(timeout=60) == 0, c.logs_tail()

    # No committed shard was redone: commit records (attempt, worker) and data files unchanged.
    assert c.commits(1) == round1
    after = c.commits(2)
    assert len(after) == 16
    for shard, record in round2_before.items():
        assert after[shard] == record, shard
    files_after = {p.name for p in (c.out / "round-0002" / "scored").glob("*.parquet")}
    assert files_before <= files_after
    for shard, record in round2_before.items():
        assert [f for f in files_after if f.startswith(f"part-{shard}-")] == [Path(record["files"]["scored"]["path"]).name]
    # No finished training was redone: the captioner trained once, the filter once.
    logs = [c.log(n) for n in ("coordinator-1", "coordinator-2", "coordinator-3")]
    assert sum(log.count("[stage] training captioner") for log in logs) == 1, c.logs_tail()
    assert sum(log.count("[stage] training filter") for log in logs) <= 2
    assert "captioner: bundle" in logs[1] and "already uploaded: reusing it" in logs[1]
    assert "[stage] training" not in logs[2]
    # The gate decided once; the run records both rounds.
    run = json.loads((c.out / "_run.json").read_text())
    assert run["status"] == "done" and [x["round"] for x in run["rounds"]] == [1, 2]
    assert run["rounds"][0]["promotion"]["promoted"] is True
    assert sum(log.count("promotion gate") for log in logs) == 1
