"""The settings snapshot cache (enforce.snapshot): a hit means the same settings and the
same decisions as a full load; anything that could change them misses; an untrusted or
planted entry is never used and never runs code; policy errors are never cached; and a
warm frontend does not import the YAML stack."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import config, snapshot
from agentsh.enforce.errors import PolicyError
from agentsh.enforce.policy import CommandRule, Decision, Policy
from agentsh.enforce.record import replace
from agentsh.shell import run

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the settings cache is root-only (euid 0) by design"
)

VARS = {"HOME": "/home/agent", "PROJECT_ROOT": "/work/proj", "WORKSPACE": "/work/proj"}
VARS |= {"TMPDIR": "/tmp", "USER": "agent"}
POLICY = """\
version: 1
name: cache-test
command_rules:
  - name: no-force-push
    commands: [git]
    args_patterns: ['push\\s.*--force', '(^|\\s)-f(\\s|$)']
    decision: deny
    message: no force pushes
  - name: no-root-rm
    commands: [rm]
    args_patterns: ['(^|\\s)/(\\s|$)']
    decision: deny
  - name: no-sudo
    commands: [sudo, "/usr/bin/su*"]
    decision: deny
  - name: tools
    commands: [git, rm, ls, echo, "true", cat]
    decision: allow
file_rules:
  - name: project
    paths: ["${PROJECT_ROOT}/**"]
    operations: ["*"]
    decision: allow
env_policy:
  deny: ["SECRET_*"]
env_inject:
  FROM_POLICY: "${HOME}/x"
"""
LINES = [
    "git push origin main --force",
    "git push origin main",
    "git commit -f x",
    "rm -rf /",
    "rm -rf build",
    "sudo id",
    "/usr/bin/sudo id",
    "/usr/bin/sux",
    "ls -l | cat",
    "true && ls",
    "curl example.com",
    "x=sudo; $x id",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A config that names a policy in a policy dir, both root-owned, under tmp."""
    root = tmp_path / "root"
    (root / "etc/agentsh/policies").mkdir(parents=True)
    (root / "etc/agentsh/policies/mine.yaml").write_text(POLICY)
    audit = root / "var/lib/agentsh/audit.db"
    _config(root, f"audit:\n  storage:\n    sqlite_path: {audit}\n")
    return root


def _config(root: Path, extra: str = "") -> None:
    text = f"policies:\n  dir: {root}/etc/agentsh/policies\n  default: mine\n" + extra
    (root / "etc/agentsh/config.yaml").write_text(text)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "settings"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every full (uncached) load: one entry per miss."""
    calls: list[str] = []
    original = snapshot._build

    def spy(*args: Any, **kwargs: Any) -> snapshot.Snapshot:
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(snapshot, "_build", spy)
    return calls


def _load(
    root: Path, cache: Path | None, variables: dict[str, str] = VARS, *, trusted: bool = True
) -> snapshot.Snapshot:
    return snapshot.load(
        root / "etc/agentsh/config.yaml",
        override=None,
        variables=variables,
        trusted=trusted,
        cache_dir=cache,
    )


def _entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if p.suffix == ".pickle"]
    assert len(entries) == 1, entries
    return entries[0]


def _decisions(policy: Policy) -> list[tuple[tuple[str, str | None, str], ...]]:
    """Per line, every command's (decision, rule, message)."""
    out = []
    for line in LINES:
        _, checks = run.decide(line, policy)
        out.append(
            tuple((c.verdict.decision.value, c.verdict.rule, c.verdict.message) for c in checks)
        )
    return out


SUDO = 5  # LINES[SUDO] is "sudo id"
SUDO_DENIED = (("deny", "no-sudo", "denied by rule no-sudo"),)


# --------------------------------------------------------------------------- hits


