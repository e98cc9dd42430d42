"""Landlock compilation (pure): which trees the built-in default policy and each seed policy
get for writing and executing, what is left to the notify file monitor, how older ABIs
degrade, how the config's landlock section is read; and the kernel constants."""

from __future__ import annotations

import ctypes
import itertools
from pathlib import Path

import pytest

from agentsh.enforce import config, landlock, loader
from agentsh.enforce.engine import FILE_OPERATIONS, check_file
from agentsh.enforce.errors import LayerUnavailable, PolicyError
from agentsh.enforce.landlock import (
    FS_EXECUTE,
    FS_IOCTL_DEV,
    FS_MAKE_BLOCK,
    FS_MAKE_CHAR,
    FS_MAKE_DIR,
    FS_MAKE_REG,
    FS_READ_DIR,
    FS_READ_FILE,
    FS_REFER,
    FS_REMOVE_DIR,
    FS_REMOVE_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
    LandlockConfig,
    Ruleset,
)
from agentsh.enforce.policy import Policy

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
HOME, PROJECT = "/home/agent", "/work/proj"
VARS = {"HOME": HOME, "PROJECT_ROOT": PROJECT, "WORKSPACE": PROJECT, "TMPDIR": "/tmp"}
RUNTIME = ("/opt/venv", "/opt/python3.11")
# Writing a file, making one, removing one: what "writable" means in these tables.
W = FS_WRITE_FILE | FS_MAKE_REG | FS_REMOVE_FILE


def policy(name: str, variables: dict[str, str] = VARS) -> Policy:
    path = config.builtin_policy_path() if name == "default" else SEEDS / name / "default.yaml"
    return loader.load(path, variables)


def seed_config(name: str) -> LandlockConfig:
    if name == "default":
        return LandlockConfig()
    return landlock.settings(config.load_config(SEEDS / name / "config.yaml"))


def build(name: str, abi: int = 7, *, monitor: bool = False, analyse: bool = True) -> Ruleset:
    return landlock.compile(
        policy(name), seed_config(name), abi=abi, runtime=RUNTIME, monitor=monitor, analyse=analyse
    )


def effective(ruleset: Ruleset, path: str) -> int:
    """The rights Landlock gives ``path``: the union of every rule on it or a tree above."""
    rights = 0
    for rule in ruleset.rules:
        above = rule.path == "/" or path.startswith(rule.path + "/")
        if rule.path == path or (rule.tree and above):
            rights |= rule.access
    return rights


def writable_trees(ruleset: Ruleset) -> set[str]:
    return {r.path for r in ruleset.rules if r.tree and r.access & W == W}


def gap_keys(ruleset: Ruleset, kind: str) -> set[tuple[str | None, str]]:
    return {(g.rule, g.pattern) for g in ruleset.gaps if g.kind == kind}


# --------------------------------------------------------------------------- constants


def test_syscall_numbers_flags_and_struct_layouts() -> None:
    assert (landlock.NR_CREATE_RULESET, landlock.NR_ADD_RULE, landlock.NR_RESTRICT_SELF) == (
        444,
        445,
        446,
    )
    assert (landlock.CREATE_RULESET_VERSION, landlock.CREATE_RULESET_ERRATA) == (1, 2)
    assert landlock.RULE_PATH_BENEATH == 1
    assert ctypes.sizeof(landlock.RulesetAttr) == 24
    assert landlock.RulesetAttr.handled_access_net.offset == 8
    assert landlock.RulesetAttr.scoped.offset == 16
    assert ctypes.sizeof(landlock.PathBeneathAttr) == 12  # packed, not 16
    assert landlock.PathBeneathAttr.parent_fd.offset == 8


def test_every_wrapper_has_argtypes_and_restype() -> None:
    for proto in (landlock._create_ruleset, landlock._add_rule, landlock._restrict_self):
        assert proto.restype is ctypes.c_long
        assert proto.argtypes[0] is ctypes.c_long  # the syscall number
    assert landlock._create_ruleset.argtypes[1] is ctypes.POINTER(landlock.RulesetAttr)
    assert landlock._add_rule.argtypes[3] is ctypes.POINTER(landlock.PathBeneathAttr)


