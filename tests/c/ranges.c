/* Byte ranges and destination memory in the C ABI, one behaviour per case:
 * al_worker_request_range / _range_bytes (into the entry's buffer, at most
 * max_file_size), al_worker_request_into (the arena AL_ARENA, or memory
 * from al_loader_register_memory, any size), al_entry_offset,
 * al_entry_info.offset, al_loader_arena / al_worker_arena and the
 * registration calls. Every byte is compared with pread() of the same file,
 * on both backends (al_config.backend) and both ways of driving the loads;
 * every bad input is answered with its errno and writes nothing.
 *
 * Usage: ranges list | ranges <case>|all <scratch-dir>   (tests/c/runner.h)
 * Built by tests/c_abi.rs (one Rust test per case) and scripts/c-sanitize.sh
 * with -Wall -Wextra -Werror, the latter under AddressSanitizer and UBSan. */
#include "runner.h"

#include <stddef.h>
#include <stdint.h>

#define QD 8
#define MAX_FILE (64u << 10)
#define ARENA_SIZE (8u << 20)
#define FILL 0xA5
#define CANARY 0x5A
/* A file of more than one buffer and a few 1 MiB reads, of an odd size. */
#define BIG_FILE ((3u << 20) + 12345u)
#define RANGE_FILE 300001u

static const uint32_t backends[] = {AL_BACKEND_IO_URING, AL_BACKEND_THREADS};
static const uint32_t drives[] = {AL_DRIVE_LOADER, AL_DRIVE_WORKER};

static al_config config(uint32_t backend, uint32_t drive, int direct, uint64_t arena) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    c.queue_depth = QD;
    c.max_file_size = MAX_FILE;
    c.loader_threads = 1;
    c.dispatch_n = 1;
    c.backend = backend;
    c.drive = drive;
    c.direct = direct != 0;
    c.arena_size = arena;
    return c;
}

/* A loader of `c` with loader threads (or driving workers) in this
 * process, running the backend asked for (unless ASYNCLOADER_BACKEND
 * overrides it); NULL, with a failed check, when that fails. */
static al_loader *started(const al_config *c) {
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(c, &l), 0);
    if (!l) return NULL;
    CHECK_RC(al_loader_start(l), 0);
    return l;
}

/* After the loads: the backend that ran them is the one asked for. */
static void check_backend(al_loader *l, uint32_t backend) {
    al_stats st = {.struct_size = sizeof st};
    CHECK_RC(al_loader_stats(l, &st), 0);
    if (!getenv("ASYNCLOADER_BACKEND")) CHECK(st.backend == backend);
}

static al_worker *worker(al_loader *l) {
    al_worker *w = NULL;
    if (l) CHECK_RC(al_loader_worker(l, 0, &w), 0);
    return w;
}

static void stop(al_loader *l, al_worker *w) {
    al_worker_free(w);
    if (l) CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
}

/* Up to `len` bytes of `path` at `off` into `out`, as pread gives them
 * (fewer at the end of the file); the number read. */
static size_t pread_all(const char *path, uint64_t off, size_t len, unsigned char *out) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, out + got, len - got, (off_t)(off + got));
        if (n < 0) {
            perror("pread");
            exit(2);
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    close(fd);
    return got;
}

/* 1 when the `n` bytes at `p` are `n` bytes of `path` at `off`, and the
 * file holds no more than `n` bytes of the `want` asked for. */
static int same_as_pread(const void *p, size_t n, const char *path, uint64_t off, size_t want) {
    unsigned char *buf = malloc(want ? want : 1);
    size_t got = pread_all(path, off, want, buf);
    int ok = got == n && (n == 0 || memcmp(buf, p, n) == 0);
    free(buf);
    return ok;
}

/* 1 when the `n` bytes at `p` all hold `b`. */
static int all_are(const void *p, size_t n, unsigned char b) {
    const unsigned char *q = p;
    for (size_t i = 0; i < n; i++)
        if (q[i] != b) return 0;
    return 1;
}

/* The entry loaded `len` bytes of `path` at `off` (fewer at the end of the
 * file) and says so through every accessor; `what` names it on failure. */
static int check_range(const al_entry *e, const char *path, uint64_t off, uint64_t len,
                       const char *what) {
    int before = failures;
    CHECK(e != NULL);
    if (!e) return 0;
    CHECK_RC(al_entry_error(e), 0);
    CHECK(al_entry_offset(e) == off);
    CHECK(al_entry_data(e) != NULL);
    CHECK(strcmp(al_entry_path(e), path) == 0);
    CHECK(same_as_pread(al_entry_data(e), al_entry_size(e), path, off, (size_t)len));
    al_entry_info info;
    memset(&info, FILL, sizeof info);
    info.struct_size = sizeof info;
    CHECK_RC(al_entry_get_info(e, &info), 0);
    CHECK(info.offset == off && info.data == al_entry_data(e) && info.size == al_entry_size(e));
    CHECK(info.error == 0 && info.tag == al_entry_tag(e));
    if (failures != before)
        fprintf(stderr, "  (%s: range %llu+%llu of %s, got %zu bytes)\n", what,
                (unsigned long long)off, (unsigned long long)len, path, al_entry_size(e));
    return failures == before;
}

