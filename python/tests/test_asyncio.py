"""asyncio: await worker.get(), async for in worker.aload(), the eventfd."""

import asyncio
import errno
import os
import signal
import time

import pytest

import asyncloader


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_fileno_is_stable_and_signals(loader, files):
    w = loader.get_worker_context(0)
    fd = w.fileno()
    assert w.fileno() == fd
    path = sorted(files)[0]
    assert w.request(path)
    import select

    r, _, _ = select.select([fd], [], [], 10)
    assert r == [fd]
    os.read(fd, 8)
    e = w.try_get()
    assert e is not None and e.get_data() == files[path]
    e.release()


def test_many_coroutines_share_a_worker_and_several_workers_one_loop(loader, files):
    paths = sorted(files)

    async def consumer(w, out):
        while True:
            e = await w.get()
            if e.path == "STOP":  # never: stops by cancellation
                return
            out.append((e.path, e.get_data()))
            e.release()

    async def main():
        ws = [loader.get_worker_context(i) for i in range(2)]
        got = []
        tasks = [asyncio.create_task(consumer(ws[i % 2], got)) for i in range(8)]
        sent = 0
        while len(got) < len(paths):
            while sent < len(paths) and ws[sent % 2].request(paths[sent]):
                sent += 1
            await asyncio.sleep(0.001)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return got

    got = run(main())
    assert len(got) == len(paths)
    assert {p: d for p, d in got} == {p: files[p] for p in paths}


def test_aload_yields_every_file(loader, files):
    w = loader.get_worker_context(1)

    async def main():
        out = {}
        async for e in w.aload(sorted(files), window=64):
            out[e.path] = e.get_data()
        return out

    assert run(main()) == files
    assert w.outstanding == 0


def test_aload_left_early_gives_the_slots_back(loader, files):
    w = loader.get_worker_context(1)

    async def main():
        gen = w.aload(sorted(files), window=8)
        async for e in gen:
            break
        await gen.aclose()

    run(main())
    assert w.outstanding == 0


def test_cancelled_get_loses_no_entry(loader, files):
    w = loader.get_worker_context(2)
    path = sorted(files)[3]

    async def main():
        t = asyncio.create_task(w.get())
        await asyncio.sleep(0.05)  # pending: nothing requested
        assert w.request(path)
        # Wait until the completion is ready, then cancel before the task runs.
        deadline = time.monotonic() + 10
        import select

        while not select.select([w.fileno()], [], [], 0)[0]:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        e = await w.get()
        assert e.path == path and e.get_data() == files[path]
        e.release()

    run(main())


def test_shutdown_while_awaiting_raises(files):
    with asyncloader.Loader(queue_depth=4, n_workers=1) as ld:
        ld.start()
        w = ld.get_worker_context(0)

        async def main():
            t = asyncio.create_task(w.get())
            await asyncio.sleep(0.1)
            ld.shutdown()
            with pytest.raises(OSError) as ei:
                await t
            assert ei.value.errno == errno.ESHUTDOWN

        run(main(), timeout=10)


def test_loader_death_while_awaiting_raises(files):
    with asyncloader.Loader(queue_depth=4, n_workers=1) as ld:
        ld.spawn_loader()
        w = ld.get_worker_context(0)
        pid = ld.stats()["loader_pid"]

        async def main():
            t = asyncio.create_task(w.get())
            await asyncio.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(OSError) as ei:
                await t
            assert ei.value.errno == errno.EOWNERDEAD

        run(main(), timeout=10)


def test_asyncio_serve_example_checks_every_byte():
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    ex = os.path.join(here, "..", "..", "examples", "python", "asyncio_serve.py")
    out = subprocess.run(
        [sys.executable, ex, "--files", "300", "--clients", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "every byte equal" in out.stdout
