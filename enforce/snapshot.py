"""The settings snapshot cache: config + policy, loaded once, reused by every governed bash.

Every governed ``bash -c`` starts a fresh frontend (ARCHITECTURE §3), and reading the YAML
config and policy costs more than the rest of the cold path together: importing PyYAML,
composing the files and compiling every pattern to validate it (§10 budget). The frontend
needs only a little of it — the :class:`Policy`, ``audit_enabled``, ``audit_path``,
``env_inject`` and ``approvals_enabled`` — so :func:`load` keeps those in a pickle, keyed
by everything they are computed from, and on a hit imports neither ``enforce.config``,
``enforce.loader`` nor ``yaml``.

Key (sha256 over length-prefixed parts): the agentsh VERSION, the cache format, Python's
version, a stat fingerprint of the modules that build a snapshot (an upgrade or a
reinstall misses; a miss during which they change is not stored), the config file's
path and bytes (or "absent"), the policy override path and the ``${VAR}`` values. The
entry records the policy file it resolved to, that file's sha256, and the candidate
policy files that did not exist when it was made.

A hit is used only when all of this still holds, checked on every run:

1. the config file, when present, is root-owned and not group/world-writable (as the
   full load checks it, with the same error);
2. the entry's directory and file are root-owned and not group/world-writable, opened
   without following symlinks (open(2) ``O_NOFOLLOW``, fstat(2));
3. it unpickles with :class:`_Unpickler`, which builds only the policy model's classes
   and patterns — a planted pickle cannot run code — and carries the key looked up;
4. every candidate policy file that was absent is still absent, so the config resolves
   to the same policy file as before;
5. that policy file passes the root-ownership check, and its sha256 is unchanged.

Anything else is a miss: the full, strict load runs (the config's and loader's own errors,
never cached) and a successful result is written atomically (temp file + rename(2)) for
the next run. The cache is used only by root (euid 0) on the shim path (``trusted``);
writing it is best effort: a cache that cannot be written costs time, never correctness.

``args_patterns`` from a hit are compiled at their first use (:class:`_LazyPattern`):
the loader has validated every one of them when the entry was made (the key pins the
policy's bytes), and compiling them all is most of an unpickle.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agentsh.enforce import VERSION, filemon, fuseconf, landlock
from agentsh.enforce.errors import LayerUnavailable, PolicyError
from agentsh.enforce.landlock import LandlockConfig, Ruleset
from agentsh.enforce.policy import (
    AuditSettings,
    CommandRule,
    Decision,
    EnvPolicy,
    FileRule,
    NetworkRule,
    Policy,
    Redirect,
    ResourceLimits,
    SignalRule,
    SignalTargetSpec,
)
from agentsh.enforce.record import dataclass

try:  # the C (un)pickler itself: the pickle module's Python half costs ~1.5 ms a start
    from _pickle import Unpickler, UnpicklingError, dumps

    _PURE_ERRORS: tuple[type[Exception], ...] = ()
except ImportError:  # not CPython: the pure-Python unpickler also raises struct.error
    import struct
    from pickle import Unpickler, UnpicklingError, dumps

    _PURE_ERRORS = (struct.error,)

CACHE_DIR = Path("/var/cache/agentsh/settings")
FORMAT = 2
MAX_ENTRIES = 256  # one entry per (config, policy, cwd, user); pruned to half when over
# The modules whose code decides what a snapshot holds: a change to any of them misses.
_CODE: tuple[str, ...] = ("__init__.py", "config.py", "engine.py", "loader.py", "policy.py")
_CODE += ("fuseconf.py", "landlock.py", "record.py", "snapshot.py", "yamlnodes.py")
_CODE += ("filemon.py", "signals.py")
_SUFFIXES = (".yaml", ".yml")  # as config.locate_policy probes <policies.dir>/<name><suffix>
_PATTERN_FLAGS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.UNICODE | re.VERBOSE | re.ASCII
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH


@dataclass(frozen=True)
class Snapshot:
    """What the frontend needs from the config and the policy, and where it came from.

    ``policy_path`` is the policy file the config resolved to and ``policy_sha256`` its
    hash; ``absent`` are the candidate policy files that did not exist (their appearance
    would change the resolution); ``key`` is the cache key it was stored under.
    """

    key: str
    policy: Policy
    audit_enabled: bool
    audit_path: str
    env_inject: tuple[tuple[str, str], ...]
    approvals_enabled: bool
    capabilities_allow: tuple[str, ...] | None
    ptrace_enabled: bool
    hardening: tuple[tuple[str, bool], ...]
    landlock: LandlockConfig
    ruleset: Ruleset | None  # compiled for the ABI the kernel had then; see ruleset()
    fuse: fuseconf.FuseSettings  # the soft-delete workspace settings
    monitor: filemon.MonitorConfig  # the notify file monitor's settings
    policy_path: str
    policy_sha256: str
    absent: tuple[str, ...] = ()


def load(
    config_file: Path,
    *,
    override: Path | None,
    variables: Mapping[str, str],
    trusted: bool,
    cache_dir: Path | None,
) -> Snapshot:
    """The snapshot for ``config_file`` (absent: defaults) and its policy (``override``
    when given), from the cache when a valid entry exists (module docstring).

    Args:
        config_file: the server config.
        override: a policy file given by the caller instead of the config's.
        variables: the ``${VAR}`` values for the policy.
        trusted: the shim path: every file must be root-owned (:func:`require_root_owned`).
        cache_dir: where entries live; None, not ``trusted`` or euid != 0: no cache.

    Raises:
        PolicyError: a file is invalid, unreadable, missing where the config names it, or
            untrusted — exactly as a load without cache would raise it.
    """
    if trusted and os.path.exists(config_file):
        require_root_owned(config_file)
    config_bytes = _read_optional(config_file)
    if cache_dir is None or not trusted or os.geteuid() != 0:
        return _build(config_file, config_bytes, override, variables, "", trusted=trusted)
    key = _key(config_file, config_bytes, override, variables)
    hit = _lookup(cache_dir, key) if key else None
    if hit is not None:
        return hit
    built = _build(config_file, config_bytes, override, variables, key, trusted=True)
    # built.key is "" when the resolution could not be pinned; the code must be what
    # the key says (_LOADED_CODE), also the modules the miss has just imported.
    if key and built.key and _fingerprint() == _LOADED_CODE:
        _store(cache_dir, built)
    return built


def require_root_owned(path: Path) -> None:
    """Refuse a file that is not root-owned or is group/world-writable — and likewise
    its directory (unless sticky), since whoever can write the directory can swap the
    file. Symlinks are followed; the link's own directory is checked too. (The same check
    as ``config.require_root_owned``, without importing the YAML stack.)

    Raises:
        PolicyError: the file or a directory fails the check, or cannot be stat(2)ed.
    """
    st = _check_owner(path, "owner")
    if st.st_mode & _WRITABLE:
        mode = stat.S_IMODE(st.st_mode)
        why = f"is group- or world-writable (mode {mode:04o}); run chmod go-w"
        raise PolicyError(str(path), None, "permissions", why)
    for directory in {Path(os.path.realpath(path)).parent, path.absolute().parent}:
        dst = _check_owner(directory, "directory owner")
        if dst.st_mode & _WRITABLE and not dst.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(dst.st_mode)
            why = f"directory {directory} is group- or world-writable (mode {mode:04o})"
            raise PolicyError(str(path), None, "permissions", why)


def _check_owner(path: Path, what: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as err:
        raise PolicyError(str(path), None, what, f"cannot be checked: {err.strerror}") from None
    if st.st_uid != 0:
        raise PolicyError(str(path), None, what, f"must be owned by root, not uid {st.st_uid}")
    return st


# --------------------------------------------------------------------------- files


def _read_optional(path: Path) -> bytes | None:
    """The config's bytes, None when it does not exist (as ``config.load_config``)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PolicyError(str(path), None, "file", f"cannot be read: {err}") from None