/* xorshift64: reproducible "random" ranges. */
static uint64_t next_rand(uint64_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

struct range {
    uint64_t off, len;
};

/* Ranges inside, across the end of and past the end of a file of `n`
 * bytes, of length 0 to MAX_FILE, at aligned and odd offsets; `*count` of
 * them, malloc'd. */
static struct range *ranges_of(uint64_t n, size_t *count) {
    static const size_t RANDOM = 40;
    struct range fixed[] = {
        {0, 0},          {0, 1},           {0, MAX_FILE},     {1, 4095},
        {4095, 2},       {4096, 4096},     {4097, MAX_FILE - 1}, {12345, MAX_FILE},
        {n - 1, 1},      {n - 10, 100},    {n - 3, 0},        {n, 10},
        {n + 5000, 10},  {n - MAX_FILE, MAX_FILE}, {511, 513}, {n / 2 + 7, 9999},
    };
    size_t nf = sizeof fixed / sizeof fixed[0];
    struct range *r = malloc((nf + RANDOM) * sizeof *r);
    memcpy(r, fixed, sizeof fixed);
    uint64_t x = 0x2545F4914F6CDD1DULL;
    for (size_t i = 0; i < RANDOM; i++) {
        uint64_t v = next_rand(&x);
        r[nf + i].off = v % (n + 100);
        r[nf + i].len = (v >> 20) % (MAX_FILE + 1);
    }
    *count = nf + RANDOM;
    return r;
}

/* Whether `path` can be opened with O_DIRECT here (tmpfs cannot). */
static int direct_works(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

/* Every range of ranges_of() through a window of QD requests
 * (al_worker_request_range_bytes, tagged with its index), taken in batches
 * (each al_batch_item as its entry's accessors say); then a few with
 * al_worker_request_range (NUL-terminated, untagged). Returns how many
 * non-empty entries had data not at a 4096-byte boundary. */
static size_t load_ranges(al_worker *w, const char *path, const char *what) {
    size_t n = 0, misaligned = 0;
    struct range *r = ranges_of(RANGE_FILE, &n);
    int *seen = calloc(n, sizeof *seen);
    size_t next = 0, done = 0;
    while (done < n) {
        while (next < n) {
            int rc = al_worker_request_range_bytes(w, (const uint8_t *)path, strlen(path),
                                                   r[next].off, r[next].len, next);
            if (rc == -EAGAIN) break;
            CHECK_RC(rc, 0);
            if (rc != 0) goto out;
            next++;
        }
        al_batch_item items[QD];
        size_t got = 0;
        CHECK_RC(al_worker_get_batch(w, items, QD, 30 * SEC, &got), 0);
        if (got == 0) goto out;
        for (size_t i = 0; i < got; i++) {
            const al_entry *e = items[i].entry;
            uint64_t t = items[i].tag;
            CHECK(t < n);
            if (t >= n) continue;
            seen[t]++;
            check_range(e, path, r[t].off, r[t].len, what);
            CHECK(items[i].data == al_entry_data(e) && items[i].size == al_entry_size(e));
            CHECK(items[i].error == 0 && items[i].tag == al_entry_tag(e));
            if (items[i].size > 0 && (uintptr_t)items[i].data % 4096 != 0) misaligned++;
        }
        CHECK(al_batch_release(items, got) == got);
        done += got;
    }
    for (size_t i = 0; i < n; i++) CHECK(seen[i] == 1);
    for (size_t i = 0; i < 4; i++) {
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_range(w, path, r[i * 3 + 1].off, r[i * 3 + 1].len), 0);
        CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
        check_range(e, path, r[i * 3 + 1].off, r[i * 3 + 1].len, what);
        CHECK(al_entry_tag(e) == 0);
        if (al_entry_size(e) > 0 && (uintptr_t)al_entry_data(e) % 4096 != 0) misaligned++;
        al_entry_release(e);
    }
out:
    CHECK(al_worker_outstanding(w) == 0);
    free(seen);
    free(r);
    return misaligned;
}

/* --- ranges into entry buffers --------------------------------------------- */

/* Ranges inside, across and past the end of a file, of length 0 to
 * max_file_size, at aligned and odd offsets, many in flight: each entry
 * holds what pread gives, on both backends and both drives. */
static void ranges_match_pread_on_both_backends_and_drives(void) {
    char *path = make_file("data.bin", RANGE_FILE, 7);
    for (size_t b = 0; b < 2; b++) {
        for (size_t d = 0; d < 2; d++) {
            al_config c = config(backends[b], drives[d], 0, 0);
            al_loader *l = started(&c);
            al_worker *w = worker(l);
            char what[64];
            snprintf(what, sizeof what, "%s, drive %s", al_backend_name(backends[b]),
                     al_drive_name(drives[d]));
            if (w) load_ranges(w, path, what);
            if (l) check_backend(l, backends[b]);
            stop(l, w);
        }
    }
    free(path);
}

/* The same ranges with direct = true: the loader reads the aligned span
 * around each range with O_DIRECT, so the data starts inside the entry's
 * buffer (not at 4096 for an odd offset) and every accessor points there. */
static void ranges_match_pread_with_o_direct(void) {
    char *path = make_file("data.bin", RANGE_FILE, 8);
    int direct = direct_works(path);
    if (!direct) fprintf(stderr, "note: no O_DIRECT in %s: buffered reads only\n", scratch);
    for (size_t b = 0; b < 2; b++) {
        for (size_t d = 0; d < 2; d++) {
            al_config c = config(backends[b], drives[d], 1, 0);
            al_loader *l = started(&c);
            al_worker *w = worker(l);
            char what[64];
            snprintf(what, sizeof what, "%s, drive %s, direct", al_backend_name(backends[b]),
                     al_drive_name(drives[d]));
            size_t misaligned = w ? load_ranges(w, path, what) : 0;
            if (direct) CHECK(misaligned > 0);
            if (l) check_backend(l, backends[b]);
            stop(l, w);
        }
    }
    free(path);
}

/* queue_depth 1: one slot serves a range, then a whole file, then a range
 * again: al_entry_offset and al_entry_info.offset follow the request (0 for
 * the whole file, not the slot's last offset). */
static void entry_offset_is_the_requested_offset_and_zero_for_a_whole_file(void) {
    char *path = make_file("data.bin", 20000, 9);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    c.queue_depth = 1;
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    CHECK(al_entry_offset(NULL) == 0);
    if (w) {
        for (int round = 0; round < 2; round++) {
            al_entry *e = NULL;
            CHECK_RC(al_worker_request_range(w, path, 777 + (uint64_t)round, 1000), 0);
            CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
            check_range(e, path, 777 + (uint64_t)round, 1000, "range");
            CHECK_RC(al_entry_release(e), 0);
            CHECK(al_entry_offset(e) == 0); /* released */
            e = NULL;
            CHECK_RC(al_worker_request(w, path), 0);
            CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
            CHECK(e && same_as_file(e, path));
            CHECK(al_entry_offset(e) == 0);
            al_entry_info info;
            memset(&info, FILL, sizeof info);
            info.struct_size = sizeof info;
            CHECK_RC(al_entry_get_info(e, &info), 0);
            CHECK(info.offset == 0 && info.size == 20000);
            al_entry_release(e);
        }
    }
    stop(l, w);
    free(path);
}

/* Hand-over of range entries (one at an odd offset, read with O_DIRECT
 * where the file system allows it, so its data starts inside the buffer)
 * and of an arena entry: al_loader_take copies each entry's data, not the
 * start of its buffer. */
static void loader_take_copies_the_ranges_not_the_buffers(void) {
    char *path = make_file("data.bin", BIG_FILE, 10);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 1, ARENA_SIZE);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    if (w) {
        const struct range r[3] = {{4097, 5000}, {100, MAX_FILE}, {BIG_FILE - 1000, 2 << 20}};
        uint64_t tickets[3] = {0, 0, 0}, sizes[3] = {0, 0, 0};
        CHECK_RC(al_worker_request_range(w, path, r[0].off, r[0].len), 0);
        CHECK_RC(al_worker_request_range_bytes(w, (const uint8_t *)path, strlen(path), r[1].off,
                                               r[1].len, 1),
                 0);
        CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), r[2].off,
                                        r[2].len, AL_ARENA, 4096, 2),
                 0);
        for (int i = 0; i < 3; i++) {
            al_entry *e = NULL;
            CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
            if (!e) break;
            uint64_t t = al_entry_tag(e);
            CHECK(t < 3);
            if (t >= 3) {
                al_entry_release(e);
                continue;
            }
            check_range(e, path, r[t].off, r[t].len, "before the hand-over");
            CHECK_RC(al_entry_handoff(e, &tickets[t]), 0);
        }
        size_t total = 5000 + MAX_FILE + 1000;
        unsigned char *dst = malloc(total);
        memset(dst, FILL, total);
        CHECK_RC(al_loader_take(l, tickets, 3, dst, total, sizes), 0);
        CHECK(sizes[0] == 5000 && sizes[1] == MAX_FILE && sizes[2] == 1000);
        CHECK(same_as_pread(dst, 5000, path, r[0].off, 5000));
        CHECK(same_as_pread(dst + 5000, MAX_FILE, path, r[1].off, MAX_FILE));
        CHECK(same_as_pread(dst + 5000 + MAX_FILE, 1000, path, r[2].off, 1000));
        CHECK(al_worker_outstanding(w) == 0);
        free(dst);
    }
    stop(l, w);
    free(path);
}

