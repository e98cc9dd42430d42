"""Secret redaction for what agentsh stores: audit argv and messages (ARCHITECTURE §1, DLP).

``redact(text)`` and ``redact_argv(argv)`` are pure. Each secret is replaced by a marker
naming its kind, ``[REDACTED:<kind>]``, so an audit reader still sees *that* a token was
passed and what sort it was. Markers are never redacted again: both functions are
idempotent.

Three passes, most specific first (a later pass skips values that are already markers):

1. Token shapes that are secrets wherever they appear: provider keys (``sk-ant-…``,
   ``sk-…``, ``AKIA…``, ``ghp_…``, ``github_pat_…``, ``xox?-…``, ``glpat-…``, ``AIza…``,
   ``sk_live_…``, ``npm_…``), JWTs, PEM private key blocks, ``Authorization:`` header
   values, ``user:password@`` in URLs, openssl's ``pass:…``.
2. Assignments whose *name* says secret: ``GITHUB_TOKEN=…``, ``--password=…``,
   ``"api_key": "…"``, a YAML ``secret: …`` line.
3. Options whose value is the next word: ``--token X``, mysql-family ``-pX``,
   ``sshpass -p X``, ``curl -u user:X``.

False positives are kept low on purpose: a name is secret only when one of its parts
(split at ``_ - .`` and camelCase) is a secret word, so ``tokenizer=bert``, ``PWD=/x``,
``PASSWORD_MIN_LENGTH=8`` and ``--token-file=path`` stay; plain words, paths, git SHAs,
UUIDs and base64 without a known shape are never touched (no entropy guessing).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

_NONE = re.RegexFlag(0)

MARK = "[REDACTED:{}]"

# Compiling these patterns costs ~4 ms, paid by every governed bash that records an event.
# Most command lines hold no secret, so ``redact`` first looks for TRIGGERS (plain
# substrings, lower case) and compiles the patterns only when one is present.
# Invariant: every pattern below can only match text that contains one of TRIGGERS
# (lower-cased). A new pattern needs its trigger here.
TRIGGERS: tuple[str, ...] = (
    "private key",  # PEM blocks
    "eyj",  # JWT
    "sk-",  # Anthropic, OpenAI
    "akia",  # AWS access key ids
    "asia",
    "abia",
    "acca",
    "ghp_",  # GitHub
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",  # GitLab
    "xox",  # Slack
    "aiza",  # Google API keys
    "k_live_",  # Stripe
    "k_test_",
    "npm_",
    "authorization",  # headers
    "api-key",
    "auth-token",
    "private-token",
    "access-token",
    "://",  # user:password@ in URLs
    "pass",  # secret names: password, passwd, passphrase, pass:..., sshpass
    "secret",
    "token",
    "key",  # apikey, api_key, access_key, private_key, auth_key, ...
    "credential",
    "pwd",  # MYSQL_PWD
    "mysql",  # commands whose options carry passwords
    "mariadb",
    "curl",
    "wget",
)
_MARKED_SRC = r"""["']?\[REDACTED:[a-z_]+\]"""

# Every pattern runs in linear time on hostile input (a 100 KB argv must not stall the
# audit): a pattern may only start at the start of a token (_WORD_START, not \b, which
# also holds after "-"), and repeated classes before a literal are bounded ({0,127}).
# Pass 1: (kind, pattern, flags). The whole match is replaced unless the pattern has a
# group named ``v``, then only that group is (the rest, e.g. a header name, is kept).
_WORD_START = r"(?<![A-Za-z0-9_-])"
_SHAPES: tuple[tuple[str, str, re.RegexFlag], ...] = (
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        re.DOTALL,
    ),
    ("jwt", _WORD_START + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*", _NONE),
    ("anthropic_key", _WORD_START + r"sk-ant-[A-Za-z0-9_-]{20,}", _NONE),
    (
        # Project/service keys, legacy 48-char keys, and any sk- key with OpenAI's marker
        # ("T3BlbkFJ" is base64 of "OpenAI"); "sk-learn-…" style words do not match.
        "openai_key",
        _WORD_START + r"sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"
        r"|[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])|[A-Za-z0-9_-]*T3BlbkFJ[A-Za-z0-9_-]*)",
        _NONE,
    ),
    ("aws_access_key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", _NONE),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", _NONE),
    ("gitlab_token", _WORD_START + r"glpat-[A-Za-z0-9_-]{20,}", _NONE),
    ("slack_token", _WORD_START + r"xox[baprs]-[A-Za-z0-9-]{10,}", _NONE),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}", _NONE),
    ("stripe_key", _WORD_START + r"[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", _NONE),
    ("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b", _NONE),
    (
        "authorization",
        r"\b(?:proxy-)?authorization\s*:\s*"
        r"(?:(?:bearer|basic|token|digest|negotiate|apikey)\s+)?(?P<v>[^\s'\"]+)",
        re.IGNORECASE,
    ),
    (
        "api_key",
        r"\b(?:x-api-key|api-key|x-auth-token|private-token|x-access-token)"
        r"\s*:\s*(?P<v>[^\s'\"]+)",
        re.IGNORECASE,
    ),
    ("url_password", r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s/:@'\"]*:(?P<v>[^\s/@'\"]+)@", _NONE),
    ("password", r"(?<![\w-])-pass(?:in|out)?\s+pass:(?P<v>[^\s'\"]+)", _NONE),
)

