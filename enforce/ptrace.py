"""Exec supervision by ptrace(2), for hosts where a seccomp user-notify listener cannot be
installed (``agentsh detect``) or where the config asks for it (``sandbox.ptrace.enabled``).
The filter, the checker, the audit events and the exec-boundary check are the notify
backend's (``govern``, ``supervisor``); only the transport differs. The filter is
``govern.filter_spec(..., trace=True)``: the supervised syscalls (exec, the kill family,
ptrace attach, pidfd_getfd, the hardening calls) return SECCOMP_RET_TRACE, all others ALLOW,
so a tracee stops only for those — never on every syscall (no PTRACE_SYSCALL; PTRACE_CONT).

``spawn_traced`` (steps 1-2) then ``TracedPending.install`` (steps 3-7) — ``start_traced``
does both — in this order; each step must precede the next (a Landlock file ruleset of the
frontend belongs between the two, so that the tracer stays outside it):

  1. nothing when already governed (``govern.is_governed``, answered by either backend's
     filter): the outer tracer traces us and all we start (one tracer per task anyway);
  2. fork the tracer (double fork) before any restriction, so it is neither filtered,
     traced nor fenced; it detaches like the notify supervisor (own session, fds 0-2 on
     /dev/null, non-dumpable), builds checker and sink, and sends "ready" + its pid;
  3. PR_SET_PTRACER(tracer): under Yama's ptrace_scope=1 only ancestors could trace us;
  4. the tracer PTRACE_SEIZEs every thread of ours with OPTIONS in SEIZE's data argument
     (PTRACE_SETOPTIONS on a running tracee fails with ESRCH), then acks. Before step 7,
     since RET_TRACE without a tracer fails with ENOSYS (bash.real could not start), and
     before any fork, so TRACEFORK/VFORK/CLONE attach the whole tree;
  5. no_new_privs (required for seccomp without CAP_SYS_ADMIN; setuid stops working);
  6. the Landlock fence (``govern``): keeps the tree off the tracer's memory and fds; the
     tracer itself is outside the domain, so tracing is not hindered;
  7. the filter, last, on every thread (TSYNC, ESRCH on failure);
  8. return: the caller execs bash.real — the first seccomp stop (``first_exec``,
     prechecked), whose exec event is checked like every other.

``Tracer.run`` waits for any tracee (``__WALL``) and answers each stop:

  - seccomp stop: PTRACE_GET_SYSCALL_INFO → a notification for the notify backend's
    Supervisor (same decision, stderr message and audit event). Allowed: PTRACE_CONT.
    Refused: fail in one step — SETREGS orig_rax = -1, rax = -errno, PTRACE_CONT
    (KERNEL-FACTS §3); never SIGKILL;
  - fork/vfork/clone event: resume; the new task reports its own first stop
    (PTRACE_EVENT_STOP, SIGTRAP): resume it;
  - exec event (new image loaded, not one instruction run): it must be an exec we
    approved, with the approved image (device, inode) and argv (``verify=False``, for
    benchmarks only, skips this comparison, never the approval), else SIGKILL. This is the
    notify backend's time-of-use check, and also the last line against a listener of the
    tree's own: USER_NOTIF outranks TRACE, so such a listener could answer an exec
    without our seeing a seccomp stop;
  - group-stop (PTRACE_EVENT_STOP with a stop signal): PTRACE_LISTEN — it stays stopped,
    job control works, and we still hear of its SIGCONT;
  - signal-delivery stop: resume with the signal, which is delivered as without us;
  - exit: forgotten. ECHILD ends the loop when the last tracee is gone (daemons started
    in the tree remain tracees: the tracer outlives bash while they run).

Escape routes: tracer death (killed, crashed) → PTRACE_O_EXITKILL, on every tracee,
makes the kernel SIGKILL the tree. A seccomp listener of the tree's own → ``filter_spec``
fails SECCOMP_FILTER_FLAG_NEW_LISTENER with EBUSY, as the notify backend's kernel does.
clone(CLONE_UNTRACED) → the child is not attached but has the filter: each supervised
syscall fails with ENOSYS, so it can exec nothing. Debuggers → every member already has
a tracer (us), so strace and gdb fail with EPERM inside the tree (they work under the
notify backend); ptrace of an outside process is refused and audited by the Supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import functools
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NoReturn

from agentsh.enforce import (
    audit,
    boundary,
    bpf,
    engine,
    filemon,
    govern,
    limits,
    seccomp,
    supervisor,
    tracee,
)
from agentsh.enforce.bpf import ArgRule, Errno, FilterSpec
from agentsh.enforce.errors import LayerUnavailable
from agentsh.enforce.govern import Hardening
from agentsh.enforce.record import dataclass, replace

if TYPE_CHECKING:
    from agentsh.enforce import fileguard

# --------------------------------------------------------------------------- constants

PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS = 7, 12, 13
PTRACE_SEIZE, PTRACE_LISTEN, PTRACE_GET_SYSCALL_INFO = 0x4206, 0x4208, 0x420E
PTRACE_O_TRACEFORK, PTRACE_O_TRACEVFORK, PTRACE_O_TRACECLONE = 0x2, 0x4, 0x8
PTRACE_O_TRACEEXEC, PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL = 0x10, 0x80, 0x100000
_O_ATTACH = PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE  # the whole tree
# The file monitor's exit check: an allowed open resumes with PTRACE_SYSCALL, and its
# syscall-exit stop (SIGTRAP | 0x80 with TRACESYSGOOD; nothing else ever asks for one)
# shows the fd it returned (fileguard.Monitor.opened).
PTRACE_SYSCALL, PTRACE_O_TRACESYSGOOD, OP_EXIT = 24, 0x1, 2
SYSCALL_EXIT_STOP: Final = signal.SIGTRAP | 0x80
OPTIONS: Final = (
    _O_ATTACH | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESECCOMP | PTRACE_O_EXITKILL
    | PTRACE_O_TRACESYSGOOD
)  # fmt: skip


class Event(enum.IntEnum):
    """PTRACE_EVENT_*: ``status >> 16`` of a ptrace event stop (0: no event)."""

    NONE = 0
    FORK = 1
    VFORK = 2
    CLONE = 3
    EXEC = 4
    SECCOMP = 7
    STOP = 128


STOP_SIGNALS: Final = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

OP_SECCOMP: Final = 3  # struct ptrace_syscall_info.op
# struct ptrace_syscall_info as filled for a seccomp stop: op u8, pad, arch u32,
# instruction_pointer, stack_pointer, seccomp.nr, seccomp.args[6] (u64), ret_data u32.
SYSCALL_INFO: Final = struct.Struct("<B3xIQQQ6QI")
SYSCALL_INFO_SIZE: Final = 88  # sizeof, with the trailing padding
REGS_SIZE: Final = 216  # struct user_regs_struct: 27 x u64
OFF_RAX, OFF_ORIG_RAX = 80, 120

NR_SECCOMP, NR_GETPPID = 317, 110
PR_SET_PTRACER: Final = 0x59616D61
_WALL: Final = boundary.WALL
HANDSHAKE_S: Final = 30.0  # the tracer loads the policy before it answers
PROBE_DEADLINE_S: Final = 2.0

# seccomp(SECCOMP_SET_MODE_FILTER, flags) with NEW_LISTENER (0x8), for every combination
# of the flag bits below 0x100 (kernels define up to 0x20 and reject unknown bits):
# a listener of the tree's own would outrank our RET_TRACE.
_LISTENER_FLAGS = tuple(f for f in range(256) if f & seccomp.FLAG_NEW_LISTENER)
_NO_LISTENER = ArgRule(NR_SECCOMP, 1, _LISTENER_FLAGS, Errno(errno.EBUSY), "allow")


def filter_spec(
    hardening: Hardening = Hardening(), files: filemon.Plan | None = None
) -> FilterSpec:
    """The notify backend's filter (with the file calls ``files`` traps) with every
    supervised syscall routed to SECCOMP_RET_TRACE, plus the refusal of new seccomp
    listeners (module docstring)."""
    spec = govern.filter_spec(hardening, trace=True, files=files)
    return replace(spec, args=(*spec.args, _NO_LISTENER))


# --------------------------------------------------------------------------- ptrace(2)


@dataclass(frozen=True, slots=True)
class SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO at a seccomp stop (``op`` OP_SECCOMP); for any other op
    only ``op`` is meaningful."""

    op: int
    arch: int
    ip: int
    nr: int
    args: tuple[int, int, int, int, int, int]


