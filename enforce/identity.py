"""A tracee's file credentials, and taking them on for one call.

The kernel checks an open against the opener's file system ids (fsuid, fsgid), its
supplementary groups and its effective capabilities (path_resolution(7),
capabilities(7)). When the supervisor opens a file *for* a tracee (``enforce.fileguard``
hands the process the very file it checked), it must be exactly as able as that process:
a process that dropped one capability, or changed its uid, would otherwise get a file it
could not open itself — and, before this module, such a process made the monitor let the
kernel open the path instead, reopening the window a racing thread uses to swap a
protected path in after the check.

:func:`assumed` takes a tracee's :class:`Identity` on for the duration of a ``with``
block on the calling thread and gives the supervisor's back: setgroups(2), setfsgid(2),
setfsuid(2) and capset(2) as raw system calls, which change only the calling thread
(glibc's wrappers would change every thread of the process).

Ordering, and why:
  enter: groups, fsgid, fsuid (CAP_SETGID/CAP_SETUID are still effective), then the
         effective capabilities (setfsuid to a non-zero id clears the file system
         capabilities by itself, so the capabilities are set last, to the exact set);
  leave: the effective capabilities first (the id calls need them back), then fsuid,
         fsgid, groups — and every value is read back. A value that did not come back
         raises :class:`IdentityError`: the supervisor must not go on with credentials
         it does not know.

A tracee in another user namespace (it unshared one) holds its capabilities over that
namespace only: it is taken on with none, so the supervisor can open only what the ids
alone allow (which refuses, never grants, what the kernel would decide differently).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from collections.abc import Iterator
from typing import Final, NamedTuple

_NR_SETGROUPS, _NR_SETFSUID, _NR_SETFSGID = 116, 122, 123  # x86_64
_NR_CAPGET, _NR_CAPSET = 125, 126
_CAP_V3: Final = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
_NO_ID: Final = 0xFFFFFFFF  # (uid_t)-1: setfsuid/setfsgid change nothing, report the id
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class IdentityError(Exception):
    """The supervisor could not give its own credentials back: it must stop."""


class CannotAssume(IdentityError):
    """A tracee's credentials could not be taken on; the supervisor's are unchanged."""


class Identity(NamedTuple):
    """What a file open is checked against: fsuid, fsgid, supplementary groups (sorted)
    and the effective capability mask."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    caps: int


_FIELD: Final = re.compile(rb"^(Uid|Gid|Groups|CapEff):[ \t]*([^\n]*)", re.MULTILINE)


def parse(status: bytes) -> Identity:
    """The identity a ``/proc/TID/status`` text describes (ids as mapped into the reader's
    user namespace).

    Raises:
        ValueError: a field is missing or malformed.
    """
    fields = {k: v.split() for k, v in _FIELD.findall(status)}
    try:
        return Identity(
            fsuid=int(fields[b"Uid"][3]),
            fsgid=int(fields[b"Gid"][3]),
            groups=tuple(sorted(int(g) for g in fields[b"Groups"])),
            caps=int(fields[b"CapEff"][0], 16),
        )
    except (KeyError, IndexError) as err:
        raise ValueError(f"not a /proc status text: no {err}") from None


def of(status: bytes, tid: int, *, ours: bool | None = None) -> Identity:
    """:func:`parse`, with no capabilities when thread ``tid`` lives in another user
    namespace than the caller (its capabilities do not reach our files). ``ours``: the
    caller has compared the namespaces already (None: compare them here).

    Raises:
        OSError: the thread is gone (its namespace link cannot be read).
    """
    who = parse(status)
    if not (ours if ours is not None else userns(tid) == userns("self")):
        who = who._replace(caps=0)
    return who


def userns(tid: int | str) -> tuple[int, int]:
    """The user namespace thread ``tid`` (or ``"self"``) lives in: device and inode of its
    /proc/TID/ns/user link.

    Raises:
        OSError: the thread is gone.
    """
    st = os.stat(f"/proc/{tid}/ns/user")
    return st.st_dev, st.st_ino


def current() -> Identity:
    """The calling thread's identity."""
    with open("/proc/thread-self/status", "rb") as f:
        return parse(f.read())


