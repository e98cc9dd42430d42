"""``enforce.standin.choose``: how the supervisor opens, in a tracee's stead, each kind of
file the monitor checked (real device nodes, procfs and a pty of this machine)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsh.enforce import standin
from agentsh.enforce.filecalls import Target
from agentsh.enforce.identity import Identity

pytestmark = pytest.mark.e2e

WHO = Identity(1000, 1000, (), 0)
ME = os.getpid()


def _target(path: str) -> Target:
    return Target(path, None, os.stat(path))


def _choose(path: str, flags: int = os.O_RDONLY, **kw: bool | None) -> object:
    opts = {"landlocked": False, "member": None} | kw
    return standin.choose(ME, ME, flags, _target(path), WHO, **opts)


def test_files_and_devices_are_reopened_as_the_process(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for path in (str(tmp_path / "f"), str(tmp_path), "/dev/null", "/dev/urandom"):
        assert _choose(path) == standin.Open(None, os.O_RDONLY, WHO)


def test_a_fifo_opened_blocking_waits_in_a_thread(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "p")
    assert _choose(str(tmp_path / "p")) == standin.Open(None, os.O_RDONLY, WHO, wait=True)
    nonblocking = os.O_RDONLY | os.O_NONBLOCK
    assert _choose(str(tmp_path / "p"), nonblocking) == standin.Open(None, nonblocking, WHO)


def test_a_terminal_never_becomes_anyones_controlling_terminal() -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        assert _choose(path) == standin.Open(None, os.O_RDONLY | os.O_NOCTTY, WHO)
    finally:
        os.close(master)
        os.close(slave)


def test_own_proc_entries_open_as_the_supervisor_others_as_the_process() -> None:
    assert _choose(f"/proc/{ME}/stat") == standin.Open(None, os.O_RDONLY, None)
    assert _choose(f"/proc/{ME}/task/{ME}/maps") == standin.Open(None, os.O_RDONLY, None)
    assert _choose("/proc/1/stat", member=False) == standin.Open(None, os.O_RDONLY, WHO)
    assert _choose("/proc/cpuinfo") == standin.Open(None, os.O_RDONLY, WHO)


@pytest.fixture
def outsider() -> Iterator[int]:
    child = subprocess.Popen(["sleep", "30"])
    yield child.pid
    child.kill()
    child.wait()


def test_landlock_fences_what_a_tree_may_see_of_outside_processes(outsider: int) -> None:
    """In a Landlock domain only the public entries of a process outside the tree open;
    the rest is EACCES, as Landlock answers. A member of the tree, or no Landlock: all."""
    fenced = {"landlocked": True, "member": False}
    assert isinstance(_choose(f"/proc/{outsider}/stat", **fenced), standin.Open)
    assert isinstance(_choose(f"/proc/{outsider}", **fenced), standin.Open)
    refused = _choose(f"/proc/{outsider}/maps", **fenced)
    assert isinstance(refused, standin.Refusal)
    assert (refused.err, refused.rule, refused.tell) == (errno.EACCES, "landlock-ptrace", False)
    member = {"landlocked": True, "member": True}
    assert isinstance(_choose(f"/proc/{outsider}/maps", **member), standin.Open)
    assert isinstance(_choose(f"/proc/{outsider}/maps", landlocked=False), standin.Open)


def test_dev_tty_is_the_processs_own_controlling_terminal() -> None:
    """Through ``script``, a child with a pty as its controlling terminal: /dev/tty is
    that pty, reopened through one of its own descriptors; without one, ENXIO."""
    code = (
        "import os, sys\n"
        "from agentsh.enforce import standin\n"
        "from agentsh.enforce.filecalls import Target\n"
        "t = Target('/dev/tty', None, os.stat('/dev/tty'))\n"
        "how = standin.choose(os.getpid(), os.getpid(), os.O_RDWR, t, None, landlocked=False)\n"
        "fd = os.open(how.path, how.flags)\n"
        "print(how.path.startswith(f'/proc/{os.getpid()}/fd/'), how.flags & os.O_NOCTTY != 0,\n"
        "      os.ttyname(fd) == os.ttyname(0))\n"
    )
    run = subprocess.run(
        ["script", "-qec", f"{sys.executable} -c {_quote(code)}", "/dev/null"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    assert run.stdout.split() == ["True", "True", "True"], run
    if Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()[4] != b"0":
        return  # run from a terminal: this process has one
    none = standin.choose(ME, ME, os.O_RDONLY, _target("/dev/tty"), None, landlocked=False)
    assert none == standin.Refusal(
        errno.ENXIO, "no-controlling-terminal", "no controlling terminal"
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"
