/*
 * A Modbus TCP simulator on libmodbus, for benchmarks: the box's CPU goes to the gateway, not to the simulator.
 *
 * It serves the register layout `fieldgate sim modbus --write-layout FILE` writes (the same units, addresses and
 * start values as the Python simulator, held still as with --static; writes are kept), any number of unit ids on
 * one port, several client connections at once, and requests sent back to back on one connection (answered in
 * order). A unit that is not in the layout gets exception 11, as from a Modbus TCP gateway.
 *
 *   modbus_sim --layout FILE [--host 127.0.0.1] [--port 0] [--delay-ms MS]
 *
 * On start it prints "listening on PORT" (port 0 picks a free one). It counts the requests it receives and prints
 * "requests N" on SIGUSR1 and when it stops (SIGTERM, SIGINT). --delay-ms holds every answer back by MS
 * milliseconds without holding up the requests behind it, as a network's round trip does: a client that waits for
 * each answer gets one per MS, a client with requests outstanding gets them as fast as it sends them.
 *
 * Build: gcc -O2 -o modbus_sim modbus_sim.c $(pkg-config --cflags --libs libmodbus)
 *
 * Layout file: one line per run of registers (or bits), "UNIT KIND ADDRESS VALUE…", KIND one of c (coils),
 * d (discrete inputs), h (holding registers), i (input registers); "#" starts a comment line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/select.h>
#include <sys/socket.h>

#include <modbus.h>

#define MAX_CONNECTIONS 64
#define MAX_QUEUED 256        /* answers held back per connection (--delay-ms) */
#define MAX_ANSWER 260
#define ROOM 64               /* addresses served past a unit's last point, as the Python simulator */
#define BURST 64              /* requests taken from one connection before looking at the others */

enum { COILS, INPUT_BITS, HOLDING, INPUTS, KINDS };

typedef struct {
    int unit, kind, address, value;
} cell_t;

typedef struct {
    double due;
    int length;
    uint8_t bytes[MAX_ANSWER];
} answer_t;

typedef struct {
    int fd;
    int head, count;          /* queued answers: a ring */
    answer_t *queue;
} connection_t;

static volatile sig_atomic_t report_asked = 0, stop_asked = 0;
static unsigned long long requests = 0;

