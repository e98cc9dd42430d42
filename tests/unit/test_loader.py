"""The policy loader: strict errors (file, line, key path), variables, durations, lint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agentsh.enforce import loader, yamlnodes
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.policy import Decision, Policy, Redirect
from agentsh.enforce.yamlnodes import expand, parse_duration

ROOT = Path(__file__).resolve().parents[2]
VARS = {"HOME": "/home/agent", "PROJECT_ROOT": "/work/proj", "TMPDIR": "/tmp"}


def _policy(body: str, variables: dict[str, str] | None = None) -> Policy:
    return loader.loads(
        "version: 1\nname: t\n" + body, "t.yaml", VARS if variables is None else variables
    )


def _error(text: str, variables: dict[str, str] | None = None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        loader.loads(text, "t.yaml", VARS if variables is None else variables)
    return info.value


CMD = "version: 1\nname: t\ncommand_rules:\n"  # rules start on line 4
FILE = "version: 1\nname: t\nfile_rules:\n"
NET = "version: 1\nname: t\nnetwork_rules:\n"
RULE_A = "  - name: a\n    commands: [x]\n    decision: deny\n"  # lines 4-6 after CMD

# (id, text, line, key path, part of the reason)
ERRORS = [
    (
        "unknown-top-key",
        "version: 1\nname: t\ncomand_rules: []\n",
        3,
        "comand_rules",
        "unknown key; did you mean 'command_rules'",
    ),
    (
        "unknown-rule-key",
        CMD + RULE_A + "    mesage: hi\n",
        7,
        "command_rules[0].mesage",
        "did you mean 'message'",
    ),
    (
        "unknown-section-key",
        "version: 1\nname: t\naudit:\n  log_everything: true\n",
        4,
        "audit.log_everything",
        "unknown key",
    ),
    (
        "anchor-only-section",
        "version: 1\nname: t\nunix_socket_rules: []\n",
        3,
        "unix_socket_rules",
        "not supported yet",
    ),
    (
        "anchor-only-rule-key",
        CMD + RULE_A + "    env_deny: [X]\n",
        7,
        "command_rules[0].env_deny",
        "not supported yet",
    ),
    (
        "commands-not-a-list",
        CMD + "  - name: a\n    commands: sudo\n    decision: deny\n",
        5,
        "command_rules[0].commands",
        "expected a list, got a string",
    ),
    (
        "port-as-string",
        NET + "  - name: a\n    ports: ['443']\n    decision: allow\n",
        5,
        "network_rules[0].ports[0]",
        "expected an integer, got a string",
    ),
    (
        "bool-as-string",
        "version: 1\nname: t\naudit:\n  log_allowed: 'yes'\n",
        4,
        "audit.log_allowed",
        "expected true or false",
    ),
    (
        "rules-not-a-list",
        "version: 1\nname: t\nfile_rules: {a: 1}\n",
        3,
        "file_rules",
        "expected a list, got a mapping",
    ),
    ("rule-is-null", CMD + RULE_A + "  -\n", 7, "command_rules[1]", "expected a mapping"),
    (
        "bad-regex",
        CMD + RULE_A + "  - name: b\n    commands: [rm]\n    args_patterns: ['ok', '(']\n"
        "    decision: deny\n",
        9,
        "command_rules[1].args_patterns[1]",
        "rule 'b': invalid regular expression '('",
    ),
    (
        "bad-path-glob",
        FILE + "  - name: f\n    paths: ['/etc/[x']\n    operations: [read]\n    decision: deny\n",
        5,
        "file_rules[0].paths[0]",
        "rule 'f': unclosed '['",
    ),
    (
        "relative-path-glob",
        FILE + "  - name: f\n    paths:\n      - /ok/**\n      - etc/x\n"
        "    operations: [read]\n    decision: deny\n",
        7,
        "file_rules[0].paths[1]",
        "not absolute",
    ),
    (
        "double-star-in-component",
        FILE + "  - name: f\n    paths: ['/a**']\n    operations: [read]\n    decision: deny\n",
        5,
        "file_rules[0].paths[0]",
        "'**' must be a whole path component",
    ),
    (
        "dotdot-path",
        FILE + "  - name: f\n    paths: ['/a/../etc/**']\n    operations: [read]\n"
        "    decision: deny\n",
        5,
        "file_rules[0].paths[0]",
        "'..'",
    ),
    (
        "bad-command-glob",
        CMD + "  - name: a\n    commands: ['[x']\n    decision: deny\n",
        5,
        "command_rules[0].commands[0]",
        "unclosed '['",
    ),
    (
        "command-with-space",
        CMD + "  - name: a\n    commands: ['git push']\n    decision: deny\n",
        5,
        "command_rules[0].commands[0]",
        "match arguments with args_patterns",
    ),
    (
        "bad-domain",
        NET + "  - name: a\n    domains: ['10.0.0.0/8']\n    decision: deny\n",
        5,
        "network_rules[0].domains[0]",
        "IP ranges go in cidrs",
    ),
    (
        "unknown-decision",
        CMD + "  - name: a\n    commands: [x]\n    decision: block\n",
        6,
        "command_rules[0].decision",
        "unknown decision 'block'",
    ),
    (
        "redirect-in-file-rule",
        FILE + "  - name: f\n    paths: [/x]\n    operations: [read]\n    decision: redirect\n",
        7,
        "file_rules[0].decision",
        "unknown decision 'redirect'",
    ),
    (
        "soft-delete-in-network",
        NET + "  - name: a\n    decision: soft_delete\n",
        5,
        "network_rules[0].decision",
        "unknown decision",
    ),
    (
        "missing-decision",
        CMD + "  - name: a\n    commands: [x]\n",
        4,
        "command_rules[0].decision",
        "missing",
    ),
    (
        "missing-commands",
        CMD + "  - name: a\n    decision: deny\n",
        4,
        "command_rules[0].commands",
        "one entry or more",
    ),
    (
        "empty-commands",
        CMD + "  - name: a\n    commands: []\n    decision: deny\n",
        5,
        "command_rules[0].commands",
        "one entry or more",
    ),
    (
        "missing-rule-name",
        CMD + "  - commands: [x]\n    decision: deny\n",
        4,
        "command_rules[0].name",
        "missing",
    ),
    ("missing-version", "name: t\ncommand_rules: []\n", 1, "version", "missing"),
    ("version-2", "version: 2\nname: t\n", 1, "version", "unsupported version"),
    ("version-string", "version: one\nname: t\n", 1, "version", "expected an integer"),
    ("missing-name", "version: 1\ndescription: x\n", 1, "name", "missing"),
    (
        "duplicate-rule-name",
        CMD + RULE_A + "  - name: a\n    commands: [y]\n    decision: allow\n",
        7,
        "command_rules[1].name",
        "duplicate rule name 'a' (first used by command_rules[0])",
    ),
    (
        "duplicate-key",
        CMD + RULE_A + "    decision: allow\n",
        7,
        "command_rules[0].decision",
        "duplicate key",
    ),
    (
        "merge-key",
        "version: 1\nname: t\naudit: &a {log_allowed: true}\nresource_limits:\n  <<: *a\n",
        5,
        "resource_limits.<<",
        "YAML merge key",
    ),
    (
        "unknown-file-operation",
        FILE + "  - name: f\n    paths: [/x]\n    operations: [read, wrte]\n    decision: deny\n",
        6,
        "file_rules[0].operations[1]",
        "unknown file operation 'wrte'",
    ),
    (
        "bad-cidr-prefix",
        NET + "  - name: a\n    cidrs: ['10.0.0.0/33']\n    decision: deny\n",
        5,
        "network_rules[0].cidrs[0]",
        "bad CIDR '10.0.0.0/33'",
    ),
    (
        "bad-cidr-text",
        NET + "  - name: a\n    cidrs:\n      - 10.0.0.0/8\n      - ten/8\n    decision: deny\n",
        7,
        "network_rules[0].cidrs[1]",
        "bad CIDR 'ten/8'",
    ),
    (
        "port-zero",
        NET + "  - name: a\n    ports: [443, 0]\n    decision: allow\n",
        5,
        "network_rules[0].ports[1]",
        "out of range (must be between 1 and 65535)",
    ),
    (
        "port-too-big",
        NET + "  - name: a\n    ports: [65536]\n    decision: allow\n",
        5,
        "network_rules[0].ports[0]",
        "out of range",
    ),
    (
        "duration-without-unit",
        FILE + "  - name: f\n    paths: [/x]\n    operations: [read]\n"
        "    decision: approve\n    timeout: 300\n",
        8,
        "file_rules[0].timeout",
        "bad duration",
    ),
    (
        "duration-days",
        "version: 1\nname: t\nresource_limits:\n  command_timeout: 1d\n",
        4,
        "resource_limits.command_timeout",
        "bad duration '1d'",
    ),
    (
        "duration-negative",
        NET + "  - name: a\n    decision: approve\n    timeout: -5m\n",
        6,
        "network_rules[0].timeout",
        "bad duration",
    ),
    (
        "duration-list",
        "version: 1\nname: t\nresource_limits:\n  idle_timeout: [1m]\n",
        4,
        "resource_limits.idle_timeout",
        "expected a duration",
    ),
    (
        "negative-limit",
        "version: 1\nname: t\nenv_policy:\n  max_keys: -1\n",
        4,
        "env_policy.max_keys",
        "out of range",
    ),
    (
        "redirect-without-target",
        CMD + "  - name: a\n    commands: [x]\n    decision: redirect\n",
        4,
        "command_rules[0].redirect_to",
        "required when decision is redirect",
    ),
    (
        "redirect-target-on-deny",
        CMD + RULE_A + "    redirect_to: {command: y}\n",
        7,
        "command_rules[0].redirect_to",
        "only valid with decision: redirect",
    ),
    (
        "redirect-without-command",
        CMD + "  - name: a\n    commands: [x]\n    decision: redirect\n"
        "    redirect_to:\n      args: [y]\n",
        8,
        "command_rules[0].redirect_to.command",
        "missing",
    ),
    (
        "redirect-args-append",
        CMD + "  - name: a\n    commands: [x]\n    decision: redirect\n"
        "    redirect_to:\n      command: y\n      args_append: [z]\n",
        9,
        "command_rules[0].redirect_to.args_append",
        "not supported yet",
    ),
    (
        "file-default-redirect",
        "version: 1\nname: t\nfile_default: redirect\n",
        3,
        "file_default",
        "unknown decision 'redirect'",
    ),
    (
        "env-inject-bad-name",
        "version: 1\nname: t\nenv_inject:\n  BAD-NAME: x\n",
        4,
        "env_inject.BAD-NAME",
        "not a valid environment variable name",
    ),
    (
        "env-inject-list-value",
        "version: 1\nname: t\nenv_inject:\n  A: [x]\n",
        4,
        "env_inject.A",
        "expected a string, got a list",
    ),
    ("top-level-list", "- version: 1\n", 1, "(top level)", "expected a mapping, got a list"),
    ("non-string-key", "version: 1\nname: t\n1: x\n", 3, "(top level)", "keys must be strings"),
    ("yaml-syntax", "version: 1\nname: t\ncommand_rules:\n  - name: [a\n", 5, "yaml", ""),
    (
        "python-tag",
        "version: 1\nname: !!python/object/apply:os.system ['true']\n",
        2,
        "name",
        "expected a string",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "why"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_file_line_and_key(text: str, line: int, key: str, why: str) -> None:
    err = _error(text)
    assert (err.file, err.line, err.key) == ("t.yaml", line, key), str(err)
    assert why in err.why
    assert err.exit_code == 2
    assert str(err).startswith(f"t.yaml:{line}: {key}: ")


# (id, text, variables, line, key, part of the reason)
VARIABLE_ERRORS = [
    (
        "unset-in-path",
        FILE + "  - name: f\n    paths: ['${PROJECT_ROOT}/**']\n    operations: [read]\n"
        "    decision: allow\n",
        {},
        5,
        "file_rules[0].paths[0]",
        "variable PROJECT_ROOT is not set",
    ),
    (
        "empty-is-unset",
        FILE + "  - name: f\n    paths: ['${PROJECT_ROOT}/**']\n"
        "    operations: [read]\n    decision: allow\n",
        {"PROJECT_ROOT": ""},
        5,
        "file_rules[0].paths[0]",
        "PROJECT_ROOT is not set",
    ),
    (
        "root-value",
        FILE + "  - name: f\n    paths: ['${PROJECT_ROOT}/**']\n    operations: [read]\n"
        "    decision: allow\n",
        {"PROJECT_ROOT": "/"},
        5,
        "file_rules[0].paths[0]",
        "PROJECT_ROOT='/' must be an absolute path below /",
    ),
    (
        "dotdot-to-root",
        FILE + "  - name: f\n    paths: ['${PROJECT_ROOT}/**']\n"
        "    operations: [read]\n    decision: allow\n",
        {"PROJECT_ROOT": "/work/.."},
        5,
        "file_rules[0].paths[0]",
        "must be an absolute path below /",
    ),
    (
        "relative-value",
        FILE + "  - name: f\n    paths: ['${PROJECT_ROOT}/**']\n"
        "    operations: [read]\n    decision: allow\n",
        {"PROJECT_ROOT": "work"},
        5,
        "file_rules[0].paths[0]",
        "must be an absolute path",
    ),
    (
        "glob-in-value",
        FILE + "  - name: f\n    paths: ['${HOME}/.ssh/**']\n    operations: [read]\n"
        "    decision: deny\n",
        {"HOME": "/home/*"},
        5,
        "file_rules[0].paths[0]",
        "must not contain glob characters",
    ),
    (
        "bare-dollar-name",
        FILE + "  - name: f\n    paths: ['$HOME/.ssh/**']\n    operations: [read]\n"
        "    decision: deny\n",
        VARS,
        5,
        "file_rules[0].paths[0]",
        "write ${NAME} instead of $NAME",
    ),
    (
        "unset-in-domain",
        NET + "  - name: a\n    domains: ['${REGISTRY}']\n    decision: allow\n",
        {},
        5,
        "network_rules[0].domains[0]",
        "variable REGISTRY is not set",
    ),
    (
        "unset-in-command",
        CMD + "  - name: a\n    commands: ['${TOOLS}/x']\n    decision: deny\n",
        {},
        5,
        "command_rules[0].commands[0]",
        "TOOLS",
    ),
    (
        "unset-in-env-inject",
        "version: 1\nname: t\nenv_inject:\n  A: ${NOPE}\n",
        {},
        4,
        "env_inject.A",
        "NOPE",
    ),
    (
        "unclosed-reference",
        FILE + "  - name: f\n    paths: ['${HOME/x']\n    operations: [read]\n    decision: deny\n",
        VARS,
        5,
        "file_rules[0].paths[0]",
        "bad variable reference",
    ),
]


@pytest.mark.parametrize(
    ("text", "variables", "line", "key", "why"),
    [e[1:] for e in VARIABLE_ERRORS],
    ids=[e[0] for e in VARIABLE_ERRORS],
)
def test_variable_errors(
    text: str, variables: dict[str, str], line: int, key: str, why: str
) -> None:
    err = _error(text, variables)
    assert (err.line, err.key) == (line, key), str(err)
    assert why in err.why


def test_load_names_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "version: 1\nname: t\nfile_rules:\n  - name: f\n    paths: [/x]\n"
        "    operations: [read]\n    decision: maybe\n"
    )
    with pytest.raises(PolicyError) as info:
        loader.load(path, VARS)
    assert info.value.render().startswith(f"agentsh: {path}:7: file_rules[0].decision: ")


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot be read"), (b"\xff\xfe", "cannot be read")],
    ids=["missing", "not-utf8"],
)
def test_unreadable_file(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PolicyError) as info:
        loader.load(path, VARS)
    assert info.value.file == str(path)
    assert why in info.value.why


def test_empty_document_is_missing_version() -> None:
    err = _error("# only a comment\n")
    assert err.key == "version"


def test_a_full_rule_set_loads_with_lines_and_compiled_patterns() -> None:
    policy = loader.loads(
        """version: 1