def test_access_rights_have_the_kernel_values() -> None:
    names = [
        "execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file",
        "make_char", "make_dir", "make_reg", "make_sock", "make_fifo", "make_block",
        "make_sym", "refer", "truncate", "ioctl_dev",
    ]  # fmt: skip
    assert {1 << i: name for i, name in enumerate(names)} == landlock.RIGHT_NAMES
    assert (landlock.NET_BIND_TCP, landlock.NET_CONNECT_TCP) == (1, 2)
    file_valid = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
    assert landlock.FILE_RIGHTS == file_valid == 0xC007
    assert landlock.WRITE & (FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_EXECUTE | FS_READ_FILE) == 0
    assert landlock.WRITE & FS_REFER
    assert landlock.WRITE & FS_TRUNCATE


@pytest.mark.parametrize(
    ("abi", "rights"),
    [(1, 0x1FFF), (2, 0x3FFF), (3, 0x7FFF), (4, 0x7FFF), (5, 0xFFFF), (6, 0xFFFF), (7, 0xFFFF)],
)
def test_rights_per_abi(abi: int, rights: int) -> None:
    assert landlock.fs_rights(abi) == rights


def test_errata_not_fixed_are_named_per_abi() -> None:
    assert landlock.Support(7, 0b111).unfixed() == ()
    assert [u[:9] for u in landlock.Support(7, 0b001).unfixed()] == ["erratum 2", "erratum 3"]
    assert [u[:9] for u in landlock.Support(3, 0).unfixed()] == ["erratum 3"]  # 1 and 2: later
    assert not landlock.Support(0, 0, "no Landlock").available


# --------------------------------------------------------------------------- globs and decisions


@pytest.mark.parametrize(
    ("glob", "reduced"),
    [
        ("/tmp/**", ("/tmp", True)),
        ("/work/proj/**", ("/work/proj", True)),
        ("**", ("/", True)),
        ("/**", ("/", True)),
        ("/dev/null", ("/dev/null", False)),
        ("/work/proj", ("/work/proj", False)),
        ("**/.env", None),
        ("/home/*/.ssh/**", None),
        ("/proc/[0-9]*/environ", None),
        ("/etc/ssh/ssh_host_*", None),
        ("/a/{b,c}/**", None),
    ],
)
def test_reduce_glob(glob: str, reduced: tuple[str, bool] | None) -> None:
    assert landlock.reduce_glob(glob) == reduced


PROBE_PATHS = [
    "/", "/etc/passwd", "/etc/shadow", "/etc/agentsh/x", "/usr/bin/sudo", "/usr/local/bin/x",
    f"{PROJECT}/src/a.py", f"{PROJECT}/.env", f"{PROJECT}/.env.example", "/tmp/x/y",
    f"{HOME}/.ssh/id_rsa", f"{HOME}/.cache/pip/x", "/root/.ssh/id_rsa", "/proc/1/environ",
    "/proc/self/status", "/sys/fs/cgroup/cgroup.procs", "/dev/null", "/dev/pts/3",
    "/var/lib/agentsh/a", "/home/other/.ssh/k", "/opt/tool/bin/t", "/workspace/a", "/.sprite/x",
]  # fmt: skip


@pytest.mark.parametrize("name", ["default", "deno", "exe.dev", "render", "sprites"])
def test_decisions_agree_with_check_file(name: str) -> None:
    """The one-pass decision table compile uses is check_file, operation by operation."""
    pol = policy(name)
    names = [r.name for r in pol.file_rules]
    for path, op in itertools.product(PROBE_PATHS, sorted(FILE_OPERATIONS)):
        decision, index = landlock.decisions(pol, path)[op]
        verdict = check_file(pol, op, path)
        assert decision is verdict.decision, (path, op)
        assert (names[index] if index >= 0 else None) == verdict.rule, (path, op)


# --------------------------------------------------------------------------- the default policy


def test_default_policy_writes_only_in_project_tmp_and_tool_caches() -> None:
    ruleset = build("default")
    caches = {
        f"{HOME}/{d}"
        for d in (
            *(".cache", ".npm", ".yarn", ".pnpm-store", ".bun", ".deno", ".cargo"),
            *(".rustup", "go", ".m2", ".gradle", ".local", ".config/git"),
        )
    }
    assert writable_trees(ruleset) == {PROJECT, "/tmp", "/var/tmp", "/dev/shm", *caches}


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd", "/etc/new-file", "/usr/bin/ls", "/usr/local/bin/tool", "/bin/x",
        "/lib/x", "/boot/vmlinuz", "/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/pids/x",
        "/proc/self/attr/current", "/etc/agentsh/policies/default.yaml",
        "/var/lib/agentsh/audit.db", f"{HOME}/.bashrc", "/root/.profile", "/opt/x", "/var/log/x",
        "/dev/sda", "/dev/fuse",
    ],
)  # fmt: skip
def test_default_policy_system_paths_get_no_write_right(path: str) -> None:
    assert effective(build("default"), path) & landlock.WRITE == 0


