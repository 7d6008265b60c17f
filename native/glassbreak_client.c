/* glassbreak's native thin client (issue 5 warm path). Our own code; built by scripts/setup.sh.
 *
 * Installed as .venv/bin/glassbreak-run, and as .venv/bin/glassbreak in front of the Python
 * console script. `glassbreak run [OPTIONS] -- CMD...` with a daemon listening on
 * $GLASSBREAK_SOCKET (default /run/glassbreak/glassbreak.sock) is served here, without starting
 * Python: the same protocol as sandbox/run/thinclient.py (docs/daemon.md):
 *   one JSON request line sent with our fds 0, 1, 2 attached (SCM_RIGHTS), then {"signal": N}
 *   lines for SIGINT, SIGQUIT, SIGTERM and SIGHUP; the daemon answers {"exit_code": N}.
 * Anything else (another subcommand, an option this parser does not know, no daemon,
 * GLASSBREAK_NO_DAEMON=1) execs the Python CLI next to this binary: `python3 -c ... ARGS`,
 * so behaviour, messages and exit codes are the Python CLI's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/glassbreak/glassbreak.sock"
#define EXIT_RUNNER_FAILED 125

extern char **environ;

/* ---- a growable byte buffer ------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fputs("glassbreak: out of memory\n", stderr);
            exit(EXIT_RUNNER_FAILED);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }

/* Length of a valid UTF-8 sequence at s (as Python's decoder accepts it), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t left) {
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; min = 0x10000; }
    else return 0;
    if (left < n) return 0;
    unsigned cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

/* A JSON string; bytes that are not UTF-8 become \udcXX (Python's surrogateescape), so the
 * daemon's os.fsencode() gives back the exact bytes. */
static void json_str(buf_t *b, const char *s) {
    const unsigned char *u = (const unsigned char *)s;
    size_t len = strlen(s);
    char esc[16];
    put(b, "\"", 1);
    for (size_t i = 0; i < len;) {
        unsigned c = u[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
            i++;
        } else if (c < 0x20 || c == 0x7F) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            puts_(b, esc);
            i++;
        } else if (c < 0x80) {
            put(b, (const char *)u + i, 1);
            i++;
        } else {
            size_t n = utf8_len(u + i, len - i);
            if (n) {
                put(b, (const char *)u + i, n);
                i += n;
            } else {
                snprintf(esc, sizeof esc, "\\udc%02x", c);
                puts_(b, esc);
                i++;
            }
        }
    }
    put(b, "\"", 1);
}

/* ---- fallback: the Python CLI ----------------------------------------------------------- */
static void exec_python(int argc, char **argv) {
    char self[PATH_MAX], py[PATH_MAX + 16];
    const char *forced = getenv("GLASSBREAK_PYTHON");
    if (forced && *forced) {
        snprintf(py, sizeof py, "%s", forced);
    } else {
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            perror("glassbreak: cannot find its own path (/proc/self/exe)");
            exit(EXIT_RUNNER_FAILED);
        }
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) *slash = 0;
        snprintf(py, sizeof py, "%s/python3", self);
    }
    char **nargv = calloc((size_t)argc + 5, sizeof *nargv);
    if (!nargv) exit(EXIT_RUNNER_FAILED);
    nargv[0] = py;
    /* -P: never import from the current directory (`-c` would put it first on sys.path): root
     * running glassbreak in a directory an agent writes must not run the agent's `sandbox/` */
    nargv[1] = "-P";
    nargv[2] = "-c";
    nargv[3] = "import sys; sys.argv[0] = 'glassbreak'; from sandbox.cli.entry import main; main()";
    for (int i = 1; i < argc; i++) nargv[i + 3] = argv[i];
    execv(py, nargv);
    fprintf(stderr, "glassbreak: cannot start the Python CLI %s: %s\n"
            "  hint: re-run `bash scripts/setup.sh`, or set GLASSBREAK_PYTHON\n",
            py, strerror(errno));
    exit(EXIT_RUNNER_FAILED);
}

/* ---- `run` options: the same small parser as sandbox/run/thinclient.py -------------------- */
typedef struct {
    const char *profile, *agent, *reason, *mode, *wait, *output;
    const char *degraded[16];
    int ndegraded;
    char **cmd;
    int ncmd;
} req_t;

