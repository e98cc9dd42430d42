"""The image an exec would run, found the way the kernel will find it: the path resolved
in the tracee's context (its root, cwd or execveat dirfd, ``..``, symlinks, and
``/proc/self`` meaning the tracee, never the supervisor), the file's identity, and its
``#!`` interpreter line parsed as fs/binfmt_script.c does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import stat as _stat
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agentsh.enforce import elf
from agentsh.enforce.record import dataclass
from agentsh.enforce.tracee import (
    AT_EMPTY_PATH,
    AT_FDCWD,
    AT_SYMLINK_NOFOLLOW,
    ExecArgs,
    Unreadable,
    tgid,
)

BINPRM_BUF_SIZE = 256
MAX_INTERPRETERS = 5  # fs/exec.c: deeper #! chains fail with ELOOP
NR_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Image:
    """A file an exec would open: canonical path (as the supervisor sees it) and identity."""

    path: str
    dev: int
    ino: int
    head: bytes  # the first BINPRM_BUF_SIZE bytes
    trusted_alias: bool = False  # see trusted_alias()
    sig: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # dev, ino, size, mtime, ctime (ns)
    loader: bool = False  # a dynamic loader, whatever its name (enforce.elf)


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_openat2_fn = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    use_errno=True,
)(("syscall", ctypes.CDLL(None, use_errno=True)))
_HOWS: dict[tuple[int, int], _OpenHow] = {}


def openat2(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
    """openat2(2) with ``flags`` and the RESOLVE_* flags ``resolve`` (mode 0). Here the
    resolution passes RESOLVE_NO_MAGICLINKS, which keeps /proc/self/... from meaning *us*.

    Raises:
        OSError: what the kernel answered.
    """
    how = _HOWS.get((flags, resolve))
    if how is None:
        how = _HOWS[flags, resolve] = _OpenHow(flags, 0, resolve)
    fd = int(_openat2_fn(NR_OPENAT2, dirfd, path, ctypes.addressof(how), ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


@functools.cache
def _self_view() -> tuple[str, int, int]:
    root = os.stat("/")
    return os.readlink("/proc/self/ns/mnt"), root.st_dev, root.st_ino


@functools.cache
def _procfs_dev() -> int:
    return os.stat("/proc").st_dev


def _same_view(tid: int) -> bool:
    """The tracee sees our filesystem: same mount namespace and same root directory."""
    try:
        ns = os.readlink(f"/proc/{tid}/ns/mnt")
        root = os.stat(f"/proc/{tid}/root")
    except OSError:
        return False
    return (ns, root.st_dev, root.st_ino) == _self_view()


_PATH = os.O_PATH | os.O_CLOEXEC
_DIR = _PATH | os.O_DIRECTORY


def start_dir(tid: int, call: ExecArgs) -> int:
    """An O_PATH fd of the directory a relative ``call.path`` starts from: the tracee's
    cwd or its dirfd (the same directory and mount)."""
    base = b"cwd" if call.dirfd == AT_FDCWD else b"fd/%d" % call.dirfd
    return os.open(b"/proc/%d/%s" % (tid, base), _DIR)


def open_target(tid: int, call: ExecArgs, *, follow: bool = True, same: bool | None = None) -> int:
    """An O_PATH fd of what ``call`` names, resolved as the tracee's kernel would: from its
    root, cwd or dirfd, with ``/proc/self`` meaning the tracee. ``same``: the caller knows
    the tracee shares our root and mount namespace (None: find out)."""
    if not call.path:
        if not call.flags & AT_EMPTY_PATH:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if call.dirfd == AT_FDCWD:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return os.open(b"/proc/%d/fd/%d" % (tid, call.dirfd), _PATH)
    if same if same is not None else _same_view(tid):
        flags = _PATH if follow else _PATH | os.O_NOFOLLOW
        try:
            if call.path.startswith(b"/"):
                return as_caller(openat2, AT_FDCWD, call.path, flags, RESOLVE_NO_MAGICLINKS)
            start = start_dir(tid, call)
            try:
                return as_caller(openat2, start, call.path, flags, RESOLVE_NO_MAGICLINKS)
            finally:
                os.close(start)
        except OSError as err:
            # ELOOP: a loop, or a magic link such as /proc/self/fd/3. ENOENT: possibly a
            # path through /proc/self or /dev/fd, which here named *our* process (whose fd
            # N may not exist): resolve it again in the tracee's context.
            if err.errno not in (errno.ELOOP, errno.ENOENT):
                raise
    return _walk(tid, call, follow)


def _walk(tid: int, call: ExecArgs, follow: bool) -> int:
    """Resolve ``call.path`` one component at a time in the tracee's context: its root
    (``..`` stops there), ``/proc/self`` and ``/proc/thread-self`` as the tracee's,
    procfs magic links (``fd/N``, ``exe``, ``root``, ``cwd``) followed by opening them."""
    root = os.open(b"/proc/%d/root" % tid, _DIR)
    try:
        cur = os.dup(root) if call.path.startswith(b"/") else start_dir(tid, call)
        return _Walk(tid, root, cur).run(call.path, follow)
    finally:
        os.close(root)


def _parts(path: bytes) -> list[bytes]:
    return [p for p in reversed(path.split(b"/")) if p not in (b"", b".")]


class _Walk:
    """One resolution; owns ``cur`` (the directory reached so far), closed on error."""

    def __init__(self, tid: int, root: int, cur: int) -> None:
        self.tid, self.root, self.cur = tid, root, cur
        rst = os.fstat(root)
        self.root_id = (rst.st_dev, rst.st_ino)

    def move(self, fd: int) -> None:
        os.close(self.cur)
        self.cur = fd

    def run(self, path: bytes, follow: bool) -> int:
        try:
            todo, links = _parts(path), 0
            while todo:
                name = todo.pop()
                links += self.step(name, todo, follow or bool(todo))
                if links > 40:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        except BaseException:
            os.close(self.cur)
            raise
        return self.cur

    def step(self, name: bytes, todo: list[bytes], follow: bool) -> int:
        """Resolve one component (pushing symlink targets onto ``todo``); returns the
        number of symlinks followed (0 or 1)."""
        cst = os.fstat(self.cur)
        if name == b"..":
            if (cst.st_dev, cst.st_ino) != self.root_id:
                self.move(as_caller(os.open, b"..", _DIR, dir_fd=self.cur))
            return 0
        in_proc_root = cst.st_dev == _procfs_dev() and cst.st_ino == 1
        if in_proc_root and name in (b"self", b"thread-self"):
            pid = tgid(self.tid)
            todo += _parts(b"%d" % pid if name == b"self" else b"%d/task/%d" % (pid, self.tid))
            return 0
        nxt = as_caller(os.open, name, _PATH | os.O_NOFOLLOW, dir_fd=self.cur)
        if not follow or not _stat.S_ISLNK(os.fstat(nxt).st_mode):
            self.move(nxt)
            return 0
        os.close(nxt)
        if cst.st_dev == _procfs_dev() and not in_proc_root:
            owner = _fence_check(self.cur, name)
            # A magic link: jump. The kernel lets a process follow its own always, and
            # another process's only as ptrace_may_access says for its credentials.
            if owner == tgid(self.tid):
                self.move(os.open(name, _PATH, dir_fd=self.cur))
            else:
                self.move(as_caller(os.open, name, _PATH, dir_fd=self.cur))
            return 1
        target = as_caller(os.readlink, name, dir_fd=self.cur)
        if target.startswith(b"/"):
            self.move(os.dup(self.root))
        todo += _parts(target)
        return 1


class Fenced(OSError):
    """A resolution would follow a procfs magic link of a process outside the governed
    tree (:func:`fenced`). ``path``: the link, as the supervisor sees it."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EACCES, os.strerror(errno.EACCES))
        self.path = path


