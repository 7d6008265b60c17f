/* Attacker for the exec gate (issue 10 #2): run a ruled program (kubectl, `delete` restricted)
 * N times while a second thread flips argv[1] between "get" and "delete", with 1,000 padding
 * arguments that slow the judge down.
 *
 *   execrace race   N KUBECTL    plain fork + exec
 *   execrace orphan N KUBECTL    + the orphaned-process-group dance: B calls setsid(), its child
 *                                C calls setpgid(0, 0), ignores SIGHUP and execs; B waits (at most
 *                                30 ms) for C to be stopped, then exits, so C's group is orphaned
 *                                and the kernel sends it SIGHUP + SIGCONT.
 *
 * Prints "RESULT ran=.. eperm=.. killed=.. enoent=.. other=.." (C's fates). An escape is the
 * ruled program printing "delete" (the test reads stdout). The process is the run's top-level
 * process; it makes itself a subreaper so the orphaned C is reaped here. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAD 1000
static char sub[8] = "get";

static void *flip(void *arg) {
    (void)arg;
    volatile char *s = sub;
    for (;;) {
        s[0] = 'd'; s[1] = 'e'; s[2] = 'l'; s[3] = 'e'; s[4] = 't'; s[5] = 'e'; s[6] = 0;
        s[0] = 'g'; s[1] = 'e'; s[2] = 't'; s[3] = 0;
    }
    return NULL;
}

static void run_c(const char *kubectl, int orphan) {
    static char *av[PAD + 5];
    if (orphan) {
        setpgid(0, 0);
        signal(SIGHUP, SIG_IGN);
    }
    av[0] = "kubectl";
    av[1] = sub;
    av[2] = "pod";
    av[3] = "x";
    for (int k = 0; k < PAD; k++)
        av[4 + k] = "p";
    av[4 + PAD] = NULL;
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL); /* let the flipper get going */
    execv(kubectl, av);
    _exit(100 + errno);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: execrace race|orphan N KUBECTL\n");
        return 2;
    }
    int orphan = strcmp(argv[1], "orphan") == 0;
    int n = atoi(argv[2]);
    const char *kubectl = argv[3];
    int ran = 0, eperm = 0, killed = 0, enoent = 0, other = 0;
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < n; i++) {
        pid_t b = fork();
        if (b == 0) {
            if (orphan)
                setsid();
            pid_t c = fork();
            if (c == 0)
                run_c(kubectl, orphan);
            int st;
            if (orphan) {
                (void)st;
                for (int k = 0; k < 30; k++) { /* stopped or gone (not reaped: WNOWAIT) */
                    siginfo_t si = {0};
                    if (waitid(P_PID, c, &si, WSTOPPED | WEXITED | WNOWAIT | WNOHANG) == 0 &&
                        si.si_pid == c)
                        break;
                    usleep(1000);
                }
                _exit(0); /* C's group is orphaned now */
            }
            waitpid(c, &st, 0);
            _exit(WIFSIGNALED(st) ? 200 + WTERMSIG(st) : WEXITSTATUS(st));
        }
        int st;
        waitpid(b, &st, 0);
        if (orphan) { /* C was reparented to us (subreaper) */
            pid_t w;
            while ((w = waitpid(-1, &st, 0)) < 0 && errno == EINTR)
                ;
            if (w < 0) {
                other++;
                continue;
            }
        } else {
            st = WEXITSTATUS(st) >= 200 ? (WEXITSTATUS(st) - 200) : (WEXITSTATUS(st) << 8);
        }
        if (WIFSIGNALED(st))
            killed++;
        else if (WEXITSTATUS(st) == 0)
            ran++;
        else if (WEXITSTATUS(st) == 100 + EPERM)
            eperm++;
        else if (WEXITSTATUS(st) == 100 + ENOENT)
            enoent++;
        else {
            other++;
            fprintf(stderr, "other status %#x\n", st);
        }
    }
    printf("RESULT ran=%d eperm=%d killed=%d enoent=%d other=%d\n", ran, eperm, killed, enoent,
           other);
    return 0;
}
