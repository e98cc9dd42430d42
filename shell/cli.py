"""The ``agentsh`` command: every verb, and the one place errors are caught and turned
into ``agentsh: <what>: <why>`` plus an exit status (2 usage/policy, 126 blocked, 127 internal).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentsh.enforce import VERSION
from agentsh.enforce.errors import AgentshError, Blocked, UsageError
from agentsh.enforce.policy import Verdict

OPS = ("exec", "file_read", "file_write", "file_delete", "net_connect")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so main() owns the exit."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}", hint=f"run `{self.prog} --help`")


def _add_policy_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="config file (default /etc/agentsh/config.yaml)")
    p.add_argument("--policy", type=Path, help="policy file (default: the one the config names)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentsh",
        description="A governed shell for AI agents: policy precheck, enforcement, audit.",
    )
    parser.add_argument("--version", action="version", version=f"agentsh {VERSION}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    _check_parser(verbs)
    _exec_parser(verbs)
    _policy_parsers(verbs)
    _events_parser(verbs)
    _shim_parser(verbs)
    _detect_parser(verbs)
    _trash_parser(verbs)
    return parser


def _check_parser(verbs: Any) -> None:
    p = verbs.add_parser(
        "check",
        help="precheck a command line and explain every simple command in it",
        description="Parse a bash command line as the governed shell would, and explain the "
        "decision for every simple command found (wrappers unwrapped). Exit 0 when it would "
        "run, 126 when it would be blocked.",
    )
    _add_policy_source(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--supervised",
        action="store_true",
        help="assume exec supervision is active (opaque constructs are then allowed)",
    )
    p.add_argument("line", nargs="+", help="the command line (quote it, after --)")
    p.set_defaults(func=_cmd_check)


def _exec_parser(verbs: Any) -> None:
    p = verbs.add_parser(
        "exec",
        help="run one command governed, without installing the shim",
        description="Precheck CMD ARGS against the policy, audit the decision, filter the "
        "environment and run the command in place. Exit 126 when blocked, otherwise the "
        "command's own status.",
    )
    p.add_argument(
        "--root", type=Path, default=Path("/"), help="root holding etc/agentsh (default /)"
    )
    _add_policy_source(p)
    p.add_argument("session", nargs="?", help="session name recorded in the audit log")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    p.set_defaults(func=_cmd_exec)


def _policy_parsers(verbs: Any) -> None:
    pol = verbs.add_parser("policy", help="validate and test policies")
    sub = pol.add_subparsers(dest="policy_verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    v = sub.add_parser(
        "validate",
        help="load a policy strictly and report errors (file:line: key: why)",
        description="Load FILE (default: the policy the config names, else the built-in "
        "default) and the config; print a summary and the config's warnings. Exit 2 on error.",
    )
    v.add_argument("file", nargs="?", type=Path, help="policy file")
    v.add_argument("--config", type=Path, help="config file (default /etc/agentsh/config.yaml)")
    v.set_defaults(func=_cmd_validate)
    _policy_test_parser(sub, "test")
    debug = verbs.add_parser("debug", help="debugging aids (agentsh-compatible names)")
    dsub = debug.add_subparsers(dest="debug_verb", metavar="VERB", parser_class=_Parser)
    dsub.required = True
    _policy_test_parser(dsub, "policy-test")


def _policy_test_parser(sub: Any, name: str) -> None:
    t = sub.add_parser(
        name,
        help="show the decision the policy gives one operation",
        description="Evaluate one operation against the policy and print the decision, the "
        "rule and its message. For net_connect, --path is HOST:PORT.",
    )
    _add_policy_source(t)
    t.add_argument("--op", required=True, choices=OPS, help="operation kind")
    t.add_argument("--path", required=True, help="command, file path, or HOST:PORT")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=_cmd_policy_test)


def _events_parser(verbs: Any) -> None:
    ev = verbs.add_parser("events", help="query the audit log")
    sub = ev.add_subparsers(dest="events_verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    q = sub.add_parser(
        "query",
        help="list audit events, newest last",
        description="List decisions recorded in the audit store "
        "(config audit.storage.sqlite_path).",
    )
    q.add_argument("--config", type=Path, help="config file (default /etc/agentsh/config.yaml)")
    q.add_argument("--db", type=Path, help="audit database (overrides the config)")
    q.add_argument("--decision", help="only events with this decision (allow, deny, ...)")
    q.add_argument("--since", help="only events newer than this (10m, 2h, 1d or ISO-8601)")
    q.add_argument("--session", help="only events of this session")
    q.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=_cmd_events)


def _shim_parser(verbs: Any) -> None:
    from agentsh.install import shellinstall

    shim = verbs.add_parser("shim", help="install or remove the governed /bin/bash")
    sub = shim.add_subparsers(dest="shim_verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    shellinstall.add_parsers(sub)


def _detect_parser(verbs: Any) -> None:
    from agentsh.shell import detect_cli

    detect_cli.add_parser(verbs)


def _trash_parser(verbs: Any) -> None:
    from agentsh.shell import trash_cli

    trash_cli.add_parser(verbs)


# --- verbs ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace, root: Path = Path("/")) -> Any:
    from agentsh.shell import run

    return run.load_settings(root, config_path=args.config, policy_path=args.policy)


def _cmd_check(args: argparse.Namespace) -> int:
    from agentsh.shell import parse, precheck, run

    line = " ".join(args.line)
    settings = _settings(args)
    script = parse.parse(line)
    checks = precheck.explain(script, settings.policy, supervised=args.supervised)
    checks = [run.resolve_approval(c, approver=False) for c in checks]
    refusal = run.first_refusal(checks)
    if args.json:
        print(
            json.dumps(
                {
                    "line": line,
                    "allowed": refusal is None,
                    "commands": [_check_json(c) for c in checks],
                },
                indent=2,
            )
        )
    else:
        for c in checks:
            print(_check_text(c))
        print("=> " + ("runs" if refusal is None else "blocked: " + run.blocked_message(refusal)))
    return 0 if refusal is None else Blocked.exit_code


def _check_json(c: Any) -> dict[str, Any]:
    return {
        "text": c.text,
        "argv": list(c.argv) if c.argv is not None else None,
        "via": list(c.via),
        "opaque": c.opaque,
        **_verdict_json(c.verdict),
    }


def _check_text(c: Any) -> str:
    via = f" via {' > '.join(c.via)}" if c.via else ""
    rule = c.verdict.rule or "-"
    extra = f"  [{c.opaque}]" if c.opaque else ""
    return (
        f"{c.verdict.decision.value:8} {rule:32} {c.text}{via}{extra}\n         {c.verdict.message}"
    )


def _verdict_json(v: Verdict) -> dict[str, Any]:
    return {
        "decision": v.decision.value,
        "rule": v.rule,
        "message": v.message,
        "redirect_to": None
        if v.redirect_to is None
        else {"command": v.redirect_to.command, "args": list(v.redirect_to.args)},
    }


def _cmd_exec(args: argparse.Namespace) -> int:
    from agentsh.shell import run

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("exec needs a command after --", hint="agentsh exec -- git status")
    run.governed_exec(
        command,
        root=args.root,
        session=args.session,
        config_path=args.config,
        policy_path=args.policy,
    )
    return 0  # governed_exec never returns


def _cmd_validate(args: argparse.Namespace) -> int:
    from agentsh.enforce import config, fuseconf, landlock, loader
    from agentsh.shell import run

    cfg_path = args.config or Path("/") / run.CONFIG_FILE
    cfg = config.load_config(cfg_path)
    landlock.settings(cfg)  # the layers' own sections: errors name file, line and key
    fuseconf.settings(cfg)
    path = args.file or config.locate_policy(cfg) or config.builtin_policy_path()
    policy = loader.load(path, run.policy_variables(os.getcwd()))
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"ok: {path}: policy {policy.name!r} (version {policy.version}): "
        f"{len(policy.command_rules)} command rules, {len(policy.file_rules)} file rules, "
        f"{len(policy.network_rules)} network rules"
    )
    return 0


def _cmd_policy_test(args: argparse.Namespace) -> int:
    from agentsh.enforce import engine

    policy = _settings(args).policy
    verdict = _evaluate(engine, policy, args.op, args.path)
    if args.json:
        print(json.dumps({"op": args.op, "path": args.path, **_verdict_json(verdict)}))
    else:
        print(f"decision: {verdict.decision.value}")
        print(f"rule: {verdict.rule or '(none: default)'}")
        print(f"message: {verdict.message}")
    return 0


def _evaluate(engine: Any, policy: Any, op: str, path: str) -> Verdict:
    match op:
        case "exec":
            argv = shlex.split(path)
            return engine.check_command(policy, argv or [path])  # type: ignore[no-any-return]
        case "file_read" | "file_write" | "file_delete":
            return _file_verdict(engine, policy, op.removeprefix("file_"), path)
        case "net_connect":
            host, port = _host_port(path)
            return engine.check_network(policy, host, _ip_or_none(host), port)  # type: ignore[no-any-return]
        case _:
            raise UsageError(f"unknown --op {op}")


def _file_verdict(engine: Any, policy: Any, op: str, path: str) -> Verdict:
    """As the file monitor decides: the rules, then the built-in verdicts by kind of
    file (``enforce.filekinds``: devices, world-readable system files; it stats
    ``path``, as the monitor does)."""
    from agentsh.enforce import filekinds

    verdict: Verdict = engine.check_file(policy, op, path)
    alias = filekinds.task_alias(path)
    if alias is not None:
        verdict = engine.stricter(verdict, engine.check_file(policy, op, alias))
    if op == "delete":
        return verdict
    verdict = filekinds.device_relief(policy, verdict, path)
    try:
        st = os.stat(path)
    except OSError:
        return verdict
    refusal = filekinds.device_refusal(policy, (op,), path, st.st_mode, st.st_rdev)
    if verdict.allowed and refusal is not None:
        return refusal
    if op == "read":
        shown = stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
        readable = shown and bool(st.st_mode & stat.S_IROTH)
        verdict = filekinds.system_read_relief(policy, verdict, path, world_readable=readable)
    return verdict


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--path for net_connect must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _ip_or_none(host: str) -> str | None:
    import ipaddress

    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _cmd_events(args: argparse.Namespace) -> int:
    import time

    from agentsh.enforce import audit, config
    from agentsh.shell import run

    db = args.db or config.load_config(args.config or Path("/") / run.CONFIG_FILE).audit_path
    since = audit.parse_since(args.since, time.time()) if args.since else None
    store = audit.open_store(db, create=False)
    try:
        events = store.query(
            decision=args.decision, since=since, session=args.session, limit=args.limit
        )
    finally:
        store.close()
    for e in events:
        print(json.dumps(_event_json(e)) if args.json else _event_text(e))
    return 0


def _event_json(e: Any) -> dict[str, Any]:
    return {
        "time": e.time,
        "session": e.session,
        "pid": e.pid,
        "cwd": e.cwd,
        "argv": list(e.argv),
        "decision": e.decision,
        "rule": e.rule,
        "message": e.message,
        "layer": e.layer,
        "kind": e.kind,
    }


def _event_text(e: Any) -> str:
    import time

    from agentsh.enforce.printable import printable  # the agent chose the argv

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
    line = f"{stamp}  {e.session}  {e.decision:8} {e.rule or '-':28} {shlex.join(e.argv)}"
    return printable(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb. Every AgentshError ends here: message, hint, exit status."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except AgentshError as err:
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
