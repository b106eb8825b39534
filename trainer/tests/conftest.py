import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "trainer"))
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
SEED_BUNDLES = REPO / "models" / "shapes-seed"


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Path:
    """A small synthetic benchmark written by the capfilt binary."""
    out = tmp_path_factory.mktemp("bench") / "b"
    r = subprocess.run(
        [BIN, "synth", "--out", str(out), "--seed-rows", "256", "--web-rows", "64", "--eval-rows", "64",
         "--rows-per-file", "128", "--row-group-rows", "64", "--max-side", "200", "--seed", "3"],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    return out


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "trainer"))
    return subprocess.run([sys.executable, "-m", "capfilt_trainer", *args], capture_output=True, text=True, env=env, check=False)