def _text(data: bytes, path: Path) -> str:
    """``data`` as ``Path.read_text`` gives it: UTF-8, universal newlines."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(str(path), None, "file", f"cannot be read: {err}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _sha256() -> Callable[..., Any]:
    # CPython's built-in SHA-256: hashlib would load OpenSSL first (~4 ms a start).
    for name in ("_sha256", "_sha2"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib  # fallback only

    return hashlib.sha256


def _digest(*parts: bytes) -> str:
    h = _sha256()()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return str(h.hexdigest())


def _fingerprint() -> bytes | None:
    """Size, mtime and inode of the modules that build a snapshot; None when one cannot
    be stat(2)ed (then nothing is cached)."""
    here = Path(__file__).parent
    out = []
    for name in _CODE:
        try:
            st = os.stat(here / name)
        except OSError:
            return None
        out.append(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return " ".join(out).encode()


# The code this process runs, as its files were when it imported this module (after
# policy, record and engine). A reinstall while a miss is being built changes the files:
# then the result is not stored (see load), since it may come from the old code.
_LOADED_CODE = _fingerprint()


def _key(
    config_file: Path,
    config_bytes: bytes | None,
    override: Path | None,
    variables: Mapping[str, str],
) -> str:
    """The cache key ("" when the code cannot be fingerprinted: no cache)."""
    code = _LOADED_CODE
    if code is None:
        return ""
    head = f"agentsh {VERSION} format {FORMAT} python {sys.version_info[:2]}".encode()
    config = b"absent" if config_bytes is None else b"file:" + config_bytes
    given = b"" if override is None else b"override:" + os.fsencode(override)
    names = "\0".join(f"{k}={v}" for k, v in sorted(variables.items()))
    encoded = names.encode("utf-8", "surrogateescape")
    return _digest(head, code, os.fsencode(config_file), config, given, encoded)


# --------------------------------------------------------------------------- miss


def _candidates(policies_dir: Path, name: str) -> tuple[Path, ...]:
    return tuple(policies_dir / f"{name}{suffix}" for suffix in _SUFFIXES)


def _build(
    config_file: Path,
    config_bytes: bytes | None,
    override: Path | None,
    variables: Mapping[str, str],
    key: str,
    *,
    trusted: bool,
) -> Snapshot:
    """The full, strict load (config, policy location, policy). ``key`` is "" in the
    result when the policy's resolution cannot be pinned for a later hit.

    Raises:
        PolicyError: from the config, its policy location, the ownership check or the
            policy (never cached).
    """
    # Imported here: the YAML stack is what a hit avoids.
    from agentsh.enforce import config, loader

    if config_bytes is None:
        cfg = config.Config()
    else:
        cfg = config.loads_config(_text(config_bytes, config_file), config_file)
    located = override or config.locate_policy(cfg)
    path = located if located is not None else config.builtin_policy_path()
    if trusted:
        require_root_owned(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PolicyError(str(path), None, "file", f"cannot be read: {err}") from None
    policy = loader.loads(_text(data, path), str(path), variables)
    absent = () if override else _absent(_candidates(cfg.policies_dir, cfg.default_policy), located)
    fences, monitor = landlock.settings(cfg), filemon.settings(cfg)
    return Snapshot(
        key=key if absent is not None else "",
        policy=policy,
        audit_enabled=cfg.audit_enabled,
        audit_path=str(cfg.audit_path),
        env_inject=cfg.env_inject,
        approvals_enabled=cfg.approvals_enabled,
        capabilities_allow=cfg.capabilities_allow,
        ptrace_enabled=cfg.ptrace_enabled,
        hardening=cfg.hardening,
        landlock=fences,
        ruleset=_ruleset(policy, fences, landlock.probe().abi, monitor.enabled),
        fuse=fuseconf.settings(cfg),
        monitor=monitor,
        policy_path=str(path),
        policy_sha256=_digest(data),
        absent=absent or (),
    )


def _ruleset(
    policy: Policy, fences: LandlockConfig, abi: int, monitor: bool
) -> landlock.Ruleset | None:
    """The Landlock ruleset for ``abi`` (None: Landlock is off in the config, or the
    kernel has none — :func:`ruleset` then decides what that means at run time). With the
    file ``monitor`` on, operations an ``approve`` rule decides are left to it (it refuses
    them: nobody can be asked inside the tree) so that Landlock does not refuse more than
    the policy: deno approves deletes but allows renames, which Landlock counts as both."""
    if not fences.enabled or abi < 1:
        return None
    runtime = landlock.runtime_paths()
    return landlock.compile(
        policy, fences, abi=abi, runtime=runtime, monitor=monitor, analyse=False
    )


def ruleset(
    policy: Policy,
    fences: LandlockConfig,
    stored: landlock.Ruleset | None,
    abi: int,
    *,
    monitor: bool,
) -> landlock.Ruleset | None:
    """The ruleset to apply on a kernel with Landlock ``abi``: ``stored`` (a snapshot's)
    when it was compiled for the same ABI, else compiled now (a kernel upgrade). None when
    the config turns Landlock off.

    Raises:
        LayerUnavailable: the config enables Landlock (the default) and the kernel has none.
    """
    if not fences.enabled:
        return None
    if stored is not None and stored.abi == min(abi, landlock.LATEST_ABI) >= 1:
        return stored
    found = _ruleset(policy, fences, abi, monitor)
    if found is None:
        raise LayerUnavailable(
            "Landlock (the file policy layer) is not available on this kernel",
            hint=f"set {fences.section}.enabled: false in the config to run without it",
        )
    return found


def _absent(candidates: tuple[Path, ...], located: Path | None) -> tuple[str, ...] | None:
    """The candidates probed before ``located`` (all of them when it is None: the built-in
    policy), when they are what made ``config.locate_policy`` choose ``located``; None
    when they are not (a file appeared meanwhile): such a result is not cached."""
    if located is not None and located not in candidates:
        return None
    before = candidates if located is None else candidates[: candidates.index(located)]
    if any(os.path.isfile(c) for c in before):
        return None
    return tuple(str(c) for c in before)


# --------------------------------------------------------------------------- hit


def _lookup(cache_dir: Path, key: str) -> Snapshot | None:
    """The valid entry for ``key`` (checks 2–5 of the module docstring), else None."""
    data = _read_entry(cache_dir, key)
    if data is None:
        return None
    try:
        found = _Unpickler(io.BytesIO(data)).load()
    except _BAD_PICKLE:
        return None
    if not _well_formed(found, key) or any(os.path.isfile(p) for p in found.absent):
        return None
    path = Path(found.policy_path)
    try:
        require_root_owned(path)
        data = path.read_bytes()
    except (PolicyError, OSError):
        return None  # the full load reports it
    return found if _digest(data) == found.policy_sha256 else None


def _well_formed(found: object, key: str) -> bool:
    """An entry of this format, stored under ``key`` (a renamed or copied entry misses)."""
    return (
        type(found) is Snapshot
        and found.key == key
        and type(found.policy) is Policy
        and type(found.landlock) is landlock.LandlockConfig
        and (found.ruleset is None or type(found.ruleset) is landlock.Ruleset)
        and type(found.fuse) is fuseconf.FuseSettings
        and type(found.monitor) is filemon.MonitorConfig
        and type(found.policy_path) is str
        and type(found.policy_sha256) is str
        and type(found.absent) is tuple
        and all(type(p) is str for p in found.absent)
    )


def _open_dir(cache_dir: Path) -> int | None:
    """An fd of ``cache_dir`` when it is a real directory (not a symlink), root-owned and
    not group/world-writable; else None. open(2) O_NOFOLLOW|O_DIRECTORY, fstat(2)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(cache_dir, flags)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & _WRITABLE:
        os.close(fd)
        return None
    return fd


def _entry_name(key: str) -> str:
    return f"{key}.pickle"


def _read_entry(cache_dir: Path, key: str) -> bytes | None:
    """The entry's bytes when the directory and the file pass check 2, else None."""
    dfd = _open_dir(cache_dir)
    if dfd is None:
        return None
    try:
        fd = os.open(_entry_name(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & _WRITABLE:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


class _LazyPattern:
    """An ``args_patterns`` regex from a snapshot, compiled at its first use.

    The engine only calls ``search``; every other attribute is the compiled pattern's.
    It equals (and hashes like) the ``re.Pattern`` the loader made, and pickles as one.
    """

    __slots__ = ("_compiled", "flags", "pattern")

    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def search(self, string: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
        return self.compiled().search(string, pos, endpos)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # e.g. _compiled before __init__ ran (copy, pickle)
            raise AttributeError(name)
        return getattr(self.compiled(), name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _LazyPattern):
            other = other.compiled()
        if not isinstance(other, re.Pattern):
            return NotImplemented
        return self.compiled() == other

    def __hash__(self) -> int:
        return hash(self.compiled())

    def __repr__(self) -> str:
        return repr(self.compiled())

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (re.compile, (self.pattern, self.flags))


def _pattern(pattern: object, flags: object) -> _LazyPattern:
    """What a pickled ``re.Pattern`` (``re._compile(pattern, flags)``) becomes: text
    patterns with ordinary flags only (``re.DEBUG`` would print)."""
    if type(pattern) is not str or type(flags) is not int or flags & ~_PATTERN_FLAGS:
        raise UnpicklingError(f"not an args_patterns regex: {pattern!r}, {flags!r}")
    return _LazyPattern(pattern, flags)


_MODEL: tuple[type, ...] = (AuditSettings, CommandRule, Decision, EnvPolicy, FileRule)
_MODEL += (NetworkRule, Policy, Redirect, ResourceLimits, SignalRule, SignalTargetSpec)
_LANDLOCK: tuple[type, ...] = (landlock.LandlockConfig, landlock.Ruleset, landlock.Rule)
_LANDLOCK += (landlock.Gap,)
_FUSE: tuple[type, ...] = (fuseconf.FuseSettings, fuseconf.Mode)
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("agentsh.enforce.policy", cls.__name__): cls for cls in _MODEL},
    ("agentsh.enforce.snapshot", "Snapshot"): Snapshot,
    **{("agentsh.enforce.landlock", cls.__name__): cls for cls in _LANDLOCK},
    **{("agentsh.enforce.fuseconf", cls.__name__): cls for cls in _FUSE},
    ("agentsh.enforce.filemon", "MonitorConfig"): filemon.MonitorConfig,
    ("re", "_compile"): _pattern,
    ("re", "compile"): _pattern,
}


# What a damaged or foreign pickle raises (UnpicklingError: a refused global).
_BAD_PICKLE: tuple[type[Exception], ...] = (UnpicklingError, EOFError, ValueError)
_BAD_PICKLE += (TypeError, AttributeError, IndexError, KeyError, OverflowError, RecursionError)
_BAD_PICKLE += _PURE_ERRORS


class _Unpickler(Unpickler):
    """Builds the policy model, snapshots and patterns; refuses every other global (no
    ``os.system``, no ``builtins.eval``): a planted entry cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnpicklingError(f"{module}.{name} is not allowed in a settings snapshot")
        return found


# --------------------------------------------------------------------------- store


def _store(cache_dir: Path, snap: Snapshot) -> None:
    """Write ``snap`` atomically (0600 temp file, rename(2)); best effort: on any OSError
    nothing is cached."""
    try:
        cache_dir.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        cache_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return
    dfd = _open_dir(cache_dir)
    if dfd is None:
        return
    tmp = f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        data = dumps(snap, protocol=-1)  # the highest protocol
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits; never added any
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
        finally:
            os.close(fd)
        os.replace(tmp, _entry_name(snap.key), src_dir_fd=dfd, dst_dir_fd=dfd)
        _prune(dfd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
    finally:
        os.close(dfd)


def _prune(dfd: int) -> None:
    """Over MAX_ENTRIES, remove the older half (by mtime; a cwd visited once ages out)."""
    names = os.listdir(dfd)
    if len(names) <= MAX_ENTRIES:
        return
    aged = []
    for name in names:
        try:
            aged.append((os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mtime_ns, name))
        except OSError:
            continue
    for _, name in sorted(aged)[: len(aged) - MAX_ENTRIES // 2]:
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            continue
