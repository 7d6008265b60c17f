// glassbreak native exec-gate responder (our own code; built by scripts/setup.sh).
//
// Runs in a thread of the supervisor (ctypes releases the GIL) and owns the RECV side of one
// run's seccomp user-notification listener. For the common case only it answers CONTINUE
// itself: an execve (native arch) whose path, as the caller gave it, is one of the run's
// fast-allow entries (computed by Python: absolute, normalised, root-owned, trusted dir, not a
// script, not the loader, no argv rule, allowed whatever its argv) AND, resolved in the caller's
// own root (/proc/TID/root, openat2 RESOLVE_IN_ROOT), is the same file (device, inode, ctime)
// the entry was learned from; with argv/envp read completely (bounded by the kernel's own
// limits) and no loader/interpreter injection variable set. Before it answers it writes the
// exec's expectation into the in-kernel verifier's map (identity + keyed SipHash of the argv and
// envp bytes it read; native/bpf/exectrace.c kills an exec that differs), then queues what ran
// (record 'F', before the answer, so it is there before the exec's trace event) in a buffer that
// Python takes (gb_take) whenever it wakes up anyway: no Python wake-up per exec. When the
// buffer is full, execs are forwarded (and one 'W' message wakes Python to take the buffer).
// Everything else is forwarded unchanged (message 'N': the raw notification) and Python judges
// and answers it on its own copy of the listener fd. Any doubt => forward.
//
// Fail closed: an unexpected error ends the loop with record 'X' (Python kills the run); if the
// thread dies, so does the supervisor process. Without a verifier (gb_set_verify not called)
// nothing is continued here.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "siphash.h"

// the kernel's own cap on argv + envp (strings and pointers): 3/4 of _STK_LIM (fs/exec.c)
#define GB_ARG_MAX (6 << 20)
#define GB_FAST_PATH 128
#define GB_WIN 16384
#define GB_REC_MAX 65536
#define GB_QUEUE (256 * 1024)

#if defined(__x86_64__)
#define GB_ARCH AUDIT_ARCH_X86_64
#define GB_NR_EXECVE 59
#elif defined(__aarch64__)
#define GB_ARCH AUDIT_ARCH_AARCH64
#define GB_NR_EXECVE 221
#else
#error "unsupported architecture"
#endif

struct gb_hdr {  // 24 bytes, little endian: type, pid, notification id, argc
    char type;
    char pad[3];
    uint32_t pid;
    uint64_t id;
    uint32_t argc;
    uint32_t err;
};
// record 'F' = gb_hdr, then u64 st_dev, u64 st_ino (the file resolved in the caller's root),
// then the path and argv[0..argc), each NUL-terminated

struct gb_entry {  // one fast-allow entry: a path and the file it named when it was learned
    char *path;
    uint64_t dev, ino;  // stat() encoding
    int64_t ctime_ns;
};

struct gb_buf {  // a growable byte buffer (bounded by GB_ARG_MAX)
    char *p;
    size_t len, cap;
};

struct gb_resp {
    pthread_mutex_t mu;
    char *blob;            // the entries' paths (owned)
    struct gb_entry *ent;  // sorted by path
    size_t n;
    int listener;
    int out;
    int map_fd;            // the verifier's expectation map; -1: continue nothing here
    uint8_t key[16];       // its SipHash key
    uint64_t cgid;
    uint64_t fast;
    uint64_t missing;      // absolute exec paths answered ENOENT here (answer_missing)
    uint64_t forwarded;
    uint64_t busy_ns;      // time from a notification's receipt to its answer or forward
    char *queue;           // [u32 length][record] ... taken by gb_take (under mu)
    size_t qlen;
    int wake_sent;         // a 'W' is on its way: do not send another
    struct gb_buf a, e;    // the argv and envp bytes of the exec being judged
};

struct win {  // one window of the caller's memory, to serve several strings with one pread
    int fd;
    uint64_t base;
    size_t len;
    char buf[GB_WIN];
};

static int cmp_ent(const void *a, const void *b) {
    return strcmp(((const struct gb_entry *)a)->path, ((const struct gb_entry *)b)->path);
}

