// glassbreak exec tracer (bcc). Tracepoints sched_process_fork / _exec / _exit, filtered in the
// kernel by a map of watched cgroup ids. Reads ONLY tracepoint arguments and helpers: no kernel
// struct fields (the installed headers may not match the running kernel).
//
// At sched_process_exec of a watched cgroup the new image is HELD (bpf_send_signal(SIGSTOP),
// delivered before its first user instruction) unless its filename is in the fast-allow map for
// that cgroup. Userspace verifies /proc/PID/exe and /proc/PID/cmdline, then SIGCONT or SIGKILL.
// If an event cannot be reported (ring buffer full), the exec is killed (SIGKILL) and the loss is
// counted per cgroup: userspace sees it and kills the run (fail closed).

#define GB_SIGKILL 9
#define GB_SIGSTOP 19
#define FAST_PATH 128
#define FILENAME 256
#define WAKE_EVERY 64

enum { EV_FORK = 1, EV_EXEC = 2, EV_EXIT = 3 };

struct watch_t {
    u64 lost;      // events that could not be reported (fail closed)
    u64 hold;      // 1: hold execs not in the fast-allow map; 0: never hold (tracing only)
};

struct fast_key_t {
    u64 cgid;
    char path[FAST_PATH];
};

struct small_ev_t {          // fork / exit
    u32 type;
    u32 pid;                 // fork: child pid; exit: pid
    u32 tgid;                // current tgid (fork: the parent's)
    u32 aux;                 // fork: parent pid (tracepoint); exit: group_dead
    u64 cgid;
    u64 ts;
    char comm[16];
};

struct exec_ev_t {
    u32 type;
    u32 pid;                 // tracepoint pid (the tgid after exec)
    u32 tgid;
    u32 old_pid;
    u64 cgid;
    u64 ts;
    char comm[16];
    u32 held;                // 1: SIGSTOP sent, userspace must release or kill
    u32 truncated;
    // key layout reused for the fast-allow lookup: {cgid, path[FAST_PATH]}
    u64 kcgid;
    char filename[FILENAME];
};

BPF_HASH(watched, u64, struct watch_t, 4096);
BPF_HASH(fast_allow, struct fast_key_t, u8, 16384);
BPF_PERCPU_ARRAY(scratch, struct exec_ev_t, 1);
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

static __always_inline void lost(struct watch_t *w) {
    __sync_fetch_and_add(&w->lost, 1);
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
        lost(w);
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
    if (!args->group_dead)
        return 0;  // a thread, not the process
    u64 cgid = bpf_get_current_cgroup_id();
    struct watch_t *w = watched.lookup(&cgid);
    if (!w)
        return 0;
    submit_small(w, EV_EXIT, args->pid, 1, cgid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 cgid = bpf_get_current_cgroup_id();
    struct watch_t *w = watched.lookup(&cgid);
    if (!w)
        return 0;
    int zero = 0;
    struct exec_ev_t *ev = scratch.lookup(&zero);
    if (!ev) {
        bpf_send_signal(GB_SIGKILL);
        lost(w);
        return 0;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->type = EV_EXEC;
    ev->pid = args->pid;
    ev->old_pid = args->old_pid;
    ev->tgid = bpf_get_current_pid_tgid() >> 32;
    ev->cgid = cgid;
    ev->kcgid = cgid;
    ev->ts = bpf_ktime_get_ns();
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    unsigned short off = args->data_loc_filename & 0xFFFF;
    long n = bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (char *)args + off);
    ev->truncated = (n >= FILENAME || n < 0) ? 1 : 0;
    int fast = 0;
    if (n > 0 && n < FAST_PATH) {
        // the key is {kcgid, filename[0..FAST_PATH)}: bytes after the NUL are zero (memset)
        u8 *hit = fast_allow.lookup((struct fast_key_t *)&ev->kcgid);
        fast = hit ? 1 : 0;
    }
    int hold = (w->hold && !fast) ? 1 : 0;
    ev->held = hold;
    if (hold)
        bpf_send_signal(GB_SIGSTOP);  // queued before userspace can see the event
    if (events.ringbuf_output(ev, sizeof(*ev), wake_flags(hold)) != 0) {
        lost(w);
        bpf_send_signal(GB_SIGKILL);  // an exec nobody can verify never runs
    }
    return 0;
}
