"""The filesystem layer on the real kernel: every run in a Landlock domain (root included), its
denials reported and escalatable, the private temp dir, the scopes, what root loses, monitor
and degraded runs, path grants, both spawn paths."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GLASSBREAK, is_root, load_bench, require, run_cli

pytestmark = pytest.mark.kernel

PROFILE = """\
name: fstest
extends: base
owners: [sec-team]
exec:
  allow: [sh, dash, cat, ls, echo, printf, "true", touch, chmod, chown, sleep, kill, id, ln, mv,
          rm, mkdir, stat, "/usr/bin/python3*"]
  default: block
{extra}
"""


@dataclass
class World:
    root: Path
    work: Path  # the runs' cwd
    out: Path  # outside the cwd: readable, not writable
    state: Path
    profile: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "GLASSBREAK_STATE_DIR": str(self.state),
                **extra}

    def run(self, *argv: str, flags: tuple[str, ...] = (), env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli("run", "--profile", str(self.profile), *flags, "--", *argv,
                       env=env or self.env(), cwd=str(self.work), timeout=timeout)

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        p = self.state / "audit.jsonl"
        evs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] \
            if p.exists() else []
        return [e for e in evs if type_ is None or e["type"] == type_]

    def blocks(self, layer: str) -> list[dict[str, Any]]:
        return [e for e in self.events("blocked") if e["layer"] == layer]


def make_world(tmp_path: Path, extra: str = "") -> World:
    require(is_root(), "the runner needs root")
    w = World(tmp_path, tmp_path / "work", tmp_path / "out", tmp_path / "state",
              tmp_path / "fstest.yaml")
    for d in (w.work, w.out, w.state):
        d.mkdir()
    (w.out / "f.txt").write_text("outside\n")
    w.profile.write_text(PROFILE.format(extra=extra))
    return w


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_write_outside_the_cwd_is_refused_reported_and_escalated(world: World) -> None:
    # the command fails (exit 1), as one hit by a denial usually does: its report waits until
    # the kernel's audit queue is drained (a successful one does not ask the kernel)
    r = world.run("sh", "-c", f"echo x > {world.out}/new; echo rc=$?; echo y >> "
                  f"{world.out}/f.txt; echo inside > made-here; exit 1")
    assert "Permission denied" in r.stderr and (world.work / "made-here").exists()
    assert not (world.out / "new").exists() and (world.out / "f.txt").read_text() == "outside\n"
    b = world.blocks("filesystem")
    assert [(e["rule_id"], e["access"]) for e in b] == [
        (f"filesystem.write:{world.out}", ["fs.make_reg"]),
        (f"filesystem.write:{world.out}/f.txt", ["fs.write_file"])]
    assert all(e["verdict"] == "block" and e["escalation_id"] and e["path"] for e in b)
    assert b[0]["argv"] == ["sh", "-c", f"echo x > {world.out}/new; echo rc=$?; echo y >> "
                            f"{world.out}/f.txt; echo inside > made-here; exit 1"]
    assert r.stderr.count("BLOCKED [filesystem]") == 2, r.stderr
    # the escalation: same four traits as an exec block, plus the path an approval grants
    s = run_cli("escalations", "show", b[1]["escalation_id"], "-o", "json",
                env=world.env())
    rec = json.loads(s.stdout)
    assert rec["layer"] == "filesystem" and rec["rule_id"] == b[1]["rule_id"]
    assert rec["fs_path"] == f"{world.out}/f.txt" and rec["fs_access"] == "write"
    assert "sec-team" in rec["owners"] and rec["cwd"] == str(world.work) and rec["env"]
    result = world.events("run_result")[-1]
    assert result["decision"] == "block" and result["layer"] == "filesystem"


def test_private_temp_dir(world: World) -> None:
    r = world.run("sh", "-c", 'echo "$TMPDIR" "$XDG_CACHE_HOME"; stat -c %a "$TMPDIR"; '
                  'echo t > "$TMPDIR/t" && cat "$TMPDIR/t"; echo nope > /tmp/gb-ll-nope')
    tmp, cache = r.stdout.split()[:2]
    assert cache == f"{tmp}/cache" and r.stdout.split()[2:4] == ["700", "t"], r.stdout
    assert os.path.dirname(tmp).startswith("/tmp/glassbreak-runs-")
    assert not os.path.exists(tmp), "the private temp dir outlived its run"
    assert not os.path.exists("/tmp/gb-ll-nope")


def test_hidden_paths_and_a_read_rule_beneath_one(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    w = make_world(tmp_path, f'filesystem:\n  hidden: ["{secret}"]\n'
                   f'  read: ["/", "{secret}/public"]\n')
    secret.mkdir()
    (secret / "key").write_text("hunter2\n")
    (secret / "public").write_text("hello\n")
    r = w.run("sh", "-c", f"cat {secret}/key; ls {secret}; cat {secret}/public")
    assert "hunter2" not in r.stdout and "Permission denied" in r.stderr
    assert "hello" in r.stdout and "key" in r.stdout  # names stay listable
    b = w.blocks("filesystem")
    assert b and b[0]["rule_id"] == f"filesystem.hidden:{secret}/key"
    assert b[0]["access"] == ["fs.read_file"] and "hidden by" in b[0]["reason"]


@pytest.mark.parametrize("spawn", ["launcher", "python"])
def test_both_spawn_paths_enter_the_domain_and_drop_capabilities(world: World,
                                                                  spawn: str) -> None:
    env = world.env(**({"GLASSBREAK_NO_LAUNCHER": "1"} if spawn == "python" else {}))
    r = world.run("sh", "-c", f"cat /proc/self/status; echo x > {world.out}/new", env=env)
    caps = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in r.stdout.splitlines()
                                        if ln.startswith("Cap"))}
    for bit in (21, 19, 16, 17, 39, 38, 18, 12, 13, 31, 32, 33, 29, 30, 37, 9, 22):
        for s in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"):
            assert not caps[s] >> bit & 1, (s, bit, caps)
    assert caps["CapEff"] & 1  # root keeps the rest (CAP_CHOWN here)
    assert not (world.out / "new").exists()
    assert world.blocks("filesystem")


def test_root_keeps_modes_owners_times_of_its_files_but_loses_xattrs(world: World) -> None:
    # chmod, chown and utime are performed by the supervisor on files the run may write
    # (tests/security/test_root_attrs.py has the attacks); extended attributes stay refused
    r = world.run("sh", "-c", "touch f; echo touch=$?; chmod 777 f; echo chmod=$?; "
                  "chown 1:1 f; echo chown=$?; touch -d 2001-01-01 f; echo touchd=$?; "
                  "python3 -c 'import os; os.setxattr(\"f\", \"user.x\", b\"1\")'; echo xattr=$?")
    assert "touch=0\nchmod=0\nchown=0\ntouchd=0\nxattr=1\n" in r.stdout, (r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr
    st = (world.work / "f").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o777, 1, 1)
    assert time.gmtime(st.st_mtime)[:3] == (2001, 1, 1)


@pytest.fixture
def outsider() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def test_a_run_cannot_signal_outside_its_tree(world: World,
                                             outsider: subprocess.Popen[bytes]) -> None:
    r = world.run("sh", "-c", f"kill -TERM {outsider.pid}; echo outside=$?; "
                  "sleep 100 & kill $!; echo own=$?")
    assert "outside=1" in r.stdout and "own=0" in r.stdout, (r.stdout, r.stderr)
    assert outsider.poll() is None
    b = world.blocks("landlock")
    assert b and b[0]["access"] == ["scope.signal"] and b[0]["verdict"] == "deny"


def test_a_run_cannot_reach_an_abstract_socket_made_outside(world: World) -> None:
    name = f"gb-ll-{secrets.token_hex(4)}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    srv.listen(1)
    try:
        code = ("import socket, os\n"
                f"c = socket.socket(socket.AF_UNIX)\ntry:\n    c.connect('\\0{name}')\n"
                "    print('outside=ok')\nexcept OSError as e:\n    print('outside', e.errno)\n"
                "s = socket.socket(socket.AF_UNIX); s.bind('\\0inside-" + name + "'); "
                "s.listen(1)\nc2 = socket.socket(socket.AF_UNIX); c2.connect('\\0inside-"
                + name + "'); print('inside=ok')\n")
        r = world.run("python3", "-c", code)
    finally:
        srv.close()
    assert "outside 1" in r.stdout and "inside=ok" in r.stdout, (r.stdout, r.stderr)  # EPERM


def test_monitor_enforces_only_glassbreaks_own_protections(world: World) -> None:
    copy = world.work / "my-true"
    shutil.copy2("/usr/bin/true", copy)
    world.run("true")  # the audit log exists
    r = world.run("sh", "-c", f"echo x > {world.out}/new; ./my-true; echo copy=$?; "
                  f": > {world.state}/audit.jsonl", flags=("--mode", "monitor"))
    assert (world.out / "new").exists() and "copy=0" in r.stdout, (r.stdout, r.stderr)
    b = world.blocks("filesystem")
    assert [e["rule_id"] for e in b] == [f"filesystem.self-protection:{world.state}/audit.jsonl"]
    assert b[0]["enforced"] and b[0]["verdict"] == "deny"
    assert world.events("run_started")[-1]["mode"] == "monitor"


def test_degraded_landlock_runs_without_a_domain_and_says_so(world: World) -> None:
    r = world.run("sh", "-c", f"echo x > {world.out}/new", flags=("--degraded", "landlock"))
    assert r.returncode == 0 and (world.out / "new").exists(), r.stderr
    started = world.events("run_started")[-1]
    assert "landlock" not in started["layers"] and started["degraded"] == ["landlock"]
    assert [e["what"] for e in world.events("degraded")] == ["landlock"]


def _approve(world: World, esc: str) -> dict[str, Any]:
    r = run_cli("escalations", "approve", esc, "--as", "sec-team", "--ttl", "2m", "-o", "json",
                env=world.env())
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_an_approval_grants_the_path_to_later_runs_until_revoked(world: World) -> None:
    cmd = f"echo x > {world.out}/f.txt"
    world.run("sh", "-c", cmd)
    esc = world.blocks("filesystem")[-1]["escalation_id"]
    rec = _approve(world, esc)
    assert rec["state"] == "approved" and rec["grant_id"]
    r = world.run("sh", "-c", cmd)
    assert r.returncode == 0 and (world.out / "f.txt").read_text() == "x\n", r.stderr
    used = world.events("grant_used")[-1]
    assert used["grant_id"] == rec["grant_id"]
    assert used["relaxed_profile"] == f"fstest + write {world.out}/f.txt"
    g = run_cli("grants", "list", env=world.env())
    assert f"write {world.out}/f.txt" in g.stdout
    assert run_cli("grants", "revoke", rec["grant_id"], "--as", "sec-team",
                   env=world.env()).returncode == 0
    r = world.run("sh", "-c", f"echo y > {world.out}/f.txt")
    assert "Permission denied" in r.stderr and (world.out / "f.txt").read_text() == "x\n"


def test_wait_reruns_once_the_path_is_approved(world: World) -> None:
    target = world.out / "waited"
    p = subprocess.Popen([GLASSBREAK, "run", "--profile", str(world.profile), "--wait=60s",
                          "--", "sh", "-c", f"echo x > {target}"], cwd=world.work,
                         env={**os.environ, **world.env()}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        esc = None
        while esc is None and time.monotonic() < deadline:
            raised = [e for e in world.events("escalation_raised") if e["layer"] == "filesystem"]
            esc = raised[0]["escalation_id"] if raised else None
            time.sleep(0.1)
        assert esc, "no filesystem escalation was raised"
        _approve(world, esc)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert target.read_text() == "x\n"
    assert len(world.events("run_started")) == 2  # the attempt, then the rerun


@pytest.mark.parametrize("launcher", [True, False])
def test_a_command_outside_the_exec_envelope_says_so(tmp_path: Path, launcher: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    require(is_root(), "needs root")
    from sandbox.errors import RunnerError
    from sandbox.kernel import landlock as L
    from sandbox.kernel.child import ChildSpec

    if not launcher:
        monkeypatch.setenv("GLASSBREAK_NO_LAUNCHER", "1")
    p = L.plan([L.Grant("/", L.FS_READ)])  # readable, nothing executable
    rs = L.build(p.rules, handled_fs=L.STATIC_FS, scoped=0)
    try:
        spec = ChildSpec(["true"], executable="/usr/bin/true", env={}, cwd=str(tmp_path),
                         stdin=os.open("/dev/null", os.O_RDONLY), landlock=[(rs.fd, 0)])
        with pytest.raises(RunnerError) as e:
            spec.spawn()
    finally:
        rs.close()
    assert "not in the exec envelope" in e.value.message


def test_missing_landlock_refuses_with_a_doctor_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox.errors import KernelFeatureMissing
    from sandbox.kernel import landlock as L
    from sandbox.run.supervisor import landlock_abi

    def missing() -> int:
        raise L.LandlockUnavailable("Landlock is built in but not enabled at boot")

    monkeypatch.setattr(L, "abi_version", missing)
    with pytest.raises(KernelFeatureMissing) as e:
        landlock_abi()
    assert e.value.exit_code == 125 and "--degraded landlock" in (e.value.hint or "")
    assert "doctor" in (e.value.hint or "")
    monkeypatch.setattr(L, "abi_version", lambda: 5)
    with pytest.raises(KernelFeatureMissing):
        landlock_abi()


def test_a_daemon_caches_the_static_layer_and_sees_new_files(tmp_path: Path) -> None:
    """A new file in an expanded directory (a hidden path's parent) is readable by the next
    run: the cached layer is re-planned when a watched directory changes."""
    start_daemon = load_bench("daemons").start_daemon
    secret = tmp_path / "d" / "secret"
    w = make_world(tmp_path, f'filesystem:\n  hidden: ["{secret}"]\n')
    secret.mkdir(parents=True)
    dp = start_daemon(tmp_path / "daemon", env={**os.environ, **w.env()})
    try:
        env = {**os.environ, **w.env(GLASSBREAK_SOCKET=str(dp.sock))}
        env.pop("GLASSBREAK_NO_DAEMON", None)
        for i in range(3):
            (tmp_path / "d" / f"new{i}").write_text(f"n{i}\n")
            r = subprocess.run([GLASSBREAK, "run", "-p", str(w.profile), "--", "cat",
                                str(tmp_path / "d" / f"new{i}")], capture_output=True, text=True,
                               env=env, cwd=w.work, timeout=30)
            assert r.stdout == f"n{i}\n", r.stderr
    finally:
        dp.stop()


SEMLOCK = ("import multiprocessing as mp\n"
           "try:\n    l = mp.Lock(); l.acquire(); l.release(); print('lock=ok')\n"
           "except OSError as e:\n    print('lock', e.errno)\n")


def test_shared_memory_only_where_listed(tmp_path: Path) -> None:
    """/dev/shm (Python's multiprocessing semaphores) is not reachable by default, like every
    device; a profile that lists it in filesystem.write gets it (python-dev does), and the
    other devices stay out even then."""
    (tmp_path / "d").mkdir()
    (tmp_path / "l").mkdir()
    default = make_world(tmp_path / "d")
    r = default.run("python3", "-c", SEMLOCK)
    assert "lock 13" in r.stdout, (r.stdout, r.stderr)  # EACCES
    b = default.blocks("filesystem")
    assert b and b[0]["path"].startswith("/dev/shm") and b[0]["verdict"] == "deny"
    listed = make_world(tmp_path / "l", 'filesystem:\n  write: ["$CWD", "$TMPDIR", "/dev/shm"]\n')
    r = listed.run("python3", "-c", SEMLOCK + "try:\n    open('/dev/kmsg', 'w')\n"
                   "    print('kmsg=ok')\nexcept OSError as e:\n    print('kmsg', e.errno)\n")
    assert "lock=ok" in r.stdout and "kmsg 13" in r.stdout, (r.stdout, r.stderr)
    assert not [e for e in listed.blocks("filesystem") if e["path"].startswith("/dev/shm")]


def test_a_profile_cannot_make_devices_writable(tmp_path: Path) -> None:
    w = make_world(tmp_path, 'filesystem:\n  write: ["$CWD", "/dev"]\n')
    r = w.run("true")
    assert r.returncode == 125 and "devices are never writable" in r.stderr, r.stderr