def syscall_info(tid: int) -> SyscallInfo:
    """ptrace(2) PTRACE_GET_SYSCALL_INFO of a stopped tracee.

    Raises:
        OSError: ESRCH when ``tid`` is not a tracee of ours in a ptrace-stop.
    """
    buf = ctypes.create_string_buffer(SYSCALL_INFO_SIZE)
    filled = boundary.ptrace(PTRACE_GET_SYSCALL_INFO, tid, SYSCALL_INFO_SIZE, ctypes.addressof(buf))
    if buf.raw[0] != OP_SECCOMP or filled < SYSCALL_INFO.size:
        return SyscallInfo(buf.raw[0], 0, 0, -1, (0, 0, 0, 0, 0, 0))
    op, arch, ip, _sp, nr, *args, _data = SYSCALL_INFO.unpack_from(buf.raw)
    return SyscallInfo(op, arch, ip, nr, (args[0], args[1], args[2], args[3], args[4], args[5]))


def skip_syscall(tid: int, value: int) -> None:
    """At a seccomp stop: the syscall does not run and returns ``value`` (``-errno`` for
    a failure). One step: orig_rax = -1 (no syscall) and rax = value, set together with
    PTRACE_GETREGS/PTRACE_SETREGS (ptrace(2)); the caller then resumes with PTRACE_CONT."""
    regs = ctypes.create_string_buffer(REGS_SIZE)
    boundary.ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    struct.pack_into("<q", regs, OFF_ORIG_RAX, -1)
    struct.pack_into("<q", regs, OFF_RAX, value)
    boundary.ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def return_value(tid: int) -> int:
    """rax of a tracee in a syscall-exit stop: the call's return value (-errno on failure),
    read with PTRACE_GETREGS (ptrace(2))."""
    regs = ctypes.create_string_buffer(REGS_SIZE)
    boundary.ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    value: int = struct.unpack_from("<q", regs, OFF_RAX)[0]
    return value


