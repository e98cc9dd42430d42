"""The `agentsh` verbs as a user runs them: output, JSON, exit statuses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentsh.enforce import audit
from agentsh.shell import cli

SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"
SEED_NAMES = ["deno", "exe.dev", "render", "sprites"]
AGENTSH = str(Path(sys.executable).with_name("agentsh"))


@pytest.fixture
def no_config(tmp_path: Path) -> Path:
    """A config path that does not exist: the built-in default policy applies."""
    return tmp_path / "absent-config.yaml"


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("agentsh 0.")


def test_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["frobnicate"], capsys)
    assert code == 2
    assert "invalid choice" in err
    assert "hint: run `agentsh --help`" in err


@pytest.mark.parametrize("seed", SEED_NAMES)
@pytest.mark.parametrize("verb", [["policy", "test"], ["debug", "policy-test"]])
def test_policy_test_denies_sudo_in_every_seed(
    seed: str, verb: list[str], no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = SEEDS / seed / "default.yaml"
    argv = [*verb, "--config", str(no_config), "--policy", str(policy)]
    code, out, _ = _main([*argv, "--op", "exec", "--path", "sudo"], capsys)
    assert code == 0
    assert "decision: deny" in out
    rule = next(line for line in out.splitlines() if line.startswith("rule: "))
    assert rule not in ("rule: ", "rule: (none: default)")
    code, out, _ = _main([*argv, "--op", "exec", "--path", "sudo", "--json"], capsys)
    answer = json.loads(out)
    assert answer["decision"] == "deny"
    assert answer["rule"] == rule.removeprefix("rule: ")


@pytest.mark.parametrize(
    ("op", "path", "decision"),
    [
        ("exec", "git status", "allow"),
        ("file_read", "/root/.ssh/id_rsa", "deny"),
        ("file_read", "/proc/2345/task/2345/environ", "deny"),  # as /proc/2345/environ
        ("file_write", "/etc/passwd", "deny"),
        ("net_connect", "169.254.169.254:80", "deny"),
    ],
)
def test_policy_test_other_operations_on_the_default(
    op: str, path: str, decision: str, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "test", "--config", str(no_config), "--op", op, "--path", path, "--json"]
    code, out, _ = _main(argv, capsys)
    assert code == 0
    assert json.loads(out)["decision"] == decision


def test_net_connect_needs_host_and_port(
    no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["policy", "test", "--config", str(no_config), "--op", "net_connect", "--path", "x"]
    code, _, err = _main(argv, capsys)
    assert code == 2
    assert "HOST:PORT" in err


@pytest.mark.parametrize("seed", SEED_NAMES)
def test_validate_every_seed(
    seed: str, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = SEEDS / seed / "default.yaml"
    code, out, _ = _main(["policy", "validate", "--config", str(no_config), str(policy)], capsys)
    assert code == 0
    assert out.startswith(f"ok: {policy}: policy ")


def test_validate_reports_file_line_and_key(
    tmp_path: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nname: x\ncommand_rules:\n  - name: a\n    commands: [ls]\n"
        "    decision: allow\n    args_patterns: ['(']\n"
    )
    code, out, err = _main(["policy", "validate", "--config", str(no_config), str(bad)], capsys)
    assert code == 2
    assert out == ""
    assert f"{bad}:7: command_rules[0].args_patterns[0]" in err


def test_validate_prints_config_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SEEDS / "exe.dev" / "config.yaml"
    policy = SEEDS / "exe.dev" / "default.yaml"
    code, _, err = _main(["policy", "validate", "--config", str(config), str(policy)], capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any("sandbox.fuse.deferred_marker_file" in w for w in warnings)
    assert len(warnings) == len(set(warnings)), "one warning per key"


def test_check_explains_every_command(no_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = "git status && echo hi | xargs sudo true"
    code, out, _ = _main(["check", "--config", str(no_config), "--", line], capsys)
    assert code == 126
    assert "git status" in out
    assert "via xargs" in out
    assert "=> blocked: blocked by policy: " in out
    code, out, _ = _main(["check", "--config", str(no_config), "--json", "--", line], capsys)
    answer = json.loads(out)
    assert answer["allowed"] is False
    decisions = {c["text"]: c["decision"] for c in answer["commands"]}
    assert decisions["git status"] == "allow"
    assert "deny" in decisions.values()


def test_check_opaque_depends_on_supervision(
    no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["check", "--config", str(no_config)]
    assert _main([*base, "--", "x=ls; $x"], capsys)[0] == 126
    assert _main([*base, "--supervised", "--", "x=ls; $x"], capsys)[0] == 0


def test_events_query_filters_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "audit.db"
    store = audit.open_store(db)
    now = time.time()
    for i, decision in enumerate(["allow", "deny", "deny"]):
        store.record(
            audit.Event(
                now - 3600 * i,
                f"s{i}",
                100 + i,
                "/w",
                ("sudo", "id"),
                decision,
                "block-privilege-escalation" if decision == "deny" else None,
                "m",
                "precheck",
                "command",
            )
        )
    store.close()
    code, out, _ = _main(
        ["events", "query", "--db", str(db), "--decision", "deny", "--json"], capsys
    )
    assert code == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["session"] for r in rows] == ["s2", "s1"]
    code, out, _ = _main(["events", "query", "--db", str(db), "--since", "90m"], capsys)
    assert len(out.splitlines()) == 2
    assert "sudo id" in out


def test_events_query_escapes_what_the_agent_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An argv with terminal escapes (retitle, clear screen) and a right-to-left override
    is shown escaped in the table, and exactly, JSON-escaped, in --json."""
    db = tmp_path / "audit.db"
    store = audit.open_store(db)
    argv = ("cat", "\x1b]0;owned\x07x\x1b[2J", "safe\u202etxt.sh")
    store.record(audit.Event(time.time(), "s", 1, "/w", argv, "deny", "r", "m", "exec", "command"))
    store.close()
    _, out, _ = _main(["events", "query", "--db", str(db)], capsys)
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\\x1b]0;owned\\x07x\\x1b[2J" in out
    assert "safe\\u202etxt.sh" in out
    _, out, _ = _main(["events", "query", "--db", str(db), "--json"], capsys)
    assert "\x1b" not in out
    assert tuple(json.loads(out)["argv"]) == argv


def test_events_query_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["events", "query", "--db", str(tmp_path / "none.db")], capsys)
    assert code == 126
    assert "none.db" in err
    assert not (tmp_path / "none.db").exists()


