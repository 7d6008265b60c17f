// sockhooks.c - glassbreak's network egress hooks (bcc; one loaded set per process, shared by
// every run of a daemon). Loaded by sandbox/kernel/sockhooks.py; docs/network.md explains the
// design and the bypass matrix.
//
// Attached to each run's cgroup v2 leaf:
//   cgroup/connect4|6, sendmsg4|6 (UDP)   allow-list check per run (LPM trie keyed cgid+addr),
//                                         port 53 (TCP+UDP, any address) steered to the run's
//                                         resolver port on loopback
//   cgroup/recvmsg4|6, getpeername4|6     DNS replies: the resolver's address rewritten back to
//                                         the address the client asked
//   cgroup/connect_unix, sendmsg_unix     pathname unix sockets: exact-string allow-list per run
//   cgroup/sock_create                    only TCP/UDP sockets of AF_INET/AF_INET6 (no raw,
//                                         ICMP, MPTCP unless the run allows it, UDP-Lite, SCTP)
//
// Only UAPI context fields are read (struct bpf_sock_addr / bpf_sock). The one exception is the
// AF_UNIX path, which the context does not expose: the loader passes the offsets of `uaddr` and
// `uaddrlen` in struct bpf_sock_addr_kern, taken from the running kernel's BTF, and the program
// reads them with bpf_probe_read_kernel() (root: pointer leak allowed).
//
// Which run: bpf_get_current_cgroup_id() of the task that calls connect/sendmsg. The hooks
// only run for sockets created in a hooked cgroup; a task in any cgroup without a `runs` entry
// (a sub-cgroup, a kworker, a host process handed the socket) is refused: fail closed.

#define GB_AF_UNIX 1
#define GB_AF_INET 2
#define GB_AF_INET6 10
#define GB_SOCK_STREAM 1
#define GB_SOCK_DGRAM 2
#define GB_IPPROTO_TCP 6
#define GB_IPPROTO_UDP 17
#define GB_IPPROTO_MPTCP 262

#ifndef MAX_RULES
#define MAX_RULES 16
#endif
#ifndef MAX_ALLOW
#define MAX_ALLOW 65536
#endif
#ifndef MAX_RUNS
#define MAX_RUNS 4096
#endif
#ifndef MAX_UNIX
#define MAX_UNIX 8192
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 64
#endif
#define UNIX_PATH 112    // sun_path is 108 bytes; 112 leaves room for the terminating NUL
#ifndef OFF_UADDR
#define OFF_UADDR 8      // offsetof(struct bpf_sock_addr_kern, uaddr) on 6.18 (BTF)
#endif
#ifndef OFF_UADDRLEN
#define OFF_UADDRLEN 32  // offsetof(struct bpf_sock_addr_kern, uaddrlen) on >= 6.7 (BTF)
#endif

// rule flags
#define R_TCP 1
#define R_UDP 2
#define R_DNS 4          // inserted by the resolver: never opens a sensitive address
// run flags
#define F_DEFAULT_ALLOW 1   // every destination not sensitive is allowed
#define F_AUDIT 2           // report, do not refuse (dry run)
#define F_ALLOW_MPTCP 4
#define F_UNIX_ABSTRACT_DENY 8
#define F_REPORT_DNS 16     // an info event per steered DNS connect/sendmsg
#define F_REPORT_UNIX 32    // an info event per allowed unix connect/sendmsg (what the hook saw)
#define F_REPORT_CONNECT 64 // an info event per allowed inet connect/sendmsg (deduplicated)
// event kinds
#define EV_CONNECT4 1
#define EV_CONNECT6 2
#define EV_SENDMSG4 3
#define EV_SENDMSG6 4
#define EV_CONNECT_UNIX 5
#define EV_SENDMSG_UNIX 6
#define EV_SOCK_CREATE 7
// reasons
#define RS_ALLOWED 0
#define RS_NOT_ALLOWED 1
#define RS_NO_RUN 2
#define RS_SENSITIVE 3
#define RS_RESOLVER_DIRECT 4
#define RS_EXPIRED 5
#define RS_SOCKTYPE 6
#define RS_UNIX_ABSTRACT 7
#define RS_NO_RESOLVER 8
#define RS_DNS_STEERED 9

