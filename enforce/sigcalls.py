"""The supervisor's answers to the calls that reach other processes (issue 3 item 4):
signals, and ptrace or pidfd_getfd of another process.

- kill/tkill/tgkill/pidfd_send_signal/rt_sigqueueinfo/rt_tgsigqueueinfo: each process the
  call reaches (every member of a process group) is classified (``enforce.signaltarget``)
  and judged by the supervisor's ``signals`` (``engine.check_signal``: the policy's
  ``signal_rules``, else the built-in rule: a governed process may signal its own tree —
  processes whose ancestry reaches the governed root, or that were seen trapping a
  syscall, so daemons stay members). Pid 1, the supervisor and ``kill -1`` are refused
  whatever a rule says; a refusal is EPERM. Signal 0 (an existence probe) is allowed.
  ``enforce.fdowner`` judges the owner a descriptor signals on I/O with :func:`refusal`.
- ptrace ATTACH/SEIZE and pidfd_getfd: only on members of the tree, else EPERM; so are
  prlimit64 (RLIMIT_CPU kills), sched_set*, setpriority and ioprio_set of another process
  (``handle_process_call``: a whole user's processes are always refused).

Refusals and signals a ``signal_rules`` entry decided are audited (layer "signal" or
"syscall"); the built-in allow is not.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import TYPE_CHECKING, Final

from agentsh.enforce import engine, seccomp, signaltarget, tracee
from agentsh.enforce.policy import Decision, Verdict
from agentsh.enforce.signals import SignalTarget

if TYPE_CHECKING:
    from agentsh.enforce.supervisor import Supervisor

# x86_64 numbers of the calls the filter hands over.
SIGNAL_CALLS: Final = {62: "kill", 200: "tkill", 234: "tgkill", 424: "pidfd_send_signal"} | {
    129: "rt_sigqueueinfo",
    297: "rt_tgsigqueueinfo",
}
NR_PTRACE, NR_PIDFD_GETFD, NR_PROCESS_VM_READV = 101, 438, 310
# Calls that reach into another process: attach to it, take its fds, read its memory.
REACH_CALLS: Final = (NR_PTRACE, NR_PIDFD_GETFD, NR_PROCESS_VM_READV)
# Calls that change another process's limits or scheduling. The first argument names the
# process; 0 (the caller itself) passes in the filter. prlimit64 can kill (RLIMIT_CPU).
BY_PID: Final = {
    302: "prlimit64",
    142: "sched_setparam",
    144: "sched_setscheduler",
    203: "sched_setaffinity",
    314: "sched_setattr",
}
NR_PRLIMIT64: Final = 302
# (which, who) calls: handed over whatever the arguments (the "user" kind reaches every
# process of a uid, and so never only the tree).
BY_KIND: Final = {141: "setpriority", 251: "ioprio_set"}
_KINDS: Final = {141: ("process", "group", "user"), 251: ("", "process", "group", "user")}


def traps(nr: int) -> bool:
    """Syscall ``nr`` is one this module answers."""
    return nr in SIGNAL_CALLS or nr in REACH_CALLS or nr in BY_PID or nr in BY_KIND


def handle(sup: Supervisor, note: seccomp.Notification) -> None:
    """Answer one of the calls :func:`traps` names."""
    if note.nr in SIGNAL_CALLS:
        handle_signal(sup, note)
    elif note.nr in REACH_CALLS:
        handle_reach(sup, note)
    else:
        handle_process_call(sup, note)


def handle_signal(sup: Supervisor, note: seccomp.Notification) -> None:
    """Ask ``sup.signals`` about every process the call reaches; EPERM on the first
    refusal."""
    name = SIGNAL_CALLS[note.nr]
    pids, groups, sig = _signal_targets(name, note)
    if sig == 0 and not groups and pids != [-1]:
        sup.listener.allow(note.id)  # an existence probe changes nothing
        return
    verdict = refusal(sup, note.pid, pids, groups, sig)
    what = f"{name}({', '.join(map(str, pids + [-g for g in groups]))}, {_signame(sig)})"
    decision = verdict.decision.value if verdict.allowed else "deny"
    event = sup.syscall_event(
        note.pid, what, verdict.rule, verdict.message, "signal", decision=decision
    )
    if not verdict.allowed:
        sup.refuse(note, what, event, errno.EPERM)
        return
    sup.listener.allow(note.id)
    if verdict.rule is not None:  # a rule decided (the built-in allow is not audited)
        sup.record(event)


def refusal(sup: Supervisor, caller: int, pids: list[int], groups: list[int], sig: int) -> Verdict:
    """The first refusal among the processes ``pids`` and ``groups`` reach, else the
    first verdict a rule gave, else the built-in allow. ``kill -1`` is always refused:
    it reaches every process, pid 1 and the supervisor included."""
    if -1 in pids:
        message = "signalling every process (kill -1) is not allowed"
        return Verdict(Decision.DENY, "signal-everything", message, "-1")
    members = [m for pgrp in groups for m in signaltarget.group_members(pgrp)]
    decided = Verdict(Decision.ALLOW, None, "within the governed tree")
    for pid in [*pids, *members]:
        if pid != caller and pid > 1 and pid != os.getpid() and tracee.stat(pid) is None:
            continue  # a process that does not exist (the kernel says ESRCH)
        verdict = sup.signals(sig, signaltarget.classify(sup.tree, caller, pid))
        if not verdict.allowed:
            return verdict
        if decided.rule is None:
            decided = verdict
    return decided


def handle_reach(sup: Supervisor, note: seccomp.Notification) -> None:
    """ptrace ATTACH/SEIZE, pidfd_getfd and process_vm_readv: only on members of the
    tree. (The pid is in a register: nothing to reread after the check.)"""
    if note.nr == NR_PTRACE:
        name, target = "ptrace", tracee.s32(note.args[1])
    elif note.nr == NR_PROCESS_VM_READV:
        name, target = "process_vm_readv", tracee.s32(note.args[0])
    else:
        pidfd = tracee.s32(note.args[0])
        name, target = "pidfd_getfd", tracee.fd_target_pid(note.pid, pidfd) or 0
    gone = target > 1 and tracee.stat(target) is None
    if target <= 0 or gone or sup.tree.contains(target):
        sup.listener.allow(note.id)  # nothing to protect, or a member: the kernel decides
        return
    rule_of = _target_refusal(sup, target) or ("outside-tree", "")
    rule = f"{name}-{rule_of[0].removeprefix('signal-')}"
    message = f"{name} of process {target} outside the governed tree is not allowed"
    _refuse_reach(sup, note, f"{name}({target})", rule, message)


def handle_process_call(sup: Supervisor, note: seccomp.Notification) -> None:
    """prlimit64, sched_set*, setpriority, ioprio_set: only on the caller's own tree."""
    name = BY_PID.get(note.nr) or BY_KIND[note.nr]
    if note.nr == NR_PRLIMIT64 and note.args[2] == 0:  # no new limit: only a read
        sup.listener.allow(note.id)
        return
    if note.nr in BY_PID:
        kind, who = "process", tracee.s32(note.args[0])
    else:
        kinds = _KINDS[note.nr]
        which = tracee.s32(note.args[0])
        kind = kinds[which] if 0 <= which < len(kinds) else ""
        who = tracee.s32(note.args[1])
    if kind == "user":
        message = f"{name} of every process of a user reaches processes outside the tree"
        _refuse_reach(sup, note, f"{name}(user {who})", f"{name}-user", message)
        return
    st = tracee.stat(note.pid)
    if kind == "group":
        pids = signaltarget.group_members(who or (st.pgrp if st else 0))
    else:
        pids = [who] if who else []
    outside = next((p for p in pids if not _ours(sup, note.pid, p)), None)
    if outside is None:  # the caller, its tree, or nothing: the kernel decides
        sup.listener.allow(note.id)
        return
    rule_of = _target_refusal(sup, outside) or ("outside-tree", "")
    message = f"{name} of process {outside} outside the governed tree is not allowed"
    what = f"{name}({kind} {who})"
    _refuse_reach(sup, note, what, f"{name}-{rule_of[0].removeprefix('signal-')}", message)


