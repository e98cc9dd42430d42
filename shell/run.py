"""One governed run, end to end (ARCHITECTURE §3 steps 3–7): load config and policy,
read and parse the script, precheck, audit, plan, exec. Shared by the bash frontend
(`python -m agentsh.shell`) and `agentsh exec`.
"""

from __future__ import annotations

import os
import pwd
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

# Not enforce.config / enforce.loader: they import the YAML stack, which only a settings
# cache miss needs (enforce.snapshot imports them then).
from agentsh.enforce import (
    audit,
    engine,
    envfilter,
    filemon,
    fuseconf,
    govern,
    landlock,
    plan,
    seccomp,
    snapshot,
)
from agentsh.enforce.errors import Blocked, InternalError, PolicyError
from agentsh.enforce.landlock import LandlockConfig, Ruleset
from agentsh.enforce.policy import Decision, Policy, Verdict
from agentsh.enforce.record import dataclass, replace
from agentsh.shell import parse, precheck, supervise
from agentsh.shell.invocation import Invocation, Source

STARTUP_FILE = "usr/lib/agentsh/bash_startup.sh"
CONFIG_FILE = "etc/agentsh/config.yaml"
SETTINGS_CACHE = "var/cache/agentsh/settings"  # under the root; see enforce.snapshot


@dataclass(frozen=True)
class Settings:
    """What one run needs from the config and the policy (nothing else of the config:
    a settings cache hit never loads it, see :mod:`agentsh.enforce.snapshot`)."""

    policy: Policy
    root: Path
    audit_enabled: bool
    audit_path: Path
    env_inject: tuple[tuple[str, str], ...]  # the config's sandbox.env_inject
    approvals_enabled: bool
    capabilities_allow: tuple[str, ...] | None = None  # config capabilities.allow
    ptrace_enabled: bool = False  # config sandbox.ptrace.enabled
    hardening: tuple[tuple[str, bool], ...] = ()  # config sandbox.seccomp.hardening
    landlock: LandlockConfig = LandlockConfig()  # the config's section
    ruleset: Ruleset | None = None  # compiled when the settings were loaded
    fuse: fuseconf.FuseSettings = fuseconf.FuseSettings()  # config sandbox.fuse
    monitor: filemon.MonitorConfig = filemon.MonitorConfig()  # sandbox.seccomp.file_monitor


# The project root when the shell starts in "/" or a system tree: a path that exists
# nowhere, so rules on ${PROJECT_ROOT}/** match nothing (never "/**" or "/etc/**").
NO_PROJECT = "/nonexistent/agentsh-no-project"
# Trees that are never a project: a shell started in one of them, in a directory beneath,
# or in one of their ancestors (/, /var) has no project. Policies grant writes to the
# project; the cwd of `cd /etc && bash -c ...` must not make /etc writable.
SYSTEM_TREES = (
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
    "/proc", "/sys", "/dev", "/run", "/var/lib", "/var/cache", "/var/log", "/var/spool",
    "/var/backups", "/var/mail", "/snap",
)  # fmt: skip


def project_root(cwd: str) -> str:
    """The project a shell started in ``cwd`` works on: ``cwd`` itself, or
    :data:`NO_PROJECT` when ``cwd`` is, contains or lies inside a system tree."""
    path = "/" + os.path.normpath(cwd).lstrip("/")  # normpath keeps a leading "//"
    inside = path.rstrip("/") + "/"
    for tree in SYSTEM_TREES:
        if path == tree or path.startswith(tree + "/") or tree.startswith(inside):
            return NO_PROJECT
    return path if path != "/" else NO_PROJECT