static const char *opt_key(const char *name) {
    static const char *map[][2] = {
        {"--profile", "profile"}, {"-p", "profile"}, {"--agent", "agent"}, {"-a", "agent"},
        {"--reason", "reason"}, {"-r", "reason"}, {"--mode", "mode"}, {"--output", "output"},
        {"-o", "output"}, {"--degraded", "degraded"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(name, map[i][0])) return map[i][1];
    return NULL;
}

static int choice_ok(const char *key, const char *val) {
    if (!strcmp(key, "mode")) return !strcmp(val, "enforce") || !strcmp(val, "monitor");
    if (!strcmp(key, "output")) return !strcmp(val, "text") || !strcmp(val, "json");
    if (!strcmp(key, "degraded"))
        return !strcmp(val, "exec-gate") || !strcmp(val, "ebpf") || !strcmp(val, "landlock")
            || !strcmp(val, "network");
    return 1;
}

/* 1 when understood; 0: let the Python CLI decide (with its own messages). */
static int parse_run(int n, char **a, req_t *r) {
    /* no -p: null, so that the daemon picks the caller's default (its first bound profile) */
    r->profile = getenv("GLASSBREAK_PROFILE");
    r->agent = getenv("GLASSBREAK_AGENT");
    r->mode = "enforce";
    r->output = "text";
    for (int i = 0; i < n; i++) {
        const char *arg = a[i];
        if (!strcmp(arg, "--")) {
            r->cmd = a + i + 1;
            r->ncmd = n - i - 1;
            return r->ncmd > 0;
        }
        if (!strcmp(arg, "--wait")) {
            if (i + 1 >= n || a[i + 1][0] != '-') return 0; /* `--wait 5m` vs `--wait CMD` */
            r->wait = "30m";
            continue;
        }
        if (!strncmp(arg, "--wait=", 7)) {
            r->wait = arg + 7;
            continue;
        }
        char name[64];
        const char *eq = strchr(arg, '=');
        const char *val;
        size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
        if (nl >= sizeof name) return 0;
        memcpy(name, arg, nl);
        name[nl] = 0;
        const char *key = opt_key(name);
        if (!key || (eq && strncmp(name, "--", 2))) return 0;
        if (eq) {
            val = eq + 1;
        } else {
            if (i + 1 >= n) return 0;
            val = a[++i];
        }
        if (!choice_ok(key, val)) return 0;
        if (!strcmp(key, "profile")) r->profile = val;
        else if (!strcmp(key, "agent")) r->agent = val;
        else if (!strcmp(key, "reason")) r->reason = val;
        else if (!strcmp(key, "mode")) r->mode = val;
        else if (!strcmp(key, "output")) r->output = val;
        else {
            if (r->ndegraded >= 16) return 0;
            r->degraded[r->ndegraded++] = val;
        }
    }
    return 0; /* no `--`: click decides where the command starts */
}

static void field(buf_t *b, const char *k, const char *v, int first) {
    if (!first) puts_(b, ", ");
    json_str(b, k);
    puts_(b, ": ");
    if (v) json_str(b, v);
    else puts_(b, "null");
}

static void build(buf_t *b, const req_t *r) {
    char cwd[PATH_MAX];
    puts_(b, "{");
    field(b, "profile", r->profile, 1);
    field(b, "agent", r->agent, 0);
    field(b, "reason", r->reason, 0);
    field(b, "mode", r->mode, 0);
    field(b, "wait", r->wait, 0);
    field(b, "output", r->output, 0);
    puts_(b, ", \"degraded\": [");
    for (int i = 0; i < r->ndegraded; i++) {
        if (i) puts_(b, ", ");
        json_str(b, r->degraded[i]);
    }
    puts_(b, "], \"argv\": [");
    for (int i = 0; i < r->ncmd; i++) {
        if (i) puts_(b, ", ");
        json_str(b, r->cmd[i]);
    }
    puts_(b, "]");
    /* the daemon checks a claimed cwd against /proc/PID/cwd; null lets it use the kernel's */
    field(b, "cwd", getcwd(cwd, sizeof cwd) ? cwd : NULL, 0);
    puts_(b, ", \"env\": {");
    int first = 1;
    for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e) continue;
        char *k = strndup(*e, (size_t)(eq - *e));
        if (!k) exit(EXIT_RUNNER_FAILED);
        if (!first) puts_(b, ", ");
        first = 0;
        json_str(b, k);
        puts_(b, ": ");
        json_str(b, eq + 1);
        free(k);
    }
    puts_(b, "}}\n");
}

