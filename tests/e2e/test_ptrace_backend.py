"""Issue 3 item 3: exec supervision by ptrace, end to end on the real kernel.

Everything runs inside an overlay root (/usr, /etc, /var are copies), where /usr/bin/sudo
is a fake: a small C program that only appends to a marker file. Each escape is run
ungoverned first (the marker must appear: the row really reaches sudo), then governed by
``ptrace.start_traced`` — and, as a conformance check that both backends behave alike,
by the notify backend's ``govern.start``. A governed row must leave no marker, exit
non-zero, and leave a deny event in the test's audit sink.

The audit sink lives in the supervisor process (double-forked, out of reach); it mirrors
every event to a file the test reads, and holds a "lifeline" socket to the test open for
as long as the supervisor lives: EOF on it proves the supervisor has exited.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentsh.enforce import audit, boundary, config, govern, loader, ptrace, supervisor
from agentsh.enforce.errors import LayerUnavailable
from agentsh.enforce.policy import Decision, Verdict
from agentsh.enforce.record import asdict
from agentsh.install import overlay as overlay_mod
from agentsh.shell import precheck, supervise

pytestmark = pytest.mark.e2e

BASH = "/usr/bin/bash"
SUDO = Path("/usr/bin/sudo")
MARKER = Path("/var/tmp/agentsh-fake-sudo.ran")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C"}
# An ELF, so that the dynamic loader can run it as its operand too (ld.so rows).
FAKE_SUDO_C = (
    "#include <stdio.h>\n"
    "int main(int argc, char **argv) {\n"
    f'    FILE *f = fopen("{MARKER}", "a");\n'
    '    for (int i = 0; f && i < argc; i++) fprintf(f, "%s ", argv[i]);\n'
    "    if (f) fclose(f);\n"
    "    return 0;\n"
    "}\n"
)


def _install_fake_sudo() -> None:
    src = Path("/var/tmp/agentsh-fake-sudo.c")
    src.write_text(FAKE_SUDO_C)
    subprocess.run(["gcc", "-O1", "-o", str(SUDO), str(src)], check=True)
    SUDO.chmod(0o755)


SUDO_RULES = {"block-privilege-escalation", precheck.DEPTH_RULE, "exec-changed"}
BACKENDS = ("ptrace", "notify")


def _py(snippet: str, args: str = "") -> str:
    """A shell line running python3 on ``snippet`` with ``args`` (left for the shell)."""
    return f"python3 -c {shlex.quote(snippet)}" + (f" {args}" if args else "")


def _nested(line: str, levels: int) -> str:
    for _ in range(levels):
        line = f"bash -c {shlex.quote(line)}"
    return line


_PY_THREAD_EXEC = """
import os, sys, threading
def go():
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    except OSError as err:
        print("thread exec failed:", err.strerror, flush=True)
        os._exit(3)
t = threading.Thread(target=go)
t.start()
t.join()
"""

# A thread rewrites the path between the supervisor's read and the kernel's: the check
# must never let the sudo image run (it is killed at the exec event if it gets there).
_PY_RACE = """
import collections, ctypes, json, os, threading
libc = ctypes.CDLL(None, use_errno=True)
good, bad = b"/usr/bin/true\\0", b"/usr/bin/sudo\\0"
buf = ctypes.create_string_buffer(good, 16)
argv = (ctypes.c_char_p * 2)(b"x", None)
def flip():
    while True:
        ctypes.memmove(buf, bad, len(bad))
        ctypes.memmove(buf, good, len(good))
