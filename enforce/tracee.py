"""What the supervisor reads about a tracee that waits in a seccomp notification: its
memory (``/proc/PID/mem``: the arguments of an exec), its ``/proc`` entries, and whether a
process belongs to the governed tree.

Every function takes the thread id the notification names (``notif.pid``). All reads are
bounded; anything unreadable or absurd raises :class:`Unreadable`, and the caller denies.
"""

from __future__ import annotations

import os
import struct
import time
from typing import NamedTuple

from agentsh.enforce.record import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
PATH_MAX = 4096
MAX_ARG_STRLEN = 32 * PAGE  # the kernel refuses longer strings (E2BIG) anyway
MAX_ARGS = 65536
MAX_ARGV_BYTES = 2 * 1024 * 1024

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
NR_EXECVE, NR_EXECVEAT = 59, 322


class Unreadable(Exception):
    """The tracee's arguments cannot be read, or are beyond our bounds: deny."""


def s32(value: int) -> int:
    """The low 32 bits of a register as a signed int (how the kernel reads int args)."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def s64(value: int) -> int:
    """A register as a signed 64-bit int (off_t, long)."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value & (1 << 63) else value


# --------------------------------------------------------------------------- memory

# Not process_vm_readv(2): it pins the pages it reads (FOLL_PIN), and a pinned page of a
# process that has just forked is first copied out of its copy-on-write sharing with the
# parent. Every exec comes from such a child; that copy cost ~250 us per exec here, while
# /proc/PID/mem reads the shared page as it is.
WINDOW = 16384  # strings this close together are read with one pread
ARG_PROBE = 256  # bytes first read of each argv string read alone (most are shorter)


