/* MQTT 3.1.1 topic router: a trie of filter levels, updated in place on every add and remove.
 *
 * Each node owns a hash map of literal children plus its '+' and '#' children; a filter's route ids live on the
 * node its last level reaches. A route keeps the list of its nodes so removal walks only what it touched and
 * prunes nodes left empty. Semantics mirror gateway/router/python.py.
 */
#include <stdlib.h>
#include <string.h>

#include "fieldgate_native.h"
#include "msgpack.h"

#define MAX_TOPIC_BYTES 65535

typedef struct entry {
    uint64_t hash;
} entry_t;

typedef struct {
    entry_t **slots;
    uint32_t cap; /* a power of two, or 0 */
    uint32_t count;
} map_t;

#define NODE_ALIGN 64

/* What a match reads is the first 64 bytes, and nodes are allocated on 64-byte boundaries: a lookup costs one
 * cache line of a node. The match walk is bound by cache misses, not instructions. */
typedef struct node {
    uint64_t hash; /* first: a node is a map entry */
    uint64_t head[2]; /* the name's first 16 bytes, zero padded: names that short compare without the name */
    uint32_t len;
    uint32_t nids;
    map_t children;
    struct node *plus;
    struct node *hash_child;
    /* below: add, remove and collecting ids */
    int64_t *ids;
    size_t cap_ids;
    struct node *parent;
    char *name; /* points just past the node, in the same allocation */
    int kind; /* 0 literal, 1 '+', 2 '#' */
} node_t;

typedef struct {
    uint64_t hash; /* first: a route is a map entry */
    int64_t id;
    node_t **nodes;
    size_t count, cap;
} route_t;

typedef struct {
    const node_t *node;
    size_t level;
} frame_t;

struct fg_router {
    node_t root;
    map_t routes;
    size_t entries;
    const char **level_ptr;
    size_t *level_len;
    uint64_t *level_hash; /* per level: its hash and the two head words of its name */
    frame_t *stack;
    size_t level_cap;
    int64_t *found; /* scratch: every id collected, duplicates included */
    size_t found_cap;
    int64_t *results; /* sorted unique ids of the last match; moves only when it must grow */
    size_t results_cap;
    uint8_t *packed; /* MessagePack of the last match_many; moves when it must grow */
    size_t packed_cap;
    size_t bad_index; /* the topic match_many refused */
};

/* A level's key: key[1..2] are its first 16 bytes zero padded (names that short compare without the name),
 * key[0] the hash, eight bytes a step (FxHash-style multiply-rotate) with MurmurHash3's finaliser so every input
 * bit reaches the low bits the maps index by. Levels are keyed on every match: a byte-wise loop here cost more
 * than the trie walk itself. */
static uint64_t load_word(const char *s, size_t n, size_t avail) {
    uint64_t w = 0;
    if (n >= 8 || avail >= 8) { /* one unaligned load, then keep the level's own bytes */
        memcpy(&w, s, 8);
        if (n < 8) w &= n ? (~0ULL >> (64 - 8 * n)) : 0;
    } else {
        for (size_t i = 0; i < n; i++) w |= (uint64_t)(uint8_t)s[i] << (8 * i);
    }
    return w;
}

/* `avail` bytes are readable from `s` (at least n): loads may read past the level, never past that. */
static void level_key(const char *s, size_t n, size_t avail, uint64_t key[3]) {
    const uint64_t k = 0x517cc1b727220a95ULL;
    uint64_t head0 = load_word(s, n, avail);
    uint64_t head1 = n > 8 ? load_word(s + 8, n - 8, avail - 8) : 0;
    uint64_t h = (((uint64_t)n * k) ^ head0) * k;
    h = (((h << 5) | (h >> 59)) ^ head1) * k;
    for (size_t i = 16; i < n; i += 8) h = (((h << 5) | (h >> 59)) ^ load_word(s + i, n - i, avail - i)) * k;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    key[0] = h ^ (h >> 33);
    key[1] = head0;
    key[2] = head1;
}

