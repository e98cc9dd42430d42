"""seccomp(2) and seccomp_unotify(2) wrappers against the running kernel: constants and
struct sizes, then the notify protocol end to end with a forked target."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agentsh.enforce import bpf, seccomp
from agentsh.enforce.bpf import FilterSpec

NR_GETPPID, NR_GETUID = 110, 102


def test_constants_and_ioctl_numbers() -> None:
    def ioc(direction: int, nr: int, size: int) -> int:
        return (direction << 30) | (size << 16) | (ord("!") << 8) | nr

    assert seccomp.IOCTL_NOTIF_RECV == ioc(3, 0, 80) == 0xC0502100
    assert seccomp.IOCTL_NOTIF_SEND == ioc(3, 1, 24) == 0xC0182101
    assert seccomp.IOCTL_NOTIF_ID_VALID == ioc(1, 2, 8) == 0x40082102
    assert seccomp.IOCTL_NOTIF_ADDFD == ioc(1, 3, 24) == 0x40182103
    assert seccomp.IOCTL_NOTIF_SET_FLAGS == ioc(1, 4, 8) == 0x40082104
    assert (seccomp.NR_SECCOMP, seccomp.NR_PIDFD_GETFD, seccomp.NR_PROCESS_VM_READV) == (
        317,
        438,
        310,
    )
    assert (seccomp.FLAG_NEW_LISTENER, seccomp.FLAG_WAIT_KILLABLE_RECV) == (0x8, 0x20)
    assert seccomp.USER_NOTIF_FLAG_CONTINUE == 1
    assert seccomp.USER_NOTIF_FD_SYNC_WAKE_UP == 1
    assert (seccomp.PR_SET_NO_NEW_PRIVS, seccomp.PR_GET_NO_NEW_PRIVS) == (38, 39)


def test_struct_sizes_match_the_kernel() -> None:
    assert (seccomp.NOTIF.size, seccomp.RESP.size, seccomp.ADDFD.size, seccomp.SIZES.size) == (
        80,
        24,
        24,
        6,
    )
    assert seccomp.notif_sizes() == (80, 24, 64)
    assert ctypes.sizeof(seccomp._SockFprog) == 16
    assert seccomp._SockFprog.filter.offset == 8


def test_probe_reports_user_notify_and_trace() -> None:
    support = seccomp.probe()
    assert support.usable, support.reason
    assert support.trace
    assert seccomp.action_available(bpf.RET_KILL_PROCESS)
    assert not seccomp.action_available(0x7FFE0000)  # no such action
    seccomp.check_layout()  # does not raise here


# --------------------------------------------------------------------------- a target


@contextmanager
def target(
    body: Callable[[], Any], spec: FilterSpec, *, flags: int = 0
) -> Iterator[tuple[int, seccomp.Listener, Callable[[], Any]]]:
    """Fork a child that installs ``spec`` with a listener, sends the listener fd over a
    socketpair (with one data byte: an empty SOCK_STREAM message carries nothing) and then
    runs ``body``. Yields (pid, listener, result) where result() waits for the child and
    returns body()'s JSON result."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            parent.close()
            os.close(r)
            seccomp.set_no_new_privs()
            fd = seccomp.install(bpf.build(spec), listener=True, flags=flags)
            assert fd is not None
            socket.send_fds(child, [b"L"], [fd])
            os.close(fd)
            child.recv(1)  # the test is ready
            os.write(w, json.dumps(body()).encode())
        finally:
            os._exit(0)
    child.close()
    os.close(w)
    data, fds, _, _ = socket.recv_fds(parent, 1, 1)
    assert data == b"L"
    assert len(fds) == 1
    listener = seccomp.Listener(fds[0])
    parent.send(b"G")

    def result() -> Any:
        with os.fdopen(r, "rb") as f:
            out = f.read()
        os.waitpid(pid, 0)
        return json.loads(out) if out else None

    try:
        yield pid, listener, result
    finally:
        parent.close()
        os.close(listener.fd)


def _call(nr: int, *args: int) -> int | str:
    try:
        return seccomp.syscall(nr, *args)
    except OSError as err:
        return errno.errorcode.get(err.errno or 0, str(err.errno))


SPEC = FilterSpec(notify=(NR_GETPPID, NR_GETUID))


def test_notify_protocol_continue_fail_succeed() -> None:
    def body() -> list[Any]:
        return [_call(NR_GETPPID), _call(NR_GETPPID), _call(NR_GETPPID), os.getppid()]

    with target(body, SPEC) as (pid, listener, result):
        n = listener.recv()
        assert (n.pid, n.nr, n.arch, n.flags) == (pid, NR_GETPPID, bpf.AUDIT_ARCH_X86_64, 0)
        assert listener.id_valid(n.id)
        assert listener.allow(n.id)
        assert not listener.id_valid(n.id)  # answered
        assert not listener.allow(n.id)  # EINPROGRESS or ENOENT: already answered
        n2 = listener.recv()
        assert n2.id != n.id
        assert listener.fail(n2.id, errno.EPERM)
        n3 = listener.recv()
        assert listener.succeed(n3.id, 12345)
        n4 = listener.recv()  # os.getppid()
        listener.allow(n4.id)
        got = result()
    ppid = os.getpid()
    assert got == [ppid, "EPERM", 12345, ppid]


