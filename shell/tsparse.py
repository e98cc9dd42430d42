"""tree-sitter-bash lowering: the second parser behind ``shell.parse``, used where bashlex
fails. It never imports bashlex; ``shell.parse`` is the only caller.

tree-sitter-bash understands what bashlex does not (``[[ ]]``, ``case``, ``$(( ))``,
arrays, ``for ((…))``, ``select``, quoted here-doc delimiters) but has gaps of its own, so:

- ``time`` and ``coproc`` in command position are parsed as command names, which misreads
  ``time { a; }``. Bash's reserved words are blanked out (same length, offsets unchanged)
  and the text parsed again; ``/usr/bin/time`` (quoted, a path, or after an assignment) is
  a program and stays.
- Any ERROR or MISSING node (e.g. a here-doc followed by ``; cmd`` on its line) fails the
  parse: ``Unsupported``.
- After lowering, every ``command`` and substitution node of the tree must have been
  lowered; one the lowering skipped means a construct we do not understand: ``Unsupported``
  (fail closed rather than lose a command).

tree-sitter reports UTF-8 byte offsets; spans here are character offsets into the text.
"""

from __future__ import annotations

import re
from typing import Any

from agentsh.enforce.record import replace
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
    Word,
)


class Unsupported(Exception):
    """tree-sitter could not parse the text, or produced a tree we do not understand."""


_parser: Any = None
_MAX_PASSES = 16
_SEPARATORS = frozenset({";", "&", ";;", ";&", ";;&", "\n"})
_CHECKED = frozenset(
    {
        "command",
        "declaration_command",
        "unset_command",
        "command_substitution",
        "process_substitution",
    }
)
_STATEMENTS = frozenset(
    {
        "command",
        "declaration_command",
        "unset_command",
        "test_command",
        "pipeline",
        "list",
        "negated_command",
        "redirected_statement",
        "subshell",
        "compound_statement",
        "if_statement",
        "while_statement",
        "for_statement",
        "c_style_for_statement",
        "case_statement",
        "function_definition",
        "variable_assignment",
        "variable_assignments",
    }
)
# Containers whose statements belong to the enclosing construct's body.
_CLAUSES = frozenset({"elif_clause", "else_clause", "do_group", "case_item"})
# bash's reserved words: where tree-sitter takes one for a command name, bash would have
# read it as syntax (or reported a syntax error), so the tree is wrong.
_RESERVED = frozenset(
    {"if", "then", "elif", "else", "fi", "do", "done", "case", "esac", "while", "until"}
    | {"for", "select", "function", "{", "}", "!", "[[", "]]", "time", "coproc"}
)
_COPROC_NAME = re.compile(rb"\s+[A-Za-z_]\w*\s+(?=[{(]|\[\[|(?:if|while|until|for|case|select)\b)")


def _get_parser() -> Any:
    global _parser  # noqa: PLW0603 - built once per process, only when bashlex fails
    if _parser is None:
        # ~45 ms: imported only when bashlex fails
        import tree_sitter
        import tree_sitter_bash

        _parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bash.language()))
    return _parser


