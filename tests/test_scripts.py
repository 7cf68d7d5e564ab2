"""The one Lua loader (guardrails/scripts.py) and the shared library (lua/lib/*.lua):
every script's header, its return convention, include expansion, and no helper copied
back into a script. Real redis-server for the loaded texts."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from guardrails import scripts

ROOT = Path(__file__).resolve().parent.parent / "guardrails"
LIB_HELPERS = ("MAXI", "stored_int", "stored_nat", "arg_int", "rd", "type_is", "hash_of",
               "now_ms", "journal_add", "journal_try", "TERMINAL", "LIVE", "RELEASING",
               "fence", "ifloor", "iceil", "failure_detail")


def test_scripts_when_listed_then_every_lua_file_in_the_package_is_registered_by_name() -> None:
    on_disk = {p.stem for p in (ROOT / "lua").glob("*.lua")}
    assert on_disk == set(scripts.SCRIPTS)


@pytest.mark.parametrize("name", scripts.SCRIPTS)
def test_lua_when_read_then_header_names_keys_argv_and_return_shape(name: str) -> None:
    src = scripts.raw_source(name)
    header = src.split("\nlocal ", 1)[0]
    assert header.startswith(f"-- {name}:"), name
    for word in ("KEYS[1]", "ARGV[1]", "Returns {"):
        assert word in header, (name, word)
    # KEYS / ARGV are bound to named locals on the first lines after the header
    body = src[len(header):]
    first = body.split("\n\n", 1)[0]
    # ... or, where the chunk's per-call setup is kept lean (gate_admit), on the first
    # lines of the one decision function that takes KEYS and ARGV as (K, A, ...)
    lean = re.search(r"^local function \w+\(K, A(?:, \w+)*\)\n(?:  local K_\w+(?:, K_\w+)* = K\[\d+\].*\n)+",
                     body, re.M)
    assert "= KEYS[1]" in first or ", KEYS[1]" in first or (lean and "= K[1]" in lean.group(0)), name


@pytest.mark.parametrize("name", scripts.SCRIPTS)
def test_lua_when_returning_then_a_table_with_an_integer_code_first(name: str) -> None:
    src = scripts.source(name)
    for m in re.finditer(r"^\s*return (.+)$", src, re.MULTILINE):
        value = m.group(1)
        # inside helper functions returns are values; the script's own outcomes are tables
        if value.startswith("{") or not re.match(r"^-?\d+$", value):
            continue
        pytest.fail(f"{name}: bare integer return {value!r} (use {{code, ...}})")


@pytest.mark.parametrize("name", scripts.SCRIPTS)
def test_source_when_loaded_then_every_include_expanded_once(name: str) -> None:
    raw, src = scripts.raw_source(name), scripts.source(name)
    assert "--!include" not in src
    for lib in re.findall(r"^--!include (lib/\S+)$", raw, re.MULTILINE):
        text = resources.files("guardrails").joinpath("lua", lib).read_text()
        assert src.count(text.splitlines()[0]) == 1, (name, lib)


@pytest.mark.parametrize("name", scripts.SCRIPTS)
def test_script_when_written_then_defines_no_helper_of_the_library(name: str) -> None:
    raw = scripts.raw_source(name)
    for helper in LIB_HELPERS:
        pattern = rf"^\s*local (function {helper}\b|{helper} = (?!{helper}\())"
        assert not re.search(pattern, raw, re.MULTILINE), f"{name} redefines lib {helper}"
    assert "9007199254740992" not in raw, f"{name}: 2^53 belongs to lib/int.lua"
    assert "'TIME'" not in raw and '"TIME"' not in raw, f"{name}: use now_ms() (lib/time.lua)"
    assert "MAXLEN', '~', '100000'" not in raw and 'MAXLEN", "~", "100000"' not in raw, (
        f"{name}: use journal_add (lib/journal.lua)")


def test_source_when_include_missing_then_script_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scripts._read

    def fake(path: str) -> str:
        if path == "x_test.lua":
            return "-- x_test: t\n--!include lib/nope.lua\nreturn {1}\n"
        return real(path)

    monkeypatch.setattr(scripts, "_read", fake)
    with pytest.raises(scripts.ScriptError, match=r"nope\.lua"):
        scripts._expand("x_test.lua", set(), ("x_test.lua",))


def test_source_when_name_is_a_path_then_refused() -> None:
    with pytest.raises(scripts.ScriptError):
        scripts.source("lib/int")


async def test_register_when_every_script_loaded_then_redis_compiles_it(
    redis_client: aioredis.Redis,
) -> None:
    for name in scripts.SCRIPTS:
        sha = await redis_client.script_load(scripts.source(name))
        assert sha == scripts.register(redis_client, name).sha


async def test_register_when_script_cache_flushed_then_noscript_recovered(
    redis_client: aioredis.Redis,
) -> None:
    script = scripts.register(redis_client, "lease_release")
    assert await script(keys=["k"], args=["1:a", "chan", "1"]) == [2]
    await redis_client.script_flush()
    assert await script(keys=["k"], args=["1:a", "chan", "1"]) == [2]


async def test_lease_acquire_when_bad_ttl_then_error_reply_names_the_script(
    redis_client: aioredis.Redis,
) -> None:
    script = scripts.register(redis_client, "lease_acquire")
    with pytest.raises(ResponseError, match="lease_acquire: ttl_ms"):
        await script(keys=["l", "f"], args=["h", "zero"])
