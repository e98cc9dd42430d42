"""The audit store: every decision, allowed and denied, as a row in SQLite (ARCHITECTURE §1).

One governed bash opens the store, records 1–3 events and closes it; many of them run at
once against the same file. Hence:

- WAL journal (set once, when the file is created; it persists in the file): writers
  append to the log without blocking readers such as ``agentsh events query``;
- ``busy_timeout``: a writer that finds the store locked waits instead of failing, so
  concurrent bashes never see "database is locked" (tested: 20 processes x 20 events);
- each ``record`` is one autocommit INSERT, i.e. a write transaction from its first
  statement — never a read upgraded to a write, the case where SQLite returns BUSY
  without calling the busy handler. Switching a new file to WAL is such an upgrade, so
  opening the store tries again itself, for the same timeout;
- ``synchronous=NORMAL``: no fsync per commit (the WAL is synced at checkpoint); a power
  cut may lose the last events but never corrupts the store. Measured on this VM: open +
  2 records + close 2.5–3 ms alone (FULL, DELETE and TRUNCATE journals: the same within
  noise), 0.6–0.8 ms while another process holds the store open (no checkpoint on close);
- the schema is versioned with ``PRAGMA user_version`` and marked ours with
  ``PRAGMA application_id``; a newer or foreign file is refused, never rewritten.

The file is created 0600 (its parent directory 0700 when we create it) by ``open_store``
itself, then opened with ``mode=rw`` so SQLite never creates it with umask permissions.
Secrets in argv and message are redacted before anything is stored (``enforce.redact``).
Any failure to open or write raises AuditUnavailable: the caller refuses the command (fail
closed, ARCHITECTURE §7).
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from agentsh.enforce.errors import AuditUnavailable, InternalError, UsageError
from agentsh.enforce.record import dataclass, replace
from agentsh.enforce.redact import redact, redact_argv

SCHEMA_VERSION = 1
APPLICATION_ID = 0x61677368  # "agsh"
KINDS = frozenset({"command", "file", "network", "env", "signal", "syscall"})
DEFAULT_TIMEOUT_S = 10.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        session TEXT NOT NULL,
        pid INTEGER NOT NULL,
        cwd TEXT NOT NULL,
        argv TEXT NOT NULL,
        decision TEXT NOT NULL,
        rule TEXT,
        message TEXT NOT NULL,
        layer TEXT NOT NULL,
        kind TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_time ON events (time)",
    "CREATE INDEX IF NOT EXISTS events_session ON events (session, time)",
)
_INSERT = (
    "INSERT INTO events (time, session, pid, cwd, argv, decision, rule, message, layer, kind)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Newest ``limit`` rows matching the filters (a NULL filter matches all), oldest first.
_QUERY = """
    SELECT time, session, pid, cwd, argv, decision, rule, message, layer, kind FROM (
        SELECT * FROM events
        WHERE (?1 IS NULL OR decision = ?1)
          AND (?2 IS NULL OR time >= ?2)
          AND (?3 IS NULL OR session = ?3)
        ORDER BY time DESC, id DESC LIMIT ?4
    ) ORDER BY time, id
"""


@dataclass(frozen=True)
class Event:
    """One decision. ``layer`` is who decided ("precheck", "exec", "file", ...), ``kind``
    what about ("command", "file", "network"); ``rule`` is None for a built-in default."""

    time: float
    session: str
    pid: int
    cwd: str
    argv: tuple[str, ...]
    decision: str
    rule: str | None
    message: str
    layer: str
    kind: str


class AuditStore(Protocol):
    """What the frontend and the CLI use; SqliteAuditStore and MemoryAuditStore conform."""

    def record(self, event: Event) -> None: ...

    def query(
        self,
        *,
        decision: str | None = None,
        since: float | None = None,
        session: str | None = None,
        limit: int = 100,
    ) -> list[Event]: ...

    def close(self) -> None: ...


# JSON string escapes, as json.dumps(..., ensure_ascii=False) writes them: a translate
# table instead of importing json (~3 ms and four regex compiles on every governed start).
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def json_words(words: Iterable[str]) -> str:
    """``json.dumps(list(words), ensure_ascii=False)``: how argv is stored."""
    return "[" + ", ".join(f'"{w.translate(_JSON_ESCAPES)}"' for w in words) + "]"


def _text(value: str) -> str:
    """Valid Unicode for storage: undecodable bytes (surrogate escapes from os) as ``\\xNN``."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def sanitize(event: Event) -> Event:
    """The event as it is stored: secrets redacted, text valid Unicode.

    Raises:
        InternalError: ``kind`` is not one of KINDS (a caller bug; refuse rather than
            store an event no query will understand).
    """
    if event.kind not in KINDS:
        raise InternalError(f"audit: unknown event kind {event.kind!r}")
    return replace(
        event,
        time=float(event.time),
        pid=int(event.pid),
        session=_text(event.session),
        cwd=_text(event.cwd),
        argv=tuple(_text(a) for a in redact_argv(event.argv)),
        decision=_text(event.decision),
        rule=None if event.rule is None else _text(event.rule),
        message=_text(redact(event.message)),
        layer=_text(event.layer),
    )


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")


