"""Issue 2 end to end: the real shim installed and forced with `agentsh shim install-shell`
inside an overlay root, then bash invoked the way agents and scripts invoke it.

All commands run in one overlay namespace (module fixture); each test asserts on what one
of them did. The host's /usr/bin/bash is compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentsh.install import overlay as overlay_mod

pytestmark = pytest.mark.e2e

AGENTSH = str(Path(sys.executable).with_name("agentsh"))
HOST_OK = "--i-understand-this-modifies-the-host"
SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
PAYLOAD_SIZE = 1 << 20

# Refused by the precheck before anything runs.
BLOCKED = {
    "sudo": "sudo whoami",
    "env-sudo": "env sudo whoami",
    "xargs-sudo": "echo hi | xargs sudo true",
    "quoted-sudo": "s'u'do id",
    "ansi-c-sudo": "$'\\x73udo' id",
    "nested-sudo": "bash -c \"sh -c 'sudo id'\"",
    "subst-sudo": "echo $(sudo id)",
    "find-exec": "find . -maxdepth 0 -exec sudo id \\;",
    "ssh": "ssh example.com",
    "later-in-list": "git --version && true; sudo id",
}
# Known only at run time: the precheck lets them through because exec supervision
# governs the run; the supervisor refuses the exec of (a fake) sudo.
AT_EXEC = {
    "dynamic": "x=sudo; $x id",
    "eval": "eval 'sudo id'",
    "printf": "$(printf sudo) id",
    "python": "python3 -c \"import os; os.execv('/usr/bin/sudo', ['sudo', 'id'])\"",
    "sh-c": "python3 -c \"import subprocess; subprocess.run('sudo id', shell=True)\"",
    "source": "echo 'sudo id' > s.sh; . ./s.sh",
}
FAKE_SUDO = "#!/bin/sh\ntouch {marker}\necho fake-sudo-ran\n"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(argv: list[str], cwd: str, data: bytes | None = None, **env: str) -> dict[str, Any]:
    environ = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C", **env}
    done = subprocess.run(
        argv,
        input=data,
        stdin=None if data is not None else subprocess.DEVNULL,
        capture_output=True,
        env=environ,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr.decode(errors="replace")}


def _agentsh(*args: str, cwd: str) -> dict[str, Any]:
    return _run([AGENTSH, *args], cwd)


def _scenario(project: str, payload: bytes) -> dict[str, Any]:
    """Everything that runs inside the overlay root."""
    r: dict[str, Any] = {"bash_before": _sha("/usr/bin/bash")}
    r["bash_mode_before"] = os.stat("/usr/bin/bash").st_mode
    r["install"] = _agentsh("shim", "install-shell", "--force", "--bash-only", HOST_OK, cwd=project)
    r["status"] = _agentsh("shim", "status", "--output", "json", cwd=project)
    bash = ["/bin/bash", "-c"]
    r["blocked"] = {k: _run([*bash, line], project) for k, line in BLOCKED.items()}
    marker = Path(project, "sudo-ran")
    Path("/usr/bin/sudo").write_text(FAKE_SUDO.format(marker=marker))
    Path("/usr/bin/sudo").chmod(0o755)
    r["at_exec"] = {}
    for key, line in AT_EXEC.items():
        r["at_exec"][key] = _run([*bash, line], project)
        r["at_exec"][key]["marker"] = marker.exists()
        marker.unlink(missing_ok=True)
    r["echo"] = _run([*bash, "echo hi"], project)
    r["cat"] = _run([*bash, "cat"], project, data=payload)
    r["exit3"] = _run([*bash, "exit 3"], project)
    r["killed"] = _run([*bash, "/usr/bin/kill -TERM $$"], project)
    r["child_signal"] = _run([*bash, "sh -c 'kill -9 $$'; echo $?"], project)
    r["positional"] = _run([*bash, 'echo "$0|$1|$2"', "zero", "one", "two"], project)
    r["ulimit"] = _run([*bash, "ulimit -n"], project)
    r["secret_env"] = _run(
        [*bash, 'echo "${AWS_SECRET_ACCESS_KEY:-unset} ${LD_PRELOAD:-unset} ${BASH_ENV-unset}"'],
        project,
        AWS_SECRET_ACCESS_KEY="AKIAEXAMPLE",
        LD_PRELOAD="/tmp/evil.so",
    )
    script = Path(project, "deploy.sh")
    script.write_text("#!/bin/bash\necho start\nsudo id\n")
    script.chmod(0o755)
    r["script_arg"] = _run(["/bin/bash", str(script)], project)
    r["script_exec"] = _run([str(script)], project)
    r["stdin_bad"] = _run(["/bin/bash"], project, data=b"echo one\nsudo id\n")
    r["stdin_good"] = _run(["/bin/bash"], project, data=b"echo one\necho two\n")
    r["events"] = _agentsh("events", "query", "--decision", "deny", "--json", cwd=project)
    r["bad_policy"] = _bad_policy(project)
    r["audit_down"] = _audit_down(project)
    r["redirect"] = _redirect(project)
    r["caps"] = _capabilities(project)
    r["ptrace"] = _ptrace_backend(project, marker)
    r["persona_on"] = _persona_probe(project, None)
    r["persona_off"] = _persona_probe(
        project, "sandbox:\n  seccomp:\n    hardening:\n      personality: false\n"
    )
    r["seeds"] = {
        seed.name: _with_seed(seed, project) for seed in sorted(SEEDS.iterdir()) if seed.is_dir()
    }
    r["uninstall"] = _agentsh("shim", "uninstall-shell", "--bash-only", HOST_OK, cwd=project)
    r["bash_after"] = _sha("/usr/bin/bash")
    r["bash_mode_after"] = os.stat("/usr/bin/bash").st_mode
    r["real_left"] = os.path.exists("/usr/bin/bash.real")
    return r


def _bad_policy(project: str) -> dict[str, Any]:
    pol = Path("/etc/agentsh/policies")
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "default.yaml").write_text("version: 1\nname: broken\ncommand_rules:\n  - nme: x\n")
    try:
        return _run(["/bin/bash", "-c", "echo should-not-run"], project)
    finally:
        (pol / "default.yaml").unlink()


REDIRECT_POLICY = """version: 1
name: redirecting
command_rules:
  - name: curl-through-proxy
    commands: [curl]
    decision: redirect
    redirect_to: {command: echo, args: [fetched-by-proxy]}
  - name: everything-else
    commands: ["*"]
    decision: allow
