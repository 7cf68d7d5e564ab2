"""The runtime's supervision of one strategy, in-process and fast: which failures are a
crash, which are restarted, and that the restart backoff doubles and stays bounded.
(The same behaviour with real processes and a real Redis: tests/test_run_strategies.py.)"""

from __future__ import annotations

import logging
import re
import time

import pytest

from guardrails.config import parse_config
from guardrails.runtime.context import ContextUnavailable
from guardrails.runtime.strategy_loader import LoadedStrategy
from guardrails.runtime.term import StrategySupervisor
from tests.test_context import CONFIG


class _Flaky:
    """Fails ``failures`` times with ``error()``, then returns."""

    def __init__(self, failures: int, error: type[BaseException] | None = None) -> None:
        self.failures = failures
        self.error = error
        self.runs = 0
        self.started_at: list[float] = []

    async def run(self, ctx: object) -> None:
        self.runs += 1
        self.started_at.append(time.monotonic())
        if self.runs <= self.failures:
            if self.error is None:
                try:
                    raise ContextUnavailable("positions: ConnectionError: gone")
                except ContextUnavailable as e:
                    raise RuntimeError("my strategy wraps it") from e
            raise self.error("boom")


class _Ctx:
    def sent_client_order_ids(self) -> list[str]:
        return []

    async def open_orders(self) -> list[object]:
        return []


def _runtime(backoff: str = "100ms", backoff_max: str = "400ms") -> StrategySupervisor:
    data = dict(CONFIG)
    data["runtime"] = {"strategy_restart_backoff": backoff,
                       "strategy_restart_backoff_max": backoff_max}
    cfg = parse_config(data)
    return StrategySupervisor(cfg, [])


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    out = []
    for rec in caplog.records:
        msg = rec.getMessage()
        if msg.startswith(f"event={name} ") or msg == f"event={name}":
            out.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', msg)))
    return out


async def test_supervise_when_context_unavailable_repeats_then_backoff_doubles_up_to_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.runtime")
    strategy = _Flaky(5, ContextUnavailable)
    rt = _runtime()

    await rt._run_strategy(LoadedStrategy("s1", strategy, None), _Ctx())  # type: ignore[arg-type]

    delays = [int(e["delay_ms"]) for e in _events(caplog, "strategy.restarting")]
    assert delays == [100, 200, 400, 400, 400]
    gaps = [b - a for a, b in zip(strategy.started_at, strategy.started_at[1:], strict=False)]
    assert all(g >= d / 1000 * 0.9 for g, d in zip(gaps, delays, strict=True))
    assert strategy.runs == 6
    assert _events(caplog, "strategy.finished") and not _events(caplog, "strategy.crashed")
    assert "s1" not in rt.crashed


async def test_supervise_when_error_was_caused_by_context_unavailable_then_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.runtime")
    strategy = _Flaky(1)  # RuntimeError from ContextUnavailable

    await _runtime()._run_strategy(LoadedStrategy("s1", strategy, None), _Ctx())  # type: ignore[arg-type]

    assert strategy.runs == 2
    assert "RuntimeError: my strategy wraps it" in _events(caplog, "strategy.restarting")[0]["error"]


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, RuntimeError, MemoryError])
async def test_supervise_when_strategy_raises_anything_else_then_crashed_once_never_reraised(
    caplog: pytest.LogCaptureFixture, error: type[BaseException]
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.runtime")
    strategy = _Flaky(1, error)
    rt = _runtime()

    await rt._run_strategy(LoadedStrategy("s1", strategy, None), _Ctx())  # type: ignore[arg-type]

    assert strategy.runs == 1
    assert rt.crashed == {"s1"}
    (crashed,) = _events(caplog, "strategy.crashed")
    assert error.__name__ in crashed["error"]
    assert _events(caplog, "strategy.restarting") == []


def test_config_when_backoff_exceeds_its_max_then_refused() -> None:
    from guardrails.config import ConfigError

    with pytest.raises(ConfigError, match=r"runtime: .*strategy_restart_backoff \(1m\) must not "
                                          r"exceed strategy_restart_backoff_max \(30s\)"):
        _runtime(backoff="1m", backoff_max="30s")