class _ForOneCall(Generic[T]):
    """A value set for the length of one trapped call's answer (``with``), restored on
    the way out: the supervisor resolves one call at a time, in one thread."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: T | None = None

    def holding(self, value: T | None) -> _Holding[T]:
        return _Holding(self, value)


class _Holding(Generic[T]):
    """:meth:`_ForOneCall.holding` (a class, not a generator: every call enters two)."""

    __slots__ = ("before", "slot", "value")

    def __init__(self, slot: _ForOneCall[T], value: T | None) -> None:
        self.slot, self.value = slot, value
        self.before: T | None = None  # set on the way in

    def __enter__(self) -> None:
        self.before, self.slot.value = self.slot.value, self.value

    def __exit__(self, *_exc: object) -> None:
        self.slot.value = self.before


_TakeOn = Callable[[], contextlib.AbstractContextManager[None]]
_member: _ForOneCall[Callable[[int], bool]] = _ForOneCall()  # see fenced
_caller: _ForOneCall[_TakeOn] = _ForOneCall()  # see looked_up_as
_PROC_PID = re.compile(r"/proc/(\d+)(?:/|$)")


def fenced(member: Callable[[int], bool]) -> contextlib.AbstractContextManager[None]:
    """Within the block, a resolution that would follow a procfs magic link (``fd/N``,
    ``cwd``, ``root``, ``exe``, ``map_files/…``, ``ns/…``) of a process ``member`` says
    is outside the governed tree raises :class:`Fenced`. Such a link hands over that
    process's open files, directories and namespaces, which the kernel lets root follow
    but never a process in a Landlock domain (ptrace_may_access): the supervisor, outside
    the domain, must not follow it for one either."""
    return _member.holding(member)


def _fence_check(dirfd: int, name: bytes) -> int | None:
    """The process the procfs directory ``dirfd`` belongs to (None: none we can name).
    Raise :class:`Fenced` when a fence is up and that process is outside the tree (or
    there is none)."""
    where = os.readlink(f"/proc/self/fd/{dirfd}")
    found = _PROC_PID.match(where)
    pid = int(found.group(1)) if found is not None else None
    member = _member.value
    if member is not None and (pid is None or not member(pid)):
        raise Fenced(f"{where}/{os.fsdecode(name)}")
    return pid


def looked_up_as(caller: _TakeOn | None) -> contextlib.AbstractContextManager[None]:
    """Within the block, every lookup of a path for a tracee (``open_target``, and the
    callers of :func:`as_caller`) runs in the context ``caller()`` returns: the tracee's
    credentials taken on (None: it has ours). The kernel then checks, as it would for
    the tracee, search permission on each directory passed, protected_symlinks, and
    access to another process's /proc links; a lookup made as the supervisor would
    reach files behind a directory the tracee may not enter (``/root``, 0700) — and
    the monitor reopens what it looked up. Where a lookup starts (the tracee's root,
    cwd or dirfd, opened through /proc) is opened as the supervisor: the kernel starts
    there without a check."""
    return _caller.holding(caller)


def as_caller(lookup: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """``lookup(*args, **kwargs)`` for the current tracee: as it (:func:`looked_up_as`)."""
    take_on = _caller.value
    if take_on is None:
        return lookup(*args, **kwargs)
    with take_on():
        return lookup(*args, **kwargs)


# Resolutions of absolute paths of tracees that share our view, keyed by the path and valid
# while the file opened for it is still the same, unchanged (dev, ino, size, mtime, ctime).
# Files changed in the last CACHE_SETTLE_NS are not cached: timestamps are coarse, so a
# quick rewrite could keep them.
_CACHE: dict[bytes, tuple[tuple[int, ...], Image]] = {}
CACHE_MAX = 2048
CACHE_SETTLE_NS = 2_000_000_000


def resolve(tid: int, call: ExecArgs, *, same_view: bool | None = None) -> Image:
    """The file the kernel will open for ``call``, with symlinks, ``..``,
    ``/proc/self/root/...``, the cwd and execveat's dirfd resolved. ``same_view``: the
    caller knows the tracee shares our root and mount namespace (None: find out).

    Raises:
        OSError: the errno the exec would fail with (ENOENT, ENOTDIR, ELOOP, EACCES for
            something that is not a regular file, ...).
    """
    same = _same_view(tid) if same_view is None else same_view
    follow = not call.flags & AT_SYMLINK_NOFOLLOW
    fd = open_target(tid, call, follow=follow, same=same)
    try:
        st = os.fstat(fd)
        if not _stat.S_ISREG(st.st_mode):
            code = errno.ELOOP if _stat.S_ISLNK(st.st_mode) else errno.EACCES
            raise OSError(code, os.strerror(code))  # what execve says about a non-file
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        key = call.path if same and follow and call.path.startswith(b"/") else None
        hit = _CACHE.get(key) if key else None
        if hit is not None and hit[0] == sig:
            return hit[1]
        canonical = os.readlink(b"/proc/self/fd/%d" % fd).decode("utf-8", "surrogateescape")
        head, loader = _head(fd, canonical)
    finally:
        os.close(fd)
    alias = os.path.basename(call.path) != os.path.basename(canonical).encode(
        "utf-8", "surrogateescape"
    ) and trusted_alias(tid, call)
    image = Image(canonical, st.st_dev, st.st_ino, head, alias, sig, loader)
    if key and settled(sig):
        if len(_CACHE) >= CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = (sig, image)
    return image


def settled(sig: tuple[int, int, int, int, int]) -> bool:
    """The file was last changed more than CACHE_SETTLE_NS ago: a change from now on gives
    it a new ctime (which nobody can set back), so an equal ``sig`` means the same file."""
    return time.time_ns() - max(sig[3], sig[4]) > CACHE_SETTLE_NS


def trusted_alias(tid: int, call: ExecArgs) -> bool:
    """``call.path`` names a symlink only root could have made: owned by root, in a
    directory owned by root that nobody else may write (``/usr/bin/python3``)."""
    try:
        link = open_target(tid, call, follow=False)
    except OSError:
        return False
    try:
        st = os.fstat(link)
    finally:
        os.close(link)
    if not (_stat.S_ISLNK(st.st_mode) and st.st_uid == 0):
        return False
    parent = os.path.dirname(call.path) or b"."
    try:
        dfd = open_target(tid, ExecArgs(call.dirfd, parent, (), 0))
    except OSError:
        return False
    try:
        dst = os.fstat(dfd)
    finally:
        os.close(dfd)
    return dst.st_uid == 0 and not dst.st_mode & 0o022


def _head(pathfd: int, canonical: str) -> tuple[bytes, bool]:
    """The file's first bytes, and whether it is a dynamic loader."""
    # Reopen the very file (not the path again) to read its first bytes.
    try:
        rfd = os.open(b"/proc/self/fd/%d" % pathfd, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as err:
        raise Unreadable(f"cannot read {canonical} to check it: {err.strerror}") from err
    try:
        head = os.pread(rfd, BINPRM_BUF_SIZE, 0)
        return head, elf.is_loader(rfd, head)
    except OSError as err:
        raise Unreadable(f"cannot read {canonical} to check it: {err.strerror}") from err
    finally:
        os.close(rfd)


def shebang(head: bytes) -> tuple[bytes, bytes | None] | None:
    """Interpreter and optional argument of a ``#!`` line, parsed as fs/binfmt_script.c
    does (the argument may be empty: ``#!/bin/sh \\0``); None when ``head`` is no script.

    Raises:
        OSError: ENOEXEC for a ``#!`` line the kernel refuses (no name, truncated name).
    """
    if not head.startswith(b"#!"):
        return None
    buf = head[:BINPRM_BUF_SIZE].ljust(BINPRM_BUF_SIZE, b"\0")
    end = buf.find(b"\n")
    if end < 0:
        # No newline in the buffer: the name must end (space, tab, NUL) within it.
        tail = buf[2:].lstrip(b" \t")
        if not tail or not any(c in tail for c in b" \t\0"):
            raise OSError(errno.ENOEXEC, "#! interpreter name truncated")
        end = BINPRM_BUF_SIZE - 1
    line = buf[2:end].rstrip(b" \t").lstrip(b" \t")
    name, sep, rest = _split_terminator(line)
    if not name:
        raise OSError(errno.ENOEXEC, "#! without an interpreter")
    if sep in (b"", b"\0"):
        return name, None
    return name, rest.lstrip(b" \t").split(b"\0", 1)[0]


def _split_terminator(line: bytes) -> tuple[bytes, bytes, bytes]:
    for i, c in enumerate(line):
        if c in b" \t\0":
            return line[:i], line[i : i + 1], line[i + 1 :]
    return line, b"", b""


def is_elf(head: bytes) -> bool:
    return head.startswith(b"\x7fELF")
