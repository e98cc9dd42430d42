"""Classic BPF for seccomp: a tiny assembler, the filter agentsh installs, and an
interpreter that runs a program against a ``seccomp_data`` (for tests and ``detect``).

Layout of every program ``build`` returns (order matters; KERNEL-FACTS §1):

  1. load ``arch`` (offset 4); anything but AUDIT_ARCH_X86_64 → KILL_PROCESS. An i386
     ``int $0x80`` arrives with the i386 arch and i386 numbers, so a rule keyed on x86_64
     numbers would judge the wrong call; a 32-bit image cannot be supervised at all, and a
     killed process (SIGSYS, "Bad system call") is louder than one limping on with errors.
  2. load ``nr`` (offset 0); ``nr >= 0x40000000`` (the x32 bit, and negative numbers read
     unsigned) → ERRNO(ENOSYS): the x32 table would be a second door to every syscall. No
     real x86_64 call has that bit, and ENOSYS is what a kernel without x32 answers.
  3. dispatch on ``nr``: one block per syscall, each ending in a RET, skipped with the JEQ's
     false branch (so every jump is short and forward);
  4. default: ALLOW.

Syscall arguments are compared on their **low 32 bits only** (offset 16 + 8·i): the kernel
truncates int-typed arguments, so ``ioctl(fd, (1<<32)|TIOCSTI)`` is TIOCSTI.

Everything not explicitly routed depends on ``arch`` and ``nr`` alone, so the kernel's
seccomp action cache skips the program for those syscalls entirely.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Sequence
from typing import Literal

from agentsh.enforce.record import dataclass

# --------------------------------------------------------------------------- constants

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
RET_DATA = 0x0000FFFF

BPF_MAXINSNS = 4096

# Instruction codes (class | size | mode | op | source), <linux/bpf_common.h>.
LD_W_ABS = 0x20
JMP_JA = 0x05
JMP_JEQ_K = 0x15
JMP_JGT_K = 0x25
JMP_JGE_K = 0x35
JMP_JSET_K = 0x45
RET_K = 0x06
ALU_AND_K = 0x54

# struct seccomp_data offsets.
OFF_NR = 0
OFF_ARCH = 4
OFF_IP = 8


def off_arg_low(i: int) -> int:
    """Offset of the low 32 bits of ``args[i]`` (little-endian u64 at 16 + 8·i)."""
    if not 0 <= i <= 5:
        raise ValueError(f"syscall argument index {i} outside 0..5")
    return 16 + 8 * i


_INSN = struct.Struct("<HBBI")

# The governed marker (ARCHITECTURE §9; the C shim and govern.is_governed use it):
# syscall(MARKER_NR, MARKER_ARG0, MARKER_ARG1) fails with errno MARKER_ERRNO inside an
# agentsh filter and with ENOSYS outside one. MARKER_NR is far above any assigned x86_64
# number and below the x32 bit.
MARKER_NR = 0x3FFFA65E
MARKER_ARG0 = 0x68736761  # b"agsh" little-endian
MARKER_ARG1 = 0x65766F67  # b"gove"
MARKER_ERRNO = 2661  # not an errno any syscall returns; < 4096 so RET_DATA keeps it


# --------------------------------------------------------------------------- assembler


@dataclass(frozen=True)
class Insn:
    """One ``struct sock_filter``: code u16, jt u8, jf u8, k u32 (KERNEL-FACTS §2)."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0

    def encode(self) -> bytes:
        if not (0 <= self.jt <= 255 and 0 <= self.jf <= 255):
            raise ValueError(f"jump offset out of range in {self}")
        return _INSN.pack(self.code, self.jt, self.jf, self.k & 0xFFFFFFFF)


def load(offset: int) -> Insn:
    return Insn(LD_W_ABS, k=offset)


def ret(value: int) -> Insn:
    return Insn(RET_K, k=value)


def jeq(k: int, jt: int, jf: int) -> Insn:
    return Insn(JMP_JEQ_K, jt, jf, k)


def jge(k: int, jt: int, jf: int) -> Insn:
    return Insn(JMP_JGE_K, jt, jf, k)


