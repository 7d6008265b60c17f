/* glassbreak-launch: the sandboxed child's steps, in C (issue 5 warm path). Our own code; built by
 * scripts/setup.sh. sandbox/kernel/child.py posix_spawn()s it (vfork: no copy of the daemon's large
 * address space, no Python in the child) with an EMPTY environment and exactly these fds:
 *   0, 1, 2  the run's stdio (already in place)
 *   3        the report socket (SOCK_SEQPACKET; made close-on-exec here: EOF = exec'd)
 *   4        the spec (a sealed memfd, format below)
 *   5        the run's cgroup directory (or absent)
 *   6, 7...  the run's Landlock rulesets, one per layer (or absent), kept across the close step
 * With a cgroup, it first clone3()s the real child straight INTO the cgroup, as a sibling
 * (CLONE_PARENT: the caller's child, its PDEATHSIG tied to the caller's thread), and exits: no
 * write to cgroup.procs, whose migration lock costs a synchronize_rcu (6-25 ms) when runs are
 * spaced out. The child first reports (PID, its pid). Then the child does what
 * sandbox/kernel/child.py's Python path does, in the same order, with the same reports ((step, errno)
 * as two native ints; the OK report carries the seccomp listener):
 *   PDEATHSIG, parent check, (cgroup), (stdio), chdir, privileges (capabilities dropped from
 *   the bounding set and the ambient set cleared while root, setgroups/setgid/setuid, the
 *   capabilities dropped from every set of a process that stays root, PDEATHSIG again),
 *   setsid, default signals + empty mask, close other fds (not the rulesets), no_new_privs +
 *   child subreaper, landlock_restrict_self() per ruleset (closed after), seccomp filters
 *   (stacked extras first; the main one with NEW_LISTENER when notify), send the listener,
 *   execve.
 *
 * Spec: "GBL2\0" then NUL-terminated fields: parent pid, notify (0/1), new_session (0/1),
 * uid ("" = keep), gid ("" = keep), groups ("-" = keep, else comma separated, may be empty),
 * drop_caps (a decimal 64-bit capability mask), nlandlock, then each ruleset's restrict_self
 * flags, cwd, executable, argc, argv..., envc, "K=V"..., nfilters (the last one is the main
 * filter), then per filter: its length in bytes as a field, followed by the raw bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* step numbers: sandbox.kernel.child.STEPS */
enum { S_PDEATH, S_PARENT, S_CGROUP, S_STDIO, S_CHDIR, S_PRIVS, S_SIGNALS, S_CLOSE, S_NNP,
       S_LANDLOCK, S_SECCOMP, S_SEND, S_EXEC };
#define OK (-1)
#define PID_REPORT (-2)
#define REPORT_FD 3
#define SPEC_FD 4
#define CGROUP_FD 5
#define LANDLOCK_FD 6
#define MAX_LANDLOCK 8
#define SYS_LANDLOCK_RESTRICT_SELF 446 /* the generic number (x86_64, aarch64) */
#define PR_CAPBSET_READ_ 23
#define PR_CAPBSET_DROP_ 24
#define PR_CAP_AMBIENT_ 47
#define PR_CAP_AMBIENT_CLEAR_ALL_ 4
#define CAP_VERSION_3 0x20080522
#define MAX_FILTERS 8
#define MAX_GROUPS 65536

static void report(int step, int err) {
    int msg[2] = {step, err};
    (void)send(REPORT_FD, msg, sizeof msg, MSG_NOSIGNAL);
}

static void fail(int step, int err) {
    report(step, err);
    _exit(step == S_EXEC ? (err == ENOENT ? 127 : 126) : 125);
}

typedef struct {
    char *p, *end;
} cur_t;

static char *field(cur_t *c) {
    char *s = c->p;
    char *z = memchr(s, 0, (size_t)(c->end - s));
    if (!z) fail(S_PDEATH, EINVAL);
    c->p = z + 1;
    return s;
}

static long num(cur_t *c) {
    char *s = field(c), *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (*s == 0 || *e || errno) fail(S_PDEATH, EINVAL);
    return v;
}

/* the capabilities in `mask`: from the bounding set and the ambient set (needs CAP_SETPCAP: while
 * still root, before any setuid; EPERM: a supervisor without it cannot shrink the bounding set,
 * the sets are still cleared below and no_new_privs keeps an exec from regaining anything) */
static void drop_bounding(unsigned long long mask) {
    for (int c = 0; c < 64; c++)
        if (mask >> c & 1ULL && prctl(PR_CAPBSET_READ_, c, 0, 0, 0) == 1)
            if (prctl(PR_CAPBSET_DROP_, c, 0, 0, 0) != 0 && errno != EPERM) fail(S_PRIVS, errno);
    if (prctl(PR_CAP_AMBIENT_, PR_CAP_AMBIENT_CLEAR_ALL_, 0, 0, 0) != 0) fail(S_PRIVS, errno);
}

