"""The exec checker: names (real file, path as written, argv[0]), wrappers and ``sh -c``
payloads, decisions an exec cannot carry out (approve, redirect). Pure: no kernel."""

from __future__ import annotations

import pytest

from agentsh.enforce import loader
from agentsh.enforce.policy import Decision, Policy
from agentsh.enforce.supervisor import ExecRequest
from agentsh.shell import supervise

DENY_LIST = """
version: 1
name: deny-list
command_rules:
  - name: no-sudo
    commands: [sudo, su]
    decision: deny
    message: no privilege changes
  - name: no-nc
    commands: [nc, nc.openbsd]
    decision: deny
  - name: no-force-push
    commands: [git]
    args_patterns: ['push.*--force']
    decision: deny
  - name: ask-apt
    commands: [apt-get]
    decision: approve
  - name: curl-through-wrapper
    commands: [curl]
    decision: redirect
    redirect_to: {command: /usr/local/bin/safe-curl}
  - name: everything-else
    commands: ["*"]
    decision: allow
file_rules:
  - name: tmp-writable
    paths: ["/tmp/**"]
    operations: ["*"]
    decision: allow
"""

ALLOW_LIST = """
version: 1
name: allow-list
command_rules:
  - name: tools
    commands: [python3, ls, env, bash, sh, true]
    decision: allow
file_rules:
  - name: tmp-writable
    paths: ["/tmp/**"]
    operations: ["*"]
    decision: allow
"""


def _policy(text: str) -> Policy:
    return loader.loads(text, "test.yaml", {"HOME": "/root"})


def req(
    path: str, *argv: str, raw: str | None = None, alias: bool = False, loader: bool = False
) -> ExecRequest:
    raw = raw if raw is not None else path
    return ExecRequest(1, path, raw, argv, "/tmp", trusted_alias=alias, loader=loader)


DENY = supervise.make_checker(_policy(DENY_LIST))
ALLOW = supervise.make_checker(_policy(ALLOW_LIST))


