"""The soft-delete workspace for real: a FUSE view (enforce.softdelete) mounted over a temp
workspace in a private mount namespace (agentsh.install.overlay), real tools on it, the
trash (enforce.trash) checked from outside. Never mounts over anything but temp dirs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentsh.enforce import audit, config, engine, fuseconf, loader, softdelete
from agentsh.enforce.errors import LayerUnavailable, PolicyError
from agentsh.enforce.fuseconf import Action, FuseSettings, Mode, Support
from agentsh.enforce.policy import Decision, Verdict
from agentsh.enforce.softdelete import SoftDeletePlan
from agentsh.enforce.trash import Trash
from agentsh.install import overlay
from agentsh.shell import trash_cli

T = TypeVar("T")
SEEDS = Path(__file__).resolve().parent.parent / "fixtures" / "seed-policies"
_WHY = overlay.probe() or (None if fuseconf.probe().usable else fuseconf.probe().reason)
needs_fuse = pytest.mark.skipif(_WHY is not None, reason=f"FUSE view unavailable: {_WHY}")


def _snapshot(top: Path) -> dict[str, tuple[str, int, bytes | str, int]]:
    found: dict[str, tuple[str, int, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", 0, os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"", 0)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), st.st_mtime_ns)
    return found


def _file_sink(path: Path) -> Callable[[], softdelete.Sink]:
    """Audit events as JSON lines in ``path``, so they cross from the daemon to the test."""

    def factory() -> softdelete.Sink:
        def sink(event: audit.Event) -> None:
            e = audit.sanitize(event)
            row = {"decision": e.decision, "rule": e.rule, "message": e.message, "argv": e.argv}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        return sink

    return factory


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _in_view(tmp_path: Path, fn: Callable[[int], T], **plan: Any) -> T:
    """Run ``fn(daemon_pid)`` in a private namespace where tmp_path/ws is the FUSE view."""
    options = {
        "trash_root": tmp_path / "trash",
        "sink_factory": _file_sink(tmp_path / "events.jsonl"),
        **plan,
    }
    view = SoftDeletePlan(tmp_path / "ws", "e2e", **options)

    def inside() -> T:
        return fn(softdelete.start(view))

    return overlay.call_in_overlay(inside, tmp_path / "ov", timeout=600)


def _run(argv: list[str], cwd: Path, **kw: Any) -> tuple[int, str, str]:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, **kw)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    return tmp_path / "ws"


def _make_project(top: Path, files: int) -> None:
    modes = (0o644, 0o600, 0o755, 0o640, 0o444)
    for i in range(files):
        path = top / f"pkg{i // 100:02}" / f"sub{i % 3}" / f"file{i:04}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(i % 700) + f"#{i}".encode())
        path.chmod(modes[i % len(modes)])
    (top / "pkg00" / "link").symlink_to("sub0/file0000.dat")


def _trash_list_json(store: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser()
    trash_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["trash", "list", "--json", "--store", str(store)])
    capsys.readouterr()
    assert args.func(args) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


@needs_fuse
def test_rm_rf_of_1000_files_succeeds_and_every_file_comes_back(
    tmp_path: Path, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = ws / "proj"
    _make_project(proj, 1000)
    before = _snapshot(proj)

    def inside(daemon: int) -> tuple[int, str, list[str]]:
        rc, _, err = _run(["rm", "-rf", "proj"], ws)
        return rc, err, os.listdir(ws)

    rc, err, seen = _in_view(tmp_path, inside)
    assert (rc, err, seen) == (0, "", [])
    assert not proj.exists()  # gone from the real directory too: moved, not hidden
    doc = _trash_list_json(tmp_path / "trash", capsys)
    files = [e for e in doc["entries"] if e["root"]["kind"] == "file"]
    assert len(files) == 1000
    assert {e["command"] for e in doc["entries"]} == {"rm -rf proj"}
    expected = {str(proj / rel) for rel, v in before.items() if v[0] == "file"}
    assert {e["original"] for e in files} == expected
    store = Trash(tmp_path / "trash")
    for e in files[:20]:  # one by one: bytes, mode and mtime
        store.restore(e["token"])
        rel = str(Path(e["original"]).relative_to(proj))
        assert _snapshot(proj)[rel] == before[rel]
    top = next(e for e in store.list() if e.original == str(proj))
    report = store.restore(top.token)  # the rest, as a tree
    assert report.files == 1000 - 20 + 1  # the symlink counts as a file
    assert _snapshot(proj) == before
    assert store.list() == []


@needs_fuse
def test_git_venv_tar_and_editors_work_on_the_view(tmp_path: Path, ws: Path) -> None:
    src = tmp_path / "src"
    _make_project(src, 60)
    subprocess.run(["tar", "czf", str(tmp_path / "src.tgz"), "-C", str(src), "."], check=True)
    (ws / "notes.txt").write_text("alpha\n")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }

    def inside(daemon: int) -> list[tuple[str, int, str, str]]:
        steps = [
            ("git init", ["git", "init", "-q", "repo"], ws),
            ("write", ["sh", "-c", "echo one > a && mkdir d && echo two > d/b"], ws / "repo"),
            ("git add", ["git", "add", "."], ws / "repo"),
            ("git commit", ["git", "commit", "-qm", "first"], ws / "repo"),
            ("git rm", ["git", "rm", "-q", "d/b"], ws / "repo"),
            ("git commit 2", ["git", "commit", "-qm", "second"], ws / "repo"),
            ("git log", ["git", "log", "--format=%s"], ws / "repo"),
            ("git fsck", ["git", "fsck", "--no-progress"], ws / "repo"),
            ("venv", [sys.executable, "-m", "venv", "--without-pip", "venv"], ws),
            ("venv python", ["venv/bin/python", "-c", "import sys; print(sys.prefix)"], ws),
            ("tar x", ["sh", "-c", f"mkdir x && tar xzf {tmp_path / 'src.tgz'} -C x"], ws),
            ("sed -i", ["sed", "-i", "s/alpha/beta/", "notes.txt"], ws),
        ]
        out = []
        for name, argv, cwd in steps:
            out.append((name, *_run(argv, cwd, env=env)))
        return out

    results = _in_view(tmp_path, inside)
    failed = [r for r in results if r[1] != 0]
    assert failed == []
    outputs = {name: stdout for name, _, stdout, _ in results}
    assert outputs["git log"].split() == ["second", "first"]
    assert outputs["venv python"].strip() == str(ws / "venv")

    def seconds(top: Path) -> dict[str, tuple[str, int, bytes | str, int]]:
        return {k: (*v[:3], v[3] // 10**9) for k, v in _snapshot(top).items()}  # tar: 1 s

    assert seconds(ws / "x") == seconds(src)
    assert (ws / "notes.txt").read_text() == "beta\n"
    entries = Trash(tmp_path / "trash").list()
    by_command = {e.command for e in entries}
    assert "git rm -q d/b" in by_command
    [sed] = [e for e in entries if e.command.startswith("sed -i")]
    assert sed.original == str(ws / "notes.txt")
    assert (tmp_path / "trash" / sed.token / "data").read_text() == "alpha\n"


@needs_fuse
def test_a_killed_daemon_makes_every_access_fail_loudly(tmp_path: Path, ws: Path) -> None:
    (ws / "keep.txt").write_text("precious\n")

    def inside(daemon: int) -> dict[str, Any]:
        os.kill(daemon, signal.SIGKILL)
        _wait_gone(daemon)
        found: dict[str, Any] = {
            "ls": _run(["ls", str(ws)], ws.parent),
            "rm": _run(["rm", "-f", str(ws / "keep.txt")], ws.parent),
            "cat": _run(["cat", str(ws / "keep.txt")], ws.parent),
            "touch": _run(["touch", str(ws / "new")], ws.parent),
        }
        try:
            os.stat(ws / "keep.txt")
        except OSError as err:
            found["stat"] = err.errno
        try:
            softdelete.check_mount(ws)
        except LayerUnavailable as err:
            found["check"] = err.message
        return found

    found = _in_view(tmp_path, inside)
    for tool in ("ls", "rm", "cat", "touch"):
        rc, _, err = found[tool]
        assert rc != 0, tool
        assert "Transport endpoint is not connected" in err, tool
    assert found["stat"] == errno.ENOTCONN
    assert "has died" in found["check"]
    assert (ws / "keep.txt").read_text() == "precious\n"  # nothing reached the real dir
    assert not (ws / "new").exists()


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/fd").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until its fds (and with them /dev/fuse) are closed


@needs_fuse
def test_a_crash_in_the_daemon_is_audited_and_fails_closed(tmp_path: Path, ws: Path) -> None:
    (ws / "a").write_text("a\n")

    def boom(op: str, path: str) -> Verdict:
        raise RuntimeError("bug in a rule callback")

    def inside(daemon: int) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        rm = _run(["rm", "a"], ws)
        _wait_gone(daemon)
        return rm, _run(["cat", str(ws / "a")], ws.parent)

    rm, cat = _in_view(tmp_path, inside, decide=boom)
    assert rm[0] != 0
    assert cat[0] != 0
    assert "Transport endpoint is not connected" in cat[2]
    assert (ws / "a").read_text() == "a\n"
    [event] = _events(tmp_path / "events.jsonl")
    assert (event["decision"], event["rule"]) == ("error", "softdelete-crash")
    assert "bug in a rule callback" in event["message"]


@needs_fuse
def test_sigterm_while_the_tree_runs_never_uncovers_the_real_directory(
    tmp_path: Path, ws: Path
) -> None:
    (ws / "a").write_text("a\n")

    def inside(daemon: int) -> tuple[int, str, str]:
        os.kill(daemon, signal.SIGTERM)
        _wait_gone(daemon)
        return _run(["rm", str(ws / "a")], ws.parent)

    rc, _, err = _in_view(tmp_path, inside)
    assert rc != 0
    assert "Transport endpoint is not connected" in err
    assert (ws / "a").read_text() == "a\n"


@needs_fuse
@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        (Mode.SOFT_DELETE, (0, True, 1, "soft_delete")),
        (Mode.MONITOR, (0, True, 0, "audit")),
        (Mode.SOFT_BLOCK, (1, False, 0, "deny")),
    ],
)
def test_audit_modes(
    tmp_path: Path, ws: Path, mode: Mode, outcome: tuple[int, bool, int, str]
) -> None:
    rm_status, gone, kept, decision = outcome
    (ws / "a.txt").write_text("a\n")
    rc, _, err = _in_view(tmp_path, lambda _: _run(["rm", "a.txt"], ws), mode=mode)
    assert rc == rm_status
    assert ("Permission denied" in err) == (mode is Mode.SOFT_BLOCK)
    assert (ws / "a.txt").exists() != gone
    assert len(Trash(tmp_path / "trash").list()) == kept
    [event] = _events(tmp_path / "events.jsonl")
    assert event["decision"] == decision
    assert event["rule"] == f"fuse-audit-mode-{mode.value}"
    assert event["argv"] == ["rm", "a.txt"]


@needs_fuse
def test_policy_file_rules_decide_per_path(tmp_path: Path, ws: Path) -> None:
    """exe.dev's soft-delete-workspace rule stashes even in monitor mode; a deny rule
    refuses; the trash being over quota refuses instead of losing the file."""
    variables = {"PROJECT_ROOT": str(ws), "WORKSPACE": str(ws), "HOME": "/root", "TMPDIR": "/tmp"}
    policy = loader.load(SEEDS / "exe.dev" / "default.yaml", variables)

    def decide(op: str, path: str) -> Verdict:
        if path.endswith(".pem"):
            return Verdict(Decision.DENY, "keep-keys", "keys are never deleted", path)
        return engine.check_file(policy, op, path)

    (ws / "src.py").write_text("x = 1\n")
    (ws / "id.pem").write_text("key\n")
    (ws / "big.bin").write_bytes(b"b" * 5000)

    def inside(_: int) -> list[tuple[int, str, str]]:
        return [_run(["rm", name], ws) for name in ("src.py", "id.pem", "big.bin")]

    src, pem, big = _in_view(tmp_path, inside, mode=Mode.MONITOR, decide=decide, quota=1000)
    assert src[0] == 0
    assert pem[0] != 0
    assert "Permission denied" in pem[2]
    assert big[0] != 0
    assert "quota" in big[2].lower()
    [entry] = Trash(tmp_path / "trash").list()
    assert entry.original == str(ws / "src.py")
    assert (ws / "id.pem").exists()
    assert (ws / "big.bin").read_bytes() == b"b" * 5000
    rules = [(e["decision"], e["rule"]) for e in _events(tmp_path / "events.jsonl")]
    assert rules == [("soft_delete", "soft-delete-workspace"), ("deny", "keep-keys")]


@needs_fuse
def test_overwriting_rename_keeps_the_old_file_and_stays_a_rename(tmp_path: Path, ws: Path) -> None:
    (ws / "old").write_text("old\n")
    (ws / "new").write_text("new\n")
    (ws / "dir").mkdir()
    (ws / "dir" / "x").write_text("x")

    def inside(_: int) -> list[tuple[int, str, str]]:
        return [
            _run(["mv", "-T", "new", "old"], ws),
            _run(["mv", "-T", "old", "dir"], ws),  # a file over a directory: refused
            _run(["mv", "-n", "dir/x", "old"], ws),  # no clobber: nothing replaced
        ]

    replace, over_dir, no_clobber = _in_view(tmp_path, inside)
    assert replace[0] == 0
    assert over_dir[0] != 0
    assert no_clobber[0] == 0
    assert (ws / "old").read_text() == "new\n"
    assert (ws / "dir" / "x").read_text() == "x"
    [entry] = Trash(tmp_path / "trash").list()
    assert (entry.original, entry.command) == (str(ws / "old"), "mv -T new old")
    assert (tmp_path / "trash" / entry.token / "data").read_text() == "old\n"


@needs_fuse
@pytest.mark.parametrize("xattrs", [True, False])
def test_xattrs_pass_through_only_when_asked(tmp_path: Path, ws: Path, xattrs: bool) -> None:
    (ws / "f").write_text("f")

    def inside(_: int) -> bytes | int:
        try:
            os.setxattr(ws / "f", "user.origin", b"agent")
            return os.getxattr(ws / "f", "user.origin")
        except OSError as err:
            return err.errno or 0

    got = _in_view(tmp_path, inside, xattrs=xattrs)
    assert got == (b"agent" if xattrs else errno.EOPNOTSUPP)
    assert os.listxattr(ws / "f") == (["user.origin"] if xattrs else [])


@needs_fuse
def test_rename_exchange_swaps_and_stashes_nothing(tmp_path: Path, ws: Path) -> None:
    (ws / "a").write_text("a")
    (ws / "b").write_text("b")

    def inside(_: int) -> None:
        fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
        try:
            softdelete.renameat2(fd, "a", fd, "b", softdelete.RENAME_EXCHANGE)
        finally:
            os.close(fd)

    _in_view(tmp_path, inside)
    assert ((ws / "a").read_text(), (ws / "b").read_text()) == ("b", "a")
    assert Trash(tmp_path / "trash").list() == []


# --- configuration (no kernel needed) --------------------------------------------------

_MISSING = Support(False, True, True, True, "/dev/fuse cannot be opened (ENOENT)")
_PRESENT = Support(True, True, True, True)


@pytest.mark.parametrize(
    ("seed", "enabled", "mode", "without_fuse"),
    [
        ("exe.dev", True, Mode.SOFT_DELETE, Action.DENY_DELETES),
        ("sprites", True, Mode.MONITOR, Action.DENY_DELETES),
        ("render", False, Mode.MONITOR, Action.OFF),
        ("deno", False, Mode.MONITOR, Action.OFF),
    ],
)
def test_seed_configs(seed: str, enabled: bool, mode: Mode, without_fuse: Action) -> None:
    s = fuseconf.settings(config.load_config(SEEDS / seed / "config.yaml"))
    assert (s.enabled, s.mode) == (enabled, mode)
    assert fuseconf.choose(s, _MISSING).action is without_fuse
    assert fuseconf.choose(s, _PRESENT).action is (Action.MOUNT if enabled else Action.OFF)


@pytest.mark.parametrize(
    ("s", "action"),
    [
        (FuseSettings(enabled=True, mode=Mode.SOFT_DELETE), Action.REFUSE),
        (FuseSettings(enabled=True, mode=Mode.SOFT_DELETE, deferred=True), Action.ALLOW_AUDITED),
        (FuseSettings(enabled=True, allow_degraded=True), Action.ALLOW_AUDITED),
        (FuseSettings(enabled=True, mode=Mode.MONITOR), Action.ALLOW_AUDITED),
        (FuseSettings(enabled=True, mode=Mode.SOFT_DELETE, allow_degraded=False), Action.REFUSE),
        (FuseSettings(enabled=True, mode=Mode.SOFT_BLOCK, deferred=True), Action.DENY_DELETES),
    ],
)
def test_without_fuse_the_config_decides(s: FuseSettings, action: Action) -> None:
    choice = fuseconf.choose(s, _MISSING)
    assert choice.action is action
    assert "FUSE unavailable" in choice.reason
    if action is Action.REFUSE:
        with pytest.raises(LayerUnavailable, match="soft-delete workspace"):
            fuseconf.require(choice)
    else:
        fuseconf.require(choice)


def test_bad_mode_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sandbox:\n  fuse:\n    enabled: true\n    audit:\n      mode: trash\n")
    with pytest.raises(PolicyError, match=r"config\.yaml:5: sandbox\.fuse\.audit\.mode"):
        fuseconf.settings(config.load_config(path))
    path.write_text("sandbox:\n  fuse:\n    enabled: 'yes'\n")
    with pytest.raises(PolicyError, match=r"sandbox\.fuse\.enabled: must be a bool"):
        fuseconf.settings(config.load_config(path))


def test_the_trash_may_not_live_in_the_workspace(tmp_path: Path, ws: Path) -> None:
    plan = SoftDeletePlan(ws, "s", trash_root=ws / ".trash")
    with pytest.raises(LayerUnavailable, match="inside the workspace"):
        softdelete.start(plan)  # refused before anything (namespace, fork) happens
