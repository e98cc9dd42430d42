"""Reading a waiting tracee (``enforce.tracee``: bounded argv reads, /proc helpers) and
finding the image its exec would run (``enforce.image``: path resolution in the tracee's
context — cwd, dirfd, /proc/self, symlinks, ``..`` — and the ``#!`` parser checked against
what the kernel really does)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentsh.enforce import image, tracee
from agentsh.enforce.tracee import ExecArgs, Unreadable

AT_FDCWD = tracee.AT_FDCWD


@contextmanager
def blocked_child(cwd: Path, fds: dict[int, str] | None = None) -> Iterator[int]:
    """A forked child that chdirs to ``cwd``, opens ``fds`` (fd number -> path) and waits:
    a stand-in for a tracee stopped in a notification (its memory is a copy of ours)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.chdir(cwd)
            for num, path in (fds or {}).items():
                os.dup2(os.open(path, os.O_RDONLY | os.O_PATH), num)
            os.write(ready_w, b"!")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"!"
    os.close(ready_r)
    try:
        yield pid
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)


def _argv_array(
    *args: bytes,
) -> tuple[ctypes.Array[ctypes.c_char_p], list[ctypes.Array[ctypes.c_char]]]:
    keep = [ctypes.create_string_buffer(a) for a in args]
    arr = (ctypes.c_char_p * (len(args) + 1))(*[ctypes.addressof(k) for k in keep], None)  # type: ignore[misc]
    return arr, keep


def test_s32_reads_the_low_half_signed() -> None:
    assert tracee.s32(0xFFFFFF9C) == AT_FDCWD
    assert tracee.s32(0x12345678FFFFFF9C) == AT_FDCWD
    assert tracee.s32((1 << 32) | 5) == 5


def test_read_exec_reads_path_and_argv(tmp_path: Path) -> None:
    path = ctypes.create_string_buffer(b"/usr/bin/true")
    arr, _keep = _argv_array(b"true", b"--flag", "é".encode())
    with blocked_child(tmp_path) as pid:
        call = tracee.read_exec(
            pid, 59, (ctypes.addressof(path), ctypes.addressof(arr), 0, 0, 0, 0)
        )
        at = tracee.read_exec(
            pid, 322, (0xFFFFFF9C, ctypes.addressof(path), ctypes.addressof(arr), 0, 0x1000, 0)
        )
    assert call == ExecArgs(AT_FDCWD, b"/usr/bin/true", (b"true", b"--flag", "é".encode()), 0)
    assert (at.dirfd, at.flags) == (AT_FDCWD, 0x1000)


def test_read_exec_refuses_what_it_cannot_read_or_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ctypes.create_string_buffer(b"/bin/x")
    arr, _keep = _argv_array(*[b"a"] * 20)
    long_path = ctypes.create_string_buffer(b"/" + b"x" * 5000)
    with blocked_child(tmp_path) as pid:
        p, a = ctypes.addressof(path), ctypes.addressof(arr)
        assert tracee.read_exec(pid, 59, (p, 0, 0, 0, 0, 0)).argv == ()  # NULL argv
        with pytest.raises(Unreadable, match="NULL"):
            tracee.read_exec(pid, 59, (0, a, 0, 0, 0, 0))
        with pytest.raises(Unreadable, match=r"unreadable|unmapped"):
            tracee.read_exec(pid, 59, (0x10, a, 0, 0, 0, 0))
        with pytest.raises(Unreadable, match="longer than 4096"):
            tracee.read_exec(pid, 59, (ctypes.addressof(long_path), a, 0, 0, 0, 0))
        monkeypatch.setattr(tracee, "MAX_ARGS", 10)
        with pytest.raises(Unreadable, match="more than 10 arguments"):
            tracee.read_exec(pid, 59, (p, a, 0, 0, 0, 0))
        monkeypatch.setattr(tracee, "MAX_ARGS", 100)
        monkeypatch.setattr(tracee, "MAX_ARGV_BYTES", 30)
        with pytest.raises(Unreadable, match="longer than 30 bytes"):
            tracee.read_exec(pid, 59, (p, a, 0, 0, 0, 0))
    with pytest.raises(Unreadable, match="cannot open the memory"):
        tracee.read_exec(pid, 59, (p, a, 0, 0, 0, 0))  # the child is gone


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    prog = tmp_path / "bin" / "prog"
    prog.write_text("#!/bin/sh\necho prog\n")
    prog.chmod(0o755)
    (tmp_path / "bin" / "link").symlink_to("prog")
    (tmp_path / "abs").symlink_to(prog)
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "to-self-fd").symlink_to("/proc/self/fd/7")
    (tmp_path / "work").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    ("dirfd", "path", "flags", "expected"),
    [
        (AT_FDCWD, b"../bin/prog", 0, "bin/prog"),
        (AT_FDCWD, b"../bin/link", 0, "bin/prog"),
        (AT_FDCWD, b"../abs", 0, "bin/prog"),
        (AT_FDCWD, b"./../bin/./../bin/prog", 0, "bin/prog"),
        (AT_FDCWD, b"/proc/self/fd/7", 0, "bin/prog"),  # the tracee's fd 7, not ours
        (AT_FDCWD, b"/dev/fd/7", 0, "bin/prog"),
        (AT_FDCWD, b"../to-self-fd", 0, "bin/prog"),
        (AT_FDCWD, b"/proc/self/cwd/../bin/prog", 0, "bin/prog"),
        (AT_FDCWD, b"/proc/thread-self/fd/7", 0, "bin/prog"),
        (8, b"prog", 0, "bin/prog"),  # execveat relative to a dirfd
        (7, b"", tracee.AT_EMPTY_PATH, "bin/prog"),  # fexecve
    ],
)
def test_resolve_in_the_tracees_context(
    tree: Path, dirfd: int, path: bytes, flags: int, expected: str
) -> None:
    fds = {7: str(tree / "bin" / "prog"), 8: str(tree / "bin")}
    with blocked_child(tree / "work", fds) as pid:
        img = image.resolve(pid, ExecArgs(dirfd, path, (), flags))
    assert img.path == str(tree / expected)
    assert img.head.startswith(b"#!/bin/sh\n")
    st = os.stat(tree / expected)
    assert (img.dev, img.ino) == (st.st_dev, st.st_ino)


