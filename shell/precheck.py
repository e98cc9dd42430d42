"""The precheck (ARCHITECTURE §3 step 5): every command a script may run, judged before
anything runs. Pure: values in, values out.

``explain`` walks the whole tree — lists, pipelines, subshells, groups, loops, if/case,
function bodies, ``$(…)``, backticks, ``<(…)``/``>(…)``, substitutions in assignments,
redirect targets, unquoted here-doc bodies, ``[[ ]]`` operands, arithmetic and array
values — and yields one ``CommandCheck`` per command found. Wrappers are unwrapped
(``shell.wrappers``); the wrapper *and* its payload are judged by
``engine.check_command`` and the stricter verdict wins. ``sh -c STRING`` and the like are
parsed and walked in turn, at most ``MAX_DEPTH`` levels deep (deeper is denied).

Opaque constructs — a command name known only at run time (``$x``, ``"$cmd"``,
``$(printf sudo)``, ``/usr/bin/su*``), ``eval``, ``source``/``.``, ``fc``, ``hash -p``, a
wrapper payload we cannot read, anything unparseable — are denied (rule
``opaque-command``) unless exec supervision is active (``supervised``), which then checks
every program at exec time; they are reported either way.

What is not judged by command rules (each still reported, allowed):
- builtins that start no program and signal nothing (``cd``, ``echo``, ``export``, ``[``, …;
  ``INERT_BUILTINS``) when bash itself runs them — ``env echo`` execs a program and is
  judged; ``kill``, ``enable``, ``ulimit``, ``umask``, ``trap``, ``alias`` are not inert;
- calls of a function the script certainly defined earlier (a ``;``/newline sequence, not
  a branch, loop, pipeline, background job or redirected group), when the script unsets
  nothing and the name is no builtin or wrapper (``sudo(){ …; }; sudo id`` is judged as
  ``sudo``); its body is checked where it is defined;
- ``exec`` with only redirections, ``time``/``coproc`` reserved words.

``alias NAME=VALUE`` and ``trap HANDLER SIG`` are checked by parsing VALUE/HANDLER as
command lines: an alias or trap that would run a denied command is denied when defined.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from agentsh.enforce.engine import check_command, stricter
from agentsh.enforce.policy import STRICTNESS, Decision, Policy, Verdict
from agentsh.enforce.record import dataclass, replace
from agentsh.shell import quoting, wrappers
from agentsh.shell.ast import (
    CommandList,
    Compound,
    FunctionDef,
    Node,
    Pipeline,
    Redirect,
    Script,
    SimpleCommand,
    Span,
    Substitution,
    Unparsed,
    Word,
)
from agentsh.shell.parse import parse
from agentsh.shell.quoting import Arg

MAX_DEPTH = 8
OPAQUE_RULE = "opaque-command"
DEPTH_RULE = "nesting-depth"

INERT_BUILTINS = frozenset(
    [
        ":",
        "true",
        "false",
        "cd",
        "pwd",
        "pushd",
        "popd",
        "dirs",
        "echo",
        "printf",
        "test",
        "[",
        "export",
        "declare",
        "typeset",
        "local",
        "readonly",
        "unset",
        "set",
        "shift",
        "return",
        "break",
        "continue",
        "exit",
        "logout",
        "read",
        "mapfile",
        "readarray",
        "getopts",
        "let",
        "wait",
        "jobs",
        "shopt",
        "type",
        "help",
        "history",
        "disown",
        "bg",
        "fg",
        "suspend",
        "caller",
        "times",
        "compgen",
        "complete",
        "compopt",
        "unalias",
        "bind",
    ]
)
_OPAQUE_BUILTINS = {
    "eval": "eval",
    "source": "source (runs a file's commands)",
    ".": ". (runs a file's commands)",
    "fc": "fc (re-runs commands from history)",
}
# Names a function cannot reliably shadow: bash's builtins (a special builtin wins in POSIX
# mode, where defining the function fails) and wrappers (whose payload we must see).
_NOT_SHADOWABLE = (
    INERT_BUILTINS
    | frozenset(_OPAQUE_BUILTINS)
    | wrappers.WRAPPERS
    | frozenset({"alias", "trap", "hash", "kill", "enable", "ulimit", "umask"})
)
# Redirections that write to (or create) the file they name.
_WRITE_OPS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})
# Variables whose value bash evaluates later as commands or prompt strings.
_DEFERRED = frozenset({"PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS3", "PS4"})
_SUBST = re.compile(r"\$\(|`")
_SUBSCRIPT_SUBST = re.compile(r"\[[^\]]*(\$\(|`)")
_NAME_EQ = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=(.*)", re.DOTALL)
_STDIN_OPS = frozenset({"<", "<<", "<<-", "<<<"})
# Wrappers that run their payload inside bash (builtins, functions still apply).
_SHELL_LEVEL = frozenset({"command", "builtin", "coproc"})


@dataclass(frozen=True)
class CommandCheck:
    """One command the script may run, and the decision about it.

    ``text`` is the simple command's source text (for a command inside ``bash -c '…'``:
    its text inside the string); ``span`` locates it in the checked source (for nested
    commands: the outer command that carries them). ``argv`` is the resolved command line
    (dynamic arguments as written), None when the command name itself is dynamic. ``via``
    names the wrappers that led here, outermost first. ``writes`` are the redirect targets
    the command writes to (as resolved, or as written when dynamic); not judged here.
    ``words_span`` is what ``rewrite`` replaces for a redirect decision."""

    text: str
    argv: tuple[str, ...] | None
    via: tuple[str, ...]
    span: Span
    verdict: Verdict
    opaque: str | None = None
    writes: tuple[str, ...] = ()
    words_span: Span | None = None


@dataclass(frozen=True)
class _Ctx:
    via: tuple[str, ...] = ()
    floor: Verdict | None = None  # the stricter of the wrappers' verdicts on the way here
    depth: int = 0
    outer: SimpleCommand | None = None  # set inside strings parsed from a command's words
    writes: tuple[str, ...] = ()
    in_shell: bool = True  # bash itself runs this word (builtins and functions apply)
    functions: frozenset[str] = frozenset()


def explain(script: Script, policy: Policy, *, supervised: bool) -> list[CommandCheck]:
    """Every command ``script`` may run, in source order, each with its verdict."""
    walker = _Walker(policy, supervised, _unsets_anything(script))
    walker.nodes(script.body, _Ctx(), definite=True)
    return walker.checks


def check(script: Script, policy: Policy, *, supervised: bool) -> Verdict:
    """The strictest verdict over ``explain`` (the first in source order among equally
    strict ones, preferring one a rule decided); allow (rule None) when nothing runs."""
    checks = explain(script, policy, supervised=supervised)
    if not checks:
        return Verdict(Decision.ALLOW, None, "no command to check", script.source)
    verdict = checks[0].verdict
    for c in checks[1:]:
        tie = STRICTNESS[c.verdict.decision] == STRICTNESS[verdict.decision]
        if tie and verdict.rule is None and c.verdict.rule is not None:
            verdict = c.verdict
        else:
            verdict = stricter(verdict, c.verdict)
    return verdict


def rewrite(source: str, checks: Sequence[CommandCheck]) -> str:
    """``source`` with each redirected command's words replaced by the redirect target
    (shell-quoted). Spans inside an already replaced span are skipped."""
    edits: list[tuple[Span, str]] = []
    for c in checks:
        target = c.verdict.redirect_to
        if c.verdict.decision is not Decision.REDIRECT or target is None:
            continue
        span = c.words_span or c.span
        if any(s <= span[0] and span[1] <= e for (s, e), _ in edits):
            continue
        edits = [(sp, t) for sp, t in edits if not (span[0] <= sp[0] and sp[1] <= span[1])]
        edits.append((span, shlex.join([target.command, *target.args])))
    for (start, end), text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


class _Walker:
    def __init__(self, policy: Policy, supervised: bool, unsets: bool) -> None:
        self.policy = policy
        self.supervised = supervised
        self.unsets = unsets
        self.checks: list[CommandCheck] = []

    # --- structure -----------------------------------------------------------------------
    def nodes(self, body: Sequence[Node], ctx: _Ctx, *, definite: bool) -> _Ctx:
        for n in body:
            ctx = self.node(n, ctx, definite=definite)
        return ctx

    def node(self, n: Node, ctx: _Ctx, *, definite: bool) -> _Ctx:
        """Walk ``n``; returns ``ctx`` with the functions ``n`` certainly defined."""
        match n:
            case SimpleCommand():
                self.simple(n, ctx)
            case Pipeline():
                for c in n.commands:
                    self.node(c, ctx, definite=False)
            case CommandList():
                return self.sequence(n, ctx, definite=definite)
            case Compound():
                return self.compound(n, ctx, definite=definite)
            case FunctionDef():
                inner = replace(ctx, functions=ctx.functions | {n.name})
                self.node(n.body, inner, definite=False)
                return inner if definite else ctx
            case Unparsed():
                self.opaque(SimpleCommand(n.text, n.span), ctx, f"unparseable: {n.why}", None)
            case _:
                self.opaque(
                    SimpleCommand("", (0, 0)), ctx, f"unknown node {type(n).__name__}", None
                )
        return ctx

    def sequence(self, n: CommandList, ctx: _Ctx, *, definite: bool) -> _Ctx:
        last = len(n.items) - 1
        for i, item in enumerate(n.items):
            before = n.ops[i - 1] if i > 0 else ";"
            after = n.ops[i] if i < last else ("&" if n.background else ";")
            sure = definite and before in (";", "\n") and after != "&"
            ctx = self.node(item, ctx, definite=sure)
        return ctx

    def compound(self, n: Compound, ctx: _Ctx, *, definite: bool) -> _Ctx:
        self.redirect_subs(n.redirects, ctx)
        for w in n.words:
            self.subs(w.subs, ctx)
        inner = replace(ctx, writes=ctx.writes + _writes(n.redirects))
        if n.kind == "group":
            # A redirection that fails (`{ …; } </missing`) skips the whole group.
            after = self.nodes(n.body, inner, definite=definite and not n.redirects)
            return replace(ctx, functions=after.functions)
        self.nodes(n.body, inner, definite=False)
        return ctx

    def subs(self, subs: Sequence[Substitution], ctx: _Ctx) -> None:
        for s in subs:
            self.nodes(s.body.body, ctx, definite=False)

    def redirect_subs(self, redirects: Sequence[Redirect], ctx: _Ctx) -> None:
        for r in redirects:
            if r.target is not None and r.heredoc is None:
                self.subs(r.target.subs, ctx)
            if r.heredoc is not None:
                self.subs(r.heredoc.subs, ctx)

    # --- simple commands ---------------------------------------------------------------
    def simple(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        for a in cmd.assignments:
            for v in a.values:
                self.subs(v.subs, ctx)
        for w in cmd.words:
            self.subs(w.subs, ctx)
        self.redirect_subs(cmd.redirects, ctx)
        self.deferred(cmd, ctx)
        if not cmd.words:
            return  # assignments or redirections only: nothing is started
        writes = ctx.writes + _writes(cmd.redirects)
        args = tuple(quoting.arg(w.text) for w in cmd.words)
        self.command(args, cmd, replace(ctx, writes=writes))

    def command(self, args: tuple[Arg, ...], cmd: SimpleCommand, ctx: _Ctx) -> None:
        """Judge one argv: a builtin, a function, a wrapper (then its payloads) or a program."""
        head = args[0]
        if head.value is None:
            why = quoting.resolve(head.text).dynamic or ""
            detail = f" ({why})" if why not in head.text else ""
            self.opaque(cmd, ctx, f"dynamic command name {head.text}{detail}", None)
            return
        name = head.value
        argv = tuple(a.value if a.value is not None else a.text for a in args)
        if ctx.depth > MAX_DEPTH:
            self.emit(cmd, ctx, argv, _too_deep(cmd.text))
        elif ctx.in_shell and self.shell_level(name, args, cmd, ctx):
            return
        else:
            self.program(args, argv, cmd, ctx)

    def shell_level(self, name: str, args: tuple[Arg, ...], cmd: SimpleCommand, ctx: _Ctx) -> bool:
        """Handle what bash itself runs (builtins, functions); False for programs."""
        argv = tuple(a.value or a.text for a in args)
        if name in _OPAQUE_BUILTINS or (name == "hash" and _has_flag(args, "p")):
            what = _OPAQUE_BUILTINS.get(name, "hash -p (rebinds a command name)")
            self.opaque(cmd, ctx, what, argv)
        elif name in ("alias", "trap"):
            self.strings(name, _alias_or_trap_strings(name, args), cmd, ctx, argv)
        elif name in ctx.functions and name not in _NOT_SHADOWABLE and not self.unsets:
            self.emit(cmd, ctx, argv, _allow(f"calls function {name} (its body is checked)"))
        elif name in INERT_BUILTINS or (name == "exec" and len(args) == 1):
            self.emit(cmd, ctx, argv, _allow(f"shell builtin {name}: starts no program"))
        else:
            return False
        return True

    def program(
        self, args: tuple[Arg, ...], argv: tuple[str, ...], cmd: SimpleCommand, ctx: _Ctx
    ) -> None:
        verdict = check_command(self.policy, argv)
        unwrapped = wrappers.unwrap(args)
        if unwrapped is None or not unwrapped.payloads:
            self.emit(cmd, ctx, argv, verdict)
            return
        floor = verdict if ctx.floor is None else stricter(ctx.floor, verdict)
        inner = replace(
            ctx,
            via=(*ctx.via, unwrapped.wrapper),
            floor=floor,
            depth=ctx.depth + 1,
            in_shell=unwrapped.wrapper in _SHELL_LEVEL,
            functions=frozenset(),
        )
        if unwrapped.wrapper == "coproc":
            inner = replace(inner, functions=ctx.functions)
        for payload in unwrapped.payloads:
            self.payload(payload, argv, cmd, inner)

    def payload(
        self, p: wrappers.Payload, argv: tuple[str, ...], cmd: SimpleCommand, ctx: _Ctx
    ) -> None:
        match p:
            case wrappers.Command(args=args) if args:
                self.command(args, cmd, ctx)
            case wrappers.Command():
                self.emit(cmd, ctx, argv, ctx.floor or _allow("no command"))
            case wrappers.ShellLine(source=source):
                self.shell_line(source, cmd, ctx)
            case wrappers.Opaque(why=why):
                self.opaque(cmd, ctx, why, argv)
            case wrappers.Stdin():
                self.stdin(argv, cmd, ctx)
            case _:
                self.opaque(cmd, ctx, "unknown payload", argv)

    def shell_line(self, source: str, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """A command line another shell will parse (``sh -c``, ``su -c``, ``watch``…)."""
        if ctx.depth > MAX_DEPTH:
            self.emit(cmd, ctx, None, _too_deep(cmd.text))
            return
        script = parse(source)
        outer = ctx.outer or cmd
        inner = replace(ctx, outer=outer, in_shell=True, functions=frozenset(), writes=())
        nested = _Walker(self.policy, self.supervised, _unsets_anything(script))
        nested.nodes(script.body, inner, definite=True)
        self.checks.extend(nested.checks)

    def deferred(self, cmd: SimpleCommand, ctx: _Ctx) -> None:
        """Text bash runs later: PROMPT_COMMAND (checked as a command line), prompts with
        command substitutions, BASH_ENV/ENV (a file sourced later), and quoted subscripts
        holding ``$(…)`` (arithmetic evaluation runs them: ``x='a[$(cmd)]'; ((x))``)."""
        for name, value in _assignments(cmd):
            if name == "PROMPT_COMMAND" and value.dynamic is None:
                self.shell_line(value.value, cmd, replace(ctx, via=(*ctx.via, name)))
            elif name in _DEFERRED and (value.dynamic or _SUBST.search(value.value)):
                self.opaque(cmd, ctx, f"{name}=…: bash runs it later", None)
            elif name in ("BASH_ENV", "ENV") and value.value:
                self.opaque(cmd, ctx, f"{name}=…: bash sources that file later", None)
        texts = [w.text for w in cmd.words] + [v.text for a in cmd.assignments for v in a.values]
        for text in texts:
            resolved = quoting.resolve(text)
            if resolved.dynamic is None and _SUBSCRIPT_SUBST.search(resolved.value):
                why = f"{text}: a subscript with a command substitution runs it when evaluated"
                self.opaque(cmd, ctx, why, None)

    def stdin(self, argv: tuple[str, ...], cmd: SimpleCommand, ctx: _Ctx) -> None:
        """A shell reading commands from stdin: a here-doc or here-string we can read is
        checked as its script; anything else (a pipe, a file, the caller's stdin) is opaque."""
        feed = [r for r in cmd.redirects if r.fd in (None, 0) and r.op in _STDIN_OPS]
        script = _stdin_text(feed[-1]) if feed else None
        if script is None:
            shell = ctx.via[-1] if ctx.via else argv[0]
            self.opaque(cmd, ctx, f"{shell} reads its commands from standard input", argv)
        else:
            self.shell_line(script, cmd, ctx)

    def strings(
        self,
        name: str,
        strings: Sequence[str | None],
        cmd: SimpleCommand,
        ctx: _Ctx,
        argv: tuple[str, ...],
    ) -> None:
        """``alias`` values and ``trap`` handlers: command lines bash runs later."""
        self.emit(cmd, ctx, argv, _allow(f"{name}: its command lines are checked now"))
        inner = replace(ctx, via=(*ctx.via, name), depth=ctx.depth + 1)
        for s in strings:
            if s is None:
                self.opaque(cmd, ctx, f"{name} with a dynamic command", argv)
            else:
                self.shell_line(s, cmd, inner)

    # --- results -------------------------------------------------------------------------
    def emit(
        self,
        cmd: SimpleCommand,
        ctx: _Ctx,
        argv: tuple[str, ...] | None,
        verdict: Verdict,
        opaque: str | None = None,
    ) -> None:
        if ctx.floor is not None:
            verdict = stricter(ctx.floor, verdict)
        outer = ctx.outer or cmd
        self.checks.append(
            CommandCheck(
                cmd.text,
                argv,
                ctx.via,
                outer.span,
                verdict,
                opaque,
                ctx.writes,
                _words_span(outer.words) or outer.span,
            )
        )

    def opaque(self, cmd: SimpleCommand, ctx: _Ctx, why: str, argv: tuple[str, ...] | None) -> None:
        text = cmd.text
        if self.supervised:
            message = f"{why}: allowed because exec supervision checks every program it starts"
            verdict = Verdict(Decision.ALLOW, None, message, text)
        else:
            verdict = Verdict(Decision.DENY, OPAQUE_RULE, _opaque_message(why), text)
        self.emit(cmd, ctx, argv, verdict, why)


def _opaque_message(why: str) -> str:
    if why.startswith("dynamic command name"):
        return f"the command name is only known at run time ({why}); write the command literally"
    if why.startswith("unparseable"):
        return f"agentsh cannot parse this command line ({why}); write it in plainer bash"
    return f"what runs is only known at run time ({why}); write the command literally"


def _allow(message: str) -> Verdict:
    return Verdict(Decision.ALLOW, None, message)


def _too_deep(text: str) -> Verdict:
    message = (
        f"commands nested more than {MAX_DEPTH} levels deep (shells and wrappers); "
        "run the inner command directly"
    )
    return Verdict(Decision.DENY, DEPTH_RULE, message, text)


def _writes(redirects: Sequence[Redirect]) -> tuple[str, ...]:
    out: list[str] = []
    for r in redirects:
        if r.op not in _WRITE_OPS or r.target is None or r.heredoc is not None:
            continue
        resolved = quoting.resolve(r.target.text)
        if r.op == ">&" and (resolved.value.isdigit() or resolved.value == "-"):
            continue  # duplicating a descriptor names no file
        out.append(resolved.value)
    return tuple(out)


def _assignments(cmd: SimpleCommand) -> list[tuple[str, quoting.Resolved]]:
    """``NAME=value`` pairs: the command's own assignments and any word of that form
    (``export``, ``declare``, ``env`` arguments)."""
    out = [(a.name, quoting.resolve(a.values[0].text if a.values else "")) for a in cmd.assignments]
    for w in cmd.words:
        word = quoting.resolve(w.text)
        m = _NAME_EQ.match(word.value)
        if m:
            out.append((m.group(1), quoting.Resolved(m.group(2), word.dynamic, word.splits)))
    return out


def _stdin_text(r: Redirect) -> str | None:
    """What a here-doc or here-string feeds, when known before running (else None)."""
    if r.heredoc is not None:
        body = r.heredoc.body
        if r.op == "<<-":
            body = "\n".join(line.lstrip("\t") for line in body.split("\n"))
        return body if r.heredoc.quoted or not re.search(r"[$`\\]", body) else None
    if r.op == "<<<" and r.target is not None:
        resolved = quoting.resolve(r.target.text)
        return resolved.value if resolved.dynamic is None else None
    return None


def _words_span(words: Sequence[Word]) -> Span | None:
    return (words[0].span[0], words[-1].span[1]) if words else None


def _has_flag(args: Sequence[Arg], flag: str) -> bool:
    return any(
        a.value is None or (a.value.startswith("-") and flag in a.value[1:]) for a in args[1:]
    )


def _alias_or_trap_strings(name: str, args: Sequence[Arg]) -> list[str | None]:
    """The command lines an ``alias`` or ``trap`` command stores (None when dynamic)."""
    rest = [a for a in args[1:] if a.value is None or not a.value.startswith("-")]
    if name == "alias":
        return [
            None if a.value is None else a.value.partition("=")[2]
            for a in rest
            if a.value is None or "=" in a.value
        ]
    if len(rest) < 2:  # `trap`, `trap -p`, `trap SIG`: nothing stored
        return []
    handler = rest[0].value
    return [] if handler == "-" else [handler]


def _unsets_anything(script: Script) -> bool:
    """Whether any word of ``script`` is ``unset`` (which can remove a function, making a
    later call run the program of that name): then calls are judged as programs."""
    return any(w == "unset" for w in _all_words(script.body))


def _all_words(body: Sequence[Node]) -> list[str]:
    out: list[str] = []
    for n in body:
        match n:
            case SimpleCommand():
                out += [quoting.resolve(w.text).value for w in n.words]
                for w in n.words:
                    out += [x for s in w.subs for x in _all_words(s.body.body)]
            case Pipeline():
                out += _all_words(n.commands)
            case CommandList():
                out += _all_words(n.items)
            case Compound():
                out += _all_words(n.body)
            case FunctionDef():
                out += _all_words((n.body,))
            case _:
                pass
    return out
