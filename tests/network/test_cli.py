"""The network layer at the command line: `glassbreak trace` shows connects and DNS answers in
the process tree, `glassbreak profile suggest-network` turns a monitored run into entries,
`escalations show` names the destination, `--degraded network` is recorded, a missing feature
refuses with 125 and a doctor hint, and doctor checks the hooks."""

from __future__ import annotations

import json
import socket

import pytest

from sandbox.cli import doctor
from tests.conftest import run_cli
from tests.network.conftest import HOST4, HOST4B, PY, Runner, client_code

pytestmark = pytest.mark.kernel


def test_trace_shows_connects_and_dns_answers_in_the_tree(netns: None,
                                                          runner: Runner) -> None:
    p = runner.profile("c-trace", {"allow": ["web.test:8080"]})
    code = client_code("many", [["dns", HOST4, "web.test"], ["tcp", HOST4, 8080],
                                ["tcp", HOST4B, 5432]])
    r = runner.run(p, ["sh", "-c", f"{PY} -S -c \"{code}\"; true"])
    assert r.code == 0, r.lines
    t = run_cli("trace", r.run_id)
    assert t.returncode == 0, t.stderr
    lines = t.stdout.splitlines()
    py = next(i for i, x in enumerate(lines) if "python3 -S -c" in x)
    # under the python process: its DNS query, the allowed connect (with the name), the block
    below = "\n".join(lines[py + 1:py + 6])
    assert f"+ net connect4 {HOST4}:8080 (web.test)" in below, t.stdout
    assert f"x net refused {HOST4B}:5432" in below and "escalation=esc-" in below, t.stdout
    assert "net dns-query" in below
    assert any(x.startswith(f"dns + A web.test -> {HOST4}") for x in lines), t.stdout
    tj = json.loads(run_cli("trace", r.run_id, "--output", "json").stdout)
    assert any(d["qname"] == "web.test" for d in tj["dns"])


def test_suggest_network_from_a_monitored_run(netns: None, runner: Runner,
                                              tmp_path: object) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    path = f"{tmp_path}/svc.sock"
    us = socket.socket(socket.AF_UNIX)
    us.bind(path)
    us.listen(4)
    try:
        p = runner.profile("c-suggest", {})
        r = runner.call(p, "many", [["resolve_connect", "web.test", 8080],
                                    ["tcp", HOST4B, 5432], ["tcp", "127.0.0.1", port, 0, b""],
                                    ["unix", path], ["udp", HOST4, 9999]], mode="monitor")
        assert r.value[0]["tcp"] == "ok" and r.value[1] == "ok" and r.value[3] == "ok"
        s = run_cli("profile", "suggest-network", r.run_id)
        assert s.returncode == 0, s.stderr
        out = s.stdout
        for want in ('"web.test:8080"', f'"{HOST4B}:5432"', f'"localhost:{port}"',
                     f'"{path}"', '"udp:web.test:9999"'):
            assert want in out, out
        assert '"udp:web.test:8080"' not in out  # glibc's sorting probes are not destinations
        sj = json.loads(run_cli("profile", "suggest-network", r.run_id, "-o", "json").stdout)
        entries = [x["entry"] for x in sj["allow"]]
        # what it suggests is valid profile syntax, and a profile with it allows the run
        p2 = runner.profile("c-suggested", {"allow": entries, "unix": [x["entry"] for x in
                                                                        sj["unix"]]})
        r2 = runner.call(p2, "many", [["resolve_connect", "web.test", 8080],
                                      ["tcp", HOST4B, 5432], ["unix", path]])
        assert r2.value[0]["tcp"] == "ok" and r2.value[1:] == ["ok", "ok"], r2.value
    finally:
        srv.close()
        us.close()


def test_escalations_show_names_the_destination(netns: None, runner: Runner) -> None:
    p = runner.profile("c-show", {})
    r = runner.call(p, "tcp", HOST4, 5432)
    esc = r.blocked()[0]["escalation_id"]
    out = run_cli("escalations", "show", esc).stdout
    assert f"dest      {HOST4}:5432" in out and "trigger   network / network.default" in out
    lst = run_cli("escalations", "list").stdout
    assert f"-> {HOST4}:5432" in lst


def test_degraded_network_is_recorded_and_enforces_nothing(netns: None,
                                                           runner: Runner) -> None:
    p = runner.profile("c-degraded", {})
    r = runner.run(p, [PY, "-S", "-c", client_code("tcp", HOST4, 5432)],
                   degraded=("network",))
    assert r.value == "ok"
    (st,) = r.of("run_started")
    assert st["degraded"] == ["network"] and "network" not in st["layers"]
    assert r.of("degraded", what="network")
    assert any("warning: network" in x for x in r.lines)


def test_a_missing_network_feature_refuses_with_125(netns: None, runner: Runner) -> None:
    from sandbox.run.supervisor import Supervisor

    runner.sup = Supervisor(tracer=runner.kernel.tracer)
    runner.sup._network_error = "the cgroup socket hooks could not load (test)"  # noqa: SLF001
    p = runner.profile("c-missing", {})
    r = runner.run(p, [PY, "-S", "-c", "print(1)"])
    assert r.code == 125 and r.out == ""
    assert "network layer could not start" in (r.result.reason or "")
    assert "glassbreak doctor" in (r.result.hint or "")
    assert "--degraded network" in (r.result.hint or "")


def test_doctor_checks_the_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {c.name: c for c in doctor.run_checks()}
    for n in ("socket hooks", "unix socket hooks", "sock_destroy"):
        assert names[n].ok and names[n].required, names[n]
    # a connect4 program that allows (returns 1) does not refuse: reported missing
    real = doctor._sock_addr_prog
    monkeypatch.setattr(doctor, "_sock_addr_prog", lambda at, ret: real(at, 1))
    c = doctor.check_socket_hooks()[0]
    assert not c.ok and "did not refuse" in c.detail and "--degraded network" in c.fix