seen = collections.Counter()
for _ in range(150):
    pid = os.fork()
    if pid == 0:
        threading.Thread(target=flip, daemon=True).start()
        for _ in range(40):
            libc.execve(buf, argv, None)
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    seen[str(os.waitstatus_to_exitcode(status))] += 1
print(json.dumps(seen))
raise SystemExit(1)
"""

ESCAPES: dict[str, str] = {
    "env": "env sudo id",
    "xargs": "echo id | xargs sudo",
    "find-exec": "find / -maxdepth 0 -exec sudo id \\;",
    "python-os-system": (
        "python3 -c 'import os, sys; sys.exit(os.waitstatus_to_exitcode(os.system(\"sudo id\")))'"
    ),
    "python-subprocess": 'python3 -c \'import subprocess; subprocess.run(["sudo", "id"])\'',
    "python-execv": 'python3 -c \'import os; os.execv("/usr/bin/sudo", ["sudo", "id"])\'',
    "perl-exec": 'perl -e \'exec("sudo", "id") or die "exec: $!\\n"\'',
    "awk-system": "awk 'BEGIN {{ exit system(\"sudo id\") }}'",
    "full-path": "/usr/bin/sudo id",
    "symlink": "ln -sf /usr/bin/sudo {w}/helper && {w}/helper id",
    "proc-self-root": "/proc/self/root/usr/bin/sudo id",
    "exec-a": "exec -a innocent sudo id",
    "nohup": "nohup sudo id",
    "nested-5": _nested("sudo id", 5),
    "shebang-script": "printf '#!/bin/sh\\nsudo id\\n' > {w}/s.sh && chmod +x {w}/s.sh && {w}/s.sh",
    "thread-exec": _py(_PY_THREAD_EXEC, "/usr/bin/sudo id"),
    "env-in-subshell-pipe": "( echo id | env -i /usr/bin/env sudo ) | cat; exit ${{PIPESTATUS[0]}}",
    "ld-so": "/lib64/ld-linux-x86-64.so.2 /usr/bin/sudo id",
    "ld-so-renamed-copy": "cp /lib64/ld-linux-x86-64.so.2 {w}/loader && {w}/loader /usr/bin/sudo",
}
# Daemons outlive the bash that started them and record their own exit status. The name
# is computed (``$x``) so that the exec of the daemon itself passes the check: only its
# later exec of sudo, long after bash has exited, can be refused.
_DAEMON = "sh -c 'sleep 0.3; x=sudo; $x id; echo $? > {w}/status' </dev/null >/dev/null 2>&1 &"
DAEMONS: dict[str, str] = {
    "nohup-daemon": f"nohup {_DAEMON}",
    "double-fork-daemon": f"( setsid {_DAEMON} )",
}
# Hardening through the same transport: (script, the rule the deny event must name). The
# signals are harmless ones (SIGCONT): should a refusal fail, nothing is hurt.
_PY_SEIZE = "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); " + (
    "r = libc.ptrace(0x4206, int(sys.argv[1]), 0, 0); print(r, os.strerror(ctypes.get_errno()))"
)
_PY_VM_READ = "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); " + (
    "buf = ctypes.create_string_buffer(8); v = (ctypes.c_size_t * 2)(ctypes.addressof(buf), 8); "
    "r = libc.process_vm_readv(int(sys.argv[1]), v, 1, v, 1, 0); "
    "print(r, os.strerror(ctypes.get_errno()))"
)
_PY_MOUNT = "import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); " + (
    "r = libc.mount(b'none', sys.argv[1].encode(), b'tmpfs', 0, None); "
    "print(r, os.strerror(ctypes.get_errno()))"
)
# The owner the kernel signals on I/O (F_SETSIG may later pick SIGKILL): set with a value
# (F_SETOWN) or through memory (F_SETOWN_EX, FIOSETOWN on a socket). Prints "-1 <error>".
_PY_OWNER = "import fcntl, os, socket, struct, sys\n" + (
    "kind = sys.argv[1]\n"
    "who = os.getpid() if sys.argv[2] == 'self' else int(sys.argv[2])\n"
    "a, b = socket.socketpair()\n"
    "try:\n"
    "    if kind == 'setown': fcntl.fcntl(a, fcntl.F_SETOWN, who)\n"
    "    elif kind == 'setown-ex': fcntl.fcntl(a, 15, struct.pack('ii', 1, who))\n"
    "    else: fcntl.ioctl(a, 0x8901, struct.pack('i', who))\n"
    "    print(0, fcntl.fcntl(a, fcntl.F_GETOWN) == who)\n"
    "except OSError as e: print(-1, e.strerror)\n"
)
_PY_VHANGUP = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); " + (
    "r = libc.vhangup(); print(r, os.strerror(ctypes.get_errno()))"
)
# keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0): root's user keyring is shared
# with every root process on the machine.
_PY_KEYCTL = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); " + (
    "r = libc.syscall(250, 0, -4, 0); print(r, os.strerror(ctypes.get_errno()))"
)
# sethostname to the name it already has: refused, and harmless were it not.
_PY_HOSTNAME = "import ctypes, os, socket; libc = ctypes.CDLL(None, use_errno=True); " + (
    "n = socket.gethostname().encode(); "
    "r = libc.sethostname(n, len(n)); print(r, os.strerror(ctypes.get_errno()))"
)
# fanotify_init: a listener would get an fd of every file anyone opens (/etc/shadow too).
_PY_FANOTIFY = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); " + (
    "r = libc.fanotify_init(0, 0); print(r, os.strerror(ctypes.get_errno()))"
)


def _set_as_is(read: str, write: str) -> str:
    """A snippet that sets a property of process ``argv[1]`` to what it already is (``read``
    binds ``cur``, ``write`` uses it): prints 0, or -1 and the error."""
    return (
        "import os, resource, sys; pid = int(sys.argv[1])\n"
        f"cur = {read}\n"
        f"try: {write}; print(0)\n"
        "except OSError as e: print(-1, e.strerror)"
    )


# Limits and scheduling of an outside process, set to what they already are (harmless
# were it allowed; RLIMIT_CPU would kill it).
_PY_PRLIMIT = _set_as_is(
    "resource.prlimit(pid, resource.RLIMIT_CORE)",
    "resource.prlimit(pid, resource.RLIMIT_CORE, cur)",
)
_PY_AFFINITY = _set_as_is("os.sched_getaffinity(pid)", "os.sched_setaffinity(pid, cur)")
_PY_NICE = _set_as_is(
    "os.getpriority(os.PRIO_PROCESS, pid)", "os.setpriority(os.PRIO_PROCESS, pid, cur)"
)
_PY_PACKET = "import socket\n" + (
    "try: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); print(0)\n"
    "except OSError as e: print(-1, e.strerror)"
)
HARDENING: dict[str, tuple[str, str]] = {
    "signal-init": ("kill -CONT 1", "signal-init"),
    "owner-outside": (
        _py(_PY_OWNER, "setown {outside}"),
        "signal-outside-tree",
    ),
    "owner-ex-outside": (
        _py(_PY_OWNER, "setown-ex {outside}"),
        "signal-outside-tree",
    ),
    "owner-ioctl-outside": (
        _py(_PY_OWNER, "fiosetown {outside}"),
        "signal-outside-tree",
    ),
    "owner-init": (_py(_PY_OWNER, "setown 1"), "signal-init"),
    "vhangup": (_py(_PY_VHANGUP), "deny-vhangup"),
    "keyring": (_py(_PY_KEYCTL), "deny-keyctl"),
    "hostname": (_py(_PY_HOSTNAME), "deny-sethostname"),
    "fanotify": (_py(_PY_FANOTIFY), "deny-fanotify_init"),
    "packet-capture": (_py(_PY_PACKET), "deny-socket"),
    "prlimit-outside": (
        _py(_PY_PRLIMIT, "{outside}"),
        "prlimit64-outside-tree",
    ),
    "affinity-outside": (
        _py(_PY_AFFINITY, "{outside}"),
        "sched_setaffinity-outside-tree",
    ),
    "nice-outside": (_py(_PY_NICE, "{outside}"), "setpriority-outside-tree"),
    "mount": ("mkdir -p {w}/mnt && " + _py(_PY_MOUNT, "{w}/mnt"), "deny-mount"),
    "ptrace-outside": (_py(_PY_SEIZE, "{outside}"), "ptrace-outside-tree"),
    "memory-outside": (_py(_PY_VM_READ, "{outside}"), "process_vm_readv-outside-tree"),
}
ALLOWED: dict[str, tuple[str, str]] = {
    "git": ("git --version", "git version"),
    "python": ("python3 -c 'print(6 * 7)'", "42\n"),
    "pipeline": ("printf 'b\\na\\nc\\n' | sort | tr a-z A-Z | head -n 2", "A\nB\n"),
    "make": ("printf 'all:\\n\\t@echo made\\n' > {w}/Makefile && make -s -C {w}", "made\n"),
    "thread-exec": (_py(_PY_THREAD_EXEC, "/usr/bin/echo hi"), "hi\n"),
    # its own process may own its descriptors (checked, then set by the supervisor)
    # limits and scheduling of its own processes stay the shell's to change
    "limits-self": (
        "ulimit -n 1024 && nice -n 1 true && taskset -c 0 true && renice -n 1 $$ >/dev/null && "
        + _py(_PY_PRLIMIT, "$$")
        + " && "
        + _py(_PY_NICE, "$$"),
        "0\n0\n",
    ),
    "owner-self": (
        "for k in setown setown-ex fiosetown; do " + _py(_PY_OWNER, "$k self") + "; done",
        "0 True\n0 True\n0 True\n",
    ),
}


# --------------------------------------------------------------------------- governed runs


def _checker_factory() -> Callable[[], supervisor.Checker]:
    variables = {"HOME": "/root", "PROJECT_ROOT": "/tmp", "WORKSPACE": "/tmp"}
    policy = loader.load(config.builtin_policy_path(), variables | {"TMPDIR": "/tmp"})
    return lambda: supervise.make_checker(policy)


class _MirrorSink:
    """The audit sink, in the supervisor process: keeps events in memory and mirrors each
    to a file the test reads; holds the lifeline socket open until the process exits."""

    def __init__(self, events: Path, lifeline: str) -> None:
        self.life = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.life.connect(lifeline)
        self.fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.kept: list[audit.Event] = []

    def __call__(self, event: audit.Event) -> None:
        self.kept.append(event)
        os.write(self.fd, (json.dumps(asdict(event)) + "\n").encode())


class Runner:
    """Runs ``bash -c SCRIPT`` governed by one backend, inside the overlay."""

    def __init__(self, backend: str, work: Path) -> None:
        self.backend, self.work = backend, work
        self.checker = _checker_factory()
        self.count = itertools.count()

    def _govern(self, events: Path, lifeline: str) -> None:  # in the child, before exec
        start = ptrace.start_traced if self.backend == "ptrace" else govern.start
        sink = functools.partial(_MirrorSink, events, lifeline)
        assert start(self.checker, sink, first_exec=BASH, session="e2e")

    def start(self, script: str) -> tuple[subprocess.Popen[bytes], socket.socket, Path]:
        n = next(self.count)
        lifeline = f"\0agentsh-e2e-{os.getpid()}-{n}"
        life = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        life.bind(lifeline)
        life.listen(1)
        events = self.work / f"events-{self.backend}-{n}.jsonl"
        proc = subprocess.Popen(
            [BASH, "-c", script.format(w=self.work)],
            preexec_fn=functools.partial(self._govern, events, lifeline),  # noqa: PLW1509
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
            cwd=self.work,
        )
        return proc, life, events

    def finish(
        self, proc: subprocess.Popen[bytes], life: socket.socket, events: Path
    ) -> dict[str, Any]:
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        exited = _await_eof(life, 30)
        records = (
            [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []
        )
        return {
            "rc": proc.returncode,
            "out": out.decode(errors="replace"),
            "err": err.decode(errors="replace"),
            "events": records,
            "supervisor_exited": exited,
        }

    def run(self, script: str) -> dict[str, Any]:
        return self.finish(*self.start(script))


def _await_eof(life: socket.socket, timeout: float) -> bool:
    """True once the supervisor has connected to ``life`` and exited (EOF)."""
    life.settimeout(timeout)
    try:
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


def _ungoverned(script: str, work: Path) -> int:
    argv = [BASH, "-c", script.format(w=work)]
    done = subprocess.run(argv, env=ENV, cwd=work, capture_output=True, timeout=60, check=False)
    return done.returncode


def _escape(runner: Runner, script: str, *, daemon: bool) -> dict[str, Any]:
    """One escape: ungoverned control first, then governed; the marker after each."""
    status = runner.work / "status"
    MARKER.unlink(missing_ok=True)
    _ungoverned(script, runner.work)
    if daemon:
        _wait_for(status.exists, 5)
    control = MARKER.exists()
    MARKER.unlink(missing_ok=True)
    status.unlink(missing_ok=True)
    result = runner.run(script)  # waits for the supervisor, hence for daemons too
    result["control_marker"] = control
    result["marker"] = MARKER.exists()
    result["status_file"] = status.read_text().strip() if status.exists() else None
    status.unlink(missing_ok=True)
    return result


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _scenario(backend: str, work: Path) -> dict[str, Any]:
    _install_fake_sudo()
    runner = Runner(backend, work)
    r: dict[str, Any] = {"escape": {}, "allowed": {}}
    for name, script in {**ESCAPES, **DAEMONS}.items():
        r["escape"][name] = _escape(runner, script, daemon=name in DAEMONS)
    for name, (script, _) in ALLOWED.items():
        r["allowed"][name] = runner.run(script)
    r["hardening"] = {
        name: runner.run(script.replace("{outside}", str(os.getpid())))
        for name, (script, _) in HARDENING.items()
    }
    r["mounted"] = f" {work}/mnt " in Path("/proc/self/mounts").read_text()
    MARKER.unlink(missing_ok=True)
    r["race"] = runner.run(_py(_PY_RACE))
    r["race"]["marker"] = MARKER.exists()
    return r


@pytest.fixture(scope="module", params=BACKENDS)
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    backend: str = request.param
    support = ptrace.probe() if backend == "ptrace" else None
    if support is not None and not support.available:
        pytest.skip(f"ptrace backend unavailable here: {support.reason}")
    base = tmp_path_factory.mktemp(f"ptrace-e2e-{backend}")
    work = base / "work"
    work.mkdir()
    step = functools.partial(_scenario, backend, work)
    return overlay_mod.call_in_overlay(step, base / "overlay", timeout=600)


def _denies(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in result["events"] if e["decision"] == "deny"]


# --------------------------------------------------------------------------- escapes


@pytest.mark.parametrize("name", [*ESCAPES, *DAEMONS])
def test_escape_is_refused(runs: dict[str, Any], name: str) -> None:
    r = runs["escape"][name]
    assert r["control_marker"], f"ungoverned, {name!r} never reached the fake sudo"
    assert not r["marker"], f"governed, {name!r} ran sudo: {r}"
    if name in DAEMONS:
        assert r["status_file"] not in (None, "0"), r  # the daemon tried, and failed
    else:
        assert r["rc"] != 0, r
    rules = {e["rule"] for e in _denies(r)}
    assert rules & SUDO_RULES, f"no deny event naming the rule: {r['events']}"
    assert r["supervisor_exited"], "the supervisor outlived the last governed process"


def test_refusal_tells_the_process_why(runs: dict[str, Any]) -> None:
    r = runs["escape"]["env"]
    assert "agentsh: blocked by policy: env sudo id (rule block-privilege-escalation)" in r["err"]
    event = _denies(r)[0]
    assert (event["argv"], event["layer"]) == (["env", "sudo", "id"], "exec")


def test_racing_thread_never_runs_the_checked_away_image(runs: dict[str, Any]) -> None:
    r = runs["race"]
    assert not r["marker"], r
    outcomes = json.loads(r["out"])
    assert sum(outcomes.values()) == 150
    # Every child either ran the approved /usr/bin/true (0), was refused 40 times (7),
    # or was killed at the exec event because the image changed (-9).
    assert set(outcomes) <= {"0", "7", "-9"}, outcomes
    kills = outcomes.get("-9", 0)
    changed = [e for e in _denies(r) if e["rule"] == "exec-changed"]
    assert len(changed) == kills, (outcomes, changed)


@pytest.mark.parametrize("name", HARDENING)
def test_hardening_is_refused_and_audited(runs: dict[str, Any], name: str) -> None:
    r = runs["hardening"][name]
    rule = HARDENING[name][1]
    assert rule in {e["rule"] for e in _denies(r)}, r
    printed = ("ptrace-outside", "memory-outside", "mount", "vhangup", "keyring", "hostname")
    printed += ("fanotify",)
    printed += ("prlimit-outside", "affinity-outside", "nice-outside", "packet-capture")
    if name in printed or name.startswith("owner-"):
        assert r["out"].split()[0] == "-1", r  # the syscall failed...
        assert "Operation not permitted" in r["out"], r  # ...with EPERM
    else:
        assert r["rc"] != 0, r
        assert "Operation not permitted" in r["err"], r
    assert not runs["mounted"]


# --------------------------------------------------------------------------- allowed work


@pytest.mark.parametrize("name", ALLOWED)
def test_allowed_work_still_works(runs: dict[str, Any], name: str) -> None:
    r = runs["allowed"][name]
    expected = ALLOWED[name][1]
    assert r["rc"] == 0, r
    assert r["out"].startswith(expected), r
    assert not _denies(r), r["events"]
    assert r["supervisor_exited"]


# --------------------------------------------------------------------------- ptrace only


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``traced(fn)``: fn(runner) inside a fresh overlay, with the ptrace backend."""
    if overlay_mod.probe() is not None or not ptrace.probe().available:
        pytest.skip("needs an overlay root and a working ptrace backend")
    base = tmp_path_factory.mktemp("ptrace-only")
    count = itertools.count()

    def call(fn: Callable[[Runner], Any]) -> Any:
        work = base / f"work{next(count)}"
        work.mkdir()

        def step() -> Any:
            _install_fake_sudo()
            return fn(Runner("ptrace", work))

        return overlay_mod.call_in_overlay(step, base / f"overlay{next(count)}", timeout=120)

    return call


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _tracer_death(runner: Runner) -> dict[str, Any]:
    proc, life, events = runner.start("sleep 60 & echo $!; wait")
    assert proc.stdout is not None
    sleeper = int(proc.stdout.readline())
    tracer = _tracer_of(proc.pid)
    same = _tracer_of(sleeper) == tracer
    os.kill(tracer, signal.SIGKILL)
    result = runner.finish(proc, life, events)
    result |= {
        "tracer": tracer,
        "same_tracer": same,
        "sleeper_dead": _wait_for(lambda: _dead(sleeper), 5),
    }
    return result


def test_tracer_death_kills_the_whole_tree(traced: Callable[..., Any]) -> None:
    r = traced(_tracer_death)
    assert r["tracer"] > 1
    assert r["same_tracer"], "the background child was not auto-attached to the tracer"
    assert r["rc"] == -signal.SIGKILL, r
    assert r["sleeper_dead"], "a tracee outlived its tracer (EXITKILL)"


def _signal_from_outside(runner: Runner) -> dict[str, Any]:
    proc, life, events = runner.start("sleep 60 & echo $!; wait $!; echo status=$?")
    assert proc.stdout is not None
    sleeper = int(proc.stdout.readline())
    traced_by = _tracer_of(sleeper)
    os.kill(sleeper, signal.SIGTERM)
    return runner.finish(proc, life, events) | {"traced_by": traced_by}


def test_a_signal_to_a_traced_sleep_is_delivered(traced: Callable[..., Any]) -> None:
    r = traced(_signal_from_outside)
    assert r["traced_by"] > 1
    assert "status=143" in r["out"], r
    assert r["rc"] == 0


# Job control (set -m): bash must see its stopped job stopped and its continued job
# running, as without a tracer (group-stops are left stopped with PTRACE_LISTEN).
JOB_CONTROL = (
    "set -m; sleep 60 & p=$!; kill -STOP $p; sleep 0.3; jobs; cut -d' ' -f3 /proc/$p/stat; "
    "kill -CONT $p; sleep 0.3; jobs; kill $p; wait $p; echo status=$?"
)


