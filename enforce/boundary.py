"""The exec-boundary check: the second look that closes the time-of-check/time-of-use gap
of a seccomp CONTINUE (issue 3 item 2; see the supervisor's docstring).

For an exec the supervisor approved, ``arm`` PTRACE_SEIZEs the thread (TRACEEXEC and
EXITKILL) before the CONTINUE and ``interrupt`` stops it right after. The kernel then
reports either PTRACE_EVENT_EXEC — after the point of no return, before the new image's
first instruction — or, when the exec failed, the interrupt stop. ``reap`` compares the
image and argv found at the exec stop with what was approved, SIGKILLs the process on any
difference, and detaches in every other case. EXITKILL makes a dead supervisor kill a
thread it still holds rather than let it run unchecked.

The supervisor is the tracer of the threads it holds, so their stops and exits arrive as
SIGCHLD and are collected with waitpid(2) (ptrace(2), seccomp_unotify(2) NOTES).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from typing import Generic, NamedTuple, TypeVar

from agentsh.enforce.tracee import MAX_ARGV_BYTES

T = TypeVar("T")

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETEVENTMSG = 0x4201
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: wait for threads and non-children we trace

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)


def ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    """ptrace(2) through libc (raw return value; PEEK* requests are not used here).

    Raises:
        OSError: the call failed (ESRCH: gone or not stopped; EPERM: not allowed or
            already traced).
    """
    ret = int(_ptrace(request, tid, addr, data))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def event_msg(tid: int) -> int:
    """PTRACE_GETEVENTMSG (for an exec stop: the thread id before the exec)."""
    msg = ctypes.c_ulong(0)
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg))
    return int(msg.value)


def executed(tid: int) -> tuple[int, int, bytes]:
    """(dev, ino, cmdline) of the image ``tid`` runs now — at an exec stop, the new one.

    Raises:
        OSError: the task is gone.
    """
    st = os.stat(b"/proc/%d/exe" % tid)
    fd = os.open(b"/proc/%d/cmdline" % tid, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1] and sum(map(len, chunks)) <= MAX_ARGV_BYTES:
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino, b"".join(chunks)


class Expected(NamedTuple):
    """The approved image (device, inode) and the argv the kernel must hand it."""

    dev: int
    ino: int
    cmdline: bytes  # NUL-terminated argv strings, as /proc/PID/cmdline shows them


class Mismatch(NamedTuple, Generic[T]):
    """An exec that changed after the check; the process was killed at its exec stop."""

    pid: int
    cmdline: bytes
    tag: T


class Boundary(Generic[T]):
    """The threads held for the exec-boundary check, each with what it must run and a
    caller's ``tag`` (returned with a mismatch).

    ``seize=False`` is for a transport that already traces every member of the tree with
    TRACEEXEC (the ptrace backend): nothing is seized or interrupted, and the transport
    calls ``take`` and ``check`` at each exec stop it sees.
    """

    def __init__(self, *, seize: bool = True) -> None:
        self.seize = seize
        # None: the notification vanished after the seize; detach at the next stop.
        self.pending: dict[int, tuple[Expected, T] | None] = {}

    def arm(self, tid: int) -> str | None:
        """Seize ``tid`` before its CONTINUE; the reason it cannot be, or None."""
        if not self.seize:
            return None
        try:
            ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL)
        except OSError as err:
            return "another process traces it" if err.errno == errno.EPERM else err.strerror
        return None

    def hold(self, tid: int, expected: Expected | None, tag: T) -> None:
        """Record what the armed ``tid`` must run (None: its answer was not delivered);
        when seizing, interrupt it so that a failed exec stops too."""
        self.pending[tid] = None if expected is None else (expected, tag)
        if not self.seize:
            return
        try:
            ptrace(PTRACE_INTERRUPT, tid)
        except OSError:
            self.pending.pop(tid, None)  # it died in the meantime

    def take(self, pid: int) -> tuple[Expected, T] | None:
        """At an exec stop of ``pid``: what it was approved to run (the thread that
        exec'd may have been another one of its process), forgotten from now on."""
        key = pid if pid in self.pending else _former(pid)
        held = self.pending.pop(key, None)
        self.pending.pop(pid, None)  # the leader's own exec, if any, lost the race
        return held

    def check(self, pid: int, expected: Expected, tag: T) -> Mismatch[T] | None:
        """At an exec stop: None when ``pid`` runs what was approved; else it is killed
        (before its first instruction) and the mismatch returned."""
        try:
            dev, ino, cmdline = executed(pid)
        except OSError:
            dev, ino, cmdline = -1, -1, b""
        if (dev, ino, cmdline) == expected:
            return None
        os.kill(pid, signal.SIGKILL)  # still stopped at the exec event: nothing ran
        return Mismatch(pid, cmdline, tag)

    def reap(self) -> list[Mismatch[T]]:
        """Collect the stops and exits of seized threads (waitpid, never blocking) and
        detach them; returns the killed mismatches."""
        found: list[Mismatch[T]] = []
        while True:
            try:
                wpid, status = os.waitpid(-1, os.WNOHANG | WALL)
            except ChildProcessError:
                return found
            if wpid == 0:
                return found
            if not os.WIFSTOPPED(status):
                self.pending.pop(wpid, None)
            elif (mismatch := self._stopped(wpid, status)) is not None:
                found.append(mismatch)

    def _stopped(self, wpid: int, status: int) -> Mismatch[T] | None:
        event, sig = status >> 16, 0
        if event == PTRACE_EVENT_EXEC:
            held = self.take(wpid)
            mismatch = None if held is None else self.check(wpid, *held)
            if mismatch is not None:
                return mismatch
        else:
            # The interrupt stop (the exec failed), a group stop, or a signal that must
            # still be delivered: detach and hand the signal back.
            self.pending.pop(wpid, None)
            if event == 0:
                sig = os.WSTOPSIG(status)
        with contextlib.suppress(OSError):  # it may have died meanwhile
            ptrace(PTRACE_DETACH, wpid, 0, sig)
        return None


def _former(wpid: int) -> int:
    try:
        return event_msg(wpid)
    except OSError:
        return wpid
