"""Landlock, the hard file boundary: inherited by every process of the governed tree, kept
across execve, binding on root, near-zero cost (ARCHITECTURE §1, §3 step 7; landlock(7)).

    probe() -> Support                           the kernel's ABI and errata; changes nothing
    settings(config) -> LandlockConfig           the config's ``landlock:`` section
    compile(policy, config, *, abi) -> Ruleset   pure: handled rights + (path, rights) rules
    apply(ruleset) -> Report                     child side, right before execve

What a ruleset grants (every handled right not granted is denied, with EACCES or EXDEV):

- Write rights (write or truncate a file; create or remove files, directories, sockets,
  fifos, symlinks; rename and link) only beneath the directories where ``file_rules`` let
  that operation through: a rule whose decision passes it (allow, audit, soft_delete; and
  approve when the notify monitor runs to ask) and whose glob is a directory (``/tmp/**``,
  ``${PROJECT_ROOT}/**``) or an exact path (``/dev/null``). The policy decides, as at run
  time: a directory gets an operation's rights when the operation passes on two probe
  paths beneath it, so a deny listed earlier (first match wins) is respected.
- Execute where the policy lets binaries run, decided the same way (the built-in file
  default allows execute: then everywhere), plus the system trees (/usr, /bin, /lib*, which
  nothing here makes writable), the frontend's interpreter and the config's allow_execute.
- Read everywhere ("/"), unless the config's allow_read narrows it. Read denies inside a
  readable tree (~/.ssh, /etc/shadow) are the notify file monitor's job (ARCHITECTURE §9).
- Never: device nodes (MAKE_CHAR, MAKE_BLOCK); writes below /proc or /sys — so a governed
  root process cannot write ``cgroup.procs`` to leave its cgroup (agentsh's cgroup work is
  done before this layer, by limits.apply, and by its watchdog outside the domain); writes
  below agentsh's own state (config, policies, audit store): such grants are dropped.
  /dev/fuse is writable only where a file rule allows writing it (agentsh's FUSE daemon
  opens it outside the domain). Mounts are refused to any process in a domain.

Nothing is dropped silently: what Landlock cannot express (a deny or approve inside a
granted tree, globs such as ``**/.env``, chmod/chown/stat) is listed in ``Ruleset.gaps`` for
the notify file monitor and ``detect``; rights an older ABI lacks are stripped and listed in
``Ruleset.degraded``; paths that do not exist are listed in ``Report.skipped``.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import posixpath
import re
import stat
import sys
from _ctypes import CFuncPtr
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from agentsh.enforce import filekinds, seccomp
from agentsh.enforce.engine import (
    FILE_OPERATIONS,
    READ_OPERATIONS,
    compile_paths,
    covers,
)
from agentsh.enforce.errors import LayerUnavailable, PolicyError
from agentsh.enforce.policy import Decision, FileRule, Policy
from agentsh.enforce.record import dataclass

if TYPE_CHECKING:  # enforce.config imports the YAML stack, which the cold path avoids
    from agentsh.enforce.config import Config

NR_CREATE_RULESET: Final = 444
NR_ADD_RULE: Final = 445
NR_RESTRICT_SELF: Final = 446
CREATE_RULESET_VERSION: Final = 0x1
CREATE_RULESET_ERRATA: Final = 0x2
RULE_PATH_BENEATH: Final = 1

FS_EXECUTE: Final = 0x1
FS_WRITE_FILE: Final = 0x2
FS_READ_FILE: Final = 0x4
FS_READ_DIR: Final = 0x8
FS_REMOVE_DIR: Final = 0x10
FS_REMOVE_FILE: Final = 0x20
FS_MAKE_CHAR: Final = 0x40
FS_MAKE_DIR: Final = 0x80
FS_MAKE_REG: Final = 0x100
FS_MAKE_SOCK: Final = 0x200
FS_MAKE_FIFO: Final = 0x400
FS_MAKE_BLOCK: Final = 0x800
FS_MAKE_SYM: Final = 0x1000
FS_REFER: Final = 0x2000  # ABI 2
FS_TRUNCATE: Final = 0x4000  # ABI 3
FS_IOCTL_DEV: Final = 0x8000  # ABI 5
NET_BIND_TCP: Final = 0x1  # ABI 4
NET_CONNECT_TCP: Final = 0x2  # ABI 4
RIGHT_NAMES: Final = {v: k[3:].lower() for k, v in dict(globals()).items() if k[:3] == "FS_"}

LATEST_ABI: Final = 7
FILE_RIGHTS: Final = 0xC007  # the only rights a rule on a non-directory may carry
READ: Final = FS_READ_FILE | FS_READ_DIR
WRITE: Final = 0xFFFF & ~(READ | FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK)
DEVICE: Final = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV
# Landlock's rights for each file-rule operation; chmod, stat, readlink have none.
OPERATION_RIGHTS: Final = {
    "write": FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV,
    "create": FS_MAKE_REG | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_SYM,
    "mkdir": FS_MAKE_DIR,
    "delete": FS_REMOVE_FILE,
    "rmdir": FS_REMOVE_DIR,
    "rename": FS_REFER,
    "execute": FS_EXECUTE,
    "read": FS_READ_FILE,
    "open": FS_READ_FILE,
    "list": FS_READ_DIR,
}
_GRANTED_BY_POLICY: Final = ("write", "create", "mkdir", "delete", "rmdir", "rename", "execute")
# Rights an older ABI lacks, and what that costs (Ruleset.degraded).
INTRODUCED: Final = (
    (FS_REFER, 2, "no REFER: every rename or hard link between directories fails with EXDEV "
     "(mv falls back to copy and delete; os.rename fails)"),
    (FS_TRUNCATE, 3, "no TRUNCATE: truncate(2) is not restricted, so a file outside the "
     "writable trees can be emptied (truncate -s0); the file monitor must trap truncate"),
    (FS_IOCTL_DEV, 5, "no IOCTL_DEV: ioctl(2) on device files is not restricted"),
)  # fmt: skip
# Kernel fixes reported by CREATE_RULESET_ERRATA: number -> (first ABI affected, the bug).
ERRATA: Final = {
    1: (4, "TCP rights also restricted SMC, MPTCP and SCTP sockets"),
    2: (6, "signal scoping blocked signals between threads of one process"),
    3: (1, "rename or link through a disconnected directory could widen access"),
}
SYSTEM_TREES: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_READ: Final = ("/etc", "/proc")
DEVICES: Final = filekinds.DEVICES  # what every program may use (filekinds.device_relief)
TERMINALS: Final = filekinds.TERMINALS  # and the tree /dev/pts
AGENTSH_STATE: Final = ("/etc/agentsh", "/var/lib/agentsh", "/var/cache/agentsh")
# procfs magic links: an open through them is checked on the file they point to, and a rule
# on them would name the frontend's own /proc entries, not its children's.
_MAGIC: Final = ("/proc", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr")
_GLOB_CHARS: Final = frozenset("*?[{\\")
_PROBE: Final = "agentsh-landlock-probe"
NOTES: Final = (
    "renaming or linking between trees with different rights fails with EXDEV "
    "(mv falls back to copy and delete)",
    "device nodes can be created nowhere; /proc and /sys (cgroups included) are read-only",
    "Landlock does not restrict chmod, chown, stat or connecting to a unix socket by path",
)

# --------------------------------------------------------------------------- syscalls


class RulesetAttr(ctypes.Structure):
    """struct landlock_ruleset_attr; the kernel reads the first ``size`` bytes."""

    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    )


class PathBeneathAttr(ctypes.Structure):
    """struct landlock_path_beneath_attr: packed, 12 bytes."""

    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _prototype(*argtypes: type) -> CFuncPtr:
    """libc's syscall(2) typed for one call: restype long, the given argtypes (integers as
    c_long, since the variadic syscall() reads each argument as a whole register)."""
    proto = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, *argtypes, use_errno=True)
    return proto(("syscall", ctypes.CDLL(None, use_errno=True)))


_L = ctypes.c_long
_create_ruleset = _prototype(ctypes.POINTER(RulesetAttr), ctypes.c_size_t, _L)
_add_rule = _prototype(_L, _L, ctypes.POINTER(PathBeneathAttr), _L)
_restrict_self = _prototype(_L, _L)


def _checked(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def create_ruleset(handled_fs: int, handled_net: int = 0) -> int:
    """landlock_create_ruleset(2): a ruleset fd (close-on-exec) handling these rights.

    Raises:
        OSError: EINVAL (a right this kernel lacks), ENOMSG (nothing handled), EOPNOTSUPP
            or ENOSYS (no Landlock).
    """
    attr, size = RulesetAttr(handled_fs, handled_net, 0), 16 if handled_net else 8
    return _checked(_create_ruleset(NR_CREATE_RULESET, attr, size, 0), "landlock_create_ruleset")


def _query(flag: int) -> int:
    """landlock_create_ruleset(2) with attr NULL, size 0: VERSION or ERRATA."""
    return _checked(_create_ruleset(NR_CREATE_RULESET, None, 0, flag), "landlock_create_ruleset")


def add_rule(ruleset_fd: int, parent_fd: int, access: int) -> None:
    """landlock_add_rule(2), LANDLOCK_RULE_PATH_BENEATH: ``access`` beneath ``parent_fd``.

    Raises:
        OSError: EINVAL (a right not handled, or a directory right on a file), ENOMSG
            (access 0), EBADF or EBADFD (a bad fd).
    """
    attr = PathBeneathAttr(access, parent_fd)
    _checked(_add_rule(NR_ADD_RULE, ruleset_fd, RULE_PATH_BENEATH, attr, 0), "landlock_add_rule")


def restrict_self(ruleset_fd: int) -> None:
    """landlock_restrict_self(2): enforce the ruleset on the calling thread, for good.

    Raises:
        OSError: EPERM without no_new_privs or CAP_SYS_ADMIN; E2BIG past 16 stacked domains.
    """
    _checked(_restrict_self(NR_RESTRICT_SELF, ruleset_fd, 0), "landlock_restrict_self")


@dataclass(frozen=True)
class Support:
    """What this kernel offers. ``abi`` 0 means no Landlock; ``reason`` then says why."""

    abi: int
    errata: int = 0
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.abi > 0

    def unfixed(self) -> tuple[str, ...]:
        """The errata that affect this ABI and that the kernel has not fixed."""
        return tuple(
            f"erratum {n}: {bug}"
            for n, (since, bug) in sorted(ERRATA.items())
            if since <= self.abi and not self.errata & (1 << (n - 1))
        )


def probe() -> Support:
    """The kernel's Landlock ABI and fixed errata (no ruleset is created)."""
    try:
        abi = _query(CREATE_RULESET_VERSION)
    except OSError as err:
        why = {
            errno.ENOSYS: "the kernel has no Landlock (CONFIG_SECURITY_LANDLOCK is off)",
            errno.EOPNOTSUPP: "Landlock is built but not enabled (add landlock to lsm=)",
        }.get(err.errno or 0, str(err))
        return Support(0, 0, why)
    try:
        bits = _query(CREATE_RULESET_ERRATA)
    except OSError:  # EINVAL: a kernel older than the errata query
        bits = 0
    return Support(abi, bits)