"""


def _redirect(project: str) -> dict[str, Any]:
    pol = Path("/etc/agentsh/policies")
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "default.yaml").write_text(REDIRECT_POLICY)
    try:
        return _run(["/bin/bash", "-c", "curl -s http://example.com >&2; echo after"], project)
    finally:
        (pol / "default.yaml").unlink()


# personality(ADDR_NO_RANDOMIZE) changes only the calling process; the filter refuses it.
# (mount is not used here: the supervisor's Landlock fence refuses mount(2) on its own.)
PERSONA_PROBE = (
    "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
    "r = libc.personality(0x0040000); "
    "print('changed' if r >= 0 else os.strerror(ctypes.get_errno()))"
)


def _persona_probe(project: str, config_text: str | None) -> dict[str, Any]:
    """personality(2) from the governed tree, with the hardening default or a switch."""
    config = Path("/etc/agentsh/config.yaml")
    if config_text is not None:
        config.write_text(config_text)
    try:
        return _run(
            ["/bin/bash", "-c", f'python3 -c "{PERSONA_PROBE}"'],
            project,
        )
    finally:
        config.unlink(missing_ok=True)


def _ptrace_backend(project: str, marker: Path) -> dict[str, Any]:
    """sandbox.ptrace.enabled: the same governance through the ptrace backend."""
    config = Path("/etc/agentsh/config.yaml")
    config.write_text("sandbox:\n  ptrace:\n    enabled: true\n")
    try:
        line = "grep TracerPid /proc/self/status; x=sudo; $x id"
        done = _run(["/bin/bash", "-c", line], project)
        done["marker"] = marker.exists()
        return done
    finally:
        config.unlink()
        marker.unlink(missing_ok=True)


def _capabilities(project: str) -> dict[str, Any]:
    """config capabilities.allow: [] (as the exe.dev seed): root in the tree keeps none."""
    config = Path("/etc/agentsh/config.yaml")
    config.write_text("capabilities:\n  allow: []\n")
    try:
        return _run(["/bin/bash", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status"], project)
    finally:
        config.unlink()


def _audit_down(project: str) -> dict[str, Any]:
    """The audit store cannot be written: a directory squats on the database's name."""
    config = Path("/etc/agentsh/config.yaml")
    config.write_text(f"audit:\n  storage:\n    sqlite_path: {project}/squatted.db\n")
    Path(project, "squatted.db").mkdir()
    try:
        return _run(["/bin/bash", "-c", "echo should-not-run"], project)
    finally:
        config.unlink()
        Path(project, "squatted.db").rmdir()