/* --- destination memory ---------------------------------------------------- */

/* Into the arena, on both backends, buffered and direct: a whole file of
 * more than max_file_size in one request, ranges at odd destination
 * offsets, a range cut short by the end of the file and one past it. Each
 * entry's data is the arena span (as al_worker_arena maps it; the same
 * bytes through al_loader_arena's mapping) holding what pread gives, and
 * not one byte of the arena outside the bytes read changes. */
static void request_into_the_arena_matches_pread_and_writes_nothing_else(void) {
    char *path = make_file("big.bin", BIG_FILE, 11);
    const struct range r[] = {
        {0, BIG_FILE},          /* the whole file, over max_file_size */
        {12345, 1000},          /* odd offset, odd destination */
        {4096, 4096},           /* aligned: O_DIRECT where possible */
        {BIG_FILE - 100, 5000}, /* cut short: 100 bytes */
        {BIG_FILE + 10, 4096},  /* past the end: empty */
        {7, 0},                 /* empty */
        /* aligned, across the end: O_DIRECT where possible, 57 bytes */
        {BIG_FILE / 4096 * 4096, 8192},
    };
    const uint64_t dst[] = {0,          (4u << 20) + 3,        (5u << 20), (6u << 20) + 1,
                            (7u << 20), (7u << 20) + 4096, (7u << 20) + 8192};
    const size_t n = sizeof r / sizeof r[0];
    for (size_t b = 0; b < 2; b++) {
        for (int direct = 0; direct < 2; direct++) {
            al_config c = config(backends[b], AL_DRIVE_LOADER, direct, ARENA_SIZE);
            al_loader *l = started(&c);
            al_worker *w = worker(l);
            if (!w) {
                stop(l, w);
                continue;
            }
            uint8_t *la = NULL, *wa = NULL;
            size_t ln = 0, wn = 0;
            CHECK_RC(al_loader_arena(l, &la, &ln), 0);
            CHECK_RC(al_worker_arena(w, &wa, &wn), 0);
            CHECK(ln == ARENA_SIZE && wn == ARENA_SIZE && la && wa);
            CHECK((uintptr_t)la % 4096 == 0 && (uintptr_t)wa % 4096 == 0);
            if (ln != ARENA_SIZE || wn != ARENA_SIZE) {
                stop(l, w);
                continue;
            }
            memset(la, FILL, ARENA_SIZE);
            for (size_t i = 0; i < n; i++)
                CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), r[i].off,
                                                r[i].len, AL_ARENA, dst[i], i),
                         0);
            size_t got[7] = {0};
            for (size_t k = 0; k < n; k++) {
                al_entry *e = NULL;
                CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
                if (!e) break;
                uint64_t i = al_entry_tag(e);
                CHECK(i < n);
                if (i >= n) {
                    al_entry_release(e);
                    continue;
                }
                char what[64];
                snprintf(what, sizeof what, "arena, %s%s", al_backend_name(backends[b]),
                         direct ? ", direct" : "");
                check_range(e, path, r[i].off, r[i].len, what);
                CHECK(al_entry_data(e) == wa + dst[i]);
                got[i] = al_entry_size(e);
                CHECK(same_as_pread(la + dst[i], got[i], path, r[i].off, (size_t)r[i].len));
                al_entry_release(e);
            }
            CHECK(got[0] == BIG_FILE && got[1] == 1000 && got[2] == 4096 && got[3] == 100);
            CHECK(got[4] == 0 && got[5] == 0 && got[6] == BIG_FILE % 4096);
            /* Nothing outside the requested spans changed, in either
             * mapping; buffered, nothing past the bytes read either (a
             * direct read across the end of the file may write zeros up to
             * the end of its span). */
            size_t at = 0;
            for (size_t i = 0; i < n; i++) {
                CHECK(all_are(la + at, dst[i] - at, FILL));
                if (!direct) CHECK(all_are(la + dst[i] + got[i], r[i].len - got[i], FILL));
                at = dst[i] + r[i].len;
            }
            CHECK(all_are(la + at, ARENA_SIZE - at, FILL));
            CHECK(memcmp(la, wa, ARENA_SIZE) == 0);
            check_backend(l, backends[b]);
            stop(l, w);
        }
    }
    free(path);
}

