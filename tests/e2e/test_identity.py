"""``enforce.identity``: the supervisor opens files exactly as able as a tracee, for the
length of one ``with`` block, on one thread — and always gets its own credentials back.

Each case runs in a thread of its own (credentials set by raw system calls are per
thread), so a bug here cannot leave the test process with the wrong credentials. Needs
root: the cases switch to other users.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import identity

pytestmark = pytest.mark.e2e

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_SETGID = 1, 2, 6

if os.geteuid() != 0:
    pytest.skip("switching to other users needs root", allow_module_level=True)


def _in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a fresh thread; its result, or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except Exception as err:  # noqa: BLE001 — handed back to the test
            out.append(err)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return out[0]


def _opens(path: Path) -> str:
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as err:
        return err.strerror or "error"
    return "ok"


@pytest.fixture
def files() -> Iterator[dict[str, Path]]:
    """A 0600 file of root, a 0600 file of uid 1234, a 0640 file of 1234:4321, in a
    directory every user may enter (pytest's own temporary root is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="agentsh-identity-"))
    base.chmod(0o755)
    yield _made(base)
    shutil.rmtree(base)


def _made(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name, owner, mode in (("root", (0, 0), 0o600), ("alien", (1234, 1234), 0o600)):
        made[name] = tmp_path / name
        made[name].write_text(name)
        os.chown(made[name], *owner)
        made[name].chmod(mode)
    made["group"] = tmp_path / "group"
    made["group"].write_text("group")
    os.chown(made["group"], 1234, 4321)
    made["group"].chmod(0o640)
    return made


def test_another_user_opens_only_what_that_user_may(files: dict[str, Path]) -> None:
    def work() -> tuple[list[str], list[str], identity.Identity]:
        mine = identity.current()
        with identity.assumed(identity.Identity(1000, 1000, (), 0), mine):
            inside = [_opens(files[n]) for n in ("root", "alien", "group")]
        return inside, [_opens(files[n]) for n in ("root", "alien", "group")], identity.current()

    inside, after, back = _in_thread(work)
    assert inside == ["Permission denied"] * 3
    assert after == ["ok"] * 3
    assert back == identity.current()


def test_the_check_on_the_way_back_reads_this_threads_credentials() -> None:
    """``assumed`` checks what it restored by system calls that report on the calling
    thread (not /proc): they must say what /proc says of the thread, inside a take-on
    (other ids, groups, no capabilities) as well as outside it."""

    def work() -> list[tuple[identity.Identity, identity.Identity]]:
        mine = identity.current()
        seen = [(identity._now(), identity.current())]
        with identity.assumed(identity.Identity(1000, 1001, (27, 4321), 0), mine):
            seen.append((identity._now(), identity.current()))
        seen.append((identity._now(), identity.current()))
        return seen

    seen = _in_thread(work)
    assert all(now == proc for now, proc in seen), seen
    assert seen[1][0] == identity.Identity(1000, 1001, (27, 4321), 0)
    assert seen[0][0] == seen[2][0] != seen[1][0]


def test_supplementary_groups_are_taken_on(files: dict[str, Path]) -> None:
    def work() -> tuple[str, str]:
        mine = identity.current()
        with identity.assumed(identity.Identity(1000, 1000, (4321,), 0), mine):
            member = _opens(files["group"])
        with identity.assumed(identity.Identity(1000, 1000, (), 0), mine):
            stranger = _opens(files["group"])
        return member, stranger

    assert _in_thread(work) == ("ok", "Permission denied")


def test_a_dropped_capability_is_dropped_for_the_open(files: dict[str, Path]) -> None:
    """Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: its own 0600 file opens,
    another user's does not."""

    def work() -> tuple[str, str, str]:
        mine = identity.current()
        weaker = mine._replace(caps=mine.caps & ~(1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH))
        with identity.assumed(weaker, mine):
            own, alien = _opens(files["root"]), _opens(files["alien"])
        return own, alien, _opens(files["alien"])

    assert _in_thread(work) == ("ok", "Permission denied", "ok")


def test_more_than_we_hold_is_refused_and_nothing_changes() -> None:
    """A thread that gave up CAP_SETGID for good cannot take on other groups: the block
    never runs and the thread's credentials are as they were."""

    def work() -> tuple[str, bool, bool]:
        _drop_permitted(CAP_SETGID)
        mine = identity.current()
        ran = False
        try:
            with identity.assumed(mine._replace(groups=(4321,)), mine):
                ran = True
        except identity.CannotAssume as err:
            return str(err), ran, identity.current() == mine
        return "taken on", ran, identity.current() == mine

    why, ran, unchanged = _in_thread(work)
    assert "setgroups" in why
    assert not ran
    assert unchanged


def test_capabilities_beyond_the_permitted_set_are_refused() -> None:
    def work() -> str:
        _drop_permitted(CAP_DAC_OVERRIDE)
        mine = identity.current()
        try:
            with identity.assumed(mine._replace(caps=mine.caps | 1 << CAP_DAC_OVERRIDE), mine):
                return "taken on"
        except identity.CannotAssume as err:
            return str(err)

    assert "not ours to take" in _in_thread(work)


def test_status_texts_parse() -> None:
    status = (
        b"Name:\tx\nUid:\t0\t1\t2\t3\nGid:\t10\t11\t12\t13\nFDSize:\t64\n"
        b"Groups:\t27 4 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n"
        b"CapEff:\t0000000000000004\n"
    )
    assert identity.parse(status) == identity.Identity(3, 13, (4, 27), 4)
    with pytest.raises(ValueError, match="CapEff"):
        identity.parse(status.replace(b"CapEff", b"CapXxx"))


def test_a_process_in_another_user_namespace_brings_no_capabilities() -> None:
    child = subprocess.Popen(["unshare", "--user", "--map-root-user", "sleep", "30"])
    try:
        for _ in range(100):  # until unshare has made the namespace
            if os.stat(f"/proc/{child.pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino:
                break
            threading.Event().wait(0.02)
        status = Path(f"/proc/{child.pid}/status").read_bytes()
        assert identity.parse(status).caps != 0  # full, in its own namespace
        assert identity.of(status, child.pid).caps == 0
    finally:
        child.kill()
        child.wait()


class _Head(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


def _drop_permitted(cap: int) -> None:
    """Drop ``cap`` from this thread's effective and permitted sets (capset(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    head, data = _Head(0x20080522, 0), (ctypes.c_uint32 * 6)()
    assert libc.syscall(125, ctypes.byref(head), data) == 0
    data[0] &= ~(1 << cap)  # effective, word 0
    data[1] &= ~(1 << cap)  # permitted, word 0
    assert libc.syscall(126, ctypes.byref(head), data) == 0
