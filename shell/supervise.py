"""The exec checker: the supervisor's question "may this program start?", answered the way
the precheck answers it for a command line (ARCHITECTURE §3 step 8).

``make_checker(policy)`` returns a function of one ``ExecRequest`` that:

1. judges the program under each of its names with ``engine.check_command`` — the file
   the kernel really runs (symlinks resolved), the path as the caller wrote it, and
   ``argv[0]`` (``exec -a``, busybox-style applets; a login shell's leading ``-`` and a
   ``.real`` suffix are ignored), and ``ld.so`` when the file is a dynamic loader under
   any name (``ExecRequest.loader``). A name an explicit rule refuses refuses the exec: an
   alias cannot launder ``sudo``. A name can only *grant* the exec when it is the real
   file, or a symlink the governed tree cannot have made: owned by root in a directory
   only root may write (``ExecRequest.trusted_alias``) *and* where this policy refuses
   to create files (``/usr/bin/python3`` → ``python3.11``). ``argv[0]`` and symlinks the
   agent made never turn a default refusal into an allow;
2. unwraps wrappers on the argv (``env``, ``nice``, ``xargs``, ``find -exec``, ``sudo``…,
   the table of ``shell.wrappers``) and judges each payload too — the stricter wins;
3. parses ``sh -c STRING`` / ``bash -c STRING`` payloads and prechecks them with
   ``supervised=True`` (constructs known only at run time are allowed there: every program
   they start comes back here at its own exec).

``approve`` has nobody to ask inside the tree and becomes a refusal; ``redirect`` cannot
rewrite an exec and becomes a refusal that says so. Results are cached per (names, argv):
the judgement is a pure function of them and the policy, which never changes during a
supervisor's life.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Sequence

from agentsh.enforce.engine import check_command, check_file, resolve_approval, stricter
from agentsh.enforce.policy import STRICTNESS, Decision, Policy, Verdict
from agentsh.enforce.record import replace
from agentsh.enforce.supervisor import ExecRequest
from agentsh.shell import parse, precheck, quoting, wrappers

CACHE_SIZE = 4096


class _Checker:
    """``make_checker``'s result. ``pure``: the verdict is a function of the request's
    ``path``, ``raw_path``, ``argv``, ``trusted_alias`` and ``loader`` alone (never of its
    pid, cwd or depth), so the supervisor may reuse an allow for an identical exec of the
    same, unchanged file (``enforce.fastpath``)."""

    pure = True

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.judge = functools.lru_cache(maxsize=CACHE_SIZE)(self._judge)

    def _judge(
        self, granting: tuple[str, ...], others: tuple[str, ...], args: tuple[str, ...]
    ) -> Verdict:
        return _judge_names(self.policy, granting, others, args)

    def __call__(self, req: ExecRequest) -> Verdict:
        granting, others = names(req, self.policy)
        return self.judge(granting, others, req.argv[1:])


def make_checker(policy: Policy) -> Callable[[ExecRequest], Verdict]:
    """The checker for ``policy`` (see the module docstring)."""
    return _Checker(policy)


def names(req: ExecRequest, policy: Policy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names that may grant, names that may only refuse) for ``req``'s program."""
    granting = [req.path]
    raw = req.raw_path if req.raw_path.startswith("/") else posixpath.basename(req.raw_path)
    argv0 = req.argv[0].lstrip("-") if req.argv else ""
    others: list[str] = []
    for name, grants in ((raw, _vouched(req, policy)), (argv0, False)):
        if not name or name in granting or name in others:
            continue
        (granting if grants else others).append(name)
    if req.loader:  # a renamed ld.so still runs its operand: judge it as the loader too
        others.append(wrappers.LOADER)
    return tuple(granting), tuple(others)


def _vouched(req: ExecRequest, policy: Policy) -> bool:
    """The alias ``req.raw_path`` is one the tree cannot have made (see the docstring)."""
    if not (req.trusted_alias and req.raw_path.startswith("/")):
        return False
    where = posixpath.dirname(posixpath.normpath(req.raw_path))
    return not check_file(policy, "create", where + "/x").allowed


def _judge_names(
    policy: Policy, granting: Sequence[str], others: Sequence[str], args: tuple[str, ...]
) -> Verdict:
    verdicts = [_exec_verdict(judge_argv(policy, (n, *args))) for n in (*granting, *others)]
    refusals = [v for v in verdicts if not v.allowed and v.rule is not None]
    if refusals:
        return _strictest(refusals)
    allowed = [v for v in verdicts[: len(granting)] if v.allowed]
    if allowed:
        return allowed[0]
    return verdicts[0]  # the real file's own (default) refusal


def _strictest(verdicts: Sequence[Verdict]) -> Verdict:
    best = verdicts[0]
    for v in verdicts[1:]:
        if STRICTNESS[v.decision] > STRICTNESS[best.decision]:
            best = v
    return best


def _exec_verdict(verdict: Verdict) -> Verdict:
    """What an exec can do with a decision: run it, or refuse it."""
    match verdict.decision:
        case Decision.ALLOW | Decision.AUDIT | Decision.SOFT_DELETE:
            return verdict
        case Decision.APPROVE:
            return resolve_approval(verdict, False)
        case Decision.REDIRECT:
            message = f"{verdict.message} (a redirect rule applies to command lines; a program "
            message += "started inside the governed shell cannot be redirected, so it is refused)"
            return replace(verdict, decision=Decision.DENY, message=message)
        case _:
            return replace(verdict, decision=Decision.DENY)


def judge_argv(policy: Policy, argv: tuple[str, ...], depth: int = 0) -> Verdict:
    """``argv`` judged as a command, with its wrappers unwrapped (the stricter wins)."""
    verdict = check_command(policy, argv)
    unwrapped = wrappers.unwrap(tuple(quoting.static(a) for a in argv))
    if unwrapped is None:
        return verdict
    if depth >= precheck.MAX_DEPTH:
        return Verdict(
            Decision.DENY,
            precheck.DEPTH_RULE,
            f"wrappers nested more than {precheck.MAX_DEPTH} deep",
            " ".join(argv),
        )
    for payload in unwrapped.payloads:
        verdict = stricter(verdict, _payload(policy, payload, depth))
    return verdict


def _payload(policy: Policy, payload: wrappers.Payload, depth: int) -> Verdict:
    match payload:
        case wrappers.Command(args=args) if args and all(a.value is not None for a in args):
            return judge_argv(policy, tuple(a.value or "" for a in args), depth + 1)
        case wrappers.ShellLine(source=source):
            return precheck.check(parse.parse(source), policy, supervised=True)
        case wrappers.Command() | wrappers.Opaque() | wrappers.Stdin():
            # Known only at run time: whatever it starts is checked at its own exec.
            return Verdict(Decision.ALLOW, None, "payload checked when it runs")
        case _:
            return Verdict(Decision.DENY, None, f"unknown wrapper payload {payload!r}")
