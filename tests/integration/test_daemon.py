"""The daemon's run socket and the thin client, end to end: a real `glassbreak serve --socket
--no-http` process (ended by pid), the real console script as the client, the real kernel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._sandbox_helpers import alive
from tests.conftest import GLASSBREAK, is_root, require

pytestmark = pytest.mark.kernel

HEAVY = ("click", "pydantic", "httpx", "redis", "yaml", "bcc")


class Daemon:
    def __init__(self, proc: subprocess.Popen[str], sock: Path, state: Path) -> None:
        self.proc, self.sock, self.state = proc, sock, state

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def start_daemon(d: Path) -> Daemon:
    require(is_root(), "the daemon needs root (seccomp user-notification, eBPF, cgroups)")
    state = d / "state"
    state.mkdir(exist_ok=True)
    sock = d / "gb.sock"
    env = dict(os.environ, GLASSBREAK_STATE_DIR=str(state))
    proc = subprocess.Popen([GLASSBREAK, "serve", "--socket", str(sock), "--no-http"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        pytest.fail(f"the daemon did not start: {proc.stderr.read() if proc.stderr else ''}")
    assert json.loads(line)["socket"] == str(sock)
    return Daemon(proc, sock, state)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Path(tempfile.mkdtemp(prefix="gb-daemon-"))
    os.chmod(d, 0o755)  # `nobody` must reach the socket
    dm = start_daemon(d)
    try:
        yield dm
    finally:
        dm.stop()


def client_env(dm: Daemon | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin", **extra)
    env.pop("GLASSBREAK_STATE_DIR", None)
    if dm is None:
        env["GLASSBREAK_NO_DAEMON"] = "1"
        env["GLASSBREAK_STATE_DIR"] = tempfile.mkdtemp(prefix="gb-inproc-")
    else:
        env["GLASSBREAK_SOCKET"] = str(dm.sock)
    return env


def gb(dm: Daemon | None, *argv: str, prefix: tuple[str, ...] = (), timeout: float = 30,
       **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", client_env(dm))
    return subprocess.run([*prefix, GLASSBREAK, "run", "-p", "readonly", "--", *argv],
                          capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore


CASES = [
    (["/bin/echo", "hi"], 0),
    (["sh", "-c", "exit 7"], 7),
    (["rm", "/etc/passwd"], 126),
    (["no-such-command-xyz"], 127),
    (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
]


@pytest.mark.parametrize("argv,code", CASES, ids=[c[0][-1][:12] for c in CASES])
def test_same_exit_codes_and_stderr_as_in_process(daemon: Daemon, argv: list[str],
                                                  code: int) -> None:
    warm = gb(daemon, *argv)
    cold = gb(None, *argv)
    assert warm.returncode == code, warm.stderr
    assert cold.returncode == code, cold.stderr
    assert warm.stdout == cold.stdout

    def norm(text: str) -> list[str]:  # escalation ids differ between runs
        return [ln.split("esc-")[0] for ln in text.splitlines()]

    assert norm(warm.stderr) == norm(cold.stderr)
    if code == 126:
        line = [ln for ln in warm.stderr.splitlines() if "BLOCKED" in ln]
        assert len(line) == 1 and "[pre-check]" in line[0] and "rule=exec.default" in line[0]
        audit = [json.loads(x) for x in (daemon.state / "audit.jsonl").read_text().splitlines()]
        blocked = [e for e in audit if e["type"] == "blocked" and e["argv"] == argv]
        assert blocked and blocked[-1]["layer"] == "pre-check"
        assert blocked[-1]["binary"] == "/usr/bin/rm"


def test_runs_as_the_caller_in_its_cwd_with_its_env(daemon: Daemon) -> None:
    cwd = tempfile.mkdtemp(prefix="gb-cwd-")
    os.chmod(cwd, 0o755)
    r = gb(daemon, "sh", "-c", 'id -u; id -g; pwd; echo "$GB_TEST_VAR"',
           prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"),
           cwd=cwd, env=client_env(daemon, GB_TEST_VAR="from-the-caller"))
    assert r.returncode == 0, r.stderr
    uid, gid, pwd, var = r.stdout.split("\n")[:4]
    assert (int(uid), int(gid)) == (65534, 65534)  # never root for a non-root caller
    assert pwd == cwd and var == "from-the-caller"


def test_non_root_caller_may_not_degrade(daemon: Daemon) -> None:
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        GLASSBREAK, "run", "-p", "readonly", "--degraded", "ebpf", "--", "id"],
                       capture_output=True, text=True, timeout=30, env=client_env(daemon),
                       cwd="/")
    assert r.returncode == 125
    assert "only root may switch a layer off" in r.stderr and r.stdout == ""


def test_stdio_are_the_callers_fds(daemon: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = gb(daemon, "cat", input="through-the-caller-stdin\n", env=client_env(daemon))
        r2 = subprocess.run([GLASSBREAK, "run", "-p", "readonly", "--", "/bin/echo", "to-file"],
                            stdout=f, stderr=subprocess.PIPE, text=True, timeout=30,
                            env=client_env(daemon))
    assert r.returncode == 0 and r.stdout == "through-the-caller-stdin\n", r.stderr
    assert r2.returncode == 0 and out.read_text() == "to-file\n"


def _wait_line(p: subprocess.Popen[str], timeout: float = 10) -> str:
    assert p.stdout is not None
    os.set_blocking(p.stdout.fileno(), True)
    deadline = time.monotonic() + timeout
    line = p.stdout.readline()
    assert line and time.monotonic() < deadline, "the command did not start"
    return line.strip()


def test_ctrl_c_reaches_the_command(daemon: Daemon) -> None:
    p = subprocess.Popen(
        [GLASSBREAK, "run", "-p", "readonly", "--", "sh", "-c",
         'trap "echo got-int; exit 3" INT; echo ready; while :; do sleep 0.05; done'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(daemon))
    assert _wait_line(p) == "ready"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 3, err
    assert "got-int" in out


def test_daemon_death_ends_the_run(tmp_path: Path) -> None:
    dm = start_daemon(tmp_path)
    try:
        p = subprocess.Popen(
            [GLASSBREAK, "run", "-p", "readonly", "--", "sh", "-c", "echo $$; exec sleep 30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(dm))
        pid = int(_wait_line(p))
        t0 = time.monotonic()
        dm.proc.kill()
        while alive(pid) and time.monotonic() - t0 < 2.0:
            time.sleep(0.02)
        assert not alive(pid), "the run's process outlived the daemon by 2 s"
        _, err = p.communicate(timeout=5)
        assert p.returncode == 125
        assert "died; the run was ended" in err and str(dm.sock) in err
    finally:
        dm.stop()


def test_thin_client_imports_only_the_standard_library(daemon: Daemon) -> None:
    code = (
        "import atexit, sys\n"
        "out = sys.argv[1]\n"
        "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
        "sys.argv = ['glassbreak', 'run', '-p', 'readonly', '--', '/bin/echo', 'thin']\n"
        "from sandbox.cli.entry import main\n"
        "main()\n"
    )
    with tempfile.NamedTemporaryFile("r", suffix=".mods") as mods:
        r = subprocess.run([sys.executable, "-c", code, mods.name], capture_output=True,
                           text=True, timeout=30, env=client_env(daemon))
        assert r.returncode == 0 and r.stdout == "thin\n", r.stderr
        loaded = mods.read().split()
    assert "sandbox.run.thinclient" in loaded  # it really took the thin path
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, heavy
    # the two modules of the thin path, and the (docstring-only) packages that hold them
    assert not [m for m in loaded if m.startswith("sandbox.") and m not in
                ("sandbox.cli", "sandbox.cli.entry", "sandbox.run", "sandbox.run.thinclient")]


PY_CLIENT = "import sys; sys.argv[0] = 'glassbreak'; from sandbox.cli.entry import main; main()"


def test_native_and_python_clients_send_the_same_bytes(daemon: Daemon, tmp_path: Path) -> None:
    """Arguments and environment that are not UTF-8 reach the command byte for byte, through
    the native client (.venv/bin/glassbreak) and through the Python thin client alike."""
    weird = b"caf\xe9 \xff \"q\" \\ \t\x01 \xe2\x82\xac"
    env = client_env(daemon)
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    envb[b"GB_WEIRD"] = weird
    cmd = [b"run", b"-p", b"readonly", b"--", b"sh", b"-c", b'printf "%s|%s" "$1" "$GB_WEIRD"',
           b"sh", weird]
    outs = []
    for prefix in ([os.fsencode(GLASSBREAK)], [os.fsencode(sys.executable), b"-c",
                                                PY_CLIENT.encode()]):
        r = subprocess.run([*prefix, *cmd], capture_output=True, timeout=30, env=envb)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] == outs[1] == weird + b"|" + weird


def test_sigterm_to_the_client_ends_the_run(daemon: Daemon) -> None:
    p = subprocess.Popen(
        [GLASSBREAK, "run", "-p", "readonly", "--", "sh", "-c", "echo $$; exec sleep 30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=client_env(daemon))
    pid = int(_wait_line(p))
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "the run's process tree was ended" in err
    deadline = time.monotonic() + 2
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid)


def test_warm_run_starts_no_python(daemon: Daemon) -> None:
    """The warm path's cost is structural (the timing targets live in bench/): the console
    script is the native client, and a run through the daemon works with the Python it would
    fall back to replaced by /bin/false."""
    with open(GLASSBREAK, "rb") as f:
        assert f.read(4) == b"\x7fELF", "make setup installs the native client as glassbreak"
    env = client_env(daemon, GLASSBREAK_PYTHON="/bin/false")
    r = subprocess.run([GLASSBREAK, "run", "-p", "readonly", "--", "/bin/echo", "warm"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "warm\n", r.stderr
    # without the daemon the same client needs Python: the substitute makes it fail
    cold = subprocess.run([GLASSBREAK, "run", "-p", "readonly", "--", "/bin/true"],
                          env={**env, "GLASSBREAK_NO_DAEMON": "1"}, capture_output=True,
                          timeout=30)
    assert cold.returncode != 0


def test_callers_own_state_settings_are_not_silently_ignored(daemon: Daemon,
                                                             tmp_path: Path) -> None:
    """The daemon keeps its own state dir: a caller whose environment names another one is told
    so on stderr (and how to run in process instead); the run is recorded in the daemon's log."""
    mine = tmp_path / "my-state"
    env = client_env(daemon)
    env["GLASSBREAK_STATE_DIR"] = str(mine)
    r = gb(daemon, "/bin/true", env=env)
    assert r.returncode == 0, r.stderr
    assert f"GLASSBREAK_STATE_DIR={mine}" in r.stderr and "GLASSBREAK_NO_DAEMON=1" in r.stderr
    assert not (mine / "audit.jsonl").exists()
    assert (daemon.state / "audit.jsonl").exists()
    quiet = gb(daemon, "/bin/true")  # no own setting: no note
    assert quiet.returncode == 0 and "GLASSBREAK_STATE_DIR" not in quiet.stderr