def policy_variables(cwd: str) -> dict[str, str]:
    """Values for ``${VAR}`` in policies, from trusted sources only.

    HOME comes from the password database, not the caller's environment, and TMPDIR is
    fixed: a caller who sets HOME=/x or TMPDIR=/etc must not move a rule. A shell started
    in ``/`` or a system tree has no project (:func:`project_root`): PROJECT_ROOT and
    WORKSPACE then name a path that never exists.
    """
    try:
        entry = pwd.getpwuid(os.getuid())
        home, user = entry.pw_dir, entry.pw_name
    except KeyError:
        home, user = NO_PROJECT, str(os.getuid())
    project = project_root(cwd)
    return {
        "HOME": home if home != "/" else NO_PROJECT,
        "PROJECT_ROOT": project,
        "WORKSPACE": project,
        "TMPDIR": "/tmp",
        "USER": user,
    }


def load_settings(
    root: Path = Path("/"),
    *,
    config_path: Path | None = None,
    policy_path: Path | None = None,
    trusted_only: bool = False,
    cache_dir: Path | None = None,
) -> Settings:
    """Load the config (``<root>/etc/agentsh/config.yaml`` unless given) and its policy.

    With ``trusted_only`` (the shim path) every file must be root-owned and not
    group/world-writable, and no location may come from the caller. ``cache_dir`` (the
    frontend: ``<root>/var/cache/agentsh/settings``) enables the settings cache of
    :mod:`agentsh.enforce.snapshot`, used only with ``trusted_only`` and by root.

    Raises:
        PolicyError: a file is invalid, missing where the config names it, or untrusted.
    """
    snap = snapshot.load(
        config_path or root / CONFIG_FILE,
        override=policy_path,
        variables=policy_variables(os.getcwd()),
        trusted=trusted_only,
        cache_dir=cache_dir,
    )
    return Settings(
        policy=snap.policy,
        root=root,
        audit_enabled=snap.audit_enabled,
        audit_path=Path(snap.audit_path),
        env_inject=snap.env_inject,
        approvals_enabled=snap.approvals_enabled,
        capabilities_allow=snap.capabilities_allow,
        ptrace_enabled=snap.ptrace_enabled,
        hardening=snap.hardening,
        landlock=snap.landlock,
        ruleset=snap.ruleset,
        fuse=snap.fuse,
        monitor=snap.monitor,
    )


def startup_file(root: Path) -> str:
    """The BASH_ENV startup file: the installed copy, else the packaged one."""
    installed = root / STARTUP_FILE
    if installed.is_file():
        return str(installed)
    return str(Path(envfilter.__file__).with_name("bash_startup.sh"))


def blocked_message(check: precheck.CommandCheck) -> str:
    """The one-line refusal: ``blocked by policy: <cmd> (rule <name>): <message>``."""
    rule = check.verdict.rule or "default-deny"
    return f"blocked by policy: {check.text} (rule {rule}): {check.verdict.message}"


def decide(
    text: str, policy: Policy, *, approver: bool = False, supervised: bool = False
) -> tuple[Verdict, list[precheck.CommandCheck]]:
    """Parse and precheck ``text``; ``approve`` without an approver becomes deny.
    ``supervised``: exec supervision will govern the run (opaque constructs are allowed)."""
    script = parse.parse(text)
    checks = [
        resolve_approval(c, approver=approver)
        for c in precheck.explain(script, policy, supervised=supervised)
    ]
    verdict = Verdict(Decision.ALLOW, None, "no command to check", subject=text)
    for c in checks:
        verdict = engine.stricter(verdict, c.verdict)
    return verdict, checks


def resolve_approval(check: precheck.CommandCheck, *, approver: bool) -> precheck.CommandCheck:
    """``approve`` with nobody to ask becomes a deny that says approval was required."""
    if check.verdict.decision is not Decision.APPROVE:
        return check
    return replace(check, verdict=engine.resolve_approval(check.verdict, approver))


def first_refusal(checks: Sequence[precheck.CommandCheck]) -> precheck.CommandCheck | None:
    """The first command (in source order) whose verdict does not allow it to run."""
    for c in checks:
        if not c.verdict.allowed and c.verdict.decision is not Decision.REDIRECT:
            return c
    return None


