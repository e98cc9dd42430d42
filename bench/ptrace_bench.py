"""Overhead of the ptrace exec-supervision backend (ARCHITECTURE §11 measured ~+56 % on an
exec loop and ~0 on exec-free work; §10's 1.15x budget is for user-notify).

Runs each workload ungoverned and governed by ``ptrace.start_traced`` (the built-in
policy, the exec-event check on; without it; with it plus the real SQLite audit store),
and the notify backend as a reference, interleaved, and prints medians and ratios.

    .venv/bin/python bench/ptrace_bench.py [--reps N] [--execs N] [--syscalls N] [--cpus LIST]

Workloads:
  exec-loop   bash -c 'for i in $(seq N); do /bin/true; done'  (N child execs)
  syscalls    one python3 doing N x (stat, getppid, open+close): no exec after its own
  start       /usr/bin/true: the fixed cost of starting a supervisor, which the two
              ratios include; "steady" lines subtract it from both sides
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

from agentsh.enforce import audit, config, govern, loader, ptrace, supervisor
from agentsh.shell import supervise

BASH = "/usr/bin/bash"
PYTHON = "/usr/bin/python3"
SYSCALLS = (
    "import os\n"
    "for _ in range({n}):\n"
    "    os.stat('/'); os.getppid(); os.close(os.open('/dev/null', os.O_RDONLY))\n"
)
MODES = ("ungoverned", "ptrace", "ptrace-no-verify", "ptrace+audit", "notify")


def _checker_factory() -> Callable[[], supervisor.Checker]:
    variables = {"HOME": "/root", "PROJECT_ROOT": "/tmp", "WORKSPACE": "/tmp"}
    variables |= {"TMPDIR": "/tmp", "USER": "root"}
    policy = loader.load(config.builtin_policy_path(), variables)
    return lambda: supervise.make_checker(policy)


def _sink_factory(mode: str) -> Callable[[], supervisor.Sink]:
    """A sink that drops events, or (``+audit``) the real SQLite store in a temp dir."""
    if not mode.endswith("+audit"):
        return lambda: lambda _event: None
    path = Path(tempfile.mkdtemp(prefix="agentsh-bench-")) / "audit.db"
    return lambda: audit.Writer(audit.open_store(path))


def _govern(mode: str, first_exec: str, checker: Callable[[], supervisor.Checker]) -> None:
    """In the child, right before its exec: start the backend ``mode`` names."""
    sink = _sink_factory(mode)
    if mode == "notify":
        govern.start(checker, sink, first_exec=first_exec)
    elif mode.startswith("ptrace"):
        verify = mode != "ptrace-no-verify"
        ptrace.start_traced(checker, sink, first_exec=first_exec, verify=verify)


def _run(argv: list[str], mode: str, checker: Callable[[], supervisor.Checker]) -> float:
    """Seconds from fork to exit of ``argv``, governed according to ``mode``."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            _govern(mode, argv[0], checker)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{mode}: {argv[:3]} failed with status {status:#x}")
    time.sleep(0.05)  # let the supervisor of this run flush and exit before the next
    return elapsed


def _report(times: dict[tuple[str, str], list[float]], reps: int, execs: int) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    workloads = sorted({w for w, _ in times}, key=["exec-loop", "syscalls", "start"].index)
    print(f"{'workload':<10} {'mode':<17} {'median s':>9} {'ratio':>7}   (reps={reps})")
    for w in workloads:
        for m in MODES:
            print(f"{w:<10} {m:<17} {med[w, m]:9.3f} {med[w, m] / med[w, 'ungoverned']:7.3f}")
    net = {w: med[w, "ungoverned"] - med["start", "ungoverned"] for w in workloads}
    for m in MODES[1:]:
        fixed = med["start", m] - med["start", "ungoverned"]
        steady = {w: (med[w, m] - med["start", m]) / net[w] for w in ("exec-loop", "syscalls")}
        per_exec = (med["exec-loop", m] - med["exec-loop", "ungoverned"] - fixed) / execs
        print(
            f"{m:<17} start +{fixed * 1e3:.1f} ms; steady ratios exec-loop "
            f"{steady['exec-loop']:.3f}, syscalls {steady['syscalls']:.3f}; "
            f"{per_exec * 1e6:.0f} us per exec"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--execs", type=int, default=1000)
    ap.add_argument("--syscalls", type=int, default=100000)
    cpus.add_option(ap)
    opts = ap.parse_args()
    print(cpus.apply(opts))
    support = ptrace.probe()
    if not support.available:
        raise SystemExit(f"the ptrace backend does not work here: {support.reason}")
    checker = _checker_factory()
    workloads = {
        "exec-loop": [BASH, "-c", f"for i in $(seq {opts.execs}); do /bin/true; done"],
        "syscalls": [PYTHON, "-c", SYSCALLS.format(n=opts.syscalls)],
        "start": ["/usr/bin/true"],
    }
    times: dict[tuple[str, str], list[float]] = {(w, m): [] for w in workloads for m in MODES}
    for _ in range(opts.reps):
        for w, argv in workloads.items():
            for m in MODES:  # interleaved: machine noise hits every mode alike
                times[w, m].append(_run(argv, m, checker))
    _report(times, opts.reps, opts.execs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
