"""What `guardrails run` prints: for people on a terminal (a real pty), key=value when piped,
JSON lines with ``--log-format json`` — from real runs against a real redis-server."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, parse_events, write_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _crossing_and_resting_config(tmp_path: Path, url: str) -> Path:
    # One looper that crosses the spread (its orders fill), one that rests.
    return write_config(
        tmp_path / "c.toml", redis_url=url,
        looper={"count": 4, "offset": "0.01", "interval": "200ms", "side": "buy"},
        extra_strategies='[[strategies]]\nname = "rest"\nmodule = "strategies.looper:Looper"\n'
                         'params = { symbol = "BTC-USD", offset = "-0.02", interval = "300ms", count = 2 }\n',
    )


def test_run_when_on_a_tty_then_folded_order_lines_and_a_summary(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _crossing_and_resting_config(tmp_path, redis_server.url)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrails", "run", "--config", str(cfg), "--instance-id", "tty"],
        stdin=slave, stdout=slave, stderr=slave, env=subprocess_env(COLUMNS="160"), cwd=ROOT,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            text = _ANSI.sub("", out.decode(errors="replace"))
            if "── token" in text and "→ filled" in text and "→ resting" in text:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
    text = _ANSI.sub("", out.decode(errors="replace"))
    # One line per order with its whole lifecycle folded in, not three key=value lines.
    filled = [ln for ln in text.splitlines() if "admitted → sent → filled" in ln]
    assert filled, text[-3000:]
    assert "looper" in filled[0] and "BUY" in filled[0] and "BTC-USD" in filled[0]
    assert any("admitted → sent → resting" in ln for ln in text.splitlines()), text[-3000:]
    summary = [ln for ln in text.splitlines() if "── token" in ln]
    assert summary and "active" in summary[0] and "orders/min" in summary[0] and "loss budget" in summary[0]
    assert "event=order.admitted" not in text  # the machine format is not what a person sees
    assert "lease.acquired" in text  # lease events are shown


def test_run_when_piped_then_key_value_lines(redis_server: RedisServer, tmp_path: Path) -> None:
    cfg = _crossing_and_resting_config(tmp_path, redis_server.url)
    p = RunProc("piped", cfg, tmp_path).start()
    try:
        p.wait_for("fill", timeout=60)
    finally:
        p.send(signal.SIGTERM)
        p.wait_exit()
        p.cleanup()
    events = parse_events(p.text())
    names = {e.name for e in events}
    assert {"lease.acquired", "order.admitted", "order.submitted", "fill"} <= names


def test_run_when_log_format_json_then_every_line_is_a_json_object(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _crossing_and_resting_config(tmp_path, redis_server.url)
    p = RunProc("json", cfg, tmp_path, extra_args=["--log-format", "json"]).start()
    try:
        deadline = time.monotonic() + 60
        while '"event":"fill"' not in p.text():
            assert time.monotonic() < deadline and p.running(), p.text()[-3000:]
            time.sleep(0.1)
    finally:
        p.send(signal.SIGTERM)
        p.wait_exit()
        p.cleanup()
    lines = [ln for ln in p.text().splitlines() if ln.strip()]
    objs = [json.loads(ln) for ln in lines]  # every line parses
    fills = [o for o in objs if o.get("event") == "fill"]
    assert fills and isinstance(fills[0]["qty"], str) and fills[0]["symbol"] == "BTC-USD"
    assert all({"ts", "level", "logger"} <= o.keys() for o in objs)