static uint64_t hash_id(int64_t id) {
    uint64_t z = (uint64_t)id + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int map_grow(map_t *m) {
    if (m->cap >= (1u << 31)) return FG_ENOMEM;
    uint32_t cap = m->cap ? m->cap * 2 : 4;
    entry_t **slots = calloc(cap, sizeof *slots);
    if (slots == NULL) return FG_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        entry_t *e = m->slots[i];
        if (e == NULL) continue;
        size_t j = e->hash & (cap - 1);
        while (slots[j] != NULL) j = (j + 1) & (cap - 1);
        slots[j] = e;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return FG_OK;
}

static int map_insert(map_t *m, entry_t *e) {
    if ((m->count + 1) * 2 > m->cap && map_grow(m) != FG_OK) return FG_ENOMEM;
    size_t j = e->hash & (m->cap - 1);
    while (m->slots[j] != NULL) j = (j + 1) & (m->cap - 1);
    m->slots[j] = e;
    m->count++;
    return FG_OK;
}

/* Backward-shift deletion keeps linear probing free of tombstones. */
static void map_delete(map_t *m, const entry_t *e) {
    size_t mask = m->cap - 1, i = e->hash & mask;
    while (m->slots[i] != e) i = (i + 1) & mask;
    m->slots[i] = NULL;
    m->count--;
    for (size_t j = (i + 1) & mask; m->slots[j] != NULL; j = (j + 1) & mask) {
        size_t home = m->slots[j]->hash & mask;
        int movable = (j > i) ? (home <= i || home > j) : (home <= i && home > j);
        if (movable) {
            m->slots[i] = m->slots[j];
            m->slots[j] = NULL;
            i = j;
        }
    }
}

static node_t *find_child(const node_t *n, const char *name, size_t len, const uint64_t key[3]) {
    const map_t *m = &n->children;
    if (m->count == 0) return NULL;
    size_t mask = m->cap - 1;
    for (size_t j = key[0] & mask; m->slots[j] != NULL; j = (j + 1) & mask) {
        const node_t *c = (const node_t *)m->slots[j];
        if (c->hash == key[0] && c->len == len && c->head[0] == key[1] && c->head[1] == key[2] &&
            (len <= 16 || memcmp(c->name + 16, name + 16, len - 16) == 0))
            return (node_t *)c;
    }
    return NULL;
}

static route_t *find_route(const fg_router *r, int64_t id) {
    const map_t *m = &r->routes;
    if (m->count == 0) return NULL;
    uint64_t h = hash_id(id);
    size_t mask = m->cap - 1;
    for (size_t j = h & mask; m->slots[j] != NULL; j = (j + 1) & mask) {
        route_t *route = (route_t *)m->slots[j];
        if (route->id == id) return route;
    }
    return NULL;
}

static void free_node(node_t *n) {
    for (size_t i = 0; i < n->children.cap; i++) {
        if (n->children.slots[i] != NULL) free_node((node_t *)n->children.slots[i]);
    }
    if (n->plus) free_node(n->plus);
    if (n->hash_child) free_node(n->hash_child);
    free(n->children.slots);
    free(n->ids);
    free(n);
}

static int node_is_empty(const node_t *n) {
    return n->nids == 0 && n->children.count == 0 && n->plus == NULL && n->hash_child == NULL;
}

static void prune(fg_router *r, node_t *n) {
    while (n != &r->root && node_is_empty(n)) {
        node_t *parent = n->parent;
        if (n->kind == 1) parent->plus = NULL;
        else if (n->kind == 2) parent->hash_child = NULL;
        else map_delete(&parent->children, (entry_t *)n);
        free_node(n);
        n = parent;
    }
}

static node_t *child_for(node_t *n, const char *name, size_t len) {
    int kind = (len == 1 && name[0] == '+') ? 1 : (len == 1 && name[0] == '#') ? 2 : 0;
    node_t **special = kind == 1 ? &n->plus : kind == 2 ? &n->hash_child : NULL;
    uint64_t key[3];
    level_key(name, len, len, key);
    node_t *c = special ? *special : find_child(n, name, len, key);
    if (c != NULL) return c;
    size_t size = (sizeof *c + len + 1 + NODE_ALIGN - 1) / NODE_ALIGN * NODE_ALIGN; /* the name right behind */
    c = aligned_alloc(NODE_ALIGN, size);
    if (c == NULL) return NULL;
    memset(c, 0, size);
    c->name = (char *)(c + 1);
    if (len) memcpy(c->name, name, len);
    c->head[0] = key[1];
    c->head[1] = key[2];
    c->len = (uint32_t)len;
    c->hash = key[0];
    c->kind = kind;
    c->parent = n;
    if (special) {
        *special = c;
    } else if (map_insert(&n->children, (entry_t *)c) != FG_OK) {
        free(c);
        return NULL;
    }
    return c;
}

static int filter_is_valid(const char *f, size_t len) {
    if (f == NULL || len == 0 || len > MAX_TOPIC_BYTES) return 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && f[i] == '\0') return 0;
        if (i < len && f[i] != '/') continue;
        size_t n = i - start;
        for (size_t k = start; k < i; k++) {
            if ((f[k] == '+' || f[k] == '#') && n != 1) return 0;
        }
        if (n == 1 && f[start] == '#' && i != len) return 0;
        start = i + 1;
    }
    return 1;
}

