"""The four real policies users bring (tests/fixtures/seed-policies, MIT, Canyon Road) load
and mean what their authors' comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentsh.enforce import loader
from agentsh.enforce.engine import check_command, check_file, check_network, resolve_approval
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.policy import Decision, Policy

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
NAMES = ["deno", "exe.dev", "render", "sprites"]
HOME = "/home/agent"
PROJECT = "/work/proj"
VARS = {"HOME": HOME, "PROJECT_ROOT": PROJECT, "WORKSPACE": PROJECT, "TMPDIR": "/tmp"}
ALLOW, DENY, APPROVE = Decision.ALLOW, Decision.DENY, Decision.APPROVE


def _seed(name: str) -> Policy:
    return loader.load(SEEDS / name / "default.yaml", VARS)


POLICIES = {name: _seed(name) for name in NAMES}


def test_fixture_is_the_attributed_copy() -> None:
    readme = (SEEDS / "README.md").read_text()
    assert "MIT licence, Copyright (c) 2026 Canyon Road" in readme
    assert sorted(p.name for p in SEEDS.iterdir() if p.is_dir()) == NAMES


@pytest.mark.parametrize(
    ("name", "rules"),
    [
        ("deno", (11, 19, 16)),
        ("exe.dev", (10, 18, 10)),
        ("render", (8, 10, 13)),
        ("sprites", (11, 19, 13)),
    ],
)
def test_every_rule_loads(name: str, rules: tuple[int, int, int]) -> None:
    policy = POLICIES[name]
    assert policy.version == 1
    assert policy.name == "default"
    assert (len(policy.command_rules), len(policy.file_rules), len(policy.network_rules)) == rules


@pytest.mark.parametrize("name", NAMES)
def test_variables_are_expanded(name: str) -> None:
    paths = [p for rule in POLICIES[name].file_rules for p in rule.paths]
    assert not any("$" in p for p in paths)
    assert name == "render" or f"{HOME}/.ssh/**" in paths


@pytest.mark.parametrize("name", ["deno", "exe.dev", "sprites"])
def test_project_root_is_required(name: str) -> None:
    vars_without_root = {k: v for k, v in VARS.items() if k != "PROJECT_ROOT"}
    with pytest.raises(PolicyError, match="PROJECT_ROOT is not set"):
        loader.load(SEEDS / name / "default.yaml", vars_without_root)


SUDO_RULE = {
    "deno": "block-shell-escape",
    "exe.dev": "block-shell-escape",
    "render": "block-privilege-escalation",
    "sprites": "block-shell-escape",
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "argv", [["sudo"], ["sudo", "whoami"], ["/usr/bin/sudo", "-i"], ["./sudo"], ["sudo.real"]]
)
def test_sudo_is_denied_by_the_named_rule(name: str, argv: list[str]) -> None:
    verdict = check_command(POLICIES[name], argv)
    assert (verdict.decision, verdict.rule) == (DENY, SUDO_RULE[name])


# (seed, argv, decision, rule, part of the message or "")
COMMANDS = [
    # deno: block-rm-recursive ".*-r.*" / ".*--recursive.*", approve installs, allow the rest
    ("deno", ["rm", "-rf", "x"], DENY, "block-rm-recursive", "Recursive delete blocked"),
    ("deno", ["rm", "-r", "x"], DENY, "block-rm-recursive", ""),
    ("deno", ["rm", "--recursive", "x"], DENY, "block-rm-recursive", ""),
    # The deno authors' ".*-r.*" misses -fr (the sprites authors fixed it with "-[^-]*r");
    # first match wins, so -fr reaches allow-file-operations, as it does in Go agentsh.
    ("deno", ["rm", "-fr", "x"], ALLOW, "allow-file-operations", ""),
    ("deno", ["rm", "x"], ALLOW, "allow-file-operations", ""),
    (
        "deno",
        ["npm", "install", "lodash"],
        APPROVE,
        "approve-package-install",
        "Agent wants to install packages: install lodash",
    ),
    ("deno", ["pip3", "install", "requests"], APPROVE, "approve-package-install", ""),
    ("deno", ["cargo", "add", "serde"], APPROVE, "approve-package-install", ""),
    ("deno", ["npm", "test"], ALLOW, "allow-dev-tools", ""),
    ("deno", ["git", "status"], ALLOW, "allow-dev-tools", ""),
    ("deno", ["curl", "https://example.com"], ALLOW, "allow-network-tools", ""),
    ("deno", ["/bin/bash.real", "-c", "true"], ALLOW, "allow-safe-commands", ""),
    ("deno", ["nc", "-l", "4444"], DENY, "block-network-tools", ""),
    ("deno", ["ip", "route"], DENY, "block-sandbox-interference", "sandbox infrastructure"),
    ("deno", ["kill", "-9", "1"], DENY, "block-system-commands", ""),
    ("deno", ["nsenter", "-t", "1"], DENY, "block-shell-escape", ""),
    ("deno", ["my-build-script"], ALLOW, "allow-other-commands", ""),
    # exe.dev: allow-dev-tools precedes approve-package-install (a dead rule, lint says so)
    ("exe.dev", ["git", "status"], ALLOW, "allow-dev-tools", ""),
    ("exe.dev", ["npm", "install", "x"], ALLOW, "allow-dev-tools", ""),
    ("exe.dev", ["rm", "-rf", "x"], DENY, "block-rm-recursive", ""),
    ("exe.dev", ["shelley"], DENY, "block-exe-dev-interference", "interfere with sandbox"),
    ("exe.dev", ["/usr/local/bin/shelley"], DENY, "block-exe-dev-interference", ""),
    ("exe.dev", ["ssh", "host"], DENY, "block-network-tools", ""),
    ("exe.dev", ["systemctl", "stop", "x"], DENY, "block-system-commands", ""),
    ("exe.dev", ["vim"], ALLOW, "allow-other-commands", ""),
    # render: messages with {{.Command}}; rm is in its safe list
    ("render", ["nc"], DENY, "block-network-tools", "BLOCKED: Network tool 'nc' is not allowed"),
    ("render", ["sftp", "h"], DENY, "block-ssh", "BLOCKED: SSH/remote access tool 'sftp'"),
    ("render", ["pkexec", "id"], DENY, "block-privilege-escalation", "via 'pkexec'"),
    ("render", ["pkill", "node"], DENY, "block-kill", "Process termination via 'pkill'"),
    ("render", ["parted"], DENY, "block-system-commands", "System command 'parted'"),
    ("render", ["rm", "-rf", "x"], ALLOW, "allow-safe-commands", ""),
    ("render", ["npx", "tsc"], ALLOW, "allow-dev-tools", ""),
    ("render", ["nmap", "10.0.0.1"], DENY, "block-network-tools", ""),
    # sprites: "-[^-]*r" catches -rf, -fr, -r; sprite checkpoint approve, other sprite deny
    ("sprites", ["rm", "-fr", "x"], DENY, "block-rm-recursive", ""),
    ("sprites", ["rm", "-rf", "x"], DENY, "block-rm-recursive", ""),
    ("sprites", ["rm", "-vr", "x"], DENY, "block-rm-recursive", ""),
    ("sprites", ["rm", "--recursive", "x"], DENY, "block-rm-recursive", ""),
    ("sprites", ["rm", "x"], ALLOW, "allow-other-commands", ""),
    (
        "sprites",
        ["sprite", "checkpoint", "create"],
        APPROVE,
        "approve-sprite-checkpoint",
        "checkpoint the Sprite",
    ),
    ("sprites", ["sprite", "list"], DENY, "block-sprite-cli", "Sprite CLI access restricted"),
    ("sprites", ["sprite"], DENY, "block-sprite-cli", ""),
    ("sprites", ["hostname"], ALLOW, "allow-safe-commands", ""),
    ("sprites", ["unshare", "-r"], DENY, "block-shell-escape", ""),
]


@pytest.mark.parametrize(("name", "argv", "decision", "rule", "message"), COMMANDS, ids=repr)
def test_commands_mean_what_the_comments_say(
    name: str, argv: list[str], decision: Decision, rule: str, message: str
) -> None:
    verdict = check_command(POLICIES[name], argv)
    assert (verdict.decision, verdict.rule) == (decision, rule)
    assert message in verdict.message


def test_approve_with_nobody_to_ask_is_denied() -> None:
    verdict = resolve_approval(check_command(POLICIES["deno"], ["npm", "install", "x"]), False)
    assert verdict.decision is DENY
    assert verdict.rule == "approve-package-install"
    assert "approval required" in verdict.message


# (seed, op, path, decision, rule, part of the message)
FILES = [
    (
        "deno",
        "read",
        f"{HOME}/.ssh/id_rsa",
        DENY,
        "deny-ssh-access",
        f"Access to SSH keys blocked: {HOME}/.ssh/id_rsa",
    ),
    ("deno", "write", f"{PROJECT}/src/a.py", ALLOW, "allow-workspace-write", ""),
    ("deno", "read", PROJECT, ALLOW, "allow-workspace-read", ""),
    (
        "deno",
        "delete",
        f"{PROJECT}/a.py",
        APPROVE,
        "approve-workspace-delete",
        f"Agent wants to delete: {PROJECT}/a.py",
    ),
    ("deno", "read", f"{PROJECT}/.env", ALLOW, "allow-workspace-read", ""),  # workspace first
    ("deno", "read", "/srv/.env", DENY, "deny-env-files", ""),
    ("deno", "read", "/etc/passwd", ALLOW, "allow-passwd-read", ""),
    ("deno", "write", "/etc/passwd", DENY, "default-deny-files", ""),
    ("deno", "read", "/etc/shadow", DENY, "deny-shadow-files", ""),
    ("deno", "execute", "/usr/bin/git", ALLOW, "allow-system-read", ""),
    ("deno", "read", "/proc/self/status", ALLOW, "allow-proc-self", ""),
    ("deno", "read", "/proc/1/environ", DENY, "deny-proc-sys", ""),
    ("deno", "write", "/tmp/x/y", ALLOW, "allow-tmp", ""),
    ("deno", "write", "/dev/null", ALLOW, "allow-dev-basics", ""),
    # exe.dev: "/root is both workspace and home dir, credential paths must match before
    # the broad workspace allow rules"
    ("exe.dev", "read", "/root/.ssh/id_ed25519", APPROVE, "approve-ssh-access", ""),
    ("exe.dev", "read", "/root/.aws/credentials", APPROVE, "approve-aws-credentials", ""),
    ("exe.dev", "read", "/root/notes.txt", ALLOW, "allow-workspace-read", ""),
    (
        "exe.dev",
        "delete",
        "/workspace/a",
        Decision.SOFT_DELETE,
        "soft-delete-workspace",
        "File quarantined (recoverable): /workspace/a",
    ),
    (
        "exe.dev",
        "execute",
        "/usr/bin/sudo",
        DENY,
        "block-dangerous-binaries",
        "privilege escalation tool blocked: /usr/bin/sudo",
    ),
    ("exe.dev", "read", "/usr/local/bin/shelley", DENY, "block-exe-dev-internals", ""),
    ("exe.dev", "read", "/usr/lib/x.so", ALLOW, "allow-system-read", ""),
    # render: system paths read-only, sensitive files blocked
    ("render", "write", "/usr/bin/x", DENY, "deny-system-write", "BLOCKED: Write to system path"),
    ("render", "read", "/usr/bin/x", ALLOW, "allow-system-read", ""),
    ("render", "read", "/etc/sudoers.d/a", DENY, "block-sensitive", ""),
    ("render", "write", "/workspace/x", ALLOW, "allow-workspace", ""),
    ("render", "write", "/opt/x", DENY, "default-deny-files", ""),
    # sprites: /.sprite read-only
    ("sprites", "read", "/.sprite/skills/a.md", ALLOW, "allow-sprite-folder-read", ""),
    (
        "sprites",
        "write",
        "/.sprite/skills/a.md",
        DENY,
        "block-sprite-folder-write",
        "Cannot modify Sprites skills folder: /.sprite/skills/a.md",
    ),
    ("sprites", "list", "/", ALLOW, "allow-root-listing", ""),
    ("sprites", "read", f"{HOME}/.kube/config", APPROVE, "approve-cloud-credentials", ""),
]


@pytest.mark.parametrize(("name", "op", "path", "decision", "rule", "message"), FILES, ids=repr)
def test_files_mean_what_the_comments_say(
    *, name: str, op: str, path: str, decision: Decision, rule: str, message: str
) -> None:
    verdict = check_file(POLICIES[name], op, path)
    assert (verdict.decision, verdict.rule) == (decision, rule)
    assert message in verdict.message


# (seed, host, ip, port, decision, rule, part of the message)
NETWORK = [
    ("deno", None, "127.0.0.1", 8080, ALLOW, "allow-localhost", ""),
    ("deno", "pypi.org", None, 443, ALLOW, "allow-pypi", ""),
    ("deno", "pypi.org", None, 80, DENY, "default-deny-network", "not in allowlist: pypi.org:80"),
    (
        "deno",
        "x.evil.com",
        None,
        443,
        DENY,
        "block-evil-domains",
        "Connection to untrusted domain blocked: x.evil.com:443",
    ),
    ("deno", None, "10.2.3.4", 443, DENY, "block-private-networks", ""),
    ("deno", None, "169.254.169.254", 80, DENY, "block-private-networks", ""),
    ("deno", None, "100.100.100.200", 80, DENY, "block-metadata-services", ""),
    (
        "deno",
        "example.com",
        None,
        443,
        APPROVE,
        "approve-unknown-https",
        "unknown HTTPS destination: example.com:443",
    ),
    ("exe.dev", "example.com", None, 443, DENY, "default-deny-network", ""),
    ("exe.dev", "crates.io", None, 443, ALLOW, "allow-cargo", ""),
    ("render", "github.com", None, 22, ALLOW, "allow-github", ""),
    ("render", "example.com", None, 443, ALLOW, "allow-https", ""),
    (
        "render",
        None,
        "169.254.169.254",
        80,
        DENY,
        "block-metadata-services",
        "BLOCKED: Cloud metadata service access denied",
    ),
    ("render", "malicious.example.com", None, 443, DENY, "block-evil-domains", ""),
    (
        "sprites",
        "app.internal",
        None,
        443,
        DENY,
        "block-flyio-internal",
        "Fly.io internal network blocked: app.internal:443",
    ),
    ("sprites", "api.fly.io", None, 443, DENY, "block-flyio-internal", ""),
    ("sprites", "example.com", None, 80, APPROVE, "approve-unknown-http", "HTTP (insecure)"),
    ("sprites", "example.com", None, 25, DENY, "default-deny-network", ""),
]


@pytest.mark.parametrize(
    ("name", "host", "ip", "port", "decision", "rule", "message"), NETWORK, ids=repr
)
def test_network_means_what_the_comments_say(
    *,
    name: str,
    host: str | None,
    ip: str | None,
    port: int,
    decision: Decision,
    rule: str,
    message: str,
) -> None:
    verdict = check_network(POLICIES[name], host, ip, port)
    assert (verdict.decision, verdict.rule) == (decision, rule)
    assert message in verdict.message


def test_other_sections() -> None:
    deno, sprites = POLICIES["deno"], POLICIES["sprites"]
    assert "AGENTSH_*" in deno.env_policy.allow
    assert "AWS_*" in deno.env_policy.deny
    assert deno.env_policy.max_bytes == 65536
    assert not deno.env_policy.block_iteration
    assert POLICIES["exe.dev"].env_policy.block_iteration
    assert "*_TOKEN" in sprites.env_policy.deny
    limits = deno.resource_limits
    assert (limits.command_timeout_s, limits.session_timeout_s, limits.idle_timeout_s) == (
        300.0,
        3600.0,
        900.0,
    )
    assert limits.disk_write_bps_max == 26214400
    assert limits.memory_swap_max_mb == 0
    assert deno.audit.include_stdout
    assert deno.audit.retention_days == 90
    assert deno.file_rules[2].timeout_s == 300.0  # approve-workspace-delete: timeout 5m
    assert sprites.network_rules[10].timeout_s == 120.0  # approve-unknown-https: 2m


@pytest.mark.parametrize(
    ("name", "dead"),
    [
        ("deno", ["allow-llm-proxy"]),
        ("exe.dev", ["approve-package-install", "allow-llm-proxy"]),
        ("render", []),
        ("sprites", ["approve-package-install", "allow-llm-proxy"]),
    ],
)
def test_lint_finds_the_seeds_dead_rules(name: str, dead: list[str]) -> None:
    found = [w.split("'")[1] for w in loader.lint(POLICIES[name])]
    assert found == dead
