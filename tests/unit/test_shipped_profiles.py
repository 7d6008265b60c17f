"""The shipped profile library loads, its examples pass (real policy), and `glassbreak profile`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sandbox.cli.profile import profile
from sandbox.errors import ProfileError
from sandbox.paths import shipped_profiles_dir
from sandbox.policy import loader
from sandbox.policy.decision import Verdict
from sandbox.policy.loader import load_profile, load_raw, seccomp_syscall_check

SHIPPED = ["base", "readonly", "git-readonly", "python-dev", "k8s-readonly", "k8s-ops-escalated",
           "mcporter", "mcporter.safebins"]

# The profile exactly as issue 2 shows it (comments dropped).
ISSUE_K8S = """
name: k8s-readonly
description: read-only Kubernetes for on-call agents
extends: base
owners: [sre-oncall]
safeBins:
  kubectl:
    allowedValueFlags: ["-n", "--namespace", "-o", "--output", "--dry-run=client"]
    allowedFlags: ["-A", "--all-namespaces", "-w", "--watch"]
    forbiddenFlags: ["--force", "--grace-period"]
    restrictedCommands: [delete, patch, apply, edit, drain, exec]
    examples: {allow: ["kubectl get pods -n prod"], block: ["kubectl -n prod delete pod x"]}
exec:
  allow: ["/bin/sh", "/usr/bin/cat", "/usr/bin/ls", "/usr/bin/*grep"]
  default: block
seccomp:
  defaultAction: allow
  rules:
    - action: "errno:EPERM"
      syscalls: [ptrace, process_vm_writev]
      reason: "no debugging other processes"
escalation:
  relaxedProfile: k8s-ops-escalated
  ttl: 5m
  maxTtl: 30m
