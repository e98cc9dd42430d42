"""Load agentsh-format policy YAML into the frozen model (ARCHITECTURE §5).

The file is composed into YAML nodes (SafeLoader: plain data, no tags that run code) so
that every error names the file, the line and the key path, for example
``policy.yaml:41: command_rules[3].args_patterns[0]: rule 'x': invalid regular expression``.
Strict: unknown keys, wrong types, bad regexes/globs/CIDRs/ports/durations, unknown
decisions or file operations, duplicate keys or rule names and a missing ``version`` are
all errors. Every pattern is compiled here (through the engine's memoised compilers), so a
loaded policy never fails at check time.

``${VAR}`` and ``${VAR:-default}`` are expanded in file paths, domains, commands,
``redirect_to``, ``env_inject`` values and signal ``target.pattern``, from the mapping
the caller passes (never from this process's environment). An unset or empty variable
without a default is an error:
``${PROJECT_ROOT}/**`` must never silently become ``/**``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from yaml.nodes import Node

from agentsh.enforce import engine, signals
from agentsh.enforce.errors import PolicyError
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
from agentsh.enforce.yamlnodes import Items, YamlReader, compose, expand, sub

_RULE = ("name", "description", "decision", "message")
# Every key the loader reads, per section ("" is the top level). The man page documents each.
POLICY_KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {"version", "name", "description", "command_rules", "file_rules", "network_rules"}
        | {"signal_rules", "env_policy", "env_inject", "resource_limits", "audit", "file_default"}
    ),
    "command_rules": frozenset({*_RULE, "commands", "args_patterns", "redirect_to"}),
    "redirect_to": frozenset({"command", "args"}),
    "file_rules": frozenset({*_RULE, "paths", "operations", "timeout"}),
    "network_rules": frozenset({*_RULE, "domains", "cidrs", "ports", "timeout"}),
    "signal_rules": frozenset({*_RULE, "signals", "target", "fallback", "timeout", "redirect_to"}),
    "target": frozenset({"type", "pattern", "min", "max"}),
    "env_policy": frozenset({"allow", "deny", "max_bytes", "max_keys", "block_iteration"}),
    "resource_limits": frozenset(
        {"max_memory_mb", "memory_swap_max_mb", "cpu_quota_percent", "pids_max"}
        | {"disk_read_bps_max", "disk_write_bps_max", "net_bandwidth_mbps"}
        | {"command_timeout", "session_timeout", "idle_timeout"}
    ),
    "audit": frozenset(
        {"log_allowed", "log_denied", "log_approved", "include_stdout", "include_stderr"}
        | {"include_file_content", "retention_days"}
    ),
}
# Keys of the Go agentsh we know but do not enforce yet: an error, because silently
# dropping a rule an operator wrote would weaken the policy without telling anyone.
_ANCHOR_ONLY: dict[str, frozenset[str]] = {
    "": frozenset(
        {"unix_socket_rules", "registry_rules", "dns_redirects"}
        | {"connect_redirects", "package_rules", "http_services", "transparent_commands"}
    ),
    "command_rules": frozenset(
        {"env_allow", "env_deny", "env_max_bytes", "env_max_keys", "env_block_iteration"}
        | {"context"}
    ),
    "redirect_to": frozenset({"args_append", "environment"}),
    "file_rules": frozenset({"redirect_to", "preserve_tree"}),
}
_DECISIONS = {
    "command_rules": frozenset(Decision),
    "file_rules": frozenset(Decision) - {Decision.REDIRECT},
    "network_rules": frozenset({Decision.ALLOW, Decision.DENY, Decision.APPROVE, Decision.AUDIT}),
    "file_default": frozenset({Decision.ALLOW, Decision.DENY, Decision.APPROVE, Decision.AUDIT}),
    "signal_rules": frozenset({Decision.ALLOW, Decision.DENY, Decision.APPROVE, Decision.AUDIT}),
}
# Go signal decisions we cannot carry out, and why (a load error, never a silent change).
_SIGNAL_UNSUPPORTED = {
    "redirect": "the supervisor cannot change the signal a process sends",
    "absorb": "the supervisor does not drop signals while reporting success",
}
_R = TypeVar("_R", CommandRule, FileRule, NetworkRule, SignalRule)


def _cidr(text: str) -> None:
    try:
        engine.compile_cidrs((text,))
    except ValueError as err:
        raise ValueError(f"bad CIDR {text!r} ({err})") from None


class _Builder:
    """Builds one Policy from composed nodes; ``r`` reports errors against the file."""

    def __init__(self, source: str, variables: Mapping[str, str]) -> None:
        self.r = YamlReader(source)
        self.env = variables

    # -- small typed helpers over a mapping's items ---------------------------------

    def _text(self, items: Items, path: str, key: str, default: str = "") -> str:
        return self.r.string(items[key][1], sub(path, key)) if key in items else default

    def _flag(self, items: Items, path: str, key: str, default: bool) -> bool:
        return self.r.boolean(items[key][1], sub(path, key)) if key in items else default

    def _int(self, items: Items, path: str, key: str) -> int | None:
        return self.r.integer(items[key][1], sub(path, key)) if key in items else None

    def _duration(self, items: Items, path: str, key: str) -> float | None:
        return self.r.duration(items[key][1], sub(path, key)) if key in items else None

    def _decision(self, items: Items, node: Node, path: str, kind: str) -> Decision:
        if "decision" not in items:
            self.r.fail(node, sub(path, "decision"), "missing (allow, deny, approve, ...)")
        return self._decision_value(items["decision"][1], sub(path, "decision"), kind)

    def _decision_value(self, node: Node, key: str, kind: str) -> Decision:
        text = self.r.string(node, key).strip().lower()
        allowed = _DECISIONS[kind]
        if text not in {d.value for d in allowed}:
            names = ", ".join(sorted(d.value for d in allowed))
            self.r.fail(node, key, f"unknown decision {text!r} (use {names})")
        return Decision(text)

    def _entries(
        self, items: Items, node: Node, path: str, key: str, check: Callable[[str], object]
    ) -> tuple[str, ...]:
        """A list of strings, each ``${}``-expanded, then validated by ``check``."""
        if key not in items:
            return ()
        out = []
        for index, (enode, text) in enumerate(self.r.strings(items[key][1], sub(path, key))):
            where = sub(sub(path, key), index)
            try:
                value = expand(text, self.env, path=key == "paths")
                check(value)
            except ValueError as err:  # GlobError is a ValueError
                name = self._text(self.r.mapping(node, path), path, "name")
                self.r.fail(enode, where, f"rule {name!r}: {err}")
            out.append(value)
        return tuple(out)

    def _required(
        self, items: Items, node: Node, path: str, key: str, got: tuple[str, ...]
    ) -> None:
        if not got:
            self.r.fail(
                items[key][1] if key in items else node,
                sub(path, key),
                "must list one entry or more",
            )

    def _rule_items(self, node: Node, path: str, kind: str) -> Items:
        return self.r.mapping(node, path, POLICY_KEYS[kind], _ANCHOR_ONLY.get(kind, frozenset()))

    def _rule_head(self, items: Items, node: Node, path: str, kind: str) -> tuple[str, Decision]:
        name = self._text(items, path, "name").strip()
        if not name:
            self.r.fail(items["name"][1] if "name" in items else node, sub(path, "name"), "missing")
        return name, self._decision(items, node, path, kind)

    # -- sections -------------------------------------------------------------------

    def command_rule(self, node: Node, path: str) -> CommandRule:
        items = self._rule_items(node, path, "command_rules")
        name, decision = self._rule_head(items, node, path, "command_rules")
        commands = self._entries(items, node, path, "commands", engine.command_entry_source)
        self._required(items, node, path, "commands", commands)
        patterns = self._regexes(items, path, name)
        redirect = self._redirect(items, path) if "redirect_to" in items else None
        if decision is Decision.REDIRECT and redirect is None:
            self.r.fail(node, sub(path, "redirect_to"), "required when decision is redirect")
        if redirect is not None and decision is not Decision.REDIRECT:
            self.r.fail(
                items["redirect_to"][0],
                sub(path, "redirect_to"),
                "only valid with decision: redirect",
            )
        engine.compile_commands(commands)
        return CommandRule(
            name=name,
            commands=commands,
            decision=decision,
            args_patterns=patterns,
            message=self._text(items, path, "message"),
            description=self._text(items, path, "description"),
            redirect_to=redirect,
            line=node.start_mark.line + 1,
        )

    def _regexes(self, items: Items, path: str, name: str) -> tuple[re.Pattern[str], ...]:
        """``args_patterns``, compiled (not ``${}``-expanded: ``$`` belongs to the regex)."""
        where = sub(path, "args_patterns")
        out = []
        for index, (node, text) in enumerate(self._strings_opt(items, path, "args_patterns")):
            try:
                out.append(re.compile(text))
            except re.error as err:
                why = f"rule {name!r}: invalid regular expression {text!r}: {err}"
                self.r.fail(node, sub(where, index), why)
        return tuple(out)

    def _redirect(self, items: Items, path: str) -> Redirect:
        node, where = items["redirect_to"][1], sub(path, "redirect_to")
        spec = self.r.mapping(node, where, POLICY_KEYS["redirect_to"], _ANCHOR_ONLY["redirect_to"])
        command = self._text(spec, where, "command").strip()
        if not command:
            at = spec["command"][1] if "command" in spec else node
            self.r.fail(at, sub(where, "command"), "missing: the command to run instead")
        args = self._strings_opt(spec, where, "args")
        try:
            return Redirect(expand(command, self.env), tuple(expand(t, self.env) for _, t in args))
        except ValueError as err:
            self.r.fail(node, where, str(err))

    def _strings_opt(self, items: Items, path: str, key: str) -> list[tuple[Node, str]]:
        return self.r.strings(items[key][1], sub(path, key)) if key in items else []

    def _operation(self, op: str) -> None:
        if op.lower() != "*" and op.lower() not in engine.FILE_OPERATIONS:
            known = ", ".join(sorted(engine.FILE_OPERATIONS))
            raise ValueError(f'unknown file operation {op!r} (use {known} or "*")')

    def file_rule(self, node: Node, path: str) -> FileRule:
        items = self._rule_items(node, path, "file_rules")
        name, decision = self._rule_head(items, node, path, "file_rules")
        paths = self._entries(items, node, path, "paths", engine.path_glob_source)
        self._required(items, node, path, "paths", paths)
        ops = self._entries(items, node, path, "operations", self._operation)
        self._required(items, node, path, "operations", ops)
        engine.compile_paths(paths)
        return FileRule(
            name=name,
            paths=paths,
            operations=tuple(op.lower() for op in ops),
            decision=decision,
            message=self._text(items, path, "message"),
            description=self._text(items, path, "description"),
            timeout_s=self._duration(items, path, "timeout"),
            line=node.start_mark.line + 1,
        )

    def network_rule(self, node: Node, path: str) -> NetworkRule:
        items = self._rule_items(node, path, "network_rules")
        name, decision = self._rule_head(items, node, path, "network_rules")
        domains = self._entries(items, node, path, "domains", engine.domain_glob_source)
        cidrs = self._entries(items, node, path, "cidrs", _cidr)
        ports = []
        if "ports" in items:
            where = sub(path, "ports")
            for index, pnode in enumerate(self.r.sequence(items["ports"][1], where)):
                ports.append(self.r.integer(pnode, sub(where, index), 1, 65535))
        engine.compile_domains(domains)
        return NetworkRule(
            name=name,
            decision=decision,
            domains=domains,
            cidrs=cidrs,
            ports=tuple(ports),
            message=self._text(items, path, "message"),
            description=self._text(items, path, "description"),
            timeout_s=self._duration(items, path, "timeout"),
            line=node.start_mark.line + 1,
        )

    def signal_rule(self, node: Node, path: str) -> SignalRule:
        items = self._rule_items(node, path, "signal_rules")
        self._signal_unsupported(items, path)
        name, decision = self._rule_head(items, node, path, "signal_rules")
        numbers: set[int] = set()
        entries = self._entries(items, node, path, "signals", signals.parse)
        self._required(items, node, path, "signals", entries)
        for entry in entries:
            numbers |= signals.parse(entry)
        if "target" not in items:
            self.r.fail(node, sub(path, "target"), "missing (a mapping with type: ...)")
        fallback = None
        if "fallback" in items:
            where = sub(path, "fallback")
            fallback = self._decision_value(items["fallback"][1], where, "signal_rules")
        return SignalRule(
            name=name,
            signals=frozenset(numbers),
            target=self._signal_target(items["target"][1], sub(path, "target"), name),
            decision=decision,
            message=self._text(items, path, "message"),
            description=self._text(items, path, "description"),
            fallback=fallback,
            timeout_s=self._duration(items, path, "timeout"),
            line=node.start_mark.line + 1,
        )

    def _signal_unsupported(self, items: Items, path: str) -> None:
        """Refuse the Go signal features we cannot carry out, saying why."""
        if "redirect_to" in items:
            why = f"not supported: {_SIGNAL_UNSUPPORTED['redirect']}; use deny or allow"
            self.r.fail(items["redirect_to"][0], sub(path, "redirect_to"), why)
        if "decision" in items:
            dnode = items["decision"][1]
            text = self.r.string(dnode, sub(path, "decision")).strip().lower()
            if text in _SIGNAL_UNSUPPORTED:
                why = f"decision {text!r} is not supported: {_SIGNAL_UNSUPPORTED[text]}"
                self.r.fail(dnode, sub(path, "decision"), why + "; use deny or allow")

    def _signal_target(self, node: Node, path: str, rule: str) -> SignalTargetSpec:
        spec = self.r.mapping(node, path, POLICY_KEYS["target"])
        if "type" not in spec:
            self.r.fail(node, sub(path, "type"), "missing")
        tnode = spec["type"][1]
        kind = self.r.string(tnode, sub(path, "type")).strip().lower()
        if kind not in signals.TARGET_KINDS:
            kinds = ", ".join(sorted(signals.TARGET_KINDS))
            self.r.fail(
                tnode,
                sub(path, "type"),
                f"rule {rule!r}: unknown target type {kind!r} (use {kinds})",
            )
        for key, owner in (("pattern", "process"), ("min", "pid_range"), ("max", "pid_range")):
            if key in spec and kind != owner:
                self.r.fail(spec[key][0], sub(path, key), f"only valid with type: {owner}")
            if key not in spec and kind == owner:
                self.r.fail(node, sub(path, key), f"required with type: {owner}")
        if kind == "process":
            return SignalTargetSpec(kind, pattern=self._process_pattern(spec, path, rule))
        if kind == "pid_range":
            low = self.r.integer(spec["min"][1], sub(path, "min"), 1)
            high = self.r.integer(spec["max"][1], sub(path, "max"), 1)
            if low > high:
                self.r.fail(spec["max"][1], sub(path, "max"), f"smaller than min ({low})")
            return SignalTargetSpec(kind, pid_min=low, pid_max=high)
        return SignalTargetSpec(kind)

    def _process_pattern(self, spec: Items, path: str, rule: str) -> str:
        pnode, where = spec["pattern"][1], sub(path, "pattern")
        text = self.r.string(pnode, where)
        try:
            value = expand(text, self.env, path=text.startswith("/"))
            engine.process_glob_source(value)
        except ValueError as err:  # GlobError is a ValueError
            self.r.fail(pnode, where, f"rule {rule!r}: {err}")
        return value

    def rules(self, items: Items, key: str, build: Callable[[Node, str], _R]) -> tuple[_R, ...]:
        """Build the list ``key``; rule names must be unique within it."""
        if key not in items:
            return ()
        out: list[_R] = []
        seen: dict[str, int] = {}
        for index, node in enumerate(self.r.sequence(items[key][1], key)):
            path = sub(key, index)
            rule = build(node, path)
            if rule.name in seen:
                name_node = self.r.mapping(node, path)["name"][1]
                why = (
                    f"duplicate rule name {rule.name!r} (first used by {sub(key, seen[rule.name])})"
                )
                self.r.fail(name_node, sub(path, "name"), why)
            seen[rule.name] = index
            out.append(rule)
        return tuple(out)

    def env_policy(self, items: Items) -> EnvPolicy:
        if "env_policy" not in items:
            return EnvPolicy()
        spec = self.r.mapping(items["env_policy"][1], "env_policy", POLICY_KEYS["env_policy"])
        return EnvPolicy(
            allow=tuple(t for _, t in self._strings_opt(spec, "env_policy", "allow")),
            deny=tuple(t for _, t in self._strings_opt(spec, "env_policy", "deny")),
            max_bytes=self._int(spec, "env_policy", "max_bytes"),
            max_keys=self._int(spec, "env_policy", "max_keys"),
            block_iteration=self._flag(spec, "env_policy", "block_iteration", False),
        )

    def env_inject(self, items: Items) -> tuple[tuple[str, str], ...]:
        if "env_inject" not in items:
            return ()
        out = []
        for vnode, name, text in self.r.string_map(items["env_inject"][1], "env_inject"):
            try:
                out.append((name, expand(text, self.env)))
            except ValueError as err:
                self.r.fail(vnode, sub("env_inject", name), str(err))
        return tuple(out)

    def resource_limits(self, items: Items) -> ResourceLimits:
        if "resource_limits" not in items:
            return ResourceLimits()
        key = "resource_limits"
        spec = self.r.mapping(items[key][1], key, POLICY_KEYS[key])
        return ResourceLimits(
            max_memory_mb=self._int(spec, key, "max_memory_mb"),
            memory_swap_max_mb=self._int(spec, key, "memory_swap_max_mb"),
            cpu_quota_percent=self._int(spec, key, "cpu_quota_percent"),
            pids_max=self._int(spec, key, "pids_max"),
            disk_read_bps_max=self._int(spec, key, "disk_read_bps_max"),
            disk_write_bps_max=self._int(spec, key, "disk_write_bps_max"),
            net_bandwidth_mbps=self._int(spec, key, "net_bandwidth_mbps"),
            command_timeout_s=self._duration(spec, key, "command_timeout"),
            session_timeout_s=self._duration(spec, key, "session_timeout"),
            idle_timeout_s=self._duration(spec, key, "idle_timeout"),
        )

    def audit(self, items: Items) -> AuditSettings:
        if "audit" not in items:
            return AuditSettings()
        spec = self.r.mapping(items["audit"][1], "audit", POLICY_KEYS["audit"])
        return AuditSettings(
            log_allowed=self._flag(spec, "audit", "log_allowed", True),
            log_denied=self._flag(spec, "audit", "log_denied", True),
            log_approved=self._flag(spec, "audit", "log_approved", True),
            include_stdout=self._flag(spec, "audit", "include_stdout", False),
            include_stderr=self._flag(spec, "audit", "include_stderr", False),
            include_file_content=self._flag(spec, "audit", "include_file_content", False),
            retention_days=self._int(spec, "audit", "retention_days"),
        )

    def policy(self, root: Node) -> Policy:
        items = self.r.mapping(root, "", POLICY_KEYS[""], _ANCHOR_ONLY[""])
        if "version" not in items:
            self.r.fail(root, "version", "missing: a policy starts with `version: 1`")
        vnode = items["version"][1]
        if self.r.integer(vnode, "version") != 1:
            self.r.fail(vnode, "version", "unsupported version (this agentsh reads version 1)")
        name = self._text(items, "", "name").strip()
        if not name:
            self.r.fail(items["name"][1] if "name" in items else root, "name", "missing")
        file_default = None
        if "file_default" in items:
            file_default = self._decision_value(
                items["file_default"][1], "file_default", "file_default"
            )
        return Policy(
            version=1,
            name=name,
            source=self.r.source,
            description=self._text(items, "", "description"),
            command_rules=self.rules(items, "command_rules", self.command_rule),
            file_rules=self.rules(items, "file_rules", self.file_rule),
            network_rules=self.rules(items, "network_rules", self.network_rule),
            signal_rules=self.rules(items, "signal_rules", self.signal_rule),
            env_policy=self.env_policy(items),
            env_inject=self.env_inject(items),
            resource_limits=self.resource_limits(items),
            audit=self.audit(items),
            file_default=file_default,
        )


def loads(text: str, source: str, variables: Mapping[str, str]) -> Policy:
    """Parse and validate a policy from ``text``; ``source`` names it in errors.

    Raises:
        PolicyError: the text is not a valid policy (names source, line and key path).
    """
    root = compose(text, source)
    if root is None:
        raise PolicyError(source, None, "version", "the policy is empty (start with `version: 1`)")
    return _Builder(source, variables).policy(root)


def load(path: Path, variables: Mapping[str, str]) -> Policy:
    """Read and validate the policy file ``path`` (see :func:`loads`).

    Raises:
        PolicyError: unreadable, not UTF-8, or not a valid policy.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(str(path), None, "file", f"cannot be read: {err}") from None
    return loads(text, str(path), variables)


