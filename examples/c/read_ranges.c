/* Reads byte ranges of one file with al_worker_request_range, several in
 * flight, and checks each against pread(2) of the same bytes.
 *
 *   scripts/pkgconfig.sh --release
 *   cc -O2 -std=c11 examples/c/read_ranges.c \
 *      $(PKG_CONFIG_PATH=target/release/pkgconfig pkg-config --cflags --libs asyncloader) \
 *      -lpthread -o read_ranges
 *   ./read_ranges [FILE [OFFSET:LENGTH ...]]
 *
 * Without FILE it writes a file of its own (3 MiB + 12345 bytes, in
 * $TMPDIR or /tmp, removed at exit); without ranges it reads a default set
 * (odd offsets, empty ranges, ranges across and past the end of the file).
 * An entry holds at most max_file_size bytes (1 MiB here): a longer range
 * would be refused with -EFBIG, so those are read into the loader's arena
 * (al_config.arena_size) with al_worker_request_into, which has no limit.
 *
 * Prints a line per range and "verified: N ok, M differ, K failed"; exits
 * 1 unless every range matched. */
#define _GNU_SOURCE
#include <asyncloader.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define QUEUE_DEPTH 8
#define MAX_FILE (1u << 20)

struct range {
    uint64_t off, len;
    int into_arena;   /* longer than MAX_FILE: read into the arena */
    uint64_t dst;     /* its place in the arena */
    int done;
};

static const char *path;
static uint64_t file_size;
static size_t ok, differ, failed;

/* The bytes pread gives for `r` (fewer at the end of the file). */
static uint64_t expected_len(const struct range *r) {
    if (r->off >= file_size) return 0;
    return r->len < file_size - r->off ? r->len : file_size - r->off;
}

/* 1 when the `n` bytes at `data` are those of the file at `off`. */
static int same_as_pread(const uint8_t *data, size_t n, uint64_t off) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    uint8_t *buf = malloc(n ? n : 1);
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (k <= 0) break;
        got += (size_t)k;
    }
    int same = got == n && memcmp(buf, data, n) == 0;
    free(buf);
    close(fd);
    return same;
}

/* Waits for one entry, finds the range it answers and checks it. An entry
 * says where it started (al_entry_offset) and how many bytes it holds;
 * an arena entry's data is its place in the arena (`arena_len` bytes at
 * `arena`). */
static void take_one(al_worker *w, struct range *rs, size_t n, const uint8_t *arena,
                     size_t arena_len) {
    al_entry *e;
    int rc = al_worker_wait_get(w, -1, &e);
    if (rc < 0) {
        fprintf(stderr, "wait: %s\n", al_strerror(rc));
        exit(1);
    }
    const uint8_t *data = al_entry_data(e);
    size_t size = al_entry_size(e);
    uint64_t off = al_entry_offset(e);
    int err = al_entry_error(e);
    uintptr_t d = (uintptr_t)data, a = (uintptr_t)arena;
    int in_arena = arena_len > 0 && d >= a && d - a <= arena_len;
    struct range *r = NULL;
    for (size_t i = 0; i < n && !r; i++) {
        struct range *c = &rs[i];
        if (c->done || c->off != off) continue;
        if (err != 0 || (c->into_arena ? in_arena && d - a == c->dst
                                       : !in_arena && expected_len(c) == size))
            r = c;
    }
    if (!r) {
        printf("%llu: an entry that answers no range\n", (unsigned long long)off);
        differ++;
    } else if (err != 0) {
        printf("%llu+%llu: %s\n", (unsigned long long)r->off, (unsigned long long)r->len,
               al_strerror(err));
        failed++;
    } else {
        int same = size == expected_len(r) && same_as_pread(data, size, r->off);
        printf("%llu+%llu: %zu bytes%s, %s\n", (unsigned long long)r->off,
               (unsigned long long)r->len, size, r->into_arena ? " (arena)" : "",
               same ? "same as pread" : "DIFFERENT from pread");
        if (same)
            ok++;
        else
            differ++;
    }
    if (r) r->done = 1;
    al_entry_release(e);
}

