"""The embedded Redis: one per user state dir, reused, never doubled, persistent."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import redis

from guardrails import embedded


def _pid() -> int:
    return int(embedded.paths().pidfile.read_text().strip())


@pytest.fixture
def fresh_embedded() -> object:
    yield None
    try:
        embedded.stop()
    except embedded.EmbeddedRedisError:
        pid = _pid()
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


def test_ensure_running_when_called_twice_then_reuses_one_server(fresh_embedded: object) -> None:
    url1 = embedded.ensure_running()
    pid1 = _pid()
    url2 = embedded.ensure_running()
    assert url1 == url2
    assert _pid() == pid1
    assert embedded.status()["running"] is True


def test_ensure_running_when_server_paused_then_never_starts_a_second(fresh_embedded: object) -> None:
    embedded.ensure_running()
    pid = _pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(embedded.EmbeddedRedisError, match="not starting a second server"):
            embedded.ensure_running(timeout=3)
        assert _pid() == pid
        assert Path(embedded.paths().socket).exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    # Once it answers again it is reused, not replaced.
    embedded.ensure_running()
    assert _pid() == pid


def test_ensure_running_when_paused_briefly_then_waits_and_reuses(fresh_embedded: object) -> None:
    embedded.ensure_running()
    pid = _pid()
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        embedded.ensure_running(timeout=30)
    finally:
        timer.join()
    assert _pid() == pid


def test_fence_counter_when_embedded_restarted_then_survives(fresh_embedded: object) -> None:
    url = embedded.ensure_running()
    c = redis.Redis.from_url(url)
    assert c.incr("gr:{paper:t}:fence") == 1
    c.close()
    assert embedded.stop() is True
    assert embedded.status()["running"] is False
    url = embedded.ensure_running()
    c = redis.Redis.from_url(url)
    assert c.incr("gr:{paper:t}:fence") == 2
    c.close()
