"""signal_rules: loading (errors name file, line and key), the engine's table, the target
classification from /proc, and the supervisor's answer through a stand-in listener."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsh.enforce import audit, engine, loader, seccomp, signals, signaltarget, tracee
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.policy import Decision, Policy
from agentsh.enforce.record import replace
from agentsh.enforce.signals import SignalTarget
from agentsh.enforce.supervisor import Supervisor
from agentsh.shell import run

ALLOW, DENY, AUDIT = Decision.ALLOW, Decision.DENY, Decision.AUDIT
HEAD = "version: 1\nname: t\nsignal_rules:\n"
VARS = {"HOME": "/home/a"}


def _load(body: str) -> Policy:
    return loader.loads(HEAD + body, "sig.yaml", VARS)


def _error(body: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        _load(body)
    return info.value


# --------------------------------------------------------------------------- signal names


@pytest.mark.parametrize(
    ("entry", "numbers"),
    [
        ("SIGKILL", {9}),
        ("kill", {9}),
        ("sigTerm", {15}),
        (" 9 ", {9}),
        ("64", {64}),
        ("SIGIOT", {6}),
        ("@fatal", {9, 15, 3, 6}),
        ("@JOB", {19, 18, 20, 21, 22}),
        ("@reload", {1, 10, 12}),
        ("@ignore", {17, 23, 28}),
        ("@all", set(range(1, 65))),
    ],
)
def test_signal_entries(entry: str, numbers: set[int]) -> None:
    assert signals.parse(entry) == numbers


@pytest.mark.parametrize("entry", ["0", "65", "-1", "SIGFOO", "@fatall", "", "SIGRTMIN"])
def test_bad_signal_entries(entry: str) -> None:
    with pytest.raises(ValueError, match="signal"):
        signals.parse(entry)


def test_signal_names() -> None:
    assert signals.name(9) == "SIGKILL"
    assert signals.name(40) == "SIG40"


# --------------------------------------------------------------------------- loading

GOOD = """  - name: no-kill-children
    description: children get TERM, not KILL
    signals: [SIGKILL, 9, "@job"]
    target:
      type: children
    decision: deny
    message: use kill -TERM
    fallback: audit
    timeout: 30s
  - name: pg
    signals: [term]
    target: {type: process, pattern: "${HOME}/bin/pg*"}
    decision: allow
  - name: low-pids
    signals: ["@all"]
    target: {type: pid_range, min: 2, max: 300}
    decision: audit
"""


def test_a_go_signal_policy_loads_with_its_meaning() -> None:
    first, second, third = _load(GOOD).signal_rules
    assert first.name == "no-kill-children"
    assert first.signals == {9, 19, 18, 20, 21, 22}
    assert (first.target.kind, first.decision, first.fallback) == ("children", DENY, AUDIT)
    assert (first.message, first.timeout_s, first.line) == ("use kill -TERM", 30.0, 4)
    assert second.target.pattern == "/home/a/bin/pg*"  # ${HOME} expanded
    assert (second.signals, second.decision, second.line) == ({15}, ALLOW, 13)
    assert (third.target.pid_min, third.target.pid_max, third.decision) == (2, 300, AUDIT)


def test_no_signal_rules_is_the_empty_tuple() -> None:
    assert loader.loads("version: 1\nname: t\n", "t.yaml", {}).signal_rules == ()


R = "  - name: r\n"
ERRORS = [
    (R + "    signals: [SIGFOO]\n    target: {type: self}\n    decision: deny\n", 5,
     "signal_rules[0].signals[0]", "unknown signal 'SIGFOO'"),
    (R + "    signals: [9, 99]\n    target: {type: self}\n    decision: deny\n", 5,
     "signal_rules[0].signals[1]", "out of range"),
    (R + "    signals: ['@bad']\n    target: {type: self}\n    decision: deny\n", 5,
     "signal_rules[0].signals[0]", "unknown signal group"),
    (R + "    signals: []\n    target: {type: self}\n    decision: deny\n", 5,
     "signal_rules[0].signals", "one entry or more"),
    (R + "    target: {type: self}\n    decision: deny\n", 4,
     "signal_rules[0].signals", "one entry or more"),
    (R + "    signals: [9]\n    target: {type: kids}\n    decision: deny\n", 6,
     "signal_rules[0].target.type", "unknown target type 'kids'"),
    (R + "    signals: [9]\n    target: {pattern: x}\n    decision: deny\n", 6,
     "signal_rules[0].target.type", "missing"),
    (R + "    signals: [9]\n    decision: deny\n", 4,
     "signal_rules[0].target", "missing"),
    (R + "    signals: [9]\n    target: children\n    decision: deny\n", 6,
     "signal_rules[0].target", "expected a mapping"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: maybe\n", 7,
     "signal_rules[0].decision", "unknown decision 'maybe'"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: soft_delete\n", 7,
     "signal_rules[0].decision", "unknown decision"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: absorb\n", 7,
     "signal_rules[0].decision", "'absorb' is not supported"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: redirect\n", 7,
     "signal_rules[0].decision", "'redirect' is not supported"),
    (R + "    signals: [9]\n    target: {type: children}\n    decision: redirect\n"
     "    redirect_to: SIGTERM\n", 8,
     "signal_rules[0].redirect_to", "cannot change the signal"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: deny\n    fallback: absorb\n",
     8, "signal_rules[0].fallback", "unknown decision 'absorb'"),
    (R + "    signals: [9]\n    target: {type: process}\n    decision: deny\n", 6,
     "signal_rules[0].target.pattern", "required with type: process"),
    (R + "    signals: [9]\n    target: {type: self, pattern: x}\n    decision: deny\n", 6,
     "signal_rules[0].target.pattern", "only valid with type: process"),
    (R + "    signals: [9]\n    target: {type: pid_range, min: 1}\n    decision: deny\n", 6,
     "signal_rules[0].target.max", "required with type: pid_range"),
    (R + "    signals: [9]\n    target: {type: pid_range, min: 0, max: 5}\n    decision: deny\n",
     6, "signal_rules[0].target.min", "out of range"),
    (R + "    signals: [9]\n    target:\n      type: pid_range\n      min: 9\n      max: 2\n"
     "    decision: deny\n", 9, "signal_rules[0].target.max", "smaller than min (9)"),
    (R + "    signals: [9]\n    target: {type: process, pattern: '[x'}\n    decision: deny\n", 6,
     "signal_rules[0].target.pattern", "unclosed '['"),
    (R + "    signals: [9]\n    target: {type: process, pattern: '${NOPE}/x'}\n"
     "    decision: deny\n", 6, "signal_rules[0].target.pattern", "NOPE is not set"),
    (R + "    signals: [9]\n    target: {type: self, pid: 4}\n    decision: deny\n", 6,
     "signal_rules[0].target.pid", "unknown key"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: deny\n    signal: [1]\n", 8,
     "signal_rules[0].signal", "did you mean 'signals'"),
    (R + "    signals: [9]\n    target: {type: self}\n    decision: deny\n" + R
     + "    signals: [1]\n    target: {type: self}\n    decision: deny\n", 8,
     "signal_rules[1].name", "duplicate rule name 'r'"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "line", "key", "why"), ERRORS)
def test_loader_errors_name_line_and_key(body: str, line: int, key: str, why: str) -> None:
    err = _error(body)
    assert (err.file, err.line, err.key) == ("sig.yaml", line, key), str(err)
    assert why in err.why, str(err)


# --------------------------------------------------------------------------- engine

ME, CHILD, GRANDCHILD, SIB, PARENT, OUT, SUP = 500, 501, 502, 503, 400, 900, 77


def _t(pid: int, relation: signals.Relation = "other", **kw: object) -> SignalTarget:
    inside = relation != "parent" and pid not in (OUT, SUP, 1)
    fields: dict[str, object] = {"in_tree": inside, "same_user": True, **kw}
    return SignalTarget(pid, ME, relation, **fields)  # type: ignore[arg-type]


TARGETS = {
    "self": _t(ME, "self"),
    "child": _t(CHILD, "child", comm="sleep", exe="/usr/bin/sleep"),
    "grandchild": _t(GRANDCHILD, "descendant"),
    "sibling": _t(SIB, "sibling"),
    "parent": _t(PARENT, "parent"),
    "outside": _t(OUT, comm="postgres: wal", exe="/usr/lib/postgresql/16/bin/postgres"),
    "outside-other-user": _t(OUT, same_user=False, comm="sshd", exe="/usr/sbin/sshd"),
    "low-pid": _t(42, in_tree=False),
    "init": _t(1, in_tree=False),
    "supervisor": _t(SUP, supervisor=True),
}
RULES = _load(
    """  - {name: no-kill-children, signals: [SIGKILL], target: {type: children}, decision: deny}
  - {name: grandkids, signals: ["@fatal"], target: {type: descendants}, decision: audit}
  - {name: sibs, signals: [SIGUSR1], target: {type: siblings}, decision: deny}
  - {name: self-stop, signals: [SIGSTOP], target: {type: self}, decision: deny}
  - {name: parent-hup, signals: [SIGHUP], target: {type: parent}, decision: allow}
  - {name: ask-parent, signals: [SIGUSR2], target: {type: parent}, decision: approve}
  - {name: pg, signals: [SIGTERM], target: {type: process, pattern: "postgres*"}, decision: allow}
  - {name: pg-path, signals: [SIGINT],
     target: {type: process, pattern: "/usr/lib/postgresql/*/bin/*"}, decision: allow}
  - {name: mine, signals: [SIGQUIT], target: {type: user}, decision: allow}
  - {name: all-system, signals: ["@all"], target: {type: system}, decision: allow}
  - {name: range, signals: [SIGWINCH], target: {type: pid_range, min: 850, max: 950},
     decision: allow}
  - {name: session-cont, signals: [SIGCONT], target: {type: session}, decision: deny}
  - {name: external-cont, signals: [SIGCONT], target: {type: external}, decision: allow}