def test_stop_and_continue_of_a_tracee(traced: Callable[..., Any]) -> None:
    r = traced(lambda runner: runner.run(JOB_CONTROL))
    lines = r["out"].splitlines()
    assert len(lines) == 4, r
    assert "Stopped" in lines[0], r
    assert lines[1] == "t", r  # "tracing stop" in /proc: stopped, and traced
    assert "Running" in lines[2], r
    assert lines[3] == "status=143", r


_PY_UNTRACED = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid = libc.syscall(56, 0x00800000 | 17, 0, 0, 0, 0)  # clone(CLONE_UNTRACED | SIGCHLD)
if pid == 0:
    try:
        os.execv("/usr/bin/sudo", ["sudo", "id"])
    except OSError as err:
        print("untraced exec:", err.strerror, flush=True)
        os._exit(4)
_, status = os.waitpid(pid, 0)
raise SystemExit(os.waitstatus_to_exitcode(status))
"""


def test_an_untraced_clone_can_exec_nothing(traced: Callable[..., Any]) -> None:
    def scenario(runner: Runner) -> dict[str, Any]:
        MARKER.unlink(missing_ok=True)
        r = runner.run(_py(_PY_UNTRACED))
        return r | {"marker": MARKER.exists()}

    r = traced(scenario)
    assert not r["marker"], r
    assert r["rc"] == 4, r
    assert "untraced exec: Function not implemented" in r["out"]  # ENOSYS: no tracer


_PY_LISTENER = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
prog = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)  # RET ALLOW
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(buf))
fbuf = ctypes.create_string_buffer(fprog)
libc.prctl(38, 1, 0, 0, 0)
for flags in (0x8, 0x8 | 0x20, 0x8 | 0x4):
    ret = libc.syscall(317, 1, flags, ctypes.addressof(fbuf))
    print(flags, ret, ctypes.get_errno())
"""