# --------------------------------------------------------------------------- lint


def _covers(earlier: CommandRule, entry: str) -> bool:
    """Whether every argv[0] matching ``entry`` also matches ``earlier``'s commands."""
    kind, value = engine.command_entry_source(entry)
    matcher = engine.compile_commands(earlier.commands)
    if kind == "basename":
        return matcher.matches(frozenset(), frozenset({value}))
    if kind == "path":
        return matcher.matches(frozenset({value}), frozenset({posixpath.basename(value)}))
    return any(c.strip() == "*" for c in earlier.commands)


def _shadows(earlier: NetworkRule, later: NetworkRule) -> bool:
    # `earlier` must match every destination `later` matches: no domain test, and its
    # ports (if any) must include all of later's (a later rule without ports is wider).
    if earlier.domains or (
        earlier.ports and not (later.ports and set(later.ports) <= set(earlier.ports))
    ):
        return False
    if not earlier.cidrs:
        return True
    if later.domains or not later.cidrs:
        return False
    nets = engine.compile_cidrs(earlier.cidrs)
    return all(
        any(n.version == o.version and n.subnet_of(o) for o in nets)  # type: ignore[arg-type]
        for n in engine.compile_cidrs(later.cidrs)
    )


def lint(policy: Policy) -> tuple[str, ...]:
    """Rules that can never match because an earlier rule always matches first.

    First match wins (as in agentsh), so such a rule is dead; ``agentsh policy validate``
    shows these as warnings. Only certain cases are reported (no false alarms): command
    rules whose every command an earlier rule without args_patterns covers, and network
    rules an earlier rule covers by CIDR (or by matching everything).
    """
    out = []
    for j, later in enumerate(policy.command_rules):
        for i, earlier in enumerate(policy.command_rules[:j]):
            if not earlier.args_patterns and all(_covers(earlier, c) for c in later.commands):
                out.append(
                    f"command_rules[{j}] {later.name!r} (line {later.line}) never matches: "
                    f"command_rules[{i}] {earlier.name!r} (line {earlier.line}) matches first"
                )
                break
    for j, net in enumerate(policy.network_rules):
        for i, prior in enumerate(policy.network_rules[:j]):
            if _shadows(prior, net):
                out.append(
                    f"network_rules[{j}] {net.name!r} (line {net.line}) never matches: "
                    f"network_rules[{i}] {prior.name!r} (line {prior.line}) matches first"
                )
                break
    return tuple(out)
