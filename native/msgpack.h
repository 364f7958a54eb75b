/* The few MessagePack writers the native module needs: big-endian integers behind their type bytes. */
#ifndef FIELDGATE_MSGPACK_H
#define FIELDGATE_MSGPACK_H

#include <stdint.h>

static inline uint8_t *put_be32(uint8_t *p, uint32_t x) {
    p[0] = (uint8_t)(x >> 24);
    p[1] = (uint8_t)(x >> 16);
    p[2] = (uint8_t)(x >> 8);
    p[3] = (uint8_t)x;
    return p + 4;
}

static inline uint8_t *put_be64(uint8_t *p, uint64_t x) {
    put_be32(p, (uint32_t)(x >> 32));
    return put_be32(p + 4, (uint32_t)x);
}

/* An array header: fixarray below 16 items, array 32 otherwise (at most 5 bytes). */
static inline uint8_t *put_array(uint8_t *p, uint32_t n) {
    if (n < 16) {
        *p++ = (uint8_t)(0x90 | n);
        return p;
    }
    *p++ = 0xdd;
    return put_be32(p, n);
}

/* A signed integer: positive fixint when it fits, int 64 otherwise (at most 9 bytes). */
static inline uint8_t *put_int(uint8_t *p, int64_t x) {
    if (x >= 0 && x < 128) {
        *p++ = (uint8_t)x;
        return p;
    }
    *p++ = 0xd3;
    return put_be64(p, (uint64_t)x);
}

#endif
