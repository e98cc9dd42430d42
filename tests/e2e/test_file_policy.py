"""Issue 4 acceptance through the real shim: the file policy in the kernel, as an agent meets it.

For the built-in policy and each seed policy (its default.yaml and config.yaml installed as
a user switching from the Go agentsh would), one overlay root runs everything: the shim is
installed and forced, then /bin/bash -c lines try to write into /etc, /usr/bin and
/usr/local/bin with common tools and with symlink, hard-link, ``..``, /proc and rename
tricks; the results are checked from outside the governed tree, inside the overlay. The
workspace and /tmp must keep working (git, pip --target, venv, tar). Under the built-in
policy a soft-delete config then removes a 1,000-file tree, restored through `agentsh trash`.

Layout inside each overlay: /root is a private tmpfs (HOME, planted secrets) and the project
is /root/project, so secrets and the workspace share one filesystem and hard links between
them are possible, as on a real machine. /etc, /usr and /var are separate overlay mounts, so
a hard link from the workspace into them fails with EXDEV whatever the policy; the hard-link
trick against agentsh's own state therefore starts from /var/tmp, on the /var mount.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from agentsh.install import overlay as overlay_mod

pytestmark = pytest.mark.e2e

AGENTSH = str(Path(sys.executable).with_name("agentsh"))
HOST_OK = "--i-understand-this-modifies-the-host"
SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
POLICIES = ("builtin", "deno", "exe.dev", "render", "sprites")
HOME = "/root"
PROJECT = "/root/project"
TARGETS = ("/etc", "/usr/bin", "/usr/local/bin")
VICTIM = "agentsh-victim"  # an existing file in each target, planted from outside
VICTIM_TEXT = b"original\n"
PROBE = "agentsh-probe"  # every file a write attempt may create starts with this
SECRET = "AGENTSH-E2E-SECRET"
BLOCKED = "agentsh: blocked by policy: "

# Each writes into {d} (or rewrites {d}/agentsh-victim) in its own way.
WRITES = {
    "cp": "cp /bin/true {d}/agentsh-probe-cp",
    "touch": "touch {d}/agentsh-probe-touch",
    "mkdir": "mkdir {d}/agentsh-probe-mkdir",
    "tee": "echo x | tee {d}/agentsh-probe-tee",
    "sed-i": "sed -i s/original/changed/ {d}/agentsh-victim",
    "echo": "echo x > {d}/agentsh-probe-echo",
    "echo-append": "echo x >> {d}/agentsh-victim",
    "python": "python3 -c \"open('{d}/agentsh-probe-py', 'w').write('x')\"",
    "dd": "dd if=/dev/zero of={d}/agentsh-probe-dd bs=1 count=1",
    "install": "install -m 0755 /bin/true {d}/agentsh-probe-install",
}
# Ways around the rule from the workspace (cwd: the project, /root/project).
REOPEN = (
    "import os; fd = os.open('/etc/agentsh-victim', os.O_RDONLY); "
    "open(f'/proc/self/fd/{fd}', 'a').write('x')"
)
PY_RENAME = "import os; open('f5', 'w').write('x'); os.rename('f5', '/etc/agentsh-probe-pyrename')"
TRICKS = {
    "symlink-new": "ln -s /etc/agentsh-probe-symlink l1 && echo x > l1",
    "symlink-victim": "ln -s /etc/agentsh-victim l2 && echo x >> l2",
    "symlink-dir": "ln -s /etc etc-link && echo x > etc-link/agentsh-probe-symdir",
    "symlink-bin": "ln -s /usr/bin bin-link && cp /bin/true bin-link/agentsh-probe-binlink",
    "hardlink-victim": "ln /etc/agentsh-victim h1 && echo x >> h1",  # EXDEV here: see above
    "hardlink-passwd": "ln /etc/passwd h2 && echo x >> h2",
    "dotdot": "echo x > ../../etc/agentsh-probe-dotdot",
    "cd-dotdot": "cd /etc/../etc && touch agentsh-probe-cd",
    "proc-root": "echo x > /proc/self/root/etc/agentsh-probe-procroot",
    "proc-cwd": "cd /etc && echo x > /proc/self/cwd/agentsh-probe-proccwd",
    "proc-fd-reopen": f'python3 -c "{REOPEN}"',
    "mv-into": "echo x > f1 && mv f1 /etc/agentsh-probe-mv",
    "mv-over": "echo x > f2 && mv -f f2 /etc/agentsh-victim",
    "python-rename": f'python3 -c "{PY_RENAME}"',
    "tar-dotdot": "tar -xPf dotdot.tar",  # its member is ../../etc/agentsh-probe-tar
}
# The same from the workspace against HOME's startup file, which every policy but two keeps
# read-only; the workspace is on HOME's filesystem, so the hard link itself is possible.
PY_RENAME_HOME = "import os; open('nb2', 'w').write('evil'); os.rename('nb2', '../.bashrc')"
HOME_TRICKS = {
    "hardlink": "ln ../.bashrc hb && echo evil >> hb",
    "symlink": "ln -s ../.bashrc sb && echo evil >> sb",
    "mv-over": "echo evil > nb && mv -f nb ../.bashrc",
    "python-rename": f'python3 -c "{PY_RENAME_HOME}"',
}
# Their rules let the agent write all of /root: allow-workspace-write names /root/**
# (exe.dev), allow-home does (render).
HOME_WRITABLE = {"exe.dev": "allow-workspace-write", "render": "allow-home"}

# Under built-in and seed policies alike: the rule that refuses a write into the targets
# (for the audit assertions once the file monitor reports Landlock's refusals).
WRITE_RULE = {
    "builtin": "deny-system-writes",
    "deno": "default-deny-files",
    "exe.dev": "default-deny-files",
    "render": "deny-system-write",
    "sprites": "default-deny-files",
}

SECRETS = {
    "ssh": f"cat {HOME}/.ssh/id_rsa",
    "aws": f"cat {HOME}/.aws/credentials",
    "environ": "cat /proc/1/environ",
    "shadow": "cat /etc/shadow",
    "ssh-symlink": f"ln -s {HOME}/.ssh/id_rsa s1 && cat s1",
    "ssh-hardlink": f"ln {HOME}/.ssh/id_rsa s2 && cat s2",  # same filesystem as the project
    "ssh-dotdot": "cat ../.ssh/id_rsa",
    "ssh-proc-root": f"cat /proc/self/root{HOME}/.ssh/id_rsa",
    "ssh-cd": f"cd {HOME}/.ssh && cat id_rsa",
    "ssh-cp": f"cp {HOME}/.ssh/id_rsa s3 && cat s3",
    "ssh-mv": f"mv {HOME}/.ssh/id_rsa s4 && cat s4",
    "aws-python": f"python3 -c \"print(open('{HOME}/.aws/credentials').read())\"",
    "environ-proc-self": "cat /proc/self/../1/environ",
    "shadow-symlink": "ln -s /etc/shadow s5 && cat s5",
    "shadow-dotdot": "cat /etc/../etc/shadow",
    "shadow-proc-root": "cat /proc/self/root/etc/shadow",
}
SECRET_PATH = {
    "ssh": f"{HOME}/.ssh/id_rsa",
    "aws": f"{HOME}/.aws/credentials",
    "environ": "/proc/1/environ",
    "shadow": "/etc/shadow",
}
# render's own rules allow these reads (allow-home: /root/** '*'; allow-proc-sys-read:
# /proc/**): refusing them would change the meaning its authors gave the policy.
SECRETS_THE_POLICY_ALLOWS = {"render": ("ssh", "aws", "environ")}
SECRET_RULE = {
    "builtin": {"ssh": "deny-credentials", "aws": "deny-credentials",
                "environ": "deny-process-secrets", "shadow": "deny-credentials"},
    "deno": {"ssh": "deny-ssh-access", "aws": "deny-aws-credentials",
             "environ": "deny-proc-sys", "shadow": "deny-shadow-files"},
    "exe.dev": {"ssh": "approve-ssh-access", "aws": "approve-aws-credentials",
                "environ": "deny-proc-sys", "shadow": "default-deny-files"},
    "render": {"shadow": "block-sensitive"},
    "sprites": {"ssh": "approve-ssh-access", "aws": "approve-aws-credentials",
                "environ": "deny-proc-sys", "shadow": "default-deny-files"},
}  # fmt: skip

GIT = "git -c user.name=agent -c user.email=agent@example.com"
WORKSPACE = {
    "git": f"git init -q repo && cd repo && echo hi > a && git add a && {GIT} commit -qm init"
    " && git log --format=%s",
    # The source is copied to /tmp first: pip builds in the source tree and deletes its
    # build files there, which deno's approve-workspace-delete refuses (nobody to approve).
    "pip": "src=$(mktemp -d /tmp/agentsh-e2e-pip-XXXXXX) && cp -r e2epkg $src/"
    " && python3 -m pip install -q --no-index --no-build-isolation --target site $src/e2epkg"
    " && PYTHONPATH=site python3 -c 'import e2epkg; print(e2epkg.VALUE)'",
    "venv": "python3 -m venv --without-pip venv"
    " && venv/bin/python -c 'import sys; print(sys.prefix)'",
    "tar": "mkdir out && tar -xf data.tar -C out && cat out/data/hello.txt",
    "rename": "mkdir d1 d2 && echo moved > d1/f"
    " && python3 -c \"import os; os.rename('d1/f', 'd2/f')\" && cat d2/f",
    # Prints the directory first (removed from outside: some seeds refuse rm -r).
    "tmp": 't=$(mktemp -d /tmp/agentsh-e2e-XXXXXX) && echo "$t" && cd "$t" && git init -q r'
    f" && cd r && echo x > b && git add b && {GIT} commit -qm tmp && tar -cf ../b.tar b"
    " && mkdir ../x && tar -xf ../b.tar -C ../x && rm ../b.tar && cat ../x/b"
    " && python3 -c \"import os; os.rename('../x/b', 'c')\" && cat c",
}
PYPROJECT = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "e2epkg"
version = "1.0"
"""
SOFT_DELETE_CONFIG = "sandbox:\n  fuse:\n    enabled: true\n    audit:\n      mode: soft_delete\n"
TREE_FILES = 1000
ONE_FILE = "d3/inner/f0013.bin"  # restored by its own token
MEMBER = "d7/f0027.bin"  # restored as TOKEN:PATH of the tree
IN_THE_WAY = "d5/f0015.bin"
_MS_BIND = 0x1000


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(argv: list[str], cwd: str) -> dict[str, Any]:
    environ = {"PATH": "/usr/bin:/bin", "HOME": HOME, "LC_ALL": "C"}
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=environ,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return {"rc": done.returncode, "out": done.stdout.decode(errors="replace"),
            "err": done.stderr.decode(errors="replace")}  # fmt: skip


