"""A layer the frontend needs is missing: it refuses loudly (exit 126 naming the layer),
never an empty, successful-looking run. The kernel itself takes exec supervision away: a
seccomp filter that fails seccomp(2) with EPERM, under which neither a user-notify
listener nor the ptrace backend's prefilter can be installed."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from agentsh.install import overlay as overlay_mod

pytestmark = pytest.mark.e2e

NR_SECCOMP = 317

_CHILD = """
import os, sys
from agentsh.enforce import bpf, seccomp
seccomp.set_no_new_privs()
seccomp.install(bpf.build(bpf.FilterSpec(errno=(({nr}, {eperm}),), marker=False)), listener=False)
os.execv(sys.executable, [sys.executable, "-I", "-m", "agentsh.shell", "--real", "/usr/bin/bash",
                          "--", "-c", "echo ran"])
"""


def _inside(project: str) -> subprocess.CompletedProcess[bytes]:
    code = _CHILD.format(nr=NR_SECCOMP, eperm=errno.EPERM)
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def test_without_user_notify_the_frontend_refuses(tmp_path: Path) -> None:
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    project = tmp_path / "project"
    project.mkdir()
    done = overlay_mod.call_in_overlay(lambda: _inside(str(project)), tmp_path / "ov")
    assert done.returncode == 126, done
    assert done.stdout == b"", "nothing may run"
    err = done.stderr.decode()
    assert err.startswith("agentsh: "), err
    assert "exec supervision" in err, "the message names the missing layer"
