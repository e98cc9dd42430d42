"""The policy engine: command/file/network matching, defaults, messages, approvals."""

from __future__ import annotations

import pytest

from agentsh.enforce import engine, loader
from agentsh.enforce.engine import (
    check_command,
    check_file,
    check_network,
    resolve_approval,
    stricter,
)
from agentsh.enforce.policy import (
    STRICTNESS,
    CommandRule,
    Decision,
    FileRule,
    Policy,
    Redirect,
    Verdict,
)

ALLOW, DENY, APPROVE = Decision.ALLOW, Decision.DENY, Decision.APPROVE


def _load(body: str) -> Policy:
    return loader.loads("version: 1\nname: t\n" + body, "t.yaml", {"HOME": "/home/a"})


# --------------------------------------------------------------------------- commands

COMMANDS = _load(
    """command_rules:
  - {name: sudo, commands: [sudo], decision: deny}
  - {name: bash-path, commands: [/bin/bash], decision: audit}
  - {name: bash, commands: [bash], decision: allow}
  - {name: usr-sh, commands: ['/usr/*/sh'], decision: approve}
  - {name: mkfs, commands: ['mkfs*'], decision: deny}
  - {name: py, commands: ['python3.*', '/opt/**/py'], decision: allow}
  - name: rm-recursive
    commands: [rm]
    args_patterns: ['-[^-]*r', '--recursive']
    decision: deny
    message: "recursive rm of {{.Args}} by {{.Command}} ({{ .Path }}) {{.Unknown}}"
  - {name: rm, commands: [rm], decision: allow}
  - name: install
    commands: [npm]
    args_patterns: ['^install']
    decision: approve
  - name: swap
    commands: [vi]
    decision: redirect
    redirect_to: {command: nano, args: [-R]}
"""
)

# (argv, decision or None for default deny, rule)
COMMAND_CASES = [
    (["sudo", "id"], DENY, "sudo"),
    (["/usr/bin/sudo", "id"], DENY, "sudo"),  # full path meets the basename rule
    (["./sudo"], DENY, "sudo"),
    (["../../usr/bin/sudo"], DENY, "sudo"),
    (["//usr//bin//sudo"], DENY, "sudo"),
    (["SUDO"], DENY, "sudo"),  # case-insensitive, like agentsh
    (["sudo.real"], DENY, "sudo"),  # agentsh #230: .real is stripped
    (["/usr/bin/sudo.real.real"], DENY, "sudo"),
    (["sudoedit"], None, None),  # a basename is not a prefix
    (["/bin/bash", "-c", "x"], Decision.AUDIT, "bash-path"),  # exact full path
    (["/bin/../bin/bash"], Decision.AUDIT, "bash-path"),  # normalised first
    (["/bin/bash.real"], Decision.AUDIT, "bash-path"),  # .real stripped from full paths too
    (["bash"], ALLOW, "bash"),  # no path: the full-path rule cannot match
    (["bash.real"], ALLOW, "bash"),
    (["/usr/local/bin/bash"], ALLOW, "bash"),
    (["/usr/bin/sh"], APPROVE, "usr-sh"),  # path glob: * is one component
    (["/usr/local/bin/sh"], None, None),
    (["sh"], None, None),
    (["mkfs"], DENY, "mkfs"),
    (["mkfs.ext4", "/dev/sda"], DENY, "mkfs"),
    (["/sbin/mkfs.xfs"], DENY, "mkfs"),
    (["python3.11", "-c", "pass"], ALLOW, "py"),
    (["python3"], None, None),
    (["/opt/py"], ALLOW, "py"),  # ** spans zero components
    (["/opt/a/b/py"], ALLOW, "py"),
    (["rm", "-rf", "x"], DENY, "rm-recursive"),
    (["rm", "-fr", "x"], DENY, "rm-recursive"),
    (["rm", "-f", "-r", "x"], DENY, "rm-recursive"),  # searched in the joined arguments
    (["rm", "--recursive", "x"], DENY, "rm-recursive"),
    (["rm", "x"], ALLOW, "rm"),
    (["rm"], ALLOW, "rm"),  # no arguments: "" matches no pattern
    (["rm", "--", "-x"], ALLOW, "rm"),
    (["npm", "install", "x"], APPROVE, "install"),
    (["npm", "--verbose", "install"], None, None),  # ^ anchors at the first argument
    (["npm", "run", "install"], None, None),
    (["vi", "f"], Decision.REDIRECT, "swap"),
    (["unknown-tool"], None, None),
]