def _now() -> Identity:
    """The calling thread's identity, read by system calls that report on the calling
    thread only (setfsuid/setfsgid with -1 change nothing and return the id,
    getgroups(2), capget(2)): what :func:`current` says, without /proc (~60 us a read
    here, on every take-on's way back)."""
    return Identity(
        int(_libc.syscall(_NR_SETFSUID, ctypes.c_long(_NO_ID))),
        int(_libc.syscall(_NR_SETFSGID, ctypes.c_long(_NO_ID))),
        tuple(sorted(os.getgroups())),
        _words(_capget(), "effective"),
    )


# --------------------------------------------------------------------------- syscalls


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_CapSets = ctypes.Array[_CapData]  # [0]: capabilities 0-31, [1]: 32-63


def _capget() -> _CapSets:
    """capget(2) of the calling thread."""
    data = (_CapData * 2)()
    if _libc.syscall(_NR_CAPGET, ctypes.byref(_CapHeader(_CAP_V3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise IdentityError(f"capget: {os.strerror(err)}")
    return data


def _set_effective(mask: int) -> None:
    """capset(2): the calling thread's effective set becomes ``mask``; permitted and
    inheritable stay as they are."""
    data = _capget()
    data[0].effective, data[1].effective = mask & 0xFFFFFFFF, mask >> 32
    if _libc.syscall(_NR_CAPSET, ctypes.byref(_CapHeader(_CAP_V3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise IdentityError(f"capset(effective={mask:#x}): {os.strerror(err)}")


def _words(data: _CapSets, name: str) -> int:
    return int(getattr(data[0], name)) | int(getattr(data[1], name)) << 32


def _set_id(nr: int, value: int, what: str) -> None:
    """setfsuid(2)/setfsgid(2): they report no error, so the id is read back."""
    _libc.syscall(nr, ctypes.c_long(value))
    now = _libc.syscall(nr, ctypes.c_long(_NO_ID))
    if now != value:
        raise IdentityError(f"{what} {value}: still {now}")


def _set_groups(groups: tuple[int, ...]) -> None:
    """setgroups(2) of the calling thread only."""
    array = (ctypes.c_uint32 * len(groups))(*groups)
    if _libc.syscall(_NR_SETGROUPS, ctypes.c_long(len(groups)), array) != 0:
        err = ctypes.get_errno()
        raise IdentityError(f"setgroups({list(groups)}): {os.strerror(err)}")


# --------------------------------------------------------------------------- taking on


@contextlib.contextmanager
def assumed(who: Identity, mine: Identity) -> Iterator[None]:
    """Within the block, the calling thread opens files as ``who``; ``mine`` (this
    thread's own identity, :func:`current`) is restored on the way out, even after an
    exception.

    Raises:
        CannotAssume: ``who`` holds a capability this thread may not take, or an id could
            not be set (the block does not run; this thread's credentials are back).
        IdentityError: a credential could not be restored.
    """
    saved = _capget()
    permitted, effective = _words(saved, "permitted"), _words(saved, "effective")
    if who.caps & ~permitted:
        raise CannotAssume(f"capabilities {who.caps & ~permitted:#x} are not ours to take")
    # Only what differs is set, and only what was set is undone: setgroups(2) needs
    # CAP_SETGID even to set the groups a thread already has.
    changed: list[str] = []
    try:
        try:
            _take_on(who, mine, changed)
        except IdentityError as err:
            raise CannotAssume(str(err)) from None
        yield
    finally:
        _restore(mine, effective, changed)


def _take_on(who: Identity, mine: Identity, changed: list[str]) -> None:
    """Set what differs; ``changed`` lists what was set (a failed call set nothing)."""
    if who.groups != mine.groups:
        _set_groups(who.groups)
        changed.append("groups")
    if who.fsgid != mine.fsgid:
        _set_id(_NR_SETFSGID, who.fsgid, "setfsgid")
        changed.append("fsgid")
    if who.fsuid != mine.fsuid:
        _set_id(_NR_SETFSUID, who.fsuid, "setfsuid")
        changed.append("fsuid")
    _set_effective(who.caps)


def _restore(mine: Identity, effective: int, changed: list[str]) -> None:
    """Undo ``changed`` (capabilities first: the id calls need them), then check."""
    _set_effective(effective)
    if "fsuid" in changed:
        _set_id(_NR_SETFSUID, mine.fsuid, "setfsuid")
    if "fsgid" in changed:
        _set_id(_NR_SETFSGID, mine.fsgid, "setfsgid")
    if "groups" in changed:
        _set_groups(mine.groups)
    back = _now()
    if back != mine or _words(_capget(), "effective") != effective:
        raise IdentityError(f"credentials not restored: {back} instead of {mine}")
