"""`guardrails run` refuses a bad config before touching anything: exit 2, naming file,
field and reason (the process never reaches Redis, the lock or the lease)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.run_harness import run_cli, write_config

UNREACHABLE = "redis://127.0.0.1:1/0"  # never contacted: the config is refused first


def _config(tmp_path: Path, **kw: object) -> Path:
    return write_config(tmp_path / "bad.toml", redis_url=UNREACHABLE, **kw)  # type: ignore[arg-type]


def test_run_when_config_file_missing_then_exit_2_naming_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = run_cli("run", "--config", str(missing))
    assert result.returncode == 2
    assert f"{missing}: config file not found" in result.stderr


def test_run_when_unknown_field_then_exit_2_naming_file_and_field(tmp_path: Path) -> None:
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("[lease]\n", "[lease]\nttl_seconds = 3\n"))
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: lease.ttl_seconds: Extra inputs are not permitted" in result.stderr


def test_run_when_ttl_not_above_renew_deadline_then_exit_2_naming_reason(tmp_path: Path) -> None:
    path = _config(tmp_path, ttl="1s", renew_deadline="1s")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "lease" in result.stderr
    assert "ttl (1000ms) must be greater than renew_deadline (1000ms)" in result.stderr


def test_run_when_negative_amount_then_exit_2_naming_field(tmp_path: Path) -> None:
    path = _config(tmp_path, daily_loss_limit="-5")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: risk.daily_loss_limit: must not be negative (got -5)" in result.stderr


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("strategies.nothere:X", "module 'strategies.nothere' not found"),
        ("strategies.looper:Nope", "module 'strategies.looper' has no class 'Nope'"),
    ],
)
def test_run_when_strategy_cannot_load_then_exit_2_naming_entry(
    tmp_path: Path, module: str, expected: str
) -> None:
    path = _config(tmp_path)
    path.write_text(path.read_text().replace('"strategies.looper:Looper"', f'"{module}"'))
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: strategies[0] (name='looper'): {expected}" in result.stderr


def test_run_when_venue_cannot_start_then_exit_2_naming_venue_and_reason(tmp_path: Path) -> None:
    path = _config(tmp_path)
    text = path.read_text()
    start, end = text.index("[venue]"), text.index("[[strategies]]")
    path.write_text(text[:start] + '[venue]\nkind = "http"\nurl = "http://127.0.0.1:1"\n\n'
                    + text[end:])
    result = run_cli("run", "--config", str(path), env={"GUARDRAILS_HTTP_KEY": ""})
    assert result.returncode == 2
    assert "guardrails run: venue (http):" in result.stderr
    assert "GUARDRAILS_HTTP_KEY" in result.stderr
