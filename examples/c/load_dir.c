/* Loads every regular file under a directory with several worker threads
 * (pthreads) of one in-process loader, then checks every byte against a
 * plain read of the file.
 *
 *   scripts/pkgconfig.sh --release
 *   cc -O2 -std=c11 examples/c/load_dir.c \
 *      $(PKG_CONFIG_PATH=target/release/pkgconfig pkg-config --cflags --libs asyncloader) \
 *      -lpthread -o load_dir
 *   ./load_dir DIR [THREADS] [LOADER_THREADS]
 *
 * Prints files/s and MB/s of the load phase (which touches every byte, as
 * a consumer would, by hashing it); exits 1 if any file differs. */
#define _GNU_SOURCE
#include <asyncloader.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_FILE (64u << 20)

static char **paths;
static size_t n_paths, cap_paths;
static uint64_t *hashes; /* per file, filled by the workers */
static int *errors;      /* per file: 0 or the entry's errno */
static al_loader *loader;

static int collect(const char *p, const struct stat *st, int type, struct FTW *f) {
    (void)f;
    if (type == FTW_F && S_ISREG(st->st_mode) && (uint64_t)st->st_size <= MAX_FILE) {
        if (n_paths == cap_paths) {
            cap_paths = cap_paths ? 2 * cap_paths : 1024;
            paths = realloc(paths, cap_paths * sizeof *paths);
        }
        paths[n_paths++] = strdup(p);
    }
    return 0;
}

static uint64_t fnv1a(const uint8_t *d, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ d[i]) * 1099511628211ull;
    return h;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Index of path `p` in paths[lo, hi): entries come back in any order. */
static size_t find(const char *p, size_t lo, size_t hi, size_t hint) {
    if (hint < hi && strcmp(paths[hint], p) == 0) return hint;
    for (size_t i = lo; i < hi; i++)
        if (strcmp(paths[i], p) == 0) return i;
    return hi;
}

struct job {
    uint32_t id;
    size_t lo, hi;
    uint64_t bytes;
    int rc;
};

static void *worker_main(void *arg) {
    struct job *j = arg;
    al_worker *w = NULL;
    int rc = al_loader_worker(loader, j->id, &w);
    if (rc < 0) {
        fprintf(stderr, "al_loader_worker(%u): %s\n", j->id, al_strerror(rc));
        j->rc = rc;
        return NULL;
    }
    size_t next = j->lo, done = 0, total = j->hi - j->lo;
    al_entry *es[BATCH];
    while (done < total) {
        /* Keep the queue full: request until EAGAIN. */
        while (next < j->hi) {
            size_t acc = 0;
            rc = al_worker_request_many(w, (const char *const *)&paths[next], j->hi - next, &acc);
            next += acc;
            if (rc == -EAGAIN) break;
            if (rc < 0) { /* this path cannot be requested at all */
                fprintf(stderr, "request %s: %s\n", paths[next], al_strerror(rc));
                errors[next++] = -rc;
                done++;
            }
        }
        if (done == total) break;
        size_t got = 0;
        rc = al_worker_get_many(w, es, BATCH, 30 * 1000000000LL, &got);
        if (rc < 0) {
            fprintf(stderr, "al_worker_get_many: %s\n", al_strerror(rc));
            j->rc = rc;
            break;
        }
        for (size_t k = 0; k < got; k++) {
            size_t i = find(al_entry_path(es[k]), j->lo, j->hi, j->lo + done + k);
            if (i == j->hi) {
                fprintf(stderr, "unexpected entry %s\n", al_entry_path(es[k]));
                j->rc = -EINVAL;
                continue;
            }
            errors[i] = al_entry_error(es[k]);
            hashes[i] = fnv1a(al_entry_data(es[k]), al_entry_size(es[k]));
            j->bytes += al_entry_size(es[k]);
        }
        al_entry_release_many(es, got);
        done += got;
    }
    al_worker_free(w);
    return NULL;
}

