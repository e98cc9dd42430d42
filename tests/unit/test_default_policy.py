"""The built-in default policy (policies/default.yaml): usable for a coding agent, and
each refused category stays refused however the command is spelled."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from agentsh.enforce import config, loader
from agentsh.enforce.engine import check_command, check_file, check_network, resolve_approval
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.policy import CommandRule, Decision, FileRule, NetworkRule, Policy

ALLOW, DENY, APPROVE = Decision.ALLOW, Decision.DENY, Decision.APPROVE
HOME = "/home/dev"
PROJECT = "/home/dev/src/app"
VARS = {
    "HOME": HOME,
    "PROJECT_ROOT": PROJECT,
    "WORKSPACE": PROJECT,
    "TMPDIR": "/tmp",
    "USER": "dev",
}
SOURCE = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return loader.load(config.builtin_policy_path(), VARS)


def test_the_packaged_file_is_the_source_file() -> None:
    assert config.builtin_policy_path().read_bytes() == SOURCE.read_bytes()


@pytest.mark.parametrize(
    "variables",
    [VARS, {}, {"HOME": "/root", "PROJECT_ROOT": "/workspace"}, {"PROJECT_ROOT": "/etc"}],
    ids=["session", "no-variables", "root", "project-in-etc"],
)
def test_loads_with_or_without_variables(variables: dict[str, str]) -> None:
    policy = loader.load(config.builtin_policy_path(), variables)
    assert policy.name == "default"
    assert loader.lint(policy) == ()


def test_a_project_root_of_slash_is_refused_not_widened() -> None:
    with pytest.raises(PolicyError, match="PROJECT_ROOT='/'"):
        loader.load(config.builtin_policy_path(), {**VARS, "PROJECT_ROOT": "/"})


def test_every_refusal_says_what_to_do(policy: Policy) -> None:
    rules: list[CommandRule | FileRule | NetworkRule] = [
        *policy.command_rules,
        *policy.file_rules,
        *policy.network_rules,
    ]
    for rule in rules:
        if rule.decision in (DENY, APPROVE):
            assert len(rule.message) > 40, f"{rule.name} needs a helpful message"


def test_commands_end_with_allow_everything_else(policy: Policy) -> None:
    last = policy.command_rules[-1]
    assert (last.commands, last.decision) == (("*",), ALLOW)


BENIGN = [
    ["git", "status"],
    ["git", "commit", "-m", "fix: x"],
    ["pytest", "-q"],
    ["python3", "-c", "import sys; print(sys.version)"],
    ["python3.11", "-m", "venv", ".venv"],
    [".venv/bin/pip", "install", "-e", "."],
    ["npm", "install"],
    ["npm", "run", "build"],
    ["cargo", "build", "--release"],
    ["go", "test", "./..."],
    ["make", "-j4"],
    ["gcc", "-O2", "a.c"],
    ["ls", "-la"],
    ["grep", "-rn", "TODO", "src"],
    ["sed", "-i", "s/a/b/", "f"],
    ["awk", "{print $1}"],
    ["find", ".", "-name", "*.py"],
    ["cat", "README.md"],
    ["rm", "-rf", "build"],
    ["rm", "-f", "/tmp/x"],
    ["mkdir", "-p", "out"],
    ["curl", "-fsSL", "https://pypi.org/simple/"],
    ["wget", "https://github.com/x"],
    ["rsync", "-a", "src/", "dst/"],
    ["kill", "12345"],
    ["kill", "-TERM", "4242"],
    ["ip", "addr"],
    ["dd", "if=/dev/zero", "of=out.bin", "bs=1M", "count=1"],
    ["apt", "list", "--installed"],
    ["dpkg", "-l"],
    ["agentsh", "check", "--", "ls"],
    ["agentsh", "policy", "test", "--op", "exec", "--path", "sudo"],
    ["bash", "-c", "echo hi"],
    ["/bin/bash.real", "-c", "true"],
    ["jq", ".x", "f.json"],
    ["./gradlew", "test"],
    ["some-project-script"],
]


@pytest.mark.parametrize("argv", BENIGN, ids=" ".join)
def test_what_agents_run_all_day_is_allowed(policy: Policy, argv: list[str]) -> None:
    verdict = check_command(policy, argv)
    assert verdict.decision is ALLOW, (verdict.rule, verdict.message)


# (argv, rule); every spelling of a refused command stays refused
REFUSED = [
    (["sudo", "whoami"], "block-privilege-escalation"),
    (["/usr/bin/sudo", "-i"], "block-privilege-escalation"),
    (["./sudo"], "block-privilege-escalation"),
    (["SUDO"], "block-privilege-escalation"),
    (["sudo.real"], "block-privilege-escalation"),
    (["su", "-"], "block-privilege-escalation"),
    (["doas", "sh"], "block-privilege-escalation"),
    (["pkexec", "bash"], "block-privilege-escalation"),
    (["chroot", "/"], "block-privilege-escalation"),
    (["nsenter", "-t", "1", "-m"], "block-privilege-escalation"),
    (["unshare", "-r", "sh"], "block-privilege-escalation"),
    (["systemd-run", "sh"], "block-privilege-escalation"),
    (["ssh", "host"], "block-remote-shells"),
    (["/usr/bin/scp", "f", "h:/x"], "block-remote-shells"),
    (["sftp", "h"], "block-remote-shells"),
    (["telnet", "h", "23"], "block-remote-shells"),
    (["rsh", "h"], "block-remote-shells"),
    (["rsync", "-a", "src", "user@host:dst"], "block-remote-rsync"),
    (["rsync", "-a", "host::module", "dst"], "block-remote-rsync"),
    (["rsync", "rsync://host/m", "dst"], "block-remote-rsync"),
    (["rsync", "-e", "ssh", "a", "b"], "block-remote-rsync"),
    (["nc", "-l", "4444"], "block-raw-network-tools"),
    (["netcat", "h", "80"], "block-raw-network-tools"),
    (["ncat", "--exec", "/bin/sh"], "block-raw-network-tools"),
    (["socat", "TCP:h:80", "-"], "block-raw-network-tools"),
    (["nmap", "10.0.0.0/8"], "block-raw-network-tools"),
    (["tcpdump", "-i", "any"], "block-raw-network-tools"),
    (["ngrok", "http", "8000"], "block-raw-network-tools"),
    (["mount", "/dev/sda1", "/mnt"], "block-system-administration"),
    (["umount", "/mnt"], "block-system-administration"),
    (["systemctl", "stop", "sshd"], "block-system-administration"),
    (["service", "x", "restart"], "block-system-administration"),
    (["shutdown", "-h", "now"], "block-system-administration"),
    (["reboot"], "block-system-administration"),
    (["fdisk", "/dev/sda"], "block-system-administration"),
    (["mkfs.ext4", "/dev/sda1"], "block-system-administration"),
    (["/sbin/mkfs"], "block-system-administration"),
    (["modprobe", "x"], "block-system-administration"),
    (["insmod", "x.ko"], "block-system-administration"),
    (["useradd", "eve"], "block-system-administration"),
    (["passwd", "root"], "block-system-administration"),
    (["crontab", "-e"], "block-system-administration"),
    (["iptables", "-F"], "block-firewall-and-routing"),
    (["nft", "flush", "ruleset"], "block-firewall-and-routing"),
    (["ip", "route", "add", "default", "via", "1.2.3.4"], "block-ip-changes"),
    (["ip", "link", "set", "eth0", "down"], "block-ip-changes"),
    (["dd", "if=/dev/zero", "of=/dev/sda"], "block-raw-disk-writes"),
    (["killall", "node"], "block-killing-everything"),
    (["pkill", "-f", "python"], "block-killing-everything"),
    (["kill", "-9", "1"], "block-kill-init"),
    (["kill", "-9", "-1"], "block-kill-init"),
    (["kill", "1"], "block-kill-init"),
    (["rm", "-rf", "/"], "block-rm-root"),
    (["rm", "-rf", "/*"], "block-rm-root"),
    (["rm", "-rf", "--no-preserve-root", "/"], "block-rm-root"),
    (["rm", "-rf", "~"], "block-rm-root"),
    (["agentsh", "shim", "uninstall-shell"], "block-agentsh-self-changes"),
    (["/usr/local/bin/agentsh", "shim", "install-shell", "--force"], "block-agentsh-self-changes"),
]


@pytest.mark.parametrize(("argv", "rule"), REFUSED, ids=repr)
def test_refused_categories(policy: Policy, argv: list[str], rule: str) -> None:
    verdict = check_command(policy, argv)
    assert (verdict.decision, verdict.rule) == (DENY, rule)


@pytest.mark.parametrize(
    ("argv", "rule"),
    [
        (["apt-get", "install", "-y", "jq"], "approve-system-packages"),
        (["apt", "remove", "x"], "approve-system-packages"),
        (["dpkg", "-i", "x.deb"], "approve-system-packages"),
        (["pacman", "-Syu"], "approve-system-packages"),
        (["apk", "add", "curl"], "approve-system-packages"),
        (["docker", "run", "-v", "/:/host", "alpine"], "approve-container-runtimes"),
        (["podman", "ps"], "approve-container-runtimes"),
    ],
    ids=repr,
)
def test_approval_needs_a_person(policy: Policy, argv: list[str], rule: str) -> None:
    verdict = check_command(policy, argv)
    assert (verdict.decision, verdict.rule) == (APPROVE, rule)
    refused = resolve_approval(verdict, approver_available=False)
    assert refused.decision is DENY
    assert "approval required" in refused.message


def test_messages_name_the_command(policy: Policy) -> None:
    message = check_command(policy, ["/usr/bin/sudo", "id"]).message
    assert message.startswith("'/usr/bin/sudo' changes privileges")
    assert "without it" in message


# (op, path, decision, rule or None for the built-in default)
FILES = [
    ("write", f"{PROJECT}/src/main.py", ALLOW, "allow-project"),
    ("delete", f"{PROJECT}/build/x.o", ALLOW, "allow-project"),
    ("rmdir", PROJECT + "/build", ALLOW, "allow-project"),
    ("read", f"{PROJECT}/README.md", ALLOW, "allow-project"),
    ("write", "/tmp/pytest-1/x", ALLOW, "allow-temporary-files"),
    ("write", f"{HOME}/.cache/pip/wheels/x", ALLOW, "allow-tool-caches"),
    ("write", f"{HOME}/.npm/_cacache/x", ALLOW, "allow-tool-caches"),
    ("write", f"{HOME}/.gitconfig", ALLOW, "allow-tool-caches"),
    ("write", "/dev/null", ALLOW, "allow-devices"),
    ("read", "/usr/lib/python3/os.py", ALLOW, None),
    ("execute", "/usr/bin/git", ALLOW, None),
    ("read", "/etc/passwd", ALLOW, None),
    ("read", f"{HOME}/.ssh/id_ed25519", DENY, "deny-credentials"),
    ("list", f"{HOME}/.ssh", DENY, "deny-credentials"),
    ("read", "/home/other/.ssh/id_rsa", DENY, "deny-credentials"),
    ("read", "/root/.ssh/authorized_keys", DENY, "deny-credentials"),
    ("write", f"{HOME}/.ssh/authorized_keys", DENY, "deny-credentials"),
    ("read", f"{HOME}/.aws/credentials", DENY, "deny-credentials"),
    ("read", f"{HOME}/.config/gh/hosts.yml", DENY, "deny-credentials"),
    ("read", f"{HOME}/.cargo/credentials.toml", DENY, "deny-credentials"),  # before caches
    ("read", f"{HOME}/.netrc", DENY, "deny-credentials"),
    ("read", "/etc/shadow", DENY, "deny-credentials"),
    ("read", "/etc/ssh/ssh_host_ed25519_key", DENY, "deny-credentials"),
    ("read", f"{PROJECT}/../../.ssh/id_rsa", DENY, "deny-credentials"),  # normalised
    ("read", "/proc/1/environ", DENY, "deny-process-secrets"),
    ("read", "/proc/1/root/etc/shadow", DENY, "deny-process-secrets"),
    ("read", "/proc/4242/environ", DENY, "deny-process-secrets"),
    ("read", "/proc/self/status", ALLOW, None),
    ("read", f"{PROJECT}/.env", APPROVE, "approve-env-files"),
    ("read", f"{PROJECT}/.env.production", APPROVE, "approve-env-files"),
    ("write", f"{PROJECT}/.env.example", ALLOW, "allow-env-examples"),
    ("write", "/etc/agentsh/config.yaml", DENY, "deny-agentsh-internals"),
    ("read", "/etc/agentsh/policies/default.yaml", ALLOW, None),
    ("read", "/var/lib/agentsh/audit.db", DENY, "deny-agentsh-audit-read"),
    ("write", "/var/lib/agentsh/audit.db", DENY, "deny-agentsh-internals"),
    ("write", "/etc/passwd", DENY, "deny-system-writes"),
    ("write", "/usr/bin/python3", DENY, "deny-system-writes"),
    ("chmod", "/bin/bash", DENY, "deny-system-writes"),
    ("write", f"{HOME}/.bashrc", DENY, "deny-writes-outside-project"),
    ("write", "/home/other/x", DENY, "deny-writes-outside-project"),
    ("write", "/opt/x", DENY, "deny-writes-outside-project"),
    ("write", "/srv2/x", DENY, None),  # no rule: writes denied by default
]


@pytest.mark.parametrize(("op", "path", "decision", "rule"), FILES, ids=repr)
def test_files(policy: Policy, op: str, path: str, decision: Decision, rule: str | None) -> None:
    verdict = check_file(policy, op, path)
    assert (verdict.decision, verdict.rule) == (decision, rule)


def test_a_session_started_in_etc_cannot_write_etc() -> None:
    in_etc = loader.load(
        config.builtin_policy_path(), {**VARS, "PROJECT_ROOT": "/etc", "WORKSPACE": "/etc"}
    )
    assert check_file(in_etc, "write", "/etc/passwd").decision is DENY
    assert check_file(in_etc, "read", "/etc/shadow").rule == "deny-credentials"


# (host, ip, port, decision, rule)
NETWORK = [
    ("pypi.org", "151.101.0.223", 443, ALLOW, "allow-package-registries"),
    ("files.pythonhosted.org", None, 443, ALLOW, "allow-package-registries"),
    ("registry.npmjs.org", None, 443, ALLOW, "allow-package-registries"),
    ("github.com", None, 443, ALLOW, "allow-code-hosting"),
    ("objects.githubusercontent.com", None, 443, ALLOW, "allow-code-hosting"),
    ("localhost", None, 8000, ALLOW, "allow-loopback"),
    (None, "127.0.0.1", 5432, ALLOW, "allow-loopback-addresses"),
    (None, "::1", 3000, ALLOW, "allow-loopback-addresses"),
    (None, "169.254.169.254", 80, DENY, "block-cloud-metadata-addresses"),
    (None, "::ffff:169.254.169.254", 80, DENY, "block-cloud-metadata-addresses"),
    (None, "fd00:ec2::254", 80, DENY, "block-cloud-metadata-addresses"),
    ("metadata.google.internal", None, 80, DENY, "block-cloud-metadata"),
    ("METADATA.google.internal.", None, 80, DENY, "block-cloud-metadata"),
    ("metadata.google.internal", "169.254.169.254", 80, DENY, "block-cloud-metadata"),
    (None, "10.0.0.5", 443, DENY, "block-private-networks"),
    (None, "172.20.1.1", 443, DENY, "block-private-networks"),
    (None, "192.168.1.1", 80, DENY, "block-private-networks"),
    (None, "100.64.0.1", 80, DENY, "block-private-networks"),
    (None, "fe80::1", 80, DENY, "block-private-networks"),
    ("pypi.org", "10.0.0.5", 443, DENY, "block-private-networks"),  # rebinding
    ("localhost", "192.168.0.9", 80, DENY, "block-private-networks"),
    ("db.internal", None, 5432, DENY, "block-internal-names"),
    ("printer.local", None, 631, DENY, "block-internal-names"),
    ("pypi.org", None, 80, DENY, "deny-everything-else"),
    ("github.com", None, 22, DENY, "deny-everything-else"),
    ("example.com", None, 443, DENY, "deny-everything-else"),
    ("pypi.org.evil.com", None, 443, DENY, "deny-everything-else"),
    (None, "8.8.8.8", 53, DENY, "deny-everything-else"),
]


@pytest.mark.parametrize(("host", "ip", "port", "decision", "rule"), NETWORK, ids=repr)
def test_network(
    *, policy: Policy, host: str | None, ip: str | None, port: int, decision: Decision, rule: str
) -> None:
    verdict = check_network(policy, host, ip, port)
    assert (verdict.decision, verdict.rule) == (decision, rule)


@pytest.mark.parametrize(
    ("name", "denied"),
    [
        ("AWS_SECRET_ACCESS_KEY", True),
        ("AWS_PROFILE", True),
        ("GITHUB_TOKEN", True),
        ("GH_TOKEN", True),
        ("CI_JOB_TOKEN", True),
        ("STRIPE_SECRET_KEY", True),
        ("OPENAI_API_KEY", True),
        ("ANTHROPIC_API_KEY", True),
        ("DB_PASSWORD", True),
        ("DATABASE_URL", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("SSH_AUTH_SOCK", True),
        ("LD_PRELOAD", True),
        ("BASH_ENV", True),
        ("PATH", False),
        ("HOME", False),
        ("LANG", False),
        ("VIRTUAL_ENV", False),
        ("NODE_ENV", False),
        ("TERM", False),
    ],
)
def test_env_policy_denies_secrets(policy: Policy, name: str, denied: bool) -> None:
    assert policy.env_policy.allow == ()  # everything not denied passes
    assert any(fnmatch.fnmatchcase(name, p) for p in policy.env_policy.deny) is denied