@pytest.mark.parametrize(("argv", "decision", "rule"), COMMAND_CASES, ids=repr)
def test_command_matching(argv: list[str], decision: Decision | None, rule: str | None) -> None:
    verdict = check_command(COMMANDS, argv)
    assert (verdict.decision, verdict.rule) == (decision or DENY, rule)
    if decision is None:
        assert "no command rule allows" in verdict.message


def test_messages_render_placeholders_and_keep_unknown_ones() -> None:
    verdict = check_command(COMMANDS, ["/bin/rm", "-rf", "a b"])
    assert verdict.message == "recursive rm of -rf a b by /bin/rm (/bin/rm) {{.Unknown}}"
    assert verdict.subject == "/bin/rm -rf 'a b'"


def test_default_messages_name_the_rule() -> None:
    assert check_command(COMMANDS, ["sudo"]).message == "denied by rule sudo"
    assert check_command(COMMANDS, ["bash"]).message == "allowed by rule bash"
    assert (
        check_command(COMMANDS, ["npm", "install"]).message == "approval required by rule install"
    )


def test_redirect_carries_its_target() -> None:
    assert check_command(COMMANDS, ["vi"]).redirect_to == Redirect("nano", ("-R",))


def test_redirect_without_target_fails_closed() -> None:
    # The loader refuses such a rule; a policy built in code must not turn it into an allow.
    rules = (
        CommandRule("r", ("vi",), Decision.REDIRECT),
        FileRule("f", ("/x",), ("read",), Decision.REDIRECT),
    )
    policy = Policy(1, "hand", "<code>", command_rules=rules[:1], file_rules=rules[1:])
    for verdict in (check_command(policy, ["vi"]), check_file(policy, "read", "/x")):
        assert verdict.decision is DENY
        assert "no redirect_to" in verdict.message


@pytest.mark.parametrize("argv", [[], [""]])
def test_empty_command_is_denied(argv: list[str]) -> None:
    verdict = check_command(COMMANDS, argv)
    assert verdict.decision is DENY
    assert verdict.rule is None


def test_first_match_wins_in_file_order() -> None:
    policy = _load(
        "command_rules:\n  - {name: a, commands: [git], decision: allow}\n"
        "  - {name: b, commands: [git], decision: deny}\n"
    )
    assert check_command(policy, ["git"]).rule == "a"


def test_no_rules_means_deny() -> None:
    verdict = check_command(_load(""), ["ls"])
    assert (verdict.decision, verdict.rule) == (DENY, None)


def test_checks_use_patterns_compiled_at_load_time() -> None:
    policy = _load(
        "command_rules:\n  - {name: z, commands: [zzz-only-here, '/zz/*'], decision: deny}\n"
        "file_rules:\n  - {name: f, paths: ['/zz-only/**'], operations: [read], decision: deny}\n"
        "network_rules:\n  - {name: n, domains: ['*.zz-only.example'], decision: deny}\n"
    )
    before = [
        f.cache_info().misses
        for f in (engine.compile_commands, engine.compile_paths, engine.compile_domains)
    ]
    check_command(policy, ["zzz-only-here"])
    check_file(policy, "read", "/zz-only/x")
    check_network(policy, "a.zz-only.example", None, 443)
    after = [
        f.cache_info().misses
        for f in (engine.compile_commands, engine.compile_paths, engine.compile_domains)
    ]
    assert after == before


# --------------------------------------------------------------------------- files