int fg_router_new(fg_router **out) {
    if (out == NULL) return FG_EARG;
    *out = calloc(1, sizeof **out);
    return *out ? FG_OK : FG_ENOMEM;
}

void fg_router_free(fg_router *r) {
    if (r == NULL) return;
    for (size_t i = 0; i < r->root.children.cap; i++) {
        if (r->root.children.slots[i] != NULL) free_node((node_t *)r->root.children.slots[i]);
    }
    if (r->root.plus) free_node(r->root.plus);
    if (r->root.hash_child) free_node(r->root.hash_child);
    free(r->root.children.slots);
    free(r->root.ids);
    for (size_t i = 0; i < r->routes.cap; i++) {
        route_t *route = (route_t *)r->routes.slots[i];
        if (route == NULL) continue;
        free(route->nodes);
        free(route);
    }
    free(r->routes.slots);
    free(r->level_ptr);
    free(r->level_len);
    free(r->level_hash);
    free(r->stack);
    free(r->found);
    free(r->results);
    free(r->packed);
    free(r);
}

static int append_id(node_t *n, int64_t id) {
    if (n->nids == n->cap_ids) {
        size_t cap = n->cap_ids ? n->cap_ids * 2 : 2;
        int64_t *ids = realloc(n->ids, cap * sizeof *ids);
        if (ids == NULL) return FG_ENOMEM;
        n->ids = ids;
        n->cap_ids = cap;
    }
    n->ids[n->nids++] = id;
    return FG_OK;
}

int fg_router_add(fg_router *r, int64_t id, const char *filter, size_t len) {
    if (r == NULL || !filter_is_valid(filter, len)) return FG_EARG;
    node_t *n = &r->root;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && filter[i] != '/') continue;
        node_t *c = child_for(n, filter + start, i - start);
        if (c == NULL) {
            prune(r, n);
            return FG_ENOMEM;
        }
        n = c;
        start = i + 1;
    }
    route_t *route = find_route(r, id);
    if (route != NULL) {
        for (size_t k = 0; k < route->count; k++) {
            if (route->nodes[k] == n) return 0;
        }
    } else {
        route = calloc(1, sizeof *route);
        if (route != NULL) {
            route->id = id;
            route->hash = hash_id(id);
        }
        if (route == NULL || map_insert(&r->routes, (entry_t *)route) != FG_OK) {
            free(route);
            prune(r, n);
            return FG_ENOMEM;
        }
    }
    if (route->count == route->cap) {
        size_t cap = route->cap ? route->cap * 2 : 1;
        node_t **nodes = realloc(route->nodes, cap * sizeof *nodes);
        if (nodes == NULL) goto out_of_memory;
        route->nodes = nodes;
        route->cap = cap;
    }
    if (append_id(n, id) != FG_OK) goto out_of_memory;
    route->nodes[route->count++] = n;
    r->entries++;
    return 1;

