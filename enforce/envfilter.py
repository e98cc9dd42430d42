"""The environment layer: which of the caller's variables reach bash.real (ARCHITECTURE §1).

``filter_env`` is pure. Order (each step sees only what the previous one kept):

1. the built-in removal list (below) — always, whatever the policy says;
2. the policy's ``env_policy.deny`` globs;
3. when ``env_policy.allow`` is non-empty, only names matching one of its globs pass;
4. ``env_inject`` (config ``sandbox.env_inject``, policy ``env_inject``) is added — after
   filtering, so the operator's ``BASH_ENV`` survives while the caller's is removed;
5. ``max_keys`` / ``max_bytes`` are checked on the result: over a limit, the command is
   refused (Blocked), never run with variables dropped at random.

Globs are ``fnmatchcase`` patterns over names, matched without compiling a regex per glob
(:class:`_GlobSet`: ~0.1 ms a glob, most of this layer's cost on every governed start
otherwise). The built-in list wins over ``allow``: the
deno and exe.dev seed policies allow ``AGENTSH_*`` (and deno ``BASH_ENV``) so that the
values *their operator injects* reach bash; the caller's own ``AGENTSH_*``/``BASH_ENV`` are
still removed, and the injected ones are added back in step 4.

Why max_keys/max_bytes refuse instead of trimming: which variables would be dropped is
arbitrary (sort order), any of them may be the one the command needs, and a note in the
audit log is invisible to the agent; a refusal that names the limit is actionable, fails
closed, and is what the Go agentsh does, so the seed policies keep their meaning.

Not here: ``block_iteration`` (needs an env shim in every child; the loader reports it)
and ``SSH_AUTH_SOCK`` (a socket path; reaching it is the file policy's job).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from fnmatch import fnmatchcase

from agentsh.enforce.errors import Blocked
from agentsh.enforce.policy import EnvPolicy
from agentsh.enforce.record import dataclass

# Credentials: never handed to a command the agent runs. Matched case-insensitively
# (``github_token`` is as secret as ``GITHUB_TOKEN``).
SECRET_GLOBS: tuple[str, ...] = (
    "AWS_*",  # every AWS credential/profile/session variable
    "*_TOKEN",  # GITHUB_TOKEN, NPM_TOKEN, HF_TOKEN, VAULT_TOKEN, CI_JOB_TOKEN, ...
    "*_TOKEN_*",
    "TOKEN",
    "*_SECRET*",  # CLIENT_SECRET, AWS_SECRET_ACCESS_KEY, SECRET_KEY_BASE, ...
    "SECRET_*",
    "*_PASSWORD*",  # DB_PASSWORD, POSTGRES_PASSWORD, ...
    "PASSWORD*",
    "*PASSWD*",
    "PGPASSWORD",
    "MYSQL_PWD",
    "*_API_KEY",
    "*_APIKEY",
    "API_KEY*",
    "*_ACCESS_KEY*",
    "*_PRIVATE_KEY*",
    "*_CREDENTIALS",
    "GH_TOKEN",
    "GITHUB_PAT",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",  # path to a service-account key file
)

# Variables that change how bash.real itself starts, parses or executes, or load code into
# it, without appearing in the command line the precheck saw. Matched case-sensitively
# (bash's names are). Each entry says why.
SHELL_CONTROL: tuple[tuple[str, str], ...] = (
    ("AGENTSH_*", "agentsh's own control variables: only the operator sets them (inject)"),
    ("BASH_ENV", "a startup file run before the script: the caller's would replace ours"),
    ("ENV", "the startup file of sh/posix-mode and dash interactive shells"),
    (
        "BASH_FUNC_*",
        "exported functions, imported before the script runs: `ls` or `git` would run "
        "code the precheck never saw (the startup file guards only its own `enable`)",
    ),
    ("SHELLOPTS", "set -o options at start-up: posix skips BASH_ENV, xtrace, noexec, ..."),
    ("BASHOPTS", "shopt options at start-up: extdebug loads a debugger file, ..."),
    ("POSIXLY_CORRECT", "posix mode at start-up: bash then never reads BASH_ENV"),
    ("BASH_COMPAT", "compatibility level: changes how bash parses what the precheck read"),
    (
        "PS4",
        "expanded at every xtrace line, $(...) included: code from the env (bash "
        "ignores it only when running as root)",
    ),
    ("PS0", "expanded before each interactive command: code from the env"),
    ("PS1", "expanded at each interactive prompt: code from the env"),
    ("PS2", "expanded at each continuation prompt: code from the env"),
    ("PROMPT_COMMAND", "run before each interactive prompt: code from the env"),
    ("BASH_XTRACEFD", "sends xtrace output to an arbitrary fd"),
    ("IFS", "word splitting; bash resets it, sh-family children may not"),
    ("CDPATH", "makes `cd dir` go somewhere else than the precheck assumed (and print)"),
    ("GLOBIGNORE", "changes what globs expand to; bash -p distrusts it like CDPATH"),
    ("LD_PRELOAD", "loads a shared object into bash.real: builtins-level code, no exec"),
    ("LD_LIBRARY_PATH", "replaces the libraries bash.real links (libc, libtinfo)"),
    ("LD_AUDIT", "loads an audit shared object into bash.real"),
    ("GCONV_PATH", "iconv loads shared objects from it (a known glibc code-load path)"),
)


@dataclass(frozen=True)
class FilteredEnv:
    """The environment for bash.real and the caller's names that were removed (sorted)."""

    env: dict[str, str]
    removed: tuple[str, ...]


