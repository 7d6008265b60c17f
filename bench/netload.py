"""Network workloads for the benchmark (bench/run.py) and the servers they talk to, loopback
only (standard library; the workloads run with `python3 -S`).

    netload.py serve --tcp-port P --dns HOST:PORT   # accept-and-close TCP + a tiny DNS server;
                                                    # prints "ready"; ended by pid
    netload.py connect HOST PORT N                  # N TCP connects (connect + close)
    netload.py dns HOST PORT NAME N                 # N A queries for NAME (one UDP socket each)
    netload.py dns-distinct HOST PORT SUFFIX N      # N queries for n0.SUFFIX .. nN-1.SUFFIX
    netload.py layer-cost [RUNS [GAP_S]]            # the network layer's own time per real run
                                                    # (in process: its methods, timed), in us

A workload exits 0 only if every connect or query worked, so a refused one fails the bench's
probe (the variant is then n/a with the reason) instead of producing a fast wrong figure.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time


def _query(name: str, qid: int) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for lab in name.split("."):
        q += bytes([len(lab)]) + lab.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)


def _answer(data: bytes) -> bytes:
    qid = struct.unpack_from(">H", data)[0]
    off = 12
    while data[off]:
        off += data[off] + 1
    question = data[12:off + 5]
    ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([10, 123, 0, 1])
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + ans


def serve(tcp_port: int, dns: str) -> None:
    host, _, port = dns.rpartition(":")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((host, int(port)))
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", tcp_port))
    t.listen(4096)

    def dns_loop() -> None:
        while True:
            data, addr = u.recvfrom(4096)
            try:
                u.sendto(_answer(data), addr)
            except (OSError, IndexError, struct.error):
                pass

    def tcp_loop() -> None:
        while True:
            c, _ = t.accept()
            c.close()

    threading.Thread(target=dns_loop, daemon=True).start()
    threading.Thread(target=tcp_loop, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(host: str, port: int, n: int) -> int:
    for _ in range(n):
        s = socket.socket()
        s.connect((host, port))  # raises (and so fails the run) on a refusal
        s.close()
    return 0


def _ask(s: socket.socket, host: str, port: int, name: str, qid: int) -> None:
    s.sendto(_query(name, qid), (host, port))
    data = s.recv(4096)
    if struct.unpack_from(">H", data)[0] != qid or data[3] & 0xF or not data[7]:
        raise SystemExit(f"bad answer for {name}")


def dns(host: str, port: int, name: str, n: int) -> int:
    for i in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            _ask(s, host, port, name, i & 0xFFFF)
    return 0


def dns_distinct(host: str, port: int, suffix: str, n: int) -> int:
    tag = os.getpid()  # fresh names every run: nothing cached anywhere
    for i in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            _ask(s, host, port, f"n{tag}x{i}.{suffix}", i & 0xFFFF)
    return 0


def layer_cost(runs: int, gap: float = 0.01) -> int:
    """The network layer's own time in real runs (in process, root): its prepare (attach the
    11 programs, register, a resolver socket set, the profile's entries, the agent's grants),
    fds, finish and close, timed around the layer's methods while the supervisor runs
    `/bin/true` under a profile with entries. Prints median and p90 in microseconds."""
    import statistics
    import tempfile

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from sandbox.run import layers
    from sandbox.run.network import NetworkService
    from sandbox.run.supervisor import RunRequest, Supervisor

    work = tempfile.mkdtemp(prefix="gb-layer-cost-")
    os.environ["GLASSBREAK_STATE_DIR"] = os.path.join(work, "state")
    prof = os.path.join(work, "cost.yaml")
    with open(prof, "w") as f:
        f.write('name: cost\nextends: base\nexec: {allow: ["true"]}\nnetwork:\n  allow: '
                '["pypi.org:443", "*.pythonhosted.org:443", "10.20.0.0/16:5432", '
                '"localhost:8000-8100"]\n  unix: ["/run/user/$UID/bus"]\n')
    spent: dict[str, list[float]] = {"prepare": [], "fds": [], "finish": [], "close": []}

    def timed(name: str) -> None:
        orig = getattr(layers.NetworkLayer, name)

        def f(self: object, *a: object, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                spent[name].append(time.perf_counter() - t0)

        setattr(layers.NetworkLayer, name, f)

    for name in spent:
        timed(name)
    sup = Supervisor(network=NetworkService(("127.0.0.1", 1)))

    def run() -> None:
        dn = os.open(os.devnull, os.O_RDWR)
        try:
            sup.run(RunRequest(argv=["true"], profile=prof, env={"PATH": "/usr/bin:/bin"},
                               cwd="/", stdin=dn, stdout=dn, stderr=dn), lambda e: None)
        finally:
            os.close(dn)
        time.sleep(gap)  # runs do not come back to back

    for _ in range(10):
        run()
    for v in spent.values():
        v.clear()
    for _ in range(runs):
        run()
    totals = sorted(sum(x) for x in zip(*spent.values(), strict=False))
    med, p90 = statistics.median(totals), totals[int(len(totals) * 0.9)]
    print(f"{med * 1e6:.0f} {p90 * 1e6:.0f}")
    return 0


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "serve":
        serve(int(argv[argv.index("--tcp-port") + 1]), argv[argv.index("--dns") + 1])
        return 0
    if cmd == "connect":
        return connect(argv[1], int(argv[2]), int(argv[3]))
    if cmd == "dns":
        return dns(argv[1], int(argv[2]), argv[3], int(argv[4]))
    if cmd == "dns-distinct":
        return dns_distinct(argv[1], int(argv[2]), argv[3], int(argv[4]))
    if cmd == "layer-cost":
        return layer_cost(int(argv[1]) if len(argv) > 1 else 200,
                          float(argv[2]) if len(argv) > 2 else 0.01)
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
