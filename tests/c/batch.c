/* The C ABI's calls for whole batches, one behaviour per case: tagged
 * requests (al_worker_request_tagged, al_entry_tag, al_entry_info.tag),
 * packed requests (al_worker_request_packed), batches of entries
 * (al_worker_get_batch, al_batch_item, al_batch_release), the span of
 * the worker's buffers (al_worker_buffers) and the hand-over of entries by
 * ticket (al_entry_handoff, al_batch_handoff, al_loader_take,
 * al_loader_drop_tickets). Every loaded byte is compared with the file on
 * disk (read()), every tag with the path it was given to.
 *
 * Usage: batch list | batch <case>|all <scratch-dir>   (tests/c/runner.h)
 * Built by tests/c_abi.rs (one Rust test per case) and scripts/c-sanitize.sh
 * with -Wall -Wextra -Werror, the latter under AddressSanitizer and UBSan. */
#include "runner.h"

#include <stdint.h>
#include <time.h>

#define QD 4
#define MAX_FILE (1u << 20)
/* Tags with bits set in both halves: a tag cut to 32 bits shows. */
#define TAG0 0xF00DF00D00000000ULL
#define FILL 0xA5

/* queue_depth 4, two workers, 1 MiB files, one loader thread. */
static al_config small_config(void) {
    al_config c = {.struct_size = sizeof c};
    CHECK_RC(al_config_default(&c), 0);
    c.queue_depth = QD;
    c.n_workers = 2;
    c.max_file_size = MAX_FILE;
    c.loader_threads = 1;
    c.dispatch_n = 1;
    return c;
}

/* A loader of small_config, started (loader threads) when `start`; NULL
 * (and a failed check) when that fails. */
static al_loader *new_loader(int start) {
    al_config c = small_config();
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l && start) CHECK_RC(al_loader_start(l), 0);
    return l;
}

static al_worker *worker(al_loader *l, uint32_t id) {
    al_worker *w = NULL;
    if (l) CHECK_RC(al_loader_worker(l, id, &w), 0);
    return w;
}

static void stop(al_loader *l, al_worker *w) {
    al_worker_free(w);
    if (l) CHECK_RC(al_loader_shutdown(l), 0);
    al_loader_free(l);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* 1 when the `n` bytes at `p` all still hold FILL. */
static int untouched(const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != FILL) return 0;
    return 1;
}

/* 1 when the `n` bytes at `p` lie inside [base, base + len); compared as
 * addresses (the pointers need not point into one object). */
static int inside(const void *p, size_t n, const void *base, size_t len) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return a >= b && a - b <= len && n <= len - (a - b);
}

/* `n` files of varied sizes in the scratch dir (every fifth empty, one of
 * 300 000 bytes, one with a non-UTF-8 name); their paths, malloc'd. */
static char **make_files(size_t n) {
    char **paths = calloc(n, sizeof *paths);
    for (size_t i = 0; i < n; i++) {
        char name[64];
        if (i == 3)
            snprintf(name, sizeof name, "\xff\xfe-odd-%zu.bin", i);
        else
            snprintf(name, sizeof name, "f%02zu.bin", i);
        size_t size = i % 5 == 0 ? 0 : i == 1 ? 300000 : 1000 + i * 4099;
        paths[i] = make_file(name, size, (unsigned)i + 1);
    }
    return paths;
}

static void free_files(char **paths, size_t n) {
    for (size_t i = 0; i < n; i++) free(paths[i]);
    free(paths);
}

/* The paths, each followed by its NUL, in one malloc'd block of `*len`
 * bytes: what al_worker_request_packed takes. */
static uint8_t *pack(char *const *paths, size_t n, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += strlen(paths[i]) + 1;
    uint8_t *buf = malloc(total ? total : 1), *p = buf;
    for (size_t i = 0; i < n; i++) {
        size_t k = strlen(paths[i]) + 1;
        memcpy(p, paths[i], k);
        p += k;
    }
    *len = total;
    return buf;
}

/* An entry's tag as al_entry_tag and as al_entry_info.tag (checked equal). */
static uint64_t tag_of(const al_entry *e) {
    al_entry_info info;
    memset(&info, FILL, sizeof info);
    info.struct_size = sizeof info;
    CHECK_RC(al_entry_get_info(e, &info), 0);
    CHECK(info.tag == al_entry_tag(e));
    return al_entry_tag(e);
}

/* `it` holds what the accessors of its entry say. */
static void check_item(const al_batch_item *it) {
    const al_entry *e = it->entry;
    CHECK(e != NULL);
    CHECK(it->data != NULL && it->data == al_entry_data(e));
    CHECK(it->size == al_entry_size(e));
    CHECK(it->error == al_entry_error(e));
    CHECK(it->tag == tag_of(e));
    CHECK(it->path != NULL && it->path == al_entry_path(e));
    CHECK(it->path_len == al_entry_path_len(e) && strlen(it->path) == it->path_len);
}

/* The entry came back for paths[tag - first] (n of them), with that file's
 * path and bytes; counts it in seen[]. */
static void check_tagged(const al_entry *e, char *const *paths, size_t n, uint64_t first,
                         int *seen) {
    uint64_t i = tag_of(e) - first;
    CHECK(i < n);
    if (i >= n) return;
    CHECK(same_as_file(e, paths[i]));
    seen[i]++;
}

/* Takes `n` entries with al_worker_get_batch, at most `room` per call, into
 * items[0 .. n-1] (room for n + room items): each call returns 0 with
 * 1 <= *got <= what is left, leaves the items after *got alone, and fills
 * each item from its entry. Returns the number taken (n unless a check
 * failed). */
static size_t take_batches(al_worker *w, al_batch_item *items, size_t n, size_t room) {
    size_t have = 0;
    while (have < n) {
        memset(items + have, FILL, room * sizeof *items);
        size_t got = 99;
        CHECK_RC(al_worker_get_batch(w, items + have, room, 10 * SEC, &got), 0);
        CHECK(got >= 1 && got <= room && got <= n - have);
        if (got == 0 || got > room || got > n - have) break;
        CHECK(untouched(items + have + got, (room - got) * sizeof *items));
        for (size_t i = have; i < have + got; i++) check_item(&items[i]);
        have += got;
    }
    return have;
}

/* --- tagged requests ------------------------------------------------------- */

