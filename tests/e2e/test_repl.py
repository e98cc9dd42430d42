"""The governed interactive shell on a real pty (pexpect), inside an overlay root so the
audit store lands in the overlay's /var."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest

from agentsh.install import overlay as overlay_mod

pytestmark = pytest.mark.e2e

PROMPT = r"agentsh:[^\r\n]*\$ "


def _session(project: str) -> dict[str, Any]:
    fake = Path("/usr/bin/sudo")  # in the overlay: a stand-in the supervisor must refuse
    if not fake.exists():
        fake.write_text("#!/bin/sh\necho fake-sudo-ran\n")
        fake.chmod(0o755)
    child = pexpect.spawn(
        sys.executable,
        ["-I", "-m", "agentsh.shell", "--real", "/usr/bin/bash", "--", "-i"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root", "TERM": "dumb", "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.delaybeforesend = 0
    seen: dict[str, Any] = {}

    def step(line: str) -> str:
        child.sendline(line)
        child.expect(PROMPT)
        return str(child.before)

    child.expect(PROMPT)
    seen["echo"] = step("echo hello-$((40+2))")
    step("cd /tmp")
    seen["pwd"] = step("pwd")
    step("x=5; f() { echo fn-$1; }")
    seen["state"] = step('echo "var-$x"; f 7')
    seen["sudo"] = step("sudo id")
    seen["after_refusal"] = step("echo still-here")
    child.sendline("for i in 1 2; do")
    child.expect("> ")
    child.sendline("echo loop-$i")
    child.expect("> ")
    child.sendline("done")
    child.expect(PROMPT)
    seen["loop"] = str(child.before)
    seen["status"] = step("false; echo rc=$?")
    # The layers govern bash and what it runs (the prompt itself stays outside them).
    seen["etc_write"] = step("echo x > /etc/agentsh-repl-probe; echo rc=$?")
    seen["shadow"] = step("cat /etc/shadow > /dev/null; echo rc=$?")
    seen["child_exec"] = step("python3 -c \"import os; os.execv('/usr/bin/sudo', ['sudo'])\"")
    seen["project_write"] = step("cd -; echo ok > made.txt && cat made.txt")
    child.sendline("exit 7")
    child.expect(pexpect.EOF)
    child.close()
    seen["exit"] = child.exitstatus
    return seen


@pytest.fixture(scope="module")
def repl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    base = tmp_path_factory.mktemp("repl")
    project = base / "project"
    project.mkdir()
    return overlay_mod.call_in_overlay(lambda: _session(str(project)), base / "ov", timeout=120)


def test_commands_run_on_the_terminal(repl: dict[str, Any]) -> None:
    assert "hello-42" in repl["echo"]


def test_state_persists_between_lines(repl: dict[str, Any]) -> None:
    assert "/tmp" in repl["pwd"]
    assert "var-5" in repl["state"]
    assert "fn-7" in repl["state"]


def test_refused_line_names_the_rule_and_the_shell_goes_on(repl: dict[str, Any]) -> None:
    assert "blocked by policy: sudo id (rule " in repl["sudo"]
    assert "still-here" in repl["after_refusal"]


def test_multi_line_input(repl: dict[str, Any]) -> None:
    assert "loop-1" in repl["loop"]
    assert "loop-2" in repl["loop"]


def test_exit_status(repl: dict[str, Any]) -> None:
    assert "rc=1" in repl["status"]
    assert repl["exit"] == 7


def test_bash_and_its_children_are_governed(repl: dict[str, Any]) -> None:
    # Landlock (and the file monitor) refuse the system write; the monitor the secret
    # read; exec supervision the exec of sudo from a child; the project stays writable.
    assert "rc=1" in repl["etc_write"]
    assert "rc=1" in repl["shadow"]
    assert "blocked by policy: read /etc/shadow" in repl["shadow"]
    assert "blocked by policy" in repl["child_exec"]
    assert "fake-sudo-ran" not in repl["child_exec"]
    assert "ok" in repl["project_write"]
