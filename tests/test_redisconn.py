"""Parsing and masking of the Sentinel and Cluster URLs (pure logic; the connections
themselves are proven against real servers in test_redis_sentinel/test_redis_cluster)."""

from __future__ import annotations

import pytest

from guardrails.infra import connect
from guardrails.infra.connect import RedisUrlError, parse_ha_url


def test_parse_when_sentinel_url_then_nodes_master_db_and_credentials() -> None:
    t = parse_ha_url("redis+sentinel://bot:s3cret@10.0.0.1:26379,[::1]:26380/trading/2"
                     "?sentinel_password=sp")

    assert t.scheme == "redis+sentinel"
    assert t.nodes == (("10.0.0.1", 26379), ("::1", 26380))
    assert (t.master, t.db, t.username, t.password) == ("trading", 2, "bot", "s3cret")
    assert t.sentinel_password == "sp"


def test_parse_when_sentinel_url_without_db_then_db_0() -> None:
    t = parse_ha_url("redis+sentinel://h:1/m")

    assert (t.master, t.db, t.password) == ("m", 0, None)


def test_parse_when_cluster_url_then_nodes_and_db_0() -> None:
    t = parse_ha_url("redis+cluster://:pw@a:7000,b:7001,c:7002")

    assert t.nodes == (("a", 7000), ("b", 7001), ("c", 7002))
    assert (t.master, t.db, t.password) == (None, 0, "pw")


@pytest.mark.parametrize(("url", "fault"), [
    ("redis+sentinel://h:1", "master-name"),
    ("redis+sentinel://h:1/m/x", "not a number"),
    ("redis+sentinel://h/m", "not host:port"),
    ("redis+cluster://h:1/3", "only database 0"),
    ("redis+cluster://h:99999", "not host:port"),
])
def test_parse_when_url_bad_then_one_line_error_naming_it_without_password(
    url: str, fault: str
) -> None:
    with pytest.raises(RedisUrlError) as e:
        parse_ha_url(url.replace("://", "://u:hunter2@"))

    assert fault in str(e.value)
    assert "hunter2" not in str(e.value)
    assert "\n" not in str(e.value)


def test_describe_when_ha_url_with_passwords_then_masked() -> None:
    text = connect.describe("redis+sentinel://u:hunter2@h:1,h:2/m/0?sentinel_password=sp2")

    assert "hunter2" not in text and "sp2" not in text
    assert text.startswith("redis+sentinel://u:***@h:1,h:2/m/0")  # the user stays: it is no secret


def test_cli_when_ha_url_bad_then_exit_2_one_line_no_traceback() -> None:
    from tests.run_harness import run_cli

    for cmd in (["status", "--config", ""], ["kill", "--all", "--reason", "x"]):
        result = run_cli(*cmd, "--redis-url", "redis+cluster://u:hunter2@nohostport")

        assert result.returncode == 2, (cmd, result.stderr)
        assert "Traceback" not in result.stderr
        assert "not host:port" in result.stderr
        assert "hunter2" not in result.stderr
