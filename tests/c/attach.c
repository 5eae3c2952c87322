/* A worker in an unrelated process: attach to a loader by name.
 *
 *   attach serve            create a loader (2 workers), start it, print its
 *                           name on stdout, wait for stdin to close, check
 *                           the stats, shut down
 *   attach work NAME FILE.. attach to NAME, load each FILE as worker 1 and
 *                           compare it with a plain read
 *
 * tests/c_abi.rs runs "serve", then "work" as a separate process (not a
 * fork child), so the only link between them is the name. */
#define _GNU_SOURCE
#include <asyncloader.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(const char *what, int rc) {
    fprintf(stderr, "%s: %s\n", what, al_strerror(rc));
    return 1;
}

static int serve(void) {
    al_config c = {.struct_size = sizeof c};
    al_config_default(&c);
    c.n_workers = 2;
    c.queue_depth = 8;
    c.max_file_size = 1 << 20;
    c.loader_threads = 1;
    al_loader *l = NULL;
    int rc = al_loader_new(&c, &l);
    if (rc < 0) return fail("al_loader_new", rc);
    if ((rc = al_loader_start(l)) < 0) return fail("al_loader_start", rc);
    printf("%s\n", al_loader_name(l));
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    al_stats s = {.struct_size = sizeof s};
    al_loader_stats(l, &s);
    al_loader_shutdown(l);
    al_loader_free(l);
    printf("served %llu requests\n", (unsigned long long)s.requests);
    return s.requests > 0 && s.completions == s.requests ? 0 : 1;
}

static int same_as_file(const al_entry *e, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    struct stat st;
    fstat(fd, &st);
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    int ok = read(fd, buf, n) == (ssize_t)n && al_entry_error(e) == 0 && al_entry_size(e) == n &&
             memcmp(buf, al_entry_data(e), n) == 0;
    free(buf);
    close(fd);
    return ok;
}

static int work(const char *name, int n, char **files) {
    al_loader *l = NULL;
    int rc = al_loader_attach(name, &l);
    if (rc < 0) return fail("al_loader_attach", rc);
    al_config c = {.struct_size = sizeof c};
    if ((rc = al_loader_config(l, &c)) < 0) return fail("al_loader_config", rc);
    if (c.n_workers != 2 || c.queue_depth != 8) {
        fprintf(stderr, "attached config: %u workers, depth %u\n", c.n_workers, c.queue_depth);
        return 1;
    }
    al_worker *w = NULL;
    if ((rc = al_loader_worker(l, 1, &w)) < 0) return fail("al_loader_worker", rc);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        if ((rc = al_worker_request(w, files[i])) < 0) return fail("al_worker_request", rc);
        al_entry *e = NULL;
        if ((rc = al_worker_wait_get(w, 10000000000LL, &e)) < 0) return fail("al_worker_wait_get", rc);
        if (!same_as_file(e, files[i]) || strcmp(al_entry_path(e), files[i]) != 0) {
            fprintf(stderr, "%s: wrong bytes (error %d)\n", files[i], al_entry_error(e));
            bad++;
        }
        al_entry_release(e);
    }
    al_worker_free(w);
    al_loader_free(l); /* an attached handle only unmaps */
    printf("attached worker loaded %d files, %d bad\n", n, bad);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
    if (argc >= 3 && strcmp(argv[1], "work") == 0) return work(argv[2], argc - 3, argv + 3);
    fprintf(stderr, "usage: %s serve | work NAME FILE...\n", argv[0]);
    return 2;
}
