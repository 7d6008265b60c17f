"""The VM for hosts without the kernel features: `vagrant validate` must accept the Vagrantfile,
offline (no box download: validate never needs the box), and the provision script must parse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, is_root, require

VAGRANT_DIR = REPO / "vagrant"


def _vagrant_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),          # no state in ~/.vagrant.d
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "vagrant-dot"),   # no .vagrant/ in the repo
        "VAGRANT_CHECKPOINT_DISABLE": "1",                      # no update check (offline)
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
    })
    env.update(extra)
    return env


def _validate(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    vagrant = shutil.which("vagrant")
    require(vagrant is not None,
            "vagrant is not installed (make setup installs Debian's `vagrant` package)")
    assert vagrant is not None
    cmd = [vagrant, "validate", *args]
    # Prove it works offline: as root, run it in a fresh network namespace (loopback only).
    unshare = shutil.which("unshare")
    if is_root() and unshare:
        cmd = [unshare, "--net", "--", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [(), ("--ignore-provider",)], ids=["providers", "no-provider"])
def test_vagrantfile_validates_offline(tmp_path: Path, args: tuple[str, ...]) -> None:
    res = _validate(VAGRANT_DIR, _vagrant_env(tmp_path), *args)
    assert res.returncode == 0, f"vagrant validate failed:\n{res.stdout}\n{res.stderr}"
    assert "validated successfully" in res.stdout
    assert not (VAGRANT_DIR / ".vagrant").exists(), "validate left state in the repo"


def test_vagrantfile_knobs_validate(tmp_path: Path) -> None:
    env = _vagrant_env(tmp_path, GLASSBREAK_VM_CPUS="4", GLASSBREAK_VM_MEMORY="8192",
                       GLASSBREAK_VM_BACKPORTS="1")
    res = _validate(VAGRANT_DIR, env)
    assert res.returncode == 0, res.stdout + res.stderr


def test_validate_can_fail_without_provision_script(tmp_path: Path) -> None:
    """The check has teeth: a Vagrantfile whose provision script is missing is refused."""
    d = tmp_path / "repo" / "vagrant"
    d.mkdir(parents=True)
    shutil.copy(VAGRANT_DIR / "Vagrantfile", d / "Vagrantfile")
    res = _validate(d, _vagrant_env(tmp_path))
    assert res.returncode != 0
    assert "provision.sh" in res.stdout + res.stderr


def test_validate_checks_the_provider_block(tmp_path: Path) -> None:
    """Validated with a provider (make setup installs vagrant-libvirt), the active provider's block
    is checked too: a setting that does not exist there is refused (--ignore-provider misses it)."""
    d = tmp_path / "repo" / "vagrant"
    shutil.copytree(VAGRANT_DIR, d)
    text = (d / "Vagrantfile").read_text()
    assert "lv.cpus = CPUS" in text
    (d / "Vagrantfile").write_text(
        text.replace("lv.cpus = CPUS", "lv.cpus = CPUS\n    lv.no_such_setting = 1"))
    res = _validate(d, _vagrant_env(tmp_path))
    assert res.returncode != 0 and "no_such_setting" in res.stdout + res.stderr, res.stdout
    assert _validate(d, _vagrant_env(tmp_path), "--ignore-provider").returncode == 0


def test_vagrantfile_settings() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    assert '"debian/bookworm64"' in text
    assert '"GLASSBREAK_VM_CPUS", "2"' in text
    assert '"GLASSBREAK_VM_MEMORY", "4096"' in text
    assert '"/glassbreak"' in text
    assert 'path: "provision.sh"' in text


def test_provision_script_parses_and_installs_the_essentials() -> None:
    script = VAGRANT_DIR / "provision.sh"
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    for needle in ("linux-image-$ARCH", "linux-headers-$ARCH", "/lib/modules/$KREL/build",
                   "python3-bpfcc", "bpfcc-tools", "redis-server", "make -C \"$DIR\" setup",
                   "vagrant reload --provision"):
        assert needle in text, needle
    assert os.access(script, os.X_OK), "provision.sh must be executable"
