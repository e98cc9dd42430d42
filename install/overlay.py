"""The overlay root: run code with a writable copy of /usr, /etc and /var that vanishes
afterwards (ARCHITECTURE §8). Tests, the demo and the bench install the shim for real in
there; the host's /usr/bin/bash, /etc and /var are never written.

How: fork a child, which enters a private mount namespace (what ``unshare --mount
--propagation private`` does: unshare(2) ``CLONE_NEWNS``, then mount(2) ``MS_REC |
MS_PRIVATE`` on ``/``, so no mount event propagates back to the host), mounts overlayfs
over each directory (lower = the host's, upper and work dirs in the caller's ``workdir``)
and runs the caller's function. The namespace, and with it every overlay, goes away when
the last process in it exits; the writes stay in ``workdir`` for inspection.

    call_in_overlay(fn, workdir)           several steps in one namespace (a callable)
    run_in_overlay(argv, workdir, ...)     one command, like subprocess.run
    probe()                                None when usable, else the reason it is not
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import pickle
import select
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar, cast

from agentsh.enforce.errors import InternalError, LayerUnavailable

OVERLAID = ("/usr", "/etc", "/var")

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_T = TypeVar("_T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare_mounts() -> None:
    """A private mount namespace for this process (unshare(2), mount(2) MS_PRIVATE)."""
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Must precede every mount below: with shared propagation (systemd's default) the
    # overlays would appear on the host too.
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount(/, MS_PRIVATE)")


def _mount_overlay(target: str, workdir: Path) -> None:
    """Overlayfs over ``target``: the host's tree read-only below, writes into workdir."""
    name = target.strip("/").replace("/", "_")
    upper, work = workdir / "upper" / name, workdir / "work" / name
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={target},upperdir={upper},workdir={work}".encode()
    _check(
        _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts),
        f"mount overlay on {target}",
    )


def _check_workdir(workdir: Path) -> Path:
    """The upper dirs must live outside every overlaid tree (overlayfs refuses nesting),
    at a path the mount options can spell."""
    resolved = workdir.resolve()
    if any(c in str(resolved) for c in ",:\\"):  # separators in overlayfs mount options
        raise InternalError(f"overlay workdir {resolved} contains ',', ':' or a backslash")
    for top in OVERLAID:
        if resolved == Path(top) or Path(top) in resolved.parents:
            raise InternalError(f"overlay workdir {resolved} lies inside {top}")
    resolved.mkdir(parents=True, exist_ok=True)
    return resolved


def _child(fn: Callable[[], object], workdir: Path, wfd: int) -> None:
    """Runs in the forked child: enter the overlay, run fn, send (ok, value, traceback)."""
    try:
        os.setpgid(0, 0)  # our own group, so a timeout can end everything fn started
        _unshare_mounts()
        for top in OVERLAID:
            _mount_overlay(top, workdir)
        reply: tuple[bool, object, str] = (True, fn(), "")
    except BaseException as exc:  # noqa: BLE001 — every failure goes back to the parent
        reply = (False, exc, traceback.format_exc())
    try:
        data = pickle.dumps(reply)
    except Exception:  # noqa: BLE001 — an unpicklable result or exception: send its text
        data = pickle.dumps((False, InternalError(f"in overlay: {reply[1]!r}"), reply[2]))
    with os.fdopen(wfd, "wb") as pipe:
        pipe.write(data)


def _read_reply(rfd: int, timeout: float) -> bytes:
    """Everything the child sends before it closes the pipe.

    Raises:
        TimeoutError: nothing more within ``timeout`` seconds.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([rfd], [], [], max(left, 0))
        if not ready:
            raise TimeoutError(f"overlay step still running after {timeout:g} s; killed")
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def call_in_overlay(fn: Callable[[], _T], workdir: Path, *, timeout: float = 300.0) -> _T:
    """Run ``fn()`` in a forked child inside a fresh overlay root and return its result.

    Everything ``fn`` does — install the shim, run commands, check files — happens in one
    mount namespace; the host sees none of it. The result (or exception) must pickle;
    an exception raised inside is re-raised here with the inner traceback as a note.
    ``fn`` runs in its own process group, so that a timeout ends all it started; it is
    thus not the terminal's foreground group: give commands that read a terminal a pty.

    Raises:
        LayerUnavailable: not root, or the kernel refuses a namespace or overlayfs.
        TimeoutError: ``fn`` ran longer than ``timeout`` (its process group is killed).
    """
    reason = probe()
    if reason is not None:
        raise LayerUnavailable(f"overlay root unavailable: {reason}")
    workdir = _check_workdir(workdir)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's code
        os.close(rfd)
        try:
            _child(fn, workdir, wfd)
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        data = _read_reply(rfd, timeout)
    except BaseException:  # a timeout or ^C: end everything the child started, then wait
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        raise
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    return cast(_T, _unpack(data))


def _unpack(data: bytes) -> object:
    if not data:
        raise InternalError("overlay child exited without a result")
    # The bytes come from our own forked child over a private pipe.
    ok, value, inner = pickle.loads(data)  # noqa: S301
    if ok:
        return value
    if isinstance(value, BaseException):
        value.add_note(f"inside the overlay:\n{inner}")
        raise value
    raise InternalError(f"overlay child failed: {inner}")


def run_in_overlay(
    argv: Sequence[str],
    workdir: Path,
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[bytes]:
    """``subprocess.run(argv, capture_output=True)`` inside a fresh overlay root.

    Raises:
        LayerUnavailable: see call_in_overlay.
        subprocess.TimeoutExpired: the command ran longer than ``timeout``.
    """
    args, data, environ = list(argv), input, dict(env) if env is not None else None

    def step() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args, input=data, env=environ, capture_output=True, timeout=timeout, check=False
        )

    return call_in_overlay(step, workdir, timeout=timeout + 30)


def _probe_child(scratch: Path) -> None:
    try:
        _unshare_mounts()
        (scratch / "lower").mkdir()
        _mount_overlay(str(scratch / "lower"), scratch)
    except OSError:
        os._exit(1)
    os._exit(0)


@functools.cache
def probe() -> str | None:
    """None when overlay roots work here, else a reason to show in a skip message.

    Tries the real thing once per process: a private namespace and one overlay mount.
    """
    if os.geteuid() != 0:
        return "needs root (mount namespaces and overlayfs mounts)"
    with tempfile.TemporaryDirectory(prefix="agentsh-probe-") as scratch:
        pid = os.fork()
        if pid == 0:
            _probe_child(Path(scratch))
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "the kernel refused a private mount namespace or an overlayfs mount"
    return None
