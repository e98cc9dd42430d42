"""The Plan: everything the frontend decided, applied in one place right before execve
(ARCHITECTURE §3 steps 6–7). Kernel layers (Landlock, no_new_privs, seccomp) plug in here,
in that order, seccomp last.
"""

from __future__ import annotations

import os
from typing import NoReturn

from agentsh.enforce.errors import InternalError
from agentsh.enforce.record import dataclass


@dataclass(frozen=True)
class Plan:
    """What to exec and how.

    ``stdin_script`` is a script the frontend already read from stdin to precheck it; it is
    handed back to bash on fd 0 through a memfd, byte for byte.
    """

    path: str
    argv: tuple[str, ...]
    env: dict[str, str]
    stdin_script: bytes | None = None


def _refeed_stdin(data: bytes) -> None:
    """Put ``data`` on fd 0 as a seekable memfd positioned at 0 (memfd_create(2), dup2(2))."""
    fd = os.memfd_create("agentsh-stdin-script", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 0)  # dup2 clears FD_CLOEXEC on the new descriptor
    finally:
        os.close(fd)


def apply(plan: Plan) -> NoReturn:
    """Apply the plan to this process and exec. Never returns.

    Order (each step must precede the next):
      1. stdin re-feed (needs no privileges, touches only fd 0);
      2. [issue 4] Landlock ruleset, then no_new_privs;
      3. [issue 3] seccomp filter — last, so nothing above is trapped;
      4. execve: this process becomes bash.real (same PID, fds, TTY).

    Raises:
        InternalError: the exec itself failed (bash.real missing or not executable).
    """
    if plan.stdin_script is not None:
        _refeed_stdin(plan.stdin_script)
    try:
        os.execve(plan.path, list(plan.argv), plan.env)
    except OSError as err:
        raise InternalError(
            f"cannot execute {plan.path}: {err.strerror}",
            hint="reinstall with `agentsh shim install-shell` or check that the real bash exists",
        ) from err
