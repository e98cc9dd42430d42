"""Our typed shell AST: frozen values with source spans, built by ``shell.parse``.

Every node carries ``span = (start, end)``: character offsets into the source text the
node came from (``Script.source``), end exclusive. Words keep their text *as written*
(quotes and expansions included); ``shell.quoting`` resolves them the way bash would.

The tree keeps exactly what the precheck needs to find every command bash may run:

    Script
      body: Node*                    (top-level statements in source order)
    Node =
      SimpleCommand                  assignments, words, redirects
      Pipeline                       a | b |& c  (negated for `!`)
      CommandList                    a && b || c ; d & e  (items + the operators between)
      Compound                       (…), { … }, if, while, until, for, select, case,
                                     (( … )), for (( … )), [[ … ]], and "redirected" (a
                                     pipeline or list with redirections on it) — with the
                                     words it evaluates itself (for-lists, case subjects and
                                     patterns, test operands, arithmetic) and its body
      FunctionDef                    name() body
      Unparsed                       what neither parser understood (opaque to the precheck)

The reserved words ``time`` and ``coproc`` leave no node: the command they prefix is kept
(neither starts a program). Command substitutions (``$(…)``, backticks) and process
substitutions (``<(…)``, ``>(…)``) are ``Substitution`` values inside the ``Word``,
``HereDoc`` or ``Assignment`` that contains them, each with its own parsed ``Script``.
"""

from __future__ import annotations

from agentsh.enforce.record import dataclass

Span = tuple[int, int]


@dataclass(frozen=True)
class Substitution:
    """``$(…)``, a backtick pair, ``<(…)`` or ``>(…)``: a script run while expanding a word."""

    kind: str  # "$(", "`", "<(", ">("
    span: Span
    body: Script


@dataclass(frozen=True)
class Word:
    """One shell word as written. ``subs`` are the substitutions it contains, outermost only."""

    text: str
    span: Span
    subs: tuple[Substitution, ...] = ()


@dataclass(frozen=True)
class Assignment:
    """``NAME=value``, ``NAME+=value`` or ``NAME=(a b …)``; ``values`` holds one word per
    element (one for a scalar; none for ``NAME=``)."""

    name: str
    text: str
    span: Span
    values: tuple[Word, ...] = ()


@dataclass(frozen=True)
class HereDoc:
    """A here-document body. ``quoted`` delimiters (``<<'EOF'``, ``<<"EOF"``, ``<<\\EOF``)
    make the body literal; otherwise bash expands ``$…`` and backticks in it, so ``subs``
    holds the substitutions found there."""

    body: str
    span: Span
    quoted: bool
    subs: tuple[Substitution, ...] = ()


@dataclass(frozen=True)
class Redirect:
    """One redirection. ``op`` as written (``>``, ``>>``, ``<``, ``<<``, ``<<-``, ``<<<``,
    ``&>``, ``>&``, …); ``fd`` the explicit left-hand descriptor; ``target`` the word on the
    right (a file, a descriptor number, a here-string or a here-doc delimiter)."""

    op: str
    span: Span
    target: Word | None = None
    fd: int | None = None
    heredoc: HereDoc | None = None


@dataclass(frozen=True)
class SimpleCommand:
    """``[assignments] [words] [redirects]``; ``words[0]`` (if any) names the command."""

    text: str
    span: Span
    assignments: tuple[Assignment, ...] = ()
    words: tuple[Word, ...] = ()
    redirects: tuple[Redirect, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    span: Span
    commands: tuple[Node, ...]
    negated: bool = False


@dataclass(frozen=True)
class CommandList:
    """Items joined by operators: ``ops[i]`` sits between ``items[i]`` and ``items[i+1]``
    and is one of ``&&``, ``||``, ``;``, ``&``, ``\\n``. A trailing ``&`` makes the last
    item a background job (``background``)."""

    span: Span
    items: tuple[Node, ...]
    ops: tuple[str, ...]
    background: bool = False


@dataclass(frozen=True)
class Compound:
    """A compound command. ``kind`` is one of COMPOUND_KINDS; ``words`` are the words the
    construct expands itself (for-lists, case subject and patterns, ``[[ ]]`` operands,
    arithmetic); ``body`` the commands it runs, in source order."""

    kind: str
    span: Span
    body: tuple[Node, ...] = ()
    words: tuple[Word, ...] = ()
    redirects: tuple[Redirect, ...] = ()


COMPOUND_KINDS = frozenset(
    {
        "subshell",
        "group",
        "if",
        "while",
        "until",
        "for",
        "select",
        "case",
        "arith",
        "arith-for",
        "test",
        "redirected",
    }
)


@dataclass(frozen=True)
class FunctionDef:
    name: str
    span: Span
    body: Node


@dataclass(frozen=True)
class Unparsed:
    """Source neither parser understood. The precheck treats it as opaque (never allowed
    without exec supervision)."""

    text: str
    span: Span
    why: str


Node = SimpleCommand | Pipeline | CommandList | Compound | FunctionDef | Unparsed


@dataclass(frozen=True)
class Script:
    """A parsed script. ``parser`` names what understood it: ``bashlex``, ``tree-sitter``
    or ``none`` (then ``body`` is a single ``Unparsed``)."""

    source: str
    body: tuple[Node, ...]
    parser: str