def test_recv_needs_a_zeroed_buffer() -> None:
    with target(lambda: _call(NR_GETPPID), SPEC) as (_, listener, result):
        buf = bytearray(80)
        buf[5] = 1
        with pytest.raises(OSError, match=os.strerror(errno.EINVAL)) as exc:
            fcntl.ioctl(listener.fd, seccomp.IOCTL_NOTIF_RECV, buf, True)
        assert exc.value.errno == errno.EINVAL
        listener.allow(listener.recv().id)
        assert result() == os.getpid()


def test_set_flags_sync_wake_up_by_value() -> None:
    with target(lambda: _call(NR_GETPPID), SPEC) as (_, listener, result):
        assert listener.set_flags(seccomp.USER_NOTIF_FD_SYNC_WAKE_UP)
        assert not listener.set_flags(2)  # unknown flag: EINVAL
        listener.allow(listener.recv().id)
        assert result() == os.getpid()


def test_a_second_listener_in_the_chain_is_ebusy_but_plain_filters_stack() -> None:
    def body() -> list[str]:
        out = []
        for listen in (True, False):
            try:
                seccomp.install(bpf.build(FilterSpec()), listener=listen)
                out.append("ok")
            except OSError as err:
                out.append(errno.errorcode[err.errno or 0])
        return out

    with target(body, SPEC) as (_, _listener, result):
        assert result() == ["EBUSY", "ok"]


def test_addfd_installs_an_fd_in_the_target() -> None:
    def body() -> str:
        fd = seccomp.syscall(NR_GETUID)  # answered with the number of an added fd
        os.write(fd, b"through the added fd")
        return "done"

    r, w = os.pipe()
    with target(body, SPEC) as (_, listener, result):
        n = listener.recv()
        newfd = listener.addfd(n.id, w)
        assert newfd > 2
        assert listener.succeed(n.id, newfd)
        os.close(w)
        assert result() == "done"
    assert os.read(r, 100) == b"through the added fd"
    os.close(r)


def test_losing_the_listener_fails_pending_and_later_calls_with_enosys() -> None:
    def body() -> list[Any]:
        return [_call(NR_GETPPID), _call(NR_GETUID)]

    with target(body, SPEC) as (_, listener, result):
        listener.recv()  # the target now waits for an answer that never comes
        os.close(listener.fd)
        listener.fd = os.open("/dev/null", os.O_RDONLY)  # for the context's close
        assert result() == ["ENOSYS", "ENOSYS"]


def test_pollhup_and_enoent_after_the_last_target_exits() -> None:
    with target(lambda: "bye", SPEC) as (_, listener, result):
        assert result() == "bye"
        poller = select.poll()
        poller.register(listener.fd, select.POLLIN)
        events = poller.poll(5000)
        assert events
        assert events[0][1] & select.POLLHUP
        with pytest.raises(OSError, match=os.strerror(errno.ENOENT)) as exc:
            listener.recv()
        assert exc.value.errno == errno.ENOENT


def test_process_vm_readv_and_pidfd_getfd_read_the_target() -> None:
    secret = ctypes.create_string_buffer(b"/usr/bin/true\0tail")
    addr = ctypes.addressof(secret)

    def body() -> int | str:
        return _call(NR_GETPPID)

    r, w = os.pipe()
    with target(body, SPEC) as (pid, listener, result):
        n = listener.recv()  # the target is blocked: its memory is a copy of ours
        assert seccomp.process_vm_readv(pid, addr, 13) == b"/usr/bin/true"
        with pytest.raises(OSError, match=os.strerror(errno.EFAULT)) as exc:
            seccomp.process_vm_readv(pid, 0x10, 8)
        assert exc.value.errno == errno.EFAULT
        pidfd = seccomp.pidfd_open(pid)
        dup = seccomp.pidfd_getfd(pidfd, w)
        assert os.get_inheritable(dup) is False
        os.write(dup, b"x")
        assert os.read(r, 1) == b"x"
        for fd in (dup, pidfd, r, w):
            os.close(fd)
        listener.allow(n.id)
        assert result() == os.getpid()


def test_install_refuses_a_malformed_program() -> None:
    with pytest.raises(ValueError, match="sock_filter"):
        seccomp.install(b"\0" * 7, listener=False)


def test_notification_layout_unpacks_args() -> None:
    raw = seccomp.NOTIF.pack(7, 42, 0, 59, bpf.AUDIT_ARCH_X86_64, 0x1000, 1, 2, 3, 4, 5, 6)
    assert len(raw) == 80
    assert struct.unpack_from("<6Q", raw, 32) == (1, 2, 3, 4, 5, 6)
