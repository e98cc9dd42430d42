"""The C hot path of exec supervision: ctypes bindings of ``libagentsh-boundary.so``
(shim/agentsh-boundary.c, built by ``make setup`` into ``<sys.prefix>/libexec``).

It holds no policy. ``ab_continue`` runs the exec-boundary sequence of ``enforce.boundary``
for one approved exec; ``ab_next`` is the user-notify transport for the common exec: it
receives a notification and, for an execve that ``Table.put`` recorded as allowed (same
path as written, argv, canonical path and unchanged file), answers it through
``ab_continue`` without Python judging it again. Everything else comes back to Python as
the received notification (``Outcome.NOTE``).

Without the library (``load`` returns None) the supervisor does every step in Python.
"""

from __future__ import annotations

import ctypes
import enum
import sys
from pathlib import Path
from typing import Generic, TypeVar

from agentsh.enforce import seccomp

T = TypeVar("T")

LIBRARY = Path(sys.prefix) / "libexec" / "libagentsh-boundary.so"
WAIT_MS = 50  # longer execs (a slow filesystem) are reaped from the supervisor's loop
IDLE_MS = 5  # ab_serve hands its answered execs over for audit after this long idle
MAX_HITS = 64  # ... or after this many
BUFFER = 1 << 16  # the tracee's cwd and, after a mismatch, its cmdline
MAX_KEY = 8192  # path + argv bytes of an exec the table can hold (AB_KEY_MAX)
MAX_ARGC = 64  # argv entries of an exec ab_next reads itself (AB_MAX_ARGC)


class Outcome(enum.IntEnum):
    """Result codes of ``ab_continue`` and ``ab_next``."""

    VERIFIED = 0  # exec'd the approved image and argv; detached
    MISMATCH = 1  # exec'd something else; killed at its exec stop
    DETACHED = 2  # stopped without an exec to check; detached
    GONE = 3  # the thread died; nothing held
    UNARMED = 4  # could not be seized (err); no answer was sent
    PENDING = 5  # no stop within the timeout: the caller holds it
    OTHER = 6  # another tracee's stop or exit (wpid, status) came first
    ERROR = 7  # the answer failed unexpectedly (err)
    NOTE = 8  # ab_next: not answered; Python handles the notification
    STALE = 9  # ab_next: a hit whose thread no longer waits; nothing sent
    RECV = 10  # ab_next: SECCOMP_IOCTL_NOTIF_RECV failed (err)
    IDLE = 11  # ab_serve: idle, or its buffers are full: audit the hits
    WAKE = 12  # ab_serve: the SIGCHLD wake-up fd is readable: reap
    HUP = 13  # ab_serve: the listener hung up (no governed task left)
    REAPED = 14  # ab_serve: a stop or exit (wpid, status) to handle
    POLL = 15  # ab_serve: poll failed (err)


