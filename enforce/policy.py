"""The policy model: frozen values built by ``enforce.loader`` and read by ``enforce.engine``.

Field names follow the agentsh YAML format (ARCHITECTURE §5). Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re

from agentsh.enforce.record import dataclass, field


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"
    REDIRECT = "redirect"
    AUDIT = "audit"
    SOFT_DELETE = "soft_delete"


# How strict a decision is when a wrapper and its payload both match: the larger wins.
STRICTNESS: dict[Decision, int] = {
    Decision.ALLOW: 0,
    Decision.AUDIT: 1,
    Decision.SOFT_DELETE: 2,
    Decision.REDIRECT: 3,
    Decision.APPROVE: 4,
    Decision.DENY: 5,
}


@dataclass(frozen=True)
class Redirect:
    """``redirect_to``: the command that runs instead of the matched one."""

    command: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class CommandRule:
    name: str
    commands: tuple[str, ...]
    decision: Decision
    args_patterns: tuple[re.Pattern[str], ...] = ()
    message: str = ""
    description: str = ""
    redirect_to: Redirect | None = None
    line: int | None = None


@dataclass(frozen=True)
class FileRule:
    name: str
    paths: tuple[str, ...]
    operations: tuple[str, ...]
    decision: Decision
    message: str = ""
    description: str = ""
    timeout_s: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class NetworkRule:
    name: str
    decision: Decision
    domains: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    message: str = ""
    description: str = ""
    timeout_s: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class SignalTargetSpec:
    """``target`` of a signal rule: ``kind`` is its ``type`` (``enforce.signals.TARGET_KINDS``);
    ``pattern`` is for ``process``, ``pid_min``/``pid_max`` for ``pid_range``."""

    kind: str
    pattern: str = ""
    pid_min: int = 0
    pid_max: int = 0


@dataclass(frozen=True)
class SignalRule:
    """One ``signal_rules`` entry; ``signals`` are numbers (groups and names resolved).
    ``fallback`` is accepted for the Go format and never used: agentsh enforces signal
    rules or refuses to run, it never degrades to auditing."""

    name: str
    signals: frozenset[int]
    target: SignalTargetSpec
    decision: Decision
    message: str = ""
    description: str = ""
    fallback: Decision | None = None
    timeout_s: float | None = None
    line: int | None = None


@dataclass(frozen=True)
class EnvPolicy:
    """Which caller variables reach bash. Empty ``allow`` means every variable not denied."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_bytes: int | None = None
    max_keys: int | None = None
    block_iteration: bool = False


@dataclass(frozen=True)
class ResourceLimits:
    max_memory_mb: int | None = None
    memory_swap_max_mb: int | None = None
    cpu_quota_percent: int | None = None
    pids_max: int | None = None
    disk_read_bps_max: int | None = None
    disk_write_bps_max: int | None = None
    net_bandwidth_mbps: int | None = None
    command_timeout_s: float | None = None
    session_timeout_s: float | None = None
    idle_timeout_s: float | None = None


@dataclass(frozen=True)
class AuditSettings:
    log_allowed: bool = True
    log_denied: bool = True
    log_approved: bool = True
    include_stdout: bool = False
    include_stderr: bool = False
    include_file_content: bool = False
    retention_days: int | None = None


@dataclass(frozen=True)
class Policy:
    version: int
    name: str
    source: str
    description: str = ""
    command_rules: tuple[CommandRule, ...] = ()
    file_rules: tuple[FileRule, ...] = ()
    network_rules: tuple[NetworkRule, ...] = ()
    signal_rules: tuple[SignalRule, ...] = ()
    env_policy: EnvPolicy = field(default_factory=EnvPolicy)
    env_inject: tuple[tuple[str, str], ...] = ()
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    audit: AuditSettings = field(default_factory=AuditSettings)
    file_default: Decision | None = None


@dataclass(frozen=True)
class Verdict:
    """The answer of the engine or the precheck for one subject.

    ``subject`` is what was judged (a command line, a path, a host:port); ``rule`` is the
    rule's name, or None when a built-in default decided (then ``message`` says so).
    """

    decision: Decision
    rule: str | None
    message: str
    subject: str = ""
    redirect_to: Redirect | None = None

    @property
    def allowed(self) -> bool:
        return self.decision in (Decision.ALLOW, Decision.AUDIT, Decision.SOFT_DELETE)
