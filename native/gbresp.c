// glassbreak native exec-gate responder (our own code; built by scripts/setup.sh).
//
// Runs in a thread of the supervisor (ctypes releases the GIL) and owns the RECV side of one
// run's seccomp user-notification listener. For the common case only it answers CONTINUE
// itself: an execve (native arch) whose path, as the caller gave it, is byte-for-byte one of the
// run's fast-allow paths (computed by Python: absolute, normalised, root-owned, trusted dir, not a
// script, not the loader, no argv rule, allowed whatever its argv), with argv/envp inside the
// bounds and no loader/interpreter injection variable set. It then queues what ran (record
// 'F', queued BEFORE the answer, so it is there before the exec's trace event) in a buffer that
// Python takes (gb_take) whenever it wakes up anyway: no Python wake-up per exec. When the buffer
// is full, execs are forwarded (and one 'W' message wakes Python to take the buffer).
// Everything else is forwarded unchanged (message 'N': the raw notification) and Python judges
// and answers it on its own copy of the listener fd. Any doubt => forward.
//
// Fail closed: an unexpected error ends the loop with record 'X' (Python kills the run); if the
// thread dies, so does the supervisor process. The eBPF hold still verifies the image that runs.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define GB_MAX_ARGS 4096
#define GB_MAX_BYTES (1 << 20)
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

struct gb_resp {
    pthread_mutex_t mu;
    char *allow;        // NUL-separated sorted paths (owned)
    char **paths;       // pointers into allow
    size_t n;
    int listener;
    int out;
    uint64_t fast;
    uint64_t forwarded;
    uint64_t busy_ns;   // time from a notification's receipt to its answer or forward
    char *queue;        // [u32 length][record] ... taken by gb_take (under mu)
    size_t qlen;
    int wake_sent;      // a 'W' is on its way: do not send another
};

struct win {  // one window of the caller's memory, to serve several strings with one pread
    int fd;
    uint64_t base;
    size_t len;
    char buf[GB_WIN];
};

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
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
    int sz = 1 << 20;
    setsockopt(out, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    return r;
}

// Replace the fast-allow set: `buf` holds `len` bytes of NUL-terminated paths.
int gb_set_allow(struct gb_resp *r, const char *buf, size_t len) {
    char *copy = NULL;
    char **paths = NULL;
    size_t n = 0;
    if (len) {
        copy = malloc(len + 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, buf, len);
        copy[len] = 0;
        for (size_t i = 0; i < len; i++)
            n += copy[i] == 0;
        paths = calloc(n ? n : 1, sizeof(char *));
        if (!paths) {
            free(copy);
            return -ENOMEM;
        }
        size_t k = 0;
        for (size_t i = 0; i < len && k < n; i += strlen(copy + i) + 1)
            paths[k++] = copy + i;
        n = k;
        qsort(paths, n, sizeof(char *), cmp);
    }
    pthread_mutex_lock(&r->mu);
    free(r->allow);
    free(r->paths);
    r->allow = copy;
    r->paths = paths;
    r->n = n;
    pthread_mutex_unlock(&r->mu);
    return 0;
}

uint64_t gb_stat(struct gb_resp *r, int which) {
    return which == 0 ? r->fast : which == 1 ? r->forwarded : r->busy_ns;
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
    free(r->allow);
    free(r->paths);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static int allowed(struct gb_resp *r, const char *path) {
    pthread_mutex_lock(&r->mu);
    int hit = r->n && bsearch(&path, r->paths, r->n, sizeof(char *), cmp) != NULL;
    pthread_mutex_unlock(&r->mu);
    return hit;
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

static const char *const INJECT[] = {"LD_PRELOAD=", "LD_AUDIT=", "LD_LIBRARY_PATH=",
                                     "BASH_ENV=", "ENV="};

// Read a char*[] (argv or envp). Each string goes to rec (when rec != NULL). Returns the count,
// or -1 to forward (unreadable, too large, an injection variable with a value).
static long strings(struct win *w, uint64_t arr, char *rec, size_t *used, int env) {
    if (arr == 0)
        return 0;
    uint64_t ptrs[256];
    long count = 0;
    size_t total = 0;
    for (;;) {
        ssize_t got = pread(w->fd, ptrs, sizeof(ptrs), (off_t)(arr + 8 * (uint64_t)count));
        if (got < 8)
            return -1;
        size_t k = (size_t)got / 8;
        for (size_t i = 0; i < k; i++) {
            if (ptrs[i] == 0)
                return count;
            if (++count > GB_MAX_ARGS)
                return -1;
            size_t n;
            const char *s = cstr(w, ptrs[i], &n);
            if (!s)
                return -1;
            total += n + 1;
            if (total > GB_MAX_BYTES)
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

// 1: answered CONTINUE here; 0: forward to Python.
static int try_fast(struct gb_resp *r, struct seccomp_notif *n, struct win *w, char *rec,
                    int stop_fd, int *err) {
    if (n->data.arch != GB_ARCH || n->data.nr != GB_NR_EXECVE || r->n == 0)
        return 0;
    char memp[64];
    snprintf(memp, sizeof(memp), "/proc/%u/mem", n->pid);
    w->fd = open(memp, O_RDONLY | O_CLOEXEC);
    w->len = 0;
    if (w->fd < 0)
        return 0;
    int ok = 0;
    size_t used = sizeof(struct gb_hdr), plen;
    uint64_t id = n->id;
    // the pid still belongs to the caller (not reused) while we read its memory
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0)
        goto out;
    const char *path = cstr(w, n->data.args[0], &plen);
    if (!path || plen == 0 || plen >= GB_FAST_PATH - 1 || path[0] != '/')
        goto out;
    char pbuf[GB_FAST_PATH];
    memcpy(pbuf, path, plen + 1);
    if (!allowed(r, pbuf) || append(rec, &used, pbuf, plen) != 0)
        goto out;
    long argc = strings(w, n->data.args[1], rec, &used, 0);
    if (argc < 0 || strings(w, n->data.args[2], NULL, NULL, 1) < 0)
        goto out;
    ok = 1;
    struct gb_hdr h = {.type = 'F', .pid = n->pid, .id = n->id, .argc = (uint32_t)argc};
    memcpy(rec, &h, sizeof(h));
out:
    close(w->fd);
    if (!ok)
        return 0;
    int wake = 0;
    pthread_mutex_lock(&r->mu);
    if (r->qlen + 4 + used > GB_QUEUE) {
        ok = 0;  // Python is behind: forward this one, and make sure Python wakes up
        wake = !r->wake_sent;
        r->wake_sent = 1;
    } else {
        uint32_t len = (uint32_t)used;
        memcpy(r->queue + r->qlen, &len, 4);
        memcpy(r->queue + r->qlen + 4, rec, used);
        r->qlen += 4 + used;
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
    struct seccomp_notif_resp resp = {.id = n->id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    if (ioctl(r->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && errno != ENOENT) {
        *err = errno;
        return -1;
    }
    r->fast++;
    return 1;
}

// Serve until stop_fd is readable (returns 0), the listener hangs up (every process of the
// filter is gone: sends 'E', returns 0) or an error (sends 'X' with the errno, returns -errno).
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