def _star_match(name: str, parts: list[str]) -> bool:
    """``fnmatchcase(name, "*".join(parts))`` for a glob whose only wildcard is ``*``:
    the first part is a prefix, the last a suffix, the middle ones occur in order
    (leftmost occurrences leave the most room for what follows)."""
    first, *middle, last = parts
    if not name.startswith(first):
        return False
    pos = len(first)
    for part in middle:
        found = name.find(part, pos)
        if found < 0:
            return False
        pos = found + len(part)
    return len(name) - pos >= len(last) and name.endswith(last)


def glob_matches(name: str, glob: str) -> bool:
    """``fnmatchcase(name, glob)``, without a regex when ``*`` is the only wildcard."""
    if "?" in glob or "[" in glob:
        return fnmatchcase(name, glob)
    if "*" not in glob:
        return name == glob
    return _star_match(name, glob.split("*"))


class _GlobSet:
    """A glob list prepared once: exact names, ``X*`` prefixes and ``*X`` suffixes are
    tested by C string methods, every other glob by :func:`glob_matches`."""

    __slots__ = ("exact", "globs", "others", "prefixes", "suffixes")

    def __init__(self, globs: tuple[str, ...]) -> None:
        self.globs = globs
        simple = [g for g in globs if "?" not in g and "[" not in g]
        self.exact = frozenset(g for g in simple if "*" not in g)
        self.prefixes = tuple(g[:-1] for g in simple if g.count("*") == 1 and g.endswith("*"))
        self.suffixes = tuple(
            g[1:] for g in simple if g.count("*") == 1 and g.startswith("*") and len(g) > 1
        )
        fast = set(self.exact) | {p + "*" for p in self.prefixes} | {"*" + s for s in self.suffixes}
        self.others = tuple(g for g in globs if g not in fast)

    def any(self, name: str) -> bool:
        """Whether any glob matches ``name``."""
        return (
            name in self.exact
            or name.startswith(self.prefixes)
            or name.endswith(self.suffixes)
            or any(glob_matches(name, g) for g in self.others)
        )

    def first(self, name: str) -> str | None:
        """The first glob (in list order) that matches ``name``."""
        if not self.any(name):
            return None
        return next(g for g in self.globs if glob_matches(name, g))


_SECRETS = _GlobSet(SECRET_GLOBS)
_CONTROL = _GlobSet(tuple(glob for glob, _ in SHELL_CONTROL))
_CONTROL_WHY = dict(SHELL_CONTROL)


@functools.cache
def _globset(globs: tuple[str, ...]) -> _GlobSet:
    return _GlobSet(globs)


def builtin_reason(name: str) -> str | None:
    """Why the built-in list removes ``name``, or None when it does not."""
    secret = _SECRETS.first(name.upper())
    if secret is not None:
        return f"credential ({secret})"
    control = _CONTROL.first(name)
    return None if control is None else _CONTROL_WHY[control]


def _policy_keeps(name: str, policy_env: EnvPolicy) -> bool:
    if policy_env.deny and _globset(policy_env.deny).any(name):
        return False
    if policy_env.allow:
        return _globset(policy_env.allow).any(name)
    return True


def env_bytes(env: Mapping[str, str]) -> int:
    """Size of ``env`` as execve(2) lays it out: ``NAME=value\\0`` for each entry, in bytes
    (values that came from os.environ may hold surrogate escapes; they count as raw bytes).
    """
    return sum(
        len(k.encode("utf-8", "surrogateescape")) + len(v.encode("utf-8", "surrogateescape")) + 2
        for k, v in env.items()
    )


def _check_limits(env: Mapping[str, str], policy_env: EnvPolicy) -> None:
    """Raises Blocked when ``env`` is over ``max_keys`` or ``max_bytes``."""
    if policy_env.max_keys is not None and len(env) > policy_env.max_keys:
        raise Blocked(
            f"blocked by policy: environment has {len(env)} variables after filtering, "
            f"env_policy.max_keys is {policy_env.max_keys}",
            hint="unset variables the command does not need, or raise env_policy.max_keys",
        )
    size = env_bytes(env)
    if policy_env.max_bytes is not None and size > policy_env.max_bytes:
        raise Blocked(
            f"blocked by policy: environment is {size} bytes after filtering, "
            f"env_policy.max_bytes is {policy_env.max_bytes}",
            hint="unset large variables the command does not need, or raise env_policy.max_bytes",
        )


def filter_env(
    env: Mapping[str, str], policy_env: EnvPolicy, *, inject: Mapping[str, str]
) -> FilteredEnv:
    """Filter the caller's ``env`` for bash.real (order in the module docstring).

    Args:
        env: the caller's environment.
        policy_env: the policy's ``env_policy``.
        inject: operator variables added after filtering (they override a kept caller
            value of the same name and are never removed).

    Returns:
        The new environment and the sorted names of the caller's variables not passed on.

    Raises:
        Blocked: the result exceeds ``max_keys`` or ``max_bytes``.
    """
    kept: dict[str, str] = {}
    removed: list[str] = []
    for name, value in env.items():
        if builtin_reason(name) is None and _policy_keeps(name, policy_env):
            kept[name] = value
        else:
            removed.append(name)
    kept.update(inject)
    _check_limits(kept, policy_env)
    return FilteredEnv(env=kept, removed=tuple(sorted(removed)))
