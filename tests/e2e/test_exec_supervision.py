"""Exec supervision end to end: a governed tree (``govern.start`` in a forked child, then
the host's real ``/usr/bin/bash -c …`` — nothing is installed, so no overlay root is
needed) where every way of starting a refused program ends with that program not run, a
non-zero exit status, and a deny event naming the rule.

The refused programs are fakes (``sudo``, ``su``, ``ssh``, ``nc``, ``socat`` and a
busybox-style ``multi``): one small C program that, when it runs, creates a marker named
after the file it was started from and after its ``argv[0]``. The audit sink is an
in-memory list fed over a unix socket by the supervisor process; the socket closing is
how a test knows the supervisor exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib.resources
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentsh.enforce import audit, govern, loader, record, seccomp
from agentsh.shell import supervise

pytestmark = pytest.mark.e2e

BASH = "/usr/bin/bash"
FAKES = ("sudo", "su", "ssh", "nc", "socat", "multi")

FAKE_C = r"""
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void mark(const char *what) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", MARKERS, what);
    close(open(path, O_CREAT | O_WRONLY, 0644));
}
int main(int argc, char **argv) {
    char exe[4096] = {0}, name[4200];
    (void)argc;
    if (readlink("/proc/self/exe", exe, sizeof exe - 1) > 0) mark(basename(exe));
    snprintf(name, sizeof name, "argv0-%s", basename(argv[0]));
    mark(name);
    printf("fake %s ran\n", exe);
    return 0;
}
"""

RACE_C = r"""
/* One thread flips the exec path between an allowed and a refused program while the
   main thread execs it: the time-of-check/time-of-use race of issue 3 item 2. */
