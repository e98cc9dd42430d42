"""Landlock on the real kernel. A forked child applies the compiled ruleset to itself exactly
as the frontend does before exec, then runs real tools. Every test that tries to write to
/etc, /usr/bin or /usr/local/bin runs inside an overlay root (a failing rule would write
into the overlay's upper dir, never into this machine's system), and checks there that the
file does not exist afterwards."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import config, landlock, loader
from agentsh.enforce.errors import LayerUnavailable
from agentsh.enforce.landlock import LandlockConfig, Ruleset

pytestmark = pytest.mark.e2e

SUPPORT = landlock.probe()
if not SUPPORT.available:
    pytest.skip(f"no Landlock here: {SUPPORT.reason}", allow_module_level=True)

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
POLICIES = ["default", "deno", "exe.dev", "render", "sprites"]
PY = sys.executable
WS = "/var/agentsh-landlock-ws"  # created inside the overlay's /var: never on the host
SECRET = "/var/lib/agentsh-ll-secret"  # likewise
SYSTEM_DIRS = ("/etc", "/usr/bin", "/usr/local/bin")
TOOLS = {
    "cp": "cp /etc/hostname {t}",
    "touch": "touch {t}",
    "mkdir": "mkdir {t}",
    "tee": "echo x | tee {t}",
    "echo >": "echo x > {t}",
    "python3 open()": f"{PY} -c \"open('{{t}}', 'w').write('x')\"",
    "dd": "dd if=/dev/zero of={t} bs=1 count=1",
    "install": "install -m 0755 /bin/true {t}",
}
Overlay = Callable[..., Any]


def ruleset_for(name: str, project: str = WS, *, monitor: bool = False) -> Ruleset:
    variables = {"HOME": "/root", "PROJECT_ROOT": project, "WORKSPACE": project, "TMPDIR": "/tmp"}
    if name == "default":
        pol, cfg = loader.load(config.builtin_policy_path(), variables), LandlockConfig()
    else:
        pol = loader.load(SEEDS / name / "default.yaml", variables)
        cfg = landlock.settings(config.load_config(SEEDS / name / "config.yaml"))
    runtime = landlock.runtime_paths()
    return landlock.compile(pol, cfg, abi=SUPPORT.abi, runtime=runtime, monitor=monitor)


def governed(
    ruleset: Ruleset, script: str, cwd: str = "/", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh -c script`` in a child that applied ``ruleset`` to itself before exec."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": cwd, "LC_ALL": "C", **(env or {})}
    return subprocess.run(
        ["/bin/sh", "-c", script],
        preexec_fn=lambda: landlock.apply(ruleset),  # the child restricts itself, then execs
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def in_child(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a forked child and return its result (or raise its error) here."""
    import pickle

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(rfd)
        try:
            result: tuple[bool, object] = (True, fn())
        except BaseException as err:  # noqa: BLE001 — sent back to the parent
            result = (False, err)
        with os.fdopen(wfd, "wb") as pipe:
            pipe.write(pickle.dumps(result))
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)  # noqa: S301 — our own child, over a private pipe
    if not ok:
        raise value
    return value


# --------------------------------------------------------------------------- system writes


@pytest.mark.parametrize("name", POLICIES)
def test_writes_to_the_system_fail_and_leave_nothing(name: str, overlay: Overlay) -> None:
    def attempts() -> list[tuple[str, str, int, bool, str]]:
        ruleset = ruleset_for(name)
        rows = []
        for directory in SYSTEM_DIRS:
            os.makedirs(directory, exist_ok=True)
            existing = Path(directory, "agentsh-ll-sed")
            existing.write_text("a\n")  # in the overlay: what sed -i must not change
            for tool, template in TOOLS.items():
                target = f"{directory}/agentsh-ll-{tool.split()[0]}"
                done = governed(ruleset, template.format(t=target))
                rows.append(
                    (tool, directory, done.returncode, os.path.lexists(target), done.stderr)
                )
            before = set(os.listdir(directory))
            done = governed(ruleset, f"sed -i s/a/b/ {existing}")
            leftovers = set(os.listdir(directory)) - before  # sed's temporary file
            changed = existing.read_text() != "a\n" or bool(leftovers)
            rows.append(("sed -i", directory, done.returncode, changed, done.stderr))
        return rows

    rows = overlay(attempts)
    assert len(rows) == len(SYSTEM_DIRS) * (len(TOOLS) + 1)
    escaped = [(tool, d, err) for tool, d, rc, left, err in rows if rc == 0 or left]
    assert escaped == []
    assert all("permission denied" in err.lower() for _, _, _, _, err in rows)