def _bash(line: str, cwd: str = PROJECT) -> dict[str, Any]:
    """One governed bash -c, as an agent runs it."""
    return _run(["/bin/bash", "-c", line], cwd)


def _batch(cases: dict[str, str], cwd: str = PROJECT) -> dict[str, Any]:
    """Run the cases in one governed bash -c, each in a subshell between markers:
    ``status`` and ``outs`` map each name to its exit status and stdout (absent: the line
    never got there). The precheck judges a line as a whole: when it refuses the line
    because of one case (a policy that forbids dd), that case is recorded in
    ``prechecked`` (name -> the refusal's first line, status 126) and the rest run again."""
    left, prechecked = dict(cases), {}
    while True:
        done = _markers(left, cwd)
        culprit = _refused_case(done, left)
        if culprit is None:
            break
        prechecked[culprit] = done["err"].splitlines()[0]
        del left[culprit]
    done["status"].update(dict.fromkeys(prechecked, 126))
    done["prechecked"] = prechecked
    return done


def _markers(cases: dict[str, str], cwd: str) -> dict[str, Any]:
    line = "; ".join(
        f"echo @@{name}; echo @@{name} >&2; ({cmd}); printf '\\n@@{name}=%d\\n' $?"
        for name, cmd in cases.items()
    )
    done: dict[str, Any] = _bash(line, cwd) if cases else {"rc": 0, "out": "", "err": ""}
    found = re.findall(r"^@@([\w.-]+)\n(.*?)\n@@\1=(\d+)$", done["out"], re.M | re.S)
    done["status"] = {name: int(rc) for name, _, rc in found if name in cases}
    done["outs"] = {name: out for name, out, _ in found if name in cases}
    parts = re.split(r"^@@([\w.-]+)\n", done["err"], flags=re.M)
    done["errs"] = dict(zip(parts[1::2], parts[2::2], strict=True))
    return done