@pytest.mark.parametrize(
    ("request_", "rule"),
    [
        (req("/usr/bin/sudo", "sudo", "id"), "no-sudo"),
        # the real file is sudo, whatever it is called
        (req("/usr/bin/sudo", "ls", raw="/tmp/innocent"), "no-sudo"),
        # argv[0] names an applet (busybox style), the file is innocent
        (req("/usr/bin/busybox", "sudo", "id"), "no-sudo"),
        (req("/bin/true", "-su"), "no-sudo"),  # a login name's dash is ignored
        # the path as written is a denied name (a symlink to an alternative)
        (req("/usr/bin/nc.traditional", "nc", raw="/bin/nc"), "no-nc"),
        (req("/usr/bin/nc.traditional", "x", raw="./nc"), "no-nc"),
        # wrappers and their payloads: the stricter wins
        (req("/usr/bin/env", "env", "FOO=1", "sudo", "id"), "no-sudo"),
        (req("/usr/bin/nice", "nice", "-n", "5", "env", "su"), "no-sudo"),
        (req("/usr/bin/xargs", "xargs", "-0", "sudo"), "no-sudo"),
        (req("/usr/bin/find", "find", ".", "-exec", "sudo", "id", ";"), "no-sudo"),
        (req("/usr/bin/timeout", "timeout", "5", "nc", "-l", "1"), "no-nc"),
        # shell command lines are parsed and prechecked
        (req("/bin/bash", "bash", "-c", "echo hi && sudo id"), "no-sudo"),
        (req("/bin/sh", "sh", "-c", "x=1; for i in 1; do nc -l 9; done"), "no-nc"),
        (req("/bin/bash", "bash", "-c", "bash -c \"sh -c 'sudo id'\""), "no-sudo"),
        (req("/usr/bin/git", "git", "push", "origin", "--force"), "no-force-push"),
        # the dynamic loader runs its operand in its own process: no exec of it follows
        (req("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "ld", "/usr/bin/sudo"), "no-sudo"),
        # ... also a renamed copy, known by its content (ExecRequest.loader)
        (req("/tmp/innocent", "innocent", "--argv0", "ls", "nc", loader=True), "no-nc"),
    ],
)
def test_refused(request_: ExecRequest, rule: str) -> None:
    verdict = DENY(request_)
    assert verdict.decision is Decision.DENY
    assert verdict.rule == rule


@pytest.mark.parametrize(
    "request_",
    [
        req("/usr/bin/git", "git", "push", "origin"),
        req("/bin/bash", "bash", "-c", "ls | grep x && echo ok"),
        # dynamic names are fine under supervision: what they run comes back here
        req("/bin/bash", "bash", "-c", 'x=ls; $x; eval "$(echo true)"'),
        req("/usr/bin/env", "env", "ls"),
        req("/usr/bin/python3.11", "python3", "-c", "import os; os.system('id')"),
        # ldd: the loader lists what a program needs and runs nothing
        req("/tmp/innocent", "ld", "--list", "/usr/bin/sudo", loader=True),
        req("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "ld", "/usr/bin/ls"),
    ],
)
def test_allowed(request_: ExecRequest) -> None:
    assert DENY(request_).allowed


def test_approve_without_an_approver_is_refused() -> None:
    verdict = DENY(req("/usr/bin/apt-get", "apt-get", "install", "x"))
    assert verdict.decision is Decision.DENY
    assert "approval" in verdict.message


def test_redirect_cannot_apply_to_an_exec() -> None:
    verdict = DENY(req("/usr/bin/curl", "curl", "https://example.com"))
    assert verdict.decision is Decision.DENY
    assert verdict.rule == "curl-through-wrapper"
    assert "cannot be redirected" in verdict.message


def test_nesting_deeper_than_the_cap_is_refused() -> None:
    argv = ["env"] * 12 + ["ls"]
    verdict = DENY(req("/usr/bin/env", *argv))
    assert verdict.decision is Decision.DENY
    assert "nested" in verdict.message


def test_allow_list_policy_only_the_real_file_or_a_system_alias_grants() -> None:
    # python3 -> python3.11: the alias is root's, in /usr/bin, where the policy refuses
    # to create files, so its name may grant.
    system = req("/usr/bin/python3.11", "python3", raw="/usr/bin/python3", alias=True)
    assert ALLOW(system).allowed
    # the same alias made where the tree may write files grants nothing
    made = req("/usr/bin/python3.11", "python3", raw="/tmp/bin/python3", alias=True)
    assert not ALLOW(made).allowed
    # argv[0] never grants (exec -a python3 /usr/bin/nc.openbsd)
    lie = req("/usr/bin/nc.openbsd", "python3", raw="/usr/bin/nc.openbsd")
    verdict = ALLOW(lie)
    assert verdict.decision is Decision.DENY
    assert verdict.rule is None  # the real file's own default refusal
    # ... but an explicit allow of the real file is not undone by a nameless argv[0]
    assert ALLOW(req("/usr/bin/ls", "my listing", "-l")).allowed


def test_names_split_granting_from_refusing() -> None:
    policy = _policy(ALLOW_LIST)
    assert supervise.names(req("/usr/bin/python3.11", "-python3", raw="./py"), policy) == (
        ("/usr/bin/python3.11",),
        ("py", "python3"),
    )
    vouched = req("/usr/bin/python3.11", "python3", raw="/usr/bin/python3", alias=True)
    assert supervise.names(vouched, policy) == (
        ("/usr/bin/python3.11", "/usr/bin/python3"),
        ("python3",),
    )


def test_checker_results_are_cached_per_names_and_argv() -> None:
    a = DENY(req("/usr/bin/sudo", "sudo", "id"))
    b = DENY(ExecRequest(99, "/usr/bin/sudo", "/usr/bin/sudo", ("sudo", "id"), "/elsewhere"))
    assert a is b
