"""Landlock's answer for one open, worked out by the supervisor before it opens a file in
a tracee's stead (``enforce.standin``): the supervisor is not in the tree's Landlock
domain, so what it opens for the tree must be what Landlock would have let the tree open.

Landlock grants a right on a file when a rule of the domain on the file itself (file
rights only) or on a directory above it — walking up through mount points to the root of
the mount namespace — grants it (Documentation/userspace-api/landlock.rst, "Filesystem
flags"). :class:`Grants` rebuilds that for the one ruleset the frontend applied:

- the rules' inodes, found through the tracee's root (``/proc/TID/root``: a FUSE view or
  another mount namespace is seen as the tree sees it), remembered per mount namespace.
  A rule whose path is missing is skipped, as ``landlock.apply`` skips it; a directory
  named by a file-only rule grants nothing, a file named by a tree rule file rights only;
- a walk up from the directory the open starts in (``..``, which crosses mount points as
  Landlock does), collecting the rights of every rule met.

Rules are looked up when first needed, not when Landlock was applied: a rule directory
replaced meanwhile lies inside a tree the tree can write, whose own grant covers it.

A walk costs ~60 us; its result is remembered per directory (at most :data:`DIRS_MAX`)
until :meth:`Grants.forget`, which the monitor calls at every rename and rmdir it sees (a
directory moved, or an inode number reused, would change the answer). A directory moved
by a process outside the tree is not seen: the remembered answer is then the one for its
old place, until the next rename or rmdir in the tree.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
from typing import Final

from agentsh.enforce import landlock
from agentsh.enforce.landlock import Ruleset

_PATH_DIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_DEPTH_MAX: Final = 4096
DIRS_MAX: Final = 4096
_Key = tuple[int, int]


class Grants:
    """Landlock's decisions for ``ruleset``'s domain, asked per open."""

    def __init__(self, ruleset: Ruleset) -> None:
        self.ruleset = ruleset
        self.tables: dict[int, dict[_Key, int]] = {}  # mount namespace inode -> rules
        self.dirs: dict[tuple[int, int, int], int] = {}  # (namespace, dev, ino) -> walk

    def allows(
        self,
        tid: int,
        parent: int,
        entry: os.stat_result | None,
        need: int,
        *,
        ns: int | None = None,
    ) -> bool:
        """Landlock lets thread ``tid`` have the rights ``need`` on the entry ``entry``
        (its stat; None for one about to be created) of directory ``parent`` (an fd).
        ``ns``: the thread's mount namespace inode, when the caller knows it. Rights the
        ruleset does not handle are always granted."""
        need &= self.ruleset.handled_fs
        if not need:
            return True
        ns = ns if ns is not None else os.stat(f"/proc/{tid}/ns/mnt").st_ino
        got = 0
        if entry is not None and not _stat.S_ISDIR(entry.st_mode):
            got = self._table(tid, ns).get((entry.st_dev, entry.st_ino), 0) & landlock.FILE_RIGHTS
        return need & ~(got | self.beneath(tid, parent, ns)) == 0

    def beneath(self, tid: int, directory: int, ns: int) -> int:
        """The rights Landlock grants beneath ``directory`` (an fd): those of the rules on
        it and on every directory above it (remembered)."""
        up = os.fstat(directory)
        key = (ns, up.st_dev, up.st_ino)
        walked = self.dirs.get(key)
        if walked is None:
            if len(self.dirs) >= DIRS_MAX:
                self.dirs.clear()
            walked = self.dirs[key] = _walk(directory, self._table(tid, ns))
        return walked

    def _table(self, tid: int, ns: int) -> dict[_Key, int]:
        table = self.tables.get(ns)
        if table is None:
            table = self.tables[ns] = _rules(tid, self.ruleset)
        return table

    def forget(self) -> None:
        """Drop every remembered walk (a directory was renamed or removed)."""
        self.dirs.clear()


def _rules(tid: int, ruleset: Ruleset) -> dict[_Key, int]:
    """(device, inode) -> rights of every rule, as the tracee's root shows its path."""
    table: dict[_Key, int] = {}
    for rule in ruleset.rules:
        try:
            st = os.stat(f"/proc/{tid}/root{rule.path}")
        except OSError:
            continue
        is_dir = _stat.S_ISDIR(st.st_mode)
        if is_dir and not rule.tree:
            continue
        access = rule.access if is_dir else rule.access & landlock.FILE_RIGHTS
        key = (st.st_dev, st.st_ino)
        table[key] = table.get(key, 0) | access
    return table


