"""The Python side of a Python replica: driven by the native runtime (src/runtimes/python), one object per
replica process.

Threads: requests arrive on the replica's threads (up to max_ongoing_requests at once). A sync method runs
on its request's thread; an async one (and any coroutine or async generator a method returns) runs on the
replica's one asyncio event loop, its thread waiting for the answer without the GIL. So sync code never
blocks the loop, and max_ongoing_requests bounds both kinds.
"""

import asyncio
import base64
import concurrent.futures
import inspect
import json
import logging
import pickle
import struct
import threading
import time
from typing import Any

import _ferry

from .. import context as _context
from .. import handle as _handle
from . import build, errors, http

_LOG_LEVELS = ((logging.ERROR, 3), (logging.WARNING, 2), (logging.INFO, 1))


class _FerryLogHandler(logging.Handler):
    """Python's logging into the replica's log, in the deployment's encoding, with the request's id."""

    def emit(self, record):
        try:
            level = next((f for p, f in _LOG_LEVELS if record.levelno >= p), 0)
            message = self.format(record)
            rid = _context._request_context.get().request_id
            # On a request's thread the host knows the request; elsewhere (the asyncio loop) it is told.
            _ferry.log(level, message, "" if _on_request_thread() else rid)
        except Exception:
            self.handleError(record)


_thread_state = threading.local()


def _on_request_thread() -> bool:
    return getattr(_thread_state, "in_request", False)


def _install_logging():
    root = logging.getLogger()
    if not any(isinstance(h, _FerryLogHandler) for h in root.handlers):
        h = _FerryLogHandler()
        h.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(h)
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)
    # Ray's replica logger name: user code often logs through it.
    logging.getLogger("ray.serve").setLevel(logging.INFO)


_LEN = struct.Struct("<I")


class _Answered(Exception):
    pass


