"""seccomp from Python: filter installation (seccomp(2)), the user-notification protocol
(seccomp_unotify(2)), and the process-access calls a supervisor needs (pidfd_getfd(2),
process_vm_readv(2)). ctypes and ``fcntl.ioctl`` only; x86_64 only.

Struct layouts are ``struct`` formats checked against the running kernel by
:func:`check_layout` (SECCOMP_GET_NOTIF_SIZES): a kernel whose seccomp_notif is not 80
bytes is refused rather than misread.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Final, NamedTuple

from agentsh.enforce import bpf
from agentsh.enforce.errors import LayerUnavailable
from agentsh.enforce.record import dataclass

# --------------------------------------------------------------------------- constants

NR_SECCOMP: Final = 317
NR_PROCESS_VM_READV: Final = 310
NR_PIDFD_OPEN: Final = 434
NR_PIDFD_GETFD: Final = 438
PIDFD_THREAD: Final = os.O_EXCL  # pidfd_open(2) flag: a thread, not its thread group

SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_GET_ACTION_AVAIL: Final = 2
SECCOMP_GET_NOTIF_SIZES: Final = 3

FLAG_TSYNC: Final = 0x1
FLAG_LOG: Final = 0x2
FLAG_SPEC_ALLOW: Final = 0x4
FLAG_NEW_LISTENER: Final = 0x8
FLAG_TSYNC_ESRCH: Final = 0x10
FLAG_WAIT_KILLABLE_RECV: Final = 0x20

IOCTL_NOTIF_RECV: Final = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
IOCTL_NOTIF_SEND: Final = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp)
IOCTL_NOTIF_ID_VALID: Final = 0x40082102  # _IOW('!', 2, __u64)
IOCTL_NOTIF_ADDFD: Final = 0x40182103  # _IOW('!', 3, struct seccomp_notif_addfd)
IOCTL_NOTIF_SET_FLAGS: Final = 0x40082104  # _IOW('!', 4, __u64), flag passed by value

USER_NOTIF_FLAG_CONTINUE: Final = 0x1
ADDFD_FLAG_SETFD: Final = 0x1
ADDFD_FLAG_SEND: Final = 0x2
USER_NOTIF_FD_SYNC_WAKE_UP: Final = 0x1

PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39

NOTIF: Final = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data{nr, arch, ip, args[6]}
RESP: Final = struct.Struct("<QqiI")  # id, val, error, flags
ADDFD: Final = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
SIZES: Final = struct.Struct("<HHH")  # seccomp_notif, seccomp_notif_resp, seccomp_data
DATA_SIZE: Final = 64

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


def syscall(nr: int, *args: int | ctypes.c_void_p) -> int:
    """Raw syscall(2). Integers travel as 64-bit longs (a bare int would be a 32-bit C int).

    Raises:
        OSError: the call returned -1; errno as set by the kernel.
    """
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = int(_syscall(ctypes.c_long(nr), *conv))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# --------------------------------------------------------------------------- seccomp(2)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def notif_sizes() -> tuple[int, int, int]:
    """SECCOMP_GET_NOTIF_SIZES: sizes of seccomp_notif, seccomp_notif_resp, seccomp_data."""
    buf = ctypes.create_string_buffer(SIZES.size)
    syscall(NR_SECCOMP, SECCOMP_GET_NOTIF_SIZES, 0, ctypes.cast(buf, ctypes.c_void_p))
    notif, resp, data = SIZES.unpack(buf.raw)
    return notif, resp, data


def action_available(action: int) -> bool:
    """SECCOMP_GET_ACTION_AVAIL for one SECCOMP_RET_* action."""
    value = ctypes.c_uint32(action)
    try:
        syscall(NR_SECCOMP, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.c_void_p(ctypes.addressof(value)))
    except OSError:
        # EOPNOTSUPP/EINVAL: unknown action; ENOSYS/EPERM/EACCES: seccomp(2) itself is
        # refused here (an outer filter, a container profile). Either way not usable.
        return False
    return True


@dataclass(frozen=True)
class Support:
    """What this kernel offers for exec supervision. ``reason`` says what is missing."""

    user_notif: bool
    trace: bool
    sizes: tuple[int, int, int] | None
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.user_notif and self.sizes == (NOTIF.size, RESP.size, DATA_SIZE)


def probe() -> Support:
    """Ask the kernel (without installing anything) whether user-notify can work here."""
    try:
        sizes: tuple[int, int, int] | None = notif_sizes()
    except OSError as err:
        return Support(False, False, None, f"SECCOMP_GET_NOTIF_SIZES failed: {err.strerror}")
    notif = action_available(bpf.RET_USER_NOTIF)
    trace = action_available(bpf.RET_TRACE)
    reason = ""
    if not notif:
        reason = "the kernel does not offer SECCOMP_RET_USER_NOTIF"
    elif sizes != (NOTIF.size, RESP.size, DATA_SIZE):
        reason = f"unexpected seccomp notification struct sizes {sizes}"
    return Support(notif, trace, sizes, reason)


def check_layout() -> None:
    """Refuse to speak the notify protocol with struct sizes we do not know.

    Raises:
        LayerUnavailable: the kernel's sizes differ from 80/24/64, or it has no user-notify.
    """
    support = probe()
    if not support.usable:
        raise LayerUnavailable(f"exec supervision unavailable: {support.reason}")


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): setuid bits and file caps stop working for this
    process and everything it starts; required for an unprivileged seccomp(2)."""
    if _prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def no_new_privs() -> bool:
    return bool(_prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)