def assemble(insns: Sequence[Insn]) -> bytes:
    """The ``sock_filter`` array for ``insns``.

    Raises:
        ValueError: empty, longer than BPF_MAXINSNS, a jump past the end, or not ending
            in a RET (the kernel would refuse it with EINVAL).
    """
    if not 0 < len(insns) <= BPF_MAXINSNS:
        raise ValueError(f"a seccomp program has 1..{BPF_MAXINSNS} instructions, not {len(insns)}")
    if insns[-1].code != RET_K:
        raise ValueError("a seccomp program must end in RET")
    for pc, insn in enumerate(insns):
        if insn.code & 0x07 == 0x05:  # BPF_JMP class
            far = insn.k if insn.code == JMP_JA else max(insn.jt, insn.jf)
            if pc + 1 + far >= len(insns):
                raise ValueError(f"jump past the end at instruction {pc}")
    return b"".join(i.encode() for i in insns)


def disassemble(prog: bytes) -> list[Insn]:
    """The instructions of a ``sock_filter`` array (inverse of :func:`assemble`)."""
    if len(prog) % _INSN.size:
        raise ValueError(f"program length {len(prog)} is not a multiple of {_INSN.size}")
    return [Insn(*_INSN.unpack_from(prog, o)) for o in range(0, len(prog), _INSN.size)]


# --------------------------------------------------------------------------- the filter


@dataclass(frozen=True)
class Errno:
    """Fail the syscall in the filter with this errno (no supervisor round trip)."""

    code: int

    def __post_init__(self) -> None:
        if not 0 < self.code <= 4095:
            raise ValueError(f"errno {self.code} outside 1..4095")


Route = Literal["allow", "notify"] | Errno


@dataclass(frozen=True)
class ArgRule:
    """Route syscall ``nr`` by the low 32 bits of ``args[arg]``: ``matched`` when it
    has any bit of ``mask`` set (0: no bit test) or equals one of ``values``,
    ``otherwise`` when not (``open`` flags: ``mask=O_ACCMODE|O_CREAT|...`` -> writes)."""

    nr: int
    arg: int
    values: tuple[int, ...]
    matched: Route
    otherwise: Route
    mask: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.mask <= 0xFFFFFFFF:
            raise ValueError(f"bit mask {self.mask:#x} is not a 32-bit value")
        if not self.values and not self.mask:
            raise ValueError(f"argument rule for syscall {self.nr} tests nothing")


@dataclass(frozen=True)
class FilterSpec:
    """What the filter does beyond the fixed header (arch, x32).

    Attributes:
        notify: syscalls handed to the supervisor: SECCOMP_RET_USER_NOTIF, or
            SECCOMP_RET_TRACE when ``trace`` is set (the ptrace backend).
        errno: (nr, errno) pairs failed in the filter itself.
        args: syscalls routed by one argument (ioctl requests, ptrace requests, ...).
        marker: answer the governed-marker probe with MARKER_ERRNO.
        trace: see ``notify``.
    """

    notify: tuple[int, ...] = ()
    errno: tuple[tuple[int, int], ...] = ()
    args: tuple[ArgRule, ...] = ()
    marker: bool = True
    trace: bool = False

    def __post_init__(self) -> None:
        nrs = [*self.notify, *(n for n, _ in self.errno), *(r.nr for r in self.args)]
        if self.marker:
            nrs.append(MARKER_NR)
        dup = {n for n in nrs if nrs.count(n) > 1}
        if dup:
            raise ValueError(f"syscalls routed twice in one filter: {sorted(dup)}")
        if any(not 0 <= n < X32_SYSCALL_BIT for n in nrs):
            raise ValueError("syscall numbers must lie in 0..0x3fffffff")


def _ret(route: Route, trace: bool) -> int:
    match route:
        case "allow":
            return RET_ALLOW
        case "notify":
            return RET_TRACE if trace else RET_USER_NOTIF
        case Errno(code=code):
            return RET_ERRNO | code
        case _:
            return RET_KILL_PROCESS  # fail closed on a route we do not know


def _block(nr: int, body: list[Insn]) -> list[Insn]:
    """``if nr == NR: body`` — body ends in RET; the false branch skips it."""
    return [jeq(nr, 0, len(body)), *body]