/* ... and from the effective, permitted and inheritable sets of a process that stays root */
static void drop_sets(unsigned long long mask) {
    struct { unsigned version; int pid; } hdr = {CAP_VERSION_3, 0};
    struct { unsigned eff, perm, inh; } data[2];
    if (syscall(SYS_capget, &hdr, data) != 0) fail(S_PRIVS, errno);
    for (int i = 0; i < 2; i++) {
        unsigned keep = (unsigned)(~mask >> (32 * i));
        data[i].eff &= keep;
        data[i].perm &= keep;
        data[i].inh &= keep;
    }
    if (syscall(SYS_capset, &hdr, data) != 0) fail(S_PRIVS, errno);
}

int main(void) {
    struct stat st;
    if (fstat(SPEC_FD, &st) < 0 || st.st_size <= 5) fail(S_PDEATH, EINVAL);
    char *spec = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, SPEC_FD, 0);
    if (spec == MAP_FAILED) fail(S_PDEATH, errno);
    cur_t c = {spec, spec + st.st_size};
    if (strcmp(field(&c), "GBL2")) fail(S_PDEATH, EINVAL);
    pid_t parent = (pid_t)num(&c);
    int notify = (int)num(&c), new_session = (int)num(&c);
    char *uid_s = field(&c), *gid_s = field(&c), *groups_s = field(&c);
    char *caps_s = field(&c), *caps_end;
    errno = 0;
    unsigned long long drop_caps = strtoull(caps_s, &caps_end, 10);
    if (!*caps_s || *caps_end || errno) fail(S_PDEATH, EINVAL);
    long nl = num(&c);
    if (nl < 0 || nl > MAX_LANDLOCK) fail(S_PDEATH, EINVAL);
    unsigned ll_flags[MAX_LANDLOCK];
    for (long i = 0; i < nl; i++) ll_flags[i] = (unsigned)num(&c);
    char *cwd = field(&c), *exe = field(&c);
    long argc = num(&c);
    if (argc < 1 || argc > 1 << 20) fail(S_PDEATH, EINVAL);
    char **argv = calloc((size_t)argc + 1, sizeof *argv);
    if (!argv) fail(S_PDEATH, ENOMEM);
    for (long i = 0; i < argc; i++) argv[i] = field(&c);
    long envc = num(&c);
    if (envc < 0 || envc > 1 << 20) fail(S_PDEATH, EINVAL);
    char **envp = calloc((size_t)envc + 1, sizeof *envp);
    if (!envp) fail(S_PDEATH, ENOMEM);
    for (long i = 0; i < envc; i++) envp[i] = field(&c);
    long nf = num(&c);
    if (nf < 0 || nf > MAX_FILTERS) fail(S_PDEATH, EINVAL);
    struct sock_fprog progs[MAX_FILTERS];
    for (long i = 0; i < nf; i++) {
        long len = num(&c);
        if (len <= 0 || len % 8 || len / 8 > 4096 || len > c.end - c.p) fail(S_PDEATH, EINVAL);
        progs[i].len = (unsigned short)(len / 8);
        progs[i].filter = (struct sock_filter *)c.p;  /* mmap is page aligned; lengths %8 */
        c.p += len;
    }
    if (notify && nf == 0) fail(S_SECCOMP, EINVAL);

    /* 3 (first) the run's cgroup: born in it */
    if (fcntl(CGROUP_FD, F_GETFD) >= 0) {
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_PARENT | CLONE_INTO_CGROUP;
        ca.cgroup = CGROUP_FD;
        long pid = syscall(SYS_clone3, &ca, sizeof ca);
        if (pid < 0 && (errno == ENOSYS || errno == E2BIG)) { /* old kernel: migrate */
            int procs = openat(CGROUP_FD, "cgroup.procs", O_WRONLY | O_CLOEXEC);
            if (procs < 0 || write(procs, "0", 1) != 1) fail(S_CGROUP, errno);
            close(procs);
        } else if (pid < 0) {
            fail(S_CGROUP, errno);
        } else if (pid > 0) {
            _exit(0); /* the launcher's part is done; the caller reaps it */
        }
        close(CGROUP_FD);
    }
    report(PID_REPORT, (int)getpid());
    /* 1 PDEATHSIG, 2 parent still there (the caller, also for the clone: CLONE_PARENT) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(S_PDEATH, errno);
    if (getppid() != parent) _exit(125);
    /* 4 stdio: in place (posix_spawn file actions) */
    if (chdir(cwd) != 0) fail(S_CHDIR, errno);
    /* 5 privileges */
    int was_root = geteuid() == 0;
    if (drop_caps && was_root) drop_bounding(drop_caps);
    if (*uid_s || *gid_s || strcmp(groups_s, "-")) {
        if (strcmp(groups_s, "-") || *uid_s) {
            gid_t *gl = calloc(MAX_GROUPS, sizeof *gl);
            size_t ng = 0;
            if (!gl) fail(S_PRIVS, ENOMEM);
            if (strcmp(groups_s, "-")) {
                for (char *t = strtok(groups_s, ","); t && ng < MAX_GROUPS;
                     t = strtok(NULL, ","))
                    gl[ng++] = (gid_t)strtoul(t, NULL, 10);
            } else if (*gid_s) {
                gl[ng++] = (gid_t)strtoul(gid_s, NULL, 10);
            }
            if (setgroups(ng, gl) != 0) fail(S_PRIVS, errno);
        }
        if (*gid_s && setgid((gid_t)strtoul(gid_s, NULL, 10)) != 0) fail(S_PRIVS, errno);
        if (*uid_s && setuid((uid_t)strtoul(uid_s, NULL, 10)) != 0) fail(S_PRIVS, errno);
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(S_PRIVS, errno);
        if (getppid() != parent) _exit(125);
    }
    if (drop_caps && was_root && geteuid() == 0) drop_sets(drop_caps);
    if (new_session) setsid();
    /* 6 default dispositions, empty mask */
    /* the raw syscall: glibc refuses its internal signals (32, 33), which posix_spawn leaves
     * ignored and an ignored disposition survives execve */
    struct { void *handler; unsigned long flags; void *restorer; unsigned long mask; } dfl;
    memset(&dfl, 0, sizeof dfl);
    for (int s = 1; s < 65; s++)
        if (s != SIGKILL && s != SIGSTOP)
            if (syscall(SYS_rt_sigaction, s, &dfl, NULL, sizeof dfl.mask) != 0)
                fail(S_SIGNALS, errno);
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) fail(S_SIGNALS, errno);
    /* 7 only 0-2, the report socket (close-on-exec) and the rulesets stay open; the spec stays
     * mapped */
    if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) != 0) fail(S_CLOSE, errno);
    for (long i = 0; i < nl; i++)
        if (fcntl(LANDLOCK_FD + (int)i, F_SETFD, FD_CLOEXEC) != 0) fail(S_CLOSE, errno);
    unsigned first_free = nl ? (unsigned)(LANDLOCK_FD + nl) : SPEC_FD;
    if (nl && syscall(SYS_close_range, SPEC_FD, LANDLOCK_FD - 1, 0) != 0) {
        for (int fd = SPEC_FD; fd < LANDLOCK_FD; fd++) close(fd);
    }
    if (syscall(SYS_close_range, first_free, ~0U, 0) != 0) {
        for (int fd = (int)first_free; fd < 65536; fd++) close(fd);
    }
    /* 8 no_new_privs; the run's top process is the subreaper of its tree (see child.py) */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        fail(S_NNP, errno);
    /* 9 Landlock: the static layer, then the run's layer (each a new, narrower domain) */
    for (long i = 0; i < nl; i++) {
        if (syscall(SYS_LANDLOCK_RESTRICT_SELF, LANDLOCK_FD + (int)i, ll_flags[i]) != 0)
            fail(S_LANDLOCK, errno);
        close(LANDLOCK_FD + (int)i);
    }
    /* 10 seccomp: stacked extras first, then the main filter */
    int lfd = -1;
    for (long i = 0; i < nf; i++) {
        int main_filter = i == nf - 1;
        unsigned flags = main_filter && notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0;
        long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &progs[i]);
        if (r < 0) fail(S_SECCOMP, errno);
        if (main_filter && notify) lfd = (int)r;
    }
    /* 11 the listener goes to the parent; the program never holds it */
    int ok[2] = {OK, 0};
    struct iovec iov = {.iov_base = ok, .iov_len = sizeof ok};
    char cbuf[CMSG_SPACE(sizeof(int))];
    memset(cbuf, 0, sizeof cbuf);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (lfd >= 0) {
        m.msg_control = cbuf;
        m.msg_controllen = sizeof cbuf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &lfd, sizeof(int));
    }
    if (sendmsg(REPORT_FD, &m, MSG_NOSIGNAL) < 0) fail(S_SEND, errno);
    if (lfd >= 0) close(lfd);
    /* 12 exec */
    execve(exe, argv, envp);
    fail(S_EXEC, errno);
    return 125;
}
