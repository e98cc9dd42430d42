"""The classic-BPF assembler and the filter layout: decoded, interpreted, and run for real
in forked children (no_new_privs + the filter, then observe errno results)."""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from agentsh.enforce import bpf, seccomp
from agentsh.enforce.bpf import ArgRule, Errno, FilterSpec, Insn, SeccompData

TIOCSTI, TIOCLINUX, FIONREAD = 0x5412, 0x541C, 0x541B
NR_GETPID, NR_GETPPID, NR_GETUID, NR_IOCTL, NR_EXECVE = 39, 110, 102, 16, 59


def test_constants_match_the_kernel_headers() -> None:
    # KERNEL-FACTS §1-§2; a different header set must make this fail, not the filter.
    assert bpf.AUDIT_ARCH_X86_64 == 0xC000003E == 0x80000000 | 0x40000000 | 62
    assert bpf.AUDIT_ARCH_I386 == 0x40000003
    assert bpf.X32_SYSCALL_BIT == 0x40000000
    assert (bpf.RET_KILL_PROCESS, bpf.RET_ERRNO, bpf.RET_USER_NOTIF) == (
        0x80000000,
        0x00050000,
        0x7FC00000,
    )
    assert (bpf.RET_TRACE, bpf.RET_ALLOW, bpf.RET_DATA) == (0x7FF00000, 0x7FFF0000, 0xFFFF)
    assert (bpf.LD_W_ABS, bpf.JMP_JEQ_K, bpf.JMP_JGE_K, bpf.JMP_JSET_K, bpf.RET_K) == (
        0x20,
        0x15,
        0x35,
        0x45,
        0x06,
    )
    assert [bpf.off_arg_low(i) for i in range(6)] == [16, 24, 32, 40, 48, 56]
    assert len(Insn(0).encode()) == 8
    assert bpf.MARKER_NR < bpf.X32_SYSCALL_BIT
    assert 133 < bpf.MARKER_ERRNO <= 4095  # above every errno Linux defines


def test_sock_filter_encoding_is_code_jt_jf_k_little_endian() -> None:
    assert Insn(0x15, 1, 2, 0xC000003E).encode() == bytes.fromhex("150001023e0000c0")
    prog = bpf.assemble([bpf.load(4), bpf.ret(bpf.RET_ALLOW)])
    assert bpf.disassemble(prog) == [Insn(0x20, 0, 0, 4), Insn(0x06, 0, 0, 0x7FFF0000)]


