"""Resource limits through cgroups, a command-timeout watchdog, and privilege dropping.

Applied by the frontend to itself right before it execs bash.real (ARCHITECTURE §3 step 7),
so everything bash starts inherits the cgroup, the bounding set and no_new_privs.

Where a session's cgroup lives:
  - cgroup v2 (used when its root offers the controllers the limits need):
    ``<v2 mount>/agentsh/<session>``; ``agentsh`` holds no process, so the controllers can
    be enabled in its ``cgroup.subtree_control``.
  - cgroup v1 (otherwise): ``<controller mount><own cgroup>/agentsh/<session>`` in each
    controller hierarchy. Nesting below our own cgroup keeps the limits of whoever started
    us (a container, a service manager) in force above ours.

Command timeout: a watchdog process, double-forked before this process joins the cgroup
(so it is neither in the cgroup nor a child of bash). At the deadline it sends SIGTERM to
every process in the session's cgroup, SIGKILL after a grace period, and writes one line to
the governed process's stderr when that is a pipe or a terminal. Without a cgroup it falls
back to the process tree below the governed process (daemons that left the tree are then
out of reach). The watchdog also removes the session's cgroup once it is empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import select
import signal
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from agentsh.enforce.errors import LayerUnavailable, UsageError
from agentsh.enforce.policy import ResourceLimits
from agentsh.enforce.record import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_capget = _libc.capget
_capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_capget.restype = ctypes.c_int
_capset = _libc.capset
_capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_capset.restype = ctypes.c_int

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522

# Capability numbers are the index (capabilities(7)); names without the CAP_ prefix.
CAPABILITIES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
    "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
CAP_SETPCAP = 8

# Never grantable through `capabilities.allow` (the anchor's list): each is a known way out
# of a sandbox (mount, ptrace, module loading, permission bypass, uid change, raw I/O).
ALWAYS_DROP = frozenset(
    {
        "sys_admin", "sys_ptrace", "sys_module", "dac_override", "dac_read_search", "setuid",
        "setgid", "chown", "fowner", "mknod", "sys_rawio", "sys_boot", "net_admin",
        "sys_chroot", "linux_immutable",
    }
)  # fmt: skip

CGROUP_DIR = "agentsh"
TERM_GRACE_S = 2.0
_POLL_S = 0.2
_STALE_AGE_S = 10.0
_CPU_PERIOD_US = 100_000
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MIB = 1 << 20
_V1_NAME = {"memory": "memory", "pids": "pids", "cpu": "cpu", "io": "blkio"}


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2). Returns the call's result; raises OSError carrying the errno."""
    ctypes.set_errno(0)
    ret = int(_prctl(option, arg2, arg3, arg4, arg5))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# --- capabilities ----------------------------------------------------------------------


def capability_number(name: str) -> int:
    """``CAP_NET_RAW``, ``cap_net_raw`` or ``net_raw`` → 13. Raises ValueError if unknown."""
    key = name.strip().lower().removeprefix("cap_")
    try:
        return CAPABILITIES.index(key)
    except ValueError:
        raise ValueError(f"unknown capability {name!r}") from None


def capability_names(mask: int) -> list[str]:
    """The ``CAP_*`` names of the bits set in ``mask``, lowest first."""
    return [f"CAP_{n.upper()}" for i, n in enumerate(CAPABILITIES) if mask >> i & 1]


def allowed_capabilities(names: Iterable[str]) -> frozenset[int]:
    """Validate a ``capabilities.allow`` list.

    Raises:
        ValueError: an unknown name, or one of ALWAYS_DROP (the message names it).
    """
    out = set()
    for name in names:
        number = capability_number(name)
        if CAPABILITIES[number] in ALWAYS_DROP:
            raise ValueError(f"capability CAP_{CAPABILITIES[number].upper()} cannot be allowed")
        out.add(number)
    return frozenset(out)


@dataclass(frozen=True)
class CapState:
    """This process's capability sets (bit masks) and no_new_privs, from /proc/self/status."""

    effective: int
    permitted: int
    inheritable: int
    bounding: int
    ambient: int
    no_new_privs: bool


