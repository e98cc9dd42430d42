"""`make run`: the main job, shown on the built-in default policy without touching this
machine's /bin/bash. Installs the shim (forced) inside a private overlay root, runs what
an agent runs through the governed /bin/bash, prints what happened, and uninstalls.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from agentsh.install import overlay

AGENTSH = str(Path(sys.executable).with_name("agentsh"))
HOST_OK = "--i-understand-this-modifies-the-host"

# (what an agent might run, what it shows)
COMMANDS: tuple[tuple[str, str], ...] = (
    ("git init -q . && git status --short && echo git-ok", "everyday dev tools run"),
    ("cd /tmp && ls | grep -c . >/dev/null && echo pipeline-ok", "pipelines and cd"),
    ("python3 -c 'print(6*7)'", "interpreters run"),
    ("for i in 1 2 3; do echo -n $i; done; echo", "loops"),
    ("sudo whoami", "privilege escalation is refused"),
    ("env sudo whoami", "...also behind a wrapper"),
    ("echo hi | xargs sudo true", "...behind xargs"),
    ("s'u'do id", "...and when quoted to hide it"),
    ("bash -c \"sh -c 'ssh example.com'\"", "nested shells are opened and checked"),
    ("x=sudo; $x id", "a command name known only at run time: the exec supervisor refuses it"),
    (
        "python3 -c \"import os; os.system('sudo id')\"",
        "a program started by an allowed interpreter is checked too",
    ),
    ("echo ${AWS_SECRET_ACCESS_KEY:-filtered}", "secrets never reach the command"),
    ("echo draft > notes.txt && cat notes.txt", "the project is writable"),
    ("echo 'evil::0:0::/:/bin/sh' >> /etc/passwd", "the system is not (Landlock, file monitor)"),
    ("python3 -c \"open('/usr/bin/evil', 'w')\"", "...whichever program tries"),
    ("head -c 32 /etc/shadow", "/etc stays readable, its secrets do not"),
    ("rm notes.txt && ls", "deletes in the project go to the trash (soft-delete view)"),
)
# The config the demo installs: deletes in the project become recoverable (FUSE view);
# without FUSE they happen and are audited (deferred) rather than every command refused.
DEMO_CONFIG = (
    "sandbox:\n  fuse:\n    enabled: true\n    deferred: true\n"
    "    audit:\n      mode: soft_delete\n"
)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _run(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    env["AWS_SECRET_ACCESS_KEY"] = "AKIA-demo-secret"
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _show(line: str, why: str, cwd: str) -> None:
    done = _run(["/bin/bash", "-c", line], cwd)
    refused = done.returncode == 126 or "agentsh: blocked by policy" in done.stderr
    verdict = "REFUSED" if refused else f"ran (exit {done.returncode})"
    print(f"\n$ bash -c {line!r}\n  # {why}\n  -> {verdict}")
    for text in (done.stdout, done.stderr):
        for out in text.strip().splitlines()[:2]:
            print(f"     {out}")


# A stand-in for sudo inside the overlay root (the machine has none): if governance
# failed, it would print this line.
FAKE_SUDO = "#!/bin/sh\necho 'stand-in sudo RAN: governance failed'\n"


def _inside(project: str) -> None:
    print(f"host /usr/bin/bash sha256 {_sha('/usr/bin/bash')} (inside the overlay root)")
    sudo = Path("/usr/bin/sudo")
    sudo.write_text(FAKE_SUDO)
    sudo.chmod(0o755)
    step = _run([AGENTSH, "shim", "install-shell", "--force", "--bash-only", HOST_OK], project)
    print(step.stdout.strip() or step.stderr.strip())
    if step.returncode != 0:
        raise SystemExit(step.returncode)
    Path("/etc/agentsh/config.yaml").write_text(DEMO_CONFIG)
    for line, why in COMMANDS:
        _show(line, why, project)
    trash = _run([AGENTSH, "trash", "list"], project)
    print("\n$ agentsh trash list\n" + (trash.stdout.strip() or trash.stderr.strip()))
    print("  (git's replaced config and removed lock files are kept too: every delete)")
    events = _run([AGENTSH, "events", "query", "--decision", "deny", "--json"], project)
    denied = [json.loads(e) for e in events.stdout.splitlines()]
    print(f"\naudit log: {len(denied)} denied decisions recorded, for example:")
    for e in denied[:3]:
        print(f"  {e['decision']:5} rule={e['rule']}  {' '.join(e['argv'])}")
    Path("/etc/agentsh/config.yaml").unlink()  # ours: uninstall removes only its own files
    step = _run([AGENTSH, "shim", "uninstall-shell", "--bash-only", HOST_OK], project)
    print("\n" + (step.stdout.strip() or step.stderr.strip()))
    print(f"/usr/bin/bash sha256 {_sha('/usr/bin/bash')} after uninstall")


def main() -> int:
    reason = overlay.probe()
    if reason is not None:
        print(f"agentsh demo: cannot make an overlay root here: {reason}", file=sys.stderr)
        return 1
    host = _sha("/usr/bin/bash")
    with tempfile.TemporaryDirectory(prefix="agentsh-demo-") as tmp:
        project = os.path.join(tmp, "project")
        os.mkdir(project)
        overlay.call_in_overlay(lambda: _inside(project), Path(tmp, "overlay"), timeout=300)
    same = _sha("/usr/bin/bash") == host
    print(f"\nthis machine's /usr/bin/bash untouched: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
