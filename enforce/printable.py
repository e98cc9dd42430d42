"""Text from a governed tree made safe to show on a person's terminal.

Command lines, file names and paths in audit events, the trash manifest and refusal
lines are chosen by the agent. Printed raw, an escape sequence in them would drive the
operator's terminal (retitle it, clear or rewrite what is shown, set the clipboard), and a
bidirectional override would make a line read differently from what it says. Every
character ``str.isprintable`` rejects — C0 and C1 controls, DEL, format characters such as
U+202E — is shown as a Python-style escape instead. JSON output needs none of this: its
encoder escapes control characters itself.
"""

from __future__ import annotations


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with every unprintable character escaped (``\\x1b``, ``\\u202e``), cut to
    ``limit`` characters (ending in ``...``) when given."""
    out = "".join(c if c.isprintable() else _escape(c) for c in text)
    if limit is not None and len(out) > limit:
        return out[: limit - 3] + "..."
    return out


def _escape(c: str) -> str:
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
