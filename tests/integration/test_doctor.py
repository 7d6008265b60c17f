"""`glassbreak doctor`: real probes, one line per check, exit 1 when a required one is missing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sandbox.cli import doctor
from sandbox.cli.doctor import Check, doctor_command, run_checks
from tests.conftest import is_root, require

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _root() -> None:
    require(is_root(), "doctor's probes need root")


def test_all_required_features_present_here():
    checks = run_checks()
    names = {c.name for c in checks}
    for want in ("architecture", "seccomp filters", "seccomp user-notify", "no_new_privs",
                 "bpf syscall", "ring buffer", "bpf_send_signal", "tracefs", "kernel headers",
                 "bcc", "cgroup v2", "redis-server", "root", "raw tracepoint", "bpf_loop",
                 "kernel BTF", "pid namespace"):
        assert want in names
    missing = [c.line() for c in checks if c.required and not c.ok]
    require(not missing, f"this machine lacks kernel features: {missing}")


def test_text_and_json_output():
    res = CliRunner().invoke(doctor_command, [])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("ok ") and "architecture" in lines[0]
    assert lines[-1].startswith("-- all required features present")
    res = CliRunner().invoke(doctor_command, ["--output", "json"])
    data = json.loads(res.output)
    assert data["ok"] is True and {"name", "ok", "required", "detail", "fix"} <= set(
        data["checks"][0])


def test_a_refused_helper_is_reported_missing(monkeypatch):
    monkeypatch.setattr(doctor, "BPF_FUNC_send_signal", 100000)  # no such helper: verifier says no
    c = doctor.check_send_signal()
    assert not c.ok and c.required and "refused" in c.detail and c.fix


def test_a_refused_bpf_loop_is_reported_missing(monkeypatch):
    monkeypatch.setattr(doctor, "BPF_FUNC_loop", 100000)  # no such helper: verifier says no
    c = doctor.check_bpf_loop()
    assert not c.ok and c.required and "refused" in c.detail and "5.17" in c.fix


def test_missing_btf_is_reported_with_a_fix(monkeypatch):
    from sandbox.kernel import btf

    def gone(*a: object) -> None:
        raise OSError(2, "No such file or directory: '/sys/kernel/btf/vmlinux'")

    monkeypatch.setattr(btf, "exec_offsets", gone)
    c = doctor.check_btf()
    assert not c.ok and c.required and "vmlinux" in c.detail and "DEBUG_INFO_BTF" in c.fix


def test_missing_required_feature_exits_1(monkeypatch):
    monkeypatch.setattr(doctor, "check_tracefs",
                        lambda: Check("tracefs", False, True, "tracefs is not mounted",
                                      "mount -t tracefs tracefs /sys/kernel/tracing"))
    res = CliRunner().invoke(doctor_command, [])
    assert res.exit_code == 1
    line = next(ln for ln in res.output.splitlines() if "tracefs" in ln)
    assert line.startswith("MISSING") and "(fix: mount -t tracefs" in line
    assert "1 required feature(s) missing: tracefs" in res.output


def test_crashing_probe_is_a_missing_feature(monkeypatch):
    def check_bpf() -> Check:
        raise RuntimeError("kaputt")

    monkeypatch.setattr(doctor, "check_bpf", check_bpf)
    checks = run_checks()
    bad = [c for c in checks if c.name == "bpf"]
    assert bad and not bad[0].ok and "kaputt" in bad[0].detail
