"""The policy engine: pure decisions over a loaded :class:`Policy` (ARCHITECTURE §5).

Every function takes values and returns a :class:`Verdict`; nothing here touches files, the
environment, the clock or sockets. Each rule list is read in file order and the first
matching rule wins. When no rule matches, commands and network destinations are denied;
files get the policy's ``file_default``, else reads are allowed and writes denied.

Patterns are compiled once per distinct pattern (memoised). ``enforce.loader`` compiles
every pattern of a policy while loading it, so a bad pattern is a load error and a check
only looks compiled patterns up.

Matching rules (what a policy author can rely on):

- commands: an entry with a ``/`` is an exact full path, or a path glob when it has glob
  characters; any other entry is a basename, or a basename glob (``*`` matches every
  command). Comparison ignores case, like agentsh's. ``argv[0]`` is normalised
  (``./sudo`` -> ``sudo``, ``/usr/bin/../bin/sudo`` -> ``/usr/bin/sudo``) and also tried
  with any ``.real`` suffix stripped, so ``bash.real`` still meets rules about ``bash``.
- ``args_patterns``: regular expressions *searched* (unanchored, as Go's MatchString) in
  ``argv[1:]`` joined by single spaces; the rule matches when the command matches and any
  pattern matches (or the rule has none).
- file paths: ``*`` and ``?`` stay inside one path component, ``**`` (a whole component)
  spans any number of components including none, so ``/a/**`` matches ``/a`` itself;
  ``[...]`` classes and ``{x,y}`` alternatives are supported.
- domains: case-insensitive, a trailing dot ignored, ``*`` spans dots (``*.evil.com``
  matches every subdomain at any depth, not ``evil.com`` itself; ``*`` matches every
  destination). Within one network rule domains, cidrs and ports must all match.
- signals: a rule matches when the signal is one of its ``signals`` and the target is of
  its ``target`` kind (``enforce.signals.SignalTarget`` says what each kind means);
  ``process`` patterns are case-sensitive globs (``*`` spans everything) over the
  target's ``comm`` and executable basename, or over the executable's full path when the
  pattern has a ``/``. Signal 0, pid 1 and the supervisor are decided before any rule.
"""

from __future__ import annotations

import functools
import ipaddress
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping, Sequence

from agentsh.enforce.policy import (
    STRICTNESS,
    CommandRule,
    Decision,
    FileRule,
    NetworkRule,
    Policy,
    SignalRule,
    SignalTargetSpec,
    Verdict,
)
from agentsh.enforce.record import dataclass, replace
from agentsh.enforce.signals import TARGET_TESTS, SignalTarget
from agentsh.enforce.signals import name as signal_name

