"""The protection score, security mode and tips from synthetic probe results (no kernel),
the JSON and config renderings, and the pure parts of the limits module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentsh.enforce import config, detect, limits
from agentsh.enforce.detect import Probe
from agentsh.enforce.errors import LayerUnavailable, PolicyError, UsageError
from agentsh.enforce.policy import ResourceLimits
from agentsh.shell import detect_cli

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"


def _host(**overrides: Probe) -> dict[str, Probe]:
    """Probe results of a machine that has everything (like this project's CI)."""
    probes = {
        "seccomp_notify": Probe("seccomp_notify", True, "answered"),
        "notify_sync_wakeup": Probe("notify_sync_wakeup", True, "accepted"),
        "ptrace": Probe("ptrace", True, "seized"),
        "landlock": Probe("landlock", True, "ABI 7", {"abi": 7, "network": True}),
        "fuse": Probe("fuse", True, "opens", {"libfuse3": "/lib/libfuse3.so.3", "pyfuse3": True}),
        "cgroups": Probe("cgroups", True, "v2", {"version": 2}),
        "namespaces": Probe("namespaces", True, "all"),
        "capabilities": Probe("capabilities", True, "can drop"),
        "no_new_privs": Probe("no_new_privs", True, "can set"),
    }
    probes.update(overrides)
    return probes


def _missing(*names: str) -> dict[str, Probe]:
    return _host(**{n: Probe(n, False, "missing") for n in names})


def _features(report: detect.Report) -> list[str]:
    return sorted(t.feature for t in report.tips)


def test_weights_are_the_go_agentsh_model() -> None:
    report = detect.assess(_host())
    assert [(d.name, d.weight) for d in report.domains] == [
        ("File Protection", 25),
        ("Command Control", 25),
        ("Network", 20),
        ("Resource Limits", 15),
        ("Isolation", 15),
    ]
    assert report.score == 100
    assert report.security_mode == "full"
    assert report.tips == ()
    assert [d.active for d in report.domains] == [
        "landlock+notify-monitor",
        "seccomp-notify",
        "proxy+connect-supervision",
        "cgroups-v2",
        "capability-drop+no-new-privs",
    ]


@pytest.mark.parametrize(
    ("missing", "score", "mode", "tips"),
    [
        ((), 100, "full", []),
        (("ptrace",), 100, "full", ["ptrace"]),
        (("seccomp_notify", "notify_sync_wakeup"), 100, "ptrace", ["seccomp-notify"]),
        (("fuse",), 100, "full", ["fuse"]),
        (("seccomp_notify", "notify_sync_wakeup", "ptrace"), 75, "landlock-only",
         ["ptrace", "seccomp-notify"]),
        (("seccomp_notify", "notify_sync_wakeup", "ptrace", "fuse"), 75, "landlock-only",
         ["fuse", "ptrace", "seccomp-notify"]),
        # Landlock gone too: FUSE still covers files, nothing covers the network.
        (("seccomp_notify", "notify_sync_wakeup", "ptrace", "landlock"), 55, "minimal",
         ["landlock", "landlock-network", "ptrace", "seccomp-notify"]),
        (("seccomp_notify", "notify_sync_wakeup", "ptrace", "landlock", "fuse"), 30, "minimal",
         ["fuse", "landlock", "landlock-network", "ptrace", "seccomp-notify"]),
        (("landlock",), 100, "full", ["landlock"]),
        (("cgroups",), 85, "full", ["cgroups"]),
        (("capabilities",), 85, "full", ["capability-drop"]),
        (("no_new_privs",), 85, "full", ["no-new-privs"]),
        (("namespaces",), 100, "full", []),  # reported only, not applied: no points
    ],
)  # fmt: skip
def test_missing_features_change_score_mode_and_tips(
    missing: tuple[str, ...], score: int, mode: str, tips: list[str]
) -> None:
    report = detect.assess(_missing(*missing))
    assert report.score == score == sum(d.score for d in report.domains)
    assert report.security_mode == mode
    assert _features(report) == tips


def test_tip_names_the_points_it_would_bring() -> None:
    report = detect.assess(_missing("seccomp_notify", "notify_sync_wakeup", "ptrace", "cgroups"))
    impact = {t.feature: t.impact for t in report.tips}
    assert impact["seccomp-notify"].endswith("(+25 pts)")
    assert impact["cgroups"].endswith("(+15 pts)")
    covered = detect.assess(_missing("fuse"))
    assert "score unchanged" in covered.tips[0].impact
    assert "libfuse3" in covered.tips[0].action


def test_notify_under_an_outer_listener_says_so() -> None:
    busy = Probe("seccomp_notify", False, "seccomp(NEW_LISTENER) failed with EBUSY (busy)")
    report = detect.assess(_host(seccomp_notify=busy, ptrace=Probe("ptrace", False, "EPERM")))
    tip = next(t for t in report.tips if t.feature == "seccomp-notify")
    assert "governed tree" in tip.action


def test_landlock_without_network_abi_leaves_network_to_supervision() -> None:
    old = Probe("landlock", True, "ABI 3", {"abi": 3})
    report = detect.assess(_host(landlock=old, seccomp_notify=Probe("seccomp_notify", False, "x"),
                                 ptrace=Probe("ptrace", False, "x")))  # fmt: skip
    network = next(d for d in report.domains if d.name == "Network")
    assert (network.score, network.active) == (0, "none")
    assert report.score == 55


def test_isolation_needs_both_capability_drop_and_no_new_privs() -> None:
    report = detect.assess(_missing("no_new_privs"))
    isolation = report.domains[-1]
    assert isolation.active == "capability-drop only"
    assert isolation.score == 0


def test_cgroup_version_picks_the_active_backend() -> None:
    report = detect.assess(_host(cgroups=Probe("cgroups", True, "v1", {"version": 1})))
    resource = report.domains[3]
    assert (resource.active, resource.score) == ("cgroups-v1", 15)
    assert [b.available for b in resource.backends] == [False, True]


def test_partial_fuse_and_slow_notify_get_advice_without_points() -> None:
    fuse = Probe("fuse", True, "opens", {"libfuse3": None, "pyfuse3": False})
    sync = Probe("notify_sync_wakeup", False, "not accepted")
    report = detect.assess(_host(fuse=fuse, notify_sync_wakeup=sync))
    assert report.score == 100
    assert _features(report) == ["fuse-userspace", "notify-sync-wakeup"]


def test_unknown_probe_names_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown probe"):
        detect.run_probes(simulate=["seccomp"])
    with pytest.raises(UsageError, match="unknown probe"):
        detect.require(["landlock", "selinux"])


def test_simulated_notify_also_removes_sync_wakeup_without_probing() -> None:
    probes = detect.run_probes(names=(), simulate=["seccomp_notify"])
    assert set(probes) == {"seccomp_notify", "notify_sync_wakeup"}
    assert not any(p.available for p in probes.values())
    assert all(p.info == {"simulated": True} for p in probes.values())


def test_require_refuses_a_missing_layer_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(names: Any, *, simulate: Any = ()) -> dict[str, Probe]:
        return {"ptrace": Probe("ptrace", False, "PTRACE_SEIZE failed with EPERM")}

    monkeypatch.setattr(detect, "run_probes", fake)
    with pytest.raises(
        LayerUnavailable, match="required layer ptrace is unavailable: PTRACE_SEIZE"
    ):
        detect.require(["ptrace"])


def test_json_is_stable_and_complete() -> None:
    report = detect.assess(_missing("ptrace", "fuse"), simulated=["ptrace", "fuse"])
    data = json.loads(json.dumps(detect_cli.to_json(report)))
    assert data["schema"] == 1
    assert data["protection_score"] == 100
    assert data["security_mode"] == "full"
    assert data["simulated_missing"] == ["fuse", "ptrace"]
    assert [d["score"] for d in data["domains"]] == [25, 25, 20, 15, 15]
    assert data["capabilities"]["ptrace"] is False
    assert data["capabilities"]["landlock_abi"] == 7
    assert "ptrace" in data["summary"]["unavailable"]
    assert {t["feature"] for t in data["tips"]} == {"ptrace", "fuse"}
    assert set(data["probes"]) == set(detect.PROBES)


def test_table_is_plain_language() -> None:
    text = detect_cli.table(detect.assess(_missing("seccomp_notify", "ptrace"), ["ptrace"]))
    assert "Protection score:  75/100" in text
    assert "Security mode:     landlock-only" in text
    assert "COMMAND CONTROL" in text
    assert " 0/25" in text
    assert "Simulated missing: ptrace" in text
    assert "fix: grant CAP_SYS_PTRACE" in text


def _load(text: str) -> config.Config:
    return config.loads_config(text, Path("generated.yaml"))


@pytest.mark.parametrize(
    "missing",
    [(), ("seccomp_notify",), ("seccomp_notify", "ptrace", "landlock", "fuse", "cgroups")],
)
def test_generated_config_loads_and_matches_the_host(missing: tuple[str, ...]) -> None:
    report = detect.assess(_missing(*missing))
    text = detect_cli.config_text(report)
    cfg = _load(text)  # raises PolicyError on an unknown key
    assert cfg.path == Path("generated.yaml")
    data = yaml.safe_load(text)
    assert data["security"]["mode"] == report.security_mode
    assert data["capabilities"]["allow"] == []
    sandbox = data["sandbox"]
    assert sandbox["seccomp"]["execve"]["enabled"] is ("seccomp_notify" not in missing)
    assert sandbox["ptrace"]["enabled"] is (missing == ("seccomp_notify",))
    assert sandbox["cgroups"]["enabled"] is ("cgroups" not in missing)
    assert data["landlock"]["enabled"] is ("landlock" not in missing)
    assert ("allow_write" in data["landlock"]) is ("landlock" not in missing)


def test_generated_config_keys_are_those_real_configs_use() -> None:
    def paths(node: object, prefix: str = "") -> set[str]:
        if not isinstance(node, dict):
            return {prefix}
        return {p for k, v in node.items() for p in paths(v, f"{prefix}.{k}" if prefix else k)}

    seed_keys = set()
    for seed in SEEDS.glob("*/config.yaml"):
        seed_keys |= paths(yaml.safe_load(seed.read_text()))
    assert seed_keys, f"no seed configs under {SEEDS}"
    generated = paths(yaml.safe_load(detect_cli.config_text(detect.assess(_host()))))
    assert generated <= seed_keys


# --- limits: pure parts ----------------------------------------------------------------

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
"""
HYBRID_CGROUP = "8:pids:/\n4:memory:/svc/x\n1:cpu,cpuacct:/\n0::/\n"


def test_parse_mounts_and_own_cgroup() -> None:
    mounts = limits.parse_mounts(HYBRID_MOUNTINFO)
    assert [(str(m), t) for m, t, _ in mounts] == [
        ("/sys/fs/cgroup/cpu", "cgroup"),
        ("/sys/fs/cgroup/memory", "cgroup"),
        ("/sys/fs/cgroup/pids", "cgroup"),
        ("/sys/fs/cgroup/unified", "cgroup2"),
    ]
    assert "memory" in mounts[1][2]
    assert limits.parse_own(HYBRID_CGROUP) == {
        "pids": "/",
        "memory": "/svc/x",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


@pytest.mark.parametrize(
    ("version", "lim", "expected"),
    [
        (2, ResourceLimits(max_memory_mb=100), [("memory.max", "104857600", False),
                                                 ("memory.swap.max", "0", True)]),
        (2, ResourceLimits(max_memory_mb=1, memory_swap_max_mb=2),
         [("memory.max", "1048576", False), ("memory.swap.max", "2097152", True)]),
        (1, ResourceLimits(max_memory_mb=100), [("memory.limit_in_bytes", "104857600", False),
                                                 ("memory.memsw.limit_in_bytes", "104857600",
                                                  True)]),
        (2, ResourceLimits(cpu_quota_percent=50), [("cpu.max", "50000 100000", False)]),
        (1, ResourceLimits(cpu_quota_percent=200), [("cpu.cfs_period_us", "100000", False),
                                                     ("cpu.cfs_quota_us", "200000", False)]),
        (1, ResourceLimits(pids_max=20), [("pids.max", "20", False)]),
    ],
)  # fmt: skip
def test_limit_files(version: int, lim: ResourceLimits, expected: list[Any]) -> None:
    ctrl = next(iter(limits.controllers_for(lim)))
    assert limits.limit_files(version, ctrl, lim) == expected


def test_controllers_for_each_limit() -> None:
    assert limits.controllers_for(ResourceLimits()) == frozenset()
    assert limits.controllers_for(ResourceLimits(command_timeout_s=5)) == frozenset()
    full = ResourceLimits(max_memory_mb=1, pids_max=1, cpu_quota_percent=1, disk_read_bps_max=1)
    assert limits.controllers_for(full) == {"memory", "pids", "cpu", "io"}


def test_capability_names_and_numbers() -> None:
    assert limits.capability_number("CAP_NET_RAW") == 13
    assert limits.capability_number("cap_net_bind_service") == 10
    assert limits.capability_number("checkpoint_restore") == 40
    assert limits.capability_names(0x1FFFEFFFFFF).count("CAP_SYS_RESOURCE") == 0
    assert limits.capability_names(1 << 21) == ["CAP_SYS_ADMIN"]
    with pytest.raises(ValueError, match="unknown capability 'CAP_FLY'"):
        limits.capability_number("CAP_FLY")


@pytest.mark.parametrize("name", ["CAP_SYS_ADMIN", "sys_ptrace", "Cap_Dac_Override", "setuid"])
def test_escape_capabilities_cannot_be_allowed(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be allowed"):
        limits.allowed_capabilities(["net_bind_service", name])


def test_read_capabilities_parses_status() -> None:
    status = "Name:\tx\nCapInh:\t0\nCapPrm:\t0000000000000420\nCapEff:\t0000000000000420\n"
    status += "CapBnd:\t000001ffffffffff\nCapAmb:\t0\nNoNewPrivs:\t1\n"
    state = limits.read_capabilities(status)
    assert (state.effective, state.bounding, state.no_new_privs) == (0x420, 0x1FFFFFFFFFF, True)


def test_bad_session_names_are_refused() -> None:
    for bad in ("", "../x", "a/b", ".hidden", "x" * 80):
        with pytest.raises(UsageError, match="invalid session name"):
            limits.apply(ResourceLimits(pids_max=5), bad)


def test_required_limits_without_cgroups_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "find_hierarchy", lambda needed: (None, "no v1 pids"))
    with pytest.raises(LayerUnavailable, match=r"offers memory, pids \(no v1 pids\)"):
        limits.apply(ResourceLimits(max_memory_mb=10, pids_max=5), "s1")


def test_no_limits_touch_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(needed: object) -> None:
        raise AssertionError("no cgroup lookup expected")

    monkeypatch.setattr(limits, "find_hierarchy", boom)
    limits.apply(ResourceLimits(), "s2")


def test_kernel_constants_the_probes_use() -> None:
    def ioc(direction: int, nr: int, size: int) -> int:
        return (direction << 30) | (size << 16) | (ord("!") << 8) | nr

    assert ioc(3, 0, 80) == detect.SECCOMP_IOCTL_NOTIF_RECV
    assert ioc(3, 1, 24) == detect.SECCOMP_IOCTL_NOTIF_SEND
    assert ioc(1, 4, 8) == detect.SECCOMP_IOCTL_NOTIF_SET_FLAGS
    assert (limits.PR_CAPBSET_READ, limits.PR_CAPBSET_DROP) == (23, 24)
    assert (limits.PR_SET_NO_NEW_PRIVS, limits.PR_GET_NO_NEW_PRIVS, limits.PR_CAP_AMBIENT) == (
        38,
        39,
        47,
    )
    assert len(detect._bpf(110, detect.SECCOMP_RET_TRACE)) == 6 * 8


def test_optional_limits_without_cgroups_run_unlimited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "find_hierarchy", lambda needed: (None, "no v1 pids"))

    def no_fork() -> int:
        raise AssertionError("no watchdog expected")

    monkeypatch.setattr(limits.os, "fork", no_fork)
    limits.apply(ResourceLimits(pids_max=5), "s3", required=False)


def test_enforced_score_counts_only_layers_this_version_applies() -> None:
    """Kernel readiness is not protection: the network layer is not applied yet."""
    report = detect.assess(_host())
    by_name = {d.name: d for d in report.domains}
    assert report.score == 100
    assert by_name["Command Control"].enforced
    assert by_name["File Protection"].enforced
    assert not by_name["Network"].enforced
    assert report.enforced_score == 100 - 20
    assert detect_cli.to_json(report)["enforced_score"] == report.enforced_score
    assert "Enforced now:      80/100" in detect_cli.table(report)


@pytest.mark.parametrize(
    ("section", "action"),
    [
        ("", "off"),
        ("    enabled: true\n    audit:\n      mode: soft_delete\n", "refuse"),
        ("    enabled: true\n    audit:\n      mode: soft_block\n", "deny_deletes"),
        ("    enabled: true\n    audit:\n      mode: monitor\n", "allow_audited"),
        ("    enabled: true\n    deferred: true\n    audit:\n      mode: soft_delete\n",
         "allow_audited"),
    ],
)  # fmt: skip
def test_detect_says_what_deletes_get_without_fuse(
    tmp_path: Path, section: str, action: str
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sandbox:\n  fuse:\n" + section if section else "")
    report = detect.assess(_missing("fuse"), ["fuse"])
    choice = detect_cli.soft_delete_choice(report, cfg)
    assert choice.action.value == action
    if action != "off":
        assert "FUSE unavailable" in choice.reason


def test_detect_soft_delete_refuses_a_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sandbox:\n  fuse:\n    enabled: yes-please\n")
    with pytest.raises(PolicyError, match=r"sandbox\.fuse\.enabled"):
        detect_cli.soft_delete_choice(detect.assess(_host()), cfg)
