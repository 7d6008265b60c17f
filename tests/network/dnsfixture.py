"""A small authoritative-ish DNS server for the network tests (stdlib; UDP + TCP; threads),
the upstream glassbreak's resolver forwards to (GLASSBREAK_DNS_UPSTREAM / NetworkService).

zone: {name: [(type, value, ttl), ...]} with type "A", "AAAA", "CNAME", "TXT".
Like a recursive resolver it appends the records of CNAME targets to the answer, unless the
owner is in `cname_only` (then it answers the CNAME alone and the client must follow).
Every question received is recorded in .seen (name, qtype), so tests can prove that a refused
name never left glassbreak's resolver.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

from sandbox.run.resolver import RR, build, parse

TYPES = {"A": 1, "AAAA": 28, "CNAME": 5, "TXT": 16}


class DNSFixture:
    def __init__(self, zone: dict[str, list[tuple[str, str, int]]], host: str = "127.0.0.1",
                 port: int = 0, cname_only: frozenset[str] | set[str] = frozenset()) -> None:
        self.zone = {k.lower(): v for k, v in zone.items()}
        self.cname_only = set(cname_only)
        self.seen: list[tuple[str, int]] = []
        fix = self

        class U(socketserver.ThreadingUDPServer):
            allow_reuse_address = True
            daemon_threads = True

        class T(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        class UH(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                out = fix.answer(data)
                if out:
                    sock.sendto(out, self.client_address)

        class TH(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                f = self.request
                try:
                    while True:
                        hdr = f.recv(2, socket.MSG_WAITALL)
                        if len(hdr) < 2:
                            return
                        data = f.recv(struct.unpack(">H", hdr)[0], socket.MSG_WAITALL)
                        out = fix.answer(data)
                        f.sendall(struct.pack(">H", len(out)) + out)
                except OSError:
                    return

        for _ in range(50):  # UDP and TCP on the same free port
            self.udp = U((host, port), UH)
            try:
                self.tcp = T((host, self.udp.server_address[1]), TH)
                break
            except OSError:
                self.udp.server_close()
        else:
            raise OSError("no port free for both UDP and TCP")
        self.addr = (host, self.udp.server_address[1])
        for srv in (self.udp, self.tcp):
            threading.Thread(target=srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        for srv in (self.udp, self.tcp):
            srv.shutdown()
            srv.server_close()

    def _records(self, name: str, qtype: int, depth: int = 0) -> list[RR]:
        out: list[RR] = []
        for t, v, ttl in self.zone.get(name) or []:
            tt = TYPES[t]
            if tt == 5:
                out.append(RR(name, 5, 1, ttl, b"", target=v))
                if name not in self.cname_only and depth < 10:
                    out += self._records(v.lower(), qtype, depth + 1)
            elif tt == qtype:
                if tt == 1:
                    rd = socket.inet_pton(socket.AF_INET, v)
                elif tt == 28:
                    rd = socket.inet_pton(socket.AF_INET6, v)
                else:
                    b = v.encode()
                    rd = bytes([len(b)]) + b
                out.append(RR(name, tt, 1, ttl, rd))
        return out

    def answer(self, data: bytes) -> bytes:
        q = parse(data)
        name, qtype, _qclass = q.questions[0]
        self.seen.append((name, qtype))
        recs = self._records(name, qtype)
        rcode = 0 if name in self.zone else 3
        return build(q.id, 0x8180 | rcode, q.questions, recs)

    def asked(self, needle: str) -> list[tuple[str, int]]:
        return [s for s in self.seen if needle in s[0]]

