"""The frontend's side of exec supervision (ARCHITECTURE §3 steps 6–7): start the
supervisor, install the filter, hand the listener over, and return so that the caller
execs bash.real — whose exec is the first one the supervisor answers.

``spawn`` then ``Pending.install`` (``start`` does both) do, in this order (each step must
precede the next; a Landlock file ruleset belongs between ``spawn`` and ``install``, so
that the supervisor stays outside it):

  1. nothing at all when the process is already governed (the marker below): the outer
     supervisor governs us, and a second NEW_LISTENER would fail with EBUSY anyway;
  2. fork the supervisor with a double fork (bash never sees it as a child), before any
     filter exists, so the supervisor itself is never trapped; it closes every fd but its
     end of a socketpair (fds 0-2 become /dev/null, so pipelines see EOF), leaves the
     session (a terminal's ^C never reaches it) and makes itself non-dumpable;
  3. no_new_privs (setuid bits stop working; required for seccomp without CAP_SYS_ADMIN);
  4. a Landlock "fence" when the kernel has Landlock: a domain that only forbids creating
     device nodes, whose real purpose is Landlock's ptrace rule — a process inside the
     domain cannot ptrace, read or write the memory of (``/proc/PID/mem``), or take fds
     from (pidfd_getfd) a process outside it, such as the supervisor, even as root;
  5. the seccomp filter, last, with SECCOMP_FILTER_FLAG_NEW_LISTENER;
  6. the listener fd sent over the socketpair with SCM_RIGHTS and one data byte (an empty
     SOCK_STREAM message carries nothing) — sendmsg is not trapped, so the hand-off cannot
     deadlock — then our copy is closed and we wait for the supervisor's one-byte ack.

The governed marker (ARCHITECTURE §9; the C shim tests it before choosing bypass):

    long r = syscall(0x3FFFA65E, 0x68736761, 0x65766F67, 0, 0, 0);
    governed  <=>  r == -1 && errno == 2661

Inside an agentsh filter the filter itself answers that call with ERRNO(2661); anywhere
else the kernel answers ENOSYS (the number is unassigned). Only the low 32 bits of the two
arguments are compared. No environment variable, argument or file can produce it: only a
seccomp filter can, and a process that can install its own filter before running bash is
already running arbitrary code outside any governed tree (inside one, our filter still
traps every exec whatever filters are stacked on it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Protocol

from agentsh.enforce import (
    audit,
    bpf,
    engine,
    fdowner,
    filemon,
    landlock,
    seccomp,
    sigcalls,
    supervisor,
)
from agentsh.enforce.bpf import ArgRule, FilterSpec
from agentsh.enforce.errors import InternalError, LayerUnavailable
from agentsh.enforce.record import dataclass

TIOCSTI, TIOCLINUX = 0x5412, 0x541C
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
PERSONALITY_QUERY, PER_LINUX = 0xFFFFFFFF, 0
NR_IOCTL, NR_PERSONALITY, NR_VHANGUP, NR_SYSLOG, NR_SOCKET = 16, 135, 153, 103, 41
AF_PACKET = 17
# syslog(2) actions that change the kernel log or the console: READ_CLEAR, CLEAR,
# CONSOLE_OFF, CONSOLE_ON, CONSOLE_LEVEL.
SYSLOG_CHANGES = (4, 5, 6, 7, 8)

_GROUPS: dict[str, tuple[int, ...]] = {
    "mount": (165, 166, 155, 428, 429, 430, 431, 432, 433, 442),
    "kernel": (246, 320, 175, 313, 176, 169, 172, 173),
    "bpf": (321, 298),
    "userfaultfd": (323,),
    "io_uring": (425, 426, 427),
    "process_vm_writev": (311,),
    "open_by_handle": (304,),
    "keyring": (248, 249, 250),  # add_key, request_key, keyctl
    "fanotify": (300, 301),  # fanotify_init, fanotify_mark
    # settimeofday, clock_settime, clock_adjtime, sethostname, setdomainname, swapon,
    # swapoff, acct, quotactl, quotactl_fd: settings of the whole machine
    "system": (164, 227, 305, 170, 171, 167, 168, 163, 179, 443),
}


@dataclass(frozen=True)
class Hardening:
    """Which syscall groups the filter supervises besides exec (issue 3 item 4); each is
    refused with EPERM and audited when it fires. One field per config switch."""

    signals: bool = True  # kill & co and F_SETOWN & co: only within the governed tree
    ptrace: bool = True  # ptrace, pidfd_getfd, process_vm_readv, prlimit & scheduling: the tree
    mount: bool = True  # mount, umount2, pivot_root and the new mount API
    kernel: bool = True  # kexec_*, module loading, reboot, iopl/ioperm
    bpf: bool = True  # bpf, perf_event_open
    userfaultfd: bool = True
    io_uring: bool = True
    process_vm_writev: bool = True
    open_by_handle: bool = True
    tty_injection: bool = True  # TIOCSTI, TIOCLINUX, vhangup
    personality: bool = True  # personality() changes (queries pass)
    keyring: bool = True  # the kernel keyring: shared by every process of the user
    system: bool = True  # clock, hostname, swap, accounting, quotas, clearing the kernel log
    fanotify: bool = True  # watching every process's file access, and getting its files
    packet_capture: bool = True  # AF_PACKET sockets: every process's network traffic


def filter_spec(
    hardening: Hardening = Hardening(),
    *,
    trace: bool = False,
    files: filemon.Plan | None = None,
) -> FilterSpec:
    """The filter for a governed tree: exec always, plus the enabled hardening groups and
    the file calls ``files`` traps. ``trace`` routes to SECCOMP_RET_TRACE instead (the
    ptrace backend)."""
    notify: list[int] = [supervisor.NR_EXECVE, supervisor.NR_EXECVEAT, *supervisor.VIEW_CALLS]
    args: list[ArgRule] = []
    if files is not None:
        file_notify, file_args = files.routes()
        notify += file_notify
        args += file_args
    if hardening.signals:
        notify += sorted(sigcalls.SIGNAL_CALLS)
    if hardening.ptrace:
        notify += [sigcalls.NR_PIDFD_GETFD, sigcalls.NR_PROCESS_VM_READV, *sigcalls.BY_KIND]
    if hardening.tty_injection:
        notify.append(NR_VHANGUP)
    for group, nrs in _GROUPS.items():
        if getattr(hardening, group):
            notify += nrs
    args += _argument_rules(hardening)
    return FilterSpec(notify=tuple(notify), args=tuple(args), trace=trace)


def _argument_rules(hardening: Hardening) -> list[ArgRule]:
    """The hardening that depends on an argument: which ptrace request, fcntl command,
    ioctl request, syslog action, personality or socket family."""
    args: list[ArgRule] = []
    if hardening.ptrace:
        args.append(
            ArgRule(sigcalls.NR_PTRACE, 0, (PTRACE_ATTACH, PTRACE_SEIZE), "notify", "allow")
        )
        args += [ArgRule(nr, 0, (0,), "allow", "notify") for nr in sigcalls.BY_PID]
    ioctls: list[int] = []
    if hardening.signals:  # the owner the kernel signals on I/O (enforce.fdowner)
        ioctls += fdowner.IOCTL_COMMANDS
        args.append(ArgRule(fdowner.NR_FCNTL, 1, fdowner.FCNTL_COMMANDS, "notify", "allow"))
    if hardening.tty_injection:
        ioctls += (TIOCSTI, TIOCLINUX)
    if ioctls:
        args.append(ArgRule(NR_IOCTL, 1, tuple(ioctls), "notify", "allow"))
    if hardening.system:  # syslog(2) may read the kernel log, not clear it or mute the console
        args.append(ArgRule(NR_SYSLOG, 0, SYSLOG_CHANGES, "notify", "allow"))
    if hardening.personality:
        args.append(ArgRule(NR_PERSONALITY, 0, (PERSONALITY_QUERY, PER_LINUX), "allow", "notify"))
    if hardening.packet_capture:
        args.append(ArgRule(NR_SOCKET, 0, (AF_PACKET,), "notify", "allow"))
    return args


def is_governed() -> bool:
    """This process runs under an agentsh filter (the marker probe in the docstring)."""
    try:
        seccomp.syscall(bpf.MARKER_NR, bpf.MARKER_ARG0, bpf.MARKER_ARG1, 0, 0, 0)
    except OSError as err:
        return err.errno == bpf.MARKER_ERRNO
    return False


class Installable(Protocol):
    """A supervisor forked and waiting: ``Pending`` or ``ptrace.TracedPending``."""

    def install(self) -> None: ...


class Pending:
    """A supervisor forked and waiting for its listener (``spawn``); ``install`` puts this
    process under it. Anything that must not govern the supervisor itself (a Landlock
    ruleset) goes between the two."""

    def __init__(self, sock: socket.socket, prog: bytes) -> None:
        self._sock, self._prog = sock, prog

    def install(self) -> None:
        """no_new_privs, the Landlock fence, the filter (last), then the hand-off. Call it
        right before exec'ing ``first_exec``; nothing here can be trapped (sendmsg, recv).

        Raises:
            LayerUnavailable: the filter was refused (another listener: EBUSY), or the
                supervisor did not start; the caller must not exec (a trapped exec would
                fail with ENOSYS anyway).
        """
        with self._sock as sock:
            seccomp.set_no_new_privs()
            _fence()
            listener = _install(self._prog)
            try:
                socket.send_fds(sock, [b"L"], [listener])
            finally:
                os.close(listener)
            try:
                ack = sock.recv(1)
            except OSError:
                ack = b""  # it died with our message unread (ECONNRESET)
        if ack != b"K":
            raise LayerUnavailable("exec supervision: the supervisor did not start")

    def abandon(self) -> None:
        """Give up (an error before ``install``): the supervisor sees EOF and exits."""
        self._sock.close()


def spawn(
    checker_factory: Callable[[], supervisor.Checker],
    sink_factory: Callable[[], supervisor.Sink],
    *,
    first_exec: str,
    session: str = "",
    hardening: Hardening = Hardening(),
    verify: bool = True,
    signals: engine.SignalChecker | None = None,
    files: filemon.Plan | None = None,
) -> Pending | None:
    """Fork the supervisor (steps 1-2 of the module docstring), before this process is
    restricted in any way. The factories run in the supervisor process (open the audit
    store there, not here).

    Returns:
        The pending supervisor; None when this process is already governed (nothing was
        changed: the outer supervisor governs whatever it starts).

    Raises:
        LayerUnavailable: the kernel lacks user-notify (or its structs differ).
        InternalError: the fork failed.
    """
    if is_governed():
        return None
    seccomp.check_layout()
    prog = bpf.build(filter_spec(hardening, files=files))
    launch = _Launch(
        checker_factory, sink_factory, os.getpid(), first_exec, session, verify, signals, files
    )
    ours = fork_service(launch, _spawn_supervisor, "exec supervisor")
    return Pending(ours, prog)


def start(
    checker_factory: Callable[[], supervisor.Checker],
    sink_factory: Callable[[], supervisor.Sink],
    *,
    first_exec: str,
    session: str = "",
    hardening: Hardening = Hardening(),
    verify: bool = True,
    signals: engine.SignalChecker | None = None,
    files: filemon.Plan | None = None,
    spawner: Callable[..., Installable | None] | None = None,
) -> bool:
    """``spawn`` (or ``spawner``: ``ptrace.spawn_traced``) then ``install``: put this
    process, and everything it will start, under exec supervision. Call it last before
    exec'ing ``first_exec``.

    Returns:
        True when a supervisor was started; False when already governed (no change).

    Raises:
        LayerUnavailable, InternalError: see ``spawn`` and ``Pending.install``.
    """
    pending = (spawner or spawn)(
        checker_factory,
        sink_factory,
        first_exec=first_exec,
        session=session,
        hardening=hardening,
        verify=verify,
        signals=signals,
        files=files,
    )
    if pending is None:
        return False
    pending.install()
    return True


def _install(prog: bytes) -> int:
    """Install with a listener; TSYNC so no other thread stays unfiltered; killable waits
    (kernel >= 5.19) so a signal does not restart an exec we already checked."""
    base = seccomp.FLAG_TSYNC | seccomp.FLAG_TSYNC_ESRCH
    for flags in (base | seccomp.FLAG_WAIT_KILLABLE_RECV, base):
        try:
            fd = seccomp.install(prog, listener=True, flags=flags)
        except OSError as err:
            if err.errno == errno.EINVAL and flags & seccomp.FLAG_WAIT_KILLABLE_RECV:
                continue
            if err.errno == errno.EBUSY:
                raise LayerUnavailable(
                    "exec supervision: another seccomp supervisor already governs this "
                    "process, and listeners cannot be stacked",
                    hint="run agentsh outside that sandbox, or turn exec supervision off",
                ) from err
            raise LayerUnavailable(f"exec supervision: seccomp refused: {err.strerror}") from err
        assert fd is not None
        return fd
    raise LayerUnavailable("exec supervision: seccomp refused every flag combination")


# --------------------------------------------------------------------------- supervisor side


@dataclass(frozen=True)
class _Launch:
    """What the forked service (supervisor or tracer) needs: factories run over there."""

    checker_factory: Callable[[], supervisor.Checker]
    sink_factory: Callable[[], supervisor.Sink]
    frontend: int
    first_exec: str
    session: str
    verify: bool
    signals: engine.SignalChecker | None = None  # None: the built-in signal rule
    files: filemon.Plan | None = None  # the notify file monitor's plan; None: none


def fork_service(
    launch: _Launch, body: Callable[[socket.socket, _Launch], None], what: str
) -> socket.socket:
    """Fork ``body`` (which double-forks the supervisor or the tracer and exits) before
    this process is restricted in any way; returns our end of the socketpair.

    Raises:
        InternalError: the fork failed.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the intermediate child
        ours.close()
        body(theirs, launch)
    theirs.close()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        ours.close()
        raise InternalError(f"could not fork the {what} (status {status})")
    return ours