struct lpm_key {
    u32 prefixlen;   // 64 (cgid) + 128 (address; IPv4 as ::ffff:a.b.c.d)
    u32 cg[2];
    u32 addr[4];
};
struct rule {
    u64 expiry;      // CLOCK_BOOTTIME ns; 0 = no expiry
    u16 lo, hi;      // host order, inclusive
    u8 plen;         // the rule's own prefix length (in the 128-bit space)
    u8 flags;
    u16 pad;
};
struct lpm_val {
    u32 n;
    u32 pad;
    struct rule r[MAX_RULES];
};
BPF_LPM_TRIE(allow_trie, struct lpm_key, struct lpm_val, MAX_ALLOW);

struct sens_key {
    u32 prefixlen;
    u32 addr[4];
};
BPF_LPM_TRIE(sensitive, struct sens_key, u32, 1024);  // value: the entry's prefix length

struct run_cfg {
    u16 dns_port;    // the run's resolver port on 127.0.0.1 and ::1 (0: DNS refused)
    u16 flags;
    u32 pad;
};
BPF_HASH(runs, u64, struct run_cfg, MAX_RUNS);
BPF_HASH(resolver_ports, u16, u64, MAX_RUNS);          // any run's resolver port -> its cgid

struct dns_orig {
    u32 addr[4];
    u16 port;        // network order
    u16 family;
};
BPF_TABLE("lru_hash", u64, struct dns_orig, dns_orig, 65536);  // socket cookie -> asked server

struct unix_key {
    u64 cgid;
    char path[UNIX_PATH];  // pathname: up to the first NUL (what the kernel looks up);
                           // abstract: the exact bytes, starting with the NUL
    u32 len;               // abstract: the name's length (with its leading NUL); pathname: 0
    u32 pad;
};
BPF_HASH(unix_allow, struct unix_key, u64, MAX_UNIX);  // value: expiry (0 = none)

BPF_HASH(lost, u64, u64, MAX_RUNS);                    // ring buffer full: per cgid

// one event per (run, kind, destination) per DEDUP_NS: a refusal loop prints one line
#ifndef DEDUP_NS
#define DEDUP_NS 1000000000ULL
#endif
struct dedup_key {
    u64 cgid;
    u32 kind;
    u32 port;
    u32 addr[4];
};
BPF_TABLE("lru_hash", struct dedup_key, u64, dedup, 16384);
BPF_HASH(suppressed, u64, u64, MAX_RUNS);              // repeats not reported: per cgid

struct event {
    u64 ts;          // CLOCK_BOOTTIME ns
    u64 cgid;
    u64 cookie;
    u32 kind;
    u32 reason;
    u32 pid;
    u32 tgid;
    u32 uid;
    u32 gid;
    u32 family;
    u32 type;
    u32 protocol;
    u16 port;        // host order
    u16 pathlen;     // unix: uaddrlen - 2
    u32 addr[4];     // ::ffff:a.b.c.d for IPv4
    u32 audit;       // 1: would have refused, allowed because the run is in audit mode
    u32 pad;
    char comm[16];
    char path[UNIX_PATH];
};
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline void count_lost(u64 cgid)
{
    u64 one = 1, *v = lost.lookup(&cgid);
    if (v)
        __sync_fetch_and_add(v, 1);
    else
        lost.update(&cgid, &one);
}

static __always_inline struct event *ev_start(u64 cgid, u32 kind, u32 reason)
{
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        count_lost(cgid);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = bpf_ktime_get_boot_ns();
    e->cgid = cgid;
    e->kind = kind;
    e->reason = reason;
    u64 pt = bpf_get_current_pid_tgid();
    e->pid = (u32)pt;
    e->tgid = pt >> 32;
    u64 ug = bpf_get_current_uid_gid();
    e->uid = (u32)ug;
    e->gid = ug >> 32;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
    return e;
}

