// glassbreak exec tracer and verifier (bcc source; loaded by sandbox/kernel/ebpf.py).
//
// Three programs, all filtered in the kernel by a map of watched cgroup ids:
//   sched_process_fork / sched_process_exit (classic tracepoints): fork and exit events for the
//     process table; an exiting thread's pending expectation is dropped.
//   gb_exec (RAW tracepoint sched_process_exec: ctx->args = {task, old_pid, bprm}): every exec
//     of a watched cgroup is VERIFIED here, while the exec'ing task is current, its new mm is
//     installed and no user instruction of the new image has run:
//       1. the identity of the image that runs: kernel dev_t + inode of current->mm->exe_file;
//       2. a keyed SipHash-2-4 of the argv + envp bytes the kernel copied (mm->arg_start ..
//          env_end):  H = SipHash-2-4(key, le64(arg_len) || le64(env_len) || argv || envp);
//       3. both compared with the expectation the exec gate wrote for the thread that called
//          execve (old_pid) BEFORE it answered the seccomp notification with CONTINUE; the
//          expectation is consumed. No expectation, another image or other bytes: SIGKILL
//          (bpf_send_signal; delivered on the way back to user mode, so the image never runs)
//          and an event with what was expected and what the kernel saw.
//     Every exec is reported (the gate's audit record), each kill (and every exec in trace mode)
//     with the first bytes of the argv the kernel copied. A report that cannot be written kills the exec (fail closed) and
//     counts as lost; userspace then ends the run.
//
// Raw, not classic, tracepoint for the verifier: a classic tracepoint's program is skipped while
// the per-CPU bpf_prog_active is raised (e.g. by a concurrent map update from userspace), which
// would let an exec run unverified; a raw tracepoint has its own recursion counter (userspace
// alarms on recursion_misses > 0).
//
// Struct member offsets are NOT taken from headers (the installed ones do not match the running
// kernel): the loader reads them from /sys/kernel/btf/vmlinux (sandbox/kernel/btf.py) while
// clang compiles this, and writes them into the `offsets` map before the verifier is attached;
// without them every exec of a watched cgroup fails verification (kernel-read: killed). Kernel
// memory is read with bpf_probe_read_kernel, user memory with bpf_probe_read_user.
//
// bcc 0.26 cannot relocate a bpf_loop callback: sandbox/kernel/bpfload.py appends gb_chunk as a
// subprogram, patches the callback address and loads it with BTF func_info. Hence gb_chunk takes
// only the loop index and keeps its state in a per-CPU map, and calls no non-inlined function.

#ifndef CHUNK
// bytes per bpf_loop iteration (a multiple of 8). The verifier walks the word loop once per
// word: ~47 instructions per byte of CHUNK (52 k at 1 KiB, 196 k at 4 KiB: ~0.1-0.2 s more at
// load). Measured here: the same in-kernel time for 2-8 KB environments, +7% for 2 MB of argv
// (1.31 vs 1.22 ms).
#define CHUNK 1024
#endif
#define MAX_REGION (8u << 20)          // > the kernel's own limit (6 MiB: 3/4 of _STK_LIM)
#define FILENAME 256
#define ARGS_PREFIX 512                // argv bytes reported with a kill
#define WAKE_EVERY 64

#define GB_SIGKILL 9

enum { EV_FORK = 1, EV_EXEC = 2, EV_EXIT = 3 };

// watch flags
#define W_KILL 1ull                    // enforce: kill a mismatch (else monitor: report only)
#define W_TRACE 2ull                   // no expectations exist (--degraded exec-gate): report
                                       // every exec with its identity, kill nothing

enum {
    R_OK = 0,
    R_NO_EXPECT = 1,    // no expectation for old_pid (an exec the gate never judged)
    R_IDENTITY = 2,     // another file runs (dev/ino of mm->exe_file differ)
    R_HASH = 3,         // other argv/envp bytes than the gate judged
    R_KREAD = 4,        // a kernel struct read failed (mm, exe_file, inode, sb)
    R_UREAD = 5,        // reading the argv/envp pages failed
    R_LAYOUT = 6,       // argv/envp not contiguous, or larger than MAX_REGION
    R_CGROUP = 7,       // the expectation was written for another run
};

struct watch_t {
    u64 flags;
    u64 lost;           // events that could not be reported (fail closed)
    u64 execs;          // execs verified in this cgroup
    u64 kills;          // SIGKILLs sent
    u64 ns;             // total time in gb_exec for this cgroup's execs
};

