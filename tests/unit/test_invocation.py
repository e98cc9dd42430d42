"""bash's invocation syntax: where the script comes from, and the args kept as written."""

from __future__ import annotations

import pytest

from agentsh.enforce.errors import UsageError
from agentsh.shell.invocation import Source, parse

CASES = [
    # args, source, script arg, login, interactive
    (["-c", "echo hi"], Source.COMMAND, "echo hi", False, False),
    (["-c", "echo $0 $1", "name", "one"], Source.COMMAND, "echo $0 $1", False, False),
    (["-lc", "id"], Source.COMMAND, "id", True, False),
    (["-xec", "true"], Source.COMMAND, "true", False, False),
    (["-o", "pipefail", "-c", "a | b"], Source.COMMAND, "a | b", False, False),
    (["-O", "extglob", "-c", "ls"], Source.COMMAND, "ls", False, False),
    (["+o", "posix", "-c", "ls"], Source.COMMAND, "ls", False, False),
    (["-c", "-x", "echo"], Source.COMMAND, "echo", False, False),
    (["--norc", "--noprofile", "-c", "x"], Source.COMMAND, "x", False, False),
    (["--login", "-c", "x"], Source.COMMAND, "x", True, False),
    (["--rcfile", "/r", "-i"], Source.STDIN, None, False, True),
    (["script.sh", "a", "-c"], Source.SCRIPT, "script.sh", False, False),
    (["-e", "script.sh"], Source.SCRIPT, "script.sh", False, False),
    (["--", "-script-with-dash"], Source.SCRIPT, "-script-with-dash", False, False),
    ([], Source.STDIN, None, False, False),
    (["-s", "a", "b"], Source.STDIN, None, False, False),
    (["-i"], Source.STDIN, None, False, True),
    (["--version"], Source.INFO, None, False, False),
]


@pytest.mark.parametrize(("args", "source", "script", "login", "interactive"), CASES)
def test_invocation(
    args: list[str], source: Source, script: str | None, login: bool, interactive: bool
) -> None:
    inv = parse("bash", args)
    assert inv.source is source
    assert (inv.command or inv.script_path) == script
    assert inv.login is login
    assert inv.interactive_flag is interactive
    assert inv.args == tuple(args)


def test_login_from_argv0() -> None:
    assert parse("-bash", []).login


def test_replacing_the_command_keeps_positional_args() -> None:
    inv = parse("bash", ["-e", "-c", "curl x", "zero", "one"])
    assert inv.with_script_arg("echo redirected") == ("-e", "-c", "echo redirected", "zero", "one")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-c"], "-c: option requires an argument"),
        (["-o"], "-o: option requires an argument"),
        (["-Z", "-c", "x"], "-Z: invalid option"),
        (["--bogus"], "--bogus: invalid option"),
        (["--rcfile"], "--rcfile: option requires an argument"),
    ],
)
def test_bad_invocations_are_usage_errors(args: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse("bash", args)