def fs_rights(abi: int) -> int:
    """Every filesystem right Landlock ABI ``abi`` knows (0xFFFF from ABI 5 on)."""
    return 0x1FFF | sum(right for right, since, _ in INTRODUCED if abi >= since)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class LandlockConfig:
    """The config's Landlock section. ``enabled`` False: the plan applies no ruleset.
    ``allow_read`` None: reads everywhere. The TCP switches are None when the config does
    not ask (TCP is then not handled here), False to deny every connect/bind, True to leave
    it alone. ``protected``: agentsh's own state, never granted for writing."""

    enabled: bool = True
    allow_execute: tuple[str, ...] = ()
    allow_read: tuple[str, ...] | None = None
    allow_write: tuple[str, ...] = ()
    connect_tcp: bool | None = None
    bind_tcp: bool | None = None
    protected: tuple[str, ...] = AGENTSH_STATE
    section: str = "landlock"


def _section(data: object, *keys: str) -> Mapping[str, object] | None:
    for key in keys:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data if isinstance(data, Mapping) else None


def _fail(cfg: Config, key: str, why: str) -> PolicyError:
    return PolicyError(str(cfg.path), cfg.lines.get(key), key, why)


def _flag(cfg: Config, data: Mapping[str, object], key: str) -> bool | None:
    value = data.get(key.rpartition(".")[2])
    if value is None or isinstance(value, bool):
        return value
    raise _fail(cfg, key, f"expected true or false, not {value!r}")


