"""Signals as ``signal_rules`` name them, and what the engine knows about a signal's target.

Pure data (no I/O): ``enforce.loader`` turns the ``signals`` entries of a rule into signal
numbers with :func:`parse`; the supervisor describes each target it is asked about as a
:class:`SignalTarget` (``enforce.signaltarget`` reads ``/proc`` for it); the engine
(``engine.check_signal``) matches one against the other.

Names and numbers are Linux x86-64's (signal(7)). An entry is a name with or without the
``SIG`` prefix in any case (``SIGKILL``, ``kill``), a number 1 to 64 (real-time signals
have numbers only: glibc and the kernel disagree on where ``SIGRTMIN`` is), or a group.
The groups are the Go agentsh's (``@fatal``, ``@job``, ``@reload``, ``@ignore``) plus
``@all`` (1 to 64), which its design describes but its loader does not accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from agentsh.enforce.record import dataclass

NAMES: dict[str, int] = {
    "SIGHUP": 1,
    "SIGINT": 2,
    "SIGQUIT": 3,
    "SIGILL": 4,
    "SIGTRAP": 5,
    "SIGABRT": 6,
    "SIGIOT": 6,
    "SIGBUS": 7,
    "SIGFPE": 8,
    "SIGKILL": 9,
    "SIGUSR1": 10,
    "SIGSEGV": 11,
    "SIGUSR2": 12,
    "SIGPIPE": 13,
    "SIGALRM": 14,
    "SIGTERM": 15,
    "SIGSTKFLT": 16,
    "SIGCHLD": 17,
    "SIGCLD": 17,
    "SIGCONT": 18,
    "SIGSTOP": 19,
    "SIGTSTP": 20,
    "SIGTTIN": 21,
    "SIGTTOU": 22,
    "SIGURG": 23,
    "SIGXCPU": 24,
    "SIGXFSZ": 25,
    "SIGVTALRM": 26,
    "SIGPROF": 27,
    "SIGWINCH": 28,
    "SIGIO": 29,
    "SIGPOLL": 29,
    "SIGPWR": 30,
    "SIGSYS": 31,
}
MAX_SIGNAL = 64  # _NSIG - 1 on Linux
GROUPS: dict[str, frozenset[int]] = {
    "@fatal": frozenset({9, 15, 3, 6}),  # KILL, TERM, QUIT, ABRT
    "@job": frozenset({19, 18, 20, 21, 22}),  # STOP, CONT, TSTP, TTIN, TTOU
    "@reload": frozenset({1, 10, 12}),  # HUP, USR1, USR2
    "@ignore": frozenset({17, 23, 28}),  # CHLD, URG, WINCH
    "@all": frozenset(range(1, MAX_SIGNAL + 1)),
}
SYSTEM_PID_LIMIT = 100  # `system` targets: pid 1 and the low pids of kernel threads

Relation = Literal["self", "child", "descendant", "parent", "sibling", "other"]


def parse(entry: str) -> frozenset[int]:
    """The signal numbers one ``signals`` entry stands for.

    Raises:
        ValueError: an unknown name or group, or a number outside 1..64 (0, the existence
            probe, is always allowed and never named in a rule).
    """
    text = entry.strip()
    if text.startswith("@"):
        group = GROUPS.get(text.lower())
        if group is None:
            raise ValueError(f"unknown signal group {entry!r} (use {', '.join(sorted(GROUPS))})")
        return group
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= MAX_SIGNAL:
            raise ValueError(f"signal number {number} is out of range (1 to {MAX_SIGNAL})")
        return frozenset({number})
    upper = text.upper()
    number_or_none = NAMES.get(upper, NAMES.get("SIG" + upper))
    if number_or_none is None:
        raise ValueError(f"unknown signal {entry!r} (a name such as SIGTERM, a number, or a group)")
    return frozenset({number_or_none})


def name(sig: int) -> str:
    """``SIGKILL`` for 9, ``SIG40`` for a real-time or unknown number."""
    for text, number in NAMES.items():
        if number == sig:
            return text
    return f"SIG{sig}"


@dataclass(frozen=True)
class SignalTarget:
    """One process a signal would reach, as seen from the process sending it.

    Attributes:
        pid: the target process (thread group id as the supervisor sees it).
        caller: the sending process (thread group id).
        relation: to the caller: ``self``; ``child`` (its parent is the caller);
            ``descendant`` (the caller is a farther ancestor); ``parent`` (the caller's
            parent); ``sibling`` (same parent, not init); else ``other``.
        in_tree: the target belongs to the governed tree (the caller itself does).
        supervisor: the target is the agentsh supervisor.
        same_user: the target runs with the caller's real uid.
        comm: the target's ``comm`` (``/proc/PID/comm``; at most 15 bytes, settable by
            the process itself); ``""`` when unreadable.
        exe: the full path of the target's executable; ``""`` when unreadable (a kernel
            thread, or another user's process).

    What each ``target.type`` matches: ``self``, ``children`` (relation child),
    ``descendants`` (child or descendant), ``siblings`` (sibling inside the tree),
    ``session`` (inside the tree, the caller included), ``parent``, ``external`` (outside
    the tree), ``system`` (pid below 100), ``user`` (same user, outside the tree),
    ``process`` (a glob over ``comm`` and the basename of ``exe``, or over ``exe``
    when the pattern has a ``/``), ``pid_range`` (min <= pid <= max).
    """

    pid: int
    caller: int
    relation: Relation = "other"
    in_tree: bool = False
    supervisor: bool = False
    same_user: bool = False
    comm: str = ""
    exe: str = ""


# ``target.type`` kinds decided by the target alone (see SignalTarget); ``process`` and
# ``pid_range`` also need the rule's pattern or range (``engine.check_signal``).
TARGET_TESTS: dict[str, Callable[[SignalTarget], bool]] = {
    "self": lambda t: t.relation == "self",
    "children": lambda t: t.relation == "child",
    "descendants": lambda t: t.relation in ("child", "descendant"),
    "siblings": lambda t: t.relation == "sibling" and t.in_tree,
    "session": lambda t: t.in_tree,
    "parent": lambda t: t.relation == "parent",
    "external": lambda t: not t.in_tree,
    "system": lambda t: 0 < t.pid < SYSTEM_PID_LIMIT,
    "user": lambda t: t.same_user and not t.in_tree,
}
TARGET_KINDS = frozenset(TARGET_TESTS) | {"process", "pid_range"}
