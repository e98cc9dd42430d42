"""The static shim's decision table (ARCHITECTURE §4, agentsh-shim(8)), row by row: the
built binary is exec'd as /usr/bin/bash inside an overlay root, with a fake frontend that
records how it was called. The last tests use the real frontend.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from agentsh.install import shellinstall

pytestmark = pytest.mark.e2e

REAL = Path("/usr/bin/bash.real")


def _expected_argv(args: list[str], argv0: str = "bash", real: Path = REAL) -> list[str]:
    """What the frontend must receive after its own path (ARCHITECTURE §3 step 1)."""
    return ["-I", "-m", "agentsh.shell", "--argv0", argv0, "--real", str(real), "--", *args]


# --- row 4: not a TTY, not forced: bash.real, untouched ----------------------------------


def test_non_tty_bypass_is_byte_exact(h: Any, overlay: Any) -> None:
    payload = os.urandom(1 << 20)

    def inside() -> Any:
        h.shimmed(h.conf())
        return h.run(["bash", "-c", "cat"], data=payload)

    done = overlay(inside)
    assert done.returncode == 0
    assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(payload).digest()
    assert h.fake.calls() == []


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("exit 3", 3),
        ("kill -TERM $$", -15),
        ("kill -KILL $$", -9),
        ("bash -c 'kill -INT $$'; echo $?", 0),
    ],
)
def test_exit_status_and_signals_are_bash_own(
    h: Any, overlay: Any, script: str, expected: int
) -> None:
    def inside() -> tuple[Any, Any]:
        h.shimmed(h.conf())
        via_shim = h.run(["bash", "-c", script])
        direct = h.run([str(REAL), "-c", script])
        return (via_shim.returncode, via_shim.stdout), (direct.returncode, direct.stdout)

    via_shim, direct = overlay(inside)
    assert via_shim == direct
    assert via_shim[0] == expected
    if script.endswith("echo $?"):
        assert via_shim[1] == b"130\n"  # 128 + SIGINT, as bash itself reports it
    assert h.fake.calls() == []


def test_login_argv0_is_preserved(h: Any, overlay: Any) -> None:
    def inside() -> bytes:
        h.shimmed(h.conf())
        script = 'echo "$0"; shopt -q login_shell && echo login'
        done = h.run(["/usr/bin/bash", "-c", script], argv0="-bash", env={"HOME": "/nowhere"})
        return bytes(done.stdout)

    assert overlay(inside).splitlines()[-2:] == [b"-bash", b"login"]


def test_environment_passes_untouched_on_bypass(h: Any, overlay: Any) -> None:
    def inside() -> bytes:
        h.shimmed(h.conf())
        env = {"MARK": "x y\tz", "LD_LIBRARY_PATH": "/opt/lib"}
        return bytes(h.run(["bash", "-c", 'echo "$MARK|$LD_LIBRARY_PATH"'], env=env).stdout)

    assert overlay(inside) == b"x y\tz|/opt/lib\n"


# --- row 5: a TTY, or forced: the frontend --------------------------------------------------


def test_tty_goes_to_frontend_with_exact_argv(h: Any, overlay: Any) -> None:
    def inside() -> int:
        h.shimmed(h.conf())
        return int(h.run(["bash", "-c", "echo hi", "zero", "one two"], tty=True).returncode)

    assert overlay(inside) == h.FAKE_EXIT
    (call,) = h.fake.calls()
    assert call["argv"] == _expected_argv(["-c", "echo hi", "zero", "one two"])
    assert call["tty"] is True


def test_tty_login_shell_keeps_argv0_for_the_frontend(h: Any, overlay: Any) -> None:
    def inside() -> int:
        h.shimmed(h.conf())
        return int(h.run(["/usr/bin/bash"], argv0="-bash", tty=True).returncode)

    assert overlay(inside) == h.FAKE_EXIT
    assert h.fake.calls()[0]["argv"] == _expected_argv([], argv0="-bash")


@pytest.mark.parametrize(
    ("conf_force", "env", "governed"),
    [
        ("false", None, False),
        ("true", None, True),
        ("false", "1", True),
        ("true", "0", True),  # the environment can only tighten
        ("true", "false", True),
        ("false", "0", False),
        ("false", "", False),
        ("false", "2", True),  # anything that is not a clear "no" forces
        ("yes", None, True),
        ("no", None, False),
        ("1", None, True),
        ("0", "yes", True),
    ],
)
def test_force_from_conf_and_environment(
    h: Any, overlay: Any, conf_force: str, env: str | None, governed: bool
) -> None:
    def inside() -> Any:
        h.shimmed(h.conf(conf_force))
        extra = {} if env is None else {"AGENTSH_SHIM_FORCE": env}
        return h.run(["bash", "-c", "echo ran-bash"], env=extra)

    done = overlay(inside)
    if governed:
        assert done.returncode == h.FAKE_EXIT
        (call,) = h.fake.calls()
        assert call["argv"] == _expected_argv(["-c", "echo ran-bash"])
        assert call["tty"] is False
    else:
        assert (done.returncode, done.stdout) == (0, b"ran-bash\n")
        assert h.fake.calls() == []


@pytest.mark.parametrize("var", ["AGENTSH_IN_SESSION", "AGENTSH_GOVERNED", "AGENTSH_SESSION_ID"])
def test_no_environment_variable_proves_governed(h: Any, overlay: Any, var: str) -> None:
    """Row 3 never trusts the caller's environment (the Go agentsh's AGENTSH_IN_SESSION)."""

    def inside() -> int:
        h.shimmed(h.conf("true"))
        return int(h.run(["bash", "-c", "echo escaped"], env={var: "1"}).returncode)

    assert overlay(inside) == h.FAKE_EXIT
    assert len(h.fake.calls()) == 1


_GOVERNED_CHILD = """
import os, sys
from agentsh.enforce import govern
from agentsh.enforce.policy import Decision, Verdict
allow = Verdict(Decision.ALLOW, "test", "")
govern.start(lambda: (lambda req: allow), lambda: (lambda event: None), first_exec="/usr/bin/bash")
os.execv("/usr/bin/bash", ["bash", "-c", "echo ran-$((6*7))"])
"""


def test_kernel_marker_sends_nested_shells_to_the_real_one(h: Any, overlay: Any) -> None:
    """Row 3: inside a governed tree (our filter answers the marker) a forced bash goes
    straight to bash.real; the outer supervisor governs it. Outside, the frontend runs."""

    def inside() -> tuple[Any, Any]:
        h.shimmed(h.conf("true"))
        governed = h.run([sys.executable, "-I", "-c", _GOVERNED_CHILD])
        plain = h.run(["bash", "-c", "echo ran-$((6*7))"])
        return governed, plain

    governed, plain = overlay(inside)
    assert (governed.returncode, governed.stdout) == (0, b"ran-42\n"), governed.stderr
    assert plain.returncode == h.FAKE_EXIT
    assert len(h.fake.calls()) == 1, "only the ungoverned bash reached the frontend"


def test_loader_variables_do_not_reach_the_frontend(h: Any, overlay: Any) -> None:
    def inside() -> int:
        h.shimmed(h.conf("true"))
        env = {"LD_PRELOAD": "/nonexistent/evil.so"}
        return int(h.run(["bash", "-c", "true"], env=env).returncode)

    assert overlay(inside) == h.FAKE_EXIT
    assert h.fake.calls()[0]["ld_preload"] is None


def test_conf_comments_blank_lines_and_spaces(h: Any, overlay: Any) -> None:
    def inside() -> int:
        text = f"# by hand\n\n   force  =  true \r\n\tfrontend\t= {h.fake.path}\n  # x=y\n"
        h.shimmed(text)
        return int(h.run(["bash", "-c", "true"]).returncode)

    assert overlay(inside) == h.FAKE_EXIT


# --- rows 1 and 2: shim.conf -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("force=maybe\n", ["force", '"maybe"']),
        ("force=TRUE\n", ["force", '"TRUE"']),
        ("force=\n", ["force", '""']),
        ("frontend=venv/bin/python\n", ["frontend", '"venv/bin/python"']),
        ("frontend=\n", ["frontend", '""']),
        ("colour=blue\n", ["unknown key", '"colour"']),
        ("# fine\nforce\n", ["shim.conf:2", "key=value"]),
        ("force=true\nforce=false\n", ["given twice", "force"]),
    ],
)
def test_invalid_conf_exits_127_naming_it(
    h: Any, overlay: Any, text: str, named: list[str]
) -> None:
    def inside() -> Any:
        h.shimmed(text)
        return h.run(["bash", "-c", "echo ran-bash"])

    done = overlay(inside)
    assert done.returncode == 127
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1
    assert all(word in lines[0] for word in named), lines[0]
    assert h.fake.calls() == []


def _make_untrusted(h: Any, how: str) -> None:
    """Make an otherwise valid shim.conf (force=false) untrusted in one way."""
    good = h.conf()
    if how == "world-writable":
        h.write_conf(good, mode=0o666)
    elif how == "group-writable":
        h.write_conf(good, mode=0o664)
    elif how == "not-root-owned":
        h.write_conf(good, uid=1000)
    elif how == "symlink":
        Path("/etc/agentsh/real.conf").write_text(good)
        h.CONF.symlink_to("real.conf")
    elif how == "directory":
        h.CONF.mkdir()
    elif how == "dir-world-writable":
        h.write_conf(good)
        h.CONF.parent.chmod(0o777)
    elif how == "fifo":
        os.mkfifo(h.CONF)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "world-writable",
        "group-writable",
        "not-root-owned",
        "symlink",
        "directory",
        "dir-world-writable",
        "fifo",
    ],
)
def test_untrusted_conf_forces_and_ignores_its_frontend(h: Any, overlay: Any, how: str) -> None:
    """Row 1: the conf is ignored (its frontend= too) and force applies. With no trusted
    frontend nothing runs at all, not even the real bash: fail closed."""

    def inside() -> Any:
        h.shimmed(None)
        _make_untrusted(h, how)
        return h.run(["bash", "-c", "echo ran-bash"])

    done = overlay(inside)
    assert done.returncode == 127
    assert done.stdout == b""
    assert b"/etc/agentsh" in done.stderr
    assert b"forced" in done.stderr
    assert done.stderr.count(b"\n") == 1
    assert h.fake.calls() == []


def test_unreadable_conf_forces_for_a_normal_user(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any]:
        h.shimmed(None)
        h.write_conf(h.conf(), mode=0o600)
        unreadable = h.run(["bash", "-c", "echo ran-bash"], user=65534)
        h.CONF.chmod(0o644)
        readable = h.run(["bash", "-c", "echo ran-bash"], user=65534)
        return unreadable, readable

    unreadable, readable = overlay(inside)
    assert unreadable.returncode == 127
    assert b"Permission denied" in unreadable.stderr
    assert unreadable.stdout == b""
    assert (readable.returncode, readable.stdout) == (0, b"ran-bash\n")


def test_missing_conf_means_not_forced(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any]:
        h.shimmed(None)
        return h.run(["bash", "-c", "echo ran-bash"]), h.run(["bash", "-c", "true"], tty=True)

    piped, tty = overlay(inside)
    assert (piped.returncode, piped.stdout) == (0, b"ran-bash\n")
    assert tty.returncode == 127
    assert b"no frontend" in tty.stderr


# --- failures: one line, 127, nothing exec'd ----------------------------------------------


@pytest.mark.parametrize("tty", [False, True])
def test_missing_real_bash_exits_127_and_runs_nothing(h: Any, overlay: Any, tty: bool) -> None:
    def inside() -> Any:
        h.shimmed(h.conf()).unlink()
        return h.run(["bash", "-c", "echo ran-bash"], tty=tty)

    done = overlay(inside)
    assert done.returncode == 127
    assert done.stdout == b""
    assert done.stderr.count(b"\n") == 1
    assert str(REAL).encode() in done.stderr
    assert h.fake.calls() == []


@pytest.mark.parametrize("frontend", ["/nonexistent/python", "/etc/hostname"])
def test_missing_frontend_exits_127(h: Any, overlay: Any, frontend: str) -> None:
    def inside() -> Any:
        h.shimmed(h.conf("true", frontend))
        return h.run(["bash", "-c", "echo ran-bash"])

    done = overlay(inside)
    assert (done.returncode, done.stdout) == (127, b"")
    assert frontend.encode() in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_installed_as_sh_runs_sh_real(h: Any, overlay: Any) -> None:
    """/usr/bin/sh is a symlink to dash here: sh.real is dash, and $0 stays sh."""

    def inside() -> tuple[bytes, int]:
        h.shimmed(h.conf(), "sh")
        piped = h.run(["sh", "-c", 'echo "$0 ${BASH_VERSION:-not-bash}"'])
        forced = h.run(["sh", "-c", "true"], env={"AGENTSH_SHIM_FORCE": "1"})
        return bytes(piped.stdout), int(forced.returncode)

    out, forced = overlay(inside)
    assert out == b"sh not-bash\n"
    assert forced == h.FAKE_EXIT
    sh_real = Path("/usr/bin/sh.real")
    assert h.fake.calls()[0]["argv"] == _expected_argv(["-c", "true"], "sh", sh_real)


# --- the real frontend ------------------------------------------------------------------


@pytest.fixture
def real_frontend(h: Any) -> None:
    reason = h.frontend_importable()
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.usefixtures("real_frontend")
def test_real_frontend_runs_allowed_command(h: Any, overlay: Any, tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)
    project = str(tmp_path)

    def inside() -> tuple[Any, Any]:
        shellinstall.install_shell(h.options(force=True))
        echo = h.run(["bash", "-c", "echo hi"], cwd=project)
        return echo, h.run(["bash", "-c", "cat"], data=payload, cwd=project)

    echo, cat = overlay(inside)
    assert (echo.returncode, echo.stdout) == (0, b"hi\n"), echo.stderr
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout == payload


@pytest.mark.usefixtures("real_frontend")
def test_real_frontend_blocks_sudo(h: Any, overlay: Any, tmp_path: Path) -> None:
    def inside() -> Any:
        shellinstall.install_shell(h.options(force=True))
        return h.run(["bash", "-c", "sudo whoami"], cwd=str(tmp_path))

    done = overlay(inside)
    assert done.returncode == 126
    assert b"blocked by policy" in done.stderr