def _paths(cfg: Config, data: Mapping[str, object], key: str) -> tuple[str, ...] | None:
    value = data.get(key.rpartition(".")[2])
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail(cfg, key, "expected a list of absolute paths")
    for path in value:
        if not isinstance(path, str) or path[:1] != "/" or _glob(path):
            raise _fail(cfg, key, f"{path!r} is not an absolute path (name a directory or file)")
    return tuple(posixpath.normpath(p) for p in value)


def settings(cfg: Config) -> LandlockConfig:
    """The Landlock section of ``cfg``: top-level ``landlock:`` (the Go agentsh's place) or
    ``sandbox.landlock:``, each with an optional ``network:`` (allow_connect_tcp,
    allow_bind_tcp). Reads ``cfg.raw``; no I/O.

    Raises:
        PolicyError: both sections are present, or a value has the wrong type (names file,
            line and key).
    """
    state = {*AGENTSH_STATE, str(cfg.policies_dir), str(cfg.audit_path.parent)}
    found = [
        (name, data)
        for name, data in (("landlock", _section(cfg.raw, "landlock")),
                           ("sandbox.landlock", _section(cfg.raw, "sandbox", "landlock")))
        if data is not None
    ]  # fmt: skip
    if len(found) > 1:
        line = cfg.lines.get("sandbox.landlock")
        raise PolicyError(str(cfg.path), line, "sandbox.landlock", "Landlock is configured "
                          "twice (also at top-level landlock); keep one")  # fmt: skip
    if not found:
        return LandlockConfig(protected=tuple(sorted(state)))
    name, data = found[0]
    net = _section(data, "network") or {}
    return LandlockConfig(
        enabled=_flag(cfg, data, f"{name}.enabled") is not False,
        allow_execute=_paths(cfg, data, f"{name}.allow_execute") or (),
        allow_read=_paths(cfg, data, f"{name}.allow_read"),
        allow_write=_paths(cfg, data, f"{name}.allow_write") or (),
        connect_tcp=_flag(cfg, net, f"{name}.network.allow_connect_tcp"),
        bind_tcp=_flag(cfg, net, f"{name}.network.allow_bind_tcp"),
        protected=tuple(sorted(state)),
        section=name,
    )