/* Into memory of this process registered with al_loader_register_memory: a
 * malloc'd block (no particular alignment) and an aligned_alloc'd one, on
 * both backends, with loader threads here and with workers driving their
 * loads, buffered and direct. Each entry's data is the registered address;
 * the bytes around the spans stay untouched. After al_loader_unregister_
 * memory, requests into the id are -EINVAL. */
static void request_into_malloc_and_aligned_alloc_memory_matches_pread(void) {
    char *path = make_file("big.bin", BIG_FILE, 12);
    /* A multiple of the alignment, as aligned_alloc wants. */
    const size_t size = (BIG_FILE + 8192 + 4095) / 4096 * 4096;
    for (size_t b = 0; b < 2; b++) {
        for (size_t d = 0; d < 2; d++) {
            for (int direct = 0; direct < 2; direct++) {
                al_config c = config(backends[b], drives[d], direct, 0);
                al_loader *l = started(&c);
                al_worker *w = worker(l);
                if (!w) {
                    stop(l, w);
                    continue;
                }
                unsigned char *mem[2] = {malloc(size), aligned_alloc(4096, size)};
                uint32_t id[2] = {0, 0};
                for (int k = 0; k < 2; k++) {
                    memset(mem[k], FILL, size);
                    CHECK_RC(al_loader_register_memory(l, mem[k], size, &id[k]), 0);
                    CHECK(id[k] >= 1 && id[k] <= 16);
                }
                CHECK(id[0] != id[1]);
                /* The whole file at 4096 of each, and a range at an odd
                 * offset to an odd place in the malloc'd one. */
                for (int k = 0; k < 2; k++)
                    CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 0,
                                                    BIG_FILE, id[k], 4096, (uint64_t)k),
                             0);
                CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 99999,
                                                3333, id[0], 5, 2),
                         0);
                for (int k = 0; k < 3; k++) {
                    al_entry *e = NULL;
                    CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
                    if (!e) break;
                    uint64_t t = al_entry_tag(e);
                    char what[80];
                    snprintf(what, sizeof what, "registered %s, %s, drive %s%s",
                             t == 1 ? "aligned_alloc" : "malloc", al_backend_name(backends[b]),
                             al_drive_name(drives[d]), direct ? ", direct" : "");
                    if (t < 2) {
                        check_range(e, path, 0, BIG_FILE, what);
                        CHECK(al_entry_data(e) == mem[t] + 4096);
                        CHECK(al_entry_size(e) == BIG_FILE);
                    } else {
                        check_range(e, path, 99999, 3333, what);
                        CHECK(al_entry_data(e) == mem[0] + 5);
                    }
                    al_entry_release(e);
                }
                CHECK(same_as_pread(mem[0] + 5, 3333, path, 99999, 3333));
                CHECK(all_are(mem[0], 5, FILL) && all_are(mem[0] + 5 + 3333, 4096 - 5 - 3333, FILL));
                for (int k = 0; k < 2; k++) {
                    CHECK(same_as_pread(mem[k] + 4096, BIG_FILE, path, 0, BIG_FILE));
                    CHECK(all_are(mem[k] + 4096 + BIG_FILE, size - 4096 - BIG_FILE, FILL));
                    CHECK_RC(al_loader_unregister_memory(l, id[k]), 0);
                    CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 0, 10,
                                                    id[k], 0, 0),
                             -EINVAL);
                }
                CHECK(al_worker_outstanding(w) == 0);
                check_backend(l, backends[b]);
                stop(l, w);
                free(mem[0]);
                free(mem[1]);
            }
        }
    }
    free(path);
}

/* The arena is shared: with a loader process (al_loader_spawn) the loads
 * run there, and a process that attached by name (here a forked child
 * using al_loader_attach, not its inherited handle) loads into the arena
 * too; this process reads the child's bytes through its own mapping. */
static void arena_is_shared_with_a_loader_process_and_an_attached_process(void) {
    char *path = make_file("big.bin", BIG_FILE, 13);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, ARENA_SIZE);
    c.n_workers = 2;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l) CHECK_RC(al_loader_spawn(l), 0);
    al_worker *w = worker(l);
    uint8_t *la = NULL;
    size_t ln = 0;
    if (w) CHECK_RC(al_loader_arena(l, &la, &ln), 0);
    if (w && ln == ARENA_SIZE) {
        memset(la, FILL, ARENA_SIZE);
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 0, BIG_FILE,
                                        AL_ARENA, 0, 0),
                 0);
        CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
        check_range(e, path, 0, BIG_FILE, "spawned loader");
        al_entry_release(e);

        const char *name = al_loader_name(l);
        const uint64_t at = (4u << 20) + 1;
        pid_t pid = fork_or_exit();
        if (pid == 0) {
            int bad = 0;
            al_loader *a = NULL;
            al_worker *cw = NULL;
            al_entry *ce = NULL;
            uint8_t *base = NULL, *wbase = NULL;
            size_t len = 0, wlen = 0;
            bad += al_loader_attach(name, &a) != 0;
            bad += a == NULL || al_loader_arena(a, &base, &len) != 0 || len != ARENA_SIZE;
            bad += a == NULL || al_loader_worker(a, 1, &cw) != 0;
            if (cw) {
                bad += al_worker_arena(cw, &wbase, &wlen) != 0 || wlen != ARENA_SIZE;
                bad += al_worker_request_into(cw, (const uint8_t *)path, strlen(path), 1000,
                                              BIG_FILE - 1000, AL_ARENA, at, 9) != 0;
                bad += al_worker_wait_get(cw, 30 * SEC, &ce) != 0;
                bad += ce == NULL || al_entry_error(ce) != 0 || al_entry_tag(ce) != 9;
                bad += ce == NULL || al_entry_size(ce) != BIG_FILE - 1000;
                bad += ce == NULL || al_entry_data(ce) != wbase + at;
                bad += ce == NULL || !same_as_pread(al_entry_data(ce), al_entry_size(ce), path,
                                                    1000, BIG_FILE - 1000);
                bad += ce == NULL || !same_as_pread(base + at, BIG_FILE - 1000, path, 1000,
                                                    BIG_FILE - 1000);
                al_entry_release(ce);
                /* Memory registered here cannot be reached by the loader
                 * process: -EXDEV at the request. */
                unsigned char *mine = malloc(4096);
                uint32_t id = 0;
                bad += al_loader_register_memory(a, mine, 4096, &id) != 0;
                bad += al_worker_request_into(cw, (const uint8_t *)path, strlen(path), 0, 100, id,
                                              0, 0) != -EXDEV;
                bad += al_loader_unregister_memory(a, id) != 0;
                free(mine);
                al_worker_free(cw);
            }
            al_loader_free(a);
            if (bad) fprintf(stderr, "attached child: %d checks failed\n", bad);
            _exit(bad ? 1 : 0);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        /* The first load is still there, the child's after it. */
        CHECK(same_as_pread(la, BIG_FILE, path, 0, BIG_FILE));
        CHECK(all_are(la + BIG_FILE, at - BIG_FILE, FILL));
        CHECK(same_as_pread(la + at, BIG_FILE - 1000, path, 1000, BIG_FILE - 1000));
        CHECK(all_are(la + at + BIG_FILE - 1000, ARENA_SIZE - at - (BIG_FILE - 1000), FILL));
    }
    CHECK(ln == ARENA_SIZE);
    stop(l, w);
    free(path);
}