static uint64_t scattered_tag(size_t i) {
    return (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL;
}

/* Ten files through a queue of 4: each entry comes back with the tag its
 * path was requested with, and that file's bytes. The path is passed with
 * bytes after its length, which must not reach the entry. */
static void tagged_requests_bring_each_file_back_with_its_tag(void) {
    enum { N = 10 };
    char **paths = make_files(N);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    int seen[N] = {0};
    if (w) {
        size_t next = 0, done = 0;
        while (done < N) {
            while (next < N) {
                size_t len = strlen(paths[next]);
                char *junk = malloc(len + 4);
                memcpy(junk, paths[next], len);
                memcpy(junk + len, "/zz", 4);
                int rc = al_worker_request_tagged(w, (const uint8_t *)junk, len,
                                                  scattered_tag(next));
                free(junk);
                if (rc == -EAGAIN) break;
                CHECK_RC(rc, 0);
                if (rc != 0) break;
                next++;
            }
            al_entry *e = NULL;
            CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
            if (!e) break;
            uint64_t tag = tag_of(e);
            size_t i = 0;
            while (i < N && scattered_tag(i) != tag) i++;
            CHECK(i < N);
            if (i < N) {
                CHECK(same_as_file(e, paths[i]));
                seen[i]++;
            }
            CHECK_RC(al_entry_release(e), 0);
            done++;
        }
        for (size_t i = 0; i < N; i++) CHECK(seen[i] == 1);
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free_files(paths, N);
}

/* queue_depth 1: the same slot serves a tagged request, then untagged ones
 * (al_worker_request, _bytes, _many): those read tag 0, not the old tag. */
static void untagged_requests_in_a_slot_that_had_a_tag_read_tag_zero(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_config c = small_config();
    c.queue_depth = 1;
    al_loader *l = NULL;
    CHECK_RC(al_loader_new(&c, &l), 0);
    if (l) CHECK_RC(al_loader_start(l), 0);
    al_worker *w = worker(l, 0);
    if (w) {
        for (int round = 0; round < 3; round++) {
            al_entry *e = NULL;
            CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)small, strlen(small), 77), 0);
            CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
            CHECK(e && tag_of(e) == 77 && same_as_file(e, small));
            al_entry_release(e);
            e = NULL;
            size_t acc = 0;
            switch (round) {
            case 0: CHECK_RC(al_worker_request(w, small), 0); break;
            case 1:
                CHECK_RC(al_worker_request_bytes(w, (const uint8_t *)small, strlen(small)), 0);
                break;
            default:
                CHECK_RC(al_worker_request_many(w, (const char *const *)&small, 1, &acc), 0);
                CHECK(acc == 1);
            }
            CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
            CHECK(e && tag_of(e) == 0 && same_as_file(e, small));
            al_entry_release(e);
        }
    }
    stop(l, w);
    free(small);
}

static void tagged_request_refuses_what_request_bytes_refuses(void) {
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        const uint8_t *etc = (const uint8_t *)"/etc/hostname";
        CHECK_RC(al_worker_request_tagged(NULL, etc, 13, 1), -EINVAL);
        CHECK_RC(al_worker_request_tagged(w, NULL, 13, 1), -EINVAL);
        CHECK_RC(al_worker_request_tagged(w, NULL, 0, 1), -EINVAL);
        CHECK_RC(al_worker_request_tagged(w, etc, 0, 1), -EINVAL);
        CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)"/etc\0x", 6, 1), -EINVAL);
        char *longp = malloc(5000);
        memset(longp, 'a', 5000);
        longp[0] = '/';
        CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)longp, 5000, 1), -ENAMETOOLONG);
        free(longp);
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
}

static void entry_tag_of_null_or_a_released_entry_is_zero(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    CHECK(al_entry_tag(NULL) == 0);
    if (w) {
        al_entry *e = NULL;
        CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)small, strlen(small), 5), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && al_entry_tag(e) == 5);
        CHECK_RC(al_entry_release(e), 0);
        CHECK(al_entry_tag(e) == 0);
    }
    stop(l, w);
    free(small);
}

/* --- packed requests ------------------------------------------------------- */

/* Ten files packed in one block, fed through a queue of 4: each call
 * queues exactly the free slots (-EAGAIN with the rest), and every entry
 * comes back with TAG0 + its index in the block. */
static void packed_requests_tag_the_ith_path_first_tag_plus_i(void) {
    enum { N = 10 };
    char **paths = make_files(N);
    size_t len = 0;
    uint8_t *block = pack(paths, N, &len);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    int seen[N] = {0};
    if (w) {
        al_batch_item items[2 * QD];
        size_t off = 0, next = 0, done = 0, calls = 0;
        while (done < N && calls++ < 100) {
            if (next < N) {
                size_t space = QD - al_worker_outstanding(w), acc = 99;
                int rc = al_worker_request_packed(w, block + off, len - off, TAG0 + next, &acc);
                if (N - next > space) {
                    CHECK_RC(rc, -EAGAIN);
                    CHECK(acc == space);
                } else {
                    CHECK_RC(rc, 0);
                    CHECK(acc == N - next);
                }
                if (acc > N - next) break;
                for (size_t k = 0; k < acc; k++) off += strlen((const char *)block + off) + 1;
                next += acc;
            }
            size_t out = al_worker_outstanding(w);
            size_t got = take_batches(w, items, out, QD);
            CHECK(got == out);
            for (size_t i = 0; i < got; i++) check_tagged(items[i].entry, paths, N, TAG0, seen);
            CHECK(al_batch_release(items, got) == got);
            done += got;
        }
        CHECK(off == len && next == N);
        for (size_t i = 0; i < N; i++) CHECK(seen[i] == 1);
    }
    stop(l, w);
    free(block);
    free_files(paths, N);
}

/* "a\0\0b\0": "a" is queued, the empty path between the NULs is refused. */
static void packed_request_stops_at_an_empty_path_with_einval(void) {
    char *paths[2] = {make_file("a.bin", 3000, 1), make_file("b.bin", 5000, 2)};
    size_t la = strlen(paths[0]), lb = strlen(paths[1]);
    uint8_t *block = malloc(la + lb + 3);
    memcpy(block, paths[0], la + 1);
    block[la + 1] = 0;
    memcpy(block + la + 2, paths[1], lb + 1);
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, la + lb + 3, 40, &acc), -EINVAL);
        CHECK(acc == 1);
        CHECK(al_worker_outstanding(w) == 1);
        /* A block that starts with a NUL: nothing queued. */
        acc = 99;
        CHECK_RC(al_worker_request_packed(w, block + la, lb + 3, 50, &acc), -EINVAL);
        CHECK(acc == 0);
        CHECK(al_worker_outstanding(w) == 1);
        CHECK_RC(al_loader_start(l), 0);
        al_entry *e = NULL;
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && tag_of(e) == 40 && same_as_file(e, paths[0]));
        al_entry_release(e);
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(block);
    free(paths[0]);
    free(paths[1]);
}

