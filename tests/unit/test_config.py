"""Server config: seed configs accepted with one warning per unimplemented key, strict
errors for typos, policy location, root ownership."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from agentsh.enforce import config
from agentsh.enforce.config import Config, load_config, locate_policy, require_root_owned
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.record import replace

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
SEED_NAMES = ["deno", "exe.dev", "render", "sprites"]
IMPLEMENTED = {
    "policies.dir",
    "policies.default",
    "policies.default_policy",
    "audit.enabled",
    "audit.storage.sqlite_path",
    "sandbox.env_inject",
    "approvals.enabled",
}
WARNING = re.compile(
    r"^(?P<file>.+):(?P<line>\d+): config key (?P<key>\S+) is not implemented yet; ignored$"
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "absent.yaml")
    assert cfg == Config()
    assert cfg.path is None
    assert cfg.warnings == ()
    assert cfg.policies_dir == Path("/etc/agentsh/policies")
    assert cfg.default_policy == "default"
    assert cfg.audit_enabled
    assert cfg.audit_path == Path("/var/lib/agentsh/audit.db")
    assert not cfg.approvals_enabled
    assert cfg.env_inject == ()


def test_default_location() -> None:
    assert Path("/etc/agentsh/config.yaml") == config.DEFAULT_CONFIG_PATH


@pytest.mark.parametrize("seed", SEED_NAMES)
def test_seed_configs_load_with_one_warning_per_unimplemented_key(seed: str) -> None:
    path = SEEDS / seed / "config.yaml"
    cfg = load_config(path)
    lines = path.read_text().splitlines()
    keys = []
    for warning in cfg.warnings:
        match = WARNING.match(warning)
        assert match, warning
        assert match["file"] == str(path)
        leaf = match["key"].rsplit(".", 1)[-1]
        # The line named is the line where that key is written.
        assert lines[int(match["line"]) - 1].lstrip().startswith(f"{leaf}:"), warning
        keys.append(match["key"])
    assert len(keys) == len(set(keys)), "a key was reported twice"
    assert not IMPLEMENTED & set(keys)
    assert cfg.policy_named
    assert cfg.default_policy == "default"
    assert cfg.policies_dir == Path("/etc/agentsh/policies")
    assert cfg.audit_enabled
    assert cfg.audit_path == Path("/var/lib/agentsh/events.db")
    assert cfg.approvals_enabled is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [("capabilities:\n  allow: [net_bind_service]\n", ("net_bind_service",)), ("", None)],
)
def test_capabilities_allow(tmp_path: Path, text: str, expected: object) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text or "audit:\n  enabled: true\n")
    assert load_config(path).capabilities_allow == expected


@pytest.mark.parametrize("name", ["cap_sys_admin", "cap_bogus"])
def test_capabilities_allow_refuses_escapes_and_unknown_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"# caps\ncapabilities:\n  allow:\n    - {name}\n")
    with pytest.raises(PolicyError, match=r"config.yaml:4: capabilities.allow"):
        load_config(path)


def test_hardening_groups_are_the_filter_switches() -> None:
    from agentsh.enforce import config, govern
    from agentsh.enforce.record import fields

    assert tuple(f.name for f in fields(govern.Hardening)) == config.HARDENING_GROUPS


def test_hardening_switches(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sandbox:\n  seccomp:\n    hardening:\n      mount: false\n      bpf: true\n")
    assert load_config(path).hardening == (("mount", False), ("bpf", True))
    path.write_text("sandbox:\n  seccomp:\n    hardening:\n      mount: sometimes\n")
    with pytest.raises(PolicyError, match=r"config.yaml:4: sandbox.seccomp.hardening.mount"):
        load_config(path)
    path.write_text("sandbox:\n  seccomp:\n    hardening:\n      mnt: false\n")
    with pytest.raises(PolicyError, match="mnt"):
        load_config(path)


def test_exe_dev_warning_count_is_exact() -> None:
    # Counted by hand from exe.dev/config.yaml: server 6, auth 1, logging 3, sessions 5,
    # sandbox 18 (enabled, limits 3, fuse 2 (deferred_marker_file, deferred_enable_command),
    # network 3, cgroups 1, seccomp 2 (enabled, execve.enabled),
    # ptrace 5 (all but enabled and trace.file), unix_sockets 1), security 2,
    # proxy 3, dlp 3, approvals 2 (mode, timeout), metrics 2, health 2, development 2.
    # Not warned: audit.enabled, audit.storage.sqlite_path, policies.dir,
    # policies.default_policy, approvals.enabled, capabilities.allow, sandbox.ptrace.enabled,
    # landlock.* (read by enforce.landlock.settings), sandbox.allow_degraded,
    # sandbox.fuse.{enabled,deferred,audit.mode} (read by enforce.fuseconf.settings),
    # sandbox.seccomp.file_monitor.* and sandbox.ptrace.trace.file (enforce.filemon.settings).
    cfg = load_config(SEEDS / "exe.dev" / "config.yaml")
    assert len(cfg.warnings) == 48
    assert cfg.ptrace_enabled
    assert cfg.capabilities_allow == ()
    named = {WARNING.match(w)["key"] for w in cfg.warnings}  # type: ignore[index]
    assert {
        "sandbox.fuse.deferred_marker_file",
        "sandbox.ptrace.trace.execve",  # only the whole switch is implemented
        "dlp.custom_patterns",
        "proxy.providers",
        "development.verbose_errors",
    } <= named
    assert "sandbox.fuse.enabled" not in named
    assert "sandbox.fuse" not in named
    assert not any(key.startswith("landlock") for key in named)


def test_seed_config_values() -> None:
    deno = load_config(SEEDS / "deno" / "config.yaml")
    assert deno.env_inject == (("BASH_ENV", "/usr/lib/agentsh/bash_startup.sh"),)
    render = load_config(SEEDS / "render" / "config.yaml")
    assert render.env_inject == (
        ("AGENTSH_SERVER", "http://127.0.0.1:18080"),
        ("BASH_ENV", "/usr/lib/agentsh/bash_startup.sh"),
    )
    exe = load_config(SEEDS / "exe.dev" / "config.yaml")
    assert exe.raw["sandbox"]["fuse"]["enabled"] is True  # type: ignore[index]
    assert exe.lines["sandbox.fuse.enabled"] == 46


# (id, text, line, key, part of the reason)
CONFIG_ERRORS = [
    (
        "typo-leaf",
        "sandbox:\n  fuse:\n    enabeld: true\n",
        3,
        "sandbox.fuse.enabeld",
        "unknown key; did you mean 'enabled'?",
    ),
    ("typo-section", "polices:\n  dir: /x\n", 1, "polices", "did you mean 'policies'?"),
    (
        "unknown-deep",
        "audit:\n  storage:\n    postgres_url: x\n",
        3,
        "audit.storage.postgres_url",
        "unknown key",
    ),
    ("section-not-mapping", "sandbox: true\n", 1, "sandbox", "expected a mapping"),
    ("bool-as-string", "audit:\n  enabled: 'yes'\n", 2, "audit.enabled", "expected true or false"),
    ("relative-dir", "policies:\n  dir: etc/policies\n", 2, "policies.dir", "not an absolute path"),
    (
        "relative-db",
        "audit:\n  storage:\n    sqlite_path: a.db\n",
        3,
        "audit.storage.sqlite_path",
        "not an absolute path",
    ),
    (
        "name-with-slash",
        "policies:\n  default: ../../tmp/evil\n",
        2,
        "policies.default",
        "not a policy name",
    ),
    (
        "names-disagree",
        "policies:\n  default: a\n  default_policy: b\n",
        3,
        "policies.default_policy",
        "disagree",
    ),
    (
        "env-not-mapping",
        "sandbox:\n  env_inject: [A]\n",
        2,
        "sandbox.env_inject",
        "expected a mapping",
    ),
    (
        "env-bad-name",
        "sandbox:\n  env_inject:\n    1X: y\n",
        3,
        "sandbox.env_inject.1X",
        "not a valid environment variable name",
    ),
    (
        "duplicate",
        "approvals:\n  enabled: true\n  enabled: false\n",
        3,
        "approvals.enabled",
        "duplicate key",
    ),
    ("yaml", "audit: [\n", 2, "yaml", ""),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "why"),
    [e[1:] for e in CONFIG_ERRORS],
    ids=[e[0] for e in CONFIG_ERRORS],
)
def test_config_errors(tmp_path: Path, text: str, line: int, key: str, why: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_config(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line, key), str(err)
    assert why in err.why


def test_implemented_keys_are_read(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            (
                "policies:\n  dir: /srv/pol/\n  default_policy: strict\n"
                "audit:\n  enabled: false\n  storage:\n    sqlite_path: /srv/a.db\n"
                "sandbox:\n  env_inject:\n    B: '2'\n    A: x\n"
                "approvals:\n  enabled: true\nmetrics:\n"
            ),
        )
    )
    assert cfg.policies_dir == Path("/srv/pol")
    assert cfg.default_policy == "strict"
    assert not cfg.audit_enabled
    assert cfg.audit_path == Path("/srv/a.db")
    assert cfg.env_inject == (("B", "2"), ("A", "x"))
    assert cfg.approvals_enabled
    assert cfg.warnings == ()


def test_both_policy_name_spellings_may_agree(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "policies:\n  default: a\n  default_policy: a\n"))
    assert cfg.default_policy == "a"


def test_unreadable_config_is_an_error_not_defaults(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        load_config(tmp_path)  # a directory: exists, cannot be read as a file


# --------------------------------------------------------------------------- location


def test_no_config_and_no_policy_file_means_builtin(tmp_path: Path) -> None:
    assert locate_policy(Config(policies_dir=tmp_path)) is None


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_policy_in_the_directory(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"default{suffix}").write_text("version: 1\n")
    assert locate_policy(Config(policies_dir=tmp_path)) == tmp_path / f"default{suffix}"


def test_yaml_wins_over_yml(tmp_path: Path) -> None:
    for suffix in (".yml", ".yaml"):
        (tmp_path / f"default{suffix}").write_text("version: 1\n")
    assert locate_policy(Config(policies_dir=tmp_path)) == tmp_path / "default.yaml"


def test_named_policy_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, f"# c\npolicies:\n  dir: {tmp_path}\n  default: strict\n")
    (tmp_path / "default.yaml").write_text("version: 1\n")  # no silent fallback to this
    with pytest.raises(PolicyError) as info:
        locate_policy(load_config(path))
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 4, "policies.default")
    assert "'strict' not found" in err.why
    assert str(tmp_path) in err.why


def test_named_directory_without_the_policy_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, f"policies:\n  dir: {tmp_path / 'none'}\n")
    with pytest.raises(PolicyError, match="not found"):
        locate_policy(load_config(path))


def test_config_without_policies_section_falls_back_to_builtin(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "audit:\n  enabled: true\n"))
    assert not cfg.policy_named
    assert locate_policy(replace(cfg, policies_dir=tmp_path / "none")) is None


def test_override(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    assert locate_policy(Config(), override=policy) == policy
    with pytest.raises(PolicyError, match="no such policy file"):
        locate_policy(Config(), override=tmp_path / "missing.yaml")


def test_builtin_policy_path_is_the_packaged_default() -> None:
    path = config.builtin_policy_path()
    assert path.name == "default.yaml"
    assert path.parent.name == "policies"
    assert path.is_file()


# --------------------------------------------------------------------------- ownership


@pytest.fixture
def owned(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to create files owned by other users")
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    path = directory / "config.yaml"
    path.write_text("x: 1\n")
    path.chmod(0o644)
    return path


def test_root_owned_file_is_trusted(owned: Path) -> None:
    require_root_owned(owned)


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o660])
def test_writable_by_others_is_refused(owned: Path, mode: int) -> None:
    owned.chmod(mode)
    with pytest.raises(PolicyError, match="group- or world-writable"):
        require_root_owned(owned)


def test_not_owned_by_root_is_refused(owned: Path) -> None:
    os.chown(owned, 65534, 65534)
    with pytest.raises(PolicyError, match="must be owned by root, not uid 65534"):
        require_root_owned(owned)


def test_writable_directory_is_refused(owned: Path) -> None:
    owned.parent.chmod(0o777)
    with pytest.raises(PolicyError, match=r"directory .* is group- or world-writable"):
        require_root_owned(owned)


def test_sticky_directory_is_accepted(owned: Path) -> None:
    owned.parent.chmod(0o1777)  # others cannot replace root's file in a sticky directory
    require_root_owned(owned)


def test_directory_not_owned_by_root_is_refused(owned: Path) -> None:
    os.chown(owned.parent, 65534, 65534)
    with pytest.raises(PolicyError, match="must be owned by root"):
        require_root_owned(owned)


def test_symlink_checks_the_target_and_both_directories(owned: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir(mode=0o755)
    links.chmod(0o755)
    link = links / "config.yaml"
    link.symlink_to(owned)
    require_root_owned(link)
    links.chmod(0o777)  # whoever can write here can repoint the link
    with pytest.raises(PolicyError, match="world-writable"):
        require_root_owned(link)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot be checked"):
        require_root_owned(tmp_path / "absent")
