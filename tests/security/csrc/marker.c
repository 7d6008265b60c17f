/* marker: the proof binary. Static, no libc, no dynamic loader: its FIRST instructions are
 * _start below, and the first thing it does is a write() syscall to fd 1 (the test redirects
 * fd 1 to a file). It writes "RAN <pid>\n" then each argv[i] (i >= 0) on its own line, then
 * exits 0. If the file stays empty, not one instruction of the image ran.
 * Build: gcc -static -nostdlib -O1 -fno-stack-protector -o marker marker.c
 * (from the exec-verification prototype; used by tests/integration/test_ebpf.py) */
typedef unsigned long u64;

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}

static u64 slen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }

#ifndef TAG
#define TAG "RAN"
#endif

void cmain(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char buf[32] = TAG " ";
    int n = slen(buf);
    long pid = sys3(39, 0, 0, 0); /* getpid */
    char tmp[24]; int t = 0;
    do { tmp[t++] = '0' + pid % 10; pid /= 10; } while (pid);
    while (t) buf[n++] = tmp[--t];
    buf[n++] = '\n';
    sys3(1, 1, (long)buf, n);
    for (long i = 0; i < argc; i++) {
        sys3(1, 1, (long)argv[i], slen(argv[i]));
        sys3(1, 1, (long)"\n", 1);
    }
    sys3(60, 0, 0, 0); /* exit */
}

__asm__(".globl _start\n_start:\n"
        "  write_first: mov $1, %eax\n"      /* the very first instruction is the syscall setup */
        "  mov $1, %edi\n"
        "  lea first_msg(%rip), %rsi\n"
        "  mov $6, %edx\n"
        "  syscall\n"                         /* write(1, "START\n", 6) */
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call cmain\n"
        "  hlt\n"
        "first_msg: .ascii \"START\\n\"\n");
