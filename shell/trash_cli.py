"""``agentsh trash list|restore|purge``: what the soft-delete workspace kept (enforce.trash).

The lead's ``cli.build_parser`` calls :func:`add_parser`. Output is for people (plain
sentences, sizes in KiB/MiB, local times) except ``list --json``; long restores and purges
show progress on stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from agentsh.enforce.errors import UsageError
from agentsh.enforce.fuseconf import DEFAULT_TRASH_ROOT
from agentsh.enforce.printable import printable
from agentsh.enforce.trash import Entry, Trash, manifest_json

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PROGRESS_MIN = 50  # show progress from this many steps on


def add_parser(verbs: Any) -> None:
    """Add ``trash`` with ``list``, ``restore`` and ``purge`` to the verb parsers."""
    trash = verbs.add_parser(
        "trash",
        help="list, restore or purge files deleted in a soft-delete workspace",
        description="Files deleted in a soft-delete workspace (config sandbox.fuse) wait in "
        f"the trash store ({DEFAULT_TRASH_ROOT}) with the command that deleted them, until "
        "restored or purged.",
    )
    sub = trash.add_subparsers(dest="trash_verb", metavar="VERB", parser_class=type(trash))
    sub.required = True
    ls = sub.add_parser(
        "list",
        help="show what the trash holds, oldest first",
        description="Show every entry: token, when it was deleted, kind, size, original "
        "path and the command that deleted it.",
    )
    ls.add_argument("--json", action="store_true", help="one JSON document with every entry")
    _store_option(ls)
    ls.set_defaults(func=_cmd_list)
    rs = sub.add_parser(
        "restore",
        help="put a deleted file or tree back",
        description="Restore TOKEN to where it was deleted (or to --dest). TOKEN:PATH "
        "restores one file of a deleted tree. Restoring a directory also restores what "
        "the same command deleted inside it. Nothing is overwritten without --force.",
    )
    rs.add_argument("token", metavar="TOKEN", help="a token from `agentsh trash list`")
    rs.add_argument("--dest", type=Path, help="restore to PATH instead of the original place")
    rs.add_argument(
        "--force",
        action="store_true",
        help="replace what is in the way (the replaced files go to the trash)",
    )
    _store_option(rs)
    rs.set_defaults(func=_cmd_restore)
    pg = sub.add_parser(
        "purge",
        help="delete entries for good",
        description="Delete entries older than --older-than, then the oldest until the "
        "rest fit in --quota. One of the two is required (--older-than 0s empties it).",
    )
    pg.add_argument("--older-than", metavar="AGE", help="e.g. 30m, 12h, 7d, 2w")
    pg.add_argument("--quota", metavar="SIZE", help="e.g. 500M, 2G (binary units)")
    _store_option(pg)
    pg.set_defaults(func=_cmd_purge)


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        type=Path,
        default=DEFAULT_TRASH_ROOT,
        help=f"trash directory (default {DEFAULT_TRASH_ROOT})",
    )


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``100k``, ``4096`` (binary units) in bytes.

    Raises:
        UsageError: anything else.
    """
    m = _SIZE.fullmatch(text)
    if m is None:
        raise UsageError(f"--quota: cannot read {text!r} as a size", hint="use e.g. 500M or 2G")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def parse_age(text: str) -> float:
    """``30s``, ``10m``, ``12h``, ``7d``, ``2w`` in seconds.

    Raises:
        UsageError: anything else.
    """
    m = _DURATION.fullmatch(text)
    if m is None:
        raise UsageError(f"--older-than: cannot read {text!r} as an age", hint="use e.g. 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def human_size(n: int) -> str:
    size, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def _progress(verb: str) -> Any:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total >= _PROGRESS_MIN:
            end = "\n" if done == total else ""
            sys.stderr.write(f"\r{verb} {done}/{total}…{end}")
            sys.stderr.flush()

    return show


def _trees(entries: list[Entry]) -> dict[str, int]:
    """Per directory entry, how many entries of its batch lie below it (what a restore
    of its token also brings back)."""
    by_batch: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_batch[e.batch].append(e)
    counts = {}
    for e in entries:
        if e.kind == "dir":
            prefix = e.original.rstrip("/") + "/"
            counts[e.token] = sum(1 for o in by_batch[e.batch] if o.original.startswith(prefix))
    return counts


def _line(e: Entry, below: int) -> str:
    """One entry for a terminal (its path and command are the agent's: escaped)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.deleted_at))
    if e.problem is not None:
        return printable(f"{e.token}  {stamp}  ?        -  ({e.problem})")
    inside = len(e.members) + below
    tree = f" (+{inside} inside)" if inside else ""
    return printable(
        f"{e.token}  {stamp}  {e.kind:7} {human_size(e.size):>10}  {e.original}{tree}"
        f"  <- {e.command or '?'}"
    )


def _cmd_list(args: argparse.Namespace) -> int:
    store = Trash(args.store)
    entries = store.list()
    total = sum(e.size for e in entries)
    if args.json:
        doc = {
            "store": str(store.root),
            "total_bytes": total,
            "entries": [{**manifest_json(e), "problem": e.problem} for e in entries],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    if not entries:
        sys.stdout.write(f"the trash is empty ({store.root})\n")
        return 0
    below = _trees(entries)
    sys.stdout.write(f"{'TOKEN':24}  {'DELETED':19}  KIND          SIZE  PATH  <- COMMAND\n")
    for e in entries:
        sys.stdout.write(_line(e, below.get(e.token, 0)) + "\n")
    sys.stdout.write(
        f"{len(entries)} entries, {human_size(total)} in {store.root}; "
        "restore one with `agentsh trash restore TOKEN`\n"
    )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    store = Trash(args.store)
    report = store.restore(
        args.token, dest=args.dest, force=args.force, progress=_progress("restoring")
    )
    for path in report.created:
        sys.stdout.write(printable(f"made missing directory {path}") + "\n")
    for path, token in report.replaced:
        sys.stdout.write(printable(f"replaced {path}; what was there is in the trash as {token}"))
        sys.stdout.write("\n")
    first = report.restored[0]
    more = (
        f" and {len(report.restored) - 1} more entries below it" if len(report.restored) > 1 else ""
    )
    files = f"{report.files} file{'s' if report.files != 1 else ''}"
    sys.stdout.write(printable(f"restored {first}{more} ({files})") + "\n")
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    if args.older_than is None and args.quota is None:
        raise UsageError(
            "trash purge needs --older-than or --quota",
            hint="`agentsh trash purge --older-than 7d`; --older-than 0s empties the trash",
        )
    age = parse_age(args.older_than) if args.older_than is not None else None
    quota = parse_size(args.quota) if args.quota is not None else None
    report = Trash(args.store).purge(age, quota, progress=_progress("purging"))
    sys.stdout.write(
        f"removed {len(report.removed)} entries ({human_size(report.freed)}); "
        f"kept {report.kept} ({human_size(report.kept_bytes)})\n"
    )
    return 0