class Memory:
    """``/proc/TID/mem`` of one waiting tracee, open for the duration of one notification.

    Not cached across notifications: nearly every exec comes from a new child, and an fd
    opened before an exec (or in a vfork child) keeps reading the *old* address space.
    """

    __slots__ = ("fd",)

    def __init__(self, tid: int) -> None:
        try:
            self.fd = os.open(b"/proc/%d/mem" % tid, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise Unreadable(f"cannot open the memory of {tid}: {err.strerror}") from err

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, addr: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``addr``; stops early at an unmapped page."""
        try:
            return os.pread(self.fd, size, addr)
        except OSError as err:
            raise Unreadable(f"unreadable memory at {addr:#x}: {err.strerror}") from err

    def cstring(self, addr: int, limit: int, head: bytes = b"") -> bytes:
        """The NUL-terminated string at ``addr``, read page by page (never across an
        unmapped page in one read); ``head``: bytes already read at ``addr``."""
        if addr == 0:
            raise Unreadable("NULL string pointer")
        out, chunk = bytearray(), head
        while len(out) <= limit:
            if not chunk:
                chunk = self.read(addr, PAGE - (addr % PAGE))
                if not chunk:
                    raise Unreadable(f"string at {addr:#x} runs into unmapped memory")
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                if len(out) > limit:
                    break
                return bytes(out)
            out += chunk
            addr += len(chunk)
            chunk = b""
        raise Unreadable(f"string longer than {limit} bytes")

    def pointers(self, addr: int, limit: int) -> list[int]:
        """The NULL-terminated pointer array at ``addr`` (at most ``limit`` entries)."""
        out: list[int] = []
        if addr == 0:
            return out  # execve(path, NULL, ...) is an empty argv
        while True:
            raw = self.read(addr, 512)
            usable = len(raw) & ~7
            if not usable:
                raise Unreadable(f"argv array at {addr:#x} runs into unmapped memory")
            for (ptr,) in struct.iter_unpack("<Q", raw[:usable]):
                if ptr == 0:
                    return out
                if len(out) == limit:
                    raise Unreadable(f"more than {limit} arguments")
                out.append(ptr)
            addr += usable

    def strings(self, ptrs: list[int], limit: int, total: int) -> list[bytes]:
        """The strings at ``ptrs``, at most ``limit`` bytes each and ``total`` with their
        NULs. Strings that lie within WINDOW bytes of each other (a shell's argv usually
        does) come from one read; the others, and any cut short by it, are read alone."""
        lo = min(ptrs, default=0)
        span = max(ptrs, default=0) - lo + ARG_PROBE
        window = self.read(lo, span) if lo and span <= WINDOW else b""
        out: list[bytes] = []
        used = 0
        for ptr in ptrs:
            at = ptr - lo
            end = window.find(b"\0", at, at + limit + 1) if window else -1
            arg = window[at:end] if end >= 0 else self.cstring(ptr, limit)
            used += len(arg) + 1
            if used > total:
                raise Unreadable(f"argument list longer than {total} bytes")
            out.append(arg)
        return out


class ExecArgs(NamedTuple):
    """An execve/execveat call as issued: ``dirfd`` is AT_FDCWD for execve. (A NamedTuple:
    built per exec on the supervisor's hot path.)"""

    dirfd: int
    path: bytes
    argv: tuple[bytes, ...]
    flags: int


def read_exec(tid: int, nr: int, args: tuple[int, ...]) -> ExecArgs:
    """Read path and argv of a waiting execve/execveat from the tracee's memory.

    Raises:
        Unreadable: a pointer is bad, or argv exceeds MAX_ARGS / MAX_ARGV_BYTES.
    """
    if nr == NR_EXECVE:
        dirfd, path_ptr, argv_ptr, flags = AT_FDCWD, args[0], args[1], 0
    elif nr == NR_EXECVEAT:
        dirfd, path_ptr, argv_ptr, flags = s32(args[0]), args[1], args[2], s32(args[4])
    else:
        raise Unreadable(f"syscall {nr} is not an exec")
    with Memory(tid) as mem:
        path = mem.cstring(path_ptr, PATH_MAX)
        ptrs = mem.pointers(argv_ptr, MAX_ARGS)
        argv = mem.strings(ptrs, MAX_ARG_STRLEN, MAX_ARGV_BYTES)
    return ExecArgs(dirfd, path, tuple(argv), flags)


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/PID/stat`` the supervisor uses."""

    pid: int
    ppid: int
    pgrp: int
    starttime: int
    threads: int


def read_proc(path: bytes, size: int = 4096) -> bytes | None:
    """One read of a /proc file (os-level: the supervisor's hot path); None if gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat(pid: int) -> Stat | None:
    """``/proc/PID/stat`` (works for thread ids too); None when the task is gone."""
    raw = read_proc(b"/proc/%d/stat" % pid, 1024)
    if not raw:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(b")") + 2 :].split()
    return Stat(pid, int(rest[1]), int(rest[2]), int(rest[19]), int(rest[17]))


def cwd(tid: int) -> str:
    try:
        return os.readlink(f"/proc/{tid}/cwd")
    except OSError:
        return "?"


def fd_target_pid(tid: int, fd: int) -> int | None:
    """The pid a pidfd in the tracee names (``Pid:`` in fdinfo), None if not a pidfd."""
    return _field(read_proc(b"/proc/%d/fdinfo/%d" % (tid, fd)), b"Pid:")


def tgid(tid: int) -> int:
    """The process a thread belongs to (``Tgid:`` in status); ``tid`` if unknown."""
    return tgid_of(read_proc(b"/proc/%d/status" % tid), tid)


def tgid_of(status: bytes | None, tid: int) -> int:
    """:func:`tgid` from a status text already read."""
    return _field(status, b"Tgid:") or tid


def _field(raw: bytes | None, name: bytes) -> int | None:
    for line in (raw or b"").splitlines():
        if line.startswith(name):
            try:
                return int(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


# --------------------------------------------------------------------------- the tree


class Depth:
    """A process's depth in the tree: the walk is done at most once, and only if asked."""

    __slots__ = ("tid", "tree", "value")

    def __init__(self, tree: Tree, tid: int) -> None:
        self.tree, self.tid = tree, tid
        self.value: int | None = -1

    def __call__(self) -> int | None:
        if self.value == -1:
            self.value = self.tree.depth(self.tid)
        return self.value


class Tree:
    """Membership of the governed tree: the root, anything whose ancestry (``/proc/PID/stat``)
    reaches it, and every thread seen trapping a syscall — it carries the filter, so it is
    a member even after being reparented (a daemon). A seen pid is recorded with the boot
    clock at that moment: a process with that pid that started no later is the same one
    (a reused pid belongs to a process that started after the first one died)."""

    def __init__(self, root: int) -> None:
        st = stat(root)
        self.root = root
        self.root_start = st.starttime if st else -1
        self.seen: dict[int, int] = {}
        self.tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    def saw(self, tid: int) -> None:
        """Record a thread that trapped a syscall (hot path: no /proc read)."""
        if len(self.seen) >= 8192:
            self.seen = {p: t for p, t in self.seen.items() if self._is_seen(stat(p))}
        self.seen[tid] = time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def _is_root(self, st: Stat) -> bool:
        return st.pid == self.root and st.starttime == self.root_start

    def _is_seen(self, st: Stat | None) -> bool:
        seen = None if st is None else self.seen.get(st.pid)
        return st is not None and seen is not None and st.starttime * self.tick_ns <= seen

    def depth(self, tid: int) -> int | None:
        """Levels between ``tid`` and the root (0: the root itself); None when the ancestry
        no longer reaches the root (a daemon reparented to init)."""
        cur, d = stat(tid), 0
        while cur is not None and d < 4096:
            if self._is_root(cur):
                return d
            cur, d = (stat(cur.ppid) if cur.ppid > 1 else None), d + 1
        return None

    def contains(self, pid: int) -> bool:
        """``pid`` is the root, a member, or descends from one."""
        if pid <= 1 or pid == os.getpid():
            return False
        cur, steps = stat(pid), 0
        while cur is not None and steps < 4096:
            if self._is_root(cur) or self._is_seen(cur):
                return True
            cur, steps = (stat(cur.ppid) if cur.ppid > 1 else None), steps + 1
        return False