# --------------------------------------------------------------------------- workspace and /tmp


def make_wheel(directory: Path) -> Path:
    """A tiny pure-Python wheel, built here: pip installs it with no network."""
    files = {
        "agentsh_ll_demo/__init__.py": "VALUE = 42\n",
        "agentsh_ll_demo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: agentsh-ll-demo\n"
        "Version: 1.0\n",
        "agentsh_ll_demo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: agentsh-test\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    lines = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        lines.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    lines.append("agentsh_ll_demo-1.0.dist-info/RECORD,,")
    wheel = directory / "agentsh_ll_demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("agentsh_ll_demo-1.0.dist-info/RECORD", "\n".join(lines) + "\n")
    return wheel


def make_tar(directory: Path) -> Path:
    src = directory / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run.sh").write_text("#!/bin/sh\necho tar-ok\n")
    (src / "bin" / "run.sh").chmod(0o755)
    (src / "data.txt").write_text("payload\n")
    archive = directory / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="pkg")
    return archive


WORKSPACE_SCRIPT = """set -e
git init -q repo && cd repo && echo hi > a.txt && git add a.txt
git -c user.name=agent -c user.email=agent@example.com commit -qm init && git log --oneline | wc -l
git mv a.txt b.txt && git -c user.name=agent -c user.email=agent@example.com commit -qm mv
cd .. && {py} -m venv --without-pip venv && venv/bin/python -c 'import sys; print(sys.prefix)'
mkdir extract && tar xf {tar} -C extract && cat extract/pkg/data.txt
{py} -m pip install -q --no-index --no-cache-dir --disable-pip-version-check --target lib {whl}
PYTHONPATH=lib {py} -c 'import agentsh_ll_demo; print(agentsh_ll_demo.VALUE)'
t=$(mktemp -d) && echo tmp-ok > "$t/f" && mv "$t/f" moved && cat moved && rm -r "$t" moved
"""