def command_events(
    checks: Sequence[precheck.CommandCheck], *, session: str, layer: str
) -> list[audit.Event]:
    """One audit event per command decision."""
    now, pid, cwd = time.time(), os.getpid(), os.getcwd()
    return [
        audit.Event(
            time=now,
            session=session,
            pid=pid,
            cwd=cwd,
            argv=_audit_argv(c),
            decision=c.verdict.decision.value,
            rule=c.verdict.rule,
            message=c.verdict.message,
            layer=layer,
            kind="command",
        )
        for c in checks
    ]


def _env_event(session: str, decision: str, rule: str | None, message: str) -> audit.Event:
    return audit.Event(
        time=time.time(),
        session=session,
        pid=os.getpid(),
        cwd=os.getcwd(),
        argv=(),
        decision=decision,
        rule=rule,
        message=message,
        layer="env",
        kind="env",
    )


def record(settings: Settings, events: Sequence[audit.Event]) -> None:
    """Store audit events. Raises AuditUnavailable when the store cannot be written."""
    if not settings.audit_enabled or not events:
        return
    store = audit.open_store(settings.audit_path)
    try:
        for event in events:
            store.record(event)
    finally:
        store.close()


def _audit_argv(check: precheck.CommandCheck) -> tuple[str, ...]:
    """The command as written (wrappers included), split into words for the audit log."""
    try:
        return tuple(shlex.split(check.text)) or (check.text,)
    except ValueError:
        return (check.text,)


def new_session() -> str:
    return os.urandom(6).hex()


def _script_text(inv: Invocation) -> tuple[str, bytes | None]:
    """The script bash would run, and (for stdin) the bytes to hand back on fd 0."""
    match inv.source:
        case Source.COMMAND:
            return inv.command or "", None
        case Source.SCRIPT:
            path = inv.script_path or ""
            try:
                data = Path(path).read_bytes()
            except OSError:
                # bash.real reports the missing/unreadable script itself; it runs nothing.
                return "", None
            return data.decode("utf-8", "surrogateescape"), None
        case Source.STDIN:
            data = sys.stdin.buffer.read()
            return data.decode("utf-8", "surrogateescape"), data
        case _:
            return "", None


def judge(
    settings: Settings, text: str, *, session: str, layer: str, supervised: bool = False
) -> tuple[list[precheck.CommandCheck], dict[str, str]]:
    """Precheck ``text``, filter the environment, audit every decision, then refuse or
    return the checks and the environment to run with.

    Raises:
        Blocked: a command (or the environment's size) is refused; it is audited first.
        AuditUnavailable: the decisions could not be stored; nothing may run.
    """
    _, checks = decide(text, settings.policy, supervised=supervised)
    events = command_events(checks, session=session, layer=layer)
    refusal = first_refusal(checks)
    env: dict[str, str] = {}
    env_refusal: Blocked | None = None
    if refusal is None:
        try:
            filtered = filter_environment(settings, os.environ)
        except Blocked as err:
            env_refusal = err
            events.append(_env_event(session, "deny", "env_policy", err.message))
        else:
            env = filtered.env
            if filtered.removed:
                removed = "removed from the environment: " + ", ".join(filtered.removed)
                events.append(_env_event(session, "allow", None, removed))
    record(settings, events)
    if refusal is not None:
        raise Blocked(blocked_message(refusal), hint=_hint(refusal))
    if env_refusal is not None:
        raise env_refusal
    return checks, env


