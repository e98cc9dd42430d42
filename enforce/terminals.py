"""Whose terminal is it: the file monitor lets a governed process open a pseudo-terminal
(``/dev/pts/N``) only when it belongs to the governed tree.

Policies allow ``/dev/pts/**`` because a shell needs its own terminal. But every session
on the machine has one there: opened by a governed root process, a person's terminal
could be written to (escape sequences: retitle it, rewrite what it shows, set its
clipboard with OSC 52 so that the next paste runs a command) or read from (keystrokes
taken before the person's shell gets them). A pseudo-terminal is the tree's own when:

- it is the controlling terminal, or one of the standard streams, of the governed root
  (the terminal the agent or person runs on), recorded at the first check;
- it is the caller's own controlling terminal;
- or a member of the tree holds its master side (``script``, ``tmux``, ``expect``,
  python's ``pty``: ptys the tree made), found from ``/proc/PID/fdinfo`` ("tty-index").

Anything else is another session's; the monitor refuses it (rule
``terminal-of-another-session``). Reads of /proc only; nothing here changes anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Final

from agentsh.enforce import tracee

PTS_MAJORS: Final = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. + 7 (2048 ptys a major)
RULE: Final = "terminal-of-another-session"


def pts_index(st: os.stat_result) -> int | None:
    """The pty number of a /dev/pts character device, None for anything else."""
    if not stat.S_ISCHR(st.st_mode):
        return None
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return (major - PTS_MAJORS.start) * 256 + minor if major in PTS_MAJORS else None


def ctty_index(pid: int) -> int | None:
    """The pty number of ``pid``'s controlling terminal (``tty_nr`` in its stat)."""
    raw = tracee.read_proc(b"/proc/%d/stat" % pid, 1024)
    if not raw:
        return None
    tty_nr = int(raw[raw.rfind(b")") + 2 :].split()[4])
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    return (major - PTS_MAJORS.start) * 256 + minor if major in PTS_MAJORS else None


def stream_indexes(pid: int) -> set[int]:
    """The pty numbers of ``pid``'s standard streams that are /dev/pts devices."""
    found = set()
    for fd in (0, 1, 2):
        try:
            index = pts_index(os.stat(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if index is not None:
            found.add(index)
    return found


def master_holders(index: int) -> list[int]:
    """Processes holding the master side of pty ``index``."""
    holders = []
    for pid in _all_pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                    continue
            except OSError:
                continue
            info = tracee.read_proc(f"/proc/{pid}/fdinfo/{fd}".encode())
            if info and _tty_index(info) == index:
                holders.append(pid)
                break
    return holders


class Ownership:
    """Decides, for one governed tree, whether a pty is its own (see the docstring)."""

    def __init__(self, root: int, member: Callable[[int], bool]) -> None:
        self.root, self.member = root, member
        self.own: set[int] | None = None  # the root's terminal(s), recorded at first use

    def foreign(self, tid: int, index: int) -> bool:
        """Pty ``index`` is another session's (``tid`` is opening it)."""
        if self.own is None:
            self.own = stream_indexes(self.root)
            root_tty = ctty_index(self.root)
            if root_tty is not None:
                self.own.add(root_tty)
        if index in self.own or index == ctty_index(tid):
            return False
        return not any(self.member(pid) for pid in master_holders(index))


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _tty_index(info: bytes) -> int | None:
    for line in info.splitlines():
        if line.startswith(b"tty-index:"):
            return int(line.split()[1])
    return None