# Pass 2: NAME=value, "NAME": value, and a YAML "NAME: value" line.
_VALUE = r"""(?P<v>'[^']*'|"(?:\\.|[^"\\])*"|[^\s'"`;&|<>()]+)"""
_NAME = r"(?P<n>[A-Za-z_][A-Za-z0-9_.-]{0,127})"
_ASSIGNMENTS = (
    r"(?<![A-Za-z0-9_.$])" + _NAME + "=" + _VALUE,
    r"""(?P<q>["'])""" + _NAME + r"(?P=q)\s*[:=]\s*" + _VALUE,
    r"(?m)^[ \t-]*" + _NAME + r":[ \t]+" + _VALUE,
)

_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "token",
        "apikey",
        "credential",
        "credentials",
        "privatekey",
        "accesskey",
        "secretkey",
    }
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("auth", "key")})
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret")
# A last part that says the value is about the secret, not the secret itself.
_NOT_SECRET_LAST = frozenset(
    {
        "file",
        "path",
        "dir",
        "url",
        "uri",
        "endpoint",
        "env",
        "var",
        "name",
        "id",
        "type",
        "kind",
        "len",
        "length",
        "size",
        "count",
        "min",
        "max",
        "ttl",
        "expiry",
        "expires",
        "expiration",
        "prefix",
        "header",
        "helper",
        "cmd",
        "command",
        "stdin",
        "mode",
        "policy",
        "format",
        "required",
        "enabled",
    }
)
_EXACT_SECRET_NAMES = frozenset({"mysql_pwd"})
_CAMEL = r"(?<=[a-z0-9])(?=[A-Z])"
_PARTS = r"[_.\-]+"


def is_secret_name(name: str) -> bool:
    """Whether a variable, key or option name says its value is a secret.

    ``GITHUB_TOKEN``, ``db_password``, ``apiKey``, ``--client-secret``, ``PGPASSWORD`` are;
    ``tokenizer``, ``PWD``, ``PASSWORD_MIN_LENGTH``, ``--token-file``, ``--password-stdin``
    are not.
    """
    name = name.lstrip("-")
    if name.lower() in _EXACT_SECRET_NAMES:
        return True
    parts = [p.lower() for p in _rx().parts.split(_rx().camel.sub("_", name)) if p]
    if not parts or parts[-1] in _NOT_SECRET_LAST:
        return False
    if any(p in _SECRET_WORDS or p.endswith(_SECRET_SUFFIXES) for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts))


def _marker_for(value: str, kind: str) -> str:
    """The marker, keeping the quotes of a quoted value so the text still reads as code."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[0] + MARK.format(kind) + value[0]
    return MARK.format(kind)


def _replace_group(kind: str) -> Callable[[re.Match[str]], str]:
    def repl(m: re.Match[str]) -> str:
        if "v" not in m.re.groupindex:
            return MARK.format(kind)
        start, end = m.span("v")
        if _rx().marked.match(m.string, start):  # idempotence: never re-mark a marker
            return m.group(0)
        base = m.start()
        return m.group(0)[: start - base] + MARK.format(kind) + m.group(0)[end - base :]

    return repl


def _is_literal(value: str) -> bool:
    """False for values a secret pass must leave alone: already holding a marker (an
    earlier pass was more precise), or a shell expansion (``$PW``, ``"${PW}"``): the
    secret is not in the text."""
    if _rx().marked.search(value):
        return False
    return not value.lstrip('"').startswith("$")


def _replace_assignment(m: re.Match[str]) -> str:
    value = m.group("v")
    if not is_secret_name(m.group("n")) or not _is_literal(value):
        return m.group(0)
    cut = m.start("v") - m.start()
    return m.group(0)[:cut] + _marker_for(value, "secret")


# --- pass 3: options whose value is a separate word -------------------------------------

_MYSQL_FAMILY = frozenset(
    {
        "mysql",
        "mysqldump",
        "mysqladmin",
        "mysqlimport",
        "mysqlshow",
        "mysqlcheck",
        "mysqlpump",
        "mysqlslap",
        "mariadb",
        "mariadb-dump",
        "mariadb-admin",
    }
)
_USER_PASS_OPTIONS = frozenset({"-u", "--user", "-U", "--proxy-user"})
_VALUE_COMMANDS = _MYSQL_FAMILY | {"sshpass", "curl", "wget"}
# A word of a shell command (quotes kept), or a separator that ends a simple command.
_WORD = r"""(?P<sep>[;&|()\n])|(?:'[^']*'|"(?:\\.|[^"\\])*"|\\.|[^\s'"\\;&|()<>])+"""