static __always_inline int repeated(u64 cgid, u32 kind, u32 *a, u32 port)
{
    struct dedup_key k = {};
    k.cgid = cgid;
    k.kind = kind;
    k.port = port;
    k.addr[0] = a[0];
    k.addr[1] = a[1];
    k.addr[2] = a[2];
    k.addr[3] = a[3];
    u64 now = bpf_ktime_get_boot_ns();
    u64 *last = dedup.lookup(&k);
    if (last && now - *last < DEDUP_NS) {
        u64 one = 1, *v = suppressed.lookup(&cgid);
        if (v)
            __sync_fetch_and_add(v, 1);
        else
            suppressed.update(&cgid, &one);
        return 1;
    }
    dedup.update(&k, &now);
    return 0;
}

static __always_inline void report_inet(struct bpf_sock_addr *ctx, u64 cgid, u32 kind,
                                        u32 reason, u32 *a, u16 port, u32 audit)
{
    // one report per (run, kind, verdict, protocol, destination) per DEDUP_NS
    u32 dkey = kind | (reason << 8) | ((u32)ctx->protocol << 16);
    if (repeated(cgid, dkey, a, port))
        return;
    struct event *e = ev_start(cgid, kind, reason);
    if (!e)
        return;
    e->cookie = bpf_get_socket_cookie(ctx);
    e->family = ctx->user_family;
    e->type = ctx->type;
    e->protocol = ctx->protocol;
    e->port = port;
    e->addr[0] = a[0];
    e->addr[1] = a[1];
    e->addr[2] = a[2];
    e->addr[3] = a[3];
    e->audit = audit;
    events.ringbuf_submit(e, 0);
}

