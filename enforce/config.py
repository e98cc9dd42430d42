"""The server config (``/etc/agentsh/config.yaml``) and where the policy file lives.

The config format is the Go agentsh's. Every key its users' configs carry is known here;
the few this implementation acts on are read into :class:`Config`, every other known key
yields exactly one warning naming its key path, and an unknown key (a typo) is a
:class:`PolicyError` naming file, line and key path.

In the shim path, locations come only from root-owned files (:func:`require_root_owned`),
never from environment variables the caller controls.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from yaml.nodes import Node

from agentsh.enforce.errors import PolicyError
from agentsh.enforce.record import dataclass, field
from agentsh.enforce.yamlnodes import YamlReader, compose, load_data, sub

DEFAULT_CONFIG_PATH = Path("/etc/agentsh/config.yaml")
DEFAULT_POLICIES_DIR = Path("/etc/agentsh/policies")
DEFAULT_POLICY_NAME = "default"
DEFAULT_AUDIT_PATH = Path("/var/lib/agentsh/audit.db")
_POLICY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


class _Leaf(enum.Enum):
    TODO = "known, not implemented yet: one warning"
    BOOL = "bool"
    PATH = "absolute path"
    NAME = "policy name"
    ENV = "mapping of environment variables"
    CAPS = "list of capability names"
    LAYER = "read and checked by its layer's own settings (e.g. landlock.settings)"


_T = _Leaf.TODO
_Schema = Mapping[str, "_Schema | _Leaf"]


def _todo(*keys: str) -> dict[str, _Schema | _Leaf]:
    return dict.fromkeys(keys, _T)


# sandbox.seccomp.hardening.<group>: the syscall groups the exec filter refuses besides
# exec (agentsh.enforce.govern.Hardening's fields; a test keeps the two lists equal).
HARDENING_GROUPS = (
    "signals", "ptrace", "mount", "kernel", "bpf", "userfaultfd", "io_uring",
    "process_vm_writev", "open_by_handle", "tty_injection", "personality", "keyring",
    "system", "fanotify", "packet_capture",
)  # fmt: skip

# The Landlock section (top-level, as the Go agentsh has it, or under sandbox): its values
# are checked by agentsh.enforce.landlock.settings when the snapshot is built.
_LANDLOCK: _Schema = {
    **dict.fromkeys(("enabled", "allow_execute", "allow_read", "allow_write"), _Leaf.LAYER),
    "network": dict.fromkeys(("allow_connect_tcp", "allow_bind_tcp"), _Leaf.LAYER),
}

# sandbox.seccomp.file_monitor: read by agentsh.enforce.filemon.settings.
_FILE_MONITOR: tuple[str, ...] = ("enabled", "enforce_without_fuse", "intercept_metadata")
_FILE_MONITOR += ("write_only_opens",)
_FILE_MONITOR += ("openat_emulation", "block_io_uring")

# Every key of the four seed configs (and a few close relatives of the Go agentsh).
# A mapping is a section; a leaf is read as a whole (lists and free-form maps included).
_SCHEMA: _Schema = {
    "server": {
        "http": _todo("addr", "read_timeout", "write_timeout", "max_request_size"),
        "grpc": _todo("enabled", "addr"),
    },
    "auth": _todo("type"),
    "logging": _todo("level", "format", "output"),
    "sessions": _todo(
        "base_dir", "max_sessions", "default_timeout", "default_idle_timeout", "cleanup_interval"
    ),
    "audit": {"enabled": _Leaf.BOOL, "storage": {"sqlite_path": _Leaf.PATH}},
    "sandbox": {
        **_todo("enabled", "real_paths"),
        "allow_degraded": _Leaf.LAYER,  # read by enforce.fuseconf.settings
        "env_inject": _Leaf.ENV,
        "limits": _todo("max_memory_mb", "max_cpu_percent", "max_processes"),
        "fuse": {  # read by enforce.fuseconf.settings
            "enabled": _Leaf.LAYER,
            "deferred": _Leaf.LAYER,
            **_todo("deferred_marker_file", "deferred_enable_command"),
            "audit": {"mode": _Leaf.LAYER},
        },
        "network": _todo("enabled", "intercept_mode", "proxy_listen_addr"),
        "cgroups": _todo("enabled"),
        "unix_sockets": _todo("enabled"),
        "seccomp": {
            **_todo("enabled", "mode"),
            "hardening": dict.fromkeys(HARDENING_GROUPS, _Leaf.BOOL),
            "execve": _todo("enabled"),
            "file_monitor": dict.fromkeys(_FILE_MONITOR, _Leaf.LAYER),
        },
        "ptrace": {
            "enabled": _Leaf.BOOL,
            **_todo("attach_mode", "mask_tracer_pid", "on_attach_failure"),
            "trace": {**_todo("execve", "network", "signal"), "file": _Leaf.LAYER},
            "performance": _todo("seccomp_prefilter", "max_tracees", "max_hold_ms"),
        },
        "landlock": _LANDLOCK,
    },
    "landlock": _LANDLOCK,
    "security": _todo("mode", "strict"),
    "capabilities": {"allow": _Leaf.CAPS},
    "proxy": _todo("mode", "port", "providers"),
    "dlp": _todo("mode", "patterns", "custom_patterns"),
    "policies": {
        "dir": _Leaf.PATH,
        "default": _Leaf.NAME,
        "default_policy": _Leaf.NAME,
        **_todo("detect_project_root", "env_shim_path"),
    },
    "approvals": {"enabled": _Leaf.BOOL, **_todo("mode", "timeout")},
    "metrics": _todo("enabled", "path"),
    "health": _todo("path", "readiness_path"),
    "development": _todo("disable_auth", "verbose_errors", "debug", "disable_policy"),
}


@dataclass(frozen=True)
class Config:
    """The settings this implementation acts on, plus everything else as read.

    ``path`` is None when there was no config file (all defaults). ``policy_named`` is
    True when the file set ``policies.dir`` or ``policies.default``/``default_policy``:
    then a missing policy file is an error, not a fallback to the built-in default.
    ``raw`` is the whole parsed mapping and ``lines`` the line of every key path, for
    later layers.
    """

    path: Path | None = None
    policies_dir: Path = DEFAULT_POLICIES_DIR
    default_policy: str = DEFAULT_POLICY_NAME
    policy_named: bool = False
    audit_enabled: bool = True
    audit_path: Path = DEFAULT_AUDIT_PATH
    env_inject: tuple[tuple[str, str], ...] = ()
    approvals_enabled: bool = False
    capabilities_allow: tuple[str, ...] | None = None  # None: no capabilities section
    ptrace_enabled: bool = False  # sandbox.ptrace.enabled: supervise execs with ptrace
    hardening: tuple[tuple[str, bool], ...] = ()  # sandbox.seccomp.hardening overrides
    warnings: tuple[str, ...] = ()
    raw: Mapping[str, object] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    lines: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )


@dataclass
class _Walk:
    """What one pass over the config's nodes collected."""

    reader: YamlReader
    leaves: dict[str, Node] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def walk(self, node: Node, path: str, schema: _Schema) -> None:
        for name, knode, vnode in self.reader.pairs(node, path):
            key = sub(path, name)
            self.lines[key] = knode.start_mark.line + 1
            spec = schema.get(name)
            if spec is None:
                self.reader.unknown(knode, key, frozenset(schema), known=False)
            elif spec is _Leaf.TODO:
                where = f"{self.reader.source}:{self.lines[key]}"
                self.warnings.append(f"{where}: config key {key} is not implemented yet; ignored")
            elif isinstance(spec, _Leaf):
                self.leaves[key] = vnode
            elif vnode.tag != "tag:yaml.org,2002:null":  # an empty section is no section
                self.walk(vnode, key, spec)