def test_hit_gives_equal_settings_and_the_same_decisions(
    root: Path, cache: Path, builds: list[str]
) -> None:
    fresh = _load(root, None)
    first = _load(root, cache)
    hit = _load(root, cache)
    assert len(builds) == 2  # the uncached load and the miss; the third was a hit
    assert hit == first
    assert hit.policy == fresh.policy
    assert hit.audit_path == str(root / "var/lib/agentsh/audit.db")
    assert hit.env_inject == fresh.env_inject == ()
    assert dict(hit.policy.env_inject) == {"FROM_POLICY": "/home/agent/x"}
    assert _decisions(hit.policy) == _decisions(fresh.policy)
    assert _decisions(hit.policy)[0] == (("deny", "no-force-push", "no force pushes"),)
    assert _decisions(hit.policy)[8] == (("allow", "tools", "allowed by rule tools"),) * 2


def test_entry_is_root_only(root: Path, cache: Path) -> None:
    _load(root, cache)
    assert cache.stat().st_mode & 0o777 == 0o700
    entry = _entry(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert entry.stat().st_uid == 0


def test_hit_patterns_compile_lazily_and_behave_as_compiled(root: Path, cache: Path) -> None:
    _load(root, cache)
    rule = _load(root, cache).policy.command_rules[0]
    fresh = _load(root, None).policy.command_rules[0]
    assert [p.pattern for p in rule.args_patterns] == [p.pattern for p in fresh.args_patterns]
    assert rule.args_patterns == fresh.args_patterns
    assert fresh.args_patterns == rule.args_patterns
    assert hash(rule) == hash(fresh)
    assert rule.args_patterns[1].search("commit -f x") is not None
    assert rule.args_patterns[1].search("commit -fx") is None
    assert rule.args_patterns[0].flags == fresh.args_patterns[0].flags
    again = pickle.loads(pickle.dumps(rule))  # noqa: S301 - our own bytes
    assert again == fresh


def test_same_settings_through_run_load_settings(root: Path, cache: Path) -> None:
    cfg = root / "etc/agentsh/config.yaml"
    plain = run.load_settings(root, config_path=cfg, trusted_only=True)
    run.load_settings(root, config_path=cfg, trusted_only=True, cache_dir=cache)
    warm = run.load_settings(root, config_path=cfg, trusted_only=True, cache_dir=cache)
    assert warm == plain
    assert warm.audit_path == root / "var/lib/agentsh/audit.db"


# --------------------------------------------------------------------------- misses


def test_changed_config_byte_misses(root: Path, cache: Path, builds: list[str]) -> None:
    _load(root, cache)
    other = root / "elsewhere.db"
    _config(root, f"audit:\n  storage:\n    sqlite_path: {other}\n")
    assert _load(root, cache).audit_path == str(other)
    assert _load(root, cache).audit_path == str(other)
    assert len(builds) == 2


def test_changed_policy_byte_misses_even_with_same_size_and_mtime(
    root: Path, cache: Path, builds: list[str]
) -> None:
    path = root / "etc/agentsh/policies/mine.yaml"
    before = path.stat()
    assert _decisions(_load(root, cache).policy)[SUDO] == SUDO_DENIED
    path.write_text(
        POLICY.replace("decision: deny\n  - name: tools", "decision: deny\n  - name: tooLs")
    )
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    changed = _load(root, cache)
    assert len(builds) == 2
    assert _decisions(changed.policy)[4] == (("allow", "tooLs", "allowed by rule tooLs"),)


def test_changed_variable_misses(root: Path, cache: Path, builds: list[str]) -> None:
    assert _load(root, cache).policy.file_rules[0].paths == ("/work/proj/**",)
    moved = {**VARS, "PROJECT_ROOT": "/work/other"}
    assert _load(root, cache, moved).policy.file_rules[0].paths == ("/work/other/**",)
    assert _load(root, cache).policy.file_rules[0].paths == ("/work/proj/**",)
    assert len(builds) == 2  # the third found the first entry


def test_config_absent_and_present_are_different_keys(root: Path, cache: Path) -> None:
    first = _load(root, cache)
    (root / "etc/agentsh/config.yaml").unlink()
    absent = _load(root, cache)
    assert absent.policy_path == str(config.builtin_policy_path())
    assert absent.audit_path == str(config.DEFAULT_AUDIT_PATH)
    assert first.policy.name == "cache-test"


def test_a_policy_file_that_appears_changes_the_resolution(
    root: Path, cache: Path, builds: list[str]
) -> None:
    pdir = root / "etc/agentsh/policies"
    (pdir / "mine.yaml").rename(pdir / "mine.yml")
    assert _load(root, cache).policy_path == str(pdir / "mine.yml")
    assert _load(root, cache).policy_path == str(pdir / "mine.yml")
    (pdir / "mine.yaml").write_text(POLICY.replace("name: cache-test", "name: preferred"))
    found = _load(root, cache)
    assert found.policy_path == str(pdir / "mine.yaml")
    assert found.policy.name == "preferred"
    assert len(builds) == 2


def test_code_change_misses(
    root: Path, cache: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(root, cache)
    monkeypatch.setattr(snapshot, "VERSION", snapshot.VERSION + ".1")
    _load(root, cache)
    monkeypatch.setattr(snapshot, "_LOADED_CODE", b"another build")
    _load(root, cache)
    assert len(builds) == 3


def test_code_replaced_during_a_miss_is_not_stored(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = snapshot._build

    def reinstalled_meanwhile(*args: Any, **kwargs: Any) -> snapshot.Snapshot:
        monkeypatch.setattr(snapshot, "_fingerprint", lambda: b"the new files")
        return original(*args, **kwargs)

    monkeypatch.setattr(snapshot, "_build", reinstalled_meanwhile)
    assert _load(root, cache).policy.name == "cache-test"
    assert not cache.exists() or not list(cache.iterdir())


# --------------------------------------------------------------------------- refusals


def _allow_all(hit: snapshot.Snapshot) -> snapshot.Snapshot:
    rule = CommandRule(name="planted", commands=("*",), decision=Decision.ALLOW)
    return replace(hit, policy=replace(hit.policy, command_rules=(rule,)))


def _plant(cache: Path, snap: snapshot.Snapshot) -> Path:
    entry = cache / f"{snap.key}.pickle"
    entry.write_bytes(pickle.dumps(snap))
    entry.chmod(0o600)
    return entry


def test_planted_entry_is_used_when_trusted_so_the_refusal_tests_can_fail(
    root: Path, cache: Path
) -> None:
    _plant(cache, _allow_all(_load(root, cache)))
    assert _decisions(_load(root, cache).policy)[SUDO][0][:2] == ("allow", "planted")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e, d: os.chown(e, 1000, 1000), id="file-not-root-owned"),
        pytest.param(lambda e, d: e.chmod(0o620), id="file-group-writable"),
        pytest.param(lambda e, d: e.chmod(0o602), id="file-world-writable"),
        pytest.param(lambda e, d: os.chown(d, 1000, 1000), id="dir-not-root-owned"),
        pytest.param(lambda e, d: d.chmod(0o777), id="dir-world-writable"),
        pytest.param(lambda e, d: d.chmod(0o1777), id="dir-sticky-world-writable"),
    ],
)
def test_untrusted_entry_or_dir_is_ignored(
    root: Path, cache: Path, builds: list[str], tamper: Any
) -> None:
    entry = _plant(cache, _allow_all(_load(root, cache)))
    tamper(entry, cache)
    got = _load(root, cache)
    assert _decisions(got.policy)[SUDO] == SUDO_DENIED
    assert len(builds) == 2