def test_daemon_reloads_a_profile_when_its_file_changes(daemon: Daemon, tmp_path: Path) -> None:
    """The daemon keeps profiles parsed, and sees an edited file at the next run."""
    d = tmp_path / "p"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    prof = d / "reload.yaml"
    prof.write_text("name: reload\nextends: base\nexec:\n  allow: [/usr/bin/true]\n")
    prof.chmod(0o644)
    env = client_env(daemon)
    first = subprocess.run([GLASSBREAK, "run", "-p", str(prof), "--", "/usr/bin/echo", "hi"],
                           capture_output=True, text=True, timeout=30, env=env)
    assert first.returncode == 126, first.stderr
    prof.write_text("name: reload\nextends: base\nexec:\n  allow: [/usr/bin/true, "
                    "/usr/bin/echo]\n")
    second = subprocess.run([GLASSBREAK, "run", "-p", str(prof), "--", "/usr/bin/echo", "hi"],
                            capture_output=True, text=True, timeout=30, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "hi\n"


def test_non_root_without_daemon_says_what_to_do(tmp_path: Path) -> None:
    """No daemon and not root: one clear message (not bcc's 'Failed to compile BPF module')."""
    require(is_root(), "needs root to drop to nobody")
    env = dict(os.environ, GLASSBREAK_SOCKET=str(tmp_path / "nobody-listens.sock"),
               GLASSBREAK_STATE_DIR=str(tmp_path / "st"))
    for output in ("text", "json"):
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            GLASSBREAK, "run", "-o", output, "-p", "readonly", "--", "true"],
                           capture_output=True, text=True, timeout=60, env=env, cwd="/")
        assert r.returncode == 125, r.stderr
        assert "nobody-listens.sock" in r.stderr and "glassbreak serve" in r.stderr
        assert "compile" not in r.stderr.lower() and "Traceback" not in r.stderr
        if output == "json":
            assert json.loads(r.stderr.strip().splitlines()[-1])["exit_code"] == 125