def governed_bash(
    inv: Invocation, real: str, *, root: Path = Path("/"), session: str | None = None
) -> NoReturn:
    """Precheck and run one bash invocation in place. Never returns.

    Raises:
        PolicyError, Blocked, AuditUnavailable, InternalError: refused; nothing ran.
    """
    if not os.path.isfile(real) or not os.access(real, os.X_OK):
        raise InternalError(f"real shell {real} is missing or not executable")
    settings = load_settings(root, trusted_only=True, cache_dir=root / SETTINGS_CACHE)
    text, stdin_bytes = _script_text(inv)
    sid = session or new_session()
    # Every run is exec-supervised: by the supervisor this plan starts, or (nested) by the
    # outer one that already governs this process. If it cannot be started, apply()
    # refuses: constructs the precheck lets through under supervision never run without it.
    checks, env = judge(settings, text, session=sid, layer="precheck", supervised=True)
    args = inv.args
    if any(c.verdict.decision is Decision.REDIRECT for c in checks):
        args = inv.with_script_arg(precheck.rewrite(text, checks))
    watch = supervision(settings, sid)
    plan.apply(plan.Plan(real, (inv.argv0, *args), env, stdin_bytes, watch))


def supervision(settings: Settings, session: str) -> plan.Supervision | None:
    """Exec supervision for a new governed tree; None when an outer supervisor (proven by
    the kernel marker, never by the environment) already governs this process."""
    if govern.is_governed():
        return None
    policy = settings.policy
    abi, monitor = landlock.probe().abi, settings.monitor.enabled
    ruleset = snapshot.ruleset(policy, settings.landlock, settings.ruleset, abi, monitor=monitor)
    view, action, trees = workspace(settings, session)
    return plan.Supervision(
        checker_factory=lambda: supervise.make_checker(policy),
        sink_factory=lambda: _audit_sink(settings),
        session=session,
        limits=policy.resource_limits,
        capabilities_allow=settings.capabilities_allow,
        backend=backend(settings),
        hardening=govern.Hardening(**dict(settings.hardening)),
        landlock=ruleset,
        soft_delete=view,
        signals=signal_checker(settings),
        files=file_monitor(settings, ruleset, view, (action, trees)),
    )


def signal_checker(settings: Settings) -> engine.SignalChecker:
    """The supervisor's signal judge: the policy's ``signal_rules``.

    Raises:
        PolicyError: the policy has signal rules but the config turns signal supervision
            off (``sandbox.seccomp.hardening.signals``): they would not be enforced.
    """
    policy = settings.policy
    if policy.signal_rules and not dict(settings.hardening).get("signals", True):
        first = policy.signal_rules[0]
        why = (
            "sandbox.seccomp.hardening.signals is off in the config, so these rules would "
            "not be enforced; turn it on or remove signal_rules"
        )
        raise PolicyError(policy.source, first.line, "signal_rules", why)
    return engine.signal_checker(policy)


def workspace(
    settings: Settings, session: str
) -> tuple[plan.SoftDelete | None, fuseconf.Action, tuple[str, ...]]:
    """The soft-delete workspace for a new governed tree, or what deletes get instead
    (the action and the trees it applies to). The FUSE view of the project (the shell's
    directory) is mounted when ``sandbox.fuse`` asks for it, FUSE works here, and the
    policy lets deletes through there at all (where they are refused, there is nothing to
    make recoverable). Without FUSE the config decides (``fuseconf.choose``): refuse the
    command, refuse deletes in the project, or let them happen audited (the file monitor
    does both).

    Raises:
        LayerUnavailable: the config requires FUSE and this machine cannot mount it.
    """
    off = fuseconf.Action.OFF
    if not settings.fuse.enabled:
        return None, off, ()
    choice = fuseconf.choose(settings.fuse, fuseconf.probe())
    fuseconf.require(choice)
    project = policy_variables(os.getcwd())["PROJECT_ROOT"]
    policy = settings.policy
    if project == NO_PROJECT:
        return None, off, ()
    if choice.action is not fuseconf.Action.MOUNT:
        return None, choice.action, (project,)
    if not engine.check_file(policy, "delete", os.path.join(project, "x")).allowed:
        return None, off, ()
    view = plan.SoftDelete(
        workspace=project,
        session=session,
        mode=settings.fuse.mode,
        decide=lambda op, path: engine.check_file(policy, op, path),
        sink_factory=lambda: _audit_sink(settings),
    )
    return view, fuseconf.Action.MOUNT, ()


