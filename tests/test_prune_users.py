"""The prune archive and its lock against another local user: two real OS users.

The attacker is a throwaway user (``tests/oskit.py``) in a shared sticky directory (as
``/tmp``); the victim is this (root) test process running ``prune.Archive``. What must
hold: an archive directory another user made (or a symlink planted where it belongs) is
refused with an error naming it, and nothing is written through it; in the victim's own
0700 directory the other user can neither open the lock file (to hold the flock and
stall every sweep) nor plant a file of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.prune import Archive, PruneError
from tests.oskit import OsUser, as_user, python, shared_sticky_dir, throwaway_user

LINE = {"v": 1, "kind": "fill", "fill_id": "f-1", "coid": "c1", "pruned_at_ms": 1}


@pytest.fixture
def mallory() -> Iterator[OsUser]:
    with throwaway_user("grprn") as user:
        yield user


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_sticky_dir("gr-shared-prune-") as base:
        yield base


MAKE_DIR = "import os, sys; os.mkdir(sys.argv[1], 0o777); os.chmod(sys.argv[1], 0o777)"
MAKE_LINK = "import os, sys; os.mkdir(sys.argv[2], 0o777); os.symlink(sys.argv[2], sys.argv[1])"


@pytest.mark.parametrize("plant", ["directory", "symlink"])
def test_archive_when_another_user_planted_its_directory_then_refused_and_nothing_written(
    mallory: OsUser, shared: Path, plant: str,
) -> None:
    where = shared / "archive"
    argv = python(MAKE_DIR, str(where)) if plant == "directory" else python(
        MAKE_LINK, str(where), str(shared / "mallory-own"))
    assert as_user(mallory, argv).returncode == 0
    archive = Archive(where / "orders.jsonl")
    # Act / Assert: every way in refuses, naming the directory
    with pytest.raises(PruneError, match="not a directory of this user"):
        archive.try_lock()
    with pytest.raises(PruneError, match="not a directory of this user"):
        archive.stage([LINE])
    with pytest.raises(PruneError, match="not a directory of this user"):
        archive.commit([LINE])
    # nothing of root's was written where mallory can read it
    assert sorted(p.name for p in (shared / ("archive" if plant == "directory"
                                              else "mallory-own")).iterdir()) == []


TRY_LOCK = """
import errno, fcntl, os, sys
d = sys.argv[1]
out = []
for name in ("orders.jsonl.lock", "orders.jsonl"):
    try:
        fd = os.open(os.path.join(d, name), os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out.append(name + ":held")
    except OSError as e:
        out.append(name + ":" + errno.errorcode[e.errno])
try:
    os.open(os.path.join(d, "planted"), os.O_WRONLY | os.O_CREAT, 0o600)
    out.append("planted:ok")
except OSError as e:
    out.append("planted:" + errno.errorcode[e.errno])
print(" ".join(out))
"""


def test_archive_lock_when_another_user_tries_it_then_denied_and_sweeps_go_on(
    mallory: OsUser, shared: Path,
) -> None:
    # Arrange: root's archive, written and locked once, its lock released
    archive = Archive(shared / "root-archive" / "orders.jsonl")
    lock = archive.try_lock()
    assert lock is not None
    archive.stage([LINE])
    archive.commit([LINE])
    lock.release()
    assert os.stat(archive.path.parent).st_mode & 0o777 == 0o700
    # Act: mallory tries to take the lock (it would stall every sweep) and to plant a file
    res = as_user(mallory, python(TRY_LOCK, str(archive.path.parent)))
    # Assert: the 0700 directory keeps her out of both; root's next sweep takes the lock
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["orders.jsonl.lock:EACCES", "orders.jsonl:EACCES",
                                  "planted:EACCES"], res.stdout
    again = archive.try_lock()
    assert again is not None
    again.release()
    assert sorted(p.name for p in archive.path.parent.iterdir()) == [
        "orders.jsonl", "orders.jsonl.lock"]