def _select(
    events: Iterable[Event],
    decision: str | None,
    since: float | None,
    session: str | None,
    limit: int,
) -> list[Event]:
    """The newest ``limit`` matching events, oldest first (what a ``tail`` shows)."""
    kept = [
        e
        for e in events
        if (decision is None or e.decision == decision)
        and (since is None or e.time >= since)
        and (session is None or e.session == session)
    ]
    kept.sort(key=lambda e: e.time)  # stable: ties keep insertion order
    return kept[-limit:]


class MemoryAuditStore:
    """In-memory fake with the same contract (STYLE §12). ``fail`` makes every ``record``
    raise AuditUnavailable with that reason, to test that callers fail closed."""

    def __init__(self, *, fail: str | None = None) -> None:
        self._events: list[Event] = []
        self._fail = fail
        self._closed = False

    @property
    def events(self) -> tuple[Event, ...]:
        """Everything recorded, as stored (redacted), in order."""
        return tuple(self._events)

    def record(self, event: Event) -> None:
        stored = sanitize(event)
        if self._closed:
            raise AuditUnavailable("audit store is closed")
        if self._fail is not None:
            raise AuditUnavailable(f"audit store cannot be written: {self._fail}")
        self._events.append(stored)

    def query(
        self,
        *,
        decision: str | None = None,
        since: float | None = None,
        session: str | None = None,
        limit: int = 100,
    ) -> list[Event]:
        _check_limit(limit)
        if self._closed:
            raise AuditUnavailable("audit store is closed")
        return _select(self._events, decision, since, session, limit)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> MemoryAuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _row(event: Event) -> tuple[object, ...]:
    """``event``, redacted, as the columns of ``_INSERT``."""
    e = sanitize(event)
    argv = json_words(e.argv)
    return (e.time, e.session, e.pid, e.cwd, argv, e.decision, e.rule, e.message, e.layer, e.kind)


class Writer:
    """The supervisor's sink for one store: called with one event, or ``many`` in one
    transaction (a busy exec loop queues dozens between two flushes)."""

    def __init__(self, store: SqliteAuditStore) -> None:
        self.store = store

    def __call__(self, event: Event) -> None:
        self.store.record(event)

    def many(self, events: Sequence[Event]) -> None:
        self.store.record_many(events)


def _unavailable(path: Path, err: Exception) -> AuditUnavailable:
    """AuditUnavailable for ``err``, with a hint for the usual causes."""
    if isinstance(err, OSError) and err.strerror:
        why = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    else:
        why = str(err) or type(err).__name__
    low = why.lower()
    if isinstance(err, PermissionError) or "readonly" in low or "unable to open" in low:
        hint = (
            f"make {path} and its directory writable by uid {os.getuid()}, or point "
            "audit.storage.sqlite_path in /etc/agentsh/config.yaml elsewhere"
        )
    elif "locked" in low or "busy" in low:
        hint = "another process held the audit store locked too long; run the command again"
    elif "not a database" in low or "malformed" in low:
        hint = f"move {path} away; agentsh creates a new store on the next command"
    elif "full" in low:
        hint = f"free space on the file system of {path}"
    else:
        hint = f"check {path} and the file system it is on"
    return AuditUnavailable(
        f"audit store {path}: {why}",
        hint=hint + " (governed commands are refused while decisions cannot be recorded)",
    )


def _create_file(path: Path) -> None:
    """Create ``path`` 0600 (and its parent 0700) unless it exists. open(2), fchmod(2)."""
    parent = path.parent
    try:  # mkdir first: a check before it races with another process creating it
        parent.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(parent, 0o700)  # mkdir's mode is masked by the umask
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return  # another process won the race, or it was there already
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits
    finally:
        os.close(fd)


