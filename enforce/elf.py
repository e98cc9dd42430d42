"""What an ELF file says about itself, read from an open fd: whether it is a dynamic
loader (``ld.so``), whatever its file name (``enforce.image`` asks, so that a renamed copy
of ``/lib64/ld-linux-x86-64.so.2`` is judged as the loader it is: run with a program as
its argument it loads and runs that program without an exec supervision could see).

A loader is a position-independent ELF (ET_DYN) with no PT_INTERP of its own whose
DT_SONAME is a loader's name (glibc's ``ld-linux-x86-64.so.2``, ``ld64.so.2``, musl's
``ld-musl-x86_64.so.1`` or its ``libc.so``). Ordinary PIE programs have a PT_INTERP,
which the first bytes usually show, so they cost no read beyond those.

Only 64-bit little-endian files are parsed (the x86_64 ABI the filter admits); anything
malformed is "not a loader" (the kernel would refuse to run it anyway, or it is an
ordinary program judged under its own names).
"""

from __future__ import annotations

import os
import re
import struct
from typing import Final

ET_DYN, PT_LOAD, PT_DYNAMIC, PT_INTERP = 3, 1, 2, 3
DT_NULL, DT_STRTAB, DT_SONAME = 0, 5, 14
_EHDR: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR: Final = struct.Struct("<IIQQQQQQ")
_DYN: Final = struct.Struct("<qQ")
MAX_PHDRS = 64
MAX_DYNAMIC = 64 * 1024
LOADER_SONAME: Final = re.compile(
    rb"ld(-linux[-\w]*|64|-musl-[-\w]+|-\d+(\.\d+)*)?\.so(\.\d+)*|libc\.so"
)


def is_loader(fd: int, head: bytes) -> bool:
    """``fd`` (open for reading) is a dynamic loader; ``head`` is its first bytes. A file
    this cannot parse (offsets past any file, a read error) is not one: the answer is
    only an extra name to judge the exec under, never a reason to let it run."""
    try:
        return _is_loader(fd, head)
    except (OSError, OverflowError, ValueError, struct.error):
        return False


def _is_loader(fd: int, head: bytes) -> bool:
    if len(head) < _EHDR.size or not head.startswith(b"\x7fELF\x02\x01"):
        return False
    _, e_type, _, _, _, phoff, _, _, _, phentsize, phnum, *_ = _EHDR.unpack_from(head)
    if e_type != ET_DYN or phentsize != _PHDR.size or not 0 < phnum <= MAX_PHDRS:
        return False
    size = phnum * phentsize
    table = head[phoff : phoff + size] if phoff + size <= len(head) else b""
    if not table:
        table = os.pread(fd, size, phoff)
        if len(table) != size:
            return False
    phdrs = [_PHDR.unpack_from(table, i * phentsize) for i in range(phnum)]
    if any(p[0] == PT_INTERP for p in phdrs):
        return False  # an ordinary program: its loader runs it
    soname = _soname(fd, phdrs)
    return soname is not None and LOADER_SONAME.fullmatch(soname) is not None


def _soname(fd: int, phdrs: list[tuple[int, ...]]) -> bytes | None:
    dynamic = next((p for p in phdrs if p[0] == PT_DYNAMIC), None)
    if dynamic is None or dynamic[5] > MAX_DYNAMIC:
        return None
    raw = os.pread(fd, dynamic[5], dynamic[2])  # p_filesz bytes at p_offset
    strtab = name = None
    for i in range(len(raw) // _DYN.size):
        tag, value = _DYN.unpack_from(raw, i * _DYN.size)
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:
            strtab = value
        elif tag == DT_SONAME:
            name = value
    if strtab is None or name is None:
        return None
    offset = _file_offset(phdrs, strtab)
    if offset is None:
        return None
    text = os.pread(fd, 256, offset + name)
    end = text.find(b"\0")
    return text[:end] if end > 0 else None


def _file_offset(phdrs: list[tuple[int, ...]], vaddr: int) -> int | None:
    """The file offset of virtual address ``vaddr`` (through the PT_LOAD covering it)."""
    for p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ in phdrs:
        if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
            return vaddr - p_vaddr + p_offset
    return None