#include <pthread.h>
#include <string.h>
#include <unistd.h>
static char path[512];
static const char *good, *bad;
static void *flip(void *arg) {
    (void)arg;
    for (;;) { strcpy(path, bad); strcpy(path, good); }
    return NULL;
}
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    good = argv[1]; bad = argv[2];
    strcpy(path, good);
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    for (volatile int i = 0; i < 20000; i++) ;
    char *args[] = {"true", NULL};
    execv(path, args);
    return 1;
}
"""


@dataclass(frozen=True)
class Kit:
    """Things built once per session: fake programs, the racer, the policy."""

    fakebin: Path
    markers: Path
    racer: Path
    policy_path: Path


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the fake programs (make setup installs it)")
    support = seccomp.probe()
    if not support.usable:
        pytest.skip(f"exec supervision unavailable on this kernel: {support.reason}")
    base = tmp_path_factory.mktemp("kit")
    fakebin, markers = base / "bin", base / "markers"
    fakebin.mkdir()
    markers.mkdir()
    src = base / "fake.c"
    src.write_text(FAKE_C)
    subprocess.run(
        ["gcc", "-O1", f'-DMARKERS="{markers}"', "-o", str(fakebin / "sudo"), str(src)],
        check=True,
    )
    for name in FAKES[1:]:
        shutil.copy2(fakebin / "sudo", fakebin / name)
    race_src = base / "race.c"
    race_src.write_text(RACE_C)
    racer = base / "race"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(racer), str(race_src)], check=True)
    policy = Path(str(importlib.resources.files("agentsh.policies").joinpath("default.yaml")))
    return Kit(fakebin, markers, racer, policy)


@dataclass
class Run:
    status: int
    out: str
    err: str
    events: list[audit.Event]
    supervisor_exited: bool
    ran: list[str] = field(default_factory=list)

    def denials(self, rule: str | None = None) -> list[audit.Event]:
        return [
            e
            for e in self.events
            if e.decision == "deny" and e.rule is not None and (rule is None or e.rule == rule)
        ]


class _Events:
    """The test's end of the audit sink: a unix socket the supervisor connects to."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="agentsh-ev-")
        self.path = os.path.join(self.dir, "s")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        os.chmod(self.dir, 0o755)  # noqa: S103 — a supervisor running as another user connects
        os.chmod(self.path, 0o777)  # noqa: S103
        self.server.listen(1)
        self.events: list[audit.Event] = []
        self.peer: int | None = None
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        conn, _ = self.server.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.peer = struct.unpack("3i", creds)[0]
        self.connected.set()
        with conn.makefile("rb") as f:
            for line in f:
                fields = json.loads(line)
                fields["argv"] = tuple(fields["argv"])
                self.events.append(audit.Event(**fields))

    def sink_factory(self) -> Callable[[], Callable[[audit.Event], None]]:
        path = self.path

        def factory() -> Callable[[audit.Event], None]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)

            def sink(event: audit.Event) -> None:
                sock.sendall(json.dumps(record.asdict(event)).encode() + b"\n")

            return sink

        return factory

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Governed:
    """Runs ``bash -c SCRIPT`` under exec supervision and reports what happened."""

    def __init__(self, kit: Kit, work: Path) -> None:
        self.kit, self.work = kit, work
        variables = {"HOME": str(work), "PROJECT_ROOT": str(work), "WORKSPACE": str(work)}
        variables |= {"TMPDIR": "/tmp", "USER": "root"}
        self.policy = loader.load(kit.policy_path, variables)

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.kit.fakebin}:/usr/bin:/bin",
            "FAKE": str(self.kit.fakebin),
            "HOME": str(self.work),
            "LC_ALL": "C",
        }

    def __call__(
        self,
        script: str,
        *,
        verify: bool = True,
        timeout: float = 60.0,
        before: Callable[[], None] | None = None,
        during: Callable[[_Events], None] | None = None,
    ) -> Run:
        for marker in self.kit.markers.iterdir():
            marker.unlink()
        events = _Events()
        out, err = self.work / ".out", self.work / ".err"
        pid = os.fork()
        if pid == 0:  # the governed root: becomes bash
            self._become_bash(script, (out, err), verify=verify, before=before, events=events)
        try:
            if during is not None:
                during(events)
            status = _wait(pid, timeout)
            if events.connected.wait(5):
                events.thread.join(timeout)
            exited = events.connected.is_set() and not events.thread.is_alive()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            events.close()
        ran = sorted(p.name for p in self.kit.markers.iterdir())
        return Run(status, out.read_text(), err.read_text(), events.events, exited, ran)

    def _become_bash(
        self,
        script: str,
        outputs: tuple[Path, Path],
        *,
        verify: bool,
        before: Callable[[], None] | None,
        events: _Events,
    ) -> None:
        """In the forked child: set up fds, start supervision, exec bash. Never returns."""
        try:
            os.chdir(self.work)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in zip((1, 2), outputs, strict=True):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            if before is not None:
                before()
            policy = self.policy
            govern.start(
                lambda: supervise.make_checker(policy),
                events.sink_factory(),
                first_exec=BASH,
                session="e2e",
                verify=verify,
            )
            os.execve(BASH, ["bash", "-c", script], self.env())
        except BaseException:  # noqa: BLE001 — report, then leave the forked child
            os.write(2, traceback.format_exc().encode())
        finally:
            os._exit(99)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"governed run did not finish in {timeout}s")


@pytest.fixture
def gov(kit: Kit, tmp_path: Path) -> Governed:
    return Governed(kit, tmp_path)


def _blocked(run: Run, rule: str | None = None) -> None:
    """The refused program never ran, the script failed, and a deny event names a rule."""
    assert run.ran == [], f"ran: {run.ran}\nout: {run.out}\nerr: {run.err}"
    assert run.status != 0, f"exit status 0\nout: {run.out}\nerr: {run.err}"
    assert run.denials(rule), f"no deny event{f' for {rule}' if rule else ''}: {run.events}"
    assert run.supervisor_exited


# --------------------------------------------------------------------------- escapes

NESTED = "sudo id"
for _ in range(5):
    NESTED = f"bash -c {json.dumps(NESTED)}"

ISSUE_ESCAPES = [
    ("env", "env sudo id"),
    ("xargs", "echo id | xargs sudo"),
    ("find-exec", "find / -maxdepth 0 -exec sudo id {} +"),
    ("shebang-script", "printf '#!/bin/sh\\nsudo id\\n' > s.sh && chmod +x s.sh && ./s.sh"),
    ("python-os-system", "python3 -c \"import os,sys; sys.exit(os.system('sudo id') != 0)\""),
    ("perl-exec", 'perl -e \'exec "sudo", "id" or exit 1\''),
    ("awk-system", "awk 'BEGIN { exit system(\"sudo id\") }'"),
    ("full-path", '"$FAKE/sudo" id'),
    ("bash-c-five-deep", NESTED),
]

