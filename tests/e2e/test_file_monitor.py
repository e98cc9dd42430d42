"""The notify file monitor end to end (issue 4 item 2): a governed tree (``govern.start`` /
``ptrace.start_traced`` with ``files=filemon.plan(...)`` in a forked child, then the host's
real ``/usr/bin/bash -c …``; nothing is installed, so no overlay root is needed) under the
built-in policy with a fake home directory, for both transports and for notify with
Landlock applied between the supervisor's fork and the filter (the frontend's order).

Every way of reaching a protected file (a fake ``~/.ssh/id_rsa`` and ``~/.aws``, the real
``/etc/shadow``, ``/proc/1/environ``, a workspace ``.env``) must fail without printing its
content and leave a deny event naming the rule; ordinary work in the workspace and /tmp
(python, git, tar, the dynamic loader) must keep working.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import select
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import (
    audit,
    config,
    fileguard,
    filekinds,
    filemon,
    govern,
    landlock,
    loader,
    ptrace,
    seccomp,
    trash,
)
from agentsh.enforce.policy import Decision, FileRule, Policy
from agentsh.enforce.record import asdict, replace
from agentsh.shell import supervise

pytestmark = pytest.mark.e2e

BASH = "/usr/bin/bash"
MODES = ("notify", "ptrace", "notify+landlock", "notify+narrow")
# notify+narrow: Landlock lets the tree read only these trees and /tmp (as exe.dev's seed
# config does), so what the supervisor opens for the tree must be put to its read rules.
NARROW_READS = ("/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev")
SECRET = "SECRET-MATERIAL-42"
DEFAULTS = filemon.MonitorConfig()


@dataclass(frozen=True)
class Kit:
    base: Path
    home: Path
    work: Path
    policy: Policy

    def fmt(self, script: str) -> str:
        return script.format(h=self.home, w=self.work, b=self.base)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    if not seccomp.probe().usable:
        pytest.skip("seccomp user-notify is unavailable on this kernel")
    base = tmp_path_factory.mktemp("filemon")
    home, work = base / "home", base / "work"
    for d in (home / ".ssh", home / ".aws", work):
        d.mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(f"{SECRET} ssh\n")
    (home / ".aws" / "credentials").write_text(f"{SECRET} aws\n")
    (home / "notes.txt").write_text("just notes\n")
    (work / ".env").write_text(f"TOKEN={SECRET}\n")
    os.link(home / ".ssh" / "id_rsa", base / "prelink")  # a hard link made before the session
    variables = {"HOME": str(home), "PROJECT_ROOT": str(work), "WORKSPACE": str(work)}
    policy = loader.load(config.builtin_policy_path(), variables | {"TMPDIR": "/tmp"})
    return Kit(base, home, work, policy)


class _Sink:
    """The audit sink, in the supervisor process: mirrors each event to a file the test
    reads, and holds a lifeline socket open until that process exits."""

    def __init__(self, events: Path, lifeline: str) -> None:
        self.life = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.life.connect(lifeline)
        self.fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, event: audit.Event) -> None:
        os.write(self.fd, (json.dumps(asdict(event)) + "\n").encode())


class Runner:
    """Runs ``bash -c SCRIPT`` under exec supervision and the file monitor."""

    count = itertools.count()

    def __init__(
        self,
        kit: Kit,
        mode: str,
        cfg: filemon.MonitorConfig = DEFAULTS,
        *,
        trash: str | None = None,
        refuse_deletes: tuple[str, ...] = (),
        audit_deletes: tuple[str, ...] = (),
    ) -> None:
        self.kit, self.mode = kit, mode
        self.ruleset = None
        if "+" in mode:
            support = landlock.probe()
            if not support.available:
                pytest.skip("Landlock is unavailable on this kernel")
            self.ruleset = landlock.compile(
                kit.policy,
                landlock.LandlockConfig(),
                abi=support.abi,
                runtime=landlock.runtime_paths(),
                analyse=False,
            )
            if mode.endswith("+narrow"):
                self.ruleset = _narrowed(self.ruleset, (*NARROW_READS, "/tmp"))
        if mode == "ptrace" and not ptrace.probe().available:
            pytest.skip(f"the ptrace backend is unavailable: {ptrace.probe().reason}")
        plan = filemon.plan(
            kit.policy,
            cfg,
            landlock=self.ruleset,
            protected=("/etc/agentsh",),
            trash=trash,
            refuse_deletes=refuse_deletes,
            audit_deletes=audit_deletes,
        )
        assert plan is not None
        self.plan = plan

    def _govern(self, events: Path, lifeline: str) -> None:  # in the child, before exec
        policy = self.kit.policy
        spawn = ptrace.spawn_traced if self.mode == "ptrace" else govern.spawn
        pending = spawn(
            lambda: supervise.make_checker(policy),
            functools.partial(_Sink, events, lifeline),
            first_exec=BASH,
            session="e2e-files",
            files=self.plan,
        )
        assert pending is not None
        if self.ruleset is not None:
            landlock.apply(self.ruleset)
        pending.install()

    def run(self, script: str, during: Callable[[int], None] | None = None) -> dict[str, Any]:
        """``during``, when given, runs in a thread with the supervisor's pid while the
        script runs (the pid comes from the peer credentials of its lifeline)."""
        n = next(self.count)
        lifeline = f"\0agentsh-filemon-{os.getpid()}-{n}"
        life = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        life.bind(lifeline)
        life.listen(1)
        events = self.kit.base / f"events-{n}.jsonl"
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.kit.home), "LC_ALL": "C"}
        proc = subprocess.Popen(
            [BASH, "-c", self.kit.fmt(script)],
            preexec_fn=functools.partial(self._govern, events, lifeline),  # noqa: PLW1509
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.kit.work,
        )
        life.settimeout(30)
        conn = None
        worker = None
        try:
            if during is not None:
                conn, _ = life.accept()
                pid = struct.unpack(
                    "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                )[0]
                worker = threading.Thread(target=during, args=(pid,), daemon=True)
                worker.start()
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        if worker is not None:
            worker.join(30)
        exited = _await_eof(life, 30, conn)
        lines = events.read_text().splitlines() if events.exists() else []
        return {
            "rc": proc.returncode,
            "out": out.decode(errors="replace"),
            "err": err.decode(errors="replace"),
            "events": [json.loads(x) for x in lines],
            "exited": exited,
        }


def _narrowed(ruleset: landlock.Ruleset, reads: tuple[str, ...]) -> landlock.Ruleset:
    """``ruleset`` with reads granted only beneath ``reads`` (the built-in policy lets
    the tree read everywhere, which a config's ``allow_read`` cannot take back)."""
    rules = [
        replace(r, access=r.access & ~landlock.READ) if r.path == "/" else r for r in ruleset.rules
    ]
    rules += [landlock.Rule(path, landlock.READ, tree=True) for path in reads]
    return replace(ruleset, rules=tuple(rules))


def _await_eof(life: socket.socket, timeout: float, conn: socket.socket | None = None) -> bool:
    life.settimeout(timeout)
    try:
        if conn is None:
            conn, _ = life.accept()
        conn.settimeout(timeout)
        with conn:
            while conn.recv(64):
                pass
    except TimeoutError:
        return False
    finally:
        life.close()
    return True


@pytest.fixture(scope="module", params=MODES)
def runner(request: pytest.FixtureRequest, kit: Kit) -> Runner:
    return Runner(kit, request.param)


def _file_denials(result: dict[str, Any], rule: str) -> list[dict[str, Any]]:
    return [
        e
        for e in result["events"]
        if e["decision"] == "deny" and e["layer"] == "file" and e["rule"] == rule
    ]


# --------------------------------------------------------------------------- refused

PY_DIRFD = (
    "python3 -c \"import os; d = os.open('{h}', os.O_RDONLY); "
    "print(os.read(os.open('.ssh/id_rsa', os.O_RDONLY, dir_fd=d), 99))\""
)
PY_OPENAT2 = (
    'python3 -c "import ctypes, os, struct; libc = ctypes.CDLL(None, use_errno=True); '
    "how = struct.pack('QQQ', os.O_RDONLY, 0, 0); "
    "fd = libc.syscall(437, -100, b'{h}/.ssh/id_rsa', how, 24); "
    'raise SystemExit(os.read(fd, 99) if fd >= 0 else os.strerror(ctypes.get_errno()))"'
)
CREDS, PROCS, ENV = "deny-credentials", "deny-process-secrets", "approve-env-files"
REFUSED: dict[str, tuple[str, str, str]] = {
    # name: (script, rule of the deny event, text that must not appear in the output)
    "direct": ("cat {h}/.ssh/id_rsa", CREDS, SECRET),
    "aws": ("cat {h}/.aws/credentials", CREDS, SECRET),
    "python-open": ("python3 -c 'print(open(\"{h}/.ssh/id_rsa\").read())'", CREDS, SECRET),
    "openat-dirfd": (PY_DIRFD, CREDS, SECRET),
    "openat2": (PY_OPENAT2, CREDS, SECRET),
    "symlink": ("ln -s {h}/.ssh/id_rsa {w}/l1; cat {w}/l1", CREDS, SECRET),
    "symlinked-dir": ("ln -s {h}/.ssh {w}/d1; cat {w}/d1/id_rsa", CREDS, SECRET),
    "dotdot": ("cd {w} && cat ../home/.ssh/id_rsa", CREDS, SECRET),
    "dot-segments": ("cat {h}/.ssh/./../.ssh//id_rsa", CREDS, SECRET),
    "proc-self-root": ("cat /proc/self/root{h}/.ssh/id_rsa", CREDS, SECRET),
    "cwd-relative": ("cd {h}/.ssh && cat id_rsa", CREDS, SECRET),
    "proc-self-cwd": ("cd {h}/.ssh && cat /proc/self/cwd/id_rsa", CREDS, SECRET),
    "proc-pid-cwd": (
        "(cd {h}/.ssh && exec sleep 5) & sleep 0.5; "
        "cat /proc/$!/cwd/id_rsa; s=$?; kill $!; exit $s",
        CREDS,
        SECRET,
    ),
    "dev-fd": ("exec 3<{h}; cat /dev/fd/3/.ssh/id_rsa", CREDS, SECRET),
    "hard-link-new": ("ln {h}/.ssh/id_rsa {w}/hl; cat {w}/hl", CREDS, SECRET),
    "hard-link-old": ("cat {b}/prelink", CREDS, SECRET),
    "rename-file": ("mv {h}/.ssh/id_rsa {w}/moved; cat {w}/moved", CREDS, SECRET),
    "rename-dir": ("mv {h}/.ssh {w}/s2; cat {w}/s2/id_rsa", CREDS, SECRET),
    "rename-home": ("mv {h} {b}/h2; cat {b}/h2/.ssh/id_rsa", CREDS, SECRET),
    "copy": ("cp {h}/.ssh/id_rsa {w}/copy; cat {w}/copy", CREDS, SECRET),
    "tar": ("set -o pipefail; tar cf - -C {h} .ssh | tar xOf -", CREDS, SECRET),
    "list": ("ls {h}/.ssh", CREDS, "id_rsa"),
    "shadow": ("cat /etc/shadow", CREDS, "root:"),
    "shadow-relative": ("cd /etc && cat ./shadow", CREDS, "root:"),
    "shadow-proc-root": ("cat /proc/self/root/etc/shadow", CREDS, "root:"),
    "proc-1-environ": ("cat /proc/1/environ", PROCS, "PATH="),
    "proc-environ-link": ("ln -s /proc/1/environ {w}/e; cat {w}/e", PROCS, "PATH="),
    "env-file": ("cat {w}/.env", ENV, SECRET),
    "write-env-file": ("echo TOKEN=x > {w}/.env.local && cat {w}/.env.local", ENV, "TOKEN=x"),
    "write-ssh": (
        "echo key >> {h}/.ssh/authorized_keys; cat {h}/.ssh/authorized_keys",
        CREDS,
        "key",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_protected_files_stay_unreadable(runner: Runner, name: str) -> None:
    script, rule, leak = REFUSED[name]
    result = runner.run(script)
    shown = result["out"] + result["err"]
    assert leak not in result["out"], result
    assert result["rc"] != 0, result
    assert _file_denials(result, rule), result["events"]
    assert f"(rule {rule})" in shown, shown
    assert result["exited"]
    assert not (runner.kit.home / "x").exists()


def test_protected_files_are_untouched(runner: Runner) -> None:
    """After every attempt above, the originals are where they were, unchanged."""
    home = runner.kit.home
    assert (home / ".ssh" / "id_rsa").read_text() == f"{SECRET} ssh\n"
    assert (home / ".aws" / "credentials").read_text() == f"{SECRET} aws\n"
    assert not (home / ".ssh" / "authorized_keys").exists()
    assert not (runner.kit.work / ".env.local").exists()


# --------------------------------------------------------------------------- allowed

ALLOWED: dict[str, tuple[str, str]] = {
    "workspace": (
        "cd {w} && rm -rf d && echo hi > f && cat f && mkdir -p d/e && mv f d/e/g && "
        "chmod 600 d/e/g && ln -s g d/e/h && ln d/e/g d/e/i && cat d/e/h d/e/i && rm -r d",
        "hi\nhi\nhi\n",
    ),
    "tmp": ("t=$(mktemp -d) && echo ok > $t/x && cat $t/x && rm -r $t", "ok\n"),
    "home-notes": ("cat {h}/notes.txt && ls -a {h} | grep -c '^.ssh$'", "just notes\n1\n"),
    "python": ("python3 -c 'import json, sqlite3, ssl; print(json.dumps([6 * 7]))'", "[42]\n"),
    "ld-so": ("/lib64/ld-linux-x86-64.so.2 /usr/bin/echo loaded", "loaded\n"),
    "git": (
        "cd {w} && rm -rf repo && git init -q repo && cd repo && echo a > a && git add a && "
        "git -c user.name=t -c user.email=t@e commit -qm init && git log --format=%s",
        "init\n",
    ),
    "tar": (
        "cd {w} && rm -rf src && mkdir src && echo z > src/z && tar cf s.tar src && "
        "rm -r src && tar xf s.tar && cat src/z && rm -r src s.tar",
        "z\n",
    ),
    "process-substitution": ("cat <(echo piped) /dev/stdin <<< here", "piped\nhere\n"),
    # metadata calls the supervisor carries out: the caller's umask, truncate, chmod,
    # fchmod (on a descriptor), chown, symlink
    "metadata": (
        "cd {w} && rm -rf m && mkdir m && echo hello > m/f && (umask 077; mkdir m/p) && "
        "truncate -s 2 m/f && chmod 640 m/f && chown 0:0 m/f && ln -s f m/l && "
        "python3 -c 'import os; os.fchmod(os.open(\"m/f\", os.O_RDONLY), 0o604)' && "
        "stat -c '%s %a %U' m/f && stat -c '%a' m/p && readlink m/l && rm -r m",
        "2 604 root\n700\nf\n",
    ),
    # a FIFO opened before its writer: the open waits (in a thread of the supervisor)
    "fifo": (
        "rm -f {w}/p && mkfifo {w}/p && {{ (sleep 0.3; echo through > {w}/p) & }} && "
        "cat {w}/p && rm {w}/p",
        "through\n",
    ),
    # /dev/tty read-only in a session with a terminal (script(1) makes one)
    "dev-tty": (
        "printf 'import os\\nprint(os.isatty(os.open(\"/dev/tty\", os.O_RDONLY)))\\n' "
        "> {w}/t.py && script -qec 'python3 {w}/t.py' /dev/null | tr -d '\\r'",
        "True\n",
    ),
}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_ordinary_work_keeps_working(runner: Runner, name: str) -> None:
    script, expected = ALLOWED[name]
    result = runner.run(script)
    assert (result["rc"], result["out"]) == (0, expected), result
    assert "blocked by policy" not in result["err"], result["err"]
    assert not [e for e in result["events"] if e["decision"] == "deny"], result["events"]
    assert result["exited"]


def test_another_sessions_terminal_cannot_be_written_or_read(runner: Runner) -> None:
    """A terminal of a session outside the tree (here the test's own pty, standing for a
    person's) is refused with the rule; nothing reaches it. A pty the tree makes itself
    is usable by name."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        result = runner.run(
            f"printf 'X\\033]52;c;ZWNobyBwd25lZA==\\007' > {name}; timeout 2 cat {name}"
        )
        received = b""
        while select.select([master], [], [], 0.2)[0]:
            received += os.read(master, 1024)
    finally:
        os.close(master)
        os.close(slave)
    assert received == b"", received
    assert result["rc"] != 0, result
    denials = _file_denials(result, "terminal-of-another-session")
    assert len(denials) == 2, result["events"]  # the write and the read
    own = runner.run(
        'python3 -c "import os, pty; m, s = pty.openpty(); n = os.ttyname(s); '
        "open(n, 'w').write('x'); print(os.read(m, 10))\""
    )
    assert (own["rc"], own["out"]) == (0, "b'x'\n"), own


STORM_SCRIPT = (
    'python3 -c "import os, time\n'
    "st = os.stat('{w}/storm')\n"
    "end, opens, wrong = time.time() + 3, 0, 0\n"
    "while time.time() < end:\n"
    "    fd = os.open('{w}/storm', os.O_RDONLY)\n"
    "    s = os.fstat(fd)\n"
    "    wrong += (s.st_dev, s.st_ino) != (st.st_dev, st.st_ino)\n"
    "    os.close(fd) if fd > 2 else None\n"
    "    opens += 1\n"
    'print(opens, wrong)"'
)


@pytest.mark.parametrize("mode", ["notify", "notify+landlock"])  # ptrace injects no fd
def test_signals_to_the_supervisor_never_hand_out_a_wrong_fd(kit: Kit, mode: str) -> None:
    """A signal to the supervisor while it injects an fd (ADDFD with SEND) must not
    turn the open into a "success" with fd 0: without the signal mask around that call,
    849 of 917 opens returned stdin here under this stream of SIGCHLD (and bash's own
    loader got fd 0 for libc)."""
    runner = Runner(kit, mode)
    (kit.work / "storm").write_text("storm\n")
    sent = [0]

    def storm(pid: int) -> None:
        end = time.time() + 2.5
        while time.time() < end:
            try:
                os.kill(pid, signal.SIGCHLD)
            except ProcessLookupError:
                return
            sent[0] += 1

    result = runner.run(STORM_SCRIPT, during=storm)
    assert result["rc"] == 0, result
    opens, wrong = map(int, result["out"].split())
    assert sent[0] > 1000, sent
    assert opens > 50, opens
    assert wrong == 0, f"{wrong} of {opens} opens returned another file"


def test_the_plan_traps_what_the_default_policy_needs(runner: Runner) -> None:
    assert runner.plan.read_opens
    assert runner.plan.write_opens
    assert runner.plan.families == frozenset(filemon.FAMILIES)


# --------------------------------------------------------------------------- races

# One thread swaps a symlink between a harmless file and the key while the main thread
# opens it: a check followed by CONTINUE would let the kernel open whatever the link names
# a moment later. Emulated opens hand over the very file that was checked.
PY_SWAP = """
import os, sys, threading
work, key = sys.argv[1], sys.argv[2]
harmless, link = os.path.join(work, "harmless"), os.path.join(work, "flip")
with open(harmless, "w") as f:
    f.write("harmless\\n")
errors = set()
def flip():
    while True:
        for target in (harmless, key):
            tmp = link + ".tmp"
            try:
                os.symlink(target, tmp)
                os.rename(tmp, link)
            except OSError as err:
                errors.add(err.strerror)
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
threading.Thread(target=flip, daemon=True).start()
leaked = opened = 0
for _ in range(1500):
    try:
        with open(link) as f:
            data = f.read()
    except OSError:
        continue
    opened += 1
    leaked += "SECRET" in data
print(f"opened={opened} leaked={leaked} errors={sorted(errors)}")
sys.exit(1 if leaked else 0)
"""


def test_a_swapped_symlink_cannot_smuggle_the_key_in(runner: Runner) -> None:
    """notify: the emulated open hands over the file checked (never the key). ptrace: the
    open runs itself, and its exit stop kills the process if it opened the key."""
    key = runner.kit.home / ".ssh" / "id_rsa"
    script = f"python3 -c {shlex.quote(PY_SWAP)} {runner.kit.work} {key} 2>/dev/null"
    script = script.replace("{", "{{").replace("}", "}}")
    result = runner.run(script)
    assert SECRET not in result["out"]
    if runner.mode == "ptrace" and result["rc"] in (-9, 128 + 9):  # SIGKILL at the exit stop
        killed = [e for e in _file_denials(result, CREDS) if "was killed" in e["message"]]
        assert killed, result["events"][-3:]
        return
    assert result["rc"] == 0, result["out"]
    assert "leaked=0" in result["out"]
    if runner.mode != "ptrace":  # under ptrace the swapper thread may rarely get to run
        assert "opened=0" not in result["out"]  # the harmless file was read
        assert _file_denials(result, CREDS)  # and the key refused, with its rule


# The racing thread: flips the C string ``buf`` between the paths in variables {a} and {b}.
FLIPPER = """buf = ctypes.create_string_buffer(512)
names = [{a}.encode() + b"\\0", {b}.encode() + b"\\0"]
def flip():
    while True:
        for name in names:
            ctypes.memmove(buf, name, len(name))
threading.Thread(target=flip, daemon=True).start()
"""

# A second thread flips the path an open names between a harmless name and a protected
# one, at memory speed: whatever the kernel would look up after the check, the process
# must only ever get the file that was checked. The harmless names cover every kind the
# monitor opens in the process's stead (a file, a device, procfs, a /proc/self entry), and
# opens that write: O_RDWR of the workspace's .env (writable under Landlock, unreadable
# by policy) and O_CREAT of a new file. "drop" makes the racer drop one capability
# first, so its credentials differ from the supervisor's.
PY_RACE = (
    """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
harmless, key, drop, flags = sys.argv[1], sys.argv[2], sys.argv[3] == "drop", sys.argv[4]
flags = {"read": os.O_RDONLY | os.O_NONBLOCK, "rdwr": os.O_RDWR,
         "create": os.O_RDWR | os.O_CREAT}[flags]
if drop:  # capset(2): CAP_SYS_BOOT (22) out of the effective and permitted sets
    head, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    assert libc.capget(head, data) == 0
    data[0] &= ~(1 << 22)
    data[1] &= ~(1 << 22)
    assert libc.capset(head, data) == 0
"""
    + FLIPPER.format(a="harmless", b="key")
    + """opened = leaked = 0
for _ in range(1500):
    fd = libc.open(buf, flags, 0o644)
    if fd < 0:
        continue
    opened += 1
    leaked += b"SECRET" in os.read(fd, 200)
    os.close(fd)
print(f"opened={opened} leaked={leaked}")
"""
)
RACES = {  # name: (harmless, protected, open flags, the rule refusing the protected one)
    **{f"read-{h}": (h, "{h}/.ssh/id_rsa", "read", CREDS) for h in (
        "{w}/harmless", "/dev/null", "/proc/self/stat", "/proc/cpuinfo")},
    "rdwr-env": ("{w}/harmless", "{w}/.env", "rdwr", ENV),
    "create-env": ("{w}/made", "{w}/.env", "create", ENV),
}  # fmt: skip


def _race(runner: Runner, race: str, creds: str) -> dict[str, Any]:
    harmless, key, flags, _ = (runner.kit.fmt(x) for x in RACES[race])
    script = f"echo harmless > {runner.kit.work}/harmless; rm -f {runner.kit.work}/made; "
    script += f"python3 -c {shlex.quote(PY_RACE)} {harmless} {key} {creds} {flags}"
    return runner.run(script.replace("{", "{{").replace("}", "}}"))  # not a template


@pytest.mark.parametrize("creds", ["same", "drop"])
@pytest.mark.parametrize("race", sorted(RACES))
def test_a_racing_thread_never_gets_the_key(runner: Runner, race: str, creds: str) -> None:
    """The process gets the harmless file, the protected one is refused with its rule,
    and nothing of it is ever read (under ptrace, a lost race kills the process at the
    open's exit instead)."""
    for _ in range(3):  # on a loaded machine a run may never catch the harmless name
        result = _race(runner, race, creds)
        assert SECRET not in result["out"]
        if runner.mode == "ptrace" and result["rc"] in (-9, 128 + 9):
            return
        assert result["rc"] == 0, result
        assert "leaked=0" in result["out"], result["out"]
        if "opened=0" not in result["out"]:
            break
    assert "opened=0" not in result["out"]
    assert _file_denials(result, RACES[race][3])


@pytest.mark.parametrize("race", ["read-{w}/harmless", "rdwr-env"])
def test_the_same_race_wins_when_the_kernel_opens_the_path(kit: Kit, race: str) -> None:
    """The control for the test above: with ``openat_emulation: false`` the kernel looks
    the path up again after the check, and the racer reads the key — so the racer is
    fast enough to prove something."""
    runner = Runner(kit, "notify", filemon.MonitorConfig(emulate_opens=False))
    leaked = False
    for _ in range(3):
        result = _race(runner, race, "same")
        leaked = "leaked=0" not in result["out"]
        if leaked:
            break
    assert leaked, result["out"]


# In a user namespace of its own (no capabilities over our files), with exactly the
# capabilities it had before, so its status lines read like the supervisor's. No braces:
# scripts go through Kit.fmt.
PY_USERNS = r"""
import ctypes, re, sys
libc = ctypes.CDLL(None, use_errno=True)
status = open("/proc/self/status").read()
prm, eff = (int(re.search(k + r":\s*(\w+)", status).group(1), 16) for k in ("CapPrm", "CapEff"))
if libc.unshare(0x10000000):
    sys.exit("unshare: errno %d" % ctypes.get_errno())
class Head(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("eff", ctypes.c_uint32), ("prm", ctypes.c_uint32), ("inh", ctypes.c_uint32)]
data = (Data * 2)()
for i in (0, 1):
    data[i].eff, data[i].prm = (eff >> 32 * i) & 0xFFFFFFFF, (prm >> 32 * i) & 0xFFFFFFFF
if libc.capset(ctypes.byref(Head(0x20080522, 0)), data):
    sys.exit("capset: errno %d" % ctypes.get_errno())
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            print(path, "read", f.read().strip())
    except OSError as err:
        print(path, "refused", err.errno)
"""


@pytest.fixture(scope="module")
def someone_elses(kit: Kit) -> tuple[Path, Path]:
    """A file only uid 1000 may read, and one everybody may."""
    private, public = kit.base / "theirs-private", kit.base / "theirs-public"
    for path, mode in ((private, 0o600), (public, 0o644)):
        path.write_text(f"{path.name} text\n")
        os.chown(path, 1000, 1000)
        path.chmod(mode)
    return private, public


def test_a_process_in_its_own_user_namespace_reads_only_what_the_kernel_lets_it(
    runner: Runner, someone_elses: tuple[Path, Path]
) -> None:
    """It has no capabilities over our files: the supervisor must not open for it as
    itself just because its status lines read the same."""
    private, public = someone_elses
    args = " ".join(shlex.quote(str(p)) for p in (private, public))
    script = f"python3 -c {shlex.quote(PY_USERNS)} {args}"
    kernel = subprocess.run(
        ["python3", "-c", PY_USERNS, str(private), str(public)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert kernel.stdout.splitlines() == [
        f"{private} refused {errno.EACCES}",
        f"{public} read {public.name} text",
    ]
    result = runner.run(script)
    assert result["rc"] == 0, result
    assert result["out"] == kernel.stdout, result


@pytest.fixture(scope="module")
def outsider() -> Iterator[tuple[int, int]]:
    """A process outside the governed tree holding a secret in its environment, its
    stdout a pipe the test reads: (pid, read end)."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["sleep", "600"],
        env={"API_KEY": SECRET, "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL,
        stdout=w,
        cwd="/etc",
    )
    os.close(w)
    os.set_blocking(r, False)
    try:
        yield proc.pid, r
    finally:
        proc.kill()
        proc.wait()
        os.close(r)


def test_another_processes_environment_and_files_stay_out_of_reach(
    runner: Runner, outsider: tuple[int, int]
) -> None:
    """Through its thread's /proc entry (the policy names /proc/*/environ), and through
    its /proc magic links (fd, cwd, root): the supervisor, outside any Landlock domain,
    must not follow them for the tree."""
    pid, pipe = outsider
    script = (
        f"cat /proc/{pid}/task/{pid}/environ; "
        f"echo injected > /proc/{pid}/fd/1; "
        f"cat /proc/{pid}/cwd/hostname >/dev/null; "
        f"cat /proc/{pid}/task/{pid}/root/etc/hostname >/dev/null; "
        "echo own > /dev/fd/1; echo mine > /proc/self/fd/1; echo tree > /proc/$$/fd/1"
    )
    result = runner.run(script)
    assert SECRET not in result["out"], result
    assert result["out"].split() == ["own", "mine", "tree"], result
    with pytest.raises(BlockingIOError):
        os.read(pipe, 100)  # nothing was written into the outsider's stdout
    assert _file_denials(result, "deny-process-secrets"), result["events"]
    fenced = _file_denials(result, fileguard.PROC_RULE)
    assert {e["argv"][0].split("/")[3] for e in fenced} == {"fd", "cwd", "task"}, result["err"]
    assert f"(rule {fileguard.PROC_RULE})" in result["err"]


def test_a_file_planted_in_a_sticky_directory_is_not_reopened_with_o_creat(
    runner: Runner,
) -> None:
    """The kernel refuses an O_CREAT open of a file another user planted in a sticky,
    world-writable directory (may_create_in_sticky; for a device whatever the sysctls
    say): the supervisor, which opens the file itself, must refuse it too."""
    sticky = runner.kit.base / f"sticky-{runner.mode}"
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = sticky / "planted"
    os.mknod(planted, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's device
    os.chown(planted, 1000, 1000)
    script = f"echo hi > {planted}; echo rc=$?; echo hi >> {planted}; echo rc=$?; cat {planted}"
    kernel = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    assert kernel.stdout.split() == ["rc=1", "rc=1"], kernel  # > and >> both pass O_CREAT
    result = runner.run(script)
    assert result["out"] == kernel.stdout, result
    assert result["err"].count("Permission denied") == 2, result["err"]


# Run as uid 1000, in a directory it entered as root (argv[1]): every file call a process
# makes on paths behind a directory it may not enter (root's, 0700), and the same calls
# where it may; relative paths start from where it is, as for the kernel.
PY_AS_USER = r"""
import errno, os, sys
os.chdir(sys.argv[1])
os.setgroups([])
os.setresgid(1000, 1000, 1000)
os.setresuid(1000, 1000, 1000)
calls = {
    "read": lambda p: open(p).read(),
    "list": os.listdir,
    "create": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
    "append": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_APPEND)),
    "unlink": os.unlink,
    "mkdir": os.mkdir,
    "rmdir": os.rmdir,
    "rename": lambda p: os.rename(p, p + ".moved"),
    "chmod": lambda p: os.chmod(p, 0o600),
    "link": lambda p: os.link(p, p + ".hard"),
    "symlink": lambda p: os.symlink("/etc/hostname", p),
}
for spec in sys.argv[2:]:
    call, path = spec.split(":", 1)
    try:
        calls[call](path)
        print(spec, "ok")
    except OSError as err:
        print(spec, errno.errorcode[err.errno])
"""
AS_USER_CALLS = ("read:{d}/file", "list:{d}", "create:{d}/new", "append:{d}/victim",
                 "unlink:{d}/victim", "mkdir:{d}/newdir", "rmdir:{d}/sub", "chmod:{d}/mine",
                 "link:{d}/mine", "rename:{d}/mine", "symlink:{d}/sym")  # fmt: skip


def _user_tree(base: Path) -> list[str]:
    """(Re)build, under ``base``: ``locked`` (root's, 0700) holding ``open`` (0777) and
    ``reach`` (0777), each with the same entries (``mine`` is uid 1000's), and beside
    them a symlink to each one's file. Returns the arguments of PY_AS_USER: the calls
    to make on both, from inside the locked directory."""
    specs = []
    for top in ("locked", "reach"):
        inner = base / top / "open" if top == "locked" else base / top
        subprocess.run(["rm", "-rf", str(base / top)], check=True)
        (inner / "sub").mkdir(parents=True)
        for name, mode in (("file", 0o644), ("victim", 0o666), ("mine", 0o644)):
            (inner / name).write_text(f"{top} {name}\n")
            (inner / name).chmod(mode)
        os.chown(inner / "mine", 1000, 1000)
        for d in (inner, inner / "sub"):
            d.chmod(0o777)
        link = base / f"{top}-link"
        link.unlink(missing_ok=True)
        link.symlink_to(inner / "file")
        specs += [c.format(d=inner) for c in AS_USER_CALLS] + [f"read:{link}"]
    (base / "locked").chmod(0o700)
    return [str(base / "locked" / "open"), *specs, "read:file", "create:made-here"]


@pytest.fixture
def user_base() -> Iterator[Path]:
    """A directory uid 1000 may enter (pytest's own are root's, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="agentsh-as-user-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_a_directory_the_process_may_not_enter_stays_closed_to_it(
    runner: Runner, user_base: Path
) -> None:
    """The monitor looks paths up and carries calls out itself: looked up as root, a file
    behind root's 0700 directory was read by uid 1000 (reopened through the fd found).
    Every call, opens and path calls alike, must get the kernel's own answer — refused
    behind the locked directory, carried out where the process may go."""
    specs = _user_tree(user_base)
    kernel = subprocess.run(
        [sys.executable, "-c", PY_AS_USER, *specs],
        capture_output=True, text=True, check=True, cwd=user_base,
    )  # fmt: skip
    lines = kernel.stdout.splitlines()
    locked = [line for line in lines if "/locked" in line]
    assert locked, kernel.stdout
    assert all(line.endswith(" EACCES") for line in locked), kernel.stdout
    assert lines[-2:] == ["read:file ok", "create:made-here ok"], kernel.stdout
    _user_tree(user_base)
    args = " ".join(shlex.quote(s) for s in specs)
    script = f"cd {user_base} && python3 -c {shlex.quote(PY_AS_USER)} {args}"
    result = runner.run(script.replace("{", "{{").replace("}", "}}"))  # not a template
    assert result["rc"] == 0, result
    assert result["out"] == kernel.stdout, result


PY_OPENAT2 = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
class How(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
def openat2(dirfd, path, resolve, flags=os.O_RDONLY):
    how = How(flags | os.O_CLOEXEC, 0o644 if flags & os.O_CREAT else 0, resolve)
    fd = libc.syscall(437, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        return errno.errorcode[ctypes.get_errno()]
    os.close(fd)
    return "ok"
box = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
BENEATH, NO_SYMLINKS, NO_MAGICLINKS = 0x08, 0x04, 0x02
W = os.O_WRONLY | os.O_CREAT
for name, resolve, flags in [
    ("inside", BENEATH, 0), ("../outside", BENEATH, 0), ("link-out", BENEATH, 0),
    ("/etc/hostname", BENEATH, 0), ("link-in", NO_SYMLINKS, 0), ("inside", NO_SYMLINKS, 0),
    ("/proc/self/fd/0", NO_MAGICLINKS, 0), ("new", BENEATH, W), ("../new-out", BENEATH, W),
    ("sub/../inside", BENEATH, 0),
]:
    print(name, resolve, openat2(box, name, resolve, flags))
"""


def test_openat2_resolve_flags_confine_as_the_kernel_does(runner: Runner) -> None:
    """A program that confines names to a directory with openat2's resolve flags (Go's
    os.Root, Rust's cap-std) gets the kernel's EXDEV/ELOOP from the monitor too, which
    opens the file itself — never a file outside the directory."""
    base = runner.kit.base / f"openat2-{runner.mode}"
    box = base / "box"
    (box / "sub").mkdir(parents=True)
    (box / "inside").write_text("in\n")
    (base / "outside").write_text("out\n")
    (box / "link-out").symlink_to("../outside")
    (box / "link-in").symlink_to("inside")
    argv = ["python3", "-c", PY_OPENAT2, str(box)]
    kernel = subprocess.run(argv, capture_output=True, text=True, check=True)
    (box / "new").unlink()
    assert "EXDEV" in kernel.stdout
    assert "ELOOP" in kernel.stdout
    result = runner.run(f"python3 -c {shlex.quote(PY_OPENAT2)} {box}")
    assert result["out"] == kernel.stdout, result
    assert (box / "new").exists()
    assert not (base / "new-out").exists()


def _a_block_device() -> str | None:
    """A block device this (ungoverned) test process may open for reading."""
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                with open(path, "rb"):
                    return path
        except OSError:
            continue
    return None


def test_a_raw_disk_is_not_read_past_the_file_rules(runner: Runner) -> None:
    """The built-in policy lets reads through by default; a raw disk would hand over
    every file on it, ~/.ssh included. Refused by its kind (a block device), whatever
    its name, with the rule named; a console too."""
    device = _a_block_device()
    if device is None:
        pytest.skip("no block device root may open on this machine")
    result = runner.run(f"head -c 512 {device} | wc -c; : < /dev/tty1; echo done")
    assert result["out"].split() == ["0", "done"], result
    assert f"(rule {filekinds.DEVICE_RULE})" in result["err"], result["err"]
    assert f"cannot open '{device}' for reading: Permission denied" in result["err"]
    denied = _file_denials(result, filekinds.DEVICE_RULE)
    assert any(device in e["argv"][0] for e in denied), denied
    assert any("/dev/tty1" in e["argv"][0] for e in denied), denied


def test_a_raw_disk_a_rule_names_is_read(kit: Kit) -> None:
    """The control: the refusal is the kind-of-file default, not a blanket ban."""
    device = _a_block_device()
    if device is None:
        pytest.skip("no block device root may open on this machine")
    disk = FileRule("the-disk", (device,), ("read", "open"), Decision.ALLOW)
    policy = replace(kit.policy, file_rules=(disk, *kit.policy.file_rules))
    named = Kit(kit.base, kit.home, kit.work, policy)
    result = Runner(named, "notify").run(f"head -c 512 {device} | wc -c")
    assert (result["rc"], result["err"]) == (0, ""), result  # opened (a loop device may be empty)


@pytest.mark.parametrize("mode", ["notify", "notify+narrow"])
def test_reads_landlock_narrows_stay_narrow_when_the_supervisor_opens(kit: Kit, mode: str) -> None:
    """/var is outside the narrowed reads: the supervisor, outside the domain, must not
    open it for the tree (it asks Landlock's rules first); without narrowing it opens."""
    result = Runner(kit, mode).run("head -c 8 /var/lib/dpkg/status")
    if mode == "notify":
        assert (result["rc"], result["out"]) == (0, "Package:"), result
    else:
        assert result["rc"] != 0
        assert result["out"] == ""
        assert "Permission denied" in result["err"], result["err"]


@pytest.mark.parametrize("mode", ["notify", "notify+narrow"])
def test_a_directory_is_listed_by_its_own_read_rule(kit: Kit, mode: str) -> None:
    """/usr is readable by a rule on /usr itself, / by none once reads are narrowed:
    listing a directory asks the rules on it, not only those above it."""
    result = Runner(kit, mode).run("ls /usr | grep -cx bin; ls / >/dev/null; echo root=$?")
    assert result["out"].startswith("1\n"), result
    assert result["out"].endswith("root=0\n" if mode == "notify" else "root=2\n"), result


def test_audit_only_mode_records_instead_of_refusing(kit: Kit) -> None:
    runner = Runner(kit, "notify", filemon.MonitorConfig(enforce=False))
    result = runner.run("cat {h}/.aws/credentials")
    assert (result["rc"], result["out"]) == (0, f"{SECRET} aws\n")
    audited = [e for e in result["events"] if e["layer"] == "file" and e["rule"] == CREDS]
    assert [e["decision"] for e in audited] == ["audit"]
    assert audited[0]["message"].startswith("not enforced: ")


# --------------------------------------------------------------------------- deletes


def _soft_policy(kit: Kit) -> Policy:
    rule = FileRule(
        "soft-delete-workspace", (f"{kit.work}/**",), ("delete", "rmdir"), Decision.SOFT_DELETE
    )
    return replace(kit.policy, file_rules=(rule, *kit.policy.file_rules))


# rm run with CAP_SYS_BOOT out of its bounding set (prctl PR_CAPBSET_DROP), so its
# credentials differ from the supervisor's (as under `capabilities.allow`); its deletes
# must be soft all the same.
RM_DROPPED = (
    "python3 -c 'import ctypes, os, sys; ctypes.CDLL(None).prctl(24, 22); "
    'os.execvp("rm", ["rm", *sys.argv[1:]])\' -rf'
)


@pytest.mark.parametrize("creds", ["same", "dropped"])
@pytest.mark.parametrize("mode", ["notify", "ptrace"])
def test_soft_deletes_go_to_the_trash_and_come_back(kit: Kit, mode: str, creds: str) -> None:
    trash_root = kit.base / f"trash-{mode}-{creds}"
    soft = Kit(kit.base, kit.home, kit.work, _soft_policy(kit))
    runner = Runner(soft, mode, trash=str(trash_root))
    tree = kit.work / f"gone-{mode}-{creds}"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"alpha\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)))
    (tree / "sub" / "b.bin").chmod(0o640)
    rm = "rm -rf" if creds == "same" else RM_DROPPED
    result = runner.run(f"{rm} {tree} && test ! -e {tree} && echo removed")
    assert (result["rc"], result["out"]) == (0, "removed\n"), result
    assert not tree.exists()
    store = trash.Trash(trash_root)
    entries = store.list()
    assert sorted(e.original for e in entries) == sorted(
        [str(tree), str(tree / "sub"), str(tree / "a.txt"), str(tree / "sub" / "b.bin")]
    )
    assert all(e.command == f"rm -rf {tree}" for e in entries)
    soft_events = [e for e in result["events"] if e["decision"] == "soft_delete"]
    assert len(soft_events) == 4
    top = next(e for e in entries if e.original == str(tree))
    store.restore(top.token)  # the directory brings back what its batch deleted below it
    assert (tree / "a.txt").read_bytes() == b"alpha\n"
    assert (tree / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert (tree / "sub" / "b.bin").stat().st_mode & 0o777 == 0o640


# unlink(2) of a path a second thread flips between a file anyone may delete (/tmp) and a
# workspace file a rule keeps: the kept file is never deleted.
PY_UNLINK_RACE = (
    """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
decoy, victim = sys.argv[1], sys.argv[2]
"""
    + FLIPPER.format(a="decoy", b="victim")
    + """for _ in range(1500):
    if not os.path.exists(decoy):
        open(decoy, "w").close()
    libc.unlink(buf)
    if not os.path.exists(victim):
        break
os.path.exists(decoy) and os.unlink(decoy)
print("victim", "there" if os.path.exists(victim) else "gone")
"""
)


def _unlink_race(kit: Kit, mode: str, cfg: filemon.MonitorConfig, n: int) -> dict[str, Any]:
    keep = FileRule("keep-victims", (f"{kit.work}/victim-*",), ("delete",), Decision.DENY)
    kept = Kit(
        kit.base, kit.home, kit.work, replace(kit.policy, file_rules=(keep, *kit.policy.file_rules))
    )
    victim = kit.work / f"victim-{mode}-{n}"
    victim.write_text("keep me\n")
    decoy = Path(f"/tmp/agentsh-decoy-{os.getpid()}-{n}")
    script = f"python3 -c {shlex.quote(PY_UNLINK_RACE)} {decoy} {victim} 2>/dev/null"
    result = Runner(kept, mode, cfg).run(script.replace("{", "{{").replace("}", "}}"))
    assert result["rc"] == 0, result
    return result


@pytest.mark.parametrize("mode", ["notify", "ptrace"])
def test_a_racing_thread_cannot_delete_what_a_rule_keeps(kit: Kit, mode: str) -> None:
    """1,500 unlinks each, twice: the check refuses the kept file whenever it sees it,
    and what the check allowed is what is removed."""
    for n in range(2):
        result = _unlink_race(kit, mode, DEFAULTS, n)
        assert result["out"] == "victim there\n", f"run {n}: deleted"
        assert _file_denials(result, "keep-victims")


def test_the_same_delete_race_wins_when_the_kernel_deletes_the_path(kit: Kit) -> None:
    """The control: with ``openat_emulation: false`` allowed unlinks are left to the
    kernel, which looks the path up again — and deletes the kept file."""
    lost = False
    for n in range(10, 15):
        lost = (
            _unlink_race(kit, "notify", filemon.MonitorConfig(emulate_opens=False), n)["out"]
            == "victim gone\n"
        )
        if lost:
            break
    assert lost


# rename(2) or link(2) of a path a second thread flips between a harmless file and a .env
# file (unreadable by policy; moving or linking it out is refused) to a plain name: what
# lands at the plain name must never be the .env.
PY_MOVE_RACE = (
    """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
harmless, key, plain, call = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
"""
    + FLIPPER.format(a="harmless", b="key")
    + """leaked = 0
for _ in range(1500):
    if not os.path.exists(harmless):
        open(harmless, "w").close()
    if getattr(libc, call)(buf, plain.encode()) == 0:
        with open(plain) as f:
            leaked += "SECRET" in f.read()
        os.unlink(plain)
    if not os.path.exists(key):
        break
print(f"leaked={leaked}")
"""
)


def _move_race(
    kit: Kit, mode: str, cfg: filemon.MonitorConfig, n: int, call: str
) -> dict[str, Any]:
    d = kit.work / f"{call}s-{mode}-{n}"
    d.mkdir()
    (d / ".env").write_text(f"TOKEN={SECRET}\n")
    args = f"{d}/harmless {d}/.env {kit.work}/plain-{call}-{mode}-{n} {call}"
    script = f"python3 -c {shlex.quote(PY_MOVE_RACE)} {args} 2>/dev/null"
    return Runner(kit, mode, cfg).run(script.replace("{", "{{").replace("}", "}}"))


@pytest.mark.parametrize("call", ["rename", "link"])
@pytest.mark.parametrize("mode", ["notify", "ptrace", "notify+landlock"])
def test_a_racing_thread_cannot_move_or_link_a_protected_file_out(
    kit: Kit, mode: str, call: str
) -> None:
    for n in range(2):
        result = _move_race(kit, mode, DEFAULTS, n, call)
        assert (result["rc"], result["out"]) == (0, "leaked=0\n"), result
        assert _file_denials(result, ENV)


@pytest.mark.parametrize("call", ["rename", "link"])
def test_the_same_race_wins_when_the_kernel_moves_the_path(kit: Kit, call: str) -> None:
    """The control: with ``openat_emulation: false`` these calls are left to the kernel."""
    won = False
    for n in range(10, 15):
        out = _move_race(kit, "notify", filemon.MonitorConfig(emulate_opens=False), n, call)
        won = out["out"] not in ("leaked=0\n", "")
        if won:
            break
    assert won


# truncate, chmod, mkdir and symlink of a path a second thread flips between a harmless
# name and one under the workspace's .env rule (no operation allowed): the protected file
# keeps its content and mode, and no protected name is ever made.
PY_META_RACE = (
    """
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
harmless, key, call = sys.argv[1], sys.argv[2], sys.argv[3]
"""
    + FLIPPER.format(a="harmless", b="key")
    + """libc.truncate.argtypes = (ctypes.c_char_p, ctypes.c_long)
do = {"truncate": lambda: libc.truncate(buf, 0), "chmod": lambda: libc.chmod(buf, 0o777),
      "mkdir": lambda: libc.mkdir(buf, 0o755), "symlink": lambda: libc.symlink(b"x", buf)}[call]
made = call in ("mkdir", "symlink")
for _ in range(1500):
    if not made and not os.path.exists(harmless):
        open(harmless, "w").close()
    do()
    if made and os.path.lexists(key):
        break
    if made and os.path.isdir(harmless) and not os.path.islink(harmless):
        os.rmdir(harmless)
    elif made and os.path.lexists(harmless):
        os.unlink(harmless)
if made:
    kept = not os.path.lexists(key)
else:
    st = os.stat(key)
    kept = st.st_size > 0 and st.st_mode & 0o777 == 0o600
print("kept" if kept else "changed")
"""
)
META = {  # call: (the protected name, relative to a fresh directory, exists before)
    "truncate": (".env", True),
    "chmod": (".env", True),
    "mkdir": (".env.d", False),
    "symlink": (".env.link", False),
}


def _meta_race(kit: Kit, mode: str, cfg: filemon.MonitorConfig, call: str, n: int) -> str:
    d = kit.work / f"meta-{call}-{mode}-{n}"
    d.mkdir()
    key, exists = META[call]
    if exists:
        (d / key).write_text(f"TOKEN={SECRET}\n")
        (d / key).chmod(0o600)
    args = f"{d}/harmless {d}/{key} {call}"
    script = f"python3 -c {shlex.quote(PY_META_RACE)} {args} 2>/dev/null"
    result = Runner(kit, mode, cfg).run(script.replace("{", "{{").replace("}", "}}"))
    assert result["rc"] == 0, result
    return result["out"]


@pytest.mark.parametrize("call", sorted(META))
@pytest.mark.parametrize("mode", ["notify", "ptrace"])
def test_a_racing_thread_cannot_change_or_make_a_protected_name(
    kit: Kit, mode: str, call: str
) -> None:
    for n in range(2):
        assert _meta_race(kit, mode, DEFAULTS, call, n) == "kept\n", f"run {n}"


@pytest.mark.parametrize("call", sorted(META))
def test_the_same_race_wins_when_the_kernel_changes_the_path(kit: Kit, call: str) -> None:
    """The control: with ``openat_emulation: false`` these calls are left to the kernel."""
    off = filemon.MonitorConfig(emulate_opens=False)
    assert any(_meta_race(kit, "notify", off, call, n) == "changed\n" for n in range(10, 15))


def test_deletes_are_refused_where_soft_delete_is_unavailable(kit: Kit) -> None:
    runner = Runner(kit, "notify", refuse_deletes=(str(kit.work),))
    (kit.work / "keep.txt").write_text("kept\n")
    script = "rm {w}/keep.txt; echo x > {w}/o.txt; mv {w}/o.txt {w}/keep.txt; cat {w}/keep.txt"
    result = runner.run(script)
    assert result["out"] == "kept\n"
    moved = runner.run("mv {w}/o.txt {w}/p.txt && cat {w}/p.txt")  # a move deletes nothing
    assert (moved["rc"], moved["out"]) == (0, "x\n")
    assert _file_denials(result, "soft-delete-unavailable"), result["events"]
    assert "(rule soft-delete-unavailable)" in result["err"]
    ok = runner.run("echo new > {w}/fresh.txt && cat {w}/fresh.txt")  # creating still works
    assert (ok["rc"], ok["out"]) == (0, "new\n")


def test_deletes_are_audited_where_the_config_accepts_no_soft_delete(kit: Kit) -> None:
    # fuseconf's allow_audited: soft delete asked for, no FUSE, the config accepts it.
    runner = Runner(kit, "notify", audit_deletes=(str(kit.work),))
    (kit.work / "gone.txt").write_text("x\n")
    result = runner.run("rm {w}/gone.txt && echo removed")
    assert (result["rc"], result["out"]) == (0, "removed\n")
    assert not (kit.work / "gone.txt").exists()
    audited = [
        e
        for e in result["events"]
        if e["decision"] == "audit" and e["rule"] == "soft-delete-unavailable"
    ]
    assert audited, result["events"]
    assert "gone.txt" in " ".join(audited[0]["argv"]) + audited[0]["message"]
    assert "blocked" not in result["err"]


def test_a_write_landlock_refuses_is_refused_first_with_its_rule(kit: Kit) -> None:
    # A policy that leaves the monitor nothing to enforce inside Landlock's writable trees:
    # Landlock alone would refuse the write below silently; the monitor refuses it first,
    # names the rule on stderr and records it. The target is in this test's Python prefix
    # (read-only under Landlock whatever happens; never /usr or /etc of this machine).
    target = Path(sys.prefix) / f"agentsh-monitor-probe-{os.getpid()}"
    minimal = Policy(
        1,
        "minimal",
        "<test>",
        file_rules=(
            FileRule("no-prefix", (f"{sys.prefix}/**",), ("write", "create"), Decision.DENY),
            FileRule("tmp", ("/tmp/**",), ("*",), Decision.ALLOW),
            FileRule("dev", ("/dev/**",), ("*",), Decision.ALLOW),
        ),
    )
    runner = Runner(Kit(kit.base, kit.home, kit.work, minimal), "notify+landlock")
    # Builtins only: this policy has no command rules, so every exec would be refused.
    script = f'echo x > {target}; echo rc=$?; echo ok > {{w}}/fine.txt && echo "$(<{{w}}/fine.txt)"'
    try:
        result = runner.run(script)
    finally:
        if target.exists():
            target.unlink()
            pytest.fail(f"{target} was written")
    assert "rc=1" in result["out"]
    assert "ok" in result["out"], result["err"]
    assert "(rule no-prefix)" in result["err"]
    assert _file_denials(result, "no-prefix"), result["events"]
