"""``parse(text) -> Script``: the one module that imports bashlex (ARCHITECTURE §3 step 4).

bashlex parses first; it fails in three ways — ``ParsingError``, ``NotImplementedError``
(``$(( ))``, ``case``, ``time``, ``select``, ``coproc``) and constructs it silently
misreads — and each becomes a fallback, never an exception that escapes:

    bashlex ok and no blind spot  -> lowered bashlex tree          (Script.parser "bashlex")
    otherwise                      -> tree-sitter-bash (tsparse)    ("tree-sitter")
    both fail                      -> one Unparsed node             ("none": opaque)

Blind spots we refuse to trust bashlex with: ``((…))`` (read as two subshells),
substitutions inside ``${…}`` (not parsed), unquoted here-doc bodies containing ``$(`` or
backticks (not parsed). bashlex also rejects quoted here-doc delimiters (``<<'EOF'``); we
hand it ``<< EOF `` instead — same length, so every offset still points into the caller's
text, and every word's text is taken from the caller's text, never from bashlex.

Parse tables: bashlex rebuilds its LALR tables at every import (~150–190 ms).
``python -m agentsh.shell.parse --warm`` stores them in ``_bashlex_tables.pickle`` next to
this file (inside the installed, root-owned package; never a user-writable place). The
file holds only dicts, tuples, strings and ints and is read with an unpickler that refuses
every class, and only when it has this file's owner and is not group/world-writable. A
missing, stale (bashlex's grammar changed) or untrusted cache means building the tables as
bashlex does: slower, never wrong.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import re
import sys
import types
import zlib
from pathlib import Path
from typing import Any

from agentsh.shell import quoting
from agentsh.shell.ast import (
    Assignment,
    CommandList,
    Compound,
    FunctionDef,
    HereDoc,
    Node,
    Pipeline,
    Redirect,
    Script,
    SimpleCommand,
    Substitution,
    Unparsed,
    Word,
)

try:  # the C unpickler itself: the pickle module's Python half costs ~1.5 ms a start
    from _pickle import Unpickler, UnpicklingError
except ImportError:  # not CPython
    from pickle import Unpickler, UnpicklingError

CACHE_FILE = Path(__file__).with_name("_bashlex_tables.pickle")
_CACHE_FORMAT = 1
# Files whose content determines bashlex's tables (grammar, tokens, table builder).
_GRAMMAR_FILES = ("parser.py", "tokenizer.py", "yacc.py")

_bashlex: Any = None


class _Unsupported(Exception):
    """bashlex parsed the text but we do not trust its reading of it."""


# --- parse tables ------------------------------------------------------------------------


class _DataOnly(Unpickler):
    """Refuses every class: a cache can only ever produce builtin containers and scalars."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnpicklingError(f"class {module}.{name} not allowed in the table cache")


def _fingerprint() -> str:
    """Identifies the grammar the tables were built from (staleness, not trust: trust comes
    from the file's owner and mode, so a checksum is enough and costs no OpenSSL import)."""
    spec = importlib.util.find_spec("bashlex")
    if spec is None or not spec.submodule_search_locations:
        return "no-bashlex"
    root = Path(next(iter(spec.submodule_search_locations)))
    parts = [f"{_CACHE_FORMAT}:{sys.version_info[:2]}"]
    for name in _GRAMMAR_FILES:
        data = (root / name).read_bytes()
        parts.append(f"{name}:{len(data)}:{zlib.crc32(data):08x}")
    return " ".join(parts)


def _trusted(path: Path) -> bool:
    """The cache is only read when it belongs to whoever owns this code and nobody else
    can write it (loading attacker-chosen tables could hide a command)."""
    try:
        st, own = path.stat(), Path(__file__).stat()
    except OSError:
        return False
    return st.st_uid == own.st_uid and not st.st_mode & 0o022 and path.is_file()