def _refused_case(done: dict[str, Any], cases: dict[str, str]) -> str | None:
    """The case whose command the precheck named when it refused the whole line."""
    if done["rc"] != 126 or done["status"] or not done["err"].startswith(BLOCKED):
        return None
    named = done["err"].splitlines()[0][len(BLOCKED) :].split(" (rule ")[0]
    return next((name for name, cmd in cases.items() if named in cmd), None)


def _agentsh(*args: str) -> dict[str, Any]:
    return _run([AGENTSH, *args], PROJECT)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    """mount(2) (not mount(8), which would canonicalise a /proc/self/fd source)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    args = (source, target, fstype, flags, data)
    raw = [a.encode() if isinstance(a, str) else a for a in args]
    if libc.mount(*raw) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _private_home() -> None:
    """A private tmpfs over HOME (the overlay's mount namespace is private), with the
    interpreter's tree bound back when it lives there (e.g. a pyenv under /root): the
    frontend and `agentsh` run on it."""
    base = Path(os.path.realpath(sys.base_prefix))
    keep = Path(HOME, base.relative_to(HOME).parts[0]) if base.is_relative_to(HOME) else None
    fd = os.open(keep, os.O_PATH | os.O_DIRECTORY) if keep is not None else None
    try:
        _mount("tmpfs", HOME, "tmpfs", 0, "mode=0700")
        if keep is not None:
            keep.mkdir()
            _mount(f"/proc/self/fd/{fd}", str(keep), None, _MS_BIND, None)
    finally:
        if fd is not None:
            os.close(fd)


def _install_policy(policy: str) -> None:
    """The seed's files where a user switching from the Go agentsh puts them (built-in: none).
    The seed configs are used as they are: nothing in them needs this machine's layout."""
    if policy == "builtin":
        return
    etc = Path("/etc/agentsh")
    (etc / "policies").mkdir(parents=True, exist_ok=True)
    shutil.copy(SEEDS / policy / "default.yaml", etc / "policies" / "default.yaml")
    shutil.copy(SEEDS / policy / "config.yaml", etc / "config.yaml")


def _plant() -> None:
    """Secrets in HOME, victims in the targets, and the project's inputs, from outside."""
    for rel, text in ((".ssh/id_rsa", f"{SECRET}-ssh\n"), (".aws/credentials", f"{SECRET}-aws\n")):
        Path(HOME, rel).parent.mkdir(mode=0o700, exist_ok=True)
        Path(HOME, rel).write_text(text)
        Path(HOME, rel).chmod(0o600)
    Path(HOME, ".bashrc").write_bytes(VICTIM_TEXT)
    for d in TARGETS:
        Path(d, VICTIM).write_bytes(VICTIM_TEXT)
        Path(d, VICTIM).chmod(0o644)
    Path(PROJECT).mkdir()
    pkg = Path(PROJECT, "e2epkg")
    (pkg / "e2epkg").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "e2epkg" / "__init__.py").write_text("VALUE = 'e2epkg-imported'\n")
    data = Path(PROJECT, "data")
    data.mkdir()
    (data / "hello.txt").write_text("hello from tar\n")
    (data / "run.sh").write_text("#!/bin/sh\n")
    (data / "run.sh").chmod(0o750)
    subprocess.run(["tar", "-cf", "data.tar", "data"], cwd=PROJECT, check=True)
    shutil.rmtree(data)
    evil = Path(PROJECT, "payload")
    evil.write_text("planted by tar\n")
    subprocess.run(
        ["tar", "-cPf", "dotdot.tar", "--transform", "s,^payload,../../etc/agentsh-probe-tar,",
         "payload"], cwd=PROJECT, check=True,
    )  # fmt: skip
    evil.unlink()