/* Registered memory with the loads in another process: a request while a
 * loader process runs is -EXDEV at once; one queued before the loader
 * process started completes with error EXDEV. The memory is never
 * written. */
static void registered_memory_with_a_loader_process_is_exdev(void) {
    char *path = make_file("data.bin", 10000, 14);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    al_worker *w = worker(l);
    if (w) {
        unsigned char *mem = malloc(20000);
        memset(mem, FILL, 20000);
        uint32_t id = 0;
        CHECK_RC(al_loader_register_memory(l, mem, 20000, &id), 0);
        /* Queued before any loader runs: checked when it loads. */
        CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 0, 10000, id, 0,
                                        1),
                 0);
        CHECK_RC(al_loader_spawn(l), 0);
        al_entry *e = NULL;
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && al_entry_error(e) == EXDEV && al_entry_size(e) == 0 && al_entry_tag(e) == 1);
        al_entry_release(e);
        /* Now the loader process runs: refused at the request. */
        CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 0, 10000, id, 0,
                                        2),
                 -EXDEV);
        char msg[256];
        CHECK(al_last_error_message(msg, sizeof msg) > 0 && strstr(msg, "arena") != NULL);
        CHECK(al_worker_outstanding(w) == 0);
        CHECK(all_are(mem, 20000, FILL));
        CHECK_RC(al_loader_unregister_memory(l, id), 0);
        free(mem);
    }
    stop(l, w);
    free(path);
}

/* --- bad input --------------------------------------------------------------- */

/* offset + len past INT64_MAX (or past UINT64_MAX) is -EINVAL for a range
 * and a destination request, and queues nothing; a range that ends exactly
 * at INT64_MAX is fine (an empty entry, past the end of the file). */
static void range_over_int64_max_is_einval_and_queues_nothing(void) {
    char *path = make_file("data.bin", 1000, 15);
    const uint8_t *p = (const uint8_t *)path;
    size_t pl = strlen(path);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, ARENA_SIZE);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    if (w) {
        const struct range bad[] = {
            {INT64_MAX, 1}, {(uint64_t)INT64_MAX + 1, 0}, {1, INT64_MAX}, {UINT64_MAX, 1},
            {UINT64_MAX, 0}, {UINT64_MAX / 2 + 10, UINT64_MAX / 2 + 10},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            CHECK_RC(al_worker_request_range(w, path, bad[i].off, bad[i].len), -EINVAL);
            CHECK_RC(al_worker_request_range_bytes(w, p, pl, bad[i].off, bad[i].len, 1), -EINVAL);
            CHECK_RC(al_worker_request_into(w, p, pl, bad[i].off, bad[i].len, AL_ARENA, 0, 1),
                     -EINVAL);
        }
        CHECK(al_worker_outstanding(w) == 0);
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_range(w, path, INT64_MAX - 10, 10), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && al_entry_error(e) == 0 && al_entry_size(e) == 0);
        CHECK(al_entry_offset(e) == INT64_MAX - 10);
        al_entry_release(e);
    }
    stop(l, w);
    free(path);
}

/* A range of more than max_file_size into the entry's buffer is -EFBIG at
 * the request (the message says what to do); exactly max_file_size loads;
 * the same length into destination memory is fine. */
static void range_over_max_file_size_without_destination_is_efbig(void) {
    char *path = make_file("big.bin", 3 * MAX_FILE, 16);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, ARENA_SIZE);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    if (w) {
        CHECK_RC(al_worker_request_range(w, path, 0, MAX_FILE + 1), -EFBIG);
        char msg[256];
        CHECK(al_last_error_message(msg, sizeof msg) > 0 && strstr(msg, "max_file_size"));
        CHECK_RC(al_worker_request_range_bytes(w, (const uint8_t *)path, strlen(path), 5,
                                               2 * MAX_FILE, 0),
                 -EFBIG);
        CHECK_RC(al_worker_request_range(w, path, 0, UINT32_MAX + 1ULL), -EFBIG);
        CHECK(al_worker_outstanding(w) == 0);
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_range(w, path, 5, MAX_FILE), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        check_range(e, path, 5, MAX_FILE, "max_file_size");
        CHECK(al_entry_size(e) == MAX_FILE);
        al_entry_release(e);
        e = NULL;
        CHECK_RC(al_worker_request_into(w, (const uint8_t *)path, strlen(path), 5, 2 * MAX_FILE,
                                        AL_ARENA, 0, 0),
                 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        check_range(e, path, 5, 2 * MAX_FILE, "into the arena");
        CHECK(al_entry_size(e) == 2 * MAX_FILE);
        al_entry_release(e);
    }
    stop(l, w);
    free(path);
}

/* A destination span that does not lie inside the arena (past its end,
 * across it, wrapping around) is -EINVAL, queues nothing and writes
 * nothing: a sentinel pattern over the whole arena stays, apart from the
 * span of one good request made afterwards. */