def _arg_body(rule: ArgRule, trace: bool) -> list[Insn]:
    # load arg; a JSET on the mask, then one JEQ per value, each jumping to the "matched"
    # RET; fall through to "otherwise".
    n = len(rule.values)
    body = [load(off_arg_low(rule.arg))]
    if rule.mask:
        body.append(Insn(JMP_JSET_K, n + 1, 0, rule.mask))
    body += [jeq(v & 0xFFFFFFFF, n - i, 0) for i, v in enumerate(rule.values)]
    body += [ret(_ret(rule.otherwise, trace)), ret(_ret(rule.matched, trace))]
    return body


def _marker_body() -> list[Insn]:
    # args[0] == ARG0 && args[1] == ARG1 → ERRNO(MARKER_ERRNO), else ALLOW (→ ENOSYS).
    return [
        load(off_arg_low(0)),
        jeq(MARKER_ARG0, 0, 3),
        load(off_arg_low(1)),
        jeq(MARKER_ARG1, 0, 1),
        ret(RET_ERRNO | MARKER_ERRNO),
        ret(RET_ALLOW),
    ]


def header() -> list[Insn]:
    """Arch check, then x32/negative check; leaves ``nr`` in the accumulator."""
    return [
        load(OFF_ARCH),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        ret(RET_KILL_PROCESS),
        load(OFF_NR),
        jge(X32_SYSCALL_BIT, 0, 1),
        ret(RET_ERRNO | _errno.ENOSYS),
    ]


def build(spec: FilterSpec) -> bytes:
    """The ``sock_filter`` array for ``spec`` (see the module docstring for its layout)."""
    blocks: list[list[Insn]] = []
    if spec.marker:
        blocks.append(_block(MARKER_NR, _marker_body()))
    for nr in spec.notify:
        blocks.append(_block(nr, [ret(_ret("notify", spec.trace))]))
    for nr, code in spec.errno:
        blocks.append(_block(nr, [ret(_ret(Errno(code), spec.trace))]))
    for rule in spec.args:
        blocks.append(_block(rule.nr, _arg_body(rule, spec.trace)))
    # A block runs only when its JEQ matched and returns in every branch; a skipped block
    # leaves the accumulator alone, so each JEQ of the chain still compares nr.
    return assemble([*header(), *(i for b in blocks for i in b), ret(RET_ALLOW)])


# --------------------------------------------------------------------------- interpreter


@dataclass(frozen=True)
class SeccompData:
    """``struct seccomp_data`` (64 bytes): nr s32, arch u32, ip u64, args u64[6]."""

    nr: int
    arch: int = AUDIT_ARCH_X86_64
    ip: int = 0
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)

    def pack(self) -> bytes:
        args = (tuple(self.args) + (0,) * 6)[:6]
        return struct.pack(
            "<iIQ6Q", self.nr, self.arch, self.ip, *(a & 0xFFFFFFFFFFFFFFFF for a in args)
        )


def run(prog: bytes, data: SeccompData) -> int:
    """Execute ``prog`` on ``data`` the way the kernel does; returns the RET value.

    Supports the subset the kernel accepts for seccomp and ``build`` emits: LD W ABS,
    JA/JEQ/JGT/JGE/JSET with K, ALU AND K, RET K.

    Raises:
        ValueError: an instruction outside that subset, or a load outside seccomp_data.
    """
    raw = data.pack()
    insns = disassemble(prog)
    acc, pc = 0, 0
    while pc < len(insns):
        i = insns[pc]
        pc += 1
        if i.code == LD_W_ABS:
            if i.k % 4 or i.k + 4 > len(raw):
                raise ValueError(f"invalid load offset {i.k}")
            acc = struct.unpack_from("<I", raw, i.k)[0]
        elif i.code == RET_K:
            return i.k
        elif i.code == ALU_AND_K:
            acc &= i.k
        elif i.code == JMP_JA:
            pc += i.k
        else:
            pc += i.jt if _jump_taken(i.code, acc, i.k) else i.jf
    raise ValueError("program ran off its end")


def _jump_taken(code: int, acc: int, k: int) -> bool:
    match code:
        case 0x15:
            return acc == k
        case 0x25:
            return acc > k
        case 0x35:
            return acc >= k
        case 0x45:
            return bool(acc & k)
        case _:
            raise ValueError(f"instruction code {code:#x} not supported")