FILE_OPERATIONS = frozenset(
    {
        "read",
        "write",
        "create",
        "delete",
        "rmdir",
        "mkdir",
        "rename",
        "chmod",
        "open",
        "stat",
        "list",
        "readlink",
        "execute",
    }
)
# Operations that only observe; the built-in file default allows these and denies the rest.
READ_OPERATIONS = frozenset({"read", "open", "stat", "list", "readlink", "execute"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_GLOB_CHARS = frozenset("*?[{")
_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
_PHRASES: dict[Decision, str] = {
    Decision.ALLOW: "allowed",
    Decision.DENY: "denied",
    Decision.APPROVE: "approval required",
    Decision.REDIRECT: "redirected",
    Decision.AUDIT: "allowed and audited",
    Decision.SOFT_DELETE: "deletes made recoverable",
}


class GlobError(ValueError):
    """A glob or command pattern is malformed; the message says why."""


# --------------------------------------------------------------------------- globs


def _char_class(pattern: str, start: int, one: str) -> tuple[str, int]:
    """Translate ``[...]`` at ``start``; return the regex and the index after ``]``."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    i += negate
    end = pattern.find("]", i + 1 if i < len(pattern) and pattern[i] == "]" else i)
    if end < 0:
        raise GlobError(f"unclosed '[' in {pattern!r}")
    body = pattern[i:end].replace("\\", "\\\\").replace("[", "\\[")
    if negate:
        # A negated class must not cross a separator either.
        extra = "/" if one == "[^/]" else ""
        return f"[^{body}{extra}]", end + 1
    return f"[{body}]", end + 1


def _alternatives(pattern: str, start: int, star: str, one: str) -> tuple[str, int]:
    """Translate ``{a,b}`` at ``start``; return the regex and the index after ``}``."""
    end = pattern.find("}", start)
    if end < 0:
        raise GlobError(f"unclosed '{{' in {pattern!r}")
    inner = pattern[start + 1 : end]
    if "{" in inner:
        raise GlobError(f"nested '{{' is not supported in {pattern!r}")
    if not inner:
        raise GlobError(f"empty '{{}}' in {pattern!r}")
    options = [_translate(option, star, one) for option in inner.split(",")]
    return "(?:" + "|".join(options) + ")", end + 1


def _translate(pattern: str, star: str, one: str) -> str:
    """Regex source for one glob segment: ``*`` -> ``star``, ``?`` -> ``one``."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            piece, i = _char_class(pattern, i, one)
        elif char == "{":
            piece, i = _alternatives(pattern, i, star, one)
        elif char == "\\":
            if i + 1 == len(pattern):
                raise GlobError(f"trailing backslash in {pattern!r}")
            piece, i = re.escape(pattern[i + 1]), i + 2
        else:
            piece = star if char == "*" else one if char == "?" else re.escape(char)
            i += 1
        out.append(piece)
    return "".join(out)


def _path_component(component: str, pattern: str) -> str:
    if component in ("", ".", ".."):
        raise GlobError(f"{pattern!r} has an empty, '.' or '..' component; write it normalised")
    if "**" in component:
        raise GlobError(f"'**' must be a whole path component in {pattern!r}")
    return _translate(component, "[^/]*", "[^/]")


def _checked(source: str, pattern: str) -> str:
    # Only a character class can make the translation an invalid regex (`[z-a]`); skip
    # the extra compile otherwise, it is most of a cold policy load.
    if "[" not in pattern:
        return source
    try:
        re.compile(source)
    except re.error as err:
        raise GlobError(f"bad pattern {pattern!r}: {err}") from None
    return source


@functools.cache
def path_glob_source(pattern: str, absolute: bool = True) -> str:
    """Regex source (for ``fullmatch``) of a path glob.

    Raises:
        GlobError: empty, relative when ``absolute`` (unless it starts with ``**``),
            ``**`` inside a component, ``.``/``..``/empty components, unclosed ``[``/``{``.
    """
    if not pattern:
        raise GlobError("empty path pattern")
    if absolute and not pattern.startswith(("/", "**")):
        raise GlobError(f"{pattern!r} is not absolute (start it with / or **/)")
    body = pattern.rstrip("/") or "/"
    if body in ("/", "**"):
        return "/" if body == "/" else ".*"
    pieces: list[str] = []
    sep = ""  # the separator owed before the next literal component
    for index, part in enumerate(body.split("/")):
        if index == 0 and part == "":
            sep = "/"
        elif part == "**":
            # Leading `**/` is "any directory prefix"; a later `/**` is "any suffix".
            pieces.append("(?:/.*)?" if index else "(?:.*/)?")
            sep = "/" if index else ""
        else:
            pieces.append(sep + _path_component(part, pattern))
            sep = "/"
    return _checked("".join(pieces), pattern)


def compile_path_glob(pattern: str) -> re.Pattern[str]:
    """Compile one file-rule path glob (see :func:`path_glob_source`)."""
    return re.compile(path_glob_source(pattern), re.DOTALL)


@functools.cache
def compile_paths(paths: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern that fullmatches a normalised absolute path iff any glob does."""
    return re.compile("|".join(f"(?:{path_glob_source(p)})" for p in paths), re.DOTALL)


@functools.cache
def domain_glob_source(pattern: str) -> str:
    """Regex source (for ``fullmatch`` on a lower-case host) of a domain glob.

    Raises:
        GlobError: empty, or contains ``/``, ``:`` or whitespace (IP ranges belong in
            ``cidrs``, ports in ``ports``), or a malformed ``[``/``{``.
    """
    name = pattern.strip().lower().rstrip(".")
    if not name:
        raise GlobError("empty domain pattern")
    if any(c in name for c in "/: \t"):
        raise GlobError(f"{pattern!r} is not a domain name (IP ranges go in cidrs, ports in ports)")
    return _checked(_translate(name, ".*", "."), pattern)


@functools.cache
def compile_domains(domains: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern that fullmatches a normalised host iff any domain glob does."""
    return re.compile("|".join(f"(?:{domain_glob_source(d)})" for d in domains), re.DOTALL)


@functools.cache
def compile_cidrs(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse CIDRs (a bare address is a single-host network; host bits are dropped).

    Raises:
        ValueError: an entry is not an IP network.
    """
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class CommandMatcher:
    """The compiled ``commands`` list of one rule (all lower-case)."""

    basenames: frozenset[str]
    paths: frozenset[str]
    basename_glob: re.Pattern[str] | None
    path_glob: re.Pattern[str] | None

    def matches(self, fulls: frozenset[str], bases: frozenset[str]) -> bool:
        """True when any candidate full path or basename meets any entry."""
        if self.paths & fulls or self.basenames & bases:
            return True
        if self.path_glob is not None and any(self.path_glob.fullmatch(f) for f in fulls):
            return True
        return self.basename_glob is not None and any(
            self.basename_glob.fullmatch(b) for b in bases
        )


def command_entry_source(entry: str) -> tuple[str, str]:
    """Classify one ``commands`` entry: ``(kind, value)`` with kind ``basename``, ``path``,
    ``basename_glob`` or ``path_glob`` (value: the literal, or the regex source).

    Raises:
        GlobError: empty, contains whitespace, or a malformed glob.
    """
    name = entry.strip().lower()
    if not name:
        raise GlobError("empty command name")
    if any(c.isspace() for c in name):
        raise GlobError(f"{entry!r} contains whitespace; match arguments with args_patterns")
    if name in ("[", "[["):  # the test programs: names, not (unclosable) glob classes
        return "basename", name
    globbed = bool(_GLOB_CHARS.intersection(name))
    if "/" in name:
        if globbed:
            return "path_glob", path_glob_source(name, absolute=False)
        return "path", posixpath.normpath(name)
    if globbed:
        return "basename_glob", _checked(_translate(name, ".*", "."), entry)
    return "basename", name


def _union(sources: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL) if sources else None


@functools.cache
def compile_commands(commands: tuple[str, ...]) -> CommandMatcher:
    """Compile a rule's ``commands`` (see :func:`command_entry_source`)."""
    kinds: dict[str, list[str]] = {"basename": [], "path": [], "basename_glob": [], "path_glob": []}
    for entry in commands:
        kind, value = command_entry_source(entry)
        kinds[kind].append(value)
    return CommandMatcher(
        basenames=frozenset(kinds["basename"]),
        paths=frozenset(kinds["path"]),
        basename_glob=_union(kinds["basename_glob"]),
        path_glob=_union(kinds["path_glob"]),
    )


def _strip_real(name: str) -> str:
    # agentsh #230: install-shell keeps the original as `<shell>.real`; rules about the
    # shell must still apply to it.
    while name.endswith(".real") and len(name) > len(".real") and not name.endswith("/.real"):
        name = name[: -len(".real")]
    return name


def command_candidates(command: str) -> tuple[frozenset[str], frozenset[str]]:
    """The full paths and basenames ``argv[0]`` is matched as (lower-case)."""
    lowered = command.lower()
    if "/" not in lowered:
        return frozenset(), frozenset({lowered, _strip_real(lowered)})
    full = posixpath.normpath(lowered)
    base = posixpath.basename(full)
    return frozenset({full, _strip_real(full)}), frozenset({base, _strip_real(base)})


# --------------------------------------------------------------------------- verdicts


def _render(template: str, fields: Mapping[str, str]) -> str:
    """Replace ``{{.Name}}`` placeholders we know; leave any other text as written."""
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def _rule_verdict(
    rule: CommandRule | FileRule | NetworkRule, subject: str, fields: Mapping[str, str]
) -> Verdict:
    if rule.message:
        message = _render(rule.message, fields)
    else:
        message = f"{_PHRASES.get(rule.decision, 'decided')} by rule {rule.name}"
    redirect = rule.redirect_to if isinstance(rule, CommandRule) else None
    if rule.decision is Decision.REDIRECT and redirect is None:
        # Fail closed: the loader refuses this, but a policy built by hand may not.
        why = f"rule {rule.name} says redirect but names no redirect_to target"
        return Verdict(Decision.DENY, rule.name, why, subject)
    return Verdict(rule.decision, rule.name, message, subject, redirect)


def check_command(policy: Policy, argv: Sequence[str]) -> Verdict:
    """Judge one simple command (already unwrapped and unquoted by the caller).

    Returns the first matching rule's verdict, or DENY with ``rule=None`` when no rule
    matches (commands are denied by default) or ``argv`` is empty.
    """
    subject = shlex.join(argv)
    if not argv or not argv[0]:
        return Verdict(Decision.DENY, None, "empty command name", subject)
    fulls, bases = command_candidates(argv[0])
    args = " ".join(argv[1:])
    for rule in policy.command_rules:
        if not compile_commands(rule.commands).matches(fulls, bases):
            continue
        if rule.args_patterns and not any(p.search(args) for p in rule.args_patterns):
            continue
        fields = {"Command": argv[0], "Path": argv[0], "Args": args}
        return _rule_verdict(rule, subject, fields)
    return Verdict(
        Decision.DENY,
        None,
        f"no command rule allows {argv[0]!r} (commands are denied unless a rule allows them)",
        subject,
    )


def _normalise_path(path: str) -> str:
    # Lexical only: the caller resolves symlinks (and /proc/self/root) before asking.
    return "/" + posixpath.normpath(path).lstrip("/")


def _file_default(policy: Policy, op: str, path: str) -> Verdict:
    if policy.file_default is not None:
        message = f"no file rule matched {op} {path}; file_default is {policy.file_default.value}"
        return Verdict(policy.file_default, None, message, path)
    if op in READ_OPERATIONS:
        return Verdict(Decision.ALLOW, None, f"no file rule matched; {op} is allowed", path)
    message = f"no file rule allows {op} on {path} (writes are denied unless a rule allows them)"
    return Verdict(Decision.DENY, None, message, path)


# Opening a file to read it is one act that policies name two ways: "open" and "read"
# (a directory: "open" and "list"). A rule naming either covers it, so a rule that lets
# /etc/ld.so.cache be read (exe.dev lists only read) lets the dynamic loader open it, and
# a rule denying "read" of ~/.ssh/** also refuses opening it (first match wins).
_OPEN_SYNONYMS: dict[str, frozenset[str]] = {
    "open": frozenset({"read", "list"}),
    "read": frozenset({"open"}),
    "list": frozenset({"open"}),
}


def covers(operations: Sequence[str], op: str) -> bool:
    """A file rule with ``operations`` applies to ``op`` (``*``, ``op`` itself, or an
    open/read/list synonym: see above)."""
    if "*" in operations or op in operations:
        return True
    return any(alias in operations for alias in _OPEN_SYNONYMS.get(op, ()))


def check_file(policy: Policy, op: str, path: str) -> Verdict:
    """Judge one file operation on an absolute path.

    ``op`` is one of :data:`FILE_OPERATIONS`, or ``*`` (then only rules covering every
    operation match, and the default is a deny). Unknown operations and relative paths are
    denied. The path is normalised lexically; resolving symlinks is the caller's job.
    """
    op = op.lower()
    if op != "*" and op not in FILE_OPERATIONS:
        return Verdict(Decision.DENY, None, f"unknown file operation {op!r}", path)
    if not path.startswith("/"):
        return Verdict(Decision.DENY, None, f"file path {path!r} is not absolute", path)
    norm = _normalise_path(path)
    for rule in policy.file_rules:
        if not covers(rule.operations, op):
            continue
        if compile_paths(rule.paths).fullmatch(norm):
            return _rule_verdict(rule, norm, {"Path": norm, "Operation": op})
    return _file_default(policy, op, norm)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    # ::ffff:169.254.169.254 is 169.254.169.254: judge the IPv4 address.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _network_matches(rule: NetworkRule, target: str, addr: IPAddress | None, port: int) -> bool:
    if rule.ports and port not in rule.ports:
        return False
    if rule.domains and not compile_domains(rule.domains).fullmatch(target):
        return False
    if rule.cidrs:
        return addr is not None and any(addr in net for net in compile_cidrs(rule.cidrs))
    return True


def check_network(policy: Policy, host: str | None, ip: str | None, port: int) -> Verdict:
    """Judge a connection to ``host`` (a name, or None) / ``ip`` (or None) on ``port``.

    Domain patterns are matched against the host, or against the IP text when only an IP
    is known; CIDRs against ``ip`` (or ``host`` when it is an IP literal). No DNS: a caller
    that wants CIDR rules to apply to a name passes the resolved address too. Default DENY.
    """
    name = (host or "").strip().lower().rstrip(".").strip("[]")
    addr = _parse_ip(ip) if ip is not None else _parse_ip(name) if name else None
    shown = name or ip or ""
    subject = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    if ip is not None and addr is None:
        return Verdict(Decision.DENY, None, f"invalid IP address {ip!r}", subject)
    if not name and addr is None:
        return Verdict(Decision.DENY, None, "no destination host or address", subject)
    target = name or str(addr)
    for rule in policy.network_rules:
        if _network_matches(rule, target, addr, port):
            fields = {"RemoteAddr": subject, "Domain": target, "Host": target, "Port": str(port)}
            return _rule_verdict(rule, subject, fields)
    message = f"no network rule allows {subject} (connections are denied unless a rule allows them)"
    return Verdict(Decision.DENY, None, message, subject)


def resolve_approval(verdict: Verdict, approver_available: bool) -> Verdict:
    """Turn APPROVE into DENY when nobody can approve (never a silent allow).

    Any other verdict, or APPROVE with an approver, is returned unchanged (the caller then
    asks the approver).
    """
    if verdict.decision is not Decision.APPROVE or approver_available:
        return verdict
    message = f"approval required, but no approver is available (no terminal): {verdict.message}"
    return replace(verdict, decision=Decision.DENY, message=message)


def stricter(a: Verdict, b: Verdict) -> Verdict:
    """The stricter of two verdicts by :data:`STRICTNESS`; ``a`` on a tie (a wrapper and
    its payload: the wrapper is passed first)."""
    return b if STRICTNESS[b.decision] > STRICTNESS[a.decision] else a


# --------------------------------------------------------------------------- signals


@functools.cache
def process_glob_source(pattern: str) -> str:
    """Regex source (for ``fullmatch``, case-sensitive) of a ``process`` target pattern.

    Raises:
        GlobError: empty, or a malformed ``[``/``{``.
    """
    if not pattern.strip():
        raise GlobError("empty process pattern")
    return _checked(_translate(pattern, ".*", "."), pattern)


@functools.cache
def compile_process_glob(pattern: str) -> re.Pattern[str]:
    """Compile one ``process`` pattern (see :func:`process_glob_source`)."""
    return re.compile(process_glob_source(pattern), re.DOTALL)


def _target_matches(spec: SignalTargetSpec, t: SignalTarget) -> bool:
    match spec.kind:
        case "process":
            glob = compile_process_glob(spec.pattern)
            if "/" in spec.pattern:
                return bool(t.exe) and glob.fullmatch(t.exe) is not None
            names = (t.comm, posixpath.basename(t.exe))
            return any(n and glob.fullmatch(n) for n in names)
        case "pid_range":
            return spec.pid_min <= t.pid <= spec.pid_max
        case kind if kind in TARGET_TESTS:
            return TARGET_TESTS[kind](t)
        case _:
            return False  # an unknown kind never matches (the loader refuses it)


def builtin_signal_verdict(sig: int, target: SignalTarget) -> Verdict:
    """The built-in signal rule (no ``signal_rules`` entry matched): a governed process may
    signal its own tree, nothing else. ``rule`` names the built-in rule on a refusal."""
    subject = f"{signal_name(sig)} to {target.pid}"
    if target.pid == 1:
        return Verdict(
            Decision.DENY,
            "signal-init",
            "init (pid 1) cannot be signalled from a governed shell",
            subject,
        )
    if target.supervisor:
        return Verdict(
            Decision.DENY,
            "signal-supervisor",
            "the agentsh supervisor cannot be signalled",
            subject,
        )
    if target.in_tree or target.relation == "self":
        return Verdict(Decision.ALLOW, None, "a process of the governed tree", subject)
    message = f"process {target.pid} is outside the governed process tree"
    return Verdict(Decision.DENY, "signal-outside-tree", message, subject)


def _signal_verdict(rule: SignalRule, subject: str) -> Verdict:
    message = rule.message or f"{_PHRASES.get(rule.decision, 'decided')} by rule {rule.name}"
    verdict = Verdict(rule.decision, rule.name, message, subject)
    match rule.decision:
        case Decision.ALLOW | Decision.AUDIT | Decision.DENY:
            return verdict
        case Decision.APPROVE:
            # Nobody can be asked while the sender waits inside the kernel.
            return resolve_approval(verdict, False)
        case _:  # redirect, soft_delete: the loader refuses them; fail closed
            why = f"rule {rule.name} says {rule.decision.value}, which a signal cannot do"
            return Verdict(Decision.DENY, rule.name, why, subject)


def check_signal(policy: Policy, sig: int, target: SignalTarget) -> Verdict:
    """Judge sending signal ``sig`` to ``target``.

    Order: signal 0 (an existence probe: it changes nothing) is allowed; pid 1 and the
    supervisor are refused whatever a rule says; then the first ``signal_rules`` entry
    matching the signal and the target decides (``approve`` becomes a refusal: nobody can
    be asked); without one, the built-in rule (:func:`builtin_signal_verdict`).
    """
    subject = f"{signal_name(sig)} to {target.pid}"
    if sig == 0:
        return Verdict(Decision.ALLOW, None, "signal 0 only probes for the process", subject)
    builtin = builtin_signal_verdict(sig, target)
    if target.pid == 1 or target.supervisor:
        return builtin
    for rule in policy.signal_rules:
        if sig in rule.signals and _target_matches(rule.target, target):
            return _signal_verdict(rule, subject)
    return builtin


SignalChecker = Callable[[int, SignalTarget], Verdict]


def signal_checker(policy: Policy) -> SignalChecker:
    """``check_signal`` bound to ``policy``: what the supervisor asks about each signal."""
    return functools.partial(check_signal, policy)