def file_monitor(
    settings: Settings,
    ruleset: Ruleset | None,
    view: plan.SoftDelete | None,
    deletes: tuple[fuseconf.Action, tuple[str, ...]],
) -> filemon.Plan | None:
    """What the notify file monitor traps for this tree (None: nothing). Without a FUSE
    view, the monitor carries out ``soft_delete`` rules itself, into the trash store, and
    refuses or audits deletes in ``deletes``' trees as the config's fallback says."""
    action, trees = deletes
    return filemon.plan(
        settings.policy,
        settings.monitor,
        landlock=ruleset,
        protected=settings.landlock.protected,
        trash=None if view is not None else str(fuseconf.DEFAULT_TRASH_ROOT),
        refuse_deletes=trees if action is fuseconf.Action.DENY_DELETES else (),
        audit_deletes=trees if action is fuseconf.Action.ALLOW_AUDITED else (),
    )


def backend(settings: Settings) -> str:
    """ptrace when the config asks for it or the kernel has no usable user-notify (then
    ``ptrace.spawn_traced`` refuses loudly if ptrace is unavailable too)."""
    if settings.ptrace_enabled or not seccomp.probe().usable:
        return "ptrace"
    return "notify"


def _audit_sink(settings: Settings) -> Callable[[audit.Event], None]:
    """Runs in the supervisor: one store for its whole life."""
    if not settings.audit_enabled:
        return lambda _event: None
    return audit.Writer(audit.open_store(settings.audit_path))


def filter_environment(settings: Settings, environ: Mapping[str, str]) -> envfilter.FilteredEnv:
    """The filtered environment for bash.real, with BASH_ENV pointing at our startup file.

    Injection order: our BASH_ENV, then the policy's env_inject, then the config's
    sandbox.env_inject (the operator's machine-wide setting wins).

    Raises:
        Blocked: over env_policy.max_keys / max_bytes.
    """
    inject = {"BASH_ENV": startup_file(settings.root)}
    inject.update(dict(settings.policy.env_inject))
    inject.update(settings.env_inject)
    return envfilter.filter_env(dict(environ), settings.policy.env_policy, inject=inject)


def _hint(check: precheck.CommandCheck) -> str | None:
    if check.opaque:
        return "write the command literally so it can be checked before it runs"
    if check.verdict.rule is None:
        return f"no rule allows it; `agentsh check -- {check.text!r}` explains the decision"
    return None


def governed_exec(
    command: Sequence[str],
    *,
    root: Path = Path("/"),
    session: str | None = None,
    config_path: Path | None = None,
    policy_path: Path | None = None,
) -> NoReturn:
    """``agentsh exec``: precheck one argv (wrappers unwrapped), audit, run it in place
    under exec supervision, like a governed bash: what it starts is checked too.

    Raises:
        PolicyError, Blocked, AuditUnavailable, LayerUnavailable, InternalError: refused;
            nothing ran.
    """
    settings = load_settings(root, config_path=config_path, policy_path=policy_path)
    text = shlex.join(command)
    sid = session or new_session()
    checks, env = judge(settings, text, session=sid, layer="exec", supervised=True)
    if any(c.verdict.decision is Decision.REDIRECT for c in checks):
        raise Blocked(
            f"redirect rules apply to shell command lines: {text}",
            hint=f"run it as `agentsh exec -- bash -c {shlex.quote(text)}`",
        )
    import shutil  # `agentsh exec` only; not on the bash frontend's path

    path = shutil.which(command[0], path=env.get("PATH", os.defpath))
    if path is None:
        raise InternalError(f"{command[0]}: command not found")
    plan.apply(plan.Plan(path, tuple(command), env, supervision=supervision(settings, sid)))
