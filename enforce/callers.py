"""Who is calling: the credentials of the governed tree's threads, for the file monitor.

``enforce.fileguard`` carries out allowed file calls in the supervisor, as the calling
thread (``enforce.identity``). Which identity that is comes from the thread's
``/proc/TID/status``, read through an fd kept per thread: pread(2) regenerates the text,
and the fd pins that very task (once it is gone, reads fail with ESRCH, so a reused
thread id gets a fresh fd), so it never describes another. It is read once per trapped
call, before the call's paths are looked up (as that identity: ``image.looked_up_as``).
"""

from __future__ import annotations

import os
from typing import Final

from agentsh.enforce import identity
from agentsh.enforce.filecalls import Refused, cred_lines, credentials

STATUS_FDS_MAX: Final = 512


class Callers:
    """The tree's threads' status texts and identities (module docstring)."""

    def __init__(self) -> None:
        self.mine = credentials("self")
        self.userns = identity.userns("self")
        self.fds: dict[int, int] = {}  # tid -> its /proc/TID/status
        # (tid, status, identity) of the call being answered (:meth:`calling`)
        self.call: tuple[int, bytes, identity.Identity | None] | None = None

    def calling(self, tid: int) -> _Calling:
        """For a ``with`` block, the answer to one trapped call of thread ``tid``: its
        status and identity (:meth:`who`, what ``with`` gives) are read once, on the way
        in, and :meth:`status` and :meth:`who` of ``tid`` answer with them. The thread
        waits in that call meanwhile, so its credentials cannot change.

        Raises (on the way in):
            Refused: the thread's credentials cannot be read.
            OSError: the thread is gone.
        """
        return _Calling(self, tid)

    def status(self, tid: int) -> bytes:
        """``/proc/TID/status`` of thread ``tid``, read now (or when the call being
        answered began: :meth:`calling`).

        Raises:
            Refused: the thread is gone, or its status cannot be read.
        """
        if self.call is not None and self.call[0] == tid:
            return self.call[1]
        fd = self.fds.get(tid)
        for _ in range(2):
            if fd is None:
                if len(self.fds) >= STATUS_FDS_MAX:
                    self.close()
                try:
                    fd = self.fds[tid] = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    break
            try:
                raw = os.pread(fd, 4096, 0)
            except OSError:
                raw = b""
            if raw:
                return raw
            os.close(self.fds.pop(tid))
            fd = None
        raise Refused("file-identity", "the process's credentials could not be read")

    def who(self, tid: int, raw: bytes | None = None) -> identity.Identity | None:
        """None when ``tid`` has the supervisor's credentials, else its identity (from
        its status text ``raw`` when the caller has it).

        The same credentials means the same status lines *and* the same user namespace:
        a thread in a namespace of its own shows its ids as we see them but its
        capabilities as it holds them there (unshare(CLONE_NEWUSER) gives it all of
        them), which do not reach our files (``identity.of`` takes it on with none).

        Raises:
            Refused: the thread's credentials cannot be read.
            OSError: the thread is gone.
        """
        if self.call is not None and self.call[0] == tid:
            return self.call[2]
        raw = raw if raw is not None else self.status(tid)
        ours = identity.userns(tid) == self.userns
        if ours and cred_lines(raw) == self.mine:
            return None
        return identity.of(raw, tid, ours=ours)

    def close(self) -> None:
        """Close every status fd kept (they are opened again as needed)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class _Calling:
    """:meth:`Callers.calling` (a class, not a generator: every trapped call enters one)."""

    __slots__ = ("callers", "tid")

    def __init__(self, callers: Callers, tid: int) -> None:
        self.callers, self.tid = callers, tid

    def __enter__(self) -> identity.Identity | None:
        callers, tid = self.callers, self.tid
        raw = callers.status(tid)
        who = callers.who(tid, raw)
        callers.call = (tid, raw, who)
        return who

    def __exit__(self, *_exc: object) -> None:
        self.callers.call = None