def test_default_policy_execute_and_read_everywhere_devices_and_terminals_writable() -> None:
    ruleset = build("default")
    # No file_default: the engine allows execute everywhere, so Landlock does too.
    root = ruleset.rule("/")
    assert root is not None
    assert root.access == FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    for dev in ("/dev/null", "/dev/tty", "/dev/ptmx", "/dev/pts/0", "/dev/zero"):
        rights = effective(ruleset, dev)
        assert rights & landlock.DEVICE == landlock.DEVICE, dev  # incl. TRUNCATE for `> /dev/null`
    assert effective(ruleset, f"{PROJECT}/x") & landlock.WRITE == landlock.WRITE
    for rule in ruleset.rules:
        assert not rule.access & (FS_MAKE_CHAR | FS_MAKE_BLOCK)
        assert rule.tree or not rule.access & ~landlock.FILE_RIGHTS
        assert not rule.path.startswith(("/proc", "/dev/fd", "/dev/std"))


def test_default_policy_gaps_name_what_only_the_monitor_can_enforce() -> None:
    ruleset = build("default")
    monitor = gap_keys(ruleset, "monitor")
    for key in [
        ("deny-credentials", f"{HOME}/.ssh/**"),
        ("deny-credentials", "/etc/shadow"),
        ("deny-credentials", f"{HOME}/.cargo/credentials"),  # inside the writable ~/.cargo
        ("deny-process-secrets", "/proc/[0-9]*/environ"),
        ("deny-process-secrets", "/proc/1/**"),
        ("approve-env-files", "**/.env"),
        ("deny-agentsh-audit-read", "/var/lib/agentsh/**"),
        ("deny-system-writes", "/etc/**"),  # chmod: Landlock has no right for it
    ]:
        assert key in monitor, key
    credentials = next(g for g in ruleset.gaps if g.pattern == f"{HOME}/.cargo/credentials")
    assert "write" in credentials.operations
    system = next(g for g in ruleset.gaps if g.rule == "deny-system-writes")
    assert system.operations == ("chmod",)  # writes there are Landlock's: not a gap
    # An earlier allow of the whole tree shadows the later deny: no false gap.
    shadowed = [g for g in ruleset.gaps if g.rule == "deny-writes-outside-project"]
    assert all(g.operations == ("chmod",) for g in shadowed)
    stricter = gap_keys(ruleset, "stricter")
    assert ("allow-env-examples", "**/.env.example") in stricter
    assert (None, f"{HOME}/.gitconfig") in stricter  # git's lock-file rename needs the directory


def test_monitor_flag_turns_approve_from_denied_to_asked() -> None:
    without, with_monitor = build("deno"), build("deno", monitor=True)
    assert not effective(without, f"{PROJECT}/a") & FS_REMOVE_FILE
    assert effective(with_monitor, f"{PROJECT}/a") & (FS_REMOVE_FILE | FS_REMOVE_DIR)
    assert ("approve-workspace-delete", f"{PROJECT}/**") in gap_keys(without, "stricter")
    asked = gap_keys(with_monitor, "monitor")
    assert ("approve-workspace-delete", f"{PROJECT}/**") in asked


def test_an_earlier_deny_keeps_a_project_inside_etc_read_only() -> None:
    pol = policy("default", {**VARS, "PROJECT_ROOT": "/etc/proj", "WORKSPACE": "/etc/proj"})
    ruleset = landlock.compile(pol, LandlockConfig(), abi=7)
    assert effective(ruleset, "/etc/proj/x") & landlock.WRITE == 0
    assert ("allow-project", "/etc/proj/**") in gap_keys(ruleset, "stricter")


def test_analyse_false_skips_only_the_policy_gap_analysis() -> None:
    full, quick = build("default"), build("default", analyse=False)
    assert quick.rules == full.rules
    assert quick.handled_fs == full.handled_fs
    assert not any(g.kind == "monitor" for g in quick.gaps)


# --------------------------------------------------------------------------- the seed policies

SEED_WRITES = {
    "deno": {"/tmp", "/var/tmp"},  # workspace deletes need approval: not writable in full
    "exe.dev": {PROJECT, "/workspace", "/root", "/tmp", "/var/tmp"},
    "render": {"/workspace", "/tmp", "/var/tmp", "/home", "/root", "/dev/shm", "/dev/pts"},
    "sprites": {PROJECT, "/tmp", "/var/tmp", "/dev/pts"},  # allow-dev-nodes: "*" on /dev/pts/**
}