def resume(tid: int, sig: int = 0) -> None:
    """PTRACE_CONT, delivering ``sig`` (0: none). A tracee killed meanwhile is ignored:
    its exit is the next thing waitpid reports."""
    with contextlib.suppress(ProcessLookupError):
        boundary.ptrace(PTRACE_CONT, tid, 0, sig)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: leave a group-stopped tracee stopped, but report its SIGCONT."""
    with contextlib.suppress(ProcessLookupError):
        boundary.ptrace(PTRACE_LISTEN, tid)


def seize_all(pid: int) -> None:
    """PTRACE_SEIZE every thread of process ``pid`` with OPTIONS; threads started
    meanwhile are seized by re-reading ``/proc/PID/task`` until nothing is new. A
    thread that cannot be seized is left untraced: its supervised syscalls then fail
    with ENOSYS (fail closed).

    Raises:
        OSError: the main thread cannot be seized (EPERM: traced already, or not ours).
    """
    boundary.ptrace(PTRACE_SEIZE, pid, 0, OPTIONS)
    done = {pid}
    while True:
        new = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - done
        if not new:
            return
        for tid in new:
            with contextlib.suppress(OSError):
                boundary.ptrace(PTRACE_SEIZE, tid, 0, OPTIONS)
        done |= new


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class Support:
    """Whether this backend works here; ``reason`` says why not (or what was seen)."""

    available: bool
    reason: str


def probe() -> Support:
    """Behavioural: a child installs a filter returning RET_TRACE for getppid; we seize it
    with OPTIONS, see its seccomp stop through PTRACE_GET_SYSCALL_INFO and fail the call
    with EACCES in one step; the child must see EACCES."""
    if not seccomp.action_available(bpf.RET_TRACE):
        return Support(False, "the kernel does not offer SECCOMP_RET_TRACE")
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the probe child
        _probe_child(go_r, go_w)
    os.close(go_r)
    try:
        boundary.ptrace(PTRACE_SEIZE, pid, 0, OPTIONS)
        os.write(go_w, b"g")
    except OSError as err:
        _kill_and_reap(pid)
        return Support(False, f"PTRACE_SEIZE refused: {err.strerror}")
    finally:
        os.close(go_w)  # whatever happened, the child is never left waiting
    return _probe_watch(pid, time.monotonic() + PROBE_DEADLINE_S)


def _probe_child(go_r: int, go_w: int) -> NoReturn:  # pragma: no cover - the probe child
    code = 2
    try:
        os.close(go_w)
        seccomp.set_no_new_privs()
        spec = FilterSpec(notify=(NR_GETPPID,), marker=False, trace=True)
        seccomp.install(bpf.build(spec), listener=False)
        if os.read(go_r, 1) == b"g":
            try:
                seccomp.syscall(NR_GETPPID)
                code = 3  # the call ran: no stop, or our answer was lost
            except OSError as err:
                code = 0 if err.errno == errno.EACCES else 4
    finally:
        os._exit(code)


def _probe_watch(pid: int, deadline: float) -> Support:
    stopped = False
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG | _WALL)
        if not done:
            time.sleep(0.0005)
        elif not os.WIFSTOPPED(status):
            code = os.waitstatus_to_exitcode(status)
            if code == 0 and stopped:
                return Support(True, "seized a child, saw its seccomp stop, failed the call")
            return Support(False, f"probe child exit {code} (seccomp stop seen: {stopped})")
        elif status >> 16 == Event.SECCOMP:
            info = syscall_info(pid)
            stopped = info.op == OP_SECCOMP and info.nr == NR_GETPPID
            skip_syscall(pid, -errno.EACCES)
            resume(pid)
        else:
            resume(pid, 0 if status >> 16 else os.WSTOPSIG(status))
    _kill_and_reap(pid)
    return Support(False, f"no seccomp stop within {PROBE_DEADLINE_S:g} s")


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, _WALL)


# --------------------------------------------------------------------------- the tracer


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do with the syscall at a seccomp stop: run it, or skip it with ``value``
    as its return value (``-errno`` for a failure)."""

    run: bool
    value: int = 0


