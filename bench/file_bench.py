"""File-heavy workload under the file layers (ARCHITECTURE §10: <= 1.10x without FUSE).

Each repetition runs every mode in turn (interleaved, so machine noise hits all alike), each
in a fresh forked child that first enters the mode, then times the workload itself:

  small-files   create, stat, read and delete 10,000 small files (timed per phase)
  big-read      read a 200 MB file (page cache warm) in 1 MiB chunks

    .venv/bin/python bench/file_bench.py [--reps N] [--files N] [--mb N] [--dir DIR]
                                         [--cpus LIST]

The work directory is on tmpfs (/dev/shm) unless --dir says otherwise: on a shared VM the
disk's journal adds noise many times larger than the layers' cost (the same 2,000-file
create took 0.08 to 2.8 s on ext4 here), and Landlock's cost is CPU, not I/O.

Modes are plain functions in MODES: ``enter(work) -> Path`` runs in the child before the
workload (after it nothing but the workload runs) and returns the directory the workload
uses. Adding a column is adding one function: "monitor" starts the notify file monitor
(``filemon.plan`` for the built-in policy, ``govern.spawn(..., files=plan)``) with no
Landlock (it then traps every open, delete, rename, mkdir, chmod); "landlock+monitor"
compiles Landlock first, plans the monitor for what Landlock leaves to it, and applies
both in the frontend's order (supervisor forked, Landlock, then the filter). The
supervisor answers each trapped call of the workload: that round trip is the cost shown.
"fuse" would mount the soft-delete FUSE view of ``work`` and return its mount point.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cpus  # bench/cpus.py

from agentsh.enforce import audit, config, filemon, govern, landlock, loader
from agentsh.enforce.policy import Decision, Policy, Verdict

PAYLOAD = b"x" * 512
CHUNK = 1 << 20
Mode = Callable[[Path], Path]


def ungoverned(work: Path) -> Path:
    """No layer at all: the baseline."""
    return work


def _policy(work: Path) -> Policy:
    variables = {"HOME": "/root", "PROJECT_ROOT": str(work), "WORKSPACE": str(work)}
    return loader.load(config.builtin_policy_path(), variables | {"TMPDIR": "/tmp"})


def _ruleset(policy: Policy) -> landlock.Ruleset:
    return landlock.compile(
        policy,
        landlock.LandlockConfig(),
        abi=landlock.probe().abi,
        runtime=landlock.runtime_paths(),
        analyse=False,
    )


def landlock_only(work: Path) -> Path:
    """The built-in policy compiled with ``work`` as the project, applied to this child."""
    landlock.apply(_ruleset(_policy(work)))
    return work


def _monitored(work: Path, *, with_landlock: bool) -> Path:
    """Put this child under the file monitor (and Landlock): no exec follows, so the
    workload itself is the governed process."""
    policy = _policy(work)
    ruleset = _ruleset(policy) if with_landlock else None
    plan = filemon.plan(
        policy, filemon.MonitorConfig(), landlock=ruleset, protected=landlock.AGENTSH_STATE
    )
    if plan is None:
        raise SystemExit("the monitor plans nothing for the built-in policy")

    def checker(_req: object) -> Verdict:
        return Verdict(Decision.DENY, "bench", "the file bench runs no programs")

    def sink(_event: audit.Event) -> None:
        pass

    pending = govern.spawn(
        lambda: checker, lambda: sink, first_exec="/nonexistent", session="bench", files=plan
    )
    if pending is None:
        raise SystemExit("already governed: run the bench outside agentsh")
    if ruleset is not None:
        landlock.apply(ruleset)
    pending.install()
    return work


def monitor_only(work: Path) -> Path:
    """The notify file monitor alone (no Landlock): the monitor traps every kind."""
    return _monitored(work, with_landlock=False)


def landlock_monitor(work: Path) -> Path:
    """Landlock plus the monitor for what Landlock leaves to it (ARCHITECTURE §10)."""
    return _monitored(work, with_landlock=True)


# "control" is the baseline again: its ratio is this run's noise floor (an A/A test).
MODES: dict[str, Mode] = {
    "ungoverned": ungoverned,
    "control": ungoverned,
    "landlock": landlock_only,
    "monitor": monitor_only,
    "landlock+monitor": landlock_monitor,
}


def small_files(root: Path, count: int) -> dict[str, float]:
    """Seconds per phase over ``count`` files spread over 100 directories."""
    dirs = [root / f"d{i:02}" for i in range(100)]
    for d in dirs:
        d.mkdir()
    names = [str(dirs[i % 100] / f"f{i}") for i in range(count)]
    times: dict[str, float] = {}
    start = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, PAYLOAD)
        os.close(fd)
    times["create"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in names:
        os.stat(name)
    times["stat"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    times["read"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in names:
        os.unlink(name)
    for d in dirs:
        d.rmdir()
    times["delete"] = time.perf_counter() - start
    times["small-files"] = sum(times.values())
    return times


def big_read(path: Path) -> float:
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def run_mode(name: str, work: Path, big: Path, files: int) -> dict[str, float]:
    """Enter mode ``name`` in a forked child, run the workloads there, return their timings."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: enter the mode, then nothing but the workload
        os.close(rfd)
        code = 1
        try:
            root = MODES[name](work)
            scratch = Path(tempfile.mkdtemp(dir=root))
            result = small_files(scratch, files) | {"big-read": big_read(big)}
            scratch.rmdir()
            os.write(wfd, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise SystemExit(f"{name}: the workload failed (status {status:#x})")
    timings: dict[str, float] = json.loads(data)
    return timings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    cpus.add_option(ap)
    opts = ap.parse_args()
    opts.where = cpus.apply(opts)
    work = Path(tempfile.mkdtemp(prefix="agentsh-file-bench-", dir=opts.dir))
    try:
        big = work / "big.bin"
        with big.open("wb") as f:
            for _ in range(opts.mb):
                f.write(os.urandom(CHUNK))
        big_read(big)  # warm the page cache: the bench measures the layers, not the disk
        samples: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        for _ in range(opts.reps):
            for name in MODES:
                for key, value in run_mode(name, work, big, opts.files).items():
                    samples[name].setdefault(key, []).append(value)
        report(samples, opts)
    finally:
        shutil.rmtree(work)
    return 0


def report(samples: dict[str, dict[str, list[float]]], opts: argparse.Namespace) -> None:
    print(f"dir={opts.dir} files={opts.files} big={opts.mb} MB reps={opts.reps} (medians, ms)")
    print(opts.where)
    print(f"{'phase':<12}" + "".join(f"{m:>18}" for m in MODES) + "   ratio vs ungoverned")
    for key in ("create", "stat", "read", "delete", "small-files", "big-read"):
        meds = {m: statistics.median(samples[m][key]) for m in MODES}
        ratios = " ".join(f"{meds[m] / meds['ungoverned']:.3f}" for m in MODES if m != "ungoverned")
        print(f"{key:<12}" + "".join(f"{meds[m] * 1000:18.1f}" for m in MODES) + f"   {ratios}")


if __name__ == "__main__":
    sys.exit(main())