def _walk(start: int, table: dict[_Key, int]) -> int:
    """The rights of the rules on directory ``start`` and every directory above it."""
    got = 0
    cur = os.dup(start)
    try:
        for _ in range(_DEPTH_MAX):
            st = os.fstat(cur)
            key = (st.st_dev, st.st_ino)
            got |= table.get(key, 0)
            up = os.open("..", _PATH_DIR, dir_fd=cur)
            ust = os.fstat(up)
            os.close(cur)
            cur = up
            if (ust.st_dev, ust.st_ino) == key:  # the root: ".." is itself
                break
    finally:
        os.close(cur)
    return got


# --------------------------------------------------------------------------- renames

RENAME_NOREPLACE, RENAME_EXCHANGE = 0x1, 0x2
_MAKE: Final = (
    (_stat.S_ISDIR, landlock.FS_MAKE_DIR),
    (_stat.S_ISREG, landlock.FS_MAKE_REG),
    (_stat.S_ISLNK, landlock.FS_MAKE_SYM),
    (_stat.S_ISFIFO, landlock.FS_MAKE_FIFO),
    (_stat.S_ISSOCK, landlock.FS_MAKE_SOCK),
    (_stat.S_ISCHR, landlock.FS_MAKE_CHAR),
    (_stat.S_ISBLK, landlock.FS_MAKE_BLOCK),
)


def _make(st: os.stat_result | None) -> int:
    """The right to make an entry like ``st`` (0 for none)."""
    if st is None:
        return 0
    return next((right for test, right in _MAKE if test(st.st_mode)), 0)


def _remove(st: os.stat_result | None) -> int:
    if st is None:
        return 0
    return landlock.FS_REMOVE_DIR if _stat.S_ISDIR(st.st_mode) else landlock.FS_REMOVE_FILE


def rename_refusal(
    grants: Grants,
    tid: int,
    old: tuple[int, bytes],
    new: tuple[int, bytes],
    *,
    flags: int,
    ns: int,
    link: bool = False,
) -> int:
    """The errno Landlock gives renameat2(2) of entry ``old`` (directory fd, name) to
    ``new`` with ``flags`` — or, ``link``, linkat(2) of it there — or 0
    (security/landlock/fs.c, current_check_refer_path): removing from the old directory
    (not for a link) and making in the new one (both ways for RENAME_EXCHANGE, and
    removing what a rename replaces) must be granted, else EACCES; across directories,
    REFER must be granted on both sides and the entry must not gain a right it did not
    have where it was, else EXDEV (always EXDEV when the ruleset does not handle REFER,
    as before ABI 2). A missing entry raises ENOENT, as the kernel."""
    (odir, oname), (ndir, nname) = old, new
    src = os.stat(oname, dir_fd=odir, follow_symlinks=False)
    try:
        dst: os.stat_result | None = os.stat(nname, dir_fd=ndir, follow_symlinks=False)
    except FileNotFoundError:
        dst = None
    if link and dst is not None:
        return errno.EEXIST
    exchange = bool(flags & RENAME_EXCHANGE)
    handled = grants.ruleset.handled_fs
    need_old = (0 if link else _remove(src) | (_make(dst) if exchange else 0)) & handled
    need_new = (_make(src) | _remove(dst)) & handled
    at_old, at_new = grants.beneath(tid, odir, ns), grants.beneath(tid, ndir, ns)
    if need_old & ~at_old or need_new & ~at_new:
        return errno.EACCES
    ost, nst = os.fstat(odir), os.fstat(ndir)
    if (ost.st_dev, ost.st_ino) == (nst.st_dev, nst.st_ino):
        return 0
    if not handled & landlock.FS_REFER or not at_old & at_new & landlock.FS_REFER:
        return errno.EXDEV
    moved = [(src, at_new & ~at_old)] + ([(dst, at_old & ~at_new)] if exchange else [])
    for st, gained in moved:
        kinds = handled if st is None or _stat.S_ISDIR(st.st_mode) else landlock.FILE_RIGHTS
        if gained & kinds & ~landlock.FS_REFER:
            return errno.EXDEV
    return 0
