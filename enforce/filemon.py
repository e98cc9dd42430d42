"""The notify file monitor, pure half: its config section and the plan of which syscalls
the filter hands to the supervisor (ARCHITECTURE §1 "file policy", §9 last bullet, §11).

    settings(config) -> MonitorConfig                     ``sandbox.seccomp.file_monitor``
    plan(policy, config, *, landlock, protected) -> Plan  what to trap (None: nothing)
    open_operations(flags, ...) -> tuple[str, ...]        an open's file-rule operations
    shields(policy, path) -> FileRule | None              moving ``path`` would unprotect

Landlock is the hard boundary for writes and execution; the monitor enforces what it
cannot express: denies (and ``approve``, which is a deny with nobody to ask) inside a
granted tree, read rules, ``audit`` decisions, chmod/chown, and agentsh's own state under a
writable tree. Every trapped syscall costs a round trip to the Python supervisor (~100 µs),
so the plan traps a family only when some rule needs it, and routes ``open``/``openat`` by
their flags in the filter itself, so that a policy restricting only writes never stops a
read. ``enforce.fileguard`` is the handler that answers what the plan traps.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from agentsh.enforce.bpf import ArgRule, Route
from agentsh.enforce.engine import FILE_OPERATIONS, READ_OPERATIONS, path_glob_source
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.landlock import OPERATION_RIGHTS
from agentsh.enforce.policy import Decision, FileRule, Policy
from agentsh.enforce.record import dataclass

if TYPE_CHECKING:  # enforce.config imports the YAML stack, which the cold path avoids
    from agentsh.enforce.config import Config
    from agentsh.enforce.landlock import Rule as LandlockRule
    from agentsh.enforce.landlock import Ruleset

# x86_64 syscall numbers.
NR_OPEN, NR_CREAT, NR_OPENAT, NR_OPENAT2 = 2, 85, 257, 437
OPENS: Final = (NR_OPEN, NR_CREAT, NR_OPENAT, NR_OPENAT2)

# Families of path syscalls besides open: name -> (file-rule operations, syscalls).
FAMILIES: Final[Mapping[str, tuple[tuple[str, ...], tuple[int, ...]]]] = {
    "delete": (("delete", "rmdir"), (87, 84, 263)),  # unlink, rmdir, unlinkat
    "rename": (("rename",), (82, 264, 316)),  # rename, renameat, renameat2
    "link": (("create",), (86, 265)),  # link, linkat
    "symlink": (("create",), (88, 266)),  # symlink, symlinkat
    "mkdir": (("mkdir",), (83, 258)),  # mkdir, mkdirat
    "truncate": (("write",), (76,)),  # truncate
    "chmod": (("chmod",), (90, 91, 268, 452)),  # chmod, fchmod, fchmodat, fchmodat2
    "chown": (("chmod",), (92, 93, 94, 260)),  # chown, fchown, lchown, fchownat
}
METADATA: Final = frozenset({"chmod", "chown"})
READ_OPEN_OPS: Final = ("read", "open", "list", "stat")
WRITE_OPEN_OPS: Final = ("write", "create")

# Open flags (x86_64 <asm-generic/fcntl.h>). A "writing" open is any whose flags have a
# bit of WRITE_FLAGS: O_WRONLY/O_RDWR (and the ioctl-only mode 3), O_CREAT, O_TRUNC,
# O_TMPFILE. The filter routes open(2) and openat(2) on exactly this mask.
O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC = 0o3, 0o100, 0o200, 0o1000
O_DIRECTORY, O_NOFOLLOW, O_PATH, O_TMPFILE_BIT = 0o200000, 0o400000, 0o10000000, 0o20000000
WRITE_FLAGS: Final = O_ACCMODE | O_CREAT | O_TRUNC | O_TMPFILE_BIT

# Landlock's rights per file-rule operation ("execute" is not the monitor's business).
_RIGHTS: Final = {op: r for op, r in OPERATION_RIGHTS.items() if op != "execute"}
_WRITE_RIGHTS: Final = sum(_RIGHTS[op] for op in ("write", "create", "mkdir", "delete", "rmdir"))
_PASSING: Final = frozenset({Decision.ALLOW})
_GLOB_CHARS: Final = frozenset("*?[{\\")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MonitorConfig:
    """``sandbox.seccomp.file_monitor`` (the Go agentsh's keys).

    Attributes:
        enabled: run the monitor at all (default on: it is what enforces read denies such
            as ``~/.ssh`` and denies inside trees Landlock grants).
        enforce: ``enforce_without_fuse``: refuse what the policy denies; False only
            audits (the refusal becomes an ``audit`` event and the call proceeds).
        metadata: ``intercept_metadata``: trap chmod and chown when rules restrict them.
        write_only_opens: trap only opens that may write; read rules are then not
            enforced (the plan says so in its notes).
        emulate_opens: ``openat_emulation``: the supervisor carries out every allowed
            call itself (an open's fd is injected with SECCOMP_IOCTL_NOTIF_ADDFD), so
            what was checked is what the call acts on (``enforce.fileguard``).
        block_io_uring: io_uring would let file I/O bypass the monitor; the plan asks for
            it to be refused (``Plan.needs_io_uring_block``).
    """

    enabled: bool = True
    enforce: bool = True
    metadata: bool = True
    write_only_opens: bool = False
    emulate_opens: bool = True
    block_io_uring: bool = True


_KEYS: Final = {
    "enabled": "enabled",
    "enforce_without_fuse": "enforce",
    "intercept_metadata": "metadata",
    "write_only_opens": "write_only_opens",
    "openat_emulation": "emulate_opens",
    "block_io_uring": "block_io_uring",
}
SECTION: Final = "sandbox.seccomp.file_monitor"


def _ptrace_traces_files(cfg: Config) -> bool:
    """``sandbox.ptrace.enabled`` and ``sandbox.ptrace.trace.file`` are both true."""
    ptrace: object = cfg.raw
    for key in ("sandbox", "ptrace"):
        ptrace = ptrace.get(key) if isinstance(ptrace, Mapping) else None
    if not isinstance(ptrace, Mapping) or ptrace.get("enabled") is not True:
        return False
    trace = ptrace.get("trace")
    return isinstance(trace, Mapping) and trace.get("file") is True


def _fail(cfg: Config, key: str, why: str) -> PolicyError:
    return PolicyError(str(cfg.path), cfg.lines.get(key), key, why)


def settings(cfg: Config) -> MonitorConfig:
    """The ``sandbox.seccomp.file_monitor`` section of ``cfg`` (reads ``cfg.raw``; no I/O).
    Absent keys keep :class:`MonitorConfig`'s defaults; ``null`` means absent. With
    ``sandbox.ptrace.enabled`` and ``sandbox.ptrace.trace.file`` the monitor runs even when
    the section says ``enabled: false`` (the deno seed: files are traced by ptrace there).

    Raises:
        PolicyError: the section is not a mapping, a key is unknown, or a value is not
            true/false (names file, line and key).
    """
    data: object = cfg.raw
    for key in SECTION.split("."):
        data = data.get(key) if isinstance(data, Mapping) else None
    if data is None:
        return MonitorConfig()
    if _ptrace_traces_files(cfg):
        # The Go agentsh monitors files either way (sandbox.ptrace.trace.file: its tracer
        # does it); here both backends carry the same monitor, so that asks for it too.
        data = {**data, "enabled": True} if isinstance(data, Mapping) else data
    if not isinstance(data, Mapping):
        raise _fail(cfg, SECTION, "expected a mapping of file monitor settings")
    values: dict[str, bool] = {}
    for key, value in data.items():
        where = f"{SECTION}.{key}"
        if key not in _KEYS:
            raise _fail(cfg, where, f"unknown key (known: {', '.join(sorted(_KEYS))})")
        if value is None:
            continue
        if not isinstance(value, bool):
            raise _fail(cfg, where, f"expected true or false, not {value!r}")
        values[_KEYS[key]] = value
    return MonitorConfig(**values)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """What the monitor traps and how it answers (see :func:`plan`).

    Attributes:
        policy: the policy whose file_rules decide.
        read_opens: read-only opens (``open``/``openat`` without WRITE_FLAGS) are trapped.
        write_opens: opens that may write or create are trapped.
        families: the other trapped families (keys of :data:`FAMILIES`).
        protected: agentsh's state (config, policies, audit store): never writable.
        enforce: refuse denied calls (False: audit them only).
        emulate: allowed opens are carried out by the supervisor and injected.
        notes: what the plan leaves unenforced, and why (for ``detect`` and the log).
        trash: the trash store's root: a delete a ``soft_delete`` rule decides is carried
            out by moving the entry there (``enforce.trash``) and answering success. None:
            soft deletes are the FUSE view's (the monitor lets the call run).
        refuse_deletes: trees where deletes (unlink, rmdir, a rename over an entry) are
            refused: soft delete was asked for and cannot be had (``fuseconf``'s
            ``deny_deletes``).
        audit_deletes: trees where deletes happen but each is recorded (``fuseconf``'s
            ``allow_audited``: soft delete asked for, FUSE missing, the config accepts it).
        landlock: the Landlock ruleset the tree runs under (None: none). Besides its
            file rules, a domain keeps the tree from inspecting processes outside it
            (``enforce.standin``); what the supervisor opens for the tree is put to its
            rules first (``enforce.grants``).
    """

    policy: Policy
    read_opens: bool
    write_opens: bool
    families: frozenset[str]
    protected: tuple[str, ...] = ()
    enforce: bool = True
    emulate: bool = True
    notes: tuple[str, ...] = ()
    trash: str | None = None
    refuse_deletes: tuple[str, ...] = ()
    audit_deletes: tuple[str, ...] = ()
    landlock: Ruleset | None = None

    @property
    def landlocked(self) -> bool:
        """The tree runs in a Landlock domain."""
        return self.landlock is not None

    @property
    def reads_narrowed(self) -> bool:
        """Landlock lets the tree read only some trees."""
        return _reads_narrowed(self.landlock)

    @property
    def syscalls(self) -> frozenset[int]:
        """Every syscall number the handler may receive."""
        nrs = {nr for name in self.families for nr in FAMILIES[name][1]}
        if self.read_opens or self.write_opens:
            nrs.update(OPENS)
        return frozenset(nrs)

    def routes(self) -> tuple[tuple[int, ...], tuple[ArgRule, ...]]:
        """``(notify, args)`` for ``bpf.FilterSpec``: families and, when both open kinds
        are trapped, every open are plain notify; otherwise ``open``/``openat`` are routed
        on WRITE_FLAGS (creat always writes; openat2 keeps its flags in memory: trapped)."""
        notify = sorted(nr for name in self.families for nr in FAMILIES[name][1])
        args: list[ArgRule] = []
        if self.read_opens and self.write_opens:
            notify += OPENS
        elif self.read_opens or self.write_opens:
            writes: Route = "notify" if self.write_opens else "allow"
            reads: Route = "notify" if self.read_opens else "allow"
            args.append(ArgRule(NR_OPEN, 1, (), writes, reads, mask=WRITE_FLAGS))
            args.append(ArgRule(NR_OPENAT, 2, (), writes, reads, mask=WRITE_FLAGS))
            notify += [NR_OPENAT2] + ([NR_CREAT] if self.write_opens else [])
        return tuple(notify), tuple(args)

    def describe(self) -> tuple[str, ...]:
        """One line per trapped kind, for ``detect`` and reports."""
        opens = [
            k
            for k, on in (("read opens", self.read_opens), ("write opens", self.write_opens))
            if on
        ]
        lines = [*opens, *sorted(self.families)]
        return tuple(lines) + self.notes


def _ops(rule: FileRule) -> frozenset[str]:
    return FILE_OPERATIONS if "*" in rule.operations else frozenset(rule.operations)


def _literal_prefix(glob: str) -> str:
    """The literal directory every match of ``glob`` lies beneath ("/" for ``**/x``)."""
    parts = glob.split("/")[1:]
    cut = next((i for i, p in enumerate(parts) if _GLOB_CHARS.intersection(p)), len(parts))
    return posixpath.normpath("/" + "/".join(parts[:cut]))


def _within(path: str, root: str) -> bool:
    return root in ("/", path) or path.startswith(root + "/")


class _Reach:
    """Where Landlock lets operations through, as far as each glob is concerned: per
    glob (memoised for one plan), the rights of the grants under which it can match."""

    def __init__(self, landlock: Ruleset | None) -> None:
        self.landlock = landlock
        self.memo: dict[str, int] = {}

    def granted(self, glob: str, ops: Iterable[str]) -> bool:
        """Landlock may let ``ops`` through somewhere ``glob`` matches (so only the
        monitor can refuse them there). Without Landlock, or for operations it does not
        govern (chmod, stat) or does not handle at this ABI: everywhere."""
        rights = 0
        for op in ops:
            if not _RIGHTS.get(op, 0):
                return True
            rights |= _RIGHTS[op]
        if self.landlock is None or rights & ~self.landlock.handled_fs:
            return True
        if glob not in self.memo:
            self.memo[glob] = self._rights(glob, self.landlock.rules)
        return bool(rights & self.memo[glob])

    @staticmethod
    def _rights(glob: str, rules: Sequence[LandlockRule]) -> int:
        shapes, prefix, found = _shapes((glob,)), _literal_prefix(glob), 0
        for rule in rules:
            # Cheap first: a glob can only match where its literal directory and the
            # grant's path lie one within the other.
            if not rule.access & ~found or not (
                _within(rule.path, prefix) or _within(prefix, rule.path)
            ):
                continue
            if rule.tree:
                hit = any(_meets(shape, rule.path) for shape in shapes)
            else:
                hit = re.fullmatch(path_glob_source(glob), rule.path, re.DOTALL) is not None
            found |= rule.access if hit else 0
        return found


def _needed(
    policy: Policy, ops: frozenset[str], reach: _Reach, passing: frozenset[Decision] = _PASSING
) -> str | None:
    """Why ``ops`` must be trapped (the first rule or default that needs it), or None."""
    left = set(ops)  # operations that can still reach the file default
    for rule in policy.file_rules:
        hit = ops & _ops(rule)
        if hit and {g.rstrip("/") for g in rule.paths} & {"**", "/**"}:
            left -= hit  # this rule matches every path: nothing after it decides these
        if rule.decision in passing or not hit:
            continue
        if any(reach.granted(glob, hit) for glob in rule.paths):
            return f"rule {rule.name}"
    for op in sorted(left):
        default = policy.file_default or (
            Decision.ALLOW if op in READ_OPERATIONS else Decision.DENY
        )
        if default not in passing and _default_open(reach.landlock, op):
            return f"the file default ({default.value} {op})"
    return None


def _default_open(landlock: Ruleset | None, op: str) -> bool:
    """Landlock does not carry out a restrictive file default for ``op``: there is no
    ruleset, it does not govern or handle ``op``, or (reads) it grants them everywhere.
    Writes it grants only where the policy passes them, which is the default's meaning."""
    rights = _RIGHTS.get(op, 0)
    if landlock is None or not rights or rights & ~landlock.handled_fs:
        return True
    return op in READ_OPERATIONS and not _reads_narrowed(landlock)


def _state_exposed(landlock: Ruleset | None, protected: Sequence[str]) -> bool:
    """A tree Landlock makes writable encloses agentsh's state (or there is no Landlock)."""
    if landlock is None:
        return bool(protected)
    write = _RIGHTS["write"] | _RIGHTS["create"] | _RIGHTS["delete"] | _RIGHTS["rename"]
    return any(
        r.tree and r.access & write and _within(s, r.path)
        for r in landlock.rules
        for s in protected
    )


def _reads_narrowed(landlock: Ruleset | None) -> bool:
    """Landlock restricts reads somewhere: what the supervisor opens for the tree
    (outside the domain) must then be put to its read rules too (``enforce.grants``)."""
    if landlock is None or not landlock.handled_fs & (_RIGHTS["read"] | _RIGHTS["list"]):
        return False
    root = landlock.rule("/")
    return root is None or root.access & 0xC != 0xC


def plan(
    policy: Policy,
    config: MonitorConfig,
    *,
    landlock: Ruleset | None,
    protected: Sequence[str] = (),
    trash: str | None = None,
    refuse_deletes: Sequence[str] = (),
    audit_deletes: Sequence[str] = (),
) -> Plan | None:
    """Decide what to trap for ``policy`` when Landlock applies ``landlock`` (None: no
    Landlock ruleset, so the monitor is the only file boundary). Pure.

    A family is trapped when a non-allow rule restricts its operations somewhere Landlock
    lets them through (or for ``audit``), or the file default restricts them and Landlock
    does not. When Landlock restricts writes, every write family (opens that may write,
    delete, rename, link, symlink, mkdir, truncate) is trapped too, so that a write
    Landlock would refuse silently is refused — and audited with its rule — here first.
    Moving or linking a protected file out of its place launders it, so rename
    and link are trapped whenever any open is. ``protected`` (agentsh's state) adds the
    write families when a writable tree covers it. ``trash`` (the trash root: soft deletes
    are emulated), ``refuse_deletes`` and ``audit_deletes`` (trees) trap the delete family
    and rename.

    Returns:
        The plan, or None when the monitor is disabled or nothing needs trapping.
    """
    if not config.enabled:
        return None
    notes: list[str] = []
    reach = _Reach(landlock)
    reads = _needed(policy, frozenset(READ_OPEN_OPS), reach) is not None
    if reads and config.write_only_opens:
        notes.append(f"{SECTION}.write_only_opens: read rules are not enforced")
        reads = False
    exposed = _state_exposed(landlock, protected)
    # Landlock refuses writes outside its writable trees without a word; trapped, each
    # such call is refused here first, with the rule on stderr and in the audit log.
    audited = landlock is not None and bool(landlock.handled_fs & _WRITE_RIGHTS)
    writes = exposed or audited or _needed(policy, frozenset(WRITE_OPEN_OPS), reach) is not None
    # Without a trash store soft deletes are the FUSE view's: the monitor lets them run.
    passing = _PASSING | ({Decision.SOFT_DELETE} if trash is None else set())
    families = {
        name
        for name, (ops, _) in FAMILIES.items()
        if (exposed and name not in METADATA) or _needed(policy, frozenset(ops), reach, passing)
    }
    if not config.metadata and families & METADATA:
        notes.append(f"{SECTION}.intercept_metadata is off: chmod/chown rules are not enforced")
        families -= METADATA
    if audited:
        families |= set(FAMILIES) - METADATA
    if reads or writes:
        families |= {"rename", "link"}
    if refuse_deletes or audit_deletes:
        families |= {"delete", "rename"}
    if not (reads or writes or families):
        return None
    emulate = config.emulate_opens
    if not config.enforce:
        notes.append(f"{SECTION}.enforce_without_fuse is off: refusals are only audited")
    return Plan(
        policy, reads, writes, frozenset(families), tuple(protected), config.enforce, emulate,
        tuple(notes), trash, tuple(refuse_deletes), tuple(audit_deletes), landlock,
    )  # fmt: skip


# --------------------------------------------------------------------------- decoding


def open_operations(flags: int, *, directory: bool, exists: bool) -> tuple[str, ...]:
    """The file-rule operations an open with ``flags`` performs on its target (checked
    together; the strictest verdict wins). ``directory``: the target is one; ``exists``:
    it exists (else O_CREAT creates it)."""
    if flags & O_PATH:
        return ("stat",)
    ops: list[str] = []
    mode = flags & O_ACCMODE
    if mode != 1:  # O_RDONLY, O_RDWR and the ioctl-only mode 3 read
        ops += ["open", "list" if directory else "read"]
    if mode != 0 or flags & (O_TRUNC | O_TMPFILE_BIT):
        ops.append("write")
    if flags & O_TMPFILE_BIT or (flags & O_CREAT and not exists):
        ops.append("create")
    return tuple(ops)


def writes(flags: int) -> bool:
    """The open may change the file system (the filter's WRITE_FLAGS test)."""
    return bool(flags & WRITE_FLAGS) and not flags & O_PATH


# --------------------------------------------------------------------------- shields


def expand_braces(glob: str) -> list[str]:
    """Brace alternatives expanded (the engine allows no nesting): ``/a/{b,c}`` -> two."""
    start = glob.find("{")
    end = glob.find("}", start)
    if start < 0 or end < 0:
        return [glob]
    head, tail = glob[:start], glob[end + 1 :]
    return [g for alt in glob[start + 1 : end].split(",") for g in expand_braces(head + alt + tail)]


@functools.cache
def _component(part: str) -> re.Pattern[str]:
    return re.compile(path_glob_source("/" + part), re.DOTALL)


@functools.cache
def _shapes(paths: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(g.strip("/").split("/")) for p in paths for g in expand_braces(p))


def reaches(shape: tuple[str, ...], path: str) -> bool:
    """``path`` or something beneath it matches the glob ``shape`` (components) at a
    place that moving ``path`` would change: a leading ``**`` matches wherever the tree
    goes, so only components matched by the rest of the glob count."""
    return _run(shape, path, shape[:1] != ("**",))


def _meets(shape: tuple[str, ...], path: str) -> bool:
    """``path`` or something beneath it matches the glob ``shape``."""
    return _run(shape, path, True)


def _run(shape: tuple[str, ...], path: str, anchored_start: bool) -> bool:
    """The component automaton behind :func:`reaches` and :func:`_meets`: states are
    (index into ``shape``, anchored); True when a state survives ``path`` anchored."""
    states = {(0, anchored_start)}
    for comp in (c for c in path.split("/") if c):
        states = _closure(shape, states)
        nxt: set[tuple[int, bool]] = set()
        for i, anchored in states:
            if i == len(shape):
                continue
            if shape[i] == "**":
                nxt.add((i, anchored or i > 0))
            elif _component(shape[i]).fullmatch("/" + comp):
                nxt.add((i + 1, True))
        states = nxt
        if not states:
            return False
    return any(anchored for _, anchored in states)


def _closure(shape: tuple[str, ...], states: set[tuple[int, bool]]) -> set[tuple[int, bool]]:
    out = set(states)
    for start, anchored in states:
        i = start
        while i < len(shape) and shape[i] == "**":
            i += 1
            out.add((i, anchored))
    return out


def shields(policy: Policy, path: str) -> FileRule | None:
    """The first non-allow rule restricting reads that covers ``path`` or anything beneath
    it in a way renaming or hard-linking ``path`` elsewhere would escape; None if none."""
    for rule in policy.file_rules:
        if rule.decision in _PASSING or not _ops(rule) & {"read", "open"}:
            continue
        if any(reaches(shape, path) for shape in _shapes(rule.paths)):
            return rule
    return None


def enumerable(glob: str) -> str | None:
    """The directory to walk to find the files ``glob`` names today (for the hard-link
    check), or None when it cannot be walked cheaply: a leading ``**``, or procfs/sysfs
    (whose files have no hard links)."""
    prefix = _literal_prefix(glob)
    if glob.startswith("**") or prefix == "/":
        return None
    if any(_within(prefix, p) for p in ("/proc", "/sys", "/dev")):
        return None
    return prefix if os.path.isabs(prefix) else None
