"""Man pages are source: every CLI option is documented, every page lints clean."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from agentsh.shell import cli

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        else:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    yield path, opt


def _page_for(path: tuple[str, ...]) -> Path:
    return MAN / ("agentsh-shim.8" if path[:1] == ("shim",) else "agentsh.1")


OPTIONS = sorted(set(_walk(cli.build_parser())))


@pytest.mark.parametrize(("path", "option"), OPTIONS)
def test_every_option_is_in_the_man_page(path: tuple[str, ...], option: str) -> None:
    page = _page_for(path).read_text()
    # mdoc writes long options as `Fl -name`: the leading dash is implied by Fl.
    assert f"Fl {option[1:]}" in page, (
        f"{' '.join(path)} {option} missing from {_page_for(path).name}"
    )


def test_every_verb_has_help() -> None:
    parser = cli.build_parser()
    for path, _ in OPTIONS:
        sub = parser
        for name in path:
            sub = next(
                a.choices[name] for a in sub._actions if isinstance(a, argparse._SubParsersAction)
            )
        assert sub.description or sub.format_help()


@pytest.mark.parametrize("page", sorted(MAN.glob("*.[0-9]")), ids=lambda p: p.name)
def test_man_page_lints_clean(page: Path) -> None:
    assert shutil.which("mandoc"), "mandoc is missing: `make test` installs it"
    out = subprocess.run(
        ["mandoc", "-Tlint", "-Wwarning", str(page)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