GLOBS = [
    ("/a/**", "/a", True),
    ("/a/**", "/a/b/c", True),
    ("/a/**", "/ab", False),
    ("/a/**/z", "/a/z", True),
    ("/a/**/z", "/a/b/c/z", True),
    ("/a/**/z", "/a/b/zz", False),
    ("**/.env", "/.env", True),
    ("**/.env", "/p/q/.env", True),
    ("**/.env", "/p/q/.envrc", False),
    ("**/.env.*", "/p/.env.local", True),
    ("/home/*/.ssh/**", "/home/u/.ssh/id_rsa", True),
    ("/home/*/.ssh/**", "/home/u/v/.ssh/id_rsa", False),  # * is one component
    ("/tmp/*", "/tmp/x", True),
    ("/tmp/*", "/tmp/x/y", False),
    ("/tmp/*", "/tmp", False),
    ("/f?o", "/foo", True),
    ("/f?o", "/f/o", False),  # ? is not a separator
    ("/proc/[0-9]*/environ", "/proc/42/environ", True),
    ("/proc/[0-9]*/environ", "/proc/self/environ", False),
    ("/x/[!a]", "/x/b", True),
    ("/x/[!a]", "/x/a", False),
    ("/etc/{shadow,gshadow}", "/etc/gshadow", True),
    ("/etc/{shadow,gshadow}", "/etc/passwd", False),
    ("/lit\\*", "/lit*", True),
    ("/lit\\*", "/litx", False),
    ("/tmp/", "/tmp", True),  # a trailing slash is ignored
    ("**", "/any/thing", True),
    ("/", "/", True),
    ("/", "/x", False),
]


@pytest.mark.parametrize(("pattern", "path", "matches"), GLOBS)
def test_path_globs(pattern: str, path: str, matches: bool) -> None:
    policy = _load(
        f"file_default: deny\nfile_rules:\n  - name: g\n    paths: ['{pattern}']\n"
        "    operations: ['*']\n    decision: allow\n"
    )
    assert (check_file(policy, "read", path).decision is ALLOW) is matches


FILES = _load(
    """file_rules:
  - name: ssh
    paths: ['${HOME}/.ssh/**']
    operations: ['*']
    decision: deny
    message: "no {{.Operation}} of {{.Path}}"
  - {name: proj-write, paths: [/p/**], operations: [write, create], decision: allow}
  - {name: proj-delete, paths: [/p/**], operations: [delete], decision: soft_delete}
  - {name: etc, paths: [/etc/**], operations: ['*'], decision: audit}
"""
)

FILE_CASES = [
    ("read", "/home/a/.ssh/id_rsa", DENY, "ssh"),
    ("write", "/home/a/.ssh", DENY, "ssh"),
    ("READ", "/home/a/.ssh/k", DENY, "ssh"),
    ("read", "/p/../home/a/.ssh/k", DENY, "ssh"),  # normalised before matching
    ("read", "//home//a/./.ssh/k", DENY, "ssh"),
    ("write", "/p/x", ALLOW, "proj-write"),
    ("delete", "/p/x", Decision.SOFT_DELETE, "proj-delete"),
    ("rename", "/p/x", DENY, None),  # no rule: writes are denied by default
    ("read", "/p/x", ALLOW, None),  # no rule: reads are allowed by default
    ("execute", "/usr/bin/ls", ALLOW, None),
    ("chmod", "/etc/x", Decision.AUDIT, "etc"),
    ("*", "/etc/x", Decision.AUDIT, "etc"),  # a rule covering every operation
    ("*", "/p/x", DENY, None),  # no rule covers all operations on /p
    ("frobnicate", "/p/x", DENY, None),
    ("read", "relative/x", DENY, None),
]


@pytest.mark.parametrize(("op", "path", "decision", "rule"), FILE_CASES, ids=repr)
def test_file_rules(op: str, path: str, decision: Decision, rule: str | None) -> None:
    verdict = check_file(FILES, op, path)
    assert (verdict.decision, verdict.rule) == (decision, rule)


