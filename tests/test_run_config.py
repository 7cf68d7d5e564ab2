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


# -- CLI error hygiene: exit 2, one line naming file / field / reason, never a traceback ---


def _refused(result: object, *expected: str) -> str:
    import subprocess

    assert isinstance(result, subprocess.CompletedProcess)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_run_when_config_is_not_utf8_then_exit_2_one_line_naming_file(tmp_path: Path) -> None:
    path = _config(tmp_path)
    path.write_bytes(b"# \xff\xfe latin-1 comment\n" + path.read_bytes())

    result = run_cli("run", "--config", str(path))

    _refused(result, f"{path}: not UTF-8 text")


@pytest.mark.parametrize(
    ("where", "url", "expected"),
    [
        ("config", "redis://127.0.0.1:notaport/0", "redis.url: not a Redis URL"),
        ("config", "http://127.0.0.1:6379", "redis.url: not a Redis URL (scheme 'http')"),
        ("flag", "redis://:hunter2@127.0.0.1:6379/x", "--redis-url: database 'x' is not a number"),
        ("env", "tcp://hunter2@127.0.0.1", "$GUARDRAILS_REDIS_URL: not a Redis URL"),
    ],
)
def test_run_when_redis_url_is_bad_then_exit_2_one_line_naming_field(
    tmp_path: Path, where: str, url: str, expected: str
) -> None:
    path = write_config(tmp_path / "bad.toml", redis_url=url if where == "config" else UNREACHABLE)
    args = ["run", "--config", str(path)]
    env = {}
    if where == "flag":
        args += ["--redis-url", url]
    if where == "env":
        env["GUARDRAILS_REDIS_URL"] = url

    line = _refused(run_cli(*args, env=env), expected)

    assert "hunter2" not in line
    if where == "config":
        assert line.startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("raise RuntimeError('no api key')", "Ctor() raised RuntimeError: no api key"),
        ("import sys; sys.exit(0)", "Ctor() called sys.exit(0) while being constructed"),
    ],
)
def test_run_when_strategy_constructor_raises_or_exits_then_exit_2_one_line(
    tmp_path: Path, body: str, expected: str
) -> None:
    (tmp_path / "ctor.py").write_text(
        f"class Ctor:\n    def __init__(self):\n        {body}\n"
        "    async def run(self, ctx):\n        pass\n"
    )
    path = _config(tmp_path)
    path.write_text(path.read_text().replace(
        '[[strategies]]\nname = "looper"',
        f'[[strategies]]\nname = "ctor"\nmodule = "{tmp_path / "ctor.py"}:Ctor"\n\n'
        '[[strategies]]\nname = "looper"'))

    _refused(run_cli("run", "--config", str(path)),
             f"{path}: strategies[0] (name='ctor'): {expected}")


def test_run_when_lock_dir_is_a_file_then_exit_2_one_line_naming_field(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = _config(tmp_path)
    path.write_text(path.read_text().replace(
        "[runtime]\n", f'[runtime]\nlock_dir = "{tmp_path / "afile"}"\n'))

    _refused(run_cli("run", "--config", str(path)),
             f"{path}: runtime.lock_dir: {tmp_path / 'afile'} exists and is not a directory")


def test_run_when_lock_dir_env_is_a_file_then_exit_2_one_line_naming_the_variable(
    tmp_path: Path,
) -> None:
    (tmp_path / "afile").write_text("x")
    path = _config(tmp_path)

    _refused(run_cli("run", "--config", str(path), env={"GUARDRAILS_LOCK_DIR": str(tmp_path / "afile")}),
             f"guardrails run: {path}: $GUARDRAILS_LOCK_DIR: lock directory {tmp_path / 'afile'}")


def test_run_when_duration_is_a_bare_number_then_exit_2_asking_for_a_unit(tmp_path: Path) -> None:
    path = _config(tmp_path)
    path.write_text(path.read_text().replace('ttl = "1500ms"', "ttl = 3000"))

    _refused(run_cli("run", "--config", str(path)),
             f"{path}: lease.ttl: 3000 has no unit: write '3000ms' or '3s'")
