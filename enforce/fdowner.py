"""Signals by file ownership: ``fcntl(fd, F_SETOWN | F_SETOWN_EX, ...)`` and the socket
ioctls ``FIOSETOWN``/``SIOCSPGRP`` name the process (or process group) the kernel signals
when I/O is possible on ``fd`` (SIGIO, or any signal ``F_SETSIG`` picks — SIGKILL
included). Without a check, a governed process could make the kernel kill pid 1, the
supervisor or any process outside the tree by writing to a pipe, around the supervision
of ``kill`` and its kin (issue 3 item 4).

So the filter hands these calls to the supervisor (``Hardening.signals``), which judges
the owner as it judges a ``kill`` to it (``sigcalls.refusal``: the policy's
``signal_rules``, else the built-in rule — the caller's own tree only; with the signal
taken as SIGKILL, since ``F_SETSIG`` may change it later without asking). The kernel keeps
a reference to the owner's pid, not its number, so the decision cannot go stale.

``F_SETOWN`` carries the owner in a register: an allowed call simply runs. The other three
point into the caller's memory, which another thread could rewrite after the check, so an
allowed one is carried out by the supervisor with the value it checked, on a duplicate of
the caller's descriptor (pidfd_getfd: the same open file, whose owner is the one set),
and answered with its result. The kernel records the setter's uid with the owner, so this
is done only for a caller whose credentials are the supervisor's; another is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
from typing import TYPE_CHECKING, Final

from agentsh.enforce import seccomp, sigcalls, tracee

if TYPE_CHECKING:
    from agentsh.enforce.supervisor import Supervisor

NR_FCNTL, NR_IOCTL = 72, 16
F_SETOWN, F_SETOWN_EX = 8, 15
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902
FCNTL_COMMANDS: Final = (F_SETOWN, F_SETOWN_EX)
IOCTL_COMMANDS: Final = (FIOSETOWN, SIOCSPGRP)
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
_NAMES: Final = {F_SETOWN: "F_SETOWN", F_SETOWN_EX: "F_SETOWN_EX"}
_NAMES_IOCTL: Final = {FIOSETOWN: "FIOSETOWN", SIOCSPGRP: "SIOCSPGRP"}


def traps(note: seccomp.Notification) -> bool:
    """``note`` is one of the calls this module answers."""
    cmd = tracee.s32(note.args[1])
    if note.nr == NR_FCNTL:
        return cmd in FCNTL_COMMANDS
    return note.nr == NR_IOCTL and cmd in IOCTL_COMMANDS


def handle(sup: Supervisor, note: seccomp.Notification) -> None:
    """Judge the owner ``note`` would set; refuse (EPERM, audited) or let it happen."""
    fd, cmd = tracee.s32(note.args[0]), tracee.s32(note.args[1])
    try:
        kind, who = _owner(note, cmd)
    except OSError as err:  # unreadable argument: what the kernel would say (EFAULT)
        sup.listener.fail(note.id, err.errno or errno.EFAULT)
        return
    name = _NAMES.get(cmd, "") if note.nr == NR_FCNTL else _NAMES_IOCTL.get(cmd, "")
    call = "fcntl" if note.nr == NR_FCNTL else "ioctl"
    what = f"{call}({fd}, {name}, {'process group ' if kind == F_OWNER_PGRP else ''}{who})"
    pids, groups = ([], [who]) if kind == F_OWNER_PGRP else ([who], [])
    verdict = sigcalls.refusal(sup, note.pid, pids, groups, signal.SIGKILL) if who else None
    if verdict is not None and not verdict.allowed:
        message = f"{verdict.message} (the kernel would signal it on I/O)"
        event = sup.syscall_event(note.pid, what, verdict.rule, message, "signal")
        sup.refuse(note, what, event, errno.EPERM)
        return
    if verdict is not None and verdict.rule is not None:  # a signal rule decided: audited
        decision = verdict.decision.value
        sup.record(sup.syscall_event(note.pid, what, verdict.rule, "", "signal", decision=decision))
    if note.nr == NR_FCNTL and cmd == F_SETOWN:
        sup.listener.allow(note.id)  # the owner is in a register: what was checked runs
        return
    _apply(sup, note, (kind, who), what)


def _owner(note: seccomp.Notification, cmd: int) -> tuple[int, int]:
    """(owner kind, pid or process group) the call names; reads its argument once."""
    if note.nr == NR_FCNTL and cmd == F_SETOWN:
        return _from_value(tracee.s32(note.args[2]))
    from agentsh.enforce import filecalls  # off the frontend's import path

    size = 8 if note.nr == NR_FCNTL else 4
    raw = filecalls.vm_read(note.pid, note.args[2], size)
    if len(raw) < size:
        raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
    if note.nr == NR_FCNTL:  # struct f_owner_ex {int type; pid_t pid;}
        kind, pid = struct.unpack("<ii", raw)
        if kind not in (F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return kind, pid
    return _from_value(struct.unpack("<i", raw)[0])


def _from_value(value: int) -> tuple[int, int]:
    """F_SETOWN's encoding: a pid, minus a process group, or 0 (no owner)."""
    return (F_OWNER_PGRP, -value) if value < 0 else (F_OWNER_PID, value)


def _apply(sup: Supervisor, note: seccomp.Notification, owner: tuple[int, int], what: str) -> None:
    """Set the checked ``owner`` on the caller's open file ourselves and answer with the
    result (the memory the call points to is not read again)."""
    fd, cmd = tracee.s32(note.args[0]), tracee.s32(note.args[1])
    kind, who = owner
    from agentsh.enforce import filecalls  # off the frontend's import path

    if filecalls.credentials(note.pid) != filecalls.credentials("self"):
        message = "a process whose credentials differ from the supervisor's cannot set it"
        event = sup.syscall_event(note.pid, what, "signal-owner-credentials", message, "signal")
        sup.refuse(note, what, event, errno.EPERM)
        return
    try:
        dup = seccomp.duplicate_fd(note.pid, tracee.tgid(note.pid), fd)
    except OSError as err:
        sup.listener.fail(note.id, err.errno or errno.EBADF)
        return
    try:
        if note.nr == NR_FCNTL:
            fcntl.fcntl(dup, F_SETOWN_EX, struct.pack("<ii", kind, who))
        else:
            fcntl.ioctl(dup, cmd, struct.pack("<i", -who if kind == F_OWNER_PGRP else who))
    except OSError as err:
        sup.listener.fail(note.id, err.errno or errno.EINVAL)
        return
    finally:
        os.close(dup)
    sup.listener.succeed(note.id, 0)
