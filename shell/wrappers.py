"""Wrappers: commands that run another command, and how to find that payload.

``unwrap(args)`` returns None when ``args[0]`` is no wrapper, else the payloads it would
run: a ``Command`` (an argv, itself possibly a wrapper: ``env nice sudo id``), a
``ShellLine`` (a string a shell will parse: ``sh -c``, ``su -c``, ``watch``, ``flock -c``)
or an ``Opaque`` reason (the payload is only known at run time). Option syntax follows each
tool's own getopt (GNU coreutils, util-linux, sudo, procps, findutils, bash): options that
take a value consume it, ``--`` ends options, long options may be abbreviated, and an
option we do not know makes the payload opaque rather than guessed — a wrong guess could
take ``sudo`` for an option value.

Decisions: ``strace``/``ltrace`` are wrappers (they start their operand), and so is the
dynamic loader (``/lib64/ld-linux-x86-64.so.2 /usr/bin/ssh`` runs ssh without an exec of
it; ``--list``/``--verify`` only inspect, as ``ldd`` does); ``bash FILE``
is not unwrapped (the script is checked when that governed bash starts, and by exec
supervision), ``bash -c STRING`` is, and a shell reading standard input is ``Stdin``;
``command -v``/``-V``, ``sudo -l``/``-e``/``-v``, ``ionice -p``, ``chrt -p``, ``taskset -p``
run nothing. Pure; no I/O.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence

from agentsh.enforce.record import dataclass, field
from agentsh.shell.quoting import Arg, static


@dataclass(frozen=True)
class Command:
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class ShellLine:
    source: str


@dataclass(frozen=True)
class Opaque:
    why: str


@dataclass(frozen=True)
class Stdin:
    """A shell that reads its commands from standard input (``bash``, ``sh -s``): what
    runs is whatever the caller feeds it (a here-doc can be read; a pipe cannot)."""


Payload = Command | ShellLine | Opaque | Stdin


@dataclass(frozen=True)
class Unwrapped:
    wrapper: str
    payloads: tuple[Payload, ...]


@dataclass(frozen=True)
class _Spec:
    flags: str = ""  # short options without a value
    with_arg: str = ""  # short options with a value (attached or next word)
    optional: str = ""  # short options whose value can only be attached (xargs -i)
    long_flags: frozenset[str] = frozenset()
    long_with_arg: frozenset[str] = frozenset()
    long_optional: frozenset[str] = frozenset()
    digits: bool = False  # `nice -10`
    plus: bool = False  # bash's `+o name`


@dataclass
class _Parsed:
    operand: int  # index of the first operand (len(args) when none)
    opts: list[tuple[str, str | None, int]] = field(default_factory=list)  # name, value, index

    def has(self, *names: str) -> bool:
        return any(o in names for o, _, _ in self.opts)

    def value(self, *names: str) -> tuple[bool, str | None]:
        for o, v, _ in self.opts:
            if o in names:
                return True, v
        return False, None


def _longs(names: str) -> frozenset[str]:
    """``"user group"`` -> ``{"--user", "--group"}``."""
    return frozenset("--" + n for n in names.split())


class _OptionError(Exception):
    pass


def _no_split(name: str, a: Arg) -> None:
    """An unquoted expansion may become any number of words (``timeout $T ls`` with
    T='5 sudo' runs sudo): past it we cannot tell where the command starts."""
    if a.splits:
        raise _OptionError(f"{name}: {a.text} may expand to several words, known only at run time")


def _value(name: str, args: Sequence[Arg], i: int, option: str) -> str | None:
    """The value of ``option`` in the next word (None when it is dynamic)."""
    if i >= len(args):
        raise _OptionError(f"{name}: option {option} needs a value")
    _no_split(name, args[i])
    return args[i].value


def _parse(name: str, args: Sequence[Arg], spec: _Spec, start: int = 1) -> _Parsed:
    """Parse options from ``args[start:]`` up to the first operand or ``--``."""
    p = _Parsed(len(args))
    i = start
    while i < len(args):
        v = args[i].value
        if v is None:
            _no_split(name, args[i])
            p.operand = i  # one word, known later: where the operands start
            return p
        if v == "--":
            p.operand = i + 1
            return p
        if v.startswith("--"):
            i = _long(name, args, i, spec, p)
        elif (v.startswith("-") or (spec.plus and v.startswith("+"))) and len(v) > 1:
            i = _short(name, args, i, spec, p)
        else:
            p.operand = i
            return p
    return p


def _long(name: str, args: Sequence[Arg], i: int, spec: _Spec, p: _Parsed) -> int:
    word = args[i].value or ""
    key, eq, val = word.partition("=")
    known = spec.long_flags | spec.long_with_arg | spec.long_optional
    if key not in known:
        matches = [k for k in known if k.startswith(key)]
        if len(matches) != 1:
            raise _OptionError(f"{name}: option {key} is not one we know")
        key = matches[0]
    if key in spec.long_with_arg and not eq:
        p.opts.append((key, _value(name, args, i + 1, key), i))
        return i + 2
    p.opts.append((key, val if eq else None, i))
    return i + 1


def _short(name: str, args: Sequence[Arg], i: int, spec: _Spec, p: _Parsed) -> int:
    word = args[i].value or ""
    if spec.digits and word[1:].isdigit():
        p.opts.append(("-n", word[1:], i))
        return i + 1
    sign = word[0]
    for j in range(1, len(word)):
        c = word[j]
        rest = word[j + 1 :]
        if c in spec.with_arg:
            if rest:
                p.opts.append((sign + c, rest, i))
                return i + 1
            p.opts.append((sign + c, _value(name, args, i + 1, sign + c), i))
            return i + 2
        if c in spec.optional:
            p.opts.append((sign + c, rest or None, i))
            return i + 1
        if c not in spec.flags:
            raise _OptionError(f"{name}: option {sign}{c} is not one we know")
        p.opts.append((sign + c, None, i))
    return i + 1


def _rest(args: Sequence[Arg], i: int) -> tuple[Payload, ...]:
    return (Command(tuple(args[i:])),) if i < len(args) else ()


def _skip_assignments(args: Sequence[Arg], i: int) -> int:
    """``NAME=VALUE`` operands before the command (env, sudo)."""
    while i < len(args):
        a = args[i]
        _no_split("assignment", a)
        if a.value is None:
            if not _ASSIGNMENT.match(a.text):
                break  # one dynamic word: the command name, judged as opaque
        elif "=" not in a.value or a.value.startswith("="):
            break
        i += 1
    return i


# --- one handler per wrapper: (name, args) -> payloads -----------------------------------

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_Handler = Callable[[str, Sequence[Arg]], tuple[Payload, ...]]


def _simple(spec: _Spec, *, operands: int = 0, none_if: tuple[str, ...] = ()) -> _Handler:
    """Options, then ``operands`` fixed operands (a duration, a root, a mask), then the
    command. ``none_if``: options that mean nothing is started."""

    def handler(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
        p = _parse(name, args, spec)
        if none_if and p.has(*none_if):
            return ()
        return _rest(args, p.operand + operands)

    return handler


_ENV = _Spec(
    flags="i0v",
    with_arg="uCSP",
    long_flags=_longs("ignore-environment null debug list-signal-handling help"),
    long_with_arg=_longs("unset chdir split-string"),
    long_optional=_longs("block-signal default-signal ignore-signal"),
)


def _env(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    if len(args) > 1 and args[1].value == "-":  # `env -` is `env -i`
        args = (args[0], *args[2:])
    p = _parse(name, args, _ENV)
    found, split = p.value("-S", "--split-string")
    if found:
        return (Command(_split_env_string(args, p, split)),)
    return _rest(args, _skip_assignments(args, p.operand))


def _split_env_string(args: Sequence[Arg], p: _Parsed, text: str | None) -> tuple[Arg, ...]:
    """``env -S 'a b' c`` runs ``env a b c``: the split words take the option's place."""
    if text is None or "$" in text:
        raise _OptionError(f"env -S string {text!r} is only known at run time")
    try:
        words = shlex.split(text.replace("\\_", " "))
    except ValueError as e:
        raise _OptionError(f"env -S string cannot be split: {e}") from e
    index = next(i for o, _, i in p.opts if o in ("-S", "--split-string"))
    word = args[index].value or ""
    attached = word not in ("-S", "--split-string") and word.endswith(text)
    cluster = word[: word.index("S")] if attached and not word.startswith("--") else ""
    before = [static(cluster)] if len(cluster) > 1 else []  # `-iS'…'` keeps its `-i`
    after = index + 1 if attached else index + 2
    return (*args[:index], *before, *(static(w) for w in words), *args[after:])