CONTINUE: Final = Answer(True)


class _Stop(seccomp.Listener):
    """Stands in for the listener fd: the Supervisor receives the current seccomp stop as
    a notification and answers through allow/fail/succeed as with user-notify (it uses
    nothing else of a Listener on this path). ``id_valid`` holds until the answer: a
    tracee leaves a ptrace-stop only by dying, and its pid cannot be reused before we have
    waited for it, so what was read from it is its own."""

    __slots__ = ("answer", "current", "note")

    def __init__(self) -> None:
        super().__init__(-1)
        self.note: seccomp.Notification | None = None
        self.current = -1
        self.answer: Answer | None = None

    def offer(self, note: seccomp.Notification) -> None:
        self.note, self.current, self.answer = note, note.id, None

    def take(self) -> Answer | None:
        answer, self.answer, self.current = self.answer, None, -1
        return answer

    def recv(self) -> seccomp.Notification:
        note, self.note = self.note, None
        if note is None:
            raise OSError(errno.ENOENT, "no seccomp stop pending")
        return note

    def _answer(self, nid: int, answer: Answer) -> bool:
        if nid != self.current or self.answer is not None:
            return False  # another stop's id, or answered already
        self.answer = answer
        return True

    def allow(self, nid: int) -> bool:
        return self._answer(nid, CONTINUE)

    def fail(self, nid: int, err: int) -> bool:
        if not 0 < err <= 4095:
            raise ValueError(f"errno {err} outside 1..4095")
        return self._answer(nid, Answer(False, -err))

    def succeed(self, nid: int, val: int) -> bool:
        return self._answer(nid, Answer(False, val))

    def id_valid(self, nid: int) -> bool:
        return nid == self.current and self.answer is None