def test_file_messages() -> None:
    assert check_file(FILES, "read", "/home/a/.ssh/k").message == "no read of /home/a/.ssh/k"
    assert "writes are denied" in check_file(FILES, "write", "/srv/x").message
    assert "unknown file operation" in check_file(FILES, "frobnicate", "/p").message
    assert "not absolute" in check_file(FILES, "read", "x").message


@pytest.mark.parametrize("default", ["allow", "deny", "approve", "audit"])
def test_file_default(default: str) -> None:
    policy = _load(f"file_default: {default}\n")
    for op in ("read", "write"):
        verdict = check_file(policy, op, "/x")
        assert (verdict.decision, verdict.rule) == (Decision(default), None)
        assert "file_default" in verdict.message


# --------------------------------------------------------------------------- network

NETWORK = _load(
    """network_rules:
  - {name: lo, cidrs: [127.0.0.0/8, '::1/128'], decision: allow}
  - {name: metadata, cidrs: [169.254.169.254], decision: deny, message: "no {{.RemoteAddr}}"}
  - {name: private, cidrs: [10.0.0.0/8, 'fc00::/7'], decision: deny}
  - {name: evil, domains: [evil.com, '*.evil.com'], decision: deny}
  - {name: pypi, domains: [pypi.org], ports: [443], decision: allow}
  - {name: both, domains: [mixed.example], cidrs: [192.0.2.0/24], decision: allow}
  - {name: https, ports: [443], decision: approve}
  - {name: rest, domains: ['*'], ports: [80], decision: deny}
"""
)

NETWORK_CASES = [
    ("localhost", "127.0.0.1", 8000, ALLOW, "lo"),
    (None, "127.0.0.5", 1, ALLOW, "lo"),
    ("127.0.0.1", None, 22, ALLOW, "lo"),  # an IP literal as host is an address
    (None, "::1", 5432, ALLOW, "lo"),
    (None, "169.254.169.254", 80, DENY, "metadata"),
    (None, "::ffff:169.254.169.254", 80, DENY, "metadata"),  # IPv4-mapped IPv6
    ("[::ffff:a9fe:a9fe]", None, 80, DENY, "metadata"),
    ("pypi.org", "10.1.2.3", 443, DENY, "private"),  # cidr rules judge the real address
    (None, "fd12::1", 443, DENY, "private"),
    ("evil.com", None, 443, DENY, "evil"),
    ("EVIL.com.", None, 443, DENY, "evil"),  # case and trailing dot
    ("a.b.evil.com", None, 443, DENY, "evil"),  # * spans dots
    ("notevil.com", None, 443, APPROVE, "https"),
    ("pypi.org", None, 443, ALLOW, "pypi"),
    ("pypi.org", None, 80, DENY, "rest"),  # ports are part of the match
    ("mixed.example", "192.0.2.9", 22, ALLOW, "both"),  # domains AND cidrs
    ("mixed.example", "198.51.100.1", 22, DENY, None),
    ("mixed.example", None, 22, DENY, None),  # a cidr rule needs an address
    (None, "203.0.113.9", 80, DENY, "rest"),  # * matches an address-only destination
    ("example.com", None, 8080, DENY, None),
    (None, "not-an-ip", 80, DENY, None),
    (None, None, 80, DENY, None),
]


@pytest.mark.parametrize(("host", "ip", "port", "decision", "rule"), NETWORK_CASES, ids=repr)
def test_network_rules(
    host: str | None, ip: str | None, port: int, decision: Decision, rule: str | None
) -> None:
    verdict = check_network(NETWORK, host, ip, port)
    assert (verdict.decision, verdict.rule) == (decision, rule)


def test_network_messages_and_subjects() -> None:
    verdict = check_network(NETWORK, None, "169.254.169.254", 80)
    assert verdict.message == "no 169.254.169.254:80"
    assert verdict.subject == "169.254.169.254:80"
    assert check_network(NETWORK, None, "::2", 9).subject == "[::2]:9"
    assert (
        "no network rule allows example.com:8080"
        in check_network(NETWORK, "example.com", None, 8080).message
    )
    assert "invalid IP address" in check_network(NETWORK, None, "x", 1).message