/* "a\0b" (no NUL after b, bytes after the length): both are queued, b as
 * exactly its bytes. */
static void packed_request_counts_a_last_path_without_its_nul(void) {
    char *paths[2] = {make_file("a.bin", 3000, 1), make_file("b.bin", 5000, 2)};
    size_t la = strlen(paths[0]), lb = strlen(paths[1]);
    uint8_t *block = malloc(la + lb + 8);
    memcpy(block, paths[0], la + 1);
    memcpy(block + la + 1, paths[1], lb);
    memcpy(block + la + 1 + lb, "/x\0y\0\0z", 7);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    int seen[2] = {0, 0};
    if (w) {
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, la + 1 + lb, UINT64_MAX, &acc), 0);
        CHECK(acc == 2);
        al_batch_item items[2 + QD];
        size_t got = take_batches(w, items, 2, QD);
        CHECK(got == 2);
        /* first_tag + i wraps like unsigned arithmetic: UINT64_MAX, then 0. */
        for (size_t i = 0; i < got; i++)
            check_tagged(items[i].entry, paths, 2, UINT64_MAX, seen);
        CHECK(seen[0] == 1 && seen[1] == 1);
        CHECK(al_batch_release(items, got) == got);
    }
    stop(l, w);
    free(block);
    free(paths[0]);
    free(paths[1]);
}

static void packed_request_of_zero_bytes_or_null_arguments(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, (const uint8_t *)small, 0, 1, &acc), 0);
        CHECK(acc == 0);
        acc = 99;
        CHECK_RC(al_worker_request_packed(w, NULL, 0, 1, &acc), 0);
        CHECK(acc == 0);
        acc = 99;
        CHECK_RC(al_worker_request_packed(w, NULL, 5, 1, &acc), -EINVAL);
        CHECK(acc == 0);
        acc = 99;
        CHECK_RC(al_worker_request_packed(NULL, (const uint8_t *)small, strlen(small), 1, &acc),
                 -EINVAL);
        CHECK(acc == 0);
        CHECK(al_worker_outstanding(w) == 0);
        /* No `accepted`: queued all the same. */
        CHECK_RC(al_worker_request_packed(w, (const uint8_t *)small, strlen(small) + 1, 9, NULL),
                 0);
        CHECK(al_worker_outstanding(w) == 1);
        CHECK_RC(al_loader_start(l), 0);
        al_entry *e = NULL;
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && tag_of(e) == 9 && same_as_file(e, small));
        al_entry_release(e);
    }
    stop(l, w);
    free(small);
}

/* One slot taken by a plain request, six paths packed: the three free slots
 * take the first three (-EAGAIN, *accepted 3); a full queue takes none. */
static void packed_request_on_a_full_queue_is_eagain_after_the_free_slots(void) {
    enum { N = 6 };
    char **paths = make_files(N);
    size_t len = 0;
    uint8_t *block = pack(paths, N, &len);
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        CHECK_RC(al_worker_request(w, paths[N - 1]), 0);
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), -EAGAIN);
        CHECK(acc == QD - 1);
        CHECK(al_worker_outstanding(w) == QD);
        acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), -EAGAIN);
        CHECK(acc == 0);
        CHECK_RC(al_loader_start(l), 0);
        al_batch_item items[2 * QD];
        size_t got = take_batches(w, items, QD, QD);
        CHECK(got == QD);
        int seen[N] = {0}, untagged = 0;
        for (size_t i = 0; i < got; i++) {
            if (items[i].tag == 0) {
                CHECK(same_as_file(items[i].entry, paths[N - 1]));
                untagged++;
            } else {
                check_tagged(items[i].entry, paths, N, TAG0, seen);
            }
        }
        CHECK(untagged == 1 && seen[0] == 1 && seen[1] == 1 && seen[2] == 1 && seen[3] == 0);
        CHECK(al_batch_release(items, got) == got);
        CHECK(al_worker_outstanding(w) == 0);
    }
    stop(l, w);
    free(block);
    free_files(paths, N);
}

/* A file that cannot be loaded comes back as an item with its tag, the
 * errno, size 0; the others load. */
static void packed_request_of_a_missing_file_comes_back_with_its_tag_and_enoent(void) {
    char *paths[3] = {make_file("small.bin", 1000, 1), join(scratch, "missing"), strdup(scratch)};
    int want[3] = {0, ENOENT, EISDIR};
    size_t len = 0;
    uint8_t *block = pack(paths, 3, &len);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, len, 100, &acc), 0);
        CHECK(acc == 3);
        al_batch_item items[3 + QD];
        size_t got = take_batches(w, items, 3, QD);
        CHECK(got == 3);
        int seen[3] = {0, 0, 0};
        for (size_t i = 0; i < got; i++) {
            uint64_t k = items[i].tag - 100;
            CHECK(k < 3);
            if (k >= 3) continue;
            seen[k]++;
            CHECK(items[i].error == want[k]);
            CHECK(strcmp(items[i].path, paths[k]) == 0);
            if (want[k])
                CHECK(items[i].size == 0);
            else
                CHECK(same_as_file(items[i].entry, paths[k]));
        }
        CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
        CHECK(al_batch_release(items, got) == got);
    }
    stop(l, w);
    free(block);
    for (int i = 0; i < 3; i++) free(paths[i]);
}

static void packed_request_with_a_path_over_path_max_is_enametoolong(void) {
    char *small = make_file("small.bin", 1000, 1);
    size_t ls = strlen(small);
    size_t len = ls + 1 + 5000 + 1 + ls;
    uint8_t *block = malloc(len);
    memcpy(block, small, ls + 1);
    memset(block + ls + 1, 'a', 5000);
    block[ls + 1] = '/';
    block[ls + 1 + 5000] = 0;
    memcpy(block + ls + 2 + 5000, small, ls);
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t acc = 99;
        CHECK_RC(al_worker_request_packed(w, block, len, 0, &acc), -ENAMETOOLONG);
        CHECK(acc == 1);
        CHECK(al_worker_outstanding(w) == 1);
    }
    stop(l, w);
    free(block);
    free(small);
}

