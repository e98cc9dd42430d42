"""enforce.callers: whose credentials a trapped call carries out file calls with."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsh.enforce import callers
from agentsh.enforce.callers import Callers
from agentsh.enforce.filecalls import CRED_FIELDS, Refused, cred_lines


def test_a_thread_with_the_supervisors_credentials_is_nobody_to_take_on() -> None:
    assert Callers().who(os.getpid()) is None


@contextlib.contextmanager
def _child(setup: str) -> Iterator[int]:
    """A python process that runs ``setup``, then waits; its pid."""
    code = f"import ctypes, os, sys; {setup}; print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        yield child.pid
    finally:
        child.communicate("")


def test_a_process_with_other_ids_is_taken_on_as_itself() -> None:
    setup = "os.setgroups([]); os.setresgid(4321, 4321, 4321); os.setresuid(1234, 1234, 1234)"
    with _child(setup) as pid:
        who = Callers().who(pid)
    assert who is not None
    assert (who.fsuid, who.fsgid, who.groups, who.caps) == (1234, 4321, (), 0)


def test_a_gone_thread_is_refused_and_its_reused_id_never_read_through_the_old_fd() -> None:
    c = Callers()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    pid = child.pid
    c.status(pid)
    kept = c.fds[pid]
    assert _points_at(kept, f"/proc/{pid}/status")
    child.wait()
    with pytest.raises(Refused, match="credentials could not be read"):
        c.status(pid)
    assert pid not in c.fds
    assert not _points_at(kept, f"/proc/{pid}/status")  # closed, not left open


def _points_at(fd: int, path: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == path
    except FileNotFoundError:
        return False


def test_the_kept_fds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callers, "STATUS_FDS_MAX", 2)
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        c = Callers()
        for p in sleepers:
            assert b"State:" in c.status(p.pid)
            assert len(c.fds) <= 2
        assert sleepers[-1].pid in c.fds
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_cred_lines_are_the_status_lines_that_decide_file_access() -> None:
    status = Path("/proc/self/status").read_bytes()
    by_line = {line.split(b":")[0]: line for line in status.split(b"\n")}
    assert cred_lines(status) == tuple(by_line[f[:-1]] for f in CRED_FIELDS)
    assert cred_lines(b"Name:\tx\nUid:\t5\t5\t5\t5\n") == (b"Uid:\t5\t5\t5\t5", b"", b"", b"", b"")


def test_a_thread_cannot_forge_its_credentials_through_its_name() -> None:
    """A thread's name is the one free-text line before Uid: the kernel escapes it."""
    setup = (
        "ctypes.CDLL(None).prctl(15, b'x\\nUid:\\t0\\t0\\t0\\t0', 0, 0, 0); "
        "os.setresuid(1234, 1234, 1234)"
    )
    with _child(setup) as pid:
        status = Path(f"/proc/{pid}/status").read_bytes()
        who = Callers().who(pid)
    assert status.startswith(b"Name:\tx\\nUid:")  # escaped, still one line
    assert cred_lines(status)[0] == b"Uid:\t1234\t1234\t1234\t1234"
    assert who is not None
    assert who.fsuid == 1234
