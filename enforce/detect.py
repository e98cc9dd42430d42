"""Behavioural probes of the kernel features each layer needs, and the protection score.

Each probe does the real thing where it can — installs a listener filter and answers a
notification, seizes a child with ptrace, restricts a child with Landlock and watches an
open fail, creates a cgroup and writes limits — in a forked child when it changes process
state, and leaves nothing behind (children reaped, cgroups removed by path).

The score follows the Go agentsh: five domains (File 25, Command 25, Network 20, Resource
15, Isolation 15); a domain scores its weight when one of the backends agentsh applies in it
works here. ``simulate`` exists only for ``agentsh detect --simulate-missing`` and tests:
it is a parameter, never read from the environment, so nobody can switch a layer off for a
governed command.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import importlib.util
import os
import platform
import select
import shutil
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agentsh.enforce import limits
from agentsh.enforce.errors import LayerUnavailable, UsageError
from agentsh.enforce.policy import ResourceLimits
from agentsh.enforce.record import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 6  # nr + 5 arguments, each a full 64-bit register

SYS_GETPPID, SYS_PTRACE, SYS_SECCOMP, SYS_UNSHARE = 110, 101, 317, 272
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_RESTRICT_SELF = 444, 446
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 0x8
SECCOMP_RET_ALLOW, SECCOMP_RET_USER_NOTIF, SECCOMP_RET_TRACE = 0x7FFF0000, 0x7FC00000, 0x7FF00000
SECCOMP_IOCTL_NOTIF_RECV, SECCOMP_IOCTL_NOTIF_SEND = 0xC0502100, 0xC0182101
SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 0x40082104, 0x1
AUDIT_ARCH_X86_64 = 0xC000003E
PTRACE_CONT, PTRACE_GETEVENTMSG, PTRACE_SEIZE = 7, 0x4201, 0x4206
PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL, PTRACE_EVENT_SECCOMP = 0x80, 0x100000, 7
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_CREATE_RULESET_ERRATA = 0x1, 0x2
LANDLOCK_ACCESS_FS_READ_FILE = 0x4
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
CAP_SYS_ADMIN = 21
_ANSWER = 4242  # what the notify probe's supervisor answers for getppid
_DEADLINE_S = 2.0  # per probe child; a healthy probe takes milliseconds

PROBES = (
    "seccomp_notify",
    "notify_sync_wakeup",
    "ptrace",
    "landlock",
    "fuse",
    "cgroups",
    "namespaces",
    "capabilities",
    "no_new_privs",
)


@dataclass(frozen=True)
class Probe:
    """One probe's answer. ``info`` holds versions and facts for JSON (ABI, controllers)."""

    name: str
    available: bool
    detail: str
    info: Mapping[str, object] = field(default_factory=dict)


def _sys(nr: int, *args: int) -> int:
    """syscall(2) with up to five integer/pointer arguments; raises OSError on -1."""
    ctypes.set_errno(0)
    ret = int(_syscall(nr, *args, *([0] * (5 - len(args)))))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _why(err: OSError, what: str) -> str:
    name = errno.errorcode.get(err.errno or 0, str(err.errno))
    return f"{what} failed with {name} ({err.strerror})"


