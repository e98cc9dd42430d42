"""openat2's resolve flags, honoured by the file monitor.

``RESOLVE_BENEATH``, ``RESOLVE_NO_SYMLINKS``, ``RESOLVE_NO_MAGICLINKS``,
``RESOLVE_NO_XDEV`` and ``RESOLVE_CACHED`` restrict the lookup itself: a program that
confines untrusted names to a directory with them (Go's ``os.Root``, Rust's cap-std)
relies on the kernel to fail an escape with EXDEV or ELOOP. The monitor resolves a path
its own way (``filecalls.resolve_open``) and carries the open out itself, so it must also
look the path up the way the kernel would for the caller — from the caller's very dirfd
or cwd, with the caller's flags — and answer as the kernel would. (``RESOLVE_IN_ROOT`` is
refused before this: ``fileguard``.)
"""

from __future__ import annotations

import errno
import os
import stat as _stat
from typing import Final

from agentsh.enforce import filemon, image
from agentsh.enforce.filecalls import (
    AT_FDCWD,
    RESOLVE_IN_ROOT,
    OpenCall,
    Refused,
    Target,
    directory,
)
from agentsh.enforce.tracee import ExecArgs

_PROBE: Final = os.O_PATH | os.O_CLOEXEC


def restricts(call: OpenCall) -> bool:
    """``call`` is an openat2 whose resolve flags restrict the lookup."""
    return bool(call.resolve & ~RESOLVE_IN_ROOT)


def check(tid: int, call: OpenCall, target: Target, same: bool | None) -> None:
    """Look ``call``'s path up again as the kernel would for thread ``tid`` with its
    resolve flags (openat2(2) with O_PATH: no side effect), and require it to reach the
    ``target`` the monitor resolved and checked — for a file to be created, the
    directory it is created in.

    Raises:
        OSError: what the kernel answers the lookup (EXDEV, ELOOP, EAGAIN, ENOENT, ...),
            or EACCES when it reaches another object than the one checked.
        Refused: an absolute path of a process whose root or mounts differ from ours.
    """
    path = call.path
    if path.startswith(b"/") and same is not True:
        why = "openat2 with resolve flags on an absolute path in another root or mount view"
        raise Refused("file-openat2-resolve", why)
    # the caller's own dirfd or cwd: "beneath" and "cross a mount" mean what they mean for it
    relative = ExecArgs(call.dirfd, path, (), 0)
    start = AT_FDCWD if path.startswith(b"/") else image.start_dir(tid, relative)
    try:
        if target.st is not None:
            follow = not (call.flags & filemon.O_NOFOLLOW or _exclusive(call.flags))
            flags = _PROBE | (0 if follow else os.O_NOFOLLOW)
            probe = image.as_caller(image.openat2, start, path, flags, call.resolve)
            want = target.st
        else:  # a file to create: the directory it goes in
            with directory(tid, os.path.dirname(target.path), same) as up:
                want = os.fstat(up)
            head = os.path.dirname(path.rstrip(b"/")) or b"."
            flags = _PROBE | os.O_DIRECTORY
            probe = image.as_caller(image.openat2, start, head, flags, call.resolve)
        try:
            got = os.fstat(probe)
        finally:
            os.close(probe)
    finally:
        if start != AT_FDCWD:
            os.close(start)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino) or (
        _stat.S_IFMT(got.st_mode) != _stat.S_IFMT(want.st_mode)
    ):
        raise OSError(errno.EACCES, "the path changed during the check")


def _exclusive(flags: int) -> bool:
    return bool(flags & filemon.O_CREAT and flags & filemon.O_EXCL)