def parse(text: str) -> Script:
    """Parse ``text`` with tree-sitter-bash. Raises Unsupported (never anything else for
    text input) when the tree has errors or constructs the lowering does not know."""
    try:
        data = bytearray(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError as e:
        raise Unsupported(f"text is not encodable: {e}") from e
    parser = _get_parser()
    for _ in range(_MAX_PASSES):
        root = parser.parse(bytes(data)).root_node
        blanks = _keyword_blanks(root, data)
        if not blanks:
            break
        for start, end in blanks:
            data[start:end] = b" " * (end - start)
    else:
        raise Unsupported("too many nested time/coproc keywords")
    if root.has_error:  # ERROR or MISSING nodes: tree-sitter recovered by guessing
        raise Unsupported(f"tree-sitter: syntax error near {_first_error(root)!r}")
    low = _Lowering(text, data)
    body = low.body(root)
    low.check_coverage(root)
    return Script(text, body, "tree-sitter")


def _first_error(node: Any) -> str:
    if node.type == "ERROR" or node.is_missing:
        return str(node.text.decode("utf-8", "replace"))[:40] or node.type
    for child in node.children:
        if child.has_error:
            return _first_error(child)
    return "?"


def _keyword_blanks(root: Any, data: bytearray) -> list[tuple[int, int]]:
    """Byte ranges of the reserved words ``time [-p] [--]`` and ``coproc [NAME]`` that
    tree-sitter took for command names."""
    found: list[tuple[int, int]] = []
    stack = [root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.type != "command" or not node.named_children:
            continue
        first = node.named_children[0]
        if first.type != "command_name" or first.text not in (b"time", b"coproc"):
            continue
        end = first.end_byte
        if first.text == b"time":
            for arg in node.children_by_field_name("argument"):
                if arg.text not in (b"-p", b"--"):
                    break
                end = arg.end_byte
        else:
            m = _COPROC_NAME.match(bytes(data), end)
            end = m.end() if m else end
        found.append((first.start_byte, end))
    return found


class _Lowering:
    def __init__(self, src: str, data: bytearray) -> None:
        self.src = src
        self.seen: set[tuple[int, int, str]] = set()
        self.b2c: list[int] | None = None
        if len(data) != len(src):
            self.b2c = []
            for i, ch in enumerate(src):
                self.b2c.extend([i] * len(ch.encode("utf-8", "surrogateescape")))
            self.b2c.append(len(src))

    # --- helpers ---
    def span(self, n: Any) -> tuple[int, int]:
        if self.b2c is None:
            return (n.start_byte, n.end_byte)
        return (self.b2c[n.start_byte], self.b2c[n.end_byte])

    def text(self, n: Any) -> str:
        s, e = self.span(n)
        return self.src[s:e]

    def mark(self, n: Any) -> None:
        self.seen.add((n.start_byte, n.end_byte, n.type))

    def check_coverage(self, root: Any) -> None:
        stack = [root]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            key = (node.start_byte, node.end_byte, node.type)
            if node.type in _CHECKED and key not in self.seen:
                raise Unsupported(f"construct not understood around {self.text(node)[:40]!r}")

    # --- statements ---
    def body(self, parent: Any) -> tuple[Node, ...]:
        """The statements directly in ``parent`` (and its clauses), in source order; an
        item followed by ``&`` becomes a background CommandList."""
        out: list[Node] = []
        for child in parent.children:
            if child.type in _STATEMENTS:
                out.append(self.statement(child))
            elif child.type in _CLAUSES:
                out.extend(self.body(child))
            elif child.type == "&" and out:
                last = out[-1]
                out[-1] = CommandList(_span_of(last), (last,), (), background=True)
        return tuple(out)

    def statement(self, n: Any) -> Node:  # noqa: PLR0911 - one case per node type
        match n.type:
            case "command" | "declaration_command" | "unset_command":
                return self.command(n, ())
            case "variable_assignment":
                a = self.assignment(n)
                return SimpleCommand(a.text, a.span, (a,))
            case "variable_assignments":
                assigns = tuple(self.assignment(c) for c in n.named_children)
                return SimpleCommand(self.text(n), self.span(n), assigns)
            case "pipeline":
                return Pipeline(self.span(n), self.body(n))
            case "negated_command":
                return Pipeline(self.span(n), self.body(n), negated=True)
            case "list":
                items = self.body(n)
                ops = tuple(c.type for c in n.children if c.type in ("&&", "||"))
                return CommandList(self.span(n), items, ops[: len(items) - 1])
            case "redirected_statement":
                return self.redirected(n)
            case "function_definition":
                name = n.child_by_field_name("name")
                body = n.child_by_field_name("body")
                if name is None or body is None:
                    raise Unsupported("function without a name or body")
                return FunctionDef(self.text(name), self.span(n), self.statement(body))
            case _:
                return self.compound(n)

    def compound(self, n: Any) -> Compound:  # noqa: PLR0911 - one case per construct
        first = n.children[0].type if n.children else ""
        match n.type:
            case "subshell":
                return Compound("subshell", self.span(n), self.body(n))
            case "compound_statement" if first == "((":
                return Compound("arith", self.span(n), (), (self.word(n),))
            case "compound_statement":
                return Compound("group", self.span(n), self.body(n))
            case "test_command":
                return Compound("test", self.span(n), (), (self.word(n),))
            case "if_statement":
                return Compound("if", self.span(n), self.body(n))
            case "while_statement":
                kind = "until" if first == "until" else "while"
                return Compound(kind, self.span(n), self.body(n))
            case "for_statement" | "c_style_for_statement" | "case_statement":
                return self.loop(n, first)
            case _:
                raise Unsupported(f"tree-sitter node {n.type!r}")

    def loop(self, n: Any, first: str) -> Compound:
        kind = {"for_statement": "for", "c_style_for_statement": "arith-for"}.get(n.type, "case")
        if first == "select":
            kind = "select"
        words: list[Word] = []
        body: list[Node] = []
        for child in n.named_children:
            if child.type == "case_item":
                words.extend(self.word(c) for c in child.children_by_field_name("value"))
                body.extend(self.body(child))
            elif child.type == "do_group":
                body.extend(self.body(child))
            elif child.type == "compound_statement":  # for ((…)) { …; }
                body.append(self.statement(child))
            elif child.type != "comment":
                words.append(self.word(child))
        return Compound(kind, self.span(n), tuple(body), tuple(words))

    def redirected(self, n: Any) -> Node:
        inner = n.child_by_field_name("body")
        redirects: list[Redirect] = []
        trailing: list[Node] = []
        for child in n.children_by_field_name("redirect"):
            redirects.extend(self.redirect(child, trailing))
        if inner is None:
            node: Node = SimpleCommand(self.text(n), self.span(n), (), (), tuple(redirects))
        elif inner.type in ("command", "declaration_command", "unset_command"):
            node = self.command(inner, tuple(redirects))
        else:
            lowered = self.statement(inner)
            if isinstance(lowered, Compound):
                node = replace(lowered, redirects=lowered.redirects + tuple(redirects))
            else:
                node = Compound("redirected", self.span(n), (lowered,), (), tuple(redirects))
        if not trailing:
            return node
        # `cat <<EOF | grep x`: tree-sitter hangs what follows the delimiter on the redirect.
        return CommandList(self.span(n), (node, *trailing), ("\n",) * len(trailing))

    def command(self, n: Any, extra: tuple[Redirect, ...]) -> SimpleCommand:
        self.mark(n)
        assigns: list[Assignment] = []
        words: list[Word] = []
        redirects: list[Redirect] = []
        trailing: list[Node] = []
        for i, child in enumerate(n.children):
            if not child.is_named or child.type == "comment":
                continue
            if child.type == "variable_assignment" and not words and n.type == "command":
                assigns.append(self.assignment(child))
            elif n.field_name_for_child(i) == "redirect" or child.type.endswith("_redirect"):
                redirects.extend(self.redirect(child, trailing))
            else:
                words.append(self.word(child))
        if n.type == "command" and words and words[0].text in _RESERVED:
            raise Unsupported(f"reserved word {words[0].text!r} where a command belongs")
        if n.type != "command":  # declare/export/local/unset: the keyword is an anonymous token
            words.insert(0, self.word(n.children[0]))
        if trailing:
            raise Unsupported("commands after a here-doc inside a command")
        redirects.extend(extra)
        spans = [a.span for a in assigns] + [w.span for w in words] + [r.span for r in redirects]
        span = (min(s for s, _ in spans), max(e for _, e in spans))
        text = self.src[span[0] : span[1]]
        return SimpleCommand(text, span, tuple(assigns), tuple(words), tuple(redirects))

    # --- words ---
    def word(self, n: Any) -> Word:
        return Word(self.text(n), self.span(n), self.subs(n))

    def subs(self, n: Any) -> tuple[Substitution, ...]:
        """The outermost substitutions inside ``n`` (inner ones belong to their body)."""
        if n.type in ("command_substitution", "process_substitution"):
            self.mark(n)
            opener = n.children[0].type if n.children else "$("
            kind = "`" if opener == "`" else opener
            body = Script(self.src, self.body(n), "tree-sitter")
            return (Substitution(kind, self.span(n), body),)
        found: list[Substitution] = []
        for child in n.children:
            found.extend(self.subs(child))
        return tuple(found)

    def backticks(self, body: Any) -> tuple[Substitution, ...]:
        """Backtick substitutions in an unquoted here-doc body, which tree-sitter leaves as
        text. Each is parsed on its own; its spans point into the body (shifted left by
        the backslashes its unescaping removed)."""
        start, _ = self.span(body)
        found: list[Substitution] = []
        for s, e, inner in _backtick_pairs(self.text(body)):
            script = parse(" " * (start + s + 1) + inner)
            found.append(Substitution("`", (start + s, start + e), script))
        return tuple(found)

    def assignment(self, n: Any) -> Assignment:
        name = n.child_by_field_name("name")
        value = n.child_by_field_name("value")
        values: tuple[Word, ...] = ()
        if value is not None and value.type == "array":
            values = tuple(self.word(c) for c in value.named_children if c.type != "comment")
        elif value is not None:
            values = (self.word(value),)
        name_text = self.text(name) if name is not None else ""
        return Assignment(name_text, self.text(n), self.span(n), values)

    def redirect(self, n: Any, trailing: list[Node]) -> list[Redirect]:
        fd_node = n.child_by_field_name("descriptor")
        fd = int(fd_node.text) if fd_node is not None and fd_node.text.isdigit() else None
        op = next((c.type for c in n.children if not c.is_named), "")
        if n.type == "heredoc_redirect":
            return self.heredoc(n, op, trailing)
        targets = [c for c in n.named_children if c.type != "file_descriptor"]
        if len(targets) > 1:
            raise Unsupported(f"redirection with {len(targets)} targets")
        target = self.word(targets[0]) if targets else None
        return [Redirect(op, self.span(n), target, fd)]

    def heredoc(self, n: Any, op: str, trailing: list[Node]) -> list[Redirect]:
        start = next((c for c in n.children if c.type == "heredoc_start"), None)
        if start is None:
            raise Unsupported("here-doc without a delimiter")
        delim = self.word(start)
        quoted = any(c in delim.text for c in "'\"\\")
        doc = None
        extra: list[Redirect] = []
        for child in n.named_children:
            if child.type == "heredoc_body":
                subs = () if quoted else self.subs(child) + self.backticks(child)
                doc = HereDoc(self.text(child), self.span(child), quoted, subs)
            elif child.type.endswith("_redirect"):
                extra.extend(self.redirect(child, trailing))
            elif child.type in _STATEMENTS:
                trailing.append(self.statement(child))
        span = (self.span(n)[0], delim.span[1])
        if doc is None:
            doc = HereDoc("", (delim.span[1], delim.span[1]), quoted)
        return [Redirect(op, span, delim, None, doc), *extra]


def _backtick_pairs(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, command)`` of each unescaped backtick pair in here-doc text, the
    command with bash's backtick unescaping (``\\$``, ``\\` ``, ``\\\\``) applied."""
    pairs: list[tuple[int, int, str]] = []
    i, start = 0, -1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "`":
            if start < 0:
                start = i
            else:
                inner = re.sub(r"\\([$`\\])", r"\1", text[start + 1 : i])
                pairs.append((start, i + 1, inner))
                start = -1
        i += 1
    if start >= 0:
        raise Unsupported("unterminated backtick in a here-doc body")
    return pairs


def _span_of(node: Node) -> tuple[int, int]:
    return node.span
