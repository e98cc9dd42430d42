"""The floor of user-notify exec supervision on this machine (context for ARCHITECTURE §10's
1.15x on the exec-heavy workload): the same 1,000-exec bash loop as bench/exec_bench.py,
under a minimal C supervisor (bench/notify_floor.c, built here with gcc) that answers every
execve with CONTINUE, then with the reads any real supervisor needs, interleaved with the
ungoverned loop. Whatever agentsh's supervisor does costs at least the first row; its
exec-boundary check (a ptrace seize, exec stop and detach per exec) comes on top.

It also prints what waking a sleeping process costs on the same CPU and across two
(a pipe round trip): on a VM whose idle vCPUs halt at once, the second figure is what
every hand-off between tree and supervisor on another vCPU pays.

And the floor of the notify file monitor (context for §10's 1.10x on the file-heavy
workload): bench/file_bench.py's small-files workload with the file calls the monitor
traps for the built-in policy answered by the same C supervisor with CONTINUE at once
(``notify-floor files``), checking nothing, against the workload ungoverned.

    .venv/bin/python bench/notify_floor.py [--reps N] [--execs N] [--files N] [--cpus LIST]

--cpus pins the whole run (tree and supervisor) to those CPUs, e.g. --cpus 0: it
separates the supervisor's own cost from the cost of crossing between CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cpus  # bench/cpus.py

HERE = Path(__file__).resolve().parent
MODES = {
    0: "ungoverned",
    1: "notify, CONTINUE at once",
    2: "+ SYNC_WAKE_UP",
    3: "+ path via process_vm_readv",
    4: "+ path and argv via /proc/PID/mem",
    5: "+ resolve the path, check the id",
    6: "5, reading with process_vm_readv",
    7: "6 + exec-boundary check (ptrace)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--execs", type=int, default=1000)
    ap.add_argument("--files", type=int, default=2000, help="small files (0: skip)")
    cpus.add_option(ap)
    opts = ap.parse_args()
    where = cpus.apply(opts)
    with tempfile.TemporaryDirectory(prefix="agentsh-floor-") as tmp:
        binary = Path(tmp) / "notify-floor"
        cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary)]
        subprocess.run([*cmd, str(HERE / "notify_floor.c")], check=True)
        wake = {pair: _wake(binary, *pair) for pair in _pairs()}
        loop = f"for i in $(seq {opts.execs}); do /bin/true; done"
        times: dict[int, list[float]] = {m: [] for m in MODES}
        for _ in range(opts.reps):
            for mode in MODES:  # interleaved: machine noise hits every mode alike
                start = time.perf_counter()
                subprocess.run([str(binary), str(mode), "/usr/bin/bash", "-c", loop], check=True)
                times[mode].append(time.perf_counter() - start)
        phases = _file_floor(binary, opts.reps, opts.files) if opts.files else {}
    base = statistics.median(times[0])
    print(f"{opts.execs} execs from a bash loop, median of {opts.reps} (interleaved); {where}")
    for mode, name in MODES.items():
        med = statistics.median(times[mode])
        added = (med - base) / opts.execs * 1e6
        print(f"  {name:<36} {med:7.3f} s  {med / base:6.3f}x  {added:+5.0f} us/exec")
    for (a, b), us in wake.items():
        print(f"wake-up round trip, CPU {a} <-> CPU {b}: {us:6.1f} us")
    if phases:
        print(f"{opts.files} small files (bench/file_bench.py), median of {opts.reps}, ms")
        print(f"  {'phase':<12} {'ungoverned':>10} {'CONTINUE':>10} {'ratio':>7}")
        for phase, (free, floor) in phases.items():
            print(f"  {phase:<12} {free:10.1f} {floor:10.1f} {floor / free:7.2f}x")
    return 0


# The workload in a child of its own: file_bench.small_files in a fresh tmpfs directory,
# printing its phase timings (seconds) as JSON.
WORKLOAD = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import file_bench
with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
    print(json.dumps(file_bench.small_files(Path(d), int(sys.argv[2]))))
"""


def _file_floor(binary: Path, reps: int, count: int) -> dict[str, tuple[float, float]]:
    """Median ms per phase of the small-files workload: (ungoverned, under the file floor)."""
    runs: dict[str, list[dict[str, float]]] = {"free": [], "floor": []}
    argv = [sys.executable, "-c", WORKLOAD, str(HERE), str(count)]
    for _ in range(reps):
        for kind, prefix in (("free", []), ("floor", [str(binary), "files"])):
            out = subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True)
            runs[kind].append(json.loads(out.stdout))

    def ms(kind: str, phase: str) -> float:
        return statistics.median(r[phase] for r in runs[kind]) * 1e3

    return {phase: (ms("free", phase), ms("floor", phase)) for phase in runs["free"][0]}


def _pairs() -> list[tuple[int, int]]:
    """The same CPU twice, and two different ones when the run may use two."""
    allowed = sorted(os.sched_getaffinity(0))
    first = allowed[0]
    return [(first, first)] + ([(first, allowed[1])] if len(allowed) > 1 else [])


def _wake(binary: Path, a: int, b: int) -> float:
    """Microseconds of one pipe round trip between CPU ``a`` and CPU ``b``."""
    out = subprocess.run([str(binary), "wake", str(a), str(b)], check=True, capture_output=True)
    return float(out.stdout)


if __name__ == "__main__":
    sys.exit(main())
