"""Config validation at load: every refusal names the file, the field path and the reason."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from guardrails.config import ConfigError, LeaseConfig, load_config

BASE = """
[account]
venue = "paper"
id = "cfg-test"

[lease]
ttl = "{ttl}"
renew_deadline = "{renew_deadline}"
renew_interval = "500ms"

[risk]
timezone = "{timezone}"
max_order_notional = {notional}
max_gross_exposure = "10000"
daily_loss_limit = "250"

[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "0.1"

[venue]
kind = "paper"
start_prices = {{ BTC-USD = "60000.00" }}
{extra}
"""


def write(tmp_path: Path, **overrides: str) -> Path:
    values = {"ttl": "3s", "renew_deadline": "2s", "timezone": "UTC", "notional": '"2500"',
              "extra": ""}
    values.update(overrides)
    path = tmp_path / "bot.toml"
    path.write_text(BASE.format(**values))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_load_when_valid_then_typed_values(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path))

    assert (cfg.lease.ttl, cfg.lease.renew_deadline, cfg.lease.renew_interval) == (3000, 2000, 500)
    assert cfg.risk.max_order_notional == Decimal("2500")
    assert str(cfg.account_id) == "paper:cfg-test"


def test_load_when_file_missing_then_names_file_and_reason(tmp_path: Path) -> None:
    message = refusal(tmp_path / "nope.toml")

    assert str(tmp_path / "nope.toml") in message and "not found" in message


def test_load_when_unknown_field_then_names_file_field_path_and_reason(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, extra="[runtime]\nheartbeat_intervall = '1s'\n"))

    assert str(tmp_path / "bot.toml") in message
    assert "runtime.heartbeat_intervall" in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize(("ttl", "renew_deadline"), [("2s", "2s"), ("1500ms", "2s")])
def test_load_when_ttl_not_above_renew_deadline_then_refused_naming_both(
    tmp_path: Path, ttl: str, renew_deadline: str
) -> None:
    message = refusal(write(tmp_path, ttl=ttl, renew_deadline=renew_deadline))

    assert str(tmp_path / "bot.toml") in message
    assert "lease" in message
    assert "ttl" in message and "must be greater than renew_deadline" in message


def test_lease_config_when_renew_interval_not_below_deadline_then_refused() -> None:
    with pytest.raises(ValueError, match=r"renew_deadline .* must be greater than renew_interval"):
        LeaseConfig.model_validate(
            {"ttl": "3s", "renew_deadline": "500ms", "renew_interval": "500ms"}
        )


def test_load_when_amount_negative_then_names_field_and_reason(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, notional='"-1"'))

    assert str(tmp_path / "bot.toml") in message
    assert "risk.max_order_notional" in message and "must not be negative" in message


def test_load_when_timezone_unknown_then_names_zone(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, timezone="Mars/Olympus_Mons"))

    assert str(tmp_path / "bot.toml") in message
    assert "risk" in message and "'Mars/Olympus_Mons' is not a known IANA zone" in message


def test_load_when_amount_is_toml_float_then_exact_decimal_not_binary(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, notional="2500.1"))

    assert cfg.risk.max_order_notional == Decimal("2500.1")  # a float would be 2500.0999...
    assert isinstance(cfg.risk.max_order_notional, Decimal)


def test_load_when_duration_malformed_then_names_field_and_example(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, ttl="three seconds"))

    assert "lease.ttl" in message and "is not a duration" in message