def read_capabilities(status: str | None = None) -> CapState:
    """Parse ``/proc/self/status`` (or the given text) into a CapState."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def mask(key: str) -> int:
        return int(fields.get(key, "0").strip() or "0", 16)

    return CapState(
        effective=mask("CapEff"),
        permitted=mask("CapPrm"),
        inheritable=mask("CapInh"),
        bounding=mask("CapBnd"),
        ambient=mask("CapAmb"),
        no_new_privs=fields.get("NoNewPrivs", "0").strip() == "1",
    )


def _set_inheritable(keep: int) -> None:
    """capset(2): inheritable &= keep; effective and permitted unchanged."""
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if _capget(ctypes.addressof(header), ctypes.addressof(data)) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[2] &= keep & 0xFFFFFFFF
    data[5] &= keep >> 32
    if _capset(ctypes.addressof(header), ctypes.addressof(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def drop_privileges(allow: Iterable[str] = ()) -> None:
    """Limit what the exec'd program and its children can ever hold to ``allow``.

    Order: inheritable set, bounding set (PR_CAPBSET_DROP needs CAP_SETPCAP, which this
    process keeps until exec), ambient set, then no_new_privs — which must be set before the
    seccomp filter and makes setuid bits and file capabilities inert. The running process
    keeps its effective set: Landlock and seccomp still have to be installed after this.
    For root, the set after exec is inheritable | bounding, hence both are narrowed.

    Raises:
        ValueError: ``allow`` names an unknown or never-grantable capability.
        LayerUnavailable: root without CAP_SETPCAP, whose children would get their
            capabilities back at exec.
    """
    keep = 0
    for number in allowed_capabilities(allow):
        keep |= 1 << number
    state = read_capabilities()
    try:
        _set_inheritable(keep)
        if state.effective >> CAP_SETPCAP & 1:
            for number in range(_last_cap() + 1):
                if not keep >> number & 1 and state.bounding >> number & 1:
                    prctl(PR_CAPBSET_DROP, number)
        elif 0 in (os.getuid(), os.geteuid()) and state.bounding & ~keep:
            raise LayerUnavailable(
                "capability dropping: running as root without CAP_SETPCAP, so commands would "
                "regain " + ", ".join(capability_names(state.bounding & ~keep)),
                hint="start agentsh with CAP_SETPCAP, or as an unprivileged user",
            )
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as err:
        raise LayerUnavailable(f"capability dropping failed: {err.strerror}") from err


def _last_cap() -> int:
    try:
        return min(int(Path("/proc/sys/kernel/cap_last_cap").read_text()), 63)
    except (OSError, ValueError):
        return len(CAPABILITIES) - 1


# --- finding the cgroup hierarchy ------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """Where sessions' cgroups are created: controller → base directory (``.../agentsh``).

    v2 maps every controller to the same directory. The key ``""`` stands for a cgroup used
    only to track the session's processes (a command timeout without other limits).
    """

    version: int
    bases: dict[str, Path]


def parse_mounts(mountinfo: str) -> list[tuple[Path, str, frozenset[str]]]:
    """(mount point, fs type, super options) of every cgroup/cgroup2 mount in mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if not sep or len(parts) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((Path(parts[4]), tail[0], frozenset(tail[2].split(","))))
    return out


def parse_own(proc_cgroup: str) -> dict[str, str]:
    """``/proc/self/cgroup`` → controller → path; the v2 entry is under key ``""``."""
    out = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for ctrl in parts[1].split(",") if parts[1] else [""]:
                out[ctrl] = parts[2]
    return out


def find_hierarchy(needed: frozenset[str]) -> tuple[Hierarchy | None, str]:
    """The hierarchy offering every controller in ``needed`` (memory, pids, cpu, io).

    cgroup v2 wins when its root offers them all and has them enabled for children; v1
    otherwise. Returns (None, why) when neither does.
    """
    mounts = parse_mounts(Path("/proc/self/mountinfo").read_text())
    own = parse_own(Path("/proc/self/cgroup").read_text())
    why = []
    for mount, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        offered = _words(mount / "cgroup.controllers") & _words(mount / "cgroup.subtree_control")
        if needed <= offered:
            return Hierarchy(2, {c: mount / CGROUP_DIR for c in needed or {""}}), ""
        why.append(f"v2 at {mount} lacks {', '.join(sorted(needed - offered))}")
    bases = {}
    for ctrl in needed or ("pids", "memory", "cpu"):
        name = _V1_NAME.get(ctrl, ctrl)
        for mount, fstype, opts in mounts:
            if fstype == "cgroup" and name in opts and name in own:
                bases[ctrl if needed else ""] = mount / own[name].lstrip("/") / CGROUP_DIR
    if bases and needed <= bases.keys():
        return Hierarchy(1, bases if needed else {"": bases[""]}), ""
    why.append(f"v1 lacks {', '.join(sorted(needed - bases.keys())) or 'every controller'}")
    return None, "; ".join(why)