/* --- batches of entries ---------------------------------------------------- */

/* max 0, NULL items, NULL worker: -EINVAL, *got 0, and no entry taken (a
 * completed one is still there for the next call). */
static void get_batch_rejects_no_room_null_items_and_a_null_worker(void) {
    char *small = make_file("small.bin", 1000, 1);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        al_batch_item items[QD];
        size_t got = 99;
        CHECK_RC(al_worker_get_batch(NULL, items, QD, 0, &got), -EINVAL);
        CHECK(got == 0);
        CHECK_RC(al_worker_request(w, small), 0);
        got = 99;
        memset(items, FILL, sizeof items);
        /* At once: no wait for an entry it has no room for. */
        uint64_t t0 = now_ns();
        CHECK_RC(al_worker_get_batch(w, items, 0, 30 * SEC, &got), -EINVAL);
        CHECK(now_ns() - t0 < 10 * (uint64_t)SEC);
        CHECK(got == 0 && untouched(items, sizeof items));
        got = 99;
        CHECK_RC(al_worker_get_batch(w, NULL, QD, 10 * SEC, &got), -EINVAL);
        CHECK(got == 0);
        CHECK(al_worker_outstanding(w) == 1);
        /* NULL `got` is fine. */
        CHECK_RC(al_worker_get_batch(w, items, QD, 10 * SEC, NULL), 0);
        check_item(&items[0]);
        CHECK(same_as_file(items[0].entry, small));
        CHECK(untouched(items + 1, (QD - 1) * sizeof *items));
        CHECK(al_batch_release(items, 1) == 1);
    }
    stop(l, w);
    free(small);
}

/* Four completed, max 1: one item, the rest stay for later calls. */
static void get_batch_of_one_takes_one_entry(void) {
    char **paths = make_files(QD);
    size_t len = 0;
    uint8_t *block = pack(paths, QD, &len);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        size_t acc = 0;
        CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), 0);
        CHECK(acc == QD);
        al_batch_item items[QD + 1];
        int seen[QD] = {0};
        for (size_t i = 0; i < QD; i++) {
            memset(items + i, FILL, 2 * sizeof *items);
            size_t got = 99;
            CHECK_RC(al_worker_get_batch(w, items + i, 1, 10 * SEC, &got), 0);
            CHECK(got == 1);
            CHECK(untouched(items + i + 1, sizeof *items));
            check_item(&items[i]);
            check_tagged(items[i].entry, paths, QD, TAG0, seen);
            CHECK(al_worker_outstanding(w) == QD);
        }
        for (size_t i = 0; i < QD; i++) CHECK(seen[i] == 1);
        CHECK(al_batch_release(items, QD) == QD);
    }
    stop(l, w);
    free(block);
    free_files(paths, QD);
}

/* queue_depth entries, max queue_depth: one call or a few, never more
 * items than entries, each item its entry's. */
static void get_batch_of_n_takes_every_entry_outstanding(void) {
    char **paths = make_files(QD);
    size_t len = 0;
    uint8_t *block = pack(paths, QD, &len);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        for (int round = 0; round < 3; round++) {
            size_t acc = 0;
            CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), 0);
            CHECK(acc == QD);
            al_batch_item items[2 * QD];
            size_t got = take_batches(w, items, QD, QD);
            CHECK(got == QD);
            int seen[QD] = {0};
            for (size_t i = 0; i < got; i++) check_tagged(items[i].entry, paths, QD, TAG0, seen);
            for (size_t i = 0; i < QD; i++) CHECK(seen[i] == 1);
            CHECK(al_batch_release(items, got) == got);
        }
    }
    stop(l, w);
    free(block);
    free_files(paths, QD);
}

/* One outstanding, room for 8: the call returns the one as soon as it is
 * there, not after the timeout, and leaves the other seven items alone. */
static void get_batch_with_more_room_than_outstanding_returns_what_is_there(void) {
    char **paths = make_files(3);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        enum { ROOM = 8 };
        al_batch_item items[ROOM];
        memset(items, FILL, sizeof items);
        CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)paths[1], strlen(paths[1]), 1), 0);
        size_t got = 99;
        uint64_t t0 = now_ns();
        CHECK_RC(al_worker_get_batch(w, items, ROOM, 60 * SEC, &got), 0);
        CHECK(now_ns() - t0 < 20 * (uint64_t)SEC);
        CHECK(got == 1);
        CHECK(untouched(items + 1, (ROOM - 1) * sizeof *items));
        check_item(&items[0]);
        CHECK(items[0].tag == 1 && same_as_file(items[0].entry, paths[1]));
        CHECK(al_batch_release(items, 1) == 1);
        /* Three outstanding, room for 8, in as many calls as it takes. */
        for (uint64_t i = 0; i < 3; i++)
            CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)paths[i], strlen(paths[i]), i),
                     0);
        al_batch_item more[3 + ROOM];
        got = take_batches(w, more, 3, ROOM);
        CHECK(got == 3);
        int seen[3] = {0, 0, 0};
        for (size_t i = 0; i < got; i++) check_tagged(more[i].entry, paths, 3, 0, seen);
        CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
        CHECK(al_batch_release(more, got) == got);
    }
    stop(l, w);
    free_files(paths, 3);
}

/* Nothing outstanding: -ETIMEDOUT and *got 0 (timeout 0 and a short one,
 * before and after the start), items untouched. */
static void get_batch_with_nothing_to_take_is_etimedout(void) {
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        al_batch_item items[QD];
        memset(items, FILL, sizeof items);
        for (int started = 0; started < 2; started++) {
            if (started) CHECK_RC(al_loader_start(l), 0);
            size_t got = 99;
            CHECK_RC(al_worker_get_batch(w, items, QD, 0, &got), -ETIMEDOUT);
            CHECK(got == 0);
            got = 99;
            CHECK_RC(al_worker_get_batch(w, items, QD, 1000000, &got), -ETIMEDOUT);
            CHECK(got == 0);
        }
        CHECK(untouched(items, sizeof items));
    }
    stop(l, w);
}