struct gb_resp *gb_new(int listener, int out) {
    struct gb_resp *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->queue = malloc(GB_QUEUE);
    if (!r->queue) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->listener = listener;
    r->out = out;
    r->map_fd = -1;
    int sz = 1 << 20;
    setsockopt(out, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    return r;
}

// The in-kernel verifier: its expectation map fd, its key, the run's cgroup id. Until this is
// called nothing is continued here (every exec goes to Python).
int gb_set_verify(struct gb_resp *r, int map_fd, const uint8_t *key, uint64_t cgid) {
    pthread_mutex_lock(&r->mu);
    r->map_fd = map_fd;
    memcpy(r->key, key, 16);
    r->cgid = cgid;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

// Replace the fast-allow set: `buf` holds `len` bytes of records "DEV INO CTIME_NS PATH\0"
// (decimal numbers, one space each; the path is the rest up to the NUL).
int gb_set_allow(struct gb_resp *r, const char *buf, size_t len) {
    char *blob = NULL;
    struct gb_entry *ent = NULL;
    size_t n = 0;
    if (len) {
        blob = malloc(len + 1);
        if (!blob)
            return -ENOMEM;
        memcpy(blob, buf, len);
        blob[len] = 0;
        for (size_t i = 0; i < len; i++)
            n += blob[i] == 0;
        ent = calloc(n ? n : 1, sizeof(*ent));
        if (!ent) {
            free(blob);
            return -ENOMEM;
        }
        size_t k = 0;
        for (size_t i = 0; i < len && k < n; i += strlen(blob + i) + 1) {
            char *s = blob + i, *end;
            struct gb_entry *x = &ent[k];
            x->dev = strtoull(s, &end, 10);
            if (*end != ' ')
                continue;
            x->ino = strtoull(end + 1, &end, 10);
            if (*end != ' ')
                continue;
            x->ctime_ns = strtoll(end + 1, &end, 10);
            if (*end != ' ' || end[1] != '/')
                continue;
            x->path = end + 1;
            k++;
        }
        n = k;
        qsort(ent, n, sizeof(*ent), cmp_ent);
    }
    pthread_mutex_lock(&r->mu);
    free(r->blob);
    free(r->ent);
    r->blob = blob;
    r->ent = ent;
    r->n = n;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

uint64_t gb_stat(struct gb_resp *r, int which) {
    return which == 0 ? r->fast : which == 1 ? r->forwarded : which == 3 ? r->missing
                                                                         : r->busy_ns;
}

// Move the queued records ([u32 length][record]...) into buf (cap >= GB_QUEUE): their bytes.
size_t gb_take(struct gb_resp *r, char *buf, size_t cap) {
    pthread_mutex_lock(&r->mu);
    size_t n = r->qlen <= cap ? r->qlen : 0;
    if (n) {
        memcpy(buf, r->queue, n);
        r->qlen = 0;
    }
    r->wake_sent = 0;
    pthread_mutex_unlock(&r->mu);
    return n;
}

size_t gb_queue_size(void) {
    return GB_QUEUE;
}

void gb_free(struct gb_resp *r) {
    if (!r)
        return;
    free(r->queue);
    free(r->blob);
    free(r->ent);
    free(r->a.p);
    free(r->e.p);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

// The entry for `path` (copied into *out), or 0.
static int lookup(struct gb_resp *r, const char *path, struct gb_entry *out) {
    struct gb_entry key = {.path = (char *)path};
    pthread_mutex_lock(&r->mu);
    struct gb_entry *hit = r->n ? bsearch(&key, r->ent, r->n, sizeof(*r->ent), cmp_ent) : NULL;
    if (hit)
        *out = *hit;  // path points into blob: compared only, never kept past the lock
    pthread_mutex_unlock(&r->mu);
    return hit != NULL;
}

// A NUL-terminated string at addr in the caller's memory; NULL when it does not fit the window
// (then the caller forwards to Python, which reads it with no such limit).
static const char *cstr(struct win *w, uint64_t addr, size_t *len_out) {
    if (addr == 0)
        return NULL;
    for (int attempt = 0; attempt < 3; attempt++) {
        if (addr >= w->base && addr < w->base + w->len) {
            size_t off = addr - w->base;
            const char *s = w->buf + off;
            const char *nul = memchr(s, 0, w->len - off);
            if (nul) {
                *len_out = (size_t)(nul - s);
                return s;
            }
            if (attempt == 2)
                return NULL;
        }
        // first to the end of addr's page only (each page read costs a page walk), then a wider
        // window for a string that crosses it
        size_t want = attempt == 1 ? GB_WIN : 4096 - (size_t)(addr & 4095);
        ssize_t got = pread(w->fd, w->buf, want, (off_t)addr);
        if (got <= 0) {
            w->len = 0;
            return NULL;
        }
        w->base = addr;
        w->len = (size_t)got;
    }
    return NULL;
}

static int append(char *rec, size_t *used, const char *s, size_t n) {
    if (*used + n + 1 > GB_REC_MAX)
        return -1;
    memcpy(rec + *used, s, n);
    rec[*used + n] = 0;
    *used += n + 1;
    return 0;
}

static int buf_put(struct gb_buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > GB_ARG_MAX)
        return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->p[b->len + n] = 0;
    b->len += n + 1;
    return 0;
}

static void buf_trim(struct gb_buf *b) {  // memory per exec stays bounded, and small at rest
    b->len = 0;
    if (b->cap > (256 << 10)) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

static const char *const INJECT[] = {"LD_PRELOAD=", "LD_AUDIT=", "LD_LIBRARY_PATH=",
                                     "BASH_ENV=", "ENV="};

// Read a char*[] (argv or envp) completely into `into` (the bytes the kernel will copy) and,
// when rec != NULL, into the record. Returns the count, or -1 to forward (unreadable, a string
// longer than the window, past the kernel's own size limit, an injection variable with a
// value, a record that does not fit).
static long strings(struct win *w, uint64_t arr, struct gb_buf *into, size_t *ptr_bytes,
                    char *rec, size_t *used, int env) {
    if (arr == 0)
        return 0;
    uint64_t ptrs[256];
    long count = 0;
    for (;;) {
        ssize_t got = pread(w->fd, ptrs, sizeof(ptrs), (off_t)(arr + 8 * (uint64_t)count));
        if (got < 8)
            return -1;
        size_t k = (size_t)got / 8;
        for (size_t i = 0; i < k; i++) {
            if (ptrs[i] == 0)
                return count;
            count++;
            *ptr_bytes += 8;
            size_t n;
            const char *s = cstr(w, ptrs[i], &n);
            if (!s || buf_put(into, s, n) != 0 || into->len + *ptr_bytes > GB_ARG_MAX)
                return -1;
            if (env) {
                for (size_t j = 0; j < sizeof(INJECT) / sizeof(INJECT[0]); j++) {
                    size_t m = strlen(INJECT[j]);
                    if (n > m && memcmp(s, INJECT[j], m) == 0)
                        return -1;  // a non-empty value: Python blocks and records it
                }
            }
            if (rec && append(rec, used, s, n) != 0)
                return -1;
        }
    }
}

static int send_all(struct gb_resp *r, const void *buf, size_t len, int stop_fd) {
    for (;;) {
        ssize_t n = send(r->out, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == (ssize_t)len)
            return 0;
        if (n >= 0)
            return -EMSGSIZE;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        struct pollfd p[2] = {{r->out, POLLOUT, 0}, {stop_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            return -errno;
        if (p[1].revents)
            return -ECANCELED;
    }
}

static int forward(struct gb_resp *r, struct seccomp_notif *n, int stop_fd) {
    char msg[sizeof(struct gb_hdr) + sizeof(struct seccomp_data)];
    struct gb_hdr h = {.type = 'N', .pid = n->pid, .id = n->id};
    memcpy(msg, &h, sizeof(h));
    memcpy(msg + sizeof(h), &n->data, sizeof(n->data));
    r->forwarded++;
    return send_all(r, msg, sizeof(msg), stop_fd);
}

struct gb_open_how {
    uint64_t flags, mode, resolve;
};
#define GB_RESOLVE_NO_MAGICLINKS 0x02
#define GB_RESOLVE_IN_ROOT 0x10
#ifndef SYS_openat2
#define SYS_openat2 437
#endif

// Does `path` (absolute), resolved as the caller would (its root: chroot, mount namespace),
// name the file of entry `x`? 1 yes, 0 no (or unsure).
// `path` opened O_PATH as task `tid` sees it (in its root, no magic links): an fd, or -1 with
// errno from openat2 (EBADF: the task's root could not be opened).
static int open_in_root(uint32_t tid, const char *path) {
    char p[64];
    snprintf(p, sizeof(p), "/proc/%u/root", tid);
    int root = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) {
        errno = EBADF;
        return -1;
    }
    struct gb_open_how how = {.flags = O_PATH | O_CLOEXEC,
                              .resolve = GB_RESOLVE_IN_ROOT | GB_RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, root, path, &how, sizeof(how));
    int saved = errno;
    close(root);
    errno = saved;
    return fd;
}

static int same_file(uint32_t tid, const char *path, const struct gb_entry *x) {
    int fd = open_in_root(tid, path);
    if (fd < 0)
        return 0;
    struct stat st;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_dev == x->dev &&
             (uint64_t)st.st_ino == x->ino &&
             (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec == x->ctime_ns;
    close(fd);
    return ok;
}

struct gb_expect {  // = struct expect_t in native/bpf/exectrace.c
    uint64_t kdev, ino, hash, cgid;
};

static int map_op(int cmd, int map_fd, uint32_t key, const struct gb_expect *val) {
    union bpf_attr a;
    memset(&a, 0, sizeof(a));
    a.map_fd = (uint32_t)map_fd;
    a.key = (uint64_t)(uintptr_t)&key;
    a.value = (uint64_t)(uintptr_t)val;
    a.flags = BPF_ANY;
    return (int)syscall(SYS_bpf, cmd, &a, sizeof(a));
}

// An absolute exec path that is not fast-allowed and does not exist in the caller's root:
// answered ENOENT here, as the kernel would (execvp walking PATH tries every directory before
// the one that has the program: `make` makes ~750 such attempts a build). Nothing runs, so
// there is nothing to judge or record; anything else (the file exists, a magic link, another
// error) goes to Python. 1: answered; 0: forward; -1: error (*err).
static int answer_missing(struct gb_resp *r, struct seccomp_notif *n, const char *path,
                          int *err) {
    int fd = open_in_root(n->pid, path);
    int missing = fd < 0 && errno == ENOENT;
    if (fd >= 0)
        close(fd);
    if (!missing)
        return 0;
    struct seccomp_notif_resp resp = {.id = n->id, .error = -ENOENT, .flags = 0};
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && errno != ENOENT) {
        *err = errno;  // (ENOENT: the caller is gone or was interrupted)
        return -1;
    }
    r->missing++;
    return 1;
}

// 1: answered CONTINUE here; 0: forward to Python; -1: error (*err).
static int try_fast(struct gb_resp *r, struct seccomp_notif *n, struct win *w, char *rec,
                    int stop_fd, int *err) {
    if (n->data.arch != GB_ARCH || n->data.nr != GB_NR_EXECVE || r->n == 0 || r->map_fd < 0)
        return 0;
    char memp[64];
    snprintf(memp, sizeof(memp), "/proc/%u/mem", n->pid);
    w->fd = open(memp, O_RDONLY | O_CLOEXEC);
    w->len = 0;
    if (w->fd < 0)
        return 0;
    int ok = 0, miss = 0;
    size_t used = sizeof(struct gb_hdr) + 16, plen, ptr_bytes = 0;
    uint64_t id = n->id;
    struct gb_entry x;
    r->a.len = r->e.len = 0;
    // the pid still belongs to the caller (not reused) while we read its memory
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0)
        goto out;
    const char *path = cstr(w, n->data.args[0], &plen);
    if (!path || plen == 0 || plen >= GB_FAST_PATH - 1 || path[0] != '/')
        goto out;
    char pbuf[GB_FAST_PATH];
    memcpy(pbuf, path, plen + 1);
    if (!lookup(r, pbuf, &x)) {
        miss = 1;  // not a fast-allowed path: maybe one execvp tries on its way along PATH
        goto out;
    }
    if (append(rec, &used, pbuf, plen) != 0)
        goto out;
    long argc = strings(w, n->data.args[1], &r->a, &ptr_bytes, rec, &used, 0);
    if (argc < 0 || strings(w, n->data.args[2], &r->e, &ptr_bytes, NULL, NULL, 1) < 0)
        goto out;
    // the strings were read: are they still the caller's (not a reused pid)?
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0)
        goto out;
    if (!same_file(n->pid, pbuf, &x))
        goto out;  // another file by that name in the caller's root (chroot...): Python judges
    if (argc == 0 && buf_put(&r->a, "", 0) != 0)  // the kernel turns argv = {} into {""}
        goto out;
    ok = 1;
    struct gb_hdr h = {.type = 'F', .pid = n->pid, .id = n->id, .argc = (uint32_t)argc};
    memcpy(rec, &h, sizeof(h));
    memcpy(rec + sizeof(h), &x.dev, 8);
    memcpy(rec + sizeof(h) + 8, &x.ino, 8);
out:
    close(w->fd);
    if (!ok) {
        buf_trim(&r->a);
        buf_trim(&r->e);
        return miss ? answer_missing(r, n, pbuf, err) : 0;
    }
    struct gb_expect exp = {
        .kdev = ((uint64_t)major(x.dev) << 20) | minor(x.dev),
        .ino = x.ino,
        .hash = gb_exec_hash(r->key, (const uint8_t *)r->a.p, r->a.len,
                             (const uint8_t *)r->e.p, r->e.len),
        .cgid = r->cgid,
    };
    buf_trim(&r->a);
    buf_trim(&r->e);
    int wake = 0;
    pthread_mutex_lock(&r->mu);
    if (r->qlen + 4 + used > GB_QUEUE) {
        ok = 0;  // Python is behind: forward this one, and make sure Python wakes up
        wake = !r->wake_sent;
        r->wake_sent = 1;
    }
    pthread_mutex_unlock(&r->mu);
    if (!ok) {
        if (wake) {
            struct gb_hdr hw = {.type = 'W'};
            int rc = send_all(r, &hw, sizeof(hw), stop_fd);
            if (rc != 0) {
                *err = -rc;
                return -1;
            }
        }
        return 0;
    }
    // the expectation first: the exec must not find the verifier without it
    if (map_op(BPF_MAP_UPDATE_ELEM, r->map_fd, n->pid, &exp) != 0)
        return 0;  // (the map is an LRU: this does not happen) Python tries again
    pthread_mutex_lock(&r->mu);
    uint32_t len = (uint32_t)used;
    memcpy(r->queue + r->qlen, &len, 4);
    memcpy(r->queue + r->qlen + 4, rec, used);
    r->qlen += 4 + used;
    pthread_mutex_unlock(&r->mu);
    struct seccomp_notif_resp resp = {.id = n->id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0) {
        if (errno != ENOENT) {
            *err = errno;
            return -1;
        }
        map_op(BPF_MAP_DELETE_ELEM, r->map_fd, n->pid, NULL);  // the caller is gone
    }
    r->fast++;
    return 1;
}

int gb_serve(struct gb_resp *r, int stop_fd) {
    struct seccomp_notif_sizes sizes = {0};
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0)
        return -errno;
    size_t nsz = sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif
                                                                    : sizeof(struct seccomp_notif);
    struct seccomp_notif *n = malloc(nsz);
    struct win *w = malloc(sizeof(*w));
    char *rec = malloc(GB_REC_MAX);
    int err = 0;
    char kind = 'E';
    if (!n || !w || !rec) {
        err = ENOMEM;
        goto done;
    }
    w->base = 0;
    w->len = 0;
    // (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP was measured here: no better on 2 CPUs, worse median)
    for (;;) {
        struct pollfd p[2] = {{r->listener, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        if (p[1].revents)
            goto quiet;  // Python asked us to stop: it no longer reads records
        if (p[0].revents & POLLIN) {
            memset(n, 0, nsz);
            if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_RECV, n) != 0) {
                if (errno == ENOENT || errno == EINTR || errno == EAGAIN)
                    continue;
                err = errno;
                break;
            }
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            int rc = try_fast(r, n, w, rec, stop_fd, &err);
            if (rc < 0)
                break;
            if (rc == 0) {
                int f = forward(r, n, stop_fd);
                if (f != 0) {
                    err = -f;
                    break;
                }
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            r->busy_ns += (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000LL +
                                     (t1.tv_nsec - t0.tv_nsec));
        } else if (p[0].revents & (POLLHUP | POLLERR | POLLNVAL)) {
            break;  // no process uses the filter any more
        }
    }
done:
    if (err == ECANCELED)
        goto quiet;
    if (err)
        kind = 'X';
    {
        struct gb_hdr h = {.type = kind, .err = (uint32_t)err};
        send(r->out, &h, sizeof(h), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
quiet:
    free(n);
    free(w);
    free(rec);
    return -err;
}