class Replica:
    def __init__(self, config: dict):
        _install_logging()
        app_name, deployment_name, replica_id = _ferry.replica_context()
        self.app_name = app_name
        self.deployment_name = config.get("deployment") or deployment_name
        self.loop = asyncio.new_event_loop()
        self._writers = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="ferry-writer")
        self._loop_thread = threading.Thread(target=self._run_loop, name="ferry-asyncio", daemon=True)
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self._install(), self.loop).result()
        self._canceller = _Canceller()

        # Set before the user's module is imported: module-level metrics and get_replica_context() see it.
        _context._set_replica_context(_context.ReplicaContext(
            app_name=app_name, deployment=self.deployment_name,
            replica_id=_context.ReplicaID(replica_id), servable_object=None))
        python = set(config.get("python_deployments") or [])
        if config.get("pickled"):
            func_or_class, args, kwargs = _load_pickled(config["pickled"])
        else:
            app = build.application_of(build.load_attr(config["import_path"]), config.get("app_args") or {})
            node = next((n for n in build.walk(app) if n.deployment.name == self.deployment_name), None)
            if node is None:
                raise LookupError(f'the application of {config["import_path"]} has no deployment '
                                  f'"{self.deployment_name}"')
            python |= {n.deployment.name for n in build.walk(app)}
            func_or_class, args, kwargs = node.deployment.func_or_class, node.init_args, node.init_kwargs
        _app_info["python"] = python
        _app_info["ingress"] = config.get("ingress", "")
        args = build.with_handles(args, app_name, python)
        kwargs = build.with_handles(kwargs, app_name, python)
        self.is_function = not inspect.isclass(func_or_class)
        self.asgi_app = None
        if self.is_function:
            self.instance = func_or_class
        else:
            async def construct():
                return func_or_class(*args, **kwargs)
            self.instance = asyncio.run_coroutine_threadsafe(construct(), self.loop).result()
            _context._replica_context.servable_object = self.instance
            self.asgi_app = _asgi_app_of(func_or_class, self.instance)

    # --- the loop ------------------------------------------------------------------------------------
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _install(self):
        _handle._install_reader(self.loop)
        self.loop.add_reader(_ferry.request_fd(), self._take_requests)

    # --- the async way: requests the native side hands to the loop ------------------------------------
    def async_paths(self):
        """(whether HTTP requests take the async way, the methods whose handle calls do): the native side
        defers those requests' answers and hands them to the loop, without taking the GIL."""
        if self.asgi_app is not None:
            return True, []
        if self.is_function:
            fn = self.instance
            return _is_async(fn), (["__call__"] if _is_async(fn) else [])
        names = [n for n in dir(type(self.instance)) if (not n.startswith("_") or n == "__call__")
                 and _is_async(getattr(type(self.instance), n, None))]
        return "__call__" in names, names

    def _take_requests(self):
        for item in _ferry.take_requests():
            self.loop.create_task(self._serve(*item))

    async def _serve(self, request_id, method, path, query, route_prefix, headers, body, answer):
        pickled, method_name, model_id = _call_headers(headers)
        # The answer stands for the request in the calls the handler makes: they carry its deadline,
        # request id and trace.
        _context._request_context.set(_context.RequestContext(
            request_id=request_id, route=route_prefix, app_name=self.app_name, multiplexed_model_id=model_id,
            token=answer))
        stream = None
        task = asyncio.current_task()
        self._canceller.watch_task(task, answer, self.loop)
        try:
            if pickled:
                args, kwargs = pickle.loads(body)
                result = self._method(method_name or "__call__")(*args, **kwargs)
                if inspect.iscoroutine(result):
                    result = await result
                if inspect.isasyncgen(result) or inspect.isgenerator(result):
                    stream = answer.stream(200, [("x-ferry-result", _handle.PICKLE_STREAM)])
                    await self._stream_async(result, stream, _frame)
                else:
                    answer.send(200, [("x-ferry-result", _handle.PICKLE), ("content-type", "application/x-ferry-pickle")],
                                pickle.dumps(result, protocol=5))
            elif self.asgi_app is not None:
                await self._asgi_async(http.scope_for(method, path, query, route_prefix, headers), body, answer)
            else:
                request = http.make_request(http.scope_for(method, path, query, route_prefix, headers), body)
                result = self._method("__call__")(request)
                if inspect.iscoroutine(result):
                    result = await result
                if isinstance(result, http.StreamingResponse):
                    status, hdrs = http.streaming_head(result)
                    stream = answer.stream(status, hdrs)
                    await self._stream_async(result.body_iterator, stream, http.encode_chunk)
                elif inspect.isasyncgen(result) or inspect.isgenerator(result):
                    stream = answer.stream(200, [("content-type", "text/plain; charset=utf-8")])
                    await self._stream_async(result, stream, http.encode_chunk)
                else:
                    answer.send(*http.whole_answer(result))
        except Exception as e:
            if stream is not None:
                _log_failure(request_id, e)
                stream.fail(f"{type(e).__name__}: {e}")
            else:
                self._answer_failure(e, request_id, pickled, answer.send)
        finally:
            self._canceller.forget_task(task)

    def _answer_failure(self, e, request_id, pickled, send):
        """Logs `e` and answers 500: pickled for a handle call (the caller raises it again), else JSON naming
        the exception and the request."""
        _log_failure(request_id, e)
        if pickled:
            send(500, [("x-ferry-error", _handle.PICKLE), ("content-type", "application/x-ferry-pickle")],
                 errors.pickle_error(e))
        else:
            send(500, [("content-type", "application/json")], json.dumps({
                "error": f"{type(e).__name__}: {e}", "type": type(e).__name__, "message": str(e),
                "request_id": request_id, "deployment": self.deployment_name}).encode())

    async def _stream_async(self, items, stream, encode):
        """Writes a generator's items (sync or async) to `stream`; the writes wait for the client's credit, so
        they happen on the writer threads, and the generator waits for each."""
        loop = asyncio.get_running_loop()
        try:
            if hasattr(items, "__anext__") or hasattr(items, "__aiter__"):
                async for item in items:
                    if not await loop.run_in_executor(self._writers, stream.write, encode(item)):
                        break
            else:
                for item in items:
                    if not await loop.run_in_executor(self._writers, stream.write, encode(item)):
                        break
        finally:
            close = getattr(items, "aclose", None) or getattr(items, "close", None)
            if close:
                r = close()
                if inspect.isawaitable(r):
                    await r
        stream.end()

    async def _asgi_async(self, scope, body, answer):
        loop = asyncio.get_running_loop()
        state = {"status": 500, "headers": [], "parts": [], "stream": None}
        # After the body, receive() waits: a disconnect would end a StreamingResponse (its cancel comes
        # from the request's own cancellation instead).
        receive = http.receiver(body, then_wait=True)

        async def send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["headers"] = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                data = bytes(message.get("body", b""))
                if state["stream"] is None and not message.get("more_body", False):
                    state["parts"].append(data)
                    return
                if state["stream"] is None:
                    state["stream"] = answer.stream(state["status"], state["headers"])
                    data = b"".join(state["parts"]) + data
                if data:
                    await loop.run_in_executor(self._writers, state["stream"].write, data)

        await self.asgi_app(scope, receive, send)
        if state["stream"] is not None:
            state["stream"].end()
        else:
            answer.send(state["status"], state["headers"], b"".join(state["parts"]))

    def _on_loop(self, coro, ctx):
        """Runs `coro` on the loop with the request's context; waits for it without the GIL."""

        async def with_context():
            _context._request_context.set(ctx)
            return await coro

        return asyncio.run_coroutine_threadsafe(with_context(), self.loop).result()

    def _call(self, fn, args, kwargs, ctx):
        """Calls user code: a sync function here, a coroutine on the loop. A generator (sync or async)
        comes back as it is: the caller streams it."""
        if inspect.iscoroutinefunction(fn):
            return self._on_loop(fn(*args, **kwargs), ctx)
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            return self._on_loop(result, ctx)
        return result

    # --- requests --------------------------------------------------------------------------------------
    def handle(self, request_id, method, path, query, route_prefix, headers, body, token, writer):
        pickled, method_name, model_id = _call_headers(headers)
        ctx = _context.RequestContext(request_id=request_id, route=route_prefix, app_name=self.app_name,
                                      multiplexed_model_id=model_id, token=token)
        reset = _context._request_context.set(ctx)
        _thread_state.in_request = True
        started = [False]
        try:
            if pickled:
                args, kwargs = pickle.loads(body)
                fn = self._method(method_name or "__call__")
                with self._canceller.watch(token):
                    result = self._call(fn, args, kwargs, ctx)
                self._answer_pickled(result, writer, ctx, started)
            elif self.asgi_app is not None:
                # (HTTP requests to an ingress app take the async way; this is for where an answer cannot
                # be deferred: the app's answer is gathered whole.)
                gathered = _Gathered(writer)
                self._on_loop(self._asgi_async(http.scope_for(method, path, query, route_prefix, headers), body,
                                               gathered), ctx)
                gathered.flush()
            else:
                request = http.make_request(http.scope_for(method, path, query, route_prefix, headers), body)
                fn = self._method(method_name or "__call__")
                with self._canceller.watch(token):
                    result = self._call(fn, (request,), {}, ctx)
                self._answer_http(result, writer, ctx, started)
        except Exception as e:
            if started[0]:
                raise  # too late for a status: the stream breaks
            self._answer_failure(e, request_id, pickled, writer.send)
        finally:
            _thread_state.in_request = False
            _context._request_context.reset(reset)

    def _method(self, name: str):
        if self.is_function:
            if name != "__call__":
                raise AttributeError(f"function deployment {self.deployment_name} has no method {name!r}")
            return self.instance
        fn = getattr(self.instance, name, None)
        if fn is None or name.startswith("_") and name != "__call__":
            raise AttributeError(f"deployment {self.deployment_name} has no method {name!r}")
        return fn

    def _iterate(self, result, ctx):
        """The items of a sync or async generator, pulled on this thread (an async one step by step on the
        loop)."""
        if inspect.isasyncgen(result) or hasattr(result, "__anext__"):
            it = result.__aiter__() if hasattr(result, "__aiter__") else result
            while True:
                try:
                    yield self._on_loop(it.__anext__(), ctx)
                except StopAsyncIteration:
                    return
        else:
            yield from result

    def _stream(self, items, writer, started, encode):
        try:
            for item in items:
                started[0] = True
                if not writer.write(encode(item)):
                    break  # the client left or the request was cancelled
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    def _answer_http(self, result, writer, ctx, started):
        if isinstance(result, http.StreamingResponse):
            status, headers = http.streaming_head(result)
            writer.start(status, headers)
            self._stream(self._iterate(result.body_iterator, ctx), writer, started, http.encode_chunk)
            return
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            writer.start(200, [("content-type", "text/plain; charset=utf-8")])
            self._stream(self._iterate(result, ctx), writer, started, http.encode_chunk)
            return
        status, headers, body = http.whole_answer(result)
        writer.send(status, headers, body)

    def _answer_pickled(self, result, writer, ctx, started):
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            writer.start(200, [("x-ferry-result", _handle.PICKLE_STREAM)])
            self._stream(self._iterate(result, ctx), writer, started, _frame)
            return
        writer.send(200, [("x-ferry-result", _handle.PICKLE), ("content-type", "application/x-ferry-pickle")],
                    pickle.dumps(result, protocol=5))

    # --- WebSocket sessions of an ingress app ----------------------------------------------------------
    def accept_websocket(self, request_id, path, query, route_prefix, headers, ws):
        """Runs the ingress ASGI app for a WebSocket session (on a request thread, which waits until the app
        accepts or refuses). Returns what the native session hands each message and its end to, or None
        when refused."""
        if self.asgi_app is None:
            return None
        scope = http.scope_for("GET", path, query, route_prefix, headers)
        scope["type"] = "websocket"
        scope["scheme"] = "ws"
        protocols = next((v for k, v in headers if k == "sec-websocket-protocol"), "")
        scope["subprotocols"] = [p.strip() for p in protocols.split(",") if p.strip()]
        accepted = concurrent.futures.Future()
        inbox: "asyncio.Queue" = asyncio.Queue()
        loop = self.loop
        writers = self._writers
        state = {"connected": False, "closed": False}

        async def receive():
            if not state["connected"]:
                state["connected"] = True
                return {"type": "websocket.connect"}
            return await inbox.get()

        async def send(message):
            kind = message["type"]
            if kind == "websocket.accept":
                if not accepted.done():
                    accepted.set_result(True)
            elif kind == "websocket.send":
                if message.get("bytes") is not None:
                    await loop.run_in_executor(writers, ws.send_bytes, message["bytes"])
                else:
                    await loop.run_in_executor(writers, ws.send_text, message.get("text") or "")
            elif kind == "websocket.close":
                if not accepted.done():
                    accepted.set_result(False)
                elif not state["closed"]:
                    state["closed"] = True
                    await loop.run_in_executor(writers, ws.close, int(message.get("code", 1000)),
                                               message.get("reason") or "")
            elif kind == "websocket.http.response.start" and not accepted.done():
                accepted.set_result(False)

        async def run():
            _context._request_context.set(_context.RequestContext(request_id=request_id, route=route_prefix,
                                                                  app_name=self.app_name))
            try:
                await self.asgi_app(scope, receive, send)
            except Exception as e:
                logging.getLogger("ray.serve").error(
                    "WebSocket session %s failed:\n%s", request_id, errors.user_traceback(e).rstrip())
                if accepted.done() and not state["closed"]:
                    state["closed"] = True
                    await loop.run_in_executor(writers, ws.close, 1011, type(e).__name__)
            finally:
                if not accepted.done():
                    accepted.set_result(False)
                elif not state["closed"]:
                    state["closed"] = True
                    await loop.run_in_executor(writers, ws.close, 1000, "")

        asyncio.run_coroutine_threadsafe(run(), loop)
        if not accepted.result():
            return None

        def deliver(kind, data, code):
            if kind == "message":
                message = {"type": "websocket.receive", "bytes": data} if isinstance(data, bytes) else \
                    {"type": "websocket.receive", "text": data}
            else:
                state["closed"] = True
                message = {"type": "websocket.disconnect", "code": code}
            loop.call_soon_threadsafe(inbox.put_nowait, message)

        return deliver

    # --- the rest of Ray's replica interface -----------------------------------------------------------
    def reconfigure(self, user_config: Any) -> None:
        fn = getattr(self.instance, "reconfigure", None) if not self.is_function else None
        if fn is None:
            if user_config is not None:
                raise AttributeError(f"deployment {self.deployment_name} has a user_config but no reconfigure()")
            return
        self._call(fn, (user_config,), {}, _context.RequestContext())

    def check_health(self) -> bool:
        fn = getattr(self.instance, "check_health", None) if not self.is_function else None
        if fn is not None:
            result = self._call(fn, (), {}, _context.RequestContext())
            if result is False:
                return False
        return True

    def shutdown(self) -> None:
        fn = getattr(type(self.instance), "__del__", None) if not self.is_function else None
        try:
            if fn is not None:
                fn(self.instance)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


