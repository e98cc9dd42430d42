"""The notify file monitor's pure half (enforce.filemon) and the parts of its handler that
need no tracee (enforce.fileguard): config, the trap plan and its filter routes, open flag
decoding, the rename/link shield, the fast rule matcher, and path resolution in a
process's own context (our own pid stands in for the tracee)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from pathlib import Path
from types import MappingProxyType

import pytest

from agentsh.enforce import (
    bpf,
    config,
    engine,
    filecalls,
    fileguard,
    filekinds,
    filemon,
    govern,
    landlock,
    loader,
)
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.filemon import FAMILIES, MonitorConfig
from agentsh.enforce.policy import Decision, FileRule, Policy

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
VARS = {"HOME": "/home/agent", "PROJECT_ROOT": "/work/proj", "WORKSPACE": "/work/proj"}
VARS |= {"TMPDIR": "/tmp"}
RUNTIME = ("/opt/venv",)
ALL_FAMILIES = frozenset(FAMILIES)
O_RDONLY, O_WRONLY, O_RDWR = os.O_RDONLY, os.O_WRONLY, os.O_RDWR


def policy(name: str) -> Policy:
    path = config.builtin_policy_path() if name == "default" else SEEDS / name / "default.yaml"
    return loader.load(path, VARS)


def seed_config(name: str) -> config.Config:
    return (
        config.Config() if name == "default" else config.load_config(SEEDS / name / "config.yaml")
    )


def ruleset(name: str) -> landlock.Ruleset:
    cfg = landlock.settings(seed_config(name))
    return landlock.compile(policy(name), cfg, abi=7, runtime=RUNTIME, analyse=False)


def rules(*specs: tuple[str, tuple[str, ...], tuple[str, ...], Decision]) -> Policy:
    made = tuple(FileRule(n, paths, ops, d) for n, paths, ops, d in specs)
    return Policy(1, "t", "<test>", file_rules=made)


def raw_config(data: dict[str, object], lines: dict[str, int] | None = None) -> config.Config:
    return config.Config(
        path=Path("/etc/agentsh/config.yaml"),
        raw=MappingProxyType(data),
        lines=MappingProxyType(lines or {}),
    )


# --------------------------------------------------------------------------- settings


def test_absent_section_means_enabled_and_enforcing() -> None:
    cfg = filemon.settings(config.Config())
    assert cfg == MonitorConfig()
    assert cfg.enabled
    assert cfg.enforce
    assert cfg.emulate_opens
    assert not cfg.write_only_opens


@pytest.mark.parametrize("name", ["deno", "exe.dev", "render", "sprites"])
def test_seed_configs(name: str) -> None:
    # deno says file_monitor.enabled: false but traces files with ptrace (trace.file: true):
    # its authors still meant file rules to be enforced, and here one monitor does both.
    cfg = filemon.settings(seed_config(name))
    assert cfg.enabled
    assert cfg.enforce  # enforce_without_fuse: true in the three that enable it; default on


def test_monitor_off_stays_off_without_ptrace_file_tracing(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "sandbox:\n  seccomp:\n    file_monitor:\n      enabled: false\n"
        "  ptrace:\n    enabled: true\n    trace:\n      file: false\n"
    )
    assert not filemon.settings(config.load_config(path)).enabled


def test_every_go_key_is_read() -> None:
    section = {
        "enabled": True,
        "enforce_without_fuse": False,
        "intercept_metadata": False,
        "write_only_opens": True,
        "openat_emulation": False,
        "block_io_uring": False,
        "extra": None,
    }
    data = {
        "sandbox": {"seccomp": {"file_monitor": {k: v for k, v in section.items() if k != "extra"}}}
    }
    cfg = filemon.settings(raw_config(data))
    assert cfg == MonitorConfig(True, False, False, True, False, False)


@pytest.mark.parametrize(
    ("section", "key", "why"),
    [
        ({"enabled": "yes"}, "sandbox.seccomp.file_monitor.enabled", "true or false"),
        ({"enforce_without_fuse": 1}, "sandbox.seccomp.file_monitor.enforce_without_fuse", "true"),
        ({"enabeld": True}, "sandbox.seccomp.file_monitor.enabeld", "unknown key"),
        ("on", "sandbox.seccomp.file_monitor", "mapping"),
    ],
)
def test_bad_values_name_file_line_and_key(section: object, key: str, why: str) -> None:
    data = {"sandbox": {"seccomp": {"file_monitor": section}}}
    with pytest.raises(PolicyError) as err:
        filemon.settings(raw_config(data, {key: 7}))
    assert err.value.key == key
    assert err.value.line == 7
    assert "/etc/agentsh/config.yaml" in err.value.message
    assert why in err.value.message


def test_line_numbers_come_from_the_real_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sandbox:\n  seccomp:\n    file_monitor:\n      enabled: maybe\n")
    with pytest.raises(PolicyError) as err:
        filemon.settings(config.load_config(path))
    assert (err.value.key, err.value.line) == ("sandbox.seccomp.file_monitor.enabled", 4)


# --------------------------------------------------------------------------- plan


def test_disabled_monitor_plans_nothing() -> None:
    assert filemon.plan(policy("default"), MonitorConfig(enabled=False), landlock=None) is None


def test_policy_without_restrictions_plans_nothing() -> None:
    open_all = Policy(1, "t", "<t>", file_default=Decision.ALLOW)
    assert filemon.plan(open_all, MonitorConfig(), landlock=None) is None


@pytest.mark.parametrize("name", ["default", "exe.dev", "render", "sprites"])
@pytest.mark.parametrize("with_landlock", [False, True])
def test_seed_and_default_policies_trap_everything(name: str, with_landlock: bool) -> None:
    # Each restricts reads (~/.ssh, agentsh internals, binaries) and has a deny or approve
    # inside a writable tree (~/.cargo/credentials, **/.env, ...) and chmod rules.
    found = filemon.plan(
        policy(name),
        filemon.settings(seed_config(name)),
        landlock=ruleset(name) if with_landlock else None,
    )
    assert found is not None
    assert (found.read_opens, found.write_opens, found.families) == (True, True, ALL_FAMILIES)


def test_exe_dev_landlock_narrows_reads_so_emulated_opens_ask_landlock() -> None:
    found = filemon.plan(policy("exe.dev"), MonitorConfig(), landlock=ruleset("exe.dev"))
    assert found is not None
    assert (found.emulate, found.reads_narrowed) == (True, True)
    bare = filemon.plan(policy("exe.dev"), MonitorConfig(), landlock=None)
    assert bare is not None
    assert (bare.emulate, bare.reads_narrowed) == (True, False)
    off = filemon.plan(policy("exe.dev"), MonitorConfig(emulate_opens=False), landlock=None)
    assert off is not None
    assert not off.emulate


def test_a_read_deny_alone_traps_reads_renames_and_links_not_writes() -> None:
    pol = rules(
        ("secrets", ("/srv/secret/**",), ("read", "open"), Decision.DENY),
        ("work", ("/work/**",), ("*",), Decision.ALLOW),
    )
    pol = Policy(1, "t", "<t>", file_rules=pol.file_rules, file_default=Decision.ALLOW)
    found = filemon.plan(pol, MonitorConfig(), landlock=None)
    assert found is not None
    assert (found.read_opens, found.write_opens) == (True, False)
    assert found.families == {"rename", "link"}
    notify, args = found.routes()
    assert set(notify) == {filemon.NR_OPENAT2, *FAMILIES["rename"][1], *FAMILIES["link"][1]}
    assert {a.nr for a in args} == {filemon.NR_OPEN, filemon.NR_OPENAT}


def test_a_write_landlock_would_refuse_is_trapped_to_be_audited() -> None:
    # /etc is not writable under Landlock, which refuses without a word: the monitor traps
    # the write families so the refusal names its rule (stderr, audit). Reads stay free.
    pol = rules(
        ("ro-etc", ("/etc/**",), ("write", "create", "delete"), Decision.DENY),
        ("work", ("/work/**",), ("*",), Decision.ALLOW),
    )
    pol = Policy(1, "t", "<t>", file_rules=pol.file_rules)
    ll = landlock.compile(pol, landlock.LandlockConfig(), abi=7, runtime=RUNTIME, analyse=False)
    with_ll = filemon.plan(pol, MonitorConfig(metadata=False), landlock=ll)
    assert with_ll is not None
    assert with_ll.write_opens
    assert not with_ll.read_opens
    assert with_ll.families == set(filemon.FAMILIES) - filemon.METADATA
    without = filemon.plan(pol, MonitorConfig(metadata=False), landlock=None)
    assert without is not None
    assert without.write_opens
    assert not without.read_opens


def test_deny_inside_a_writable_tree_traps_writes() -> None:
    pol = rules(
        ("keys", ("/work/keys/**",), ("write", "create"), Decision.DENY),
        ("work", ("/work/**",), ("*",), Decision.ALLOW),
    )
    ll = landlock.compile(pol, landlock.LandlockConfig(), abi=7, runtime=RUNTIME, analyse=False)
    found = filemon.plan(pol, MonitorConfig(metadata=False), landlock=ll)
    assert found is not None
    assert found.write_opens
    assert not found.read_opens


def test_agentsh_state_under_a_writable_tree_is_always_guarded() -> None:
    pol = rules(("all", ("/**",), ("*",), Decision.ALLOW))
    ll = landlock.compile(pol, landlock.LandlockConfig(), abi=7, runtime=RUNTIME, analyse=False)
    found = filemon.plan(pol, MonitorConfig(), landlock=ll, protected=("/etc/agentsh",))
    assert found is not None
    assert found.write_opens
    assert {"delete", "rename", "mkdir", "truncate"} <= found.families


def test_write_only_opens_and_metadata_switches_are_reported() -> None:
    cfg = MonitorConfig(write_only_opens=True, metadata=False, enforce=False)
    found = filemon.plan(policy("default"), cfg, landlock=None)
    assert found is not None
    assert not found.read_opens
    assert found.write_opens
    assert not found.families & filemon.METADATA
    assert not found.enforce
    text = " ".join(found.notes)
    assert "write_only_opens" in text
    assert "intercept_metadata" in text
    assert "only audited" in text


def test_routes_fit_in_the_exec_filter_without_clashes() -> None:
    found = filemon.plan(policy("default"), MonitorConfig(), landlock=None)
    assert found is not None
    spec = govern.filter_spec(files=found)  # raises on a syscall routed twice
    prog = bpf.build(spec)
    for nr in sorted(found.syscalls):
        assert bpf.run(prog, bpf.SeccompData(nr)) == bpf.RET_USER_NOTIF, nr
    assert bpf.run(prog, bpf.SeccompData(4)) == bpf.RET_ALLOW  # stat is never trapped


@pytest.mark.parametrize(
    ("flags", "write"),
    [
        (O_RDONLY, False),
        (O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NONBLOCK, False),
        (O_WRONLY, True),
        (O_RDWR, True),
        (3, True),
        (O_RDONLY | os.O_CREAT, True),
        (O_RDONLY | os.O_TRUNC, True),
        (O_RDWR | os.O_TMPFILE, True),
        (O_RDONLY | os.O_APPEND, False),
        ((1 << 32) | O_RDONLY, False),  # only the low 32 bits are the int the kernel reads
    ],
)
def test_filter_routes_open_and_openat_on_their_flags(flags: int, write: bool) -> None:
    pol = rules(("w", ("/w/**",), ("write",), Decision.DENY))
    only_writes = filemon.Plan(pol, False, True, frozenset())
    only_reads = filemon.Plan(pol, True, False, frozenset())
    for plan, trapped in ((only_writes, write), (only_reads, not write)):
        prog = bpf.build(bpf.FilterSpec(*plan.routes()[:1], args=plan.routes()[1]))
        want = bpf.RET_USER_NOTIF if trapped else bpf.RET_ALLOW
        assert bpf.run(prog, bpf.SeccompData(filemon.NR_OPEN, args=(0, flags))) == want
        assert bpf.run(prog, bpf.SeccompData(filemon.NR_OPENAT, args=(0, 0, flags))) == want
        assert bpf.run(prog, bpf.SeccompData(filemon.NR_OPENAT2)) == bpf.RET_USER_NOTIF
    assert filemon.writes(flags & 0xFFFFFFFF) is write


def test_masked_arg_rule_keeps_value_matching() -> None:
    rule = bpf.ArgRule(16, 1, (0x5412,), "notify", "allow", mask=0x100)
    prog = bpf.build(bpf.FilterSpec(args=(rule,)))
    assert bpf.run(prog, bpf.SeccompData(16, args=(0, 0x5412))) == bpf.RET_USER_NOTIF
    assert bpf.run(prog, bpf.SeccompData(16, args=(0, 0x100))) == bpf.RET_USER_NOTIF
    assert bpf.run(prog, bpf.SeccompData(16, args=(0, 0x5413))) == bpf.RET_ALLOW
    with pytest.raises(ValueError, match="tests nothing"):
        bpf.ArgRule(16, 1, (), "notify", "allow")


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("flags", "directory", "exists", "ops"),
    [
        (O_RDONLY, False, True, ("open", "read")),
        (O_RDONLY | os.O_DIRECTORY, True, True, ("open", "list")),
        (O_WRONLY | os.O_CREAT | os.O_TRUNC, False, False, ("write", "create")),
        (O_WRONLY | os.O_CREAT | os.O_TRUNC, False, True, ("write",)),
        (O_RDWR, False, True, ("open", "read", "write")),
        (O_RDONLY | os.O_TRUNC, False, True, ("open", "read", "write")),
        (os.O_PATH | O_WRONLY, False, True, ("stat",)),
        (O_RDWR | os.O_TMPFILE, True, True, ("open", "list", "write", "create")),
    ],
)
def test_open_operations(flags: int, directory: bool, exists: bool, ops: tuple[str, ...]) -> None:
    assert filemon.open_operations(flags, directory=directory, exists=exists) == ops


# --------------------------------------------------------------------------- shields


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("/home/agent/.ssh/id_rsa", "deny-credentials"),  # the file itself
        ("/home/agent/.ssh", "deny-credentials"),  # its directory
        ("/home/agent", "deny-credentials"),  # an ancestor: the whole tree would move
        ("/home", "deny-credentials"),
        ("/etc", "deny-credentials"),  # /etc/shadow (agentsh-internals restricts writes only)
        ("/work/proj/.env", "approve-env-files"),  # **/.env matches the file itself
        ("/work/proj", None),  # a leading ** matches wherever the tree goes
        ("/work/proj/src/main.py", None),
        ("/tmp/x", None),
    ],
)
def test_shields(path: str, rule: str | None) -> None:
    found = filemon.shields(policy("default"), path)
    assert (found.name if found else None) == rule


def test_reaches_expands_braces_and_character_classes() -> None:
    pol = rules(("k", ("/srv/{keys,certs}/[a-c]*.pem",), ("read",), Decision.DENY))
    assert filemon.shields(pol, "/srv/certs/b1.pem") is not None
    assert filemon.shields(pol, "/srv/certs") is not None
    assert filemon.shields(pol, "/srv/certs/d1.pem") is None
    assert filemon.shields(pol, "/srv/other") is None


# --------------------------------------------------------------------------- fast rules

PROBES = [
    "/home/agent/.ssh/id_rsa", "/home/agent/.ssh", "/home/other/.ssh/config", "/etc/shadow",
    "/etc/passwd", "/etc/agentsh/config.yaml", "/var/lib/agentsh/audit.db", "/proc/1/environ",
    "/proc/77/environ", "/proc/77/status", "/work/proj/a.py", "/work/proj/.env",
    "/work/proj/.env.example", "/work/proj/sub/.env.local", "/tmp/x", "/usr/bin/python3",
    "/home/agent/.cargo/credentials", "/home/agent/.cargo/bin/cargo", "/", "/root/.aws/config",
    "/dev/null", "/sys/firmware/efi", "/opt/tool/bin/x", "/home/agent/.gitconfig",
]  # fmt: skip


@pytest.mark.parametrize("warm_up", [0, fileguard.FastRules.WARM_UP])
@pytest.mark.parametrize("name", ["default", "deno", "exe.dev", "render", "sprites"])
def test_fast_rules_agree_with_the_engine(name: str, warm_up: int) -> None:
    # warm_up 0: the compiled alternation from the first check; else the engine's own
    # per-rule path until an operation has been checked WARM_UP times.
    pol = policy(name)
    fast = fileguard.FastRules(pol)
    fast.WARM_UP = warm_up  # type: ignore[misc]
    for op in sorted(engine.FILE_OPERATIONS):
        for path in PROBES:
            want, got = engine.check_file(pol, op, path), fast.check(op, path)
            assert got.decision == want.decision, (op, path)
            if want.decision is not Decision.ALLOW:  # refusals and audits: the very verdict
                assert got == want
    assert bool(fast.compiled) is (warm_up == 0)


# --------------------------------------------------------------------------- resolution


def test_vm_read_reads_our_own_memory_and_stops_at_nul() -> None:
    buf = ctypes.create_string_buffer(b"/etc/hostname\0garbage")
    assert filecalls.read_path(os.getpid(), ctypes.addressof(buf)) == b"/etc/hostname"
    with pytest.raises(OSError, match="Bad address") as err:
        filecalls.read_path(os.getpid(), 0)
    assert err.value.errno == errno.EFAULT


def _canon(tmp: Path) -> str:
    return os.path.realpath(tmp)


def test_resolution_follows_symlinks_dotdot_and_proc_self(tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".ssh"
    secret.mkdir(parents=True)
    (secret / "id_rsa").write_text("key")
    work = tmp_path / "work"
    work.mkdir()
    (work / "link").symlink_to(secret / "id_rsa")
    (work / "dirlink").symlink_to(secret)
    want = _canon(secret / "id_rsa")
    me, cwd = os.getpid(), filecalls.AT_FDCWD
    dirfd = os.open(work, os.O_PATH | os.O_DIRECTORY)
    try:
        paths = [
            str(work / "link").encode(),
            str(work / "dirlink" / "id_rsa").encode(),
            str(work / ".." / "home" / ".ssh" / "id_rsa").encode(),
            b"/proc/self/root" + str(secret / "id_rsa").encode(),
            b"/proc/thread-self/root" + str(secret / "id_rsa").encode(),
        ]
        for same in (True, None, False):
            for path in paths:
                target = filecalls.resolve_open(me, cwd, path, O_RDONLY, same)
                assert target.fd is not None
                os.close(target.fd)
                assert target.path == want, (path, same)
            relative = filecalls.resolve_open(me, dirfd, b"../home/.ssh/id_rsa", O_RDONLY, same)
            assert relative.path == want
            assert relative.fd is not None
            os.close(relative.fd)
    finally:
        os.close(dirfd)


def test_proc_self_never_means_the_supervisor(tmp_path: Path) -> None:
    # In a forked child, /proc/self resolved "fast" would be the child's own entry; the
    # resolution must name the tracee (here: the parent, standing in for it).
    parent = os.getpid()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            got = filecalls.resolve_open(parent, filecalls.AT_FDCWD, b"/proc/self/environ", 0, True)
            os.write(wfd, got.path.encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    assert text == f"/proc/{parent}/environ"


def test_creating_resolves_the_parent_and_dangling_symlinks(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "keys" / "new.pem")
    me, cwd = os.getpid(), filecalls.AT_FDCWD
    creat = os.O_WRONLY | os.O_CREAT
    new = filecalls.resolve_open(me, cwd, str(tmp_path / "keys" / "a").encode(), creat, True)
    assert (new.path, new.fd, new.st) == (_canon(tmp_path / "keys") + "/a", None, None)
    through = filecalls.resolve_open(me, cwd, str(tmp_path / "dangling").encode(), creat, True)
    assert through.path == _canon(tmp_path / "keys") + "/new.pem"
    excl = filecalls.resolve_open(
        me, cwd, str(tmp_path / "dangling").encode(), creat | os.O_EXCL, True
    )
    assert excl.path == _canon(tmp_path) + "/dangling"  # O_EXCL: the link itself
    with pytest.raises(FileNotFoundError):
        filecalls.resolve_open(me, cwd, str(tmp_path / "nodir" / "a").encode(), creat, True)


def test_unlink_resolves_the_parent_not_the_last_component(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "ln").symlink_to(tmp_path / "real")
    item = filecalls.Item(filecalls.AT_FDCWD, str(tmp_path / "ln").encode(), False, ("delete",))
    target = filecalls.resolve(os.getpid(), item, True)
    assert target.path == _canon(tmp_path) + "/ln"
    assert target.st is not None
    assert target.st.st_mode & 0o170000 == 0o120000


def test_protected_inodes_find_hard_links_made_before(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("key")
    os.link(home / ".ssh" / "id_rsa", tmp_path / "alias")
    pol = rules(("creds", (f"{home}/.ssh/**",), ("*",), Decision.DENY))
    found = filecalls.protected_inodes(pol)
    st = os.stat(tmp_path / "alias")
    assert found[(st.st_dev, st.st_ino)] == str(home / ".ssh" / "id_rsa")


def test_trash_and_refused_deletes_trap_the_delete_family() -> None:
    pol = rules(
        ("soft", ("/work/**",), ("delete", "rmdir"), Decision.SOFT_DELETE),
        ("work", ("/work/**",), ("*",), Decision.ALLOW),
    )
    pol = Policy(1, "t", "<t>", file_rules=pol.file_rules, file_default=Decision.ALLOW)
    ll = landlock.compile(pol, landlock.LandlockConfig(), abi=7, runtime=RUNTIME, analyse=False)
    without_ll = filemon.plan(pol, MonitorConfig(), landlock=None)
    assert without_ll is None  # soft deletes are FUSE's; nothing else is restricted
    with_trash = filemon.plan(pol, MonitorConfig(), landlock=None, trash="/var/lib/agentsh/trash")
    assert with_trash is not None
    assert with_trash.families == {"delete"}  # an overwriting rename stays real
    assert with_trash.trash == "/var/lib/agentsh/trash"
    under_ll = filemon.plan(pol, MonitorConfig(), landlock=ll, trash="/var/lib/agentsh/trash")
    assert under_ll is not None
    assert "delete" in under_ll.families
    allow_all = Policy(1, "t", "<t>", file_default=Decision.ALLOW)
    refusing = filemon.plan(allow_all, MonitorConfig(), landlock=None, refuse_deletes=("/work",))
    assert refusing is not None
    assert refusing.families == {"delete", "rename"}
    assert not refusing.read_opens
    assert not refusing.write_opens


def test_devices_every_program_uses_pass_unless_a_rule_names_them() -> None:
    default = Policy(1, "t", "<t>")  # writes denied by the file default
    refused = engine.check_file(default, "write", "/dev/null")
    assert not refused.allowed
    assert filekinds.device_relief(default, refused, "/dev/null").allowed
    assert filekinds.device_relief(default, refused, "/dev/pts/3").allowed
    naming = rules(("no-null", ("/dev/null",), ("write",), Decision.DENY))
    named = engine.check_file(naming, "write", "/dev/null")
    assert filekinds.device_relief(naming, named, "/dev/null") == named  # the rule names it
    catch_all = rules(("nothing", ("**",), ("*",), Decision.DENY))
    caught = engine.check_file(catch_all, "write", "/dev/null")
    assert filekinds.device_relief(catch_all, caught, "/dev/null").allowed
    assert filekinds.device_relief(default, refused, "/dev/sda") == refused  # not in the list


_BLK, _CHR, _REG = stat.S_IFBLK | 0o600, stat.S_IFCHR | 0o600, stat.S_IFREG | 0o644
_VDA, _TTY1, _NULL, _PTS3, _CONSOLE = (
    os.makedev(254, 0),
    os.makedev(4, 1),
    os.makedev(1, 3),
    os.makedev(136, 3),
    os.makedev(5, 1),
)
_READ_ALL = ("read-all", ("/**",), ("read", "open"), Decision.ALLOW)


@pytest.mark.parametrize(
    ("policy_rules", "path", "mode", "rdev", "refused"),
    [
        ((), "/dev/vda", _BLK, _VDA, True),  # reads allowed by the file default only
        ((), "/dev/disk/by-id/virtio-root", _BLK, _VDA, True),  # the kind decides, not the name
        ((), "/tmp/chroot/dev/sda", _BLK, _VDA, True),
        ((("tmp", ("/tmp/**",), ("*",), Decision.ALLOW),), "/tmp/disk", _BLK, _VDA, True),
        ((("d", ("/srv/dev/vda",), ("read",), Decision.ALLOW),), "/srv/dev/vda", _BLK, _VDA, True),
        ((_READ_ALL,), "/dev/vda", _BLK, _VDA, True),  # a catch-all names nothing
        ((("disk", ("/dev/vda",), ("read",), Decision.ALLOW),), "/dev/vda", _BLK, _VDA, False),
        ((("devs", ("/dev/**",), ("read",), Decision.ALLOW),), "/dev/vda", _BLK, _VDA, False),
        ((), "/dev/tty1", _CHR, _TTY1, True),  # a console: a person's keystrokes
        ((), "/dev/console", _CHR, _CONSOLE, True),
        ((), "/dev/null", _CHR, _NULL, False),
        ((), "/tmp/mynull", _CHR, _NULL, False),  # the same harmless device
        ((), "/dev/pts/3", _CHR, _PTS3, False),  # enforce.terminals judges its owner
        ((), "/dev/vda", _REG, 0, False),  # not a device
        ((("no", ("/dev/vda",), ("read",), Decision.DENY),), "/dev/vda", _BLK, _VDA, False),
    ],
)
def test_devices_no_rule_names_are_refused(
    policy_rules: tuple[tuple[str, tuple[str, ...], tuple[str, ...], Decision], ...],
    path: str,
    mode: int,
    rdev: int,
    refused: bool,
) -> None:
    """Reading a raw disk reads every file on it past the file rules (False for the
    last row: the rule itself refuses, so there is nothing left to refuse)."""
    pol = rules(*policy_rules)
    verdict = filekinds.device_refusal(pol, ("open", "read"), path, mode, rdev)
    assert (verdict is not None) == refused
    if verdict is not None:
        assert verdict.rule == filekinds.DEVICE_RULE
        assert path in verdict.message
        assert "file_rules" in verdict.message  # what to do instead


@pytest.mark.parametrize(
    ("path", "alias"),
    [
        ("/proc/42/task/43/environ", "/proc/42/environ"),
        ("/proc/42/task/42/fd/1", "/proc/42/fd/1"),
        ("/proc/42/task/43", "/proc/42"),
        ("/proc/self/task/43/mem", "/proc/self/mem"),
        ("/proc/42/environ", None),
        ("/proc/42/tasks/43/environ", None),
        ("/srv/proc/42/task/43/environ", None),
    ],
)
def test_a_threads_proc_entry_is_also_its_processs(path: str, alias: str | None) -> None:
    assert filekinds.task_alias(path) == alias


def _st(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


_STICKY_TMP = _st(stat.S_IFDIR | 0o1777, 0)  # /tmp
_STICKY_GROUP = _st(stat.S_IFDIR | 0o1770, 0)  # group-writable, sticky


@pytest.mark.parametrize(
    ("dir_st", "file_st", "fsuid", "levels", "refused"),
    [
        (_STICKY_TMP, _st(stat.S_IFREG | 0o666, 1000), 0, (1, 1), True),  # planted for root
        (_STICKY_TMP, _st(stat.S_IFREG | 0o666, 1000), 0, (0, 1), False),  # sysctl off
        (_STICKY_TMP, _st(stat.S_IFREG | 0o666, 1000), 1000, (2, 2), False),  # its own
        (_STICKY_TMP, _st(stat.S_IFREG | 0o666, 0), 1000, (2, 2), False),  # the dir owner's
        (_st(stat.S_IFDIR | 0o777, 0), _st(stat.S_IFREG, 1000), 0, (2, 2), False),  # no sticky
        (_STICKY_TMP, _st(stat.S_IFIFO | 0o666, 1000), 0, (0, 1), True),
        (_STICKY_TMP, _st(stat.S_IFIFO | 0o666, 1000), 0, (1, 0), False),
        (_STICKY_TMP, _st(stat.S_IFCHR | 0o666, 1000), 0, (0, 0), True),  # not by sysctl
        (_STICKY_GROUP, _st(stat.S_IFREG | 0o666, 1000), 0, (1, 1), False),
        (_STICKY_GROUP, _st(stat.S_IFREG | 0o666, 1000), 0, (2, 1), True),
        (_STICKY_GROUP, _st(stat.S_IFIFO | 0o666, 1000), 0, (1, 2), True),
    ],
)
def test_o_creat_of_a_file_planted_in_a_sticky_directory_is_refused_as_the_kernel_does(
    dir_st: os.stat_result,
    file_st: os.stat_result,
    fsuid: int,
    levels: tuple[int, int],
    refused: bool,
) -> None:
    regular, fifos = levels
    got = filekinds.sticky_refusal(dir_st, file_st, fsuid, regular=regular, fifos=fifos)
    assert got == refused


def test_a_stat_of_a_device_is_never_refused() -> None:
    assert filekinds.device_refusal(rules(), ("stat",), "/dev/vda", _BLK, _VDA) is None


def test_world_readable_system_files_pass_a_catch_all_only() -> None:
    catch_all = rules(("nothing", ("**",), ("*",), Decision.DENY))
    refused = engine.check_file(catch_all, "read", "/etc/passwd")
    relief = filekinds.system_read_relief
    assert relief(catch_all, refused, "/etc/passwd", world_readable=True).allowed
    assert relief(catch_all, refused, "/etc/shadow", world_readable=False) == refused
    named = rules(("no-passwd", ("/etc/passwd",), ("read",), Decision.DENY))
    by_name = engine.check_file(named, "read", "/etc/passwd")
    assert relief(named, by_name, "/etc/passwd", world_readable=True) == by_name
    outside = engine.check_file(catch_all, "read", "/srv/data")
    assert relief(catch_all, outside, "/srv/data", world_readable=True) == outside
    sideways = engine.check_file(catch_all, "read", "/etcetera/x")
    assert relief(catch_all, sideways, "/etcetera/x", world_readable=True) == sideways
