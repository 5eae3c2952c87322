/* Loads every regular file of a directory through two workers driven by one
 * epoll loop (each worker's completion eventfd, al_worker_eventfd), delivers
 * entries with al_worker_dispatch, and compares every byte with the file.
 *
 *   cc -O2 epoll_dir.c $(pkg-config --cflags --libs asyncloader) -o epoll_dir
 *   ./epoll_dir DIR
 *
 * Prints "verified: N ok, M differ, K failed to load" and exits 0 when every
 * file loaded and matched. */
#include <asyncloader.h>

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#define NWORKERS 2

struct state {
    char **paths;
    size_t n;
    size_t next;          /* next path to request (shared by both workers) */
    size_t done, ok, differ, failed;
};

static int same_as_file(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int same = 1;
    uint8_t buf[65536];
    size_t off = 0, r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) {
        if (off + r > size || memcmp(buf, data + off, r) != 0) { same = 0; break; }
        off += r;
    }
    fclose(f);
    return same && off == size;
}

/* Called by al_worker_dispatch on the loop's thread, one entry at a time. */
static void on_entry(al_entry *e, void *ctx) {
    struct state *s = ctx;
    al_entry_info info = {.struct_size = sizeof info};
    if (al_entry_get_info(e, &info) == 0) {
        if (info.error != 0) s->failed++;
        else if (same_as_file(info.path, info.data, info.size)) s->ok++;
        else s->differ++;
    }
    s->done++;
    al_entry_release(e);
}

/* Requests paths until the worker's queue is full or none is left. */
static int refill(al_worker *w, struct state *s) {
    while (s->next < s->n) {
        int rc = al_worker_request(w, s->paths[s->next]);
        if (rc == -EAGAIN) return 0;
        if (rc != 0) {
            fprintf(stderr, "request %s: %s\n", s->paths[s->next], al_strerror(rc));
            return rc;
        }
        s->next++;
    }
    return 0;
}

static int list_dir(const char *dir, struct state *s) {
    DIR *d = opendir(dir);
    if (!d) { perror(dir); return -1; }
    struct dirent *de;
    size_t cap = 0;
    while ((de = readdir(d)) != NULL) {
        char *p = malloc(strlen(dir) + strlen(de->d_name) + 2);
        sprintf(p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) { free(p); continue; }
        if (s->n == cap) {
            cap = cap ? 2 * cap : 256;
            s->paths = realloc(s->paths, cap * sizeof *s->paths);
        }
        s->paths[s->n++] = p;
    }
    closedir(d);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    struct state s = {0};
    if (list_dir(argv[1], &s) != 0) return 1;

    al_config c = {.struct_size = sizeof c};
    al_config_default(&c);
    c.n_workers = NWORKERS;
    c.queue_depth = 32;
    c.max_file_size = 16 << 20;
    al_loader *l = NULL;
    int rc = al_loader_new(&c, &l);
    if (rc == 0) rc = al_loader_start(l);
    if (rc != 0) { fprintf(stderr, "loader: %s\n", al_strerror(rc)); return 1; }

    int ep = epoll_create1(EPOLL_CLOEXEC);
    al_worker *w[NWORKERS];
    for (int k = 0; k < NWORKERS; k++) {
        int fd = -1;
        if (al_loader_worker(l, (uint32_t)k, &w[k]) != 0 || al_worker_eventfd(w[k], &fd) != 0) {
            fprintf(stderr, "worker %d: setup failed\n", k);
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (refill(w[k], &s) != 0) return 1;
    }

    while (s.done < s.n) {
        struct epoll_event evs[NWORKERS];
        int n = epoll_wait(ep, evs, NWORKERS, 10000);
        if (n == 0) { fprintf(stderr, "no completion in 10 s\n"); return 1; }
        for (int i = 0; i < n; i++) {
            int k = (int)evs[i].data.u32, fd;
            uint64_t count;
            al_worker_eventfd(w[k], &fd);
            /* The contract: read the eventfd, then take entries until none
             * is ready (dispatch returns 0), then request more. */
            if (read(fd, &count, sizeof count) < 0 && errno != EAGAIN) perror("read");
            int got;
            while ((got = al_worker_dispatch(w[k], 64, on_entry, &s)) > 0)
                if (refill(w[k], &s) != 0) return 1;
            if (got < 0) { fprintf(stderr, "dispatch: %s\n", al_strerror(got)); return 1; }
        }
    }

    printf("verified: %zu ok, %zu differ, %zu failed to load\n", s.ok, s.differ, s.failed);
    for (int k = 0; k < NWORKERS; k++) al_worker_free(w[k]);
    close(ep);
    al_loader_shutdown(l);
    al_loader_free(l);
    for (size_t i = 0; i < s.n; i++) free(s.paths[i]);
    free(s.paths);
    return s.ok == s.n ? 0 : 1;
}
