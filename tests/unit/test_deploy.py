"""deploy/: the systemd unit and the Kubernetes DaemonSet load, and grant exactly the privileges
glassbreak needs (the same capability set in both), no more."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GLASSBREAK, REPO, require

DEPLOY = REPO / "deploy"
# The capabilities the daemon needs (deploy/README.md explains each one and how it was checked).
CAPS = {"BPF", "PERFMON", "SYS_PTRACE", "KILL", "SETUID", "SETGID", "DAC_READ_SEARCH",
        "AUDIT_CONTROL", "AUDIT_READ"}
SOCKET = "/run/glassbreak/glassbreak.sock"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=True, comment_prefixes=("#", ";"))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((DEPLOY / "glassbreak.service").read_text())
    return cp


def _docs() -> list[dict[str, Any]]:
    with (DEPLOY / "daemonset.yaml").open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _daemonset() -> dict[str, Any]:
    (ds,) = [d for d in _docs() if d["kind"] == "DaemonSet"]
    return ds


def test_unit_has_the_expected_sections_and_keys() -> None:
    u = _unit()
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    svc = u["Service"]
    exec_start = svc["ExecStart"].split()
    assert exec_start[0].endswith("/glassbreak") and exec_start[1] == "serve"
    assert exec_start[2:] == ["--host", "127.0.0.1", "--port", "8787"]  # API on loopback only
    assert f"GLASSBREAK_SOCKET={SOCKET}" in svc["Environment"]
    assert svc["User"] == "root"
    assert svc["RuntimeDirectory"] == "glassbreak"  # -> /run/glassbreak
    assert svc["StateDirectory"] == "glassbreak"    # -> /var/lib/glassbreak
    assert svc["Delegate"] == "yes"                 # the run cgroup leaves live below it
    assert svc["KillMode"] == "control-group"       # daemon gone -> every run gone
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["SystemCallArchitectures"] == "native"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_unit_capabilities_are_exactly_the_needed_ones() -> None:
    svc = _unit()["Service"]
    caps = set(svc["CapabilityBoundingSet"].split())
    assert caps == {f"CAP_{c}" for c in CAPS}
    assert "CAP_SYS_ADMIN" not in caps
    assert svc.get("AmbientCapabilities", "") == ""


@pytest.mark.parametrize("key", ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                                 "ProtectKernelModules", "ProtectControlGroups", "SystemCallFilter",
                                 "MemoryDenyWriteExecute", "PrivateNetwork", "SecureBits"])
def test_unit_has_no_option_that_changes_what_commands_see(key: str) -> None:
    """Commands inherit the daemon's mount namespace, seccomp filters and securebits: these
    options would make a daemon run differ from an in-process run (or break bcc/cgroups)."""
    assert key not in _unit()["Service"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    require(exe is not None, "systemd-analyze is not installed (Debian: systemd)")
    assert exe is not None
    unit = tmp_path / "glassbreak.service"
    unit.write_text((DEPLOY / "glassbreak.service").read_text()
                    .replace("/usr/local/bin/glassbreak", GLASSBREAK))
    res = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for bad in ("Unknown key", "ignoring", "Failed to parse", "Invalid"):
        assert bad not in out, out


def test_manifests_load() -> None:
    kinds = [d["kind"] for d in _docs()]
    assert kinds == ["Namespace", "ServiceAccount", "DaemonSet"]
    for d in _docs():
        assert d["metadata"]["name"] == "glassbreak"


def test_daemonset_is_not_privileged_and_adds_exactly_the_needed_caps() -> None:
    pod = _daemonset()["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork", False) is False
    assert pod.get("hostIPC", False) is False
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == CAPS
    assert "privileged: true" not in (DEPLOY / "daemonset.yaml").read_text()


def test_daemonset_mounts_what_the_kernel_features_need() -> None:
    pod = _daemonset()["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for m in mounts.values():
        assert m["name"] in vols, f"volumeMount {m['name']} has no volume"
    expect = {  # mountPath -> (host path, read-only)
        "/sys/fs/cgroup": ("/sys/fs/cgroup", False),
        "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
        "/lib/modules": ("/lib/modules", True),
        "/usr/src": ("/usr/src", True),
        "/run/glassbreak": ("/run/glassbreak", False),
        "/var/lib/glassbreak": ("/var/lib/glassbreak", False),
    }
    for path, (host, ro) in expect.items():
        m = mounts[path]
        assert vols[m["name"]]["hostPath"]["path"] == host
        assert bool(m.get("readOnly", False)) is ro, path
    hostpaths = {v["hostPath"]["path"] for v in vols.values() if "hostPath" in v}
    assert hostpaths == {h for h, _ in expect.values()}, "an unexplained hostPath"
    assert c["command"][1:] == ["serve", "--host", "127.0.0.1", "--port", "8787"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GLASSBREAK_SOCKET"] == SOCKET


def test_unit_and_daemonset_agree_on_capabilities() -> None:
    unit_caps = {c.removeprefix("CAP_")
                 for c in _unit()["Service"]["CapabilityBoundingSet"].split()}
    (c,) = _daemonset()["spec"]["template"]["spec"]["containers"]
    assert unit_caps == set(c["securityContext"]["capabilities"]["add"])