# --------------------------------------------------------------------------- compile


@dataclass(frozen=True)
class Rule:
    """Grant ``access`` beneath ``path`` (``tree``), or on exactly ``path`` (then skipped if
    it is a directory). ``why`` says where the grant came from."""

    path: str
    access: int
    tree: bool
    why: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gap:
    """Where Landlock and the policy differ. ``monitor``: Landlock lets through what the
    policy restricts, so only the notify file monitor can enforce it. ``stricter``: Landlock
    denies what the policy allows (the operation fails)."""

    kind: str
    rule: str | None
    pattern: str
    operations: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Ruleset:
    """The compiled domain: built by :func:`compile`, enforced by :func:`apply`."""

    abi: int
    handled_fs: int
    handled_net: int
    rules: tuple[Rule, ...]
    gaps: tuple[Gap, ...] = ()
    degraded: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def rule(self, path: str) -> Rule | None:
        """The rule for exactly ``path``, if any."""
        return next((r for r in self.rules if r.path == path), None)


# path -> [access, tree, why...]: the rules while they are being built.
_Grants = dict[str, tuple[int, bool, tuple[str, ...]]]
_GRANTING: Final = frozenset({Decision.ALLOW, Decision.AUDIT, Decision.SOFT_DELETE})
_DUTY: Final = {Decision.AUDIT: "audit it", Decision.SOFT_DELETE: "make deletes recoverable"}


def _glob(path: str) -> bool:
    return bool(_GLOB_CHARS.intersection(path))


def _within(path: str, root: str) -> bool:
    return root in ("/", path) or path.startswith(root + "/")


def _bits(ops: Iterable[str]) -> int:
    return sum({OPERATION_RIGHTS.get(op, 0) for op in ops})


def _grant(grants: _Grants, path: str, access: int, tree: bool, why: str) -> None:
    if access:
        old, was_tree, whys = grants.get(path, (0, False, ()))
        grants[path] = (old | access, was_tree or tree, whys if why in whys else (*whys, why))


def _covers(grants: _Grants, path: str, rights: int) -> bool:
    """The grants that apply at ``path`` (trees above it, or its own) hold all ``rights``."""
    held = 0
    for p, (access, tree, _) in grants.items():
        if path == p or (tree and _within(path, p)):
            held |= access
    return not rights & ~held


def reduce_glob(glob: str) -> tuple[str, bool] | None:
    """``(directory, True)`` for ``D/**`` (or ``**``), ``(path, False)`` for a literal
    path, None for a glob no Landlock rule can express (``**/.env``, ``/home/*/.ssh``)."""
    body = glob.rstrip("/") or "/"
    if body in ("**", "/**"):
        return "/", True
    if body.endswith("/**") and body[:1] == "/" and not _glob(body[:-3]):
        return posixpath.normpath(body[:-3]), True
    return (posixpath.normpath(body), False) if body[:1] == "/" and not _glob(body) else None