static void destination_outside_the_arena_is_einval_and_the_arena_untouched(void) {
    char *path = make_file("data.bin", 100000, 17);
    const uint8_t *p = (const uint8_t *)path;
    size_t pl = strlen(path);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 1u << 20);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    uint8_t *a = NULL;
    size_t n = 0;
    if (w) CHECK_RC(al_loader_arena(l, &a, &n), 0);
    CHECK(n == 1u << 20);
    if (w && n == 1u << 20) {
        memset(a, FILL, n);
        CHECK_RC(al_worker_request_into(w, p, pl, 0, 200, AL_ARENA, n - 100, 0), -EINVAL);
        char msg[256];
        CHECK(al_last_error_message(msg, sizeof msg) > 0 && strstr(msg, "destination"));
        const struct range bad[] = {
            /* {destination offset, length} */
            {n, 1}, {n + 4096, 10}, {0, n + 1}, {UINT64_MAX, 2}, {UINT64_MAX - 5, 10},
            {n - 1, UINT64_MAX},
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
            CHECK_RC(al_worker_request_into(w, p, pl, 0, bad[i].len, AL_ARENA, bad[i].off, 0),
                     -EINVAL);
        CHECK(al_worker_outstanding(w) == 0);
        /* The last byte exactly: fine. */
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_into(w, p, pl, 500, 1, AL_ARENA, n - 1, 0), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        check_range(e, path, 500, 1, "last byte of the arena");
        al_entry_release(e);
        CHECK(all_are(a, n - 1, FILL));
        CHECK(same_as_pread(a + n - 1, 1, path, 500, 1));
    }
    stop(l, w);
    free(path);
}

/* Memory ids that name nothing: AL_ARENA of a loader without an arena, an
 * id never registered, ids past the 16, UINT32_MAX. -EINVAL, nothing
 * queued. */
static void unknown_memory_id_or_no_arena_is_einval(void) {
    char *path = make_file("data.bin", 1000, 18);
    const uint8_t *p = (const uint8_t *)path;
    size_t pl = strlen(path);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    if (w) {
        uint8_t *base = NULL;
        size_t n = 99;
        CHECK_RC(al_loader_arena(l, &base, &n), 0);
        CHECK(n == 0);
        n = 99;
        CHECK_RC(al_worker_arena(w, &base, &n), 0);
        CHECK(n == 0);
        const uint32_t ids[] = {AL_ARENA, 1, 2, 16, 17, 1000, UINT32_MAX - 1, UINT32_MAX};
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
            CHECK_RC(al_worker_request_into(w, p, pl, 0, 10, ids[i], 0, 0), -EINVAL);
            CHECK_RC(al_worker_request_into(w, p, pl, 0, 0, ids[i], 0, 0), -EINVAL);
        }
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(path);
}

/* NULL handles, paths and output pointers: -EINVAL (0 from
 * al_entry_offset), nothing queued, outputs left alone. */
static void null_arguments_are_einval(void) {
    char *path = make_file("data.bin", 1000, 19);
    const uint8_t *p = (const uint8_t *)path;
    size_t pl = strlen(path);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, ARENA_SIZE);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    al_worker *w = worker(l);
    if (w) {
        CHECK_RC(al_worker_request_range(NULL, path, 0, 10), -EINVAL);
        CHECK_RC(al_worker_request_range(w, NULL, 0, 10), -EINVAL);
        CHECK_RC(al_worker_request_range(w, "", 0, 10), -EINVAL);
        CHECK_RC(al_worker_request_range_bytes(NULL, p, pl, 0, 10, 0), -EINVAL);
        CHECK_RC(al_worker_request_range_bytes(w, NULL, pl, 0, 10, 0), -EINVAL);
        CHECK_RC(al_worker_request_range_bytes(w, NULL, 0, 0, 10, 0), -EINVAL);
        CHECK_RC(al_worker_request_range_bytes(w, p, 0, 0, 10, 0), -EINVAL);
        CHECK_RC(al_worker_request_range_bytes(w, (const uint8_t *)"/etc\0x", 6, 0, 10, 0),
                 -EINVAL);
        CHECK_RC(al_worker_request_into(NULL, p, pl, 0, 10, AL_ARENA, 0, 0), -EINVAL);
        CHECK_RC(al_worker_request_into(w, NULL, pl, 0, 10, AL_ARENA, 0, 0), -EINVAL);
        CHECK_RC(al_worker_request_into(w, NULL, 0, 0, 10, AL_ARENA, 0, 0), -EINVAL);
        CHECK_RC(al_worker_request_into(w, p, 0, 0, 10, AL_ARENA, 0, 0), -EINVAL);
        CHECK(al_worker_outstanding(w) == 0);

        uint8_t *const unset = (uint8_t *)&c;
        uint8_t *base = unset;
        size_t n = 12345;
        CHECK_RC(al_loader_arena(NULL, &base, &n), -EINVAL);
        CHECK_RC(al_loader_arena(l, NULL, &n), -EINVAL);
        CHECK_RC(al_loader_arena(l, &base, NULL), -EINVAL);
        CHECK_RC(al_worker_arena(NULL, &base, &n), -EINVAL);
        CHECK_RC(al_worker_arena(w, NULL, &n), -EINVAL);
        CHECK_RC(al_worker_arena(w, &base, NULL), -EINVAL);
        CHECK(base == unset && n == 12345);

        unsigned char buf[64];
        uint32_t id = 77;
        CHECK_RC(al_loader_register_memory(NULL, buf, sizeof buf, &id), -EINVAL);
        CHECK_RC(al_loader_register_memory(l, NULL, sizeof buf, &id), -EINVAL);
        CHECK_RC(al_loader_register_memory(l, buf, sizeof buf, NULL), -EINVAL);
        CHECK(id == 77);
        CHECK_RC(al_loader_unregister_memory(NULL, 1), -EINVAL);
        CHECK(al_entry_offset(NULL) == 0);
    }
    stop(l, w);
    free(path);
}

/* Registering a length of 0, or a span that wraps around the address
 * space, is -EINVAL and takes no id. */