def test_resolve_follows_proc_self_root_and_exe(tree: Path) -> None:
    with blocked_child(tree / "work") as pid:
        assert image.resolve(
            pid, ExecArgs(AT_FDCWD, b"/proc/self/root/usr/bin/true", (), 0)
        ).path == (os.path.realpath("/usr/bin/true"))
        exe = image.resolve(pid, ExecArgs(AT_FDCWD, b"/proc/self/exe", (), 0))
    assert exe.path == os.path.realpath(sys.executable)
    assert image.is_elf(exe.head)


@pytest.mark.parametrize(
    ("path", "flags", "err"),
    [
        (b"../nope", 0, errno.ENOENT),
        (b"../bin/prog/x", 0, errno.ENOTDIR),
        (b"../loop", 0, errno.ELOOP),
        (b"../bin", 0, errno.EACCES),  # a directory
        (b"/dev/null", 0, errno.EACCES),  # not a regular file
        (b"../bin/link", tracee.AT_SYMLINK_NOFOLLOW, errno.ELOOP),
        (b"", 0, errno.ENOENT),
    ],
)
def test_resolve_fails_like_the_kernel(tree: Path, path: bytes, flags: int, err: int) -> None:
    with blocked_child(tree / "work") as pid, pytest.raises(OSError, match=os.strerror(err)) as exc:
        image.resolve(pid, ExecArgs(AT_FDCWD, path, (), flags))
    assert exc.value.errno == err


def test_trusted_alias_needs_a_root_owned_symlink_in_a_closed_directory(tree: Path) -> None:
    py = Path("/usr/bin/python3")
    assert py.is_symlink()
    (tree / "open").mkdir(mode=0o777)
    (tree / "open").chmod(0o777)
    (tree / "open" / "link").symlink_to(tree / "bin" / "prog")
    os.lchown(tree / "bin" / "link", 65534, 65534)
    (tree / "bin" / "root-link").symlink_to("prog")
    with blocked_child(tree / "work") as pid:

        def alias(path: bytes) -> bool:
            return image.resolve(pid, ExecArgs(AT_FDCWD, path, (), 0)).trusted_alias

        assert alias(bytes(py))
        assert alias(b"../bin/root-link")  # whether the policy lets the tree write there
        assert not alias(b"../bin/link")  # is the checker's question (shell.supervise)
        assert not alias(b"../open/link")
        assert not alias(b"../bin/prog")  # no alias at all


