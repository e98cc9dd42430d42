"""``--cpus LIST`` for the benches: pin a whole run (the governed tree and its supervisor
inherit the bench's affinity) to some CPUs, to tell a supervisor's own cost from the cost
of handing work between CPUs."""

from __future__ import annotations

import argparse
import os


def add_option(ap: argparse.ArgumentParser) -> None:
    """Add ``--cpus`` to ``ap``."""
    ap.add_argument(
        "--cpus", type=_cpu_list, help="run on these CPUs only, e.g. 0 or 0,1 (default: all)"
    )


def apply(opts: argparse.Namespace) -> str:
    """Pin this process (and so every process it starts) as ``--cpus`` asks; returns a
    line saying where the run runs."""
    if opts.cpus:
        os.sched_setaffinity(0, opts.cpus)
    cpus = sorted(os.sched_getaffinity(0))
    return f"CPUs: {','.join(map(str, cpus))} of {os.cpu_count()}"


def _cpu_list(text: str) -> set[int]:
    try:
        return {int(part) for part in text.split(",")}
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of CPU numbers: {text!r}") from None
