"""Typed reading of composed YAML nodes, shared by the policy loader and the config loader,
and the two small value syntaxes those files use: Go durations and ``${VAR}`` references.

Every failure is a :class:`PolicyError` naming the file, the node's line and the key path
(``command_rules[3].args_patterns[0]``). Nothing here knows what a policy means.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Mapping
from typing import NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agentsh.enforce.errors import PolicyError

# libyaml's safe loader builds the same nodes (same tags and marks) ~30x faster than the
# pure-Python one; a policy is loaded at every governed start, so prefer it when present.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_SCALAR_TEXT = frozenset({_STR, _INT, _BOOL, "tag:yaml.org,2002:float"})
_KINDS = {_STR: "a string", _INT: "an integer", _BOOL: "a boolean", _NULL: "nothing"}
_SAFE = SafeConstructor()
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

Items = dict[str, tuple[Node, Node]]


def sub(path: str, key: str | int) -> str:
    """The key path of ``key`` under ``path``: ``a.b``, ``a[3]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a {node.tag.rsplit(':', 1)[-1]}")


def compose(text: str, source: str) -> Node | None:
    """Compose YAML text into nodes (SafeLoader). None for an empty document.

    Raises:
        PolicyError: a YAML syntax error, with its line.
    """
    try:
        return yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, line, "yaml", str(err.problem or err)) from None
    except yaml.YAMLError as err:
        raise PolicyError(source, None, "yaml", str(err)) from None


