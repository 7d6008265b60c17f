"""The network layer's run side: one NetworkService per process, one RunNetwork per run.
Why this module is long: RunNetwork (~470 lines) is one run's egress state (map entries, grant
windows and their expiry, DNS de-duplication, the escalations raised), read and changed by every
event handler and timer of the run; NetworkService is the per-process part it is fed from. The hooks
are sandbox.kernel.sockhooks, the DNS is sandbox.run.resolver.

NetworkService (once per daemon or in-process runner, like the eBPF exec tracer): the loaded
cgroup socket hooks (sandbox.kernel.sockhooks) and glassbreak's DNS resolver
(sandbox.run.resolver). Events of every run come through one ring buffer (and the resolver's
thread) and are sorted into per-run queues, each with an eventfd the run's supervisor polls.

RunNetwork: what one run may reach, and why. Before the child exists it attaches the hooks to
the run's cgroup leaf, registers the run (its resolver port and flags) and fills the run's maps
from the effective profile's `network:` section and the agent's active destination grants.
Then it turns every hook or resolver event into audit events (`connect`, `dns`, `blocked` with
layer `network`) and escalations, picks up destination grants approved while the run lives,
and closes what a grant opened when its window ends (new connects refused at once by the
kernel's expiry check; the connections opened under it ended with SOCK_DESTROY; with
`escalation.onExpiry: kill` the processes holding them are ended too).
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.errors import KernelFeatureMissing, RunnerError
from sandbox.events import DnsLookup, ExecBlocked, GrantEnded, NetConnect
from sandbox.policy.decision import Decision, Verdict
from sandbox.policy.network import (
    AllowEntry,
    expand_unix,
    format_entry,
    parse_allow,
)

if TYPE_CHECKING:
    from sandbox.kernel.sockhooks import NetEvent, SockHooks
    from sandbox.policy.profile import NetworkPolicy
    from sandbox.run.layers.base import LayerResult, RunContext
    from sandbox.run.resolver import DnsEvent, NameRule, Resolver

LAYER = "network"
GRANT_POLL_S = 1.0
DNS_DEDUP_S = 1.0  # one event per run, question and outcome per second
EXPIRED_KEEP_S = 60.0  # expired entries stay this long, so that a refusal says "expired"
DEFAULT_UPSTREAM = ("127.0.0.1", 53)

# hook reasons that no profile rule or grant opens: never escalatable
DENY_REASONS = {"sensitive address": ("network.sensitive", "a sensitive address (cloud "
                                      "metadata, link-local, loopback or this host's own) that "
                                      "only a profile entry naming it exactly opens"),
                "resolver port": ("network.resolver", "glassbreak's resolver, asked directly "
                                  "(DNS goes to port 53 and is steered there)"),
                "socket type": ("network.socket", "only TCP and UDP sockets are allowed (no "
                                "raw, ICMP, MPTCP, SCTP or UDP-Lite)"),
                "no run": ("network.no-run", "the process is not in the run's own cgroup "
                           "(fail closed)"),
                "no resolver": ("network.no-resolver", "the run has no resolver (fail closed)")}
DNS_DENY_RULES = {"dns.qtype", "dns.shape", "dns.rebinding"}


def default_upstream() -> tuple[str, int]:
    """The resolver's upstream: $GLASSBREAK_DNS_UPSTREAM, the operator's config
    (`dnsUpstream`), else the host's first nameserver in /etc/resolv.conf."""
    from sandbox.run.resolver import parse_hostport, upstream_from_resolv_conf

    env = os.environ.get("GLASSBREAK_DNS_UPSTREAM")
    if env:
        return parse_hostport(env)
    try:
        from sandbox.config import load_config

        cfg = load_config()
        upstream = cfg.dnsUpstream
        if upstream:
            return parse_hostport(str(upstream))
    except Exception:  # noqa: BLE001, S110 - an unreadable config falls back to resolv.conf
        pass
    return upstream_from_resolv_conf() or DEFAULT_UPSTREAM


