"""Doctor against real `guardrails run` processes: the process table is a source of
liveness in its own right — a paused process whose heartbeat expired is still found."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from guardrails.keys import AccountId, AccountKeys
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, write_config

pytestmark = pytest.mark.slow

SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())


def doctor(url: str, manifest: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "guardrails", "doctor", "--json", "--redis-url", url,
         "--manifest", str(manifest)],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)
    return done.returncode, report


def _manifest(tmp_path: Path, account: str) -> Path:
    p = tmp_path / "manifest.toml"
    p.write_text(f'[[accounts]]\naccount = "paper:{account}"\ninstances = 1\n'
                 f'hosts = ["{socket.gethostname()}"]\n')
    return p


def _wait(predicate: Any, what: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_doctor_when_one_run_process_as_manifest_says_then_exit_0_seen_by_all_sources(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange
    cfg = write_config(tmp_path / "d0.toml", redis_url=redis_server.url, account="d0")
    proc = RunProc("d0-a", cfg, tmp_path).start()
    try:
        proc.wait_for("runtime.active", 60)
        c = redis_server.client()
        keys = AccountKeys(AccountId("paper", "d0"))
        _wait(lambda: c.exists(keys.instance("d0-a")) and
              c.hget(keys.instance("d0-a"), "role") == "active", "active registration")

        # Act
        rc, report = doctor(redis_server.url, _manifest(tmp_path, "d0"))
    finally:
        proc.cleanup()

    # Assert
    assert rc == 0, report["findings"]
    (inst,) = report["instances"]
    assert inst["pid"] == proc.pid
    assert set(inst["sources"]) == {"registry", "process", "lease"}


def test_doctor_when_run_process_missing_from_registry_then_exit_1_unregistered_process(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: a real instance, paused until its heartbeat row expires from the registry
    cfg = write_config(tmp_path / "d1.toml", redis_url=redis_server.url, account="d1")
    proc = RunProc("d1-a", cfg, tmp_path).start()
    try:
        proc.wait_for("runtime.active", 60)
        c = redis_server.client()
        keys = AccountKeys(AccountId("paper", "d1"))
        _wait(lambda: c.exists(keys.instance("d1-a")), "registration")
        proc.send(signal.SIGSTOP)
        _wait(lambda: not c.exists(keys.instance("d1-a")), "the heartbeat row to expire", 30)

        # Act
        rc, report = doctor(redis_server.url, _manifest(tmp_path, "d1"))
    finally:
        proc.cleanup()

    # Assert
    assert rc == 1
    found = {f["code"]: f for f in report["findings"]}
    assert f"pid {proc.pid}" in found["unregistered_process"]["message"]
    assert f"kill {proc.pid}" in found["unregistered_process"]["action"]
    (inst,) = report["instances"]
    assert inst["sources"] == ["process"] and inst["pid"] == proc.pid


def test_doctor_when_two_run_processes_have_different_limits_then_exit_1_limits_mismatch(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the same account twice on this host (the second deliberately --standby),
    # started from configs whose daily loss limits differ
    a_cfg = write_config(tmp_path / "a.toml", redis_url=redis_server.url, account="d2",
                         daily_loss_limit="1000")
    b_cfg = write_config(tmp_path / "b.toml", redis_url=redis_server.url, account="d2",
                         daily_loss_limit="900")
    manifest = tmp_path / "manifest.toml"
    manifest.write_text('[[accounts]]\naccount = "paper:d2"\ninstances = 2\nmax_per_host = 2\n')
    a = RunProc("d2-a", a_cfg, tmp_path).start()
    b: RunProc | None = None
    try:
        a.wait_for("runtime.active", 60)
        b = RunProc("d2-b", b_cfg, tmp_path, standby=True).start()
        c = redis_server.client()
        keys = AccountKeys(AccountId("paper", "d2"))
        _wait(lambda: c.exists(keys.instance("d2-a")) and c.exists(keys.instance("d2-b")),
              "both registrations")

        # Act
        rc, report = doctor(redis_server.url, manifest)
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()

    # Assert
    assert rc == 1
    found = {f["code"]: f for f in report["findings"]}
    msg = found["limits_mismatch"]["message"]
    assert "d2-a@" in msg and "d2-b@" in msg
    assert "deploy one config" in found["limits_mismatch"]["action"]
    assert "duplicate_on_host" not in found  # the second copy carries --standby


def test_doctor_when_run_process_config_unreadable_then_listed_as_info_and_exit_0(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: a `guardrails run` whose config is gone, frozen before it can exit
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrails", "run", "--config", str(tmp_path / "gone.toml")],
        env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        proc.send_signal(signal.SIGSTOP)
        manifest = tmp_path / "manifest.toml"
        manifest.write_text("")

        # Act
        rc, report = doctor(redis_server.url, manifest)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)

    # Assert: it cannot be tied to this Redis, so it is shown but is not drift here
    mine = [f for f in report["findings"] if f"pid {proc.pid} " in f["message"]]
    assert [(f["code"], f["severity"]) for f in mine] == [("unidentified_process", "info")]
    assert "config file not found" in mine[0]["message"]
    assert rc == 0 and report["healthy"] is True


def _spawn_form(module: str, cfg: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(cfg), "--redis-url", url,
             "--instance-id", "form-a"],
            stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=ROOT,
        )


@pytest.mark.parametrize("module, spelling", [
    ("guardrails.cli", "redis://LOCALHOST:{port}"),
    ("guardrails", "redis://127.0.0.1:{port}/"),
    ("guardrails.__main__", "redis://localhost:{port}?db=0"),
])
def test_doctor_when_run_launched_another_way_and_url_spelled_differently_then_matched(
    module: str, spelling: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the process names the same Redis as doctor, spelled another way, launched
    # another way; first registered (healthy), then paused until its row expired.
    cfg = write_config(tmp_path / "df.toml", redis_url=redis_server.url, account="df")
    url = spelling.format(port=redis_server.port)
    proc = _spawn_form(module, cfg, url, tmp_path / "df.log")
    c = redis_server.client()
    keys = AccountKeys(AccountId("paper", "df"))
    try:
        _wait(lambda: c.hget(keys.instance("form-a"), "role") == "active", "active registration")
        rc_ok, healthy = doctor(redis_server.url, _manifest(tmp_path, "df"))
        proc.send_signal(signal.SIGSTOP)
        _wait(lambda: not c.exists(keys.instance("form-a")), "the heartbeat row to expire", 30)
        rc_gone, gone = doctor(redis_server.url, _manifest(tmp_path, "df"))
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=10)
    # Assert: matched to its account by what it runs for, whatever the launch form
    assert rc_ok == 0, healthy["findings"]
    (inst,) = healthy["instances"]
    assert set(inst["sources"]) == {"registry", "process", "lease"}
    assert not [f for f in healthy["findings"] if f["code"] == "config_mismatch"]
    codes = {f["code"] for f in gone["findings"]}
    assert rc_gone == 1 and "unregistered_process" in codes and "missing" not in codes, codes
