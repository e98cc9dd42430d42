"""The notify file monitor, handler half: answers the file syscalls ``filemon.plan``
traps, inside the exec supervisor (``Supervisor.handle_one`` hands them to
:meth:`Monitor.handle`), for both transports (user-notify and ptrace).

For each call, in this order:

  1. read the path argument(s) (and openat2's ``open_how``) from the tracee with
     process_vm_readv(2) (``enforce.filecalls``) — unreadable memory fails the call as the
     kernel would (EFAULT), memory we may not read (a non-dumpable process) is refused;
  2. resolve each path as the tracee's kernel will (``filecalls.resolve``: its root, cwd
     or dirfd, symlinks, ``..``, ``/proc/self`` and ``/proc/PID/{root,cwd,fd}`` as the
     tracee's, but never another process's magic links: ``image.fenced``), with the
     tracee's credentials (``image.looked_up_as``: a directory it may not search stays
     closed, though the supervisor could pass it), to its canonical path, honouring
     openat2's resolve flags (``enforce.openhow``). An error the resolution meets
     (ENOENT, ENOTDIR, ELOOP, EXDEV, EACCES) is the one the kernel would give: the call
     fails with it and never runs;
  3. decide on the canonical path with ``engine.check_file`` for every operation the call
     performs (the strictest verdict wins); a regular file with more than one link that
     is a protected file found at start (same device and inode) is also judged under its
     protected name; writes into agentsh's state are refused; renaming or hard-linking a
     path out of a read protection is refused (``filemon.shields``); a /dev/pts terminal
     of another session is refused (``enforce.terminals``). ``approve`` is a deny
     (nobody to ask in the tree); ``audit`` allows and records an event;
  4. answer: EACCES, one line on the process's stderr and an audit event naming the rule;
     or, for an allowed open (any kind of file, reading or writing), carry it out on the
     very object checked, as the process (``enforce.standin`` says how per kind,
     ``enforce.identity`` takes on the process's credentials when they differ from the
     supervisor's; an open that may write is put to the tree's Landlock rules first,
     ``enforce.grants``, and a new file is created in the directory checked, with the
     process's umask), and inject the file (SECCOMP_IOCTL_NOTIF_ADDFD with SEND: the fd
     is the syscall's result, so no path is looked up again); or, for an allowed
     unlink/rmdir, rename, link, mkdir, symlink, truncate, chmod or chown, carry it out
     on the entries checked (``enforce.pathcalls``; a ``soft_delete`` moves the entry
     into the trash) and answer as the kernel did. With ``openat_emulation`` off, every
     allowed call is CONTINUEd.

CONTINUE leaves a time-of-check/time-of-use window (seccomp_unotify(2)): another thread
can rewrite the path, or a symlink can be swapped, between the check and the kernel's own
lookup — measured, a racing thread wins it within ten opens. So under user-notify no
allowed call is CONTINUEd (unless ``openat_emulation`` is off), but opens with O_PATH (an
O_PATH fd reads and writes nothing; each later use of it is trapped and judged) or
O_TMPFILE (a file nobody else can reach). Under ptrace (no ADDFD) an allowed open runs
itself and is stopped again at its exit, where the fd it returned is judged: a refused
file kills the process before it runs another instruction (:meth:`Monitor.opened`); the
other path calls are carried out by the supervisor as under user-notify.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import stat as _stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agentsh.enforce import (
    engine,
    filekinds,
    filemon,
    identity,
    image,
    openhow,
    seccomp,
    standin,
    terminals,
    tracee,
)
from agentsh.enforce.callers import Callers
from agentsh.enforce.filecalls import (
    LINKED,
    RESOLVE_IN_ROOT,
    OpenCall,
    Refused,
    Target,
    directory,
    open_call,
    path_items,
    protected_inodes,
    resolve,
    resolve_open,
)
from agentsh.enforce.pathcalls import PathCalls, event, under
from agentsh.enforce.policy import Decision, FileRule, Policy, Verdict

if TYPE_CHECKING:
    from agentsh.enforce.supervisor import Supervisor

CACHE_MAX: Final = 65536
PROC_RULE: Final = "proc-outside-tree"
# Calls that can move or remove a directory: rmdir, the renames (and unlinkat with
# AT_REMOVEDIR, checked by flag).
_MOVES: Final = frozenset({84, *filemon.FAMILIES["rename"][1]})
_NR_UNLINKAT, _AT_REMOVEDIR = 263, 0x200


# --------------------------------------------------------------------------- deciding


_ALLOWED: Final = Verdict(Decision.ALLOW, None, "allowed")


class FastRules:
    """``engine.check_file`` for canonical paths, fast where it allows: per operation,
    one regex alternation of the rules covering it, in file order, one named group per
    rule, so the group that matched is the first matching rule (first match wins). An
    allowing rule or default answers with a shared ALLOW verdict; any other outcome asks
    ``engine.check_file`` itself, so refusals carry the engine's exact verdict.

    Compiling an alternation costs ~5 ms, which every governed command would pay at its
    first opens: the first :data:`WARM_UP` checks of an operation go to
    ``engine.check_file`` (per-rule patterns, already compiled; ~10-20 us a check), and
    only an operation used more often than that gets its alternation (~3 us a check)."""

    WARM_UP: Final = 200

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.compiled: dict[str, tuple[re.Pattern[str] | None, tuple[FileRule, ...]]] = {}
        self.uses: dict[str, int] = {}

    def _for(self, op: str) -> tuple[re.Pattern[str] | None, tuple[FileRule, ...]]:
        found = self.compiled.get(op)
        if found is None:
            rules = tuple(r for r in self.policy.file_rules if engine.covers(r.operations, op))
            body = "|".join(
                f"(?P<r{i}>" + "|".join(f"(?:{engine.path_glob_source(p)})" for p in r.paths) + ")"
                for i, r in enumerate(rules)
            )
            found = self.compiled[op] = (re.compile(body, re.DOTALL) if rules else None, rules)
        return found

    def check(self, op: str, path: str) -> Verdict:
        """The verdict ``engine.check_file(policy, op, path)`` gives (``path`` canonical)."""
        if op not in self.compiled:
            used = self.uses[op] = self.uses.get(op, 0) + 1
            if used <= self.WARM_UP:
                verdict = engine.check_file(self.policy, op, path)
                return _ALLOWED if verdict.decision is Decision.ALLOW else verdict
        pattern, rules = self._for(op)
        m = pattern.fullmatch(path) if pattern is not None else None
        if m is not None and m.lastgroup is not None:
            decision = rules[int(m.lastgroup[1:])].decision
        else:
            fallback = Decision.ALLOW if op in engine.READ_OPERATIONS else Decision.DENY
            decision = self.policy.file_default or fallback
        if decision is Decision.ALLOW:
            return _ALLOWED
        return engine.check_file(self.policy, op, path)


# --------------------------------------------------------------------------- the monitor


class Monitor:
    """Answers the trapped file calls of one governed tree (module docstring).

    ``inject``: the transport can inject fds (user-notify). ``check_exits``: it can stop
    an allowed open at its exit (ptrace, which cannot inject): the opened fd is then
    checked again (:meth:`opened`), which closes the window CONTINUE leaves.
    Built in the supervisor process: it reads the protected files' inodes there.
    """

    def __init__(self, plan: filemon.Plan, *, inject: bool, check_exits: bool = False) -> None:
        self.plan = plan
        self.trapped = plan.syscalls
        self.inject = inject and plan.emulate
        self.check_exits = check_exits
        # tid -> (operations, writes, device, inode) of an allowed open awaiting its exit.
        self.exits: dict[int, tuple[tuple[str, ...], bool, int, int]] = {}
        self.verdicts: dict[tuple[str, str], Verdict] = {}
        self.rules = FastRules(plan.policy)
        self.inodes = protected_inodes(plan.policy)
        self.callers = Callers()
        self.opener = standin.Opener(plan.landlock)
        self.paths = PathCalls(plan, self.opener, self.callers)
        self.terminals: terminals.Ownership | None = None  # at the first /dev/pts open

    def handle(self, sup: Supervisor, note: seccomp.Notification) -> None:
        """Answer one trapped file call (``Supervisor.handle_one`` calls this)."""
        try:
            with self.callers.calling(note.pid) as who, image.fenced(sup.tree.contains):
                take_on = None if who is None else functools.partial(self.opener.taken_on, who)
                with image.looked_up_as(take_on):  # the tracee's lookups, as the tracee
                    self._answer(sup, note)
        except Refused as why:
            self._refuse(sup, note, "?", Verdict(Decision.DENY, why.rule, why.why))
        except image.Fenced as err:
            fenced = (
                f"{err.path} leads into the open files of a process outside the governed "
                "tree; a governed process may follow only its own tree's /proc links"
            )
            self._refuse(sup, note, err.path, Verdict(Decision.DENY, PROC_RULE, fenced))
        except identity.CannotAssume as err:
            cannot = f"the monitor cannot open files as this process: {err}"
            self._refuse(sup, note, "?", Verdict(Decision.DENY, "file-identity", cannot))
        except identity.IdentityError:
            raise  # credentials not given back: supervision must end (fail closed)
        except OSError as err:  # what the kernel itself would answer (ENOENT, EFAULT, ...)
            sup.listener.fail(note.id, err.errno or errno.EACCES)
        except Exception as err:  # noqa: BLE001 — one bad call must refuse, not end supervision
            verdict = Verdict(Decision.DENY, "supervisor-error", f"the file check failed: {err!r}")
            self._refuse(sup, note, "?", verdict)

    def _answer(self, sup: Supervisor, note: seccomp.Notification) -> None:
        if note.nr in filemon.OPENS:
            self._open(sup, note)
        else:
            self._path_call(sup, note)

    # ------------------------------------------------------------------ opens

    def _open(self, sup: Supervisor, note: seccomp.Notification) -> None:
        tid = note.pid
        call = open_call(tid, note.nr, note.args)
        dirfd, path, flags = call.dirfd, call.path, call.flags
        if call.resolve & RESOLVE_IN_ROOT:
            why = "openat2 with RESOLVE_IN_ROOT cannot be checked by the file monitor"
            raise Refused("file-openat2-in-root", why)
        same = None if sup.views_changed else True
        target = resolve_open(tid, dirfd, path, flags, same)
        try:
            if openhow.restricts(call):  # RESOLVE_BENEATH & co: fail as the kernel would
                openhow.check(tid, call, target, same)
            st = target.st
            directory = st is not None and _stat.S_ISDIR(st.st_mode)
            ops = filemon.open_operations(flags, directory=directory, exists=st is not None)
            verdict = self.judge(ops, target, write=filemon.writes(flags), tid=tid)
            if st is not None:  # by kind of file (enforce.filekinds): opening what exists
                verdict = _by_kind(
                    self.plan.policy, verdict, target.path, ops=ops, flags=flags, st=st
                )
            if not self._allowed(sup, note, f"{ops[-1]} {target.path}", verdict):
                return
            refusal = self._terminal_refusal(sup, tid, target)
            if refusal is not None:
                self._refuse(sup, note, f"{ops[-1]} {target.path}", refusal)
                return
            if self._emulable(flags):
                self._stand_in(sup, note, target, call, same)
                return
            if self.check_exits:
                ids = (st.st_dev, st.st_ino) if st is not None else (-1, -1)
                self.exits[tid] = (ops, filemon.writes(flags), *ids)
            sup.listener.allow(note.id)
        finally:
            if target.fd is not None:
                os.close(target.fd)

    def _terminal_refusal(self, sup: Supervisor, tid: int, target: Target) -> Verdict | None:
        """A refusal when ``target`` is a /dev/pts terminal that is not the tree's own
        (``enforce.terminals``), whatever the file rules said."""
        index = terminals.pts_index(target.st) if target.st is not None else None
        if index is None:
            return None
        if self.terminals is None:
            self.terminals = terminals.Ownership(sup.tree.root, sup.tree.contains)
        if not self.terminals.foreign(tid, index):
            return None
        why = (
            f"{target.path} is the terminal of another session (a person's, or another "
            "program's): a governed process may use only its own terminals"
        )
        return Verdict(Decision.DENY, terminals.RULE, why, target.path)

    def _emulable(self, flags: int) -> bool:
        """The supervisor opens this for the process (``enforce.standin``). Not O_PATH:
        ADDFD refuses O_PATH files (EBADF), and an O_PATH fd reads nothing — every later
        use of it (a reopen through /proc/self/fd, a dirfd) is trapped and resolved
        again. Not O_TMPFILE: it makes a file no one else can reach, wherever it is."""
        return self.inject and not flags & (filemon.O_PATH | filemon.O_TMPFILE_BIT)

    def _stand_in(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        target: Target,
        call: OpenCall,
        same: bool | None,
    ) -> None:
        """Open the checked ``target`` for the caller the way ``standin.choose`` says,
        as the caller (never "let the kernel open it": a process that only dropped a
        capability would reopen the window a racing thread uses), and hand it over. An
        open that may write, and any open where Landlock narrows reads, is first put to
        Landlock's rules (``enforce.grants``: the supervisor is outside the tree's
        domain); a file to create is created in the directory checked, with the
        caller's umask."""
        tid, flags = note.pid, call.flags
        raw = self.callers.status(tid)
        who = self.callers.who(tid, raw)
        writes = filemon.writes(flags)
        if writes and target.st is not None and flags & filemon.O_CREAT and flags & filemon.O_EXCL:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        if target.fd is None:  # O_CREAT of a new file
            self.opener.create(sup.listener, note, target, call, who=who, status=raw, same=same)
            return
        if flags & filemon.O_CREAT and self._planted(tid, target, raw, same):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))  # the kernel's answer
        if (writes or self.plan.reads_narrowed) and not self.opener.permitted(
            tid, target, flags, same
        ):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))  # Landlock's answer
        pid = standin.pid_of(target.path)
        how = standin.choose(
            tid,
            tracee.tgid_of(raw, tid),
            flags,
            target,
            who,
            landlocked=self.plan.landlocked,
            member=None if pid is None else sup.tree.contains(pid),
        )
        if isinstance(how, standin.Open):
            self.opener.carry_out(sup.listener, note.id, target.fd, how, flags)
        elif how.tell:
            self._refuse(sup, note, target.path, Verdict(Decision.DENY, how.rule, how.why))
        else:
            sup.listener.fail(note.id, how.err)

    def _planted(self, tid: int, target: Target, status: bytes, same: bool | None) -> bool:
        """An O_CREAT open of the existing ``target`` the kernel refuses in a sticky
        directory (``filekinds.sticky_refusal``, with this host's sysctls)."""
        st = target.st
        assert st is not None
        regular, fifos = _protected()
        if _stat.S_ISDIR(st.st_mode):
            return False  # the kernel answers EISDIR first
        if not (regular or fifos) and (_stat.S_ISREG(st.st_mode) or _stat.S_ISFIFO(st.st_mode)):
            return False  # the common case: nothing to look up
        with directory(tid, os.path.dirname(target.path), same) as up:
            dir_st = os.fstat(up)
        fsuid = identity.parse(status).fsuid
        return filekinds.sticky_refusal(dir_st, st, fsuid, regular=regular, fifos=fifos)

    def checks_exit(self, tid: int) -> bool:
        """The transport must stop ``tid`` at the exit of the open just allowed."""
        return tid in self.exits

    def opened(self, sup: Supervisor, tid: int, fd: int) -> None:
        """At the exit of an open allowed for ``tid`` (ptrace): if the file it opened is
        not the one checked (a symlink or directory swapped in between) and the policy
        refuses it, kill the process before it returns to user space, tell and audit."""
        ops, write, dev, ino = self.exits.pop(tid, ((), False, -1, -1))
        if fd < 0 or not ops:
            return
        link = f"/proc/{tid}/fd/{fd}"
        try:
            target = Target(os.readlink(link), None, os.stat(link))
        except OSError:
            return  # the process is gone
        assert target.st is not None
        if (target.st.st_dev, target.st.st_ino) == (dev, ino):
            return
        verdict = self.judge(ops, target, write=write, tid=tid)
        if verdict.allowed:
            st = target.st
            device = filekinds.device_refusal(
                self.plan.policy, ops, target.path, st.st_mode, st.st_rdev
            )
            verdict = device or self._terminal_refusal(sup, tid, target) or verdict
        if verdict.allowed:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(tracee.tgid(tid), signal.SIGKILL)
        what = f"{ops[-1]} {target.path}"
        why = "the file changed between the check and the open; the process was killed: "
        why += verdict.message
        sup.tell(tid, f"agentsh: blocked by policy: {what} (rule {verdict.rule}): {why}")
        sup.record(
            event(sup, tid, what, decision="deny", rule=verdict.rule, message=why), urgent=True
        )

    # ------------------------------------------------------------------ other calls

    def _path_call(self, sup: Supervisor, note: seccomp.Notification) -> None:
        if note.nr in _MOVES or (note.nr == _NR_UNLINKAT and note.args[2] & _AT_REMOVEDIR):
            self.opener.forget()  # remembered Landlock walks may be stale now
        items = path_items(note.pid, note.nr, note.args)
        same = None if sup.views_changed else True
        judged: list[str] = []
        for item in items:
            target = resolve(note.pid, item, same)
            judged.append(target.path)
            if target.fd is not None:
                os.close(target.fd)
            verdict = self.judge(item.ops, target, write=item.ops != LINKED, tid=note.pid)
            if item.source:
                verdict = engine.stricter(verdict, self._shield(target.path))
            verdict = engine.stricter(verdict, self.paths.refusal(item, target))
            what = f"{item.ops[0]} {target.path}"
            if not verdict.allowed and item.ops == ("mkdir",) and target.st is not None:
                # mkdir of what exists fails with EEXIST whatever the policy says: say so,
                # quietly (`mkdir -p /root/x` probes every ancestor).
                sup.listener.fail(note.id, errno.EEXIST)
                return
            if not self._allowed(sup, note, what, verdict):
                return
            if self.paths.soft(item, verdict):
                self.paths.delete(sup, note, item, target, same, soft=True)
                return
        self.paths.carry_out(sup, note, items, (judged, target), same)

    def _shield(self, path: str) -> Verdict:
        rule = filemon.shields(self.plan.policy, path) if path.startswith("/") else None
        if rule is None:
            return Verdict(Decision.ALLOW, None, "no read protection reaches it", path)
        why = f"moving or linking {path} would take files out of the protection of rule {rule.name}"
        return Verdict(Decision.DENY, rule.name, why, path)

    # ------------------------------------------------------------------ deciding

    def check(self, op: str, path: str) -> Verdict:
        """``engine.check_file`` remembered per (operation, path): the policy is frozen."""
        key = (op, path)
        hit = self.verdicts.get(key)
        if hit is None:
            if len(self.verdicts) >= CACHE_MAX:
                self.verdicts.clear()
            hit = self.verdicts[key] = self.rules.check(op, path)
        return hit

    def judge(self, ops: tuple[str, ...], target: Target, *, write: bool, tid: int) -> Verdict:
        """The strictest verdict over ``ops`` on the target, its protected twin (a hard
        link to a protected inode) and agentsh's state; approve becomes deny. The
        caller's own /proc/PID entries are judged as /proc/self (what policies name)."""
        path = target.path
        if not path.startswith("/"):  # pipe:[…], socket:[…], anon_inode:…: not a file path
            return Verdict(Decision.ALLOW, None, "not a file system path", path)
        names = _proc_names(path, tid)
        st = target.st
        if st is not None and _stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            twin = self.inodes.get((st.st_dev, st.st_ino))
            names += [twin] if twin is not None and twin != path else []
        verdicts = [self.check(op, name) for op in ops for name in names]
        if write and any(under(path, p) for p in self.plan.protected):
            why = f"{path} is agentsh's own state and cannot be changed from a governed shell"
            verdicts.append(Verdict(Decision.DENY, "agentsh-state", why, path))
        verdict = verdicts[0]
        for other in verdicts[1:]:
            verdict = engine.stricter(verdict, other)
        return engine.resolve_approval(verdict, approver_available=False)

    def _allowed(
        self, sup: Supervisor, note: seccomp.Notification, what: str, verdict: Verdict
    ) -> bool:
        """Refuse (EACCES, stderr, audit) and return False, or audit as needed and return
        True. Not enforcing: a refusal is recorded as an ``audit`` event instead."""
        if verdict.allowed and verdict.decision is not Decision.AUDIT:
            return True
        if verdict.decision is Decision.AUDIT and sup.audit_down is not None:
            verdict = Verdict(Decision.DENY, "audit-unavailable", sup.audit_down, verdict.subject)
        if verdict.allowed or not self.plan.enforce:
            message = verdict.message if verdict.allowed else f"not enforced: {verdict.message}"
            sup.record(
                event(sup, note.pid, what, decision="audit", rule=verdict.rule, message=message)
            )
            return True
        self._refuse(sup, note, what, verdict)
        return False

    def _refuse(self, sup: Supervisor, note: seccomp.Notification, what: str, v: Verdict) -> None:
        rule = v.rule or "default-deny"
        sup.tell(note.pid, f"agentsh: blocked by policy: {what} (rule {rule}): {v.message}")
        sup.record(
            event(sup, note.pid, what, decision="deny", rule=v.rule, message=v.message),
            urgent=True,
        )
        sup.listener.fail(note.id, errno.EACCES)


