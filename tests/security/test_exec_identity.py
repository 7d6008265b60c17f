"""Exec gate vs binary identity: copies, hard links, symlinks and renames of a ruled binary,
`exec -a`, and the dynamic loader run directly are all judged as the ruled binary."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: gatetest
extends: base
owners: [sec-team]
safeBins:
  kubectl:
    restrictedCommands: [delete]
exec:
  allow: [sh, dash, bash, env, "true", echo, "/usr/bin/python3*"]
  default: block
"""


def _run(tmp_path: Path, state_dir: Path, script: str) -> tuple[object, list[dict[str, object]]]:
    prof = tmp_path / "gatetest.yaml"
    prof.write_text(PROFILE)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/local/bin:/usr/bin:/bin",
           "GLASSBREAK_STATE_DIR": str(state_dir)}
    r = run_cli("run", "--profile", str(prof), "--", "sh", "-c", script, env=env)
    p = state_dir / "audit.jsonl"
    return r, [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def _blocks(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if e["type"] == "blocked" and e["layer"] in ("exec-gate",
                                                                            "exec-trace",
                                                                            "filesystem")]


@pytest.fixture
def bindir(tmp_path: Path, stub_kubectl: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy2(stub_kubectl, d / "kc-copy")
    os.link(stub_kubectl, d / "kc-hard") if os.stat(stub_kubectl).st_dev == os.stat(
        d).st_dev else shutil.copy2(stub_kubectl, d / "kc-hard")
    (d / "kc-sym").symlink_to(stub_kubectl)
    shutil.copy2(stub_kubectl, d / "get-pods")  # a rename that looks harmless
    return d


@pytest.mark.parametrize("name", ["kc-copy", "kc-hard", "kc-sym", "get-pods"])
def test_copies_links_renames_are_still_ruled(name: str, tmp_path: Path, state_dir: Path,
                                              bindir: Path) -> None:
    r, events = _run(tmp_path, state_dir, f"{name} delete pod x")
    assert "stub-kubectl" not in r.stdout, "the renamed ruled binary ran"  # type: ignore
    b = _blocks(events)
    assert b, events
    assert b[0]["argv"] == [name, "delete", "pod", "x"]
    assert b[0]["rule_id"] and b[0]["sha256"] and b[0]["binary"]
    if name == "kc-sym":  # a symlink is judged as what it points to: the ruled binary
        assert "restrictedCommands:delete" in str(b[0]["rule_id"])
    else:  # a copy is ruled by content, or blocked as an unknown program (never allowed)
        assert str(b[0]["rule_id"]).startswith(("safeBins.kubectl", "exec.default")), b[0]


def test_copy_with_an_allowed_subcommand_is_not_a_bypass_either(tmp_path: Path,
                                                                state_dir: Path,
                                                                bindir: Path) -> None:
    r, events = _run(tmp_path, state_dir, "kc-copy get pods")
    b = _blocks(events)
    # the exec gate allows the copy like kubectl itself (identity by content), but the file is
    # outside the exec envelope (Landlock EXECUTE is granted on the allowed files themselves)
    assert "stub-kubectl get pods" not in r.stdout  # type: ignore[attr-defined]
    assert b, events
    if b[0]["layer"] == "filesystem":
        assert b[0]["rule_id"] == f"filesystem.execute:{tmp_path / 'bin' / 'kc-copy'}"
        assert b[0]["access"] == ["fs.execute"] and b[0]["verdict"] == "deny"
    else:
        assert b[0]["argv"] == ["kc-copy", "get", "pods"]


def test_exec_a_renames_argv0_only(tmp_path: Path, state_dir: Path, bindir: Path) -> None:
    r, events = _run(tmp_path, state_dir, "exec bash -c 'exec -a innocent kubectl delete pod x'")
    assert "stub-kubectl" not in r.stdout  # type: ignore[attr-defined]
    b = _blocks(events)
    assert b and b[0]["argv"] == ["innocent", "delete", "pod", "x"], events
    assert b[0]["binary"] == "/usr/local/bin/kubectl"
    assert "restrictedCommands:delete" in str(b[0]["rule_id"])


def test_loader_run_directly(tmp_path: Path, state_dir: Path, bindir: Path) -> None:
    loader = next((p for p in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")
                   if os.path.exists(p)), None)
    assert loader, "no dynamic loader found"
    # an ELF ruled binary run through the loader: a copy of `true` given a kubectl rule
    # would need a profile edit; use the ruled stub through the loader (the loader refuses a
    # script, but the gate must refuse first) and a forbidden ELF (python3 is allowed, env is).
    r, events = _run(tmp_path, state_dir, f"{loader} /usr/local/bin/kubectl delete pod x")
    assert "stub-kubectl" not in r.stdout  # type: ignore[attr-defined]
    b = _blocks(events)
    assert b and b[0]["argv"][-3:] == ["delete", "pod", "x"], events
    assert b[0]["layer"] == "exec-gate"
