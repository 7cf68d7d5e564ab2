"""The state directory against another local user (defect F5): two real OS users.

The attacker is a throwaway user (``tests/oskit.py``) acting where the victim's state
directory would be, in a shared sticky directory standing for ``/var/tmp``; the victim is
this (root) test process or a real ``guardrails run``. A planted fence memory is refused
with an error naming it, never trusted (no lost-history alarm reaches the shared Redis);
a planted symlink at the temporary name is never written through; and the state
directory fencing creates is 0700, so the embedded Redis accepts it afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from guardrails import fencing, statedir
from guardrails.config import load_config
from guardrails.infra import connect
from guardrails.keys import AccountKeys
from tests.oskit import OsUser, attacker, shared_sticky_dir, throwaway_user
from tests.redis_harness import RedisServer
from tests.run_harness import run_cli, write_config

PRECIOUS = b"root's secret, mode 0600\n"

PLANT_MEMORY = """
import json, os, sys
state, fence, name = sys.argv[1:4]
for d in (state, fence):
    os.mkdir(d); os.chmod(d, 0o777)
with open(os.path.join(fence, name), "w") as f:
    json.dump({"epoch": "attacker", "token": 999}, f)
os.chmod(os.path.join(fence, name), 0o666)
"""

PLANT_LINKS = """
import os, sys
state, fence, target = sys.argv[1:4]
for d in (state, fence):
    os.mkdir(d); os.chmod(d, 0o777)
for name in sys.argv[4:]:
    os.symlink(target, os.path.join(fence, name))
"""


@pytest.fixture
def mallory() -> Iterator[OsUser]:
    with throwaway_user("grmal") as user:
        yield user


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_sticky_dir("gr-shared-vartmp-") as base:
        yield base


def test_run_when_other_user_planted_fence_memory_then_exit_2_naming_it_and_no_alarm(
    mallory: OsUser, shared: Path, tmp_path: Path, redis_server: RedisServer,
) -> None:
    # Arrange: mallory creates the victim's state dir first and plants a fence memory
    # claiming a higher token of another history, at the name the victim's run will read.
    state = shared / f"guardrails-{os.getuid()}"
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="planted")
    account = load_config(cfg).account_id
    memory = fencing.FileFenceMemory(str(account), connect.describe(redis_server.url),
                                     root=state / "fence")
    attacker(mallory, PLANT_MEMORY, str(state), str(state / "fence"), memory.path.name)
    # Act
    done = run_cli("run", "--config", str(cfg),
                   env={statedir.STATE_DIR_ENV: str(state)}, timeout=60)
    # Assert: refused, naming the directory and its owner; nothing reached Redis's alarm
    text = done.stdout + done.stderr
    assert done.returncode == 2, text
    assert "fence memory" in text and str(state) in text and "not by you" in text, text
    assert "Traceback" not in text and "history_lost" not in text, text
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.exists(AccountKeys(account).fence_alarm) == 0
    finally:
        client.close()


def test_load_when_other_users_file_in_private_dir_then_refused_not_trusted(
    mallory: OsUser, tmp_path: Path,
) -> None:
    # Arrange: our 0700 fence directory holds a file that is not ours (say, left from
    # before the directory was private): chown-ed to mallory, as if she wrote it.
    fence = tmp_path / "fence"
    fence.mkdir(mode=0o700)
    memory = fencing.FileFenceMemory("paper:planted", "redis://x", root=fence)
    memory.path.write_text(json.dumps({"epoch": "attacker", "token": 999}))
    os.chmod(memory.path, 0o600)
    os.chown(memory.path, mallory.uid, mallory.gid)
    # Act / Assert
    with pytest.raises(statedir.StateDirError, match=f"owned by uid {mallory.uid}") as info:
        memory.load()
    assert str(memory.path) in str(info.value)


def test_save_when_other_user_symlinked_tmp_name_then_target_untouched(
    mallory: OsUser, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: mallory's state dir for the victim, with the memory's predictable names
    # (``<digest>.<pid>.tmp`` and ``<digest>.json``) pointing at root's 0600 file.
    target = tmp_path / "precious"
    target.write_bytes(PRECIOUS)
    os.chmod(target, 0o600)
    state = shared / f"guardrails-{os.getuid()}"
    monkeypatch.setenv(statedir.STATE_DIR_ENV, str(state))
    memory = fencing.FileFenceMemory("paper:planted", "redis://x")
    tmp_name = memory.path.with_suffix(f".{os.getpid()}.tmp").name
    attacker(mallory, PLANT_LINKS, str(state), str(state / "fence"), str(target), tmp_name,
              memory.path.name)
    # Act: save never raises (a lease must not stop for it); load refuses
    with caplog.at_level(logging.WARNING, logger="guardrails.fencing"):
        memory.save("ours", 1)
    with pytest.raises(statedir.StateDirError, match="not by you"):
        memory.load()
    # Assert: nothing written through either link; the refusal was logged, naming it
    st = target.stat()
    assert target.read_bytes() == PRECIOUS and stat.S_IMODE(st.st_mode) == 0o600
    assert "fence.memory_unwritable" in caplog.text and str(state) in caplog.text
    assert sorted(p.name for p in (state / "fence").iterdir()) == sorted(
        [tmp_name, memory.path.name])


def test_save_when_state_dir_missing_then_created_0700_and_redis_start_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: no state dir yet, a usual umask (a plain mkdir would make it 0755)
    state = tmp_path / "var-tmp" / "guardrails-0"
    monkeypatch.setenv(statedir.STATE_DIR_ENV, str(state))
    old = os.umask(0o022)
    try:
        # Act: what a Guard on a TCP Redis does first in the state dir; then redis start
        fencing.FileFenceMemory("paper:t1", "redis://127.0.0.1:1").save("e", 7)
    finally:
        os.umask(old)
    started = run_cli("redis", "start", env={statedir.STATE_DIR_ENV: str(state)}, timeout=60)
    stopped = run_cli("redis", "stop", env={statedir.STATE_DIR_ENV: str(state)}, timeout=60)
    # Assert
    for d in (state, state / "fence"):
        st = os.lstat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid(), d
    memory = fencing.FileFenceMemory("paper:t1", "redis://127.0.0.1:1")
    assert stat.S_IMODE(memory.path.stat().st_mode) == 0o600
    assert memory.load() == ("e", 7)
    assert started.returncode == 0, started.stdout + started.stderr
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