def _system_state() -> dict[str, Any]:
    """What a write into the targets would change, seen from outside the governed tree:
    their listings (a probe, or a temporary file sed -i left behind), the victims' bytes
    and modes, /etc/passwd, and probe files elsewhere."""
    return {
        "listings": {d: sorted(os.listdir(d)) for d in TARGETS},
        "victims": {d: (_sha(f"{d}/{VICTIM}"), os.stat(f"{d}/{VICTIM}").st_mode) for d in TARGETS},
        "passwd": _sha("/etc/passwd"),
        "probes": sorted(str(p) for d in ("/var/tmp", HOME) for p in Path(d).glob(f"{PROBE}*")),
    }


def _store_links(policy: str) -> dict[str, Any]:
    """Hard links from /var/tmp (writable) to agentsh's audit store and trash (same mount)."""
    db = "audit.db" if policy == "builtin" else "events.db"
    Path("/var/lib/agentsh/trash").mkdir(parents=True, exist_ok=True)
    cases = {
        "audit-db": f"ln /var/lib/agentsh/{db} /var/tmp/agentsh-probe-db && echo x >> "
        "/var/tmp/agentsh-probe-db",
        "trash": "echo x > /var/tmp/agentsh-probe-src && ln /var/tmp/agentsh-probe-src "
        "/var/lib/agentsh/trash/agentsh-probe-link",
    }
    done = _batch(cases)
    done["left"] = sorted(str(p) for p in Path("/var/lib/agentsh/trash").glob(f"{PROBE}*"))
    return done