def _spawn_supervisor(sock: socket.socket, launch: _Launch) -> None:  # pragma: no cover
    """Intermediate child: fork the supervisor and exit, so init (or the nearest
    subreaper) adopts it and the frontend's bash never sees a child it did not start."""
    code = 127
    try:
        if os.fork() != 0:
            code = 0
            return
        _detach(sock.fileno())
        checker, sink = launch.checker_factory(), launch.sink_factory()
        data, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if data != b"L" or len(fds) != 1:
            return
        os.set_inheritable(fds[0], False)
        sock.sendall(b"K")
        sock.close()
        code = _serve(fds[0], checker, sink, launch)
    finally:
        os._exit(code)


def _serve(fd: int, checker: supervisor.Checker, sink: supervisor.Sink, launch: _Launch) -> int:
    """Run the supervisor; a crash is audited (its stderr is /dev/null), then the process
    exits and every later trapped syscall of the tree fails with ENOSYS (fail closed)."""
    try:
        files = None
        if launch.files is not None:
            from agentsh.enforce import fileguard  # the supervisor's side only

            files = fileguard.Monitor(launch.files, inject=True)
        return supervisor.Supervisor(
            fd,
            checker,
            sink,
            frontend_pid=launch.frontend,
            session=launch.session,
            first_exec=launch.first_exec,
            verify=launch.verify,
            signals=launch.signals,
            files=files,
        ).run()
    except Exception as err:  # noqa: BLE001 — the only record of the crash is this event
        import traceback  # only on this failure path: keep it off every governed start

        detail = "".join(traceback.format_exception(err))[-2000:]
        event = audit.Event(
            time.time(),
            launch.session,
            os.getpid(),
            "/",
            ("agentsh-supervisor",),
            "error",
            "supervisor-crash",
            f"the exec supervisor crashed; execs now fail: {detail}",
            "exec",
            "command",
        )
        with contextlib.suppress(Exception):
            sink(event)
        return 127