def _by_kind(
    policy: Policy,
    verdict: Verdict,
    path: str,
    *,
    ops: tuple[str, ...],
    flags: int,
    st: os.stat_result,
) -> Verdict:
    """``verdict`` on opening ``path`` (``st``) for ``ops`` with ``flags``, with the
    verdicts by kind of file (``enforce.filekinds``): the device reliefs and refusals,
    and for a read-only open the relief for world-readable system files."""
    verdict = filekinds.device_relief(policy, verdict, path)
    refusal = filekinds.device_refusal(policy, ops, path, st.st_mode, st.st_rdev)
    if verdict.allowed and refusal is not None:
        return refusal
    if filemon.writes(flags):
        return verdict
    shown = _stat.S_ISREG(st.st_mode) or _stat.S_ISDIR(st.st_mode)
    readable = shown and bool(st.st_mode & _stat.S_IROTH)
    return filekinds.system_read_relief(policy, verdict, path, world_readable=readable)


@functools.cache
def _protected() -> tuple[int, int]:
    """fs.protected_regular and fs.protected_fifos, read at the first O_CREAT open of an
    existing file (not at every start). A kernel without them: 0; one we cannot read:
    2, the strictest (never laxer than the kernel)."""
    levels = []
    for name in ("protected_regular", "protected_fifos"):
        try:
            levels.append(int(Path(f"/proc/sys/fs/{name}").read_text()))
        except FileNotFoundError:
            levels.append(0)
        except (OSError, ValueError):
            levels.append(2)
    return levels[0], levels[1]


def _proc_names(path: str, tid: int) -> list[str]:
    """The names ``path`` is judged under: itself (the caller's own /proc/TGID written as
    /proc/self) and a thread's entry under its process's name (``filekinds.task_alias``)."""
    name = _proc_self(path, tid)
    alias = filekinds.task_alias(name)
    return [name] if alias is None else [name, alias]


def _proc_self(path: str, tid: int) -> str:
    """``path`` with the caller's own ``/proc/TGID`` (resolved from /proc/self) written
    as ``/proc/self``: a rule on /proc/self/** means the process's own entries."""
    if not path.startswith("/proc/"):
        return path
    own = f"/proc/{tracee.tgid(tid)}"
    if path == own or path.startswith(own + "/"):
        return "/proc/self" + path[len(own) :]
    return path
