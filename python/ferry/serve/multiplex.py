"""`@serve.multiplexed` (Ray Serve's): a replica keeps up to max_num_models_per_replica models loaded,
least recently used evicted first; the request's model id comes from the serve_multiplexed_model_id header
or the handle's multiplexed_model_id option (serve.get_multiplexed_model_id()). The replica tells Ferry which
models it holds after each load and eviction, and routers send a model's requests to replicas that hold it
first, then to those holding the fewest models."""

import asyncio
import collections
import functools
import inspect
from typing import Callable, Optional


class _Cache:
    def __init__(self, load, max_models: int):
        self.load = load
        self.max_models = max_models
        self.models: "collections.OrderedDict" = collections.OrderedDict()
        self.loading = {}
        _caches.append(self)

    async def get(self, owner, model_id: str):
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("the model id must be a non-empty string (header serve_multiplexed_model_id)")
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        pending = self.loading.get(model_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._load(owner, model_id))
            self.loading[model_id] = pending
        return await asyncio.shield(pending)

    async def _load(self, owner, model_id):
        try:
            while len(self.models) >= self.max_models:
                _, evicted = self.models.popitem(last=False)
                _report_models()
                await _unload(evicted)
                del evicted
            result = self.load(owner, model_id) if owner is not None else self.load(model_id)
            if inspect.isawaitable(result):
                result = await result
            self.models[model_id] = result
            _report_models()
            return result
        finally:
            self.loading.pop(model_id, None)


_caches = []  # every model cache of this process (one replica per process)


def _report_models():
    """Tells the replica's host which models this replica holds now (it reports them to routers)."""
    from . import context as _context
    if not _context._in_replica():
        return
    import _ferry
    _ferry.set_model_ids(sorted({m for cache in _caches for m in cache.models}))


async def _unload(model):
    """An evicted model is dropped (a sync __del__ runs when its last reference goes); an async __del__ is
    awaited here, as Ray does."""
    fn = getattr(type(model), "__del__", None)
    if fn is not None and inspect.iscoroutinefunction(fn):
        await fn(model)


def multiplexed(func: Optional[Callable] = None, max_num_models_per_replica: int = 3):
    if not isinstance(max_num_models_per_replica, int) or (
            max_num_models_per_replica < 1 and max_num_models_per_replica != -1):
        raise ValueError("max_num_models_per_replica must be a positive integer (or -1: no limit)")
    limit = max_num_models_per_replica if max_num_models_per_replica > 0 else 1 << 30

    def decorate(load):
        caches = {}
        params = list(inspect.signature(load).parameters)
        method = bool(params) and params[0] == "self"

        if method:
            @functools.wraps(load)
            async def get_model(self, model_id: str):
                cache = caches.setdefault(id(self), _Cache(load, limit))
                return await cache.get(self, model_id)
        else:
            @functools.wraps(load)
            async def get_model(model_id: str):
                cache = caches.setdefault(None, _Cache(load, limit))
                return await cache.get(None, model_id)
        get_model._ferry_model_caches = caches
        return get_model

    if func is not None and callable(func):
        return decorate(func)
    return decorate