def load_data(text: str) -> object:
    """The plain data of already-composed YAML text (safe loader: no objects built)."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - _LOADER is a safe loader


class YamlReader:
    """Typed reads of composed nodes; every failure is a PolicyError at the node's line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: Node, key: str, why: str) -> NoReturn:
        raise PolicyError(self.source, node.start_mark.line + 1, key or "(top level)", why)

    def pairs(self, node: Node, key: str) -> list[tuple[str, Node, Node]]:
        """Every (key, key node, value node) of a mapping in file order, nulls included.

        Keys must be unique strings; YAML merge keys (``<<``) are refused.
        """
        if not isinstance(node, MappingNode):
            self.fail(node, key, f"expected a mapping, got {_kind(node)}")
        seen: set[str] = set()
        out: list[tuple[str, Node, Node]] = []
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                self.fail(knode, sub(key, "<<"), "YAML merge keys (<<) are not supported")
            if not isinstance(knode, ScalarNode) or knode.tag != _STR:
                self.fail(knode, key, f"keys must be strings, got {_kind(knode)}")
            if knode.value in seen:
                self.fail(knode, sub(key, knode.value), "duplicate key")
            seen.add(knode.value)
            out.append((str(knode.value), knode, vnode))
        return out

    def mapping(
        self,
        node: Node,
        key: str,
        allowed: frozenset[str] | None = None,
        known: frozenset[str] = frozenset(),
    ) -> Items:
        """Key -> (key node, value node), null values left out (they read as absent).

        With ``allowed``, any other key fails: ``known`` ones as recognised agentsh (Go)
        settings that are not supported yet, the rest as unknown (with a suggestion).
        """
        items: Items = {}
        for name, knode, vnode in self.pairs(node, key):
            if allowed is not None and name not in allowed:
                self.unknown(knode, sub(key, name), allowed, name in known)
            if vnode.tag != _NULL:
                items[name] = (knode, vnode)
        return items

    def unknown(self, knode: Node, key: str, allowed: frozenset[str], known: bool) -> NoReturn:
        """Fail on key path ``key``, suggesting the closest of ``allowed``."""
        if known:
            why = "is an agentsh (Go) setting not supported yet; remove it (it is not enforced)"
            self.fail(knode, key, why)
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], sorted(allowed), n=1)
        self.fail(
            knode, key, f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
        )

    def sequence(self, node: Node, key: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.fail(node, key, f"expected a list, got {_kind(node)}")
        return list(node.value)

    def string(self, node: Node, key: str) -> str:
        """A scalar's text as written (``2024`` and ``no`` stay text, as in agentsh)."""
        if not isinstance(node, ScalarNode) or node.tag not in _SCALAR_TEXT:
            self.fail(node, key, f"expected a string, got {_kind(node)}")
        return str(node.value)

    def integer(self, node: Node, key: str, low: int = 0, high: int | None = None) -> int:
        if not isinstance(node, ScalarNode) or node.tag != _INT:
            self.fail(node, key, f"expected an integer, got {_kind(node)}")
        value = _SAFE.construct_yaml_int(node)
        if value < low or (high is not None and value > high):
            limit = f"between {low} and {high}" if high is not None else f">= {low}"
            self.fail(node, key, f"{value} is out of range (must be {limit})")
        return value

    def boolean(self, node: Node, key: str) -> bool:
        if not isinstance(node, ScalarNode) or node.tag != _BOOL:
            self.fail(node, key, f"expected true or false, got {_kind(node)}")
        return _SAFE.construct_yaml_bool(node)

    def duration(self, node: Node, key: str) -> float:
        """Seconds in a Go duration scalar (see :func:`parse_duration`)."""
        if not isinstance(node, ScalarNode) or node.tag not in (_STR, _INT):
            self.fail(node, key, f"expected a duration, got {_kind(node)}")
        try:
            return parse_duration(node.value)
        except ValueError as err:
            self.fail(node, key, str(err))

    def strings(self, node: Node, key: str) -> list[tuple[Node, str]]:
        return [(n, self.string(n, sub(key, i))) for i, n in enumerate(self.sequence(node, key))]

    def string_map(self, node: Node, key: str) -> list[tuple[Node, str, str]]:
        """(value node, key, value) in file order; keys must be environment names."""
        out = []
        for name, knode, vnode in self.pairs(node, key):
            if not _ENV_NAME.match(name):
                self.fail(knode, sub(key, name), "not a valid environment variable name")
            out.append((vnode, name, self.string(vnode, sub(key, name))))
        return out


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``30s``, ``5m``, ``1h30m``, ``250ms``; ``0``).

    Raises:
        ValueError: anything else (a bare number needs a unit).
    """
    value = text.strip()
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while value and pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not value or pos < len(value):
        raise ValueError(f"bad duration {text!r} (write e.g. 30s, 5m, 1h or 1h30m)")
    return total


def _closing_brace(text: str, start: int) -> int:
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise ValueError(f"unclosed '${{' in {text!r}")


def _path_value(name: str, value: str, leading: bool) -> str:
    # A variable that starts a path pattern must name a real directory: never "/" (which
    # would turn `${X}/**` into "everything"), never relative; it is normalised. Inside a
    # pattern it must be plain components. Nowhere may it bring glob characters.
    if set("*?[]{}") & set(value):
        raise ValueError(f"variable {name}={value!r} must not contain glob characters")
    if not leading:
        if {"", ".", ".."} & set(value.split("/")):
            raise ValueError(f"variable {name}={value!r} must be plain path components here")
        return value
    norm = posixpath.normpath(value) if value.startswith("/") else ""
    if not norm or norm.startswith("//") or norm == "/":
        raise ValueError(f"variable {name}={value!r} must be an absolute path below / here")
    return norm


def _reference(text: str, start: int, env: Mapping[str, str], path: bool) -> tuple[str, int]:
    match = _VAR_NAME.match(text, start)
    if match is None:
        raise ValueError(f"bad variable reference in {text!r} (write ${{NAME}})")
    name, i = match.group(), match.end()
    if text.startswith("}", i):
        default, end = None, i + 1
    elif text.startswith(":-", i):
        close = _closing_brace(text, i + 2)
        default, end = text[i + 2 : close], close + 1
    else:
        raise ValueError(f"bad variable reference ${{{name}... in {text!r}: expected }} or :-")
    value = env.get(name, "")
    if not value:
        if default is None:
            raise ValueError(f"variable {name} is not set and ${{{name}}} has no :-default")
        value = expand(default, env, path=path)
    return (_path_value(name, value, start == 2) if path else value), end


def expand(text: str, env: Mapping[str, str], *, path: bool = False) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}`` (defaults may nest) from ``env``.

    ``path``: the text is a path pattern; a value must not add glob characters or ``.``/
    ``..`` components, and one that starts the pattern must be an absolute path other than
    ``/`` (it is normalised).

    Raises:
        ValueError: an unset/empty variable without default, a malformed reference, a
            bare ``$NAME``, or (``path``) an unsafe path value.
    """
    out: list[str] = []
    i = 0
    while (j := text.find("$", i)) >= 0:
        out.append(text[i:j])
        if text.startswith("${", j):
            value, i = _reference(text, j + 2, env, path)
            out.append(value)
        elif _VAR_NAME.match(text, j + 1):
            raise ValueError(f"write ${{NAME}} instead of $NAME in {text!r}")
        else:
            out.append("$")
            i = j + 1
    out.append(text[i:])
    return "".join(out)
