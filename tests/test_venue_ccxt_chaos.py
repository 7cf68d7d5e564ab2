"""The bounded fault-injection run through the ccxt venue (``python -m guardrails.chaos
--venue ccxt``): real processes, the unmodified ccxt ``binance`` class, the
Binance-protocol simulator, and the independent checker — zero violations, with every
assertion of the HTTP venue's bounded run (``tests/test_chaos.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_chaos import run_bounded


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_run_when_ccxt_venue_and_bounded_then_zero_violations(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    run_bounded(artifacts_dir / "chaos-bounded-ccxt.json", tmp_path, "--venue", "ccxt")
