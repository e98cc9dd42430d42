"""enforce.terminals: which pseudo-terminal is whose, read from /proc."""

from __future__ import annotations

import os
import subprocess

from agentsh.enforce import terminals


def test_a_pty_is_known_by_its_device_number() -> None:
    master, slave = os.openpty()
    try:
        index = terminals.pts_index(os.fstat(slave))
        assert index is not None
        assert os.ttyname(slave) == f"/dev/pts/{index}"
        assert terminals.pts_index(os.fstat(master)) is None  # the master is /dev/ptmx
        assert terminals.pts_index(os.stat("/dev/null")) is None
        assert terminals.master_holders(index) == [os.getpid()]
    finally:
        os.close(master)
        os.close(slave)
    assert terminals.master_holders(index) == []


def test_ownership_of_ptys() -> None:
    """A pty whose master a member holds is the tree's; for a tree rooted in a process
    with no terminal, one held by nobody in it is another session's."""
    master, slave = os.openpty()
    root = subprocess.Popen(
        ["sleep", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        index = terminals.pts_index(os.fstat(slave))
        assert index is not None
        mine = terminals.Ownership(root.pid, lambda pid: pid == os.getpid())
        assert not mine.foreign(root.pid, index)
        theirs = terminals.Ownership(root.pid, lambda pid: pid == root.pid)
        assert theirs.foreign(root.pid, index)
        assert theirs.own == set()  # the root has no terminal and no pty streams
    finally:
        root.kill()
        root.wait()
        os.close(master)
        os.close(slave)


def test_a_process_without_a_terminal_has_none() -> None:
    assert terminals.ctty_index(os.getpid()) in (None, *range(0, 1 << 20))
    assert terminals.ctty_index(1 << 30) is None  # no such process
