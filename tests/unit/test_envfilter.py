"""enforce.envfilter: what reaches bash.real from the caller's environment."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentsh.enforce import envfilter
from agentsh.enforce.envfilter import env_bytes, filter_env
from agentsh.enforce.errors import Blocked
from agentsh.enforce.policy import EnvPolicy

SEEDS = Path("/work/shared/seed-policies")
STARTUP = Path(envfilter.__file__).with_name("bash_startup.sh")
OPEN = EnvPolicy()  # no allow list, no deny list
ALLOW_ALL = EnvPolicy(allow=("*",))

# Removed whatever the policy says (here: a policy that allows every name).
ALWAYS_REMOVED = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "aws_session_token",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "github_token",
    "NPM_TOKEN",
    "HF_TOKEN",
    "CI_JOB_TOKEN_X",
    "TOKEN",
    "CLIENT_SECRET",
    "MY_SECRET_THING",
    "SECRET_KEY_BASE",
    "DB_PASSWORD",
    "POSTGRES_PASSWORD_FILE",
    "PASSWORD",
    "PGPASSWORD",
    "MYSQL_PWD",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "STRIPE_APIKEY",
    "API_KEY",
    "API_KEY_PROD",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CREDENTIALS",
    "GITHUB_PAT",
    "SSH_PRIVATE_KEY",
    "AGENTSH_SHIM_FORCE",
    "AGENTSH_SERVER",
    "BASH_ENV",
    "ENV",
    "BASH_FUNC_ls%%",
    "BASH_FUNC_enable%%",
    "SHELLOPTS",
    "BASHOPTS",
    "POSIXLY_CORRECT",
    "BASH_COMPAT",
    "PS0",
    "PS1",
    "PS2",
    "PS4",
    "PROMPT_COMMAND",
    "BASH_XTRACEFD",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "GCONV_PATH",
]

# Kept by a policy with no lists: ordinary variables, including near-misses of the globs.
KEPT = [
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TERM",
    "PWD",
    "SHLVL",
    "_",
    "TOKENIZERS_PARALLELISM",
    "SSH_AUTH_SOCK",
    "GIT_AUTHOR_NAME",
    "ENVIRONMENT",
    "NODE_ENV",
    "PS3",
    "LD_BIND_NOW",
    "KEYTIMEOUT",
    "PYTHONPATH",
    "bash_env",
    "ps4",
]


@pytest.mark.parametrize("name", ALWAYS_REMOVED)
def test_builtin_list_beats_allow(name: str) -> None:
    out = filter_env({name: "v", "PATH": "/usr/bin"}, ALLOW_ALL, inject={})
    assert out.env == {"PATH": "/usr/bin"}
    assert out.removed == (name,)


@pytest.mark.parametrize("name", KEPT)
def test_ordinary_names_pass(name: str) -> None:
    out = filter_env({name: "v"}, OPEN, inject={})
    assert out.env == {name: "v"}
    assert out.removed == ()


def test_every_builtin_removal_has_a_reason() -> None:
    for name in ALWAYS_REMOVED:
        assert envfilter.builtin_reason(name), name
    for name in KEPT:
        assert envfilter.builtin_reason(name) is None, name


def test_deny_globs_case_sensitive() -> None:
    policy = EnvPolicy(deny=("DB_*", "REDIS_URL"))
    out = filter_env(
        {"DB_HOST": "h", "db_host": "h", "REDIS_URL": "r", "X": "1"}, policy, inject={}
    )
    assert out.env == {"db_host": "h", "X": "1"}
    assert out.removed == ("DB_HOST", "REDIS_URL")


def test_allow_list_only_passes_matching_names_and_deny_wins() -> None:
    policy = EnvPolicy(allow=("PATH", "LC_*", "NODE_*"), deny=("NODE_SECRETISH",))
    env = {"PATH": "/bin", "LC_ALL": "C", "NODE_ENV": "dev", "NODE_SECRETISH": "x", "EDITOR": "vi"}
    out = filter_env(env, policy, inject={})
    assert out.env == {"PATH": "/bin", "LC_ALL": "C", "NODE_ENV": "dev"}
    assert out.removed == ("EDITOR", "NODE_SECRETISH")


def test_inject_added_after_filtering() -> None:
    caller = {"BASH_ENV": "/tmp/evil.sh", "PATH": "/bin", "AGENTSH_SERVER": "http://evil"}
    inject = {
        "BASH_ENV": "/usr/lib/agentsh/bash_startup.sh",
        "AGENTSH_SERVER": "http://127.0.0.1:1",
    }
    policy = EnvPolicy(allow=("PATH",))  # inject bypasses the allow list too
    out = filter_env(caller, policy, inject=inject)
    assert out.env == {"PATH": "/bin", **inject}
    assert out.removed == ("AGENTSH_SERVER", "BASH_ENV")


def test_inject_overrides_a_kept_caller_value() -> None:
    out = filter_env({"LANG": "fr_FR.UTF-8"}, OPEN, inject={"LANG": "C.UTF-8"})
    assert out.env == {"LANG": "C.UTF-8"}
    assert out.removed == ()


def test_pure_input_untouched_and_values_not_reported() -> None:
    caller = {"GITHUB_TOKEN": "ghp_secret", "PATH": "/bin"}
    before = dict(caller)
    out = filter_env(caller, OPEN, inject={"BASH_ENV": "/x"})
    assert caller == before
    assert "ghp_secret" not in repr(out.removed)
    out.env["NEW"] = "1"
    assert "NEW" not in caller


def test_env_bytes_counts_execve_layout() -> None:
    assert env_bytes({"A": "bc"}) == len(b"A=bc\0")
    assert env_bytes({"A": "é"}) == len("A=é\0".encode())
    assert env_bytes({"A": "\udcff"}) == len(b"A=\xff\0")  # surrogate-escaped byte


def test_max_keys_boundary_counts_result_including_inject() -> None:
    policy = EnvPolicy(max_keys=3)
    caller = {"A": "1", "B": "2", "GITHUB_TOKEN": "t"}  # the token is removed, not counted
    assert len(filter_env(caller, policy, inject={"BASH_ENV": "/s"}).env) == 3
    with pytest.raises(Blocked, match=r"4 variables.*max_keys is 3") as err:
        filter_env({**caller, "C": "3"}, policy, inject={"BASH_ENV": "/s"})
    assert err.value.exit_code == 126
    assert "max_keys" in (err.value.hint or "")


def test_max_bytes_boundary() -> None:
    env = {"A": "x" * 10, "B": "y"}
    size = env_bytes(env)
    assert filter_env(env, EnvPolicy(max_bytes=size), inject={}).env == env
    with pytest.raises(Blocked, match=rf"{size} bytes.*max_bytes is {size - 1}"):
        filter_env(env, EnvPolicy(max_bytes=size - 1), inject={})


def test_limits_apply_after_removal() -> None:
    """A huge secret the filter removes does not count against max_bytes."""
    out = filter_env(
        {"AWS_SESSION_TOKEN": "x" * 5000, "A": "1"}, EnvPolicy(max_bytes=10), inject={}
    )
    assert out.env == {"A": "1"}


# --- the seed policies mean what their authors wrote -------------------------------------


def _seed_env_policy(name: str) -> EnvPolicy:
    spec: dict[str, Any] = yaml.safe_load((SEEDS / name / "default.yaml").read_text())["env_policy"]
    return EnvPolicy(
        allow=tuple(spec.get("allow") or ()),
        deny=tuple(spec.get("deny") or ()),
        max_bytes=spec.get("max_bytes"),
        max_keys=spec.get("max_keys"),
        block_iteration=bool(spec.get("block_iteration", False)),
    )


def _seed_inject(name: str) -> dict[str, str]:
    cfg: dict[str, Any] = yaml.safe_load((SEEDS / name / "config.yaml").read_text())
    return dict((cfg.get("sandbox") or {}).get("env_inject") or {})


AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/agent",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TERM": "xterm",
    "NODE_ENV": "development",
    "NPM_CONFIG_CACHE": "/tmp/npm",
    "NPM_TOKEN": "npm_secret",
    "GIT_AUTHOR_NAME": "agent",
    "HTTPS_PROXY": "http://127.0.0.1:3128",
    "EDITOR": "vi",
    "AWS_REGION": "us-east-1",
    "DATABASE_URL": "postgres://u:p@db/app",
    "DB_HOST": "db",
    "TOKEN_URL": "https://auth/token",
    "AGENTSH_SESSION": "forged",
    "BASH_ENV": "/tmp/evil.sh",
    "CARGO_HOME": "/home/agent/.cargo",
}


@pytest.mark.parametrize("seed", ["deno", "exe.dev"])
def test_deno_and_exe_dev_allow_list(seed: str) -> None:
    out = filter_env(AGENT_ENV, _seed_env_policy(seed), inject=_seed_inject(seed))
    kept = {k for k in AGENT_ENV if k in out.env and out.env[k] == AGENT_ENV[k]}
    assert kept == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TERM",
        "NODE_ENV",
        "NPM_CONFIG_CACHE",
        "GIT_AUTHOR_NAME",
        "HTTPS_PROXY",
    }
    # NPM_* is allowed, but NPM_TOKEN is a credential; AGENTSH_* and BASH_ENV are allowed
    # for what the operator injects, not for the caller's values.
    for name in ("NPM_TOKEN", "AGENTSH_SESSION", "BASH_ENV", "AWS_REGION", "DATABASE_URL"):
        assert name in out.removed
    assert "EDITOR" in out.removed  # not in the allow list
    assert "CARGO_HOME" in out.removed


def test_deno_injected_bash_env_survives() -> None:
    out = filter_env(AGENT_ENV, _seed_env_policy("deno"), inject=_seed_inject("deno"))
    assert out.env["BASH_ENV"] == "/usr/lib/agentsh/bash_startup.sh"


def test_sprites_policy() -> None:
    out = filter_env(AGENT_ENV, _seed_env_policy("sprites"), inject={})
    assert set(out.env) == {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TERM",
        "NODE_ENV",
        "EDITOR",
        "CARGO_HOME",
    }
    # not allowed there (npm_* is lower case in that policy, and fnmatchcase is exact)
    for name in ("GIT_AUTHOR_NAME", "HTTPS_PROXY", "NPM_CONFIG_CACHE"):
        assert name in out.removed


def test_seed_max_keys_refuses_a_flooded_env() -> None:
    policy = _seed_env_policy("sprites")  # allow NODE_*, max_keys 100
    flood = {f"NODE_X{i}": "1" for i in range(120)}
    with pytest.raises(Blocked, match="max_keys is 100"):
        filter_env({**AGENT_ENV, **flood}, policy, inject={})


# --- the removal matters to the real bash -------------------------------------------------


def _kill_kind(env: dict[str, str]) -> str:
    done = subprocess.run(
        ["/usr/bin/bash", "-c", "type -t kill"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHELLOPTS", "braceexpand:hashall:interactive-comments:posix"),
        ("POSIXLY_CORRECT", "1"),
        ("BASH_ENV", "/dev/null"),
    ],
)
def test_caller_env_cannot_keep_kill_builtin(name: str, value: str) -> None:
    """Each variable alone defeats the startup file when passed through unfiltered."""
    raw = {"BASH_ENV": str(STARTUP), "PATH": "/usr/bin:/bin", name: value}
    assert _kill_kind(raw) == "builtin"  # the attack works on an unfiltered env
    filtered = filter_env(raw, OPEN, inject={"BASH_ENV": str(STARTUP)})
    assert _kill_kind(filtered.env) == "file"


def test_exported_function_cannot_hijack_a_command() -> None:
    """BASH_FUNC_ls%% would run instead of /usr/bin/ls, unseen by the precheck."""
    raw = {"PATH": "/usr/bin:/bin", "BASH_FUNC_ls%%": "() { echo HIJACKED; }"}
    argv = ["/usr/bin/bash", "-c", "ls -d /"]
    unfiltered = subprocess.run(argv, env=raw, capture_output=True, text=True, check=False)
    assert unfiltered.stdout == "HIJACKED\n"
    env = filter_env(raw, OPEN, inject={}).env
    filtered = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert filtered.stdout == "/\n"