class NetworkService:
    """The hooks and the resolver, shared by every run of this process. Thread-safe."""

    def __init__(self, upstream: tuple[str, int] | None = None, *,
                 hooks: SockHooks | None = None, resolver_options: dict[str, Any] | None = None
                 ) -> None:
        from sandbox.kernel.sockhooks import SockHooks
        from sandbox.run.resolver import Resolver

        try:
            self.hooks = hooks or SockHooks()
        except Exception as e:  # noqa: BLE001 - any failure: the feature is missing
            raise KernelFeatureMissing(
                f"the cgroup socket hooks could not load ({type(e).__name__}: {e})",
                hint="run `glassbreak doctor` to see which kernel feature is missing; "
                "`--degraded network` (root) runs without the network layer") from None
        self.upstream = upstream or default_upstream()
        self.resolver: Resolver = Resolver(self.hooks, self.upstream, on_event=self._dns_event,
                                           **(resolver_options or {}))
        import atexit

        atexit.register(self.resolver.stop_at_exit)  # runs before bcc's (registered earlier)
        self._lock = threading.Lock()
        self._dns: dict[int, deque[DnsEvent]] = {}
        self._seen: dict[int, dict[tuple[Any, ...], float]] = {}
        self.repeats: dict[int, int] = {}  # DNS events not queued (repeats), per run

    def fileno(self) -> int:
        return self.hooks.fileno()

    def event_fd(self, cgid: int) -> int:
        return self.hooks.event_fd(cgid)

    def _dns_event(self, ev: DnsEvent) -> None:  # the resolver's thread
        now = time.monotonic()
        with self._lock:
            q = self._dns.get(ev.cgroup_id)
            if q is None:
                return
            # the same question with the same outcome within DNS_DEDUP_S: counted, not queued
            # (a client asking one name a thousand times wakes its supervisor once a second)
            key = (ev.action, ev.qname, ev.qtype, ev.rule, ev.addresses)
            seen = self._seen.setdefault(ev.cgroup_id, {})
            last = seen.get(key)
            if last is not None and now - last < DNS_DEDUP_S:
                self.repeats[ev.cgroup_id] = self.repeats.get(ev.cgroup_id, 0) + 1
                return
            if len(seen) > 4096:
                seen.clear()
            seen[key] = now
            q.append(ev)
        try:
            os.eventfd_write(self.hooks.event_fd(ev.cgroup_id), 1)
        except OSError:
            pass

    def open_queue(self, cgid: int) -> None:
        with self._lock:
            self._dns.setdefault(cgid, deque())

    def consume(self, cgid: int) -> tuple[list[NetEvent], list[DnsEvent]]:
        net = self.hooks.consume(cgid)
        with self._lock:
            q = self._dns.get(cgid)
            dns = list(q) if q else []
            if q:
                q.clear()
        return net, dns

    def forget(self, cgid: int) -> None:
        with self._lock:
            self._dns.pop(cgid, None)
            self.repeats.pop(cgid, None)
            self._seen.pop(cgid, None)

    def close(self) -> None:
        self.resolver.close()
        self.hooks.close()


@dataclass
class NetBlockInfo:
    """A network block, as RunContext.on_block receives it (like the exec gate's BlockInfo)."""

    decision: Decision
    destination: str
    pid: int | None
    argv: list[str]
    binary: str | None
    cwd: str | None
    ancestry: list[dict[str, Any]]
    recent_execs: list[dict[str, Any]]
    sha256: str | None = None
    layer: str = LAYER


@dataclass
class _GrantState:
    grant: Any
    rule_ids: list[int] = field(default_factory=list)
    unix: list[str] = field(default_factory=list)
    names: list[NameRule] = field(default_factory=list)


@dataclass
class NetStats:
    blocked: int = 0
    connects: int = 0
    dns: int = 0
    first_block: tuple[str, str, str, str | None] | None = None


def _boot_expiry(expires_at: float) -> int:
    from sandbox.kernel.sockhooks import boot_ns

    return boot_ns() + max(0, int((expires_at - time.time()) * 1e9))


