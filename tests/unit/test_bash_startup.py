"""enforce/bash_startup.sh under the real /usr/bin/bash (and dash): the builtins are gone,
cannot come back, and nothing else changes. The system shells are only run, never touched.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agentsh.enforce import envfilter

STARTUP = Path(envfilter.__file__).with_name("bash_startup.sh")
BASH = "/usr/bin/bash"
DISABLED = ("kill", "ulimit", "umask", "builtin", "command", "enable")
FIRST_LINE = STARTUP.read_text().splitlines()[0]


def bash(
    script: str, *opts: str, startup: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    e = {"PATH": "/usr/bin:/bin", **(env or {})}
    if startup:
        e["BASH_ENV"] = str(STARTUP)
    return subprocess.run(
        [BASH, *opts, "-c", script], env=e, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("name", DISABLED)
def test_builtin_is_gone(name: str) -> None:
    assert bash(f"type -t {name}", startup=False).stdout == "builtin\n"
    done = bash(f"type -t {name}")
    assert done.stdout == ("file\n" if name == "kill" else "")  # /usr/bin/kill exists


def test_kill_becomes_an_exec(tmp_path: Path) -> None:
    """With the builtin gone, `kill` is whatever program PATH finds: an exec(2) that exec
    supervision sees. A stand-in kill on PATH proves it."""
    fake = tmp_path / "kill"
    fake.write_text('#!/bin/sh\necho "exec kill $*"\n')
    fake.chmod(0o755)
    done = bash("kill -0 $$", env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert done.stdout.startswith("exec kill -0 ")
    assert done.returncode == 0
    real = bash("kill -0 $$ && type -P kill")
    assert (real.returncode, real.stdout) == (0, "/usr/bin/kill\n")


@pytest.mark.parametrize(
    "script",
    [
        "enable kill; type -t kill",
        "enable -a kill; type -t kill",
        "enable -f /usr/lib/bash/kill.so kill 2>/dev/null; type -t kill",
        "builtin enable kill; type -t kill",
        "command enable kill; type -t kill",
        "\\enable kill; type -t kill",
        "eval 'enable kill'; type -t kill",
        "source /dev/stdin <<< 'enable kill'; type -t kill",
        "enable() { :; }; unset -f enable; enable kill; type -t kill",
    ],
)
def test_cannot_be_re_enabled(script: str) -> None:
    assert bash(script).stdout == "file\n"


@pytest.mark.parametrize(
    ("script", "err"),
    [
        ("builtin kill -0 $$", "builtin: command not found"),
        ("command kill -0 $$", "command: command not found"),
        ("enable kill", "enable: command not found"),
        ("ulimit -c unlimited", "ulimit: command not found"),
        ("umask 000", "umask: command not found"),
    ],
)
def test_disabled_builtin_fails_127(script: str, err: str) -> None:
    done = bash(script)
    assert done.returncode == 127
    assert err in done.stderr


def test_command_v_replacements() -> None:
    """`command -v` stops working; `type -P` and `hash` still answer."""
    done = bash("command -v ls; echo rc=$?; type -P ls; hash ls; hash -t ls; type -t ls")
    assert done.stdout == "rc=127\n/usr/bin/ls\n/usr/bin/ls\nfile\n"


def test_exported_functions_cannot_shield_enable() -> None:
    """A caller who exports functions named enable and unset (BASH_FUNC_*) still loses
    the builtins, even without the env filter (nested shells inherit the env as is)."""
    env = {f"BASH_FUNC_{name}%%": "() { :; }" for name in ("enable", "unset", "shopt")}
    assert bash("type -t unset", startup=False, env=env).stdout == "function\n"
    assert bash("type -t kill enable", env=env).stdout == "file\n"


def test_scripts_the_command_runs_keep_their_builtins() -> None:
    """The lock-down is for the agent's own command line: BASH_ENV is unset, so a nested
    bash (a pyenv shim, an installer using `command -v`) keeps every builtin; it runs
    inside the exec-supervised tree."""
    done = bash(f"type -t kill; echo ${{BASH_ENV-unset}}; {BASH} -c 'type -t kill; command -v ls'")
    assert done.stdout == "file\nunset\nbuiltin\n/usr/bin/ls\n"


@pytest.mark.parametrize("opts", [(), ("-e",), ("-u",), ("-e", "-u"), ("-o", "pipefail")])
def test_silent_and_safe_under_shell_options(opts: tuple[str, ...]) -> None:
    done = bash("echo ok; exit 7", *opts)
    assert (done.returncode, done.stdout, done.stderr) == (7, "ok\n", "")


def test_xtrace_shows_only_the_users_commands() -> None:
    with_startup = bash("true", "-x")
    without = bash("true", "-x", startup=False)
    assert with_startup.stderr == without.stderr == "+ true\n"


def test_verbose_echoes_one_line_only() -> None:
    """bash -v echoes a startup file's lines as it reads them; line 1 switches -v off."""
    done = bash("true", "-v")
    assert done.stderr == f"{FIRST_LINE}\ntrue\n"


def test_forged_marker_does_not_turn_on_verbose() -> None:
    assert bash("true", env={"_agentsh_verbose": "1"}).stderr == ""


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"BASHOPTS": "expand_aliases:shift_verbose:extglob"},
        {"SHELLOPTS": "braceexpand:hashall:interactive-comments:pipefail:noglob"},
    ],
    ids=["defaults", "caller-shopts", "caller-set-o"],
)
def test_leaves_no_other_trace(env: dict[str, str]) -> None:
    """Options, shopts (POSIX mode is entered and left), the variables it used and the
    function table are exactly as without it."""
    probe = (
        'echo "$-"; set -o; shopt; declare -p POSIXLY_CORRECT _agentsh_verbose '
        "_agentsh_shopts 2>&1; declare -F"
    )
    with_startup = bash(probe, env=env)
    assert with_startup.stdout == bash(probe, startup=False, env=env).stdout
    assert "inherit_errexit\toff" in with_startup.stdout


def test_sourcing_twice_is_harmless() -> None:
    done = bash(f'. "{STARTUP}"; . "{STARTUP}"; echo ok; type -t kill', "-e")
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\nfile\n", "")


DASH = shutil.which("dash")


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
@pytest.mark.parametrize(
    "env", [{}, {"BASH_VERSION": "5.2"}], ids=["dash", "dash-with-forged-BASH_VERSION"]
)
def test_dash_can_source_it(env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(DASH), "-eu", "-c", f". {STARTUP}; echo ok; kill -0 $$ && echo alive"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\nalive\n", "")