class Tracer:
    """The wait loop of the module docstring, around the notify backend's Supervisor
    (``handle_one`` per seccomp stop; ``Boundary(seize=False)`` holds what each approved
    exec must load, checked here at its exec event). Single-threaded; one per tree."""

    def __init__(self, checker: supervisor.Checker, sink: supervisor.Sink, launch: Launch) -> None:
        self.stop, self.serial, self.verify = _Stop(), 0, launch.verify
        self.sup = supervisor.Supervisor(
            self.stop,
            checker,
            sink,
            frontend_pid=launch.frontend,
            session=launch.session,
            first_exec=launch.first_exec,
            verify=True,  # hold every approval; ``launch.verify`` decides on the image check
            exec_boundary=boundary.Boundary(seize=False),  # we trace every member already
            signals=launch.signals,
            # No ADDFD here: allowed opens run, and are checked again at their exit.
            files=_monitor(launch.files),
        )

    def run(self) -> int:
        """Serve stops until no tracee is left. Returns 0."""
        while True:
            # Allowed execs are audited in batches: flush whenever nothing is waiting.
            flags = _WALL | (os.WNOHANG if self.sup.queue else 0)
            try:
                pid, status = os.waitpid(-1, flags)
            except ChildProcessError:
                break
            if pid == 0:
                self.sup.flush()
            else:
                self._dispatch(pid, status)
        self.sup.flush()
        return 0

    def _dispatch(self, pid: int, status: int) -> None:
        if not os.WIFSTOPPED(status):
            self.sup.boundary.pending.pop(pid, None)  # exited or killed
            return
        sig, event = os.WSTOPSIG(status), status >> 16
        match event:
            case Event.SECCOMP:
                self._seccomp(pid)
            case Event.FORK | Event.VFORK | Event.CLONE:  # the new task reports itself
                resume(pid)
            case Event.EXEC:
                if self._exec_stopped(pid):
                    resume(pid)
            case Event.STOP if sig in STOP_SIGNALS:  # group-stop
                listen(pid)
            case Event.STOP:  # a new task's first stop
                resume(pid)
            case Event.NONE if sig == SYSCALL_EXIT_STOP:  # the file monitor's exit check
                self._syscall_exit(pid)
            case Event.NONE:  # signal-delivery stop: deliver the signal
                resume(pid, sig)
            case _:  # an event we never asked for: fail closed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _seccomp(self, tid: int) -> None:
        try:
            info = syscall_info(tid)
        except ProcessLookupError:
            return  # killed while stopped; its exit comes next
        answer = self._decide(tid, info)
        request = PTRACE_CONT
        if answer.run and self.sup.files is not None and self.sup.files.checks_exit(tid):
            request = PTRACE_SYSCALL  # stop again at its exit: the opened fd is checked
        try:
            if not answer.run:
                skip_syscall(tid, answer.value)
            boundary.ptrace(request, tid)
        except ProcessLookupError:
            pass

    def _syscall_exit(self, tid: int) -> None:
        """The syscall-exit stop of an allowed open: the file monitor checks the file it
        opened (and kills the process if that is not a file it may open)."""
        files = self.sup.files
        try:
            if files is not None and syscall_info(tid).op == OP_EXIT:
                files.opened(self.sup, tid, return_value(tid))
        except ProcessLookupError:
            return
        resume(tid)

    def _decide(self, tid: int, info: SyscallInfo) -> Answer:
        if info.op != OP_SECCOMP:
            return Answer(False, -errno.EACCES)  # not a seccomp stop: refuse
        self.serial += 1
        self.stop.offer(
            seccomp.Notification(self.serial, tid, 0, info.nr, info.arch, info.ip, info.args)
        )
        self.sup.handle_one()
        return self.stop.take() or Answer(False, -errno.EACCES)  # unanswered: refuse

    def _exec_stopped(self, pid: int) -> bool:
        """At PTRACE_EVENT_EXEC: True when ``pid`` may run — the exec was approved and
        (with ``verify``) loaded the approved image and argv. Otherwise it has been
        killed and the refusal audited."""
        held = self.sup.boundary.take(pid)
        if held is None:
            self._unapproved(pid)
            return False
        if not self.verify:
            return True
        mismatch = self.sup.boundary.check(pid, *held)
        if mismatch is not None:
            self.sup.exec_changed(mismatch)
        return mismatch is None

    def _unapproved(self, pid: int) -> None:
        raw = tracee.read_proc(b"/proc/%d/cmdline" % pid) or b""
        argv = tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]) or ("?",)
        message = "this exec bypassed the exec check; the process was killed before it ran"
        line = f"agentsh: blocked by policy: {' '.join(argv)} (rule exec-unchecked): {message}"
        self.sup.tell(pid, line)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        where, rule, session = tracee.cwd(pid), "exec-unchecked", self.sup.session
        event = audit.Event(
            time.time(), session, pid, where, argv, "deny", rule, message, "exec", "command"
        )
        self.sup.record(event, urgent=True)