PY_EXECVEAT = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "d = os.open(os.environ['FAKE'], os.O_PATH); "
    "argv = (ctypes.c_char_p * 2)(b'x', None); "
    "libc.syscall(322, d, b'sudo', argv, None, 0); sys.exit(ctypes.get_errno())"
)
PY_CTYPES_EXECVE = (
    "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
    "argv = (ctypes.c_char_p * 2)(b'sudo', None); "
    "libc.execve(os.environ['FAKE'].encode() + b'/sudo', argv, None); "
    "sys.exit(ctypes.get_errno())"
)

LD_SO = "/lib64/ld-linux-x86-64.so.2"

OWN_ESCAPES = [
    ("plain", "sudo id"),
    ("command", "command sudo id"),
    ("exec-builtin", "exec sudo id"),
    ("nice", "nice -n 5 sudo id"),
    ("nohup", "nohup sudo id"),
    ("timeout", "timeout 5 sudo id"),
    ("setsid", "setsid -w sudo id"),
    ("stdbuf", "stdbuf -o0 sudo id"),
    ("time-keyword", "time sudo id"),
    ("xargs-replace", "xargs -I{} sudo {} <<< id"),
    ("find-execdir", "find . -maxdepth 0 -execdir sudo id {} +"),
    ("find-exec-sh", "find . -maxdepth 0 -exec sh -c 'sudo id' {} +"),
    ("sh-c", "sh -c 'sudo id'"),
    ("dash-c", "dash -c 'sudo id'"),
    ("python-subprocess", "python3 -c \"import subprocess; subprocess.call(['sudo', 'id'])\""),
    ("python-execv", "python3 -c \"import os; os.execv(os.environ['FAKE'] + '/sudo', ['x'])\""),
    ("python-execvp", "python3 -c \"import os; os.execvp('sudo', ['sudo', 'id'])\""),
    ("python-posix-spawn", "python3 -c \"import os; os.posix_spawnp('sudo', ['sudo'], {})\""),
    ("python-ctypes-execve", f'python3 -c "{PY_CTYPES_EXECVE}"'),
    ("python-execveat-dirfd", f'python3 -c "{PY_EXECVEAT}"'),
    (
        "python-fexecve",
        "python3 -c \"import os; fd = os.open(os.environ['FAKE'] + '/sudo', os.O_RDONLY); "
        "os.execve(fd, ['sudo'], {})\"",
    ),
    ("perl-system", 'perl -e \'system("sudo", "id") == 0 or exit 1\''),
    ("perl-exec-shell", "perl -e 'exec \"sudo id\"; exit 1'"),
    ("perl-exec-argv0-lie", 'perl -e \'exec {"$ENV{FAKE}/sudo"} "ls"; exit 1\''),
    ("awk-getline", 'awk \'BEGIN { "sudo id" | getline x; exit (x == "") }\''),
    ("symlink", 'ln -s "$FAKE/sudo" harmless && ./harmless id'),
    ("symlink-chain", 'ln -s "$FAKE/sudo" a && ln -s a b && ln -s "$PWD/b" c && ./c id'),
    ("symlink-proc-root", 'ln -s "/proc/self/root$FAKE/sudo" l && ./l'),
    ("proc-self-root", '"/proc/self/root$FAKE/sudo" id'),
    ("proc-self-fd", 'exec 3<"$FAKE/sudo"; /proc/self/fd/3 id'),
    ("dev-fd", 'exec 4<"$FAKE/sudo"; /dev/fd/4 id'),
    ("exec-a", '(exec -a ls "$FAKE/sudo" id)'),
    ("busybox-argv0", '(exec -a sudo "$FAKE/multi")'),
    ("busybox-symlink", 'ln -s "$FAKE/multi" sudo && ./sudo'),
    ("relative", 'cd "$FAKE" && ./sudo id'),
    ("dotdot", 'cd /usr && "..$FAKE/../$(basename "$FAKE")/sudo" id'),
    ("path-dot", 'cd "$FAKE" && PATH=. sudo id'),
    ("printf-name", "$(printf sudo) id"),
    ("variable-name", "x=sudo; $x id"),
    ("eval", "eval 'sudo id'"),
    ("source-procsub", "source <(echo sudo id)"),
    ("quoted-1", "s'u'do id"),
    ("quoted-2", '"su"do id'),
    ("ansi-c", "$'\\x73udo' id"),
    ("heredoc-sh", "sh <<'EOF'\nsudo id\nEOF"),
    ("herestring-bash", "bash -s <<< 'sudo id'"),
    ("pipe-into-bash", "echo 'sudo id' | bash"),
    ("bash-script-file", "echo 'sudo id' > s && bash ./s"),
    ("dot-source", "echo 'sudo id' > s && . ./s"),
    ("function", "f() { sudo id; }; f"),
    ("alias", "shopt -s expand_aliases\nalias x='sudo id'\nx"),
    ("trap-exit", "trap 'sudo id; exit $?' EXIT"),
    ("coproc", "coproc sudo id; wait $!"),
    ("make", "printf 'all:\\n\\tsudo id\\n' > Makefile && make"),
    ("git-alias", "git -c alias.x='!sudo id' x"),
    ("env-split", "env -S 'sudo id'"),
    ("env-clean", 'env -i PATH="$FAKE" sudo id'),
    ("flock", "flock ./lock sudo id"),
    ("script", "script -qec 'sudo id' /dev/null"),
    ("xargs-sh", "xargs sh -c 'sudo \"$@\"' _ <<< id"),
    (
        "double-forked-daemon",
        "setsid -f sh -c 'sudo id; echo $? > rc'; "
        "for i in $(seq 100); do [ -s rc ] && break; sleep 0.05; done; exit $(cat rc)",
    ),
    ("nohup-daemon", "nohup sh -c 'sudo id' >/dev/null 2>&1 & wait $!"),
    (
        "subshell-daemon",
        "( ( sudo id; echo $? > rc ) & ); "
        "for i in $(seq 100); do [ -s rc ] && break; sleep 0.05; done; exit $(cat rc)",
    ),
    ("su", "su -c id"),
    ("ssh", "ssh host id"),
    ("nc", "nc -l 9999"),
    ("socat", "socat - TCP:127.0.0.1:1"),
    ("pty-spawn", "python3 -c \"import pty, sys; sys.exit(pty.spawn(['sudo', 'id']) != 0)\""),
    # The dynamic loader runs its operand in its own process: no exec of sudo follows.
    ("ld-so", f'{LD_SO} "$FAKE/sudo" id'),
    ("ld-so-options", f'{LD_SO} --inhibit-cache --argv0 ls -- "$FAKE/sudo" id'),
    ("ld-so-symlink", f'ln -s {LD_SO} ./helper && ./helper "$FAKE/sudo" id'),
    ("ld-so-renamed-copy", f'cp {LD_SO} ./helper && ./helper "$FAKE/sudo" id'),
    (
        "ld-so-python-execv",
        f"python3 -c \"import os; os.execv('{LD_SO}', ['x', os.environ['FAKE'] + '/sudo'])\"",
    ),
]


