"""Admission of decoding work by pixel budget, so one client's big images cannot starve the others.

Every image the service accepts has a pixel count read from its header before decoding (imaging decodes
nothing else). Images up to ``SMALL_PIXELS`` decode on the regular pool at once. Bigger ones wait for room in a
:class:`PixelBudget` (at most ``capacity`` pixels decoding at a time: a memory ceiling) and decode on a pool
of their own, so they never hold the threads small images use. A request that timed out (504) or whose
client went away has its waiting images dropped before they start; the budget is given back only when a
decode has really finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# Images up to this many pixels (1 MP, e.g. 1000x1000) skip the budget: cheap, the common case.
SMALL_PIXELS = 1_000_000


class PixelBudget:
    """An async counting semaphore in pixels. A waiter is admitted as soon as its pixels fit, in arrival
    order among those that fit; a request for more than the capacity waits for the whole budget."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"the pixel budget must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.used = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _cost(self, pixels: int) -> int:
        return max(1, min(int(pixels), self.capacity))

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, pixels: int) -> int:
        """Wait until ``pixels`` fit; returns the amount to give back with :meth:`release`."""
        n = self._cost(pixels)
        if not self._waiters and self.used + n <= self.capacity:
            self.used += n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = (n, fut)
        self._waiters.append(item)
        try:
            await fut
        except asyncio.CancelledError:
            if item in self._waiters:
                self._waiters.remove(item)
            if fut.done() and not fut.cancelled():  # admitted just as it was cancelled: give it back
                self.release(n)
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        for item in list(self._waiters):
            need, fut = item
            if fut.done():
                self._waiters.remove(item)
            elif self.used + need <= self.capacity:
                self.used += need
                self._waiters.remove(item)
                fut.set_result(None)


async def run_admitted(
    budget: PixelBudget,
    pool: ThreadPoolExecutor,
    pixels: int,
    gone: Callable[[], Awaitable[bool]] | None,
    fn: Callable[..., T],
    *args: Any,
) -> T:
    """Run ``fn(*args)`` on ``pool`` once ``pixels`` fit in ``budget``; the budget is released when the call
    has finished (or was dropped unstarted), not when the awaiting request gives up.

    Raises :class:`ClientGone` instead of starting when ``gone()`` says the client has left.
    """
    loop = asyncio.get_running_loop()
    n = await budget.acquire(pixels)
    try:
        if gone is not None and await gone():
            raise ClientGone()
        cf = pool.submit(fn, *args)
    except BaseException:
        budget.release(n)
        raise

    def give_back(_: Any) -> None:
        try:
            loop.call_soon_threadsafe(budget.release, n)
        except RuntimeError:  # the loop has closed (shutdown): nothing is waiting any more
            pass

    cf.add_done_callback(give_back)
    return await asyncio.wrap_future(cf, loop=loop)


class ClientGone(Exception):
    """The client disconnected before its work started."""