out_of_memory:
    if (route->count == 0) {
        map_delete(&r->routes, (entry_t *)route);
        free(route->nodes);
        free(route);
    }
    prune(r, n);
    return FG_ENOMEM;
}

int64_t fg_router_remove(fg_router *r, int64_t id) {
    if (r == NULL) return FG_EARG;
    route_t *route = find_route(r, id);
    if (route == NULL) return 0;
    size_t removed = route->count;
    for (size_t k = 0; k < route->count; k++) {
        node_t *n = route->nodes[k];
        for (size_t j = 0; j < n->nids; j++) {
            if (n->ids[j] == id) {
                n->ids[j] = n->ids[--n->nids];
                break;
            }
        }
        prune(r, n);
    }
    map_delete(&r->routes, (entry_t *)route);
    free(route->nodes);
    free(route);
    r->entries -= removed;
    return (int64_t)removed;
}

size_t fg_router_len(const fg_router *r) { return r ? r->entries : 0; }

static int reserve_levels(fg_router *r, size_t levels) {
    if (levels <= r->level_cap) return FG_OK;
    size_t cap = levels * 2;
    const char **ptr = realloc((void *)r->level_ptr, cap * sizeof *ptr);
    if (ptr == NULL) return FG_ENOMEM;
    r->level_ptr = ptr;
    size_t *len = realloc(r->level_len, cap * sizeof *len);
    if (len == NULL) return FG_ENOMEM;
    r->level_len = len;
    uint64_t *hashes = realloc(r->level_hash, 3 * cap * sizeof *hashes); /* hash, then the two head words */
    if (hashes == NULL) return FG_ENOMEM;
    r->level_hash = hashes;
    frame_t *stack = realloc(r->stack, (2 * cap + 2) * sizeof *stack);
    if (stack == NULL) return FG_ENOMEM;
    r->stack = stack;
    r->level_cap = cap;
    return FG_OK;
}

static int collect(fg_router *r, const node_t *n, size_t *found) {
    if (n->nids == 0) return FG_OK;
    if (*found + n->nids > r->found_cap) {
        size_t cap = (*found + n->nids) * 2;
        int64_t *ids = realloc(r->found, cap * sizeof *ids);
        if (ids == NULL) return FG_ENOMEM;
        r->found = ids;
        r->found_cap = cap;
    }
    memcpy(r->found + *found, n->ids, n->nids * sizeof *n->ids);
    *found += n->nids;
    return FG_OK;
}