def test_at_least_forty_escapes_of_our_own() -> None:
    assert len(OWN_ESCAPES) >= 40
    assert len({name for name, _ in ISSUE_ESCAPES + OWN_ESCAPES}) == len(
        ISSUE_ESCAPES + OWN_ESCAPES
    )


@pytest.mark.parametrize(("name", "script"), ISSUE_ESCAPES + OWN_ESCAPES)
def test_escape_is_blocked(gov: Governed, name: str, script: str) -> None:
    run = gov(script)
    _blocked(run)


def test_the_refusal_is_explained_on_the_process_stderr(gov: Governed) -> None:
    run = gov("env sudo id")
    _blocked(run, "block-privilege-escalation")
    line = next(ln for ln in run.err.splitlines() if ln.startswith("agentsh:"))
    assert line.startswith(
        "agentsh: blocked by policy: env sudo id (rule block-privilege-escalation): "
    )
    assert "changes privileges" in line
    event = run.denials("block-privilege-escalation")[0]
    assert event.argv == ("env", "sudo", "id")
    assert event.layer == "exec"


def test_fakes_do_run_outside_supervision(kit: Kit, tmp_path: Path) -> None:
    """The control: the same fake is a working program when nothing governs it."""
    for marker in kit.markers.iterdir():
        marker.unlink()
    subprocess.run([BASH, "-c", f"{kit.fakebin}/sudo id"], check=True, capture_output=True)
    assert sorted(p.name for p in kit.markers.iterdir()) == ["argv0-sudo", "sudo"]


# --------------------------------------------------------------------------- allowed work


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("git --version", "git version"),
        ("python3 -c 'print(6 * 7)'", "42"),
        ("printf 'b\\na\\nc\\na\\n' | sort | uniq | tr a-z A-Z | head -2", "A\nB"),
        ("printf 'all:\\n\\t@echo built\\n' > Makefile && make", "built"),
        ("python3 -m pip --version", "pip "),
        ("for i in 1 2 3; do /bin/echo $i; done | wc -l", "3"),
        ("env FOO=1 sh -c 'echo $FOO' && xargs echo <<< ok", "1\nok"),
        ("sleep 5 & kill $!; wait $!; echo status=$?", "status=143"),
        ("cat <(echo from-procsub)", "from-procsub"),
        # an allowed program through a descriptor (resolved in the tracee, not the supervisor)
        ("exec 7</usr/bin/echo; /dev/fd/7 via-dev-fd", "via-dev-fd"),
        ("exec 8</usr/bin/echo; /proc/self/fd/8 via-proc-fd", "via-proc-fd"),
        # the loader runs an allowed program; ldd (the loader with --verify, then tracing)
        (f"{LD_SO} /usr/bin/echo via-loader", "via-loader"),
        ("ldd /usr/bin/echo", "libc.so.6"),
    ],
)
def test_allowed_work_still_works(gov: Governed, script: str, expected: str) -> None:
    run = gov(script)
    assert run.status == 0, run.err
    assert expected in run.out
    assert run.ran == []
    assert not run.denials()
    assert any(e.decision == "allow" and e.layer == "exec" for e in run.events)


def test_nested_governed_shells_reuse_the_outer_supervisor(gov: Governed) -> None:
    probe = (
        "import sys; from agentsh.enforce import govern as g; "
        "sys.exit(0 if g.is_governed() and not g.start(lambda: None, lambda: None, "
        "first_exec='/x') else 3)"
    )
    run = gov(f'{sys.executable} -c "{probe}"')  # the venv's python has agentsh
    assert run.status == 0, run.err
    assert not govern.is_governed()  # the test process itself is not


# --------------------------------------------------------------------------- lifecycle


def test_supervisor_exits_with_the_tree_and_holds_no_caller_fds(gov: Governed) -> None:
    # A background daemon keeps the tree (and the supervisor) alive for 2 s; stdout must
    # still reach EOF as soon as bash and the daemon's redirected output are done.
    start = time.monotonic()
    run = gov("setsid -f sleep 2 </dev/null >/dev/null 2>&1; echo done")
    assert run.status == 0
    assert run.out == "done\n"
    assert run.supervisor_exited
    assert time.monotonic() - start >= 2  # it waited for the daemon, then exited


