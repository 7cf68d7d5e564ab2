"""The supervisor recipes in docs/operations.md do not restart-loop a copy that cannot
start (exit 2: bad config, refused by the host lock): parsed from the doc itself, and the
launchd/cron wrappers run for real with a stand-in that exits 2, 0 or 1."""

from __future__ import annotations

import configparser
import html
import re
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_systemd_unit_when_copy_exits_2_then_not_restarted() -> None:
    units = [b for b in _blocks("ini") if "ExecStart=" in b and "guardrails run" in b]
    assert len(units) == 1
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(units[0])
    service = parser["Service"]

    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()
    assert service["KillSignal"] == "SIGTERM"


def _launchd_wrapper() -> str:
    (xml,) = [b for b in _blocks("xml") if "ProgramArguments" in b]
    args = re.search(r"<key>ProgramArguments</key>\s*<array>(.*?)</array>", xml, flags=re.S)
    assert args is not None
    strings = [html.unescape(s) for s in re.findall(r"<string>(.*?)</string>", args[1], re.S)]
    assert strings[:2] == ["/bin/sh", "-c"], strings
    assert "<key>SuccessfulExit</key><false/>" in xml  # restarts only a non-zero exit
    return strings[2]


def _cron_loop() -> str:
    lines = [line for b in _blocks("cron") for line in b.splitlines() if line.startswith("@reboot")]
    assert len(lines) == 1
    command = lines[0].split(None, 2)[2]  # after "@reboot <user>"
    return command.split("&&", 1)[1].strip()  # after "cd /opt/guardrails"


def _stand_in(tmp_path: Path, rc: int) -> Path:
    """A fake `guardrails` that counts its starts and exits ``rc``."""
    fake = tmp_path / "guardrails"
    fake.write_text(f"#!/bin/sh\necho start >> {tmp_path / 'starts'}\nexit {rc}\n")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize(("rc", "wrapper_rc"), [(2, 0), (0, 0), (1, 1), (3, 3)])
def test_launchd_wrapper_when_run_exits_2_then_job_ends_successfully_else_status_kept(
    tmp_path: Path, rc: int, wrapper_rc: int
) -> None:
    script = _launchd_wrapper().replace("/opt/guardrails/.venv/bin/guardrails",
                                        str(_stand_in(tmp_path, rc)))

    result = subprocess.run(["/bin/sh", "-c", script], timeout=30)

    assert result.returncode == wrapper_rc  # KeepAlive{SuccessfulExit=false} restarts only != 0


@pytest.mark.parametrize(("rc", "starts"), [(2, 1), (0, 1)])
def test_cron_loop_when_run_exits_0_or_2_then_it_is_not_started_again(
    tmp_path: Path, rc: int, starts: int
) -> None:
    script = _cron_loop().replace(".venv/bin/guardrails", str(_stand_in(tmp_path, rc)))
    script = script.replace("/var/tmp/guardrails-demo.log", str(tmp_path / "log"))
    script = script.replace("logger -t guardrails-demo", "echo")

    subprocess.run(["/bin/sh", "-c", script], timeout=30, check=True)

    assert (tmp_path / "starts").read_text().count("start") == starts
