"""The one exception tree of agentsh, caught in exactly one place (``cli.main`` and the
frontend's ``__main__``), which prints ``agentsh: <what>: <why>`` and an optional
``hint: ...`` line, then exits with the class's code.

    AgentshError                 exit 1   (base; never raised directly)
    ├── UsageError               exit 2   bad command line
    ├── PolicyError              exit 2   policy/config file invalid (names file:line key)
    ├── Blocked                  exit 126 refused by policy (names the rule)
    ├── LayerUnavailable         exit 126 a layer the config requires is missing
    ├── AuditUnavailable         exit 126 the audit store cannot be written (fail closed)
    └── InternalError            exit 127 frontend/shim failure (no bash.real, ...)
"""

from __future__ import annotations


class AgentshError(Exception):
    """Base class. ``what`` names the subject, ``hint`` tells the user what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        """The lines printed on stderr for this error (no trailing newline). Messages
        carry paths and command lines the agent chose: each line is shown with its
        unprintable characters escaped (``enforce.printable``)."""
        from agentsh.enforce.printable import printable

        text = f"agentsh: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return "\n".join(printable(line) for line in text.split("\n"))


class UsageError(AgentshError):
    exit_code = 2


class PolicyError(AgentshError):
    """A policy or config file is invalid. The message names file, line and key path."""

    exit_code = 2

    def __init__(
        self,
        file: str,
        line: int | None,
        key: str,
        why: str,
        *,
        hint: str | None = None,
    ) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {why}", hint=hint)
        self.file = file
        self.line = line
        self.key = key
        self.why = why


class Blocked(AgentshError):
    """Refused by policy. ``message`` is the full one-line refusal."""

    exit_code = 126


class LayerUnavailable(AgentshError):
    exit_code = 126


class AuditUnavailable(AgentshError):
    exit_code = 126


class InternalError(AgentshError):
    exit_code = 127
