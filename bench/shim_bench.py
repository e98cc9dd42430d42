"""Shim bench (ARCHITECTURE §10): figures, not pass/fail, each next to its budget.

Inside an overlay root with the shim installed for real (``--root /``), against bash.real
in the same run:

- the non-forced non-TTY bypass: ``bash -c true`` through the shim vs bash.real;
- a forced governed ``bash -c true`` (the real frontend): absolute overhead over bash.real;
- the frontend's import time (``python -I -X importtime``) and start-up wall time.

Each figure is the median of ``--runs`` batches; a batch is ``--execs`` executions timed
as one loop run by bash.real, so that Python's own spawn cost is not in the figure.
Run: ``make bench`` or ``.venv/bin/python bench/shim_bench.py [--runs N] [--execs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentsh.install import overlay, shellinstall

BUDGET_BYPASS_RATIO = 1.05
BUDGET_GOVERNED_MS = 60.0
REAL = "/usr/bin/bash.real"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/root"}


def _batch(shell: str, execs: int, env: dict[str, str]) -> float:
    """Seconds per ``shell -c true``, timed as one loop of ``execs`` runs in bash.real."""
    loop = f"for ((i = 0; i < {execs}; i++)); do {shell} -c true || exit 9; done"
    start = time.perf_counter()
    subprocess.run([REAL, "-c", loop], stdin=subprocess.DEVNULL, env=env, check=True)
    return (time.perf_counter() - start) / execs


def _paired(shell: str, runs: int, execs: int, env: dict[str, str]) -> tuple[float, float]:
    """Median seconds per exec for bash.real and for ``shell``, batches interleaved."""
    real, other = [], []
    for _ in range(runs):
        real.append(_batch(REAL, execs, ENV))
        other.append(_batch(shell, execs, env))
    return statistics.median(real), statistics.median(other)


def _governed_ready() -> str | None:
    """None when a forced ``bash -c true`` succeeds through the real frontend."""
    env = {**ENV, "AGENTSH_SHIM_FORCE": "1"}
    done = subprocess.run(
        ["/usr/bin/bash", "-c", "true"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return f"forced `bash -c true` exits {done.returncode}: {last}"


def _import_us(module: str) -> int | None:
    """Cumulative import time of ``module`` in microseconds (``-X importtime``)."""
    done = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    for line in done.stderr.splitlines():
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1])
    return None


def _wall_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(shim: Path, runs: int, execs: int, governed_runs: int) -> dict[str, Any]:
    """Runs inside the overlay: install the shim, then time everything."""
    shellinstall.install_shell(shellinstall.Options(host_ok=True, shim=shim))
    real, shim = _paired("/usr/bin/bash", runs, execs, ENV)
    figures: dict[str, Any] = {"real_ms": real * 1000, "bypass_ms": shim * 1000}
    figures["governed_skip"] = _governed_ready()
    if figures["governed_skip"] is None:
        forced = {**ENV, "AGENTSH_SHIM_FORCE": "1"}
        real_g, gov = _paired("/usr/bin/bash", governed_runs, 5, forced)
        figures.update(governed_real_ms=real_g * 1000, governed_ms=gov * 1000)
    module = "agentsh.shell.__main__"
    figures["import_us"] = _import_us(module)
    figures["python_ms"] = _wall_ms([sys.executable, "-I", "-c", "pass"], runs)
    figures["frontend_ms"] = _wall_ms([sys.executable, "-I", "-c", f"import {module}"], runs)
    return figures


def _report(f: dict[str, Any], shim_size: int, args: argparse.Namespace) -> None:
    print(f"shim binary: {args.shim} {shim_size / 1024:.0f} KiB (static)")
    print(f"runs: median of {args.runs} batches of {args.execs} execs, interleaved")
    ratio = f["bypass_ms"] / f["real_ms"]
    verdict = "within" if ratio <= BUDGET_BYPASS_RATIO else "OVER"
    print(
        f"bypass  bash -c true (non-TTY, not forced): {f['bypass_ms']:.3f} ms vs bash.real "
        f"{f['real_ms']:.3f} ms = {ratio:.3f}x  (budget <= {BUDGET_BYPASS_RATIO}x: {verdict})"
    )
    if f["governed_skip"] is not None:
        print(f"governed bash -c true (forced): skipped: {f['governed_skip']}")
    else:
        over = f["governed_ms"] - f["governed_real_ms"]
        verdict = "within" if over <= BUDGET_GOVERNED_MS else "OVER"
        print(
            f"governed bash -c true (forced, cold): {f['governed_ms']:.1f} ms, "
            f"+{over:.1f} ms over bash.real  (budget <= {BUDGET_GOVERNED_MS:.0f} ms: {verdict})"
        )
    if f["import_us"] is None:
        print("frontend import: skipped: agentsh.shell.__main__ does not import")
    else:
        print(
            f"frontend import (-X importtime, cumulative): {f['import_us'] / 1000:.1f} ms; "
            f"wall `python -I -c 'import agentsh.shell.__main__'` {f['frontend_ms']:.1f} ms "
            f"vs `python -I -c pass` {f['python_ms']:.1f} ms  "
            "(budget: bashlex tables cached, not rebuilt per start)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="batches per figure (median)")
    parser.add_argument("--execs", type=int, default=50, help="executions per batch")
    parser.add_argument("--governed-runs", type=int, default=5, help="batches, governed")
    parser.add_argument("--shim", type=Path, default=shellinstall.default_shim(), help="binary")
    args = parser.parse_args()
    reason = overlay.probe()
    if reason is not None:
        print(f"shim bench skipped: {reason}")
        return 0
    shim = args.shim.resolve()
    if not shim.is_file():
        print(f"shim bench skipped: no shim at {shim} (run `make setup`)")
        return 0
    with tempfile.TemporaryDirectory(prefix="agentsh-bench-") as work:
        figures = overlay.call_in_overlay(
            lambda: measure(shim, args.runs, args.execs, args.governed_runs),
            Path(work),
            timeout=1800,
        )
    _report(figures, shim.stat().st_size, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