@functools.cache
def _prefix(glob: str) -> str:
    """The literal directory every match of ``glob`` lies beneath ("/" for ``**/x``)."""
    parts = glob.split("/")[1:]
    literal = [p for p in parts[: next((i for i, p in enumerate(parts) if _glob(p)), None)]]
    return posixpath.normpath("/" + "/".join(literal))


@functools.cache
def _example(glob: str, paths: tuple[str, ...]) -> str | None:
    """A path ``glob`` (one of a rule's ``paths``) matches, or None if this simple guess
    fails: ``/proc/[0-9]*/environ`` -> ``/proc/0/environ``, ``**/.env`` -> ``/.env``."""
    parts = []
    for part in glob.strip("/").split("/"):
        one = re.sub(r"\[[!^]?(.)[^]]*\]", r"\1", part)  # [0-9] -> 0
        one = re.sub(r"\{([^,}]*)[^}]*\}", r"\1", one)  # {a,b} -> a
        if part != "**":
            parts.append(one.replace("*", "").replace("?", "x") or "x")
    path = "/" + "/".join(parts)
    return path if compile_paths(paths).fullmatch(path) else None


@dataclass
class _Judge:
    """:func:`decisions` for one policy, remembered per path (one compile asks often)."""

    policy: Policy
    seen: dict[str, dict[str, tuple[Decision, int]]]

    def at(self, path: str) -> dict[str, tuple[Decision, int]]:
        if path not in self.seen:
            self.seen[path] = decisions(self.policy, path)
        return self.seen[path]


def decisions(policy: Policy, path: str) -> dict[str, tuple[Decision, int]]:
    """For every file operation, the decision ``check_file`` reaches on ``path`` (normalised)
    and the index of the deciding rule (-1: the file default). One pass over the rules."""
    left, out = set(FILE_OPERATIONS), {}
    for index, rule in enumerate(policy.file_rules):
        ops = {op for op in left if covers(rule.operations, op)}
        if ops and compile_paths(rule.paths).fullmatch(path):
            out.update(dict.fromkeys(ops, (rule.decision, index)))
            left -= ops
    for op in left:
        fallback = Decision.ALLOW if op in READ_OPERATIONS else Decision.DENY
        out[op] = (policy.file_default or fallback, -1)
    return out


def _policy_rights(judge: _Judge, path: str, tree: bool, granting: frozenset[Decision]) -> int:
    """The rights of the operations the policy passes on ``path`` — for a tree, on two
    probe paths beneath it, so a rule that covers the whole tree decides, as at run time."""
    base = path.rstrip("/")
    probes = (f"{base}/{_PROBE}", f"{base}/{_PROBE}/{_PROBE}") if tree else (path,)
    found = [judge.at(p) for p in probes]
    return _bits(op for op in _GRANTED_BY_POLICY if all(d[op][0] in granting for d in found))


def _operations(rule: FileRule, among: Iterable[str] = FILE_OPERATIONS) -> tuple[str, ...]:
    return tuple(op for op in sorted(among) if op in rule.operations or "*" in rule.operations)


def _from_policy(judge: _Judge, granting: frozenset[Decision], grants: _Grants) -> list[Gap]:
    """Grant what the policy passes on "/" (its file default) and on each path a passing
    rule names. Returns its globs as candidate ``stricter`` gaps (kept if not covered)."""
    _grant(grants, "/", _policy_rights(judge, "/", True, granting), True, "policy file default")
    pending: list[Gap] = []
    for rule in judge.policy.file_rules:
        ops = _operations(rule, _GRANTED_BY_POLICY)
        if rule.decision not in granting or not ops:
            continue
        for glob in rule.paths:
            reduced = reduce_glob(glob)
            if reduced is None:
                why = "Landlock cannot express this glob: granted only inside a granted tree"
            elif any(_within(reduced[0], m) for m in _MAGIC):
                continue  # opened through a magic link: checked on the file it names
            else:
                path, tree = reduced
                access = _policy_rights(judge, path, tree, granting)
                _grant(grants, path, access, tree, f"policy rule {rule.name}")
                why = "an earlier rule decides first here"
            pending.append(Gap("stricter", rule.name, glob, ops, why))
    return pending


