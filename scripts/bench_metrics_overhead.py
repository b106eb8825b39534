#!/usr/bin/env python3
"""Does serving and scraping metrics cost a round anything? `capfilt run` over the same data,
alternately without an HTTP port and with `--metrics-listen` while a scraper fetches `/metrics`
and the status page every second; prints each run and the means side by side.

    .venv/bin/python scripts/bench_metrics_overhead.py [--bin target/release/capfilt] [--rows 4000] [--pairs 3]
"""
import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, stop: threading.Event, counts: list[int]) -> None:
    while not stop.wait(1.0):
        for path in ("/metrics", "/"):
            try:
                with urllib.request.urlopen(url + path, timeout=2) as r:
                    r.read()
                counts[0] += 1
            except OSError:
                pass


def one_run(args, bench: Path, out: Path, metrics: bool) -> tuple[float, float, int]:
    cmd = [args.bin, "run", "--input", str(bench / "web"), "--output", str(out), "--json",
           "--captioner", str(REPO / "models/shapes-seed/captioner"),
           "--filter", str(REPO / "models/shapes-seed/filter"),
           "--workers", "2", "--target-shard-rows", "250"]
    stop, counts = threading.Event(), [0]
    scraper = None
    if metrics:
        port = free_port()
        cmd += ["--metrics-listen", f"127.0.0.1:{port}"]
        scraper = threading.Thread(target=scrape, args=(f"http://127.0.0.1:{port}", stop, counts))
        scraper.start()
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    stop.set()
    if scraper:
        scraper.join()
    if r.returncode != 0:
        raise SystemExit(f"capfilt run failed ({r.returncode}): {r.stderr[-2000:]}")
    manifest = json.loads(r.stdout)
    rows = manifest["totals"]["rows_in"]
    return wall, rows / wall, counts[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_bin = REPO / "target/release/capfilt"
    if not default_bin.exists():
        default_bin = REPO / "target/debug/capfilt"
    p.add_argument("--bin", default=str(default_bin))
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--pairs", type=int, default=3, help="runs per condition (alternating)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench = tmp / "bench"
        subprocess.run([args.bin, "synth", "--out", str(bench), "--seed-rows", "10", "--web-rows", str(args.rows),
                        "--eval-rows", "10", "--seed", "5"], check=True, capture_output=True)
        results = {False: [], True: []}
        print(f"capfilt run, {args.rows} rows, 2 in-process workers, binary {args.bin}")
        print(f"{'run':>4}  {'metrics':<30} {'wall s':>7} {'img/s':>7} {'scrapes':>8}")
        i = 0
        for pair in range(args.pairs):
            # Alternate the order so that a machine that warms up or slows down favours neither.
            for metrics in ([False, True] if pair % 2 == 0 else [True, False]):
                wall, ips, scrapes = one_run(args, bench, tmp / f"out-{i}", metrics)
                results[metrics].append((wall, ips))
                label = "--metrics-listen + 1 s scrapes" if metrics else "none"
                print(f"{i:>4}  {label:<30} {wall:>7.2f} {ips:>7.1f} {scrapes if metrics else '':>8}")
                i += 1
        off = statistics.mean(r[1] for r in results[False])
        on = statistics.mean(r[1] for r in results[True])
        sd_off = statistics.stdev(r[1] for r in results[False]) if args.pairs > 1 else 0.0
        sd_on = statistics.stdev(r[1] for r in results[True]) if args.pairs > 1 else 0.0
        print(f"mean img/s without metrics {off:.1f} (sd {sd_off:.1f}), with metrics and scraping {on:.1f} "
              f"(sd {sd_on:.1f}): {100 * (on - off) / off:+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