def test_rule_without_selectors_matches_everything() -> None:
    policy = _load("network_rules:\n  - {name: all, decision: audit}\n")
    assert check_network(policy, "a.example", None, 1).decision is Decision.AUDIT


def test_no_network_rules_means_deny() -> None:
    verdict = check_network(_load(""), "pypi.org", "151.101.0.223", 443)
    assert (verdict.decision, verdict.rule) == (DENY, None)


# --------------------------------------------------------------------------- approvals

APPROVAL = Verdict(APPROVE, "install", "Agent wants to install packages: x", "npm install x")


def test_approve_without_approver_is_a_deny_saying_so() -> None:
    verdict = resolve_approval(APPROVAL, approver_available=False)
    assert verdict.decision is DENY
    assert not verdict.allowed
    assert verdict.rule == "install"
    assert verdict.subject == "npm install x"
    assert "approval required" in verdict.message
    assert "Agent wants to install packages: x" in verdict.message


def test_approve_with_approver_is_left_to_ask() -> None:
    assert resolve_approval(APPROVAL, approver_available=True) == APPROVAL


@pytest.mark.parametrize("decision", [d for d in Decision if d is not APPROVE])
def test_other_decisions_pass_through(decision: Decision) -> None:
    verdict = Verdict(decision, "r", "m", "s")
    assert resolve_approval(verdict, approver_available=False) == verdict


# ARCHITECTURE §5 / agentsh-policy(5): the order in which the stricter decision wins.
ORDER = [ALLOW, Decision.AUDIT, Decision.SOFT_DELETE, Decision.REDIRECT, APPROVE, DENY]


def test_strictness_covers_every_decision_in_the_documented_order() -> None:
    assert sorted(Decision, key=STRICTNESS.__getitem__) == ORDER


@pytest.mark.parametrize("a", ORDER)
@pytest.mark.parametrize("b", ORDER)
def test_stricter(a: Decision, b: Decision) -> None:
    wrapper, payload = Verdict(a, "wrapper", ""), Verdict(b, "payload", "")
    expected = payload if ORDER.index(b) > ORDER.index(a) else wrapper  # a tie keeps the wrapper
    assert stricter(wrapper, payload) is expected


def test_stricter_examples() -> None:
    env_allow = Verdict(ALLOW, "allow-env", "")
    sudo_deny = Verdict(DENY, "block-sudo", "")
    assert stricter(env_allow, sudo_deny) is sudo_deny
    assert stricter(sudo_deny, env_allow) is sudo_deny
    assert stricter(Verdict(APPROVE, "a", ""), Verdict(Decision.REDIRECT, "r", "")).rule == "a"


def test_open_and_read_name_the_same_act() -> None:
    # exe.dev lists only "read" for /etc/ld.so.cache: the dynamic loader's open must pass,
    # and a rule that denies "read" of a secret also refuses opening it.
    policy = Policy(
        1,
        "t",
        "<code>",
        file_rules=(
            FileRule("deny-read-secret", ("/s/**",), ("read",), Decision.DENY),
            FileRule("etc-read", ("/etc/ld.so.cache",), ("read", "stat"), Decision.ALLOW),
            FileRule("dirs", ("/d",), ("list",), Decision.ALLOW),
            FileRule("rest", ("**",), ("*",), Decision.DENY),
        ),
    )
    assert check_file(policy, "open", "/etc/ld.so.cache").rule == "etc-read"
    assert check_file(policy, "open", "/etc/ld.so.cache").allowed
    assert check_file(policy, "open", "/d").rule == "dirs"
    assert check_file(policy, "open", "/s/key").rule == "deny-read-secret"
    assert not check_file(policy, "open", "/s/key").allowed
    assert check_file(policy, "write", "/etc/ld.so.cache").rule == "rest"  # no synonym
