"""Static quote removal, exactly as bash resolves a word before it runs it.

``resolve(text)`` takes one word *as written* (``s'u'do``, ``"su"do``, ``$'\\x73udo'``,
``\\sudo``, ``$"sudo"``, …) and returns the string bash would see after quote removal,
plus the first construct that makes the word's value unknown until run time:

    $x ${x} $1 $@      parameter expansion           "$x" stays dynamic: quoting does not
    $(…) `…`           command substitution           make an expansion static
    $((…)) $[…]        arithmetic expansion
    * ? [..] +(…) …    pathname expansion (unquoted only)
    {a,b} {1..3}       brace expansion (unquoted only)
    ~ ~user            tilde expansion (unquoted, at the start)

Expansions are kept in ``value`` as written, so a dynamic argument still reads as its
source (``$HOME/x``). Pure; no I/O.
"""

from __future__ import annotations

from agentsh.enforce.record import dataclass

_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_SPECIAL_PARAMS = frozenset("@*#?-$!0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
# Inside "…", a backslash quotes only these (bash(1) QUOTING); elsewhere it stays.
_DQ_ESCAPABLE = frozenset('$`"\\\n')


@dataclass(frozen=True)
class Resolved:
    """``value``: the word after quote removal (expansions kept as written).
    ``dynamic``: None when ``value`` is exactly what bash uses, else the construct that
    makes it known only at run time (e.g. ``"$cmd"``, ``"$(…)"``, ``"glob *"``)."""

    value: str
    dynamic: str | None = None
    splits: bool = False  # an expansion or glob outside quotes: may become several words


@dataclass(frozen=True)
class Arg:
    """One argument of a command line: ``text`` as written, ``value`` after quote removal,
    or None when the value is only known at run time. ``splits``: the word may expand to
    any number of words (word splitting, globbing, brace expansion)."""

    text: str
    value: str | None
    splits: bool = False


def arg(text: str) -> Arg:
    r = resolve(text)
    return Arg(text, r.value if r.dynamic is None else None, r.splits)


def static(value: str) -> Arg:
    """An argument whose value is already known (e.g. produced by ``env -S`` splitting)."""
    return Arg(value, value)


def resolve(text: str) -> Resolved:
    """Quote-remove one word as bash does; see the module docstring."""
    return _Scanner(text).run()


def literal_ranges(text: str) -> list[tuple[int, int]]:
    """Offsets ``[start, end)`` of the word's ``'…'`` and ``$'…'`` parts, where nothing
    expands (outside any ``$(…)``, whose own words are scanned on their own)."""
    scanner = _Scanner(text)
    scanner.run()
    return scanner.literal


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.out: list[str] = []
        self.dynamic: str | None = None
        self.splits = False
        self.in_double = False
        self.literal: list[tuple[int, int]] = []

    def run(self) -> Resolved:
        t = self.text
        if t.startswith("~"):
            self._mark("tilde ~")
        while self.i < len(t):
            self._unquoted(t[self.i])
        return Resolved("".join(self.out), self.dynamic, self.splits)

    def _mark(self, why: str) -> None:
        if self.dynamic is None:
            self.dynamic = why
        if not self.in_double and not why.startswith("tilde"):
            self.splits = True

    def _unquoted(self, c: str) -> None:
        t, i = self.text, self.i
        match c:
            case "\\":
                self._backslash(quoted=False)
            case "'":
                end = _find(t, "'", i + 1)
                self.out.append(t[i + 1 : end])
                self.literal.append((i, end + 1))
                self.i = end + 1
            case '"':
                self.i = i + 1
                self._double()
            case "$":
                self._dollar(in_double=False)
            case "`":
                self._backtick()
            case "*" | "?":
                self._mark(f"glob {c}")
                self._literal(c)
            case "[" if "]" in t[i + 1 :]:
                self._mark("glob [")
                self._literal(c)
            case "+" | "@" | "!" if t.startswith("(", i + 1):
                self._mark(f"glob {c}(")
                self._literal(c)
            case "{" if _brace_expands(t, i):
                self._mark("brace expansion {")
                self._literal(c)
            case _:
                self._literal(c)

    def _literal(self, c: str) -> None:
        self.out.append(c)
        self.i += 1

    def _backslash(self, *, quoted: bool) -> None:
        t, i = self.text, self.i
        if i + 1 >= len(t):
            self._literal("\\")
            return
        nxt = t[i + 1]
        self.i = i + 2
        if nxt == "\n":  # line continuation: both characters vanish
            return
        if quoted and nxt not in _DQ_ESCAPABLE:
            self.out.append("\\")
        self.out.append(nxt)

    def _double(self) -> None:
        t = self.text
        self.in_double = True
        while self.i < len(t):
            c = t[self.i]
            if c == '"':
                self.i += 1
                self.in_double = False
                return
            if c == "\\":
                self._backslash(quoted=True)
            elif c == "$":
                self._dollar(in_double=True)
            elif c == "`":
                self._backtick()
            else:
                self._literal(c)
        self.in_double = False

    def _backtick(self) -> None:
        t, i = self.text, self.i
        j = i + 1
        while j < len(t) and t[j] != "`":
            j += 2 if t[j] == "\\" else 1
        end = min(j + 1, len(t))
        self.out.append(t[i:end])
        self.i = end
        self._mark("`…`")

    def _dollar(self, *, in_double: bool) -> None:
        t, i = self.text, self.i
        nxt = t[i + 1] if i + 1 < len(t) else ""
        if nxt == "'" and not in_double:
            self._ansi_c()
        elif nxt == '"' and not in_double:
            self.i = i + 2  # $"…": locale translation; the text is what runs without a catalog
            self._double()
        elif nxt in ("{", "(", "["):
            self._bracketed(nxt)
        elif nxt and (nxt.isalpha() or nxt == "_"):
            j = i + 1
            while j < len(t) and (t[j].isalnum() or t[j] == "_"):
                j += 1
            self._expansion(j, t[i:j])
        elif nxt and nxt in _SPECIAL_PARAMS:
            self._expansion(i + 2, t[i : i + 2])
        else:
            self._literal("$")

    def _expansion(self, end: int, why: str) -> None:
        self.out.append(self.text[self.i : end])
        self.i = end
        self._mark(why)

    def _bracketed(self, opener: str) -> None:
        t, i = self.text, self.i
        closer = {"{": "}", "(": ")", "[": "]"}[opener]
        end = _matching(t, i + 1, opener, closer)
        if opener == "(":
            why = "$((…))" if t.startswith("((", i + 1) else "$(…)"
        else:
            why = "${…}" if opener == "{" else "$[…]"
        self._expansion(end, why)

    def _ansi_c(self) -> None:
        t = self.text
        j = self.i + 2
        chunk: list[str] = []
        while j < len(t) and t[j] != "'":
            if t[j] == "\\" and j + 1 < len(t):
                text, j = _ansi_escape(t, j + 1)
                chunk.append(text)
            else:
                chunk.append(t[j])
                j += 1
        decoded = "".join(chunk)
        # bash builds $'…' as a C string: a NUL byte ends it (`$'su\0x'do` runs `sudo`).
        self.out.append(decoded.split("\0", 1)[0])
        self.literal.append((self.i, j + 1))
        self.i = j + 1


def _ansi_escape(t: str, j: int) -> tuple[str, int]:
    """Decode the escape whose letter is at ``t[j]``; return (text, index after it)."""
    c = t[j]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], j + 1
    if c in _OCT:
        digits = _take(t, j, _OCT, 3)
        return chr(int(digits, 8) & 0xFF), j + len(digits)
    if c in ("x", "u", "U"):
        width = {"x": 2, "u": 4, "U": 8}[c]
        digits = _take(t, j + 1, _HEX, width)
        if not digits:
            return "\\" + c, j + 1
        code = int(digits, 16)
        return (chr(code) if code <= 0x10FFFF else "\ufffd"), j + 1 + len(digits)
    if c == "c" and j + 1 < len(t):
        return chr(ord(t[j + 1]) & 0x1F), j + 2
    return "\\" + c, j + 1