class RunNetwork:
    """One run's network policy in the kernel and the resolver (see the module doc)."""

    def __init__(self, svc: NetworkService, run: RunContext, policy: NetworkPolicy, *,
                 uid: int, procs: Callable[[int], list[dict[str, Any]]] | None = None,
                 recent: Callable[[], list[dict[str, Any]]] | None = None,
                 grants: Callable[[], list[Any]] | None = None,
                 abstract_deny: bool = True) -> None:
        self.svc = svc
        self.abstract_deny = abstract_deny  # False: abstract names left to Landlock's scope
        self.hooks = svc.hooks
        self.run = run
        self.cgid = run.cgroup.id
        self.policy = policy
        self.uid = uid
        self.audit = run.mode == "monitor"
        self._procs = procs
        self._recent = recent
        self._grants_fn = grants
        self._profile_rules: list[int] = []
        self._profile_unix: list[str] = []
        self._grants: dict[str, _GrantState] = {}
        self._next_poll = 0.0
        self._store_down = False
        self._raised: dict[tuple[str, str], str | None] = {}
        self._shown: set[tuple[str, str]] = set()
        self._names: dict[str, str] = {}  # address -> the name it was answered for
        self._askers: dict[int, int] = {}  # socket cookie of a steered DNS query -> its tgid
        self.stats = NetStats()
        self.started = False

    # -- set-up (before the child exists) ----------------------------------------------------
    def start(self) -> None:
        from sandbox.kernel import sockhooks as sh

        self.hooks.refresh_host_addresses()
        try:
            self.hooks.attach(self.run.cgroup.path)
        except Exception as e:  # noqa: BLE001 - the attach failed: no run without the layer
            raise KernelFeatureMissing(
                f"cannot attach the network hooks to {self.run.cgroup.path} "
                f"({type(e).__name__}: {e})",
                hint="run `glassbreak doctor`; `--degraded network` (root) runs without them"
            ) from None
        self.svc.open_queue(self.cgid)
        self.hooks.event_fd(self.cgid)
        self._next_poll = time.monotonic() + GRANT_POLL_S  # polled below, once
        port = self.svc.resolver.add_run(self.cgid, self._name_rules(), audit=self.audit,
                                         pids=self.run.cgroup.pids)
        self.started = True
        self.hooks.register_run(self.cgid, dns_port=port, flags=self._flags())
        try:
            self._add_profile_rules()
            try:
                grants = self._poll_grants()
            except _StoreDown:
                grants = []  # fail closed: no destination grant while the store is down
            for g in grants:
                self._apply_grant(g)
        except sh.PolicyError as e:
            raise RunnerError(f"the run's network policy cannot be loaded: {e}",
                              hint="fewer or broader network.allow entries") from None

    def _flags(self) -> int:
        from sandbox.kernel import sockhooks as sh

        flags = sh.F_REPORT_CONNECT | sh.F_REPORT_DNS
        if self.abstract_deny:
            flags |= sh.F_UNIX_ABSTRACT_DENY
        if self.policy.default == "allow":
            flags |= sh.F_DEFAULT_ALLOW
        if self.audit:
            flags |= sh.F_AUDIT
        return flags

    def _entries(self) -> list[AllowEntry]:
        return [parse_allow(e) for e in self.policy.allow]

    def _name_rules(self) -> list[NameRule]:
        from sandbox.run.resolver import NameRule

        rules: list[NameRule] = []
        if self.policy.default == "allow":
            rules.append(NameRule("*", (1, 65535), "any", "profile"))
        for e in self._entries():
            if not e.is_ip:
                rules.append(NameRule(e.host, e.ports, e.proto, "profile"))
        for st in self._grants.values():
            rules += st.names
        return rules

    def _add_profile_rules(self) -> None:
        for e in self._entries():
            if e.host == "localhost":  # /etc/hosts answers it, no DNS: static entries
                for a in ("127.0.0.1", "::1"):
                    self._profile_rules.append(self.hooks.add(
                        self.cgid, a, e.ports, proto=e.proto, label="profile:localhost"))
            elif e.is_ip:
                self._profile_rules.append(self.hooks.add(
                    self.cgid, e.host, e.ports, proto=e.proto, label="profile"))
        for p in self.policy.unix:
            path = expand_unix(p, self.uid)
            self.hooks.add_unix(self.cgid, path)
            self._profile_unix.append(path)

    # -- grants -------------------------------------------------------------------------------
    def _poll_grants(self) -> list[Any]:
        if self._grants_fn is None:
            return []
        try:
            grants = [g for g in self._grants_fn() if getattr(g, "destination", None)]
        except Exception as e:  # noqa: BLE001 - a store we cannot reach honours no grant
            if not self._store_down:  # said once per outage
                from sandbox.events import Degraded

                self.run.record(Degraded(what="grants", why=f"grant store unreachable, no "
                                         f"destination grant honoured: {e}"))
            self._store_down = True
            raise _StoreDown() from None
        self._store_down = False
        return grants

    def _apply_grant(self, g: Any) -> None:
        from sandbox.run.resolver import NameRule

        if g.id in self._grants:
            return
        st = _GrantState(g)
        exp = _boot_expiry(float(g.expires_at))
        dest: str = g.destination
        label = f"grant:{g.id}"
        if dest.startswith("unix:"):
            path = expand_unix(dest[5:], self.uid)
            self.hooks.add_unix(self.cgid, path, expiry_boot_ns=exp)
            st.unix.append(path)
        else:
            e = parse_allow(dest)
            if e.host == "localhost":
                for a in ("127.0.0.1", "::1"):
                    st.rule_ids.append(self.hooks.add(self.cgid, a, e.ports, proto=e.proto,
                                                      label=label, expiry_boot_ns=exp))
            elif e.is_ip:
                st.rule_ids.append(self.hooks.add(self.cgid, e.host, e.ports, proto=e.proto,
                                                  label=label, expiry_boot_ns=exp))
            else:
                st.names.append(NameRule(e.host, e.ports, e.proto, label))
        self._grants[g.id] = st
        if st.names:
            self.svc.resolver.set_rules(self.cgid, self._name_rules())
        from sandbox.events import GrantUsed

        self.run.record(GrantUsed(grant_id=g.id, escalation_id=getattr(g, "escalation_id", None),
                                  approver=getattr(g, "approver", "?"),
                                  relaxed_profile=f"{self.run.strict.name} + destination {dest}",
                                  expires_at=float(g.expires_at)), sync=True)

    def _end_grant(self, gid: str, why: str) -> None:
        st = self._grants.pop(gid, None)
        if st is None:
            return
        ended: list[Any] = []
        for rid in st.rule_ids:
            ended += self.hooks.remove(self.cgid, rid, kill=True)
        for path in st.unix:
            if path not in self._profile_unix and not any(
                    path in o.unix for o in self._grants.values()):
                self.hooks.remove_unix(self.cgid, path)
        if st.names:
            self.svc.resolver.set_rules(self.cgid, self._name_rules())
            ended += self._drop_dns_entries()
        killed: list[int] = []
        kill = "kill" in (getattr(st.grant, "on_expiry", "kill"),
                          self.run.strict.escalation.onExpiry)
        if kill and ended:
            killed = _kill_holders(self.run.cgroup.pids(), {s.inode for s in ended})
        self.run.record(GrantEnded(grant_id=gid, why=why,  # type: ignore[arg-type]
                                   killed_pids=killed), sync=True)

    def _drop_dns_entries(self) -> list[Any]:
        """DNS-inserted entries that no remaining name rule (same ports) accounts for."""
        from sandbox.kernel.sockhooks import R_TCP, R_UDP

        rules = self._name_rules()
        ended: list[Any] = []
        for r in self.hooks.rules(self.cgid):
            if not r.dns:
                continue
            proto = "any" if (r.flags & (R_TCP | R_UDP)) == (R_TCP | R_UDP) else (
                "udp" if r.flags & R_UDP else "tcp")
            if any(n.matches(r.label) and n.ports == (r.lo, r.hi) and n.proto == proto
                   for n in rules):
                continue
            ended += self.hooks.remove(self.cgid, r.id, kill=True)
        return ended

    def tick(self) -> None:
        """About once a second: grant windows that closed, grants approved meanwhile, and the
        expired DNS entries freed."""
        now = time.monotonic()
        if now < self._next_poll or not self.started:
            return
        self._next_poll = now + GRANT_POLL_S
        wall = time.time()
        for gid, st in list(self._grants.items()):
            if wall >= float(st.grant.expires_at):
                self._end_grant(gid, "expired")
        try:
            live = {g.id: g for g in self._poll_grants()}
        except _StoreDown:
            live = {}
        for gid in list(self._grants):
            if gid not in live:
                self._end_grant(gid, "revoked")
        for gid, g in live.items():
            if gid not in self._grants and wall < float(g.expires_at):
                try:
                    self._apply_grant(g)
                except Exception as e:  # noqa: BLE001 - reported; the grant stays unapplied
                    from sandbox.events import Degraded

                    self.run.record(Degraded(what="grants", why=f"grant {gid} could not be "
                                             f"applied: {e}"))
        self.hooks.gc(self.cgid, older_than=EXPIRED_KEEP_S)

    def narrow(self, policy: NetworkPolicy) -> None:
        """A profile grant's window closed: the strict profile's network section from now on;
        connections only the relaxed one allowed are ended."""
        if not self.started:
            self.policy = policy
            return
        old_unix = self._profile_unix
        gone = [r for r in self.hooks.rules(self.cgid) if r.id in set(self._profile_rules)]
        self.policy = policy
        # the old entries out first (an entry both profiles have gets a fresh id back below),
        # then the new ones in, then the connections that nothing allows any more ended
        for r in gone:
            self.hooks.remove(self.cgid, r.id)
        self._profile_rules, self._profile_unix = [], []
        self._add_profile_rules()
        self.svc.resolver.set_rules(self.cgid, self._name_rules())
        self.hooks.register_run(self.cgid, dns_port=self._dns_port(), flags=self._flags())
        for r in gone:
            self.hooks.end_connections(self.cgid, r.net, r.lo, r.hi)
        for p in old_unix:
            if p not in self._profile_unix:
                self.hooks.remove_unix(self.cgid, p)
        self._drop_dns_entries()
        if policy.default != "allow":
            self.hooks.end_connections(self.cgid)  # default-allow connections, if any

    def _dns_port(self) -> int:
        run = self.svc.resolver._runs.get(self.cgid)  # noqa: SLF001
        return run.port if run else 0

    # -- events -------------------------------------------------------------------------------
    def handle(self) -> None:
        net, dns = self.svc.consume(self.cgid)
        for e in net:  # the DNS queries first: they name the process of a refused answer
            if e.reason == "dns steered" and e.cookie:
                if len(self._askers) > 4096:
                    self._askers.clear()
                self._askers[e.cookie] = e.tgid
        for d in dns:
            self._dns_event(d)
        for e in net:
            self._net_event(e)

    def _asker(self, d: DnsEvent) -> int | None:
        """The process that asked a refused question: the steered query's socket cookie, else
        the run's process holding the asking socket (best effort)."""
        if d.client_pid:
            return d.client_pid
        if d.client_cookie and d.client_cookie in self._askers:
            return self._askers[d.client_cookie]
        if d.client_inode:
            want = f"socket:[{d.client_inode}]"
            for pid in self.run.cgroup.pids():
                try:
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                            return pid
                except OSError:
                    continue
        return None

    def _who(self, pid: int | None) -> tuple[list[str], str | None, list[dict[str, Any]]]:
        """argv, binary and ancestry of a process: the exec gate's table (what the kernel
        exec'd), else /proc (best effort: the process may be gone)."""
        anc: list[dict[str, Any]] = []
        if pid and self._procs is not None:
            try:
                anc = self._procs(pid)
            except Exception:  # noqa: BLE001 - the gate may be closing
                anc = []
        argv: list[str] = list(anc[0].get("argv") or []) if anc else []
        binary = anc[0].get("binary") if anc else None
        if pid and not argv:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    raw = f.read(1 << 16)
                argv = [a.decode(errors="surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")
                        if raw]
                binary = binary or os.readlink(f"/proc/{pid}/exe")
            except OSError:
                pass
        return argv, binary, anc

    def _net_event(self, e: NetEvent) -> None:
        if e.reason == "dns steered":
            self.run.record(NetConnect(kind="dns-query", pid=e.tgid, destination=e.destination,
                                       proto=e.proto, decision="allow",
                                       rule_id="network.dns.steered",
                                       note="steered to glassbreak's resolver"), show=False)
            return
        if e.reason == "allowed":
            self.stats.connects += 1
            self.run.record(NetConnect(kind=e.kind, pid=e.tgid, destination=e.destination,
                                       proto=e.proto, decision="allow", rule_id="network.allow",
                                       name=self._names.get(e.addr)), show=False)
            return
        verdict, rule, why = self._judge(e)
        dest = self._dest_entry(e)
        if e.kind in ("connect4", "connect6") and e.protocol == socket.IPPROTO_UDP and (
                e.port == 0 or e.addr in self._names):
            # a UDP connect sends nothing; glibc's getaddrinfo connects a UDP socket to every
            # answer to sort them (RFC 6724) and ignores a refusal. Refused (the socket stays
            # unconnected, so nothing can be sent through it), recorded, not escalated.
            self.run.record(NetConnect(kind=e.kind, pid=e.tgid, destination=dest, proto="udp",
                                       decision=verdict.value,  # type: ignore[arg-type]
                                       rule_id=rule, name=self._names.get(e.addr),
                                       note="UDP connect to a DNS answer or port 0 (address "
                                       "sorting): refused quietly", would_block=e.audit),
                            show=False)
            return
        if e.family == socket.AF_UNIX and not e.path.startswith("@") and e.path and \
                not os.path.exists(e.path):
            # nothing listens there: the connect would have failed anyway (ENOENT); recorded,
            # not escalated, not shown (glibc probes nscd and friends on every lookup)
            self.run.record(NetConnect(kind=e.kind, pid=e.tgid, destination=dest,
                                       proto="unix", decision=verdict.value, rule_id=rule,  # type: ignore[arg-type]
                                       note="no socket at that path", would_block=e.audit),
                            show=False)
            return
        self._block(verdict, rule, why, dest, e.tgid, kind=e.kind)

    def _judge(self, e: NetEvent) -> tuple[Verdict, str, str]:
        if e.reason in DENY_REASONS:
            rule, why = DENY_REASONS[e.reason]
            return Verdict.DENY, rule, f"{e.kind} {e.destination}: {why}"
        verdict = Verdict.DENY if self.policy.default == "deny" else Verdict.BLOCK
        if e.family == socket.AF_UNIX:
            rule = "network.unix.abstract" if e.path.startswith("@") else "network.unix"
            return verdict, rule, (f"{e.kind} to unix socket {e.path!r}: not in network.unix "
                                   f"(profile {self.run.strict.name})")
        if e.reason == "expired":
            return verdict, "network.expired", (f"{e.kind} {e.proto} {e.destination}: the "
                                                "DNS answer's TTL or the grant that opened it "
                                                "ran out")
        name = self._names.get(e.addr)
        via = f" ({name})" if name else ""
        return verdict, "network.default", (
            f"{e.kind} {e.proto} {e.destination}{via}: no network.allow entry or grant "
            f"allows it (network.default: {self.policy.default})")

    @staticmethod
    def _dest_entry(e: NetEvent) -> str:
        """The destination as an allow entry (what a grant for it opens)."""
        if e.family == socket.AF_UNIX:
            return f"unix:{e.path}"
        if e.kind == "sock_create":
            return e.destination
        proto = "udp" if e.protocol == socket.IPPROTO_UDP else "tcp"
        return format_entry(e.addr, (e.port, e.port), proto)

    def _dns_event(self, d: DnsEvent) -> None:
        if d.action == "answered":
            self.stats.dns += 1
            for a in d.addresses:
                self._names[a] = d.qname
            self.run.record(DnsLookup(qname=d.qname, qtype=d.qtype, action="answered",
                                      addresses=list(d.addresses), transport=d.transport,
                                      rule_id=f"network.allow:{d.rule}" if d.rule else
                                      "network.allow", reason=d.reason,
                                      would_block=d.audit), show=False)
            return
        if d.action == "servfail":
            self.run.record(DnsLookup(qname=d.qname, qtype=d.qtype, action="servfail",
                                      transport=d.transport, rule_id=f"network.{d.rule}",
                                      reason=d.reason), show=d.rule == "dns.insert")
            return
        rule = f"network.{d.rule}" if d.rule else "network.dns.name"
        if d.rule in DNS_DENY_RULES:
            verdict = Verdict.DENY
        else:
            verdict = Verdict.DENY if self.policy.default == "deny" else Verdict.BLOCK
        self.run.record(DnsLookup(qname=d.qname, qtype=d.qtype,
                                  action=d.action,  # type: ignore[arg-type]
                                  addresses=list(d.addresses), transport=d.transport,
                                  rule_id=rule, reason=d.reason, would_block=d.audit),
                        show=False)
        if d.action == "dropped-address":
            why = (f"DNS answer for {d.qname!r} pointed at {', '.join(d.addresses)}: sensitive "
                   "addresses are never opened by DNS (rebinding)")
            self._block(Verdict.DENY, rule, why, d.qname, None, kind="dns")
            return
        dest = d.qname if verdict is Verdict.DENY else format_entry(d.qname, (1, 65535))
        why = f"DNS {d.qtype} {d.qname!r}: {d.reason}"
        self._block(verdict, rule, why, dest, self._asker(d), kind="dns")

    def _block(self, verdict: Verdict, rule: str, why: str, dest: str, pid: int | None, *,
               kind: str) -> None:
        enforced = not self.audit
        argv, binary, anc = self._who(pid)
        key = (rule, dest)
        esc: str | None = None
        if key in self._raised:
            esc = self._raised[key]
        else:
            d = Decision(verdict, rule, why, tuple(argv), binary)
            if enforced and verdict is Verdict.BLOCK:
                recent: list[dict[str, Any]] = []
                if self._recent is not None:
                    try:
                        recent = self._recent()
                    except Exception:  # noqa: BLE001 - context is best effort
                        recent = []
                info = NetBlockInfo(d, dest, pid, argv, binary, self._cwd(pid), anc, recent)
                esc = self.run.on_block(info)
            self._raised[key] = esc
        self.stats.blocked += 1
        if self.stats.first_block is None:
            self.stats.first_block = (rule, why, LAYER, esc)
        visible = key not in self._shown
        self._shown.add(key)
        self.run.record(ExecBlocked(layer=LAYER, verdict=verdict.value,  # type: ignore[arg-type]
                                    rule_id=rule, reason=why, argv=argv, binary=binary,
                                    pid=pid, profile=self.run.strict.name, escalation_id=esc,
                                    enforced=enforced, destination=dest),
                        show=visible, sync=True)

    def _cwd(self, pid: int | None) -> str | None:
        if pid:
            try:
                return os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                pass
        return self.run.cwd

    def finish(self, result: LayerResult) -> None:
        self.handle()
        lost = self.hooks.lost(self.cgid)
        if lost:  # the refusals happened; only their reports are missing
            from sandbox.events import EventsLost

            self.run.record(EventsLost(count=lost, source="network hooks' ring buffer",
                                       action="refusals still enforced; not all reported"),
                            sync=True)
        result.blocked += self.stats.blocked
        if self.stats.first_block is not None and result.first_block is None:
            result.first_block = self.stats.first_block

    def close(self) -> None:
        if not self.started:
            return
        self.started = False
        cg = self.run.cgroup
        try:
            self.hooks.clear(self.cgid)  # first: it frees the resolver port's entry, which
        finally:  # a recycled socket set reserves again
            # its socket set is reused once the run's cgroup is empty (killed next)
            self.svc.resolver.remove_run(self.cgid, gone=lambda: _cgroup_empty(cg))
            self.svc.forget(self.cgid)