async def _with_ctx(coro, ctx):
    _context._request_context.set(ctx)
    return await coro


class _Canceller:
    """Stops sync user code whose request was cancelled (its client left, its deadline passed, its caller
    cancelled it), even code that never returns (`while True: pass`): a thread polls the requests running
    on the request threads every 50 ms and raises RequestCancelledError in the thread of a cancelled one
    (PyThreadState_SetAsyncExc, at its next bytecode), so its thread and its max_ongoing_requests slot
    come back."""

    def __init__(self):
        import ctypes

        api = ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
        self._raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(api)
        self._clear_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(api)
        self._lock = threading.Lock()
        self._running = {}  # thread id -> request token
        self._tasks = {}  # asyncio task -> (its deferred answer, its loop)
        self._thread = threading.Thread(target=self._poll, name="ferry-canceller", daemon=True)
        self._thread.start()

    def watch(self, token):
        return _Watched(self, token)

    def _poll(self):
        from ..exceptions import RequestCancelledError

        while True:
            time.sleep(0.05)
            with self._lock:
                for tid, token in list(self._running.items()):
                    if token is not None and token.cancelled():
                        self._raise_in(tid, RequestCancelledError)
                        self._running[tid] = None  # once
                for task, (answer, loop) in list(self._tasks.items()):
                    if answer.cancelled():
                        loop.call_soon_threadsafe(_cancel_once, task)
                        del self._tasks[task]

    # An async handler's task: cancelled (asyncio's CancelledError at its next await, and the calls it is
    # awaiting cancelled down the chain) once its request is.
    def watch_task(self, task, answer, loop):
        with self._lock:
            self._tasks[task] = (answer, loop)

    def forget_task(self, task):
        with self._lock:
            self._tasks.pop(task, None)

    def _enter(self, token):
        with self._lock:
            self._running[threading.get_ident()] = token

    def _exit(self):
        tid = threading.get_ident()
        with self._lock:
            fired = self._running.pop(tid, "absent") is None
        if fired:  # raised already, or still pending: clear what has not been raised yet
            self._clear_in(tid, None)