def test_the_tree_cannot_make_its_own_seccomp_listener(traced: Callable[..., Any]) -> None:
    r = traced(lambda runner: runner.run(_py(_PY_LISTENER)))
    lines = [line.split() for line in r["out"].splitlines()]
    assert lines == [[str(f), "-1", "16"] for f in (8, 40, 12)], r  # EBUSY each time


def test_a_debugger_cannot_run_inside(traced: Callable[..., Any]) -> None:
    r = traced(lambda runner: runner.run("strace -o /dev/null true; echo rc=$?"))
    assert "rc=0" not in r["out"], r
    assert "Operation not permitted" in r["err"], r


def test_filter_routes_supervised_calls_to_trace() -> None:
    spec = ptrace.filter_spec()
    assert spec.trace
    assert {59, 322, 62} <= set(spec.notify)
    listener = [rule for rule in spec.args if rule.nr == ptrace.NR_SECCOMP]
    assert len(listener) == 1
    assert all(v & 0x8 for v in listener[0].values)
    assert len(listener[0].values) == 128


def test_probe_reports_a_working_backend() -> None:
    support = ptrace.probe()
    assert support.available, support.reason


def test_nested_start_changes_nothing_inside_a_governed_tree(traced: Callable[..., Any]) -> None:
    code = (
        "from agentsh.enforce import govern, ptrace\n"
        "print(govern.is_governed())\n"
        "print(ptrace.start_traced(lambda: None, lambda: None, first_exec='/bin/true'))\n"
    )
    r = traced(lambda runner: runner.run(f"{sys.executable} -I -c {shlex.quote(code)}"))
    assert r["out"].split() == ["True", "False"], r


