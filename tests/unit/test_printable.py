"""enforce.printable: what the agent wrote, made safe for a person's terminal."""

from __future__ import annotations

import pytest

from agentsh.enforce.errors import Blocked
from agentsh.enforce.printable import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ls -l /tmp", "ls -l /tmp"),
        ("naïve café 日本", "naïve café 日本"),  # printable letters stay as they are
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # clear screen
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # retitle (OSC ... BEL)
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),  # carriage return rewrites a line
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x7f", "\\x7f"),
        ("evil\u202etxt.sh", "evil\\u202etxt.sh"),  # right-to-left override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("\U000e0041", "\\U000e0041"),  # tag character
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_limit_cuts_long_text() -> None:
    assert printable("x" * 20, 10) == "xxxxxxx..."
    assert printable("x" * 10, 10) == "x" * 10


def test_error_messages_are_escaped_line_by_line() -> None:
    err = Blocked("blocked by policy: cat '\x1b[2J' (rule r)\nsecond line", hint="do \x07 this")
    assert err.render() == (
        "agentsh: blocked by policy: cat '\\x1b[2J' (rule r)\nsecond line\nhint: do \\x07 this"
    )
