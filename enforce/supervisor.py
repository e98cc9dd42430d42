"""The exec supervisor: answers every syscall the governed tree's filter traps
(ARCHITECTURE §3 step 8), through the listener fd of seccomp_unotify(2).

``serve`` loops until the last governed process is gone (POLLHUP on the listener). For each
notification it decides, audits through ``sink``, and answers:

- execve/execveat: read path and argv from ``/proc/TID/mem`` (bounded; unreadable → deny),
  resolve the file as the kernel will (cwd, dirfd, AT_EMPTY_PATH, symlinks, ``..``,
  ``/proc/self/root``), follow ``#!`` interpreters, ask ``checker`` about the program and
  each interpreter, re-check SECCOMP_IOCTL_NOTIF_ID_VALID, then CONTINUE or EACCES. A refusal
  writes one line to the process's stderr where possible.
- signals (kill & co), and ptrace, pidfd_getfd, prlimit, setpriority and sched_* of another
  process: ``enforce.sigcalls`` (the policy's ``signal_rules``, else the caller's own tree
  only); the owner a descriptor
  signals on I/O (F_SETOWN & co): ``enforce.fdowner``, judged the same way;
- the file calls the file monitor traps: ``enforce.fileguard``;
- everything else the filter traps (mount, kexec, bpf, io_uring, TIOCSTI, vhangup, ...)
  → EPERM.

Time of check vs time of use (issue 3, item 2). CONTINUE lets the kernel run the exec with
the *tracee's* memory and filesystem as they are a moment later: another thread (or a
process sharing the pages, or a writer of ``/proc/TID/mem``) can rewrite the path or argv,
or a symlink can be swapped, after the check. seccomp_unotify(2) says as much. The defence
is a second, kernel-synchronous check at the exec boundary (``verify=True``,
``enforce.boundary``): before the CONTINUE the supervisor PTRACE_SEIZEs the thread
(TRACEEXEC|EXITKILL), and right after it PTRACE_INTERRUPTs it. The kernel then stops the
thread either at PTRACE_EVENT_EXEC — after the point of no return, before the new image
runs one instruction — or, if the exec failed, at the interrupt stop. At the exec stop the
supervisor compares ``/proc/PID/exe`` (device and inode) and ``/proc/PID/cmdline`` with the
image and argv it approved (for a ``#!`` script: the final interpreter and the argv the
kernel builds) and SIGKILLs the process on any difference; then it detaches. EXITKILL
makes a dead supervisor kill a stopped thread instead of letting it run unchecked. The
racing tests show the gap is real without it. What remains: a thread that another
process already traces cannot be seized, so its exec is refused (debuggers that exec
their target, such as ``strace CMD``, work only from outside the governed tree); exec
formats handled by binfmt_misc are refused with ENOEXEC (scripts without ``#!`` still run:
the shell falls back to interpreting them itself, and that shell is governed).

Hot path (``enforce.fastpath``, when ``make setup`` has built libagentsh-boundary.so): the
boundary sequence runs in one C call per exec, and an execve identical to one judged
before — same path as written, argv, canonical path, and an ELF file unchanged since
(dev, inode, size, mtime, ctime; files changed in the last seconds are never reused) — is
answered by the C transport with that allow verdict, without a Python round trip. Only
allows of a checker that declares itself ``pure`` are reused, never the prechecked shell,
never once a member changed its root or the audit store failed. The same reads, the
ID_VALID re-check and the exec-boundary check run for every exec either way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from agentsh.enforce import (
    audit,
    boundary,
    engine,
    fastpath,
    fdowner,
    image,
    seccomp,
    sigcalls,
    tracee,
)
from agentsh.enforce.errors import AuditUnavailable
from agentsh.enforce.policy import Decision, Policy, Verdict
from agentsh.enforce.printable import printable

if TYPE_CHECKING:
    from agentsh.enforce import fileguard

NR_EXECVE, NR_EXECVEAT = 59, 322
# Calls that can give a process another root or mount namespace. The filter traps them so
# the supervisor knows when exec paths can no longer be resolved in its own view; they
# are allowed (mount, umount2 and pivot_root stay refused, so an unshared namespace is a
# copy of ours).
VIEW_CALLS = {161: "chroot", 308: "setns"}


class ExecRequest(NamedTuple):
    """One program an exec would start, for the checker (a NamedTuple: built per exec on
    the supervisor's hot path).

    Attributes:
        pid: the calling thread as the supervisor sees it.
        path: canonical path of the file the kernel runs (symlinks and ``..`` resolved).
        raw_path: the path as the caller wrote it (the ``#!`` name for an interpreter).
        argv: the argv the program receives (``argv[0]`` may name anything: ``exec -a``).
        cwd: the caller's working directory.
        script: for an interpreter the kernel starts for a ``#!`` script, that script.
        trusted_alias: ``raw_path`` is a symlink only root could have made, so its name
            may stand for the program (``/usr/bin/python3`` for ``python3.11``).
        depth_of: computes ``depth`` (see there) when first asked.
        loader: the file is a dynamic loader (``enforce.elf``), whatever its name: its
            first operand is a program it runs without another exec.
    """

    pid: int
    path: str
    raw_path: str
    argv: tuple[str, ...]
    cwd: str
    script: str | None = None
    trusted_alias: bool = False
    depth_of: Callable[[], int | None] = lambda: None
    loader: bool = False

    @property
    def depth(self) -> int | None:
        """0 for the governed root, 1 for its children, ...; None when the ancestry no
        longer reaches the root (a daemon reparented to init). Computed on first use: it
        reads ``/proc/PID/stat`` of every ancestor, and most checks never need it."""
        return self.depth_of()


Checker = Callable[[ExecRequest], Verdict]
Sink = Callable[[audit.Event], None]


class _Remembered(NamedTuple):
    """What the C table holds for an allowed exec: its request (pid and cwd replaced at
    each hit), verdict, and the image and argv its exec boundary must show."""

    req: ExecRequest
    verdict: Verdict
    expected: boundary.Expected


# The root's first exec (bash.real) was prechecked by the frontend; never remembered.
_PRECHECKED = Verdict(Decision.ALLOW, None, "the governed shell itself (prechecked)")


class Allowed(NamedTuple):
    """An allowed exec: audited when the queue is flushed (off the exec's critical path),
    and the tag the exec-boundary check returns with a mismatch."""

    req: ExecRequest
    verdict: Verdict
    when: float


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# Syscalls the filter hands over only to be refused (and audited): nr -> (name, what).
HARDENED: dict[int, tuple[str, str]] = {
    165: ("mount", "mounting filesystems"),
    166: ("umount2", "unmounting filesystems"),
    155: ("pivot_root", "changing the root filesystem"),
    428: ("open_tree", "mounting filesystems"),
    429: ("move_mount", "mounting filesystems"),
    430: ("fsopen", "mounting filesystems"),
    431: ("fsconfig", "mounting filesystems"),
    432: ("fsmount", "mounting filesystems"),
    433: ("fspick", "mounting filesystems"),
    442: ("mount_setattr", "mounting filesystems"),
    246: ("kexec_load", "loading a new kernel"),
    320: ("kexec_file_load", "loading a new kernel"),
    175: ("init_module", "loading kernel modules"),
    313: ("finit_module", "loading kernel modules"),
    176: ("delete_module", "unloading kernel modules"),
    169: ("reboot", "rebooting the machine"),
    172: ("iopl", "raw I/O port access"),
    173: ("ioperm", "raw I/O port access"),
    321: ("bpf", "loading BPF programs"),
    298: ("perf_event_open", "performance monitoring of other processes"),
    323: ("userfaultfd", "userfaultfd"),
    425: ("io_uring_setup", "io_uring (a side door around syscall supervision)"),
    426: ("io_uring_enter", "io_uring (a side door around syscall supervision)"),
    427: ("io_uring_register", "io_uring (a side door around syscall supervision)"),
    311: ("process_vm_writev", "writing another process's memory"),
    304: ("open_by_handle_at", "opening files by handle (it bypasses path checks)"),
    16: ("ioctl", "terminal input injection (TIOCSTI/TIOCLINUX)"),
    153: ("vhangup", "hanging up the terminal (it signals every process that uses it)"),
    248: ("add_key", "the kernel keyring (shared by every process of the user)"),
    249: ("request_key", "the kernel keyring (shared by every process of the user)"),
    250: ("keyctl", "the kernel keyring (shared by every process of the user)"),
    164: ("settimeofday", "setting the machine's clock"),
    227: ("clock_settime", "setting the machine's clock"),
    305: ("clock_adjtime", "setting the machine's clock"),
    170: ("sethostname", "renaming the machine"),
    171: ("setdomainname", "renaming the machine"),
    167: ("swapon", "changing the machine's swap"),
    168: ("swapoff", "changing the machine's swap"),
    163: ("acct", "process accounting for the whole machine"),
    179: ("quotactl", "changing disk quotas"),
    443: ("quotactl_fd", "changing disk quotas"),
    103: ("syslog", "clearing the kernel log or changing the console's log level"),
    41: ("socket", "capturing the machine's network traffic (AF_PACKET sockets)"),
    300: ("fanotify_init", "watching other processes' file access (it hands over their files)"),
    301: ("fanotify_mark", "watching other processes' file access (it hands over their files)"),
    135: ("personality", "changing the execution domain (personality)"),
}


class Supervisor:
    """One governed tree's supervisor; see the module docstring. Single-threaded.

    ``run`` is the user-notify transport. Another transport (the ptrace backend) reuses the
    decisions through this surface: ``listener`` is any ``seccomp.Listener`` (recv, allow,
    fail, succeed, id_valid); ``handle_one`` answers one notification; ``exec_boundary`` is
    ``Boundary(seize=False)`` when the transport already traces every member, and then its
    ``take``/``check`` at each exec stop, with ``exec_changed`` for a mismatch; ``tell``,
    ``record`` and ``flush`` reach the process's stderr and the audit sink.
    """

    def __init__(
        self,
        listener: int | seccomp.Listener,
        checker: Checker,
        sink: Sink,
        *,
        frontend_pid: int,
        session: str = "",
        first_exec: str | None = None,
        verify: bool = True,
        exec_boundary: boundary.Boundary[Allowed] | None = None,
        signals: engine.SignalChecker | None = None,
        files: fileguard.Monitor | None = None,
    ) -> None:
        self.files = files  # the notify file monitor (filemon.plan), or None
        self.listener = (
            listener if isinstance(listener, seccomp.Listener) else seccomp.Listener(listener)
        )
        self.checker, self.sink, self.session, self.verify = checker, sink, session, verify
        self.tree = tracee.Tree(frontend_pid)
        self.first_exec = first_exec  # the frontend's own exec of bash.real: prechecked
        # The C hot path (enforce.fastpath), for the user-notify transport only.
        self.fast = fastpath.load() if exec_boundary is None else None
        self.boundary: boundary.Boundary[Allowed] = exec_boundary or boundary.Boundary(
            fast=self.fast
        )
        # Allowed execs ab_next may answer by itself (``run``: with the boundary check, a
        # pure checker and the C library); tag: (request, verdict, expected image).
        self.table: fastpath.Table[_Remembered] | None = None
        # Events to hand to the sink; an allowed exec is queued as its (request, verdict,
        # time) and becomes an Event only when flushed, off the exec's critical path.
        self.queue: list[audit.Event | Allowed] = []
        self.audit_down: str | None = None
        self.views_changed = False  # some member called chroot or setns
        # Judges each signal (the policy's signal_rules); the built-in rule without one.
        self.signals = signals or engine.signal_checker(Policy(1, "built-in", "<built-in>"))

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        """Serve the user-notify listener until no governed process is left. Returns 0."""
        self.listener.set_flags(seccomp.USER_NOTIF_FD_SYNC_WAKE_UP)  # best effort (>= 6.6)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.verify:
            # Exec-boundary stops of seized threads arrive as SIGCHLD (we are their tracer).
            signal.signal(signal.SIGCHLD, lambda *_: None)
            signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            self.boundary.wake_fd = wake_r  # the C path sleeps on it for the exec stop
            if self.fast is not None and getattr(self.checker, "pure", False) is True:
                self.table = fastpath.Table(self.fast)
        poller = select.poll()
        poller.register(self.listener.fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        while True:
            if self._batching():
                if self._serve_batch(wake_r):
                    break
                continue
            events = poller.poll(0 if self.queue else None)
            if not events:
                self.flush()
                continue
            if self._handle(events, wake_r):
                break
        self._reap()
        self.flush()
        return 0

    def _handle(self, events: list[tuple[int, int]], wake_r: int) -> bool:
        """Serve ready fds; True when the listener hung up (every governed task is gone)."""
        hup = False
        for fd, ev in events:
            if fd == wake_r:
                while _drain(wake_r):
                    pass
                self._reap()
            elif ev & select.POLLIN:
                self._serve_one()
            elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                hup = True
        return hup

    def _batching(self) -> bool:
        """The C transport may serve runs of remembered execs: the table is in use, and
        no thread waits at its exec boundary (every SIGCHLD meanwhile is then theirs)."""
        table = self.table
        if table is None:
            return False
        if table.enabled and (self.views_changed or self.audit_down is not None):
            table.disable()  # paths may resolve differently now; or every exec refuses
        return table.enabled and not self.boundary.pending

    def _serve_batch(self, wake_r: int) -> bool:
        """Let ``ab_serve`` answer remembered execs until a notification needs Python;
        audit them, then handle what it returned. True when the listener hung up."""
        table = self.table
        assert table is not None
        outcome, note, hits = table.serve(self.listener.fd, wake_r, flush=bool(self.queue))
        for hit in hits:
            self._audit_hit(table, hit)
        match outcome:
            case fastpath.Outcome.IDLE:
                self.flush()
            case fastpath.Outcome.WAKE:
                while _drain(wake_r):
                    pass
                self._reap()
            case fastpath.Outcome.HUP:
                return True
            case fastpath.Outcome.REAPED:
                res = table.result
                for mismatch in self.boundary.collect(res.wpid, res.status) + self.boundary.reap():
                    self.exec_changed(mismatch)
            case fastpath.Outcome.POLL:
                raise OSError(table.result.err, "poll of the seccomp listener failed")
            case _:
                self._after_next(outcome, note, table)
        return False

    def _audit_hit(self, table: fastpath.Table[_Remembered], hit: fastpath.Hit) -> None:
        """Queue the audit event of an exec ``ab_serve`` answered from the table."""
        req, verdict, _ = table.tags[hit.slot]
        cwd = table.text(hit.cwd_off, hit.cwd_len).decode("utf-8", "surrogateescape")
        self.tree.saw(hit.pid)
        req = req._replace(pid=hit.pid, cwd=cwd, depth_of=tracee.Depth(self.tree, hit.pid))
        self.record(Allowed(req, verdict, hit.when))

    def _serve_one(self) -> None:
        """One notification: answered in C when the table holds it, else handle_one."""
        table = self.table
        if table is None or not self._batching():
            self.handle_one()
            return
        outcome, note = table.next(self.listener.fd, self.boundary.wake_fd)
        self._after_next(outcome, note, table)

    def _after_next(
        self,
        outcome: fastpath.Outcome,
        note: seccomp.Notification,
        table: fastpath.Table[_Remembered],
    ) -> None:
        """Handle what ``ab_next`` did with ``note``: nothing (NOTE: Python answers it),
        or a remembered exec's outcome."""
        if outcome == fastpath.Outcome.RECV:
            err = table.result.err
            if err in (errno.ENOENT, errno.EINTR):  # withdrawn before we got it
                return
            raise OSError(err, f"SECCOMP_IOCTL_NOTIF_RECV: {os.strerror(err)}")
        if outcome == fastpath.Outcome.NOTE:
            self.handle_one(note)
            return
        self.tree.saw(note.pid)
        if outcome != fastpath.Outcome.STALE:
            self._remembered_exec(note, table)

    def handle_one(self, note: seccomp.Notification | None = None) -> None:
        """Answer ``note`` (already received by the C transport), or else receive one
        notification from ``listener`` and answer it."""
        if note is None:
            try:
                note = self.listener.recv()
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EINTR):  # withdrawn before we got it
                    return
                raise
        self.tree.saw(note.pid)  # it carries the filter: a member of the tree
        if note.nr in (NR_EXECVE, NR_EXECVEAT):
            self._exec(note)
        elif self.files is not None and note.nr in self.files.trapped:
            self.files.handle(self, note)
        elif sigcalls.traps(note.nr):
            sigcalls.handle(self, note)
        elif note.nr in VIEW_CALLS:
            # From now on every exec checks the caller's root and mount namespace.
            self.views_changed = True
            self.listener.allow(note.id)
        elif fdowner.traps(note):
            fdowner.handle(self, note)
        else:
            self._harden(note)

    # ------------------------------------------------------------------ exec

    def _exec(self, note: seccomp.Notification) -> None:
        tid = note.pid
        depth = tracee.Depth(self.tree, tid)
        try:
            call = tracee.read_exec(tid, note.nr, note.args)
            reqs, expect_argv, final = self._plan(tid, call, depth)
        except tracee.Unreadable as err:
            if not self.listener.id_valid(note.id):
                return  # killed while we read (`kill $!` of a starting job): nothing ran
            raw = ExecRequest(tid, "?", "?", (), tracee.cwd(tid), depth_of=depth)
            self._refuse_exec(note, raw, Verdict(Decision.DENY, "exec-unreadable", str(err)))
            return
        except OSError as err:  # the errno the kernel itself would give (ENOENT, ...)
            self.listener.fail(note.id, err.errno or errno.EACCES)
            return
        verdict = self._judge(reqs)
        # The reads above are only trustworthy if the thread still waits: a dead thread's
        # pid could have been reused by another process between RECV and the reads.
        if not self.listener.id_valid(note.id):
            return
        if not verdict.allowed:
            self._refuse_exec(note, reqs[0], verdict)
            return
        cmdline = b"\0".join(expect_argv) + b"\0"
        expected = boundary.Expected(final.dev, final.ino, cmdline)
        allowed = Allowed(reqs[0], verdict, time.time())
        if self.table is not None and len(reqs) == 1 and verdict is not _PRECHECKED:
            self._remember(note, call, final, _Remembered(allowed.req, verdict, expected))
        self._continue_exec(note, expected, allowed)

    def _plan(
        self, tid: int, call: tracee.ExecArgs, depth: Callable[[], int | None]
    ) -> tuple[list[ExecRequest], list[bytes], image.Image]:
        """The programs the exec starts (the file, then each #! interpreter), the argv the
        final image receives, and that image."""
        argv = list(call.argv) or [b""]  # the kernel turns an empty argv into [""]
        same = None if self.views_changed else True
        img = image.resolve(tid, call, same_view=same)
        where = tracee.cwd(tid)
        reqs = [_request(tid, call, img, argv, where=where, depth=depth, script=None)]
        filename = _bprm_filename(call)
        for _ in range(image.MAX_INTERPRETERS):
            if image.is_elf(img.head):
                return reqs, argv, img
            script = image.shebang(img.head)
            if script is None:
                raise OSError(errno.ENOEXEC, "not an ELF file or #! script")
            name, arg = script
            icall = tracee.ExecArgs(tracee.AT_FDCWD, name, (), 0)
            interp = image.resolve(tid, icall, same_view=same)
            argv = [name, *([arg] if arg is not None else []), filename, *argv[1:]]
            reqs.append(
                _request(tid, icall, interp, argv, where=where, depth=depth, script=img.path)
            )
            filename, img = name, interp
        raise OSError(errno.ELOOP, "too many levels of #! interpreters")

    def _judge(self, reqs: list[ExecRequest]) -> Verdict:
        """The first refusal among the program and its interpreters, else the program's
        verdict."""
        if self.audit_down is not None:
            return Verdict(Decision.DENY, "audit-unavailable", self.audit_down)
        first = reqs[0]
        if self.first_exec is not None and first.pid == self.tree.root:
            expected, self.first_exec = self.first_exec, None
            if os.path.realpath(expected) == first.path:
                return _PRECHECKED
        verdicts = [self._check(r) for r in reqs]
        return next((v for v in verdicts if not v.allowed), verdicts[0])

    def _check(self, req: ExecRequest) -> Verdict:
        try:
            return self.checker(req)
        except Exception as err:  # noqa: BLE001 — one bad check must refuse, not end supervision
            return Verdict(Decision.DENY, "supervisor-error", f"the exec check failed: {err!r}")

    def _continue_exec(
        self, note: seccomp.Notification, expected: boundary.Expected, allowed: Allowed
    ) -> None:
        """CONTINUE, held for the exec-boundary check when ``verify`` is on (seize before
        the answer, interrupt right after it: see ``enforce.boundary``)."""
        if not self.verify:
            self.listener.allow(note.id)
            self.record(allowed)
            return
        why, changed = self.boundary.admit(self.listener, note.id, note.pid, expected, allowed)
        self._admitted(note, allowed, why, changed)

    def _admitted(
        self,
        note: seccomp.Notification,
        allowed: Allowed,
        why: str | None,
        changed: list[boundary.Mismatch[Allowed]],
    ) -> None:
        """After ``Boundary.admit``: refuse an exec that could not be seized (no answer
        was sent), else audit it, and every exec found changed at its boundary."""
        if why is not None:
            if not self.listener.id_valid(note.id):
                return  # killed before it could be seized (`kill $!` of a starting job)
            message = f"cannot verify this exec ({why}); run debuggers outside agentsh"
            verdict = Verdict(Decision.DENY, "exec-unverifiable", message)
            self._refuse_exec(note, allowed.req, verdict)
            return
        self.record(allowed)
        for mismatch in changed:
            self.exec_changed(mismatch)

    def _remember(
        self,
        note: seccomp.Notification,
        call: tracee.ExecArgs,
        img: image.Image,
        tag: _Remembered,
    ) -> None:
        """Put an allowed execve in the C table when its verdict is a pure function of
        what ab_next compares: an execve (no flags, no dirfd) of one ELF file named by
        its own basename (no alias to vouch for, no interpreter), unchanged for a while,
        while every member shares our view and the audit store works."""
        assert self.table is not None
        canonical = img.path.encode("utf-8", "surrogateescape")
        if (
            note.nr != NR_EXECVE
            or self.views_changed
            or self.audit_down is not None
            or not call.path
            or not call.argv
            or img.trusted_alias
            or os.path.basename(call.path) != os.path.basename(canonical)
            or not image.settled(img.sig)
        ):
            return
        self.table.put(call.path, b"\0".join(call.argv) + b"\0", canonical, img.sig, tag)

    def _remembered_exec(
        self, note: seccomp.Notification, table: fastpath.Table[_Remembered]
    ) -> None:
        """An execve ab_next found in the table: it was answered (or, unseizable, not)."""
        res = table.result
        req, verdict, expected = table.tags[res.slot]
        cwd = table.text(res.base, res.cwd_len).decode("utf-8", "surrogateescape")
        depth = tracee.Depth(self.tree, note.pid)
        allowed = Allowed(req._replace(pid=note.pid, cwd=cwd, depth_of=depth), verdict, time.time())
        got = table.text(res.base + res.cwd_len, res.got_len)  # the cmdline of a mismatch
        why, changed = self.boundary.settle(res, note.pid, expected, allowed, got=got)
        self._admitted(note, allowed, why, changed)

    def _refuse_exec(self, note: seccomp.Notification, req: ExecRequest, verdict: Verdict) -> None:
        self.refuse(
            note, " ".join(req.argv) or req.raw_path, self._event(req, verdict), errno.EACCES
        )

    # ------------------------------------------------------------------ exec boundary

    def _reap(self) -> None:
        """Collect exec-boundary stops; audit (and tell) every exec killed there."""
        for mismatch in self.boundary.reap():
            self.exec_changed(mismatch)

    def exec_changed(self, mismatch: boundary.Mismatch[Allowed]) -> None:
        """Audit, and tell the process about, an exec killed at its boundary because the
        image or argv changed after the check."""
        pid, cmdline, allowed = mismatch
        argv = tuple(_text(a) for a in cmdline.split(b"\0")[:-1]) or allowed.req.argv
        message = (
            "the program or its arguments changed between the check and the exec "
            f"(approved {' '.join(allowed.req.argv)!r}); the process was killed"
        )
        verdict = Verdict(Decision.DENY, "exec-changed", message)
        event = self._event(allowed.req._replace(pid=pid, argv=argv), verdict)
        self.tell(pid, _line(" ".join(argv), event))
        self.record(event, urgent=True)

    def _harden(self, note: seccomp.Notification) -> None:
        name, what = HARDENED.get(note.nr, (f"syscall {note.nr}", "this system call"))
        message = f"{what} is not allowed in a governed shell"
        event = self.syscall_event(note.pid, name, f"deny-{name}", message, "syscall")
        self.refuse(note, name, event, errno.EPERM)

    # ------------------------------------------------------------------ refusing, audit

    def refuse(self, note: seccomp.Notification, what: str, event: audit.Event, err: int) -> None:
        """Tell the process (one line on its stderr), audit, then fail the syscall."""
        self.tell(note.pid, _line(what, event))
        self.record(event, urgent=True)
        self.listener.fail(note.id, err)

    def tell(self, tid: int, line: str) -> None:
        """Write ``line`` to the process's stderr if that is safe right now.

        The fd is the process's own open file description (pidfd_getfd), so we write
        exactly where, and with the access, the process itself could — never a reopened
        path (``/proc/PID/fd/2`` reopened could turn a read-only fd into a writable one).
        Nothing is written unless poll says the write cannot block, so a full pipe or a
        stalled terminal never stalls the supervisor.
        """
        data = (printable(line, 1000) + "\n").encode("utf-8", "replace")[: select.PIPE_BUF]
        try:
            fd = seccomp.duplicate_fd(tid, tracee.tgid(tid), 2)
        except OSError:
            return
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                return
            ready = select.poll()
            ready.register(fd, select.POLLOUT)
            if ready.poll(0):
                os.write(fd, data)
        except OSError:
            pass  # best effort: the refusal itself does not depend on it
        finally:
            os.close(fd)

    def _event(self, req: ExecRequest, verdict: Verdict, when: float = 0.0) -> audit.Event:
        return audit.Event(
            when or time.time(),
            self.session,
            req.pid,
            req.cwd,
            req.argv or (req.raw_path,),
            verdict.decision.value if verdict.allowed else "deny",
            verdict.rule,
            verdict.message,
            "exec",
            "command",
        )

    def syscall_event(
        self,
        tid: int,
        what: str,
        rule: str | None,
        message: str,
        kind: str,
        *,
        decision: str = "deny",
    ) -> audit.Event:
        """An audit event of a syscall ``tid`` made (a refusal unless ``decision`` says)."""
        return audit.Event(
            time.time(), self.session, tid, tracee.cwd(tid), (what,), decision, rule, message,
            kind, kind,
        )  # fmt: skip

    def record(self, event: audit.Event | Allowed, *, urgent: bool = False) -> None:
        """Queue an event for the sink; ``urgent`` (refusals) flushes at once."""
        self.queue.append(event)
        if urgent or len(self.queue) >= 64:
            self.flush()

    def flush(self) -> None:
        """Hand queued events to the sink. A sink that cannot record (AuditUnavailable)
        makes every later exec refuse (fail closed)."""
        queue, self.queue = self.queue, []
        events = [self._event(*item) if isinstance(item, Allowed) else item for item in queue]
        many = getattr(self.sink, "many", None)  # audit.Writer: one transaction for all
        try:
            if many is not None and len(events) > 1:
                many(events)
            else:
                for event in events:
                    self.sink(event)
        except AuditUnavailable as err:
            self.audit_down = f"the audit store cannot be written: {err.message}"


def _request(
    tid: int,
    call: tracee.ExecArgs,
    img: image.Image,
    argv: list[bytes],
    *,
    where: str,
    depth: Callable[[], int | None],
    script: str | None,
) -> ExecRequest:
    raw = _text(call.path)
    return ExecRequest(
        tid, img.path, raw, _texts(argv), where, script, img.trusted_alias, depth, img.loader
    )


def _line(what: str, event: audit.Event) -> str:
    """The one-line refusal the process sees on its stderr."""
    return (
        f"agentsh: blocked by policy: {what} (rule {event.rule or 'default-deny'}): {event.message}"
    )


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def _texts(raw: list[bytes]) -> tuple[str, ...]:
    return tuple(_text(a) for a in raw)


def _bprm_filename(call: tracee.ExecArgs) -> bytes:
    """The name the kernel hands a #! interpreter as the script (fs/exec.c alloc_bprm)."""
    if call.dirfd == tracee.AT_FDCWD or call.path.startswith(b"/"):
        return call.path
    if not call.path:
        return b"/dev/fd/%d" % call.dirfd
    return b"/dev/fd/%d/%s" % (call.dirfd, call.path)


def serve(
    listener_fd: int,
    checker: Checker,
    sink: Sink,
    *,
    frontend_pid: int,
    session: str = "",
    first_exec: str | None = None,
    verify: bool = True,
    signals: engine.SignalChecker | None = None,
) -> int:
    """Supervise the governed tree behind ``listener_fd`` until its last process exits.

    Args:
        listener_fd: the seccomp notify listener (SECCOMP_FILTER_FLAG_NEW_LISTENER).
        checker: judges one program an exec would start; pure and fast (called per exec).
        sink: receives audit events; allowed execs are batched, refusals are passed at
            once. Raising AuditUnavailable makes later execs refuse.
        frontend_pid: the governed root (the process that installed the filter).
        session: the audit session id.
        first_exec: the path the root execs first (bash.real, already prechecked).
        verify: the exec-boundary check (module docstring); off only for benchmarks.
        signals: judges each signal (``engine.signal_checker(policy)``); None: the
            built-in rule (own tree only).

    Returns:
        0 once no process uses the filter any more.
    """
    return Supervisor(
        listener_fd,
        checker,
        sink,
        frontend_pid=frontend_pid,
        session=session,
        first_exec=first_exec,
        verify=verify,
        signals=signals,
    ).run()