def _monitor(plan: filemon.Plan | None) -> fileguard.Monitor | None:
    """The file monitor for the tracer (built there: it reads the protected inodes)."""
    if plan is None:
        return None
    from agentsh.enforce import fileguard  # the tracer's side only

    return fileguard.Monitor(plan, inject=False, check_exits=True)


# --------------------------------------------------------------------------- start


Launch = govern._Launch  # factories, pid, first_exec, session, verify, signals, files


class TracedPending:
    """A tracer forked and waiting (``spawn_traced``); ``install`` puts this process under
    it (steps 3-7). A Landlock ruleset of the frontend goes between the two, so that the
    tracer stays outside it; seizing a process inside a domain from outside is allowed."""

    def __init__(self, sock: socket.socket, prog: bytes) -> None:
        self._sock, self._prog = sock, prog

    def install(self) -> None:
        """Be seized by the tracer, then no_new_privs, the fence and the filter (last).
        Call it right before exec'ing ``first_exec``.

        Raises:
            LayerUnavailable: the tracer did not start or could not seize this process
                (traced already, ptrace forbidden), or the filter was refused; the caller
                must not exec.
        """
        with self._sock as sock:
            _handshake(sock)  # steps 3-4: when it returns, we are traced
        seccomp.set_no_new_privs()
        govern._fence()
        try:
            flags = seccomp.FLAG_TSYNC | seccomp.FLAG_TSYNC_ESRCH
            seccomp.install(self._prog, listener=False, flags=flags)
        except OSError as err:
            why = f"exec supervision (ptrace): seccomp refused: {err.strerror}"
            raise LayerUnavailable(why) from err

    def abandon(self) -> None:
        """Give up (an error before ``install``): the tracer sees EOF and exits."""
        self._sock.close()


def spawn_traced(
    checker_factory: Callable[[], supervisor.Checker],
    sink_factory: Callable[[], supervisor.Sink],
    *,
    first_exec: str,
    session: str = "",
    hardening: Hardening = Hardening(),
    verify: bool = True,
    signals: engine.SignalChecker | None = None,
    files: filemon.Plan | None = None,
) -> TracedPending | None:
    """Fork the tracer (steps 1-2), before this process is restricted in any way; the
    contract of ``govern.spawn``. The factories run in the tracer process.

    Returns:
        The pending tracer; None when this process is already governed (no change).

    Raises:
        LayerUnavailable: the kernel lacks SECCOMP_RET_TRACE.
        InternalError: the fork failed.
    """
    if govern.is_governed():
        return None
    if not seccomp.action_available(bpf.RET_TRACE):
        raise LayerUnavailable("exec supervision (ptrace): the kernel has no SECCOMP_RET_TRACE")
    prog = bpf.build(filter_spec(hardening, files))
    launch = Launch(
        checker_factory, sink_factory, os.getpid(), first_exec, session, verify, signals, files
    )
    ours = govern.fork_service(launch, _spawn_tracer, "ptrace supervisor")
    return TracedPending(ours, prog)