def install(prog: bytes, *, listener: bool, flags: int = 0) -> int | None:
    """Install ``prog`` (a sock_filter array) on the calling thread: seccomp(2)
    SECCOMP_SET_MODE_FILTER. Needs no_new_privs or CAP_SYS_ADMIN.

    Returns:
        The listener fd (close-on-exec) when ``listener``, else None.

    Raises:
        OSError: EBUSY when ``listener`` and a filter already in this thread's chain has a
            listener (we are nested inside another supervisor: do not stack); EINVAL for
            a program the kernel refuses; EACCES without no_new_privs or CAP_SYS_ADMIN.
    """
    if len(prog) % 8 or not 0 < len(prog) // 8 <= bpf.BPF_MAXINSNS:
        raise ValueError(f"not a sock_filter array: {len(prog)} bytes")
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if listener:
        flags |= FLAG_NEW_LISTENER
    ret = syscall(
        NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.c_void_p(ctypes.addressof(fprog))
    )
    if not listener:
        return None
    os.set_inheritable(ret, False)  # the kernel already sets O_CLOEXEC; make it explicit
    return ret


# --------------------------------------------------------------------------- seccomp_unotify(2)


class Notification(NamedTuple):
    """One ``struct seccomp_notif``. ``pid`` is the calling thread's id as the supervisor
    sees it; ``args`` are the raw 64-bit register values. A NamedTuple, not a record: one
    is built per trapped syscall, on the supervisor's hot path."""

    id: int
    pid: int
    flags: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, int, int, int, int, int]


