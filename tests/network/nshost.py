"""Servers of a network test host (run inside an `ip netns` by tests/network; stdlib only).

    nshost.py TCPPORTS UDPPORTS [--foreign-dns]

TCP: accept on [::]:p (dual stack), read and echo back until EOF (so a client can hold a
connection open). TFO is enabled on the listeners (the netns sets net.ipv4.tcp_fastopen=3).
UDP: echo on [::]:p. --foreign-dns: a DNS server on port 53 (UDP + TCP) answering every A query
with 6.6.6.6: a client that gets 6.6.6.6 was NOT steered to glassbreak's resolver.
Prints "ready" when listening. Ends on SIGTERM.
"""

import socket
import struct
import sys
import threading

TCP_FASTOPEN = 23


def dns_answer(data: bytes) -> bytes:
    qid, flags = struct.unpack_from(">HH", data)
    off = 12
    while data[off]:
        off += data[off] + 1
    qend = off + 5
    question = data[12:qend]
    qtype = struct.unpack_from(">H", data, off + 1)[0]
    ans = b""
    n = 0
    if qtype == 1:
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([6, 6, 6, 6])
        n = 1
    return struct.pack(">HHHHHH", qid, 0x8180, 1, n, 0, 0) + question + ans


def tcp_server(port: int, dns: bool) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, 16)
    except OSError:
        pass
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=tcp_conn, args=(c, dns), daemon=True).start()


def tcp_conn(c: socket.socket, dns: bool) -> None:
    try:
        while True:
            if dns:
                hdr = c.recv(2, socket.MSG_WAITALL)
                if len(hdr) < 2:
                    break
                data = c.recv(struct.unpack(">H", hdr)[0], socket.MSG_WAITALL)
                out = dns_answer(data)
                c.sendall(struct.pack(">H", len(out)) + out)
                continue
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()


def udp_server(port: int, dns: bool) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(dns_answer(d) if dns else d, a)


def main() -> None:
    tcp = [int(p) for p in sys.argv[1].split(",") if p]
    udp = [int(p) for p in sys.argv[2].split(",") if p]
    foreign = "--foreign-dns" in sys.argv
    for p in tcp:
        threading.Thread(target=tcp_server, args=(p, False), daemon=True).start()
    for p in udp:
        threading.Thread(target=udp_server, args=(p, False), daemon=True).start()
    if foreign:
        threading.Thread(target=tcp_server, args=(53, True), daemon=True).start()
        threading.Thread(target=udp_server, args=(53, True), daemon=True).start()
    import time
    time.sleep(0.3)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