def _scenario(policy: str) -> dict[str, Any]:
    """Everything that runs inside one policy's overlay root."""
    install = [AGENTSH, "shim", "install-shell", "--force", HOST_OK]
    r: dict[str, Any] = {"install": _run(install, "/")}
    _private_home()
    _install_policy(policy)
    _plant()
    r["before"] = _system_state()
    r["writes"] = {d: _batch({k: v.format(d=d) for k, v in WRITES.items()}) for d in TARGETS}
    r["tricks"] = _batch(TRICKS)
    r["after"] = _system_state()
    r["home_tricks"] = _batch(HOME_TRICKS)
    r["bashrc"] = Path(HOME, ".bashrc").read_bytes()
    r["cwd_system"] = {
        "/etc": _batch({"touch": f"touch {PROBE}-cwd", "append": f"echo x >> {VICTIM}"}, "/etc"),
        "/usr/bin": _batch({"cp": f"cp /bin/true {PROBE}-cwd"}, "/usr/bin"),
    }
    r["after_cwd"] = _system_state()
    r["store_links"] = _store_links(policy)
    r["workspace"] = _batch(WORKSPACE)
    made = r["workspace"]["outs"].get("tmp", "").split("\n", 1)[0]
    if made.startswith("/tmp/agentsh-e2e-"):
        shutil.rmtree(made, ignore_errors=True)  # /tmp is the host's
    for src in Path("/tmp").glob("agentsh-e2e-pip-*"):  # the pip job's copies
        shutil.rmtree(src, ignore_errors=True)
    r["secrets"] = _batch(SECRETS)
    r["events"] = _agentsh("events", "query", "--limit", "100000", "--json")
    if policy == "builtin":
        r["soft_delete"] = _soft_delete()
    return r


