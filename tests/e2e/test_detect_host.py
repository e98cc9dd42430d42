"""`agentsh detect` against the real kernel: every probe does the real thing, leaves nothing
behind, and the CLI's JSON, table, simulation and config output hold together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import config, detect, limits

pytestmark = pytest.mark.e2e


def agentsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsh.shell.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def detect_json(*args: str) -> dict[str, Any]:
    out = agentsh("detect", "--output", "json", *args)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _v2_offers_memory() -> bool:
    for mount, fstype, _ in limits.parse_mounts(Path("/proc/self/mountinfo").read_text()):
        if fstype == "cgroup2" and "memory" in (mount / "cgroup.controllers").read_text().split():
            return True
    return False


def test_probes_find_what_this_machine_has() -> None:
    probes = detect.run_probes()
    missing = {n: p.detail for n, p in probes.items() if not p.available}
    assert missing == {}, missing
    assert probes["landlock"].info["abi"] == 7
    assert probes["seccomp_notify"].detail.endswith("getppid returned 4242")
    assert probes["ptrace"].detail == "seized a child and saw its seccomp stop"
    assert probes["fuse"].available is os.path.exists("/dev/fuse")
    assert probes["cgroups"].info["version"] == (2 if _v2_offers_memory() else 1)
    assert set(probes["cgroups"].info["controllers"]) >= {"memory", "pids"}


def test_probes_are_fast_and_leave_nothing_behind() -> None:
    fds = sorted(os.listdir("/proc/self/fd"))
    start = time.monotonic()
    probes = detect.run_probes()
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, f"detect took {elapsed:.2f}s"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every probe child was reaped
    assert sorted(os.listdir("/proc/self/fd")) == fds
    base = Path(str(probes["cgroups"].info["base"]))
    assert not (base / f"probe-{os.getpid()}").exists()
    assert limits.read_capabilities().no_new_privs is False  # only children set it


def test_notify_probe_inside_a_listener_reports_why() -> None:
    """A process already under a seccomp listener (a governed tree) cannot add another."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            detect._install_filter(
                detect._bpf(169, detect.SECCOMP_RET_USER_NOTIF),  # reboot(2): never called
                detect.SECCOMP_FILTER_FLAG_NEW_LISTENER,
            )
            notify, _ = detect.probe_seccomp_notify()
            os.write(write, json.dumps([notify.available, notify.detail]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        available, detail = json.loads(f.read())
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert available is False
    assert "EBUSY" in detail


def test_cli_json_reports_full_protection_here() -> None:
    data = detect_json()
    assert data["protection_score"] == 100
    assert data["security_mode"] == "full"
    assert [d["active"] for d in data["domains"]][:2] == [
        "landlock+notify-monitor",
        "seccomp-notify",
    ]
    assert data["capabilities"]["landlock_abi"] == 7
    assert data["simulated_missing"] == []


def test_cli_simulated_missing_features_change_score_mode_and_tips() -> None:
    full = detect_json()
    args = ["--simulate-missing", "ptrace", "--simulate-missing", "seccomp_notify"]
    less = detect_json(*args, "--simulate-missing", "fuse")
    assert less["protection_score"] == 75 < full["protection_score"]
    assert less["security_mode"] == "landlock-only"
    features = {t["feature"] for t in less["tips"]}
    assert {"ptrace", "seccomp-notify", "fuse"} <= features
    assert less["simulated_missing"] == ["fuse", "ptrace", "seccomp_notify"]
    only_notify = detect_json("--simulate-missing", "seccomp_notify")
    assert only_notify["security_mode"] == "ptrace"
    assert only_notify["protection_score"] == 100  # ptrace covers exec supervision


def test_cli_table_and_bad_probe_name() -> None:
    out = agentsh("detect")
    assert out.returncode == 0, out.stderr
    assert "Protection score:  100/100" in out.stdout
    assert "Security mode:     full" in out.stdout
    bad = agentsh("detect", "--simulate-missing", "selinux")
    assert bad.returncode == 2
    assert "selinux" in bad.stderr


def test_cli_config_loads_and_enables_what_works(tmp_path: Path) -> None:
    out = agentsh("detect", "config")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "config.yaml"
    path.write_text(out.stdout)
    cfg = config.load_config(path)
    assert cfg.raw["security"] == {"mode": "full", "strict": True}
    sandbox: Any = cfg.raw["sandbox"]
    assert sandbox["seccomp"]["execve"]["enabled"] is True
    assert sandbox["ptrace"]["enabled"] is False
    assert sandbox["cgroups"]["enabled"] is True