static void on_usr1(int sig) { (void)sig; report_asked = 1; }
static void on_stop(int sig) { (void)sig; stop_asked = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int kind_of(const char *word) {
    if (strcmp(word, "c") == 0) return COILS;
    if (strcmp(word, "d") == 0) return INPUT_BITS;
    if (strcmp(word, "h") == 0) return HOLDING;
    if (strcmp(word, "i") == 0) return INPUTS;
    return -1;
}

/* Reads the layout into cells; exits with a message naming the line on bad input. */
static cell_t *read_layout(const char *path, size_t *count) {
    FILE *file = fopen(path, "r");
    if (!file) {
        fprintf(stderr, "modbus_sim: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    size_t size = 1024, n = 0;
    cell_t *cells = malloc(size * sizeof *cells);
    char *line = NULL;
    size_t line_size = 0;
    int number = 0;
    while (getline(&line, &line_size, file) >= 0) {
        number++;
        char *save = NULL, *word = strtok_r(line, " \t\r\n", &save);
        if (!word || word[0] == '#') continue;
        char *end;
        long unit = strtol(word, &end, 10);
        char *kind_word = strtok_r(NULL, " \t\r\n", &save);
        char *address_word = strtok_r(NULL, " \t\r\n", &save);
        int kind = kind_word ? kind_of(kind_word) : -1;
        long address = address_word ? strtol(address_word, NULL, 10) : -1;
        if (*end || unit < 0 || unit > 255 || kind < 0 || address < 0 || address > 65535) {
            fprintf(stderr, "modbus_sim: %s:%d: expected UNIT KIND(c|d|h|i) ADDRESS VALUE...\n", path, number);
            exit(2);
        }
        for (word = strtok_r(NULL, " \t\r\n", &save); word; word = strtok_r(NULL, " \t\r\n", &save), address++) {
            long value = strtol(word, &end, 10);
            if (*end || value < 0 || value > 65535 || address > 65535) {
                fprintf(stderr, "modbus_sim: %s:%d: bad value or address past 65535: %s\n", path, number, word);
                exit(2);
            }
            if (n == size) cells = realloc(cells, (size *= 2) * sizeof *cells);
            cells[n++] = (cell_t){(int)unit, kind, (int)address, (int)value};
        }
    }
    free(line);
    fclose(file);
    *count = n;
    return cells;
}

/* One libmodbus mapping per unit of the layout, each big enough for its points and some room past them. */
static void build_units(const cell_t *cells, size_t count, modbus_mapping_t *units[256]) {
    int ends[256][KINDS];
    int present[256] = {0};
    memset(ends, 0, sizeof ends);
    for (size_t i = 0; i < count; i++) {
        present[cells[i].unit] = 1;
        if (cells[i].address + 1 > ends[cells[i].unit][cells[i].kind])
            ends[cells[i].unit][cells[i].kind] = cells[i].address + 1;
    }
    for (int u = 0; u < 256; u++) {
        if (!present[u]) continue;
        int size[KINDS];
        for (int k = 0; k < KINDS; k++) {
            int wanted = ends[u][k] + ROOM;
            if (k == COILS || k == INPUT_BITS) wanted = (wanted + 15) / 16 * 16;
            size[k] = wanted > 65536 ? 65536 : wanted;
        }
        units[u] = modbus_mapping_new(size[COILS], size[INPUT_BITS], size[HOLDING], size[INPUTS]);
        if (!units[u]) {
            fprintf(stderr, "modbus_sim: unit %d: %s\n", u, modbus_strerror(errno));
            exit(1);
        }
    }
    for (size_t i = 0; i < count; i++) {
        modbus_mapping_t *m = units[cells[i].unit];
        int a = cells[i].address, v = cells[i].value;
        switch (cells[i].kind) {
        case COILS: m->tab_bits[a] = v ? 1 : 0; break;
        case INPUT_BITS: m->tab_input_bits[a] = v ? 1 : 0; break;
        case HOLDING: m->tab_registers[a] = (uint16_t)v; break;
        case INPUTS: m->tab_input_registers[a] = (uint16_t)v; break;
        }
    }
}

static void close_connection(connection_t *c) {
    close(c->fd);
    free(c->queue);
    c->fd = -1;
    c->queue = NULL;
    c->head = c->count = 0;
}

/* Answers one request of connection `c` (already received into `query`); with a delay, queues the answer. */
static void answer(modbus_t *ctx, connection_t *c, const uint8_t *query, int length, modbus_mapping_t *units[256],
                   int pair[2], double delay) {
    int header = modbus_get_header_length(ctx);
    modbus_mapping_t *unit = units[query[header - 1]];
    if (delay > 0) modbus_set_socket(ctx, pair[0]);  /* the answer goes into the pair, then into the queue */
    if (unit)
        modbus_reply(ctx, query, length, unit);
    else
        modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_GATEWAY_TARGET);
    if (delay <= 0) return;
    modbus_set_socket(ctx, c->fd);
    answer_t *slot = &c->queue[(c->head + c->count) % MAX_QUEUED];
    ssize_t got = recv(pair[1], slot->bytes, sizeof slot->bytes, MSG_DONTWAIT);
    if (got <= 0) return;
    slot->length = (int)got;
    slot->due = now() + delay;
    c->count++;
}

/* Sends the queued answers that are due; returns the time the next one is due (0: none queued). */
static double flush_due(connection_t *c) {
    double t = now();
    while (c->count > 0) {
        answer_t *first = &c->queue[c->head];
        if (first->due > t) return first->due;
        if (send(c->fd, first->bytes, first->length, MSG_NOSIGNAL) != first->length) {
            close_connection(c);
            return 0;
        }
        c->head = (c->head + 1) % MAX_QUEUED;
        c->count--;
    }
    return 0;
}

static void report(void) {
    printf("requests %llu\n", requests);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *layout = NULL, *host = "127.0.0.1";
    int port = 0;
    double delay = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--layout") == 0 && i + 1 < argc) layout = argv[++i];
        else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) host = argv[++i];
        else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc) delay = atof(argv[++i]) / 1000.0;
        else {
            fprintf(stderr, "usage: modbus_sim --layout FILE [--host 127.0.0.1] [--port 0] [--delay-ms MS]\n");
            return 2;
        }
    }
    if (!layout || port < 0 || port > 65535 || delay < 0 || delay > 10) {
        fprintf(stderr, "usage: modbus_sim --layout FILE [--host 127.0.0.1] [--port 0] [--delay-ms MS]\n");
        return 2;
    }
    size_t count;
    cell_t *cells = read_layout(layout, &count);
    modbus_mapping_t *units[256] = {0};
    build_units(cells, count, units);
    free(cells);

    struct sigaction action = {0};
    action.sa_handler = on_usr1;  /* no SA_RESTART: select returns at once and the loop reports */
    sigaction(SIGUSR1, &action, NULL);
    action.sa_handler = on_stop;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    modbus_t *ctx = modbus_new_tcp(host, port);
    if (!ctx) {
        fprintf(stderr, "modbus_sim: %s\n", modbus_strerror(errno));
        return 1;
    }
    modbus_set_indication_timeout(ctx, 1, 0);  /* a request cut in half is given up on after a second */
    int listener = modbus_tcp_listen(ctx, MAX_CONNECTIONS);
    if (listener < 0) {
        fprintf(stderr, "modbus_sim: cannot listen on %s:%d: %s\n", host, port, modbus_strerror(errno));
        return 1;
    }
    struct sockaddr_in bound;
    socklen_t bound_size = sizeof bound;
    getsockname(listener, (struct sockaddr *)&bound, &bound_size);
    printf("listening on %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    int pair[2] = {-1, -1};
    if (delay > 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
        perror("modbus_sim: socketpair");
        return 1;
    }
    connection_t connections[MAX_CONNECTIONS];
    for (int i = 0; i < MAX_CONNECTIONS; i++) connections[i] = (connection_t){-1, 0, 0, NULL};
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];

    while (!stop_asked) {
        if (report_asked) {
            report_asked = 0;
            report();
        }
        double next_due = 0;
        for (int i = 0; i < MAX_CONNECTIONS; i++) {
            if (connections[i].fd < 0 || connections[i].count == 0) continue;
            double due = flush_due(&connections[i]);
            if (due > 0 && (next_due == 0 || due < next_due)) next_due = due;
        }
        fd_set readable;
        FD_ZERO(&readable);
        FD_SET(listener, &readable);
        int top = listener;
        for (int i = 0; i < MAX_CONNECTIONS; i++) {
            connection_t *c = &connections[i];
            if (c->fd < 0 || c->count >= MAX_QUEUED - BURST) continue;  /* a full queue: read on when it drains */
            FD_SET(c->fd, &readable);
            if (c->fd > top) top = c->fd;
        }
        double wait = 0.2;
        if (next_due > 0) {
            wait = next_due - now();
            if (wait < 0) wait = 0;
        }
        struct timeval timeout = {(time_t)wait, (suseconds_t)((wait - (time_t)wait) * 1e6)};
        int ready = select(top + 1, &readable, NULL, NULL, &timeout);
        if (ready < 0) {
            if (errno == EINTR) continue;
            perror("modbus_sim: select");
            break;
        }
        if (FD_ISSET(listener, &readable)) {
            int fd = accept(listener, NULL, NULL);
            if (fd >= 0) {
                int slot = -1;
                for (int i = 0; i < MAX_CONNECTIONS && slot < 0; i++)
                    if (connections[i].fd < 0) slot = i;
                if (slot < 0) {
                    close(fd);  /* full: the client sees the connection closed */
                } else {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    connections[slot] = (connection_t){fd, 0, 0, delay > 0 ? malloc(MAX_QUEUED * sizeof(answer_t)) : NULL};
                }
            }
        }
        for (int i = 0; i < MAX_CONNECTIONS; i++) {
            connection_t *c = &connections[i];
            if (c->fd < 0 || !FD_ISSET(c->fd, &readable)) continue;
            modbus_set_socket(ctx, c->fd);
            for (int taken = 0; taken < BURST && c->count < MAX_QUEUED; taken++) {
                int length = modbus_receive(ctx, query);
                if (length < 0) {
                    close_connection(c);
                    break;
                }
                if (length > 0) {
                    requests++;
                    answer(ctx, c, query, length, units, pair, delay);
                }
                int waiting = 0;
                if (ioctl(c->fd, FIONREAD, &waiting) != 0 || waiting <= 0) break;
            }
        }
    }
    report();
    for (int i = 0; i < MAX_CONNECTIONS; i++)
        if (connections[i].fd >= 0) close_connection(&connections[i]);
    close(listener);
    modbus_free(ctx);
    for (int u = 0; u < 256; u++)
        if (units[u]) modbus_mapping_free(units[u]);
    return 0;
}
