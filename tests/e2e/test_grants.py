"""``enforce.grants``: the supervisor's answer to "would Landlock let the tree open this?"
must be the kernel's. Each row is asked of both: a child applies the ruleset and tries
the open for real; ``Grants.allows`` is asked the same from outside the domain."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agentsh.enforce import landlock
from agentsh.enforce.filecalls import renameat2
from agentsh.enforce.grants import RENAME_EXCHANGE, Grants, rename_refusal
from agentsh.enforce.landlock import Rule, Ruleset
from agentsh.enforce.standin import landlock_needs

pytestmark = pytest.mark.e2e

RW = landlock.FS_READ_FILE | landlock.FS_WRITE_FILE
CREATE = landlock.FS_MAKE_REG
HANDLED = RW | CREATE | landlock.FS_TRUNCATE | landlock.FS_READ_DIR


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not landlock.probe().available:
        pytest.skip("Landlock is unavailable on this kernel")
    base = tmp_path_factory.mktemp("grants")
    for d in ("open/deep/er", "closed", "rdonly"):
        (base / d).mkdir(parents=True)
    for f in ("open/a", "open/deep/er/b", "closed/c", "rdonly/d", "closed/single"):
        (base / f).write_text("x")
    return base


def _ruleset(base: Path) -> Ruleset:
    rules = (
        Rule(str(base), landlock.FS_READ_FILE | landlock.FS_READ_DIR, tree=True),
        Rule(str(base / "open"), RW | CREATE | landlock.FS_TRUNCATE, tree=True),
        Rule(str(base / "closed" / "single"), landlock.FS_WRITE_FILE, tree=False),
        Rule("/usr", landlock.FS_READ_FILE | landlock.FS_READ_DIR, tree=True),
    )
    return Ruleset(landlock.probe().abi, HANDLED, 0, rules)


# path (relative to the tree), open flags; Landlock allows rows 0-4, 6, 8 and 9
ROWS = [
    ("open/a", os.O_WRONLY),
    ("open/a", os.O_RDWR | os.O_TRUNC),
    ("open/deep/er/b", os.O_WRONLY),
    ("open/new", os.O_WRONLY | os.O_CREAT),
    ("open/deep/er/new", os.O_RDWR | os.O_CREAT),
    ("closed/c", os.O_WRONLY),
    ("closed/c", os.O_RDONLY),
    ("closed/new", os.O_WRONLY | os.O_CREAT),
    ("closed/single", os.O_WRONLY),
    ("closed/single", os.O_RDWR),
    ("closed/single", os.O_WRONLY | os.O_TRUNC),
    ("rdonly/d", os.O_RDWR),
    ("rdonly/new", os.O_RDONLY | os.O_CREAT),
]


def _kernel(ruleset: Ruleset, path: Path, flags: int) -> bool:
    """A child in the domain tries the open; a created file is removed again."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover — the child
        os.close(r)
        try:
            landlock.apply(ruleset)
            os.close(os.open(path, flags, 0o600))
            answer = b"y"
        except PermissionError:
            answer = b"n"
        except BaseException:  # noqa: BLE001
            answer = b"?"
        os.write(w, answer)
        os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert answer in (b"y", b"n"), f"the open of {path} failed otherwise"
    return answer == b"y"


@pytest.mark.parametrize(("rel", "flags"), ROWS, ids=[f"{p}-{f:o}" for p, f in ROWS])
def test_the_supervisor_answers_as_landlock_does(tree: Path, rel: str, flags: int) -> None:
    ruleset = _ruleset(tree)
    path = tree / rel
    exists = path.exists()
    parent = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        st = os.stat(path, follow_symlinks=False) if exists else None
        ours = Grants(ruleset).allows(os.getpid(), parent, st, landlock_needs(flags, exists=exists))
    finally:
        os.close(parent)
    theirs = _kernel(ruleset, path, flags)
    if not exists and path.exists():
        path.unlink()
    assert ours == theirs, f"grants says {ours}, Landlock says {theirs}"
    assert theirs == (ROWS.index((rel, flags)) in {0, 1, 2, 3, 4, 6, 8, 9})


