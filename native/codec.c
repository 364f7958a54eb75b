/* Register codec: a compiled field table decodes a whole register block into a MessagePack array in one call.
 *
 * MessagePack is the hand-over format because msgspec turns it into a Python list in C, so the Python side does
 * no per-value work. The semantics mirror gateway/codec/python.py bit for bit; see gateway/codec/fields.py.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fieldgate_native.h"
#include "msgpack.h"

#define MAX_OFFSET ((int64_t)1 << 40)
#define MAX_STRING_REGISTERS ((int64_t)1 << 20)

enum { KIND_INT, KIND_UINT, KIND_FLOAT, KIND_BOOL, KIND_STR };

typedef struct {
    int kind;
    int64_t i;
    uint64_t u;
    double d;
    const uint8_t *s;
    size_t len;
} value_t;

typedef struct {
    int kind;
    int64_t i;
    uint64_t u;
    double d;
    size_t str_offset; /* into the table's previous-string arena */
    size_t len;
} previous_t;

struct fg_table {
    fg_field *fields;
    size_t count;
    int bits;
    uint8_t *out;
    size_t out_cap;
    uint8_t *scratch; /* one decoded string */
    uint16_t *registers; /* the block being decoded, aligned */
    size_t registers_cap;
    int has_previous;
    previous_t *previous;
    uint8_t *strings;
};

static size_t register_span(const fg_field *f) {
    switch (f->type) {
    case FG_INT32: case FG_UINT32: case FG_FLOAT32: return 2;
    case FG_INT64: case FG_UINT64: case FG_FLOAT64: return 4;
    case FG_STRING: return (size_t)f->length;
    default: return 1;
    }
}

static int field_is_valid(const fg_field *f, int bits) {
    if (f->type < FG_INT16 || f->type > FG_BOOL) return 0;
    if (f->byte_swap != 0 && f->byte_swap != 1) return 0;
    if (f->word_swap != 0 && f->word_swap != 1) return 0;
    if (f->offset < 0 || f->offset > MAX_OFFSET) return 0;
    if (f->type == FG_STRING && (f->length < 1 || f->length > MAX_STRING_REGISTERS)) return 0;
    if (f->bit < -1 || f->bit > 15) return 0;
    if (f->bit != -1 && f->type != FG_BOOL) return 0;
    if (bits && (f->type != FG_BOOL || f->bit != -1)) return 0;
    if (!isfinite(f->scale) || f->scale == 0.0) return 0;
    if (!isfinite(f->deadband) || f->deadband < 0.0) return 0;
    return 1;
}

/* Bytes a field's decoded value may take in the output: a string grows at most 3x (U+FFFD per bad byte). */
static size_t string_capacity(const fg_field *f) {
    return f->type == FG_STRING ? 6 * (size_t)f->length : 0;
}

int fg_table_new(const fg_field *fields, size_t count, int bits, fg_table **out, size_t *err) {
    if (out == NULL || err == NULL || (fields == NULL && count != 0)) return FG_EARG;
    *out = NULL;
    *err = 0;
    if (count > ((size_t)1 << 28)) return FG_EARG;
    size_t out_cap = 5, max_string = 1, strings_total = 0;
    for (size_t i = 0; i < count; i++) {
        if (!field_is_valid(&fields[i], bits)) {
            *err = i;
            return FG_EBADTABLE;
        }
        size_t string_bytes = string_capacity(&fields[i]);
        out_cap += 5 + 9 + string_bytes;
        strings_total += string_bytes;
        if (string_bytes > max_string) max_string = string_bytes;
    }
    fg_table *t = calloc(1, sizeof *t);
    if (t == NULL) return FG_ENOMEM;
    t->count = count;
    t->bits = bits ? 1 : 0;
    t->out_cap = out_cap;
    t->fields = malloc((count ? count : 1) * sizeof *t->fields);
    t->previous = calloc(count ? count : 1, sizeof *t->previous);
    t->out = malloc(out_cap);
    t->scratch = malloc(max_string);
    t->strings = malloc(strings_total ? strings_total : 1);
    if (!t->fields || !t->previous || !t->out || !t->scratch || !t->strings) {
        fg_table_free(t);
        return FG_ENOMEM;
    }
    if (count) memcpy(t->fields, fields, count * sizeof *fields);
    size_t string_offset = 0;
    for (size_t i = 0; i < count; i++) {
        t->previous[i].str_offset = string_offset;
        string_offset += string_capacity(&fields[i]);
    }
    *out = t;
    return FG_OK;
}

void fg_table_free(fg_table *t) {
    if (t == NULL) return;
    free(t->fields);
    free(t->previous);
    free(t->out);
    free(t->scratch);
    free(t->strings);
    free(t->registers);
    free(t);
}

void fg_table_reset_changes(fg_table *t) {
    if (t != NULL) t->has_previous = 0;
}

static uint16_t swap16(uint16_t r) { return (uint16_t)((r >> 8) | (r << 8)); }