static void register_memory_of_length_zero_is_einval(void) {
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l) {
        unsigned char buf[64];
        uint32_t id = 77;
        CHECK_RC(al_loader_register_memory(l, buf, 0, &id), -EINVAL);
        CHECK_RC(al_loader_register_memory(l, (void *)(uintptr_t)(UINTPTR_MAX - 10), 100, &id),
                 -EINVAL);
        CHECK_RC(al_loader_register_memory(l, buf, SIZE_MAX, &id), -EINVAL);
        CHECK(id == 77);
        /* All 16 ids are still free. */
        uint32_t ids[16];
        for (int i = 0; i < 16; i++) CHECK_RC(al_loader_register_memory(l, buf, 64, &ids[i]), 0);
        for (int i = 0; i < 16; i++) CHECK_RC(al_loader_unregister_memory(l, ids[i]), 0);
    }
    al_loader_free(l);
}

/* Sixteen registrations, ids 1 to 16, then -ENOSPC; unregistering one
 * frees its id for the next registration; unregistering it twice, the
 * arena's id or an id past 16 is -EINVAL. */
static void register_memory_hands_out_16_ids_then_enospc(void) {
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l) {
        static unsigned char bufs[17][128];
        uint32_t ids[17] = {0};
        int seen[17] = {0};
        for (int i = 0; i < 16; i++) {
            CHECK_RC(al_loader_register_memory(l, bufs[i], sizeof bufs[i], &ids[i]), 0);
            CHECK(ids[i] >= 1 && ids[i] <= 16);
            if (ids[i] >= 1 && ids[i] <= 16) seen[ids[i]]++;
        }
        for (int i = 1; i <= 16; i++) CHECK(seen[i] == 1);
        uint32_t id = 77;
        CHECK_RC(al_loader_register_memory(l, bufs[16], sizeof bufs[16], &id), -ENOSPC);
        CHECK(id == 77);
        CHECK_RC(al_loader_unregister_memory(l, ids[4]), 0);
        CHECK_RC(al_loader_unregister_memory(l, ids[4]), -EINVAL);
        CHECK_RC(al_loader_unregister_memory(l, AL_ARENA), -EINVAL);
        CHECK_RC(al_loader_unregister_memory(l, 17), -EINVAL);
        CHECK_RC(al_loader_unregister_memory(l, UINT32_MAX), -EINVAL);
        CHECK_RC(al_loader_register_memory(l, bufs[16], sizeof bufs[16], &id), 0);
        CHECK(id == ids[4]);
        ids[4] = id;
        for (int i = 0; i < 16; i++) CHECK_RC(al_loader_unregister_memory(l, ids[i]), 0);
    }
    al_loader_free(l);
}

/* --- structs that grew ------------------------------------------------------- */

/* A caller built before al_entry_info grew its offset: 56 bytes,
 * struct_size 56, in a heap block followed by canary bytes. It gets every
 * field it knows; the offset is not written. A current caller gets it. */
static void old_entry_info_without_the_offset_is_not_written(void) {
    enum { OLD_INFO = 56 };
    _Static_assert(offsetof(al_entry_info, offset) == OLD_INFO, "the offset follows the old fields");
    char *path = make_file("data.bin", 20000, 20);
    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 0);
    al_loader *l = started(&c);
    al_worker *w = worker(l);
    if (w) {
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_range_bytes(w, (const uint8_t *)path, strlen(path), 777, 1000,
                                               42),
                 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        unsigned char *p = malloc(OLD_INFO + 64);
        memset(p, CANARY, OLD_INFO + 64);
        memset(p, 0, OLD_INFO);
        ((al_entry_info *)p)->struct_size = OLD_INFO;
        CHECK_RC(al_entry_get_info(e, (al_entry_info *)p), 0);
        al_entry_info old;
        memcpy(&old, p, OLD_INFO);
        CHECK(old.struct_size == OLD_INFO && old.error == 0 && old.size == 1000);
        CHECK(old.tag == 42 && old.data == al_entry_data(e) && old.path == al_entry_path(e));
        CHECK(all_are(p + OLD_INFO, 64, CANARY));
        al_entry_info now;
        memset(&now, 0, sizeof now);
        now.struct_size = sizeof now;
        CHECK_RC(al_entry_get_info(e, &now), 0);
        CHECK(now.offset == 777 && al_entry_offset(e) == 777);
        CHECK(now.data == old.data && now.size == old.size && now.tag == old.tag);
        check_range(e, path, 777, 1000, "old info");
        al_entry_release(e);
        free(p);
    }
    stop(l, w);
    free(path);
}

/* A caller built before al_config grew arena_size: 56 bytes, struct_size
 * 56, followed by canary bytes (which would be a huge, refused arena_size if
 * they were read). al_config_default and al_loader_config write nothing past
 * it; al_loader_new gives it no arena. A current caller's arena_size is
 * rounded up to 4 KiB; one over 64 GiB is refused with a message naming
 * the field. */
static void old_config_without_the_arena_size_gets_no_arena(void) {
    enum { OLD_CONFIG = 56 };
    _Static_assert(offsetof(al_config, arena_size) == OLD_CONFIG, "arena_size follows");
    unsigned char *p = malloc(OLD_CONFIG + 64);
    memset(p, CANARY, OLD_CONFIG + 64);
    memset(p, 0, OLD_CONFIG); /* as `al_config c = {...}` of that header */
    al_config *old = (al_config *)p;
    old->struct_size = OLD_CONFIG;
    CHECK_RC(al_config_default(old), 0);
    CHECK(all_are(p + OLD_CONFIG, 64, CANARY));
    old->queue_depth = 2;
    old->max_file_size = MAX_FILE;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(old, &l), 0);
    if (l) {
        uint8_t *base = NULL;
        size_t n = 99;
        CHECK_RC(al_loader_arena(l, &base, &n), 0);
        CHECK(n == 0);
        memset(p + OLD_CONFIG, CANARY, 64);
        CHECK_RC(al_loader_config(l, old), 0);
        CHECK(all_are(p + OLD_CONFIG, 64, CANARY));
        CHECK(old->queue_depth == 2);
        al_config now = {.struct_size = sizeof now};
        CHECK_RC(al_loader_config(l, &now), 0);
        CHECK(now.arena_size == 0);
    }
    al_loader_free(l);
    free(p);

    al_config c = config(AL_BACKEND_AUTO, AL_DRIVE_LOADER, 0, 10000);
    l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l) {
        uint8_t *base = NULL;
        size_t n = 0;
        CHECK_RC(al_loader_arena(l, &base, &n), 0);
        CHECK(n == 12288 && base && (uintptr_t)base % 4096 == 0);
        al_config now = {.struct_size = sizeof now};
        CHECK_RC(al_loader_config(l, &now), 0);
        CHECK(now.arena_size == 12288);
    }
    al_loader_free(l);

    c.arena_size = (64ULL << 30) + 1;
    l = NULL;
    CHECK_RC(al_loader_new(&c, &l), -EINVAL);
    CHECK(l == NULL);
    char msg[256];
    CHECK(al_last_error_message(msg, sizeof msg) > 0 && strstr(msg, "arena_size") != NULL);
}