def _from_system(config: LandlockConfig, runtime: Sequence[str], grants: _Grants) -> None:
    """What the loader and common tools need; the config's grants; then reads."""
    for path in (*SYSTEM_TREES, *runtime):
        _grant(grants, path, READ | FS_EXECUTE, True, "system: read and execute")
    for path in SYSTEM_READ:
        _grant(grants, path, READ, True, "system: read")
    for path in (*DEVICES, *TERMINALS):
        _grant(grants, path, DEVICE, False, "system: device")
    _grant(grants, "/dev/pts", DEVICE | FS_READ_DIR, True, "system: terminals")
    for path in config.allow_execute:
        _grant(grants, path, READ | FS_EXECUTE, True, f"config {config.section}.allow_execute")
    for path in config.allow_write:
        _grant(grants, path, READ | WRITE, True, f"config {config.section}.allow_write")
    if config.allow_read is None:
        _grant(grants, "/", READ, True, "reads everywhere")
        return
    for path in config.allow_read:
        _grant(grants, path, READ, True, f"config {config.section}.allow_read")
    for path, (access, tree, why) in grants.items():  # what is writable or runs is read too
        grants[path] = (access | (READ if tree else FS_READ_FILE), tree, why)


def _protect(config: LandlockConfig, grants: _Grants) -> list[Gap]:
    """Drop write rights at or below agentsh's state; report a writable tree above it."""
    gaps: list[Gap] = []
    for path, (access, tree, why) in list(grants.items()):
        inside = [s for s in config.protected if _within(path, s)]
        above = [s for s in config.protected if tree and _within(s, path) and s != path]
        if access & WRITE and inside:
            grants[path] = (access & ~WRITE, tree, why)
            gaps.append(Gap("stricter", None, path, ("write",), f"agentsh's state {inside[0]}"))
        elif access & WRITE and above:
            why_gap = f"a writable tree ({path}) covers agentsh's state: only the monitor guards it"
            gaps += [Gap("monitor", None, s, ("write",), why_gap) for s in above]
    return gaps


def _samples(glob: str, paths: tuple[str, ...], grants: _Grants) -> Iterable[tuple[str, int]]:
    """For each grant where ``glob`` (one of a rule's ``paths``) may match, with its
    rights: a path it matches there, or "" when that cannot be told."""
    prefix, example = _prefix(glob), _example(glob, paths)
    whole = glob.rstrip("/") in ("**", posixpath.join(prefix, "**"))
    for path, (access, tree, _) in grants.items():
        if not tree:
            if compile_paths(paths).fullmatch(path):
                yield path, access
        elif whole and _within(path, prefix):
            yield posixpath.join(path, _PROBE), access
        elif example and glob.startswith("**/"):
            yield path.rstrip("/") + example, access
        elif example and _within(example, path):
            yield example, access
        elif example is None and (_within(path, prefix) or _within(prefix, path)):
            yield "", access


def _overrides(judge: _Judge, index: int, glob: str, grants: _Grants) -> tuple[str, ...]:
    """The operations of rule ``index`` that decide somewhere Landlock grants them."""
    rule, found = judge.policy.file_rules[index], set()
    for sample, access in _samples(glob, rule.paths, grants):
        decided = judge.at(sample) if sample else {}
        found |= {
            op
            for op in _operations(rule, OPERATION_RIGHTS)
            if access & OPERATION_RIGHTS[op] and decided.get(op, (None, index))[1] == index
        }  # "" (cannot tell): assume the rule decides there
    return tuple(sorted(found))


def _gaps(judge: _Judge, grants: _Grants, granting: frozenset[Decision]) -> list[Gap]:
    """The policy's restrictions that Landlock does not enforce: the monitor's list."""
    gaps: list[Gap] = []
    for index, rule in enumerate(judge.policy.file_rules):
        if rule.decision is Decision.ALLOW:
            continue
        ops, loose = _operations(rule), _operations(rule, ("chmod", "stat", "readlink"))
        for glob in rule.paths:
            if rule.decision in granting:
                duty = _DUTY.get(rule.decision, "ask")
                why = f"{rule.decision.value}: the file monitor must {duty}"
                gaps.append(Gap("monitor", rule.name, glob, ops, why))
            elif inside := _overrides(judge, index, glob, grants):
                verb = "ask" if rule.decision is Decision.APPROVE else "deny"
                why = f"Landlock grants these here: only the file monitor can {verb}"
                gaps.append(Gap("monitor", rule.name, glob, tuple(sorted({*inside, *loose})), why))
            elif rule.decision is Decision.APPROVE:
                why = "approve needs the file monitor to ask; without it Landlock denies"
                gaps.append(Gap("stricter", rule.name, glob, ops, why))
            elif loose:
                why = "Landlock does not govern chmod, chown or stat"
                gaps.append(Gap("monitor", rule.name, glob, loose, why))
    return gaps