def test_symlinked_entry_or_dir_is_ignored(root: Path, cache: Path, builds: list[str]) -> None:
    planted = _allow_all(_load(root, cache))
    elsewhere = cache.parent / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    _plant(elsewhere, planted)
    entry = cache / f"{planted.key}.pickle"
    entry.unlink()
    entry.symlink_to(elsewhere / entry.name)
    assert _decisions(_load(root, cache).policy)[SUDO] == SUDO_DENIED
    for p in cache.iterdir():
        p.unlink()
    cache.rmdir()
    cache.symlink_to(elsewhere)
    assert _decisions(_load(root, cache).policy)[SUDO] == SUDO_DENIED
    assert len(builds) == 3


def test_entry_under_another_key_is_ignored(root: Path, cache: Path, builds: list[str]) -> None:
    good = _load(root, cache)
    moved = _load(root, cache, {**VARS, "PROJECT_ROOT": "/work/other"})
    # The entry of one cwd copied to the name of another: its key does not match.
    (cache / f"{moved.key}.pickle").write_bytes((cache / f"{good.key}.pickle").read_bytes())
    got = _load(root, cache, {**VARS, "PROJECT_ROOT": "/work/other"})
    assert got.policy.file_rules[0].paths == ("/work/other/**",)
    assert len(builds) == 3


