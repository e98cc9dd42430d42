"""The governed filter's routes (govern.filter_spec, run in the BPF interpreter): the
owner-setting calls of enforce.fdowner and every hardening group reach the supervisor,
and nothing else about descriptors does; fdowner's argument decoding."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from agentsh.enforce import bpf, fdowner, govern
from agentsh.enforce.bpf import SeccompData
from agentsh.enforce.seccomp import Notification

FIONREAD, TIOCSTI = 0x541B, 0x5412
PROG = bpf.build(govern.filter_spec())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SeccompData(fdowner.NR_FCNTL, args=(3, fcntl.F_SETOWN, 1)), bpf.RET_USER_NOTIF),
        (SeccompData(fdowner.NR_FCNTL, args=(3, fdowner.F_SETOWN_EX, 0)), bpf.RET_USER_NOTIF),
        (SeccompData(fdowner.NR_FCNTL, args=(3, (1 << 32) | 8, 1)), bpf.RET_USER_NOTIF),
        (SeccompData(fdowner.NR_IOCTL, args=(3, fdowner.FIOSETOWN, 0)), bpf.RET_USER_NOTIF),
        (SeccompData(fdowner.NR_IOCTL, args=(3, fdowner.SIOCSPGRP, 0)), bpf.RET_USER_NOTIF),
        (SeccompData(fdowner.NR_IOCTL, args=(3, TIOCSTI, 0)), bpf.RET_USER_NOTIF),
        (SeccompData(govern.NR_VHANGUP), bpf.RET_USER_NOTIF),
        # everything else about descriptors runs untouched
        (SeccompData(fdowner.NR_FCNTL, args=(3, fcntl.F_GETOWN, 0)), bpf.RET_ALLOW),
        (SeccompData(fdowner.NR_FCNTL, args=(3, fcntl.F_SETFL, 0)), bpf.RET_ALLOW),
        (SeccompData(fdowner.NR_FCNTL, args=(3, 10, 9)), bpf.RET_ALLOW),  # F_SETSIG
        (SeccompData(fdowner.NR_IOCTL, args=(3, FIONREAD, 0)), bpf.RET_ALLOW),
    ],
)
def test_the_filter_traps_only_the_owner_calls(data: SeccompData, expected: int) -> None:
    assert bpf.run(PROG, data) == expected


def test_without_signal_hardening_nothing_is_trapped() -> None:
    prog = bpf.build(govern.filter_spec(govern.Hardening(signals=False, tty_injection=False)))
    for data in (
        SeccompData(fdowner.NR_FCNTL, args=(3, fcntl.F_SETOWN, 1)),
        SeccompData(fdowner.NR_IOCTL, args=(3, fdowner.FIOSETOWN, 0)),
        SeccompData(govern.NR_VHANGUP),
    ):
        assert bpf.run(prog, data) == bpf.RET_ALLOW


def _note(nr: int, *args: int) -> Notification:
    return Notification(1, 1, 0, nr, bpf.AUDIT_ARCH_X86_64, 0, (*args, 0, 0, 0, 0)[:6])


@pytest.mark.parametrize(
    ("note", "traps"),
    [
        (_note(fdowner.NR_FCNTL, 3, fcntl.F_SETOWN), True),
        (_note(fdowner.NR_FCNTL, 3, (7 << 32) | fdowner.F_SETOWN_EX), True),
        (_note(fdowner.NR_FCNTL, 3, fcntl.F_GETOWN), False),
        (_note(fdowner.NR_IOCTL, 3, fdowner.SIOCSPGRP), True),
        (_note(fdowner.NR_IOCTL, 3, TIOCSTI), False),  # the tty injection refusal's
    ],
)
def test_traps(note: Notification, traps: bool) -> None:
    assert fdowner.traps(note) is traps


def test_f_setown_encodes_groups_as_negative_numbers() -> None:
    assert fdowner._from_value(42) == (fdowner.F_OWNER_PID, 42)
    assert fdowner._from_value(-42) == (fdowner.F_OWNER_PGRP, 42)
    assert fdowner._from_value(0) == (fdowner.F_OWNER_PID, 0)


def test_the_kernel_constants() -> None:
    # <asm-generic/fcntl.h>, <asm/sockios.h>; the kernel itself agrees on a socket:
    assert (fcntl.F_SETOWN, fdowner.F_SETOWN_EX) == (8, 15)
    a, b = socket.socketpair()
    with a, b:
        fcntl.ioctl(a, fdowner.FIOSETOWN, os.getpid().to_bytes(4, "little", signed=True))
        assert fcntl.fcntl(a, fcntl.F_GETOWN) == os.getpid()


@pytest.mark.parametrize("group", sorted(govern._GROUPS))
def test_every_hardening_group_is_trapped_and_named(group: str) -> None:
    """Each syscall of a group reaches the supervisor (which refuses it by name, see
    supervisor.HARDENED), and not when its switch is off."""
    from agentsh.enforce import supervisor

    off = bpf.build(govern.filter_spec(govern.Hardening(**{group: False})))
    for nr in govern._GROUPS[group]:
        assert bpf.run(PROG, SeccompData(nr)) == bpf.RET_USER_NOTIF, nr
        assert bpf.run(off, SeccompData(nr)) == bpf.RET_ALLOW, nr
        assert nr in supervisor.HARDENED, nr


def test_the_kernel_log_may_be_read_not_cleared() -> None:
    read_all, size = 3, 10  # SYSLOG_ACTION_READ_ALL, SYSLOG_ACTION_SIZE_BUFFER
    for action in (read_all, size, 2):
        assert bpf.run(PROG, SeccompData(govern.NR_SYSLOG, args=(action,))) == bpf.RET_ALLOW
    for action in govern.SYSLOG_CHANGES:
        data = SeccompData(govern.NR_SYSLOG, args=(action,))
        assert bpf.run(PROG, data) == bpf.RET_USER_NOTIF


@pytest.mark.parametrize("nr", [302, 142, 144, 203, 314])  # prlimit64, sched_set*
def test_limits_and_scheduling_of_the_caller_itself_pass_the_filter(nr: int) -> None:
    assert bpf.run(PROG, SeccompData(nr, args=(0, 7, 0))) == bpf.RET_ALLOW
    assert bpf.run(PROG, SeccompData(nr, args=(4242, 7, 0))) == bpf.RET_USER_NOTIF
    off = bpf.build(govern.filter_spec(govern.Hardening(ptrace=False)))
    assert bpf.run(off, SeccompData(nr, args=(4242, 7, 0))) == bpf.RET_ALLOW


@pytest.mark.parametrize("nr", [141, 251])  # setpriority, ioprio_set: (which, who)
def test_priority_calls_always_reach_the_supervisor(nr: int) -> None:
    assert bpf.run(PROG, SeccompData(nr, args=(0, 0, 5))) == bpf.RET_USER_NOTIF


def test_packet_sockets_reach_the_supervisor_and_others_pass() -> None:
    af_inet, af_unix, af_netlink = 2, 1, 16
    packet = SeccompData(govern.NR_SOCKET, args=(govern.AF_PACKET, 3, 768))
    assert bpf.run(PROG, packet) == bpf.RET_USER_NOTIF
    for family in (af_inet, af_unix, af_netlink):
        assert bpf.run(PROG, SeccompData(govern.NR_SOCKET, args=(family, 1, 0))) == bpf.RET_ALLOW