class _StoreDown(Exception):
    pass


def _cgroup_empty(cg: Any) -> bool:
    """No process of the run is left: its leaf is gone or says `populated 0` (a leaf being
    removed may refuse the read: then it is gone when the directory is)."""
    try:
        return not cg.populated()
    except OSError:
        return not os.path.isdir(cg.path)


def _kill_holders(pids: list[int], inodes: set[int]) -> list[int]:
    """SIGKILL the processes (of the run) holding any of these socket inodes."""
    want = {f"socket:[{i}]" for i in inodes if i}
    killed: list[int] = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in want:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            except OSError:
                continue
    return killed


def check_stdio(fds: tuple[int, int, int]) -> None:
    """The run's stdio may be a socket (created outside the run, so no hook checks it): only a
    connected stream socket is accepted (it can reach its one peer and nothing else); an
    unconnected, listening or datagram socket could send anywhere. Refused (exit 125)."""
    for i, fd in enumerate(fds):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode):
            continue
        s = socket.socket(fileno=os.dup(fd))
        try:
            typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            try:
                s.getpeername()  # a unix socketpair's peer is unnamed (''), yet connected
                peer = True
            except OSError:
                peer = False
        finally:
            s.close()
        name = ("stdin", "stdout", "stderr")[i]
        if typ not in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET) or listening or not peer:
            raise RunnerError(
                f"the run's {name} is a socket that is not a connected stream (type {typ}"
                f"{', listening' if listening else ''}{', unconnected' if not peer else ''}): "
                "it was created outside the run, so the network hooks would not check what "
                "the run sends through it",
                hint="give the command a pipe, a file, a terminal or a connected stream socket")


