"""``agentsh shim install-shell | uninstall-shell | status`` for real, with --root / inside
an overlay root (and in a scratch root for layouts this machine does not have).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce.errors import UsageError
from agentsh.install import shellinstall as si

pytestmark = pytest.mark.e2e

BIN = Path("/usr/bin")
WATCHED = (
    "/usr/bin/bash",
    "/usr/bin/bash.real",
    "/usr/bin/sh",
    "/usr/bin/sh.real",
    "/etc/agentsh",
    "/etc/agentsh/shim.conf",
    "/usr/lib/agentsh",
    "/usr/lib/agentsh/bash_startup.sh",
    "/var/lib/agentsh",
    "/var/lib/agentsh/shim-install.json",
)


def _snapshot(paths: tuple[str, ...] = WATCHED) -> dict[str, Any]:
    """What a user could notice about each path: type, link text, content, mode, owner,
    and for files and directories inode and mtime ("changes nothing" = "rewrites nothing")."""
    snap: dict[str, Any] = {}
    for name in paths:
        path = Path(name)
        if not os.path.lexists(path):
            snap[name] = None
            continue
        st = path.lstat()
        entry: dict[str, Any] = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
        if path.is_symlink():  # a symbolic link is its text: restored, it is a new inode
            entry["link"] = os.readlink(path)
            snap[name] = entry
            continue
        entry.update(ino=st.st_ino, mtime=st.st_mtime_ns)
        if path.is_file():
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        snap[name] = entry
    return snap


def _states(status: si.Status) -> dict[str, str]:
    return {t.name: t.state for t in status.targets}


def test_install_status_uninstall_round_trip(h: Any, overlay: Any) -> None:
    def inside() -> dict[str, Any]:
        before = _snapshot()
        report = si.install_shell(h.options())
        installed = _snapshot()
        status = si.shim_status(h.options())
        bypass = h.run(["bash", "-c", 'echo "$0 ok"'])
        sh_out = h.run(["sh", "-c", 'echo "${BASH_VERSION:-dash}"'])
        conf = h.CONF.read_text()
        si.uninstall_shell(h.options())
        after = _snapshot()
        return {
            "before": before,
            "installed": installed,
            "after": after,
            "report": report,
            "status": _states(status),
            "bypass": bypass.stdout,
            "sh": sh_out.stdout,
            "conf": conf,
            "final": _states(si.shim_status(h.options())),
        }

    r = overlay(inside)
    before, installed, after = r["before"], r["installed"], r["after"]
    assert r["report"].changed
    assert r["status"] == {"bash": "installed", "sh": "installed"}
    # The originals are kept: bash.real is the very same file, sh.real a copy of dash.
    assert installed["/usr/bin/bash.real"]["sha256"] == before["/usr/bin/bash"]["sha256"]
    assert installed["/usr/bin/bash.real"]["ino"] == before["/usr/bin/bash"]["ino"]
    assert installed["/usr/bin/bash"]["sha256"] == hashlib.sha256(h.shim.read_bytes()).hexdigest()
    assert stat.S_IMODE(installed["/usr/bin/bash"]["mode"]) == 0o755
    assert before["/usr/bin/sh"]["link"] == "dash"
    assert stat.S_ISREG(installed["/usr/bin/sh.real"]["mode"])
    assert (
        installed["/usr/bin/sh.real"]["sha256"]
        == hashlib.sha256(Path("/usr/bin/dash").read_bytes()).hexdigest()
    )
    # shim.conf: root-owned 0644 under a 0755 root-owned directory, and what the flags say.
    assert r["conf"].splitlines()[1:] == ["force=false", f"frontend={sys.executable}"]
    assert stat.S_IMODE(installed["/etc/agentsh/shim.conf"]["mode"]) == 0o644
    assert stat.S_IMODE(installed["/etc/agentsh"]["mode"]) == 0o755
    assert installed["/etc/agentsh/shim.conf"]["uid"] == 0
    assert stat.S_IMODE(installed["/usr/lib/agentsh/bash_startup.sh"]["mode"]) == 0o644
    # The shells still work through the non-TTY bypass.
    assert r["bypass"] == b"bash ok\n"
    assert r["sh"] == b"dash\n"
    # Uninstall: every watched path exactly as before (content, mode, owner, inode; the
    # same symlink text), and nothing of ours is left.
    assert after == before
    assert r["final"] == {"bash": "not_installed", "sh": "not_installed"}


def test_host_is_untouched_after_an_overlay_install(h: Any, overlay: Any) -> None:
    host_before = _snapshot(("/usr/bin/bash", "/usr/bin/sh", "/etc/agentsh"))

    def inside() -> str:
        si.install_shell(h.options(force=True))
        return hashlib.sha256(Path("/usr/bin/bash").read_bytes()).hexdigest()

    inside_sha = overlay(inside)
    assert inside_sha == hashlib.sha256(h.shim.read_bytes()).hexdigest()
    assert _snapshot(("/usr/bin/bash", "/usr/bin/sh", "/etc/agentsh")) == host_before
    assert not os.path.lexists("/usr/bin/bash.real")
    assert not os.path.lexists("/var/lib/agentsh/shim-install.json")


def test_install_twice_changes_nothing(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any, Any]:
        si.install_shell(h.options(force=True))
        first = _snapshot()
        again = si.install_shell(h.options(force=True))
        return first, _snapshot(), again

    first, second, again = overlay(inside)
    assert not again.changed
    assert second == first
    # The kept original is still bash, never overwritten with the shim.
    assert second["/usr/bin/bash.real"]["sha256"] != second["/usr/bin/bash"]["sha256"]


def test_reinstall_without_force_clears_it(h: Any, overlay: Any) -> None:
    def inside() -> tuple[str, str, Any]:
        si.install_shell(h.options(force=True))
        forced = h.CONF.read_text()
        report = si.install_shell(h.options())
        return forced, h.CONF.read_text(), report

    forced, unforced, report = overlay(inside)
    assert "force=true" in forced.splitlines()
    assert "force=false" in unforced.splitlines()
    assert [a.op for a in report.actions if a.op != "skip"] == ["write"]


def test_bash_only_leaves_sh_alone(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any, Any]:
        before = _snapshot(("/usr/bin/sh",))
        si.install_shell(h.options(shells=("bash",)))
        return before, _snapshot(("/usr/bin/sh", "/usr/bin/sh.real")), si.shim_status(h.options())

    before, after, status = overlay(inside)
    assert after["/usr/bin/sh"] == before["/usr/bin/sh"]
    assert after["/usr/bin/sh.real"] is None
    assert _states(status) == {"bash": "installed", "sh": "not_installed"}


def test_dry_run_changes_nothing_and_lists_the_plan(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any, Any]:
        before = _snapshot()
        report = si.install_shell(h.options(dry_run=True, force=True))
        return before, _snapshot(), report

    before, after, report = overlay(inside)
    assert after == before
    assert report.dry_run
    ops = {(a.op, a.path) for a in report.actions}
    assert ("link_real", "/usr/bin/bash.real") in ops
    assert ("copy_real", "/usr/bin/sh.real") in ops
    assert ("write", "/etc/agentsh/shim.conf") in ops
    assert "would replace /usr/bin/bash with the shim" in si.render(report)


def test_host_root_needs_the_understand_flag(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any]:
        before = _snapshot()
        try:
            si.install_shell(h.options(host_ok=False))
        except UsageError as err:
            return err, _snapshot() == before
        return None, _snapshot() == before

    err, unchanged = overlay(inside)
    assert isinstance(err, UsageError)
    assert err.exit_code == 2
    assert "--i-understand-this-modifies-the-host" in (err.hint or "")
    assert unchanged


def test_cli_json_output_parses(h: Any, overlay: Any) -> None:
    agentsh = str(Path(sys.executable).with_name("agentsh"))

    def inside() -> tuple[Any, Any, Any]:
        flags = ["--root", "/", "--shim", str(h.shim), "--output", "json"]
        si.install_shell(h.options())
        status = h.run([agentsh, "shim", "status", *flags])
        dry = h.run([agentsh, "shim", "uninstall-shell", *flags, "--dry-run"])
        refused = h.run([agentsh, "shim", "uninstall-shell", "--root", "/"])
        return status, dry, refused

    status, dry, refused = overlay(inside)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    states = {t["name"]: t["state"] for t in doc["targets"]}
    assert states == {"bash": "installed", "sh": "installed"}
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert plan["changed"] is True
    assert {"op": "restore", "path": "/usr/bin/bash"} in [
        {"op": a["op"], "path": a["path"]} for a in plan["actions"]
    ]
    assert refused.returncode == 2
    assert b"--i-understand-this-modifies-the-host" in refused.stderr


def test_sh_linked_to_bash_gets_the_real_bash(h: Any, overlay: Any) -> None:
    """Fedora/Arch: /bin/sh -> bash. sh.real must be a copy of the real bash, never the
    shim (which would exec sh.real.real: the anchor's exec-loop pitfall)."""

    def inside() -> tuple[Any, Any, Any, Any]:
        Path("/usr/bin/sh").unlink()
        Path("/usr/bin/sh").symlink_to("bash")
        bash_sha = hashlib.sha256(Path("/usr/bin/bash").read_bytes()).hexdigest()
        si.install_shell(h.options())
        sh_real = hashlib.sha256(Path("/usr/bin/sh.real").read_bytes()).hexdigest()
        out = h.run(["sh", "-c", 'echo "$0 ${BASH_VERSION:+bash}"'])
        si.uninstall_shell(h.options())
        return bash_sha, sh_real, out, os.readlink("/usr/bin/sh")

    bash_sha, sh_real, out, link = overlay(inside)
    assert sh_real == bash_sha
    assert (out.returncode, out.stdout) == (0, b"sh bash\n")
    assert link == "bash"


def test_partial_state_is_reported_and_refused(h: Any, overlay: Any) -> None:
    """A package upgrade wrote a new bash over the shim: .real holds the old one."""

    def inside() -> tuple[Any, Any, Any, Any]:
        si.install_shell(h.options())
        upgraded = Path("/usr/bin/bash.new")
        upgraded.write_bytes(Path("/usr/bin/bash.real").read_bytes() + b"\0upgraded")
        upgraded.chmod(0o755)
        upgraded.rename("/usr/bin/bash")
        status = si.shim_status(h.options())
        before = _snapshot()
        errors = []
        for action in (si.install_shell, si.uninstall_shell):
            try:
                action(h.options())
            except UsageError as err:
                errors.append(err.message)
        return status, errors, before, _snapshot()

    status, errors, before, after = overlay(inside)
    assert _states(status)["bash"] == "partial"
    assert len(errors) == 2
    assert all("/usr/bin/bash" in e and "not the shim" in e for e in errors)
    assert after == before


def test_interrupted_install_is_finished_by_running_it_again(h: Any, overlay: Any) -> None:
    """A crash right after bash.real was linked leaves two names for the original bash."""

    def inside() -> tuple[Any, Any, Any]:
        before = _snapshot(("/usr/bin/bash",))
        os.link("/usr/bin/bash", "/usr/bin/bash.real")
        si.install_shell(h.options())
        status = si.shim_status(h.options())
        si.uninstall_shell(h.options())
        return before, status, _snapshot(("/usr/bin/bash", "/usr/bin/bash.real"))

    before, status, after = overlay(inside)
    assert _states(status)["bash"] == "installed"
    assert after == {**before, "/usr/bin/bash.real": None}


def test_interrupted_install_can_be_uninstalled(h: Any, overlay: Any) -> None:
    def inside() -> tuple[Any, Any, Any]:
        before = _snapshot(("/usr/bin/bash",))
        os.link("/usr/bin/bash", "/usr/bin/bash.real")
        status = si.shim_status(h.options())
        si.uninstall_shell(h.options())
        return before, status, _snapshot(("/usr/bin/bash", "/usr/bin/bash.real"))

    before, status, after = overlay(inside)
    assert _states(status)["bash"] == "partial"
    assert after == {**before, "/usr/bin/bash.real": None}


def test_new_shim_version_replaces_the_old_one(h: Any, overlay: Any, tmp_path: Path) -> None:
    newer = tmp_path / "shim-v2"
    newer.write_bytes(h.shim.read_bytes() + b"\0v2")
    newer.chmod(0o755)

    def inside() -> tuple[Any, Any, Any, Any]:
        original = hashlib.sha256(Path("/usr/bin/bash").read_bytes()).hexdigest()
        si.install_shell(h.options())
        si.install_shell(h.options(shim=newer))
        now = Path("/usr/bin/bash").read_bytes()
        status = si.shim_status(h.options(shim=newer))
        si.uninstall_shell(h.options(shim=newer))
        restored = hashlib.sha256(Path("/usr/bin/bash").read_bytes()).hexdigest()
        return original, now, status, restored

    original, now, status, restored = overlay(inside)
    assert now == newer.read_bytes()
    assert _states(status)["bash"] == "installed"
    assert restored == original


def test_existing_shim_conf_is_put_back_on_uninstall(h: Any, overlay: Any) -> None:
    def inside() -> tuple[str, str]:
        h.write_conf("# the admin's own\nforce=true\n")
        si.install_shell(h.options())
        ours = h.CONF.read_text()
        si.uninstall_shell(h.options())
        return ours, h.CONF.read_text()

    ours, restored = overlay(inside)
    assert "frontend=" in ours
    assert restored == "# the admin's own\nforce=true\n"


def test_frontend_must_be_an_absolute_binary(h: Any, tmp_path: Path) -> None:
    script = tmp_path / "python"
    script.write_text('#!/bin/sh\nexec python3 "$@"\n')
    script.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UsageError, match="is a script"):
        si.plan_install(h.options(root=root, frontend=script))
    with pytest.raises(UsageError, match="absolute"):
        si.plan_install(h.options(root=root, frontend=Path("bin/python")))


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if not p.is_symlink()}