def _feed_fifo(fifo: Path, text: str, timeout: float = 30.0) -> None:
    """Write to a FIFO once the governed script opened it; never block the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        os.write(fd, text.encode())
        os.close(fd)
        return


def test_supervisor_death_makes_later_execs_fail(gov: Governed, tmp_path: Path) -> None:
    fifo, ready = tmp_path / "go", tmp_path / "ready"
    os.mkfifo(fifo)

    def kill_supervisor(events: _Events) -> None:
        # bash has run (it wrote "ready" itself), so no thread waits for the supervisor
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert events.connected.wait(30)
        assert events.peer is not None
        os.kill(events.peer, signal.SIGKILL)
        time.sleep(0.2)
        _feed_fifo(fifo, "go\n")

    run = gov(f"echo > {ready}; read x < {fifo}; /bin/true; echo rc=$?", during=kill_supervisor)
    assert "rc=126" in run.out
    assert "Function not implemented" in run.err


# --------------------------------------------------------------------------- signals, syscalls


def _with_supervisor_pid(fifo: Path) -> Callable[[_Events], None]:
    def send(events: _Events) -> None:
        assert events.connected.wait(30)
        _feed_fifo(fifo, f"{events.peer}\n")

    return send


def test_kill_of_init_everything_and_the_outside_is_refused(gov: Governed) -> None:
    run = gov(
        "kill -9 1; a=$?; kill -CONT -1; b=$?; kill -CONT $PPID; c=$?; kill -CONT 0; d=$?; "
        'echo "$a $b $c $d"; [ "$a$b$c$d" = 1111 ]'
    )
    assert run.status == 0, run.err
    assert {e.rule for e in run.denials()} >= {
        "signal-init",
        "signal-everything",
        "signal-outside-tree",
    }
    assert len(run.denials()) == 4


def test_killing_the_supervisor_is_refused(gov: Governed, tmp_path: Path) -> None:
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    run = gov(f"read pid < {fifo}; kill -9 $pid; echo rc=$?", during=_with_supervisor_pid(fifo))
    assert "rc=1" in run.out
    assert run.denials("signal-supervisor")
    assert run.supervisor_exited  # alive until the end, then gone by itself


def test_tiocsti_injection_is_refused(gov: Governed) -> None:
    inject = (
        "import fcntl, os, pty, sys, termios; m, s = pty.openpty(); "
        "fcntl.ioctl(s, termios.TIOCSTI, b'x'); sys.exit(0 if os.read(m, 1) == b'x' else 5)"
    )
    control = subprocess.run(["python3", "-c", inject], check=False)
    assert control.returncode == 0  # the injection works ungoverned on this machine
    run = gov(f'python3 -c "{inject}"')
    assert run.status != 0
    assert "Operation not permitted" in run.err
    assert run.denials("deny-ioctl")


def test_mount_syscall_is_refused(gov: Governed, tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    mount = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"r = libc.mount(b'none', b'{target}', b'tmpfs', 0, None); "
        "sys.exit(ctypes.get_errno() if r else 0)"
    )
    try:
        run = gov(f'python3 -c "{mount}"')
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(target)], check=True, capture_output=True)
    assert run.status == errno.EPERM
    assert run.denials("deny-mount")


def test_ptrace_of_an_outside_process_is_refused(gov: Governed) -> None:
    run = gov("timeout 10 strace -p $PPID")
    assert run.status != 0
    assert run.denials("ptrace-outside-tree")


def test_reading_an_outside_processs_memory_is_refused(gov: Governed) -> None:
    """process_vm_readv of a process outside the tree (its parent here) is refused and
    audited; of the caller itself it works."""
    read = (
        "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True)\n"
        "class V(ctypes.Structure):\n"
        "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf, src = ctypes.create_string_buffer(8), ctypes.create_string_buffer(b'own-mem')\n"
        "for pid in (os.getpid(), os.getppid()):\n"
        "    local, remote = V(ctypes.addressof(buf), 8), V(ctypes.addressof(src), 8)\n"
        "    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)\n"
        "    print(n, ctypes.get_errno() if n < 0 else buf.value.decode())\n"
    )
    run = gov(f"python3 -c {shlex.quote(read)}")
    assert run.out.split() == ["8", "own-mem", "-1", str(errno.EPERM)], run.err
    assert run.denials("process_vm_readv-outside-tree")


def test_a_debugger_inside_cannot_exec_unverified(gov: Governed) -> None:
    run = gov("strace -f -o /dev/null /bin/true")
    assert run.status != 0
    assert run.denials("exec-unverifiable")
    without_check = gov("strace -f -o /dev/null /bin/true", verify=False)
    assert without_check.status == 0, without_check.err


def test_an_unreadable_argv_is_refused_not_guessed(gov: Governed) -> None:
    bad_argv = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        "libc.execve(b'/bin/true', ctypes.c_void_p(0x10), None); "
        "sys.exit(ctypes.get_errno())"
    )
    run = gov(f'python3 -c "{bad_argv}"')
    assert run.status == errno.EACCES  # the kernel alone would say EFAULT
    (event,) = run.denials("exec-unreadable")
    assert "unmapped" in event.message or "unreadable" in event.message


def test_the_tree_cannot_reach_into_the_supervisor(gov: Governed, tmp_path: Path) -> None:
    """Its memory (``/proc/PID/mem``, even as root: Landlock's ptrace rule) and its fds
    (pidfd_getfd: refused and audited by the supervisor)."""
    fifo = tmp_path / "pid"
    os.mkfifo(fifo)
    reach = (
        "import ctypes, errno, os, sys; pid = int(open(sys.argv[1]).read()); out = []\n"
        "try:\n    open(f'/proc/{pid}/mem', 'r+b'); out.append('mem-open')\n"
        "except PermissionError:\n    out.append('mem-refused')\n"
        "libc = ctypes.CDLL(None, use_errno=True); fd = os.pidfd_open(pid)\n"
        "r = libc.syscall(438, fd, 3, 0)\n"
        "out.append('fd-refused' if r < 0 and ctypes.get_errno() == errno.EPERM else 'fd-taken')\n"
        "print(' '.join(out))"
    )
    (tmp_path / "reach.py").write_text(reach)
    run = gov(f"python3 reach.py {fifo}", during=_with_supervisor_pid(fifo))
    assert run.out.split() == ["mem-refused", "fd-refused"], run.err
    assert run.denials("pidfd_getfd-supervisor")


def test_device_nodes_cannot_be_created(gov: Governed) -> None:
    """mknod of a raw disk would sidestep every layer; the fence refuses it (root too)."""
    script = (
        "python3 -c \"import os, stat; os.mknod('disk', 0o600 | stat.S_IFBLK, os.makedev(8, 0))\""
    )
    run = gov(script)
    assert run.status != 0
    assert "Permission denied" in run.err
    assert not (gov.work / "disk").exists()


# --------------------------------------------------------------------------- time of use


def test_racing_the_exec_path_never_runs_the_refused_program(gov: Governed, kit: Kit) -> None:
    """A second thread rewrites the path after the check (issue 3 item 2): the check at
    the exec boundary kills every exec whose image changed, before it runs."""
    loop = f'for i in $(seq 300); do "{kit.racer}" /bin/true "$FAKE/sudo"; done; exit 3'
    caught = 0
    for _ in range(4):
        run = gov(loop, timeout=180)
        assert run.ran == [], run.events[-5:]
        caught += len(run.denials("exec-changed"))
        if caught:
            break
    assert caught, "the race was never won at the kernel level: the test proved nothing"


def test_the_same_race_wins_without_the_exec_boundary_check(gov: Governed, kit: Kit) -> None:
    """The control for the test above: without ``verify`` the race does run sudo."""
    loop = f'for i in $(seq 300); do "{kit.racer}" /bin/true "$FAKE/sudo"; done 2>/dev/null'
    won = False
    for _ in range(4):
        won = "sudo" in gov(loop, verify=False, timeout=180).ran
        if won:
            break
    assert won


def test_racing_a_symlink_swap_never_runs_the_refused_program(gov: Governed) -> None:
    swap = textwrap.dedent(
        """\
        import os, sys, time
        end = time.time() + 4
        while time.time() < end:
            for target in ('/bin/true', os.environ['FAKE'] + '/sudo'):
                os.symlink(target, 'link.tmp')
                os.replace('link.tmp', 'link')
        """
    )
    script = (
        f'ln -s /bin/true link; python3 -c "{swap}" & '
        "for i in $(seq 400); do ./link; done 2>/dev/null; wait; exit 3"
    )
    run = gov(script, timeout=180)
    assert run.ran == []
    assert run.denials()


# --------------------------------------------------------------------------- copies


def test_a_copied_setuid_binary_gains_nothing(gov: Governed, tmp_path: Path) -> None:
    """A copy of a setuid program under another name passes name-based rules, but
    no_new_privs (set with the filter) makes its setuid bit inert."""
    where = Path(tempfile.mkdtemp(prefix="agentsh-suid-"))  # reachable by uid 65534
    where.chmod(0o755)
    idcopy = where / "x"
    shutil.copy2("/usr/bin/id", idcopy)
    os.chown(idcopy, 0, 0)
    idcopy.chmod(0o4755)

    def drop() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
        # Changing uid made us non-dumpable; a process started as that user (as the
        # frontend always is) is dumpable, so the supervisor may read its memory.
        ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE

    control = subprocess.run(
        [str(idcopy), "-u"], capture_output=True, text=True, check=True, preexec_fn=drop
    )
    assert control.stdout.strip() == "0"  # without no_new_privs the copy is root
    try:
        run = gov(f"{idcopy} -u", before=drop)
    finally:
        shutil.rmtree(where)
    assert run.status == 0, run.err
    assert run.out.strip() == "65534"


@pytest.fixture(autouse=True)
def _no_leftover_markers(kit: Kit) -> Iterator[None]:
    yield
    for marker in kit.markers.iterdir():
        marker.unlink()
