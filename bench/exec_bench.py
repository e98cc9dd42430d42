"""Exec supervision overhead (ARCHITECTURE §10: <= 1.15x on the exec-heavy workload).

Runs each workload ungoverned and governed (the built-in policy; exec supervision with
the exec-boundary check; the same without the C hot path, libagentsh-boundary.so, so
Python judges and checks every exec; without the check; with it plus the real SQLite
audit store), interleaved, and prints medians and ratios.

    .venv/bin/python bench/exec_bench.py [--reps N] [--execs N] [--syscalls N] [--cpus LIST]

--cpus 0 runs everything (tree and supervisor) on one CPU: on a VM whose idle vCPUs halt
at once, most of the exec loop's overhead on two CPUs is the hand-off between them
(bench/notify_floor.py measures one).

Workloads:
  start       /bin/true: the fixed cost of starting supervision (fork, filter, hand-off)
  exec-loop   bash -c 'for i in $(seq N); do /bin/true; done'  (N child execs)
  syscalls    one python3 doing N x (stat, getppid, open+close): no exec after its own
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cpus  # bench/cpus.py

from agentsh.enforce import audit, config, fastpath, govern, loader, supervisor
from agentsh.shell import supervise

BASH = "/usr/bin/bash"
PYTHON = "/usr/bin/python3"
SYSCALLS = (
    "import os\n"
    "for _ in range({n}):\n"
    "    os.stat('/'); os.getppid(); os.close(os.open('/dev/null', os.O_RDONLY))\n"
)


def _policy_checker() -> Callable[[], supervisor.Checker]:
    variables = {"HOME": "/root", "PROJECT_ROOT": "/tmp", "WORKSPACE": "/tmp"}
    variables |= {"TMPDIR": "/tmp", "USER": "root"}
    policy = loader.load(config.builtin_policy_path(), variables)
    return lambda: supervise.make_checker(policy)


def _sink_factory(mode: str) -> Callable[[], Callable[[audit.Event], None]]:
    """A sink that drops events, or (``+audit``) the real SQLite store in a temp dir."""
    if not mode.endswith("+audit"):
        return lambda: lambda _event: None
    path = Path(tempfile.mkdtemp(prefix="agentsh-bench-")) / "audit.db"
    return lambda: audit.Writer(audit.open_store(path))


def _run(argv: list[str], mode: str, checker: Callable[[], supervisor.Checker]) -> float:
    """Seconds from fork to exit of ``argv``, governed according to ``mode``."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            if mode == "verify-python":  # this child forks the supervisor: it inherits this
                fastpath.load = lambda path=fastpath.LIBRARY: None
            if mode != "ungoverned":
                govern.start(
                    checker, _sink_factory(mode), first_exec=argv[0], verify=mode != "no-verify"
                )
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{mode}: {argv[:3]} failed with status {status:#x}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--execs", type=int, default=1000)
    ap.add_argument("--syscalls", type=int, default=300000)
    cpus.add_option(ap)
    opts = ap.parse_args()
    where = cpus.apply(opts)
    checker = _policy_checker()
    workloads = {
        "start": ["/bin/true"],
        "exec-loop": [BASH, "-c", f"for i in $(seq {opts.execs}); do /bin/true; done"],
        "syscalls": [PYTHON, "-c", SYSCALLS.format(n=opts.syscalls)],
    }
    modes = ("ungoverned", "verify", "verify-python", "no-verify", "verify+audit")
    times: dict[tuple[str, str], list[float]] = {(w, m): [] for w in workloads for m in modes}
    for _ in range(opts.reps):
        for w, argv in workloads.items():
            for m in modes:  # interleaved: machine noise hits every mode alike
                times[w, m].append(_run(argv, m, checker))
    print(f"{'workload':<10} {'mode':<13} {'median s':>9} {'ratio':>7}   reps={opts.reps}, {where}")
    for w in workloads:
        base = statistics.median(times[w, "ungoverned"])
        for m in modes:
            med = statistics.median(times[w, m])
            print(f"{w:<10} {m:<13} {med:9.3f} {med / base:7.3f}")
    base = statistics.median(times["exec-loop", "ungoverned"])
    for m in modes[1:]:
        per_exec = statistics.median(times["exec-loop", m]) - base
        print(f"exec-loop {m}: {per_exec / opts.execs * 1e6:.0f} us added per exec")
    if fastpath.load() is None:
        print("(libagentsh-boundary.so is not built: verify is verify-python; make setup)")
    start = statistics.median(times["start", "verify"]) - statistics.median(
        times["start", "ungoverned"]
    )
    print(f"start: {start * 1e3:.1f} ms to start supervision (once per governed shell)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
