"""enforce.elf: a dynamic loader is known by its content, whatever its file name."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from agentsh.enforce import elf

LOADER = Path("/lib64/ld-linux-x86-64.so.2")


def _is_loader(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return elf.is_loader(fd, os.pread(fd, 256, 0))
    finally:
        os.close(fd)


@pytest.fixture
def loader_copy(tmp_path: Path) -> Path:
    if not LOADER.exists():
        pytest.skip("no glibc x86_64 loader on this host")
    copy = tmp_path / "innocent-name"
    shutil.copy2(LOADER, copy)
    return copy


def test_the_loader_and_a_renamed_copy_are_loaders(loader_copy: Path) -> None:
    assert _is_loader(LOADER)
    assert _is_loader(loader_copy)


@pytest.mark.parametrize(
    "path",
    [
        "/usr/bin/true",  # a PIE program: it has a PT_INTERP
        "/usr/bin/bash",
        "/lib/x86_64-linux-gnu/libc.so.6",  # a library, not a loader (SONAME libc.so.6)
    ],
)
def test_programs_and_libraries_are_not(path: str) -> None:
    assert not _is_loader(Path(path))


def test_a_script_or_a_truncated_copy_is_not(loader_copy: Path, tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\necho hi\n")
    assert not _is_loader(script)
    with loader_copy.open("r+b") as f:
        f.truncate(300)  # the header survives, the dynamic section does not
    assert not _is_loader(loader_copy)


def test_a_loader_whose_soname_was_changed_is_not(loader_copy: Path) -> None:
    """The SONAME decides: rewrite its bytes in the string table and the copy is no
    longer recognised (documents the boundary of the check; it is a name, not a proof)."""
    data = bytearray(loader_copy.read_bytes())
    at = data.find(b"ld-linux-x86-64.so.2\0")
    assert at > 0
    data[at : at + 2] = b"xx"
    loader_copy.write_bytes(bytes(data))
    assert not _is_loader(loader_copy)


def test_the_soname_pattern() -> None:
    for name in (b"ld-linux-x86-64.so.2", b"ld-linux.so.2", b"ld64.so.2", b"ld.so.1"):
        assert elf.LOADER_SONAME.fullmatch(name)
    for name in (b"ld-musl-x86_64.so.1", b"libc.so", b"ld-2.31.so"):
        assert elf.LOADER_SONAME.fullmatch(name)
    for name in (b"libc.so.6", b"libld.so", b"ldap.so.2"):
        assert not elf.LOADER_SONAME.fullmatch(name)


def test_only_64_bit_little_endian_files_are_parsed() -> None:
    head = b"\x7fELF\x01\x01" + bytes(58)  # ELFCLASS32
    assert not elf.is_loader(-1, head)
    head = b"\x7fELF\x02\x02" + bytes(58)  # big-endian
    assert not elf.is_loader(-1, head)
    assert struct.calcsize("<16sHHIQQQIHHHHHH") == 64


def test_offsets_past_any_file_are_not_a_loader_and_do_not_raise() -> None:
    """A crafted header (program headers at 2**63) must not crash the supervisor."""
    head = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), elf.ET_DYN, 62, 1, 0,
        1 << 63, 0, 0, 64, 56, 3, 64, 0, 0,
    )  # fmt: skip
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        assert not elf.is_loader(fd, head)
    finally:
        os.close(fd)
