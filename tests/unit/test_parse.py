"""shell.parse / shell.tsparse / shell.quoting: the AST the precheck relies on.

- the bashlex gaps agents hit all the time parse to the right commands (never opaque);
- spans are character offsets into the caller's text, for both parsers;
- static quote removal agrees with the real bash on this machine;
- the bashlex table cache gives the same parser as building the tables, is only read when
  trusted and current, and falls back to building when it is not.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from agentsh.shell import ast, quoting, tsparse
from agentsh.shell import parse as parse_module
from agentsh.shell.parse import parse


def _scripts_in(node: ast.Node) -> Iterator[ast.Script]:
    words: list[ast.Word] = []
    redirects: Sequence[ast.Redirect] = ()
    match node:
        case ast.SimpleCommand():
            words = [*node.words, *(v for a in node.assignments for v in a.values)]
            redirects = node.redirects
        case ast.Compound():
            words = list(node.words)
            redirects = node.redirects
    words += [r.target for r in redirects if r.target is not None]
    for r in redirects:
        if r.heredoc is not None:
            yield from (s.body for s in r.heredoc.subs)
    for w in words:
        yield from (s.body for s in w.subs)


def _children(node: ast.Node) -> Sequence[ast.Node]:
    match node:
        case ast.Pipeline():
            return node.commands
        case ast.CommandList():
            return node.items
        case ast.Compound():
            return node.body
        case ast.FunctionDef():
            return (node.body,)
        case _:
            return ()


def commands(script: ast.Script) -> list[str]:
    """The resolved first word of every simple command anywhere in ``script``, sorted."""
    found: list[str] = []
    stack: list[ast.Node] = list(script.body)
    while stack:
        node = stack.pop()
        assert not isinstance(node, ast.Unparsed), node.why
        if isinstance(node, ast.SimpleCommand) and node.words:
            found.append(quoting.resolve(node.words[0].text).value)
        stack.extend(_children(node))
        for inner in _scripts_in(node):
            stack.extend(inner.body)
    return sorted(found)


# Lines bashlex rejects or misreads, each with the commands bash would run.
GAPS: list[tuple[str, list[str]]] = [
    ("[[ -f x ]] && echo y", ["echo"]),
    ("[[ $(id -u) == 0 ]] || echo no", ["echo", "id"]),
    ("[[ $x =~ ^a(b|c)$ ]] && ls", ["ls"]),
    ("case $x in a|b) echo a;; *) ls;; esac", ["echo", "ls"]),
    ('case "$1" in --help) usage; exit 0;; (-v) echo v;; esac', ["echo", "exit", "usage"]),
    ("echo $((1+2))", ["echo"]),
    ("echo $(( $(wc -l < f) + 1 ))", ["echo", "wc"]),
    ("echo $[1+2]", ["echo"]),
    ("((i++))", []),
    ("(( x = $(date +%s) ))", ["date"]),
    ('arr=(a b $(ls)); echo "${arr[@]}"', ["echo", "ls"]),
    ("declare -a arr=(1 2 $(id))", ["declare", "id"]),
    ("x+=(more)", []),
    ("for ((i=0;i<3;i++)); do echo $i; done", ["echo"]),
    ("for ((;;)) { sleep 1; }", ["sleep"]),
    ("cat <<'EOF' ; echo done\n$(not run)\nEOF\n", ["cat", "echo"]),
    ("cat <<-EOF; echo x\n\tbody\n\tEOF\n", ["cat", "echo"]),
    ('cat <<"EOF" > out.txt\nbody $(not run)\nEOF\n', ["cat"]),
    ("cat <<\\EOF && ls\n`not run`\nEOF\n", ["cat", "ls"]),
    ("python3 - <<'PY'\nprint(1)\nPY\n", ["python3"]),
    ("cat <<EOF | grep x\n$(id)\nEOF\n", ["cat", "grep", "id"]),
    ("cat <<EOF\n`id` ${x:-$(date)}\nEOF\n", ["cat", "date", "id"]),
    ("time make -j4", ["make"]),
    ("time -p ls", ["ls"]),
    ("time { make; make test; }", ["make", "make"]),
    ("time (cd x && ls)", ["cd", "ls"]),
    ("select x in a b; do echo $x; break; done", ["break", "echo"]),
    ("coproc cat", ["cat"]),
    ("coproc W { sleep 1; }", ["sleep"]),
    ("coproc (ls)", ["ls"]),
    ("echo ${x:-$(id)}", ["echo", "id"]),
    ("if [[ -n $x ]]; then echo y; fi", ["echo"]),
    ('while read -r l; do echo "$l"; done < <(ls)', ["echo", "ls", "read"]),
    ("echo é && [[ ü ]] && ls", ["echo", "ls"]),
]


@pytest.mark.parametrize(("source", "expected"), GAPS, ids=[g[0][:40] for g in GAPS])
def test_bashlex_gaps_are_understood(source: str, expected: list[str]) -> None:
    script = parse(source)
    assert script.parser != "none"
    assert commands(script) == sorted(expected)


@pytest.mark.parametrize(
    ("source", "parser"),
    [
        ("git status && pytest -q", "bashlex"),
        ("cat <<'EOF' ; echo hi\nx\nEOF\n", "bashlex"),  # quoted delimiter handed over bare
        ("[[ -f x ]]", "tree-sitter"),
        ("((x++))", "tree-sitter"),  # bashlex reads ((…)) as two subshells
        ("echo ${x:-$(id)}", "tree-sitter"),  # bashlex does not parse inside ${…}
        ("cat <<EOF\n$(id)\nEOF\n", "tree-sitter"),  # nor here-doc bodies
        ("if then fi", "none"),
    ],
)
def test_which_parser_answers(source: str, parser: str) -> None:
    assert parse(source).parser == parser


@pytest.mark.parametrize(
    "source",
    ["(", "$(", "if then fi", "'unterminated", "echo `x", "case", "a |", "fi", ")", "do done", "}"],
)
def test_unparseable_is_one_opaque_node(source: str) -> None:
    script = parse(source)
    assert script.parser == "none"
    [node] = script.body
    assert isinstance(node, ast.Unparsed)
    assert node.span == (0, len(source))
    assert node.why


def test_parse_never_raises_on_odd_input() -> None:
    for source in ["\x00", "\udcff", "ls \udcff", "<<", "$((", "`", "{", "}", "\\", "!" * 50]:
        assert isinstance(parse(source), ast.Script)


def _simple_commands(script: ast.Script) -> list[ast.SimpleCommand]:
    out: list[ast.SimpleCommand] = []
    stack: list[ast.Node] = list(reversed(script.body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.SimpleCommand):
            out.append(node)
        stack.extend(reversed(_children(node)))
    return out


@pytest.mark.parametrize(
    "source",
    [
        "git status && ls -l > out; echo 'é' | wc -c",  # bashlex
        "[[ é ]] && echo 'ü' > out; ls -l | wc -c",  # tree-sitter, non-ASCII before the commands
    ],
)
def test_spans_are_character_offsets(source: str) -> None:
    script = parse(source)
    for cmd in _simple_commands(script):
        start, end = cmd.span
        assert source[start:end] == cmd.text
        for w in cmd.words:
            assert source[w.span[0] : w.span[1]] == w.text
    texts = [c.text for c in _simple_commands(script)]
    assert texts[-2:] == ["ls -l", "wc -c"] or texts[:2] == ["git status", "ls -l > out"]


def test_substitution_spans_and_kinds() -> None:
    source = "echo $(id) `date` <(ls) >(cat)"
    [cmd] = _simple_commands(parse(source))
    subs = [s for w in cmd.words for s in w.subs]
    assert [(s.kind, source[s.span[0] : s.span[1]]) for s in subs] == [
        ("$(", "$(id)"),
        ("`", "`date`"),
        ("<(", "<(ls)"),
        (">(", ">(cat)"),
    ]


def test_heredoc_nodes() -> None:
    for source in ("cat <<'EOF' >f\n$(id)\nEOF\n", "[[ 1 ]]; cat <<'EOF' >f\n$(id)\nEOF\n"):
        [*_, cmd] = _simple_commands(parse(source))
        [doc] = [r.heredoc for r in cmd.redirects if r.heredoc is not None]
        assert doc.quoted
        assert doc.body == "$(id)\n"
        assert doc.subs == ()
        [target] = [r.target for r in cmd.redirects if r.op == ">"]
        assert target is not None
        assert target.text == "f"
    [cmd] = _simple_commands(parse("cat <<EOF\n$(id)\nEOF\n"))
    [doc] = [r.heredoc for r in cmd.redirects if r.heredoc is not None]
    assert not doc.quoted
    assert [s.kind for s in doc.subs] == ["$("]


def test_backgrounded_and_sequenced_items() -> None:
    script = parse("a & b; c && d || e")
    [lst] = script.body
    assert isinstance(lst, ast.CommandList)
    assert lst.ops == ("&", ";", "&&", "||")


# --- quoting ----------------------------------------------------------------------------

STATIC_WORDS = [
    "s'u'do",
    '"su"do',
    "$'\\x73udo'",
    "\\sudo",
    "$'\\163udo'",
    '$"sudo"',
    "s\\u'd'\"o\"",
    "$'\\x73\\x75'do",
    "$'su\\0junk'do",
    "$'\\u0073udo'",
    "$'\\cA'",
    '"a\\$b\\c"',
    "a\\\nb",
    "'a'\\''b'",
    '"$"',
    "a$",
    "$'a\\'b'",
    "$'\\e'",
    "$'\\1234'",
    "x\\*",
    "'*'",
    '"{a,b}"',
    "'~'",
]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash to compare against")
@pytest.mark.parametrize("word", STATIC_WORDS)
def test_static_words_resolve_like_bash(word: str) -> None:
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", f"printf '%s\\0' {word}"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
    ).stdout
    resolved = quoting.resolve(word)
    assert resolved.dynamic is None
    assert resolved.value.encode("utf-8", "surrogateescape") == out.rstrip(b"\0")


@pytest.mark.parametrize(
    ("word", "why"),
    [
        ("$x", "$x"),
        ('"$cmd"', "$cmd"),
        ("${x}", "${…}"),
        ("$(printf sudo)", "$(…)"),
        ("`printf sudo`", "`…`"),
        ("$((1))", "$((…))"),
        ("$1", "$1"),
        ("/usr/bin/su*", "glob *"),
        ("sud?", "glob ?"),
        ("[s]udo", "glob ["),
        ("@(sudo)", "glob @("),
        ("{sudo,x}", "brace expansion {"),
        ("{1..3}", "brace expansion {"),
        ("~", "tilde ~"),
        ("~root/bin/x", "tilde ~"),
        ('s"$u"do', "$u"),
    ],
)
def test_dynamic_words(word: str, why: str) -> None:
    assert quoting.resolve(word).dynamic == why


@pytest.mark.parametrize("word", ["'$x'", "\\$x", "$'$(x)'", "a{b}", "x[", "'*'", "a~"])
def test_quoted_expansions_are_static(word: str) -> None:
    assert quoting.resolve(word).dynamic is None


# --- bashlex table cache ---------------------------------------------------------------

_PROBE = """
import json, sys
from pathlib import Path
from agentsh.shell import parse as P
P.CACHE_FILE = Path(sys.argv[1])
calls = []
sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code.co_name)
               if event == "call" and frame.f_code.co_name == "lr_parse_table" else None)
