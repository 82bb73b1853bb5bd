"""Deployment handles (ray.serve.handle): calls from one deployment to another, through Ferry's handle path.

A call to a Python deployment carries its arguments pickled (protocol 5) and comes back pickled, so any
picklable value crosses, and an exception raised by the callee is raised again in the caller with the
callee's traceback attached. A call to a C++ deployment (a plugin, a model runtime, a built-in) is an HTTP
request: `.remote(body)` sends bytes as they are, a str as text and any other value as JSON, and the
answer comes back decoded by its content type (JSON, text, or bytes).
"""

import asyncio
import collections
import concurrent.futures
import itertools
import json
import pickle
import struct
import threading
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional

from . import context as _context
from . import exceptions as _exc

try:
    import _ferry  # the replica's native module (only inside a replica process)
except ImportError:  # a driver script or a build: handles are made but called only in replicas
    _ferry = None

PICKLE = "pickle"
PICKLE_STREAM = "pickle-stream"

# --- The asyncio side: a call's events reach the replica's loop through one eventfd -------------------------
_waiters: Dict[int, Any] = {}
_next_token = itertools.count(1)
_waiters_lock = threading.Lock()


def _install_reader(loop: asyncio.AbstractEventLoop) -> None:
    """On the replica's loop (its thread): wakes the awaiting tasks whose calls changed."""

    def drain():
        for token in _ferry.take_ready():
            with _waiters_lock:
                fut = _waiters.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    loop.add_reader(_ferry.ready_fd(), drain)


