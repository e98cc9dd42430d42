"""The trash store: where soft-deleted files wait to be restored or purged (ARCHITECTURE §1).

Independent of how a delete is intercepted: the FUSE view (``enforce.softdelete``) and a
soft delete in the notify supervisor both call :meth:`Trash.stash`. Layout of the store
(default /var/lib/agentsh/trash, mode 0700, owned by whoever runs agentsh):

    .usage              flock(2)ed for usage updates, restore and purge; holds the bytes
                        of all entries (a cache, rebuilt from the manifests if unreadable)
    TOKEN/              one entry (0700); TOKEN = UTC time + 32 random bits, made by mkdir(2),
                        so two stashes never share one (EEXIST: draw again)
      manifest.json     written atomically: temp file, fsync, rename(2), fsync of the dir
      data              the file, symlink or whole tree, with owner, mode and times

Invariants:
- a delete is refused (:class:`StashError` with an errno), never lost: the quota is checked
  before anything moves; rename(2) within one filesystem, else copy + fsync, and the
  original is unlinked only after the copy and its manifest are on disk; a failed manifest
  write moves a renamed original back; a crash between the move and the manifest leaves
  an entry that ``list`` shows with its problem and where its data is;
- a restore never replaces an existing path unless forced, and a forced restore stashes
  what it replaces, so even that stays recoverable;
- restores walk the destination with O_NOFOLLOW directory fds: a symlink planted in place
  of a directory since the deletion cannot steer a restore (run as root) elsewhere;
- entries of one ``batch`` (one process's deletions, e.g. ``rm -rf build`` seen file by
  file through FUSE) restore together: restoring a directory's token brings back, under
  it, everything the same batch deleted there.

A Trash instance is not thread-safe; separate instances and processes are.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NewType

from agentsh.enforce.errors import LayerUnavailable, UsageError
from agentsh.enforce.fuseconf import DEFAULT_TRASH_ROOT
from agentsh.enforce.record import asdict, dataclass, field, replace

FORMAT = 1
PENDING_GRACE_S = 3600.0  # an incomplete entry younger than this may be a stash in progress
Token = NewType("Token", str)
Progress = Callable[[int, int], None]

_TOKEN = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}\Z")
_DATA, _MANIFEST, _USAGE = "data", "manifest.json", ".usage"
_USAGE_WIDTH = 24  # the count is rewritten in place, padded: never shorter than before
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STORE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class StashError(LayerUnavailable):
    """The trash could not take a file, so the delete must be refused with ``code``
    (ENOSPC: disk full, EDQUOT: trash quota, EIO/EROFS/EACCES: store unusable)."""

    def __init__(self, message: str, *, code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


@dataclass(frozen=True)
class Member:
    """One file of an entry; ``path`` is relative to the entry's root ("" for the root)."""

    path: str
    kind: str  # file, dir, symlink, special
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    sha256: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class Entry:
    """One stash. ``root`` is None when the manifest is missing, unreadable or incomplete;
    ``problem`` then says why. ``members`` lists what lies below a stashed directory,
    parents first; ``size`` is the bytes of every regular file in it."""

    token: str
    original: str
    deleted_at: float
    session: str = ""
    command: str = ""
    batch: str = ""
    size: int = 0
    root: Member | None = None
    members: tuple[Member, ...] = ()
    problem: str | None = None

    @property
    def kind(self) -> str:
        return self.root.kind if self.root is not None else "unknown"


@dataclass(frozen=True)
class RestoreReport:
    """``restored``: top-level paths put back; ``files``: non-directories among them;
    ``created``: missing parent directories made; ``replaced``: (path, token) of what a
    forced restore moved into the trash."""

    restored: tuple[str, ...]
    files: int
    created: tuple[str, ...] = ()
    replaced: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PurgeReport:
    removed: tuple[Entry, ...]
    freed: int
    kept: int
    kept_bytes: int


