"""Serve files to concurrent asyncio clients through the loader, and the same
with asyncio.to_thread(open(p, 'rb').read), in the same run.

    python examples/python/asyncio_serve.py [DIR] [--files N] [--clients C]

Each of C client coroutines asks for files one at a time (a tiny in-process
"server": request -> bytes), like handlers of an aiohttp app would. Prints
files/s and the p50/p99 latency of one request for both ways, and checks
every byte against the file (the first way's bytes against the second's).
Without DIR it writes N files of 1..64 KiB into a temporary directory.
"""

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import asyncloader  # noqa: E402


class LoaderServer:
    """get(path) -> bytes, through one worker shared by every coroutine."""

    def __init__(self, worker, window):
        self.w = worker
        self.slots = asyncio.Semaphore(window)
        self.waiting = {}  # path -> list of futures
        self.pump = None

    async def get(self, path):
        async with self.slots:
            fut = asyncio.get_running_loop().create_future()
            self.waiting.setdefault(path, []).append(fut)
            while not self.w.request(path):
                await asyncio.sleep(0)
            if self.pump is None:
                self.pump = asyncio.create_task(self._pump())
            return await fut

    async def _pump(self):
        """Hands each completed entry to the coroutine that asked for it."""
        while True:
            e = await self.w.get()
            with e:
                path, data = e.path, (e.get_data() if e.ok else None)
            self.waiting[path].pop(0).set_result(data)

    def close(self):
        if self.pump is not None:
            self.pump.cancel()


async def clients(get, paths, n_clients):
    lat = []
    out = {}
    it = iter(paths)

    async def client():
        for p in it:
            t0 = time.perf_counter()
            data = await get(p)
            lat.append(time.perf_counter() - t0)
            out[p] = data

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(n_clients)))
    return time.perf_counter() - t0, lat, out


def report(name, wall, lat, n):
    lat = sorted(lat)
    p50 = statistics.median(lat) * 1e6
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
    print(f"{name:<28} {n / wall:10.0f} files/s   p50 {p50:8.0f} us   p99 {p99:8.0f} us")


async def main_async(paths, n_clients):
    with asyncloader.Loader(queue_depth=64, max_file_size=1 << 20, n_workers=1) as ld:
        ld.start()
        srv = LoaderServer(ld.get_worker_context(0), 64)
        await clients(srv.get, paths[:200], n_clients)  # warm-up
        wall, lat, got = await clients(srv.get, paths, n_clients)
        report("asyncloader (await get)", wall, lat, len(paths))
        srv.close()

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    async def thread_get(p):
        return await asyncio.to_thread(read, p)

    await clients(thread_get, paths[:200], n_clients)
    wall2, lat2, got2 = await clients(thread_get, paths, n_clients)
    report("asyncio.to_thread(read)", wall2, lat2, len(paths))
    bad = [p for p in paths if got[p] != got2[p]]
    if bad:
        sys.exit(f"{len(bad)} files differ, first {bad[0]}")
    digest = hashlib.sha256(b"".join(got[p] for p in paths)).hexdigest()[:16]
    print(f"checked {len(paths)} files, every byte equal (sha256 {digest})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=64)
    a = ap.parse_args()
    tmp = None
    if a.dir:
        paths = sorted(
            os.path.join(r, f) for r, _, fs in os.walk(a.dir) for f in fs
        )[: a.files]
    else:
        tmp = tempfile.TemporaryDirectory()
        paths = []
        for i in range(a.files):
            p = os.path.join(tmp.name, f"f{i:06d}.bin")
            with open(p, "wb") as f:
                f.write(os.urandom(1024 + (i * 7919) % (63 * 1024)))
            paths.append(p)
    try:
        asyncio.run(main_async(paths, a.clients))
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
