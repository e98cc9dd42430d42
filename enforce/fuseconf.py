"""The soft-delete workspace's configuration, apart from the FUSE machinery (which imports
much more): what the frontend needs to decide whether a governed command gets the view.

    probe() -> Support                 /dev/fuse openable, pyfuse3 importable, fusermount3
    settings(config) -> FuseSettings   the config's sandbox.fuse section and its neighbours
    choose(settings, support) -> Choice   mount, or what to do without FUSE (refuse, deny
                                       deletes, allow them audited); ``require`` raises
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentsh.enforce.errors import LayerUnavailable, PolicyError
from agentsh.enforce.policy import Decision
from agentsh.enforce.record import dataclass

DEFAULT_TRASH_ROOT = Path("/var/lib/agentsh/trash")  # the soft-delete trash store

if TYPE_CHECKING:  # enforce.config imports the YAML stack, which the cold path avoids
    from agentsh.enforce.config import Config


class Mode(enum.Enum):
    MONITOR = "monitor"
    SOFT_DELETE = "soft_delete"
    SOFT_BLOCK = "soft_block"


MODE_DECISION = {
    Mode.MONITOR: Decision.AUDIT,
    Mode.SOFT_DELETE: Decision.SOFT_DELETE,
    Mode.SOFT_BLOCK: Decision.DENY,
}


class Action(enum.Enum):
    OFF = "off"  # sandbox.fuse not enabled
    MOUNT = "mount"
    REFUSE = "refuse"  # the command does not run
    DENY_DELETES = "deny_deletes"  # the file monitor refuses deletes in the workspace
    ALLOW_AUDITED = "allow_audited"  # deletes are real and audited


@dataclass(frozen=True)
class Support:
    dev_fuse: bool
    pyfuse3: bool
    fusermount: bool
    root: bool
    reason: str = ""

    @property
    def usable(self) -> bool:
        """Root mounts with mount(2) directly, so fusermount3 is needed only without it."""
        return self.dev_fuse and self.pyfuse3 and self.root


@dataclass(frozen=True)
class FuseSettings:
    enabled: bool = False
    deferred: bool = False
    mode: Mode = Mode.MONITOR
    enforce_without_fuse: bool = False
    allow_degraded: bool = False


@dataclass(frozen=True)
class Choice:
    action: Action
    reason: str


def probe() -> Support:
    """What FUSE needs here: /dev/fuse openable, pyfuse3 importable (not imported: it
    costs ~200 ms), fusermount3 on PATH, and root for the private mount namespace."""
    import importlib.util  # only when FUSE is asked for: not on every governed start
    import shutil

    dev, why = True, []
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as err:
        dev = False
        why.append(f"/dev/fuse cannot be opened ({err.strerror})")
    lib = importlib.util.find_spec("pyfuse3") is not None
    if not lib:
        why.append("pyfuse3 is not installed")
    root = os.geteuid() == 0
    if not root:
        why.append("not root (a private mount namespace needs CAP_SYS_ADMIN)")
    found = shutil.which("fusermount3") is not None
    return Support(dev, lib, found, root, "; ".join(why))


def _setting(config: Config, key: str, kind: type, default: Any) -> Any:
    node: Any = config.raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is None:
        return default
    if not isinstance(node, kind):
        where = str(config.path) if config.path else "config"
        raise PolicyError(where, config.lines.get(key), key, f"must be a {kind.__name__}")
    return node


def settings(config: Config) -> FuseSettings:
    """Read ``sandbox.fuse`` (enabled, deferred, audit.mode; "strict" means monitor: an
    audit failure always refuses here), ``sandbox.seccomp.file_monitor.
    enforce_without_fuse`` and ``sandbox.allow_degraded``.

    Raises:
        PolicyError: a wrong type or an unknown mode (names file, line and key).
    """
    mode_text = _setting(config, "sandbox.fuse.audit.mode", str, "monitor")
    mode_text = "monitor" if mode_text == "strict" else mode_text
    if mode_text not in {m.value for m in Mode}:
        key = "sandbox.fuse.audit.mode"
        where = str(config.path) if config.path else "config"
        why = f"{mode_text!r} is not one of monitor, soft_delete, soft_block, strict"
        raise PolicyError(where, config.lines.get(key), key, why)
    return FuseSettings(
        enabled=_setting(config, "sandbox.fuse.enabled", bool, False),
        deferred=_setting(config, "sandbox.fuse.deferred", bool, False),
        mode=Mode(mode_text),
        enforce_without_fuse=_setting(
            config, "sandbox.seccomp.file_monitor.enforce_without_fuse", bool, False
        ),
        allow_degraded=_setting(config, "sandbox.allow_degraded", bool, False),
    )


def choose(s: FuseSettings, support: Support) -> Choice:
    """What a governed command gets (what ``detect`` shows): the view, or without FUSE:
    deny deletes when the file monitor is to enforce without FUSE or the mode is
    soft_block; allow them audited in monitor mode (nothing is lost) or when the config
    accepts degradation (``deferred``, ``allow_degraded``); otherwise refuse."""
    if not s.enabled:
        return Choice(Action.OFF, "sandbox.fuse is not enabled: deletes are not made recoverable")
    if support.usable:
        return Choice(Action.MOUNT, f"workspace seen through FUSE, audit mode {s.mode.value}")
    missing = f"FUSE unavailable ({support.reason})"
    if s.enforce_without_fuse or s.mode is Mode.SOFT_BLOCK:
        return Choice(Action.DENY_DELETES, f"{missing}: deletes in the workspace are refused")
    if s.mode is Mode.MONITOR or s.deferred or s.allow_degraded:
        return Choice(Action.ALLOW_AUDITED, f"{missing}: deletes are real and audited")
    return Choice(Action.REFUSE, f"{missing}, and sandbox.fuse.enabled requires it")


def require(choice: Choice) -> None:
    """Raises:
    LayerUnavailable: the choice is REFUSE."""
    if choice.action is Action.REFUSE:
        raise LayerUnavailable(
            f"soft-delete workspace: {choice.reason}",
            hint="install fuse3 and pyfuse3 (see `agentsh detect`), or set "
            "sandbox.fuse.deferred or sandbox.allow_degraded to run without it",
        )