def _words(path: Path) -> frozenset[str]:
    try:
        return frozenset(path.read_text().split())
    except OSError:
        return frozenset()


def controllers_for(limits: ResourceLimits) -> frozenset[str]:
    """The cgroup controllers ``limits`` needs."""
    need = set()
    if limits.max_memory_mb is not None or limits.memory_swap_max_mb is not None:
        need.add("memory")
    if limits.pids_max is not None:
        need.add("pids")
    if limits.cpu_quota_percent is not None:
        need.add("cpu")
    if limits.disk_read_bps_max is not None or limits.disk_write_bps_max is not None:
        need.add("io")
    return frozenset(need)


# --- writing limits --------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """Write one value into a cgroup control file (a single write(2), as the kernel wants)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _disks() -> list[str]:
    """``MAJ:MIN`` of every block device with a non-zero size (whole disks, not partitions)."""
    out = []
    for dev in sorted(Path("/sys/block").iterdir()):
        try:
            if int((dev / "size").read_text()) > 0:
                out.append((dev / "dev").read_text().strip())
        except (OSError, ValueError):
            continue
    return out


def limit_files(version: int, ctrl: str, limits: ResourceLimits) -> list[tuple[str, str, bool]]:
    """The writes that impose ``limits`` for one controller, in order, as (control file,
    value, optional). An optional file may be absent (swap accounting switched off, no swap
    support); every other write must succeed.
    """
    match ctrl:
        case "":
            return []
        case "memory":
            return _memory_files(version, limits)
        case "pids":
            return [("pids.max", str(limits.pids_max), False)]
        case "cpu":
            quota = (limits.cpu_quota_percent or 100) * _CPU_PERIOD_US // 100
            if version == 2:
                return [("cpu.max", f"{quota} {_CPU_PERIOD_US}", False)]
            return [
                ("cpu.cfs_period_us", str(_CPU_PERIOD_US), False),
                ("cpu.cfs_quota_us", str(quota), False),
            ]
        case "io":
            return _io_files(version, limits)
        case _:
            raise LayerUnavailable(f"resource limits: no way to set {ctrl} on cgroup v{version}")


def _memory_files(version: int, limits: ResourceLimits) -> list[tuple[str, str, bool]]:
    mem, swap = limits.max_memory_mb, limits.memory_swap_max_mb
    if version == 2:
        out = [] if mem is None else [("memory.max", str(mem * _MIB), False)]
        # Swap would let a process exceed memory.max: none unless the policy allows some.
        return [*out, ("memory.swap.max", str((swap or 0) * _MIB), True)]
    if mem is None:
        return []  # v1 expresses swap only as memory+swap, on top of a memory limit
    # memsw (memory + swap) must be written second, and be >= the memory limit.
    return [
        ("memory.limit_in_bytes", str(mem * _MIB), False),
        ("memory.memsw.limit_in_bytes", str((mem + (swap or 0)) * _MIB), True),
    ]


def _io_files(version: int, limits: ResourceLimits) -> list[tuple[str, str, bool]]:
    read, write = limits.disk_read_bps_max, limits.disk_write_bps_max
    out = []
    for dev in _disks():
        if version == 2:
            parts = [f"rbps={read}" if read else "", f"wbps={write}" if write else ""]
            out.append(("io.max", f"{dev} {' '.join(p for p in parts if p)}", False))
        else:
            out += [("blkio.throttle.read_bps_device", f"{dev} {read}", False)] if read else []
            out += [("blkio.throttle.write_bps_device", f"{dev} {write}", False)] if write else []
    return out


