"""The file monitor's path calls, carried out: once ``enforce.fileguard`` has allowed an
unlink/rmdir, rename, link, mkdir, symlink, truncate, chmod or chown, the supervisor does
it itself on the entries it checked, and answers as the kernel did. The syscall never
runs, so a racing thread cannot swap another path in after the check.

Each call goes through directory fds resolved again now, whose canonical paths must
still be the ones judged (``filecalls.entry``/``held``/``directory``: else a swapped
directory is refused); as the process (``enforce.identity``, taken on by
``standin.Opener.taken_on``); and as the tree's Landlock rules would allow it
(``enforce.grants``: the supervisor is outside the domain). An unlink/rmdir a
``soft_delete`` rule decides moves the entry into the trash (``enforce.trash``) instead.
With ``openat_emulation`` off, every allowed call is CONTINUEd.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat as _stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from agentsh.enforce import audit, filemon, grants, identity, metacalls, seccomp, tracee
from agentsh.enforce.callers import Callers
from agentsh.enforce.filecalls import Item, Target, directory, entry, held, renameat2
from agentsh.enforce.policy import Decision, Verdict

if TYPE_CHECKING:
    from agentsh.enforce.standin import Opener
    from agentsh.enforce.supervisor import Supervisor
    from agentsh.enforce.trash import Trash

_CAP_FOWNER: Final = 3
_DELETES: Final = frozenset(filemon.FAMILIES["delete"][1])  # unlink, rmdir, unlinkat
_RENAMES: Final = frozenset(filemon.FAMILIES["rename"][1])  # rename, renameat, renameat2
_NR_RENAMEAT2: Final = 316
_LINKS: Final = frozenset(filemon.FAMILIES["link"][1])  # link, linkat
_ALLOWED: Final = Verdict(Decision.ALLOW, None, "allowed")


class PathCalls:
    """Carries out the allowed path calls of one governed tree (module docstring)."""

    def __init__(self, plan: filemon.Plan, opener: Opener, callers: Callers) -> None:
        self.plan = plan
        self.opener = opener
        self.callers = callers
        self.trash_root = plan.trash  # opened at the first soft delete (enforce.trash
        self._trash: Trash | None = None  # imports hashlib & co.: off every start's path)

    def carry_out(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        items: list[Item],
        checked: tuple[list[str], Target],
        same: bool | None,
    ) -> None:
        """Carry out an allowed path call (each item's canonical path was
        ``checked[0]``; ``checked[1]`` the last target); one this module does not know,
        or any with ``openat_emulation`` off, CONTINUEs."""
        judged, target = checked
        nr = note.nr
        if not self.plan.emulate:
            sup.listener.allow(note.id)
        elif nr in _DELETES and len(items) == 1:
            self.delete(sup, note, items[0], target, same, soft=False)
        elif nr in _RENAMES and len(items) == 2:
            self._rename(sup, note, items, judged, same)
        elif nr in _LINKS and len(items) == 2:
            self._link(sup, note, items, judged, same)
        elif nr in metacalls.MAKES or nr in metacalls.CHANGES:
            self._meta(sup, note, items[0], judged[0], same)
        else:
            sup.listener.allow(note.id)

    def refusal(self, item: Item, target: Target) -> Verdict:
        """DENY for a delete (or a rename over an entry) in a ``refuse_deletes`` tree;
        AUDIT for one in an ``audit_deletes`` tree; else ALLOW."""
        ops = item.ops
        replacing = ops == ("rename",) and not item.source and target.st is not None
        deleting = ops[0] in ("delete", "rmdir") or replacing
        if not deleting:
            return _ALLOWED
        if any(under(target.path, t) for t in self.plan.audit_deletes):
            why = "soft delete is not available here (no FUSE): the delete is real"
            return Verdict(Decision.AUDIT, "soft-delete-unavailable", why, target.path)
        tree = next((t for t in self.plan.refuse_deletes if under(target.path, t)), None)
        if tree is None:
            return _ALLOWED
        why = (
            f"deletes in {tree} must be recoverable, but the soft-delete view (FUSE) is "
            "not available here; ask the operator, or keep the file"
        )
        return Verdict(Decision.DENY, "soft-delete-unavailable", why, target.path)

    def soft(self, item: Item, verdict: Verdict) -> bool:
        """``verdict`` on ``item`` is a soft delete this tree can carry out."""
        return (
            self.trash_root is not None
            and verdict.decision is Decision.SOFT_DELETE
            and item.ops[0] in ("delete", "rmdir")
        )

    def delete(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        item: Item,
        target: Target,
        same: bool | None,
        *,
        soft: bool,
    ) -> None:
        """Carry out an allowed unlink/rmdir on the entry checked, through the directory
        fd resolved now, then answer as the kernel did. ``soft``: move the entry into
        the trash (:meth:`_stash`) instead of removing it as the process."""
        who = self.callers.who(note.pid)
        rmdir = item.ops[0] == "rmdir"
        with entry(note.pid, item, same, target.path) as (dirfd, name):
            if not self.opener.removable(note.pid, dirfd, directory=rmdir, same=same):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))  # Landlock's answer
            if soft:
                self._stash(sup, note, item, target, where=(dirfd, name), who=who)
                return
            with self.opener.taken_on(who):
                (os.rmdir if rmdir else os.unlink)(name, dir_fd=dirfd)
        sup.listener.succeed(note.id, 0)

    def _stash(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        item: Item,
        target: Target,
        *,
        where: tuple[int, bytes],
        who: identity.Identity | None,
    ) -> None:
        """Move ``where`` (directory fd, name) into the trash and answer 0. A process
        whose credentials differ from the supervisor's must have been allowed the delete
        itself (:meth:`_may_delete`); the move is the supervisor's."""
        from agentsh.enforce.trash import StashError, Trash  # see __init__

        if self._trash is None:
            assert self.trash_root is not None
            self._trash = Trash(Path(self.trash_root))
        dirfd, name = where
        if who is not None:
            self._may_delete(dirfd, name, who)
        here = f"/proc/self/fd/{dirfd}/{os.fsdecode(name)}"
        if item.ops[0] == "rmdir" and any(os.scandir(here)):
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY))
        try:
            token = self._trash.stash(
                here,
                session=sup.session,
                command=_cmdline(note.pid),
                original=target.path,
                batch=f"{sup.session}-{tracee.tgid(note.pid)}",
            )
        except StashError as err:
            sup.listener.fail(note.id, err.code)
            return
        why = f"moved {target.path} to the trash; restore with `agentsh trash restore {token}`"
        what = f"{item.ops[0]} {target.path}"
        sup.record(event(sup, note.pid, what, decision="soft_delete", rule=None, message=why))
        sup.listener.succeed(note.id, 0)

    def _may_delete(self, dirfd: int, name: bytes, who: identity.Identity) -> None:
        """Raise what unlink(2)/rmdir(2) of ``name`` in ``dirfd`` would for ``who`` on
        permission grounds (path_resolution(7)): write and search permission on the
        directory, as ``who`` (faccessat(2) with AT_EACCESS checks the file system ids
        and capabilities taken on), and the sticky bit (only the entry's or the
        directory's owner, or CAP_FOWNER)."""
        with self.opener.taken_on(who):
            allowed = os.access(f"/proc/self/fd/{dirfd}", os.W_OK | os.X_OK, effective_ids=True)
        if not allowed:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        up = os.fstat(dirfd)
        if up.st_mode & _stat.S_ISVTX and not who.caps & (1 << _CAP_FOWNER):
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if who.fsuid not in (st.st_uid, up.st_uid):
                raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def _rename(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        items: list[Item],
        judged: list[str],
        same: bool | None,
    ) -> None:
        """Carry out an allowed rename/renameat/renameat2 on the entries checked, through
        the directory fds resolved now, as the process and as Landlock would allow it
        (``grants.rename_refusal``), then answer as the kernel did."""
        pid = note.pid
        flags = note.args[4] & 0xFFFFFFFF if note.nr == _NR_RENAMEAT2 else 0
        who = self.callers.who(pid)
        with (
            entry(pid, items[0], same, judged[0]) as old,
            entry(pid, items[1], same, judged[1]) as new,
        ):
            if flags & grants.RENAME_NOREPLACE and _exists(*new):
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            err = self.opener.rename_refusal(pid, old, new, flags, same)
            if err:
                raise OSError(err, os.strerror(err))  # Landlock's answer
            with self.opener.taken_on(who):
                renameat2(*old, *new, flags)
        sup.listener.succeed(note.id, 0)

    def _link(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        items: list[Item],
        judged: list[str],
        same: bool | None,
    ) -> None:
        """Carry out an allowed link/linkat: the object checked (held by an O_PATH fd)
        gets its new name in the directory checked, through /proc/self/fd with
        AT_SYMLINK_FOLLOW (which needs no capability, unlike AT_EMPTY_PATH), as the
        process and as Landlock would allow it; then answer as the kernel did."""
        pid = note.pid
        who = self.callers.who(pid)
        with (
            held(pid, items[0], same, judged[0]) as src,
            directory(pid, os.path.dirname(src.path), same) as up,
            entry(pid, items[1], same, judged[1]) as new,
        ):
            old = (up, os.fsencode(os.path.basename(src.path)))
            err = self.opener.rename_refusal(pid, old, new, 0, same, link=True)
            if err:
                raise OSError(err, os.strerror(err))  # Landlock's answer
            with self.opener.taken_on(who):
                os.link(f"/proc/self/fd/{src.fd}", new[1], dst_dir_fd=new[0])
        sup.listener.succeed(note.id, 0)

    def _meta(
        self,
        sup: Supervisor,
        note: seccomp.Notification,
        item: Item,
        judged: str,
        same: bool | None,
    ) -> None:
        """Carry out an allowed mkdir, symlink, truncate, chmod or chown on the entry
        checked (``enforce.metacalls``), then answer as the kernel did."""
        pid, call = note.pid, (note.nr, note.args)
        raw = self.callers.status(pid)
        who = self.callers.who(pid, raw)
        if note.nr in metacalls.MAKES:
            with entry(pid, item, same, judged) as made:
                metacalls.make(self.opener, pid, call, made, who=who, status=raw, same=same)
        else:
            with held(pid, item, same, judged) as target:
                metacalls.change(self.opener, pid, call, target, who=who, same=same)
        sup.listener.succeed(note.id, 0)


def under(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies beneath it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def event(
    sup: Supervisor, tid: int, what: str, *, decision: str, rule: str | None, message: str
) -> audit.Event:
    """The audit event of a file decision on thread ``tid``'s call ``what``."""
    return audit.Event(
        time.time(), sup.session, tid, tracee.cwd(tid), (what,), decision, rule, message,
        "file", "file",
    )  # fmt: skip


def _exists(dirfd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _cmdline(tid: int) -> str:
    raw = tracee.read_proc(b"/proc/%d/cmdline" % tid) or b""
    return shlex.join(os.fsdecode(a) for a in raw.split(b"\0")[:-1]) or f"pid {tid}"