def _uri(path: Path) -> str:
    """A ``file:`` URI with ``mode=rw``: SQLite opens an existing file, never creates one.
    ``%``, ``?`` and ``#`` are the characters SQLite's URI parser treats specially."""
    quoted = str(path.absolute()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    return f"file:{quoted}?mode=rw"


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Check the schema (one read, the common case) or create it (new, empty file)."""
    row = conn.execute(
        "SELECT user_version, application_id FROM pragma_user_version, pragma_application_id"
    ).fetchone()
    version, app = int(row[0]), int(row[1])
    if version == SCHEMA_VERSION and app == APPLICATION_ID:
        return
    if version == 0:  # a new, empty file (ours, or another program's: checked below)
        _create_schema(conn, path)
        return
    if app != APPLICATION_ID:
        raise AuditUnavailable(
            f"audit store {path}: not an agentsh audit store (application_id {app:#x})",
            hint=f"move {path} away or point audit.storage.sqlite_path elsewhere",
        )
    # Ours, another schema version: no migration exists yet (v1 is the first), so refuse.
    raise AuditUnavailable(
        f"audit store {path}: schema version {version}, this agentsh writes {SCHEMA_VERSION}",
        hint="use the agentsh that wrote it, or point audit.storage.sqlite_path at a new file",
    )


def _prepare_waiting(conn: sqlite3.Connection, path: Path, timeout: float) -> None:
    """``_prepare``, tried again for up to ``timeout`` seconds while SQLite answers BUSY.

    Switching a new file to WAL upgrades a read of its header to a write, and SQLite
    answers BUSY to that upgrade at once, without its busy handler, while another
    process holds the store (it is creating the schema, or recording). Trying again
    rereads the schema version, so once the other process has created it there is
    nothing left to do."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            _prepare(conn, path)
            return
        except sqlite3.OperationalError as err:
            busy = err.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    # WAL needs no transaction open and persists in the file; while another process
    # holds the store it fails BUSY at once (``_prepare_waiting`` tries again). The
    # schema is then created under BEGIN IMMEDIATE, which takes the write lock first,
    # so two processes creating the same new store serialise and the second sees
    # user_version already set.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and tables - {"events"}:
            raise AuditUnavailable(
                f"audit store {path}: a SQLite file of another program (tables: "
                f"{', '.join(sorted(tables))})",
                hint=f"move {path} away or point audit.storage.sqlite_path elsewhere",
            )
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_store(
    path: Path, *, create: bool = True, timeout: float = DEFAULT_TIMEOUT_S
) -> SqliteAuditStore:
    """Open (and with ``create``, create if absent) the SQLite audit store at ``path``.

    Args:
        path: the database file. Created 0600, its parent directory 0700 if missing.
        create: False for readers (``events query``): a missing store is an error.
        timeout: seconds a writer waits for a lock held by another process.

    Raises:
        AuditUnavailable: the store cannot be created, opened, or is not ours.
    """
    try:
        if create:
            _create_file(path)
        elif not path.exists():
            raise AuditUnavailable(
                f"audit store {path} does not exist",
                hint="no governed command has run yet, or audit.storage.sqlite_path differs",
            )
        conn = sqlite3.connect(_uri(path), uri=True, timeout=timeout, isolation_level=None)
    except (OSError, sqlite3.Error) as err:
        raise _unavailable(path, err) from err
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        _prepare_waiting(conn, path, timeout)
    except (OSError, sqlite3.Error) as err:
        conn.close()
        raise _unavailable(path, err) from err
    except AuditUnavailable:
        conn.close()
        raise
    return SqliteAuditStore(conn, path)


class SqliteAuditStore:
    """The real store; build it with ``open_store``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise AuditUnavailable(f"audit store {self.path} is closed")
        return self._conn

    def record(self, event: Event) -> None:
        """Store ``event`` (redacted). Raises AuditUnavailable when it cannot."""
        conn = self._connection()
        try:
            conn.execute(_INSERT, _row(event))
        except sqlite3.Error as err:
            raise _unavailable(self.path, err) from err

    def record_many(self, events: Sequence[Event]) -> None:
        """Store ``events`` (redacted) in one write transaction: all or none (a busy
        store is waited for, as by ``record``). Raises AuditUnavailable when it cannot."""
        conn = self._connection()
        rows = [_row(e) for e in events]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise _unavailable(self.path, err) from err

    def query(
        self,
        *,
        decision: str | None = None,
        since: float | None = None,
        session: str | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The newest ``limit`` events matching every given filter, oldest first."""
        _check_limit(limit)
        try:
            rows = self._connection().execute(_QUERY, (decision, since, session, limit)).fetchall()
            return [_event(row) for row in rows]
        except (sqlite3.Error, ValueError) as err:
            raise _unavailable(self.path, err) from err

    def close(self) -> None:
        """Close the connection (idempotent). The last one to close checkpoints the WAL."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> SqliteAuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _event(row: tuple[Any, ...]) -> Event:
    """A stored row back as an Event. Raises ValueError on a row we did not write."""
    import json  # reading only (``events query``); writers never import it

    t, session, pid, cwd, argv, decision, rule, message, layer, kind = row
    words = json.loads(str(argv))
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"argv column is not a list of strings: {argv!r}")
    return Event(
        time=float(t),
        session=str(session),
        pid=int(pid),
        cwd=str(cwd),
        argv=tuple(words),
        decision=str(decision),
        rule=None if rule is None else str(rule),
        message=str(message),
        layer=str(layer),
        kind=str(kind),
    )


_DURATION = r"\s*(\d+)\s*([smhdw])\s*"  # compiled by re on first use only
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """``--since``: ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` before ``now``, or an ISO-8601
    time (``2024-05-01``, ``2024-05-01T12:00``, ``…Z``/``…+02:00``; no zone = local time).

    Returns:
        An epoch time.

    Raises:
        UsageError: anything else.
    """
    m = re.fullmatch(_DURATION, text)
    if m is not None:
        return now - int(m.group(1)) * _UNIT_S[m.group(2)]
    from datetime import datetime  # only here: ISO input is the rare case

    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError) as err:
        raise UsageError(
            f"--since: cannot read {text!r} as a duration or a time",
            hint="use a duration like 10m, 2h, 1d, or an ISO-8601 time like 2024-05-01T12:00",
        ) from err