_SUDO = _Spec(
    flags="AbBEeHiKklnPSsVv",
    with_arg="CDghprRtTuU",
    long_flags=_longs(
        "askpass background bell edit help login list non-interactive preserve-groups "
        "remove-timestamp reset-timestamp set-home shell stdin validate version"
    ),
    long_with_arg=_longs(
        "close-from chdir chroot group host prompt role type command-timeout other-user user"
    ),
    long_optional=_longs("preserve-env"),
)
# Options with which sudo runs no command.
_SUDO_NO_RUN = ("-e", "-l", "-v", "-K", "-k", "-V", *_longs("edit list validate version help"))
_SUDO_NO_RUN += tuple(_longs("remove-timestamp reset-timestamp"))


def _sudo(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    p = _parse(name, args, _SUDO)
    if p.has(*_SUDO_NO_RUN):
        return ()
    return _rest(args, _skip_assignments(args, p.operand))


_SHELL = _Spec(
    flags="abcefhikmnprstuvxBCEHPTl",
    with_arg="oO",
    long_flags=_longs(
        "norc noprofile login posix restricted verbose version help noediting debugger "
        "dump-strings dump-po-strings pretty-print"
    ),
    long_with_arg=_longs("rcfile init-file"),
    plus=True,
)


def _shell(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    p = _parse(name, args, _SHELL)
    if p.has("-n") or any(o == "-o" and v == "noexec" for o, v, _ in p.opts):
        return ()  # noexec: the shell only parses (`bash -n` syntax checks); `set +n` is never run
    if not p.has("-c"):
        if p.operand < len(args) and not p.has("-s"):
            return ()  # a script file: checked when that (governed) shell starts
        return (Stdin(),)
    if p.operand >= len(args):
        return ()
    source = args[p.operand].value
    if source is None:
        return (Opaque(f"{name} -c {args[p.operand].text}: the command string is dynamic"),)
    return (ShellLine(source),)


_SU = _Spec(
    flags="flmpP",
    with_arg="cgGsuw",
    long_flags=_longs("login preserve-environment pty fast help version"),
    long_with_arg=_longs(
        "command session-command group supp-group shell user whitelist-environment"
    ),
)


def _permuted(name: str, args: Sequence[Arg], spec: _Spec) -> tuple[_Parsed, list[Arg]]:
    """Options anywhere among the operands (GNU getopt's default order)."""
    opts = _Parsed(len(args))
    operands: list[Arg] = []
    i = 1
    while i < len(args):
        v = args[i].value
        if v is None:
            raise _OptionError(f"{name}: argument {args[i].text} is only known at run time")
        if v == "--":
            return opts, operands + list(args[i + 1 :])
        if v.startswith("--"):
            i = _long(name, args, i, spec, opts)
        elif v.startswith("-") and v != "-":
            i = _short(name, args, i, spec, opts)
        else:
            operands += [args[i]] if v != "-" else []  # `su -` is `su --login`
            i += 1
    return opts, operands


def _su(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    """su, runuser and sg: ``-c STRING`` is a shell command line."""
    opts, operands = _permuted(name, args, _SU)
    commands = [v for o, v, _ in opts.opts if o in ("-c", "--command", "--session-command")]
    if any(c is None for c in commands):
        return (Opaque(f"{name} -c: the command string is dynamic"),)
    if commands:
        return tuple(ShellLine(c or "") for c in commands)
    if name == "runuser" and opts.has("-u", "--user"):
        return (Command(tuple(operands)),) if operands else ()
    if name == "sg" and len(operands) > 1:  # `sg group cmd…` runs cmd with /bin/sh -c
        if any(a.value is None for a in operands[1:]):
            return (Opaque("sg: the command line is dynamic"),)
        return (ShellLine(" ".join(a.value or "" for a in operands[1:])),)
    return ()


_XARGS = _Spec(
    flags="0oprtx",
    with_arg="aEdILnPs",
    optional="eil",
    long_flags=_longs(
        "null open-tty interactive no-run-if-empty verbose exit show-limits help version"
    ),
    long_with_arg=_longs(
        "arg-file delimiter max-lines max-args max-procs max-chars process-slot-var"
    ),
    long_optional=_longs("eof replace"),
)


def _xargs(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    p = _parse(name, args, _XARGS)
    payload = list(args[p.operand :])
    _, repl = p.value("-I", "--replace", "-i")
    if p.has("-i", "--replace") and repl is None:
        repl = "{}"
    if payload and repl and payload[0].value is not None and repl in payload[0].value:
        payload[0] = Arg(payload[0].text, None)  # the command name comes from the input
    return (Command(tuple(payload)),) if payload else ()


_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})


def _find(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    payloads: list[Payload] = []
    in_paths, i = True, 1
    while i < len(args):
        v = args[i].value
        if v in _FIND_EXEC:
            end = i + 1
            while end < len(args) and args[end].value != ";":
                if args[end].value == "+" and args[end - 1].value == "{}":
                    break
                end += 1
            cmd = list(args[i + 1 : end])
            if cmd and (cmd[0].value is None or "{}" in cmd[0].value):
                cmd[0] = Arg(cmd[0].text, None)  # runs whatever file was found
            payloads.append(Command(tuple(cmd)))
            in_paths, i = False, end + 1
            continue
        if v is None and not in_paths and not _is_find_option(args[i - 1].value):
            raise _OptionError(f"find: expression word {args[i].text} is only known at run time")
        if v is not None and (v[:1] in "-(!)," and v):
            in_paths = False
        i += 1
    return tuple(payloads)


def _is_find_option(v: str | None) -> bool:
    return v is not None and v.startswith("-") and v not in _FIND_EXEC


def _flock(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    spec = _Spec(
        flags="sxeunoFh",
        with_arg="wEc",
        long_flags=_longs("shared exclusive unlock nonblock nb close no-fork verbose help version"),
        long_with_arg=_longs("wait timeout conflict-exit-code command"),
    )
    p = _parse(name, args, spec)
    found, cmd = p.value("-c", "--command")
    rest = p.operand + 1  # after the lock file (or descriptor)
    if not found and rest < len(args) and args[rest].value in ("-c", "--command"):
        found, cmd = True, args[rest + 1].value if rest + 1 < len(args) else ""
    if found:
        return (ShellLine(cmd),) if cmd is not None else (Opaque("flock -c: dynamic command"),)
    return _rest(args, rest)


def _watch(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    spec = _Spec(
        flags="bcCegprtwx",
        with_arg="nq",
        optional="d",
        long_flags=_longs(
            "beep color no-color errexit chgexit precise no-rerun no-title no-wrap exec help "
            "version"
        ),
        long_with_arg=_longs("interval equexit"),
        long_optional=_longs("differences"),
    )
    p = _parse(name, args, spec)
    rest = args[p.operand :]
    if not rest or p.has("-x", "--exec"):
        return _rest(args, p.operand)
    if any(a.value is None for a in rest):
        return (Opaque("watch: the command line is dynamic"),)
    return (ShellLine(" ".join(a.value or "" for a in rest)),)


def _busybox(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    if len(args) < 2 or (args[1].value or "").startswith("-"):
        return ()
    return (Command(tuple(args[1:])),)


def _plain(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    return _rest(args, 1)


_COMMAND = _Spec(flags="pvV")


def _command(name: str, args: Sequence[Arg]) -> tuple[Payload, ...]:
    p = _parse(name, args, _COMMAND)
    return () if p.has("-v", "-V") else _rest(args, p.operand)


_TIME = _Spec(
    flags="apqvV",
    with_arg="fo",
    long_flags=_longs("append portability quiet verbose help version"),
    long_with_arg=_longs("format output"),
)
_STRACE = _Spec(flags="cCdDfFhiknqrtTvVwxyYzZ", with_arg="abeEIoOpPsSuUX")
_LTRACE = _Spec(flags="bcCfhiLrStTV", with_arg="aADeFlnopsuwx")

# The dynamic loader run as a program (``ld.so [OPTION]... PROGRAM [ARG]...``) loads and
# runs PROGRAM in its own process: no second exec for supervision to see. Its options are
# glibc's (elf/rtld.c) and musl's; with one of _LOADER_NO_RUN it only inspects PROGRAM.
_LOADER_SPEC = _Spec(
    long_flags=_longs("list verify inhibit-cache list-tunables list-diagnostics help version"),
    long_with_arg=_longs(
        "library-path glibc-hwcaps-prepend glibc-hwcaps-mask inhibit-rpath audit preload argv0"
    ),
)
_LOADER_NO_RUN = tuple(_longs("list verify list-tunables list-diagnostics help version"))
_loader = _simple(_LOADER_SPEC, none_if=_LOADER_NO_RUN)
# Loader file names: ld.so, ld-linux-x86-64.so.2, ld-linux.so.2, ld64.so.2, ld-2.31.so,
# ld-musl-x86_64.so.1 (a name matching this is unwrapped as the loader).
LOADER_NAME = re.compile(r"ld(-linux[-\w]*|64|-musl-[-\w]+|-\d+(\.\d+)*)?\.so(\.\d+)*")
LOADER = "ld.so"  # the name a loader is judged under when only its content says so

_HANDLERS: dict[str, _Handler] = {
    "env": _env,
    "sudo": _sudo,
    "doas": _simple(_Spec(flags="nsL", with_arg="uC")),
    "pkexec": _simple(
        _Spec(
            long_flags=_longs("disable-internal-agent help version"),
            long_with_arg=_longs("user"),
        )
    ),
    "nice": _simple(_Spec(with_arg="n", long_with_arg=_longs("adjustment"), digits=True)),
    "nohup": _simple(_Spec(long_flags=_longs("help version"))),
    "timeout": _simple(
        _Spec(
            flags="fpv",
            with_arg="ks",
            long_flags=_longs("foreground preserve-status verbose"),
            long_with_arg=_longs("kill-after signal"),
        ),
        operands=1,
    ),
    "time": _simple(_TIME),
    "command": _command,
    "exec": _simple(_Spec(flags="cl", with_arg="a")),
    "builtin": _plain,
    "coproc": _plain,
    "xargs": _xargs,
    "find": _find,
    "stdbuf": _simple(_Spec(with_arg="ioe", long_with_arg=_longs("input output error"))),
    "setsid": _simple(_Spec(flags="fwc", long_flags=_longs("fork wait ctty"))),
    "chroot": _simple(
        _Spec(long_flags=_longs("skip-chdir"), long_with_arg=_longs("userspec groups")),
        operands=1,
    ),
    "su": _su,
    "runuser": _su,
    "sg": _su,
    "flock": _flock,
    "watch": _watch,
    "ionice": _simple(_Spec(flags="t", with_arg="cnpPu"), none_if=("-p", "-P", "-u")),
    "chrt": _simple(_Spec(flags="abdefimoprRv", with_arg="TPD"), operands=1, none_if=("-p", "-m")),
    "taskset": _simple(_Spec(flags="acp"), operands=1, none_if=("-p",)),
    "unbuffer": _simple(_Spec(flags="p")),
    "strace": _simple(_STRACE),
    "ltrace": _simple(_LTRACE),
    "busybox": _busybox,
    **dict.fromkeys(("ld.so", "ld-linux-x86-64.so.2", "ld-linux.so.2", "ld64.so.2"), _loader),
    **dict.fromkeys(("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash"), _shell),
}

WRAPPERS = frozenset(_HANDLERS)


def name_of(value: str) -> str:
    """The name a wrapper is known by: basename, with a ``.real`` suffix stripped
    (``/bin/bash.real`` is bash)."""
    base = value.rsplit("/", 1)[-1]
    return base.removesuffix(".real") or base


def unwrap(args: Sequence[Arg]) -> Unwrapped | None:
    """The payloads of the wrapper ``args[0]``; None when it is no wrapper (or dynamic)."""
    if not args or args[0].value is None:
        return None
    name = name_of(args[0].value)
    handler = _HANDLERS.get(name) or (_loader if LOADER_NAME.fullmatch(name) else None)
    if handler is None:
        return None
    try:
        return Unwrapped(name, handler(name, args))
    except _OptionError as e:
        return Unwrapped(name, (Opaque(str(e)),))