# ``spawn_traced`` then ``install`` (``govern.start``'s contract and keywords): put this
# process, and everything it will start, under ptrace exec supervision. Call it last
# before exec'ing ``first_exec``. True when a tracer was started; False when already
# governed. Raises LayerUnavailable, InternalError (``spawn_traced``,
# ``TracedPending.install``).
start_traced = functools.partial(govern.start, spawner=spawn_traced)


def _handshake(sock: socket.socket) -> None:
    """Frontend side: "R"+pid from the tracer, PR_SET_PTRACER, "G", then "S" once it has
    seized us (or "E"+why)."""
    sock.settimeout(HANDSHAKE_S)
    try:
        ready = _recv_exact(sock, 5)
        if ready[:1] != b"R":
            raise LayerUnavailable("exec supervision (ptrace): the tracer did not start")
        with contextlib.suppress(OSError):  # EINVAL without Yama: nothing to allow
            limits.prctl(PR_SET_PTRACER, struct.unpack("<i", ready[1:])[0])
        sock.sendall(b"G")
        reply = _recv_exact(sock, 1)
        if reply != b"S":
            why = sock.recv(512).decode("utf-8", "replace") or "it exited"
            raise LayerUnavailable(f"exec supervision (ptrace): cannot trace this process: {why}")
    except TimeoutError as err:
        raise LayerUnavailable(
            f"exec supervision (ptrace): the tracer did not answer within {HANDSHAKE_S:g} s"
        ) from err


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise LayerUnavailable("exec supervision (ptrace): the tracer did not start")
        data += chunk
    return data


def _spawn_tracer(sock: socket.socket, launch: Launch) -> None:  # pragma: no cover
    """Intermediate child: fork the tracer and exit, so init (or the nearest subreaper)
    adopts it and bash never sees a child it did not start."""
    code = 127
    try:
        if os.fork() != 0:
            code = 0
            return
        govern._detach(sock.fileno())
        code = _trace(sock, launch)
    finally:
        os._exit(code)


def _trace(sock: socket.socket, launch: Launch) -> int:  # pragma: no cover - the tracer
    checker, sink = launch.checker_factory(), launch.sink_factory()
    sock.sendall(b"R" + struct.pack("<i", os.getpid()))
    if sock.recv(1) != b"G":
        return 1
    try:
        seize_all(launch.frontend)
    except OSError as err:
        why = "it is traced already" if err.errno == errno.EPERM else err.strerror
        sock.sendall(b"E" + f"PTRACE_SEIZE failed: {why}".encode())
        return 1
    sock.sendall(b"S")
    sock.close()
    return _serve(checker, sink, launch)


def _serve(checker: supervisor.Checker, sink: supervisor.Sink, launch: Launch) -> int:
    """Run the tracer; a crash is audited (its stderr is /dev/null), then the process
    exits and EXITKILL kills every tracee (fail closed)."""
    try:
        return Tracer(checker, sink, launch).run()
    except Exception as err:  # noqa: BLE001 — the only record of the crash is this event
        import traceback  # only on this failure path: keep it off every governed start

        detail = "".join(traceback.format_exception(err))[-2000:]
        message = f"the ptrace exec supervisor crashed; the governed tree was killed: {detail}"
        me, argv, rule = os.getpid(), ("agentsh-ptrace-supervisor",), "supervisor-crash"
        event = audit.Event(
            time.time(), launch.session, me, "/", argv, "error", rule, message, "exec", "command"
        )
        with contextlib.suppress(Exception):
            sink(event)
        return 127