def suggest_allow(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A monitored (or enforced) run's destinations as `network.allow` / `network.unix`
    entries for review: names where a DNS answer explains an address, else the address."""
    names: dict[str, str] = {}
    for e in events:
        if e.get("type") == "dns" and e.get("action") == "answered":
            for a in e.get("addresses") or []:
                names.setdefault(a, e["qname"])
    allow: dict[str, dict[str, Any]] = {}
    unix: dict[str, dict[str, Any]] = {}
    asked: set[str] = set()

    def note(bucket: dict[str, dict[str, Any]], key: str, why: str) -> None:
        bucket.setdefault(key, {"entry": key, "seen": 0, "why": why})["seen"] += 1

    for e in events:
        t = e.get("type")
        if t == "dns" and e.get("action") in ("refused", "answered") and \
                e.get("rule_id", "").startswith(("network.dns.name", "network.dns.cname")):
            asked.add(e["qname"])
        if t == "dns" and e.get("action") == "answered":
            asked.add(e["qname"])
        dest = e.get("destination")
        if t not in ("connect", "blocked") or not dest:
            continue
        if t == "blocked" and e.get("layer") != LAYER:
            continue
        if t == "connect" and (e.get("kind") == "dns-query"
                               or "address sorting" in (e.get("note") or "")):
            continue
        if e.get("rule_id") == "network.sensitive" and not dest.startswith("unix:"):
            try:
                entry = parse_allow(dest)
                loop = entry.is_ip and entry.network.network_address.is_loopback
            except ValueError:
                loop = False
            if loop:
                note(allow, format_entry("localhost", entry.ports, entry.proto),
                     "a loopback service: allow only if the run should reach it")
            continue
        if e.get("verdict") == "deny" or (t == "connect" and e.get("decision") == "deny"):
            continue
        if dest.startswith("unix:"):
            if t == "connect" and e.get("note") == "no socket at that path":
                continue
            note(unix, dest[5:], "unix socket")
            continue
        try:
            entry = parse_allow(dest)
        except ValueError:
            continue
        if not entry.is_ip:
            continue  # a refused name: listed below with the ports its addresses were used on
        name = names.get(entry.host)
        if name:
            note(allow, format_entry(name, entry.ports, entry.proto), f"{entry.host} via DNS")
        else:
            note(allow, entry.text(), "address")
    used = {k.rsplit(":", 1)[0].removeprefix("udp:") for k in allow}
    for q in sorted(asked):
        if q not in used and q != "localhost":
            note(allow, format_entry(q, (443, 443)), "name looked up, no connect seen: port "
                 "guessed (443), check it")
    return {"allow": sorted(allow.values(), key=lambda x: x["entry"]),
            "unix": sorted(unix.values(), key=lambda x: x["entry"])}