class _Reduce:
    """Pickles as ``func(*args)``: what a planted entry would use to run code."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _evil(marker: Path) -> list[Any]:
    return [
        _Reduce(os.system, f"touch {marker}"),
        _Reduce(eval, f"open({str(marker)!r}, 'w')"),
        _Reduce(subprocess.Popen, ["touch", str(marker)]),
        _Reduce(re.compile, "x", int(re.DEBUG)),  # allowed callable, refused arguments (prints)
        _Reduce(re.compile, b"x", 0),
    ]


@pytest.mark.parametrize("index", range(5))
def test_planted_pickle_does_not_execute_and_misses(
    root: Path,
    cache: Path,
    builds: list[str],
    index: int,
    capfd: pytest.CaptureFixture[str],
) -> None:
    good = _load(root, cache)
    marker = root.parent / "pwned"
    payload = _evil(marker)[index]
    # Inside a valid-looking entry (as the policy) and as the whole entry.
    for planted in (replace(good, policy=payload), payload):
        entry = cache / f"{good.key}.pickle"
        entry.write_bytes(pickle.dumps(planted))
        entry.chmod(0o600)
        got = _load(root, cache)
        assert got.policy == good.policy
    assert not marker.exists()
    assert len(builds) == 3
    assert "LITERAL" not in capfd.readouterr().out  # re.DEBUG never ran


def test_planted_pattern_with_debug_flag_is_refused(
    root: Path, cache: Path, builds: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    good = _load(root, cache)
    rule = replace(
        good.policy.command_rules[0], args_patterns=(_Reduce(re.compile, "x", int(re.DEBUG)),)
    )
    planted = replace(good, policy=replace(good.policy, command_rules=(rule,)))
    _plant(cache, planted)
    got = _load(root, cache)
    assert _decisions(got.policy) == _decisions(good.policy)
    assert "LITERAL" not in capfd.readouterr().out
    assert len(builds) == 2


def test_damaged_entry_misses(root: Path, cache: Path, builds: list[str]) -> None:
    good = _load(root, cache)
    entry = cache / f"{good.key}.pickle"
    data = entry.read_bytes()
    for damaged in (b"", data[: len(data) // 2], b"\x80\x05garbage", data[:-1] + b"\x00"):
        entry.write_bytes(damaged)
        assert _load(root, cache) == good
    assert len(builds) == 5


def test_policy_error_is_raised_on_every_run_and_never_cached(
    root: Path, cache: Path, builds: list[str]
) -> None:
    path = root / "etc/agentsh/policies/mine.yaml"
    _load(root, cache)
    path.write_text(POLICY.replace("    decision: allow\n", "    decison: allow\n"))
    for _ in range(3):
        with pytest.raises(PolicyError, match=r"mine\.yaml:\d+: command_rules\[3\]\.decison"):
            _load(root, cache)
    assert len(list(cache.iterdir())) == 1  # only the good entry of before
    path.write_text(POLICY)
    assert _load(root, cache).policy.name == "cache-test"
    assert len(builds) == 4  # the good bytes again: the entry made before is still valid


def test_config_error_is_raised_on_every_run(root: Path, cache: Path) -> None:
    _config(root, "audit:\n  enabeld: false\n")
    for _ in range(2):
        with pytest.raises(PolicyError, match=r"config\.yaml:\d+: audit\.enabeld"):
            _load(root, cache)
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.parametrize("which", ["etc/agentsh/config.yaml", "etc/agentsh/policies/mine.yaml"])
def test_untrusted_config_or_policy_refused_on_a_hit(root: Path, cache: Path, which: str) -> None:
    _load(root, cache)
    _load(root, cache)
    os.chown(root / which, 1000, 1000)
    for _ in range(2):
        with pytest.raises(PolicyError, match="must be owned by root, not uid 1000"):
            _load(root, cache)


def test_no_cache_off_the_shim_path_or_for_other_users(
    root: Path, cache: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _load(root, cache, trusted=False)
    _load(root, cache, trusted=False)
    assert not cache.exists()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    _load(root, cache)
    _load(root, cache)
    assert not cache.exists()
    assert len(builds) == 4


def test_unwritable_cache_still_loads(root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    got = _load(root, blocker / "settings")
    assert got.policy.name == "cache-test"


def test_prune_keeps_the_cache_bounded(
    root: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(snapshot, "MAX_ENTRIES", 4)
    for i in range(7):
        _load(root, cache, {**VARS, "PROJECT_ROOT": f"/work/p{i}"})
    assert 2 <= len(list(cache.iterdir())) <= 4
    assert _load(root, cache, {**VARS, "PROJECT_ROOT": "/work/p6"}).key in {
        p.stem for p in cache.iterdir()
    }


# --------------------------------------------------------------------------- trust check


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda f, d: os.chown(f, 1000, 0), id="file-owner"),
        pytest.param(lambda f, d: f.chmod(0o664), id="file-group-writable"),
        pytest.param(lambda f, d: d.chmod(0o777), id="dir-world-writable"),
        pytest.param(lambda f, d: os.chown(d, 1000, 0), id="dir-owner"),
        pytest.param(lambda f, d: f.unlink(), id="missing"),
    ],
)
def test_root_owned_check_refuses(tmp_path: Path, setup: Any) -> None:
    """Every untrusted shape is refused with a message naming the file."""
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    f = d / "p.yaml"
    f.write_text("x")
    f.chmod(0o644)
    snapshot.require_root_owned(f)  # trusted before the change
    setup(f, d)
    with pytest.raises(PolicyError) as err:
        snapshot.require_root_owned(f)
    assert str(d) in err.value.render()  # names the file, or the directory at fault


def test_root_owned_check_accepts_a_sticky_directory(tmp_path: Path) -> None:
    """Others cannot replace root's file in a sticky directory (like /tmp)."""
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(0o1777)
    f = d / "p.yaml"
    f.write_text("x")
    f.chmod(0o644)
    snapshot.require_root_owned(f)