def _exec(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(f"audit:\n  storage:\n    sqlite_path: {tmp_path / 'audit.db'}\n")
    return subprocess.run(
        [AGENTSH, "exec", "--config", str(config), "demo", "--", *command],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        env={"PATH": "/usr/bin:/bin", "GITHUB_TOKEN": "ghp_x"},
    )


def test_exec_runs_allowed_command_with_filtered_env(tmp_path: Path) -> None:
    done = _exec(tmp_path, "sh", "-c", 'echo "hi ${GITHUB_TOKEN:-filtered}"; exit 3')
    assert (done.returncode, done.stdout) == (3, "hi filtered\n"), done.stderr


def test_exec_refuses_and_audits(tmp_path: Path) -> None:
    done = _exec(tmp_path, "env", "sudo", "id")
    assert done.returncode == 126
    assert done.stderr.startswith("agentsh: blocked by policy: env sudo id (rule ")
    store = audit.open_store(tmp_path / "audit.db", create=False)
    events = store.query(decision="deny")
    store.close()
    assert [e.session for e in events] == ["demo"]


def test_exec_supervises_what_the_command_starts(tmp_path: Path) -> None:
    """The command is allowed; the sudo it starts at run time is refused by the supervisor."""
    done = _exec(tmp_path, "python3", "-c", "import os; print(os.system('sudo id') != 0)")
    assert done.stdout == "True\n"
    assert "agentsh: blocked by policy: sh -c sudo id (rule block-privilege-escalation)" in (
        done.stderr
    )
    store = audit.open_store(tmp_path / "audit.db", create=False)
    denied = [(e.session, e.argv) for e in store.query(decision="deny")]
    store.close()
    assert denied == [("demo", ("sh", "-c", "sudo id"))]


def test_validate_checks_the_layer_sections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("sandbox:\n  fuse:\n    enabled: true\n    audit:\n      mode: shred\n")
    code, _, err = _main(["policy", "validate", "--config", str(config)], capsys)
    assert code == 2
    assert f"{config}:5: sandbox.fuse.audit.mode" in err
    config.write_text("landlock:\n  enabled: true\n  allow_write: [relative/dir]\n")
    code, _, err = _main(["policy", "validate", "--config", str(config)], capsys)
    assert code == 2
    assert f"{config}:3: landlock.allow_write" in err


@pytest.mark.parametrize(
    ("path", "decision"),
    [("/etc/hostname", "allow"), ("/etc/shadow", "deny"), ("/proc/1/environ", "deny")],
)
def test_policy_test_explains_reads_as_the_file_monitor_decides(
    path: str, decision: str, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # exe.dev refuses /etc/hostname only by its catch-all default-deny-files, and it is
    # world-readable: allowed at run time, so `policy test` says so too.
    policy = SEEDS / "exe.dev" / "default.yaml"
    argv = ["policy", "test", "--config", str(no_config), "--policy", str(policy)]
    code, out, _ = _main([*argv, "--op", "file_read", "--path", path, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["decision"] == decision
    code, out, _ = _main([*argv, "--op", "file_write", "--path", "/dev/null", "--json"], capsys)
    assert json.loads(out)["decision"] == "allow"


def test_policy_test_refuses_a_raw_disk_as_the_file_monitor_does(
    tmp_path: Path, no_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The built-in policy allows reads by default; a block device is refused by its
    kind, under any name (here a node outside /dev), and the answer says what to do."""
    disk = tmp_path / "disk"
    os.mknod(disk, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    argv = ["policy", "test", "--config", str(no_config), "--op", "file_read", "--path"]
    code, out, _ = _main([*argv, str(disk), "--json"], capsys)
    answer = json.loads(out)
    assert (code, answer["decision"], answer["rule"]) == (0, "deny", "device-not-named")
    assert "file_rules" in answer["message"]
    code, out, _ = _main([*argv, "/dev/null", "--json"], capsys)
    assert json.loads(out)["decision"] == "allow"