@pytest.mark.parametrize(
    ("insns", "why"),
    [
        ([], "1..4096"),
        ([bpf.ret(0)] * 4097, "1..4096"),
        ([bpf.load(0)], "end in RET"),
        ([bpf.jeq(1, 1, 0), bpf.ret(0)], "past the end"),
        ([bpf.jeq(1, 0, 300), bpf.ret(0)], "past the end"),
    ],
)
def test_assemble_refuses_programs_the_kernel_would_refuse(insns: list[Insn], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        bpf.assemble(insns)


def test_jump_offsets_are_u8() -> None:
    with pytest.raises(ValueError, match="jump offset"):
        Insn(0x15, 256, 0, 0).encode()


def test_header_checks_arch_then_x32_before_any_dispatch() -> None:
    insns = bpf.disassemble(bpf.build(FilterSpec(notify=(NR_EXECVE,))))
    assert insns[:6] == [
        Insn(0x20, 0, 0, 4),  # A = arch
        Insn(0x15, 1, 0, 0xC000003E),  # arch == x86_64 ? skip the kill
        Insn(0x06, 0, 0, 0x80000000),  # KILL_PROCESS
        Insn(0x20, 0, 0, 0),  # A = nr
        Insn(0x35, 0, 1, 0x40000000),  # nr >= x32 bit (also negative nr) ?
        Insn(0x06, 0, 0, 0x00050000 | errno.ENOSYS),
    ]
    assert insns[-1] == Insn(0x06, 0, 0, bpf.RET_ALLOW)


SPEC = FilterSpec(
    notify=(NR_EXECVE, 322, 62),
    errno=((165, errno.EPERM),),
    args=(
        ArgRule(NR_IOCTL, 1, (TIOCSTI, TIOCLINUX), "notify", "allow"),
        ArgRule(135, 0, (0xFFFFFFFF, 0), "allow", Errno(errno.EPERM)),
    ),
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SeccompData(NR_EXECVE), bpf.RET_USER_NOTIF),
        (SeccompData(322), bpf.RET_USER_NOTIF),
        (SeccompData(62, args=(1, 9)), bpf.RET_USER_NOTIF),
        (SeccompData(165), bpf.RET_ERRNO | errno.EPERM),
        (SeccompData(NR_GETPID), bpf.RET_ALLOW),
        # i386 int $0x80 (getpid is 20 there; execve is 11): killed whatever the number.
        (SeccompData(11, arch=bpf.AUDIT_ARCH_I386), bpf.RET_KILL_PROCESS),
        (SeccompData(NR_EXECVE, arch=bpf.AUDIT_ARCH_I386), bpf.RET_KILL_PROCESS),
        (SeccompData(NR_EXECVE, arch=0), bpf.RET_KILL_PROCESS),
        # x32 numbers and negative numbers never reach the dispatch.
        (SeccompData(0x40000000 | 520), bpf.RET_ERRNO | errno.ENOSYS),
        (SeccompData(0x40000000 | NR_GETPID), bpf.RET_ERRNO | errno.ENOSYS),
        (SeccompData(-1), bpf.RET_ERRNO | errno.ENOSYS),
        # ioctl: only the low 32 bits of the request count.
        (SeccompData(NR_IOCTL, args=(0, TIOCSTI)), bpf.RET_USER_NOTIF),
        (SeccompData(NR_IOCTL, args=(0, (1 << 32) | TIOCSTI)), bpf.RET_USER_NOTIF),
        (SeccompData(NR_IOCTL, args=(0, (0xDEAD << 32) | TIOCLINUX)), bpf.RET_USER_NOTIF),
        (SeccompData(NR_IOCTL, args=(0, FIONREAD)), bpf.RET_ALLOW),
        (SeccompData(NR_IOCTL, args=(TIOCSTI, FIONREAD)), bpf.RET_ALLOW),
        # personality: the query (0xffffffff) and PER_LINUX pass, changes fail.
        (SeccompData(135, args=(0xFFFFFFFF,)), bpf.RET_ALLOW),
        (SeccompData(135, args=(0xFFFFFFFFFFFFFFFF,)), bpf.RET_ALLOW),
        (SeccompData(135, args=(0,)), bpf.RET_ALLOW),
        (SeccompData(135, args=(0x0040000,)), bpf.RET_ERRNO | errno.EPERM),
        # the governed marker
        (
            SeccompData(bpf.MARKER_NR, args=(bpf.MARKER_ARG0, bpf.MARKER_ARG1)),
            bpf.RET_ERRNO | bpf.MARKER_ERRNO,
        ),
        (
            SeccompData(bpf.MARKER_NR, args=((7 << 32) | bpf.MARKER_ARG0, bpf.MARKER_ARG1)),
            bpf.RET_ERRNO | bpf.MARKER_ERRNO,
        ),
        (SeccompData(bpf.MARKER_NR, args=(bpf.MARKER_ARG0, 0)), bpf.RET_ALLOW),
        (SeccompData(bpf.MARKER_NR, args=(0, bpf.MARKER_ARG1)), bpf.RET_ALLOW),
    ],
)
def test_interpreted_routes(data: SeccompData, expected: int) -> None:
    assert bpf.run(bpf.build(SPEC), data) == expected


def test_every_other_x86_64_syscall_is_allowed_without_arguments_mattering() -> None:
    prog = bpf.build(SPEC)
    routed = {NR_EXECVE, 322, 62, 165, NR_IOCTL, 135}
    for nr in range(0, 512):
        if nr in routed:
            continue
        for args in ((0,) * 6, (0xFFFFFFFFFFFFFFFF,) * 6, (TIOCSTI,) * 6):
            assert bpf.run(prog, SeccompData(nr, args=args)) == bpf.RET_ALLOW, nr