/* Writes a file of `n` bytes of a pattern into $TMPDIR; its path. */
static char *make_file(uint64_t n) {
    const char *dir = getenv("TMPDIR");
    char *p = malloc(4096);
    snprintf(p, 4096, "%s/read_ranges-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(p);
    if (fd < 0) {
        perror(p);
        exit(1);
    }
    uint8_t *buf = malloc(n);
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (uint64_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
    if (write(fd, buf, n) != (ssize_t)n) {
        perror("write");
        exit(1);
    }
    free(buf);
    close(fd);
    return p;
}

int main(int argc, char **argv) {
    char *made = NULL;
    path = argc > 1 ? argv[1] : (made = make_file((3u << 20) + 12345));
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return 1;
    }
    file_size = (uint64_t)st.st_size;

    size_t n = argc > 2 ? (size_t)(argc - 2) : 11;
    struct range *rs = calloc(n, sizeof *rs);
    if (argc > 2) {
        for (size_t i = 0; i < n; i++) {
            char *end;
            const char *a = argv[i + 2];
            rs[i].off = strtoull(a, &end, 0);
            if (*end != ':') {
                fprintf(stderr, "%s: not OFFSET:LENGTH\n", a);
                return 2;
            }
            rs[i].len = strtoull(end + 1, &end, 0);
            if (*end) {
                fprintf(stderr, "%s: not OFFSET:LENGTH\n", a);
                return 2;
            }
        }
    } else {
        const uint64_t f = file_size;
        const struct range def[11] = {
            {.off = 0, .len = 4096},         {.off = 1, .len = 100},
            {.off = 4095, .len = 2},         {.off = 12345, .len = 65536},
            {.off = 7, .len = 0},            {.off = f / 2 + 3, .len = MAX_FILE},
            {.off = f > 10 ? f - 10 : 0, .len = 100}, /* across the end: 10 bytes */
            {.off = f, .len = 10},           /* at the end: empty */
            {.off = f + 4096, .len = 1},     /* past it: empty */
            {.off = 0, .len = f},            /* the whole file */
            {.off = 5, .len = 3u << 19},     /* 1.5 MiB from an odd offset */
        };
        memcpy(rs, def, sizeof def);
    }

    /* Ranges too long for an entry go to the arena, each at a 4 KiB-aligned
     * place of its own. */
    uint64_t arena_size = 0;
    for (size_t i = 0; i < n; i++) {
        if (rs[i].len > MAX_FILE) {
            rs[i].into_arena = 1;
            rs[i].dst = arena_size;
            arena_size += (rs[i].len + 4095) / 4096 * 4096;
        }
    }

    al_config cfg = {.struct_size = sizeof cfg};
    al_config_default(&cfg);
    cfg.queue_depth = QUEUE_DEPTH;
    cfg.max_file_size = MAX_FILE;
    cfg.arena_size = arena_size;
    al_loader *l;
    int rc = al_loader_new(&cfg, &l);
    if (rc == 0) rc = al_loader_start(l);
    if (rc < 0) {
        char why[256];
        al_last_error_message(why, sizeof why);
        fprintf(stderr, "loader: %s: %s\n", al_strerror(rc), why);
        return 1;
    }
    al_worker *w;
    al_loader_worker(l, 0, &w);
    uint8_t *arena = NULL;
    size_t arena_len = 0;
    al_worker_arena(w, &arena, &arena_len); /* as this worker maps it */

    size_t pending = 0;
    for (size_t i = 0; i < n; i++) {
        struct range *r = &rs[i];
        for (;;) {
            if (r->into_arena)
                rc = al_worker_request_into(w, (const uint8_t *)path, strlen(path), r->off, r->len,
                                            AL_ARENA, r->dst, i);
            else
                rc = al_worker_request_range(w, path, r->off, r->len);
            if (rc != -EAGAIN) break;
            take_one(w, rs, n, arena, arena_len); /* queue full: consume first */
            pending--;
        }
        if (rc < 0) {
            char why[256];
            al_last_error_message(why, sizeof why);
            printf("%llu+%llu: refused: %s (%s)\n", (unsigned long long)r->off,
                   (unsigned long long)r->len, al_strerror(rc), why);
            r->done = 1;
            failed++;
        } else {
            pending++;
        }
    }
    while (pending-- > 0) take_one(w, rs, n, arena, arena_len);

    al_worker_free(w);
    al_loader_shutdown(l);
    al_loader_free(l);
    printf("verified: %zu ok, %zu differ, %zu failed\n", ok, differ, failed);
    if (made) {
        unlink(made);
        free(made);
    }
    free(rs);
    return differ || failed ? 1 : 0;
}