def _take(t: str, j: int, allowed: frozenset[str], limit: int) -> str:
    end = j
    while end < len(t) and end - j < limit and t[end] in allowed:
        end += 1
    return t[j:end]


def _find(t: str, ch: str, start: int) -> int:
    """Index of ``ch`` at or after ``start``, or ``len(t)`` when unterminated."""
    j = t.find(ch, start)
    return len(t) if j < 0 else j


def _matching(t: str, start: int, opener: str, closer: str) -> int:
    """Index just past the ``closer`` matching the ``opener`` before ``start`` (quote-aware,
    nesting-aware; the end of ``t`` when unbalanced)."""
    depth, j = 1, start
    while j < len(t):
        c = t[j]
        if c == "\\":
            j += 2
            continue
        if c == "'":
            j = _find(t, "'", j + 1) + 1
            continue
        if c == '"':
            j = _skip_double(t, j + 1)
            continue
        if c == opener:
            depth += 1
        elif c == closer:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(t)


def _skip_double(t: str, j: int) -> int:
    while j < len(t) and t[j] != '"':
        j += 2 if t[j] == "\\" else 1
    return min(j + 1, len(t))


def _brace_expands(t: str, i: int) -> bool:
    """Whether the unquoted ``{`` at ``i`` starts a brace expansion (``{a,b}``, ``{1..3}``)."""
    end = _matching(t, i + 1, "{", "}")
    if t[end - 1 : end] != "}":
        return False
    inner = t[i + 1 : end - 1]
    depth = 0
    j = 0
    while j < len(inner):
        c = inner[j]
        if c in "\\":
            j += 2
            continue
        if c in "'\"":
            j = _find(inner, c, j + 1) + 1
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0 and (c == "," or inner.startswith("..", j)):
            return True
        j += 1
    return False