def _absolute(walk: _Walk, key: str, default: Path) -> Path:
    if key not in walk.leaves:
        return default
    node = walk.leaves[key]
    text = walk.reader.string(node, key)
    if not text.startswith("/"):
        walk.reader.fail(node, key, f"{text!r} is not an absolute path")
    return Path(os.path.normpath(text))


def _flag(walk: _Walk, key: str, default: bool) -> bool:
    return walk.reader.boolean(walk.leaves[key], key) if key in walk.leaves else default


def _policy_name(walk: _Walk) -> str:
    keys = [k for k in ("policies.default", "policies.default_policy") if k in walk.leaves]
    given = [(k, walk.leaves[k], walk.reader.string(walk.leaves[k], k)) for k in keys]
    for key, node, text in given:
        if not _POLICY_NAME.match(text):
            walk.reader.fail(node, key, f"{text!r} is not a policy name (a file name, no /)")
    if len({text for _, _, text in given}) > 1:
        key, node, _ = given[1]
        walk.reader.fail(node, key, "policies.default and policies.default_policy disagree")
    return given[0][2] if given else DEFAULT_POLICY_NAME


def _capabilities(walk: _Walk) -> tuple[str, ...] | None:
    """``capabilities.allow``: the capabilities a governed tree keeps (all others are
    dropped before exec); None when the config has no such key (nothing is dropped)."""
    key = "capabilities.allow"
    if key not in walk.leaves:
        return None
    from agentsh.enforce import limits

    node = walk.leaves[key]
    names = tuple(text for _, text in walk.reader.strings(node, key))
    try:
        limits.allowed_capabilities(names)
    except ValueError as err:
        walk.reader.fail(node, key, str(err))
    return names