struct expect_t {
    u64 kdev;           // kernel dev_t (MKDEV: major << 20 | minor), not the stat() encoding
    u64 ino;
    u64 hash;
    u64 cgid;           // the run it was written for
};

struct sipkey_t {
    u64 k0;
    u64 k1;
};

struct offs_t {         // byte offsets of the kernel struct members read (from BTF)
    u64 ready;
    u64 task_mm, mm_exe_file, mm_arg_start, mm_arg_end, mm_env_start, mm_env_end;
    u64 file_f_inode, inode_i_ino, inode_i_sb, sb_s_dev, bprm_filename;
};

struct scratch_t {
    u64 v0, v1, v2, v3;
    u64 base;           // user address of the region (mm->arg_start)
    u64 len;            // region length in bytes (arg_len + env_len)
    u64 tail;           // the last partial word (zero-padded), valid once the loop ends
    u64 err;
    u8 buf[CHUNK + 8];
};

struct small_ev_t {     // fork / exit
    u32 type;
    u32 pid;            // fork: child pid; exit: pid
    u32 tgid;           // current tgid (fork: the parent's)
    u32 aux;            // fork: parent pid (tracepoint); exit: group_dead
    u64 cgid;
    u64 ts;
    char comm[16];
};

struct exec_ev_t {
    u32 type;
    u32 pid;            // after exec (the tgid)
    u32 tgid;
    u32 old_pid;        // the thread that called execve (the expectation key)
    u64 cgid;
    u64 ts;
    char comm[16];
    u32 reason;
    s32 sig_ret;        // bpf_send_signal() result (0 queued); 1 = not sent
    u32 have_exp;
    u32 flags;          // the watch flags it was judged under
    u64 exp_kdev, exp_ino, exp_hash;
    u64 kdev, ino, hash;
    u64 arg_len, env_len;
    u64 ns;             // time in this program for this exec (verdict only)
    char filename[FILENAME];   // bprm->filename: the name the kernel opened
    u8 args[ARGS_PREFIX];      // kills and trace mode: the first bytes of the argv the kernel
                               // copied
};

BPF_HASH(watched, u64, struct watch_t, 4096);
// LRU: stale expectations (an exec that failed after CONTINUE, a thread gone) are evicted
// first; a live one is never near the tail (it is consumed within one exec)
BPF_TABLE("lru_hash", u32, struct expect_t, expect, 65536);
BPF_ARRAY(sipkey, struct sipkey_t, 1);
BPF_ARRAY(offsets, struct offs_t, 1);
BPF_PERCPU_ARRAY(scratch, struct scratch_t, 1);
BPF_PERCPU_ARRAY(evbuf, struct exec_ev_t, 1);
BPF_ARRAY(pending, u64, 1);  // events sent without wakeup since the last wakeup
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);

