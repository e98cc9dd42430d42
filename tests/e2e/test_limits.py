"""resource_limits and capability dropping on the real kernel: a child applies the limits to
itself exactly as the frontend does before exec, then tries to get around them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from agentsh.enforce import detect, limits

pytestmark = pytest.mark.e2e

APPLY = """\
import os, sys
from agentsh.enforce import limits
from agentsh.enforce.policy import ResourceLimits
limits.apply(ResourceLimits(**{kwargs}), {session!r})
os.execv(sys.executable, [sys.executable, "-c", {code!r}])
"""


@pytest.fixture(scope="module")
def cgroups() -> limits.Hierarchy:
    probe = detect.probe_cgroups()
    if not probe.available:
        pytest.skip(f"no usable cgroups: {probe.detail}")
    hier, why = limits.find_hierarchy(frozenset({"memory", "pids"}))
    assert hier is not None, why
    return hier


def run_limited(
    session: str, code: str, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    script = APPLY.format(kwargs=kwargs, session=session, code=textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_removed(hier: limits.Hierarchy, session: str, existed: set[Path]) -> None:
    """The watchdog removes the session's cgroups, and the agentsh/ dirs it made."""
    deadline = time.monotonic() + 5
    dirs = [base / session for base in hier.bases.values()]
    while any(d.exists() for d in dirs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(d.exists() for d in dirs), dirs
    for base in set(hier.bases.values()) - existed:
        assert not base.exists(), f"{base} left behind"


def _existing(hier: limits.Hierarchy) -> set[Path]:
    return {b for b in hier.bases.values() if b.exists()}


def _session() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def test_pids_max_stops_a_fork_storm(cgroups: limits.Hierarchy) -> None:
    session, existed = _session(), _existing(cgroups)
    out = run_limited(
        session,
        """
        import os, time
        made, refused = [], 0
        for _ in range(50):
            try:
                pid = os.fork()
            except BlockingIOError:
                refused += 1
                continue
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            made.append(pid)
        for pid in made:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print(len(made), refused)
        """,
        pids_max=20,
    )
    assert out.returncode == 0, out.stderr
    made, refused = map(int, out.stdout.split())
    assert made == 19  # 20 tasks: the governed process itself and 19 children
    assert refused == 31
    assert_removed(cgroups, session, existed)


def test_memory_limit_kills_a_large_allocation(cgroups: limits.Hierarchy) -> None:
    session, existed = _session(), _existing(cgroups)
    small = run_limited(session, "b = b'x' * (20 << 20); print('ok')", max_memory_mb=100)
    assert (small.returncode, small.stdout) == (0, "ok\n"), small.stderr
    assert_removed(cgroups, session, existed)
    big = run_limited(session, "b = b'x' * (500 << 20); print('ok')", max_memory_mb=100)
    assert big.returncode == -signal.SIGKILL
    assert "ok" not in big.stdout
    assert_removed(cgroups, session, existed)


def test_command_timeout_kills_the_tree_including_daemons(
    cgroups: limits.Hierarchy, tmp_path: Path
) -> None:
    session, existed = _session(), _existing(cgroups)
    pidfile = tmp_path / "daemon.pid"
    start = time.monotonic()
    out = run_limited(
        session,
        f"""
        import os, time
        if os.fork() == 0:          # double-forked daemon, detached from the tree
            os.setsid()
            if os.fork() == 0:
                open({str(pidfile)!r}, "w").write(str(os.getpid()))
                os.closerange(0, 3)
                time.sleep(60)
            os._exit(0)
        time.sleep(60)
        """,
        pids_max=50,
        command_timeout_s=1.0,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == -signal.SIGTERM
    assert elapsed < 10
    assert "timed out after 1s (resource_limits.command_timeout)" in out.stderr
    daemon = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{daemon}").exists(), "the daemon outlived the timeout"
    assert_removed(cgroups, session, existed)


def test_watchdog_never_holds_the_callers_pipes(cgroups: limits.Hierarchy) -> None:
    """A daemon left in the cgroup keeps the watchdog alive; `$(...)` must not wait for it."""
    session, existed = _session(), _existing(cgroups)
    start = time.monotonic()
    out = run_limited(
        session,
        """
        import os, time
        if os.fork() == 0:
            os.closerange(0, 3)
            time.sleep(3)
            os._exit(0)
        print("done")
        """,
        pids_max=50,
        command_timeout_s=30.0,
    )
    assert out.stdout == "done\n"
    assert time.monotonic() - start < 2.5
    assert_removed(cgroups, session, existed)  # after the daemon's 3 s


STATUS = """\
import json, os, sys
from agentsh.enforce import limits
{before}
limits.drop_privileges(json.loads(sys.argv[1]))
os.execv("/bin/grep", ["grep", "-E", "^(CapPrm|CapEff|CapBnd|CapAmb|CapInh|NoNewPrivs)",
                       "/proc/self/status"])
"""


def status_after_drop(allow: str, before: str = "") -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", STATUS.format(before=before), allow],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in out.stdout.splitlines())}


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping from a full set needs root")
def test_capabilities_are_dropped_before_exec() -> None:
    status = status_after_drop("[]")
    assert status == {
        "CapInh": 0,
        "CapPrm": 0,
        "CapEff": 0,
        "CapBnd": 0,
        "CapAmb": 0,
        "NoNewPrivs": 1,
    }
    kept = status_after_drop('["CAP_NET_BIND_SERVICE", "kill"]')
    assert kept["CapEff"] == kept["CapBnd"] == (1 << 10) | (1 << 5)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_inheritable_capabilities_do_not_survive_exec() -> None:
    """Root gets inheritable | bounding at exec: a pre-set inheritable CAP_SYS_ADMIN would
    come back if only the bounding set were narrowed."""
    before = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        assert libc.capget(ctypes.byref(hdr), ctypes.byref(data)) == 0
        data[2] |= 1 << 21  # CAP_SYS_ADMIN into the inheritable set
        assert libc.capset(ctypes.byref(hdr), ctypes.byref(data)) == 0
    """)
    status = status_after_drop("[]", before)
    assert status["CapPrm"] == status["CapEff"] == status["CapInh"] == 0


def test_escape_capabilities_are_refused_before_anything_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-c", STATUS.format(before=""), '["cap_sys_admin"]'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode != 0
    assert "CAP_SYS_ADMIN cannot be allowed" in out.stderr
    assert "CapEff" not in out.stdout