@pytest.mark.parametrize("name", sorted(SEED_WRITES))
def test_seed_writable_trees(name: str) -> None:
    ruleset = build(name)
    assert writable_trees(ruleset) == SEED_WRITES[name]
    for path in ("/etc/passwd", "/usr/bin/x", "/usr/local/bin/x", "/sys/fs/cgroup/cgroup.procs"):
        assert effective(ruleset, path) & landlock.WRITE == 0, path


@pytest.mark.parametrize(
    ("name", "executes", "does_not"),
    [
        ("deno", ["/usr/bin/x", "/opt/t/bin/t", "/tmp/a.sh", "/opt/venv/bin/python"],
         [f"{PROJECT}/build.sh", f"{HOME}/bin/x", "/srv/x"]),
        ("exe.dev", ["/usr/bin/x", "/usr/local/bin/x", "/tmp/a.sh"],
         [f"{PROJECT}/build.sh", "/workspace/a.sh", "/root/x", "/opt/t"]),
        ("render", ["/usr/bin/x", "/workspace/a.sh", "/root/x", "/home/u/bin/x"],
         ["/opt/t", "/srv/x", "/var/x"]),
        ("sprites", ["/usr/bin/x", "/lib64/ld-linux-x86-64.so.2", "/tmp/a.sh"],
         [f"{PROJECT}/build.sh", "/opt/t", "/.sprite/x"]),
    ],
)  # fmt: skip
def test_seed_execute(name: str, executes: list[str], does_not: list[str]) -> None:
    ruleset = build(name)
    for path in executes:
        assert effective(ruleset, path) & FS_EXECUTE, path
    for path in does_not:
        assert not effective(ruleset, path) & FS_EXECUTE, path


def test_deno_workspace_is_writable_but_deletes_and_renames_wait_for_approval() -> None:
    ruleset = build("deno")
    rights = effective(ruleset, f"{PROJECT}/a")
    assert rights & (FS_WRITE_FILE | FS_MAKE_REG | FS_MAKE_DIR | FS_REFER | FS_TRUNCATE)
    assert not rights & (FS_REMOVE_FILE | FS_REMOVE_DIR)
    # Landlock's rename removes the source: allowed by the policy, impossible here.
    assert (None, PROJECT) in gap_keys(ruleset, "stricter")
    assert (None, PROJECT) not in gap_keys(build("deno", monitor=True), "stricter")


def test_exe_dev_config_narrows_reads_and_never_opens_agentsh_state() -> None:
    ruleset = build("exe.dev")
    assert not effective(ruleset, "/srv/data") & FS_READ_FILE  # not in allow_read
    assert not effective(ruleset, "/home/u/x") & FS_READ_FILE
    for path in ("/etc/hosts", "/usr/lib/x", f"{PROJECT}/a", "/opt/venv/lib/x", "/dev/null"):
        assert effective(ruleset, path) & FS_READ_FILE, path
    assert effective(ruleset, "/var/lib/agentsh/events.db") & landlock.WRITE == 0
    assert (None, "/var/lib/agentsh") in gap_keys(ruleset, "stricter")
    assert ("block-dangerous-binaries", "/usr/bin/sudo") in gap_keys(ruleset, "monitor")
    assert ("soft-delete-workspace", "/workspace/**") in gap_keys(ruleset, "monitor")
    assert ("approve-env-files", "**/.env") in gap_keys(ruleset, "monitor")


def test_render_denies_tcp_bind_and_leaves_connect_alone() -> None:
    ruleset = build("render")
    assert ruleset.handled_net == landlock.NET_BIND_TCP


def test_sprites_may_write_dev_fuse_because_its_policy_says_so() -> None:
    assert effective(build("sprites"), "/dev/fuse") & FS_WRITE_FILE
    assert not effective(build("default"), "/dev/fuse") & FS_WRITE_FILE
    assert ("soft-delete-workspace", f"{PROJECT}/**") in gap_keys(build("sprites"), "monitor")


def test_runtime_interpreter_stays_readable_and_executable_under_every_policy() -> None:
    for name in ("default", *SEED_WRITES):
        rights = effective(build(name), "/opt/venv/bin/python")
        assert rights & (FS_EXECUTE | FS_READ_FILE) == FS_EXECUTE | FS_READ_FILE, name


# --------------------------------------------------------------------------- ABI degradation


