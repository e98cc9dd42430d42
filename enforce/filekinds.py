"""Verdicts by kind of file, on top of the file rules (``engine.check_file``): what the
file monitor (``enforce.fileguard``) and ``agentsh policy test`` add once they know what
a path is. Pure: the callers stat the file and pass what they found.

- reliefs from a refusal that only the file default or a catch-all rule (every path,
  ``**``) made: devices every program uses (bash's start-up writes to /dev/null), and
  world-readable files of system trees (git reads /etc/gitconfig). Landlock grants the
  same. A rule that names the path still refuses;
- a refusal of the other device nodes where only the file default or a catch-all rule
  allowed them, or that lie outside /dev: a raw disk read past every file rule. A rule
  that names the /dev path allows it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from typing import Final

from agentsh.enforce import engine
from agentsh.enforce.policy import Decision, FileRule, Policy, Verdict

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
TERMINALS = ("/dev/tty", "/dev/ptmx")  # and the tree /dev/pts
SYSTEM_READABLE = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_CATCH_ALL = frozenset({"**", "/**"})

# The character devices a governed process opens without a rule naming them (major,
# minor): the DEVICES and TERMINALS above — Docker's default device set without the
# console — and the /dev/pts terminals (majors 136-143; ``enforce.terminals`` refuses
# another session's).
HARMLESS_DEVICES: Final = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)})
PTS_MAJORS: Final = range(136, 144)
DEVICE_RULE: Final = "device-not-named"
_TASK: Final = re.compile(r"(/proc/(?:\d+|self))/task/\d+(/.*)?")


def _by_default(policy: Policy, verdict: Verdict) -> FileRule | bool | None:
    """The rule that refused (None: the file default), or False when it names paths."""
    rule = next((r for r in policy.file_rules if r.name == verdict.rule), None)
    if rule is not None and not set(rule.paths) <= _CATCH_ALL:
        return False
    return rule


def device_relief(policy: Policy, verdict: Verdict, path: str) -> Verdict:
    """Opening a device every program uses (:data:`DEVICES`, :data:`TERMINALS`, a
    /dev/pts terminal) is allowed when only the default or a catch-all refused it: bash's
    start-up writes to /dev/null, and a policy that never names it cannot mean to break
    every shell. Pure; ``verdict`` unchanged otherwise."""
    if verdict.allowed or (path not in DEVICES + TERMINALS and not path.startswith("/dev/pts/")):
        return verdict
    if _by_default(policy, verdict) is False:
        return verdict
    return Verdict(Decision.ALLOW, None, f"{path}: a device every program may use", path)


def system_read_relief(
    policy: Policy, verdict: Verdict, path: str, *, world_readable: bool
) -> Verdict:
    """Reading a file or directory of a system tree (:data:`SYSTEM_READABLE`) that every
    user may read is allowed when only a catch-all rule refused it: it is no secret, and
    tools read such files at start-up (git's /etc/gitconfig, OpenSSL's openssl.cnf) that
    the seeds' "deny everything else" rules do not list. ``world_readable`` is the
    caller's stat of the file (mode o+r, regular file or directory). Pure."""
    if verdict.allowed or not world_readable:
        return verdict
    if not any(path == t or path.startswith(t + "/") for t in SYSTEM_READABLE):
        return verdict
    rule = _by_default(policy, verdict)
    if not isinstance(rule, FileRule):  # a named path, or the file default (reads pass)
        return verdict
    why = f"{path} is readable by every user; catch-all rule {rule.name} does not hide it"
    return Verdict(Decision.ALLOW, None, why, path)


def device_refusal(
    policy: Policy, ops: Iterable[str], path: str, mode: int, rdev: int
) -> Verdict | None:
    """A refusal to open the device node ``path`` (``mode`` and ``rdev`` from its stat)
    for ``ops`` when it is not one every program uses (:data:`HARMLESS_DEVICES`, a
    /dev/pts terminal) and only the file default or a catch-all rule allows an operation:
    reading a raw disk (/dev/sda, /dev/nvme0n1, /dev/loop0) reads every file on it past
    the file rules, and a console, an input device or /dev/cpu/*/msr is no safer. The
    kind of file decides, not its name: a link to it (/dev/disk/by-id) resolves to its
    /dev name, and a node outside /dev (in a chroot, or in /tmp, which a rule for
    ``/tmp/**`` would let through) is refused whatever the rules say. A rule that names
    its /dev path allows it. None: no refusal (not a device, a harmless one, only
    ``stat``)."""
    if not (stat.S_ISBLK(mode) or stat.S_ISCHR(mode)):
        return None
    major, minor = os.major(rdev), os.minor(rdev)
    if stat.S_ISCHR(mode) and ((major, minor) in HARMLESS_DEVICES or major in PTS_MAJORS):
        return None
    elsewhere = not path.startswith("/dev/")  # a rule for /tmp/** does not mean disks
    for op in ops:
        if op == "stat":
            continue
        verdict = engine.check_file(policy, op, path)
        if verdict.allowed and (elsewhere or _by_default(policy, verdict) is not False):
            kind = "block" if stat.S_ISBLK(mode) else "character"
            why = (
                f"{path} is a {kind} device ({major}:{minor}) no file rule names: raw "
                "disks, consoles, input devices and hardware registers reach past every "
                "file rule. Name it in an allow rule of the policy's file_rules if the "
                "agent needs it"
            )
            return Verdict(Decision.DENY, DEVICE_RULE, why, path)
    return None


def task_alias(path: str) -> str | None:
    """/proc/PID/X for a thread's entry /proc/PID/task/TID/X (None for other paths): the
    same environment, memory and open files, which rules name the process's way
    (``/proc/*/environ``), so the file monitor judges the entry under both names."""
    task = _TASK.fullmatch(path)
    return None if task is None else task.group(1) + (task.group(2) or "")


def sticky_refusal(
    dir_st: os.stat_result, file_st: os.stat_result, fsuid: int, *, regular: int, fifos: int
) -> bool:
    """The kernel refuses an O_CREAT open of the existing ``file_st`` found in the
    directory ``dir_st`` by a process whose file system uid is ``fsuid``
    (may_create_in_sticky, fs/namei.c; ``regular`` and ``fifos``: the sysctls
    fs.protected_regular and fs.protected_fifos): in a sticky directory, a file neither
    the directory's owner nor the caller owns is not reopened that way — it is how a
    privileged program is kept from writing into a file another user planted in /tmp.
    The supervisor, which opens the checked file itself, must refuse it the same."""
    if not dir_st.st_mode & stat.S_ISVTX:
        return False
    mode = file_st.st_mode
    if (stat.S_ISREG(mode) and not regular) or (stat.S_ISFIFO(mode) and not fifos):
        return False
    if file_st.st_uid in (dir_st.st_uid, fsuid):
        return False
    if dir_st.st_mode & 0o002:
        return True
    group_writable = bool(dir_st.st_mode & 0o020)
    return group_writable and (
        (fifos >= 2 and stat.S_ISFIFO(mode)) or (regular >= 2 and stat.S_ISREG(mode))
    )