def test_refuses_loudly_when_another_tracer_holds_the_process() -> None:
    """A frontend that a debugger already traces cannot be seized: start_traced raises
    LayerUnavailable naming why (the command would then exit 126), never runs on."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(go_w)
            if os.read(go_r, 1) == b"g":
                ptrace.start_traced(lambda: _deny_all, lambda: print, first_exec="/bin/true")
                os.write(w, b"started")
        except LayerUnavailable as err:
            os.write(w, f"refused: {err.message}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        boundary.ptrace(ptrace.PTRACE_SEIZE, pid, 0, 0)  # we are "the debugger"
        os.write(go_w, b"g")
    finally:
        os.close(go_w)  # on any failure above, the child sees EOF and exits
    while True:
        _, status = os.waitpid(pid, 0x40000000)  # __WALL
        if not os.WIFSTOPPED(status):
            break
        ptrace.resume(pid, os.WSTOPSIG(status) if status >> 16 == 0 else 0)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    assert said.startswith("refused: exec supervision (ptrace): cannot trace this process"), said
    assert "traced already" in said


def _deny_all(req: supervisor.ExecRequest) -> Verdict:
    return Verdict(Decision.DENY, "test", "nothing runs")


KILL_TRACER = (
    "t=$(awk '/^TracerPid/ {{print $2}}' /proc/$$/status); [ \"$t\" -gt 1 ] || exit 99; "
    "kill -CONT $t; echo rc=$?"
)


def test_the_tree_cannot_signal_its_tracer(traced: Callable[..., Any]) -> None:
    r = traced(lambda runner: runner.run(KILL_TRACER))
    assert r["out"] == "rc=1\n", r
    assert "signal-supervisor" in {e["rule"] for e in _denies(r)}, r
