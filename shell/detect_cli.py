"""``agentsh detect [--output table|json]`` and ``agentsh detect config``: what this machine
lets agentsh enforce, scored as the Go agentsh does, and a config.yaml tuned for it.

The lead's ``cli.build_parser`` calls :func:`add_parser`. ``--simulate-missing`` exists for
trying out what agentsh does without a feature; it is an option of this verb only, never an
environment variable, so it cannot switch a layer off for a governed command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from agentsh.enforce import detect, fuseconf
from agentsh.enforce.detect import Report

_EXEC_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin", "/usr/lib", "/lib",
              "/lib64")  # fmt: skip
_READ_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev")
_WRITE_DIRS = ("/tmp", "/var/tmp")


def add_parser(verbs: Any) -> None:
    """Add ``detect`` (and ``detect config``) to the ``agentsh`` sub-command parsers."""
    p = verbs.add_parser(
        "detect",
        help="probe the kernel features agentsh needs and score the protection",
        description="Probe this machine (seccomp user-notify, ptrace, Landlock, FUSE, cgroups, "
        "namespaces, capabilities) by trying each feature in a short-lived child, then print "
        "the protection score, the security mode that will be used and what is missing.",
    )
    p.add_argument(
        "--output", choices=("table", "json"), default="table", help="output format (table)"
    )
    p.add_argument(
        "--simulate-missing",
        action="append",
        default=[],
        choices=detect.PROBES,
        metavar="PROBE",
        help="report PROBE as missing without running it (repeatable): shows the score, "
        f"mode and tips of a machine without it; one of {', '.join(detect.PROBES)}",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path("/etc/agentsh/config.yaml"),
        help="the config whose sandbox.fuse choice to report (default /etc/agentsh/config.yaml)",
    )
    p.set_defaults(func=_cmd_detect)
    sub = p.add_subparsers(dest="detect_verb", metavar="[config]", parser_class=type(p))
    sub.required = False
    c = sub.add_parser(
        "config",
        help="print a config.yaml tuned for this machine",
        description="Print a config.yaml whose sandbox, landlock, security and capabilities "
        "sections match what the probes found on this machine.",
    )
    c.set_defaults(func=_cmd_config)


def _cmd_detect(args: argparse.Namespace) -> int:
    report = detect.detect(simulate=args.simulate_missing)
    deletes = soft_delete_choice(report, args.config)
    if args.output == "json":
        data = {**to_json(report), "soft_delete": {"action": deletes.action.value,
                                                    "reason": deletes.reason}}  # fmt: skip
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(table(report))
        sys.stdout.write(f"Soft delete ({args.config}): {deletes.action.value}: {deletes.reason}\n")
    return 0


def soft_delete_choice(r: Report, config_path: Path) -> fuseconf.Choice:
    """What governed commands get for deletes under the config at ``config_path`` (absent:
    defaults) on this machine: the FUSE view, or the config's fallback (refuse the
    command, refuse deletes, let them happen audited), as the frontend decides it.

    Raises:
        PolicyError: the config is invalid (names file, line and key).
    """
    from agentsh.enforce import config

    cfg = config.load_config(config_path)
    probe = r.probes["fuse"]
    support = (
        fuseconf.probe()
        if probe.available
        else fuseconf.Support(False, False, False, os.geteuid() == 0, probe.detail)
    )
    return fuseconf.choose(fuseconf.settings(cfg), support)


def _cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config_text(detect.detect(simulate=args.simulate_missing)))
    return 0


def to_json(r: Report) -> dict[str, object]:
    """The stable JSON form (``schema`` 1); names follow the Go agentsh's detect output."""
    p = r.probes
    cgroups = p["cgroups"].info.get("version") if p["cgroups"].available else 0
    return {
        "schema": 1,
        "platform": platform.system().lower(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "security_mode": r.security_mode,
        "mode_reason": r.mode_reason,
        "protection_score": r.score,
        "enforced_score": r.enforced_score,
        "domains": [
            {"name": d.name, "weight": d.weight, "score": d.score, "active": d.active,
             "enforced": d.enforced, "backends": [vars(b) for b in d.backends]}
            for d in r.domains
        ],
        "capabilities": {
            "seccomp_user_notify": p["seccomp_notify"].available,
            "notify_sync_wakeup": p["notify_sync_wakeup"].available,
            "ptrace": p["ptrace"].available,
            "landlock": p["landlock"].available,
            "landlock_abi": p["landlock"].info.get("abi", 0) if p["landlock"].available else 0,
            "landlock_network": bool(p["landlock"].info.get("network")),
            "fuse": p["fuse"].available,
            "cgroups_version": cgroups,
            "capabilities_drop": p["capabilities"].available,
            "no_new_privs": p["no_new_privs"].available,
        },
        "probes": {n: {"available": q.available, "detail": q.detail, "info": dict(q.info)}
                   for n, q in p.items()},
        "summary": {
            "available": [b.name for d in r.domains for b in d.backends if b.available],
            "unavailable": [b.name for d in r.domains for b in d.backends if not b.available],
        },
        "tips": [vars(t) for t in r.tips],
        "simulated_missing": list(r.simulated),
    }  # fmt: skip


def table(r: Report) -> str:
    """The plain-language report."""
    out = [
        "agentsh detect: what this machine lets agentsh enforce",
        "",
        f"Platform:          {r.platform}",
        f"Security mode:     {r.security_mode}",
        f"                   {r.mode_reason}",
        f"Protection score:  {r.score}/100 (what this kernel allows)",
        f"Enforced now:      {r.enforced_score}/100 (what this version of agentsh applies)",
    ]
    if r.simulated:
        out.append(f"Simulated missing: {', '.join(r.simulated)} (not probed)")
    for d in r.domains:
        note = "" if d.enforced or not d.covered else "  (kernel ready; not applied yet)"
        out += ["", f"{d.name.upper():<24} {d.score:>2}/{d.weight:<3} using {d.active}{note}"]
        for b in d.backends:
            mark = "yes" if b.available else "no "
            out.append(f"  [{mark}] {b.name:<20} {b.description}")
            out.append(f"        {'':<20} {b.detail}")
    out += ["", "WHAT IS MISSING" if r.tips else "Nothing is missing."]
    for t in r.tips:
        out += [f"  {t.feature}: {t.impact}", f"    fix: {t.action}"]
    out += ["", "Run `agentsh detect config` to print a config.yaml tuned for this machine."]
    return "\n".join(out) + "\n"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _dirs(key: str, candidates: tuple[str, ...]) -> list[str]:
    return [f"  {key}:", *(f"    - {d}" for d in candidates if os.path.isdir(d))]


def config_text(r: Report) -> str:
    """A config.yaml for this machine, using only keys the config loader accepts."""
    p = r.probes
    notify, trace = p["seccomp_notify"].available, p["ptrace"].available
    landlock, cgroups = p["landlock"].available, p["cgroups"].available
    fuse = p["fuse"].available and bool(p["fuse"].info.get("pyfuse3"))
    lines = [
        "# Generated by: agentsh detect config",
        f"# Platform: {r.platform}",
        f"# Security mode: {r.security_mode}",
        f"# Protection score: {r.score}/100",
        "# Resource limits themselves belong in the policy (resource_limits).",
        "",
        "security:",
        f"  mode: {r.security_mode}",
        "  strict: true",
        "",
        "sandbox:",
        "  enabled: true",
        "  allow_degraded: false  # refuse commands when a layer the config enables is missing",
        "  seccomp:",
        f"    enabled: {_flag(notify or trace)}",
        "    execve:",
        f"      enabled: {_flag(notify)}  # user-notify supervises every exec",
        "    file_monitor:",
        f"      enabled: {_flag(notify)}",
        f"      enforce_without_fuse: {_flag(notify)}",
        "  ptrace:",
        f"    enabled: {_flag(trace and not notify)}  # the fallback when user-notify is missing",
        "    trace:",
        f"      execve: {_flag(trace and not notify)}",
        "  fuse:",
        f"    enabled: {_flag(fuse)}  # needs /dev/fuse, libfuse3 and pyfuse3",
        "  cgroups:",
        f"    enabled: {_flag(cgroups)}",
        "  network:",
        "    enabled: true",
        "",
        "landlock:",
        f"  enabled: {_flag(landlock)}",
    ]
    if landlock:
        lines += _dirs("allow_execute", _EXEC_DIRS) + _dirs("allow_read", _READ_DIRS)
        lines += [*_dirs("allow_write", _WRITE_DIRS), "    # add the agent's workspace here"]
    lines += ["", "capabilities:", "  allow: []  # drop every capability before exec", ""]
    return "\n".join(lines)