def _cgroup_of_governed_sleep(project: str) -> dict[str, Any]:
    """The cgroup of a governed ``bash -c 'exec sleep'``, read from outside the tree (some
    seeds refuse reading /proc, /proc/self included, inside it)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LC_ALL": "C"}
    proc = subprocess.Popen(
        ["/bin/bash", "-c", "exec sleep 30"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    found: dict[str, Any] = {"rc": None, "out": b"", "err": "sleep never ran governed: "}
    try:
        for _ in range(200):  # the frontend execs bash in place, which execs sleep
            if os.path.realpath(f"/proc/{proc.pid}/exe").endswith("/sleep"):
                found = {"rc": 0, "out": Path(f"/proc/{proc.pid}/cgroup").read_bytes(), "err": ""}
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        found["err"] += proc.communicate()[1].decode(errors="replace")
    return found


def _with_seed(seed: Path, project: str) -> dict[str, Any]:
    pol = Path("/etc/agentsh/policies")
    pol.mkdir(parents=True, exist_ok=True)
    shutil.copy(seed / "default.yaml", pol / "default.yaml")
    try:
        return {
            "sudo": _run(["/bin/bash", "-c", "sudo whoami"], project),
            "echo": _run(["/bin/bash", "-c", "echo ok"], project),
            "cgroup": _cgroup_of_governed_sleep(project),
        }
    finally:
        (pol / "default.yaml").unlink()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = overlay_mod.probe()
    if reason is not None:
        pytest.skip(f"overlay root unavailable: {reason}")
    base = tmp_path_factory.mktemp("governed")
    project = base / "project"
    project.mkdir()
    payload = os.urandom(PAYLOAD_SIZE)
    host_bash = _sha("/usr/bin/bash")
    result = overlay_mod.call_in_overlay(
        lambda: _scenario(str(project), payload), base / "overlay", timeout=600
    )
    result["payload"] = payload
    assert _sha("/usr/bin/bash") == host_bash, "the host's bash changed"
    assert not os.path.exists("/usr/bin/bash.real"), "the host got a bash.real"
    return result


def test_install_reports_installed(scenario: dict[str, Any]) -> None:
    assert scenario["install"]["rc"] == 0, scenario["install"]["err"]
    status = json.loads(scenario["status"]["out"])
    assert "installed" in json.dumps(status)


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_refused_with_the_rule(scenario: dict[str, Any], case: str) -> None:
    done = scenario["blocked"][case]
    assert done["rc"] == 126, done
    assert done["out"] == b""
    first = done["err"].splitlines()[0]
    assert first.startswith("agentsh: blocked by policy: "), done["err"]
    assert "(rule " in first


@pytest.mark.parametrize("case", sorted(AT_EXEC))
def test_refused_at_exec_by_the_supervisor(scenario: dict[str, Any], case: str) -> None:
    done = scenario["at_exec"][case]
    assert not done["marker"], "the refused program ran"
    assert b"fake-sudo-ran" not in done["out"]
    assert done["rc"] != 0, done
    assert "agentsh: blocked by policy: " in done["err"], done["err"]


def test_allowed_command_runs(scenario: dict[str, Any]) -> None:
    assert (scenario["echo"]["rc"], scenario["echo"]["out"]) == (0, b"hi\n")
    assert scenario["echo"]["err"] == ""


def test_binary_stdin_is_byte_identical(scenario: dict[str, Any]) -> None:
    assert scenario["cat"]["rc"] == 0, scenario["cat"]["err"]
    assert scenario["cat"]["out"] == scenario["payload"]


def test_exit_statuses_are_bash_own(scenario: dict[str, Any]) -> None:
    assert scenario["exit3"]["rc"] == 3
    assert scenario["killed"]["rc"] == -15  # bash itself died of SIGTERM
    assert scenario["child_signal"]["out"] == b"137\n"


def test_positional_parameters(scenario: dict[str, Any]) -> None:
    assert scenario["positional"]["out"] == b"zero|one|two\n"


def test_bash_env_disables_builtins(scenario: dict[str, Any]) -> None:
    assert scenario["ulimit"]["rc"] == 127
    assert "ulimit" in scenario["ulimit"]["err"]


def test_environment_is_filtered(scenario: dict[str, Any]) -> None:
    out = scenario["secret_env"]["out"].decode().split()
    assert out[:2] == ["unset", "unset"]
    assert out[2] == "unset", "the startup file ran and unset BASH_ENV for nested scripts"


def test_scripts_are_prechecked(scenario: dict[str, Any]) -> None:
    for key in ("script_arg", "script_exec"):
        done = scenario[key]
        assert done["rc"] == 126, (key, done)
        assert done["out"] == b"", "nothing of the script may run"
        assert "sudo id" in done["err"]


def test_stdin_scripts_are_prechecked(scenario: dict[str, Any]) -> None:
    assert scenario["stdin_bad"]["rc"] == 126
    assert scenario["stdin_bad"]["out"] == b""
    assert (scenario["stdin_good"]["rc"], scenario["stdin_good"]["out"]) == (0, b"one\ntwo\n")


def test_denials_are_audited_with_the_rule(scenario: dict[str, Any]) -> None:
    assert scenario["events"]["rc"] == 0, scenario["events"]["err"]
    events = [json.loads(line) for line in scenario["events"]["out"].splitlines()]
    assert len(events) >= len(BLOCKED)
    sudo = [e for e in events if e["argv"][:1] == ["sudo"]]
    assert sudo, [e["argv"] for e in events]
    assert all(e["decision"] == "deny" and e["rule"] for e in sudo)


def test_invalid_policy_refuses_and_names_the_file(scenario: dict[str, Any]) -> None:
    done = scenario["bad_policy"]
    assert done["rc"] == 2
    assert done["out"] == b""
    assert "/etc/agentsh/policies/default.yaml:4" in done["err"]
    assert "nme" in done["err"]


def test_redirect_rule_rewrites_the_command(scenario: dict[str, Any]) -> None:
    done = scenario["redirect"]
    assert done["rc"] == 0, done
    assert done["out"] == b"after\n"
    assert done["err"] == "fetched-by-proxy\n", "redirected, keeping the command's redirections"


def test_hardening_group_and_its_config_switch(scenario: dict[str, Any]) -> None:
    assert scenario["persona_on"]["out"] == b"Operation not permitted\n", scenario["persona_on"]
    assert scenario["persona_off"]["out"] == b"changed\n", scenario["persona_off"]


def test_ptrace_backend_from_config(scenario: dict[str, Any]) -> None:
    done = scenario["ptrace"]
    tracer = done["out"].split()[1]
    assert tracer != b"0", "the governed process is traced"
    assert not done["marker"], "the refused program ran"
    assert done["rc"] != 0
    assert "agentsh: blocked by policy: " in done["err"], done["err"]


def test_config_capabilities_are_dropped(scenario: dict[str, Any]) -> None:
    done = scenario["caps"]
    assert done["rc"] == 0, done
    assert done["out"].split() == [b"CapEff:", b"0" * 16, b"CapBnd:", b"0" * 16]


def test_unwritable_audit_store_refuses(scenario: dict[str, Any]) -> None:
    done = scenario["audit_down"]
    assert done["rc"] == 126, done
    assert done["out"] == b""
    assert "squatted.db" in done["err"]


@pytest.mark.parametrize("seed", ["deno", "exe.dev", "render", "sprites"])
def test_seed_policies_govern_the_shell(scenario: dict[str, Any], seed: str) -> None:
    result = scenario["seeds"][seed]
    assert result["sudo"]["rc"] == 126, result["sudo"]
    assert "(rule " in result["sudo"]["err"]
    assert (result["echo"]["rc"], result["echo"]["out"]) == (0, b"ok\n"), result["echo"]


@pytest.mark.parametrize("seed", ["deno", "exe.dev", "render", "sprites"])
def test_seed_resource_limits_put_the_tree_in_a_cgroup(scenario: dict[str, Any], seed: str) -> None:
    """Every seed sets resource_limits (pids_max, max_memory_mb): the governed tree runs in
    agentsh's session cgroup."""
    done = scenario["seeds"][seed]["cgroup"]
    assert done["rc"] == 0, done
    assert b"/agentsh/" in done["out"], done["out"]


def test_uninstall_restores_bash_byte_for_byte(scenario: dict[str, Any]) -> None:
    assert scenario["uninstall"]["rc"] == 0, scenario["uninstall"]["err"]
    assert scenario["bash_after"] == scenario["bash_before"]
    assert scenario["bash_mode_after"] == scenario["bash_mode_before"]
    assert not scenario["real_left"]
