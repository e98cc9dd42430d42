"""What the supervisor reads about a signal's target (``/proc``), for ``engine.check_signal``.

The caller waits in a seccomp notification while this runs, so every read is one bounded
``/proc`` read; a target that vanished meanwhile reads as an unrelated process outside the
tree (the kernel then answers ESRCH anyway). Pids are the supervisor's view (its pid
namespace), as everywhere in ``enforce.supervisor``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from agentsh.enforce import tracee
from agentsh.enforce.signals import Relation, SignalTarget

MAX_ANCESTRY = 4096  # deeper than any real tree; a bound against a loop in a racing /proc


def classify(tree: tracee.Tree, caller_tid: int, target_id: int) -> SignalTarget:
    """Describe the process (or thread) ``target_id`` as seen from the thread ``caller_tid``.

    Threads count as their process: ``tgkill`` of one's own thread is ``self``.
    """
    me, uid = _status(caller_tid)
    pid, their_uid = _status(target_id)
    return SignalTarget(
        pid=pid,
        caller=me,
        relation=_relation(me, pid),
        in_tree=tree.contains(pid),
        supervisor=pid == os.getpid(),
        same_user=uid is not None and uid == their_uid,
        comm=_comm(pid),
        exe=_exe(pid),
    )


def group_members(pgrp: int) -> list[int]:
    """Every process of process group ``pgrp`` (what ``kill(-pgrp, sig)`` reaches)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = tracee.stat(int(entry.name))
            if st is not None and st.pgrp == pgrp:
                out.append(st.pid)
    return out


def _relation(me: int, pid: int) -> Relation:
    if pid == me:
        return "self"
    mine, theirs = tracee.stat(me), tracee.stat(pid)
    if mine is None or theirs is None:
        return "other"
    # In this order: a parent is never also a sibling, a child never a farther descendant
    # (lazily: only a target that is neither walks its ancestry).
    tests: tuple[tuple[Relation, Callable[[], bool]], ...] = (
        ("child", lambda: theirs.ppid == me),
        ("parent", lambda: mine.ppid == pid),
        ("descendant", lambda: theirs.ppid > 1 and _descends(theirs.ppid, me)),
        ("sibling", lambda: theirs.ppid == mine.ppid and mine.ppid > 1),
    )
    return next((relation for relation, holds in tests if holds()), "other")


def _descends(ppid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is on the parent chain starting at ``ppid``."""
    for _ in range(MAX_ANCESTRY):
        if ppid == ancestor:
            return True
        st = tracee.stat(ppid) if ppid > 1 else None
        if st is None:
            return False
        ppid = st.ppid
    return False


def _status(tid: int) -> tuple[int, int | None]:
    """(process, real uid) of thread ``tid`` from one read of ``/proc/TID/status``
    (``Tgid:``, first ``Uid:`` field); ``(tid, None)`` when it is gone or unreadable."""
    tgid, uid = tid, None
    raw = tracee.read_proc(b"/proc/%d/status" % tid) if tid > 0 else None
    for line in (raw or b"").splitlines():
        name, _, rest = line.partition(b":")
        fields = rest.split()
        if name in (b"Tgid", b"Uid") and fields and fields[0].isdigit():
            if name == b"Tgid":
                tgid = int(fields[0])
            else:
                uid = int(fields[0])
                break  # Uid comes after Tgid
    return tgid, uid


def _comm(pid: int) -> str:
    raw = tracee.read_proc(b"/proc/%d/comm" % pid, 64) or b""
    return raw.rstrip(b"\n").decode("utf-8", "surrogateescape")


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