def test_a_moved_directory_is_walked_again_after_forget(tree: Path) -> None:
    """Walks are remembered per directory; the monitor forgets them at every rename or
    rmdir it sees, after which a moved directory gets the answer of its new place."""
    ruleset, pid = _ruleset(tree), os.getpid()
    grants = Grants(ruleset)
    (tree / "open" / "mover").mkdir()
    fd = os.open(tree / "open" / "mover", os.O_PATH | os.O_DIRECTORY)
    try:
        assert grants.allows(pid, fd, None, CREATE)
        os.rename(tree / "open" / "mover", tree / "closed" / "mover")
        assert grants.allows(pid, fd, None, CREATE)  # remembered
        grants.forget()
        assert not grants.allows(pid, fd, None, CREATE)
    finally:
        os.close(fd)
        (tree / "closed" / "mover").rmdir()
    assert not _kernel(ruleset, tree / "closed" / "mover-new", os.O_WRONLY | os.O_CREAT)


# Renames: (from, to, flags) relative to the tree, under a ruleset with two writable trees,
# "open" (also TRUNCATE) and "spare" (not), and the read-only rest.
MOVE = landlock.FS_REMOVE_FILE | landlock.FS_REMOVE_DIR | landlock.FS_MAKE_REG
MOVE |= landlock.FS_MAKE_DIR | landlock.FS_REFER | RW
RENAMES = [
    ("r/open/a", "r/open/b", 0, 0),  # same directory
    ("r/open/a", "r/open/sub/a", 0, 0),  # across directories, same grants
    ("r/open/a", "r/spare/a", 0, 0),  # to fewer rights
    ("r/spare/c", "r/open/c", 0, errno.EXDEV),  # would gain TRUNCATE
    ("r/open/a", "r/closed/a", 0, errno.EACCES),  # no MAKE_REG there
    ("r/closed/d", "r/open/d", 0, errno.EACCES),  # no REMOVE_FILE there
    ("r/open/a", "r/spare/e", RENAME_EXCHANGE, errno.EXDEV),  # e would gain TRUNCATE
]


def _rename_ruleset(base: Path) -> Ruleset:
    rules = (
        Rule(str(base), landlock.FS_READ_FILE | landlock.FS_READ_DIR, tree=True),
        Rule(str(base / "r" / "open"), MOVE | landlock.FS_TRUNCATE, tree=True),
        Rule(str(base / "r" / "spare"), MOVE, tree=True),
    )
    return Ruleset(landlock.probe().abi, HANDLED | MOVE, 0, rules)


def _kernel_rename(ruleset: Ruleset, old: Path, new: Path, flags: int) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover — the child
        os.close(r)
        err = 0
        try:
            landlock.apply(ruleset)
            renameat2(-100, bytes(old), -100, bytes(new), flags)
        except OSError as e:
            err = e.errno or 255
        os.write(w, bytes([err]))
        os._exit(0)
    os.close(w)
    answer = os.read(r, 1)[0]
    os.close(r)
    os.waitpid(pid, 0)
    return answer


@pytest.mark.parametrize(("old", "new", "flags", "expected"), RENAMES)
def test_renames_are_judged_as_landlock_judges_them(
    tmp_path: Path, old: str, new: str, flags: int, expected: int
) -> None:
    if not landlock.probe().available:
        pytest.skip("Landlock is unavailable on this kernel")
    for d in ("r/open/sub", "r/spare", "r/closed"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("r/open/a", "r/spare/c", "r/spare/e", "r/closed/d"):
        (tmp_path / f).write_text(f)
    ruleset = _rename_ruleset(tmp_path)
    src, dst = tmp_path / old, tmp_path / new
    odir = os.open(src.parent, os.O_PATH | os.O_DIRECTORY)
    ndir = os.open(dst.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        ns = os.stat("/proc/self/ns/mnt").st_ino
        grants = Grants(ruleset)
        olds, news = (odir, src.name.encode()), (ndir, dst.name.encode())
        ours = rename_refusal(grants, os.getpid(), olds, news, flags=flags, ns=ns)
    finally:
        os.close(odir)
        os.close(ndir)
    theirs = _kernel_rename(ruleset, src, dst, flags)
    assert (ours, theirs) == (expected, expected)
