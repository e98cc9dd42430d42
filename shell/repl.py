"""The governed interactive shell: a prompt_toolkit prompt in front of one persistent
bash.real (ARCHITECTURE §3, "Interactive"). The only prompt_toolkit importer.

bash.real runs non-interactively, reading the lines we approve from a pipe; each line runs
as ``{ LINE\n} </dev/tty`` so programs read the terminal directly, and its output goes
straight to the terminal (nothing is tunnelled). After each line bash writes the status
to the status pipe, which tells us the line finished. ``cd``, variables and functions
persist because it is one bash process.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from prompt_toolkit import PromptSession
from prompt_toolkit.history import InMemoryHistory

from agentsh.enforce import plan
from agentsh.enforce.errors import AgentshError, Blocked, LayerUnavailable
from agentsh.enforce.policy import Decision
from agentsh.enforce.record import replace
from agentsh.shell import run
from agentsh.shell.invocation import Invocation

# Reports the line's status on the status pipe (fd N), then restores $? for the next line,
# which the printf would otherwise replace.
_EPILOGUE = '__agentsh_rc=$?; printf "%d\\n" "$__agentsh_rc" >&{fd}; (exit "$__agentsh_rc")\n'


def _govern(watch: plan.Supervision, real: str) -> None:
    """In the child, before it execs bash: every layer of the plan (the message of a
    failure goes to stderr here: subprocess keeps only that the child failed)."""
    try:
        plan.govern_tree(watch, first_exec=real)
    except AgentshError as err:
        sys.stderr.write(err.render() + "\n")
        raise


class _Bash:
    """One bash.real reading approved lines from a pipe; statuses come back on another."""

    def __init__(
        self, real: str, argv0: str, env: dict[str, str], watch: plan.Supervision | None
    ) -> None:
        """Start bash, governed by ``watch`` (None: an outer supervisor already governs
        this process). Only bash and what it runs are governed: the layers are applied in
        the child between fork and exec, so this prompt stays outside the Landlock domain
        and the file monitor (it writes the audit store, which both protect).

        Raises:
            LayerUnavailable: bash could not be governed (it did not start); the reason
                is on stderr.
        """
        status_r, status_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [argv0, "-s"],
                executable=real,
                stdin=subprocess.PIPE,
                env=env,
                pass_fds=(status_w,),
                # No thread runs yet: the prompt (and its threads) start after bash.
                preexec_fn=None if watch is None else functools.partial(_govern, watch, real),  # noqa: PLW1509
            )
        except subprocess.SubprocessError as err:  # what a preexec_fn failure becomes
            raise LayerUnavailable(f"bash could not be governed: {err}") from err
        os.close(status_w)
        self.epilogue = _EPILOGUE.format(fd=status_w)
        self.status = os.fdopen(status_r, "r")
        self.send("trap : INT QUIT\n")  # survive Ctrl-C; children keep default handlers

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode("utf-8", "surrogateescape"))
        self.proc.stdin.flush()

    def run(self, line: str) -> int | None:
        """Run one line; its status, or None when bash exited (``exit``)."""
        try:
            self.send("{ " + line + "\n} </dev/tty\n" + self.epilogue)
        except BrokenPipeError:
            return None
        # A background job may hold the status pipe open after bash exits: wait for
        # either a status line or bash's exit, never for EOF alone.
        while not select.select([self.status], [], [], 0.2)[0]:
            if self.proc.poll() is not None:
                return None
        answer = self.status.readline()
        return int(answer) if answer.strip().isdigit() else None

    def cwd(self) -> str:
        try:
            return os.readlink(f"/proc/{self.proc.pid}/cwd")
        except OSError:
            return os.getcwd()

    def finish(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait()


def _incomplete(real: str, text: str) -> bool:
    """True when bash would wait for more input (an open quote, `do` without `done`)."""
    check = subprocess.run([real, "-n", "-c", text], capture_output=True, text=True, check=False)
    return check.returncode != 0 and "unexpected end of file" in check.stderr


def _ask(session: PromptSession[str], question: str) -> bool:
    try:
        answer = session.prompt(f"{question} Approve? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _read_line(session: PromptSession[str], real: str, prompt: str) -> str | None:
    lines: list[str] = []
    while True:
        try:
            lines.append(session.prompt(prompt if not lines else "> "))
        except KeyboardInterrupt:
            return ""
        except EOFError:
            return None if not lines else "\n".join(lines)
        text = "\n".join(lines)
        if not _incomplete(real, text):
            return text


def _governed(session: PromptSession[str], settings: run.Settings, text: str, sid: str) -> bool:
    """Precheck one line; ask about `approve`; print the refusal. True when it may run."""
    _, checks = run.decide(text, settings.policy, approver=True, supervised=True)
    for i, c in enumerate(checks):
        if c.verdict.decision is Decision.APPROVE:
            ok = _ask(session, f"agentsh: {c.text!r} needs approval: {c.verdict.message}.")
            decision = Decision.ALLOW if ok else Decision.DENY
            checks[i] = replace(c, verdict=replace(c.verdict, decision=decision))
    run.record(settings, run.command_events(checks, session=sid, layer="repl"))
    refusal = run.first_refusal(checks)
    if refusal is not None:
        sys.stderr.write(Blocked(run.blocked_message(refusal)).render() + "\n")
        return False
    return True


def serve(inv: Invocation, real: str) -> NoReturn:
    """Run the interactive governed shell until ``exit`` or end of input."""
    root = Path("/")
    settings = run.load_settings(root, trusted_only=True, cache_dir=root / run.SETTINGS_CACHE)
    sid, status = run.new_session(), 0
    # Supervise this process before bash starts, so bash and everything it runs are
    # governed; this prompt itself never execs anything but bash and `bash -n`.
    watch = run.supervision(settings, sid)
    if watch is not None and watch.limits is not None:
        # command_timeout is per command: here it would end the whole session.
        watch = replace(watch, limits=replace(watch.limits, command_timeout_s=None))
    env = run.filter_environment(settings, os.environ).env
    bash = _Bash(real, inv.argv0.lstrip("-") or "bash", env, watch)
    session: PromptSession[str] = PromptSession(history=InMemoryHistory())
    # After bash started (it keeps the default disposition): Ctrl-C belongs to the
    # running command, never to this prompt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        home = os.path.expanduser("~")
        cwd = bash.cwd().replace(home, "~", 1) if bash.cwd().startswith(home) else bash.cwd()
        text = _read_line(session, real, f"agentsh:{cwd}$ ")
        if text is None:
            break
        if not text.strip() or not _governed(session, settings, text, sid):
            continue
        result = bash.run(text)
        if result is None:
            break
        status = result
    final = bash.finish()
    sys.exit(final if final != 0 else status)