def test_trace_mode_routes_to_ret_trace() -> None:
    spec = FilterSpec(
        notify=(NR_EXECVE,), args=(ArgRule(NR_IOCTL, 1, (TIOCSTI,), "notify", "allow"),), trace=True
    )
    prog = bpf.build(spec)
    assert bpf.run(prog, SeccompData(NR_EXECVE)) == bpf.RET_TRACE
    assert bpf.run(prog, SeccompData(NR_IOCTL, args=(0, TIOCSTI))) == bpf.RET_TRACE
    assert bpf.RET_USER_NOTIF not in {i.k for i in bpf.disassemble(prog)}


def test_a_syscall_routed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="routed twice"):
        FilterSpec(notify=(59,), errno=((59, 1),))
    with pytest.raises(ValueError, match=r"0\.\.0x3fffffff"):
        FilterSpec(notify=(0x40000000 | 59,))
    with pytest.raises(ValueError, match="errno"):
        Errno(0)


# --------------------------------------------------------------------------- real kernel


def _in_child(prog: bytes, probe: Callable[[], Any], *, listener: bool = False) -> tuple[int, Any]:
    """Fork; the child sets no_new_privs, installs ``prog`` and reports ``probe()`` as JSON.
    Returns (wait status, result or None)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            seccomp.set_no_new_privs()
            seccomp.install(prog, listener=listener)
            os.write(w, json.dumps(probe()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    return status, (json.loads(data) if data else None)


def _errno_of(nr: int, *args: int) -> int:
    try:
        seccomp.syscall(nr, *args)
    except OSError as err:
        return err.errno or 0
    return 0


def test_kernel_runs_the_filter_as_interpreted() -> None:
    spec = FilterSpec(
        errno=((NR_GETUID, errno.EACCES),),
        args=(ArgRule(NR_IOCTL, 1, (TIOCSTI, TIOCLINUX), Errno(errno.EPERM), "allow"),),
    )

    def probe() -> dict[str, int]:
        fd = os.open("/dev/null", os.O_RDONLY)
        return {
            "getuid": _errno_of(NR_GETUID),
            "getpid": _errno_of(NR_GETPID),
            "tiocsti": _errno_of(NR_IOCTL, fd, TIOCSTI, 0),
            "tiocsti_high": _errno_of(NR_IOCTL, fd, (1 << 32) | TIOCSTI, 0),
            "tioclinux": _errno_of(NR_IOCTL, fd, TIOCLINUX, 0),
            "fionread": _errno_of(NR_IOCTL, fd, FIONREAD, 0),  # /dev/null: ENOTTY from the driver
            "marker": _errno_of(bpf.MARKER_NR, bpf.MARKER_ARG0, bpf.MARKER_ARG1),
            "marker_wrong": _errno_of(bpf.MARKER_NR, bpf.MARKER_ARG0, 1),
            "x32_getpid": _errno_of(0x40000000 | NR_GETPID),
            "no_new_privs": int(seccomp.no_new_privs()),
        }

    status, got = _in_child(bpf.build(spec), probe)
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0
    assert got == {
        "getuid": errno.EACCES,
        "getpid": 0,
        "tiocsti": errno.EPERM,
        "tiocsti_high": errno.EPERM,
        "tioclinux": errno.EPERM,
        "fionread": errno.ENOTTY,
        "marker": bpf.MARKER_ERRNO,
        "marker_wrong": errno.ENOSYS,
        "x32_getpid": errno.ENOSYS,
        "no_new_privs": 1,
    }


def test_marker_outside_any_filter_is_enosys() -> None:
    assert _errno_of(bpf.MARKER_NR, bpf.MARKER_ARG0, bpf.MARKER_ARG1) == errno.ENOSYS


def test_notify_route_without_a_listener_fails_closed_with_enosys() -> None:
    status, got = _in_child(
        bpf.build(FilterSpec(notify=(NR_GETPPID,))), lambda: _errno_of(NR_GETPPID)
    )
    assert os.WIFEXITED(status)
    assert got == errno.ENOSYS


def _int80_getpid() -> int:
    # mov eax, 20 (i386 getpid); int 0x80; ret — the i386 entry from 64-bit code.
    code = bytes.fromhex("b814000000cd80c3")
    mem = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    mem.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())


def test_i386_int80_cannot_bypass_the_filter() -> None:
    assert _int80_getpid() == os.getpid()  # IA32 emulation is on: the door exists
    status, got = _in_child(bpf.build(FilterSpec(notify=(NR_EXECVE,))), _int80_getpid)
    assert got is None
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGSYS
