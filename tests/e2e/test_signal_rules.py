"""signal_rules end to end: a forked child starts exec supervision (``govern.start`` or
``ptrace.start_traced``) with a policy's signal rules and becomes ``bash -c SCRIPT``; bash's
own ``kill`` (no exec: only the syscall filter sees it) and ``/usr/bin/kill`` signal
processes inside and outside the tree, and the audit events come back through a file sink.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentsh.enforce import audit, engine, govern, loader, ptrace, record, seccomp
from agentsh.enforce.policy import Policy
from agentsh.shell import supervise

pytestmark = pytest.mark.e2e

BASH = "/usr/bin/bash"
HEAD = """version: 1
name: signals-e2e
command_rules:
  - {name: allow-all, commands: ["*"], decision: allow}
"""
NO_KILL_CHILDREN = """signal_rules:
  - name: no-kill-children
    signals: [SIGKILL]
    target: {type: children}
    decision: deny
    message: stop children with SIGTERM
"""
BACKENDS = ["notify", "ptrace"]


@dataclass
class Run:
    status: int
    out: str
    err: str
    events: list[audit.Event]

    def values(self) -> dict[str, str]:
        """``key=value`` lines the script echoed."""
        return dict(line.split("=", 1) for line in self.out.splitlines() if "=" in line)

    def rules(self, decision: str) -> list[str | None]:
        """The rules of the signal events with ``decision``, in order."""
        return [e.rule for e in self.events if e.kind == "signal" and e.decision == decision]


def _skip_unless(backend: str) -> None:
    support = seccomp.probe()
    if not support.usable:
        pytest.skip(f"exec supervision unavailable on this kernel: {support.reason}")
    if backend == "ptrace" and not ptrace.probe().available:
        pytest.skip(f"ptrace backend unavailable here: {ptrace.probe().reason}")


def _sink_factory(events: Path, pid_file: Path) -> Callable[[], Callable[[audit.Event], None]]:
    """Runs in the supervisor (after it detached): it records its pid, then appends every
    event as a JSON line."""

    def factory() -> Callable[[audit.Event], None]:
        pid_file.write_text(str(os.getpid()))
        out = events.open("a")

        def sink(event: audit.Event) -> None:
            out.write(json.dumps(record.asdict(event)) + "\n")
            out.flush()

        return sink

    return factory


def _wait_gone(pid_file: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(int(pid_file.read_text()), 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    pytest.fail("the supervisor did not exit after the tree")


def governed(
    work: Path,
    policy: Policy,
    script: str,
    *,
    backend: str = "notify",
    env: dict[str, str] | None = None,
    rules: bool = True,
) -> Run:
    """Run ``bash -c script`` governed by ``policy`` (its signal rules unless ``rules`` is
    False: then the supervisor's own default)."""
    events, pid_file = work / "events.jsonl", work / "supervisor.pid"
    out, err = work / "out", work / "err"
    for path in (events, pid_file):
        path.unlink(missing_ok=True)
    child = os.fork()
    if child == 0:  # the governed root: becomes bash
        try:
            os.chdir(work)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, out), (2, err)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            start = ptrace.start_traced if backend == "ptrace" else govern.start
            start(
                lambda: supervise.make_checker(policy),
                _sink_factory(events, pid_file),
                first_exec=BASH,
                session="signals-e2e",
                signals=engine.signal_checker(policy) if rules else None,
            )
            os.execve(BASH, ["bash", "-c", script], {"PATH": "/usr/bin:/bin", **(env or {})})
        except BaseException:  # noqa: BLE001 — report, then leave the forked child
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(99)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(child, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the governed run did not finish in 60 s")
        time.sleep(0.01)
    status = os.waitstatus_to_exitcode(done[1])
    if pid_file.exists():
        _wait_gone(pid_file)
    lines = events.read_text().splitlines() if events.exists() else []
    parsed = [audit.Event(**{**json.loads(x), "argv": tuple(json.loads(x)["argv"])}) for x in lines]
    return Run(status, out.read_text(), err.read_text(), parsed)


def _policy(body: str = "") -> Policy:
    return loader.loads(HEAD + body, "signals.yaml", {})


# --------------------------------------------------------------------------- children


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rule_refuses_sigkill_to_children(tmp_path: Path, backend: str) -> None:
    _skip_unless(backend)
    script = (
        "sleep 30 & c=$!; echo child=$c\n"
        "kill -9 $c; echo kill9=$?\n"
        "kill -0 $c; echo alive=$?\n"
        "kill -TERM $c; echo term=$?\n"
        "wait $c; echo waited=$?\n"
    )
    run = governed(tmp_path, _policy(NO_KILL_CHILDREN), script, backend=backend)
    got = run.values()
    assert run.status == 0, run.err
    assert (got["kill9"], got["alive"], got["term"], got["waited"]) == ("1", "0", "0", "143")
    assert "Operation not permitted" in run.err
    denied = [e for e in run.events if e.decision == "deny" and e.kind == "signal"]
    assert [(e.rule, e.kind, e.argv) for e in denied] == [
        ("no-kill-children", "signal", (f"kill({got['child']}, SIGKILL)",))
    ]
    assert denied[0].message == "stop children with SIGTERM"
    assert "agentsh: blocked by policy: kill(" in run.err
    assert "(rule no-kill-children): stop children with SIGTERM" in run.err


def test_children_means_the_senders_children_session_covers_the_tree(tmp_path: Path) -> None:
    """``/usr/bin/kill`` is a sibling of the shell's other children, so a ``children`` rule
    does not cover it (as in the Go agentsh); a ``session`` rule does."""
    _skip_unless("notify")
    script = "sleep 30 & c=$!; /usr/bin/kill -9 $c; echo ext=$?; wait $c; echo waited=$?\n"
    run = governed(tmp_path, _policy(NO_KILL_CHILDREN), script)
    assert run.values() == {"ext": "0", "waited": "137"}, run.err
    session = NO_KILL_CHILDREN.replace("type: children", "type: session")
    script = (
        "sleep 30 & c=$!\n"
        "/usr/bin/kill -9 $c; echo ext=$?\n"
        "python3 -c 'import os, sys; os.kill(int(sys.argv[1]), 9)' $c; echo py=$?\n"
        "kill -9 $c; echo builtin=$?\n"
        "kill -TERM $c; wait $c; echo waited=$?\n"
    )
    run = governed(tmp_path, _policy(session), script)
    assert run.values() == {"ext": "1", "py": "1", "builtin": "1", "waited": "143"}, run.err
    assert run.rules("deny") == ["no-kill-children"] * 3


# --------------------------------------------------------------------------- outside the tree


@pytest.fixture
def outsiders(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """Two processes outside any governed tree: ``sigtarget`` and ``bystander`` (copies
    of sleep, so that their names differ)."""
    procs = []
    for name in ("sigtarget", "bystander"):
        exe = tmp_path / name
        shutil.copy2(shutil.which("sleep") or "/usr/bin/sleep", exe)
        procs.append(subprocess.Popen([str(exe), "60"]))
    try:
        yield procs[0], procs[1]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_rule_allows_signalling_an_outside_process_by_name(
    tmp_path: Path, outsiders: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]
) -> None:
    _skip_unless("notify")
    target, bystander = outsiders
    body = """signal_rules:
  - name: stop-sigtarget
    signals: [SIGTERM]
    target: {type: process, pattern: "sigtar*"}
    decision: allow
"""
    script = "kill -TERM $T; echo target=$?\nkill -TERM $B; echo bystander=$?\n"
    env = {"T": str(target.pid), "B": str(bystander.pid)}
    run = governed(tmp_path, _policy(body), script, env=env)
    assert run.values() == {"target": "0", "bystander": "1"}, run.err
    assert target.wait(10) == -signal.SIGTERM
    assert bystander.poll() is None  # refused: still running
    assert run.rules("allow") == ["stop-sigtarget"]  # an allow by rule is audited
    assert run.rules("deny") == ["signal-outside-tree"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pid1_and_everything_stay_refused_whatever_the_rules(tmp_path: Path, backend: str) -> None:
    _skip_unless(backend)
    body = """signal_rules:
  - {name: system-ok, signals: ["@all"], target: {type: system}, decision: allow}
  - {name: outside-ok, signals: ["@all"], target: {type: external}, decision: allow}
  - {name: pids-ok, signals: ["@all"], target: {type: pid_range, min: 1, max: 99999},
     decision: allow}
"""
    script = "kill -CONT 1; echo init=$?\nkill -CONT -1; echo all=$?\n"
    run = governed(tmp_path, _policy(body), script, backend=backend)
    assert run.values() == {"init": "1", "all": "1"}, run.err
    assert run.rules("deny") == ["signal-init", "signal-everything"]


# --------------------------------------------------------------------------- no rules


@pytest.mark.parametrize("rules", [True, False], ids=["policy-without-rules", "no-checker"])
def test_without_signal_rules_the_default_is_unchanged(tmp_path: Path, rules: bool) -> None:
    _skip_unless("notify")
    script = (
        "sleep 30 & c=$!; kill -9 $c; echo kill9=$?; wait $c; echo waited=$?\n"
        "kill -CONT $PPID; echo parent=$?\n"
        "kill -CONT 1; echo init=$?\n"
    )
    run = governed(tmp_path, _policy(), script, rules=rules)
    assert run.values() == {"kill9": "0", "waited": "137", "parent": "1", "init": "1"}, run.err
    assert run.rules("deny") == ["signal-outside-tree", "signal-init"]
    assert run.rules("allow") == []  # the built-in allow is not audited


# --------------------------------------------------------------------------- the frontend


def _agentsh_exec(work: Path, policy_body: str, config: str, script: str) -> tuple[int, str]:
    """``agentsh exec`` (the frontend's own plumbing: config, policy, plan, supervisor)
    with the audit store in ``work``; returns (status, stdout + stderr)."""
    (work / "policy.yaml").write_text(HEAD + policy_body)
    (work / "config.yaml").write_text(
        f"audit:\n  storage:\n    sqlite_path: {work / 'audit.db'}\n" + config
    )
    agentsh = Path(sys.executable).parent / "agentsh"
    argv = [str(agentsh), "exec", "--root", str(work), "--config", str(work / "config.yaml")]
    argv += ["--policy", str(work / "policy.yaml"), "sig", "--", "bash", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def test_the_frontend_enforces_the_policys_signal_rules(tmp_path: Path) -> None:
    """In a governed shell ``kill`` is /usr/bin/kill (the startup file disables the
    builtin): a ``session`` rule covers the shell's children from there."""
    _skip_unless("notify")
    session = NO_KILL_CHILDREN.replace("type: children", "type: session")
    script = "sleep 30 & c=$!; kill -9 $c; echo kill9=$?; kill $c; wait $c; echo waited=$?"
    status, output = _agentsh_exec(tmp_path, session, "", script)
    assert status == 0, output
    assert "kill9=1" in output, output
    assert "waited=143" in output, output
    assert "(rule no-kill-children): stop children with SIGTERM" in output
    store = audit.open_store(tmp_path / "audit.db", create=False)
    try:
        denied = store.query(decision="deny", session=None)
    finally:
        store.close()
    assert [(e.rule, e.kind) for e in denied] == [("no-kill-children", "signal")]


def test_the_frontend_refuses_rules_it_would_not_enforce(tmp_path: Path) -> None:
    _skip_unless("notify")
    off = "sandbox:\n  seccomp:\n    hardening:\n      signals: false\n"
    status, output = _agentsh_exec(tmp_path, NO_KILL_CHILDREN, off, "echo ran")
    assert status == 2, output
    assert "ran" not in output.split()
    assert "policy.yaml:6: signal_rules: sandbox.seccomp.hardening.signals is off" in output