def test_serve_alone_serves_runs_and_the_api(tmp_path: Path) -> None:
    """`glassbreak serve` with no options: the run socket AND the approval API."""
    require(is_root(), "the daemon needs root")
    from tests.conftest import free_port

    sock = tmp_path / "default.sock"
    port = free_port()
    env = dict(os.environ, GLASSBREAK_STATE_DIR=str(tmp_path / "st"), GLASSBREAK_SOCKET=str(sock))
    proc = subprocess.Popen([GLASSBREAK, "serve", "--port", str(port), "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        seen: dict[str, str] = {}
        while not ({"socket", "listening"} <= set(seen)):
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            seen.update(json.loads(line))
        assert seen["socket"] == str(sock)
        r = subprocess.run([GLASSBREAK, "run", "-p", "readonly", "--", "echo", "warm"],
                           capture_output=True, text=True, timeout=30,
                           env=dict(env, GLASSBREAK_NO_DAEMON=""))
        assert r.returncode == 0 and r.stdout == "warm\n", r.stderr
        started = [json.loads(x) for x in (tmp_path / "st" / "audit.jsonl").read_text()
                   .splitlines() if '"run_started"' in x]
        assert [e["pid"] for e in started if e["argv"] == ["echo", "warm"]] == [proc.pid]
        import urllib.request

        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as h:
                    assert h.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        both = subprocess.run([GLASSBREAK, "serve", "--no-socket", "--no-http"],
                              capture_output=True, text=True, timeout=30, env=env)
        assert both.returncode == 2 and "nothing to serve" in both.stderr
    finally:
        proc.kill()
        proc.wait(timeout=10)