class Result(ctypes.Structure):
    """``struct ab_result``."""

    _fields_ = (
        ("code", ctypes.c_int32),
        ("err", ctypes.c_int32),
        ("wpid", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("delivered", ctypes.c_int32),
        ("got_len", ctypes.c_int32),
        ("slot", ctypes.c_int32),
        ("cwd_len", ctypes.c_int32),
        ("base", ctypes.c_int32),
    )


class Hit(ctypes.Structure):
    """``struct ab_hit``: an exec ``ab_serve`` answered from the table."""

    _fields_ = (
        ("slot", ctypes.c_int32),
        ("pid", ctypes.c_int32),
        ("cwd_off", ctypes.c_int32),
        ("cwd_len", ctypes.c_int32),
        ("when", ctypes.c_double),
    )


_U64, _I64, _SZ, _INT, _PTR = (
    ctypes.c_uint64,
    ctypes.c_int64,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_void_p,
)
_SIGNATURES = {
    # listener, id, tid, dev, ino, cmdline, len, wake fd, timeout ms, buffer, cap, result
    "ab_continue": (
        _INT, _U64, _INT, _U64, _U64, ctypes.c_char_p, _SZ, _INT, _INT, _PTR, _SZ,
        ctypes.POINTER(Result),
    ),
    "ab_table_new": (),
    "ab_table_enable": (_PTR, _INT),
    # table, raw path, len, argv, len, canonical, len, dev, ino, size, mtime, ctime
    "ab_put": (
        _PTR, ctypes.c_char_p, _SZ, ctypes.c_char_p, _SZ, ctypes.c_char_p, _SZ,
        _U64, _U64, _U64, _I64, _I64,
    ),
    # listener, table, notification buffer, wake fd, timeout ms, buffer, cap, result
    "ab_next": (_INT, _PTR, _PTR, _INT, _INT, _PTR, _SZ, ctypes.POINTER(Result)),
    # ... as ab_next, with idle ms and flush after the timeout; then hits, max, count
    "ab_serve": (
        _INT, _PTR, _PTR, _INT, _INT, _INT, _INT, _PTR, _SZ, ctypes.POINTER(Result),
        ctypes.POINTER(Hit), _INT, ctypes.POINTER(ctypes.c_int32),
    ),
}  # fmt: skip


def load(path: Path = LIBRARY) -> ctypes.CDLL | None:
    """The library with its signatures declared, or None when it was not built."""
    try:
        lib = ctypes.CDLL(str(path), use_errno=True)
    except OSError:
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_void_p if name == "ab_table_new" else ctypes.c_int
    return lib


class Table(Generic[T]):
    """The verdicts ``ab_next`` may reuse, each with the caller's ``tag`` per slot (a
    hit returns the slot). One per supervisor; never shared between policies."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ptr = lib.ab_table_new()
        if not self.ptr:
            raise MemoryError("ab_table_new")
        self.tags: dict[int, T] = {}
        self.enabled = True
        lib.ab_table_enable(self.ptr, 1)
        self.note = ctypes.create_string_buffer(seccomp.NOTIF.size)
        self.buffer = ctypes.create_string_buffer(BUFFER)
        self.result = Result()
        self.hits = (Hit * MAX_HITS)()
        self.count = ctypes.c_int32(0)

    def disable(self) -> None:
        """From now on every notification comes back to Python (for good)."""
        self.enabled = False
        self.lib.ab_table_enable(self.ptr, 0)

    def put(
        self,
        raw: bytes,
        argv: bytes,
        canonical: bytes,
        sig: tuple[int, int, int, int, int],
        tag: T,
    ) -> bool:
        """Remember an allowed execve of ``raw`` (as written) with ``argv`` (NUL-terminated
        strings) that resolved to ``canonical`` with ``sig`` (dev, ino, size, mtime_ns,
        ctime_ns). False when it does not fit."""
        if not self.enabled or len(raw) + len(argv) > MAX_KEY or argv.count(b"\0") > MAX_ARGC:
            return False
        dev, ino, size, mtime, ctime = sig
        slot = int(
            self.lib.ab_put(
                self.ptr, raw, len(raw), argv, len(argv), canonical, len(canonical),
                dev, ino, size, mtime, ctime,
            )
        )  # fmt: skip
        if slot < 0:
            return False
        self.tags[slot] = tag
        return True

    def next(self, listener: int, wake_fd: int) -> tuple[Outcome, seccomp.Notification]:
        """``ab_next``: receive one notification and answer it if the table holds it.
        ``result`` and ``buffer`` then describe what happened (see the C source)."""
        self.lib.ab_next(
            listener, self.ptr, self.note, wake_fd, WAIT_MS, self.buffer, BUFFER,
            ctypes.byref(self.result),
        )  # fmt: skip
        return Outcome(self.result.code), self._note()

    def serve(
        self, listener: int, wake_fd: int, *, flush: bool
    ) -> tuple[Outcome, seccomp.Notification, list[Hit]]:
        """``ab_serve``: answer table hits until a notification needs Python, or idle
        (``flush``: also with no hit, so that queued audit events get written). Returns
        the outcome, the last notification (for outcomes of ``next``) and the hits."""
        self.lib.ab_serve(
            listener, self.ptr, self.note, wake_fd, WAIT_MS, IDLE_MS, int(flush),
            self.buffer, BUFFER, ctypes.byref(self.result), self.hits, MAX_HITS,
            ctypes.byref(self.count),
        )  # fmt: skip
        return Outcome(self.result.code), self._note(), list(self.hits[: self.count.value])

    def text(self, offset: int, size: int) -> bytes:
        """``size`` bytes of ``buffer`` at ``offset`` (a cwd, a cmdline)."""
        return ctypes.string_at(ctypes.addressof(self.buffer) + offset, size)

    def _note(self) -> seccomp.Notification:
        nid, pid, flags, nr, arch, ip, *args = seccomp.NOTIF.unpack(self.note.raw)
        return seccomp.Notification(nid, pid, flags, nr, arch, ip, tuple(args))
