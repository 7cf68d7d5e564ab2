"""Config validation at load: every refusal names the file, the field path and the reason."""

from __future__ import annotations

import re
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


# -- bounds: what can only fail at runtime is refused at load ---------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        ("3000", "lease.ttl: 3000 has no unit: write '3000ms' or '3s'"),
        ('"3000"', "lease.ttl: 3000 has no unit: write '3000ms' or '3s'"),
        ("2.5", "lease.ttl: 2.5 has no unit: write '2.5ms' or '0.0025s'"),
    ],
)
def test_load_when_duration_is_a_bare_number_then_refused_asking_for_a_unit(
    tmp_path: Path, ttl: str, expected: str
) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('ttl = "3s"', f"ttl = {ttl}"))

    message = refusal(path)

    assert f"{path}: {expected}" in message


@pytest.mark.parametrize(
    ("section", "field", "value", "bound"),
    [
        ("lease", "ttl", "9999999999999h", "10m"),
        ("lease", "ttl", "11m", "10m"),
        ("redis", "socket_timeout", "2m", "1m"),
        ("runtime", "heartbeat_ttl", "25h", "24h"),
        ("runtime", "strategy_stop_timeout", "6m", "5m"),
    ],
)
def test_load_when_duration_is_absurd_then_refused_naming_the_bound(
    tmp_path: Path, section: str, field: str, value: str, bound: str
) -> None:
    path = write(tmp_path)
    text = path.read_text()
    if section == "lease":
        text = text.replace('ttl = "3s"', f'ttl = "{value}"')
    else:
        text += f'\n[{section}]\n{field} = "{value}"\n'
    path.write_text(text)

    message = refusal(path)

    assert f"{path}: {section}.{field}: " in message
    assert f"is too long: at most {bound}" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("daily_loss_limit", '"9007199254.740992"'),  # exactly 2^53 micro-units
        ("max_gross_exposure", '"1e300"'),
        ("max_order_notional", '"99999999999999999999"'),
    ],
)
def test_load_when_amount_beyond_exact_integer_range_then_refused(
    tmp_path: Path, field: str, value: str
) -> None:
    path = write(tmp_path)
    text = path.read_text()
    if field == "max_order_notional":
        text = text.replace('max_order_notional = "2500"', f"max_order_notional = {value}")
    else:
        text = text.replace(f'{field} = "', f'{field} = {value}\n#"')
    path.write_text(text)

    message = refusal(path)

    assert f"{path}: risk: " in message
    assert f"{field} (" in message and "below 2^53 units" in message


def test_load_when_amount_just_below_exact_integer_range_then_accepted(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('daily_loss_limit = "250"',
                                             'daily_loss_limit = "9007199254.740991"'))

    assert load_config(path).risk.daily_loss_limit == Decimal("9007199254.740991")


def test_load_when_max_position_is_2_pow_53_lots_then_refused(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('max_position = "0.1"',
                                             'max_position = "900719925474.0992"'))

    message = refusal(path)

    assert "instrument 'BTC-USD': max_position" in message and "2^53 lots" in message


@pytest.mark.parametrize(
    ("tick", "expected"),
    [("0.0000000000000000001", "more than 18 decimal places"),
     ("1.00000000000000001", "more than 15 significant digits")],
)
def test_load_when_tick_cannot_be_parsed_by_the_gate_then_refused(
    tmp_path: Path, tick: str, expected: str
) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('tick = "0.01"', f'tick = "{tick}"'))

    message = refusal(path)

    assert "instrument 'BTC-USD': tick" in message and expected in message


def test_load_when_orders_per_second_below_the_gates_resolution_then_refused(
    tmp_path: Path,
) -> None:
    path = write(tmp_path)
    path.write_text(path.read_text().replace('daily_loss_limit = "250"',
                                             'daily_loss_limit = "250"\norders_per_second = "0.0001"'))

    assert "orders_per_second (0.0001) must be at least 0.001" in refusal(path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:6379", "not a Redis URL (scheme 'http')"),
        ("redis://127.0.0.1:abc/0", "not a Redis URL: the port is not a number"),
        ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
        ("localhost:6379", "not a Redis URL"),
    ],
)
def test_load_when_redis_url_is_bad_then_refused_naming_field_without_echoing_it(
    tmp_path: Path, url: str, expected: str
) -> None:
    path = write(tmp_path, extra="")
    path.write_text(path.read_text().replace("[lease]", f'[redis]\nurl = "{url}"\n\n[lease]'))

    message = refusal(path)

    assert f"{path}: redis.url: {expected}" in message


def test_load_when_redis_url_override_is_bad_then_refused_naming_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path)
    with pytest.raises(ConfigError, match=r"^--redis-url: not a Redis URL"):
        load_config(path, "redis://user:s3cret@host:port/0")
    monkeypatch.setenv("GUARDRAILS_REDIS_URL", "http://user:s3cret@h")
    with pytest.raises(ConfigError, match=r"^\$GUARDRAILS_REDIS_URL: not a Redis URL") as err:
        load_config(path)
    assert "s3cret" not in str(err.value)


def test_load_when_lock_dir_is_a_file_then_refused_naming_field(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = write(tmp_path, extra=f'\n[runtime]\nlock_dir = "{tmp_path / "afile"}"\n')

    message = refusal(path)

    assert f"{path}: runtime.lock_dir: {tmp_path / 'afile'} exists and is not a directory" in message


def test_load_when_config_is_not_utf8_then_refused_naming_file(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_bytes(b"# caf\xe9\n" + path.read_bytes())

    message = refusal(path)

    assert message.startswith(f"{path}: not UTF-8 text (byte 5")


def test_load_when_several_problems_then_one_line_naming_each(tmp_path: Path) -> None:
    message = refusal(write(tmp_path, notional='"-1"', ttl="3000"))

    assert "\n" not in message
    assert f"{path_of(tmp_path)}: lease.ttl: 3000 has no unit" in message
    assert f"{path_of(tmp_path)}: risk.max_order_notional: must not be negative" in message


def path_of(tmp_path: Path) -> Path:
    return tmp_path / "bot.toml"


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "-leading-dash", "semi;colon"])
def test_load_when_strategy_name_is_not_a_short_identifier_then_refused(
    tmp_path: Path, name: str
) -> None:
    path = write(tmp_path, extra=f'\n[[strategies]]\nname = "{name}"\nmodule = "m:C"\n')

    assert f"{path}: strategies[0].name: String should match pattern" in refusal(path)


def test_config_reference_when_duration_defaults_shown_then_each_has_a_unit() -> None:
    from guardrails.configdoc import render

    rows = [line.split("|") for line in render().splitlines() if "| duration" in line]

    assert len(rows) >= 10
    for row in rows:
        default = row[3].strip()
        assert default in ("none", "**required**") or re.fullmatch(r"`\d+(ms|s|m|h)`", default), row