"""

BASE_DENIED = """ptrace process_vm_readv process_vm_writev bpf perf_event_open kexec_load
kexec_file_load init_module finit_module delete_module mount umount2 pivot_root move_mount
open_tree fsopen fsconfig fsmount fspick mount_setattr unshare setns io_uring_setup
io_uring_enter io_uring_register keyctl add_key request_key userfaultfd name_to_handle_at
open_by_handle_at swapon swapoff reboot acct quotactl lookup_dcookie""".split()


@pytest.fixture(autouse=True)
def _only_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLASSBREAK_PROFILE_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    loader._CACHE.clear()


def n_examples(p: object) -> int:
    exs = [p.examples, p.exec.examples, *(r.examples for r in p.safeBins.values())]  # type: ignore[attr-defined]
    return sum(len(e.allow) + len(e.block) + len(e.deny) for e in exs)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_with_syscalls_checked_and_examples_pass(name: str) -> None:
    p = load_profile(name, validate_syscalls=seccomp_syscall_check())
    assert p.content_hash and len(p.content_hash) == 16
    if name != "mcporter.safebins":  # the bare seed fragment carries no examples by design
        assert n_examples(p) >= 2
        assert "base" in p.chain
        assert p.owners and p.exec.default == "block"


def test_every_shipped_file_is_listed() -> None:
    files = sorted(x.name for x in shipped_profiles_dir().iterdir())
    assert files == sorted(f"{n}.{'json' if n.endswith('safebins') else 'yaml'}"
                           for n in SHIPPED)


def test_base_is_the_syscall_baseline() -> None:
    p = load_profile("base")
    assert p.seccomp.defaultAction == "allow"
    assert p.owners == ["security"] and p.exec.default == "block" and not p.exec.allow
    assert p.escalation.ttl_seconds == 300 and p.escalation.max_ttl_seconds == 1800
    uncond = {s: r.action for r in p.seccomp.rules if not r.args for s in r.syscalls}
    missing = [s for s in BASE_DENIED if uncond.get(s) != "errno:EPERM"]
    assert not missing, missing
    assert uncond["clone3"] == "errno:ENOSYS"
    assert "personality" not in uncond
    assert all(r.reason and r.id for r in p.seccomp.rules)
    newns = {a.value for r in p.seccomp.rules if r.args for a in r.args}
    assert 0x10000000 in newns and 0x40000000 in newns  # CLONE_NEWUSER, CLONE_NEWNET
    known = seccomp_syscall_check()
    assert all(known(s) for r in p.seccomp.rules for s in r.syscalls)


def test_k8s_readonly_is_the_issue_profile() -> None:
    raw = load_raw(shipped_profiles_dir() / "k8s-readonly.yaml")
    want = yaml.safe_load(ISSUE_K8S)
    got = raw.model_dump(exclude_unset=True, mode="json")
    got.pop("examples")  # extra profile-level examples are one addition
    # the other: kubectl reads its argv as cobra does, not getopt (issue 10)
    assert got["safeBins"]["kubectl"].pop("dialect") == "cobra"
    # and the kubeconfig that base hides (~/.kube)
    assert got.pop("filesystem") == {"read": ["/", "~/.kube/config"]}
    assert got == json.loads(json.dumps(want))


def test_k8s_decisions_and_the_relaxed_profile() -> None:
    from sandbox.policy.check import check_argv

    strict = load_profile("k8s-readonly")
    assert strict.owners == ["security", "sre-oncall"]
    assert strict.escalation.relaxedProfile == "k8s-ops-escalated"
    assert check_argv(strict, ["kubectl", "get", "pods", "-n", "prod"], lenient=True).allowed
    for argv in (["kubectl", "-n", "prod", "delete", "pod", "x"],
                 ["kubectl", "delete", "--forc", "pod", "x"],
                 ["kubectl", "get", "pods", "--bogus"]):
        d = check_argv(strict, argv, lenient=True)
        assert d.verdict is Verdict.BLOCK, (argv, d)
    relaxed = load_profile(strict.escalation.relaxedProfile or "")
    assert relaxed.chain == ["k8s-ops-escalated", "k8s-readonly", "base"]
    assert relaxed.escalation.relaxedProfile is None
    assert relaxed.owners == ["sre-oncall"]
    assert relaxed.seccomp == strict.seccomp  # relax did not touch the syscall baseline
    assert check_argv(relaxed, ["kubectl", "-n", "prod", "delete", "pod", "x"],
                      lenient=True).allowed
    assert not check_argv(relaxed, ["kubectl", "delete", "pod", "x", "--force"],
                          lenient=True).allowed


def test_mcporter_profile_uses_the_seed_fragment_unchanged() -> None:
    frag = json.loads((shipped_profiles_dir() / "mcporter.safebins.json").read_text())
    p = load_profile("mcporter")
    assert p.chain == ["mcporter", "base", "mcporter.safebins"]
    assert p.safeBins["mcporter"].model_dump(exclude_defaults=True) == frag["safeBins"]["mcporter"]


def test_a_wrong_example_in_a_shipped_profile_is_a_load_error(tmp_path: Path) -> None:
    src = (shipped_profiles_dir() / "k8s-readonly.yaml").read_text()
    shutil.copy(shipped_profiles_dir() / "base.yaml", tmp_path / "base.yaml")
    bad = tmp_path / "k8s-bad.yaml"
    bad.write_text(src.replace('allow: ["kubectl get pods -n prod"]',
                               'allow: ["kubectl get pods -n prod", "kubectl delete pod x"]'))
    with pytest.raises(ProfileError) as ei:
        load_profile(str(bad))
    m = ei.value.message
    assert f"{bad}:" in m and "kubectl delete pod x" in m and "listed under allow" in m
    assert "says block" in m


# ------------------------------------------------------------------------- the CLI


def cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(profile, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_cli_list_and_json() -> None:
    code, out, _ = cli("list")
    assert code == 0 and all(n in out for n in SHIPPED)
    code, out, _ = cli("list", "--output", "json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= set(SHIPPED)
    assert any(r["description"].startswith("read-only Kubernetes") for r in rows)


def test_cli_show_yaml_and_json() -> None:
    code, out, _ = cli("show", "k8s-readonly")
    assert code == 0
    data = yaml.safe_load(out)
    assert data["chain"] == ["k8s-readonly", "base"]
    assert data["safeBins"]["kubectl"]["restrictedCommands"][0] == "delete"
    code, out, _ = cli("show", "k8s-readonly", "--output", "json")
    assert json.loads(out)["content_hash"] == load_profile("k8s-readonly").content_hash
    code, _, err = cli("show", "no-such-profile")
    assert code == 125 and "no profile named 'no-such-profile'" in err and "hint:" in err


def test_cli_validate(tmp_path: Path) -> None:
    paths = [str(p) for p in sorted(shipped_profiles_dir().iterdir())]
    code, out, err = cli("validate", *paths)
    assert code == 0, err
    assert out.count("ok ") == len(SHIPPED)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nextends: base\nsafeBins:\n  ls:\n    forbidenFlags: [-R]\n")
    code, out, err = cli("validate", paths[0], str(bad))
    assert code == 125
    assert "ok " in out and f"error  {bad}" in err
    assert f"{bad}:5" in err and "did you mean forbiddenFlags?" in err
    code, out, _ = cli("validate", "--output", "json", str(bad))
    assert code == 125 and json.loads(out)[0]["ok"] is False
    sc = tmp_path / "sc.yaml"
    sc.write_text("name: sc\nseccomp:\n  rules:\n    - {action: kill_process, syscalls: [nope]}\n")
    code, _, err = cli("validate", str(sc))
    assert code == 125 and f"{sc}:4" in err and "unknown syscall 'nope'" in err


def test_cli_explain() -> None:
    # --lenient: judged by name, so the test needs no kubectl on this machine (there is none on
    # a fresh one; without it explain exits 127)
    code, out, _ = cli("explain", "--lenient", "k8s-readonly", "--", "kubectl", "-n", "prod",
                       "delete", "pod", "x")
    assert code == 0
    assert "BLOCK" in out and "k8s-readonly" in out and "rule=" in out
    code, out, _ = cli("explain", "--output", "json", "--lenient", "k8s-readonly", "--",
                       "kubectl", "get", "pods")
    data = json.loads(out)
    assert data["verdict"] == "allow" and data["chain"] == ["k8s-readonly", "base"]
    assert data["safeBin"]["binary"] == "kubectl"


def test_cli_schema() -> None:
    code, out, _ = cli("schema")
    assert code == 0
    s = json.loads(out)
    assert "safeBins" in s["properties"] and "SafeBin" in s["$defs"]