/* 0 when the file's bytes hash to `h`. */
static int verify(const char *p, uint64_t h) {
    int fd = open(p, O_RDONLY);
    if (fd < 0) return -1;
    struct stat st;
    fstat(fd, &st);
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *buf = malloc(n ? n : 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    int bad = got != n || fnv1a(buf, n) != h;
    free(buf);
    return bad;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [THREADS] [LOADER_THREADS]\n", argv[0]);
        return 2;
    }
    uint32_t threads = argc > 2 ? (uint32_t)atoi(argv[2]) : 4;
    uint32_t loader_threads = argc > 3 ? (uint32_t)atoi(argv[3]) : 0;
    if (threads == 0) threads = 1;
    if (al_abi_version() != AL_ABI_VERSION) {
        fprintf(stderr, "libasyncloader ABI %u, compiled for %u\n", al_abi_version(), AL_ABI_VERSION);
        return 2;
    }
    if (nftw(argv[1], collect, 64, FTW_PHYS) != 0) {
        perror(argv[1]);
        return 2;
    }
    hashes = calloc(n_paths + 1, sizeof *hashes);
    errors = calloc(n_paths + 1, sizeof *errors);

    al_config cfg = {.struct_size = sizeof cfg}; /* the library reads only what we have */
    al_config_default(&cfg);
    cfg.n_workers = threads;
    cfg.queue_depth = 32;
    cfg.max_file_size = 4u << 20; /* raised below to the largest file */
    cfg.loader_threads = loader_threads;
    for (size_t i = 0; i < n_paths; i++) {
        struct stat st;
        if (stat(paths[i], &st) == 0 && (uint64_t)st.st_size > cfg.max_file_size)
            cfg.max_file_size = (uint64_t)st.st_size;
    }
    int rc = al_loader_new(&cfg, &loader);
    if (rc == 0) rc = al_loader_start(loader);
    if (rc < 0) {
        fprintf(stderr, "loader: %s\n", al_strerror(rc));
        return 1;
    }

    struct job *jobs = calloc(threads, sizeof *jobs);
    pthread_t *ts = calloc(threads, sizeof *ts);
    double t0 = now();
    for (uint32_t t = 0; t < threads; t++) {
        jobs[t] = (struct job){.id = t, .lo = n_paths * t / threads, .hi = n_paths * (t + 1) / threads};
        pthread_create(&ts[t], NULL, worker_main, &jobs[t]);
    }
    uint64_t bytes = 0;
    int failed = 0;
    for (uint32_t t = 0; t < threads; t++) {
        pthread_join(ts[t], NULL);
        bytes += jobs[t].bytes;
        failed |= jobs[t].rc != 0;
    }
    double dt = now() - t0;

    al_stats st = {.struct_size = sizeof st};
    al_loader_stats(loader, &st);
    al_loader_shutdown(loader);
    al_loader_free(loader);

    size_t bad = 0, load_errors = 0;
    for (size_t i = 0; i < n_paths; i++) {
        if (errors[i]) {
            load_errors++;
            fprintf(stderr, "%s: %s\n", paths[i], al_strerror(errors[i]));
        } else if (verify(paths[i], hashes[i])) {
            bad++;
            fprintf(stderr, "%s: bytes differ from a plain read\n", paths[i]);
        }
        free(paths[i]);
    }
    printf("%zu files, %.1f MB in %.3f s: %.0f files/s, %.1f MB/s "
           "(%u threads, backend %s, %llu batches, %llu syscalls)\n",
           n_paths, (double)bytes / 1e6, dt, (double)n_paths / dt, (double)bytes / 1e6 / dt, threads,
           st.backend == AL_BACKEND_IO_URING ? "io_uring" : "threads",
           (unsigned long long)st.batches, (unsigned long long)st.syscalls);
    printf("verified: %zu ok, %zu differ, %zu failed to load\n", n_paths - bad - load_errors, bad,
           load_errors);
    free(paths);
    free(hashes);
    free(errors);
    free(jobs);
    free(ts);
    return failed || bad || load_errors ? 1 : 0;
}