static __always_inline int is_mapped(u32 *a)
{
    return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

// 127/8, 0/8 (connect to 0.0.0.0 reaches 127.0.0.1), ::1, ::
static __always_inline int is_local(u32 *a)
{
    if (a[0] != 0 || a[1] != 0)
        return 0;
    if (a[2] == bpf_htonl(0x0000ffff)) {
        u32 b0 = bpf_ntohl(a[3]) >> 24;
        return b0 == 127 || b0 == 0;
    }
    return a[2] == 0 && (a[3] == 0 || a[3] == bpf_htonl(1));
}

// Returns 1 when (a, port) is allowed for the run; *reason otherwise.
static __always_inline int policy_allows(u64 cgid, struct run_cfg *cfg, u32 *a, u16 port,
                                         u32 protocol, u32 *reason)
{
    u8 pbit = protocol == GB_IPPROTO_UDP ? R_UDP : R_TCP;  // MPTCP counts as TCP

    struct sens_key sk = {};
    sk.prefixlen = 128;
    sk.addr[0] = a[0];
    sk.addr[1] = a[1];
    sk.addr[2] = a[2];
    sk.addr[3] = a[3];
    u32 *sp = sensitive.lookup(&sk);
    int sens_plen = sp ? (int)*sp : -1;

    struct lpm_key k = {};
    k.prefixlen = 64 + 128;
    k.cg[0] = (u32)cgid;
    k.cg[1] = cgid >> 32;
    k.addr[0] = a[0];
    k.addr[1] = a[1];
    k.addr[2] = a[2];
    k.addr[3] = a[3];
    struct lpm_val *v = allow_trie.lookup(&k);
    if (!v) {
        if ((cfg->flags & F_DEFAULT_ALLOW) && sens_plen < 0)
            return 1;
        // a sensitive address is refused as such (never escalatable), listed or not
        *reason = sens_plen >= 0 ? RS_SENSITIVE : RS_NOT_ALLOWED;
        return 0;
    }
    u64 now = bpf_ktime_get_boot_ns();
    int expired = 0, sens = 0;
    u32 n = v->n;

    #pragma clang loop unroll(disable)
    for (int i = 0; i < MAX_RULES; i++) {
        if (i >= n)
            break;
        struct rule *r = &v->r[i];
        if (port < r->lo || port > r->hi)
            continue;
        if (!(r->flags & pbit))
            continue;
        if (sens_plen >= 0 && ((r->flags & R_DNS) || (int)r->plen < sens_plen)) {
            sens = 1;
            continue;
        }
        if (r->expiry && r->expiry <= now) {
            expired = 1;
            continue;
        }
        return 1;
    }
    if ((cfg->flags & F_DEFAULT_ALLOW) && sens_plen < 0)
        return 1;
    *reason = expired ? RS_EXPIRED : ((sens || sens_plen >= 0) ? RS_SENSITIVE : RS_NOT_ALLOWED);
    return 0;
}

// The common part of connect4/6 and sendmsg4/6. a[] is the destination (IPv4 mapped).
// Returns: 1 allow as is, 2 steer to the resolver, 0 refuse.
static __always_inline int inet_verdict(struct bpf_sock_addr *ctx, u32 kind, u32 *a,
                                        struct run_cfg **cfgp, u64 *cgidp)
{
    u64 cgid = bpf_get_current_cgroup_id();
    *cgidp = cgid;
    u16 port = bpf_ntohs((u16)ctx->user_port);
    u32 protocol = ctx->protocol;
    struct run_cfg *cfg = runs.lookup(&cgid);
    u32 reason = RS_NO_RUN;
    *cfgp = cfg;
    if (!cfg) {
        report_inet(ctx, cgid, kind, reason, a, port, 0);
        return 0;
    }
    if (port == 53) {
        if (cfg->dns_port == 0) {
            reason = RS_NO_RESOLVER;
            goto refuse;
        }
        if (cfg->flags & F_REPORT_DNS)
            report_inet(ctx, cgid, kind, RS_DNS_STEERED, a, port, 0);
        return 2;
    }
    if (is_local(a)) {
        u16 hp = port;
        if (resolver_ports.lookup(&hp)) {
            reason = RS_RESOLVER_DIRECT;  // another run's (or its own) resolver, not steered
            goto refuse;
        }
    }
    if (policy_allows(cgid, cfg, a, port, protocol, &reason)) {
        if (cfg->flags & F_REPORT_CONNECT)
            report_inet(ctx, cgid, kind, RS_ALLOWED, a, port, 0);
        return 1;
    }
refuse:
    if (cfg->flags & F_AUDIT) {
        report_inet(ctx, cgid, kind, reason, a, port, 1);
        return 1;
    }
    report_inet(ctx, cgid, kind, reason, a, port, 0);
    return 0;
}

static __always_inline void remember_dns(struct bpf_sock_addr *ctx, u32 *a, u16 family)
{
    u64 cookie = bpf_get_socket_cookie(ctx);
    struct dns_orig o = {};
    o.addr[0] = a[0];
    o.addr[1] = a[1];
    o.addr[2] = a[2];
    o.addr[3] = a[3];
    o.port = (u16)ctx->user_port;
    o.family = family;
    dns_orig.update(&cookie, &o);
}

static __always_inline int hook4(struct bpf_sock_addr *ctx, u32 kind)
{
    u32 a[4] = {0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4};
    struct run_cfg *cfg = 0;
    u64 cgid = 0;
    int v = inet_verdict(ctx, kind, a, &cfg, &cgid);
    if (v == 2 && cfg) {
        remember_dns(ctx, a, GB_AF_INET);
        ctx->user_ip4 = bpf_htonl(0x7f000001);
        ctx->user_port = bpf_htons(cfg->dns_port);
        return 1;
    }
    return v ? 1 : 0;
}

static __always_inline int hook6(struct bpf_sock_addr *ctx, u32 kind)
{
    u32 a[4];
    a[0] = ctx->user_ip6[0];
    a[1] = ctx->user_ip6[1];
    a[2] = ctx->user_ip6[2];
    a[3] = ctx->user_ip6[3];
    struct run_cfg *cfg = 0;
    u64 cgid = 0;
    int v = inet_verdict(ctx, kind, a, &cfg, &cgid);
    if (v == 2 && cfg) {
        remember_dns(ctx, a, GB_AF_INET6);
        if (is_mapped(a)) {  // dual-stack socket asking an IPv4 server: ::ffff:127.0.0.1
            ctx->user_ip6[0] = 0;
            ctx->user_ip6[1] = 0;
            ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
            ctx->user_ip6[3] = bpf_htonl(0x7f000001);
        } else {             // native IPv6: ::1
            ctx->user_ip6[0] = 0;
            ctx->user_ip6[1] = 0;
            ctx->user_ip6[2] = 0;
            ctx->user_ip6[3] = bpf_htonl(1);
        }
        ctx->user_port = bpf_htons(cfg->dns_port);
        return 1;
    }
    return v ? 1 : 0;
}

int gb_connect4(struct bpf_sock_addr *ctx) { return hook4(ctx, EV_CONNECT4); }
int gb_sendmsg4(struct bpf_sock_addr *ctx) { return hook4(ctx, EV_SENDMSG4); }
int gb_connect6(struct bpf_sock_addr *ctx) { return hook6(ctx, EV_CONNECT6); }
int gb_sendmsg6(struct bpf_sock_addr *ctx) { return hook6(ctx, EV_SENDMSG6); }

// recvmsg / getpeername: a source that is this run's resolver is shown as the server the
// client asked (so resolvers that check the reply's source accept it). Must return 1.
static __always_inline struct dns_orig *dns_orig_for(struct bpf_sock_addr *ctx)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct run_cfg *cfg = runs.lookup(&cgid);
    if (!cfg || cfg->dns_port == 0 || bpf_ntohs((u16)ctx->user_port) != cfg->dns_port)
        return 0;
    u64 cookie = bpf_get_socket_cookie(ctx);
    return dns_orig.lookup(&cookie);
}