class _Patterns(NamedTuple):
    marked: re.Pattern[str]
    shapes: tuple[tuple[str, re.Pattern[str]], ...]
    assignments: tuple[re.Pattern[str], ...]
    word: re.Pattern[str]
    camel: re.Pattern[str]
    parts: re.Pattern[str]


@cache
def _rx() -> _Patterns:
    """Every pattern, compiled on first use (see TRIGGERS)."""
    return _Patterns(
        marked=re.compile(_MARKED_SRC),
        shapes=tuple((kind, re.compile(src, flags)) for kind, src, flags in _SHAPES),
        assignments=tuple(re.compile(src) for src in _ASSIGNMENTS),
        word=re.compile(_WORD),
        camel=re.compile(_CAMEL),
        parts=re.compile(_PARTS),
    )


def _triggered(text: str) -> bool:
    low = text.lower()
    return any(t in low for t in TRIGGERS)


def _basename(word: str) -> str:
    return word.strip("'\"").rsplit("/", 1)[-1]


def _user_pass(word: str) -> str:
    user, sep, password = word.partition(":")
    if not sep or not password or not _is_literal(password):
        return word
    return f"{user}:{MARK.format('password')}"


def _option_value(command: str, prev: str, word: str) -> str | None:
    """The replacement for ``word`` given the previous word, or None to keep it."""
    if word.startswith("-") or not _is_literal(word):
        return None
    bare = prev.strip("'\"")
    if command in {"curl", "wget"} and bare in _USER_PASS_OPTIONS:
        return _user_pass(word)
    if command == "sshpass" and bare == "-p":
        return _marker_for(word, "password")
    if bare.startswith("-") and "=" not in bare and is_secret_name(bare):
        return _marker_for(word, "secret")
    return None


def _attached_value(command: str, word: str) -> str | None:
    """``-pSECRET`` for the mysql family and sshpass (``-p`` alone only prompts)."""
    if command in _MYSQL_FAMILY or command == "sshpass":
        bare = word.strip("'\"")
        if bare.startswith("-p") and len(bare) > 2 and _is_literal(bare[2:]):
            return "-p" + MARK.format("password")
    return None


def _redact_words(words: Sequence[str]) -> list[str]:
    """Pass 3 over one simple command's words.

    The command whose options are read is the last word naming one we know (so
    ``sudo mysql -pX`` and ``FOO=1 curl -u me:pw`` are covered).
    """
    out = list(words)
    command = ""
    for i in range(1, len(words)):
        if _basename(words[i - 1]) in _VALUE_COMMANDS:
            command = _basename(words[i - 1])
        new = _attached_value(command, words[i])
        if new is None:
            new = _option_value(command, words[i - 1], words[i])
        if new is not None:
            out[i] = new
    return out


def _redact_commands(text: str) -> str:
    """Pass 3 over text: split into simple commands at ``; & | ( ) newline``, by words."""
    pieces: list[str] = []
    words: list[re.Match[str]] = []
    last = 0

    def flush() -> None:
        nonlocal last
        for m, new in zip(words, _redact_words([w.group(0) for w in words]), strict=True):
            pieces.append(text[last : m.start()] + new)
            last = m.end()
        words.clear()

    for m in _rx().word.finditer(text):
        if m.group("sep") is not None:
            flush()
        else:
            words.append(m)
    flush()
    pieces.append(text[last:])
    return "".join(pieces)


def redact(text: str) -> str:
    """Replace every secret in ``text`` by ``[REDACTED:<kind>]``. Pure and idempotent."""
    if not _triggered(text):
        return text
    rx = _rx()
    for kind, pattern in rx.shapes:
        text = pattern.sub(_replace_group(kind), text)
    for pattern in rx.assignments:
        text = pattern.sub(_replace_assignment, text)
    return _redact_commands(text)


def redact_argv(argv: Sequence[str]) -> tuple[str, ...]:
    """Redact one argv: option/value pairs across elements, then each element as text.

    ``("mysql", "-phunter2")``, ``("gh", "--token", "abc")``, ``("curl", "-u",
    "me:pw", url)`` and a ``bash -c`` script that contains any secret are all covered.
    """
    if not any(_triggered(word) for word in argv):
        return tuple(argv)
    return tuple(redact(word) for word in _redact_words(list(argv)))
