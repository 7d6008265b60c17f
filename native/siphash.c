/* SipHash-2-4 (Aumasson & Bernstein), streaming, and glassbreak's exec hash. See siphash.h.
 * Little-endian hosts only (x86_64, aarch64), as is the BPF side. */
#include "siphash.h"

#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(s)                                                                        \
    do {                                                                                   \
        s->v0 += s->v1; s->v1 = ROTL(s->v1, 13); s->v1 ^= s->v0; s->v0 = ROTL(s->v0, 32); \
        s->v2 += s->v3; s->v3 = ROTL(s->v3, 16); s->v3 ^= s->v2;                           \
        s->v0 += s->v3; s->v3 = ROTL(s->v3, 21); s->v3 ^= s->v0;                           \
        s->v2 += s->v1; s->v1 = ROTL(s->v1, 17); s->v1 ^= s->v2; s->v2 = ROTL(s->v2, 32); \
    } while (0)

static inline uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

void gb_sip_init(struct gb_sip *s, const uint8_t key[16]) {
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    s->v0 = 0x736f6d6570736575ULL ^ k0;
    s->v1 = 0x646f72616e646f6dULL ^ k1;
    s->v2 = 0x6c7967656e657261ULL ^ k0;
    s->v3 = 0x7465646279746573ULL ^ k1;
    s->ntail = 0;
    s->total = 0;
}

static inline void sip_word(struct gb_sip *s, uint64_t m) {
    s->v3 ^= m;
    SIPROUND(s);
    SIPROUND(s);
    s->v0 ^= m;
}

void gb_sip_update(struct gb_sip *s, const uint8_t *in, size_t len) {
    s->total += len;
    if (s->ntail) {
        while (len && s->ntail < 8) {
            s->tail[s->ntail++] = *in++;
            len--;
        }
        if (s->ntail < 8)
            return;
        sip_word(s, le64(s->tail));
        s->ntail = 0;
    }
    while (len >= 8) {
        sip_word(s, le64(in));
        in += 8;
        len -= 8;
    }
    memcpy(s->tail, in, len);
    s->ntail = len;
}

uint64_t gb_sip_final(struct gb_sip *s) {
    uint64_t b = s->total << 56;
    for (size_t i = 0; i < s->ntail; i++)
        b |= (uint64_t)s->tail[i] << (8 * i);
    sip_word(s, b);
    s->v2 ^= 0xff;
    for (int i = 0; i < 4; i++)
        SIPROUND(s);
    return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

uint64_t gb_siphash(const uint8_t *in, size_t len, const uint8_t key[16]) {
    struct gb_sip s;
    gb_sip_init(&s, key);
    gb_sip_update(&s, in, len);
    return gb_sip_final(&s);
}

uint64_t gb_exec_hash(const uint8_t key[16], const uint8_t *a, size_t alen, const uint8_t *e,
                      size_t elen) {
    struct gb_sip s;
    uint64_t hdr[2] = {alen, elen};
    gb_sip_init(&s, key);
    gb_sip_update(&s, (const uint8_t *)hdr, 16);
    gb_sip_update(&s, a, alen);
    gb_sip_update(&s, e, elen);
    return gb_sip_final(&s);
}