static __always_inline u64 wake_flags(int force) {
    if (force)
        return BPF_RB_FORCE_WAKEUP;
    int zero = 0;
    u64 *p = pending.lookup(&zero);
    if (p) {
        u64 n = __sync_fetch_and_add(p, 1);
        if (n % WAKE_EVERY == WAKE_EVERY - 1)
            return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

/* fork and exit events: the same small record, no wake-up unless one is due */
static __always_inline void submit_small(struct watch_t *w, u32 type, u32 pid, u32 aux,
                                         u64 cgid) {
    struct small_ev_t ev = {};
    ev.type = type;
    ev.pid = pid;
    ev.tgid = bpf_get_current_pid_tgid() >> 32;
    ev.aux = aux;
    ev.cgid = cgid;
    ev.ts = bpf_ktime_get_ns();
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    if (events.ringbuf_output(&ev, sizeof(ev), wake_flags(0)) != 0)
        __sync_fetch_and_add(&w->lost, 1);
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u64 cgid = bpf_get_current_cgroup_id();
    struct watch_t *w = watched.lookup(&cgid);
    if (!w)
        return 0;
    submit_small(w, EV_FORK, args->child_pid, args->parent_pid, cgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 cgid = bpf_get_current_cgroup_id();
    struct watch_t *w = watched.lookup(&cgid);
    if (!w)
        return 0;
    u32 tid = args->pid;
    expect.delete(&tid);  // a thread that exits execs no more
    if (!args->group_dead)
        return 0;  // a thread, not the process
    submit_small(w, EV_EXIT, args->pid, 1, cgid);
    return 0;
}

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                              \
    do {                                                                                      \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                             \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                             \
    } while (0)
#define CROUNDS do { SIPROUND; SIPROUND; } while (0)
#define DROUNDS do { SIPROUND; SIPROUND; SIPROUND; SIPROUND; } while (0)

// bpf_loop callback: hash chunk `idx` of the region. Only R1 (the index) is used: the state
// lives in the per-CPU scratch map (see the header comment for why).
int gb_chunk(u64 idx) {
    int zero = 0;
    struct scratch_t *s = scratch.lookup(&zero);
    if (!s)
        return 1;
    u64 off = idx * CHUNK;
    if (off >= s->len)
        return 1;
    u64 rem = s->len - off;
    u32 n = rem > CHUNK ? CHUNK : (u32)rem;
    if (n > CHUNK || n == 0)
        return 1;
    if (bpf_probe_read_user(s->buf, n, (void *)(s->base + off)) != 0) {
        s->err = 1;
        return 1;
    }
    u64 v0 = s->v0, v1 = s->v1, v2 = s->v2, v3 = s->v3;
    u32 nw = n >> 3;
    u64 *w = (u64 *)s->buf;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < CHUNK / 8; i++) {
        if (i >= nw)
            break;
        u64 m = w[i];
        v3 ^= m;
        CROUNDS;
        v0 ^= m;
    }
    s->v0 = v0; s->v1 = v1; s->v2 = v2; s->v3 = v3;
    u32 t = n & 7;
    if (t) {
        // only the last chunk can end inside a word; buf has 8 spare bytes so w[nw] is in range
        if (nw > CHUNK / 8)
            return 1;
        s->tail = w[nw] & ((1ull << (t * 8)) - 1);
    }
    return 0;
}

static __always_inline u64 kread64(u64 addr, int *err) {
    u64 v = 0;
    if (bpf_probe_read_kernel(&v, sizeof(v), (void *)addr) != 0)
        *err = 1;
    return v;
}

static __always_inline u32 kread32(u64 addr, int *err) {
    u32 v = 0;
    if (bpf_probe_read_kernel(&v, sizeof(v), (void *)addr) != 0)
        *err = 1;
    return v;
}

// SipHash-2-4 of le64(alen) || le64(elen) || region. Returns 0 on success.
static __always_inline int hash_region(struct scratch_t *s, u64 k0, u64 k1, u64 base,
                                       u64 alen, u64 elen, u64 *out) {
    u64 v0 = 0x736f6d6570736575ull ^ k0;
    u64 v1 = 0x646f72616e646f6dull ^ k1;
    u64 v2 = 0x6c7967656e657261ull ^ k0;
    u64 v3 = 0x7465646279746573ull ^ k1;
    u64 m = alen;
    v3 ^= m; CROUNDS; v0 ^= m;
    m = elen;
    v3 ^= m; CROUNDS; v0 ^= m;
    u64 len = alen + elen;
    s->v0 = v0; s->v1 = v1; s->v2 = v2; s->v3 = v3;
    s->base = base;
    s->len = len;
    s->tail = 0;
    s->err = 0;
    u32 nchunks = (u32)((len + CHUNK - 1) / CHUNK);
    if (nchunks) {
        long r = bpf_loop(nchunks, gb_chunk, 0, 0);
        if (r != nchunks || s->err)
            return -1;
    }
    v0 = s->v0; v1 = s->v1; v2 = s->v2; v3 = s->v3;
    u64 b = ((16 + len) << 56) | s->tail;
    v3 ^= b; CROUNDS; v0 ^= b;
    v2 ^= 0xff;
    DROUNDS;
    *out = v0 ^ v1 ^ v2 ^ v3;
    return 0;
}

static __always_inline int verify(u32 old_pid, u64 bprm) {
    u64 t0 = bpf_ktime_get_ns();
    u64 cgid = bpf_get_current_cgroup_id();
    struct watch_t *w = watched.lookup(&cgid);
    if (!w)
        return 0;
    int zero = 0;
    struct exec_ev_t *ev = evbuf.lookup(&zero);
    struct scratch_t *s = scratch.lookup(&zero);
    struct sipkey_t *key = sipkey.lookup(&zero);
    struct offs_t *o = offsets.lookup(&zero);
    if (!ev || !s || !key || !o) {  // cannot happen (array maps); fail closed anyway
        bpf_send_signal(GB_SIGKILL);
        __sync_fetch_and_add(&w->lost, 1);
        return 0;
    }
    u64 wflags = w->flags;
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->type = EV_EXEC;
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->tgid = ev->pid;
    ev->old_pid = old_pid;
    ev->cgid = cgid;
    ev->ts = t0;
    ev->sig_ret = 1;
    ev->flags = (u32)wflags;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));

    struct expect_t *e = expect.lookup(&old_pid);
    if (e) {
        ev->have_exp = 1;
        ev->exp_kdev = e->kdev;
        ev->exp_ino = e->ino;
        ev->exp_hash = e->hash;
        if (e->cgid != cgid)
            ev->have_exp = 2;
        expect.delete(&old_pid);  // one expectation, one exec
    }

    int kerr = o->ready ? 0 : 1;
    u64 task = (u64)bpf_get_current_task();
    u64 mm = kerr ? 0 : kread64(task + o->task_mm, &kerr);
    u64 exe = mm ? kread64(mm + o->mm_exe_file, &kerr) : 0;
    u64 inode = exe ? kread64(exe + o->file_f_inode, &kerr) : 0;
    u64 sb = inode ? kread64(inode + o->inode_i_sb, &kerr) : 0;
    if (inode)
        ev->ino = kread64(inode + o->inode_i_ino, &kerr);
    if (sb)
        ev->kdev = kread32(sb + o->sb_s_dev, &kerr);
    u64 as = 0, ae = 0, es = 0, ee = 0;
    if (mm) {
        as = kread64(mm + o->mm_arg_start, &kerr);
        ae = kread64(mm + o->mm_arg_end, &kerr);
        es = kread64(mm + o->mm_env_start, &kerr);
        ee = kread64(mm + o->mm_env_end, &kerr);
    }
    ev->arg_len = ae - as;
    ev->env_len = ee - es;
    if (bprm && o->ready) {
        int ferr = 0;
        u64 fname = kread64(bprm + o->bprm_filename, &ferr);
        if (fname && !ferr)
            bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (void *)fname);
    }

    u32 reason = R_OK;
    if (kerr || !mm || !exe || !inode || !sb) {
        reason = R_KREAD;
    } else if (ae < as || ee < es || es != ae || ee - as > MAX_REGION) {
        reason = R_LAYOUT;
    } else if (!(wflags & W_TRACE)) {
        u64 h = 0;
        if (hash_region(s, key->k0, key->k1, as, ae - as, ee - es, &h) != 0)
            reason = R_UREAD;
        ev->hash = h;
    }
    if (reason == R_OK && !(wflags & W_TRACE)) {
        if (!e)
            reason = R_NO_EXPECT;
        else if (ev->have_exp == 2)
            reason = R_CGROUP;
        else if (ev->kdev != ev->exp_kdev || ev->ino != ev->exp_ino)
            reason = R_IDENTITY;
        else if (ev->hash != ev->exp_hash)
            reason = R_HASH;
    }
    ev->reason = reason;
    int kill = reason != R_OK && (wflags & W_KILL);
    if (kill) {
        ev->sig_ret = bpf_send_signal(GB_SIGKILL);
        __sync_fetch_and_add(&w->kills, 1);
    }
    u32 size = sizeof(*ev) - ARGS_PREFIX;
    if ((reason != R_OK || (wflags & W_TRACE)) && ae > as) {
        u32 n = ae - as > ARGS_PREFIX ? ARGS_PREFIX : (u32)(ae - as);
        if (n > ARGS_PREFIX)  // for the verifier
            n = ARGS_PREFIX;
        bpf_probe_read_user(ev->args, n, (void *)as);
        size = sizeof(*ev);
    }
    ev->ns = bpf_ktime_get_ns() - t0;  // the verdict: everything but the report itself
    __sync_fetch_and_add(&w->execs, 1);
    if (events.ringbuf_output(ev, size, wake_flags(reason != R_OK)) != 0) {
        __sync_fetch_and_add(&w->lost, 1);
        if (!kill && (wflags & W_KILL))
            bpf_send_signal(GB_SIGKILL);  // an exec nobody can audit never runs
    }
    __sync_fetch_and_add(&w->ns, bpf_ktime_get_ns() - t0);
    return 0;
}

// raw tracepoint: ctx->args = {struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm}
int gb_exec(struct bpf_raw_tracepoint_args *ctx) {
    return verify((u32)ctx->args[1], (u64)ctx->args[2]);
}