static uint64_t assemble(const fg_field *f, const uint16_t *regs, size_t n) {
    uint64_t raw = 0;
    for (size_t k = 0; k < n; k++) {
        uint16_t r = regs[f->word_swap ? n - 1 - k : k];
        if (f->byte_swap) r = swap16(r);
        raw = (raw << 16) | r;
    }
    return raw;
}

/* Python's bytes.decode("utf-8", "replace"): each maximal invalid subpart becomes one U+FFFD. */
static size_t utf8_replace(const uint8_t *s, size_t n, uint8_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            out[o++] = c;
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else need = 0;
        size_t j = i + 1, got = 0;
        while (need && got < need && j < n) {
            uint8_t b = s[j];
            uint8_t low = got == 0 ? lo : 0x80, high = got == 0 ? hi : 0xBF;
            if (b < low || b > high) break;
            j++;
            got++;
        }
        if (need && got == need) {
            memcpy(out + o, s + i, j - i);
            o += j - i;
        } else {
            out[o++] = 0xEF;
            out[o++] = 0xBF;
            out[o++] = 0xBD;
        }
        i = j;
    }
    return o;
}

static void decode_string(const fg_field *f, const uint16_t *regs, uint8_t *scratch, value_t *v) {
    size_t n = (size_t)f->length, len = 0;
    uint8_t *raw = scratch + 4 * n; /* the 2n raw bytes go to the tail of the 6n scratch */
    int ended = 0;
    for (size_t k = 0; k < n && !ended; k++) {
        uint16_t r = regs[k];
        uint8_t pair[2] = {(uint8_t)(r >> 8), (uint8_t)(r & 0xFF)};
        if (f->byte_swap) {
            uint8_t tmp = pair[0];
            pair[0] = pair[1];
            pair[1] = tmp;
        }
        for (int b = 0; b < 2; b++) {
            if (pair[b] == 0) {
                ended = 1;
                break;
            }
            raw[len++] = pair[b];
        }
    }
    while (len > 0 && raw[len - 1] == ' ') len--;
    /* Right-align the input so the decoder, writing from the start at most 3 bytes per byte read, never
     * overtakes it (3j <= 6n - len + j for every j <= len <= 2n). */
    uint8_t *copy = scratch + 6 * n - len;
    memmove(copy, raw, len);
    v->kind = KIND_STR;
    v->s = scratch;
    v->len = utf8_replace(copy, len, scratch);
}

static void decode_field(const fg_table *t, const fg_field *f, const uint16_t *block, value_t *v) {
    const uint16_t *regs = block + f->offset;
    if (t->bits) {
        v->kind = KIND_BOOL;
        v->i = regs[0] != 0;
        return;
    }
    uint64_t raw;
    switch (f->type) {
    case FG_BOOL: {
        uint16_t r = f->byte_swap ? swap16(regs[0]) : regs[0];
        v->kind = KIND_BOOL;
        v->i = f->bit < 0 ? r != 0 : (r >> f->bit) & 1;
        return;
    }
    case FG_STRING:
        decode_string(f, regs, t->scratch, v);
        return;
    case FG_FLOAT32: {
        uint32_t bits32 = (uint32_t)assemble(f, regs, 2);
        float single;
        memcpy(&single, &bits32, sizeof single);
        v->kind = KIND_FLOAT;
        v->d = f->scale == 1.0 ? (double)single : (double)single * f->scale;
        return;
    }
    case FG_FLOAT64: {
        raw = assemble(f, regs, 4);
        double value;
        memcpy(&value, &raw, sizeof value);
        v->kind = KIND_FLOAT;
        v->d = f->scale == 1.0 ? value : value * f->scale;
        return;
    }
    default:
        break;
    }
    raw = assemble(f, regs, register_span(f));
    int is_unsigned = f->type == FG_UINT16 || f->type == FG_UINT32 || f->type == FG_UINT64;
    int64_t signed_value = 0;
    if (f->type == FG_INT16) signed_value = (int16_t)(uint16_t)raw;
    else if (f->type == FG_INT32) signed_value = (int32_t)(uint32_t)raw;
    else if (f->type == FG_INT64) signed_value = (int64_t)raw;
    if (f->scale == 1.0) {
        v->kind = is_unsigned ? KIND_UINT : KIND_INT;
        v->u = raw;
        v->i = signed_value;
    } else {
        v->kind = KIND_FLOAT;
        v->d = is_unsigned ? (double)raw * f->scale : (double)signed_value * f->scale;
    }
}

static uint8_t *emit(uint8_t *p, const value_t *v) {
    uint64_t bits64;
    switch (v->kind) {
    case KIND_INT:
        *p++ = 0xd3;
        return put_be64(p, (uint64_t)v->i);
    case KIND_UINT:
        *p++ = 0xcf;
        return put_be64(p, v->u);
    case KIND_FLOAT:
        memcpy(&bits64, &v->d, sizeof bits64);
        *p++ = 0xcb;
        return put_be64(p, bits64);
    case KIND_BOOL:
        *p++ = v->i ? 0xc3 : 0xc2;
        return p;
    default:
        *p++ = 0xdb;
        p = put_be32(p, (uint32_t)v->len);
        if (v->len) memcpy(p, v->s, v->len);
        return p + v->len;
    }
}

