"""Who is calling: the credentials of the governed tree's threads, for the file monitor.

``enforce.fileguard`` carries out allowed file calls in the supervisor, as the calling
thread (``enforce.identity``). Which identity that is comes from the thread's
``/proc/TID/status``, read through an fd kept per thread: pread(2) regenerates the text,
and the fd pins that very task (once it is gone, reads fail with ESRCH, so a reused
thread id gets a fresh fd), so it never describes another.
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

    def status(self, tid: int) -> bytes:
        """``/proc/TID/status`` of thread ``tid``, read now.

        Raises:
            Refused: the thread is gone, or its status cannot be read.
        """
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
        raw = raw if raw is not None else self.status(tid)
        if cred_lines(raw) == self.mine and identity.userns(tid) == self.userns:
            return None
        return identity.of(raw, tid)

    def close(self) -> None:
        """Close every status fd kept (they are opened again as needed)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