"""
)
K, T, Q, CONT, INT, HUP = 9, 15, 3, 18, 2, 1
USR1, USR2, STOP, WINCH = 10, 12, 19, 28
TABLE = [
    # (target, signal, decision, rule)
    ("child", K, DENY, "no-kill-children"),
    ("child", T, AUDIT, "grandkids"),  # children are descendants too
    ("grandchild", K, AUDIT, "grandkids"),  # `children` is direct children only
    ("grandchild", USR1, ALLOW, None),  # no rule: the built-in own-tree allow
    ("sibling", USR1, DENY, "sibs"),
    ("child", USR1, ALLOW, None),
    ("self", STOP, DENY, "self-stop"),
    ("self", T, ALLOW, None),
    ("parent", HUP, ALLOW, "parent-hup"),
    ("parent", T, DENY, "signal-outside-tree"),  # outside: built-in refusal
    ("parent", USR2, DENY, "ask-parent"),  # approve: nobody to ask
    ("outside", T, ALLOW, "pg"),  # comm matches
    ("outside", K, DENY, "signal-outside-tree"),
    ("outside", INT, ALLOW, "pg-path"),  # full-path pattern
    ("outside", Q, ALLOW, "mine"),
    ("outside-other-user", Q, DENY, "signal-outside-tree"),
    ("outside-other-user", T, DENY, "signal-outside-tree"),
    ("low-pid", T, ALLOW, "all-system"),
    ("outside", WINCH, ALLOW, "range"),
    ("child", CONT, DENY, "session-cont"),
    ("self", CONT, DENY, "session-cont"),
    ("outside", CONT, ALLOW, "external-cont"),
    # pid 1 and the supervisor are refused whatever a rule says (all-system, external-cont)
    ("init", T, DENY, "signal-init"),
    ("init", CONT, DENY, "signal-init"),
    ("supervisor", CONT, DENY, "signal-supervisor"),
    ("supervisor", Q, DENY, "signal-supervisor"),
    # signal 0 only probes
    ("init", 0, ALLOW, None),
    ("outside", 0, ALLOW, None),
]


@pytest.mark.parametrize(("target", "sig", "decision", "rule"), TABLE)
def test_check_signal(target: str, sig: int, decision: Decision, rule: str | None) -> None:
    verdict = engine.check_signal(RULES, sig, TARGETS[target])
    assert (verdict.decision, verdict.rule) == (decision, rule), verdict


NO_RULES = loader.loads("version: 1\nname: t\n", "t.yaml", {})


@pytest.mark.parametrize(
    ("target", "decision", "rule"),
    [
        ("self", ALLOW, None),
        ("child", ALLOW, None),
        ("grandchild", ALLOW, None),
        ("sibling", ALLOW, None),
        ("parent", DENY, "signal-outside-tree"),
        ("outside", DENY, "signal-outside-tree"),
        ("low-pid", DENY, "signal-outside-tree"),
        ("init", DENY, "signal-init"),
        ("supervisor", DENY, "signal-supervisor"),
    ],
)
def test_without_rules_the_builtin_rule_decides(
    target: str, decision: Decision, rule: str | None
) -> None:
    verdict = engine.check_signal(NO_RULES, signal.SIGKILL, TARGETS[target])
    assert (verdict.decision, verdict.rule) == (decision, rule)
    assert engine.builtin_signal_verdict(signal.SIGKILL, TARGETS[target]) == verdict


def test_messages_say_what_and_why() -> None:
    denied = engine.check_signal(RULES, K, TARGETS["child"])
    assert denied.message == "denied by rule no-kill-children"
    assert denied.subject == f"SIGKILL to {CHILD}"
    asked = engine.check_signal(RULES, USR2, TARGETS["parent"])
    assert "approval required, but no approver" in asked.message
    custom = _load(
        "  - {name: c, signals: [9], target: {type: children}, decision: deny,"
        " message: 'send TERM first'}\n"
    )
    assert engine.check_signal(custom, K, TARGETS["child"]).message == "send TERM first"


def test_a_comm_pattern_does_not_match_paths_and_globs_are_case_sensitive() -> None:
    policy = _load(
        "  - {name: a, signals: [15], target: {type: process, pattern: 'Sleep'}, decision: deny}\n"
        "  - {name: b, signals: [15], target: {type: process, pattern: 'usr*'}, decision: deny}\n"
    )
    assert engine.check_signal(policy, T, TARGETS["child"]).rule is None


def test_a_hand_built_rule_with_an_unusable_decision_denies() -> None:
    loaded = _load("  - {name: x, signals: [9], target: {type: children}, decision: allow}\n")
    bad = replace(loaded.signal_rules[0], decision=Decision.REDIRECT)
    policy = Policy(1, "hand", "<code>", signal_rules=(bad,))
    verdict = engine.check_signal(policy, K, TARGETS["child"])
    assert (verdict.decision, verdict.rule) == (DENY, "x")


# --------------------------------------------------------------------------- /proc classification


@pytest.fixture
def family(tmp_path: Path) -> Iterator[tuple[int, int, int]]:
    """(child, grandchild, sibling-of-child) sleeping processes of this test process."""
    script = tmp_path / "fam.sh"
    script.write_text("sleep 60 & echo $! > " + str(tmp_path / "gc") + "\nwait\n")
    child = subprocess.Popen(["/bin/sh", str(script)])
    sibling = subprocess.Popen(["sleep", "60"])
    deadline = time.monotonic() + 10
    while not (tmp_path / "gc").exists() or not (tmp_path / "gc").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    grandchild = int((tmp_path / "gc").read_text())
    try:
        yield child.pid, grandchild, sibling.pid
    finally:
        for proc_pid in (grandchild, child.pid, sibling.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc_pid, signal.SIGKILL)
        child.wait()
        sibling.wait()


def test_classify_reads_the_relations_from_proc(family: tuple[int, int, int]) -> None:
    child, grandchild, sibling = family
    tree = tracee.Tree(os.getpid())
    me = os.getpid()
    got = {pid: signaltarget.classify(tree, me, pid) for pid in (me, child, grandchild)}
    assert got[me].relation == "self"
    assert got[child].relation == "child"
    assert got[grandchild].relation == "descendant"
    assert got[grandchild].comm == "sleep"
    assert got[grandchild].exe.endswith("/sleep")
    assert got[child].in_tree
    assert got[grandchild].in_tree
    assert all(t.same_user for t in got.values())
    # here this process plays the supervisor too: never a member, whatever its relation
    assert [pid for pid, t in got.items() if t.supervisor or not t.in_tree] == [me]
    # From the child's view: the other child of this process is its sibling, we its parent.
    assert signaltarget.classify(tree, child, sibling).relation == "sibling"
    assert signaltarget.classify(tree, child, me).relation == "parent"
    outside = signaltarget.classify(tree, me, os.getppid())
    assert (outside.relation, outside.in_tree) == ("parent", False)
    assert signaltarget.classify(tree, me, 1).in_tree is False


def test_group_members_lists_a_process_group(family: tuple[int, int, int]) -> None:
    members = signaltarget.group_members(os.getpgrp())
    assert os.getpid() in members
    assert set(family) <= set(members)


# --------------------------------------------------------------------------- the supervisor


class _FakeListener(seccomp.Listener):
    """Offers one notification and keeps the answer (the Listener surface _signal uses)."""

    def __init__(self) -> None:
        super().__init__(-1)
        self.notes: list[seccomp.Notification] = []
        self.answers: dict[int, int] = {}  # id -> 0 (CONTINUE) or errno

    def recv(self) -> seccomp.Notification:
        return self.notes.pop(0)

    def allow(self, nid: int) -> bool:
        self.answers[nid] = 0
        return True

    def fail(self, nid: int, err: int) -> bool:
        self.answers[nid] = err
        return True


def _kill(policy: Policy, caller: int, pid: int, sig: int) -> tuple[int, list[audit.Event]]:
    """What the supervisor answers to ``kill(pid, sig)`` from ``caller``; the events."""
    events: list[audit.Event] = []
    listener = _FakeListener()
    sup = Supervisor(
        listener,
        lambda req: pytest.fail("no exec here"),
        events.append,
        frontend_pid=os.getpid(),
        signals=engine.signal_checker(policy),
    )
    sup.tell = lambda tid, line: None  # type: ignore[method-assign]  # not our stderr
    listener.notes.append(seccomp.Notification(7, caller, 0, 62, 0, 0, (pid, sig, 0, 0, 0, 0)))
    sup.handle_one()
    sup.flush()
    return listener.answers[7], events


KIDS = _load(
    "  - {name: no-kill-children, signals: [SIGKILL], target: {type: children}, decision: deny}\n"
    "  - {name: audit-term, signals: [SIGTERM], target: {type: descendants}, decision: audit}\n"
)


def test_supervisor_refuses_with_eperm_and_audits_the_rule(family: tuple[int, int, int]) -> None:
    child, grandchild, _ = family
    answer, events = _kill(KIDS, os.getpid(), child, signal.SIGKILL)
    assert answer == errno.EPERM
    assert [(e.decision, e.rule, e.kind) for e in events] == [
        ("deny", "no-kill-children", "signal")
    ]
    assert events[0].argv == (f"kill({child}, SIGKILL)",)
    # a grandchild is not a child: the built-in rule allows it, unaudited
    assert _kill(KIDS, os.getpid(), grandchild, signal.SIGKILL) == (0, [])


def test_supervisor_audits_a_signal_a_rule_lets_through(family: tuple[int, int, int]) -> None:
    child, _, _ = family
    answer, events = _kill(KIDS, os.getpid(), child, signal.SIGCONT)
    assert (answer, events) == (0, [])
    answer, events = _kill(KIDS, os.getpid(), child, signal.SIGTERM)
    assert answer == 0
    assert [(e.decision, e.rule) for e in events] == [("audit", "audit-term")]


def test_supervisor_keeps_pid1_and_everything_refused_whatever_the_rules() -> None:
    everything = _load(
        "  - {name: all, signals: ['@all'], target: {type: system}, decision: allow}\n"
        "  - {name: ext, signals: ['@all'], target: {type: external}, decision: allow}\n"
    )
    answer, events = _kill(everything, os.getpid(), 1, signal.SIGCONT)
    assert (answer, [e.rule for e in events]) == (errno.EPERM, ["signal-init"])
    answer, events = _kill(everything, os.getpid(), -1, signal.SIGCONT)
    assert (answer, [e.rule for e in events]) == (errno.EPERM, ["signal-everything"])
    # the rules do let an outside process be signalled, audited
    answer, events = _kill(everything, os.getpid(), os.getppid(), signal.SIGCONT)
    assert (answer, [(e.decision, e.rule) for e in events]) == (0, [("allow", "ext")])


def test_supervisor_judges_each_member_of_a_process_group(family: tuple[int, int, int]) -> None:
    # kill(0, ...) from this process reaches our whole group: our children in it are
    # refused by the rule (or, first, a process that started pytest, by the built-in one).
    answer, events = _kill(KIDS, os.getpid(), 0, signal.SIGKILL)
    assert answer == errno.EPERM
    assert [e.rule for e in events] in (["no-kill-children"], ["signal-outside-tree"])
    # ... while SIGTERM reaches only processes the rules and the built-in rule allow
    setsid_group = _kill(KIDS, os.getpid(), -os.getpgrp(), signal.SIGTERM)
    assert setsid_group[0] in (0, errno.EPERM)


# --------------------------------------------------------------------------- config


def test_rules_with_signal_supervision_off_refuse_to_load() -> None:
    settings = run.Settings(
        policy=KIDS,
        root=Path("/"),
        audit_enabled=False,
        audit_path=Path("/nonexistent"),
        env_inject=(),
        approvals_enabled=False,
        hardening=(("signals", False),),
    )
    with pytest.raises(PolicyError, match=r"hardening\.signals is off") as info:
        run.signal_checker(settings)
    assert (info.value.line, info.value.key) == (4, "signal_rules")
    # without rules, or with the switch on, the checker is the policy's
    run.signal_checker(replace(settings, policy=NO_RULES))
    on = run.signal_checker(replace(settings, hardening=()))
    assert on(signal.SIGKILL, TARGETS["child"]).rule == "no-kill-children"


def test_the_settings_cache_keeps_signal_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached snapshot (the warm shim path) unpickles the signal rules, no rebuild."""
    from agentsh.enforce import snapshot

    policies = tmp_path / "etc/agentsh/policies"
    policies.mkdir(parents=True)
    (policies / "mine.yaml").write_text(HEAD + GOOD)
    config = tmp_path / "etc/agentsh/config.yaml"
    config.write_text(f"policies:\n  dir: {policies}\n  default: mine\n")
    builds: list[object] = []
    original = snapshot._build

    def spy(*args: object, **kwargs: object) -> snapshot.Snapshot:
        builds.append(args)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot, "_build", spy)
    cache = tmp_path / "cache" / "settings"
    loads = [
        snapshot.load(config, override=None, variables=VARS, trusted=True, cache_dir=cache)
        for _ in range(2)
    ]
    assert len(builds) == 1  # the second load was a hit
    assert loads[1].policy.signal_rules == _load(GOOD).signal_rules
