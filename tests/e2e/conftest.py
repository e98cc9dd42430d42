"""Shared pieces of the e2e tier: every test that installs anything runs inside an overlay
root (agentsh.install.overlay), so this machine's /usr/bin/bash, /etc and /var are never
written. The helpers below are meant to be called *inside* ``overlay(fn)``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentsh.install import overlay as overlay_mod
from agentsh.install import shellinstall

T = TypeVar("T")
BASH = Path("/usr/bin/bash")
REAL = Path("/usr/bin/bash.real")
CONF = Path("/etc/agentsh/shim.conf")
FAKE_EXIT = 42  # the fake frontend's exit status: "the frontend ran, not bash"

_FAKE_FRONTEND = """#!{python} -I
# A stand-in for the Python frontend: records how the shim called it, then exits 42.
import json, os, sys
record = {{
    "argv": sys.argv[1:],
    "tty": os.isatty(0),
    "force_env": os.environ.get("AGENTSH_SHIM_FORCE"),
    "ld_preload": os.environ.get("LD_PRELOAD"),
}}
with open({log!r}, "a") as log:
    log.write(json.dumps(record) + "\\n")
print(json.dumps(record))
sys.exit(42)
"""


@dataclass(frozen=True)
class FakeFrontend:
    path: Path
    log: Path

    def calls(self) -> list[dict[str, Any]]:
        """Every invocation so far, oldest first."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def overlay(tmp_path: Path) -> Callable[..., Any]:
    """``overlay(fn)`` runs fn in a fresh overlay root and returns its result."""
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    count = iter(range(1000))

    def run(fn: Callable[[], T], timeout: float = 120.0) -> T:
        workdir = tmp_path / f"overlay{next(count)}"
        return overlay_mod.call_in_overlay(fn, workdir, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def shim_binary() -> Path:
    """The shim `make setup` built; a missing one is a failure, not a skip."""
    path = shellinstall.default_shim()
    if not path.is_file():
        pytest.fail(f"no shim at {path}: run `make setup` first")
    return path


@pytest.fixture
def fake_frontend(tmp_path: Path) -> FakeFrontend:
    path, log = tmp_path / "fake-frontend", tmp_path / "fake-frontend.log"
    path.write_text(_FAKE_FRONTEND.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return FakeFrontend(path, log)


@pytest.fixture
def startup_file(tmp_path: Path) -> Path | None:
    """None when the package ships bash_startup.sh, else a stand-in (the lead's file)."""
    packaged = importlib.resources.files("agentsh.enforce").joinpath("bash_startup.sh")
    if packaged.is_file():
        return None
    path = tmp_path / "bash_startup.sh"
    path.write_text("# stand-in startup file for tests\nenable -n kill\n")
    return path


# --- helpers for use inside the overlay --------------------------------------------------


def put_shim(shim: Path, name: str = "bash") -> Path:
    """Make /usr/bin/NAME the shim by hand, the original kept as NAME.real (a copy of the
    resolved file, so a symlinked sh works too). Returns the .real path."""
    target = Path("/usr/bin") / name
    real = target.with_name(name + ".real")
    shutil.copy2(target.resolve(), real)
    target.unlink()
    shutil.copy2(shim, target)
    return real


def write_conf(text: str | None, *, mode: int = 0o644, uid: int = 0) -> None:
    """Write /etc/agentsh/shim.conf (None: remove it)."""
    CONF.parent.mkdir(mode=0o755, exist_ok=True)
    if text is None:
        CONF.unlink(missing_ok=True)
        return
    CONF.write_text(text)
    os.chown(CONF, uid, 0)
    CONF.chmod(mode)


def run(
    argv: list[str],
    *,
    tty: bool = False,
    env: Mapping[str, str] | None = None,
    data: bytes | None = None,
    argv0: str | None = None,
    user: int | None = None,
    cwd: str = "/",
) -> subprocess.CompletedProcess[bytes]:
    """Run argv with stdin a fresh pty (``tty``), ``data`` on a pipe, or /dev/null."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C", **(env or {})}
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    exe = argv[0] if argv0 is not None else None
    args = [argv0, *argv[1:]] if argv0 is not None else argv
    kw: dict[str, Any] = {"env": environ, "capture_output": True, "timeout": 60, "cwd": cwd}
    if tty:
        controller, stdin = os.openpty()
        try:
            return subprocess.run(args, executable=exe, stdin=stdin, check=False, **kw)
        finally:
            os.close(controller)
            os.close(stdin)
    if data is not None:
        return subprocess.run(args, executable=exe, input=data, check=False, **kw)
    return subprocess.run(args, executable=exe, stdin=subprocess.DEVNULL, check=False, **kw)


def _frontend_importable() -> str | None:
    """None when ``python -I -m agentsh.shell`` can start, else why not (a skip reason)."""
    probe = subprocess.run(
        [sys.executable, "-I", "-c", "import agentsh.shell.__main__"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode == 0:
        return None
    last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"the real frontend agentsh.shell.__main__ does not import yet: {last}"


class Helpers:
    """What the tests use, handed out by the ``h`` fixture (test modules cannot import
    conftest by name). The methods are meant for use inside ``overlay(fn)``."""

    BASH = BASH
    REAL = REAL
    CONF = CONF
    FAKE_EXIT = FAKE_EXIT
    put_shim = staticmethod(put_shim)
    write_conf = staticmethod(write_conf)
    run = staticmethod(run)
    frontend_importable = staticmethod(_frontend_importable)

    def __init__(self, shim: Path, fake: FakeFrontend, startup: Path | None) -> None:
        self.shim = shim  # the built shim binary
        self.fake = fake  # a fake frontend that records its calls
        self.startup = startup  # the startup file to install (None: the packaged one)

    def conf(self, force: str = "false", frontend: str | None = None) -> str:
        """shim.conf text naming the fake frontend (or ``frontend``)."""
        return f"force={force}\nfrontend={frontend or self.fake.path}\n"

    def shimmed(self, conf: str | None, name: str = "bash") -> Path:
        """Inside the overlay: the shim as /usr/bin/NAME and shim.conf; returns NAME.real."""
        real = put_shim(self.shim, name)
        write_conf(conf)
        return real

    def options(self, **kw: Any) -> shellinstall.Options:
        """Installer options for the overlay's own root."""
        base: dict[str, Any] = {"host_ok": True, "shim": self.shim, "startup": self.startup}
        return shellinstall.Options(**{**base, **kw})


@pytest.fixture
def h(shim_binary: Path, fake_frontend: FakeFrontend, startup_file: Path | None) -> Helpers:
    return Helpers(shim_binary, fake_frontend, startup_file)
