"""``agentsh shim install-shell | uninstall-shell | status``: put the static shim in place
of /bin/bash (and /bin/sh) under a root, reversibly (ARCHITECTURE §1, §4, §9).

Contract, per target ``<root>/bin/NAME`` (``bin`` resolved inside the root, so a merged
/usr gives ``usr/bin/NAME``):

- the original is kept as ``NAME.real`` next to it: a hard link to the same inode when it
  is a file (content, mode, owner and times survive), a copy of the resolved binary when
  it is a symlink (renaming ``sh -> dash`` would leave a link that later resolves to the
  shim: an exec loop);
- every file is replaced atomically (temp file in the same directory, fsync, rename(2));
- installing twice changes nothing; an existing ``.real`` is never overwritten;
- uninstall restores the original exactly (the same inode, or the same symlink text) from
  the manifest ``<root>/var/lib/agentsh/shim-install.json``, which also records whether we
  created ``etc/agentsh/shim.conf`` and ``usr/lib/agentsh/bash_startup.sh``.

Plans are computed first and applied second, so a refusal (``UsageError``) changes nothing
and ``--dry-run`` prints exactly what would be done.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from agentsh.enforce.errors import InternalError, UsageError
from agentsh.enforce.record import asdict, dataclass, field

SHELLS = ("bash", "sh")
MANIFEST = "var/lib/agentsh/shim-install.json"
CONF = "etc/agentsh/shim.conf"
STARTUP = "usr/lib/agentsh/bash_startup.sh"
_DIRS = ("etc/agentsh", "usr/lib/agentsh", "var/lib/agentsh")
_HOST_FLAG = "--i-understand-this-modifies-the-host"


def default_shim() -> Path:
    """Where ``make setup`` puts the built shim: ``<sys.prefix>/libexec/agentsh-shell-shim``."""
    return Path(sys.prefix) / "libexec" / "agentsh-shell-shim"


@dataclass(frozen=True)
class Options:
    """What to do. ``startup=None`` means the packaged ``agentsh/enforce/bash_startup.sh``."""

    root: Path = Path("/")
    shells: tuple[str, ...] = SHELLS
    force: bool = False
    dry_run: bool = False
    host_ok: bool = False
    shim: Path = field(default_factory=default_shim)
    frontend: Path = field(default_factory=lambda: Path(sys.executable))
    startup: Path | None = None


@dataclass(frozen=True)
class Action:
    """One step of a plan: ``op`` (mkdir, write, link_real, copy_real, write_shim, restore,
    relink, remove, rmdir, skip) on ``path``; ``detail`` says it in plain words."""

    op: str
    path: str
    detail: str
    source: str = ""
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Report:
    verb: str
    root: str
    dry_run: bool
    actions: tuple[Action, ...]
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(a.op != "skip" for a in self.actions)


@dataclass(frozen=True)
class TargetStatus:
    name: str
    path: str
    state: str  # installed | not_installed | partial
    detail: str


@dataclass(frozen=True)
class Status:
    root: str
    targets: tuple[TargetStatus, ...]
    shim_conf: str | None
    startup_file: bool
    manifest: bool


# --- paths ------------------------------------------------------------------------------


def _in_root(root: Path, rel: str) -> Path:
    """``root/rel`` with every symlink resolved as if ``root`` were ``/`` (a chroot view).

    Raises:
        UsageError: a symlink loop.
    """
    current, parts, hops = root, list(PurePosixPath(rel).parts), 0
    while parts:
        part = parts.pop(0)
        if part in ("/", "."):
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        nxt = current / part
        if not nxt.is_symlink():
            current = nxt
            continue
        hops += 1
        if hops > 40:
            raise UsageError(f"too many symbolic links under {root / rel}")
        link = os.readlink(nxt)
        current = root if link.startswith("/") else current
        parts = list(PurePosixPath(link).parts) + parts
    return current


def _target(root: Path, name: str) -> Path:
    return _in_root(root, "bin") / name


def _real(target: Path) -> Path:
    return target.with_name(target.name + ".real")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _classify(target: Path, shim: bytes | None, known: set[str]) -> str:
    """absent | shim (byte-equal to ``shim``) | old_shim (sha256 in ``known``) | other."""
    if not os.path.lexists(target):
        return "absent"
    if target.is_symlink() or not target.is_file():
        return "other"
    data = target.read_bytes()
    if shim is not None and data == shim:
        return "shim"
    return "old_shim" if hashlib.sha256(data).hexdigest() in known else "other"


# --- manifest -------------------------------------------------------------------------


def _load_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": 1, "targets": {}, "files": {}, "dirs": [], "shims": []}
    except (OSError, ValueError) as err:
        raise UsageError(
            f"cannot read {path}: {err}", hint="restore it, or remove it to start over"
        ) from err
    return data


# --- plans -------------------------------------------------------------------------------


def _plan_target(root: Path, name: str, shim: bytes, man: dict[str, Any]) -> list[Action]:
    """Actions installing the shim as ``<root>/bin/name``; records the original in man."""
    target = _target(root, name)
    real, rel = _real(target), str(target.relative_to(root))
    kind = _classify(target, shim, set(man["shims"]))
    has_real = os.path.lexists(real)
    write = Action("write_shim", str(target), f"replace {target} with the shim", data=shim)
    if kind == "absent":
        return [Action("skip", str(target), f"{target} does not exist; nothing to replace")]
    if kind == "shim" and has_real:
        return [Action("skip", str(target), f"{target} is already the shim")]
    if kind in ("shim", "old_shim") and not has_real:
        raise UsageError(
            f"{target} is the shim but {real} is missing, so there is no original to run",
            hint=f"reinstall the package that ships {target}, then run install-shell again",
        )
    if kind == "old_shim":
        return [Action("write_shim", str(target), f"update the shim at {target}", data=shim)]
    if has_real and _same_bytes(target, real):  # an install interrupted after link_real
        return [write]
    if has_real:
        raise UsageError(
            f"{real} exists but {target} is not the shim (was the shell upgraded?)",
            hint=f"to keep the current {target}, delete {real}, then run install-shell again",
        )
    st = target.lstat()
    if stat.S_ISLNK(st.st_mode):
        source = _in_root(root, rel)
        if not source.is_file():
            raise UsageError(f"{target} is a symbolic link to {source}, which is not a file")
        man["targets"][rel] = {"kind": "symlink", "link": os.readlink(target)}
        keep = Action("copy_real", str(real), f"copy {source} to {real}", source=str(source))
    elif stat.S_ISREG(st.st_mode):
        man["targets"][rel] = {"kind": "file", "sha256": _sha(target)}
        keep = Action("link_real", str(real), f"keep the original {target} as {real}")
    else:
        raise UsageError(f"{target} is neither a file nor a symbolic link; not replacing it")
    return [keep, write]


def _plan_file(root: Path, rel: str, data: bytes, man: dict[str, Any] | None) -> Action:
    """Write ``root/rel`` unless it already holds ``data``; the first time, record in
    ``man`` what was there before, so that uninstall can put it back (or remove ours)."""
    path = root / rel
    old = path.read_bytes() if path.is_file() else None
    if old == data:
        return Action("skip", str(path), f"{path} is up to date")
    if man is not None and rel not in man["files"]:
        man["files"][rel] = {"previous": None if old is None else old.decode("utf-8", "replace")}
    return Action("write", str(path), f"write {path}", data=data)


def _conf_text(opts: Options) -> bytes:
    return (
        "# Written by: agentsh shim install-shell. See agentsh-shim(8).\n"
        f"force={'true' if opts.force else 'false'}\n"
        f"frontend={opts.frontend}\n"
    ).encode()


def plan_install(opts: Options) -> Report:
    """The install plan under ``opts.root`` (nothing is changed).

    Raises:
        UsageError: bad options, or a target in a state we must not touch (partial).
        InternalError: the packaged startup file is missing.
    """
    root, warnings = _check_options(opts, "install-shell")
    shim, man = opts.shim.read_bytes(), _load_manifest(root)
    actions = [
        Action("mkdir", str(root / d), f"create {root / d}")
        for d in _DIRS
        if not (root / d).is_dir()
    ]
    man["dirs"] = sorted({*man["dirs"], *(d for d in _DIRS if not (root / d).is_dir())})
    files = [
        _plan_file(root, CONF, _conf_text(opts), man),
        _plan_file(root, STARTUP, _startup_bytes(opts), man),
    ]
    targets = [a for name in opts.shells for a in _plan_target(root, name, shim, man)]
    man["shims"] = sorted({*man["shims"], hashlib.sha256(shim).hexdigest()})
    body = (json.dumps(man, indent=2, sort_keys=True) + "\n").encode()
    actions.append(_plan_file(root, MANIFEST, body, None))
    actions += files + targets
    return Report("install-shell", str(root), opts.dry_run, tuple(actions), warnings)


def _plan_restore(root: Path, rel: str, entry: dict[str, Any] | None, known: set[str]) -> Action:
    target = root / rel
    real = _real(target)
    kind = _classify(target, None, known)
    if not os.path.lexists(real):
        if kind == "old_shim":
            raise UsageError(f"{target} is the shim but {real} is missing; cannot restore it")
        return Action("skip", str(target), f"{target} is not shimmed")
    if kind not in ("old_shim", "absent") and not _same_bytes(target, real):
        raise UsageError(
            f"{target} is not the shim, so {real} is not put back over it",
            hint=f"keep the current {target} and delete {real}, or move it back by hand",
        )
    if entry is not None and entry.get("kind") == "symlink":
        detail = f"restore the symbolic link {target} -> {entry['link']}, remove {real}"
        return Action("relink", str(target), detail, source=str(entry["link"]))
    return Action("restore", str(target), f"move {real} back to {target}")


def plan_uninstall(opts: Options) -> Report:
    """The uninstall plan (nothing is changed). Restores ``opts.shells`` only; shim.conf,
    the startup file and the manifest go when no shimmed target remains.

    Raises:
        UsageError: bad options, or a target we cannot restore without losing a binary.
    """
    root, warnings = _check_options(opts, "uninstall-shell")
    man = _load_manifest(root)
    known = set(man["shims"])
    if opts.shim.is_file():
        known.add(_sha(opts.shim))
    rels = [str(_target(root, name).relative_to(root)) for name in opts.shells]
    actions = [_plan_restore(root, r, man["targets"].get(r), known) for r in rels]
    left = {r: e for r, e in man["targets"].items() if r not in rels}
    if left:
        body = json.dumps({**man, "targets": left}, indent=2, sort_keys=True) + "\n"
        actions.append(
            Action("write", str(root / MANIFEST), "update the manifest", data=body.encode())
        )
    else:
        actions += _plan_cleanup(root, man)
    return Report("uninstall-shell", str(root), opts.dry_run, tuple(actions), warnings)


def _plan_cleanup(root: Path, man: dict[str, Any]) -> list[Action]:
    actions = []
    for rel, rec in sorted(man["files"].items()):
        path = root / rel
        if rec["previous"] is not None:
            old = rec["previous"].encode()
            actions.append(Action("write", str(path), f"put back the earlier {path}", data=old))
        elif path.exists():
            actions.append(Action("remove", str(path), f"remove {path}"))
    if (root / MANIFEST).exists():
        actions.append(Action("remove", str(root / MANIFEST), "remove the install manifest"))
    for rel in sorted(man["dirs"], reverse=True):
        actions.append(Action("rmdir", str(root / rel), f"remove {root / rel} if empty"))
    return actions


# --- apply --------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int, like: os.stat_result | None = None) -> None:
    """Write a temp file beside ``path``, fsync, rename(2) over it: readers see old or new.
    ``like``: copy owner and times from it; else root-owned (when we are root)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.agentsh-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if os.geteuid() == 0:
                os.fchown(out.fileno(), like.st_uid if like else 0, like.st_gid if like else 0)
            os.fchmod(out.fileno(), mode)  # after fchown, which clears set-id bits
            if like is not None:
                os.utime(out.fileno(), ns=(like.st_atime_ns, like.st_mtime_ns))
            os.fsync(out.fileno())
        os.rename(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _mkdir(path: Path) -> None:
    """0755 whatever the umask: non-root users must read shim.conf and the startup file."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 — world-readable on purpose, writable by root only


def _original_of(path: Path, shim: bytes) -> Path:
    """The original binary behind ``path``: its ``.real`` if ``path`` is (now) the shim,
    as for ``sh -> bash`` once bash itself has been replaced."""
    return _real(path) if path.read_bytes() == shim else path


def _restore(target: Path) -> None:
    real = _real(target)
    if os.path.lexists(target) and os.path.samefile(real, target):
        real.unlink()  # rename(2) between two links to one inode would do nothing
    else:
        os.rename(real, target)


def _rmdir_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _relink(path: Path, link: str) -> None:
    tmp = path.with_name(f".{path.name}.agentsh-link")
    tmp.unlink(missing_ok=True)
    os.symlink(link, tmp)
    os.rename(tmp, path)
    _real(path).unlink()
    _fsync_dir(path.parent)


def _apply(action: Action, shim: bytes) -> None:
    path = Path(action.path)
    ops: dict[str, Callable[[], object]] = {
        "skip": lambda: None,
        "mkdir": lambda: _mkdir(path),
        "write": lambda: _write_atomic(path, action.data or b"", 0o644),
        "write_shim": lambda: _write_atomic(path, shim, 0o755),
        "link_real": lambda: os.link(path.with_name(path.name.removesuffix(".real")), path),
        "copy_real": lambda: _copy_real(Path(action.source), path, shim),
        "restore": lambda: _restore(path),
        "relink": lambda: _relink(path, action.source),
        "remove": lambda: path.unlink(missing_ok=True),
        "rmdir": lambda: _rmdir_if_empty(path),
    }
    if action.op not in ops:  # fail closed on a plan we do not understand
        raise InternalError(f"unknown install step {action.op!r}")
    ops[action.op]()


def _copy_real(source: Path, real: Path, shim: bytes) -> None:
    original = _original_of(source, shim)
    st = original.stat()
    _write_atomic(real, original.read_bytes(), stat.S_IMODE(st.st_mode), like=st)


def _execute(report: Report, shim: bytes) -> Report:
    if not report.dry_run:
        for action in report.actions:
            _apply(action, shim)
    return report


def install_shell(opts: Options) -> Report:
    """Install the shim (or only plan it with ``dry_run``). See the module docstring."""
    report = plan_install(opts)
    return _execute(report, opts.shim.read_bytes())


def uninstall_shell(opts: Options) -> Report:
    """Restore the originals (or only plan it with ``dry_run``)."""
    return _execute(plan_uninstall(opts), b"")


# --- status ----------------------------------------------------------------------------


def shim_status(opts: Options) -> Status:
    """Per target in ``opts.shells``: installed (the shim, with its .real), not_installed,
    or partial (one without the other)."""
    root = opts.root.resolve()
    man = _load_manifest(root)
    known = set(man["shims"])
    if opts.shim.is_file():
        known.add(_sha(opts.shim))
    targets = tuple(_target_status(root, name, known) for name in opts.shells)
    conf = root / CONF
    return Status(
        root=str(root),
        targets=targets,
        shim_conf=conf.read_text(errors="replace") if conf.is_file() else None,
        startup_file=(root / STARTUP).is_file(),
        manifest=(root / MANIFEST).is_file(),
    )


def _target_status(root: Path, name: str, known: set[str]) -> TargetStatus:
    target = _target(root, name)
    real = _real(target)
    shimmed = _classify(target, None, known) == "old_shim"
    has_real = os.path.lexists(real)
    if shimmed and has_real:
        state, detail = "installed", f"{target} is the shim; the original is {real}"
    elif shimmed:
        state, detail = "partial", f"{target} is the shim but {real} is missing"
    elif has_real:
        state, detail = "partial", f"{real} exists but {target} is not the shim"
    else:
        state, detail = "not_installed", f"{target} is not shimmed"
    return TargetStatus(name, str(target), state, detail)


# --- options, rendering, argparse -----------------------------------------------------


def _startup_bytes(opts: Options) -> bytes:
    source = opts.startup
    if source is None:
        packaged = importlib.resources.files("agentsh.enforce").joinpath("bash_startup.sh")
        if not packaged.is_file():
            raise InternalError(
                "the packaged bash_startup.sh is missing", hint="reinstall agentsh (make setup)"
            )
        return packaged.read_bytes()
    return source.read_bytes()


def _check_frontend(frontend: Path) -> list[str]:
    if not frontend.is_absolute():
        raise UsageError(f"--frontend must be an absolute path, not {frontend}")
    if not (frontend.is_file() and os.access(frontend, os.X_OK)):
        raise UsageError(f"--frontend {frontend} is not an executable file")
    resolved = frontend.resolve()
    with resolved.open("rb") as f:
        if f.read(2) == b"#!":
            raise UsageError(
                f"--frontend {frontend} is a script; it would run through the shimmed shell",
                hint="pass the interpreter binary itself, e.g. the venv's bin/python",
            )
    st = resolved.stat()
    if st.st_uid != 0 or st.st_mode & 0o022:
        return [f"{resolved} can be changed by users other than root; they could replace it"]
    return []


def _check_options(opts: Options, verb: str) -> tuple[Path, tuple[str, ...]]:
    """The resolved root and warnings.

    Raises:
        UsageError: the host root without the flag, a missing root/shim, a bad frontend.
    """
    root = opts.root.resolve()
    if not root.is_dir():
        raise UsageError(f"--root {opts.root} is not a directory")
    if root == Path("/") and not (opts.host_ok or opts.dry_run):
        raise UsageError(
            f"{verb} with --root / modifies this machine's /bin/bash",
            hint=f"pass {_HOST_FLAG} if that is what you want; try --dry-run or --root DIR first",
        )
    if any(name not in SHELLS for name in opts.shells):
        raise UsageError(f"unknown shell in {opts.shells}; known: {', '.join(SHELLS)}")
    warnings: list[str] = []
    if verb == "install-shell":
        if not opts.shim.is_file():
            raise UsageError(f"no shim at {opts.shim}", hint="build it with `make setup`")
        warnings += _check_frontend(opts.frontend)
    if os.geteuid() != 0 and not opts.dry_run:
        warnings.append("not root: the shim ignores (and forces on) a shim.conf not owned by root")
    return root, tuple(warnings)


def render(result: Report | Status, output: str = "text") -> str:
    """Plain language for people, or one JSON document with ``output="json"``."""
    if output == "json":
        data = asdict(result)
        if isinstance(result, Report):
            data["changed"] = result.changed
            for action in data["actions"]:
                del action["data"], action["source"]
        return json.dumps(data, indent=2)
    if isinstance(result, Status):
        lines = [f"{t.name}: {t.state.replace('_', ' ')} ({t.detail})" for t in result.targets]
        conf = "absent" if result.shim_conf is None else "present"
        return "\n".join([*lines, f"shim.conf: {conf}"])
    if not result.changed:
        head = f"{result.verb}: nothing to change under {result.root}"
    else:
        head = f"{result.verb} under {result.root}" + (
            " (dry run: nothing changed)" if result.dry_run else ""
        )
    steps = [
        f"  {'would ' if result.dry_run else ''}{a.detail}"
        for a in result.actions
        if a.op != "skip"
    ]
    notes = [f"  note: {a.detail}" for a in result.actions if a.op == "skip"]
    return "\n".join([head, *steps, *notes, *(f"warning: {w}" for w in result.warnings)])


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The flags of ``agentsh shim VERB`` (verb: install-shell, uninstall-shell, status)."""
    parser.add_argument(
        "--root", type=Path, default=Path("/"), help="root filesystem to work on (default /)"
    )
    parser.add_argument(
        "--output", choices=("text", "shell", "json"), default="text", help="text or json"
    )
    parser.add_argument("--shim", type=Path, help=f"the shim binary (default {default_shim()})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--bash-only", action="store_true", help="leave /bin/sh alone")
    group.add_argument(
        "--bash", action="store_true", help="bash and sh (the default; as in the Go agentsh)"
    )
    if verb == "status":
        return
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        _HOST_FLAG, dest="host_ok", action="store_true", help="required with --root /"
    )
    if verb == "install-shell":
        parser.add_argument(
            "--force", action="store_true", help="write force=true: govern non-TTY runs too"
        )
        parser.add_argument(
            "--frontend",
            type=Path,
            help=f"absolute path of the frontend's Python (default {sys.executable})",
        )


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from a namespace built by ``add_arguments``."""
    frontend = getattr(args, "frontend", None)
    return Options(
        root=args.root,
        shells=("bash",) if args.bash_only else SHELLS,
        force=getattr(args, "force", False),
        dry_run=getattr(args, "dry_run", False),
        host_ok=getattr(args, "host_ok", False),
        shim=args.shim or default_shim(),
        frontend=frontend if frontend is not None else Path(sys.executable),
    )


def _command(verb: Callable[[Options], Report | Status]) -> Callable[[argparse.Namespace], int]:
    """``func(args) -> int`` for argparse: run ``verb``, print the result, exit 0. Errors
    propagate to ``cli.main`` (the one place they are caught)."""

    def func(args: argparse.Namespace) -> int:
        sys.stdout.write(render(verb(options_from_args(args)), args.output) + "\n")
        return 0

    return func


def add_parsers(sub: Any) -> None:
    """Add install-shell, uninstall-shell and status to ``agentsh shim``'s subparsers."""
    verbs: tuple[tuple[str, str, Callable[[Options], Report | Status]], ...] = (
        ("install-shell", "replace /bin/bash and /bin/sh with the governed shim", install_shell),
        ("uninstall-shell", "put the original /bin/bash and /bin/sh back", uninstall_shell),
        ("status", "show per shell: installed, not_installed or partial", shim_status),
    )
    for verb, text, run in verbs:
        parser = sub.add_parser(verb, help=text, description=text + ". See agentsh-shim(8).")
        add_arguments(parser, verb)
        parser.set_defaults(func=_command(run))