name: full
description: d
command_rules:
  - name: rm
    commands: [rm]
    args_patterns: ['^-r', '--recursive']
    decision: DENY
    message: no
  - name: pip
    commands: [pip]
    decision: redirect
    redirect_to: {command: /usr/bin/uv, args: [pip, '${PROJECT_ROOT}']}
file_rules:
  - name: proj
    paths: ['${PROJECT_ROOT}/']
    operations: [READ, '*']
    decision: approve
    timeout: 1h30m
network_rules:
  - name: pypi
    domains: [PyPI.org.]
    cidrs: [10.0.0.1/8, 192.0.2.7]
    ports: [443, 80]
    decision: audit
    timeout: 90s
env_policy: {allow: [PATH], deny: ['AWS_*'], max_bytes: 1000, max_keys: 10, block_iteration: true}
env_inject: {A: '${HOME}/x', B: plain}
resource_limits: {pids_max: 7, command_timeout: 5m, session_timeout: 0}
audit: {log_allowed: false, retention_days: 3}
file_default: deny
""",
        "full.yaml",
        VARS,
    )
    rm, pip = policy.command_rules
    assert (rm.line, pip.line) == (5, 10)
    assert rm.decision is Decision.DENY
    assert all(isinstance(p, re.Pattern) for p in rm.args_patterns)
    assert [p.pattern for p in rm.args_patterns] == ["^-r", "--recursive"]
    assert pip.redirect_to == Redirect("/usr/bin/uv", ("pip", "/work/proj"))
    (proj,) = policy.file_rules
    assert proj.paths == ("/work/proj/",)
    assert proj.operations == ("read", "*")
    assert proj.timeout_s == 5400.0
    assert proj.line == 15
    (pypi,) = policy.network_rules
    assert pypi.ports == (443, 80)
    assert pypi.timeout_s == 90.0
    assert policy.env_policy.deny == ("AWS_*",)
    assert policy.env_policy.block_iteration
    assert policy.env_inject == (("A", "/home/agent/x"), ("B", "plain"))
    limits = policy.resource_limits
    assert (limits.pids_max, limits.command_timeout_s, limits.session_timeout_s) == (7, 300.0, 0.0)
    assert limits.max_memory_mb is None
    assert not policy.audit.log_allowed
    assert policy.audit.log_denied
    assert policy.audit.retention_days == 3
    assert policy.file_default is Decision.DENY
    assert (policy.name, policy.source, policy.description) == ("full", "full.yaml", "d")


def test_minimal_policy_defaults() -> None:
    policy = _policy("")
    assert policy.command_rules == ()
    assert policy.file_default is None
    assert policy.env_policy.allow == ()
    assert policy.audit.log_denied


def test_scalars_keep_their_text_and_nulls_read_as_absent() -> None:
    # YAML 1.1 would turn `no` into False; agentsh (Go) keeps the text for string fields.
    policy = _policy(
        "description: 2024\ncommand_rules:\n  - name: n\n    commands: [no, 7z]\n"
        "    decision: deny\n    message:\n    args_patterns:\n"
    )
    (rule,) = policy.command_rules
    assert rule.commands == ("no", "7z")
    assert policy.description == "2024"
    assert rule.message == ""
    assert rule.args_patterns == ()


def test_same_name_in_different_lists_is_fine() -> None:
    policy = _policy(
        "command_rules:\n  - {name: x, commands: [a], decision: deny}\n"
        "network_rules:\n  - {name: x, decision: deny}\n"
    )
    assert policy.command_rules[0].name == policy.network_rules[0].name == "x"


@pytest.mark.parametrize(
    ("text", "env", "path", "expected"),
    [
        ("${A}/x", {"A": "/a"}, True, "/a/x"),
        ("${A}/x", {"A": "/a/b/../c/"}, True, "/a/c/x"),  # path values are normalised
        ("${A:-/d}/x", {}, True, "/d/x"),
        ("${A:-/d}/x", {"A": ""}, True, "/d/x"),
        ("${A:-${B}/src}", {"B": "/b"}, True, "/b/src"),
        ("${A:-${B:-/z}}", {}, True, "/z"),
        ("${A}", {"A": "anything at all"}, False, "anything at all"),
        ("cost $5 and a$", {}, False, "cost $5 and a$"),
        ("${A}${B}", {"A": "x", "B": "y"}, False, "xy"),
        ("plain", {}, True, "plain"),
        ("/home/${USER}/.ssh/**", {"USER": "dev"}, True, "/home/dev/.ssh/**"),
        ("/srv/${SUB}/x", {"SUB": "a/b"}, True, "/srv/a/b/x"),
    ],
)
def test_expand(text: str, env: dict[str, str], path: bool, expected: str) -> None:
    assert expand(text, env, path=path) == expected


@pytest.mark.parametrize(
    ("text", "env", "why"),
    [
        ("${A}/**", {"A": "/"}, "absolute path below /"),
        ("${A}/**", {"A": "/x/.."}, "absolute path below /"),
        ("${A}/**", {"A": "x"}, "absolute path below /"),
        ("${A:-rel}/**", {}, "absolute path below /"),
        ("${A}/**", {"A": "/home/*"}, "glob characters"),
        ("/home/${U}/.ssh", {"U": ".."}, "plain path components"),
        ("/home/${U}/.ssh", {"U": "a/../../etc"}, "plain path components"),
        ("/home/${U}/.ssh", {"U": "[ab]"}, "glob characters"),
        ("${A", {"A": "/a"}, "bad variable reference"),
        ("${A:-/x", {}, "unclosed"),
        ("${1}", {}, "bad variable reference"),
        ("$A/x", {"A": "/a"}, "instead of $NAME"),
    ],
)
def test_expand_refuses_unsafe_path_values(text: str, env: dict[str, str], why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        expand(text, env, path=True)


def test_expand_never_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECT_ROOT", "/from/env")
    with pytest.raises(ValueError, match="PROJECT_ROOT"):
        expand("${PROJECT_ROOT}/**", {}, path=True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("0", 0.0),
        ("2m30s", 150.0),
        ("100us", 1e-4),
        ("7ns", 7e-9),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1d", "5 m", "m", "-1s", "1h 30m", "1hh", "0x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


LINT = """version: 1
name: l
command_rules:
  - {name: tools, commands: [npm, pip], decision: allow}
  - {name: install, commands: [npm], args_patterns: [^install], decision: approve}
  - {name: rm-r, commands: [rm], args_patterns: [-r], decision: deny}
  - {name: rm-any, commands: [rm, /bin/rm], decision: deny}
  - {name: everything, commands: ['*'], decision: allow}
  - {name: after-star, commands: [sudo, 'mk*'], decision: deny}
