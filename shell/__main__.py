"""The bash frontend: ``python -I -m agentsh.shell --argv0 A --real PATH -- ARGS...``.

The C shim execs this in place of bash (ARCHITECTURE §3 step 1). It prechecks the script
and execs bash.real in place, or refuses: exit 126 (blocked), 2 (usage, bad policy),
127 (internal failure). It never runs anything ungoverned.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from agentsh.enforce.errors import AgentshError, InternalError, UsageError
from agentsh.shell import invocation, run


def find_real_bash() -> str:
    """bash.real when the shim is installed, else the bash on PATH (resolved).

    Raises:
        InternalError: no bash found.
    """
    import shutil  # only without --real (the shim always passes it): keep it off that path

    found = shutil.which("bash")
    if found is None:
        raise InternalError("no bash on PATH")
    resolved = os.path.realpath(found)
    if os.path.exists(resolved + ".real"):
        return resolved + ".real"
    return resolved


def _split(argv: Sequence[str]) -> tuple[str, str | None, list[str]]:
    """Split our own ``--argv0``/``--real`` options from bash's arguments."""
    argv0, real = "bash", None
    i = 0
    while i < len(argv) and argv[i] in ("--argv0", "--real"):
        if i + 1 >= len(argv):
            raise UsageError(f"{argv[i]} needs a value")
        if argv[i] == "--argv0":
            argv0 = argv[i + 1]
        else:
            real = argv[i + 1]
        i += 2
    if i < len(argv) and argv[i] == "--":
        i += 1
    return argv0, real, list(argv[i:])


def _run(argv: Sequence[str]) -> NoReturn:
    argv0, real, args = _split(argv)
    inv = invocation.parse(argv0, args)
    real_path = real or find_real_bash()
    if inv.source is invocation.Source.INFO:
        os.execv(real_path, [argv0, *args])
    if inv.source is invocation.Source.STDIN and (inv.interactive_flag or os.isatty(0)):
        from agentsh.shell import repl

        repl.serve(inv, real_path)
    run.governed_bash(inv, real_path, root=Path("/"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns only on refusal (the exit status)."""
    try:
        _run(sys.argv[1:] if argv is None else argv)
    except AgentshError as err:
        sys.stderr.write(err.render() + "\n")
        return err.exit_code
    except Exception as err:  # noqa: BLE001 — fail closed on any bug: nothing was exec'd
        sys.stderr.write(f"agentsh: internal error: {type(err).__name__}: {err}\n")
        return InternalError.exit_code


if __name__ == "__main__":
    sys.exit(main())