class Listener:
    """The supervisor's end of a notify listener fd (seccomp_unotify(2) ioctls)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def recv(self) -> Notification:
        """SECCOMP_IOCTL_NOTIF_RECV into a zeroed buffer (a nonzero byte gives EINVAL).

        Raises:
            OSError: ENOENT when the notification vanished (its thread was killed) or no
                task uses the filter any more; EINTR on a signal.
        """
        buf = bytearray(NOTIF.size)
        fcntl.ioctl(self.fd, IOCTL_NOTIF_RECV, buf, True)
        nid, pid, flags, nr, arch, ip, *args = NOTIF.unpack(buf)
        return Notification(nid, pid, flags, nr, arch, ip, tuple(args))

    def _send(self, nid: int, val: int, error: int, flags: int) -> bool:
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_SEND, RESP.pack(nid, val, error, flags))
        except OSError as err:
            # ENOENT: the target died or was interrupted, or it already took its answer;
            # EINPROGRESS: answered, but the target has not woken up to take it yet.
            if err.errno in (errno.ENOENT, errno.EINPROGRESS):
                return False
            raise
        return True

    def allow(self, nid: int) -> bool:
        """Let the kernel run the syscall as issued (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
        Returns False when the notification is gone or was already answered."""
        return self._send(nid, 0, 0, USER_NOTIF_FLAG_CONTINUE)

    def fail(self, nid: int, err: int) -> bool:
        """Make the syscall fail with ``err`` without running it (error = -err)."""
        if not 0 < err <= 4095:
            raise ValueError(f"errno {err} outside 1..4095")
        return self._send(nid, 0, -err, 0)

    def succeed(self, nid: int, val: int) -> bool:
        """Make the syscall return ``val`` without running it."""
        return self._send(nid, val, 0, 0)

    def id_valid(self, nid: int) -> bool:
        """SECCOMP_IOCTL_NOTIF_ID_VALID: the target still waits for this answer."""
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_ID_VALID, struct.pack("<Q", nid))
        except OSError as err:
            if err.errno == errno.ENOENT:
                return False
            raise
        return True

    def set_flags(self, flags: int) -> bool:
        """SECCOMP_IOCTL_NOTIF_SET_FLAGS (flag by value; kernel >= 6.6). Returns False when
        the kernel does not know the ioctl or the flag (EINVAL/ENOTTY)."""
        try:
            fcntl.ioctl(self.fd, IOCTL_NOTIF_SET_FLAGS, flags)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOTTY):
                return False
            raise
        return True

    def addfd(self, nid: int, srcfd: int, *, newfd: int | None = None, cloexec: bool = True) -> int:
        """SECCOMP_IOCTL_NOTIF_ADDFD: install a copy of ``srcfd`` in the target (at
        ``newfd`` when given) and return its number there. The syscall still waits for
        an answer."""
        flags = ADDFD_FLAG_SETFD if newfd is not None else 0
        req = ADDFD.pack(nid, flags, srcfd, newfd or 0, os.O_CLOEXEC if cloexec else 0)
        return _addfd(self.fd, req)


def _addfd(fd: int, req: bytes) -> int:
    # fcntl.ioctl with a bytes argument returns the copied buffer, not the ioctl's return
    # value; ADDFD returns the new fd number, so call ioctl(2) through libc.
    buf = ctypes.create_string_buffer(req, len(req))
    ret = int(_libc.ioctl(fd, ctypes.c_ulong(IOCTL_NOTIF_ADDFD), buf))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


# --------------------------------------------------------------------------- process access


def pidfd_open(pid: int) -> int:
    """pidfd_open(2): a close-on-exec fd that names ``pid`` for as long as it is open."""
    return os.pidfd_open(pid)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """pidfd_getfd(2): a close-on-exec duplicate of the target's ``targetfd`` (the same
    open file description: same access mode, offset and flags)."""
    return syscall(NR_PIDFD_GETFD, pidfd, targetfd, 0)


def duplicate_fd(tid: int, tgid: int, fd: int) -> int:
    """pidfd_getfd(2) of thread ``tid``'s descriptor ``fd``, through the thread's own pidfd
    (PIDFD_THREAD, Linux >= 6.9: its fd table even if it has one of its own), else its
    thread group's (``tgid``).

    Raises:
        OSError: the thread is gone (ESRCH), ``fd`` is not open (EBADF), EPERM.
    """
    try:
        pidfd = os.pidfd_open(tid, PIDFD_THREAD)
    except OSError:
        pidfd = os.pidfd_open(tgid)
    try:
        return pidfd_getfd(pidfd, fd)
    finally:
        os.close(pidfd)


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


def process_vm_readv(pid: int, addr: int, size: int) -> bytes:
    """process_vm_readv(2): up to ``size`` bytes of ``pid``'s memory at ``addr``. A read
    that runs into an unmapped page returns the bytes before it.

    Raises:
        OSError: EFAULT when nothing at ``addr`` is readable; ESRCH when ``pid`` is gone.
    """
    buf = ctypes.create_string_buffer(size)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _IoVec(ctypes.c_void_p(addr), size)
    n = syscall(
        NR_PROCESS_VM_READV,
        pid,
        ctypes.c_void_p(ctypes.addressof(local)),
        1,
        ctypes.c_void_p(ctypes.addressof(remote)),
        1,
        0,
    )
    return buf.raw[:n]