bashlex = P._load_bashlex(use_cache=sys.argv[2] == "cache")
sys.setprofile(None)
yp = bashlex.parser.yaccparser
trees = [t.dump() for s in sys.argv[3:] for t in bashlex.parse(s)]
print(json.dumps({
    "built": len(calls),
    "action": sorted((k, sorted(v.items())) for k, v in yp.action.items()),
    "goto": sorted((k, sorted(v.items())) for k, v in yp.goto.items()),
    "productions": [(p.name, p.len, p.func, getattr(p.callable, "__name__", None))
                    for p in yp.productions],
    "defaulted": sorted(yp.defaulted_states.items()),
    "trees": trees,
}))
"""
_CORPUS = [
    "git status && pytest -q | tee log",
    'for f in $(ls); do echo "$f" > out; done',
    "cat <<EOF\nbody\nEOF\n",
    "f() { a || b & }; (c; d) 2>&1",
    "if a; then b; elif c; then d; else e; fi",
]


def _probe(cache: Path, mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cache), mode, *_CORPUS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "tables.pickle"
    code = "import sys, pathlib; import agentsh.shell.parse as p; p.warm(pathlib.Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path


def test_cache_gives_the_same_parser(warm_cache: Path) -> None:
    cached = _probe(warm_cache, "cache")
    built = _probe(warm_cache, "build")
    assert cached["built"] == 0, "tables were rebuilt although the cache is there"
    assert built["built"] == 1
    for key in ("action", "goto", "productions", "defaulted", "trees"):
        assert cached[key] == built[key], key


def test_stale_or_untrusted_cache_is_not_read(warm_cache: Path, tmp_path: Path) -> None:
    assert parse_module._read_cache(warm_cache) is not None
    stale = tmp_path / "stale.pickle"
    data = pickle.loads(warm_cache.read_bytes())  # noqa: S301 - our own test file
    data["fingerprint"] = "an older bashlex"
    stale.write_bytes(pickle.dumps(data))
    os.chmod(stale, 0o644)
    assert parse_module._read_cache(stale) is None
    writable = tmp_path / "writable.pickle"
    shutil.copy(warm_cache, writable)
    os.chmod(writable, 0o666)  # noqa: S103 - the untrusted case under test
    assert parse_module._read_cache(writable) is None
    assert parse_module._read_cache(tmp_path / "missing.pickle") is None


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/agentsh-pwned-by-cache",))


def test_cache_cannot_run_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"fingerprint": _Boom()}))
    os.chmod(evil, 0o644)
    assert parse_module._read_cache(evil) is None
    assert not Path("/tmp/agentsh-pwned-by-cache").exists()


def test_broken_cache_falls_back_to_building(warm_cache: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pickle"
    data = pickle.loads(warm_cache.read_bytes())  # noqa: S301 - our own test file
    data["productions"][1] = ("x", ("y",), "p_no_such_function")
    broken.write_bytes(pickle.dumps(data))
    os.chmod(broken, 0o644)
    result = _probe(broken, "cache")
    assert result["built"] == 1
    assert result["trees"] == _probe(warm_cache, "build")["trees"]


def test_installed_package_has_a_current_cache() -> None:
    """`make setup` runs `python -m agentsh.shell.parse --warm` after installing."""
    assert parse_module.CACHE_FILE.is_file()
    assert parse_module._read_cache(parse_module.CACHE_FILE) is not None


def test_warm_refuses_a_process_that_imported_bashlex(tmp_path: Path) -> None:
    parse("ls")  # loads bashlex in this process
    with pytest.raises(RuntimeError):
        parse_module.warm(tmp_path / "t.pickle")


def test_tsparse_does_not_import_bashlex() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from agentsh.shell import tsparse;"
            "tsparse.parse('[[ 1 ]] && ls'); print('bashlex' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "False"
    assert tsparse.parse("ls").parser == "tree-sitter"
