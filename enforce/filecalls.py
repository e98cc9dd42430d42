"""What a trapped file call names, and where that is: the path arguments read from the
tracee (process_vm_readv(2)), each call's operations on each path, and the resolution of a
path as the tracee's kernel will resolve it (its root, cwd or dirfd, symlinks, ``..``,
``/proc/self`` and ``/proc/PID/{root,cwd,fd}`` as the tracee's), down to the canonical path
``enforce.fileguard`` decides on.

A final component that is not followed (unlink, rename, O_NOFOLLOW, O_CREAT of a new file)
resolves to canonical parent + name. An error the resolution meets (ENOENT, ENOTDIR,
ELOOP) is raised as the kernel would give it: the caller fails the call with it.

Also here, read once at start or per call: the inodes of the protected files that exist
(a hard link made before the session is judged under its protected name) and a process's
credentials (whether the supervisor may open a file on its behalf).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat as _stat
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple

from agentsh.enforce import engine, filemon, image, tracee
from agentsh.enforce.policy import Decision, Policy

AT_FDCWD, AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = -100, 0x1000, 0x100
AT_SYMLINK_FOLLOW, AT_REMOVEDIR, RENAME_EXCHANGE = 0x400, 0x200, 0x2
RESOLVE_IN_ROOT: Final = 0x10
PATH_MAX: Final = 4096
INODE_BUDGET: Final = 20000  # directory entries looked at, per protected glob, at start
CRED_FIELDS: Final = (b"Uid:", b"Gid:", b"Groups:", b"CapEff:", b"CapPrm:")
# Found by bytes.find, one field after the other: 4.7 us a status text, where a
# multi-line regex took 18 us and a per-line startswith scan ~50 us (every trapped call
# reads one). The kernel escapes newlines in the one free-text line (Name), so "\nUid:"
# cannot be forged before the real one.
_CRED_KEYS: Final = tuple(b"\n" + field for field in CRED_FIELDS)


def cred_lines(status: bytes) -> tuple[bytes, ...]:
    """The :data:`CRED_FIELDS` lines of a ``/proc/TID/status`` text, in that order
    (an empty line for a field the text lacks)."""
    lines = []
    for key in _CRED_KEYS:
        at = status.find(key)
        lines.append(status[at + 1 : status.find(b"\n", at + 1)] if at >= 0 else b"")
    return tuple(lines)


_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """The call is refused before any decision (unreadable arguments): rule and why."""

    def __init__(self, rule: str, why: str) -> None:
        super().__init__(why)
        self.rule, self.why = rule, why


class Item(NamedTuple):
    """One path a call names: where it starts, whether its last component is followed,
    the operations performed on it, and whether the call moves/links it elsewhere."""

    dirfd: int
    path: bytes
    follow: bool
    ops: tuple[str, ...]
    source: bool = False
    fd_only: bool = False  # fchmod/fchown: ``dirfd`` is the file


class Target(NamedTuple):
    """A resolved path: canonical text, its O_PATH fd (None when it does not exist or
    is not held) and its lstat/fstat (None when it does not exist)."""

    path: str
    fd: int | None
    st: os.stat_result | None


# --------------------------------------------------------------------------- tracee reads


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


_vm_readv = _libc.process_vm_readv
_vm_readv.argtypes = (
    ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong
)  # fmt: skip
_vm_readv.restype = ctypes.c_ssize_t
_BUF = ctypes.create_string_buffer(tracee.PAGE)
_LOCAL, _REMOTE = _IoVec(ctypes.addressof(_BUF), 0), _IoVec(0, 0)
_LOCAL_P, _REMOTE_P = ctypes.addressof(_LOCAL), ctypes.addressof(_REMOTE)


def vm_read(tid: int, addr: int, size: int) -> bytes:
    """process_vm_readv(2) of up to one page (``seccomp.process_vm_readv`` without its
    per-call allocations: this runs for every trapped file call). A read running into an
    unmapped page returns the bytes before it.

    Raises:
        OSError: EFAULT (nothing readable at ``addr``), ESRCH, EPERM.
    """
    size = min(size, tracee.PAGE)
    _LOCAL.len, _REMOTE.base, _REMOTE.len = size, addr, size
    n = _vm_readv(tid, _LOCAL_P, 1, _REMOTE_P, 1, 0)
    if n < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.string_at(_BUF, n)


def read_path(tid: int, addr: int) -> bytes:
    """The NUL-terminated path at ``addr`` in ``tid`` (process_vm_readv(2)), page by page.

    Raises:
        OSError: EFAULT (bad pointer; the kernel's own answer), ENAMETOOLONG, ESRCH.
        Refused: the memory may not be read (EPERM: a non-dumpable process).
    """
    if addr == 0:
        raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
    out = b""
    first = True
    while len(out) <= PATH_MAX:
        size = tracee.PAGE - addr % tracee.PAGE
        size = min(size, 256) if first else size  # most paths are short: read little first
        try:
            chunk = vm_read(tid, addr, size)
        except PermissionError as err:
            raise Refused("file-unreadable", f"cannot read the path argument: {err}") from err
        if not chunk:
            raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
        end = chunk.find(b"\0")
        if end >= 0:
            return out + chunk[:end]
        out, addr, first = out + chunk, addr + len(chunk), False
    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))


def _open_how(tid: int, addr: int, size: int) -> tuple[int, int, int]:
    """``(flags, mode, resolve)`` of openat2's ``struct open_how`` (u64 each)."""
    if size < 24:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    raw = vm_read(tid, addr, 24)
    if len(raw) < 24:
        raise OSError(errno.EFAULT, os.strerror(errno.EFAULT))
    flags, mode, resolve = (int.from_bytes(raw[i : i + 8], "little") for i in (0, 8, 16))
    return flags, mode, resolve


class OpenCall(NamedTuple):
    """A trapped open/creat/openat/openat2: where, what, its flags, the mode a created
    file gets (before the umask) and openat2's resolve flags."""

    dirfd: int
    path: bytes
    flags: int
    mode: int
    resolve: int


def open_call(tid: int, nr: int, args: tuple[int, ...]) -> OpenCall:
    """The arguments of a trapped open/creat/openat/openat2."""
    if nr == filemon.NR_OPEN:
        path = read_path(tid, args[0])
        return OpenCall(AT_FDCWD, path, args[1] & 0xFFFFFFFF, args[2] & 0o7777, 0)
    if nr == filemon.NR_CREAT:
        flags = filemon.O_CREAT | filemon.O_TRUNC | 1  # O_WRONLY
        return OpenCall(AT_FDCWD, read_path(tid, args[0]), flags, args[1] & 0o7777, 0)
    if nr == filemon.NR_OPENAT:
        path = read_path(tid, args[1])
        return OpenCall(tracee.s32(args[0]), path, args[2] & 0xFFFFFFFF, args[3] & 0o7777, 0)
    flags, mode, resolve = _open_how(tid, args[2], args[3])
    path = read_path(tid, args[1])
    return OpenCall(tracee.s32(args[0]), path, flags, mode & 0o7777, resolve)


def _s(arg: int) -> int:
    return tracee.s32(arg)


_Args = tuple[int, ...]
# A new hard link gives its file a second name with the new directory's rights: the file
# must be one the caller may read and write where it is (Landlock's REFER rule, likewise).
LINKED: Final = ("read", "write")


def _unlinkat(tid: int, a: _Args) -> list[Item]:
    op = "rmdir" if a[2] & AT_REMOVEDIR else "delete"
    return [Item(_s(a[0]), read_path(tid, a[1]), False, (op,))]


def _rename(tid: int, a: _Args, nr: int) -> list[Item]:
    if nr == 82:  # rename(old, new)
        od, old, nd, new = AT_FDCWD, read_path(tid, a[0]), AT_FDCWD, read_path(tid, a[1])
    else:  # renameat(od, old, nd, new), renameat2(..., flags)
        od, old, nd, new = _s(a[0]), read_path(tid, a[1]), _s(a[2]), read_path(tid, a[3])
    swap = nr == 316 and bool(a[4] & RENAME_EXCHANGE)
    return [
        Item(od, old, False, ("rename",), source=True),
        Item(nd, new, False, ("rename",), source=swap),
    ]


def _link(tid: int, a: _Args, nr: int) -> list[Item]:
    if nr == 86:  # link(old, new): the old name is not followed
        return [
            Item(AT_FDCWD, read_path(tid, a[0]), False, LINKED, source=True),
            Item(AT_FDCWD, read_path(tid, a[1]), False, ("create",)),
        ]
    empty = bool(a[4] & AT_EMPTY_PATH)  # linkat(od, old, nd, new, flags)
    old = read_path(tid, a[1]) if not empty else b""
    follow = bool(a[4] & AT_SYMLINK_FOLLOW)
    return [
        Item(_s(a[0]), old, follow, LINKED, source=True, fd_only=empty and not old),
        Item(_s(a[2]), read_path(tid, a[3]), False, ("create",)),
    ]


def _at_flags(tid: int, a: _Args, nr: int) -> list[Item]:
    """fchmodat (no flags argument), fchmodat2 and fchownat: follow unless told not to."""
    flags = 0 if nr == 268 else a[3] if nr == 452 else a[4]
    path = read_path(tid, a[1])
    empty = not path and bool(flags & AT_EMPTY_PATH)
    follow = not flags & AT_SYMLINK_NOFOLLOW
    return [Item(_s(a[0]), path, follow, ("chmod",), fd_only=empty)]


def _one(dirfd_arg: int | None, path_arg: int, follow: bool, op: str) -> _Parser:
    """A parser for calls naming one path (``dirfd_arg`` None: relative to the cwd)."""

    def parse(tid: int, a: _Args, nr: int) -> list[Item]:
        dirfd = AT_FDCWD if dirfd_arg is None else _s(a[dirfd_arg])
        return [Item(dirfd, read_path(tid, a[path_arg]), follow, (op,))]

    return parse


def _fd(tid: int, a: _Args, nr: int) -> list[Item]:
    return [Item(_s(a[0]), b"", True, ("chmod",), fd_only=True)]  # fchmod, fchown


_Parser = Callable[[int, _Args, int], list[Item]]
PARSERS: Final[dict[int, _Parser]] = {
    87: _one(None, 0, False, "delete"),  # unlink
    84: _one(None, 0, False, "rmdir"),  # rmdir
    263: lambda tid, a, nr: _unlinkat(tid, a),
    82: _rename,
    264: _rename,
    316: _rename,
    86: _link,
    265: _link,
    88: _one(None, 1, False, "create"),  # symlink(target, linkpath): target judged on open
    266: _one(1, 2, False, "create"),  # symlinkat(target, newdirfd, linkpath)
    83: _one(None, 0, False, "mkdir"),
    258: _one(0, 1, False, "mkdir"),
    76: _one(None, 0, True, "write"),  # truncate
    90: _one(None, 0, True, "chmod"),  # chmod
    92: _one(None, 0, True, "chmod"),  # chown
    94: _one(None, 0, False, "chmod"),  # lchown
    91: _fd,
    93: _fd,
    268: _at_flags,
    452: _at_flags,
    260: _at_flags,
}


def path_items(tid: int, nr: int, args: _Args) -> list[Item]:
    """The paths a trapped non-open call names (``filemon.FAMILIES``), with the
    operations it performs on each. An unknown number raises Refused (fail closed)."""
    parser = PARSERS.get(nr)
    if parser is None:
        raise Refused("file-unknown-syscall", f"syscall {nr} is not a file call agentsh knows")
    return parser(tid, args, nr)


# --------------------------------------------------------------------------- resolution


def _canonical(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _join(parent: str, name: bytes) -> str:
    text = name.decode("utf-8", "surrogateescape")
    return parent.rstrip("/") + "/" + text if parent.startswith("/") else parent


def _args(dirfd: int, path: bytes) -> tracee.ExecArgs:
    return tracee.ExecArgs(dirfd, path, (), AT_EMPTY_PATH if not path else 0)


@functools.cache
def proc_dev() -> int:
    """The device number of procfs."""
    return os.stat("/proc").st_dev


def _own_proc(path: str) -> bool:
    me = f"/proc/{os.getpid()}"
    return path == me or path.startswith(me + "/")


def open_path(tid: int, dirfd: int, path: bytes, *, follow: bool, same: bool | None) -> Target:
    """``image.open_target`` plus its canonical path and stat. A fast lookup in our own
    view can land in *our* ``/proc/PID`` (``/proc/self`` is a plain symlink, followed in
    the supervisor's context): that lookup is redone in the tracee's context. A path that
    still names the supervisor's own ``/proc`` entry is refused.

    Raises:
        OSError: what the kernel would answer. Refused: the supervisor's /proc entry.
    """
    fd = image.open_target(tid, _args(dirfd, path), follow=follow, same=same)
    where, st = _canonical(fd), os.fstat(fd)
    if st.st_dev == proc_dev() and _own_proc(where) and same is not False:
        os.close(fd)
        fd = image.open_target(tid, _args(dirfd, path), follow=follow, same=False)
        where, st = _canonical(fd), os.fstat(fd)
    if st.st_dev == proc_dev() and _own_proc(where):
        os.close(fd)
        raise Refused("agentsh-supervisor", "the agentsh supervisor's /proc entry is not reachable")
    return Target(where, fd, st)


def resolve(tid: int, item: Item, same: bool | None) -> Target:
    """Resolve ``item`` in the tracee's context (module docstring, step 2). The returned
    fd, if any, belongs to the caller.

    Raises:
        OSError: what the kernel would answer (ENOENT for a missing parent, ...).
    """
    if item.fd_only:
        fd = os.open(b"/proc/%d/fd/%d" % (tid, item.dirfd), os.O_PATH | os.O_CLOEXEC)
        return Target(_canonical(fd), fd, os.fstat(fd))
    if item.follow:
        return open_path(tid, item.dirfd, item.path, follow=True, same=same)
    return _last(tid, item.dirfd, item.path, same)


def hold(tid: int, item: Item, same: bool | None) -> Target:
    """The object ``item`` names, held by an O_PATH fd (which the caller closes):
    :func:`resolve`, but a last component that is not followed is opened itself
    (O_NOFOLLOW: a symlink is held as the symlink).

    Raises:
        OSError: what the kernel would answer.
    """
    if item.fd_only or item.follow:
        return resolve(tid, item, same)
    return open_path(tid, item.dirfd, item.path, follow=False, same=same)


@contextlib.contextmanager
def held(tid: int, item: Item, same: bool | None, judged: str) -> Iterator[Target]:
    """:func:`hold` for a ``with`` block, which closes the fd; the object's canonical
    path must still be ``judged`` (the path checked), else EACCES.

    Raises:
        OSError: what the kernel would answer, or EACCES.
    """
    target = hold(tid, item, same)
    try:
        if target.path != judged:
            raise OSError(errno.EACCES, "the file changed during the check")
        yield target
    finally:
        if target.fd is not None:
            os.close(target.fd)


@contextlib.contextmanager
def entry(tid: int, item: Item, same: bool | None, judged: str) -> Iterator[tuple[int, bytes]]:
    """:func:`open_parent` for a ``with`` block: the directory fd (closed on the way out)
    and the name; their canonical path must still be ``judged``, else EACCES.

    Raises:
        OSError: what the kernel would answer, or EACCES.
    """
    up, name = open_parent(tid, item, same)
    assert up.fd is not None
    try:
        if _join(up.path, name) != judged:
            raise OSError(errno.EACCES, "the directory changed during the check")
        yield up.fd, name
    finally:
        os.close(up.fd)


@contextlib.contextmanager
def directory(tid: int, path: str, same: bool | None) -> Iterator[int]:
    """The directory ``path`` (canonical), opened O_PATH as the tracee resolves it, for a
    ``with`` block; it must still be there under that name, else EACCES.

    Looked up as the supervisor (``image.looked_up_as``): it is a directory the tracee's
    own lookup reached, as the tracee, moments before — found again by its canonical
    path, which may pass directories the tracee could not (it came from its cwd).

    Raises:
        OSError: what the kernel would answer, or EACCES.
    """
    with image.looked_up_as(None):
        up = open_path(tid, AT_FDCWD, os.fsencode(path), follow=True, same=same)
    assert up.fd is not None
    try:
        if up.path != path:
            raise OSError(errno.EACCES, "the directory changed during the check")
        yield up.fd
    finally:
        os.close(up.fd)


def _split(path: bytes) -> tuple[bytes, bytes]:
    head, _, name = path.rstrip(b"/").rpartition(b"/")
    if not head:
        head = b"/" if path.startswith(b"/") else b"."
    return head, name


def _last(tid: int, dirfd: int, path: bytes, same: bool | None) -> Target:
    """The parent followed, the last component not: canonical parent + name (with the
    name's lstat, None when it does not exist)."""
    parent, name = _split(path)
    if name in (b"", b".", b".."):
        return open_path(tid, dirfd, path, follow=True, same=same)
    up = open_path(tid, dirfd, parent, follow=True, same=same)
    assert up.fd is not None
    try:
        where = _join(up.path, name)
        try:
            # search permission on the parent, as the tracee
            st: os.stat_result | None = image.as_caller(
                os.stat, name, dir_fd=up.fd, follow_symlinks=False
            )
        except FileNotFoundError:
            st = None
    finally:
        os.close(up.fd)
    return Target(where, None, st)


def open_parent(tid: int, item: Item, same: bool | None) -> tuple[Target, bytes]:
    """The directory ``item``'s last component is in (its O_PATH fd, which the caller
    closes) and that name, for acting on the entry itself (a soft delete moves it).

    Raises:
        OSError: what the kernel would answer; EINVAL for ".", ".." or an fd-only item.
    """
    parent, name = _split(item.path)
    if item.fd_only or name in (b"", b".", b".."):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    return open_path(tid, item.dirfd, parent, follow=True, same=same), name


def renameat2(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> None:
    """renameat2(2) (x86_64 316), which os.rename cannot pass flags to.

    Raises:
        OSError: what the kernel answered.
    """
    if _libc.syscall(316, olddir, old, newdir, new, ctypes.c_uint(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def resolve_open(tid: int, dirfd: int, path: bytes, flags: int, same: bool | None) -> Target:
    """Resolve an open's path: followed unless O_NOFOLLOW or O_CREAT|O_EXCL. With O_CREAT
    the parent is resolved first: a missing name resolves to where it would be created,
    through a dangling symlink too (the kernel creates the symlink's target)."""
    excl = flags & filemon.O_CREAT and flags & filemon.O_EXCL
    follow = not (flags & filemon.O_NOFOLLOW or excl)
    if not flags & filemon.O_CREAT:
        return open_path(tid, dirfd, path, follow=follow, same=same)
    for _ in range(40):
        found = _last(tid, dirfd, path, same)
        if found.fd is not None or found.st is None:
            return found  # a directory name (".", "..") or a file to be created
        if not (follow and _stat.S_ISLNK(found.st.st_mode)):
            return open_path(tid, dirfd, path, follow=follow, same=same)
        if same is not True:  # a dangling link read in another root: do not guess
            raise OSError(errno.EACCES, "cannot resolve a symlink being created through")
        link = os.readlink(found.path).encode("utf-8", "surrogateescape")
        try:
            return open_path(tid, dirfd, path, follow=True, same=same)
        except FileNotFoundError:  # dangling: resolve where its target would be created
            base = found.path.rsplit("/", 1)[0] or "/"
            dirfd, path = AT_FDCWD, link if link.startswith(b"/") else base.encode() + b"/" + link
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))


# ------------------------------------------------------------- protected inodes, credentials


def protected_inodes(policy: Policy) -> dict[tuple[int, int], str]:
    """(device, inode) -> path of every regular file a non-allow rule restricting reads
    names today (walked from each glob's literal directory, pruned with
    ``filemon.reaches``; bounded). A second name of one of these (a hard link made before
    the session; new links are trapped) is judged under this name too."""
    out: dict[tuple[int, int], str] = {}
    for rule in policy.file_rules:
        reads = engine.covers(rule.operations, "open")  # read, open or list (or *)
        if rule.decision is Decision.ALLOW or not reads:
            continue
        for glob in (g for p in rule.paths for g in filemon.expand_braces(p)):
            root = filemon.enumerable(glob)
            if root is not None:
                out.update(_walk(root, glob))
    return out


def _walk(root: str, glob: str) -> Iterator[tuple[tuple[int, int], str]]:
    pattern = engine.compile_path_glob(glob)
    shape = tuple(glob.strip("/").split("/"))
    try:
        st = os.stat(root, follow_symlinks=False)
    except OSError:
        return
    if _stat.S_ISREG(st.st_mode):
        if pattern.fullmatch(root):
            yield (st.st_dev, st.st_ino), root
        return
    stack, budget = [root], INODE_BUDGET
    while stack and budget > 0:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for entry in entries:
            budget -= 1
            path = here.rstrip("/") + "/" + entry.name
            if entry.is_dir(follow_symlinks=False) and filemon.reaches(shape, path):
                stack.append(path)
            elif entry.is_file(follow_symlinks=False) and pattern.fullmatch(path):
                est = entry.stat(follow_symlinks=False)
                yield (est.st_dev, est.st_ino), path


def credentials(pid: int | str) -> tuple[bytes, ...] | None:
    """The lines of ``/proc/PID/status`` that decide file access: uids, gids, groups and
    capabilities (per thread: pass a thread id). None when the task is gone."""
    raw = tracee.read_proc(f"/proc/{pid}/status".encode())
    if not raw:
        return None
    return cred_lines(raw)