# --- session cgroups -------------------------------------------------------------------


@dataclass(frozen=True)
class SessionCgroup:
    version: int
    dirs: tuple[Path, ...]

    def procs(self) -> list[int]:
        """Pids in the cgroup (empty once it is gone)."""
        try:
            return [int(p) for p in (self.dirs[0] / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """rmdir every directory, then the ``agentsh`` parents that became empty."""
        for d in self.dirs:
            for attempt in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05 * (attempt + 1))  # exiting tasks leave within moments
            _rmdir_quiet(d.parent)


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):  # still used by another session, or already gone
        path.rmdir()


def create_session(hier: Hierarchy, session: str, limits: ResourceLimits) -> SessionCgroup:
    """Create the session's cgroup(s) and write the limits. Nothing joins it yet.

    Raises:
        LayerUnavailable: a directory or a limit cannot be written (what was made is removed).
    """
    dirs: dict[Path, list[str]] = {}
    for ctrl, base in hier.bases.items():
        dirs.setdefault(base / session, []).append(ctrl)
    made = SessionCgroup(hier.version, tuple(dirs))
    try:
        for path, ctrls in dirs.items():
            path.parent.mkdir(exist_ok=True)
            if hier.version == 2 and any(ctrls):
                _write(path.parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in ctrls))
            path.mkdir()
            for ctrl in ctrls:
                for name, value, optional in limit_files(hier.version, ctrl, limits):
                    if not optional or (path / name).exists():
                        _write(path / name, value)
    except OSError as err:
        made.remove()
        raise LayerUnavailable(
            f"resource limits: cannot set up cgroup {err.filename or ''}: {err.strerror}",
            hint="run `agentsh detect` to see which cgroup controllers are delegated",
        ) from err
    return made


def cleanup_stale(hier: Hierarchy, min_age: float = _STALE_AGE_S) -> list[Path]:
    """Remove session cgroups of finished sessions (empty, untouched for ``min_age`` s).

    The age guard keeps a session that has just created its cgroup but not yet joined it.
    """
    removed = []
    for base in set(hier.bases.values()):
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for d in entries:
            try:
                idle = time.time() - d.stat().st_mtime
                if d.is_dir() and idle > min_age and not (d / "cgroup.procs").read_text().strip():
                    d.rmdir()
                    removed.append(d)
            except OSError:
                continue
    return removed


# --- apply -----------------------------------------------------------------------------


def apply(
    limits: ResourceLimits,
    session: str,
    *,
    required: bool = True,
    on_timeout: Callable[[], None] | None = None,
) -> None:
    """Put this process (about to exec bash.real) under ``limits``.

    Memory, pids, CPU and disk bandwidth go through the session's cgroup; ``command_timeout``
    is enforced by a watchdog (module docstring). Must run before Landlock, which denies
    writes under /sys/fs/cgroup. ``on_timeout`` runs in the watchdog after a timeout (no
    stdio there); use it to audit. Not handled here: ``net_bandwidth_mbps``,
    ``session_timeout``, ``idle_timeout``.

    Raises:
        UsageError: ``session`` is not a plain name.
        LayerUnavailable: limits are set, ``required``, and no cgroup hierarchy can take them.
    """
    if not _SESSION_RE.fullmatch(session):
        raise UsageError(f"invalid session name {session!r}", hint="use letters, digits, . _ -")
    needed = controllers_for(limits)
    timeout = limits.command_timeout_s
    if not needed and timeout is None:
        return
    hier, why = find_hierarchy(needed)
    if hier is None and needed and required:
        raise LayerUnavailable(
            f"resource limits: no cgroup hierarchy offers {', '.join(sorted(needed))} ({why})",
            hint="enable cgroup v2 with these controllers delegated, or remove resource_limits",
        )
    if hier is None and timeout is None:
        return  # limits not required and nowhere to put them: nothing to watch
    group = None
    if hier is not None:
        cleanup_stale(hier)
        group = create_session(hier, session, limits)
    _start_watchdog(group, timeout, on_timeout)