def _cancel_once(task) -> None:
    """Cancels a request's task unless that is under way (a call the task awaited, cancelled with the
    request, may have cancelled it first)."""
    if not task.cancelling():
        task.cancel()


class _Watched:
    def __init__(self, canceller, token):
        self.canceller = canceller
        self.token = token

    def __enter__(self):
        self.canceller._enter(self.token)

    def __exit__(self, *exc):
        self.canceller._exit()
        return False


class _Gathered:
    """A deferred answer's interface over a request thread's writer, gathering a stream whole."""

    def __init__(self, writer):
        self.writer = writer
        self.head = None
        self.parts = []

    def send(self, status, headers, body):
        self.writer.send(status, headers, body)

    def stream(self, status, headers):
        self.head = (status, headers)
        return self

    def write(self, data) -> bool:
        self.parts.append(data)
        return True

    def end(self):
        pass

    def fail(self, why):
        raise RuntimeError(why)

    def flush(self):
        if self.head is not None:
            self.writer.send(self.head[0], self.head[1], b"".join(self.parts))


def _log_failure(request_id, e):
    logging.getLogger("ray.serve").error("request %s failed:\n%s", request_id, errors.user_traceback(e).rstrip())


def _call_headers(headers):
    """(pickled arguments?, method name, multiplexed model id) of a request. Only a call from a deployment
    (x-ferry-caller: the proxy drops x-ferry-* headers from clients) may carry pickled arguments or name a
    method; from a client, the request is plain HTTP to __call__."""
    pickled = from_deployment = False
    method_name = model_id = ""
    for k, v in headers:
        if k == "x-ferry-caller":
            from_deployment = True
        elif k == "x-ferry-args":
            pickled = v == _handle.PICKLE
        elif k == "x-ferry-method":
            method_name = v
        elif k == "serve_multiplexed_model_id":
            model_id = v
    if not from_deployment:
        return False, "", model_id
    return pickled, method_name, model_id


def _is_async(fn) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _frame(item) -> bytes:
    data = pickle.dumps(item, protocol=5)
    return _LEN.pack(len(data)) + data


def _load_pickled(data: str):
    import cloudpickle  # classes shipped by value load with cloudpickle's helpers

    return cloudpickle.loads(base64.b64decode(data))


def _asgi_app_of(cls, instance):
    """The ASGI app of a class decorated with serve.ingress, with its class-based routes bound to this
    instance; None otherwise."""
    make = getattr(cls, "__ferry_ingress__", None)
    if make is None:
        return None
    return make(instance)


_app_info = {"ingress": "", "python": set()}


def ingress_of_this_app() -> str:
    return _app_info["ingress"]


def is_python_deployment(name: str) -> bool:
    return name in _app_info["python"]
