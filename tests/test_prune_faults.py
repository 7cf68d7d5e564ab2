"""The prune sweep under damage, against a real redis-server and a real archive file: a
tombstone bucket that is not whole 6-byte entries fails closed (the gate denies
``bad_state``, the sweep removes nothing), and a full disk in the middle of an archive
or pending-file write never leaves a file that stops later sweeps or readers."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Denied, DenyReason
from guardrails.prune import Archive, PruneError, read_archive, tombstone
from tests.gatekit import HOLDER, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer
from tests.test_prune import HOUR, gate, place, pruner, updated


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


async def canceled(r: aioredis.Redis, keys: AccountKeys, *iids: str) -> tuple[list[str], int]:
    """Orders admitted and canceled; their coids and a ``now_ms`` that makes them old."""
    ledger = Ledger(r, keys, risk())
    coids = []
    for iid in iids:
        c = await place(r, keys, iid)
        await ledger.mark_canceled(c, "x")
        coids.append(c)
    return coids, max([await updated(r, keys, c) for c in coids]) + 2 * HOUR


def full_disk_on(path: Path, monkeypatch: pytest.MonkeyPatch, *, after: int = 0,
                 keep: int = 50) -> Callable[[], None]:
    """``os.write`` to ``path`` writes ``keep`` bytes and then fails ENOSPC (as a disk that
    fills up mid-write does), from its ``after``-th call on; the returned function heals it."""
    real, calls = os.write, [0]

    def write(fd: int, data: bytes | memoryview) -> int:
        if os.readlink(f"/proc/self/fd/{fd}") == str(path):
            calls[0] += 1
            if calls[0] > after:
                real(fd, bytes(data)[:keep])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    return lambda: monkeypatch.setattr(os, "write", real)


# -- a damaged tombstone bucket ---------------------------------------------------------------


async def test_admit_when_tomb_bucket_not_whole_entries_then_bad_state_never_admitted(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: a pruned intent whose bucket gained one stray byte in front (a partial
    # write, a tool that "fixed" it): every fingerprint in it is now off its boundary
    r = redis_client
    (coid,), now = await canceled(r, acct, "shifted")
    await pruner(r, acct, tmp_path).sweep(now_ms=now)
    raw = redis.Redis(port=redis_server.port)
    bucket, _ = tombstone("shifted")
    raw.hset(acct.tombstones, bucket, b"x" + raw.hget(acct.tombstones, bucket))
    raw.close()
    # Act: the late retry of the pruned intent
    d = await gate(r, acct).admit(buy("0.0010"), intent_id="shifted", token=TOKEN,
                                  holder_id=HOLDER)
    # Assert: denied bad_state naming the bucket, nothing recreated
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d
    assert bucket in d.detail and "6" in d.detail, d.detail
    assert not await r.exists(acct.order(coid))
    assert not await r.hexists(acct.intents, "shifted")


async def test_sweep_when_tomb_bucket_not_whole_entries_then_refused_and_nothing_removed(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """Appending to a shifted bucket would write a tombstone the gate never finds (off its
    6-byte boundary): the script refuses instead, writing nothing."""
    r = redis_client
    (coid,), now = await canceled(r, acct, "next")
    bucket, _ = tombstone("next")
    await r.hset(acct.tombstones, bucket, "12345")  # 5 bytes: not whole entries
    p = pruner(r, acct, tmp_path)
    with pytest.raises(PruneError, match=f"{bucket}.*6"):
        await p.sweep(now_ms=now)
    assert await r.exists(acct.order(coid)) and await r.hexists(acct.intents, "next")
    assert await r.hget(acct.tombstones, bucket) == "12345"
    assert read_archive(p.archive.path).orders == {}


# -- a full disk mid-write ---------------------------------------------------------------------


async def test_archive_when_append_cut_by_full_disk_then_next_sweep_repairs_and_it_reads(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the second batch's append to the archive runs out of disk after 50 bytes
    # (the script already removed its two orders: their lines wait in the pending file)
    r = redis_client
    coids, now = await canceled(r, acct, "d0", "d1", "d2", "d3")
    p = pruner(r, acct, tmp_path, batch=2)
    heal = full_disk_on(p.archive.path, monkeypatch, after=1)
    with pytest.raises(PruneError, match="No space left"):
        await p.sweep(now_ms=now)
    heal()
    # Act: the disk has room again; the next sweep repairs the interrupted batch
    rep = await p.sweep(now_ms=now)
    # Assert: every removed order is in the archive once, the archive reads cleanly, and a
    # later append does not land on a torn fragment
    assert rep.recovered == 2
    assert set(read_archive(p.archive.path).orders) == set(coids)
    assert p.archive.path.read_bytes().endswith(b"\n")
    (more,), _ = await canceled(r, acct, "d4")
    await p.sweep(now_ms=await updated(r, acct, more) + 2 * HOUR)
    assert set(read_archive(p.archive.path).orders) == {*coids, more}


async def test_sweep_when_pending_write_cut_by_full_disk_then_next_sweep_runs(
    redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The staged batch is written before the script runs: a torn pending file names
    nothing that was removed, so it never stops the sweeps that follow."""
    r = redis_client
    (coid,), now = await canceled(r, acct, "s0")
    p = pruner(r, acct, tmp_path)
    heal = full_disk_on(p.archive.pending, monkeypatch)
    with pytest.raises(PruneError, match="No space left"):
        await p.sweep(now_ms=now)
    heal()
    assert await r.exists(acct.order(coid))  # the script never ran
    rep = await p.sweep(now_ms=now)
    assert rep.pruned == [coid] and not p.archive.pending.exists()
    assert set(read_archive(p.archive.path).orders) == {coid}


