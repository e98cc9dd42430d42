"""The trash store: stash, list, restore, purge (enforce.trash)."""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing
import os
import secrets
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsh.enforce.errors import UsageError
from agentsh.enforce.trash import StashError, Trash
from agentsh.install import overlay
from agentsh.shell import trash_cli


def _snapshot(top: Path) -> dict[str, tuple[str, int, bytes | str, int]]:
    """Everything below ``top``: kind, mode, content (or link target), mtime of non-dirs."""
    found: dict[str, tuple[str, int, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = ("symlink", 0, os.readlink(path), st.st_mtime_ns)
            elif path.is_dir():
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), b"", 0)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), st.st_mtime_ns)
    return found


def _make_tree(top: Path) -> None:
    (top / "src" / "deep" / "er").mkdir(parents=True)
    (top / "src" / "main.py").write_bytes(b"print('hi')\n")
    (top / "src" / "deep" / "data.bin").write_bytes(os.urandom(70_000))
    (top / "src" / "deep" / "er" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (top / "src" / "deep" / "er" / "run.sh").chmod(0o755)
    (top / "secret").write_text("k")
    (top / "secret").chmod(0o600)
    (top / "link").symlink_to("src/main.py")
    (top / "dangling").symlink_to("/nonexistent/target")
    (top / "src" / "deep").chmod(0o750)


@pytest.fixture
def store(tmp_path: Path) -> Trash:
    return Trash(tmp_path / "store")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    top = tmp_path / "ws"
    top.mkdir()
    return top


def test_stash_moves_a_file_and_records_its_manifest(store: Trash, ws: Path) -> None:
    f = ws / "notes.txt"
    f.write_bytes(b"remember the milk\n")
    f.chmod(0o640)
    os.utime(f, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    token = store.stash(f, session="s1", command="rm notes.txt", now=1_700_000_000.0)
    assert not f.exists()
    [entry] = store.list()
    assert entry.token == token
    assert token.startswith("20231114-221320-")
    assert entry.original == str(f)
    assert entry.kind == "file"
    assert entry.size == 18
    assert entry.session == "s1"
    assert entry.command == "rm notes.txt"
    assert entry.deleted_at == 1_700_000_000.0
    assert entry.problem is None
    assert entry.root is not None
    assert entry.root.sha256 == hashlib.sha256(b"remember the milk\n").hexdigest()
    assert stat.S_IMODE(entry.root.mode) == 0o640
    assert entry.root.mtime_ns == 1_600_000_000_123_456_789
    assert (entry.root.uid, entry.root.gid) == (os.getuid(), os.getgid())
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    manifest = json.loads((store.root / token / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["original"] == str(f)


def test_restore_puts_a_file_back_byte_identical(store: Trash, ws: Path) -> None:
    f = ws / "tool"
    f.write_bytes(os.urandom(5000))
    f.chmod(0o4755)
    before = _snapshot(ws)
    token = store.stash(f, session="s", command="rm tool")
    report = store.restore(token)
    assert report.restored == (str(f),)
    assert report.files == 1
    assert _snapshot(ws) == before
    assert store.list() == []
    assert store.usage() == 0


def test_tree_restore_keeps_bytes_modes_symlinks_and_mtimes(store: Trash, ws: Path) -> None:
    _make_tree(ws / "proj")
    before = _snapshot(ws / "proj")
    token = store.stash(ws / "proj", session="s", command="rm -rf proj")
    assert not (ws / "proj").exists()
    [entry] = store.list()
    assert entry.kind == "dir"
    assert entry.size == 12 + 70_000 + 19 + 1
    kinds = {m.path: m.kind for m in entry.members}
    assert kinds["link"] == "symlink"
    assert kinds["src/deep"] == "dir"
    assert next(m for m in entry.members if m.path == "dangling").target == "/nonexistent/target"
    report = store.restore(token)
    assert report.files == 6
    assert _snapshot(ws / "proj") == before


def test_single_file_out_of_a_stashed_tree(store: Trash, ws: Path) -> None:
    _make_tree(ws / "proj")
    before = _snapshot(ws / "proj")
    token = store.stash(ws / "proj", session="s", command="rm -rf proj")
    report = store.restore(f"{token}:src/deep/er/run.sh")
    assert report.files == 1
    run = ws / "proj" / "src" / "deep" / "er" / "run.sh"
    assert run.read_text() == "#!/bin/sh\necho run\n"
    assert stat.S_IMODE(run.stat().st_mode) == 0o755
    # Missing parents are made with the modes the trash knows for them.
    assert stat.S_IMODE((ws / "proj" / "src" / "deep").stat().st_mode) == 0o750
    [entry] = store.list()
    assert "src/deep/er/run.sh" not in {m.path for m in entry.members}
    assert entry.size == 12 + 70_000 + 1
    with pytest.raises(UsageError, match="holds no"):
        store.restore(f"{token}:src/deep/er/run.sh")
    store.restore(token)  # the rest merges into the directories made above
    assert _snapshot(ws / "proj") == before
    assert store.list() == []


def test_restore_never_overwrites_and_names_the_path(store: Trash, ws: Path) -> None:
    f = ws / "config.yaml"
    f.write_text("old\n")
    token = store.stash(f, session="s", command="rm config.yaml")
    f.write_text("new work\n")
    with pytest.raises(UsageError, match=r"overwrite .*config\.yaml") as err:
        store.restore(token)
    assert "--force" in (err.value.hint or "")
    assert f.read_text() == "new work\n"
    assert [e.token for e in store.list()] == [token]


def test_tree_restore_checks_every_path_before_moving_any(store: Trash, ws: Path) -> None:
    _make_tree(ws / "proj")
    token = store.stash(ws / "proj", session="s", command="rm -rf proj")
    (ws / "proj" / "src").mkdir(parents=True)
    (ws / "proj" / "src" / "main.py").write_text("mine\n")
    with pytest.raises(UsageError, match=r"main\.py"):
        store.restore(token)
    assert sorted(p.name for p in (ws / "proj").rglob("*")) == ["main.py", "src"]


def test_force_replaces_and_keeps_the_replaced_file_in_the_trash(store: Trash, ws: Path) -> None:
    f = ws / "a.txt"
    f.write_text("deleted\n")
    token = store.stash(f, session="s", command="rm a.txt")
    f.write_text("newer\n")
    report = store.restore(token, force=True)
    assert f.read_text() == "deleted\n"
    [(path, replaced)] = report.replaced
    assert path == str(f)
    [entry] = store.list()
    assert entry.token == replaced
    assert entry.command == "agentsh trash restore --force"
    store.restore(replaced, dest=ws / "b.txt")
    assert (ws / "b.txt").read_text() == "newer\n"


def test_restore_to_dest(store: Trash, ws: Path) -> None:
    f = ws / "a.txt"
    f.write_text("x")
    token = store.stash(f, session="s", command="rm a.txt")
    store.restore(token, dest=ws / "elsewhere" / "b.txt")
    assert (ws / "elsewhere" / "b.txt").read_text() == "x"
    assert not f.exists()


def test_restore_refuses_a_symlink_planted_in_the_original_path(
    store: Trash, ws: Path, tmp_path: Path
) -> None:
    (ws / "d").mkdir()
    (ws / "d" / "cron-job").write_text("payload")
    token = store.stash(ws / "d" / "cron-job", session="s", command="rm")
    (ws / "d").rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "d").symlink_to(outside)
    with pytest.raises(UsageError, match="symlink or not a directory"):
        store.restore(token)
    assert list(outside.iterdir()) == []
    store.restore(token, dest=ws / "safe")
    assert (ws / "safe").read_text() == "payload"


def test_symlink_entry(store: Trash, ws: Path) -> None:
    link = ws / "l"
    link.symlink_to("../../does/not/exist")
    token = store.stash(link, session="s", command="rm l")
    [entry] = store.list()
    assert entry.kind == "symlink"
    assert entry.root is not None
    assert entry.root.target == "../../does/not/exist"
    assert entry.size == 0
    store.restore(token)
    assert link.is_symlink()
    assert os.readlink(link) == "../../does/not/exist"


def test_batch_restores_a_tree_deleted_file_by_file(store: Trash, ws: Path) -> None:
    """What FUSE sees of `rm -rf proj`: unlinks, then rmdirs deepest first, one batch."""
    _make_tree(ws / "proj")
    before = _snapshot(ws / "proj")
    tokens: dict[str, str] = {}
    walked = list(os.walk(ws / "proj", topdown=False))
    for dirpath, dirnames, filenames in walked:
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            tokens[str(path)] = store.stash(path, session="s", command="rm -rf proj", batch="B1")
        tokens[dirpath] = store.stash(dirpath, session="s", command="rm -rf proj", batch="B1")
    assert not (ws / "proj").exists()
    assert len(store.list()) == 10
    one = str(ws / "proj" / "src" / "deep" / "data.bin")
    store.restore(tokens[one])  # one by one: parents come back with their trashed modes
    assert Path(one).read_bytes() == before["src/deep/data.bin"][2]
    report = store.restore(tokens[str(ws / "proj")])  # the rest, as a tree
    assert report.files == 5
    assert _snapshot(ws / "proj") == before
    assert store.list() == []


def test_tokens_never_collide_when_the_random_part_repeats(
    store: Trash, ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws: Iterator[int] = iter([0xAAAAAAAA, 0xAAAAAAAA, 0xAAAAAAAA, 0xBBBBBBBB])
    monkeypatch.setattr(secrets, "randbits", lambda n: next(draws))
    (ws / "1").write_text("1")
    (ws / "2").write_text("2")
    t1 = store.stash(ws / "1", session="s", command="rm", now=0.0)
    t2 = store.stash(ws / "2", session="s", command="rm", now=0.0)
    assert (t1, t2) == ("19700101-000000-aaaaaaaa", "19700101-000000-bbbbbbbb")


def _stash_many(root: str, ws: str, worker: int, count: int) -> list[str]:
    store = Trash(Path(root))
    tokens: list[str] = []
    for i in range(count):
        path = Path(ws) / f"w{worker}-{i}"
        path.write_bytes(b"x" * (i + 1))
        tokens.append(store.stash(path, session=f"w{worker}", command="rm", now=1e9))
    return tokens


def test_concurrent_stashes_get_distinct_tokens_and_exact_usage(store: Trash, ws: Path) -> None:
    workers, count = 6, 40
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        results = pool.starmap(
            _stash_many, [(str(store.root), str(ws), w, count) for w in range(workers)]
        )
    tokens = [t for r in results for t in r]
    assert len(set(tokens)) == workers * count
    entries = store.list()
    assert len(entries) == workers * count
    assert all(e.problem is None for e in entries)
    expected = workers * sum(range(1, count + 1))
    assert store.usage() == expected
    (store.root / ".usage").unlink()
    assert store.usage() == expected  # rebuilt from the manifests


def test_quota_refuses_the_delete_and_leaves_the_file(tmp_path: Path, ws: Path) -> None:
    store = Trash(tmp_path / "store", quota=100)
    (ws / "a").write_bytes(b"a" * 60)
    (ws / "b").write_bytes(b"b" * 60)
    store.stash(ws / "a", session="s", command="rm a")
    with pytest.raises(StashError, match="trash is full") as err:
        store.stash(ws / "b", session="s", command="rm b")
    assert err.value.code == errno.EDQUOT
    assert err.value.exit_code == 126
    assert (ws / "b").read_bytes() == b"b" * 60
    assert len(store.list()) == 1
    assert store.usage() == 60


def test_purge_by_age_reports_what_it_removed(store: Trash, ws: Path) -> None:
    for name, when in (("old", 1000.0), ("mid", 5000.0), ("new", 9000.0)):
        (ws / name).write_bytes(name.encode())
        store.stash(ws / name, session="s", command=f"rm {name}", now=when)
    report = store.purge(older_than=4500.0, now=10_000.0)
    assert [Path(e.original).name for e in report.removed] == ["old", "mid"]
    assert report.freed == 6
    assert report.kept == 1
    assert report.kept_bytes == 3
    assert [Path(e.original).name for e in store.list()] == ["new"]
    assert store.usage() == 3


def test_purge_to_quota_drops_the_oldest_first(store: Trash, ws: Path) -> None:
    for i in range(5):
        (ws / f"f{i}").write_bytes(b"z" * 100)
        store.stash(ws / f"f{i}", session="s", command="rm", now=1000.0 + i)
    report = store.purge(quota=250, now=2000.0)
    assert [Path(e.original).name for e in report.removed] == ["f0", "f1", "f2"]
    assert report.kept_bytes == 200
    assert store.usage() == 200
    assert store.purge(now=2000.0).kept == 0  # neither option: empty it


def test_corrupt_manifests_are_listed_not_fatal(store: Trash, ws: Path) -> None:
    (ws / "good").write_text("g")
    (ws / "bad").write_text("b")
    (ws / "typed").write_text("t")
    good = store.stash(ws / "good", session="s", command="rm", now=100.0)
    bad = store.stash(ws / "bad", session="s", command="rm", now=100.0)
    typed = store.stash(ws / "typed", session="s", command="rm", now=100.0)
    (store.root / bad / "manifest.json").write_text("{not json")
    data = json.loads((store.root / typed / "manifest.json").read_text())
    data["size"] = "large"
    (store.root / typed / "manifest.json").write_text(json.dumps(data))
    lost = store.root / "20000101-000000-0badf00d"
    lost.mkdir()  # a stash interrupted before its first manifest
    problems = {e.token: e.problem for e in store.list()}
    assert problems[good] is None
    assert "unreadable manifest" in (problems[bad] or "")
    assert "size" in (problems[typed] or "")
    assert "no manifest" in (problems[lost.name] or "")
    with pytest.raises(UsageError, match="cannot be restored: unreadable manifest"):
        store.restore(bad)
    with pytest.raises(UsageError, match="no trash entry"):
        store.restore("20990101-000000-00000000")
    assert (store.root / bad / "data").read_text() == "b"  # nothing lost
    os.utime(lost, (0, 0))
    removed = {e.token for e in store.purge(older_than=10.0).removed}
    assert lost.name in removed


def test_incomplete_young_entry_survives_a_purge(store: Trash, ws: Path) -> None:
    (ws / "f").write_text("f")
    token = store.stash(ws / "f", session="s", command="rm")
    manifest = store.root / token / "manifest.json"
    data = json.loads(manifest.read_text())
    data["complete"] = False
    manifest.write_text(json.dumps(data))
    [entry] = store.list()
    assert entry.problem is not None
    assert "interrupted" in entry.problem
    assert store.purge().removed == ()
    assert (store.root / token).is_dir()


def test_stash_refuses_paths_that_name_no_entry(store: Trash) -> None:
    with pytest.raises(UsageError):
        store.stash("/", session="s", command="rm -rf /")
    with pytest.raises(FileNotFoundError):
        store.stash("/nonexistent/file", session="s", command="rm")
    assert store.list() == []


# --- other filesystems (root only: a tmpfs in a private mount namespace) ---------------

needs_root = pytest.mark.skipif(
    overlay.probe() is not None, reason=f"needs mount namespaces: {overlay.probe()}"
)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@needs_root
def test_full_disk_refuses_the_delete_and_leaves_nothing(tmp_path: Path, ws: Path) -> None:
    big = ws / "big.bin"
    payload = os.urandom(3 << 20)
    big.write_bytes(payload)

    def inside() -> tuple[int, list[str]]:
        _tmpfs(tmp_path / "small", "1m")
        store = Trash(tmp_path / "small" / "trash")
        try:
            store.stash(big, session="s", command="rm big.bin")
        except StashError as err:
            return err.code, [e.token for e in store.list()]
        return 0, []

    code, left = overlay.call_in_overlay(inside, tmp_path / "ov")
    assert code == errno.ENOSPC
    assert left == []
    assert big.read_bytes() == payload


@needs_root
def test_across_filesystems_copy_keeps_owners_and_restores(tmp_path: Path, ws: Path) -> None:
    _make_tree(ws / "proj")
    os.chown(ws / "proj" / "secret", 1234, 5678)
    before = _snapshot(ws / "proj")

    def inside() -> tuple[bool, str, tuple[int, int], dict[str, object]]:
        _tmpfs(tmp_path / "other", "16m")
        store = Trash(tmp_path / "other" / "trash")
        token = store.stash(ws / "proj", session="s", command="rm -rf proj")
        gone = not (ws / "proj").exists()
        kind = store.list()[0].kind
        store.restore(token)
        st = (ws / "proj" / "secret").stat()
        return gone, kind, (st.st_uid, st.st_gid), dict(_snapshot(ws / "proj"))

    gone, kind, owner, after = overlay.call_in_overlay(inside, tmp_path / "ov")
    assert gone
    assert kind == "dir"
    assert owner == (1234, 5678)
    assert after == before


# --- agentsh trash (shell.trash_cli) ---------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="agentsh")
    trash_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    capsys.readouterr()
    assert args.func(args) == 0
    return capsys.readouterr().out


def _batch_tree(store: Trash, ws: Path) -> str:
    (ws / "build" / "obj").mkdir(parents=True)
    for i in range(3):
        (ws / "build" / "obj" / f"{i}.o").write_bytes(b"o" * 100)
    for path in [*sorted((ws / "build" / "obj").iterdir()), ws / "build" / "obj", ws / "build"]:
        token = store.stash(path, session="s", command="rm -rf build", batch="b")
    return token


def test_cli_list_plain_and_json(
    store: Trash, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws / "a.txt").write_text("a" * 2048)
    single = store.stash(ws / "a.txt", session="s", command="rm a.txt", now=1.0)
    top = _batch_tree(store, ws)
    text = _cli(["trash", "list", "--store", str(store.root)], capsys)
    lines = text.splitlines()
    assert lines[0].startswith("TOKEN")
    assert f"{single}  " in lines[1]
    assert "2.0 KiB" in lines[1]
    assert lines[1].endswith(f"{ws / 'a.txt'}  <- rm a.txt")
    [top_line] = [line for line in lines if line.startswith(top)]
    assert f"{ws / 'build'} (+4 inside)  <- rm -rf build" in top_line
    assert lines[-1].startswith("6 entries, 2.3 KiB in ")
    doc = json.loads(_cli(["trash", "list", "--json", "--store", str(store.root)], capsys))
    assert doc["total_bytes"] == 2048 + 300
    [entry] = [e for e in doc["entries"] if e["token"] == single]
    assert entry["original"] == str(ws / "a.txt")
    assert entry["command"] == "rm a.txt"
    assert entry["problem"] is None
    assert entry["root"]["sha256"] == hashlib.sha256(b"a" * 2048).hexdigest()


def test_cli_list_escapes_file_names_and_commands(
    store: Trash, ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name and a command line are the agent's: a terminal escape in either is
    printed escaped, never sent to the operator's terminal."""
    name = ws / "a\x1b[2Jb"
    name.write_text("x")
    store.stash(name, session="s", command="rm 'a\x1b]52;c;ZXZpbA==\x07b'")
    text = _cli(["trash", "list", "--store", str(store.root)], capsys)
    assert "\x1b" not in text
    assert "a\\x1b[2Jb" in text
    assert "\\x1b]52;c;ZXZpbA==\\x07" in text


def test_cli_list_empty_and_broken(store: Trash, capsys: pytest.CaptureFixture[str]) -> None:
    assert "the trash is empty" in _cli(["trash", "list", "--store", str(store.root)], capsys)
    (store.root / "20200101-000000-deadbeef").mkdir(parents=True)
    text = _cli(["trash", "list", "--store", str(store.root)], capsys)
    assert "20200101-000000-deadbeef" in text
    assert "no manifest" in text


def test_cli_restore(store: Trash, ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    top = _batch_tree(store, ws)
    out = _cli(["trash", "restore", top, "--store", str(store.root)], capsys)
    assert out == f"restored {ws / 'build'} and 4 more entries below it (3 files)\n"
    (ws / "f").write_text("1")
    token = store.stash(ws / "f", session="s", command="rm f")
    (ws / "f").write_text("2")
    with pytest.raises(UsageError, match="would overwrite"):
        _cli(["trash", "restore", token, "--store", str(store.root)], capsys)
    out = _cli(["trash", "restore", token, "--force", "--store", str(store.root)], capsys)
    assert out.startswith(f"replaced {ws / 'f'}; what was there is in the trash as ")
    assert (ws / "f").read_text() == "1"


def test_cli_purge(store: Trash, ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _batch_tree(store, ws)
    with pytest.raises(UsageError, match="needs --older-than or --quota"):
        _cli(["trash", "purge", "--store", str(store.root)], capsys)
    out = _cli(["trash", "purge", "--quota", "200", "--store", str(store.root)], capsys)
    assert out == "removed 1 entries (100 B); kept 4 (200 B)\n"
    out = _cli(["trash", "purge", "--older-than", "0s", "--store", str(store.root)], capsys)
    assert out == "removed 4 entries (200 B); kept 0 (0 B)\n"


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("10k", 10240), ("500M", 500 << 20), ("1.5GiB", 3 << 29), ("2gb", 2 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert trash_cli.parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "age"), [("0s", 0), ("30m", 1800), ("7d", 604800), ("2w", 1209600)]
)
def test_parse_age(text: str, age: float) -> None:
    assert trash_cli.parse_age(text) == age


@pytest.mark.parametrize("text", ["", "-1", "5 parsecs", "1e3", "7"])
def test_bad_sizes_and_ages_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        trash_cli.parse_age(text)
    if text != "7":
        with pytest.raises(UsageError):
            trash_cli.parse_size(text)
