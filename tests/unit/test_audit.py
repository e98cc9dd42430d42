"""enforce.audit: the SQLite store, its in-memory fake (same conformance checks), --since."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentsh.enforce import audit
from agentsh.enforce.audit import AuditStore, Event, MemoryAuditStore, open_store, parse_since
from agentsh.enforce.errors import AuditUnavailable, InternalError, UsageError

GHP = "ghp_" + "Z9y8X7w6V5" * 4


def ev(t: float = 1000.0, **kw: object) -> Event:
    fields: dict[str, object] = {
        "time": t,
        "session": "s1",
        "pid": 42,
        "cwd": "/work",
        "argv": ("bash", "-c", "git status"),
        "decision": "allow",
        "rule": "allow-git",
        "message": "ok",
        "layer": "precheck",
        "kind": "command",
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


# --- conformance: the same checks against the real store and the fake ------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuditStore]:
    s: AuditStore = (
        MemoryAuditStore() if request.param == "memory" else open_store(tmp_path / "a.db")
    )
    yield s
    s.close()


def test_round_trip(store: AuditStore) -> None:
    e = ev(rule=None, argv=("ls", "-la", "dir with space", "ünï"), message="built-in default")
    store.record(e)
    assert store.query() == [e]


def test_secrets_redacted_before_storing(store: AuditStore) -> None:
    store.record(
        ev(
            argv=("bash", "-c", f"GITHUB_TOKEN={GHP} gh pr list && mysql -phunter2"),
            message=f"blocked: curl -H 'Authorization: Bearer {GHP}'",
        )
    )
    (got,) = store.query()
    assert got.argv == (
        "bash",
        "-c",
        "GITHUB_TOKEN=[REDACTED:github_token] gh pr list && mysql -p[REDACTED:password]",
    )
    assert got.message == "blocked: curl -H 'Authorization: Bearer [REDACTED:github_token]'"


def test_filters_and_limit(store: AuditStore) -> None:
    for i, (decision, session) in enumerate(
        [("allow", "a"), ("deny", "a"), ("allow", "b"), ("deny", "b"), ("approve", "a")]
    ):
        store.record(ev(t=100.0 + i, decision=decision, session=session, pid=i))
    assert [e.pid for e in store.query()] == [0, 1, 2, 3, 4]
    assert [e.pid for e in store.query(decision="deny")] == [1, 3]
    assert [e.pid for e in store.query(session="a")] == [0, 1, 4]
    assert [e.pid for e in store.query(since=102.0)] == [2, 3, 4]
    assert [e.pid for e in store.query(decision="deny", session="b", since=101.5)] == [3]
    assert [e.pid for e in store.query(limit=2)] == [3, 4]  # newest two, oldest first
    assert store.query(decision="redirect") == []


def test_same_time_keeps_insertion_order(store: AuditStore) -> None:
    for i in range(5):
        store.record(ev(t=7.0, pid=i))
    assert [e.pid for e in store.query(limit=3)] == [2, 3, 4]


def test_bad_limit(store: AuditStore) -> None:
    with pytest.raises(UsageError, match="at least 1"):
        store.query(limit=0)


def test_unknown_kind_refused_and_not_stored(store: AuditStore) -> None:
    with pytest.raises(InternalError, match="unknown event kind"):
        store.record(ev(kind="keystroke"))
    assert store.query() == []


def test_record_after_close_fails_closed(store: AuditStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(AuditUnavailable, match="closed"):
        store.record(ev())


def test_undecodable_bytes_stored_readably(store: AuditStore) -> None:
    store.record(ev(argv=("cat", "caf\udce9"), cwd="/tmp/\udcff"))
    (got,) = store.query()
    assert got.argv == ("cat", "caf\\xe9")
    assert got.cwd == "/tmp/\\xff"


def test_memory_fake_can_fail() -> None:
    fake = MemoryAuditStore(fail="disk full")
    with pytest.raises(AuditUnavailable, match="disk full"):
        fake.record(ev())
    assert fake.events == ()


# --- the SQLite store ----------------------------------------------------------------------


def _pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def test_creates_dir_0700_and_db_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "agentsh" / "audit.db"
    old = os.umask(0o277)  # would make the file read-only and the dir unusable
    try:
        with open_store(path) as s:
            s.record(ev())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert _pragma(path, "journal_mode") == "wal"
    assert _pragma(path, "user_version") == audit.SCHEMA_VERSION
    assert _pragma(path, "application_id") == audit.APPLICATION_ID


def test_existing_dir_mode_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    open_store(tmp_path / "a.db").close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_events_persist_across_opens(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    for i in range(3):
        with open_store(path) as s:
            s.record(ev(pid=i))
    with open_store(path, create=False) as s:
        assert [e.pid for e in s.query()] == [0, 1, 2]


def test_raw_secret_not_in_file(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with open_store(path) as s:
        s.record(ev(argv=("gh", "--token", "tok-plain-1234"), message=f"x {GHP}"))
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"tok-plain-1234" not in data
    assert GHP.encode() not in data
    assert b"[REDACTED:secret]" in data


def test_reader_does_not_create(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "a.db"
    with pytest.raises(AuditUnavailable, match="does not exist"):
        open_store(path, create=False)
    assert not path.parent.exists()


def _garbage_file(tmp: Path) -> Path:
    (tmp / "a.db").write_bytes(b"this is not sqlite" * 100)
    return tmp / "a.db"


def _a_directory(tmp: Path) -> Path:
    (tmp / "a.db").mkdir()
    return tmp / "a.db"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "f").write_text("")
    return tmp / "f" / "a.db"


@pytest.mark.parametrize(
    ("make", "match", "hint"),
    [
        (_garbage_file, "not a database", "move"),
        (_a_directory, "unable to open", "writable"),
        (_under_a_file, "Not a directory", "check"),
    ],
)
def test_unusable_path_fails_closed(
    tmp_path: Path, make: Callable[[Path], Path], match: str, hint: str
) -> None:
    with pytest.raises(AuditUnavailable, match=match) as err:
        open_store(make(tmp_path))
    assert hint in (err.value.hint or "")
    assert err.value.exit_code == 126


def test_foreign_sqlite_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(AuditUnavailable, match="another program"):
        open_store(path)
    assert _pragma(path, "user_version") == 0  # untouched


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={audit.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(AuditUnavailable, match="schema version 2") as err:
        open_store(path)
    assert "new file" in (err.value.hint or "")


def test_locked_too_long_is_audit_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    open_store(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        s = open_store(path, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(AuditUnavailable, match="locked") as err:
            s.record(ev())
        assert time.monotonic() - started >= 0.15  # it waited for the lock first
        assert "again" in (err.value.hint or "")
        s.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _hold_new_file(path: Path) -> sqlite3.Connection:
    """Another process in the middle of switching a new, empty store to WAL: it holds
    the write lock of the rollback journal (the state two first commands meet in)."""
    path.touch(mode=0o600)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_new_store_waits_while_another_process_creates_it(tmp_path: Path) -> None:
    # SQLite answers BUSY at once, without waiting, to a WAL switch in this state.
    path = tmp_path / "a.db"
    holder = _hold_new_file(path)
    releaser = threading.Timer(0.3, holder.execute, ("COMMIT",))
    releaser.start()
    try:
        started = time.monotonic()
        with open_store(path, timeout=5) as s:
            assert time.monotonic() - started >= 0.25
            s.record(ev())
            assert len(s.query()) == 1
    finally:
        releaser.join()
        holder.close()


def test_new_store_locked_too_long_is_audit_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    holder = _hold_new_file(path)
    try:
        started = time.monotonic()
        with pytest.raises(AuditUnavailable, match="locked") as err:
            open_store(path, timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 2
        assert "again" in (err.value.hint or "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _without_dac_override(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` so that file permissions apply even to root (capabilities(7))."""
    prefix = _NO_DAC if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=False
    )