def _bpf(nr: int, action: int) -> bytes:
    """A classic-BPF program (seccomp(2)): syscall ``nr`` on x86_64 → ``action``; all else
    allowed. Probe-only: the real filters are built by the seccomp module."""
    ins = [
        (0x20, 0, 0, 4),  # ld [arch]
        (0x15, 0, 3, AUDIT_ARCH_X86_64),  # jne → allow
        (0x20, 0, 0, 0),  # ld [nr]
        (0x15, 0, 1, nr),  # jne → allow
        (0x06, 0, 0, action),
        (0x06, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return b"".join(struct.pack("<HBBI", *i) for i in ins)


def _install_filter(program: bytes, flags: int) -> int:
    """no_new_privs, then seccomp(SET_MODE_FILTER). Returns the listener fd or 0."""
    limits.prctl(limits.PR_SET_NO_NEW_PRIVS, 1)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("<HxxxxxxQ", len(program) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    return _sys(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.addressof(fbuf))


# --- child processes -------------------------------------------------------------------


def _fork(body: Callable[[], int]) -> int:
    """Fork; the child runs ``body`` and exits with its result (1 on an OSError)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        except OSError:
            code = 1
        finally:
            os._exit(code)
    return pid


def _reap(pid: int, deadline: float, flags: int = 0) -> int:
    """Wait for ``pid`` to exit; SIGKILL it at ``deadline``. Returns the wait status."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG | flags)
        if done:
            if os.WIFSTOPPED(status):
                _sys(SYS_PTRACE, PTRACE_CONT, pid, 0, os.WSTOPSIG(status))
                continue
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.0005)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


# --- probes ----------------------------------------------------------------------------


def probe_seccomp_notify() -> tuple[Probe, Probe]:
    """A child installs a NEW_LISTENER filter trapping getppid and hands us the listener;
    we answer its notification with 4242, and the child checks getppid returned 4242.
    The same listener tells whether SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6+) is accepted."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    deadline = time.monotonic() + _DEADLINE_S

    def child() -> int:
        ours.close()
        try:
            fd = _install_filter(
                _bpf(SYS_GETPPID, SECCOMP_RET_USER_NOTIF), SECCOMP_FILTER_FLAG_NEW_LISTENER
            )
        except OSError as err:
            theirs.send(_why(err, "seccomp(NEW_LISTENER)").encode())
            return 2
        socket.send_fds(theirs, [b"fd"], [fd])
        os.close(fd)
        got = _sys(SYS_GETPPID)
        theirs.send(f"getppid returned {got}".encode())
        return 0 if got == _ANSWER else 3

    pid = _fork(child)
    theirs.close()
    try:
        ok, detail, sync = _answer_one(ours, pid, deadline)
    finally:
        ours.close()
        status = _reap(pid, deadline)
    ok = ok and _exit_code(status) == 0
    notify = Probe("seccomp_notify", ok, detail, {"answered": ok})
    sync_detail = "accepted" if sync else "not accepted (kernel < 6.6?)"
    return notify, Probe("notify_sync_wakeup", ok and sync, sync_detail if ok else detail)


def _answer_one(sock: socket.socket, pid: int, deadline: float) -> tuple[bool, str, bool]:
    """The supervisor side of the notify probe: (worked, detail, sync wake-up accepted)."""
    sock.settimeout(_DEADLINE_S)
    try:
        data, fds, _, _ = socket.recv_fds(sock, 256, 1)
    except OSError as err:
        return False, _why(err, "receiving the listener"), False
    if not fds:
        return False, data.decode(errors="replace") or "the child died", False
    listener = fds[0]
    try:
        sync = _set_sync_wakeup(listener)
        if not select.select([listener], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return False, "no notification arrived", sync
        buf = bytearray(80)
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        nid, npid, _, nr = struct.unpack_from("<QIIi", buf)
        if npid != pid or nr != SYS_GETPPID:
            return False, f"unexpected notification (pid {npid}, syscall {nr})", sync
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, struct.pack("<QqiI", nid, _ANSWER, 0, 0))
        reply = sock.recv(256).decode(errors="replace")
    except OSError as err:
        return False, _why(err, "answering the notification"), False
    finally:
        os.close(listener)
    return (
        reply == f"getppid returned {_ANSWER}",
        f"listener answered a trapped call; {reply}",
        sync,
    )


def _set_sync_wakeup(listener: int) -> bool:
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError:
        return False
    return True


def probe_ptrace() -> Probe:
    """PTRACE_SEIZE a child whose filter returns SECCOMP_RET_TRACE for getppid, and see the
    seccomp stop (with the filter's data 0x1234) before letting it finish."""
    go_r, go_w = os.pipe2(os.O_CLOEXEC)

    def child() -> int:
        os.close(go_w)
        _install_filter(_bpf(SYS_GETPPID, SECCOMP_RET_TRACE | 0x1234), 0)
        if os.read(go_r, 1) != b"g":
            return 4
        return 0 if _sys(SYS_GETPPID) > 0 else 3

    pid = _fork(child)
    os.close(go_r)
    deadline = time.monotonic() + _DEADLINE_S
    try:
        _sys(SYS_PTRACE, PTRACE_SEIZE, pid, 0, PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL)
    except OSError as err:
        os.close(go_w)
        _reap(pid, time.monotonic())
        return Probe("ptrace", False, _why(err, "PTRACE_SEIZE"))
    os.write(go_w, b"g")
    os.close(go_w)
    stopped, data = _seccomp_stop(pid, deadline)
    code = _exit_code(_reap(pid, deadline, 0x40000000))  # __WALL
    if stopped and data == 0x1234 and code == 0:
        return Probe("ptrace", True, "seized a child and saw its seccomp stop")
    return Probe("ptrace", False, f"no seccomp stop seen (child exit {code})")


def _seccomp_stop(pid: int, deadline: float) -> tuple[bool, int]:
    """Wait for the child's seccomp stop, read PTRACE_GETEVENTMSG, continue it."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG | 0x40000000)
        if not done:
            time.sleep(0.0005)
            continue
        if not os.WIFSTOPPED(status):
            return False, 0
        if status >> 8 == signal.SIGTRAP | PTRACE_EVENT_SECCOMP << 8:
            msg = ctypes.c_ulong()
            _sys(SYS_PTRACE, PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(msg))
            _sys(SYS_PTRACE, PTRACE_CONT, pid, 0, 0)
            return True, msg.value
        _sys(SYS_PTRACE, PTRACE_CONT, pid, 0, os.WSTOPSIG(status))
    return False, 0


def probe_landlock() -> Probe:
    """Read the ABI, then restrict a child to no file reads and see an open fail (EACCES)."""
    try:
        abi = _sys(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as err:
        return Probe("landlock", False, _why(err, "landlock_create_ruleset(VERSION)"))
    try:
        errata = _sys(SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_ERRATA)
    except OSError:
        errata = 0
    target = os.path.realpath("/proc/self/exe")

    def child() -> int:
        attr = ctypes.create_string_buffer(struct.pack("<Q", LANDLOCK_ACCESS_FS_READ_FILE))
        ruleset = _sys(SYS_LANDLOCK_CREATE_RULESET, ctypes.addressof(attr), 8, 0)
        limits.prctl(limits.PR_SET_NO_NEW_PRIVS, 1)
        _sys(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
        try:
            os.close(os.open(target, os.O_RDONLY))
        except PermissionError:
            return 0
        return 3

    code = _exit_code(_reap(_fork(child), time.monotonic() + _DEADLINE_S))
    info = {"abi": abi, "errata": errata, "network": abi >= 4, "scopes": abi >= 6}
    if code != 0:
        return Probe("landlock", False, f"ABI {abi}, but a restricted child was not denied", info)
    return Probe("landlock", True, f"ABI {abi}; a restricted child was denied a read", info)


def probe_fuse() -> Probe:
    """Open /dev/fuse read-write; look for fusermount3, libfuse3 and pyfuse3."""
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    multiarch = f"{platform.machine()}-linux-gnu"
    dirs = [f"{r}/{sub}" for r in ("/usr/lib", "/lib", "/usr/local/lib") for sub in (multiarch, "")]
    libs = [p for d in (*dirs, "/usr/lib64", "/lib64") for p in Path(d).glob("libfuse3.so.3*")]
    info = {
        "fusermount": fusermount,
        "libfuse3": str(libs[0]) if libs else None,
        "pyfuse3": importlib.util.find_spec("pyfuse3") is not None,
    }
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as err:
        return Probe("fuse", False, _why(err, "opening /dev/fuse"), info)
    direct = limits.read_capabilities().effective >> CAP_SYS_ADMIN & 1
    method = "fusermount" if fusermount else "direct mount (CAP_SYS_ADMIN)" if direct else None
    info["mount_method"] = method
    missing = [n for n in ("libfuse3", "pyfuse3") if not info[n]]
    if method is None:
        return Probe(
            "fuse", False, "/dev/fuse opens, but no fusermount3 and no CAP_SYS_ADMIN", info
        )
    extra = f"; missing {' and '.join(missing)}" if missing else ""
    return Probe("fuse", True, f"/dev/fuse opens; mount by {method}{extra}", info)


def probe_cgroups() -> Probe:
    """Find the hierarchy for memory+pids(+cpu, io), create a cgroup, write limits, remove it."""
    for needed in (("memory", "pids", "cpu", "io"), ("memory", "pids", "cpu"), ("memory", "pids")):
        hier, why = limits.find_hierarchy(frozenset(needed))
        if hier is not None:
            break
    if hier is None:
        return Probe("cgroups", False, why)
    info = {
        "version": hier.version,
        "controllers": list(needed),
        "base": str(hier.bases[needed[0]]),
    }
    trial = ResourceLimits(max_memory_mb=64, pids_max=64, cpu_quota_percent=100)
    try:
        group = limits.create_session(hier, f"probe-{os.getpid()}", trial)
    except LayerUnavailable as err:
        return Probe("cgroups", False, f"v{hier.version}: {err.message}", info)
    group.remove()
    detail = f"v{hier.version}: created a cgroup and set {', '.join(needed)} limits"
    return Probe("cgroups", True, detail, info)


def probe_namespaces() -> Probe:
    """A child unshares user, mount, net and pid namespaces, one at a time."""
    kinds = (
        ("user", CLONE_NEWUSER),
        ("mount", CLONE_NEWNS),
        ("net", CLONE_NEWNET),
        ("pid", CLONE_NEWPID),
    )

    def child() -> int:
        bits = 0
        for i, (_, flag) in enumerate(kinds):
            with contextlib.suppress(OSError):
                _sys(SYS_UNSHARE, flag)
                bits |= 1 << i
        return bits

    bits = _exit_code(_reap(_fork(child), time.monotonic() + _DEADLINE_S))
    ok = {name: bool(bits >> i & 1) for i, (name, _) in enumerate(kinds)} if bits >= 0 else {}
    names = [n for n, v in ok.items() if v]
    detail = "unshared " + ", ".join(names) if names else "no namespace could be created"
    return Probe("namespaces", bool(names), detail, ok)


def probe_privileges() -> tuple[Probe, Probe]:
    """Read this process's capabilities; in a child, drop one from the bounding set and set
    no_new_privs, and read both back."""
    state = limits.read_capabilities()
    can_drop = state.effective >> limits.CAP_SETPCAP & 1

    def child() -> int:
        bits = 0
        if can_drop:
            limits.prctl(limits.PR_CAPBSET_DROP, 22)  # CAP_SYS_BOOT
            bits |= 1 if limits.prctl(limits.PR_CAPBSET_READ, 22) == 0 else 0
        limits.prctl(limits.PR_SET_NO_NEW_PRIVS, 1)
        return bits | (2 if limits.prctl(limits.PR_GET_NO_NEW_PRIVS) == 1 else 0)

    bits = _exit_code(_reap(_fork(child), time.monotonic() + _DEADLINE_S))
    eff = limits.capability_names(state.effective)
    info = {"effective": eff, "bounding": limits.capability_names(state.bounding)}
    if bits >= 0 and bits & 1:
        detail = f"{len(eff)} effective; the bounding set can be narrowed"
        caps = Probe("capabilities", True, detail, info)
    elif not state.permitted and not state.ambient:
        caps = Probe("capabilities", True, "no capabilities to drop (unprivileged)", info)
    else:
        caps = Probe("capabilities", False, "holds capabilities but cannot drop them", info)
    nnp_ok = bits >= 0 and bool(bits & 2)
    nnp_detail = f"can be set (this process: {'set' if state.no_new_privs else 'not set'})"
    nnp = Probe(
        "no_new_privs",
        nnp_ok,
        nnp_detail if nnp_ok else "PR_SET_NO_NEW_PRIVS failed",
        {"current": state.no_new_privs},
    )
    return caps, nnp


def run_probes(names: Iterable[str] = PROBES, *, simulate: Iterable[str] = ()) -> dict[str, Probe]:
    """Run the named probes (all by default). ``simulate`` names probes reported unavailable
    without running them (disabling seccomp_notify disables notify_sync_wakeup too).

    Raises:
        UsageError: an unknown probe name.
    """
    wanted, missing = _validate(names), _validate(simulate)
    if "seccomp_notify" in missing:
        missing.add("notify_sync_wakeup")
    out = {n: Probe(n, False, "simulated: reported missing", {"simulated": True}) for n in missing}
    runners: list[tuple[tuple[str, ...], Callable[[], Probe | tuple[Probe, Probe]]]] = [
        (("seccomp_notify", "notify_sync_wakeup"), probe_seccomp_notify),
        (("ptrace",), probe_ptrace),
        (("landlock",), probe_landlock),
        (("fuse",), probe_fuse),
        (("cgroups",), probe_cgroups),
        (("namespaces",), probe_namespaces),
        (("capabilities", "no_new_privs"), probe_privileges),
    ]
    for covers, run in runners:
        if wanted & set(covers) - out.keys():
            result = run()
            for p in result if isinstance(result, tuple) else (result,):
                out.setdefault(p.name, p)
    return {n: out[n] for n in PROBES if n in out and n in wanted | missing}


def _validate(names: Iterable[str]) -> set[str]:
    given = set(names)
    unknown = given - set(PROBES)
    if unknown:
        raise UsageError(
            f"unknown probe {', '.join(sorted(unknown))}", hint=f"probes: {', '.join(PROBES)}"
        )
    return given


def require(layers: Iterable[str]) -> dict[str, Probe]:
    """Probe the layers a config requires; refuse if one is missing (fail closed).

    Raises:
        LayerUnavailable: naming the first missing layer and what to do about it.
    """
    probes = run_probes(layers)
    for probe in probes.values():
        if not probe.available:
            raise LayerUnavailable(
                f"required layer {probe.name} is unavailable: {probe.detail}",
                hint=f"run `agentsh detect` for details, or disable {probe.name} in the config",
            )
    return probes


def kernel() -> str:
    return f"{platform.system().lower()} {platform.release()} {platform.machine()}"


# --- the protection score --------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One mechanism in a domain. ``applied`` is False for one only reported, not used."""

    name: str
    available: bool
    detail: str
    description: str
    applied: bool = True


@dataclass(frozen=True)
class Domain:
    """A protection domain; ``covered`` when a backend agentsh applies works here."""

    name: str
    weight: int
    active: str
    covered: bool
    backends: tuple[Backend, ...]

    @property
    def score(self) -> int:
        return self.weight if self.covered else 0

    @property
    def enforced(self) -> bool:
        """The active backend is one this version of agentsh actually applies."""
        return self.covered and self.active in ENFORCED_BACKENDS

    @property
    def enforced_score(self) -> int:
        return self.weight if self.enforced else 0


# What this version applies to a governed tree (the score above measures what the kernel
# allows). The network layer is not built. Reported so that nobody reads kernel readiness
# as protection.
ENFORCED_BACKENDS = frozenset(
    {"seccomp-notify", "ptrace", "landlock", "landlock+notify-monitor", "notify-monitor"}
    | {"cgroups-v2", "cgroups-v1"}
    | {"capability-drop+no-new-privs"}
)


@dataclass(frozen=True)
class Tip:
    feature: str
    status: str
    impact: str
    action: str


@dataclass(frozen=True)
class Report:
    """What ``agentsh detect`` prints. ``simulated`` lists probes reported missing on request."""

    platform: str
    security_mode: str
    mode_reason: str
    domains: tuple[Domain, ...]
    probes: Mapping[str, Probe]
    tips: tuple[Tip, ...]
    simulated: tuple[str, ...] = ()

    @property
    def score(self) -> int:
        return sum(d.score for d in self.domains)

    @property
    def enforced_score(self) -> int:
        return sum(d.enforced_score for d in self.domains)


_DESCRIPTION = {
    "landlock": "kernel path rules, inherited by every child",
    "notify-monitor": "file monitor: denies inside allowed trees, soft delete",
    "fuse": "FUSE overlay of the workspace",
    "seccomp-notify": "the supervisor checks every exec in the process tree",
    "ptrace": "fallback exec supervision (strace and gdb cannot run inside)",
    "precheck": "the command line, checked before it runs",
    "connect-supervision": "loopback proxy + connect() checked by IP",
    "landlock-network": "TCP connect/bind limited by port",
    "cgroups-v2": "memory, pids, CPU and disk limits",
    "cgroups-v1": "memory, pids, CPU and disk limits",
    "capability-drop": "bounding set narrowed to capabilities.allow before exec",
    "no-new-privs": "setuid bits and file capabilities inert",
    "namespaces": "reported only: governed commands share the caller's namespaces",
}


def _b(name: str, available: bool, detail: str) -> Backend:
    return Backend(name, available, detail, _DESCRIPTION[name], name != "namespaces")


def _domain(
    name: str,
    weight: int,
    choices: list[tuple[bool, str]],
    backends: list[Backend],
    scoring: int | None = None,
) -> Domain:
    """The first working choice is the active backend. The domain scores when that is one
    of the first ``scoring`` choices (default: all but the last, the "none" fallback)."""
    index = next(i for i, (ok, _) in enumerate(choices) if ok)
    limit = len(choices) - 1 if scoring is None else scoring
    return Domain(name, weight, choices[index][1], index < limit, tuple(backends))


def _file_domain(p: Mapping[str, Probe]) -> Domain:
    ll, mon, fuse = p["landlock"].available, p["seccomp_notify"].available, p["fuse"].available
    monitor = "seccomp user-notify" if mon else p["seccomp_notify"].detail
    return _domain(
        "File Protection",
        25,
        [(ll and mon, "landlock+notify-monitor"), (ll, "landlock"), (mon, "notify-monitor"),
         (fuse, "fuse"), (True, "none")],
        [_b("landlock", ll, p["landlock"].detail), _b("notify-monitor", mon, monitor),
         _b("fuse", fuse, p["fuse"].detail)],
    )  # fmt: skip


def _command_domain(p: Mapping[str, Probe]) -> Domain:
    notify, trace = p["seccomp_notify"], p["ptrace"]
    sync = p["notify_sync_wakeup"].available
    wake = ("; sync wake-up" if sync else "; no sync wake-up (kernel < 6.6)") * notify.available
    return _domain(
        "Command Control",
        25,
        [(notify.available, "seccomp-notify"), (trace.available, "ptrace"),
         (True, "precheck-only")],
        [_b("seccomp-notify", notify.available, notify.detail + wake),
         _b("ptrace", trace.available, trace.detail), _b("precheck", True, "always")],
    )  # fmt: skip


def _network_domain(p: Mapping[str, Probe]) -> Domain:
    via = "seccomp user-notify" if p["seccomp_notify"].available else ""
    via = via or ("ptrace" if p["ptrace"].available else "")
    abi = int(str(p["landlock"].info.get("abi", 0)))
    ll_net = p["landlock"].available and abi >= 4
    return _domain(
        "Network",
        20,
        [(bool(via), "proxy+connect-supervision"), (ll_net, "landlock-network"), (True, "none")],
        [_b("connect-supervision", bool(via),
            f"via {via}" if via else "needs seccomp user-notify or ptrace"),
         _b("landlock-network", ll_net,
            f"Landlock ABI {abi}" if ll_net else "needs Landlock ABI 4 (kernel 6.7)")],
    )  # fmt: skip


def _resource_domain(p: Mapping[str, Probe]) -> Domain:
    cg = p["cgroups"]
    version = cg.info.get("version") if cg.available else 0
    unused = "no v2 hierarchy offers memory and pids; v1 does"
    return _domain(
        "Resource Limits",
        15,
        [(version == 2, "cgroups-v2"), (version == 1, "cgroups-v1"), (True, "none")],
        [_b(f"cgroups-v{v}", version == v, cg.detail if version in (v, 0) else unused)
         for v in (2, 1)],
    )  # fmt: skip


def _isolation_domain(p: Mapping[str, Probe]) -> Domain:
    caps, nnp, ns = p["capabilities"], p["no_new_privs"], p["namespaces"]
    return _domain(
        "Isolation",
        15,
        [(caps.available and nnp.available, "capability-drop+no-new-privs"),
         (caps.available, "capability-drop only"), (nnp.available, "no-new-privs only"),
         (True, "none")],
        [_b("capability-drop", caps.available, caps.detail),
         _b("no-new-privs", nnp.available, nnp.detail),
         _b("namespaces", ns.available, ns.detail)],
        scoring=1,  # both, or no points: either alone leaves a way back to privileges
    )  # fmt: skip


_TIPS = {  # feature: (impact, action)
    "seccomp-notify": (
        "exec supervision, the file monitor and connect() checks fall back to ptrace, or to "
        "the command-line precheck alone",
        "use a kernel >= 5.0 that lets seccomp(2) install a filter with NEW_LISTENER (a "
        "container's seccomp profile may block it)",
    ),
    "ptrace": (
        "no fallback for exec supervision if seccomp user-notify is missing",
        "grant CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE) and allow ptrace(2)",
    ),
    "landlock": (
        "no kernel path rules; file rules rest on the notify monitor alone",
        "boot a kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and landlock in lsm=",
    ),
    "landlock-network": ("no kernel TCP port rules", "Landlock ABI 4 needs kernel >= 6.7"),
    "fuse": (
        "no FUSE overlay; soft delete runs in the notify supervisor instead",
        "apt install fuse3 libfuse3-3, pip install pyfuse3; in a container add --device /dev/fuse",
    ),
    "cgroups": (
        "resource_limits cannot be enforced: commands refuse when the policy sets them",
        "mount cgroup v2 with memory, pids and cpu in cgroup.subtree_control (systemd: "
        "Delegate=yes), or run agentsh as root",
    ),
    "capability-drop": (
        "governed commands keep this process's capabilities",
        "run agentsh as root (it narrows the bounding set) or as an unprivileged user",
    ),
    "no-new-privs": ("setuid programs can raise privileges", "use a kernel >= 3.5"),
}
_FEATURE = {
    "notify-monitor": "seccomp-notify",
    "connect-supervision": "seccomp-notify",
    "cgroups-v2": "cgroups",
    "cgroups-v1": "cgroups",
}
# Features named even when another backend covers their domain (the key layers).
_ALWAYS_TIP = frozenset({"seccomp-notify", "ptrace", "landlock", "fuse"})


def _tips(domains: Iterable[Domain], p: Mapping[str, Probe]) -> tuple[Tip, ...]:
    points: dict[str, int] = {}
    counted: set[tuple[str, str]] = set()  # a domain's weight counts once per feature
    for d in domains:
        for b in d.backends:
            feature = _FEATURE.get(b.name, b.name)
            wanted = not d.covered or feature in _ALWAYS_TIP
            if b.applied and not b.available and feature in _TIPS and wanted:
                gain = 0 if d.covered or (feature, d.name) in counted else d.weight
                points[feature] = points.get(feature, 0) + gain
                counted.add((feature, d.name))
    tips = []
    for feature, pts in points.items():
        impact, action = _TIPS[feature]
        if feature == "seccomp-notify" and "EBUSY" in p["seccomp_notify"].detail:
            action = "this process already runs under a seccomp listener (a governed tree?), "
            action += "whose supervisor covers it; run `agentsh detect` outside the tree"
        suffix = f" (+{pts} pts)" if pts else " (a fallback covers it; score unchanged)"
        tips.append(Tip(feature, "unavailable", impact + suffix, action))
    fuse = p["fuse"]
    if fuse.available and not (fuse.info.get("libfuse3") and fuse.info.get("pyfuse3")):
        tips.append(
            Tip(
                "fuse-userspace",
                "partial",
                "the FUSE overlay cannot start without libfuse3 and pyfuse3",
                _TIPS["fuse"][1],
            )
        )
    if p["seccomp_notify"].available and not p["notify_sync_wakeup"].available:
        tips.append(
            Tip(
                "notify-sync-wakeup",
                "unavailable",
                "each supervised exec pays a cross-CPU wake-up",
                "use a kernel >= 6.6",
            )
        )
    return tuple(tips)


def _mode(p: Mapping[str, Probe]) -> tuple[str, str]:
    files = " Landlock guards files." if p["landlock"].available else " No Landlock."
    if p["seccomp_notify"].available:
        return "full", "seccomp user-notify supervises every exec in the tree." + files
    if p["ptrace"].available:
        return "ptrace", "ptrace supervises every exec (seccomp user-notify is missing)." + files
    if p["landlock"].available:
        return (
            "landlock-only",
            "no exec supervision: only the precheck sees commands, and "
            "dynamic ones (eval, $cmd) are refused; Landlock guards files.",
        )
    return "minimal", "only the command-line precheck and capability dropping."


def assess(probes: Mapping[str, Probe], simulated: Iterable[str] = ()) -> Report:
    """Score, mode and tips from probe results (pure). Missing probes count as unavailable."""
    p = {n: probes.get(n) or Probe(n, False, "not probed") for n in PROBES}
    domains = (
        _file_domain(p),
        _command_domain(p),
        _network_domain(p),
        _resource_domain(p),
        _isolation_domain(p),
    )
    mode, reason = _mode(p)
    return Report(kernel(), mode, reason, domains, p, _tips(domains, p), tuple(sorted(simulated)))


def detect(simulate: Iterable[str] = ()) -> Report:
    """Run every probe and assess the result (``simulate``: see :func:`run_probes`)."""
    missing = tuple(simulate)
    return assess(run_probes(simulate=missing), missing)
