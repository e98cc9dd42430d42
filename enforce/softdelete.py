"""The soft-delete workspace: a passthrough FUSE view (pyfuse3) of the workspace, mounted
over the workspace path in a private mount namespace, in which unlink, rmdir and an
overwriting rename move the file into the trash (``enforce.trash``) instead of deleting it
(ARCHITECTURE §1, §11).

    (enforce.fuseconf: probe, settings, choose: whether a command gets the view at all)
    start(plan) -> int                 frontend side: private namespace, daemon, mount
    serve(plan, ready=fd) -> int       daemon side: answer requests until the tree is gone
    check_mount(path)                  LayerUnavailable when the view's daemon is dead

``start`` does, in this order (each step must precede the next), before Landlock and
seccomp are applied (Landlock rules on workspace paths must be made *after* the mount, or
they name the directory underneath):

  1. unshare(2) CLONE_NEWNS and make / MS_REC|MS_PRIVATE: the mount is seen by this
     process and what it starts, never by the host;
  2. fork the daemon (double fork, so bash never sees it; it leaves the session, closes
     every fd, becomes non-dumpable); it opens the real workspace directory with O_PATH
     *before* mounting — afterwards the path leads into its own view — then mounts;
  3. wait for its "ready" on a pipe (or its error), then chdir(2) to the cwd again: a cwd
     inside the workspace still points at the directory underneath until re-entered.

Deletes: the effective decision is the stricter (policy STRICTNESS) of the config's audit
mode (monitor → audit, soft_delete → soft_delete, soft_block → deny) and the ``decide``
callable's verdict for the path (the policy's ``file_rules``, ops "delete" and "rmdir").
allow/audit: delete for real; soft_delete: stash; anything else (deny, approve with no one
to ask, redirect): EACCES. Every delete is audited (layer "softdelete"). A trash that is
full or over quota refuses the delete (ENOSPC/EDQUOT): nothing is silently lost.

Daemon death: the kernel aborts the FUSE connection when the daemon's /dev/fuse fd closes,
so every later access to the workspace — stat, open, readdir, unlink — fails with ENOTCONN
("Transport endpoint is not connected"); nothing falls through to the directory
underneath, because the mount stays (a crash never unmounts; only a clean exit, when no
other process is left in the namespace, does). ``check_mount`` turns that into a clear
LayerUnavailable for the frontend of a nested command, and a crash is audited.

Not a boundary by itself: root in the tree could unmount the view or reach the real
directory through /proc/<daemon>/fd, /proc/1/root; the seccomp "mount" group and the
Landlock fence (``govern``) are what close those. Truncation (``> file``) is not a delete
and is not caught here.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import select
import shlex
import signal
import stat
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from agentsh.enforce.audit import Event
from agentsh.enforce.errors import AgentshError, LayerUnavailable
from agentsh.enforce.fuseconf import DEFAULT_TRASH_ROOT, MODE_DECISION, Mode
from agentsh.enforce.policy import STRICTNESS, Decision, Verdict
from agentsh.enforce.record import dataclass, replace
from agentsh.enforce.trash import StashError, Trash

FUSE_SUPER_MAGIC = 0x65735546
AT_EMPTY_PATH, RENAME_NOREPLACE, RENAME_EXCHANGE = 0x1000, 1, 2
UTIME_OMIT = (1 << 30) - 2
_CLONE_NEWNS, _MS_REC, _MS_PRIVATE = 0x20000, 0x4000, 1 << 18
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_P = ParamSpec("_P")
_R = TypeVar("_R")
_V = TypeVar("_V", bound="_View")

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(old_dir: int, old: str, new_dir: int, new: str, flags: int) -> None:
    """renameat2(2): rename with RENAME_NOREPLACE / RENAME_EXCHANGE."""
    ret = _libc.renameat2(old_dir, os.fsencode(old), new_dir, os.fsencode(new), flags)
    _check(ret, "renameat2")


def _linkat_fd(fd: int, new_dir: int, new: str) -> None:
    """linkat(2) with AT_EMPTY_PATH: a new name for the inode ``fd`` holds (any kind)."""
    _check(_libc.linkat(fd, b"", new_dir, os.fsencode(new), AT_EMPTY_PATH), "linkat")


def _chown_fd(fd: int, uid: int, gid: int) -> None:
    """fchownat(2) with AT_EMPTY_PATH (works on O_PATH fds, symlinks included)."""
    _check(_libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH), "fchownat")


def _utime_fd(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """utimensat(2) with AT_EMPTY_PATH; None leaves that time alone (UTIME_OMIT)."""

    def spec(ns: int | None) -> _Timespec:
        return _Timespec(0, UTIME_OMIT) if ns is None else _Timespec(*divmod(ns, 10**9))

    times = (_Timespec * 2)(spec(atime_ns), spec(mtime_ns))
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH), "utimensat")


def _unshare_private() -> None:
    """unshare(2) CLONE_NEWNS, then mount(2) MS_REC|MS_PRIVATE on / (before any mount)."""
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount(/, private)")


# --- the plan and the frontend side ----------------------------------------------------

Decider = Callable[[str, str], Verdict]
Sink = Callable[[Event], None]


@dataclass(frozen=True)
class SoftDeletePlan:
    """``decide(op, path)`` judges "delete"/"rmdir" of a path as the tree sees it (None:
    the mode alone decides); ``sink_factory`` runs in the daemon (open the audit store
    there). ``attr_timeout`` is how long the kernel may cache names and attributes (and
    that a name does not exist); ``xattrs`` passes extended attributes through."""

    workspace: Path
    session: str
    mode: Mode = Mode.SOFT_DELETE
    trash_root: Path = DEFAULT_TRASH_ROOT
    quota: int | None = None
    decide: Decider | None = None
    sink_factory: Callable[[], Sink] | None = None
    attr_timeout: float = 1.0
    xattrs: bool = False


def _checked_workspace(plan: SoftDeletePlan) -> Path:
    ws = Path(os.path.realpath(plan.workspace))
    if not ws.is_dir() or ws == Path("/"):
        raise LayerUnavailable(f"soft-delete workspace: {ws} is not a directory other than /")
    trash = Path(os.path.realpath(plan.trash_root))
    if trash == ws or ws in trash.parents:
        raise LayerUnavailable(
            f"soft-delete workspace: the trash {trash} lies inside the workspace {ws}",
            hint="keep the trash outside the workspace (default /var/lib/agentsh/trash)",
        )
    return ws


def start(plan: SoftDeletePlan, *, timeout: float = 10.0) -> int:
    """Give this process (and all it starts) the FUSE view of the workspace.

    Returns:
        The daemon's pid.

    Raises:
        LayerUnavailable: not root, no private namespace, or the daemon could not mount.
    """
    ws = _checked_workspace(plan)
    cwd, outer = os.getcwd(), os.readlink("/proc/self/ns/mnt")
    try:
        _unshare_private()
    except OSError as err:
        raise LayerUnavailable(f"soft-delete workspace: {err}") from err
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the intermediate child
        os.close(rfd)
        code = 127
        try:
            if os.fork() == 0:
                _detach(wfd)
                code = serve(plan, ready=wfd, outer=outer)
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    os.waitpid(pid, 0)
    reply = _read_ready(rfd, timeout)
    if not reply.startswith("ready "):
        raise LayerUnavailable(f"soft-delete workspace {ws}: {reply or 'the daemon exited'}")
    os.chdir(cwd)  # re-enter: the old cwd reference points underneath the mount
    return int(reply.split()[1])


def _read_ready(rfd: int, timeout: float) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while select.select([rfd], [], [], max(deadline - time.monotonic(), 0))[0]:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            return f"no answer from the daemon within {timeout:g} s"
    finally:
        os.close(rfd)
    return b"".join(chunks).decode(errors="replace").strip()


def _detach(keep: int) -> None:
    """Leave the caller's session, terminal and fds; stop being dumpable."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    _check(_libc.prctl(4, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def check_mount(path: Path) -> None:
    """Raises:
    LayerUnavailable: ``path`` is a FUSE view whose daemon died (ENOTCONN), or is not
        the FUSE view at all."""
    try:
        fstype = _statfs_type(path)
    except OSError as err:
        if err.errno == errno.ENOTCONN:
            raise LayerUnavailable(
                f"the soft-delete workspace daemon for {path} has died; every access "
                "there fails with 'Transport endpoint is not connected'",
                hint="leave this shell and start a new governed one; the audit log has the crash",
            ) from err
        raise LayerUnavailable(f"soft-delete workspace {path}: {err.strerror}") from err
    if fstype != FUSE_SUPER_MAGIC:
        raise LayerUnavailable(f"soft-delete workspace {path} is not mounted here")