def _finish(grants: _Grants, handled: int) -> tuple[Rule, ...]:
    """Mask to the handled rights (file rights for exact paths) and drop what "/" already
    grants. Only "/" is trusted to enclose: another tree may be reached through symlinks."""
    inherited = grants.get("/", (0, True, ()))[0]
    rules = []
    for path, (access, tree, why) in sorted(grants.items()):
        mask = handled & (~0 if tree else FILE_RIGHTS) & (~0 if path == "/" else ~inherited)
        if access & mask:
            rules.append(Rule(path, access & mask, tree, why))
    return tuple(rules)


def _network(config: LandlockConfig, abi: int) -> tuple[int, list[str]]:
    """handled_access_net: the TCP rights the config denies (no port is then granted)."""
    denied = (NET_CONNECT_TCP if config.connect_tcp is False else 0) | (
        NET_BIND_TCP if config.bind_tcp is False else 0
    )
    if denied and abi < 4:
        return 0, [f"ABI {abi}: no TCP rights (ABI 4): {config.section}.network is not enforced"]
    return denied, []


def compile(
    policy: Policy,
    config: LandlockConfig,
    *,
    abi: int,
    runtime: Sequence[str] = (),
    monitor: bool = False,
    analyse: bool = True,
) -> Ruleset:
    """Compile ``policy``'s file_rules and ``config`` into a ruleset for Landlock ``abi``.

    Pure: no file, environment or kernel access. ``runtime``: trees that must stay readable
    and executable (see :func:`runtime_paths`). ``monitor``: the notify file monitor runs
    and asks for ``approve`` rules, so Landlock lets those operations through; without it
    they stay denied (approve without an approver is a deny). ``analyse`` False leaves out
    the policy's restrictions inside granted trees from ``gaps`` (a few ms; the frontend's
    cold path needs only the rules; ``detect`` asks for them). A kernel ABI above
    :data:`LATEST_ABI` is compiled as that ABI (and said so in ``degraded``).

    Raises:
        LayerUnavailable: ``abi`` < 1 (no Landlock).
    """
    if abi < 1:
        raise LayerUnavailable("Landlock: this kernel has no Landlock (ABI 0)")
    known = min(abi, LATEST_ABI)
    granting = _GRANTING | ({Decision.APPROVE} if monitor else frozenset())
    grants: _Grants = {}
    judge = _Judge(policy, {})
    pending = _from_policy(judge, granting, grants)
    _from_system(config, runtime, grants)
    gaps = _protect(config, grants) + (_gaps(judge, grants, granting) if analyse else [])
    gaps += [g for g in pending if not _covers(grants, _prefix(g.pattern), _bits(g.operations))]
    gaps += [
        Gap("stricter", None, path, ("rename",), "Landlock's rename removes the source: "
            "renames fail here (no delete right), git and editors' atomic saves with them")
        for path, (access, tree, _) in sorted(grants.items())
        if tree and access & FS_REFER and not _covers(grants, path, FS_REMOVE_FILE)
    ]  # fmt: skip
    gaps += [
        Gap("stricter", None, path, ("create", "rename"), "only the file itself is writable: "
            "replacing it (write a temporary file, then rename) fails")
        for path, (access, tree, _) in sorted(grants.items())
        if not tree and access & FS_WRITE_FILE and not _within(path, "/dev")
        and not _covers(grants, posixpath.dirname(path), FS_MAKE_REG)
    ]  # fmt: skip
    handled_net, net_notes = _network(config, known)
    degraded = [f"ABI {abi}: {cost}" for _, since, cost in INTRODUCED if known < since]
    if abi > LATEST_ABI:
        degraded.append(f"kernel ABI {abi}: rights newer than ABI {LATEST_ABI} are not handled")
    return Ruleset(
        abi=known,
        handled_fs=fs_rights(known),
        handled_net=handled_net,
        rules=_finish(grants, fs_rights(known)),
        gaps=tuple(dict.fromkeys(gaps)),
        degraded=tuple(degraded + net_notes),
        notes=NOTES if known >= 2 else NOTES[1:],
    )


def runtime_paths() -> tuple[str, ...]:
    """The frontend's interpreter trees (venv, base installation, the real executable's
    directory): they stay readable and executable so ``agentsh`` runs inside the tree."""
    trees = [sys.prefix, sys.base_prefix]
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    trees += [] if any(_within(exe_dir, t) for t in trees) else [exe_dir]
    return tuple(dict.fromkeys(t for t in trees if t != "/"))


def describe(rights: int) -> str:
    """``rights`` as names (``execute|read_file``), for reports and ``detect``."""
    return "|".join(name for bit, name in RIGHT_NAMES.items() if rights & bit) or "none"


