"""The strategy loader: what the config names is constructed, or a clear ConfigError."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from guardrails.config import ConfigError, StrategyConfig
from guardrails.runtime.strategy_loader import load_strategy, param_decimal, param_duration_s


def _spec(module: str, **params: object) -> StrategyConfig:
    return StrategyConfig(name="s1", module=module, params=params)


def test_load_when_package_module_and_params_then_constructed() -> None:
    loaded = load_strategy(
        _spec("strategies.looper:Looper", symbol="BTC-USD", qty="0.001", count=3),
        source="cfg.toml",
    )
    assert loaded.name == "s1"
    assert type(loaded.strategy).__name__ == "Looper"
    assert loaded.strategy.qty == Decimal("0.001")  # type: ignore[attr-defined]


def test_load_when_file_path_relative_to_config_dir_then_constructed(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        class Mine:
            def __init__(self, x: int) -> None:
                self.x = x
            async def run(self, ctx: object) -> None:
                return None
    """))
    loaded = load_strategy(_spec("mine.py:Mine", x=4), source="c.toml", base_dir=tmp_path)
    assert loaded.strategy.x == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("module", "params", "expected"),
    [
        ("no_such_pkg.nope:Cls", {}, "module 'no_such_pkg.nope' not found"),
        ("strategies.looper:Nope", {}, "has no class 'Nope'"),
        ("strategies.looper", {}, "must be 'package.module:Class'"),
        ("missing/file.py:Cls", {}, "strategy file 'missing/file.py' not found"),
        ("strategies.looper:Looper", {"symbol": "X", "bogus": 1}, "refused by Looper()"),
        ("strategies.looper:Looper", {"symbol": "X", "qty": "-1"}, "'qty': must be greater than 0"),
        ("strategies.looper:Looper", {"symbol": "X", "interval": "soon"}, "'interval'"),
        ("guardrails.model:Intent", {}, "has no 'async def run(self, ctx)' method"),
    ],
)
def test_load_when_entry_is_bad_then_config_error_names_entry_and_reason(
    module: str, params: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_strategy(_spec(module, **params), index=1, source="conf/x.toml")
    msg = str(err.value)
    assert msg.startswith("conf/x.toml: strategies[1] (name='s1'): ")
    assert expected in msg


def test_load_when_class_run_is_not_async_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "sync.py").write_text("class S:\n    def run(self, ctx):\n        pass\n")
    with pytest.raises(ConfigError, match="no 'async def run"):
        load_strategy(_spec(str(tmp_path / "sync.py") + ":S"))


def test_load_when_module_raises_at_import_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("raise RuntimeError('kaboom')\n")
    with pytest.raises(ConfigError, match="RuntimeError: kaboom"):
        load_strategy(_spec(str(tmp_path / "boom.py") + ":S"))


def test_params_when_float_or_bad_duration_then_value_error() -> None:
    with pytest.raises(ValueError, match="write decimals as strings"):
        param_decimal("size", 0.1)
    assert param_duration_s("refresh", "250ms") == 0.25
    assert param_duration_s("refresh", "2s") == 2.0
    with pytest.raises(ValueError, match="'refresh'"):
        param_duration_s("refresh", "-1s")


@pytest.mark.parametrize("bare", [2, "2", Decimal("2.5")])
def test_params_when_duration_is_a_bare_number_then_value_error_asks_for_a_unit(
    bare: object,
) -> None:
    with pytest.raises(ValueError, match=r"'refresh': .* has no unit: write '.*ms' or '.*s'"):
        param_duration_s("refresh", bare)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("raise RuntimeError('no api key')", "S() raised RuntimeError: no api key"),
        ("import sys; sys.exit(3)", "S() called sys.exit(3) while being constructed"),
        ("raise SystemExit", "S() called sys.exit(None) while being constructed"),
        ("raise OSError(2, 'gone')", "S() raised FileNotFoundError: [Errno 2] gone"),
    ],
)
def test_load_when_constructor_raises_or_exits_then_config_error_not_exit(
    tmp_path: Path, body: str, expected: str
) -> None:
    (tmp_path / "ctor.py").write_text(
        f"class S:\n    def __init__(self):\n        {body}\n"
        "    async def run(self, ctx):\n        pass\n"
    )
    with pytest.raises(ConfigError) as err:
        load_strategy(_spec(str(tmp_path / "ctor.py") + ":S"), source="c.toml")
    assert str(err.value).startswith("c.toml: strategies[0] (name='s1'): ")
    assert expected in str(err.value)


def test_load_when_module_calls_sys_exit_at_import_then_config_error(tmp_path: Path) -> None:
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match=r"quits.py called sys.exit\(0\)"):
        load_strategy(_spec(str(tmp_path / "quits.py") + ":S"))
