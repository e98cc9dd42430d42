"""The cold path's speed-only changes mean exactly what they replaced: env globs without a
regex per glob (fnmatchcase), argv JSON without the json module (json.dumps), bashlex from
cached tables without importing inspect (same parses)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from agentsh.enforce import audit, envfilter
from agentsh.enforce.envfilter import SECRET_GLOBS, SHELL_CONTROL, glob_matches

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"


def _words(alphabet: str, longest: int) -> list[str]:
    return ["".join(p) for n in range(longest + 1) for p in itertools.product(alphabet, repeat=n)]


def test_glob_matches_is_fnmatchcase_exhaustively() -> None:
    globs = [*_words("A_*", 4), "A?", "[AB]*", "*[!A]", "**", "*A*A*", "A*A"]
    names = _words("AB_", 4)
    wrong = [(g, n) for g in globs for n in names if glob_matches(n, g) != fnmatchcase(n, g)]
    assert wrong == []


def _reference_reason(name: str) -> str | None:
    """builtin_reason as it was written with fnmatchcase, one glob at a time."""
    for glob in SECRET_GLOBS:
        if fnmatchcase(name.upper(), glob):
            return f"credential ({glob})"
    for glob, why in SHELL_CONTROL:
        if fnmatchcase(name, glob):
            return why
    return None


NAMES = [
    *("AWS_REGION", "aws_secret", "GITHUB_TOKEN", "github_token", "MY_TOKEN_FILE", "TOKEN"),
    *("TOKENS", "A_SECRET", "SECRETARY", "SECRET_X", "DB_PASSWORD", "PASSWORD", "PASSWD_X"),
    *("XPASSWDX", "PGPASSWORD", "MYSQL_PWD", "X_API_KEY", "X_APIKEY", "API_KEYS", "X_ACCESS_KEY"),
    *("X_ACCESS_KEY_ID", "X_PRIVATE_KEY_PATH", "GCP_CREDENTIALS", "AGENTSH_X", "agentsh_x"),
    *("BASH_ENV", "ENV", "ENVX", "BASH_FUNC_ls%%", "SHELLOPTS", "PS1", "PS4", "IFS", "CDPATH"),
    *("LD_PRELOAD", "ld_preload", "LD_LIBRARY_PATH", "GCONV_PATH", "PATH", "HOME", "TERM"),
    *("LANG", "_", "", "*", "A*B", "X\nY", "ÄWS_X", "SSH_AUTH_SOCK", "PWD", "OLDPWD"),
]


@pytest.mark.parametrize("name", NAMES)
def test_builtin_reason_unchanged(name: str) -> None:
    assert envfilter.builtin_reason(name) == _reference_reason(name)


def _seed_globs() -> list[str]:
    from agentsh.enforce import loader

    out: list[str] = []
    for path in sorted(SEEDS.glob("*/default.yaml")):
        env = loader.load(path, {"HOME": "/h", "PROJECT_ROOT": "/p", "TMPDIR": "/t"}).env_policy
        out += [*env.allow, *env.deny]
    return out


def test_seed_policy_env_globs_match_as_fnmatchcase() -> None:
    globs = _seed_globs()
    assert len(globs) > 20
    names = [*NAMES, *(g.replace("*", "X") for g in globs), *(g.replace("*", "") for g in globs)]
    wrong = [(g, n) for g in globs for n in names if glob_matches(n, g) != fnmatchcase(n, g)]
    assert wrong == []


WORDS = [
    "",
    "plain",
    'quote " and \\ backslash',
    "\b\f\n\r\t",
    "".join(chr(i) for i in range(0x80)),
    "ünïcödé ✓ \u2028 \u2029 \x7f \U0001f600",
    "\\x80 from surrogateescape",
]


@pytest.mark.parametrize("words", [[], WORDS, *([w] for w in WORDS)])
def test_json_words_is_json_dumps(words: list[str]) -> None:
    assert audit.json_words(words) == json.dumps(words, ensure_ascii=False)
    assert json.loads(audit.json_words(words)) == words


def test_bashlex_from_cached_tables_does_not_import_inspect() -> None:
    code = textwrap.dedent(
        """
        import sys
        from agentsh.shell import parse
        assert parse._read_cache(parse.CACHE_FILE) is not None, "no table cache: make setup"
        script = parse.parse("for f in *.py; do grep -n x \\"$f\\" | head -1; done")
        print(script.parser, "inspect" in sys.modules)
        yacc = sys.modules["bashlex.yacc"]
        import inspect
        print(yacc.inspect.getsourcefile is inspect.getsourcefile, type(inspect).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bashlex", "False", "True", "module"]