/* al_worker_request_ranges: ranges of one file, into entry buffers and
 * into the arena, tagged first_tag + i; a full queue accepts part of the
 * array and the rest goes after releasing; a bad range stops the call
 * there with the count of those before it. */
static void request_ranges_queues_an_array_and_stops_where_one_fails(void) {
    char *path = make_file("ranges.bin", RANGE_FILE, 5);
    const size_t plen = strlen(path);
    for (size_t b = 0; b < 2; b++) {
        for (size_t d = 0; d < 2; d++) {
            al_config c = config(backends[b], drives[d], 0, ARENA_SIZE);
            al_loader *l = started(&c);
            al_worker *w = worker(l);
            if (!w) {
                stop(l, w);
                continue;
            }
            uint8_t *arena = NULL;
            size_t an = 0;
            CHECK_RC(al_loader_arena(l, &arena, &an), 0);
            /* 12 ranges, QD 8: every third into the arena. */
            al_range r[12];
            memset(r, 0, sizeof r);
            for (size_t i = 0; i < 12; i++) {
                r[i].offset = i * 25013u;
                r[i].len = i == 11 ? 5000 : 3000 + i * 977u; /* the last crosses the end */
                if (i == 11) r[i].offset = RANGE_FILE - 1000;
                r[i].mem = i % 3 == 0 ? AL_ARENA : AL_NO_DEST;
                r[i].dst_offset = i * 8192u;
            }
            size_t done = 0, got = 0;
            while (got < 12) {
                size_t acc = 99;
                int rc = al_worker_request_ranges(w, (const uint8_t *)path, plen, r + done,
                                                  12 - done, 100 + done, &acc);
                CHECK(rc == 0 || rc == -EAGAIN);
                CHECK(rc != 0 || acc == 12 - done);
                done += acc;
                CHECK(done <= 12);
                al_entry *e = NULL;
                CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
                if (!e) break;
                uint64_t i = al_entry_tag(e) - 100;
                CHECK(i < 12);
                if (i < 12) {
                    check_range(e, path, r[i].offset, r[i].len, "request_ranges");
                    if (r[i].mem == AL_ARENA)
                        CHECK(al_entry_data(e) == arena + r[i].dst_offset);
                }
                CHECK_RC(al_entry_release(e), 0);
                got++;
            }
            CHECK(done == 12);
            /* A bad range in the middle: the ones before it are queued. */
            al_range bad[3] = {r[1], r[2], r[3]};
            bad[1].len = MAX_FILE + 1; /* over max_file_size, no destination */
            size_t acc = 99;
            CHECK_RC(al_worker_request_ranges(w, (const uint8_t *)path, plen, bad, 3, 0, &acc),
                     -EFBIG);
            CHECK(acc == 1);
            bad[1] = r[2];
            bad[1].reserved = 1;
            CHECK_RC(al_worker_request_ranges(w, (const uint8_t *)path, plen, bad + 1, 2, 0, &acc),
                     -EINVAL);
            CHECK(acc == 0);
            bad[1] = r[2];
            bad[1].mem = AL_ARENA;
            bad[1].dst_offset = ARENA_SIZE - 10; /* outside the arena */
            CHECK_RC(al_worker_request_ranges(w, (const uint8_t *)path, plen, bad + 1, 2, 0, &acc),
                     -EINVAL);
            CHECK(acc == 0);
            CHECK_RC(al_worker_request_ranges(w, (const uint8_t *)path, plen, NULL, 0, 0, &acc), 0);
            CHECK(acc == 0);
            CHECK_RC(al_worker_request_ranges(w, (const uint8_t *)path, plen, NULL, 1, 0, &acc),
                     -EINVAL);
            CHECK(acc == 0);
            al_entry *e = NULL;
            CHECK_RC(al_worker_wait_get(w, 30 * SEC, &e), 0);
            if (e) {
                check_range(e, path, r[1].offset, r[1].len, "before the bad one");
                CHECK_RC(al_entry_release(e), 0);
            }
            check_backend(l, backends[b]);
            stop(l, w);
        }
    }
    free(path);
}

static const struct test tests[] = {
    T(ranges_match_pread_on_both_backends_and_drives),
    T(ranges_match_pread_with_o_direct),
    T(entry_offset_is_the_requested_offset_and_zero_for_a_whole_file),
    T(loader_take_copies_the_ranges_not_the_buffers),
    T(request_into_the_arena_matches_pread_and_writes_nothing_else),
    T(request_into_malloc_and_aligned_alloc_memory_matches_pread),
    T(arena_is_shared_with_a_loader_process_and_an_attached_process),
    T(registered_memory_with_a_loader_process_is_exdev),
    T(range_over_int64_max_is_einval_and_queues_nothing),
    T(range_over_max_file_size_without_destination_is_efbig),
    T(destination_outside_the_arena_is_einval_and_the_arena_untouched),
    T(unknown_memory_id_or_no_arena_is_einval),
    T(null_arguments_are_einval),
    T(register_memory_of_length_zero_is_einval),
    T(register_memory_hands_out_16_ids_then_enospc),
    T(old_entry_info_without_the_offset_is_not_written),
    T(old_config_without_the_arena_size_gets_no_arena),
    T(request_ranges_queues_an_array_and_stops_where_one_fails),
};

int main(int argc, char **argv) { return RUN(argc, argv, tests); }
