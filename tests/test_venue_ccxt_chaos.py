"""The bounded fault-injection run through the ccxt venue (``python -m guardrails.chaos
--venue ccxt``): real processes, the unmodified ccxt ``binance`` class, the
Binance-protocol simulator, and the independent checker — zero violations."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails.chaos import faults, report
from tests.conftest import subprocess_env

BOUNDED_SEED = 20261122
"""Fixed, so a failure replays with ``python -m guardrails.chaos --venue ccxt --seed ...``."""


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_run_when_ccxt_venue_and_bounded_then_zero_violations(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    # Arrange: the shortest window that injects every fault kind at least once.
    duration = faults.minimum_duration(3.0) + 2
    report_path = artifacts_dir / "chaos-bounded-ccxt.json"
    report_path.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "guardrails.chaos", "--venue", "ccxt", "--duration", str(duration),
        "--seed", str(BOUNDED_SEED), "--instances", "3", "--report", str(report_path),
        "--workdir", str(tmp_path / "run"),
    ]  # fmt: skip
    # Act: its own process group, so every child goes down with it whatever happens.
    proc = subprocess.Popen(
        cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the harness cleans up on SIGTERM
            try:
                proc.wait(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    # Assert
    assert report_path.exists(), out[-5000:]
    doc = json.loads(report_path.read_text())
    assert doc["violation_count"] == 0, report.render(doc)
    assert doc["problems"] == [], report.render(doc)
    assert proc.returncode == 0, out[-5000:]
    assert all(n >= 1 for n in doc["faults"].values()), doc["faults"]
    assert doc["orders"]["admitted"] > 20 and doc["orders"]["venue_fills"] > 0
    assert doc["run"]["settled"]["decisions_after"] >= 5