@pytest.mark.parametrize("name", POLICIES)
def test_workspace_and_tmp_work(name: str, overlay: Overlay, tmp_path: Path) -> None:
    tar, whl = make_tar(tmp_path), make_wheel(tmp_path)
    # render names /workspace itself; a tmp dir stands in for it (its policy allows /tmp).
    workspace = str(tmp_path / "ws") if name == "render" else WS
    script = WORKSPACE_SCRIPT.format(py=PY, tar=tar, whl=whl)

    def work() -> subprocess.CompletedProcess[str]:
        os.makedirs(workspace)
        # deno asks for approval of deletes (and Landlock's rename deletes): with the notify
        # monitor running, Landlock lets them through and the monitor asks.
        ruleset = ruleset_for(name, workspace, monitor=name == "deno")
        return governed(ruleset, script, cwd=workspace)

    done = overlay(work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", f"{workspace}/venv", "payload", "42", "tmp-ok"]


def test_deno_without_the_monitor_refuses_deletes_and_renames(overlay: Overlay) -> None:
    def work() -> list[int]:
        os.makedirs(WS)
        Path(WS, "f").write_text("x")
        ruleset = ruleset_for("deno")  # approve with nobody to ask: a deny
        codes = [governed(ruleset, cmd, cwd=WS).returncode for cmd in ("rm f", "mv f g")]
        return [*codes, governed(ruleset, "echo y >> f && mkdir d", cwd=WS).returncode]

    assert overlay(work) == [1, 1, 0]


@pytest.mark.parametrize(
    ("name", "runs"),
    [("default", True), ("render", True), ("deno", False), ("exe.dev", False), ("sprites", False)],
)
def test_workspace_scripts_run_only_where_the_policy_allows_execute(
    name: str, runs: bool, overlay: Overlay, tmp_path: Path
) -> None:
    workspace = str(tmp_path / "ws") if name == "render" else WS

    def work() -> tuple[int, int]:
        os.makedirs(workspace)
        script = Path(workspace, "build.sh")
        script.write_text("#!/bin/sh\necho built\n")
        script.chmod(0o755)
        ruleset = ruleset_for(name, workspace)
        direct = governed(ruleset, "./build.sh", cwd=workspace).returncode
        return direct, governed(ruleset, "sh build.sh", cwd=workspace).returncode

    assert overlay(work) == ((0 if runs else 126), 0)


# --------------------------------------------------------------------------- tools, inheritance


COMMON_TOOLS = """set -e
/lib64/ld-linux-x86-64.so.2 /bin/true
ls /usr > /dev/null && cat /etc/hostname > /dev/null && getent passwd root > /dev/null
printf 'b\\na\\n' | sort | grep -c a
echo 'x y' | awk '{print $2}' | sed 's/y/z/'
find /usr/share -maxdepth 1 -name doc
head -c 8 /dev/urandom | wc -c
echo discard > /dev/null && : > /dev/null
date +%Y > /dev/null && id -u && uname -s && ps -p $$ -o comm=
bash -c 'echo $((6 * 7))'
git --version > /dev/null && tar --version > /dev/null && stat -c %U /etc/passwd
{py} -c 'import os, ssl, sqlite3; m, s = os.openpty(); print(os.ttyname(s).startswith("/dev/pts/"))'
"""


@pytest.mark.parametrize("name", POLICIES)
def test_the_loader_and_common_tools_keep_working(name: str, tmp_path: Path) -> None:
    done = governed(
        ruleset_for(name, str(tmp_path)), COMMON_TOOLS.replace("{py}", PY), str(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    expected = ["1", "z", "/usr/share/doc", "8", "0", "Linux", "sh", "42", "root", "True"]
    assert done.stdout.split() == expected


def test_rules_survive_execve_and_bind_every_descendant(overlay: Overlay) -> None:
    nested = [
        "sh -c 'sh -c \"echo x > /etc/agentsh-ll-nested\"'",
        "exec {py} -c \"open('/etc/agentsh-ll-exec', 'w')\"",
        "{py} -c \"import os\npid = os.fork()\nif not pid: open('/etc/agentsh-ll-fork', 'w')\n"
        'os.waitpid(pid, 0) if pid else None"',
        "(echo x > /etc/agentsh-ll-subshell) & wait $!",
        "setsid -w sh -c 'echo x > /etc/agentsh-ll-setsid'",
    ]

    def work() -> list[tuple[int, list[str]]]:
        ruleset = ruleset_for("default")
        rows = [governed(ruleset, cmd.format(py=PY)) for cmd in nested]
        left = sorted(p.name for p in Path("/etc").glob("agentsh-ll-*"))
        return [(r.returncode, left) for r in rows]

    rows = overlay(work)
    assert all(left == [] for _, left in rows)
    # The forking parent itself succeeds; its child's write failed (nothing was left).
    assert [rc != 0 for rc, _ in rows] == [True, True, False, True, True]


# --------------------------------------------------------------------------- ways around it

TRICKS = {
    "symlink in /tmp": "ln -s /etc/agentsh-ll-t {tmp}/link && echo x > {tmp}/link",
    # Both ends on one filesystem (the overlay's /var), so only Landlock can refuse the link.
    "hard link into the workspace": f"ln {SECRET} {WS}/h && echo x >> {WS}/h",
    "dot-dot": "cd {tmp} && echo x > " + "../" * 12 + "etc/agentsh-ll-t",
    "/proc/self/root": "echo x > /proc/self/root/etc/agentsh-ll-t",
    "rename out of /etc": "mv /etc/hostname {tmp}/stolen",
    "truncate": "truncate -s 0 /etc/hostname",
    "python dir_fd": f"{PY} -c \"import os; d = os.open('/etc', os.O_PATH); "
    "os.open('agentsh-ll-t', os.O_CREAT | os.O_WRONLY, dir_fd=d)\"",
    "bind mount": "mkdir {tmp}/m && mount --bind {tmp}/m /etc",
    "new mount namespace": "unshare -m sh -c 'mount -t tmpfs none /etc && echo x > /etc/x'",
    "mknod in /tmp": "mknod {tmp}/mem c 1 1",
    "cgroup escape": "echo $$ > {cgroup}/cgroup.procs",
    "cgroup mkdir": "mkdir {cgroup}/agentsh-ll-escape",
}


def own_cgroup() -> str:
    """This process's cgroup directory (v2 unified, else the v1 pids hierarchy)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for prefix, mount in (("0::", "/sys/fs/cgroup/unified"), ("0::", "/sys/fs/cgroup")):
        for line in lines:
            if line.startswith(prefix) and Path(mount, "cgroup.procs").exists():
                return os.path.normpath(f"{mount}/{line[len(prefix) :]}")
    pids = next(line.split(":", 2)[2] for line in lines if ":pids:" in line)
    return os.path.normpath(f"/sys/fs/cgroup/pids/{pids}")


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_ways_around_it_stay_blocked(trick: str, overlay: Overlay, tmp_path: Path) -> None:
    cgroup = own_cgroup()
    escape = Path(cgroup, "agentsh-ll-escape")

    def work() -> tuple[int, str, str, list[str]]:
        os.makedirs(WS)
        Path(SECRET).write_text("secret\n")  # read-only to the agent, writable by us
        before = Path("/etc/hostname").read_text()
        ruleset = ruleset_for("default", WS)
        done = governed(ruleset, TRICKS[trick].format(tmp=tmp_path, cgroup=cgroup))
        left = sorted(p.name for p in Path("/etc").glob("agentsh-ll-*"))
        left += ["/etc/hostname changed"] if Path("/etc/hostname").read_text() != before else []
        left += [f"{SECRET} changed"] if Path(SECRET).read_text() != "secret\n" else []
        return done.returncode, done.stdout, done.stderr, left

    try:
        code, _, err, left = overlay(work)
    finally:
        if escape.exists():  # only if the rule failed: remove the cgroup it made
            escape.rmdir()
    assert code != 0, err
    assert left == []
    assert Path("/etc/hostname").exists()


# --------------------------------------------------------------------------- apply's contract


def test_report_lists_rules_skipped_paths_and_no_new_privs() -> None:
    base = ruleset_for("default", "/nonexistent/agentsh-project")

    def as_root() -> landlock.Report:
        return landlock.apply(base)

    def as_nobody() -> landlock.Report:
        os.setgid(65534)
        os.setuid(65534)
        return landlock.apply(base)

    root = in_child(as_root)
    nobody = in_child(as_nobody)
    assert isinstance(root, landlock.Report)
    assert isinstance(nobody, landlock.Report)
    assert not root.set_no_new_privs  # root has CAP_SYS_ADMIN
    assert nobody.set_no_new_privs  # set by apply, or restrict_self would be EPERM
    assert ("/nonexistent/agentsh-project", "No such file or directory") in root.skipped
    assert {r.path for r in root.added} >= {"/", "/tmp", "/dev/null", "/dev/pts"}


def test_a_grant_swapped_for_a_symlink_is_not_granted(overlay: Overlay, tmp_path: Path) -> None:
    """The project sits in /tmp, which the agent can write: between the policy load and
    apply it could replace the project directory with a symlink to /etc."""
    project = tmp_path / "proj"

    def work() -> tuple[list[tuple[str, str]], int, bool]:
        project.mkdir()
        ruleset = ruleset_for("default", str(project))  # compiled while it is a directory
        project.rmdir()
        project.symlink_to("/etc")
        report = in_child(lambda: landlock.apply(ruleset))
        assert isinstance(report, landlock.Report)
        done = governed(ruleset, f"echo x > {project}/agentsh-ll-swap")
        return list(report.skipped), done.returncode, Path("/etc/agentsh-ll-swap").exists()

    skipped, code, written = overlay(work)
    assert (str(project), "resolves to /etc inside a writable tree: not granted") in skipped
    assert code != 0
    assert not written


def test_a_ruleset_for_a_newer_kernel_is_refused_before_anything_is_enforced() -> None:
    future = Ruleset(abi=SUPPORT.abi + 1, handled_fs=0x1, handled_net=0, rules=())
    with pytest.raises(LayerUnavailable, match=f"ruleset built for ABI {SUPPORT.abi + 1}"):
        landlock.apply(future)


def test_a_rule_the_kernel_refuses_fails_closed() -> None:
    bad = Ruleset(
        abi=1,
        handled_fs=landlock.FS_READ_FILE,
        handled_net=0,
        rules=(landlock.Rule("/tmp", landlock.FS_WRITE_FILE, True),),  # not handled: EINVAL
    )

    def attempt() -> str:
        try:
            landlock.apply(bad)
        except LayerUnavailable as err:
            return err.message
        return "applied"

    assert "Invalid argument" in str(in_child(attempt))
