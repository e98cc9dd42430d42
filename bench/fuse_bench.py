"""The FUSE column of the file-heavy bench (issue 4, ARCHITECTURE §10/§11): the same
workload on the raw directory and through the soft-delete view, medians and ratios.

Workload (one Python process, plain os calls, warm page cache):
  create   N small files (100 bytes, O_EXCL: ext4 flushes on close after O_TRUNC, which
           would hide the cost being measured) in N/1000 directories
  stat     os.stat of each
  read     open + read + close of each
  delete   unlink of each, then rmdir of the directories
  bigread  sequential read of one 200 MB file in 1 MiB chunks

Columns: raw (the directory itself), fuse (view in monitor mode: deletes are real, so
this is the passthrough's own cost), fuse+trash (view in soft_delete mode: deletes move
each file into the trash — hash, manifest, fsync). Every view runs in a private mount
namespace (agentsh.install.overlay); the host sees nothing. Each round runs the three
columns one after the other (load from elsewhere falls on all alike). Needs root.

    .venv/bin/python bench/fuse_bench.py [--runs 3] [--files 10000] [--big-mb 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agentsh.enforce import fuseconf, softdelete
from agentsh.install import overlay

PHASES = ("create", "stat", "read", "delete", "bigread")
Times = dict[str, list[float]]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _names(top: Path, files: int) -> list[Path]:
    per_dir = 1000
    return [top / f"d{i // per_dir:03}" / f"f{i:05}" for i in range(files)]


def _create(top: Path, files: int) -> None:
    payload = b"x" * 100
    for path in _names(top, files):
        if path.name.endswith("000") or path.name == "f00000":
            path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)


def _stat(top: Path, files: int) -> None:
    for path in _names(top, files):
        os.stat(path)


def _read(top: Path, files: int) -> None:
    for path in _names(top, files):
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)


def _delete(top: Path, files: int) -> None:
    names = _names(top, files)
    for path in names:
        os.unlink(path)
    for parent in sorted({p.parent for p in names}):
        os.rmdir(parent)


def _bigread(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def _round(top: Path, big: Path, files: int) -> dict[str, float]:
    return {
        "create": _timed(lambda: _create(top, files)),
        "stat": _timed(lambda: _stat(top, files)),
        "read": _timed(lambda: _read(top, files)),
        "delete": _timed(lambda: _delete(top, files)),
        "bigread": _timed(lambda: _bigread(big)),
    }


def _one(base: Path, mode: fuseconf.Mode | None, files: int) -> dict[str, float]:
    """One round on the raw directory (mode None) or through a fresh view."""
    ws = base / f"ws-{mode.value if mode else 'raw'}"
    ws.mkdir(exist_ok=True)
    big = ws / "big.bin"
    if not big.exists():
        os.link(base / "big.bin", big)  # the same bytes (and page cache) for every column

    def inside() -> dict[str, float]:
        if mode is not None:
            plan = softdelete.SoftDeletePlan(ws, "bench", mode=mode, trash_root=base / "trash")
            softdelete.start(plan)
        (ws / "work").mkdir()
        times = _round(ws / "work", big, files)
        (ws / "work").rmdir()
        return times

    try:
        return overlay.call_in_overlay(inside, base / "ov", timeout=3600)
    finally:
        shutil.rmtree(base / "trash", ignore_errors=True)


def _measure(base: Path, runs: int, files: int) -> dict[str, Times]:
    """Columns interleaved round by round, so that load from elsewhere on the machine
    falls on all of them alike."""
    modes = {
        "raw": None,
        "fuse": fuseconf.Mode.MONITOR,
        "fuse+trash": fuseconf.Mode.SOFT_DELETE,
    }
    columns: dict[str, Times] = {name: {p: [] for p in PHASES} for name in modes}
    for _ in range(runs):
        for name, mode in modes.items():
            for phase, seconds in _one(base, mode, files).items():
                columns[name][phase].append(seconds)
    return columns


def _report(columns: dict[str, Times], files: int, big_mb: int) -> None:
    raw = {p: statistics.median(columns["raw"][p]) for p in PHASES}
    print(f"{files} small files, {big_mb} MB file; medians of {len(columns['raw']['stat'])} runs")
    print(f"{'phase':8} " + " ".join(f"{name:>22}" for name in columns))
    for phase in PHASES:
        cells = []
        for times in columns.values():
            med = statistics.median(times[phase])
            cells.append(f"{med * 1000:9.1f} ms {med / raw[phase]:7.2f}x")
        per_op = "" if phase == "bigread" else f"   ({raw[phase] / files * 1e6:.1f} µs/op raw)"
        print(f"{phase:8} " + " ".join(f"{c:>22}" for c in cells) + per_op)
    total = {name: sum(statistics.median(t[p]) for p in PHASES) for name, t in columns.items()}
    print(
        f"{'total':8} "
        + " ".join(f"{total[n] * 1000:9.1f} ms {total[n] / total['raw']:7.2f}x" for n in total)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--big-mb", type=int, default=200)
    args = parser.parse_args()
    reason = overlay.probe() or (None if fuseconf.probe().usable else fuseconf.probe().reason)
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="agentsh-fuse-bench-") as tmp:
        base = Path(tmp)
        with open(base / "big.bin", "wb") as f:
            for _ in range(args.big_mb):
                f.write(os.urandom(1 << 20))
        columns = _measure(base, args.runs, args.files)
    _report(columns, args.files, args.big_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