static int compare_ids(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

const int64_t *fg_router_results(const fg_router *r) { return r ? r->results : NULL; }

size_t fg_router_capacity(const fg_router *r) { return r ? r->results_cap : 0; }

/* Every route of one topic, sorted and unique, left in r->found; returns how many or a negative FG_ code. */
static int64_t match_one(fg_router *r, const char *topic, size_t len) {
    if (len == 0 || len > MAX_TOPIC_BYTES) return FG_EARG;
    /* memchr is vectorised: three scans refuse wildcards and NUL, then one per level splits at '/'. */
    if (memchr(topic, '+', len) || memchr(topic, '#', len) || memchr(topic, '\0', len)) return FG_EARG;
    size_t levels = 0;
    const char *at = topic, *end = topic + len;
    for (;;) {
        const char *slash = memchr(at, '/', (size_t)(end - at));
        const char *stop = slash ? slash : end;
        if (levels == r->level_cap && reserve_levels(r, levels + 1) != FG_OK) return FG_ENOMEM;
        r->level_ptr[levels] = at;
        r->level_len[levels] = (size_t)(stop - at);
        level_key(at, (size_t)(stop - at), (size_t)(end - at), r->level_hash + 3 * levels++);
        if (slash == NULL) break;
        at = slash + 1;
    }
    int dollar = topic[0] == '$';
    size_t found = 0, depth = 0;
    r->stack[depth++] = (frame_t){&r->root, 0};
    while (depth > 0) {
        frame_t f = r->stack[--depth];
        int wildcards = !(dollar && f.level == 0);
        if (wildcards && f.node->hash_child && collect(r, f.node->hash_child, &found) != FG_OK) return FG_ENOMEM;
        if (f.level == levels) {
            if (collect(r, f.node, &found) != FG_OK) return FG_ENOMEM;
            continue;
        }
        if (wildcards && f.node->plus) r->stack[depth++] = (frame_t){f.node->plus, f.level + 1};
        const node_t *c = find_child(f.node, r->level_ptr[f.level], r->level_len[f.level], r->level_hash + 3 * f.level);
        if (c) r->stack[depth++] = (frame_t){c, f.level + 1};
    }
    if (found > 1) {
        if (found <= 16) { /* the common case: a few routes; insertion sort beats qsort's calls */
            for (size_t i = 1; i < found; i++) {
                int64_t id = r->found[i];
                size_t j = i;
                for (; j > 0 && r->found[j - 1] > id; j--) r->found[j] = r->found[j - 1];
                r->found[j] = id;
            }
        } else {
            qsort(r->found, found, sizeof *r->found, compare_ids);
        }
        size_t unique = 1;
        for (size_t i = 1; i < found; i++) {
            if (r->found[i] != r->found[unique - 1]) r->found[unique++] = r->found[i];
        }
        found = unique;
    }
    return (int64_t)found;
}

int64_t fg_router_match(fg_router *r, const char *topic, size_t len) {
    if (r == NULL || topic == NULL) return FG_EARG;
    int64_t found = match_one(r, topic, len);
    if (found <= 0) return found;
    if ((size_t)found > r->results_cap) {
        size_t cap = (size_t)found * 2;
        int64_t *results = realloc(r->results, cap * sizeof *results);
        if (results == NULL) return FG_ENOMEM;
        r->results = results;
        r->results_cap = cap;
    }
    memcpy(r->results, r->found, (size_t)found * sizeof *r->found);
    return found;
}

static int reserve_packed(fg_router *r, size_t need) {
    if (need <= r->packed_cap) return FG_OK;
    size_t cap = need > 4096 ? need * 2 : 8192;
    uint8_t *packed = realloc(r->packed, cap);
    if (packed == NULL) return FG_ENOMEM;
    r->packed = packed;
    r->packed_cap = cap;
    return FG_OK;
}

int64_t fg_router_match_many(fg_router *r, const char *topics, size_t len, size_t count) {
    if (r == NULL || (topics == NULL && len > 0) || count > UINT32_MAX) return FG_EARG;
    if (reserve_packed(r, 5) != FG_OK) return FG_ENOMEM;
    size_t used = (size_t)(put_array(r->packed, (uint32_t)count) - r->packed);
    size_t start = 0;
    for (size_t k = 0; k < count; k++) {
        const char *end = start < len ? memchr(topics + start, '\0', len - start) : NULL;
        size_t stop = end ? (size_t)(end - topics) : len;
        if (start > len || (k + 1 < count) != (end != NULL)) {
            r->bad_index = k; /* fewer or more topics than `count` */
            return FG_EARG;
        }
        int64_t found = match_one(r, topics + start, stop - start);
        if (found < 0) {
            r->bad_index = k;
            return found;
        }
        if (reserve_packed(r, used + 5 + (size_t)found * 9) != FG_OK) return FG_ENOMEM;
        uint8_t *p = put_array(r->packed + used, (uint32_t)found);
        for (int64_t i = 0; i < found; i++) p = put_int(p, r->found[i]);
        used = (size_t)(p - r->packed);
        start = stop + 1;
    }
    return (int64_t)used;
}

const uint8_t *fg_router_packed(const fg_router *r) { return r ? r->packed : NULL; }

size_t fg_router_bad_index(const fg_router *r) { return r ? r->bad_index : 0; }
