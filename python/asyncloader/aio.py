"""asyncio on top of a worker's completion eventfd (``Worker.fileno()``).

``await worker.get()`` returns the next completed entry without blocking the
event loop; ``async for e in worker.aload(paths, window=64)`` loads a stream
of paths. Both wait with ``loop.add_reader`` on the worker's eventfd: one
reader per worker and loop, shared by every coroutine awaiting that worker,
installed only while one waits. Entries are only ever taken by the awaiting
coroutine itself (``try_get`` after a wake-up), so cancelling a ``get()``
loses nothing: a ready entry stays for the next call. Once the loader is
shut down or dies, waiting coroutines wake up and raise ``OSError``
(``ESHUTDOWN`` / ``EOWNERDEAD``) after the entries left were delivered.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Iterable, Set

__all__ = ["get", "aload"]


class _Waiters:
    """The coroutines of one loop waiting on one worker's eventfd."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.futs: Set[asyncio.Future] = set()
        self.reading = False

    def _readable(self) -> None:
        try:
            os.read(self.fd, 8)
        except (BlockingIOError, InterruptedError):
            pass
        futs, self.futs = self.futs, set()
        self._stop()
        for f in futs:
            if not f.done():
                f.set_result(None)

    def _stop(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)

    async def wait(self) -> None:
        fut = self.loop.create_future()
        self.futs.add(fut)
        if not self.reading:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True
        try:
            await fut
        finally:
            self.futs.discard(fut)
            if not self.futs:
                self._stop()


def _waiters(worker: Any) -> _Waiters:
    loop = asyncio.get_running_loop()
    w = getattr(worker, "_aio_waiters", None)
    if w is None or w.loop is not loop:
        w = _Waiters(loop, worker.fileno())
        worker._aio_waiters = w
    return w


async def get(worker: Any) -> Any:
    """Awaits the next completed entry of ``worker`` (see the module docs)."""
    w = _waiters(worker)
    while True:
        e = worker.try_get()  # raises once nothing can come
        if e is not None:
            return e
        await w.wait()


async def aload(worker: Any, paths: Iterable[Any], window: int = 64) -> AsyncIterator[Any]:
    """Requests every path, keeping up to ``window`` (capped at the worker's
    queue depth) in flight, and yields entries in completion order. Each
    entry is released when the generator resumes: copy what you keep.
    Failed loads are yielded too (check ``entry.error``). Leaving early
    waits (blocking, at most 5 s per batch) for the requests still in flight
    and releases them."""
    window = max(1, min(int(window), worker._qd))
    it = iter(paths)
    pending: Any = None
    have_pending = False
    exhausted = False
    outstanding = 0
    try:
        while True:
            while not exhausted and outstanding < window:
                if not have_pending:
                    try:
                        pending = next(it)
                        have_pending = True
                    except StopIteration:
                        exhausted = True
                        break
                if not worker.request(pending):
                    break
                have_pending = False
                outstanding += 1
            if outstanding == 0:
                if exhausted:
                    return
                raise RuntimeError(
                    f"worker {worker.id}: queue full with no request of this "
                    "aload() in flight: release the entries you hold"
                )
            e = await get(worker)
            outstanding -= 1
            try:
                yield e
            finally:
                e.release()
    finally:
        worker._drain_in_flight(outstanding)
