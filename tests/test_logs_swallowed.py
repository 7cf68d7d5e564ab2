"""``logs.swallowed``: the one way a shutdown step swallows an error — logged at debug with
the step's name, never a cancellation, never an error type the caller did not name."""

from __future__ import annotations

import asyncio
import logging

import pytest

from guardrails import logs

LOG = logging.getLogger("test.swallowed")


def test_swallowed_when_step_raises_then_logged_at_debug_and_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.swallowed")
    with logs.swallowed(LOG, "venue.close"):
        raise ConnectionResetError("peer gone")
    (record,) = [r for r in caplog.records if "shutdown.swallowed" in r.getMessage()]
    assert record.levelno == logging.DEBUG
    assert "step=venue.close" in record.getMessage()
    assert "ConnectionResetError: peer gone" in record.getMessage()


def test_swallowed_when_cancelled_then_cancellation_propagates() -> None:
    with pytest.raises(asyncio.CancelledError), logs.swallowed(LOG, "x"):
        raise asyncio.CancelledError


def test_swallowed_when_error_not_named_then_raised() -> None:
    with pytest.raises(ValueError), logs.swallowed(LOG, "x", OSError):
        raise ValueError("a bug, not a dead socket")
