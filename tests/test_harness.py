"""The test harness itself: throwaway servers are real, never 6379, and restartable;
they come from the one launcher (``guardrails.infra.server``)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from guardrails.infra.server import RedisServerError, server_config
from tests.conftest import ROOT
from tests.redis_harness import FORBIDDEN_PORT, RedisServer


def test_server_when_restarted_with_aof_then_keeps_counter() -> None:
    server = RedisServer(aof=True).start()
    try:
        assert server.port != FORBIDDEN_PORT
        c = server.client()
        assert c.incr("n") == 1
        c.close()
        server.restart()
        c = server.client()
        assert c.incr("n") == 2
        c.close()
    finally:
        server.stop()


def test_launcher_when_started_then_settings_in_a_0600_config_and_argv_names_only_the_file(
    tmp_path: Path,
) -> None:
    # Arrange
    server = RedisServer(aof=True, data_dir=tmp_path / "data")
    # Act
    server.start()
    try:
        mode = stat.S_IMODE(os.stat(server.config_path).st_mode)
        argv = server.proc.args  # type: ignore[union-attr]
        persistence = server.client().info("persistence")
    finally:
        server.stop()
    # Assert
    assert mode == 0o600
    assert argv == [server.binary, str(server.config_path)]
    assert persistence["aof_enabled"] == 1
    assert (tmp_path / "data").is_dir(), "a caller's data directory is never removed"


def test_launcher_when_asked_for_port_6379_then_refused_before_starting(tmp_path: Path) -> None:
    with pytest.raises(RedisServerError, match="6379"):
        server_config(data_dir=tmp_path, port=FORBIDDEN_PORT)
    server = RedisServer(data_dir=tmp_path)
    server.port = FORBIDDEN_PORT
    with pytest.raises(RedisServerError, match="6379"):
        server.start()
    assert server.proc is None


_REDIS_SETTINGS_ON_ARGV = re.compile(
    r"""["']--(appendonly|appendfsync|unixsocket|requirepass|save)["']""")
_LAUNCHER = Path("guardrails/infra/server.py")
_HAND_STARTED = {
    # a foreign user's server, started as that user with `python -I` (not our package)
    Path("tests/test_embedded.py"),
}


def test_layout_when_scanned_then_only_the_launcher_starts_redis_servers() -> None:
    """One redis-server launcher: a redis-server's persistence, socket and password are
    set only by guardrails/infra/server.py (and the hand-started attacker of test_embedded);
    a command line elsewhere naming them is a second launcher."""
    found = []
    for top in ("guardrails", "tests", "bench", "strategies"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel in _HAND_STARTED or rel == _LAUNCHER or rel == Path(__file__).relative_to(ROOT):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if _REDIS_SETTINGS_ON_ARGV.search(line) and "config_set" not in line \
                        and "config_get" not in line:
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "redis-server started outside guardrails/infra/server.py:\n" + "\n".join(found)
