"""``enforce.grants``: the supervisor's answer to "would Landlock let the tree open this?"
must be the kernel's. Each row is asked of both: a child applies the ruleset and tries
the open for real; ``Grants.allows`` is asked the same from outside the domain."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
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


def _in_domain(ruleset: Ruleset, action: Callable[[], object]) -> int:
    """Run ``action`` in a child inside the domain: 0, or the errno it failed with."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover — the child
        os.close(r)
        err = 0
        try:
            landlock.apply(ruleset)
            action()
        except OSError as e:
            err = e.errno or 255
        except BaseException:  # noqa: BLE001 — reported as 255
            err = 255
        os.write(w, bytes([err]))
        os._exit(0)
    os.close(w)
    answer = os.read(r, 1)[0]
    os.close(r)
    os.waitpid(pid, 0)
    return answer


def _kernel(ruleset: Ruleset, path: Path, flags: int) -> bool:
    """A child in the domain tries the open (a created file is removed again)."""
    err = _in_domain(ruleset, lambda: os.close(os.open(path, flags, 0o600)))
    assert err in (0, errno.EACCES), f"the open of {path} failed otherwise: {err}"
    return err == 0


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


# Renames and links: (call, from, to, flags, the errno expected) relative to the tree,
# under a ruleset with two writable trees, "open" (also TRUNCATE) and "spare" (not), and
# the read-only rest.
MOVE = landlock.FS_REMOVE_FILE | landlock.FS_REMOVE_DIR | landlock.FS_MAKE_REG
MOVE |= landlock.FS_MAKE_DIR | landlock.FS_REFER | RW
MOVES = [
    ("rename", "r/open/a", "r/open/b", 0, 0),  # same directory
    ("rename", "r/open/a", "r/open/sub/a", 0, 0),  # across directories, same grants
    ("rename", "r/open/a", "r/spare/a", 0, 0),  # to fewer rights
    ("rename", "r/spare/c", "r/open/c", 0, errno.EXDEV),  # would gain TRUNCATE
    ("rename", "r/open/a", "r/closed/a", 0, errno.EACCES),  # no MAKE_REG there
    ("rename", "r/closed/d", "r/open/d", 0, errno.EACCES),  # no REMOVE_FILE there
    ("rename", "r/open/a", "r/spare/e", RENAME_EXCHANGE, errno.EXDEV),  # e would gain
    ("link", "r/open/a", "r/open/sub/a2", 0, 0),
    ("link", "r/open/a", "r/spare/a2", 0, 0),  # to fewer rights
    ("link", "r/spare/c", "r/open/c2", 0, errno.EXDEV),  # would gain TRUNCATE
    ("link", "r/open/a", "r/closed/a2", 0, errno.EACCES),  # no MAKE_REG there
    ("link", "r/open/a", "r/spare/e", 0, errno.EEXIST),
]


def _rename_ruleset(base: Path) -> Ruleset:
    rules = (
        Rule(str(base), landlock.FS_READ_FILE | landlock.FS_READ_DIR, tree=True),
        Rule(str(base / "r" / "open"), MOVE | landlock.FS_TRUNCATE, tree=True),
        Rule(str(base / "r" / "spare"), MOVE, tree=True),
    )
    return Ruleset(landlock.probe().abi, HANDLED | MOVE, 0, rules)


@pytest.mark.parametrize("row", MOVES, ids=[f"{c}-{o}-{n}-{f}" for c, o, n, f, _ in MOVES])
def test_renames_and_links_are_judged_as_landlock_judges_them(
    tmp_path: Path, row: tuple[str, str, str, int, int]
) -> None:
    call, old, new, flags, expected = row
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
    link = call == "link"
    try:
        ns = os.stat("/proc/self/ns/mnt").st_ino
        olds, news = (odir, src.name.encode()), (ndir, dst.name.encode())
        ours = rename_refusal(
            Grants(ruleset), os.getpid(), olds, news, flags=flags, ns=ns, link=link
        )
    finally:
        os.close(odir)
        os.close(ndir)
    if link:
        theirs = _in_domain(ruleset, lambda: os.link(src, dst))
    else:
        theirs = _in_domain(ruleset, lambda: renameat2(-100, bytes(src), -100, bytes(dst), flags))
    assert (ours, theirs) == (expected, expected)