_PROBE = """
import sys
from pathlib import Path
from agentsh.enforce import audit
from agentsh.enforce.errors import AuditUnavailable
try:
    s = audit.open_store(Path({path!r}))
    s.record(audit.Event(1.0, "s", 1, "/", ("true",), "allow", None, "", "precheck", "command"))
except AuditUnavailable as err:
    print(err.render())
    sys.exit(126)
"""


@pytest.mark.parametrize("what", ["dir", "file"])
def test_unwritable_store_fails_closed(tmp_path: Path, what: str) -> None:
    if os.geteuid() == 0 and subprocess.run(["which", "setpriv"], check=False).returncode:
        pytest.skip("root without setpriv cannot drop CAP_DAC_OVERRIDE")
    path = tmp_path / "store" / "a.db"
    if what == "dir":
        path.parent.mkdir(mode=0o500)
    else:
        open_store(path).close()
        path.chmod(0o400)
    done = _without_dac_override(_PROBE.format(path=str(path)))
    assert done.returncode == 126, done.stderr
    assert done.stdout.startswith(f"agentsh: audit store {path}:")
    assert "hint: make" in done.stdout
    assert "refused" in done.stdout


_WORKER = """
import os, sys, time
from pathlib import Path
from agentsh.enforce import audit
path, go, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
for i in range(n):
    # as a governed bash does: open, record, close, for every event
    s = audit.open_store(path)
    s.record(audit.Event(time.time(), "w", os.getpid(), "/", ("seq", str(i)), "allow", None,
                         "", "precheck", "command"))
    s.close()
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """20 processes x 20 events on a store none of them has created yet."""
    path, go = tmp_path / "sub" / "a.db", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(go), "20"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    go.touch()
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, _out, err in results:
        assert (rc, err) == (0, "")
    with open_store(path, create=False) as s:
        events = s.query(limit=10_000)
    assert len(events) == 400
    seen = {(e.pid, e.argv[1]) for e in events}
    assert len(seen) == 400
    assert {e.pid for e in events} == {p.pid for p in procs}


# --- --since ---------------------------------------------------------------------------------

NOW = 1_750_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - 30),
        ("10m", NOW - 600),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("1w", NOW - 7 * 86400),
        (" 5m ", NOW - 300),
        ("0m", NOW),
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp()),
        ("2024-05-01", datetime(2024, 5, 1).timestamp()),  # no zone: local time
        ("2024-05-01T12:30", datetime(2024, 5, 1, 12, 30).timestamp()),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize(
    "text", ["", "10", "m", "10x", "-5m", "1.5h", "10 minutes", "yesterday", "2024-13-01", "5M"]
)
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--since") as err:
        parse_since(text, NOW)
    assert "10m" in (err.value.hint or "")


# --- the supervisor's writer: many events in one transaction -----------------------------


def test_writer_stores_a_batch_in_order_redacted(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    writer = audit.Writer(store)
    secret = "ghp_" + "a" * 36
    writer.many([ev(1.0, message="one"), ev(2.0, argv=("curl", "-H", secret)), ev(3.0)])
    writer(ev(4.0, message="single"))
    got = store.query()
    assert [e.time for e in got] == [1.0, 2.0, 3.0, 4.0]
    assert secret not in " ".join(got[1].argv)
    store.close()


def test_writer_batch_is_all_or_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    with pytest.raises(InternalError, match="unknown event kind"):
        audit.Writer(store).many([ev(1.0), ev(2.0, kind="keystroke")])
    assert store.query() == []  # the good first event was not stored alone
    audit.Writer(store).many([ev(5.0)])  # the store is usable afterwards
    assert [e.time for e in store.query()] == [5.0]
    store.close()


def test_writer_on_a_closed_store_fails_closed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a.db")
    store.close()
    with pytest.raises(AuditUnavailable):
        audit.Writer(store).many([ev(1.0), ev(2.0)])