def test_stat_and_fd_helpers(tmp_path: Path) -> None:
    with blocked_child(tmp_path) as pid:
        st = tracee.stat(pid)
        assert st is not None
        assert (st.pid, st.ppid, st.threads) == (pid, os.getpid(), 1)
        assert tracee.tgid(pid) == pid
        assert tracee.cwd(pid) == str(tmp_path)
    pidfd = os.pidfd_open(os.getpid())
    try:
        assert tracee.fd_target_pid(os.getpid(), pidfd) == os.getpid()
        assert tracee.fd_target_pid(os.getpid(), 0) is None
    finally:
        os.close(pidfd)
    assert tracee.stat(pid) is None


# --------------------------------------------------------------------------- #! lines

SHEBANGS = [
    (b"#!/bin/sh\n", (b"/bin/sh", None)),
    (b"#! /bin/sh -e\n", (b"/bin/sh", b"-e")),
    (b"#!\t/bin/sh\t-x\t\n", (b"/bin/sh", b"-x")),
    (b"#!/usr/bin/env python3 -u\n", (b"/usr/bin/env", b"python3 -u")),  # one argument
    (b"#!/bin/sh   \nrest", (b"/bin/sh", None)),
    (b"#!/bin/sh", (b"/bin/sh", None)),  # no newline, short file
    (b"#!/bin/sh \0\0\n", (b"/bin/sh", b"")),  # an empty argument
    (b"#!/bin/sh\0junk\n", (b"/bin/sh", None)),
    (b"\x7fELF\x02\x01\x01", None),
    (b"echo no shebang\n", None),
]


@pytest.mark.parametrize(("head", "expected"), SHEBANGS)
def test_shebang_parse(head: bytes, expected: tuple[bytes, bytes | None] | None) -> None:
    assert image.shebang(head) == expected


@pytest.mark.parametrize("head", [b"#!\n", b"#!   \t\n", b"#!" + b"a" * 300])
def test_shebang_lines_the_kernel_refuses(head: bytes) -> None:
    with pytest.raises(OSError, match="#!") as exc:
        image.shebang(head)
    assert exc.value.errno == errno.ENOEXEC


@pytest.mark.parametrize(
    "tail", [b"\n", b" -e\n", b"\t-x\t\n", b" one two\n", b"   \n", b" \0\0\n", b"", b" a" * 200]
)
def test_shebang_parse_agrees_with_the_kernel(tmp_path: Path, tail: bytes) -> None:
    """Conformance: exec a script whose interpreter prints its argv; the kernel's argv
    must be [interpreter, arg?, script, ...] exactly as ``shebang`` predicts."""
    show = tmp_path / "show"
    show.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv))\n")
    show.chmod(0o755)
    script = tmp_path / "script"
    script.write_bytes(b"#!" + bytes(show) + tail)
    script.chmod(0o755)
    try:
        name, arg = image.shebang(script.read_bytes()[:256]) or (b"", None)
    except OSError:
        name, arg = b"", None
    run = subprocess.run([str(script), "x"], capture_output=True, check=False)
    if not name:
        assert run.returncode != 0
        return
    got = json.loads(run.stdout)
    expected = [str(show), *([arg.decode()] if arg is not None else []), str(script), "x"]
    assert got == expected


def test_a_fence_stops_magic_links_into_processes_outside_the_tree(tree: Path) -> None:
    """/proc/PID/{fd,cwd,root,exe} of a process outside the tree hand over its files:
    with a fence up, following one raises Fenced (EACCES, what Landlock answers); the
    tracee's own links, and paths without magic links, still resolve."""
    outside = {7: str(tree / "bin" / "prog")}
    with blocked_child(tree / "work", outside) as other, blocked_child(tree / "work") as pid:

        def member(p: int) -> bool:
            return p == pid

        def target(path: bytes) -> str:
            fd = image.open_target(pid, ExecArgs(AT_FDCWD, path, (), 0))
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)

        links = (
            b"/proc/%d/fd/7" % other,
            b"/proc/%d/cwd/x" % other,
            b"/proc/%d/task/%d/fd/7" % (other, other),
        )
        assert target(links[0]) == str(tree / "bin" / "prog")  # no fence: root may
        with image.fenced(member):
            for link in links:
                with pytest.raises(image.Fenced) as err:
                    target(link)
                assert err.value.errno == errno.EACCES
                assert err.value.path.startswith(f"/proc/{other}/")
            assert target(b"/proc/self/cwd") == str(tree / "work")  # its own
            assert target(b"/proc/%d/cwd" % pid) == str(tree / "work")
            assert target(b"../bin/prog") == str(tree / "bin" / "prog")
        assert target(links[0]) == str(tree / "bin" / "prog")  # the fence is down again
