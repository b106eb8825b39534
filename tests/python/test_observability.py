"""What operators see: Prometheus metrics, health endpoints, the status page and the round report.

Separate processes as on a cluster: a `capfilt worker` and a `capfilt coordinator`, each with
`--metrics-listen`. Scrapes `/metrics` of both during and after a round and checks the counters
against the round's manifest (rows, texts kept by origin, rejects by reason); checks `/healthz`
and `/readyz` (not ready before a round is opened, a worker not ready before it registers); loads
the status page and the round report in headless Chromium (Debian's chromium + chromedriver,
driven by selenium), checks their content and that every image loads, and saves screenshots to
target/screenshots/ (the README's pictures are copies of them).

Runs the capfilt binary (CAPFILT_BIN, default target/debug/capfilt).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
SEED = REPO / "models" / "shapes-seed"
SHOTS = REPO / "target" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(url: str) -> dict[str, float]:
    """Prometheus text format as {'name{labels}': value} (labels as the exporter writes them)."""
    code, text = get(url + "/metrics")
    assert code == 200, text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(what: str, check, timeout: float = 120.0, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}"
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("obs")
    r = subprocess.run([BIN, "synth", "--out", str(root / "bench"), "--web-rows", "1000", "--seed-rows", "50",
                        "--eval-rows", "20", "--seed", "31", "--row-group-rows", "50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    web = root / "bench" / "web"
    # One more input file with rows a worker must reject, each with its reason.
    first = sorted(web.glob("*.parquet"))[0]
    t = pq.read_table(first).slice(0, 20)
    jpg = t.column("jpg").to_pylist()
    for i in range(0, 6):
        jpg[i] = b"\x00not an image at all"  # decode_error
    for i in range(6, 9):
        jpg[i] = None  # missing_image
    keys = [f"bad-{i:02d}" for i in range(20)]
    t = t.set_column(t.schema.get_field_index("jpg"), t.schema.field("jpg").with_nullable(True),
                     pa.array(jpg, pa.binary()))
    t = t.set_column(t.schema.get_field_index("key"), "key", pa.array(keys))
    pq.write_table(t, web / "zz-bad-rows.parquet", row_group_size=20)
    return root / "bench"


class Procs:
    def __init__(self, logs: Path):
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    def tails(self) -> str:
        return "\n".join(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-20:])
                         for f in sorted(self.logs.glob("*.log")))


def test_a_bare_coordinator_is_alive_but_not_ready(tmp_path):
    procs = Procs(tmp_path / "logs")
    http = f"http://127.0.0.1:{free_port()}"
    try:
        c = procs.start("coordinator", [BIN, "coordinator", "--insecure", "--listen", f"127.0.0.1:{free_port()}",
                                        "--metrics-listen", http.removeprefix("http://")])
        wait_for("/healthz", lambda: get(http + "/healthz")[0] == 200 if _up(http) else False, 30, [c])
        assert get(http + "/healthz") == (200, "ok\n")
        assert get(http + "/readyz") == (503, "not ready: no round opened yet\n")
        assert metrics(http)["capfilt_coordinator_ready"] == 0
        code, page = get(http + "/")
        assert code == 200 and "no bootstrap run" in page and "no round is being served" in page
    finally:
        procs.stop()


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/healthz", timeout=1)
        return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1200"]:
        o.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


def images_state(d) -> list[list]:
    return d.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")


def full_page_screenshot(d, path: Path):
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1400, min(max(height, 600), 3200))
    d.save_screenshot(str(path))


def test_metrics_health_status_page_and_report(bench, tmp_path):
    procs = Procs(tmp_path / "logs")
    port = free_port()
    chttp, whttp = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # The worker first: alive, but not ready until it has registered.
        w = procs.start("worker", [BIN, "worker", "--coordinator", f"http://127.0.0.1:{port}", "--worker-id", "wA",
                                   "--intra-threads", "1", "--metrics-listen", whttp.removeprefix("http://"),
                                   "--cache-dir", str(tmp_path / "cache")])
        wait_for("worker http", lambda: _up(whttp), 60, [w])
        # Not ready while ONNX Runtime loads, then not ready because no coordinator answers.
        def reason():
            code, body = get(whttp + "/readyz")
            assert code == 503, body
            return "not registered with the coordinator" in body
        wait_for("worker not ready: not registered", reason, 60, [w])

        c = procs.start("coordinator", [
            BIN, "coordinator", "--insecure", "--listen", f"127.0.0.1:{port}", "--metrics-listen", chttp.removeprefix("http://"),
            "--input", str(bench / "web"), "--output", str(out),
            "--captioner", str(SEED / "captioner"), "--filter", str(SEED / "filter"),
            "--target-shard-rows", "50", "--batch-size", "4", "--poll-interval-ms", "100",
            "--cache-dir", str(tmp_path / "ccache")])
        live = [w, c]
        wait_for("coordinator ready", lambda: _up(chttp) and get(chttp + "/readyz")[0] == 200, 60, live)
        wait_for("worker ready", lambda: get(whttp + "/readyz")[0] == 200, 60, live)

        # During the round: some shards committed, some not; the gauges cover every shard.
        def mid_round():
            m = metrics(chttp)
            committed = m.get('capfilt_coordinator_shards{state="committed"}', 0)
            return m if 1 <= committed and not (out / "round-0001" / "_manifest.json").exists() else None
        during = wait_for("a shard committed mid-round", mid_round, 120, live)
        total = sum(during[f'capfilt_coordinator_shards{{state="{s}"}}']
                    for s in ["pending", "leased", "committed", "quarantined"])
        assert during['capfilt_coordinator_round_rows{kind="planned"}'] == 1020
        wm = metrics(whttp)
        assert wm["capfilt_worker_images_processed_total"] > 0
        assert during["capfilt_coordinator_leases_granted_total"] >= 1
        assert during['capfilt_coordinator_run_phase{phase="serving"}'] == 1
        d = browser()
        try:
            d.get(chttp + "/")
            assert "capfilt coordinator" in d.find_element("tag name", "h1").text
            assert d.find_element("id", "shards-total").text == str(int(total))
            assert int(d.find_element("id", "shards-committed").text) >= 1
            assert "wA" in d.find_element("id", "workers").text
            assert "phase: serving" in d.find_element("id", "phase").text
            full_page_screenshot(d, SHOTS / "status-page-during-round.png")
        finally:
            d.quit()

        manifest_path = out / "round-0001" / "_manifest.json"
        wait_for("the manifest", manifest_path.exists, 300, live)
        manifest = json.loads(manifest_path.read_text())
        totals = manifest["totals"]
        wait_for("phase done", lambda: metrics(chttp).get('capfilt_coordinator_run_phase{phase="done"}') == 1, 60, live)
        wait_for("the report", (out / "round-0001" / "report" / "index.html").exists, 60, live)

        # After: the counters are the manifest's figures.
        cm, wm = metrics(chttp), metrics(whttp)
        committed_shards = sum(1 for s in manifest["shards"] if s["commit"])
        assert committed_shards == len(manifest["shards"]) == total
        for m, p in [(cm, "capfilt_coordinator"), (wm, "capfilt_worker")]:
            assert m[f"{p}_rows_committed_total"] == totals["rows_in"] == 1020
            assert m[f'{p}_texts_total{{origin="web"}}'] == totals["web_texts"]
            assert m[f'{p}_texts_total{{origin="synthetic"}}'] == totals["synthetic_texts"]
            assert m[f'{p}_texts_kept_total{{origin="web"}}'] == totals["web_kept"]
            assert m[f'{p}_texts_kept_total{{origin="synthetic"}}'] == totals["synthetic_kept"]
            rejects = {re.search(r'reason="([a-z_]+)"', k).group(1): v for k, v in m.items()
                       if k.startswith(f"{p}_rejects_total{{")}
            assert rejects == {k: float(v) for k, v in totals["rejects_by_reason"].items()}
            assert rejects == {"decode_error": 6.0, "missing_image": 3.0}
        # The finished run serves no round any more: the state gauges say so.
        assert cm['capfilt_coordinator_shards{state="committed"}'] == 0
        assert cm["capfilt_coordinator_round"] == 0
        assert cm["capfilt_coordinator_shards_committed_total"] == committed_shards
        # Nothing expired in a round without faults (a tick over a live lease is not an expiry).
        assert cm.get("capfilt_coordinator_leases_expired_total", 0) == 0
        assert cm["capfilt_coordinator_leases_granted_total"] == committed_shards
        assert cm['capfilt_coordinator_workers{state="idle"}'] == 1
        assert cm['capfilt_coordinator_rpc_duration_seconds_count{method="PollWork",code="ok"}'] > 0
        assert cm['capfilt_coordinator_rpc_duration_seconds_count{method="CompleteShard",code="ok"}'] == committed_shards
        assert wm['capfilt_worker_shards_total{outcome="committed"}'] == committed_shards
        for stage in ["read", "decode", "captioner", "filter", "write", "commit"]:
            assert wm[f'capfilt_worker_stage_seconds_count{{stage="{stage}"}}'] > 0, stage
        assert wm["capfilt_worker_batch_images_sum"] == totals["rows_scored"]
        assert wm["capfilt_worker_images_processed_total"] == totals["rows_scored"]
        assert wm["capfilt_worker_engine_loads_total"] == 1
        assert wm["capfilt_worker_active_leases"] == 0
        assert wm["capfilt_worker_decode_queue_depth"] == 0
        assert any(k.startswith('capfilt_worker_info{device="cpu"') for k in wm)
        assert get(whttp + "/readyz")[0] == 200 and get(chttp + "/readyz")[0] == 200

        # The status page after the round, and the report through the coordinator's port.
        d = browser()
        try:
            d.get(chttp + "/")
            rounds = d.find_element("id", "rounds").text
            assert re.search(r"^1 1020 9 ", rounds.splitlines()[1]), rounds
            assert d.find_element("id", "no-round").text == "no round is being served"
            assert "wA" in d.find_element("id", "workers").text
            assert "phase: done" in d.find_element("id", "phase").text
            full_page_screenshot(d, SHOTS / "status-page.png")

            d.find_element("link text", "report").click()
            wait_for("report page", lambda: "CapFilt round 1" in d.title + d.find_element("tag name", "h1").text, 30)
            imgs = images_state(d)
            plots = [i for i in imgs if i[0].startswith("plots/")]
            thumbs = [i for i in imgs if i[0].startswith("gallery/")]
            assert len(plots) == 5, plots  # the input has gt_match: precision/recall is drawn too
            broken = [i for i in imgs if not (i[1] and i[2] > 0)]
            assert not broken, broken
            sample = d.find_elements("css selector", "#sample .card")
            rejections = d.find_elements("css selector", "#rejections .card")
            assert len(sample) == 48
            assert len(rejections) == 12
            assert len(thumbs) == 60
            # A rejection card shows its web text dropped with its probability.
            assert rejections[0].find_elements("css selector", ".dropped")
            assert d.find_element("id", "web-kept").text.startswith(f"{totals['web_kept']} / {totals['web_texts']}")
            precision = float(d.find_element("id", "kept-precision").text)
            assert 0 < precision <= 1
            full_page_screenshot(d, SHOTS / "report.png")
        finally:
            d.quit()
        report = json.loads((out / "round-0001" / "report" / "report.json").read_text())
        assert sum(report["web_histogram"]) == totals["web_texts"]
        assert sum(report["synthetic_histogram"]) == totals["synthetic_texts"]
        # The draw is seeded: `capfilt report` draws the same sample again.
        r = subprocess.run([BIN, "report", "--round", str(out / "round-0001"), "--out", str(tmp_path / "again")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        again = json.loads((tmp_path / "again" / "report.json").read_text())
        assert [s["key"] for s in again["sample"]] == [s["key"] for s in report["sample"]]
    except BaseException:
        print(procs.tails())
        raise
    finally:
        procs.stop()


def test_log_lines_written_to_a_pipe_carry_no_colour_codes(bench, tmp_path):
    r = subprocess.run([BIN, "run", "--input", str(bench / "web" / "zz-bad-rows.parquet"), "--output",
                        str(tmp_path / "out"), "--captioner", str(SEED / "captioner"), "--filter",
                        str(SEED / "filter"), "--workers", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "round manifest written" in r.stderr
    assert "\x1b[" not in r.stderr, r.stderr[:400]


def test_report_of_an_unfinished_round_is_a_usage_error(tmp_path):
    (tmp_path / "round-0001").mkdir()
    r = subprocess.run([BIN, "report", "--round", str(tmp_path / "round-0001")], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no readable _manifest.json" in lines[0], r.stderr