def _read_cache(path: Path) -> dict[str, Any] | None:
    if not _trusted(path):
        return None
    try:
        data = _DataOnly(io.BytesIO(path.read_bytes())).load()
    except (OSError, UnpicklingError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != _fingerprint():
        return None
    return data


def _from_tables(tables: dict[str, Any], yacc: Any) -> Any:
    """A stand-in for ``bashlex.yacc.yacc()`` that builds the parser from cached tables.

    It is called while ``bashlex.parser`` executes, after its ``p_*`` functions exist and
    before it patches the tables (that patching then runs exactly as without the cache).
    """

    def build(*_args: Any, **_kwargs: Any) -> Any:
        pdict = vars(sys.modules["bashlex.parser"])
        prods = []
        for number, (name, syms, func) in enumerate(tables["productions"]):
            prod = yacc.Production(number, name, syms, func=func)
            prod.bind(pdict)
            prods.append(prod)
        # The tables were unpickled for this one import: the parser may own (and patch)
        # them without a copy.
        lrtab = types.SimpleNamespace(
            lr_productions=prods, lr_action=tables["action"], lr_goto=tables["goto"]
        )
        return yacc.LRParser(lrtab, pdict["p_error"])

    return build


class _InspectOnDemand(types.ModuleType):
    """What ``bashlex.yacc`` gets for ``import inspect`` on the cached-table path.

    yacc imports inspect (~7 ms a start) only to read the grammar's source when it builds
    tables, which that path never does. This stand-in is in ``sys.modules`` only while
    yacc is imported; any later use of an attribute imports the real inspect and answers
    from it, so yacc behaves as before if it ever needs it.
    """

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get("inspect") is self:
            del sys.modules["inspect"]
        return getattr(importlib.import_module("inspect"), name)


def _import_yacc(*, defer_inspect: bool) -> Any:
    """``bashlex.yacc``, with inspect imported on demand when ``defer_inspect``."""
    if not defer_inspect or "inspect" in sys.modules:
        return importlib.import_module("bashlex.yacc")
    stand_in = _InspectOnDemand("inspect")
    sys.modules["inspect"] = stand_in
    try:
        return importlib.import_module("bashlex.yacc")
    finally:
        if sys.modules.get("inspect") is stand_in:
            del sys.modules["inspect"]


def _import_with(replacement: Any | None, capture: dict[str, Any] | None = None) -> Any:
    """Import bashlex with ``yacc.yacc`` swapped for ``replacement`` (or wrapped to
    ``capture`` the freshly built tables) while ``bashlex.parser`` runs."""
    spec = importlib.util.find_spec("bashlex")
    if spec is None or spec.loader is None:
        raise ImportError("bashlex is not installed")
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["bashlex"] = pkg  # the package exists, its __init__ has not run yet
    try:
        yacc: Any = _import_yacc(defer_inspect=replacement is not None)
        original = yacc.yacc
        yacc.yacc = replacement(yacc) if replacement else _capturing(original, capture)
        try:
            spec.loader.exec_module(pkg)
        finally:
            yacc.yacc = original
    except BaseException:
        for name in [m for m in sys.modules if m == "bashlex" or m.startswith("bashlex.")]:
            del sys.modules[name]
        raise
    return pkg


def _capturing(original: Any, capture: dict[str, Any] | None) -> Any:
    def build(*args: Any, **kwargs: Any) -> Any:
        # yacc() reads the grammar from its caller's globals; we are that caller now.
        kwargs.setdefault("module", sys.modules["bashlex.parser"])
        parser = original(*args, **kwargs)
        if capture is not None:  # copy now: bashlex.parser edits the tables right after
            capture["action"] = {s: dict(a) for s, a in parser.action.items()}
            capture["goto"] = {s: dict(g) for s, g in parser.goto.items()}
            capture["productions"] = [(p.name, tuple(p.prod), p.func) for p in parser.productions]
        return parser

    return build


def _load_bashlex(*, use_cache: bool = True) -> Any:
    """The bashlex package, built from the table cache when a trusted, current one exists."""
    global _bashlex  # noqa: PLW0603 - one lazily loaded module per process
    if _bashlex is not None:
        return _bashlex
    if "bashlex" in sys.modules:  # somebody imported it already: its tables are built
        _bashlex = sys.modules["bashlex"]
        return _bashlex
    tables = _read_cache(CACHE_FILE) if use_cache else None
    if tables is not None:
        try:
            _bashlex = _import_with(lambda yacc: _from_tables(tables, yacc))
            return _bashlex
        except (KeyError, AttributeError, TypeError, ValueError, IndexError):
            pass  # tables do not fit this bashlex after all: build them as bashlex does
    _bashlex = importlib.import_module("bashlex")
    return _bashlex


def warm(path: Path = CACHE_FILE) -> int:
    """Build bashlex's tables in a fresh import and write them to ``path`` atomically.

    Returns the number of parser states written. Must run in a process that has not
    imported bashlex yet (``python -m agentsh.shell.parse --warm``).
    """
    if "bashlex" in sys.modules:
        raise RuntimeError("warm() needs a process that has not imported bashlex")
    import pickle  # only the one-off --warm step needs these
    import tempfile

    captured: dict[str, Any] = {}
    _import_with(None, captured)
    data = {"fingerprint": _fingerprint(), **captured}
    fd, tmp = tempfile.mkstemp(prefix=".tables-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(captured["action"])


# --- parse -------------------------------------------------------------------------------

# `<<'EOF'`, `<< "EOF"`, `<<\EOF` -> `<< EOF ` (same length); bashlex wants a bare word.
# Replacing a pair of quotes keeps the quote parity of everything after it unchanged.
_QUOTED_DELIM = re.compile(r"<<(-?)(\s*)(?:'(\w+)'|\"(\w+)\"|\\(\w+))")


def _unquote_delimiters(text: str) -> tuple[str, dict[int, tuple[int, int]]]:
    """The text bashlex gets, and for each delimiter we unquoted: where bashlex will see it
    -> the span of the quoted delimiter as written."""
    quoted: dict[int, tuple[int, int]] = {}

    def plain(m: re.Match[str]) -> str:
        word = m.group(3) or m.group(4) or m.group(5)
        lead = m.group(1) + m.group(2) + " "
        quoted[m.start() + 2 + len(lead)] = (m.start() + 2 + len(m.group(1) + m.group(2)), m.end())
        pad = len(m.group(0)) - 2 - len(lead) - len(word)
        return "<<" + lead + word + " " * pad

    return _QUOTED_DELIM.sub(plain, text), quoted


def parse(text: str) -> Script:
    """Parse a bash script into our AST. Never raises for any input: what neither
    parser understands becomes one ``Unparsed`` node (opaque to the precheck)."""
    if not text.strip():
        return Script(text, (), "bashlex")
    bashlex = _load_bashlex()
    failures = (
        bashlex.errors.ParsingError,
        _Unsupported,
        NotImplementedError,
        RecursionError,
        # bashlex's own bugs on odd input; the fallback parser gets the text instead
        AssertionError,
        AttributeError,
        IndexError,
        KeyError,
        TypeError,
        ValueError,
    )
    try:
        return _parse_bashlex(bashlex, text)
    except failures as e:
        why = f"bashlex: {type(e).__name__}: {e}"
    from agentsh.shell import tsparse  # only when bashlex fails: off the common start-up path

    try:
        return tsparse.parse(text)
    except (tsparse.Unsupported, RecursionError) as e:
        return Script(text, (Unparsed(text, (0, len(text)), f"{why}; {e}"),), "none")


def _parse_bashlex(bashlex: Any, text: str) -> Script:
    fed, quoted = _unquote_delimiters(text)
    trees = bashlex.parse(fed)
    low = _Lowering(text, quoted)
    return Script(text, tuple(low.node(t) for t in trees), "bashlex")


class _Lowering:
    """bashlex nodes -> shell.ast nodes. Texts come from ``source`` (the caller's text)."""

    def __init__(self, source: str, quoted_delims: dict[int, tuple[int, int]]) -> None:
        self.src = source
        self.quoted = quoted_delims

    def node(self, n: Any) -> Node:
        match n.kind:
            case "command":
                return self.command(n)
            case "pipeline":
                parts = [p for p in n.parts if p.kind not in ("pipe", "reservedword")]
                negated = any(p.kind == "reservedword" and p.word == "!" for p in n.parts)
                return Pipeline(n.pos, tuple(self.node(p) for p in parts), negated)
            case "list":
                return self.list(n)
            case "compound":
                return self.compound(n)
            case "if" | "for" | "while" | "until":
                return self.clause(n, n.kind)
            case "function":
                name = next(p for p in n.parts if p.kind == "word")
                body = next(p for p in n.parts if p.kind == "compound")
                return FunctionDef(self.src[name.pos[0] : name.pos[1]], n.pos, self.node(body))
            case _:
                raise _Unsupported(f"bashlex node {n.kind!r}")

    def list(self, n: Any) -> Node:
        items: list[Node] = []
        ops: list[str] = []
        for p in n.parts:
            if p.kind == "operator":
                ops.append(p.op)
            else:
                items.append(self.node(p))
        background = len(ops) == len(items) and ops[-1] == "&"
        ops = ops[: len(items) - 1]
        if len(items) == 1:
            return CommandList(n.pos, tuple(items), (), background) if background else items[0]
        return CommandList(n.pos, tuple(items), tuple(ops), background)

    def compound(self, n: Any) -> Node:
        inner = [p for p in n.list if p.kind != "reservedword"]
        words = [p for p in n.list if p.kind == "reservedword"]
        redirects = tuple(self.redirect(r) for r in getattr(n, "redirects", []) or [])
        if len(inner) == 1 and inner[0].kind in ("if", "for", "while", "until"):
            clause = self.clause(inner[0], inner[0].kind)
            assert isinstance(clause, Compound)
            return Compound(clause.kind, n.pos, clause.body, clause.words, redirects)
        opener = words[0].word if words else ""
        nested = opener == "(" and inner and inner[0].kind == "compound"
        if nested and inner[0].pos[0] == words[0].pos[1]:  # `((`: arithmetic, not subshells
            raise _Unsupported("bashlex reads ((…)) as subshells")
        kind = {"(": "subshell", "{": "group"}.get(opener)
        if kind is None:
            raise _Unsupported(f"bashlex compound opened by {opener!r}")
        return Compound(kind, n.pos, tuple(self.node(p) for p in inner), (), redirects)

    def clause(self, n: Any, kind: str) -> Node:
        body = tuple(self.node(p) for p in n.parts if p.kind not in ("reservedword", "word"))
        words = tuple(self.word(p) for p in n.parts if p.kind == "word")
        return Compound(kind, n.pos, body, words)

    def command(self, n: Any) -> SimpleCommand:
        assigns: list[Assignment] = []
        words: list[Word] = []
        redirects: list[Redirect] = []
        for p in n.parts:
            if p.kind == "assignment" and not words:
                assigns.append(self.assignment(p))
            elif p.kind in ("word", "assignment"):
                words.append(self.word(p))
            elif p.kind == "redirect":
                redirects.append(self.redirect(p))
            else:
                raise _Unsupported(f"bashlex command part {p.kind!r}")
        spans = [a.span for a in assigns] + [w.span for w in words] + [r.span for r in redirects]
        span = (min(s for s, _ in spans), max(e for _, e in spans))
        return SimpleCommand(
            self.src[span[0] : span[1]], span, tuple(assigns), tuple(words), tuple(redirects)
        )

    def word(self, n: Any) -> Word:
        start, end = n.pos
        return Word(self.src[start:end], (start, end), self.subs(n, start))

    def subs(self, n: Any, start: int) -> tuple[Substitution, ...]:
        """Substitutions bash runs for this word. bashlex also reports ``$(…)`` inside
        single quotes of assignments (``x='$(id)'``); those run nothing and are dropped."""
        literal = quoting.literal_ranges(self.src[start : n.pos[1]])
        found: list[Substitution] = []
        for p in getattr(n, "parts", []):
            if any(s <= p.pos[0] - start < e for s, e in literal):
                continue
            if p.kind == "parameter" and re.search(r"\$\(|`|[<>]\(", p.value or ""):
                raise _Unsupported("bashlex does not parse substitutions inside ${…}")
            if p.kind in ("commandsubstitution", "processsubstitution"):
                opener = self.src[p.pos[0] : p.pos[0] + 2]
                kind = "`" if opener.startswith("`") else opener
                body = Script(self.src, (self.node(p.command),), "bashlex")
                found.append(Substitution(kind, p.pos, body))
        return tuple(found)

    def assignment(self, n: Any) -> Assignment:
        start, end = n.pos
        text = self.src[start:end]
        name, _, _ = text.partition("=")
        vstart = start + len(name) + 1
        value = Word(self.src[vstart:end], (vstart, end), self.subs(n, vstart))
        return Assignment(name.rstrip("+"), text, (start, end), (value,) if value.text else ())

    def redirect(self, n: Any) -> Redirect:
        out = n.output
        fd = n.input if isinstance(n.input, int) else None
        if isinstance(out, int):  # `2>&1`: duplicating a descriptor names no file
            target = Word(str(out), (n.pos[1] - len(str(out)), n.pos[1]))
        else:
            target = self.word(out)
        if getattr(n, "heredoc", None) is None:
            return Redirect(n.type, n.pos, target, fd)
        quoted = target.span[0] in self.quoted
        if quoted:  # the delimiter as written, quotes included
            start, end = self.quoted[target.span[0]]
            target = Word(self.src[start:end], (start, end))
        heredoc = self.heredoc(n, target, quoted)
        return Redirect(n.type, (n.pos[0], target.span[1]), target, fd, heredoc)

    def heredoc(self, n: Any, delim: Word, quoted: bool) -> HereDoc:
        start, end = n.heredoc.pos
        text = self.src[start:end]
        body = text[: text.rfind("\n") + 1] if "\n" in text else ""
        quoted = quoted or any(c in delim.text for c in "'\"\\")
        if not quoted and re.search(r"\$\(|`", body):
            raise _Unsupported("bashlex does not parse substitutions in here-doc bodies")
        return HereDoc(body, (start, start + len(body)), quoted)


def _main(argv: list[str]) -> int:
    if argv != ["--warm"]:
        sys.stderr.write("usage: python -m agentsh.shell.parse --warm\n")
        return 2
    states = warm()
    sys.stdout.write(f"agentsh: cached bashlex parse tables ({states} states) in {CACHE_FILE}\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
