"""How the supervisor opens, in a tracee's stead, the very file the monitor checked.

Letting the kernel run a checked open (CONTINUE) makes it look the path up again, in the
tracee's memory, after the check: a second thread that flips the path between a harmless
name and a protected one wins that race within a few tries (measured: ``/dev/null``,
``/proc/self/stat``, ``/proc/cpuinfo`` and ``/dev/tty`` as the harmless name each leaked
``~/.ssh/id_rsa`` within 10 opens). So every open the monitor allows is carried out by
the supervisor on the object it resolved and checked, and the file is handed over
(``fileguard``: SECCOMP_IOCTL_NOTIF_ADDFD). :func:`choose` says how, per kind of file:

- regular files, directories, devices, sockets (ENXIO, as for anyone), FIFOs: reopened
  through the checked O_PATH fd, as the tracee (``enforce.identity``); a FIFO opened
  blocking waits for its other end in a thread of its own (``Open.wait``);
- terminals (``/dev/pts/N``, ``/dev/ttyN``, ``/dev/console``): with O_NOCTTY added — the
  supervisor must not become their controller, and neither does the tracee (a session
  leader that wants one as its controlling terminal takes it with TIOCSCTTY, as
  login_tty(3) does);
- ``/dev/tty``: the tracee's controlling terminal itself (``tty_nr`` in its ``stat``),
  reopened through one of the tracee's own descriptors of it, else its devpts node; no
  controlling terminal is ENXIO, as the kernel says;
- procfs, the tracee's own ``/proc/PID``: as the supervisor (a process may always read its
  own entries); another process's: as the tracee, and — when the tree is in a Landlock
  domain, which keeps it from inspecting processes outside it — only the entries anyone
  may read (:data:`PUBLIC`) of a process outside the tree; everything else there is
  EACCES, as Landlock answers. ``/proc/sys`` of a tracee in another network, UTS, IPC or
  user namespace is refused: the supervisor's lookup would show its own namespace's
  values.

:class:`Opener` carries the choice out and answers the notification with the file;
``fileguard`` judges first and calls it for every allowed open. An open that may write
(or read, where Landlock narrows reads) is first put to the tree's Landlock rules
(:meth:`Opener.permitted`, ``enforce.grants``: the supervisor is outside the domain); a
file to create is created in the directory checked with the caller's mode and umask
(:meth:`Opener.create`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import signal
import stat as _stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

from agentsh.enforce import filecalls, filemon, identity, landlock, seccomp
from agentsh.enforce.filecalls import OpenCall, Target, proc_dev
from agentsh.enforce.grants import Grants, rename_refusal
from agentsh.enforce.identity import Identity
from agentsh.enforce.landlock import Ruleset

O_NOCTTY: Final = os.O_NOCTTY
WAITING_MAX: Final = 16  # opens finished by threads of their own (Opener._later)
# Flags of the caller's open that the reopen of the checked file drops: it exists.
_REOPEN_DROP: Final = filemon.O_NOFOLLOW | filemon.O_CREAT | filemon.O_EXCL
_SETFL: Final = os.O_APPEND | os.O_DIRECT | os.O_NOATIME  # not O_ASYNC: open(2) ignores it
_libc = ctypes.CDLL(None, use_errno=True)
_SIGSET = ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))  # glibc's sigset_t
_ALL_SIGNALS = _SIGSET()
_libc.sigfillset(_ALL_SIGNALS)  # the kernel leaves SIGKILL and SIGSTOP deliverable

# Entries of /proc/PID that any process may open (no ptrace access check at open).
PUBLIC: Final = frozenset(
    {"", "stat", "status", "statm", "cmdline", "comm", "cgroup", "cpuset", "limits"}
    | {"sched", "schedstat", "loginuid", "sessionid", "oom_score", "oom_score_adj"}
    | {"oom_adj", "mountinfo", "mounts", "wchan", "task", "uid_map", "gid_map"}
    | {"setgroups", "projid_map", "cpu_resctrl_groups", "timens_offsets"}
)
_PID_PATH: Final = re.compile(r"/proc/(\d+)(?:/task/\d+)?(?:/([^/]*))?")
_TTY_MAJORS: Final = frozenset({4, *range(136, 144)})  # ttyN, pts
_DEV_TTY, _DEV_CONSOLE = os.makedev(5, 0), os.makedev(5, 1)
_NAMESPACES: Final = ("net", "uts", "ipc", "user")


class Open(NamedTuple):
    """Open ``path`` (None: the checked O_PATH fd, through /proc/self/fd) with ``flags``
    as ``who`` (None: as the supervisor); ``wait``: the open may block, so it runs in a
    thread of its own."""

    path: str | None
    flags: int
    who: Identity | None
    wait: bool = False


class Refusal(NamedTuple):
    """Answer ``err`` without opening. ``tell``: a refusal of agentsh's own (stderr and
    an audit event naming ``rule``, saying ``why``); else the kernel's own answer,
    given quietly."""

    err: int
    rule: str
    why: str
    tell: bool = False


def choose(
    tid: int,
    tgid: int,
    flags: int,
    target: Target,
    who: Identity | None,
    *,
    landlocked: bool,
    member: bool | None = None,
) -> Open | Refusal:
    """How to open the checked ``target`` (its O_PATH fd held) for thread ``tid`` of
    process ``tgid``, whose identity is ``who`` (None: the supervisor's own).
    ``member``: the process a ``/proc/PID`` path names is in the governed tree (only
    asked of such paths; None when not known)."""
    assert target.st is not None
    mode, rdev = target.st.st_mode, target.st.st_rdev
    if target.st.st_dev == proc_dev():
        return _proc(
            target.path, flags, who, tid=tid, tgid=tgid, fenced=landlocked and member is False
        )
    if _stat.S_ISCHR(mode) and rdev == _DEV_TTY:
        return _controlling_terminal(tid, flags)
    if _stat.S_ISCHR(mode) and (os.major(rdev) in _TTY_MAJORS or rdev == _DEV_CONSOLE):
        return Open(None, flags | O_NOCTTY, who)
    if _stat.S_ISFIFO(mode):
        return Open(None, flags, who, wait=not flags & os.O_NONBLOCK)
    return Open(None, flags, who)


def landlock_needs(flags: int, *, exists: bool, directory: bool = False) -> int:
    """The Landlock rights an open with ``flags`` needs (file_open and path_mknod hooks):
    READ_FILE/WRITE_FILE by access mode (READ_DIR for a directory; mode 3, ioctl only,
    needs neither), TRUNCATE for O_TRUNC of a file that exists, MAKE_REG in the directory
    for one that does not."""
    mode = flags & filemon.O_ACCMODE
    read = landlock.FS_READ_DIR if directory else landlock.FS_READ_FILE
    need = read if mode in (os.O_RDONLY, os.O_RDWR) else 0
    need |= landlock.FS_WRITE_FILE if mode in (os.O_WRONLY, os.O_RDWR) else 0
    if not exists:
        return need | landlock.FS_MAKE_REG
    return need | (landlock.FS_TRUNCATE if flags & filemon.O_TRUNC else 0)


def _umask(status: bytes) -> int:
    """``Umask:`` of a /proc status text (022 when absent)."""
    m = re.search(rb"^Umask:\s*([0-7]+)", status, re.MULTILINE)
    return int(m.group(1), 8) if m else 0o022


def pid_of(path: str) -> int | None:
    """The process a ``/proc/PID/...`` path names, else None."""
    m = _PID_PATH.match(path)
    return int(m.group(1)) if m else None


def _proc(
    path: str, flags: int, who: Identity | None, *, tid: int, tgid: int, fenced: bool
) -> Open | Refusal:
    """``fenced``: the path's process is outside the tree and the tree is Landlocked."""
    m = _PID_PATH.match(path)
    if m is None:
        if path.startswith("/proc/sys/") and _other_namespace(tid):
            why = f"{path} would show the supervisor's namespace, not the process's"
            return Refusal(errno.EACCES, "file-namespace", why, tell=True)
        return Open(None, flags, who)
    if int(m.group(1)) == tgid:
        return Open(None, flags, None)
    if fenced and (m.group(2) or "") not in PUBLIC:
        why = f"{path}: a governed process may not inspect a process outside its tree"
        return Refusal(errno.EACCES, "landlock-ptrace", why)
    return Open(None, flags, who)


def _other_namespace(tid: int) -> bool:
    try:
        return any(
            os.stat(f"/proc/{tid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino
            for ns in _NAMESPACES
        )
    except OSError:
        return True


def _controlling_terminal(tid: int, flags: int) -> Open | Refusal:
    """``/dev/tty`` for ``tid``: its controlling terminal, through a descriptor it holds
    (fds 0-2 first) or its devpts node."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        tty = int(fields[4])  # field 7, tty_nr: the 3rd field after the command's ")"
    except (OSError, IndexError, ValueError):
        tty = 0
    if tty == 0:
        return Refusal(errno.ENXIO, "no-controlling-terminal", "no controlling terminal")
    dev = os.makedev((tty >> 8) & 0xFFF, (tty & 0xFF) | ((tty >> 12) & 0xFFF00))
    for fd in _fds(tid):
        link = f"/proc/{tid}/fd/{fd}"
        try:
            st = os.stat(link)
        except OSError:
            continue
        if _stat.S_ISCHR(st.st_mode) and st.st_rdev == dev:
            return Open(link, flags | O_NOCTTY, None)
    if 136 <= os.major(dev) < 144:
        number = (os.major(dev) - 136) * 256 + os.minor(dev)
        return Open(f"/proc/{tid}/root/dev/pts/{number}", flags | O_NOCTTY, None)
    return Refusal(errno.ENXIO, "no-controlling-terminal", "its terminal cannot be reopened")


def _fds(tid: int) -> list[int]:
    try:
        names = os.listdir(f"/proc/{tid}/fd")
    except OSError:
        return []
    fds = sorted(int(n) for n in names if n.isdigit())
    return [fd for fd in fds if fd <= 2] + [fd for fd in fds if fd > 2]


# --------------------------------------------------------------------------- carrying out


class Opener:
    """Carries out :func:`choose`'s :class:`Open` for a notification and answers it with
    the file (SECCOMP_IOCTL_NOTIF_ADDFD + SEND), on the supervisor's thread or, for an
    open that waits, on a thread of its own."""

    def __init__(self, ruleset: Ruleset | None) -> None:
        self.me: Identity | None = None  # the supervisor's, at the first take-on
        self.waiting = 0  # opens waiting in threads of their own
        self.grants = Grants(ruleset) if ruleset is not None else None
        self.ns = os.stat("/proc/self/ns/mnt").st_ino  # ours: the tree's while ``same``
        self.umask = _umask(Path("/proc/self/status").read_bytes())

    def forget(self) -> None:
        """A directory was renamed or removed: Landlock walks must be done again."""
        if self.grants is not None:
            self.grants.forget()

    def _allows(
        self, tid: int, parent: int, entry: os.stat_result | None, need: int, same: bool | None
    ) -> bool:
        if self.grants is None:
            return True
        return self.grants.allows(tid, parent, entry, need, ns=self.ns if same else None)

    def permitted(self, tid: int, target: Target, flags: int, same: bool | None) -> bool:
        """Landlock would let ``tid`` make this open of ``target`` (to be created when
        its stat is None): :func:`landlock_needs`, asked by :meth:`granted`."""
        st = target.st
        directory = st is not None and _stat.S_ISDIR(st.st_mode)
        need = landlock_needs(flags, exists=st is not None, directory=directory)
        return self.granted(tid, target, need, same)

    def granted(self, tid: int, target: Target, need: int, same: bool | None) -> bool:
        """Landlock grants ``tid`` the rights ``need`` on ``target``: the rules on it (a
        directory's own, or a file's file rights) and above it. Always without
        Landlock, or for what is not a path."""
        if self.grants is None or not target.path.startswith("/"):
            return True
        st = target.st
        if st is not None and _stat.S_ISDIR(st.st_mode):  # its own rules count too
            with filecalls.directory(tid, target.path, same) as itself:
                return self._allows(tid, itself, None, need, same)
        with filecalls.directory(tid, os.path.dirname(target.path), same) as up:
            return self._allows(tid, up, st, need, same)

    def allows_in(self, tid: int, directory: int, need: int, same: bool | None) -> bool:
        """Landlock grants ``tid`` the rights ``need`` in ``directory`` (an fd)."""
        return self._allows(tid, directory, None, need, same)

    @contextlib.contextmanager
    def umask_of(self, status: bytes) -> Iterator[None]:
        """The caller's umask (``status``: its /proc status text) for files made in the
        block. umask(2) is per process: no other supervisor thread creates files."""
        mask = _umask(status)
        old = os.umask(mask) if mask != self.umask else None
        try:
            yield
        finally:
            if old is not None:
                os.umask(old)

    def rename_refusal(
        self,
        tid: int,
        old: tuple[int, bytes],
        new: tuple[int, bytes],
        flags: int,
        same: bool | None,
        *,
        link: bool = False,
    ) -> int:
        """``grants.rename_refusal`` (0 without Landlock)."""
        if self.grants is None:
            return 0
        ns = self.ns if same else os.stat(f"/proc/{tid}/ns/mnt").st_ino
        return rename_refusal(self.grants, tid, old, new, flags=flags, ns=ns, link=link)

    def removable(self, tid: int, parent: int, *, directory: bool, same: bool | None) -> bool:
        """Landlock would let ``tid`` remove a file (or a directory) from ``parent``."""
        need = landlock.FS_REMOVE_DIR if directory else landlock.FS_REMOVE_FILE
        return self._allows(tid, parent, None, need, same)

    def create(
        self,
        listener: seccomp.Listener,
        note: seccomp.Notification,
        target: Target,
        call: OpenCall,
        *,
        who: Identity | None,
        status: bytes,
        same: bool | None,
    ) -> None:
        """Create the file ``target`` names (it did not exist when checked) in the
        directory checked, if Landlock's rules let the caller, as ``who``, with the
        caller's mode and umask (``status``: its /proc status text), and hand it over.
        Never through a symlink (one made there since the check is refused, ELOOP);
        should the name exist by now, that file is opened — the name is the one the
        policy judged."""
        nid, tid = note.id, note.pid
        parent, name = os.path.split(target.path)
        flags = call.flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            with filecalls.directory(tid, parent, same) as up:
                if not self._allows(tid, up, None, landlock_needs(flags, exists=False), same):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))  # Landlock's
                with self.umask_of(status), self.taken_on(who):
                    src = os.open(name, flags, call.mode, dir_fd=up)
        except OSError as err:
            listener.fail(nid, err.errno or errno.EACCES)
            return
        _hand_over(listener, nid, src, call.flags)

    def taken_on(self, who: Identity | None) -> contextlib.AbstractContextManager[None]:
        """The context in which this thread opens files as ``who`` (None: as itself)."""
        if who is None:
            return contextlib.nullcontext()
        if self.me is None:
            self.me = identity.current()
        return identity.assumed(who, self.me)

    def carry_out(
        self, listener: seccomp.Listener, nid: int, opath: int, how: Open, flags: int
    ) -> None:
        """Open what ``how`` names (``opath``: the checked file's O_PATH fd) with its
        flags, as its identity, and hand it over to notification ``nid`` (``flags`` are
        the caller's). Opened non-blocking: an open that would wait (a lease held on the
        file, a FIFO without its other end) must not stall the single-threaded
        supervisor, so it is finished by a thread of its own (:meth:`_later`) — never
        left to the kernel, which would look the path up again after the check.
        O_NONBLOCK is then cleared unless the caller asked for it."""
        path = how.path or f"/proc/self/fd/{opath}"
        how = how._replace(path=path, flags=(how.flags & ~_REOPEN_DROP) | os.O_CLOEXEC)
        if how.wait:
            self._later(listener, nid, opath, how, flags)
            return
        try:
            with self.taken_on(how.who):
                src = os.open(path, how.flags | os.O_NONBLOCK)
        except BlockingIOError as err:
            if flags & os.O_NONBLOCK:  # the caller's own open would say the same
                listener.fail(nid, err.errno or errno.EWOULDBLOCK)
            else:
                self._later(listener, nid, opath, how, flags)
            return
        except OSError as err:
            listener.fail(nid, err.errno or errno.EACCES)
            return
        _hand_over(listener, nid, src, flags)

    def _later(
        self, listener: seccomp.Listener, nid: int, opath: int, how: Open, flags: int
    ) -> None:
        """Finish an open that waits in a thread: the notification is answered from
        there, when the open returns. ``opath`` (which ``how.path`` may name through
        /proc/self/fd) is kept open meanwhile. At most :data:`WAITING_MAX` at once;
        beyond that the call fails with EAGAIN."""
        if self.waiting >= WAITING_MAX:
            listener.fail(nid, errno.EAGAIN)
            return
        held = os.dup(opath)  # the caller closes its own when this returns
        path = (how.path or "").replace(f"/proc/self/fd/{opath}", f"/proc/self/fd/{held}")
        self.waiting += 1

        def work() -> None:
            try:
                with self.taken_on(how.who):  # credentials are per thread: here too
                    src = os.open(path, how.flags)
            except Exception as err:  # noqa: BLE001 — the caller waits for an answer
                code = err.errno if isinstance(err, OSError) and err.errno else errno.EACCES
                with contextlib.suppress(OSError):
                    listener.fail(nid, code)
            else:
                _hand_over(listener, nid, src, flags)
            finally:
                os.close(held)
                self.waiting -= 1

        threading.Thread(target=work, name=f"open-{nid}", daemon=True).start()


def _hand_over(listener: seccomp.Listener, nid: int, src: int, flags: int) -> None:
    """Give ``src`` to the notification's caller as its syscall's result (closing ours);
    O_NONBLOCK is cleared unless ``flags`` (the caller's) asked for it."""
    try:
        if not flags & os.O_NONBLOCK:  # F_SETFL sets only these of the open's flags
            fcntl.fcntl(src, fcntl.F_SETFL, flags & _SETFL)
        addfd_send(listener.fd, nid, src, cloexec=bool(flags & os.O_CLOEXEC))
    except OSError as err:
        if err.errno != errno.ENOENT:  # ENOENT: the caller is gone
            with contextlib.suppress(OSError):
                listener.fail(nid, err.errno or errno.EACCES)
    finally:
        os.close(src)


def addfd_send(listener: int, nid: int, srcfd: int, *, cloexec: bool) -> int:
    """SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND (seccomp_unotify(2), kernel
    >= 5.14): install a copy of ``srcfd`` in the target and answer the notification with
    its number, atomically. Returns that number.

    Every catchable signal is blocked for the call. The kernel marks the notification
    answered before it waits for the target to take the fd; a signal that interrupts that
    wait withdraws the fd but not the answer, and the target's syscall returns 0 — an open
    "succeeds" with fd 0, stdin (seen here: 849 of 917 opens under a stream of SIGCHLD,
    which the supervisor gets from every thread it holds at an exec boundary). A blocked
    signal does not interrupt the wait; it is delivered when the call returns. What still
    interrupts it is a debugger attaching to the supervisor (py-spy, gdb, strace -p): the
    governed tree cannot (Landlock's ptrace rule and the filter keep it out), but an
    operator debugging a live supervisor can make a traced open return 0.

    Raises:
        OSError: ENOENT when the notification is gone; EMFILE when the target is full.
    """
    flags = os.O_CLOEXEC if cloexec else 0
    req = seccomp.ADDFD.pack(nid, seccomp.ADDFD_FLAG_SEND, srcfd, 0, flags)
    buf = ctypes.create_string_buffer(req, len(req))
    saved = _SIGSET()  # through libc: signal.pthread_sigmask costs ~200 us a pair here
    _libc.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS, saved)
    try:
        ret = int(_libc.ioctl(listener, ctypes.c_ulong(seccomp.IOCTL_NOTIF_ADDFD), buf))
        err = ctypes.get_errno()
    finally:
        _libc.pthread_sigmask(signal.SIG_SETMASK, saved, None)
    if ret == -1:
        raise OSError(err, os.strerror(err))
    return ret
