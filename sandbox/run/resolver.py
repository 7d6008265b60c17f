"""glassbreak's DNS resolver: the only DNS a run can reach (standard library only).
Why this module is long: one resolver on one event loop. Resolver, the per-run socket pool and
the TCP/UDP servers that feed it share the loop's thread and its tables, and answer_sync (the
policy of one query, ~160 lines) stays in one piece so that the insert-before-answer order
reads top to bottom. The wire format is in sandbox.run.dnswire (its names are handed on here).

The socket hooks (sandbox.kernel.sockhooks) steer every port-53 connect/sendmsg of a run (TCP
and UDP, any address, v4, v6, v4-mapped) to 127.0.0.1:P / [::1]:P, where P is THAT run's
resolver port: the kernel picks P from the run's own cgroup id, so the resolver knows which run
asks by the socket the query arrived on. Direct traffic to any resolver port (not through
steering) is refused in the kernel, so a run cannot ask another run's resolver.

Per query:
  - one question, opcode QUERY, class IN; qtype A or AAAA (HTTPS/SVCB of an allowed name: an
    empty NOERROR answer, so clients fall back to A/AAAA); anything else (TXT, ANY, NULL, MX,
    ...) REFUSED + event: those types carry data out (and in);
  - the name: LDH (and _) labels, label <= max_label, name <= max_name, and allowed by the run's
    patterns ("pypi.org", "*.pythonhosted.org" = any name below it) else REFUSED + event; a
    refused name is never forwarded;
  - forwarded to the upstream (UDP, TCP on truncation) with a fresh id and source port; the
    CNAME chain is followed (in the answer, else by asking for the target), and EVERY name of
    it must be allowed (a CNAME to a name the run may not resolve: REFUSED, the event names
    the target);
  - only A/AAAA records owned by the chain's last name are kept; addresses that are sensitive
    (loopback, link-local, metadata, unspecified, multicast, this host's own) are dropped;
  - every kept address is INSERTED into the run's allow map (ports of the matching patterns,
    TTL clamped to [min_ttl, max_ttl], the answer's TTLs rewritten to the same) BEFORE the
    answer is sent; if an insert fails, the answer is withheld (SERVFAIL) and an event says why.
    There is no timeout that releases an answer anyway (fail closed).
In audit mode (`--mode monitor`) the same checks run and are reported as would-be refusals,
but every name is answered.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sandbox.run.dnswire import (
    QT_A,
    QT_AAAA,
    QT_ANY,
    QT_CNAME,
    QT_HTTPS,
    QT_MX,
    QT_NS,
    QT_NULL,
    QT_OPT,
    QT_SOA,
    QT_SVCB,
    QT_TXT,
    QTYPE_NAMES,
    QTYPE_NUMBERS,
    RC_FORMERR,
    RC_NOERROR,
    RC_NOTIMP,
    RC_NXDOMAIN,
    RC_REFUSED,
    RC_SERVFAIL,
    RR,
    DNSFormatError,
    Message,
    build,
    client_udp_size,
    encode_name,
    parse,
    read_name,
    reply_flags,
)

# the wire format lives in sandbox.run.dnswire; its names are handed on from here
__all__ = ["DnsEvent", "FORBIDDEN_ANSWERS", "MAPPED", "NAT64", "NameRule", "REPLAY_S", "Resolver",
           "RunDNS", "parse_hostport", "upstream_from_resolv_conf", "DNSFormatError", "Message",
           "QTYPE_NAMES", "QTYPE_NUMBERS", "QT_A", "QT_AAAA", "QT_ANY", "QT_CNAME", "QT_HTTPS",
           "QT_MX", "QT_NS", "QT_NULL", "QT_OPT", "QT_SOA", "QT_SVCB", "QT_TXT", "RC_FORMERR",
           "RC_NOERROR", "RC_NOTIMP", "RC_NXDOMAIN", "RC_REFUSED", "RC_SERVFAIL", "RR", "build",
           "client_udp_size", "encode_name", "parse", "read_name", "reply_flags"]

REPLAY_S = 1.0  # a run asking the same question again within this gets the same reply bytes

# answers never inserted, whatever else the hooks consider sensitive
FORBIDDEN_ANSWERS = [ipaddress.ip_network(c) for c in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "100.100.100.200/32", "::/128", "::1/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
    "::ffff:0:0/96", "64:ff9b::/96")]


_FORBIDDEN128: list[Any] = []  # FORBIDDEN_ANSWERS in the hooks' 128-bit space (filled once)
MAPPED = ipaddress.ip_network("::ffff:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


# -- policy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NameRule:
    pattern: str            # "pypi.org" or "*.pythonhosted.org" (any depth below, not itself)
    ports: tuple[int, int]
    proto: str = "tcp"
    source: str = "profile"  # profile | grant:<id> (who opened it: revocation removes its own)

    def matches(self, name: str) -> bool:
        p = self.pattern.lower().rstrip(".")
        name = name.lower().rstrip(".")
        if p == "*":
            return True
        if p.startswith("*."):
            return name.endswith(p[1:]) and len(name) > len(p) - 1
        return name == p


@dataclass
class DnsEvent:
    cgroup_id: int
    action: str             # refused | servfail | answered | dropped-address
    qname: str
    qtype: str
    reason: str = ""
    addresses: tuple[str, ...] = ()
    transport: str = "udp"
    rule: str = ""          # refused: dns.name | dns.qtype | dns.shape | dns.cname | ...
    audit: bool = False     # monitor mode: would have been refused, answered anyway
    client_cookie: int = 0  # refusals: the asking socket (sock_diag), to name its process
    client_inode: int = 0
    client_pid: int = 0     # the run's process holding that socket (found while it waits)

    def line(self) -> str:
        s = f"dns: {self.action} {self.qtype} {self.qname!r} ({self.reason})"
        if self.addresses:
            s += " -> " + ", ".join(self.addresses)
        return s


@dataclass(eq=False)  # identity: kept in sets
class RunDNS:
    cgid: int  # 0: not (or no longer) a run's: queries are dropped
    rules: list[NameRule]
    port: int = 0
    socks: list[socket.socket] = field(default_factory=list)
    transports: list[Any] = field(default_factory=list)
    audit: bool = False
    pids: Callable[[], list[int]] | None = None  # the run's processes (to name an asker)
    identified: dict[tuple[str, int, str], float] = field(default_factory=dict)
    # the same question asked again within REPLAY_S: the reply bytes (its addresses are in
    # the run's map for longer: TTL + grace); cleared whenever the run's names change
    recent: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)


class Resolver:
    """An asyncio loop in a thread. add_run() returns the run's port (bound on 127.0.0.1 and
    ::1, UDP and TCP); give it to SockHooks.register_run(cgid, dns_port=port).

    Socket sets are kept in a pool and RECYCLED, without waking the loop's thread: add_run
    takes a ready one (no thread hand-off, no allocation: a run's start pays microseconds);
    remove_run makes it answer nobody at once and retires it; every RECLAIM_S the loop takes
    the retired sets whose run is over (`gone()`: the run's cgroup killed and empty), drops
    whatever is still queued on them, ends their TCP connections and puts them back: one
    wake-up per RECLAIM_S, whatever the rate of runs (the pool grows to what that rate needs,
    up to POOL_MAX). A set whose run never empties within QUARANTINE_S is closed, not reused.
    A port in the pool is reserved in the hooks' resolver_ports map, so no run reaches it
    directly."""

    POOL = 4           # ready sets made at start (more when a burst of runs needs them)
    POOL_MAX = 8       # recycled sets beyond this are closed
    QUARANTINE_S = 5.0
    RECLAIM_S = 0.1

    def __init__(self, hooks: Any, upstream: tuple[str, int], *, min_ttl: int = 5,
                 max_ttl: int = 3600, grace: int = 10, max_label: int = 40,
                 max_name: int = 160, timeout: float = 2.0,
                 on_event: Callable[[DnsEvent], None] | None = None,
                 cache_size: int = 10000):
        self.hooks = hooks
        self.upstream = upstream
        self.min_ttl, self.max_ttl, self.grace = min_ttl, max_ttl, grace
        self.max_label, self.max_name = max_label, max_name
        self.timeout = timeout
        self.on_event = on_event
        self.cache_size = cache_size
        self._cache: dict[tuple[str, int], tuple[float, Message, float]] = {}
        self._runs: dict[int, RunDNS] = {}
        self._pool: list[RunDNS] = []
        self._retired: list[tuple[RunDNS, Callable[[], bool] | None, float]] = []
        self._reclaim_lock = threading.Lock()
        self._all: set[RunDNS] = set()  # every set not closed (pool, runs, quarantine)
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gb-resolver",
                                        daemon=True)
        self._thread.start()
        self.loop.call_soon_threadsafe(self._fill)
        self.loop.call_soon_threadsafe(self._tick)

    # -- runs -------------------------------------------------------------------------------
    def add_run(self, cgid: int, rules: list[NameRule], audit: bool = False,
                pids: Callable[[], list[int]] | None = None) -> int:
        try:
            run = self._pool.pop()
        except IndexError:  # a burst of starts emptied the pool: one made now
            run = self._bind_set()
            self.loop.call_soon_threadsafe(self._register, run)
        run.rules, run.audit, run.pids = list(rules), audit, pids
        run.recent, run.identified = {}, {}
        run.cgid = cgid  # from now on its queries are answered
        self._runs[cgid] = run
        return run.port

    def remove_run(self, cgid: int, gone: Callable[[], bool] | None = None) -> None:
        """The run is over: its set answers nobody from now on, and is recycled once `gone()`
        says the run's processes are all gone (without `gone`: closed, never reused)."""
        run = self._runs.pop(cgid, None)
        if run is None:
            return
        run.cgid = 0
        run.pids = None
        with self._reclaim_lock:
            self._retired.append((run, gone, time.monotonic() + self.QUARANTINE_S))

    def _tick(self) -> None:  # the loop's thread, every RECLAIM_S
        if self._closing:
            return
        try:
            self._reclaim()
        finally:
            self.loop.call_later(self.RECLAIM_S, self._tick)

    def _reclaim(self) -> None:
        """Retired sets whose run is over back to the pool (see the class doc)."""
        with self._reclaim_lock:
            keep: list[tuple[RunDNS, Callable[[], bool] | None, float]] = []
            for run, gone, deadline in self._retired:
                try:
                    over = gone is not None and gone()
                except Exception:  # noqa: BLE001 - unknown yet: asked again next time
                    over = False
                if over:
                    self._recycle(run)
                elif gone is None or time.monotonic() > deadline:
                    self._close(run)  # not proven over: never reused
                else:
                    keep.append((run, gone, deadline))
            self._retired = keep

    def set_rules(self, cgid: int, rules: list[NameRule]) -> None:
        """Grants: widen (or narrow) a run's names. Narrowing does not touch addresses already
        inserted: the caller removes those (SockHooks.remove(kill=True))."""
        run = self._runs.get(cgid)
        if run is not None:
            run.rules = list(rules)  # one reference assignment: atomic for the loop thread
            run.recent = {}

    def rules(self, cgid: int) -> list[NameRule]:
        run = self._runs.get(cgid)
        return list(run.rules) if run else []

    @property
    def run_count(self) -> int:
        return len(self._runs)

    def close(self) -> None:
        for cgid in list(self._runs):
            run = self._runs.pop(cgid)
            run.cgid = 0
            self._pool.append(run)
        self._closing = True

        async def drain() -> None:
            for run in list(self._all):
                self._close(run)
            self._pool.clear()
            self._retired.clear()

        try:
            self._call(drain())
        except Exception:  # noqa: BLE001, S110 - closing anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(2)

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def _bind_set(self) -> RunDNS:
        """A socket set on a fresh port (UDP and TCP on 127.0.0.1 and ::1), bound and
        listening, its port reserved in the hooks; the loop reads it once _register ran."""
        run = RunDNS(0, [])
        self._all.add(run)
        port = 0
        for _attempt in range(50):
            socks: list[socket.socket] = []
            try:
                u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(u4)
                u4.bind(("127.0.0.1", 0))
                port = u4.getsockname()[1]
                for fam, typ, addr in ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
                                       (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
                                       (socket.AF_INET6, socket.SOCK_STREAM, "::1")):
                    try:
                        s = socket.socket(fam, typ)
                    except OSError:  # no IPv6 here: v4 (and v4-mapped) steering only
                        continue
                    socks.append(s)
                    if typ == socket.SOCK_STREAM:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if fam == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        s.bind((addr, port))
                    except OSError as e:
                        if fam == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                            socks.remove(s)
                            s.close()
                            continue
                        raise
                break
            except OSError:
                for s in socks:
                    s.close()
        else:
            raise OSError("no free resolver port")
        run.port, run.socks = port, socks
        reserve = getattr(self.hooks, "reserve_resolver_port", None)
        if reserve is not None:
            reserve(port)
        for s in socks:
            s.setblocking(False)
            if s.type == socket.SOCK_DGRAM:  # a plain reader: no transport machinery
                run.transports.append(_UDPServer(self, run, s))
            else:  # a plain listening socket, accepted in a reader callback
                s.listen(64)
                run.transports.append(_TCPListener(self, run, s))
        return run

    def _fill(self) -> None:  # the loop's thread: the pool at start-up
        while len(self._pool) < self.POOL and not self._closing:
            try:
                run = self._bind_set()
            except OSError:
                return
            self._register(run)
            self._pool.append(run)

    def _recycle(self, run: RunDNS) -> None:  # the loop's thread
        """A set whose run is over: its leftovers dropped, back to the pool (or closed)."""
        if run.cgid or self._closing:
            return
        for tr in run.transports:
            tr.reset()  # what the finished run left queued or connected is dropped
        run.rules, run.recent, run.identified = [], {}, {}
        if len(self._pool) >= self.POOL_MAX:
            self._close(run)
            return
        reserve = getattr(self.hooks, "reserve_resolver_port", None)
        try:
            if reserve is not None:
                reserve(run.port)  # SockHooks.clear() freed it with the run
        except Exception:  # noqa: BLE001 - the maps are gone: do not reuse it
            self._close(run)
            return
        self._pool.append(run)

    def _register(self, run: RunDNS) -> None:  # the loop's thread
        if run not in self._all:
            return  # closed before the loop got to it
        for tr in run.transports:
            if not tr.registered:
                self.loop.add_reader(tr.sock.fileno(), tr.readable)
                tr.registered = True

    def _close(self, run: RunDNS) -> None:  # the loop's thread
        self._all.discard(run)
        for tr in run.transports:
            tr.close()
        for s in run.socks:
            s.close()
        release = getattr(self.hooks, "release_resolver_port", None)
        if release is not None and not self._closing:
            try:
                release(run.port)
            except Exception:  # noqa: BLE001, S110 - the maps are gone (process exit)
                pass

    def stop_at_exit(self) -> None:
        """Interpreter exit: stop the loop before bcc's own exit handler closes the maps (the
        loop must not touch them after that)."""
        self._closing = True
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass

    # -- events -----------------------------------------------------------------------------
    def _event(self, ev: DnsEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # noqa: BLE001, S110 - a consumer error never stops answering
                pass

    # -- policy -----------------------------------------------------------------------------
    def _name_ok(self, name: str) -> str:
        """'' when the name's shape is acceptable, else why not."""
        if not name or len(name) > self.max_name:
            return f"name longer than {self.max_name}"
        for lab in name.split("."):
            if not lab or len(lab) > self.max_label:
                return f"label longer than {self.max_label}"
            if not lab.isascii() or not all(c.isalnum() or c in "-_" for c in lab):
                return "label with characters outside [a-z0-9-_]"
        return ""

    @staticmethod
    def _matching(run: RunDNS, name: str) -> list[NameRule]:
        return [r for r in run.rules if r.matches(name)]

    def _forbidden(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        from sandbox.kernel.sockhooks import net_index, sensitive_int, to_net128

        if addr.version == 6 and (addr.ipv4_mapped is not None or addr in NAT64):
            return True  # an AAAA answer carrying an IPv4 address: never
        if not _FORBIDDEN128:  # (the 128-bit space stores IPv4 as ::ffff:a.b.c.d: the two
            # IPv4-in-IPv6 ranges are checked above, on AAAA answers only)
            _FORBIDDEN128.extend(net_index(to_net128(n) for n in FORBIDDEN_ANSWERS
                                           if n not in (MAPPED, NAT64)))
        v = int(addr) | 0xFFFF00000000 if addr.version == 4 else int(addr)
        if sensitive_int(v, tuple(_FORBIDDEN128)):
            return True
        try:
            return bool(self.hooks.is_sensitive(addr))
        except AttributeError:
            return False

    async def handle(self, run: RunDNS, data: bytes, transport: str,
                     peer: tuple[Any, Any] | None = None) -> bytes | None:
        """One query -> the reply (None: no reply). `peer`: (our address, the client's), to
        find the asking socket when a query is refused. The answer is computed synchronously
        from what is known (the cache, and what this query fetched); every upstream question
        it misses is fetched, then it is computed again: no side effect happens before all
        the data is there, so a query that needs nothing from upstream is answered at once
        (datagram_received does that without a task)."""
        fetched: dict[tuple[str, int], Message | Exception] = {}
        for _ in range(12):
            try:
                return self.answer_sync(run, data, transport, peer, fetched)
            except _Miss as m:
                try:
                    fetched[(m.name, m.qtype)] = await self._fetch(m.name, m.qtype)
                except (TimeoutError, OSError, DNSFormatError) as e:
                    fetched[(m.name, m.qtype)] = e
        return None

    def answer_sync(self, run: RunDNS, data: bytes, transport: str,
                    peer: tuple[Any, Any] | None,
                    fetched: dict[tuple[str, int], Message | Exception]) -> bytes | None:
        """The reply from the cache and `fetched`; raises _Miss (before any side effect: no
        event, no map insert) when an upstream answer is needed."""
        if not run.cgid:
            return None  # a pooled or finished socket set answers nobody
        hit = run.recent.get(data[2:])
        if hit is not None and hit[0] > time.monotonic() and len(data) >= 12:
            return data[:2] + hit[1]  # asked again: same reply, the client's id
        try:
            q = parse(data)
        except DNSFormatError:
            return None if len(data) < 2 else build(
                struct.unpack_from(">H", data)[0], 0x8000 | RC_FORMERR, [])
        if q.flags & 0x8000:
            return None  # a response: ignore
        if len(q.questions) != 1 or (q.flags >> 11) & 0xF != 0:
            return build(q.id, reply_flags(q.flags, RC_NOTIMP if len(q.questions) == 1
                                           else RC_FORMERR), q.questions[:1])
        qname, qtype, qclass = q.questions[0]
        tname = QTYPE_NAMES.get(qtype, str(qtype))
        audit = run.audit
        noted: list[DnsEvent] = []  # audit: the would-be refusals, reported with the answer

        def refuse(reason: str, rule: str, rcode: int = RC_REFUSED,
                   name: str = qname) -> bytes | None:
            ev = DnsEvent(run.cgid, "refused" if rcode == RC_REFUSED else "servfail",
                          name, tname, reason, transport=transport, rule=rule, audit=audit)
            self._identify(run, ev, peer)
            if audit and rcode == RC_REFUSED:
                noted.append(ev)
                return None  # monitor mode: carry on, answer anyway
            self._event(ev)
            return build(q.id, reply_flags(q.flags, rcode), q.questions)

        if qclass != 1:
            out = refuse("class not IN", "dns.qtype")
            if out is not None or not audit:
                return out
        why = self._name_ok(qname)
        if why:
            out = refuse(why, "dns.shape")
            if out is not None:
                return out
        rules = self._matching(run, qname)
        if not rules:
            out = refuse("name not allowed", "dns.name")
            if out is not None:
                return out
            rules = [NameRule(qname, (1, 65535), "tcp", "audit")]
        if qtype in (QT_HTTPS, QT_SVCB):
            return build(q.id, reply_flags(q.flags, RC_NOERROR), q.questions)  # NODATA
        if qtype not in (QT_A, QT_AAAA):
            out = refuse(f"query type {tname} not answered", "dns.qtype")
            if out is not None:
                return out
            return self._forward_raw(q, noted)
        if qname == "localhost":
            rr = RR(qname, qtype, 1, 0, (socket.inet_pton(socket.AF_INET, "127.0.0.1")
                                         if qtype == QT_A else
                                         socket.inet_pton(socket.AF_INET6, "::1")))
            return build(q.id, reply_flags(q.flags, RC_NOERROR, aa=True), q.questions, [rr])

        # resolve, following the chain: every name of it must be allowed
        chain = [qname]
        records: list[RR] = []
        name = qname
        rcode = RC_NOERROR
        for _hop in range(8):
            try:
                resp = self._lookup(name, qtype, fetched)
            except (TimeoutError, OSError, DNSFormatError) as e:
                return refuse(f"upstream: {e or type(e).__name__}", "dns.upstream",
                              RC_SERVFAIL)
            rcode = resp.rcode
            if rcode not in (RC_NOERROR, RC_NXDOMAIN):
                return refuse(f"upstream rcode {rcode}", "dns.upstream", RC_SERVFAIL)
            by_owner: dict[str, list[RR]] = {}
            for rr in resp.answers:
                by_owner.setdefault(rr.name.rstrip("."), []).append(rr)
            while True:  # walk the CNAMEs inside this answer
                cn = [rr for rr in by_owner.get(name, []) if rr.type == QT_CNAME]
                if not cn:
                    break
                target = cn[0].target.rstrip(".")
                if target in chain or len(chain) >= 8:
                    return refuse("CNAME loop or chain too long", "dns.cname", RC_SERVFAIL)
                why = self._name_ok(target)
                if not why and not self._matching(run, target):
                    why = "CNAME target not allowed"
                if why:
                    out = refuse(f"{why}: {qname} -> {target}", "dns.cname", name=target)
                    if out is not None:
                        return out
                records.append(RR(name, QT_CNAME, 1, cn[0].ttl, b"", target=target))
                chain.append(target)
                name = target
            final = [rr for rr in by_owner.get(name, []) if rr.type == qtype]
            if final or rcode == RC_NXDOMAIN or name == chain[0] or not records:
                records += final
                break
            # the answer stopped at a CNAME: ask for the target ourselves
        else:
            return refuse("CNAME chain too long", "dns.cname", RC_SERVFAIL)

        # addresses: owned by the chain's last name, not forbidden
        kept: list[RR] = []
        addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        dropped: list[str] = []
        for rr in records:
            if rr.type == QT_CNAME:
                kept.append(rr)
                continue
            if rr.name.rstrip(".") != name:
                continue
            try:
                a: ipaddress.IPv4Address | ipaddress.IPv6Address = (
                    ipaddress.IPv4Address(rr.rdata) if rr.type == QT_A
                    else ipaddress.IPv6Address(rr.rdata))
            except ipaddress.AddressValueError:
                continue
            if self._forbidden(a) and not audit:
                dropped.append(str(a))
                continue
            kept.append(rr)
            addrs.append(a)
        if dropped:
            self._event(DnsEvent(run.cgid, "dropped-address", qname, tname,
                                 "answer pointed at a sensitive address", tuple(dropped),
                                 transport, rule="dns.rebinding"))
        ttls = [rr.ttl for rr in kept] or [self.min_ttl]
        ttl = max(self.min_ttl, min(self.max_ttl, min(ttls)))
        for rr in kept:
            rr.ttl = ttl
        # INSERT BEFORE ANSWER: every address for every matching rule, or no answer at all
        if not audit:
            try:
                for a in addrs:
                    for r in rules:
                        if r.pattern == "*":
                            continue  # `default: allow`: the kernel's default opens them
                        self.hooks.add(run.cgid, str(a), r.ports, ttl=ttl + self.grace,
                                       proto=r.proto, dns=True, label=qname)
            except Exception as e:  # noqa: BLE001 - any failure withholds the answer
                return refuse(f"cannot insert into the run's map ({e}): answer withheld",
                              "dns.insert", RC_SERVFAIL)
        for ev in noted:
            self._event(ev)
        self._event(DnsEvent(run.cgid, "answered", qname, tname, f"ttl {ttl}",
                             tuple(str(a) for a in addrs), transport,
                             rule=",".join(r.pattern for r in rules), audit=bool(noted)))
        out = build(q.id, reply_flags(q.flags, rcode), q.questions, kept)
        if not audit and not noted and rcode == RC_NOERROR:
            if len(run.recent) >= 256:
                run.recent.clear()
            run.recent[data[2:]] = (time.monotonic() + min(REPLAY_S, ttl), out[2:])
        return out

    @staticmethod
    def _identify(run: RunDNS, ev: DnsEvent, peer: tuple[Any, Any] | None) -> None:
        """The client socket (still open: it waits for this reply) -> cookie, inode and the
        run's process holding it. Once per question and rule per second (a refusal loop
        costs one look-up a second)."""
        if peer is None:
            return
        key, now = (ev.qname, QTYPE_NUMBERS.get(ev.qtype, 0), ev.rule), time.monotonic()
        if now - run.identified.get(key, 0.0) < 1.0:
            return
        if len(run.identified) > 1024:
            run.identified.clear()
        run.identified[key] = now
        try:
            from sandbox.kernel.sockdiag import diag_peer

            proto = socket.IPPROTO_UDP if ev.transport == "udp" else socket.IPPROTO_TCP
            d = diag_peer(proto, (peer[0][0], peer[0][1]), (peer[1][0], peer[1][1]))
        except Exception:  # noqa: BLE001 - best effort: the event stays without a process
            return
        if d is None:
            return
        ev.client_cookie = d.cookie[0] | (d.cookie[1] << 32)
        ev.client_inode = d.inode
        want = f"socket:[{d.inode}]"
        for pid in run.pids() if run.pids is not None and d.inode else []:
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        ev.client_pid = pid
                        return
            except OSError:
                continue

    def _forward_raw(self, q: Message, noted: list[DnsEvent]) -> bytes:
        """Monitor mode, a type glassbreak never answers: reported, answered empty."""
        for ev in noted:
            self._event(ev)
        return build(q.id, reply_flags(q.flags, RC_NOERROR), q.questions)

    # -- upstream ---------------------------------------------------------------------------
    def _lookup(self, name: str, qtype: int,
                fetched: dict[tuple[str, int], Message | Exception]) -> Message:
        """What this query fetched, else the shared answer cache (DNS data is public; what a
        run may ask and what enters its map stay per run), else _Miss."""
        got = fetched.get((name, qtype))
        if isinstance(got, Exception):
            raise got
        if got is not None:
            return Message(got.id, got.flags, got.questions,
                           [RR(a.name, a.type, a.cls, a.ttl, a.rdata, a.target)
                            for a in got.answers], [], [])
        now = time.monotonic()
        hit = self._cache.get((name, qtype))
        if hit is not None and hit[0] > now:
            _exp, m, t0 = hit
            age = int(now - t0)
            return Message(m.id, m.flags, m.questions,
                           [RR(a.name, a.type, a.cls, max(0, a.ttl - age), a.rdata, a.target)
                            for a in m.answers], [], [])
        raise _Miss(name, qtype)

    async def _fetch(self, name: str, qtype: int) -> Message:
        key = (name, qtype)
        now = time.monotonic()
        m = await self._ask_upstream(name, qtype)
        if self.cache_size and m.rcode == RC_NOERROR and m.answers:
            ttl = min(min(a.ttl for a in m.answers), self.max_ttl)
            if ttl > 0:
                if len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = (now + ttl, m, now)
        return m

    async def _ask_upstream(self, name: str, qtype: int) -> Message:
        qid = random.getrandbits(16)
        opt = RR("", QT_OPT, 1232, 0, b"")
        query = build(qid, 0x0100, [(name, qtype, 1)], additional=[opt])
        host, port = self.upstream
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        loop = asyncio.get_running_loop()
        # a fresh socket (a random source port) per question, connected: only the upstream's
        # datagrams reach it; read by a reader callback and one timer (no task per wait)
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.setblocking(False)
        got: asyncio.Future[Message] = loop.create_future()

        def readable() -> None:
            while not got.done():
                try:
                    data = s.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:  # ECONNREFUSED: nobody there
                    got.set_exception(e)
                    return
                try:
                    m = parse(data)
                except DNSFormatError:
                    continue
                if m.id == qid and m.questions[:1] == [(name, qtype, 1)]:
                    got.set_result(m)

        def expire() -> None:
            if not got.done():
                got.set_exception(TimeoutError("upstream timeout"))

        timer = loop.call_later(self.timeout, expire)
        try:
            s.connect((host, port))
            s.send(query)
            loop.add_reader(s.fileno(), readable)
            try:
                m = await got
            finally:
                loop.remove_reader(s.fileno())
        finally:
            timer.cancel()
            s.close()
        if m.flags & 0x0200:  # TC: ask again over TCP
            m = await self._upstream_tcp(name, qtype)
        return m

    async def _upstream_tcp(self, name: str, qtype: int) -> Message:
        qid = random.getrandbits(16)
        query = build(qid, 0x0100, [(name, qtype, 1)])
        r, w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), self.timeout)
        try:
            w.write(struct.pack(">H", len(query)) + query)
            await w.drain()
            ln = struct.unpack(">H", await asyncio.wait_for(r.readexactly(2), self.timeout))[0]
            m = parse(await asyncio.wait_for(r.readexactly(ln), self.timeout))
            if m.id != qid:
                raise DNSFormatError("id mismatch")
            return m
        finally:
            w.close()

    # -- client side ------------------------------------------------------------------------
    async def _tcp_conn(self, run: RunDNS, conn: socket.socket) -> None:
        """DNS over TCP: length-prefixed queries on one connection (at most 100)."""
        loop = self.loop

        async def exactly(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                chunk = await loop.sock_recv(conn, n - len(buf))
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            return buf

        try:
            conn.setblocking(False)
            peer = (conn.getsockname(), conn.getpeername())
            for _ in range(100):
                hdr = await asyncio.wait_for(exactly(2), 10)
                data = await asyncio.wait_for(exactly(struct.unpack(">H", hdr)[0]), 10)
                out = await self.handle(run, data, "tcp", peer)
                if out is None:
                    break
                await loop.sock_sendall(conn, struct.pack(">H", len(out)) + out)
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()


class _TCPListener:
    """A run's TCP listening socket: connections accepted in the loop's reader callback."""

    def __init__(self, res: Resolver, run: RunDNS, sock: socket.socket):
        self.res, self.run, self.sock = res, run, sock
        self.registered = False
        self.conns: dict[socket.socket, asyncio.Task[None]] = {}

    def readable(self) -> None:
        for _ in range(16):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not self.run.cgid:
                conn.close()
                continue
            task = self.res.loop.create_task(self.res._tcp_conn(self.run, conn))
            self.conns[conn] = task
            task.add_done_callback(functools.partial(self._done, conn))

    def _done(self, conn: socket.socket, _task: Any) -> None:
        self.conns.pop(conn, None)

    def reset(self) -> None:
        """End the finished run's connections and refuse any it left in the backlog."""
        for conn, task in list(self.conns.items()):
            task.cancel()
            conn.close()
        self.conns.clear()
        for _ in range(1000):
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                return

    def close(self) -> None:
        self.reset()
        if not self.registered:
            return
        self.registered = False
        try:
            self.res.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass


class _Miss(Exception):
    """answer_sync needs an upstream answer it does not have."""

    def __init__(self, name: str, qtype: int) -> None:
        super().__init__(name, qtype)
        self.name, self.qtype = name, qtype


class _UDPServer:
    """One UDP socket of a run: read in the loop's reader callback, answered at once when
    the answer needs nothing from upstream (a cached name, a refusal), else in a task."""

    def __init__(self, res: Resolver, run: RunDNS, sock: socket.socket):
        self.res, self.run, self.sock = res, run, sock
        self.local = sock.getsockname()
        self.registered = False

    def readable(self) -> None:
        for _ in range(64):  # a burst, then back to the loop
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.datagram_received(data, addr)

    def close(self) -> None:
        if not self.registered:
            return
        self.registered = False
        try:
            self.res.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass

    def reset(self) -> None:
        """Drop every datagram still queued (a finished run's)."""
        for _ in range(10000):
            try:
                self.sock.recv(65535)
            except OSError:
                return

    def datagram_received(self, data: bytes, addr: Any) -> None:
        peer = (self.local, addr)
        try:  # the common case (a cached name, or a refusal): answered now, no task
            out = self.res.answer_sync(self.run, data, "udp", peer, {})
        except _Miss:
            asyncio.ensure_future(self._answer(data, addr, peer))
            return
        except Exception:  # noqa: BLE001 - one bad datagram never stops the reader
            return
        self._send(data, out, addr)

    async def _answer(self, data: bytes, addr: Any, peer: Any) -> None:
        self._send(data, await self.res.handle(self.run, data, "udp", peer), addr)

    def _send(self, data: bytes, out: bytes | None, addr: Any) -> None:
        if out is None:
            return
        if len(out) <= 512:
            limit = 512  # fits any client: no need to read its EDNS size
        else:
            try:
                limit = client_udp_size(parse(data))
            except DNSFormatError:
                limit = 512
        if len(out) > limit:  # truncate: the client retries over TCP
            m = parse(out)
            out = build(m.id, m.flags | 0x0200, m.questions)
        try:
            self.sock.sendto(out, addr)
        except OSError:
            pass  # the client is gone (or its buffer is full): it retries


def upstream_from_resolv_conf(path: str = "/etc/resolv.conf") -> tuple[str, int] | None:
    """The host's first nameserver (the resolver's default upstream)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1].split("%")[0], 53
    except OSError:
        pass
    return None


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """'1.2.3.4', '1.2.3.4:5353', '[::1]:53', '::1' -> (host, port)."""
    s = text.strip()
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if s.count(":") == 1:
        host, port = s.split(":")
        return host, int(port)
    return s, default_port