@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("name", ["default", "render"])
def test_abi_degradation_strips_and_reports(name: str, abi: int) -> None:
    ruleset = build(name, abi=abi)
    assert ruleset.abi == abi
    assert ruleset.handled_fs == landlock.fs_rights(abi)
    assert all(not r.access & ~ruleset.handled_fs for r in ruleset.rules)
    text = " ".join(ruleset.degraded)
    assert ("REFER" in text) == (abi < 2)
    assert ("TRUNCATE" in text) == (abi < 3)
    assert ("IOCTL_DEV" in text) == (abi < 5)
    if name == "render":
        assert ruleset.handled_net == (landlock.NET_BIND_TCP if abi >= 4 else 0)
        assert ("network is not enforced" in text) == (abi < 4)
    # Still the same boundary where the ABI can draw it: no writes to the system.
    assert effective(ruleset, "/etc/passwd") & FS_WRITE_FILE == 0
    assert effective(ruleset, "/tmp/x") & FS_WRITE_FILE


def test_abi_beyond_the_known_one_is_compiled_as_7_and_said_so() -> None:
    ruleset = build("default", abi=9)
    assert ruleset.abi == 7
    assert ruleset.handled_fs == 0xFFFF
    assert any("ABI 9" in d for d in ruleset.degraded)


def test_no_landlock_refuses_to_compile() -> None:
    with pytest.raises(LayerUnavailable, match="no Landlock"):
        build("default", abi=0)


# --------------------------------------------------------------------------- config


def write_config(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config.load_config(path)


def test_settings_of_the_seed_configs() -> None:
    exe = seed_config("exe.dev")
    assert exe.section == "landlock"
    assert "/usr/local/bin" in exe.allow_execute
    assert exe.allow_read is not None
    assert "/proc" in exe.allow_read
    assert exe.allow_write == ("/root", "/workspace", "/tmp", "/var/tmp", "/var/lib/agentsh")
    render = seed_config("render")
    assert render.section == "sandbox.landlock"
    assert render.allow_read is None
    assert (render.connect_tcp, render.bind_tcp) == (True, False)
    deno = seed_config("deno")
    assert deno.enabled
    assert deno.allow_read is None
    assert deno.connect_tcp is None
    assert "/var/lib/agentsh" in deno.protected
    assert "/etc/agentsh/policies" in deno.protected


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("landlock:\n  allow_write: [tmp]\n", "landlock.allow_write"),
        ("landlock:\n  allow_write: /tmp\n", "landlock.allow_write"),
        ("landlock:\n  allow_read: ['/home/*']\n", "landlock.allow_read"),
        ("landlock:\n  enabled: 'yes'\n", "landlock.enabled"),
        ("sandbox:\n  landlock:\n    network:\n      allow_bind_tcp: 1\n",
         "sandbox.landlock.network.allow_bind_tcp"),
        ("landlock:\n  enabled: true\nsandbox:\n  landlock:\n    enabled: true\n",
         "sandbox.landlock"),
    ],
)  # fmt: skip
def test_bad_landlock_config_names_file_line_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(PolicyError) as err:
        landlock.settings(write_config(tmp_path, text))
    assert err.value.key == key
    assert err.value.line is not None
    assert str(tmp_path / "config.yaml") in err.value.message


def test_landlock_can_be_disabled_and_paths_are_normalised(tmp_path: Path) -> None:
    text = "landlock:\n  enabled: false\n  allow_write: [/srv//x/]\n"
    cfg = landlock.settings(write_config(tmp_path, text))
    assert not cfg.enabled
    assert cfg.allow_write == ("/srv/x",)


def test_config_write_grants_under_agentsh_state_are_dropped_and_above_are_reported() -> None:
    base = LandlockConfig(allow_write=("/var/lib/agentsh/sub", "/srv"))
    ruleset = landlock.compile(policy("default"), base, abi=7)
    assert effective(ruleset, "/var/lib/agentsh/sub/x") & landlock.WRITE == 0
    assert effective(ruleset, "/srv/x") & landlock.WRITE == landlock.WRITE
    above = landlock.compile(policy("default"), LandlockConfig(allow_write=("/var",)), abi=7)
    assert (None, "/var/lib/agentsh") in gap_keys(above, "monitor")


def test_explain_lists_rules_degradation_and_gaps() -> None:
    lines = landlock.explain(build("render", abi=3))
    tmp = build("render", abi=3).rule("/tmp")
    assert lines[0] == "Landlock ABI 3: fs 0x7fff, net 0x0"
    assert tmp is not None
    assert f"  /tmp/**: {landlock.describe(tmp.access)}" in lines
    assert any(line.startswith("  degraded: ABI 3: no IOCTL_DEV") for line in lines)
    assert any("(block-dangerous-binaries)" in line for line in lines)