network_rules:
  - {name: lo, cidrs: [127.0.0.0/8], decision: allow}
  - {name: lo-host, cidrs: [127.0.0.1/32], decision: allow}
  - {name: https, ports: [443], decision: approve}
  - {name: https-pypi, domains: [pypi.org], ports: [443], decision: allow}
  - {name: any-port, domains: ['*'], decision: deny}
"""


def test_lint_reports_exactly_the_dead_rules() -> None:
    warnings = loader.lint(loader.loads(LINT, "l.yaml", {}))
    dead = [re.match(r"(\w+)\[(\d+)\] '([^']+)'", w).group(3) for w in warnings]  # type: ignore[union-attr]
    # rm-any is live: rm-r only covers `rm` with -r; any-port is live: https only covers 443;
    # https-pypi is dead: https (no domain test) already matches every destination on 443.
    assert dead == ["install", "after-star", "lo-host", "https-pypi"]
    assert "matches first" in warnings[0]
    assert "'tools' (line 4)" in warnings[0]


def test_every_policy_key_is_in_the_man_page() -> None:
    page = (ROOT / "man" / "agentsh-policy.5").read_text()
    documented = set(re.findall(r"\bCm ([a-z_.]+(?: , [a-z_.]+)*)", page))
    names = {n.strip() for group in documented for n in group.split(",")}
    for section, keys in loader.POLICY_KEYS.items():
        for key in keys:
            assert key in names, (
                f"{section or 'top level'} key {key!r} missing from agentsh-policy.5"
            )


@pytest.mark.parametrize("name", ["deno", "exe.dev", "render", "sprites"])
def test_pure_python_yaml_gives_the_same_policy(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # libyaml is preferred for speed; without it the pure-Python loader must agree.
    path = ROOT / "tests" / "fixtures" / "seed-policies" / name / "default.yaml"
    fast = loader.load(path, VARS)
    monkeypatch.setattr(yamlnodes, "_LOADER", yaml.SafeLoader)
    assert loader.load(path, VARS) == fast
    assert _error(CMD + RULE_A + "    mesage: hi\n").line == 7