def explain(ruleset: Ruleset) -> tuple[str, ...]:
    """Human lines: the rules, what the ABI costs, what is left to the monitor."""
    head = f"Landlock ABI {ruleset.abi}: fs {ruleset.handled_fs:#x}, net {ruleset.handled_net:#x}"
    return (
        head,
        *(f"  {posixpath.join(r.path, '**') if r.tree else r.path}: {describe(r.access)}"
          for r in ruleset.rules),
        *(f"  degraded: {d}" for d in ruleset.degraded),
        *(f"  {g.kind}: {g.pattern} [{','.join(g.operations)}] ({g.rule}): {g.why}"
          for g in ruleset.gaps),
    )  # fmt: skip


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class Report:
    """What :func:`apply` enforced: the rules added (rights as given to the kernel), the
    paths skipped and why, and whether it had to set no_new_privs itself."""

    ruleset: Ruleset
    added: tuple[Rule, ...]
    skipped: tuple[tuple[str, str], ...]
    set_no_new_privs: bool


def _opened(rule: Rule, writable: Sequence[str]) -> tuple[int | None, str]:
    """An O_PATH fd for ``rule.path``, or None and why not. A path beneath a tree the
    ruleset makes writable must resolve to itself: the agent could have swapped a part of
    it for a symlink (to /etc, say). Checked on the fd, so the check cannot race."""
    try:
        parent = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as err:  # ENOENT, ENOTDIR, EACCES, ELOOP: nothing there to grant
        return None, err.strerror or str(err)
    if any(_within(rule.path, w) and rule.path != w for w in writable):
        try:
            real = os.readlink(f"/proc/self/fd/{parent}")
        except OSError as err:
            real = f"(unknown: {err.strerror})"
        if real != rule.path:
            os.close(parent)
            return None, f"resolves to {real} inside a writable tree: not granted"
    return parent, ""


def _add_rules(fd: int, rules: Sequence[Rule]) -> tuple[list[Rule], list[tuple[str, str]]]:
    added: list[Rule] = []
    skipped: list[tuple[str, str]] = []
    writable = [r.path for r in rules if r.tree and r.access & WRITE]
    for rule in rules:
        parent, why = _opened(rule, writable)
        if parent is None:
            skipped.append((rule.path, why))
            continue
        try:
            is_dir = stat.S_ISDIR(os.fstat(parent).st_mode)
            access = rule.access if is_dir else rule.access & FILE_RIGHTS
            if is_dir and not rule.tree:
                skipped.append((rule.path, "is a directory; the rule names only that path"))
            elif not access:
                skipped.append((rule.path, "not a directory; none of its rights apply"))
            else:
                add_rule(fd, parent, access)
                added.append(Rule(rule.path, access, rule.tree, rule.why))
        finally:
            os.close(parent)
    return added, skipped


def apply(ruleset: Ruleset) -> Report:
    """Enforce ``ruleset`` on the calling thread and everything it execs: child side, right
    before execve, on the thread that execs (Landlock restricts one thread).

    Order: (1) create the ruleset; (2) open each path O_PATH|O_CLOEXEC and add its rule (a
    missing path is skipped and reported, and so is a path beneath a writable tree that
    resolves elsewhere; a file named by a tree rule gets file rights only); (3)
    restrict_self — it needs no_new_privs or CAP_SYS_ADMIN: tried as is, and on EPERM
    no_new_privs is set here and it is tried again (the plan sets no_new_privs right after
    this layer anyway); (4) close the ruleset fd. Nothing is enforced before (3); nothing
    can be undone after it.

    Raises:
        LayerUnavailable: no Landlock, a kernel ABI below the ruleset's, or the kernel
            refused the ruleset, a rule or the restriction (then nothing was enforced).
    """
    support = probe()
    if support.abi < ruleset.abi:
        why = support.reason or f"kernel ABI {support.abi}, ruleset built for ABI {ruleset.abi}"
        raise LayerUnavailable(f"Landlock unavailable: {why}")
    nnp = False
    try:
        fd = create_ruleset(ruleset.handled_fs, ruleset.handled_net)
        try:
            added, skipped = _add_rules(fd, ruleset.rules)
            try:
                restrict_self(fd)
            except PermissionError:
                seccomp.set_no_new_privs()
                nnp = True
                restrict_self(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise LayerUnavailable(f"Landlock refused the ruleset: {err}") from err
    return Report(ruleset, tuple(added), tuple(skipped), nnp)