static __always_inline int unsteer4(struct bpf_sock_addr *ctx)
{
    if (ctx->user_ip4 != bpf_htonl(0x7f000001))
        return 1;
    struct dns_orig *o = dns_orig_for(ctx);
    if (o && is_mapped(o->addr)) {
        ctx->user_ip4 = o->addr[3];
        ctx->user_port = o->port;
    }
    return 1;
}

static __always_inline int unsteer6(struct bpf_sock_addr *ctx)
{
    u32 a[4];
    a[0] = ctx->user_ip6[0];
    a[1] = ctx->user_ip6[1];
    a[2] = ctx->user_ip6[2];
    a[3] = ctx->user_ip6[3];
    if (!is_local(a))
        return 1;
    struct dns_orig *o = dns_orig_for(ctx);
    if (o) {
        ctx->user_ip6[0] = o->addr[0];
        ctx->user_ip6[1] = o->addr[1];
        ctx->user_ip6[2] = o->addr[2];
        ctx->user_ip6[3] = o->addr[3];
        ctx->user_port = o->port;
    }
    return 1;
}

int gb_recvmsg4(struct bpf_sock_addr *ctx) { return unsteer4(ctx); }
int gb_recvmsg6(struct bpf_sock_addr *ctx) { return unsteer6(ctx); }
int gb_getpeername4(struct bpf_sock_addr *ctx) { return unsteer4(ctx); }
int gb_getpeername6(struct bpf_sock_addr *ctx) { return unsteer6(ctx); }