def _ours(sup: Supervisor, caller: int, pid: int) -> bool:
    gone = pid > 1 and tracee.stat(pid) is None
    return (
        gone or pid == caller or tracee.tgid(pid) == tracee.tgid(caller) or sup.tree.contains(pid)
    )


def _refuse_reach(
    sup: Supervisor, note: seccomp.Notification, what: str, rule: str, message: str
) -> None:
    event = sup.syscall_event(note.pid, what, rule, message, "syscall")
    sup.refuse(note, what, event, errno.EPERM)


def _target_refusal(sup: Supervisor, pid: int) -> tuple[str, str] | None:
    """The built-in rule's (rule, message) for reaching ``pid`` from the tree (ptrace,
    pidfd_getfd: signal_rules do not apply); None when it is a member."""
    target = SignalTarget(pid, 0, in_tree=sup.tree.contains(pid), supervisor=pid == os.getpid())
    verdict = engine.builtin_signal_verdict(signal.SIGKILL, target)  # any signal: same rule
    return None if verdict.allowed else (verdict.rule or "outside-tree", verdict.message)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _signal_targets(name: str, note: seccomp.Notification) -> tuple[list[int], list[int], int]:
    """(pids, process groups, signal) a signalling syscall addresses; pid -1 means every
    process. Arguments are ints: only their low 32 bits count."""
    a = [tracee.s32(x) for x in note.args]
    match name:
        case "kill":
            return _kill_targets(note.pid, a[0], a[1])
        case "tkill" | "rt_sigqueueinfo":
            return [a[0]], [], a[1]
        case "tgkill" | "rt_tgsigqueueinfo":
            return [a[1]], [], a[2]
        case "pidfd_send_signal":
            target = tracee.fd_target_pid(note.pid, a[0])
            return ([target] if target and target > 0 else []), [], a[1]
        case _:
            return [-1], [], -1  # unknown: treated as "everything", refused


def _kill_targets(caller: int, pid: int, sig: int) -> tuple[list[int], list[int], int]:
    # kill(2): pid > 0 one process, 0 the caller's group, -1 everything, < -1 group -pid.
    if pid == 0:
        st = tracee.stat(caller)
        return [], [st.pgrp if st else 0], sig
    if pid < -1:
        return [], [-pid], sig
    return [pid], [], sig
