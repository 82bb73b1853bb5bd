"""`@serve.batch` (Ray Serve's): concurrent calls of a method are gathered into one call with a list.

The decorated method is async and takes a list (one item per caller) and returns a list of the same
length, or is an async generator yielding such lists (each caller gets its item of every list: a streamed
batch). Batches form on the replica's event loop: a batch runs when max_batch_size calls wait, or
batch_wait_timeout_s after its first call arrived. An exception fails every call of its batch. The
replica's max_ongoing_requests bounds how many calls can wait at once, so set it at least max_batch_size.
"""

import asyncio
import functools
import inspect
from typing import Any, Callable, List, Optional

_END = object()


class _Queue:
    def __init__(self, func, max_batch_size: int, batch_wait_timeout_s: float, batch_size_fn, is_gen: bool):
        self.func = func
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.batch_size_fn = batch_size_fn
        self.is_gen = is_gen
        self.items: List[Any] = []
        self.arrived: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None

    def _size(self, items) -> int:
        return self.batch_size_fn(items) if self.batch_size_fn else len(items)

    def put(self, self_arg, item, future_or_queue):
        if self.arrived is None:
            self.arrived = asyncio.Event()
        self.items.append((self_arg, item, future_or_queue))
        self.arrived.set()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _take(self):
        while not self.items:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = asyncio.get_running_loop().time() + self.batch_wait_timeout_s
        while self._size([i for _, i, _ in self.items]) < self.max_batch_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch = []
        while self.items and len(batch) < self.max_batch_size:
            candidate = batch + [self.items[0]]
            if batch and self._size([i for _, i, _ in candidate]) > self.max_batch_size:
                break
            batch.append(self.items.pop(0))
        return batch

    async def _run(self):
        while self.items:
            batch = await self._take()
            live = [b for b in batch if not (self.is_gen is False and b[2].done())]
            if not live:
                continue
            self_arg = live[0][0]
            args = [i for _, i, _ in live]
            try:
                if self.is_gen:
                    async for outputs in self._call(self_arg, args):
                        self._check(outputs, live)
                        for (_, _, q), out in zip(live, outputs):
                            q.put_nowait(out)
                    for _, _, q in live:
                        q.put_nowait(_END)
                else:
                    outputs = await self._call(self_arg, args)
                    self._check(outputs, live)
                    for (_, _, fut), out in zip(live, outputs):
                        if not fut.done():
                            if isinstance(out, BaseException):
                                fut.set_exception(out)
                            else:
                                fut.set_result(out)
            except Exception as e:
                for _, _, target in live:
                    if self.is_gen:
                        target.put_nowait(e)
                    elif not target.done():
                        target.set_exception(e)

    def _call(self, self_arg, args):
        return self.func(self_arg, args) if self_arg is not None else self.func(args)

    @staticmethod
    def _check(outputs, live):
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(live):
            raise TypeError(
                f"a @serve.batch method must return a list as long as its input ({len(live)}), got "
                f"{type(outputs).__name__}{'' if not isinstance(outputs, (list, tuple)) else f' of {len(outputs)}'}")


class _Batched:
    """The decorated method: a descriptor, so each instance gets its own queue and setters."""

    def __init__(self, func, max_batch_size, batch_wait_timeout_s, batch_size_fn):
        self.func = func
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.batch_size_fn = batch_size_fn
        self.is_gen = inspect.isasyncgenfunction(func)
        self.queues = {}
        functools.update_wrapper(self, func)

    def _queue(self, owner) -> _Queue:
        key = id(owner)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue(self.func, self.max_batch_size, self.batch_wait_timeout_s,
                                          self.batch_size_fn, self.is_gen)
        return q

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return _Bound(self, instance)

    def __call__(self, *args):  # a batched free function
        return _Bound(self, None)(*args)


class _Bound:
    def __init__(self, batched: _Batched, instance):
        self._b = batched
        self._instance = instance

    def __call__(self, item):
        if self._b.is_gen:
            return self._stream(item)
        return self._one(item)

    async def _one(self, item):
        fut = asyncio.get_running_loop().create_future()
        self._b._queue(self._instance).put(self._instance, item, fut)
        return await fut

    async def _stream(self, item):
        q: asyncio.Queue = asyncio.Queue()
        self._b._queue(self._instance).put(self._instance, item, q)
        while True:
            out = await q.get()
            if out is _END:
                return
            if isinstance(out, BaseException):
                raise out
            yield out

    def set_max_batch_size(self, new_max_batch_size: int) -> None:
        if new_max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._b.max_batch_size = new_max_batch_size
        self._b._queue(self._instance).max_batch_size = new_max_batch_size

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None:
        if new_batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must be at least 0")
        self._b.batch_wait_timeout_s = new_batch_wait_timeout_s
        self._b._queue(self._instance).batch_wait_timeout_s = new_batch_wait_timeout_s

    def _get_max_batch_size(self) -> int:
        return self._b._queue(self._instance).max_batch_size

    def _get_batch_wait_timeout_s(self) -> float:
        return self._b._queue(self._instance).batch_wait_timeout_s


def batch(_func: Optional[Callable] = None, max_batch_size: int = 10, batch_wait_timeout_s: float = 0.01, *,
          batch_size_fn: Optional[Callable[[List], int]] = None, max_concurrent_batches: int = 1):
    """Ray Serve's @serve.batch (defaults: max_batch_size 10, batch_wait_timeout_s 0.01)."""
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError("max_batch_size must be an integer >= 1")
    if batch_wait_timeout_s < 0:
        raise ValueError("batch_wait_timeout_s must be >= 0")

    def decorate(func):
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            raise TypeError("functions decorated with @serve.batch must be 'async def'")
        return _Batched(func, max_batch_size, batch_wait_timeout_s, batch_size_fn)

    if _func is not None and callable(_func):
        return decorate(_func)
    return decorate