static void get_batch_after_shutdown_is_eshutdown(void) {
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        CHECK_RC(al_loader_shutdown(l), 0);
        al_batch_item items[QD];
        size_t got = 99;
        CHECK_RC(al_worker_get_batch(w, items, QD, -1, &got), -ESHUTDOWN);
        CHECK(got == 0);
    }
    stop(l, w);
}

/* al_batch_release gives back each item's entry once: a second call, or
 * an entry already released, counts 0. */
static void batch_release_releases_every_item_once(void) {
    char **paths = make_files(QD);
    size_t len = 0;
    uint8_t *block = pack(paths, QD, &len);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    CHECK(al_batch_release(NULL, 3) == 0);
    CHECK(al_batch_release(NULL, 0) == 0);
    if (w) {
        size_t acc = 0;
        CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), 0);
        al_batch_item items[2 * QD];
        size_t got = take_batches(w, items, QD, QD);
        CHECK(got == QD);
        CHECK(al_worker_outstanding(w) == QD);
        CHECK(al_batch_release(items, 0) == 0);
        CHECK(al_worker_outstanding(w) == QD);
        CHECK_RC(al_entry_release(items[1].entry), 0);
        CHECK(al_worker_outstanding(w) == QD - 1);
        CHECK(al_batch_release(items, 2) == 1); /* items[1] is skipped */
        CHECK(al_worker_outstanding(w) == QD - 2);
        al_batch_item none = items[2];
        none.entry = NULL;
        CHECK(al_batch_release(&none, 1) == 0);
        CHECK(al_worker_outstanding(w) == QD - 2);
        CHECK(al_batch_release(items, QD) == QD - 2);
        CHECK(al_worker_outstanding(w) == 0);
        CHECK(al_batch_release(items, QD) == 0);
        for (size_t i = 0; i < QD; i++)
            CHECK(al_entry_data(items[i].entry) == NULL && al_entry_tag(items[i].entry) == 0);
        /* The slots are free again: a full queue's worth loads. */
        CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), 0);
        CHECK(acc == QD);
        got = take_batches(w, items, QD, QD);
        CHECK(got == QD && al_batch_release(items, got) == got);
    }
    stop(l, w);
    free(block);
    free_files(paths, QD);
}

/* --- the span of a worker's buffers ---------------------------------------- */

/* Each worker holds queue_depth entries at once: every entry's bytes lie in
 * its own worker's span, none in the other's; the spans are page aligned,
 * hold queue_depth buffers of max_file_size, and do not overlap. */
static void check_spans(int spawn) {
    char **paths = make_files(2 * QD);
    al_loader *l = new_loader(0);
    if (l) CHECK_RC(spawn ? al_loader_spawn(l) : al_loader_start(l), 0);
    al_worker *ws[2] = {worker(l, 0), worker(l, 1)};
    if (ws[0] && ws[1]) {
        const uint8_t *base[2] = {NULL, NULL};
        size_t len[2] = {0, 0};
        for (int k = 0; k < 2; k++) {
            CHECK_RC(al_worker_buffers(ws[k], &base[k], &len[k]), 0);
            CHECK(base[k] != NULL && ((uintptr_t)base[k] & 4095) == 0 && (len[k] & 4095) == 0);
            CHECK(len[k] >= (size_t)QD * MAX_FILE);
        }
        CHECK(!inside(base[0], 1, base[1], len[1]) && !inside(base[1], 1, base[0], len[0]));
        al_batch_item items[2][2 * QD];
        for (int k = 0; k < 2; k++) {
            for (size_t i = 0; i < QD; i++)
                CHECK_RC(al_worker_request_tagged(ws[k], (const uint8_t *)paths[k * QD + i],
                                                  strlen(paths[k * QD + i]), k * QD + i),
                         0);
            CHECK(take_batches(ws[k], items[k], QD, QD) == QD);
        }
        /* All 2 * QD entries are held now: their buffers are all distinct. */
        for (int k = 0; k < 2; k++) {
            int seen[2 * QD] = {0};
            for (size_t i = 0; i < QD; i++) {
                const al_batch_item *it = &items[k][i];
                check_tagged(it->entry, paths, 2 * QD, 0, seen);
                CHECK(inside(it->data, it->size, base[k], len[k]));
                /* The whole buffer, not only the bytes of this file. */
                CHECK(inside(it->data, MAX_FILE, base[k], len[k]));
                CHECK(!inside(it->data, 1, base[!k], len[!k]));
                for (size_t j = 0; j < i; j++) CHECK(items[k][j].data != it->data);
            }
            for (size_t i = 0; i < QD; i++) CHECK(seen[k * QD + i] == 1);
            /* The span does not move. */
            const uint8_t *b = NULL;
            size_t n = 0;
            CHECK_RC(al_worker_buffers(ws[k], &b, &n), 0);
            CHECK(b == base[k] && n == len[k]);
        }
        for (int k = 0; k < 2; k++) CHECK(al_batch_release(items[k], QD) == QD);
    }
    al_worker_free(ws[1]);
    stop(l, ws[0]);
    free_files(paths, 2 * QD);
}

static void worker_buffers_span_every_entry_of_the_worker(void) {
    check_spans(0);
}

static void worker_buffers_span_every_entry_with_a_loader_process(void) {
    check_spans(1);
}

static void worker_buffers_rejects_null_arguments(void) {
    al_loader *l = new_loader(0);
    al_worker *w = worker(l, 0);
    if (w) {
        const uint8_t *base = NULL;
        size_t len = 0;
        CHECK_RC(al_worker_buffers(NULL, &base, &len), -EINVAL);
        CHECK_RC(al_worker_buffers(w, NULL, &len), -EINVAL);
        CHECK_RC(al_worker_buffers(w, &base, NULL), -EINVAL);
        CHECK_RC(al_worker_buffers(NULL, NULL, NULL), -EINVAL);
        CHECK_RC(al_worker_buffers(w, &base, &len), 0);
        CHECK(base != NULL && len > 0);
    }
    stop(l, w);
}

/* A freed worker handle refuses the call; an entry it delivered still lies
 * in the span read before, and keeps it mapped. */
