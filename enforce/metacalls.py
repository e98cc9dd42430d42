"""The allowed calls that make an entry or change a file's metadata, carried out by the
supervisor in the caller's stead: mkdir/mkdirat and symlink/symlinkat in the directory
checked, truncate and the chmod and chown families on the object checked (held by an
O_PATH fd) — as the caller (``enforce.identity``: its ids, groups, capabilities and, for
mkdir, umask) and within the tree's Landlock rules (``enforce.grants``: MAKE_DIR,
MAKE_SYM, TRUNCATE; chmod and chown are not Landlock's). The syscall never runs, so a
racing thread cannot swap another path in after the check.

Semantics kept: a symlink's target is the string the caller passed (read once; it is
resolved again at every use, and judged then); chmod of a symlink itself (fchmodat2 with
AT_SYMLINK_NOFOLLOW) is EOPNOTSUPP, as Linux answers; chown with -1 leaves that id.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as _stat
from typing import TYPE_CHECKING, Final

from agentsh.enforce import filecalls, landlock, tracee

if TYPE_CHECKING:
    from agentsh.enforce.filecalls import Target
    from agentsh.enforce.identity import Identity
    from agentsh.enforce.standin import Opener

NR_MKDIR, NR_MKDIRAT, NR_SYMLINK, NR_SYMLINKAT = 83, 258, 88, 266
MAKES: Final = frozenset({NR_MKDIR, NR_MKDIRAT, NR_SYMLINK, NR_SYMLINKAT})
NR_TRUNCATE: Final = 76
CHMODS: Final = frozenset({90, 91, 268, 452})  # chmod, fchmod, fchmodat, fchmodat2
CHOWNS: Final = frozenset({92, 93, 94, 260})  # chown, fchown, lchown, fchownat
CHANGES: Final = CHMODS | CHOWNS | {NR_TRUNCATE}
_AT_EMPTY_PATH: Final = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def make(
    opener: Opener,
    tid: int,
    call: tuple[int, tuple[int, ...]],
    entry: tuple[int, bytes],
    *,
    who: Identity | None,
    status: bytes,
    same: bool | None,
) -> None:
    """Carry out mkdir/mkdirat or symlink/symlinkat (``call``: number and arguments) of
    ``entry`` (directory fd, name).

    Raises:
        OSError: Landlock's answer (EACCES), or what the call itself answered.
    """
    nr, args = call
    dirfd, name = entry
    if nr in (NR_MKDIR, NR_MKDIRAT):
        mode = (args[1] if nr == NR_MKDIR else args[2]) & 0o7777
        if not opener.allows_in(tid, dirfd, landlock.FS_MAKE_DIR, same):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        with opener.umask_of(status), opener.taken_on(who):
            os.mkdir(name, mode, dir_fd=dirfd)
        return
    target = filecalls.read_path(tid, args[0])
    if not opener.allows_in(tid, dirfd, landlock.FS_MAKE_SYM, same):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    with opener.taken_on(who):
        os.symlink(target, name, dir_fd=dirfd)


def change(
    opener: Opener,
    tid: int,
    call: tuple[int, tuple[int, ...]],
    held: Target,
    *,
    who: Identity | None,
    same: bool | None,
) -> None:
    """Carry out truncate, a chmod or a chown (``call``: number and arguments) on the
    object ``held`` (its O_PATH fd and stat).

    Raises:
        OSError: Landlock's answer (EACCES), or what the call itself answered.
    """
    nr, args = call
    assert held.fd is not None
    assert held.st is not None
    here = f"/proc/self/fd/{held.fd}"
    if nr == NR_TRUNCATE:
        if not opener.granted(tid, held, landlock.FS_TRUNCATE, same):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        with opener.taken_on(who):
            os.truncate(here, tracee.s64(args[1]))
    elif nr in CHMODS:
        if _stat.S_ISLNK(held.st.st_mode):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        mode = (args[1] if nr in (90, 91) else args[2]) & 0o7777
        with opener.taken_on(who):
            os.chmod(here, mode)
    else:
        uid, gid = (args[1], args[2]) if nr != 260 else (args[2], args[3])
        with opener.taken_on(who):
            _fchownat(held.fd, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF)


def _fchownat(fd: int, uid: int, gid: int) -> None:
    """fchownat(2) of the file ``fd`` holds (AT_EMPTY_PATH: an O_PATH fd, a symlink
    too); (uid_t)-1 leaves that id."""
    ret = _libc.fchownat(fd, b"", ctypes.c_uint(uid), ctypes.c_uint(gid), _AT_EMPTY_PATH)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