def _make_tree(top: Path) -> dict[str, tuple[int, str]]:
    """TREE_FILES files under ``top`` with varied sizes and modes; returns rel -> (mode, sha)."""
    rng = random.Random(4)  # noqa: S311 — test data, not secrets
    dir_modes, file_modes = (0o755, 0o700, 0o750), (0o644, 0o600, 0o755, 0o640, 0o444)
    for i in range(10):
        sub = top / f"d{i}" / "inner"
        sub.mkdir(parents=True)
        sub.parent.chmod(dir_modes[i % 3])
    for n in range(TREE_FILES):
        path = top / f"d{n % 10}" / ("inner" if n % 3 else "") / f"f{n:04}.bin"
        path.write_bytes(rng.randbytes(rng.randrange(0, 4096)))
        path.chmod(file_modes[n % len(file_modes)])
    return _tree_state(top)


def _tree_state(top: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            digest = "" if stat.S_ISDIR(mode) else _sha(str(path))
            found[str(path.relative_to(top))] = (mode, digest)
    return found


def _soft_delete() -> dict[str, Any]:
    """sandbox.fuse soft_delete: rm -rf 1,000 files through the shim, then `agentsh trash`."""
    Path("/etc/agentsh/config.yaml").write_text(SOFT_DELETE_CONFIG)
    top = Path(PROJECT, "big")
    r: dict[str, Any] = {"before": _make_tree(top)}
    r["rm"] = _bash("rm -rf big && test ! -e big && echo removed")
    r["gone"] = not top.exists()
    r["list"] = _agentsh("trash", "list", "--json")
    entries = json.loads(r["list"]["out"])["entries"] if r["list"]["rc"] == 0 else []
    by_path = {e["original"]: e for e in entries}
    one = by_path.get(f"{PROJECT}/big/{ONE_FILE}")
    tree = by_path.get(f"{PROJECT}/big")
    if one is None or tree is None:
        return r
    r["restore_one"] = _agentsh("trash", "restore", one["token"])
    r["restore_member"] = _agentsh("trash", "restore", f"{tree['token']}:{MEMBER}")
    r["after_one"] = _tree_state(top)
    # The agent wrote a new file where a deleted one was: a restore must not replace it.
    Path(top, "d5").mkdir(mode=0o755)
    Path(top, IN_THE_WAY).write_text("new work\n")
    r["in_the_way"] = _tree_state(top)
    r["restore_tree_refused"] = _agentsh("trash", "restore", tree["token"])
    r["after_refused"] = _tree_state(top)
    r["restore_tree"] = _agentsh("trash", "restore", "--force", tree["token"])
    r["after_tree"] = _tree_state(top)
    r["list_after"] = _agentsh("trash", "list", "--json")
    return r


class _Results:
    """One overlay per policy, run on first use and kept for the module."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._done: dict[str, dict[str, Any]] = {}

    def get(self, policy: str) -> dict[str, Any]:
        if policy not in self._done:
            workdir = self._factory.mktemp(f"files-{policy}")
            job: Callable[[], dict[str, Any]] = lambda: _scenario(policy)  # noqa: E731
            self._done[policy] = overlay_mod.call_in_overlay(job, workdir, timeout=300)
            shutil.rmtree(workdir, ignore_errors=True)
        return self._done[policy]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> _Results:
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    return _Results(tmp_path_factory)


@pytest.fixture(scope="module", params=POLICIES)
def governed(request: pytest.FixtureRequest, results: _Results) -> dict[str, Any]:
    r = results.get(request.param)
    assert r["install"]["rc"] == 0, r["install"]["err"]
    r["policy"] = request.param
    return r


def _succeeded(done: dict[str, Any], cases: Iterable[str]) -> dict[str, str]:
    """The cases that did not fail (or never ran), with what they printed."""
    return {
        name: done["outs"].get(name, "") + done["errs"].get(name, "")
        for name in cases
        if done["status"].get(name, 0) == 0
    }


@pytest.mark.parametrize("target", TARGETS)
def test_system_writes_fail(governed: dict[str, Any], target: str) -> None:
    done = governed["writes"][target]
    assert _succeeded(done, WRITES) == {}, done["status"]
    assert "Permission denied" in done["err"], done["err"]


def test_system_files_are_unchanged_and_nothing_was_created(governed: dict[str, Any]) -> None:
    """Seen from outside the governed tree: no new name in the targets, victims unchanged."""
    before, after = governed["before"], governed["after"]
    for d in TARGETS:
        assert set(after["listings"][d]) ^ set(before["listings"][d]) == set(), d
    assert after == before


def test_tricks_from_the_workspace_fail(governed: dict[str, Any]) -> None:
    assert _succeeded(governed["tricks"], TRICKS) == {}


def test_home_startup_file_is_out_of_reach(governed: dict[str, Any]) -> None:
    rule = HOME_WRITABLE.get(governed["policy"])
    if rule is not None:
        pytest.skip(f"the policy's rule {rule} lets the agent write {HOME}")
    assert _succeeded(governed["home_tricks"], HOME_TRICKS) == {}
    assert governed["bashrc"] == VICTIM_TEXT


def test_a_system_directory_as_cwd_is_no_project(governed: dict[str, Any]) -> None:
    """An agent's harness keeps the cwd of its last `cd` (cd /etc, then the next command
    starts bash there): that cwd must not make /etc or /usr/bin the writable project."""
    for cwd, done in governed["cwd_system"].items():
        assert len(done["status"]) == (2 if cwd == "/etc" else 1), done
        assert _succeeded(done, done["status"]) == {}, cwd
    assert governed["after_cwd"] == governed["after"]


def test_hard_links_into_agentsh_state_fail(governed: dict[str, Any]) -> None:
    done = governed["store_links"]
    assert _succeeded(done, ("audit-db", "trash")) == {}
    assert done["left"] == []


@pytest.mark.parametrize("case", sorted(WORKSPACE))
def test_workspace_and_tmp_work_normally(governed: dict[str, Any], case: str) -> None:
    done = governed["workspace"]
    assert done["status"].get(case) == 0, (done["outs"].get(case), done["errs"].get(case))
    expected = {
        "git": "init\n",
        "pip": "e2epkg-imported\n",
        "venv": f"{PROJECT}/venv\n",
        "tar": "hello from tar\n",
        "rename": "moved\n",
        "tmp": "x\nx\n",
    }
    out = done["outs"][case]
    assert (out.split("\n", 1)[1] if case == "tmp" else out) == expected[case], done


def _events(governed: dict[str, Any]) -> list[dict[str, Any]]:
    assert governed["events"]["rc"] == 0, governed["events"]["err"]
    return [json.loads(line) for line in governed["events"]["out"].splitlines()]


def _file_denials(governed: dict[str, Any], path: str) -> list[dict[str, Any]]:
    return [
        e for e in _events(governed)
        if e["decision"] == "deny" and e.get("kind") == "file" and path in json.dumps(e)
    ]  # fmt: skip


def test_precheck_refusals_are_audited_with_the_rule(governed: dict[str, Any]) -> None:
    """Where the policy's command rules refuse a write attempt before it runs (e.g. a seed
    that forbids dd), the refusal is an audit event naming the rule and the command."""
    groups = [*governed["writes"].values(), governed["tricks"], governed["store_links"]]
    groups += governed["cwd_system"].values()
    refused = [line for g in groups for line in g["prechecked"].values()]
    if not refused:
        pytest.skip(f"the {governed['policy']} policy lets every write attempt reach the kernel")
    denials = [e for e in _events(governed) if e["decision"] == "deny"]
    for line in refused:
        rule = re.search(r"\(rule ([^)]+)\)", line)
        assert rule is not None, line
        found = [e for e in denials if " ".join(e["argv"]) in line]
        assert found, (line, [e["argv"] for e in denials])
        assert {(e["rule"], e["layer"]) for e in found} == {(rule.group(1), "precheck")}


def test_secret_reads_are_refused(governed: dict[str, Any]) -> None:
    allowed = SECRETS_THE_POLICY_ALLOWS.get(governed["policy"], ())
    done = governed["secrets"]
    for case in SECRETS:
        if case.split("-")[0] in allowed:
            continue
        assert done["status"].get(case, 0) != 0, (case, done["errs"].get(case))
        assert done["outs"].get(case) == "", (case, done["outs"].get(case))
    for key, rule in SECRET_RULE[governed["policy"]].items():
        events = _file_denials(governed, SECRET_PATH[key])
        assert events, (key, SECRET_PATH[key])
        assert {e["rule"] for e in events} == {rule}, events


def test_system_write_refusals_are_audited_with_the_rule(governed: dict[str, Any]) -> None:
    for target in TARGETS:
        for name in ("touch", "cp", "echo", "python"):
            probe = f"{target}/agentsh-probe-{'py' if name == 'python' else name}"
            events = _file_denials(governed, probe)
            assert events, probe
            assert {e["rule"] for e in events} == {WRITE_RULE[governed["policy"]]}, events


# --- soft delete (built-in policy with sandbox.fuse soft_delete) ----------------------------


@pytest.fixture(scope="module")
def soft(results: _Results) -> dict[str, Any]:
    return dict(results.get("builtin")["soft_delete"])


@pytest.fixture
def restored(soft: dict[str, Any]) -> dict[str, Any]:
    """The restore steps (absent when `trash list` lacked the file or the tree)."""
    assert "restore_one" in soft, f"trash list names neither {ONE_FILE} nor the tree"
    return soft


def test_rm_rf_of_1000_files_succeeds(soft: dict[str, Any]) -> None:
    assert (soft["rm"]["rc"], soft["rm"]["out"]) == (0, "removed\n"), soft["rm"]
    assert soft["gone"], "the tree is still there seen from outside"
    assert len([k for k, (mode, _) in soft["before"].items() if stat.S_ISREG(mode)]) == TREE_FILES


def test_trash_lists_every_file_with_the_deleting_command(soft: dict[str, Any]) -> None:
    assert soft["list"]["rc"] == 0, soft["list"]["err"]
    entries = json.loads(soft["list"]["out"])["entries"]
    below = {e["original"]: e for e in entries if e["original"].startswith(f"{PROJECT}/big")}
    files = {f"{PROJECT}/big/{rel}" for rel, (mode, _) in soft["before"].items()}
    assert files <= set(below), sorted(files - set(below))[:5]
    commands = {e["command"] for e in below.values()}
    assert all(c and "rm -rf big" in c for c in commands), commands
    assert all(e["problem"] is None for e in below.values())


def test_one_file_restores_byte_identical_with_its_mode(restored: dict[str, Any]) -> None:
    assert restored["restore_one"]["rc"] == 0, restored["restore_one"]
    assert restored["restore_member"]["rc"] == 0, restored["restore_member"]
    after, before = restored["after_one"], restored["before"]
    assert sorted(k for k, (m, _) in after.items() if not stat.S_ISDIR(m)) == [ONE_FILE, MEMBER]
    for rel in (ONE_FILE, MEMBER, "d3", "d3/inner", "d7"):  # directories: their deleted modes
        assert after[rel] == before[rel], rel


def test_a_tree_restore_never_replaces_a_file_silently(restored: dict[str, Any]) -> None:
    refused = restored["restore_tree_refused"]
    assert refused["rc"] != 0, refused
    assert IN_THE_WAY in refused["err"], refused["err"]
    assert restored["after_refused"] == restored["in_the_way"], "a refused restore moved something"


def test_the_tree_restores_byte_identical_with_modes(restored: dict[str, Any]) -> None:
    assert restored["restore_tree"]["rc"] == 0, restored["restore_tree"]
    assert restored["after_tree"] == restored["before"]
    entries = json.loads(restored["list_after"]["out"])["entries"]
    replaced = [e for e in entries if e["original"] == f"{PROJECT}/big/{IN_THE_WAY}"]
    assert len(replaced) == 1, "the file --force replaced is in the trash under a new token"
    assert replaced[0]["size"] == len("new work\n")