def _detach(keep: int) -> None:
    """Leave the caller's session, terminal, fds and directory; stop being dumpable."""
    os.setsid()
    os.chdir("/")  # do not pin the caller's directory (or its mount) for the tree's life
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    for sig in (
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGHUP,
        signal.SIGPIPE,
    ):
        signal.signal(sig, signal.SIG_IGN)
    _prctl(4, 0)  # PR_SET_DUMPABLE 0: /proc/PID/{mem,fd} need CAP_SYS_PTRACE now


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# --------------------------------------------------------------------------- Landlock fence


def _fence() -> bool:
    """A Landlock domain that only refuses creating device nodes (mknod of a raw disk or
    /dev/mem would sidestep every other layer). Being in any domain also turns on
    Landlock's ptrace rule, which keeps the tree away from the supervisor. Returns False
    when the kernel has no Landlock (then dumpable=0 and the ptrace/pidfd_getfd checks
    of the filter are what protect the supervisor).

    Any domain refuses renaming or linking a file into another directory (REFER, ABI
    >= 2) unless one of its rules grants it — even when the ruleset does not handle it —
    so the fence handles REFER and grants it beneath "/": renames stay as the policy's
    own ruleset (``enforce.landlock``) and the rest of the system decide them."""
    try:
        abi = landlock.probe().abi
        if abi < 1:
            return False
        refer = landlock.FS_REFER if abi >= 2 else 0
        ruleset = landlock.create_ruleset(landlock.FS_MAKE_CHAR | landlock.FS_MAKE_BLOCK | refer)
    except OSError:
        return False
    try:
        if refer:
            root = os.open("/", os.O_PATH | os.O_CLOEXEC)
            try:
                landlock.add_rule(ruleset, root, refer)
            finally:
                os.close(root)
        landlock.restrict_self(ruleset)
    finally:
        with contextlib.suppress(OSError):
            os.close(ruleset)
    return True
