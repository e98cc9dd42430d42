"""The C hot path of exec supervision (``enforce.fastpath``, libagentsh-boundary.so): an
allowed exec the supervisor has judged may be answered again without the checker, but
only while it is the very same exec of the very same, unchanged file. Each test runs a
real governed ``bash -c`` whose checker numbers its judgements of the program under
test: an audit event carrying an older judgement is a remembered one, a new number
means the exec was judged anew.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agentsh.enforce import audit, fastpath, govern, image, record, seccomp, supervisor
from agentsh.enforce.policy import Decision, Verdict

pytestmark = pytest.mark.e2e

BASH = "/usr/bin/bash"
SETTLE_NS = 200_000_000  # files older than this may be remembered (the tests' setting)


class Judge:
    """A pure checker (``pure``: see ``shell.supervise``) that allows everything and
    numbers its judgements of programs named ``prog`` (``deny`` refuses those instead)
    — and refuses bash (the governed shell itself runs: the frontend prechecked it)."""

    pure = True

    def __init__(self, *, deny: bool = False) -> None:
        self.deny, self.count = deny, 0

    def __call__(self, req: supervisor.ExecRequest) -> Verdict:
        if os.path.basename(req.path) == "bash":
            return Verdict(Decision.DENY, "bash", "no nested bash")
        if os.path.basename(req.path) != "prog":
            return Verdict(Decision.ALLOW, "other", "not under test")
        self.count += 1
        decision = Decision.DENY if self.deny else Decision.ALLOW
        return Verdict(decision, "prog", f"judgement {self.count}")


class Sink:
    """The test's end of the audit sink: a unix socket the supervisor connects to; it
    closes when the supervisor exits, which is when every event has arrived."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="agentsh-fp-")
        self.path = os.path.join(self.dir, "s")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.events: list[audit.Event] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        conn, _ = self.server.accept()
        with conn.makefile("rb") as f:
            for line in f:
                fields = json.loads(line)
                fields["argv"] = tuple(fields["argv"])
                self.events.append(audit.Event(**fields))

    def factory(self) -> Callable[[], Callable[[audit.Event], None]]:
        path = self.path

        def make() -> Callable[[audit.Event], None]:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return lambda event: sock.sendall(json.dumps(record.asdict(event)).encode() + b"\n")

        return make


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not seccomp.probe().usable:
        pytest.skip("exec supervision unavailable on this kernel")
    if fastpath.load() is None:
        pytest.skip("libagentsh-boundary.so is not built (make setup builds it)")
    # Inherited by the supervisor, which is forked from the test process.
    monkeypatch.setattr(image, "CACHE_SETTLE_NS", SETTLE_NS)
    return tmp_path