static uint64_t magnitude(int64_t x) { return x < 0 ? 0 - (uint64_t)x : (uint64_t)x; }

/* exact `diff > threshold` for an integer diff and a non-negative double threshold */
static int exceeds(uint64_t diff, double threshold) {
    if (!(threshold < 18446744073709551616.0)) return 0;
    return diff > (uint64_t)floor(threshold);
}

static int changed(const fg_field *f, const previous_t *old, const value_t *v, const uint8_t *strings) {
    double threshold;
    switch (v->kind) {
    case KIND_BOOL:
        return v->i != old->i;
    case KIND_STR:
        return v->len != old->len || (v->len && memcmp(v->s, strings + old->str_offset, v->len) != 0);
    case KIND_INT: {
        uint64_t diff = v->i >= old->i ? (uint64_t)v->i - (uint64_t)old->i : (uint64_t)old->i - (uint64_t)v->i;
        threshold = f->deadband_percent ? (double)magnitude(old->i) * f->deadband / 100.0 : f->deadband;
        return exceeds(diff, threshold);
    }
    case KIND_UINT: {
        uint64_t diff = v->u >= old->u ? v->u - old->u : old->u - v->u;
        threshold = f->deadband_percent ? (double)old->u * f->deadband / 100.0 : f->deadband;
        return exceeds(diff, threshold);
    }
    default: {
        if (memcmp(&v->d, &old->d, sizeof v->d) == 0) return 0;
        if (isnan(v->d) || isnan(old->d) || isinf(v->d) || isinf(old->d)) return 1;
        threshold = f->deadband_percent ? fabs(old->d) * f->deadband / 100.0 : f->deadband;
        return fabs(v->d - old->d) > threshold;
    }
    }
}

static void remember(fg_table *t, size_t index, const value_t *v) {
    previous_t *old = &t->previous[index];
    old->kind = v->kind;
    old->i = v->i;
    old->u = v->u;
    old->d = v->d;
    old->len = v->len;
    if (v->kind == KIND_STR && v->len) memcpy(t->strings + old->str_offset, v->s, v->len);
}

const uint8_t *fg_table_output(const fg_table *t) { return t ? t->out : NULL; }

static int reserve_registers(fg_table *t, size_t count) {
    if (count > t->registers_cap) {
        uint16_t *registers = realloc(t->registers, count * sizeof *registers);
        if (registers == NULL) return FG_ENOMEM;
        t->registers = registers;
        t->registers_cap = count;
    }
    return FG_OK;
}

static int64_t decode_loaded(fg_table *t, size_t count, int changes_only, size_t *err);

int64_t fg_table_decode(fg_table *t, const char *bytes, size_t count, int changes_only, size_t *err) {
    if (t == NULL || err == NULL || (bytes == NULL && count != 0) || count > ((size_t)1 << 40)) return FG_EARG;
    *err = 0;
    if (reserve_registers(t, count) != FG_OK) return FG_ENOMEM;
    if (count) memcpy(t->registers, bytes, count * sizeof *t->registers);
    return decode_loaded(t, count, changes_only, err);
}

int64_t fg_table_decode_wire(fg_table *t, const char *bytes, size_t count, int changes_only, size_t *err) {
    if (t == NULL || err == NULL || (bytes == NULL && count != 0) || count > ((size_t)1 << 40)) return FG_EARG;
    *err = 0;
    if (reserve_registers(t, count) != FG_OK) return FG_ENOMEM;
    const uint8_t *wire = (const uint8_t *)bytes;
    for (size_t k = 0; k < count; k++) t->registers[k] = (uint16_t)((wire[2 * k] << 8) | wire[2 * k + 1]);
    return decode_loaded(t, count, changes_only, err);
}

static int64_t decode_loaded(fg_table *t, size_t count, int changes_only, size_t *err) {
    const uint16_t *block = t->registers;
    if (t->bits) {
        for (size_t k = 0; k < count; k++) {
            if (block[k] > 1) {
                *err = k;
                return FG_ERANGE;
            }
        }
    }
    for (size_t i = 0; i < t->count; i++) {
        const fg_field *f = &t->fields[i];
        size_t span = t->bits ? 1 : register_span(f);
        if ((uint64_t)f->offset + span > count) {
            *err = i;
            return FG_ESHORT;
        }
    }
    uint8_t *p = t->out + 5;
    uint32_t items = 0;
    int first = !t->has_previous;
    for (size_t i = 0; i < t->count; i++) {
        value_t v = {0, 0, 0, 0.0, NULL, 0};
        decode_field(t, &t->fields[i], block, &v);
        if (changes_only) {
            if (!first && !changed(&t->fields[i], &t->previous[i], &v, t->strings)) continue;
            remember(t, i, &v);
            *p++ = 0xce;
            p = put_be32(p, (uint32_t)i);
            items += 2;
        } else {
            items += 1;
        }
        p = emit(p, &v);
    }
    if (changes_only) t->has_previous = 1;
    t->out[0] = 0xdd;
    put_be32(t->out + 1, items);
    return (int64_t)(p - t->out);
}