# --------------------------------------------------------------------------- frontend


FRONTEND = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agentsh.enforce.errors import AgentshError
    from agentsh.shell import invocation, run
    inv = invocation.parse("bash", ["-c", sys.argv[2]])
    try:
        run.governed_bash(inv, "/usr/bin/bash", root=Path(sys.argv[1]))
    except AgentshError as err:  # as the frontend's __main__ (which would use root /)
        sys.stderr.write(err.render() + "\\n")
        sys.exit(err.exit_code)
    """
)
HEAVY = ("yaml", "agentsh.enforce.config", "agentsh.enforce.loader", "agentsh.enforce.yamlnodes")
HEAVY += ("inspect", "dataclasses", "json", "shutil", "agentsh.shell.tsparse")


def _frontend(root: Path, line: str) -> tuple[int, str, set[str]]:
    done = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "-c", FRONTEND, str(root), line],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        timeout=60,
        check=False,
    )
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return done.returncode, done.stdout + done.stderr, imported


def test_warm_frontend_imports_no_yaml(root: Path) -> None:
    cache = root / run.SETTINGS_CACHE
    rc, out, cold = _frontend(root, "echo cold")
    assert rc == 0, out
    assert "yaml" in cold  # the miss loads the YAML files (this test can fail)
    assert (cache / next(iter(os.listdir(cache)))).stat().st_uid == 0
    rc, out, warm = _frontend(root, "echo warm")
    assert rc == 0, out
    assert "warm" in out
    assert sorted(set(HEAVY) & warm) == []
    rc, out, _ = _frontend(root, "sudo id")
    assert rc == 126
    assert "blocked by policy: sudo id (rule no-sudo)" in out