def _start_watchdog(
    group: SessionCgroup | None, timeout: float | None, on_timeout: Callable[[], None] | None
) -> None:
    """Fork the watchdog, then join the cgroup and tell the watchdog so.

    The ready byte goes through a close-on-exec pipe: if this process dies or fails before
    joining, the watchdog reads EOF instead, removes the cgroup and exits.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    main = os.getpid()
    pidfd = os.pidfd_open(main)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(ready_w)
            if os.fork() == 0:
                _watchdog(group, timeout, on_timeout, ready_r, (main, pidfd))
            code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    os.close(pidfd)
    os.waitpid(child, 0)
    if group is not None:
        try:
            for d in group.dirs:
                _write(d / "cgroup.procs", str(os.getpid()))
        except OSError as err:
            os.close(ready_w)
            raise LayerUnavailable(f"resource limits: cannot join {d}: {err.strerror}") from err
    os.write(ready_w, b"1")  # ready_w stays open until exec closes it (O_CLOEXEC)


def _watchdog(
    group: SessionCgroup | None,
    timeout: float | None,
    on_timeout: Callable[[], None] | None,
    ready_fd: int,
    target: tuple[int, int],
) -> None:
    """The watchdog process's body. ``target`` is the governed pid and a pidfd of it.
    Never returns."""
    main, pidfd = target
    try:
        os.setsid()
        _detach_fds(keep=(ready_fd, pidfd))
        if os.read(ready_fd, 1) != b"1":
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while _alive(group, pidfd):
            if deadline is not None and time.monotonic() >= deadline:
                _terminate(group, pidfd, main, timeout or 0.0)
                if on_timeout is not None:
                    on_timeout()
                deadline = None
            _wait_change(group, pidfd, deadline)
    finally:
        if group is not None:
            group.remove()
        os._exit(0)


def _detach_fds(keep: tuple[int, ...]) -> None:
    """Close every descriptor but ``keep`` and put /dev/null on 0-2, so the watchdog never
    holds the caller's pipes open (a `$(...)` around the command would wait for it)."""
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, now closed
                os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)


def _alive(group: SessionCgroup | None, pidfd: int) -> bool:
    if group is not None:
        return bool(group.procs())
    return not select.select([pidfd], [], [], 0)[0]


def _wait_change(group: SessionCgroup | None, pidfd: int, deadline: float | None) -> None:
    """Sleep until the governed process may have exited or the deadline passed."""
    wait = _POLL_S if group is not None else 3600.0
    if deadline is not None:
        wait = max(0.0, min(wait, deadline - time.monotonic()))
    if group is None:
        select.select([pidfd], [], [], wait)
    else:
        time.sleep(wait)


def _terminate(group: SessionCgroup | None, pidfd: int, main: int, timeout: float) -> None:
    """SIGTERM every governed process, SIGKILL what is left after TERM_GRACE_S."""
    _tell(main, f"agentsh: command timed out after {timeout:g}s (resource_limits."
                "command_timeout): its processes were terminated\n")  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _targets(group, main):
            try:
                os.kill(pid, sig)
            except OSError:
                continue  # already gone
        end = time.monotonic() + TERM_GRACE_S
        while sig == signal.SIGTERM and _alive(group, pidfd) and time.monotonic() < end:
            time.sleep(0.05)


def _targets(group: SessionCgroup | None, main: int) -> list[int]:
    if group is not None:
        return group.procs()
    import psutil

    try:
        tree = psutil.Process(main).children(recursive=True)
    except psutil.Error:
        return [main]
    return [main, *(p.pid for p in tree)]


def _tell(pid: int, line: str) -> None:
    """Write ``line`` to the process's stderr if that is a pipe or a terminal.

    Reopening through /proc as root could write into a file or device the process only had
    open for reading, so anything else is left alone.
    """
    path = f"/proc/{pid}/fd/2"
    try:
        st = os.stat(path)
        if not (stat.S_ISFIFO(st.st_mode) or _is_tty_dev(st.st_rdev, st.st_mode)):
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return
    try:
        os.write(fd, line.encode())
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EPIPE):
            raise
    finally:
        os.close(fd)


def _is_tty_dev(rdev: int, mode: int) -> bool:
    # Unix98 pty slaves (136-143) and the virtual consoles/serial ttys (4).
    return stat.S_ISCHR(mode) and (136 <= os.major(rdev) <= 143 or os.major(rdev) == 4)
