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

``admit`` does the whole sequence for one exec. When ``make setup`` has built
``libagentsh-boundary.so`` (``enforce.fastpath``), one call into it seizes, answers,
interrupts, waits for the stop (woken by the supervisor's SIGCHLD wake-up fd, at most
``fastpath.WAIT_MS``) and compares or detaches: the same steps, without a trip through
the supervisor's loop. What it cannot settle in time it hands back (``settle``), and the
thread is held and reaped here as without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
from typing import Generic, NamedTuple, TypeVar

from agentsh.enforce import fastpath, seccomp
from agentsh.enforce.fastpath import Outcome
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
        # A short read is the end: the kernel fills each read up to the end of the
        # arguments (fs/proc/base.c get_mm_cmdline), so most execs need one read.
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == (65536 if len(chunks) == 1 else 1 << 20):
            if sum(map(len, chunks)) > MAX_ARGV_BYTES:
                break
            chunks.append(os.read(fd, 1 << 20))
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino, b"".join(chunks)


def _unarmed(err: int) -> str:
    return "another process traces it" if err == errno.EPERM else os.strerror(err)


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

    def __init__(self, *, seize: bool = True, fast: ctypes.CDLL | None = None) -> None:
        self.seize = seize
        # None: the notification vanished after the seize; detach at the next stop.
        self.pending: dict[int, tuple[Expected, T] | None] = {}
        self.fast = fast if seize else None  # libagentsh-boundary.so (fastpath.load)
        self.wake_fd = -1  # readable on SIGCHLD; the C path needs it to sleep on
        self._got = ctypes.create_string_buffer(0)

    def admit(
        self, listener: seccomp.Listener, nid: int, tid: int, expected: Expected, tag: T
    ) -> tuple[str | None, list[Mismatch[T]]]:
        """Let the approved exec of ``tid`` run under the boundary check: seize, CONTINUE
        (notification ``nid``), interrupt, and — on the C path — settle its stop.

        Returns:
            (why it could not be seized — then no answer was sent, and the caller must
            refuse — or None; the execs found changed and killed so far).

        Raises:
            OSError: the answer failed other than by the notification vanishing.
        """
        if self.fast is None or self.wake_fd < 0:
            why = self.arm(tid)
            if why is None:
                self.hold(tid, expected if listener.allow(nid) else None, tag)
            return why, []
        return self._admit_fast(listener, nid, tid, expected, tag)

    def _admit_fast(
        self, listener: seccomp.Listener, nid: int, tid: int, expected: Expected, tag: T
    ) -> tuple[str | None, list[Mismatch[T]]]:
        assert self.fast is not None
        cap = len(expected.cmdline) + 4096  # longer than approved: cannot compare equal
        if len(self._got) < cap:
            self._got = ctypes.create_string_buffer(max(cap, fastpath.BUFFER))
        res = fastpath.Result()
        self.fast.ab_continue(
            listener.fd, nid, tid, expected.dev, expected.ino, expected.cmdline,
            len(expected.cmdline), self.wake_fd, fastpath.WAIT_MS, self._got, len(self._got),
            ctypes.byref(res),
        )  # fmt: skip
        return self.settle(res, tid, expected, tag, got=self._got.raw)

    def settle(
        self, res: fastpath.Result, tid: int, expected: Expected, tag: T, *, got: bytes
    ) -> tuple[str | None, list[Mismatch[T]]]:
        """What the C path's outcome ``res`` for ``tid`` means here (``admit``'s return
        value); ``got`` holds the cmdline found after a mismatch, ``res.got_len`` bytes.

        Raises:
            OSError: the answer failed (Outcome.ERROR), or an outcome no exec has.
        """
        outcome = Outcome(res.code)
        why: str | None = None
        found: list[Mismatch[T]] = []
        match outcome:
            case Outcome.VERIFIED | Outcome.DETACHED | Outcome.GONE:
                pass
            case Outcome.UNARMED:
                why = _unarmed(res.err)
            case Outcome.MISMATCH:
                found.append(Mismatch(res.wpid, got[: res.got_len], tag))
            case Outcome.PENDING | Outcome.OTHER:
                # Interrupted and still to stop: held here, reaped below or from the loop.
                self.pending[tid] = (expected, tag) if res.delivered else None
                if outcome == Outcome.OTHER:
                    found += self.collect(res.wpid, res.status)
            case Outcome.ERROR:
                raise OSError(res.err, f"SECCOMP_IOCTL_NOTIF_SEND: {os.strerror(res.err)}")
            case _:
                raise OSError(errno.EPROTO, f"libagentsh-boundary: no exec outcome {outcome!r}")
        # The C wait may have drained the SIGCHLD wake-up of another held thread without
        # collecting its stop: nothing would wake the loop for it again.
        if self.pending:
            found += self.reap()
        return why, found

    def arm(self, tid: int) -> str | None:
        """Seize ``tid`` before its CONTINUE; the reason it cannot be, or None."""
        if not self.seize:
            return None
        try:
            ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL)
        except OSError as err:
            return _unarmed(err.errno or errno.EPERM)
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
            found += self.collect(wpid, status)

    def collect(self, wpid: int, status: int) -> list[Mismatch[T]]:
        """Handle one stop or exit that waitpid reported (here or in the C path)."""
        if not os.WIFSTOPPED(status):
            self.pending.pop(wpid, None)
            return []
        mismatch = self._stopped(wpid, status)
        return [] if mismatch is None else [mismatch]

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