@pytest.mark.parametrize("tail, kept", [
    (b'{"v":1,"kind":"order","co', {"a", "b"}),  # cut mid-line: dropped (still staged)
    (b'{"coid":"t","kind":"order","order":{},"v":1}', {"a", "t", "b"}),  # lost its newline
])
def test_archive_when_last_line_torn_by_a_crash_then_next_append_reads_whole(
    tmp_path: Path, tail: bytes, kept: set[str]
) -> None:
    # Arrange: an archive whose last write was cut by a crash (no chance to cut it back)
    arch = Archive(tmp_path / "archive" / "a.jsonl")
    arch.commit([{"v": 1, "kind": "order", "coid": "a", "order": {}}])
    with open(arch.path, "ab") as f:
        f.write(tail)
    # Act: the next commit appends after it
    arch.commit([{"v": 1, "kind": "order", "coid": "b", "order": {}}])
    # Assert: every line reads; nothing was glued onto the fragment
    assert set(read_archive(arch.path).orders) == kept
    assert arch.path.read_bytes().endswith(b"\n")


# -- what the archive's readers believe ----------------------------------------------------------


def archive_with(tmp: Path, *lines: str, mode: int = 0o600) -> Path:
    path = tmp / "archive" / "a.jsonl"
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines))
    os.chmod(path, mode)
    return path


ORDER_LINE = '{"v":1,"kind":"order","coid":"c1","order":{"token":"9","state":"FILLED"}}'


@pytest.mark.parametrize("bad, why", [
    ('{"v":1,"kind":"order","order":{"token":"9"}}', "line 2 is not an order line"),
    ('{"v":1,"kind":"order","coid":"c2","order":{"token":9}}', "line 2 is not an order line"),
    ('{"v":1,"kind":"order","coid":"c2","order":"x"}', "line 2 is not an order line"),
    ('{"v":1,"kind":"fill","coid":"c1"}', "line 2 is not a fill line"),
    ('["not", "an", "object"]', "line 2 is not a JSON object"),
])
def test_read_archive_when_a_line_is_not_an_archive_line_then_error_names_it(
    tmp_path: Path, bad: str, why: str
) -> None:
    path = archive_with(tmp_path, ORDER_LINE, bad, ORDER_LINE)
    with pytest.raises(PruneError, match=why):
        read_archive(path)


def test_read_archive_when_file_writable_by_others_or_a_symlink_then_refused(
    tmp_path: Path
) -> None:
    """What another local user could have planted or replaced is never believed (fence
    recover raises the fence floor to the archive's highest token)."""
    path = archive_with(tmp_path, ORDER_LINE, mode=0o666)
    with pytest.raises(PruneError, match="writable by other users"):
        read_archive(path)
    os.chmod(path, 0o600)
    assert read_archive(path).orders["c1"]["order"]["token"] == "9"
    link = tmp_path / "archive" / "link.jsonl"
    link.symlink_to(path)
    with pytest.raises(PruneError, match="symlink"):
        read_archive(link)


def test_fence_recover_when_archive_malformed_then_one_line_and_fence_not_reseeded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the default archive of this host for account paper:t, with a line that is
    # not an order line; the account's history lost (no epoch)
    from guardrails.statedir import state_dir
    from tests.conftest import subprocess_env

    keys = account_keys()
    path = state_dir() / "archive" / "paper+t.jsonl"
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_text(ORDER_LINE + "\n" + '{"v":1,"kind":"order","order":{}}\n')
    os.chmod(path, 0o600)
    # Act
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "guardrails", "fence", "recover",
                           "--redis-url", redis_server.url, "--account", "paper:t",
                           "--no-venue"], env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
    # Assert: exit 1, one line naming the file and line, no traceback, nothing re-seeded
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert f"archive {path}: line 2 is not an order line" in done.stderr, done.stderr
    raw = redis.Redis(port=redis_server.port)
    assert raw.get(keys.fence) is None and raw.get(keys.epoch) is None
    raw.close()