def test_scratch_root_without_merged_usr(h: Any, tmp_path: Path) -> None:
    """A root whose /bin is a real directory (no merged /usr), and a --root that is not /
    needs no host flag."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/usr/bin/bash", root / "bin" / "bash")
    (root / "bin" / "dash").write_bytes(b"#!dash stand-in\n")
    (root / "bin" / "sh").symlink_to("/bin/dash")  # absolute: resolved inside the root
    before = _files(root / "bin")
    opts = h.options(root=root, host_ok=False)
    si.install_shell(opts)
    assert (root / "bin" / "bash").read_bytes() == h.shim.read_bytes()
    assert (root / "bin" / "sh.real").read_bytes() == b"#!dash stand-in\n"
    assert _states(si.shim_status(opts)) == {"bash": "installed", "sh": "installed"}
    si.uninstall_shell(opts)
    assert os.readlink(root / "bin" / "sh") == "/bin/dash"
    assert _files(root / "bin") == before
    assert sorted(p.name for p in root.rglob("agentsh*")) == []


# --- the overlay harness itself ---------------------------------------------------------


def test_overlay_reraises_what_failed_inside(overlay: Any) -> None:
    def inside() -> None:
        Path("/etc/agentsh-probe").write_text("x")
        raise ValueError("boom inside")

    with pytest.raises(ValueError, match="boom inside") as info:
        overlay(inside)
    assert any("inside the overlay" in note for note in info.value.__notes__)
    assert not Path("/etc/agentsh-probe").exists()


def test_overlay_timeout_ends_what_it_started(overlay: Any, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"

    def inside() -> None:
        child = subprocess.Popen(["sleep", "60"])
        pidfile.write_text(str(child.pid))
        child.wait()

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        overlay(inside, timeout=2)
    assert time.monotonic() - start < 20
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