def _raw(text: str) -> Mapping[str, object]:
    data = load_data(text)  # already validated by the walk: a mapping
    return MappingProxyType(data if isinstance(data, dict) else {})


def loads_config(text: str, path: Path) -> Config:
    """Parse config ``text`` read from ``path`` (named in errors and warnings).

    Raises:
        PolicyError: YAML error, unknown key, or a wrong value for an implemented key.
    """
    root = compose(text, str(path))
    walk = _Walk(YamlReader(str(path)))
    if root is not None:
        walk.walk(root, "", _SCHEMA)
    env = walk.leaves.get("sandbox.env_inject")
    named = {"policies.dir", "policies.default", "policies.default_policy"} & walk.leaves.keys()
    return Config(
        path=path,
        policies_dir=_absolute(walk, "policies.dir", DEFAULT_POLICIES_DIR),
        default_policy=_policy_name(walk),
        policy_named=bool(named),
        audit_enabled=_flag(walk, "audit.enabled", True),
        audit_path=_absolute(walk, "audit.storage.sqlite_path", DEFAULT_AUDIT_PATH),
        env_inject=tuple(
            (name, value)
            for _, name, value in (
                walk.reader.string_map(env, "sandbox.env_inject") if env is not None else ()
            )
        ),
        approvals_enabled=_flag(walk, "approvals.enabled", False),
        capabilities_allow=_capabilities(walk),
        ptrace_enabled=_flag(walk, "sandbox.ptrace.enabled", False),
        hardening=tuple(
            (g, _flag(walk, f"sandbox.seccomp.hardening.{g}", True))
            for g in HARDENING_GROUPS
            if f"sandbox.seccomp.hardening.{g}" in walk.leaves
        ),
        warnings=tuple(walk.warnings),
        raw=_raw(text),
        lines=MappingProxyType(walk.lines),
    )


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> Config:
    """Load the server config at ``path``; all defaults when the file does not exist.

    Raises:
        PolicyError: the file exists but cannot be read or is invalid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(str(path), None, "file", f"cannot be read: {err}") from None
    return loads_config(text, path)


def builtin_policy_path() -> Path:
    """The packaged default policy (``agentsh/policies/default.yaml``)."""
    return Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


def locate_policy(config: Config, override: Path | None = None) -> Path | None:
    """The policy file to load: ``override``, else ``<policies.dir>/<name>.yaml`` (or
    ``.yml``), else None meaning "use :func:`builtin_policy_path`" — but only when the
    config did not name a policy: a named policy that does not exist is an error.

    Raises:
        PolicyError: ``override`` does not exist, or the config's policy does not.
    """
    if override is not None:
        if not override.is_file():
            raise PolicyError(str(override), None, "policy", "no such policy file")
        return override
    for suffix in (".yaml", ".yml"):
        candidate = config.policies_dir / f"{config.default_policy}{suffix}"
        if candidate.is_file():
            return candidate
    if config.path is None or not config.policy_named:
        return None
    key = next(
        (
            k
            for k in ("policies.default", "policies.default_policy", "policies.dir")
            if k in config.lines
        ),
        "policies",
    )
    why = (
        f"policy {config.default_policy!r} not found "
        f"(no {config.default_policy}.yaml or .yml in {config.policies_dir})"
    )
    raise PolicyError(str(config.path), config.lines.get(key), key, why)


def require_root_owned(path: Path) -> None:
    """Refuse a file that is not root-owned or is group/world-writable, and likewise its
    directory (unless sticky). One implementation, in :mod:`agentsh.enforce.snapshot`,
    which must not import this module's YAML stack on a cache hit.

    Raises:
        PolicyError: the file or a directory fails the check, or cannot be stat(2)ed.
    """
    from agentsh.enforce import snapshot

    snapshot.require_root_owned(path)