static void worker_buffers_of_a_freed_handle_is_einval_while_its_entry_lives(void) {
    char *small = make_file("small.bin", 70000, 3);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 1);
    if (w) {
        const uint8_t *base = NULL;
        size_t len = 0;
        al_entry *e = NULL;
        CHECK_RC(al_worker_buffers(w, &base, &len), 0);
        CHECK_RC(al_worker_request_tagged(w, (const uint8_t *)small, strlen(small), 3), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        if (e) {
            al_worker_free(w);
            const uint8_t *b2 = NULL;
            size_t l2 = 0;
            CHECK_RC(al_worker_buffers(w, &b2, &l2), -EINVAL);
            const uint8_t *d = al_entry_data(e);
            CHECK(d != NULL && inside(d, al_entry_size(e), base, len));
            CHECK(same_as_file(e, small) && al_entry_tag(e) == 3);
            CHECK_RC(al_entry_release(e), 0);
        } else {
            al_worker_free(w);
        }
    }
    stop(l, NULL);
    free(small);
}

/* --- hand-over by ticket --------------------------------------------------- */

/* The bytes of the file at `path`, read with read() into a malloc'd block
 * of `*len` bytes; NULL (and a failed check) when it cannot be read. */
static uint8_t *read_whole(const char *path, size_t *len) {
    *len = 0;
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    if (fd < 0) return NULL;
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    size_t n = (size_t)st.st_size, have = 0;
    uint8_t *buf = malloc(n ? n : 1);
    while (have < n) {
        ssize_t k = read(fd, buf + have, n - have);
        if (k <= 0) break;
        have += (size_t)k;
    }
    close(fd);
    CHECK(have == n);
    if (have != n) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* 1 when the `n` bytes at `p` are exactly the bytes of the file at `path`. */
static int same_bytes_as_file(const uint8_t *p, size_t n, const char *path) {
    size_t len = 0;
    uint8_t *disk = read_whole(path, &len);
    int ok = disk != NULL && len == n && (n == 0 || memcmp(p, disk, n) == 0);
    free(disk);
    return ok;
}

/* Size of the file at `path` (stat), 0 when it cannot be stat'ed. */
static size_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/* Loads the `n` paths (n <= QD) packed with tags TAG0 + i through `w`,
 * takes them as a batch and hands the batch over: tickets[i] for the
 * entry of paths[which[i]]. Every ticket is non-zero and distinct, every
 * handle dead, every entry still outstanding. Returns the number handed
 * over (n unless a check failed). */
static size_t load_and_hand_over(al_worker *w, char *const *paths, size_t n, uint64_t *tickets,
                                 size_t *which) {
    size_t len = 0, acc = 0;
    uint8_t *block = pack(paths, n, &len);
    CHECK_RC(al_worker_request_packed(w, block, len, TAG0, &acc), 0);
    free(block);
    CHECK(acc == n);
    al_batch_item items[2 * QD];
    size_t got = take_batches(w, items, n, QD);
    CHECK(got == n);
    for (size_t i = 0; i < got; i++) {
        which[i] = (size_t)(items[i].tag - TAG0);
        CHECK(which[i] < n);
    }
    memset(tickets, 0, n * sizeof *tickets);
    size_t handed = al_batch_handoff(items, got, tickets);
    CHECK(handed == got);
    for (size_t i = 0; i < got; i++) {
        CHECK(tickets[i] != 0);
        for (size_t j = 0; j < i; j++) CHECK(tickets[j] != tickets[i]);
        /* The handle is gone; the entry is not. */
        CHECK(al_entry_data(items[i].entry) == NULL && al_entry_size(items[i].entry) == 0);
        CHECK_RC(al_entry_release(items[i].entry), -EINVAL);
    }
    CHECK(al_worker_outstanding(w) == got);
    return handed;
}

/* A batch handed over in this process is taken by a forked child (its
 * loader handle inherited): the child copies every entry's bytes in ticket
 * order (the reverse of the batch's) and releases them; the parent then
 * has nothing outstanding, its tickets are stale, and the slots load
 * again. A loader process: no threads here when it forks. */
static void batch_handed_over_is_taken_by_a_forked_process(void) {
    char **paths = make_files(QD);
    al_loader *l = new_loader(0);
    if (l) CHECK_RC(al_loader_spawn(l), 0);
    al_worker *w = worker(l, 0);
    if (w) {
        uint64_t items_tickets[QD], tickets[QD];
        size_t which_item[QD], which[QD];
        size_t handed = load_and_hand_over(w, paths, QD, items_tickets, which_item);
        size_t total = 0;
        for (size_t i = 0; i < QD; i++) {
            tickets[i] = items_tickets[QD - 1 - i];
            which[i] = which_item[QD - 1 - i] < QD ? which_item[QD - 1 - i] : 0;
            total += file_size(paths[which[i]]);
        }
        CHECK(total > 0);
        if (handed == QD) {
            pid_t pid = fork_or_exit();
            if (pid == 0) {
                int bad = 0;
                uint8_t *dst = malloc(total);
                uint64_t sizes[QD];
                memset(dst, FILL, total);
                int rc = al_loader_take(l, tickets, QD, dst, total, sizes);
                bad += rc != 0;
                size_t at = 0;
                for (size_t i = 0; rc == 0 && i < QD; i++) {
                    size_t want = file_size(paths[which[i]]);
                    bad += sizes[i] != want;
                    bad += !same_bytes_as_file(dst + at, want, paths[which[i]]);
                    at += want;
                }
                bad += rc == 0 && at != total;
                free(dst);
                if (bad) fprintf(stderr, "child: al_loader_take = %d, %d checks failed\n", rc, bad);
                _exit(bad ? 1 : 0);
            }
            int status = 0;
            CHECK(waitpid(pid, &status, 0) == pid);
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
            CHECK(al_worker_outstanding(w) == 0);
            /* Taken there: stale here. */
            uint8_t *dst = malloc(total);
            uint64_t sizes[QD];
            memset(dst, FILL, total);
            CHECK_RC(al_loader_take(l, tickets, QD, dst, total, sizes), -EINVAL);
            CHECK(untouched(dst, total));
            CHECK_RC(al_loader_take(l, tickets, 1, dst, total, sizes), -EINVAL);
            CHECK(untouched(dst, total));
            CHECK(al_loader_drop_tickets(l, tickets, QD) == 0);
            free(dst);
            /* The slots are free: a full queue's worth loads and comes back. */
            uint64_t again[QD];
            CHECK(load_and_hand_over(w, paths, QD, again, which) == QD);
            CHECK(al_loader_drop_tickets(l, again, QD) == QD);
            CHECK(al_worker_outstanding(w) == 0);
        }
    }
    stop(l, w);
    free_files(paths, QD);
}

/* al_entry_handoff of one entry: the handle is dead at once (accessors
 * NULL/0, release and a second hand-over -EINVAL), the entry counts
 * against the queue until its ticket is taken. A NULL entry or ticket
 * pointer is -EINVAL and hands nothing over; in a process forked after
 * the delivery the entry is the parent's: -EPERM there, and the parent's
 * handle is unaffected. */
static void entry_handoff_kills_the_handle_and_the_entry_counts_until_taken(void) {
    char *small = make_file("small.bin", 70000, 3);
    al_loader *l = new_loader(0);
    if (l) CHECK_RC(al_loader_spawn(l), 0);
    al_worker *w = worker(l, 0);
    if (w) {
        al_entry *e = NULL;
        CHECK_RC(al_worker_request(w, small), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && same_as_file(e, small));
        uint64_t t = 0;
        CHECK_RC(al_entry_handoff(NULL, &t), -EINVAL);
        CHECK(t == 0);
        CHECK_RC(al_entry_handoff(e, NULL), -EINVAL);
        CHECK(same_as_file(e, small)); /* still the caller's */

        pid_t pid = fork_or_exit();
        if (pid == 0) {
            uint64_t ct = 0;
            int bad = 0;
            bad += al_entry_handoff(e, &ct) != -EPERM;
            bad += ct != 0;
            bad += al_entry_data(e) != NULL; /* forgotten here */
            _exit(bad ? 1 : 0);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK(same_as_file(e, small));
        CHECK(al_worker_outstanding(w) == 1);

        CHECK_RC(al_entry_handoff(e, &t), 0);
        CHECK(t != 0);
        CHECK(al_entry_data(e) == NULL && al_entry_size(e) == 0 && al_entry_path(e) == NULL);
        CHECK_RC(al_entry_release(e), -EINVAL);
        uint64_t t2 = 0;
        CHECK_RC(al_entry_handoff(e, &t2), -EINVAL);
        CHECK(t2 == 0);
        CHECK(al_worker_outstanding(w) == 1);

        size_t n = file_size(small);
        uint8_t *dst = malloc(n);
        uint64_t size = 0;
        CHECK_RC(al_loader_take(l, &t, 1, dst, n, &size), 0);
        CHECK(size == n && same_bytes_as_file(dst, n, small));
        CHECK(al_worker_outstanding(w) == 0);
        free(dst);
    }
    stop(l, w);
    free(small);
}

/* al_loader_take checks every ticket, and the room in dst, before it
 * copies or releases anything: a dst one byte short, a ticket 0, a
 * made-up ticket or a stale one after valid ones fail with -EINVAL and
 * leave dst untouched and every entry outstanding; then a correct take
 * works. al_loader_drop_tickets releases and counts, skipping stale and
 * 0 tickets; NULL arguments are -EINVAL / 0. */
static void loader_take_checks_every_ticket_and_the_room_before_it_releases(void) {
    char **paths = make_files(QD);
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        uint64_t tickets[QD], sizes[QD + 1];
        size_t which[QD];
        CHECK(load_and_hand_over(w, paths, QD, tickets, which) == QD);
        for (size_t i = 0; i < QD; i++)
            if (which[i] >= QD) which[i] = 0;
        /* Tickets of the last files first: the first two stand for files
         * of different, non-zero sizes (the ticket order shows). */
        for (size_t i = 0; i < QD; i++)
            for (size_t j = i + 1; j < QD; j++)
                if (which[j] > which[i]) {
                    size_t k = which[i];
                    uint64_t t = tickets[i];
                    which[i] = which[j], tickets[i] = tickets[j];
                    which[j] = k, tickets[j] = t;
                }
        size_t total = 0;
        for (size_t i = 0; i < QD; i++) total += file_size(paths[which[i]]);
        CHECK(total > 0);
        uint8_t *dst = malloc(total + 64);
        memset(dst, FILL, total + 64);

        /* One byte short. */
        CHECK_RC(al_loader_take(l, tickets, QD, dst, total - 1, sizes), -EINVAL);
        CHECK(untouched(dst, total + 64));
        CHECK(al_worker_outstanding(w) == QD);
        /* A bad ticket after good ones: 0, made up (no such entry, another
         * generation of a real one), and none of the good ones goes. */
        uint64_t bad[3] = {
            0,
            ((uint64_t)1000000 << 32) | (tickets[0] & 0xFFFFFFFFu),
            tickets[0] + 1,
        };
        for (int k = 0; k < 3; k++) {
            uint64_t mixed[QD + 1];
            memcpy(mixed, tickets, sizeof tickets);
            mixed[QD] = bad[k];
            CHECK_RC(al_loader_take(l, mixed, QD + 1, dst, total + 64, sizes), -EINVAL);
            CHECK(untouched(dst, total + 64));
            CHECK(al_worker_outstanding(w) == QD);
            CHECK_RC(al_loader_take(l, &bad[k], 1, dst, total + 64, sizes), -EINVAL);
            CHECK(al_worker_outstanding(w) == QD);
        }
        /* NULL arguments. */
        CHECK_RC(al_loader_take(NULL, tickets, QD, dst, total, sizes), -EINVAL);
        CHECK_RC(al_loader_take(l, NULL, QD, dst, total, sizes), -EINVAL);
        CHECK_RC(al_loader_take(l, tickets, QD, NULL, total, sizes), -EINVAL);
        CHECK_RC(al_loader_take(l, tickets, QD, dst, total, NULL), -EINVAL);
        CHECK(untouched(dst, total + 64));
        CHECK(al_worker_outstanding(w) == QD);
        /* Nothing to take. */
        CHECK_RC(al_loader_take(l, NULL, 0, NULL, 0, NULL), 0);
        CHECK(al_worker_outstanding(w) == QD);

        /* The first two, into exactly their size: copied in ticket order,
         * released; a second take of them is stale. */
        CHECK(file_size(paths[which[0]]) != file_size(paths[which[1]]));
        CHECK(file_size(paths[which[0]]) > 0 && file_size(paths[which[1]]) > 0);
        size_t two = file_size(paths[which[0]]) + file_size(paths[which[1]]);
        memset(sizes, 0xFF, sizeof sizes);
        CHECK_RC(al_loader_take(l, tickets, 2, dst, two, sizes), 0);
        CHECK(sizes[0] == file_size(paths[which[0]]) && sizes[1] == file_size(paths[which[1]]));
        CHECK(sizes[2] == UINT64_MAX); /* only n sizes are written */
        CHECK(same_bytes_as_file(dst, (size_t)sizes[0], paths[which[0]]));
        CHECK(same_bytes_as_file(dst + sizes[0], (size_t)sizes[1], paths[which[1]]));
        CHECK(untouched(dst + two, total + 64 - two));
        CHECK(al_worker_outstanding(w) == QD - 2);
        memset(dst, FILL, total + 64);
        CHECK_RC(al_loader_take(l, tickets, 2, dst, total + 64, sizes), -EINVAL);
        CHECK(untouched(dst, total + 64));
        CHECK(al_worker_outstanding(w) == QD - 2);

        /* Drop: NULL arguments count 0; stale and 0 tickets are skipped. */
        CHECK(al_loader_drop_tickets(NULL, tickets, QD) == 0);
        CHECK(al_loader_drop_tickets(l, NULL, QD) == 0);
        CHECK(al_loader_drop_tickets(l, tickets, 0) == 0);
        CHECK(al_worker_outstanding(w) == QD - 2);
        uint64_t with_zero[QD + 1];
        memcpy(with_zero, tickets, sizeof tickets);
        with_zero[QD] = 0;
        CHECK(al_loader_drop_tickets(l, with_zero, QD + 1) == QD - 2);
        CHECK(al_worker_outstanding(w) == 0);
        CHECK(al_loader_drop_tickets(l, tickets, QD) == 0);
        CHECK_RC(al_loader_take(l, tickets + 2, 2, dst, total + 64, sizes), -EINVAL);

        /* The batch handoff of nothing, or to NULL: 0. */
        al_batch_item none = {0};
        uint64_t t = 99;
        CHECK(al_batch_handoff(NULL, 1, &t) == 0);
        CHECK(al_batch_handoff(&none, 1, NULL) == 0);
        CHECK(al_batch_handoff(&none, 1, &t) == 0);
        CHECK(t == 0);
        free(dst);
    }
    stop(l, w);
    free_files(paths, QD);
}

/* A failed load (missing file) handed over is taken with size 0 and
 * released: alone with no dst at all, and between loaded files, where it
 * takes no room. */
static void failed_load_handed_over_is_taken_with_size_zero(void) {
    char *paths[3] = {make_file("a.bin", 5000, 1), join(scratch, "missing"),
                      make_file("b.bin", 3000, 2)};
    al_loader *l = new_loader(1);
    al_worker *w = worker(l, 0);
    if (w) {
        /* Alone: dst NULL, dst_len 0. */
        uint64_t t = 0, size = 99;
        al_entry *e = NULL;
        CHECK_RC(al_worker_request(w, paths[1]), 0);
        CHECK_RC(al_worker_wait_get(w, 10 * SEC, &e), 0);
        CHECK(e && al_entry_error(e) == ENOENT);
        CHECK_RC(al_entry_handoff(e, &t), 0);
        CHECK(al_worker_outstanding(w) == 1);
        CHECK_RC(al_loader_take(l, &t, 1, NULL, 0, &size), 0);
        CHECK(size == 0);
        CHECK(al_worker_outstanding(w) == 0);
        CHECK_RC(al_loader_take(l, &t, 1, NULL, 0, &size), -EINVAL);

        /* Among loaded files: exactly their bytes' room. */
        uint64_t tickets[3], sizes[3];
        size_t which[3];
        CHECK(load_and_hand_over(w, paths, 3, tickets, which) == 3);
        size_t total = file_size(paths[0]) + file_size(paths[2]);
        uint8_t *dst = malloc(total);
        memset(sizes, 0xFF, sizeof sizes);
        CHECK_RC(al_loader_take(l, tickets, 3, dst, total, sizes), 0);
        size_t at = 0;
        for (size_t i = 0; i < 3; i++) {
            if (which[i] >= 3) continue;
            if (which[i] == 1) {
                CHECK(sizes[i] == 0);
            } else {
                CHECK(sizes[i] == file_size(paths[which[i]]));
                CHECK(at + sizes[i] <= total &&
                      same_bytes_as_file(dst + at, (size_t)sizes[i], paths[which[i]]));
            }
            at += (size_t)sizes[i];
        }
        CHECK(at == total);
        CHECK(al_worker_outstanding(w) == 0);
        free(dst);
    }
    stop(l, w);
    for (int i = 0; i < 3; i++) free(paths[i]);
}

static const struct test tests[] = {
    T(tagged_requests_bring_each_file_back_with_its_tag),
    T(untagged_requests_in_a_slot_that_had_a_tag_read_tag_zero),
    T(tagged_request_refuses_what_request_bytes_refuses),
    T(entry_tag_of_null_or_a_released_entry_is_zero),
    T(packed_requests_tag_the_ith_path_first_tag_plus_i),
    T(packed_request_stops_at_an_empty_path_with_einval),
    T(packed_request_counts_a_last_path_without_its_nul),
    T(packed_request_of_zero_bytes_or_null_arguments),
    T(packed_request_on_a_full_queue_is_eagain_after_the_free_slots),
    T(packed_request_of_a_missing_file_comes_back_with_its_tag_and_enoent),
    T(packed_request_with_a_path_over_path_max_is_enametoolong),
    T(get_batch_rejects_no_room_null_items_and_a_null_worker),
    T(get_batch_of_one_takes_one_entry),
    T(get_batch_of_n_takes_every_entry_outstanding),
    T(get_batch_with_more_room_than_outstanding_returns_what_is_there),
    T(get_batch_with_nothing_to_take_is_etimedout),
    T(get_batch_after_shutdown_is_eshutdown),
    T(batch_release_releases_every_item_once),
    T(worker_buffers_span_every_entry_of_the_worker),
    T(worker_buffers_span_every_entry_with_a_loader_process),
    T(worker_buffers_rejects_null_arguments),
    T(worker_buffers_of_a_freed_handle_is_einval_while_its_entry_lives),
    T(batch_handed_over_is_taken_by_a_forked_process),
    T(entry_handoff_kills_the_handle_and_the_entry_counts_until_taken),
    T(loader_take_checks_every_ticket_and_the_room_before_it_releases),
    T(failed_load_handed_over_is_taken_with_size_zero),
};

int main(int argc, char **argv) {
    return RUN(argc, argv, tests);
}