async def _next_event(call) -> None:
    """Waits (on the loop) until `call` has news: a chunk or its end."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    token = next(_next_token)
    with _waiters_lock:
        _waiters[token] = fut
    call.notify(token)
    try:
        await fut
    finally:
        with _waiters_lock:
            _waiters.pop(token, None)
        call.notify(0)


_chain_pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="ferry-chain")


async def _own_request_cancelled(result) -> None:
    """A call that ended 499 because the request being handled was cancelled (its calls go with it): the
    handler's task is cancelled, as in Ray — asyncio.CancelledError here rather than RequestCancelledError.
    A call cancelled on its own (response.cancel()) is left to raise RequestCancelledError."""
    if result is None or result[0] != 499 or result[3]:
        return
    cancelled = getattr(_context._request_context.get().token, "cancelled", None)
    if cancelled is None or not cancelled():
        return
    task = asyncio.current_task()
    if task is not None and not task.cancelling():
        task.cancel()
    await asyncio.sleep(0)


@dataclass(frozen=True)
class _HandleOptions:
    method_name: str = "__call__"
    stream: bool = False
    multiplexed_model_id: str = ""
    timeout_s: float = 0.0


class DeploymentHandle:
    """A handle to a deployment (Ray's). `handle.remote(...)`, `handle.method.remote(...)`,
    `handle.options(method_name=, stream=, multiplexed_model_id=)`. Picklable: it may be passed along."""

    def __init__(self, deployment_name: str, app_name: str = "", *, _options: Optional[_HandleOptions] = None,
                 _python: bool = True):
        self.deployment_name = deployment_name
        self.app_name = app_name
        self._opts = _options or _HandleOptions()
        self._python = _python
        self._native = None

    @property
    def deployment_id(self):
        return f"{self.app_name}/{self.deployment_name}"

    def options(self, *, method_name: Optional[str] = None, stream: Optional[bool] = None,
                multiplexed_model_id: Optional[str] = None, use_new_handle_api: Optional[bool] = None,
                **_ignored) -> "DeploymentHandle":
        changes = {}
        if method_name is not None:
            changes["method_name"] = method_name
        if stream is not None:
            changes["stream"] = bool(stream)
        if multiplexed_model_id is not None:
            changes["multiplexed_model_id"] = str(multiplexed_model_id)
        h = DeploymentHandle(self.deployment_name, self.app_name, _options=replace(self._opts, **changes),
                             _python=self._python)
        h._native = self._native
        return h

    def __getattr__(self, name: str):
        if name.startswith("__") or name.startswith("_"):
            raise AttributeError(name)
        return self.options(method_name=name)

    def __reduce__(self):
        return (_rebuild_handle, (self.deployment_name, self.app_name, self._opts, self._python))

    def __repr__(self):
        return f"DeploymentHandle(deployment={self.deployment_name!r}, app={self.app_name!r})"

    def _handle(self):
        if self._native is None:
            app = self.app_name or _context.get_replica_context().app_name
            self._native = _ferry.get_handle(app, self.deployment_name)
        return self._native

    def remote(self, *args, **kwargs):
        """Starts the call; returns a DeploymentResponse (or, with stream=True, a
        DeploymentResponseGenerator). DeploymentResponses among the arguments are resolved first, without
        the caller waiting."""
        pending = [a for a in itertools.chain(args, kwargs.values()) if isinstance(a, DeploymentResponse)]
        opts = self._opts
        ctx = _context._request_context.get()
        model_id = opts.multiplexed_model_id

        def start():
            a = tuple(x._resolve() if isinstance(x, DeploymentResponse) else x for x in args)
            k = {n: (x._resolve() if isinstance(x, DeploymentResponse) else x) for n, x in kwargs.items()}
            return self._start(opts, ctx, model_id, a, k)

        if pending:
            future = _chain_pool.submit(start)
        else:
            future = None
            call = start()
        cls = DeploymentResponseGenerator if opts.stream else DeploymentResponse
        r = cls(self, future)
        if future is None:
            r._call = call
        return r

    def _start(self, opts: _HandleOptions, ctx, model_id: str, args: tuple, kwargs: dict):
        headers = []
        if model_id:
            headers.append(("serve_multiplexed_model_id", model_id))
        if self._python:
            headers.append(("x-ferry-args", PICKLE))
            headers.append(("content-type", "application/x-ferry-pickle"))
            if opts.stream:
                headers.append(("x-ferry-stream", "1"))
            body = pickle.dumps((args, kwargs), protocol=5)
        else:
            body, content_type = _http_body(args, kwargs)
            headers.append(("content-type", content_type))
        method = "" if opts.method_name == "__call__" else opts.method_name
        if _ferry is None:  # a driver script: through the node's admin API
            return _DriverCall(self.app_name or "default", self.deployment_name, method, headers, body)
        return _ferry.start_call(self._handle(), method, "POST", "/", "", headers, body, opts.timeout_s, ctx.token)


class _DriverCall:
    """A call from a driver script (no replica around it): POST /api/ferry/call/{app}/{deployment} on the
    node's admin API, run on a pool thread. Offers what a native call does; a stream (x-ferry-stream)
    arrives chunk by chunk as the callee yields, and one cut short raises as a broken stream."""

    def __init__(self, app: str, deployment: str, method: str, headers, body: bytes):
        from .api import _address, _admin_headers

        url = f"{_address()}/api/ferry/call/{app}/{deployment}"
        hdrs = dict(headers)
        hdrs.update(_admin_headers())
        if method:
            hdrs["x-ferry-method"] = method
        self._stream = "x-ferry-stream" in hdrs
        self._cv = threading.Condition()
        self._head = None       # (status, headers) once they arrived
        self._chunks = collections.deque()
        self._result = None     # (status, headers, body, ok, error) once the call ended
        self._taken = False
        self.future = _chain_pool.submit(self._run, url, hdrs, body)

    def _run(self, url, headers, body):
        import http.client
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                status, hdrs = r.status, [(k.lower(), v) for k, v in r.getheaders()]
                ok = _header(hdrs, "x-ferry-call-ok") == "1"
                if self._stream and _header(hdrs, "transfer-encoding") == "chunked":
                    with self._cv:
                        self._head = (status, hdrs)
                        self._cv.notify_all()
                    try:
                        while True:
                            data = r.read1(1 << 16)
                            if not data:
                                break
                            with self._cv:
                                self._chunks.append(data)
                                self._cv.notify_all()
                    except (http.client.HTTPException, OSError) as e:
                        self._end((status, hdrs, b"", False, f"the stream was cut short ({e})"))
                        return
                    self._end((status, hdrs, b"", ok, _header(hdrs, "x-ferry-call-error")))
                    return
                data = r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, data = e.code, [(k.lower(), v) for k, v in e.headers.items()], e.read()
        except OSError as e:
            self._end((502, [], b"", False, f"cannot reach the Ferry node: {e}"))
            return
        ok = _header(hdrs, "x-ferry-call-ok") == "1"
        self._end((status, hdrs, data, ok, _header(hdrs, "x-ferry-call-error")))

    def _end(self, result) -> None:
        with self._cv:
            self._result = result
            if self._head is None:
                self._head = (result[0], result[1])
                if result[2]:
                    self._chunks.append(result[2])
            self._cv.notify_all()

    def wait(self, timeout_s: float, for_chunk: bool) -> bool:
        """Until the call ended (or, `for_chunk`, a chunk is there); False when `timeout_s` (>= 0) passed."""
        with self._cv:
            return self._cv.wait_for(lambda: self._result is not None or (for_chunk and self._chunks),
                                     timeout=None if timeout_s < 0 else timeout_s)

    def done(self) -> bool:
        return self._result is not None

    def result(self):
        return self._result

    def head(self):
        with self._cv:
            return None if self._head is None else (self._head[0], self._head[1], self._stream)

    def next_chunk(self):
        with self._cv:
            if self._chunks:
                return self._chunks.popleft()
            return () if self._result is not None else None

    def notify(self, token: int) -> None:
        pass

    def cancel(self) -> None:
        self.future.cancel()


def _rebuild_handle(deployment_name, app_name, opts, python):
    return DeploymentHandle(deployment_name, app_name, _options=opts, _python=python)


def _http_body(args, kwargs):
    if kwargs or len(args) > 1:
        raise TypeError("a call to a C++ deployment takes one argument: its request body")
    value = args[0] if args else b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), "application/octet-stream"
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    return json.dumps(value).encode(), "application/json"


def _header(headers, name: str) -> str:
    for k, v in headers:
        if k == name:
            return v
    return ""


def _raise_for(handle: DeploymentHandle, status: int, headers, body: bytes, ok: bool, error: str):
    """Raises what a failed call means to the caller."""
    if _header(headers, "x-ferry-error") == PICKLE:
        info = pickle.loads(body)
        exc = None
        if info.get("exception") is not None:
            try:
                exc = pickle.loads(info["exception"])
            except Exception:
                exc = None
        if isinstance(exc, BaseException):
            exc.add_note(f"Raised by deployment {handle.deployment_id}; its traceback:\n{info['traceback']}")
            raise exc
        raise _exc.RayServeCallError(info["type"], info["message"], info["traceback"])
    message = error or body.decode("utf-8", "replace")
    if status == 503:
        raise _exc.BackPressureError(message=message)
    if status == 499:
        raise _exc.RequestCancelledError(message=message)
    if status == 504:
        raise _exc.DeploymentTimeoutError(message)
    if status in (404, 502):
        raise _exc.DeploymentUnavailableError(handle.deployment_id, message)
    raise _exc.RayServeException(f"deployment {handle.deployment_id} answered {status}: {message}")


def _decode(handle: DeploymentHandle, status: int, headers, body: bytes, ok: bool, error: str):
    if ok and status < 400 and _header(headers, "x-ferry-result") == PICKLE:
        return pickle.loads(body)
    if not ok or status >= 400:
        _raise_for(handle, status, headers, body, ok, error)
    content_type = _header(headers, "content-type")
    if content_type.startswith("application/json"):
        return json.loads(body) if body else None
    if content_type.startswith("text/"):
        return body.decode("utf-8", "replace")
    return body


class _Base:
    def __init__(self, handle: DeploymentHandle, start_future):
        self._handle_ = handle
        self._start_future = start_future
        self._call = None
        self._cancelled = False

    def _native_call(self, timeout_s=None):
        if self._call is None:
            self._call = self._start_future.result(timeout=timeout_s)
            if self._cancelled:
                self._call.cancel()
        return self._call

    async def _native_call_async(self):
        if self._call is None:
            self._call = await asyncio.wrap_future(self._start_future)
            if self._cancelled:
                self._call.cancel()
        return self._call

    def __del__(self):
        # An answer nobody waits for any more is read by the host's I/O thread, which frees the callee's
        # slot when it arrives (a waiting thread would have read it itself).
        call = self._call
        if call is not None and not isinstance(call, _DriverCall):
            try:
                call.watch()
            except Exception:
                pass

    def cancel(self) -> None:
        """Cancels the call (and what the callee called); waiting for it raises RequestCancelledError."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def cancelled(self) -> bool:
        return self._cancelled


class DeploymentResponse(_Base):
    """The future answer of a call (Ray's): `.result(timeout_s=)`, `await`, `.cancel()`, or pass it to another
    `.remote()` call as an argument (resolved before that callee runs)."""

    def result(self, *, timeout_s: Optional[float] = None, _skip_asyncio_check: bool = False) -> Any:
        call = self._native_call(timeout_s)
        if not call.wait(-1.0 if timeout_s is None else float(timeout_s), False):
            raise TimeoutError(f"the call to {self._handle_.deployment_id} did not answer within {timeout_s} s")
        return _decode(self._handle_, *call.result())

    def _resolve(self):
        return self.result()

    def __await__(self):
        return self._await().__await__()

    async def _await(self):
        call = await self._native_call_async()
        if isinstance(call, _DriverCall):
            await asyncio.wrap_future(call.future)
        try:
            while not call.done():
                await _next_event(call)
        except asyncio.CancelledError:
            call.cancel()  # the awaiting task was cancelled (its own request was): so is this call
            raise
        result = call.result()  # (taken once: the native call hands its body over)
        if not self._cancelled:
            await _own_request_cancelled(result)
        return _decode(self._handle_, *result)


_LEN = struct.Struct("<I")


class DeploymentResponseGenerator(_Base):
    """The streamed answer of a call made with `options(stream=True)`: iterate it (sync or async) for the
    callee generator's items as it yields them."""

    def __init__(self, handle, start_future):
        super().__init__(handle, start_future)
        self._buffer = b""
        self._items = []
        self._done = False
        self._result = None  # the call's end, once _finish took it

    def _take(self, chunk: bytes) -> None:
        self._buffer += chunk
        while len(self._buffer) >= 4:
            (n,) = _LEN.unpack_from(self._buffer)
            if len(self._buffer) < 4 + n:
                break
            self._items.append(pickle.loads(self._buffer[4:4 + n]))
            self._buffer = self._buffer[4 + n:]

    def _finish(self, call) -> None:
        result = self._result = call.result()
        status, headers, body, ok, error = result
        if _header(headers, "x-ferry-result") == PICKLE_STREAM and ok:
            self._done = True
            return
        if ok and status < 400 and _header(headers, "x-ferry-result") == PICKLE:
            # The callee answered in one piece (not a generator): its value is the only item.
            self._items.append(pickle.loads(body))
            self._done = True
            return
        self._done = True
        if not ok and status < 400:
            raise _exc.RayServeException(f"the stream from {self._handle_.deployment_id} broke: {error}")
        _raise_for(self._handle_, status, headers, body, ok, error)

    def _poll(self, call) -> bool:
        """Takes what arrived; True when an item is ready or the stream is over."""
        head = call.head()
        streaming = head is not None and _header(head[1], "x-ferry-result") == PICKLE_STREAM
        while streaming:
            chunk = call.next_chunk()
            if chunk is None:
                break
            if chunk == ():
                self._finish(call)
                return True
            self._take(chunk)
            if self._items:
                return True
        if not streaming and call.done():
            self._finish(call)
            return True
        return bool(self._items)

    def __iter__(self):
        return self

    def __next__(self):
        call = self._native_call()
        while not self._items and not self._done:
            if not self._poll(call):
                call.wait(-1.0, True)
        if self._items:
            return self._items.pop(0)
        raise StopIteration

    def __aiter__(self):
        return self

    async def __anext__(self):
        call = await self._native_call_async()
        driver = isinstance(call, _DriverCall)
        while not self._items and not self._done:
            try:
                polled = self._poll(call)
            except _exc.RequestCancelledError:
                if not self._cancelled:
                    await _own_request_cancelled(self._result)
                raise
            if not polled:
                if driver:  # a driver has no replica loop to wake it: a pool thread waits
                    await asyncio.get_running_loop().run_in_executor(_chain_pool, call.wait, -1.0, True)
                else:
                    await _next_event(call)
        if self._items:
            return self._items.pop(0)
        raise StopAsyncIteration


__all__ = ["DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator"]
