/* MQTT 3.1.1 topic router: a trie of filter levels, updated in place on every add and remove.
 *
 * Each node owns a hash map of literal children plus its '+' and '#' children; a filter's route ids live on the
 * node its last level reaches. A route keeps the list of its nodes so removal walks only what it touched and
 * prunes nodes left empty. Semantics mirror gateway/router/python.py.
 */
#include <stdlib.h>
#include <string.h>

#include "fieldgate_native.h"

#define MAX_TOPIC_BYTES 65535

typedef struct entry {
    uint64_t hash;
} entry_t;

typedef struct {
    entry_t **slots;
    size_t cap; /* a power of two, or 0 */
    size_t count;
} map_t;

typedef struct node {
    uint64_t hash; /* first: a node is a map entry */
    struct node *parent;
    char *name;
    size_t len;
    int kind; /* 0 literal, 1 '+', 2 '#' */
    map_t children;
    struct node *plus;
    struct node *hash_child;
    int64_t *ids;
    size_t nids, cap_ids;
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
    uint64_t *level_hash;
    frame_t *stack;
    size_t level_cap;
    int64_t *found; /* scratch: every id collected, duplicates included */
    size_t found_cap;
    int64_t *results; /* sorted unique ids of the last match; moves only when it must grow */
    size_t results_cap;
};

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_id(int64_t id) {
    uint64_t z = (uint64_t)id + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int map_grow(map_t *m) {
    size_t cap = m->cap ? m->cap * 2 : 4;
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

static node_t *find_child(const node_t *n, const char *name, size_t len, uint64_t h) {
    const map_t *m = &n->children;
    if (m->count == 0) return NULL;
    size_t mask = m->cap - 1;
    for (size_t j = h & mask; m->slots[j] != NULL; j = (j + 1) & mask) {
        const node_t *c = (const node_t *)m->slots[j];
        if (c->hash == h && c->len == len && memcmp(c->name, name, len) == 0) return (node_t *)c;
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
    free(n->name);
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
    uint64_t h = hash_bytes(name, len);
    node_t *c = special ? *special : find_child(n, name, len, h);
    if (c != NULL) return c;
    c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->name = malloc(len ? len : 1);
    if (c->name == NULL) {
        free(c);
        return NULL;
    }
    if (len) memcpy(c->name, name, len);
    c->len = len;
    c->hash = h;
    c->kind = kind;
    c->parent = n;
    if (special) {
        *special = c;
    } else if (map_insert(&n->children, (entry_t *)c) != FG_OK) {
        free(c->name);
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
    uint64_t *hashes = realloc(r->level_hash, cap * sizeof *hashes);
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

int64_t fg_router_match(fg_router *r, const char *topic, size_t len) {
    if (r == NULL || topic == NULL) return FG_EARG;
    if (len == 0 || len > MAX_TOPIC_BYTES) return FG_EARG;
    size_t levels = 1;
    for (size_t i = 0; i < len; i++) {
        char c = topic[i];
        if (c == '/') levels++;
        else if (c == '+' || c == '#' || c == '\0') return FG_EARG;
    }
    if (reserve_levels(r, levels) != FG_OK) return FG_ENOMEM;
    size_t start = 0, level = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && topic[i] != '/') continue;
        r->level_ptr[level] = topic + start;
        r->level_len[level] = i - start;
        r->level_hash[level++] = hash_bytes(topic + start, i - start);
        start = i + 1;
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
        const node_t *c = find_child(f.node, r->level_ptr[f.level], r->level_len[f.level], r->level_hash[f.level]);
        if (c) r->stack[depth++] = (frame_t){c, f.level + 1};
    }
    if (found > 1) {
        qsort(r->found, found, sizeof *r->found, compare_ids);
        size_t unique = 1;
        for (size_t i = 1; i < found; i++) {
            if (r->found[i] != r->found[unique - 1]) r->found[unique++] = r->found[i];
        }
        found = unique;
    }
    if (found > r->results_cap) {
        size_t cap = found * 2;
        int64_t *results = realloc(r->results, cap * sizeof *results);
        if (results == NULL) return FG_ENOMEM;
        r->results = results;
        r->results_cap = cap;
    }
    if (found) memcpy(r->results, r->found, found * sizeof *r->found);
    return (int64_t)found;
}