def governed(work: Path, script: str, judge: Judge) -> tuple[int, list[audit.Event]]:
    """Run ``bash -c script`` in ``work`` under exec supervision with ``judge``; the exit
    status and every audit event."""
    time.sleep(2 * SETTLE_NS / 1e9)  # what the test prepared is settled now
    sink = Sink()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(work)
            null = os.open(os.devnull, os.O_RDWR)
            out = os.open(work / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for fd, target in ((0, null), (1, out), (2, null)):
                os.dup2(target, fd)
            govern.start(lambda: judge, sink.factory(), first_exec=BASH, session="fp")
            os.execve(BASH, ["bash", "-c", script], {"PATH": "/usr/bin:/bin"})
        finally:
            os._exit(99)
    try:
        _, status = os.waitpid(pid, 0)
        sink.thread.join(60)
        assert not sink.thread.is_alive(), "the supervisor did not exit"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        sink.server.close()
        shutil.rmtree(sink.dir, ignore_errors=True)
    return os.waitstatus_to_exitcode(status), sink.events


def judgements(events: list[audit.Event]) -> list[str]:
    return [e.message for e in events if e.rule == "prog"]


def test_a_repeated_exec_is_remembered(work: Path) -> None:
    """The control for every test below: without a change, the second exec reuses the
    first judgement (else the tests below would pass without any cache)."""
    shutil.copy2("/usr/bin/true", work / "prog")
    status, events = governed(work, "./prog && ./prog && ./prog", Judge())
    assert status == 0
    assert judgements(events) == ["judgement 1"] * 3


# Each changes the program between two identical execs; the third exec must be judged anew.
CHANGES = {
    "replaced-by-rename": "cp /usr/bin/false new && mv new prog",
    "rewritten-in-place-same-bytes": "cat prog > same && cat same > prog",
    "chmod": "chmod 0700 prog",
    "directory-symlink-swapped": "ln -sfn d2 d",  # d2/prog: a hard link, equal stat
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_program_is_judged_anew(work: Path, change: str) -> None:
    (work / "d1").mkdir()
    (work / "d2").mkdir()
    shutil.copy2("/usr/bin/true", work / "d1" / "prog")
    os.link(work / "d1" / "prog", work / "d2" / "prog")  # same inode, size and times
    os.symlink("d1", work / "d")
    if change != "directory-symlink-swapped":
        shutil.copy2("/usr/bin/true", work / "prog")
    name = "d/prog" if change == "directory-symlink-swapped" else "./prog"
    script = f"{name}; {name}; {CHANGES[change]}; {name}; exit 0"
    status, events = governed(work, script, Judge())
    assert status == 0
    assert judgements(events) == ["judgement 1", "judgement 1", "judgement 2"], events


def test_other_arguments_or_another_file_are_judged_anew(work: Path) -> None:
    for sub in ("a", "b"):
        (work / sub).mkdir()
    shutil.copy2("/usr/bin/true", work / "a" / "prog")
    shutil.copy2("/usr/bin/true", work / "b" / "prog")
    script = "cd a && ./prog x && ./prog y && cd ../b && ./prog x && ./prog x"
    status, events = governed(work, script, Judge())
    assert status == 0
    # a/prog x, a/prog y (other argv), b/prog x (other file), b/prog x (remembered)
    assert judgements(events) == ["judgement 1", "judgement 2", "judgement 3", "judgement 3"]
    cwds = [e.cwd for e in events if e.rule == "prog"]
    assert cwds == [str(work / "a")] * 2 + [str(work / "b")] * 2  # each exec's own cwd


def test_a_remembered_exec_is_audited_with_its_own_pid_and_cwd(work: Path) -> None:
    shutil.copy2("/usr/bin/true", work / "prog")
    for sub in ("x", "y"):
        (work / sub).mkdir()
    status, events = governed(work, "cd x && ../prog && cd ../y && ../prog", Judge())
    assert status == 0
    mine = [e for e in events if e.rule == "prog"]
    assert [e.message for e in mine] == ["judgement 1"] * 2  # the second was remembered
    assert [e.cwd for e in mine] == [str(work / "x"), str(work / "y")]
    assert mine[0].pid != mine[1].pid


def test_a_refusal_is_never_remembered(work: Path) -> None:
    shutil.copy2("/usr/bin/true", work / "prog")
    status, events = governed(work, "./prog; ./prog; ./prog; exit 0", Judge(deny=True))
    assert status == 0
    assert judgements(events) == ["judgement 1", "judgement 2", "judgement 3"]
    assert {e.decision for e in events if e.rule == "prog"} == {"deny"}


def test_a_freshly_written_program_is_not_remembered(work: Path) -> None:
    """A file changed within the settle time may change again within one timestamp
    tick without its times showing it: it is judged at every exec until it settles."""
    script = "cp /usr/bin/true prog && ./prog && ./prog && ./prog"
    status, events = governed(work, script, Judge())
    assert status == 0
    assert judgements(events) == ["judgement 1", "judgement 2", "judgement 3"]


def test_the_prechecked_shell_is_never_remembered(work: Path) -> None:
    """The root's first exec (bash, prechecked by the frontend) is allowed without the
    checker; the very same exec again, from inside the tree, is judged (and refused)."""
    again = 'if [ -z "$AGAIN" ]; then export AGAIN=1; '
    again += 'exec -a bash /usr/bin/bash -c "$BASH_EXECUTION_STRING"; fi; exit 7'
    status, events = governed(work, again, Judge())
    assert status not in (0, 7)
    assert [e.rule for e in events if e.decision == "deny"] == ["bash"]


def test_long_and_many_arguments_reach_the_program_intact(work: Path) -> None:
    """Arguments longer than the first read, and many of them: the exec still gets
    exactly its argv (the exec boundary compares it), whether remembered or not."""
    shutil.copy2("/usr/bin/echo", work / "prog")
    args = " ".join(["x" * 300, *[f"a{i}" for i in range(40)], "y" * 1000])
    status, events = governed(work, f"./prog {args} && ./prog {args}", Judge())
    assert status == 0
    assert (work / "out").read_text() == f"{args}\n" * 2
    assert len(judgements(events)) == 2
    assert not [e for e in events if e.decision == "deny"]
