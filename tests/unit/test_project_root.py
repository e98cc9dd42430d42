"""Which directory a governed shell's policies call the project (${PROJECT_ROOT}): the
shell's cwd, except where that would hand a system tree to rules that grant the project
writes (a shell started by `cd /etc && bash -c ...`)."""

from __future__ import annotations

import pytest

from agentsh.enforce import config, engine, loader
from agentsh.shell import run

SEEDS = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "seed-policies"


@pytest.mark.parametrize(
    "cwd",
    ["/", "/etc", "/etc/ssh", "/usr", "/usr/local/bin", "/bin", "/var", "/var/lib",
     "/var/lib/agentsh", "/proc/self", "/sys/fs/cgroup", "/dev", "/boot", "/run/user"],
)  # fmt: skip
def test_system_trees_and_their_ancestors_are_no_project(cwd: str) -> None:
    assert run.project_root(cwd) == run.NO_PROJECT
    assert run.policy_variables(cwd)["PROJECT_ROOT"] == run.NO_PROJECT


@pytest.mark.parametrize(
    "cwd", ["/root/project", "/home/me/src", "/tmp/x", "/var/www/site", "/workspace", "/opt/app"]
)
def test_other_directories_are_the_project(cwd: str) -> None:
    assert run.project_root(cwd) == cwd
    assert run.policy_variables(cwd)["WORKSPACE"] == cwd


def test_lexical_tricks_do_not_make_a_system_tree_a_project() -> None:
    assert run.project_root("/tmp/../etc") == run.NO_PROJECT
    assert run.project_root("/etc/") == run.NO_PROJECT
    assert run.project_root("//usr//bin") == run.NO_PROJECT
    assert run.project_root("/etcetera") == "/etcetera"  # a sibling, not /etc


@pytest.mark.parametrize("seed", ["deno", "exe.dev", "sprites"])
def test_seed_project_rules_do_not_open_etc_to_a_shell_started_there(seed: str) -> None:
    policy = loader.load(SEEDS / seed / "default.yaml", run.policy_variables("/etc"))
    assert not engine.check_file(policy, "write", "/etc/passwd").allowed
    assert not engine.check_file(policy, "create", "/usr/bin/evil").allowed
    project = loader.load(SEEDS / seed / "default.yaml", run.policy_variables("/root/p"))
    assert engine.check_file(project, "write", "/root/p/main.py").allowed


def test_builtin_policy_grants_the_project() -> None:
    policy = loader.load(config.builtin_policy_path(), run.policy_variables("/srv/p"))
    assert engine.check_file(policy, "write", "/srv/p/a.txt").allowed
