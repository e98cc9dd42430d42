"""The Plan: everything the frontend decided, applied in one place right before execve
(ARCHITECTURE §3 steps 6–7). Kernel layers plug in here in a fixed order: the supervisor
is forked before any restriction, then Landlock, no_new_privs and seccomp (last).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn

from agentsh.enforce import audit, engine, filemon, govern, landlock, limits, ptrace, supervisor
from agentsh.enforce.errors import InternalError
from agentsh.enforce.fuseconf import Mode
from agentsh.enforce.policy import ResourceLimits, Verdict
from agentsh.enforce.record import dataclass


@dataclass(frozen=True)
class SoftDelete:
    """The soft-delete workspace (FUSE view) for the tree: ``decide(op, path)`` judges
    deletes with the policy; ``sink_factory`` runs in the FUSE daemon."""

    workspace: str
    session: str
    mode: Mode
    decide: Callable[[str, str], Verdict]
    sink_factory: Callable[[], Callable[[audit.Event], None]]


@dataclass(frozen=True)
class Supervision:
    """Exec supervision for the tree bash.real starts. The factories run in the supervisor
    process (it opens the audit store there, after the fork)."""

    checker_factory: Callable[[], supervisor.Checker]
    sink_factory: Callable[[], supervisor.Sink]
    session: str
    limits: ResourceLimits | None = None  # the policy's resource_limits for the new tree
    capabilities_allow: tuple[str, ...] | None = None  # None: keep capabilities as they are
    backend: str = "notify"  # "notify" (seccomp user-notify) or "ptrace"
    hardening: govern.Hardening = govern.Hardening()  # syscall groups refused besides exec
    landlock: landlock.Ruleset | None = None  # the file boundary; None: Landlock is off
    soft_delete: SoftDelete | None = None  # the FUSE view of the workspace; None: no view
    signals: engine.SignalChecker | None = None  # the policy's signal_rules; None: built-in
    files: filemon.Plan | None = None  # the notify file monitor's traps; None: no monitor


@dataclass(frozen=True)
class Plan:
    """What to exec and how.

    ``stdin_script`` is a script the frontend already read from stdin to precheck it; it is
    handed back to bash on fd 0 through a memfd, byte for byte.
    """

    path: str
    argv: tuple[str, ...]
    env: dict[str, str]
    stdin_script: bytes | None = None
    supervision: Supervision | None = None  # None: already governed by an outer supervisor


def _refeed_stdin(data: bytes) -> None:
    """Put ``data`` on fd 0 as a seekable memfd positioned at 0 (memfd_create(2), dup2(2))."""
    fd = os.memfd_create("agentsh-stdin-script", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        os.dup2(fd, 0)  # dup2 clears FD_CLOEXEC on the new descriptor
    finally:
        os.close(fd)


def govern_tree(s: Supervision, *, first_exec: str) -> None:
    """Steps 2–5 of :func:`apply` for this process and everything it will start; the
    caller's next exec must be ``first_exec``. Also used by the REPL, which starts bash
    as a child instead of becoming it.

    Raises:
        LayerUnavailable: supervision, limits or capabilities cannot be applied.
    """
    if s.soft_delete is not None:
        _mount_workspace(s.soft_delete)
    spawn = ptrace.spawn_traced if s.backend == "ptrace" else govern.spawn
    pending = spawn(
        s.checker_factory,
        s.sink_factory,
        first_exec=first_exec,
        session=s.session,
        hardening=s.hardening,
        signals=s.signals,
        files=s.files,
    )
    try:
        if s.limits is not None:
            limits.apply(s.limits, s.session)
        if s.capabilities_allow is not None:
            limits.drop_privileges(s.capabilities_allow)
        if s.landlock is not None:
            landlock.apply(s.landlock)
    except BaseException:
        if pending is not None:
            pending.abandon()  # the supervisor must not wait for a tree never started
        raise
    if pending is not None:
        pending.install()


def _mount_workspace(view: SoftDelete) -> None:
    """A private mount namespace with the FUSE view over the workspace (softdelete.start);
    its daemon is forked here, before every restriction, and unmounts when the tree is gone.
    """
    from pathlib import Path

    from agentsh.enforce import softdelete  # pyfuse3's side: only when a view is asked for

    softdelete.start(
        softdelete.SoftDeletePlan(
            Path(view.workspace),
            view.session,
            mode=view.mode,
            decide=view.decide,
            sink_factory=view.sink_factory,
        )
    )


def apply(plan: Plan) -> NoReturn:
    """Apply the plan to this process and exec. Never returns.

    Order (each step must precede the next):
      1. stdin re-feed (needs no privileges, touches only fd 0);
      2. the soft-delete workspace, when asked for: a private mount namespace and the FUSE
         daemon (outside every restriction: it writes the trash); then fork the exec
         supervisor, before any restriction: it must stay outside the filter (it answers
         it) and outside Landlock (it writes the audit store). Forked after the mount,
         the supervisor sees the tree's view of the workspace;
      3. resource limits: join the session's cgroup (the supervisor, forked before, stays
         outside it) and start the timeout watchdog — before Landlock, which denies
         writes under /sys/fs/cgroup; then the capabilities the config does not allow are
         dropped from the bounding, inheritable and ambient sets (no_new_privs set);
      4. the Landlock ruleset (after the cgroup join, which writes /sys/fs/cgroup; the
         supervisor, forked before, stays outside the domain and can write the audit
         store, which the domain protects);
      5. no_new_privs, the Landlock fence and the seccomp filter — last, so nothing above
         is trapped — then the listener hand-off (``govern.Pending.install``);
      6. execve: this process becomes bash.real (same PID, fds, TTY); that exec is the
         first one the supervisor answers.

    Raises:
        LayerUnavailable: exec supervision or the resource limits cannot be installed
            (nothing ran).
        InternalError: the exec itself failed (bash.real missing or not executable).
    """
    if plan.stdin_script is not None:
        _refeed_stdin(plan.stdin_script)
    if plan.supervision is not None:
        govern_tree(plan.supervision, first_exec=plan.path)
    try:
        os.execve(plan.path, list(plan.argv), plan.env)
    except OSError as err:
        raise InternalError(
            f"cannot execute {plan.path}: {err.strerror}",
            hint="reinstall with `agentsh shim install-shell` or check that the real bash exists",
        ) from err
