/* SipHash-2-4 and glassbreak's exec hash (shared by the native responder, gbresp.c, and by
 * Python through libgbresp.so; sandbox/kernel/siphash.py has the pure-Python twin and the BPF
 * program native/bpf/exectrace.c computes the same in the kernel). */
#ifndef GB_SIPHASH_H
#define GB_SIPHASH_H
#include <stddef.h>
#include <stdint.h>

struct gb_sip {
    uint64_t v0, v1, v2, v3;
    uint8_t tail[8];
    size_t ntail;
    uint64_t total;
};

void gb_sip_init(struct gb_sip *s, const uint8_t key[16]);
void gb_sip_update(struct gb_sip *s, const uint8_t *in, size_t len);
uint64_t gb_sip_final(struct gb_sip *s);

/* standard SipHash-2-4 of in[0..len) */
uint64_t gb_siphash(const uint8_t *in, size_t len, const uint8_t key[16]);
/* SipHash-2-4(key, le64(alen) || le64(elen) || a || e): a = the argv strings as the kernel lays
 * them out (mm->arg_start..arg_end), e = the envp strings (env_start..env_end) */
uint64_t gb_exec_hash(const uint8_t key[16], const uint8_t *a, size_t alen, const uint8_t *e,
                      size_t elen);
#endif
