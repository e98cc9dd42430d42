"""Bash's own command-line syntax, parsed into an Invocation (ARCHITECTURE §3 step 2).

Only what governance needs is interpreted (where the script comes from, login, interactive);
the original arguments are kept so bash.real receives exactly what the caller wrote.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from agentsh.enforce.errors import UsageError
from agentsh.enforce.record import dataclass

# Long options that take the next argument as their value.
_LONG_WITH_VALUE = frozenset({"--rcfile", "--init-file"})
_LONG_FLAGS = frozenset(
    {
        "--login",
        "--norc",
        "--noprofile",
        "--noediting",
        "--posix",
        "--restricted",
        "--verbose",
        "--debugger",
        "--dump-strings",
        "--dump-po-strings",
        "--pretty-print",
        "--wordexp",
        "--protected",
    }
)
# Single-letter options that consume the next argument.
_SHORT_WITH_VALUE = frozenset("oO")
# Every single-letter option bash accepts (set options plus invocation-only ones).
_SHORT_FLAGS = frozenset("abefhkmnptuvxBCEHPTcilrsD")


class Source(enum.Enum):
    COMMAND = "command"  # -c STRING
    SCRIPT = "script"  # bash FILE args...
    STDIN = "stdin"  # -s, or no script argument
    INFO = "info"  # --version / --help: print and exit, no script


@dataclass(frozen=True)
class Invocation:
    """One bash invocation.

    ``args`` are the arguments after argv[0], unchanged. ``script_index`` is the index in
    ``args`` of the -c string or the script path (None for stdin/info).
    """

    argv0: str
    args: tuple[str, ...]
    source: Source
    script_index: int | None
    login: bool
    interactive_flag: bool

    @property
    def command(self) -> str | None:
        """The -c string, if any."""
        if self.source is Source.COMMAND and self.script_index is not None:
            return self.args[self.script_index]
        return None

    @property
    def script_path(self) -> str | None:
        if self.source is Source.SCRIPT and self.script_index is not None:
            return self.args[self.script_index]
        return None

    def with_script_arg(self, value: str) -> tuple[str, ...]:
        """The arguments with the -c string (or script path) replaced by ``value``."""
        if self.script_index is None:
            raise UsageError("internal: no script argument to replace")
        args = list(self.args)
        args[self.script_index] = value
        return tuple(args)


@dataclass
class _State:
    command_mode: bool = False
    stdin_mode: bool = False
    login: bool = False
    interactive: bool = False
    info: bool = False


def _short_cluster(arg: str, args: Sequence[str], i: int, st: _State) -> int:
    """Consume one ``-abc`` / ``+o name`` cluster at ``args[i]``; return the next index."""
    letters = arg[1:]
    nxt = i + 1
    for ch in letters:
        if ch in _SHORT_WITH_VALUE:
            if nxt >= len(args):
                raise UsageError(f"bash: {arg[0]}{ch}: option requires an argument")
            nxt += 1
        elif ch not in _SHORT_FLAGS:
            raise UsageError(f"bash: {arg[0]}{ch}: invalid option")
        elif arg[0] == "-":
            st.command_mode |= ch == "c"
            st.stdin_mode |= ch == "s"
            st.login |= ch == "l"
            st.interactive |= ch == "i"
    return nxt


def _long_option(arg: str, args: Sequence[str], i: int, st: _State) -> int:
    if arg in ("--version", "--help"):
        st.info = True
        return i + 1
    if arg in _LONG_WITH_VALUE:
        if i + 1 >= len(args):
            raise UsageError(f"bash: {arg}: option requires an argument")
        return i + 2
    if arg not in _LONG_FLAGS:
        raise UsageError(f"bash: {arg}: invalid option")
    st.login |= arg == "--login"
    return i + 1


def parse(argv0: str, args: Sequence[str]) -> Invocation:
    """Parse bash's invocation syntax.

    Raises:
        UsageError: an option bash itself would reject (bash exits 2 for these too).
    """
    st = _State(login=argv0.startswith("-"))
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-"):
            i += 1
            break
        if arg.startswith("--"):
            i = _long_option(arg, args, i, st)
        elif len(arg) > 1 and arg[0] in "-+":
            i = _short_cluster(arg, args, i, st)
        else:
            break
    return _finish(argv0, tuple(args), i, st)


def _finish(argv0: str, args: tuple[str, ...], first: int, st: _State) -> Invocation:
    if st.info:
        source, index = Source.INFO, None
    elif st.command_mode:
        if first >= len(args):
            raise UsageError("bash: -c: option requires an argument")
        source, index = Source.COMMAND, first
    elif st.stdin_mode or first >= len(args):
        source, index = Source.STDIN, None
    else:
        source, index = Source.SCRIPT, first
    return Invocation(
        argv0=argv0,
        args=args,
        source=source,
        script_index=index,
        login=st.login,
        interactive_flag=st.interactive,
    )