// AF_UNIX connect / sendmsg (kernel >= 6.7). The hook runs after unix_validate_addr() and
// before the path is looked up; it sees the string the caller passed (not the inode). The
// address is the kernel's copy (no TOCTOU with user memory); its bytes past uaddrlen are not
// initialised, so every read is bounded by uaddrlen.
static __always_inline int unix_hook(struct bpf_sock_addr *ctx, u32 kind)
{
    u64 cgid = bpf_get_current_cgroup_id();
    struct run_cfg *cfg = runs.lookup(&cgid);
    struct unix_key k = {};
    u64 uaddr = 0;
    u32 len = 0;
    char first = 0;
    bpf_probe_read_kernel(&uaddr, sizeof(uaddr), (void *)ctx + OFF_UADDR);
    bpf_probe_read_kernel(&len, sizeof(len), (void *)ctx + OFF_UADDRLEN);
    u32 plen = len > 2 ? len - 2 : 0;
    if (plen > 108)
        plen = 108;
    if (uaddr && plen)
        bpf_probe_read_kernel(&first, 1, (void *)(uaddr + 2));
    int abstract = plen > 0 && first == 0;
    if (uaddr && plen) {
        u32 n = plen & 127;
        if (n > 108)
            n = 108;
        if (abstract) {
            if (n > 0)
                bpf_probe_read_kernel(k.path, n, (void *)(uaddr + 2));
            k.len = plen;
        } else {
            // up to the first NUL, at most plen bytes (+ the NUL this helper writes)
            bpf_probe_read_kernel_str(k.path, n + 1, (void *)(uaddr + 2));
        }
    }
    u32 reason = RS_ALLOWED;
    int allow = 0;
    if (!cfg) {
        reason = RS_NO_RUN;
    } else {
        k.cgid = cgid;
        u64 *exp = unix_allow.lookup(&k);
        if (exp && (*exp == 0 || *exp > bpf_ktime_get_boot_ns()))
            allow = 1;
        else if (exp)
            reason = RS_EXPIRED;
        else if (abstract && !(cfg->flags & F_UNIX_ABSTRACT_DENY))
            allow = 1;  // abstract names left to Landlock's scope
        else
            reason = abstract ? RS_UNIX_ABSTRACT : RS_NOT_ALLOWED;
    }
    u32 audit = 0;
    if (!allow && cfg && (cfg->flags & F_AUDIT)) {
        audit = 1;
        allow = 1;
    }
    if (!allow || audit || (cfg && (cfg->flags & F_REPORT_UNIX))) {
        struct event *e = ev_start(cgid, kind, reason);
        if (e) {
            e->cookie = bpf_get_socket_cookie(ctx);
            e->family = GB_AF_UNIX;
            e->type = ctx->type;
            e->pathlen = plen;
            e->audit = audit;
            __builtin_memcpy(e->path, k.path, sizeof(e->path));
            events.ringbuf_submit(e, 0);
        }
    }
    return allow;
}

int gb_connect_unix(struct bpf_sock_addr *ctx) { return unix_hook(ctx, EV_CONNECT_UNIX); }
int gb_sendmsg_unix(struct bpf_sock_addr *ctx) { return unix_hook(ctx, EV_SENDMSG_UNIX); }

// socket(): only AF_INET/AF_INET6 sockets reach this hook (inet_create/inet6_create).
int gb_sock_create(struct bpf_sock *sk)
{
    u32 family = sk->family, type = sk->type, protocol = sk->protocol;
    u64 cgid = bpf_get_current_cgroup_id();
    struct run_cfg *cfg = runs.lookup(&cgid);
    int ok = 0;
    if (cfg) {
        if (type == GB_SOCK_STREAM &&
            (protocol == GB_IPPROTO_TCP ||
             (protocol == GB_IPPROTO_MPTCP && (cfg->flags & F_ALLOW_MPTCP))))
            ok = 1;
        else if (type == GB_SOCK_DGRAM && protocol == GB_IPPROTO_UDP)
            ok = 1;
    }
    if (ok)
        return 1;
    u32 audit = cfg && (cfg->flags & F_AUDIT);
    struct event *e = ev_start(cgid, EV_SOCK_CREATE, cfg ? RS_SOCKTYPE : RS_NO_RUN);
    if (e) {
        e->family = family;
        e->type = type;
        e->protocol = protocol;
        e->audit = audit;
        events.ringbuf_submit(e, 0);
    }
    return audit ? 1 : 0;
}
