"""`guardrails init` writes starter configs that load; `--version` answers on every command."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from guardrails import cli
from guardrails.config import load_config
from guardrails.ops import init
from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import run_cli


def test_init_venue_choices_when_cli_built_then_match_the_templates() -> None:
    assert cli._INIT_VENUES == init.VENUES


@pytest.mark.parametrize("venue", init.VENUES)
def test_init_when_venue_chosen_then_file_written_loads_and_names_no_secret(
    venue: str, tmp_path: Path
) -> None:
    out = tmp_path / "bot.toml"
    r = run_cli("init", "--venue", venue, "--output", str(out))
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    assert cfg.venue.kind == venue
    text = out.read_text()
    assert "docs/config.md" in text and "0x" + "0" * 64 not in text


def test_init_when_file_exists_then_refused_exit_2_and_file_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "bot.toml"
    out.write_text("mine\n")
    r = run_cli("init", "--output", str(out))
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "mine\n"
    r = run_cli("init", "--output", str(out), "--force")
    assert r.returncode == 0 and load_config(out).account.id == "demo"


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _commands(child, (*prefix, name))
    return out


def test_version_when_asked_on_any_command_then_printed_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(cli.build_parser())
    assert len(commands) > 15
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            cli.main([*cmd, "--version"])
        assert e.value.code == 0, cmd
        assert capsys.readouterr().out.startswith("guardrails "), cmd


def test_status_when_piped_into_a_reader_that_left_then_quiet_exit_no_traceback(
    redis_server: RedisServer,
) -> None:
    # `| true` closes the pipe before status writes (as `| head -1` does once it has its line).
    cmd = (f"{shlex.quote(sys.executable)} -m guardrails status --redis-url {redis_server.url} "
           "--account paper:demo | true; echo \"rc=${PIPESTATUS[0]}\" >&2")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=subprocess_env(),
                       cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert "rc=141" in r.stderr, r.stderr
