/* fieldgate native hot paths: register codec and MQTT topic router.
 *
 * This header is both the C interface and (between the CDEF markers) the cffi cdef that
 * native/build_native.py feeds to cffi; keep that part free of preprocessor directives.
 * Every function returns FG_OK or a negative FG_E* code; gateway/native.py turns codes into exceptions.
 */
#ifndef FIELDGATE_NATIVE_H
#define FIELDGATE_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
enum {
    FG_OK = 0,
    FG_ESHORT = -1,    /* the block is too short for a field (err = field index) */
    FG_ERANGE = -2,    /* a block value is out of range (err = block index) */
    FG_EBADTABLE = -3, /* a field spec is invalid (err = field index) */
    FG_ENOMEM = -4,
    FG_EARG = -5       /* an argument is invalid (null pointer, bad topic or filter) */
};

enum {
    FG_INT16 = 0, FG_UINT16 = 1, FG_INT32 = 2, FG_UINT32 = 3, FG_INT64 = 4, FG_UINT64 = 5,
    FG_FLOAT32 = 6, FG_FLOAT64 = 7, FG_STRING = 8, FG_BOOL = 9
};

typedef struct {
    int32_t type;             /* FG_INT16 ... FG_BOOL */
    int32_t byte_swap;        /* 1: bytes within each register are little-endian */
    int32_t word_swap;        /* 1: the first register holds the least significant word */
    int32_t bit;              /* -1: whole register; 0..15: one bit of it */
    int64_t offset;           /* first register (or bit) of the field in the block */
    int64_t length;           /* registers, for strings */
    double scale;
    double deadband;
    int32_t deadband_percent;
} fg_field;

typedef struct fg_table fg_table;

/* Compile a table; on FG_EBADTABLE *err is the index of the offending field. */
int fg_table_new(const fg_field *fields, size_t count, int bits, fg_table **out, size_t *err);
void fg_table_free(fg_table *table);
/* Decode a block of `count` registers (native-endian uint16 bytes) into a MessagePack array in the table's
 * output buffer (fg_table_output, fixed for the table's life) and return its length in bytes.
 * changes_only=0: one value per field; 1: flat [index, value, ...] of the fields that changed. */
int64_t fg_table_decode(fg_table *table, const char *block, size_t count, int changes_only, size_t *err);
/* The same for a block as it travels in a Modbus frame: 2*count bytes, each register big-endian. */
int64_t fg_table_decode_wire(fg_table *table, const char *block, size_t count, int changes_only, size_t *err);
const uint8_t *fg_table_output(const fg_table *table);
void fg_table_reset_changes(fg_table *table);

typedef struct fg_router fg_router;

int fg_router_new(fg_router **out);
void fg_router_free(fg_router *router);
/* Returns 1 when added, 0 when (id, filter) was already there. */
int fg_router_add(fg_router *router, int64_t route_id, const char *filter, size_t len);
/* Returns the number of (id, filter) entries removed. */
int64_t fg_router_remove(fg_router *router, int64_t route_id);
/* Returns the number of matching ids and leaves them, sorted and unique, in the router's result buffer
 * (fg_router_results); that buffer moves only when a match needs more than fg_router_capacity ids. */
int64_t fg_router_match(fg_router *router, const char *topic, size_t len);
const int64_t *fg_router_results(const fg_router *router);
size_t fg_router_capacity(const fg_router *router);
size_t fg_router_len(const fg_router *router);
/* Match `count` topics given as one NUL-separated string; the result is a MessagePack array with, for each topic,
 * the array of its sorted unique ids, in the router's packed buffer (fg_router_packed, which moves when it grows).
 * Returns its length in bytes, or FG_EARG with fg_router_bad_index naming the refused topic. */
int64_t fg_router_match_many(fg_router *router, const char *topics, size_t len, size_t count);
const uint8_t *fg_router_packed(const fg_router *router);
size_t fg_router_bad_index(const fg_router *router);
/* CDEF-END */

#endif