/* ---- the connection ----------------------------------------------------------------------- */
static int sigpipe_fds[2] = {-1, -1};

static void on_signal(int sig) {
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    ssize_t w = write(sigpipe_fds[1], &c, 1);
    (void)w;
    errno = saved;
}

static int connect_daemon(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    strcpy(sa.sun_path, path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(s);
        return -1;
    }
    return s;
}

static int send_all(int s, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(s, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_request(int s, const buf_t *b) {
    int fds[3] = {0, 1, 2};
    char cbuf[CMSG_SPACE(sizeof fds)];
    memset(cbuf, 0, sizeof cbuf);
    struct iovec iov = {.iov_base = b->p, .iov_len = b->n};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                       .msg_controllen = sizeof cbuf};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t w;
    do {
        w = sendmsg(s, &m, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    if (w < 0) return -1;
    return send_all(s, b->p + w, b->n - (size_t)w);
}

/* the JSON string value of "key" in the daemon's reply, unescaped into out ("" if absent) */
static void string_of(const buf_t *in, const char *key, char *out, size_t n) {
    char k[32];
    snprintf(k, sizeof k, "\"%s\": \"", key);
    const char *p = in->p ? strstr(in->p, k) : NULL;
    size_t o = 0;
    out[0] = 0;
    if (!p) return;
    for (p += strlen(k); *p && *p != '"' && o + 1 < n; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            out[o++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = 0;
}

static int exit_code_of(const buf_t *in, int *code) {
    const char *k = "\"exit_code\"";
    const char *p = in->p ? strstr(in->p, k) : NULL;
    if (!p) return 0;
    p += strlen(k);
    while (*p == ' ') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ') p++;
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p) return 0;
    *code = (int)v;
    return 1;
}

static int serve(int s, const char *path, const buf_t *req) {
    static const int fwd[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP};
    struct ucred cred = {0};
    socklen_t cl = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) cred.pid = 0;
    if (pipe2(sigpipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) return EXIT_RUNNER_FAILED;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < 4; i++) sigaction(fwd[i], &sa, NULL);
    if (send_request(s, req) < 0) {
        fprintf(stderr, "glassbreak: lost the connection to the daemon at %s (%s); "
                "the run was ended\n", path, strerror(errno));
        return EXIT_RUNNER_FAILED;
    }
    buf_t in = {0};
    char chunk[4096];
    for (;;) {
        struct pollfd p[2] = {{.fd = s, .events = POLLIN}, {.fd = sigpipe_fds[0],
                                                               .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            unsigned char sig;
            while (read(sigpipe_fds[0], &sig, 1) == 1) {
                char line[40];
                int n = snprintf(line, sizeof line, "{\"signal\": %d}\n", sig);
                (void)send_all(s, line, (size_t)n);
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(s, chunk, sizeof chunk, 0);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            put(&in, chunk, (size_t)r);
        }
    }
    int code;
    if (exit_code_of(&in, &code)) {
        char err[1024], hint[512];
        string_of(&in, "error", err, sizeof err);
        string_of(&in, "hint", hint, sizeof hint);
        if (err[0]) {  /* the daemon refused the request itself */
            fprintf(stderr, "glassbreak: the daemon refused the request: %s\n", err);
            if (hint[0]) fprintf(stderr, "  hint: %s\n", hint);
        }
        return code;
    }
    if (cred.pid)
        fprintf(stderr, "glassbreak: the daemon (pid %d) at %s died; the run was ended\n",
                cred.pid, path);
    else
        fprintf(stderr, "glassbreak: the daemon at %s died; the run was ended\n", path);
    fputs("  hint: restart it (`glassbreak serve --socket PATH`), or run in process with "
          "GLASSBREAK_NO_DAEMON=1\n", stderr);
    return EXIT_RUNNER_FAILED;
}

int main(int argc, char **argv) {
    req_t r = {0};
    const char *nd = getenv("GLASSBREAK_NO_DAEMON");
    if (argc < 2 || strcmp(argv[1], "run") || (nd && !strcmp(nd, "1")) ||
        !parse_run(argc - 2, argv + 2, &r))
        exec_python(argc, argv);
    const char *path = getenv("GLASSBREAK_SOCKET");
    if (!path || !*path) path = DEFAULT_SOCKET;
    int s = connect_daemon(path);
    if (s < 0) exec_python(argc, argv); /* no daemon: run in process */
    buf_t req = {0};
    build(&req, &r);
    return serve(s, path, &req);
}