def _statfs_type(path: Path) -> int:
    """statfs(2) f_type (os.statvfs has no fs type)."""
    buf = (ctypes.c_long * 16)()
    _check(_libc.statfs(os.fsencode(path), buf), "statfs")
    return int(buf[0])


# --- the daemon --------------------------------------------------------------------------


def _private_namespace() -> bool:
    """No mount here propagates to a peer (no ``shared:`` tag in mountinfo): what
    ``start`` makes. Keeps ``serve`` from ever mounting over the host's workspace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return not any(" shared:" in line.split(" - ")[0] for line in f)


def _alone_in_namespace() -> bool:
    """No other process shares our mount namespace (then nobody uses the view)."""
    own, me = os.readlink("/proc/self/ns/mnt"), os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != me:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/mnt") == own:
                    return False
    return True


def serve(plan: SoftDeletePlan, *, ready: int | None = None, outer: str | None = None) -> int:
    """Mount the view over the workspace in *this* mount namespace and answer requests
    until no other process is left in it (or SIGTERM); then unmount. Writes ``ready PID``
    (or the error) to ``ready`` and closes it. A crash is audited and leaves the mount
    dead (ENOTCONN), never unmounted. Refuses to mount in namespace ``outer`` (the one
    ``start`` left) or in one whose mounts propagate to peers.

    Returns:
        The exit status: 0, or 127 after a crash or a failed mount.
    """

    def tell(text: str) -> None:
        if ready is not None:
            with contextlib.suppress(OSError):
                os.write(ready, text.encode())
                os.close(ready)

    try:
        if not _private_namespace() or os.readlink("/proc/self/ns/mnt") == outer:
            raise LayerUnavailable("refusing to mount: this mount namespace shares mounts")
        session = _open_session(plan, _checked_workspace(plan))
    except Exception as err:  # noqa: BLE001 — the frontend reports it and refuses
        tell(f"cannot mount: {err}")
        return 127
    tell(f"ready {os.getpid()}")
    try:
        session.run(_alone_in_namespace)
    except Exception as err:  # noqa: BLE001 — the only record of the crash is this event
        _audit_crash(plan, session.view.sink, err)
        return 127
    return 0


def _audit_crash(plan: SoftDeletePlan, sink: Sink | None, err: BaseException) -> None:
    if sink is None:
        return
    detail = "".join(traceback.format_exception(err))[-2000:]
    event = Event(
        time.time(),
        plan.session,
        os.getpid(),
        "/",
        ("agentsh-softdelete",),
        "error",
        "softdelete-crash",
        f"the soft-delete daemon for {plan.workspace} crashed; the workspace now answers "
        f"ENOTCONN: {detail}",
        "softdelete",
        "file",
    )
    with contextlib.suppress(Exception):
        sink(event)


def _open_session(plan: SoftDeletePlan, ws: Path) -> _Session:
    import resource

    import pyfuse3
    import trio

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one O_PATH fd per inode
    os.umask(0)  # modes come from the caller's request, umask already applied
    os.chdir("/")
    # Must precede the mount: afterwards this path leads into the view itself.
    root_fd = os.open(ws, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    trash = Trash(plan.trash_root, quota=plan.quota)
    trash.prepare()
    sink = plan.sink_factory() if plan.sink_factory is not None else None
    # pyfuse3.Operations second: it answers ENOSYS for every operation not in _View.
    base = _XattrView if plan.xattrs else _View
    view_type = type("SoftDeleteView", (base, pyfuse3.Operations), {})
    view = view_type(pyfuse3, plan, root_fd, trash, sink)
    options = {*pyfuse3.default_options, "allow_other", "fsname=agentsh", "subtype=softdelete"}
    pyfuse3.init(view, str(ws), options)
    return _Session(pyfuse3, trio, view)


class _Session:
    def __init__(self, fuse: Any, trio: Any, view: _View) -> None:
        self.fuse, self.trio, self.view = fuse, trio, view

    def run(self, alone: Callable[[], bool]) -> None:
        """Serve until ``alone()`` or SIGTERM. Unmount only when alone: with processes
        left, an unmount would show them the directory underneath, while an exit without
        one leaves them ENOTCONN. An exception out of the main loop (a bug in a handler)
        propagates and leaves the mount in place, dead."""
        stop: list[int] = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

        async def main() -> None:
            async with self.trio.open_nursery() as nursery:
                nursery.start_soon(self.fuse.main, 1, 1)
                while not stop and not alone():
                    await self.trio.sleep(0.5)
                self.fuse.terminate()

        self.trio.run(main)
        self.fuse.close(unmount=alone())


def _op(
    fn: Callable[Concatenate[_V, _P], Awaitable[_R]],
) -> Callable[Concatenate[_V, _P], Awaitable[_R]]:
    """Turn OSError and StashError into FUSEError, the one exception pyfuse3 lets a
    handler raise (anything else is a bug: pyfuse3 ends its main loop, the daemon exits,
    the view answers ENOTCONN — loudly, never through to the directory underneath)."""

    @functools.wraps(fn)
    async def run(self: _V, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(self, *args, **kwargs)
        except OSError as err:
            raise self.fuse.FUSEError(err.errno or errno.EIO) from None
        except StashError as err:
            raise self.fuse.FUSEError(err.code) from None

    return run


@dataclass
class _Node:
    fd: int  # O_PATH | O_NOFOLLOW, opened relative to the parent's fd
    key: tuple[int, int]  # (st_dev, st_ino)
    lookups: int


_ATTRS = (
    "st_mode",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_rdev",
    "st_size",
    "st_blksize",
    "st_blocks",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
)
_STATVFS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
ROOT = 1  # pyfuse3.ROOT_INODE


class _View:
    """The passthrough: every inode the kernel knows is an O_PATH fd into the real
    workspace (reached through the fd opened before mounting), so renames underneath
    need no bookkeeping and no request ever follows a symlink or leaves the workspace.
    Single-threaded (trio; handlers never await), so setfsuid(2) around a call is safe."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self, fuse: Any, plan: SoftDeletePlan, root_fd: int, trash: Trash, sink: Sink | None
    ) -> None:
        self.fuse, self.plan, self.trash, self.sink = fuse, plan, trash, sink
        st = os.fstat(root_fd)
        self.root_dev = st.st_dev
        self.nodes = {ROOT: _Node(root_fd, (st.st_dev, st.st_ino), 1)}
        self.by_key = {(st.st_dev, st.st_ino): ROOT}
        self.dirs: dict[int, tuple[int, list[str]]] = {}  # handle -> (node, snapshot)
        self.procs: dict[int, tuple[bytes, tuple[str, ...], str]] = {}
        self.next_id = 1 << 63  # ids for inodes of other devices (or a clashing st_ino)
        self.epoch = int(time.time())

    # --- inodes ---

    def _node(self, nid: int) -> _Node:
        node = self.nodes.get(nid)
        if node is None:
            raise OSError(errno.ESTALE, "inode not known")
        return node

    def _attr(self, nid: int, st: os.stat_result) -> Any:
        attr = self.fuse.EntryAttributes()
        attr.st_ino = nid
        attr.entry_timeout = attr.attr_timeout = self.plan.attr_timeout
        for name in _ATTRS:
            setattr(attr, name, getattr(st, name))
        return attr

    def _ref(self, parent: _Node, name: str) -> Any:
        """Look ``name`` up below ``parent``: its attributes; its lookup count + 1."""
        if name == ".." and parent is self.nodes[ROOT]:
            name = "."  # never above the workspace
        fd = os.open(name, _PATH, dir_fd=parent.fd)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        nid = self.by_key.get(key)
        if nid is not None:
            os.close(fd)
        else:
            nid = st.st_ino
            if st.st_dev != self.root_dev or nid <= ROOT or nid in self.nodes:
                nid, self.next_id = self.next_id, self.next_id + 1
            self.nodes[nid], self.by_key[key] = _Node(fd, key, 0), nid
        self.nodes[nid].lookups += 1
        return self._attr(nid, st)

    def _unref(self, nid: int, count: int) -> None:
        node = self.nodes.get(nid)
        if node is None or nid == ROOT:
            return
        node.lookups -= count
        if node.lookups <= 0:
            os.close(node.fd)
            del self.nodes[nid], self.by_key[node.key]

    @staticmethod
    def _proc(node: _Node) -> str:
        return f"/proc/self/fd/{node.fd}"

    @contextlib.contextmanager
    def _as(self, ctx: Any) -> Any:
        """Create as the caller: setfsgid(2), setfsuid(2); back to root afterwards."""
        if ctx.uid == 0 and ctx.gid == 0:
            yield
            return
        _libc.setfsgid(ctx.gid)
        _libc.setfsuid(ctx.uid)
        try:
            yield
        finally:
            _libc.setfsuid(0)
            _libc.setfsgid(0)

    # --- passthrough ---

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for nid, count in inode_list:
            self._unref(nid, count)

    @_op
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any) -> Any:
        try:
            return self._ref(self._node(parent_inode), os.fsdecode(name))
        except FileNotFoundError:
            missing = self.fuse.EntryAttributes()  # st_ino 0: "no such name", cached
            missing.entry_timeout = self.plan.attr_timeout
            return missing

    @_op
    async def getattr(self, inode: int, ctx: Any) -> Any:
        return self._attr(inode, os.fstat(self._node(inode).fd))

    @_op
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        node = self._node(inode)
        if fields.update_size:
            os.truncate(fh if fh is not None else self._proc(node), attr.st_size)
        if fields.update_mode:
            os.chmod(self._proc(node), stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            _chown_fd(node.fd, uid, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            atime = attr.st_atime_ns if fields.update_atime else None
            _utime_fd(node.fd, atime, attr.st_mtime_ns if fields.update_mtime else None)
        return self._attr(inode, os.fstat(node.fd))

    @_op
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return os.fsencode(os.readlink("", dir_fd=self._node(inode).fd))

    @_op
    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY)
        return self.fuse.FileInfo(fh=os.open(self._proc(self._node(inode)), flags | os.O_CLOEXEC))

    @_op
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        parent, text = self._node(parent_inode), os.fsdecode(name)
        flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._as(ctx):
            fd = os.open(text, flags, stat.S_IMODE(mode) & ~ctx.umask, dir_fd=parent.fd)
        try:
            return self.fuse.FileInfo(fh=fd), self._ref(parent, text)
        except BaseException:
            os.close(fd)
            raise

    @_op
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_op
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    @_op
    async def flush(self, fh: int) -> None:
        os.close(os.dup(fh))  # close(2) of a duplicate reports deferred write errors

    @_op
    async def release(self, fh: int) -> None:
        os.close(fh)

    @_op
    async def fsync(self, fh: int, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    @_op
    async def opendir(self, inode: int, ctx: Any) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        fd = os.open(self._proc(self._node(inode)), flags)
        self.dirs[fd] = (inode, [])
        return fd

    @_op
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """Entries from one snapshot per pass (taken at offset 0), so that deletions
        between two calls cannot shift the offsets and hide entries."""
        nid, names = self.dirs[fh]
        if start_id == 0:
            names = sorted(os.listdir(fh))
            self.dirs[fh] = (nid, names)
        parent = self._node(nid)
        for i in range(start_id, len(names)):
            try:
                attr = self._ref(parent, names[i])
            except FileNotFoundError:
                continue
            if not self.fuse.readdir_reply(token, os.fsencode(names[i]), attr, i + 1):
                self._unref(attr.st_ino, 1)  # not sent: the kernel holds no reference
                return

    @_op
    async def releasedir(self, fh: int) -> None:
        del self.dirs[fh]
        os.close(fh)

    @_op
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        os.fsync(fh)

    @_op
    async def statfs(self, ctx: Any) -> Any:
        real = os.statvfs(self._proc(self.nodes[ROOT]))
        data = self.fuse.StatvfsData()
        for name in _STATVFS:
            setattr(data, name, getattr(real, name))
        data.f_favail, data.f_namemax = real.f_favail, real.f_namemax
        return data

    @_op
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        parent, text = self._node(parent_inode), os.fsdecode(name)
        with self._as(ctx):
            os.mkdir(text, stat.S_IMODE(mode) & ~ctx.umask, dir_fd=parent.fd)
        return self._ref(parent, text)

    @_op
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        parent, text = self._node(parent_inode), os.fsdecode(name)
        with self._as(ctx):
            os.mknod(text, mode & ~ctx.umask, rdev, dir_fd=parent.fd)
        return self._ref(parent, text)

    @_op
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        parent, text = self._node(parent_inode), os.fsdecode(name)
        with self._as(ctx):
            os.symlink(os.fsdecode(target), text, dir_fd=parent.fd)
        return self._ref(parent, text)

    @_op
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        parent, text = self._node(new_parent_inode), os.fsdecode(new_name)
        _linkat_fd(self._node(inode).fd, parent.fd, text)
        return self._ref(parent, text)

    # --- deletes ---

    @_op
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self._delete(self._node(parent_inode), os.fsdecode(name), "delete", ctx)

    @_op
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent, text = self._node(parent_inode), os.fsdecode(name)
        self._require_empty(parent, text)
        self._delete(parent, text, "rmdir", ctx)

    @_op
    async def rename(  # noqa: PLR0917 — pyfuse3 calls it with positional arguments
        self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int, ctx: Any
    ) -> None:
        src, dst = self._node(old_parent), self._node(new_parent)
        old_text, new_text = os.fsdecode(old), os.fsdecode(new)
        if not flags & (RENAME_NOREPLACE | RENAME_EXCHANGE):
            self._replacing(src, old_text, dst, new_text, ctx)
        renameat2(src.fd, old_text, dst.fd, new_text, flags)

    @staticmethod
    def _require_empty(parent: _Node, name: str) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd)
        try:
            if os.listdir(fd):
                raise OSError(errno.ENOTEMPTY, "directory not empty")
        finally:
            os.close(fd)

    def _replacing(self, src: _Node, old: str, dst: _Node, new: str, ctx: Any) -> None:
        """A rename onto an existing name deletes that file: judge it like a delete, and
        make every error the rename would hit happen before anything is stashed."""
        try:
            target = os.stat(new, dir_fd=dst.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        source = os.stat(old, dir_fd=src.fd, follow_symlinks=False)
        if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino):
            return  # the same file: rename(2) does nothing
        is_dir = stat.S_ISDIR(target.st_mode)
        if stat.S_ISDIR(source.st_mode) != is_dir:
            raise OSError(errno.EISDIR if is_dir else errno.ENOTDIR, "rename")
        if is_dir:
            self._require_empty(dst, new)
        self._delete(dst, new, "rmdir" if is_dir else "delete", ctx, replacing=True)

    def _verdict(self, op: str, path: str) -> Verdict:
        """The stricter of the audit mode's decision and the file rules' (a tie: the rule,
        which names itself)."""
        mode = self.plan.mode
        by_mode = Verdict(
            MODE_DECISION[mode], f"fuse-audit-mode-{mode.value}", f"audit mode {mode.value}", path
        )
        if self.plan.decide is None:
            return by_mode
        by_rule = self.plan.decide(op, path)
        return by_rule if STRICTNESS[by_rule.decision] >= STRICTNESS[by_mode.decision] else by_mode

    def _delete(self, parent: _Node, name: str, op: str, ctx: Any, replacing: bool = False) -> None:
        """Carry out one delete (``replacing``: the rename that follows removes the name).

        allow/audit: audited first (an audit failure refuses), then deleted; soft_delete:
        stashed (``keep`` when replacing, so that the rename stays atomic), then audited
        (an audit failure reports EIO, but the file is safe in the trash); else EACCES.
        """
        path = os.path.join(os.readlink(self._proc(parent)), name)
        verdict = self._verdict(op, path)
        argv, batch = self._process(ctx.pid)
        command = shlex.join(argv) or f"pid {ctx.pid}"
        match verdict.decision:
            case Decision.ALLOW | Decision.AUDIT:
                self._record(ctx.pid, argv, verdict, f"{op} {path}: {verdict.message}")
                if not replacing:
                    (os.rmdir if op == "rmdir" else os.unlink)(name, dir_fd=parent.fd)
            case Decision.SOFT_DELETE:
                token = self.trash.stash(
                    f"{self._proc(parent)}/{name}",
                    session=self.plan.session,
                    command=command,
                    original=path,
                    batch=batch,
                    keep=replacing,
                )
                why = f"moved {path} to the trash; restore with `agentsh trash restore {token}`"
                self._record(ctx.pid, argv, verdict, why)
            case _:  # deny, and approve/redirect, which nobody can answer here
                refused = replace(verdict, decision=Decision.DENY)
                self._record(ctx.pid, argv, refused, f"{op} {path} refused: {verdict.message}")
                raise OSError(errno.EACCES, verdict.message)

    def _process(self, pid: int) -> tuple[tuple[str, ...], str]:
        """argv of ``pid`` and its batch (session, pid and start time: one per process)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                start = f.read().rsplit(b")", 1)[1].split()[19]  # field 22, starttime
        except (OSError, IndexError):
            return (), f"{self.plan.session}-{self.epoch}-{pid}"
        known = self.procs.get(pid)
        if known is None or known[0] != start:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = tuple(os.fsdecode(a) for a in f.read().split(b"\0")[:-1])
            except OSError:
                argv = ()
            if len(self.procs) > 4096:
                self.procs.clear()
            batch = f"{self.plan.session}-{self.epoch}-{pid}-{start.decode()}"
            known = self.procs[pid] = (start, argv, batch)
        return known[1], known[2]

    def _record(self, pid: int, argv: tuple[str, ...], verdict: Verdict, message: str) -> None:
        if self.sink is None:
            return
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        decision = verdict.decision.value
        event = Event(
            time.time(), self.plan.session, pid, cwd, argv, decision, verdict.rule, message,
            "softdelete", "file",
        )  # fmt: skip
        try:
            self.sink(event)
        except AgentshError as err:
            raise OSError(errno.EIO, f"audit unavailable: {err.message}") from err


class _XattrView(_View):
    """The view with extended attributes passed through (``SoftDeletePlan.xattrs``). Off by default:
    a filesystem that answers getxattr gets one for security.capability before every
    write(2); without these handlers the kernel learns "not supported" once (ENOSYS)."""

    @_op
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        os.setxattr(self._proc(self._node(inode)), name, value)

    @_op
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return os.getxattr(self._proc(self._node(inode)), name)

    @_op
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self._proc(self._node(inode)))]

    @_op
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        os.removexattr(self._proc(self._node(inode)), name)