# --- file-system helpers (all relative to directory fds; never follow a final symlink) ---


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _opendir(name: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _tree_bytes(dir_fd: int, name: str) -> int:
    """Bytes of regular files at or below ``name`` (lstat only; no reads)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    with _opendir(name, dir_fd) as sub:
        return sum(_tree_bytes(sub, child) for child in os.listdir(sub))


def _describe(dir_fd: int, name: str, rel: str, out: builtins.list[Member]) -> None:
    """Append the Member of ``name`` and, for a directory, of everything below it."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind, digest, target = _kind(st.st_mode), None, None
    if kind == "file":
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    elif kind == "symlink":
        target = os.readlink(name, dir_fd=dir_fd)
    size = st.st_size if kind == "file" else 0
    out.append(
        Member(rel, kind, size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, digest, target)
    )
    if kind == "dir":
        with _opendir(name, dir_fd) as sub:
            for child in sorted(os.listdir(sub)):
                _describe(sub, child, f"{rel}/{child}" if rel else child, out)


def _apply_meta(dir_fd: int, name: str, st: os.stat_result) -> None:
    """Owner, then mode (chown clears set-id bits), then times of ``name``."""
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _copy_file(src_dir: int, sname: str, dst_dir: int, dname: str, size: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(dname, flags, 0o600, dir_fd=dst_dir)
        try:
            offset = 0
            while offset < size or size == 0:
                sent = os.sendfile(dst, src, offset, max(size - offset, 1 << 20))
                if sent == 0:
                    break
                offset += sent
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy(src_dir: int, sname: str, dst_dir: int, dname: str) -> None:
    """Copy ``sname`` (a tree too) to ``dname`` with owners, modes and times; fsynced."""
    st = os.stat(sname, dir_fd=src_dir, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(sname, dir_fd=src_dir), dname, dir_fd=dst_dir)
    elif stat.S_ISREG(st.st_mode):
        _copy_file(src_dir, sname, dst_dir, dname, st.st_size)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dname, 0o700, dir_fd=dst_dir)
        with _opendir(sname, src_dir) as s, _opendir(dname, dst_dir) as d:
            for child in os.listdir(s):
                _copy(s, child, d, child)
            os.fsync(d)
    else:
        os.mknod(dname, st.st_mode, st.st_rdev, dir_fd=dst_dir)
    _apply_meta(dst_dir, dname, st)


def _remove(dir_fd: int, name: str) -> None:
    st = _lstat(dir_fd, name)
    if st is not None and stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    elif st is not None:
        os.unlink(name, dir_fd=dir_fd)


def _transfer(src: tuple[int, str], dst: tuple[int, str], keep: bool = False) -> bool:
    """rename(2) (``keep``: link(2)) ``src`` to ``dst`` (dir fd, name), or where that
    cannot be done (another filesystem; a directory to keep) copy it, leaving the source.
    Returns True when renamed. A failed copy leaves nothing at ``dst``."""
    try:
        if not keep:
            os.rename(src[1], dst[1], src_dir_fd=src[0], dst_dir_fd=dst[0])
            return True
        os.link(src[1], dst[1], src_dir_fd=src[0], dst_dir_fd=dst[0], follow_symlinks=False)
        return False
    except OSError as err:
        if err.errno != errno.EXDEV and not (keep and err.errno == errno.EPERM):
            raise
    try:
        _copy(*src, *dst)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(*dst)
        raise
    return False


def _move(src: tuple[int, str], dst: tuple[int, str]) -> None:
    """Move across filesystems too: the source goes once the copy is complete."""
    if not _transfer(src, dst):
        _remove(*src)


def _parse_usage(data: bytes) -> int:
    value = int(data.decode("ascii").strip())
    if value < 0:
        raise ValueError("negative usage")
    return value


def _write_json(dir_fd: int, name: str, data: object) -> None:
    """Replace ``name`` atomically: a temp file, fsync, rename(2), fsync of the directory."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


# --- manifests ------------------------------------------------------------------------

_MEMBER_KEYS: dict[str, type | tuple[type, ...]] = {
    "path": str,
    "kind": str,
    "size": int,
    "mode": int,
    "uid": int,
    "gid": int,
    "mtime_ns": int,
    "sha256": (str, type(None)),
    "target": (str, type(None)),
}
_ENTRY_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "token": str,
    "complete": bool,
    "original": str,
    "deleted_at": (int, float),
    "session": str,
    "command": str,
    "batch": str,
}


def _checked(data: Any, keys: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object")
    for key, typ in keys.items():
        if not isinstance(data.get(key), typ):
            raise ValueError(f"{where}: key {key!r} is missing or has the wrong type")
    return data


def _member(data: Any, where: str) -> Member:
    d = _checked(data, _MEMBER_KEYS, where)
    return Member(**{k: d[k] for k in _MEMBER_KEYS})


def manifest_json(entry: Entry) -> dict[str, object]:
    """The manifest of a complete entry, as stored (also what ``trash list --json`` shows)."""
    return {
        "format": FORMAT,
        "token": entry.token,
        "complete": entry.root is not None,
        "original": entry.original,
        "deleted_at": entry.deleted_at,
        "session": entry.session,
        "command": entry.command,
        "batch": entry.batch,
        "size": entry.size,
        "root": None if entry.root is None else asdict(entry.root),
        "members": [asdict(m) for m in entry.members],
    }


def _parse_manifest(token: str, data: Any) -> Entry:
    d = _checked(data, _ENTRY_KEYS, _MANIFEST)
    if d["format"] != FORMAT or d["token"] != token:
        raise ValueError(f"{_MANIFEST}: format {d['format']} / token {d['token']!r} not ours")
    base = Entry(
        token, d["original"], float(d["deleted_at"]), d["session"], d["command"], d["batch"]
    )
    if not d["complete"]:
        return replace(base, problem="incomplete: the delete was interrupted")
    members = d.get("members")
    if not isinstance(members, builtins.list) or not isinstance(d.get("size"), int):
        raise ValueError(f"{_MANIFEST}: key 'members' or 'size' is missing")
    root = _member(d.get("root"), f"{_MANIFEST}: root")
    found = tuple(_member(m, f"{_MANIFEST}: member {i}") for i, m in enumerate(members))
    return replace(base, size=d["size"], root=root, members=found)


def _token(now: float) -> Token:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return Token(f"{stamp}-{secrets.randbits(32):08x}")


def _under(path: str, top: str) -> str | None:
    """``path`` relative to ``top`` when strictly below it, else None."""
    prefix = top.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


@dataclass
class _Job:
    """One move of a restore: an entry (or one member of it) to ``dest``."""

    entry: Entry
    rel: str  # "" = the whole entry, else a member path inside its data
    dest: Path


@dataclass
class _Restore:
    """State of one restore, run twice: dry (collect conflicts), then for real."""

    force: bool
    dry: bool = True
    conflicts: builtins.list[str] = field(default_factory=builtins.list)
    created: builtins.list[str] = field(default_factory=builtins.list)
    replaced: builtins.list[tuple[str, str]] = field(default_factory=builtins.list)
    dirs: dict[str, Member] = field(default_factory=dict)  # original path -> dir entry meta


class Trash:
    """The store at ``root``. ``quota`` (bytes) makes :meth:`stash` refuse what would take
    the store beyond it."""

    def __init__(self, root: Path = DEFAULT_TRASH_ROOT, *, quota: int | None = None) -> None:
        self.root = Path(root)
        self.quota = quota
        self._lock_fd: int | None = None

    # --- store, lock, usage ---

    def prepare(self) -> None:
        """Create the store now (mode 0700), so that a daemon fails at start, not on the
        first delete.

        Raises:
            StashError: it cannot be created, or exists but is not ours.
        """
        self._ensure_root()

    def _ensure_root(self) -> None:
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.root, 0o700)
            st = os.lstat(self.root)
        except OSError as err:
            raise StashError(
                f"cannot create the trash store {self.root}: {err.strerror}",
                code=err.errno or errno.EIO,
            ) from err
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise StashError(
                f"trash store {self.root} is not a directory owned by uid {os.geteuid()}",
                code=errno.EACCES,
                hint="remove it or point agentsh at another trash directory",
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """flock(2) on .usage, yielding its fd; re-entrant within this instance (a forced
        restore stashes what it replaces)."""
        if self._lock_fd is not None:
            yield self._lock_fd
            return
        self._ensure_root()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.root / _USAGE, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            yield fd
        finally:
            self._lock_fd = None
            os.close(fd)

    def usage(self) -> int:
        """Bytes held by complete entries (from the cache, rebuilt when unreadable)."""
        try:
            with open(self.root / _USAGE, "rb") as f:
                return _parse_usage(f.read(_USAGE_WIDTH))
        except (OSError, ValueError):
            return sum(e.size for e in self.list())

    def _set_usage(self, used: int) -> None:
        with self._locked() as fd:
            os.pwrite(fd, f"{max(used, 0)}".ljust(_USAGE_WIDTH - 1).encode() + b"\n", 0)

    def _add_usage(self, delta: int) -> None:
        with self._locked():
            self._set_usage(self.usage() + delta)

    def _reserve(self, size: int) -> None:
        with self._locked():
            used = self.usage()
            if self.quota is not None and used + size > self.quota:
                raise StashError(
                    f"the trash is full: {used} of {self.quota} bytes used, {size} more needed",
                    code=errno.EDQUOT,
                    hint="free space with `agentsh trash purge --older-than 7d` "
                    "or restore what you need",
                )
            self._set_usage(used + size)

    # --- stash ---

    def stash(
        self,
        path: str | os.PathLike[str],
        *,
        session: str,
        command: str,
        original: str | None = None,
        batch: str | None = None,
        keep: bool = False,
        now: float | None = None,
    ) -> Token:
        """Move ``path`` (a file, symlink or whole tree) into the store.

        Args:
            path: what to move; its parent may be any path, e.g. ``/proc/self/fd/N``.
            session, command: recorded in the manifest (who deleted it, with what).
            original: the path to record and restore to (default: ``path`` with its
                parent resolved).
            batch: groups entries deleted by one process (default: the token itself).
            keep: record ``path`` but leave it in place (a hard link, else a copy): for an
                overwriting rename, which then replaces it atomically.

        Returns:
            The entry's token.

        Raises:
            StashError: full disk (ENOSPC), quota (EDQUOT), store unusable; nothing moved.
            OSError: ``path`` cannot be read or moved (as the kernel said); nothing moved.
            UsageError: ``path`` names no entry (``/``, ``.``, ``..``).
        """
        src = Path(path)
        if src.name in ("", ".", ".."):
            raise UsageError(f"cannot move {str(src)!r} to the trash: name a file or directory")
        when = time.time() if now is None else now
        shown = original or os.path.join(os.path.realpath(src.parent), src.name)
        info = Entry("", shown, when, session, command, batch or "")
        # The parent path is the caller's to choose (symlinks, /proc/self/fd/N): follow it.
        parent = os.open(src.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return Token(self._stash_fd(parent, src.name, info, keep=keep).token)
        finally:
            os.close(parent)

    def _stash_fd(self, parent: int, name: str, info: Entry, *, keep: bool = False) -> Entry:
        size = _tree_bytes(parent, name)
        self._reserve(size)
        try:
            done = self._stash_at(parent, name, info, keep)
        except BaseException:
            self._add_usage(-size)
            raise
        if done.size != size:  # the file changed between lstat and the move
            self._add_usage(done.size - size)
        return done

    def _new_entry(self, when: float) -> Token:
        for _ in range(64):
            token = _token(when)
            try:
                os.mkdir(self.root / token, 0o700)
            except FileExistsError:
                continue
            return token
        raise StashError("could not create a unique trash entry", code=errno.EIO)

    def _stash_at(self, parent: int, name: str, info: Entry, keep: bool) -> Entry:
        try:
            token = self._new_entry(info.deleted_at)
        except OSError as err:
            raise _store_error(err, self.root) from err
        entry = replace(info, token=token, batch=info.batch or token)
        efd = os.open(self.root / token, _DIR)
        try:
            return _fill(efd, parent, name, entry, keep)
        except BaseException as err:
            # Forget the entry unless the file itself is in it (a failed move back).
            if _lstat(efd, _DATA) is None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(self.root / token)
            if isinstance(err, OSError) and err.errno in _STORE_ERRORS:
                raise _store_error(err, self.root) from err
            raise
        finally:
            os.close(efd)

    # --- restore ---

    def restore(
        self,
        token: str,
        *,
        dest: Path | None = None,
        force: bool = False,
        progress: Progress | None = None,
    ) -> RestoreReport:
        """Put an entry back: ``TOKEN`` (a file, or a directory with everything its batch
        deleted below it) or ``TOKEN:relative/path`` (one file of a stashed tree, or of the
        directory's batch).

        Args:
            dest: where to put it instead of its original path (symlinks in ``dest``'s
                parent are resolved; the original path is walked without following any).
            force: replace what exists there; the replaced files go to the trash.
            progress: called with (done, total) moves.

        Raises:
            UsageError: unknown or broken token, no such member, a path that exists
                (names it; nothing was moved), or a symlink or file where a directory
                of the original path should be.
        """
        tok, sep, rel = token.partition(":")
        rel = rel.strip("/")
        with self._locked():
            entries = self.list()
            entry = _find(entries, tok)
            jobs = _jobs(entries, entry, rel if sep else None, _destination(dest))
            state = _Restore(force, dirs=_known_dirs(entries))
            for job in jobs:
                self._run(job, state)
            if state.conflicts and not force:
                shown = ", ".join(state.conflicts[:3])
                more = f" and {len(state.conflicts) - 3} more" if len(state.conflicts) > 3 else ""
                raise UsageError(
                    f"restore would overwrite {shown}{more}; nothing was restored",
                    hint="add --force to replace (the replaced files go to the trash), "
                    "or --dest PATH to restore elsewhere",
                )
            state.dry = False
            for i, job in enumerate(jobs, 1):
                self._run(job, state)
                self._finish(job)
                if progress is not None:
                    progress(i, len(jobs))
            _restore_dir_times(jobs)
        files = sum(_count_files(j) for j in jobs)
        return RestoreReport(
            tuple(str(j.dest) for j in jobs),
            files,
            tuple(state.created),
            tuple(state.replaced),
        )

    def _run(self, job: _Job, state: _Restore) -> None:
        src = self.root / job.entry.token / _DATA / job.rel if job.rel else None
        src_parent = src.parent if src is not None else self.root / job.entry.token
        with _opendir(src_parent) as sfd:
            dfd = self._dest_dir(job.dest.parent, state)
            try:
                sname = src.name if src is not None else _DATA
                self._merge((sfd, sname), (dfd, job.dest.name), str(job.dest), state)
            finally:
                if dfd is not None:
                    os.close(dfd)

    def _dest_dir(self, path: Path, state: _Restore) -> int | None:
        """An fd of directory ``path`` walked from / with O_NOFOLLOW, creating missing
        directories (real run) with the mode of a trashed directory of that path if any.
        None in a dry run when it does not exist yet."""
        fd = os.open("/", _DIR)
        walked = Path("/")
        try:
            for part in path.parts[1:]:
                walked /= part
                if _lstat(fd, part) is None:
                    if state.dry:
                        os.close(fd)
                        return None
                    self._make_dir(fd, part, str(walked), state)
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except OSError as err:
                    raise UsageError(
                        f"cannot restore into {path}: {walked} is a symlink or not a directory",
                        hint="restore with --dest PATH to choose where it goes",
                    ) from err
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _make_dir(self, fd: int, name: str, path: str, state: _Restore) -> None:
        meta = state.dirs.get(path)
        os.mkdir(name, 0o700, dir_fd=fd)
        if meta is not None:
            os.chown(name, meta.uid, meta.gid, dir_fd=fd, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(meta.mode) if meta is not None else 0o755, dir_fd=fd)
        state.created.append(path)

    def _merge(
        self, src: tuple[int, str], dst: tuple[int | None, str], where: str, state: _Restore
    ) -> None:
        """Move ``src`` to ``dst`` (dir fd, name); into an existing directory, merge."""
        (sfd, sname), (dfd, dname) = src, dst
        there = _lstat(dfd, dname) if dfd is not None else None
        if there is None:
            if not state.dry and dfd is not None:
                _move((sfd, sname), (dfd, dname))
            return
        assert dfd is not None
        here = os.stat(sname, dir_fd=sfd, follow_symlinks=False)
        if stat.S_ISDIR(here.st_mode) and stat.S_ISDIR(there.st_mode):
            with _opendir(sname, sfd) as s, _opendir(dname, dfd) as d:
                for child in sorted(os.listdir(s)):
                    self._merge((s, child), (d, child), f"{where}/{child}", state)
            if not state.dry:
                _apply_meta(dfd, dname, here)
                os.rmdir(sname, dir_fd=sfd)
        elif state.dry:
            state.conflicts.append(where)
        elif not state.force:
            raise UsageError(f"{where} appeared during the restore; stopped before it")
        else:
            info = Entry("", where, time.time(), "agentsh", "agentsh trash restore --force")
            state.replaced.append((where, self._stash_fd(dfd, dname, info).token))
            _move((sfd, sname), (dfd, dname))

    def _finish(self, job: _Job) -> None:
        """Drop what the job restored from its entry: the whole entry, or one member."""
        entry_dir = self.root / job.entry.token
        if not job.rel:
            shutil.rmtree(entry_dir)
            self._add_usage(-job.entry.size)
            return
        gone = [m for m in job.entry.members if m.path == job.rel or _under(m.path, job.rel)]
        left = tuple(m for m in job.entry.members if m not in gone)
        freed = sum(m.size for m in gone)
        kept = replace(job.entry, members=left, size=job.entry.size - freed)
        with _opendir(entry_dir) as efd:
            _write_json(efd, _MANIFEST, manifest_json(kept))
        self._add_usage(-freed)

    # --- purge and list ---

    def purge(
        self,
        older_than: float | None = None,
        quota: int | None = None,
        *,
        now: float | None = None,
        progress: Progress | None = None,
    ) -> PurgeReport:
        """Delete entries for good: those deleted more than ``older_than`` seconds ago,
        then the oldest until the rest fit in ``quota`` bytes. With neither, all of them.
        Broken entries go by age; incomplete ones younger than PENDING_GRACE_S stay (a
        stash may still be writing them)."""
        when = time.time() if now is None else now
        with self._locked():
            entries = self.list()
            doomed = [e for e in entries if _expired(e, older_than, quota, when)]
            kept = [e for e in entries if e not in doomed]
            total = sum(e.size for e in kept)
            for e in builtins.list(kept):  # oldest first
                if quota is None or total <= quota:
                    break
                if e.root is not None:
                    doomed.append(e)
                    kept.remove(e)
                    total -= e.size
            for i, e in enumerate(doomed, 1):
                shutil.rmtree(self.root / e.token, ignore_errors=True)
                if progress is not None:
                    progress(i, len(doomed))
            self._set_usage(total)
        return PurgeReport(tuple(doomed), sum(e.size for e in doomed), len(kept), total)

    def _load(self, token: str) -> Entry:
        entry_dir = self.root / token
        try:
            with open(entry_dir / _MANIFEST, encoding="utf-8") as f:
                return _parse_manifest(token, json.load(f))
        except FileNotFoundError:
            why = "no manifest: the delete was interrupted"
        except (OSError, ValueError) as err:
            why = f"unreadable manifest: {err}"
        try:
            mtime = os.lstat(entry_dir).st_mtime
        except OSError:
            mtime = 0.0
        return Entry(token, "", mtime, problem=f"{why} (data, if any, is in {entry_dir})")

    def list(self) -> builtins.list[Entry]:
        """Every entry, oldest first; broken ones carry ``problem`` instead of failing."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        found = [self._load(n) for n in names if _TOKEN.match(n)]
        return sorted(found, key=lambda e: (e.deleted_at, e.token))


def _store_error(err: OSError, root: Path) -> StashError:
    if err.errno == errno.ENOSPC:
        why = f"the disk holding the trash ({root}) is full"
    else:
        why = f"the trash store {root} cannot be written: {err.strerror}"
    return StashError(
        f"{why}; the file was not deleted",
        code=err.errno or errno.EIO,
        hint="free disk space or run `agentsh trash purge`",
    )


def _fill(efd: int, parent: int, name: str, entry: Entry, keep: bool) -> Entry:
    """Move ``name`` into the entry and write its manifest. Order: the move, the manifest
    (durable), and only then, after a copy, the removal of the original (unless ``keep``)."""
    renamed = _transfer((parent, name), (efd, _DATA), keep)
    try:
        described: builtins.list[Member] = []
        _describe(efd, _DATA, "", described)
        size = sum(m.size for m in described)
        done = replace(entry, size=size, root=described[0], members=tuple(described[1:]))
        _write_json(efd, _MANIFEST, manifest_json(done))
        if not renamed and not keep:
            _remove(parent, name)
    except BaseException:
        if renamed:
            os.rename(_DATA, name, src_dir_fd=efd, dst_dir_fd=parent)
        else:  # the original is still in place (or partly): drop our copy
            _remove(efd, _DATA)
        raise
    return done


def _known_dirs(entries: builtins.list[Entry]) -> dict[str, Member]:
    """Every trashed directory by original path (newest wins): the metadata a restore
    gives a missing parent it has to make."""
    known: dict[str, Member] = {}
    for e in entries:
        for m in (e.root, *e.members):
            if m is not None and m.kind == "dir":
                known[f"{e.original}/{m.path}" if m.path else e.original] = m
    return known


def _find(entries: builtins.list[Entry], token: str) -> Entry:
    for e in entries:
        if e.token == token:
            if e.root is None:
                raise UsageError(f"trash entry {token} cannot be restored: {e.problem}")
            return e
    raise UsageError(f"no trash entry {token!r}", hint="list them with `agentsh trash list`")


def _destination(dest: Path | None) -> Path | None:
    if dest is None:
        return None
    absolute = Path(os.path.abspath(dest))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def _jobs(
    entries: builtins.list[Entry], entry: Entry, rel: str | None, dest: Path | None
) -> builtins.list[_Job]:
    """The moves of one restore, parents before children."""
    base = Path(entry.original)
    if rel is not None:
        if any(m.path == rel for m in entry.members):
            return [_Job(entry, rel, dest or base / rel)]
        wanted = f"{entry.original}/{rel}"
        same = [e for e in entries if e.batch == entry.batch and e.original == wanted]
        if not rel or not same or same[-1].root is None:
            raise UsageError(f"trash entry {entry.token} holds no {rel!r}")
        return [_Job(same[-1], "", dest or Path(wanted))]
    top = dest or base
    jobs = [_Job(entry, "", top)]
    if entry.kind == "dir":
        below = [
            (e, _under(e.original, entry.original))
            for e in entries
            if e.batch == entry.batch and e is not entry and e.root is not None
        ]
        inside = sorted((r.count("/"), r, e) for e, r in below if r)
        jobs += [_Job(e, "", top / r) for _, r, e in inside]
    return jobs


def _count_files(job: _Job) -> int:
    if job.rel:
        items = [m for m in job.entry.members if m.path == job.rel or _under(m.path, job.rel)]
    else:
        items = [m for m in (job.entry.root, *job.entry.members) if m is not None]
    return sum(1 for m in items if m.kind != "dir")


def _restore_dir_times(jobs: builtins.list[_Job]) -> None:
    """Moving children in touched the directories' mtimes: set them back, deepest first."""
    for job in sorted(jobs, key=lambda j: -len(j.dest.parts)):
        meta = job.entry.root if not job.rel else None
        if meta is None or meta.kind != "dir":
            continue
        with contextlib.suppress(OSError):
            os.utime(job.dest, ns=(meta.mtime_ns, meta.mtime_ns), follow_symlinks=False)


def _expired(e: Entry, older_than: float | None, quota: int | None, now: float) -> bool:
    if e.root is None and now - e.deleted_at < PENDING_GRACE_S:
        return False
    if older_than is None:
        return quota is None
    return now - e.deleted_at > older_than
