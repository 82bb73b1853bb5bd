"""`@serve.ingress(app)` (Ray Serve's): a FastAPI (or any ASGI) app as the deployment's HTTP interface, its
routes under the application's route_prefix. Routes written as methods of the class (class-based views)
get the replica's instance as `self`."""

import inspect
from typing import Any, Callable, Union


def _bind_routes(app, cls, instance):
    """FastAPI routes whose endpoint is a method of `cls`: re-made bound to `instance`, so FastAPI no
    longer sees `self` as a parameter."""
    try:
        from fastapi.routing import APIRoute, APIWebSocketRoute
    except ImportError:
        return
    methods = {f for f in vars(cls).values() if inspect.isfunction(f)}
    for i, route in enumerate(list(app.router.routes)):
        endpoint = getattr(route, "endpoint", None)
        if endpoint not in methods:
            continue
        bound = endpoint.__get__(instance, cls)
        if isinstance(route, APIRoute):
            kwargs = dict(
                response_model=route.response_model, status_code=route.status_code, tags=route.tags,
                dependencies=route.dependencies, summary=route.summary, description=route.description,
                response_description=route.response_description, responses=route.responses,
                deprecated=route.deprecated, methods=route.methods, operation_id=route.operation_id,
                include_in_schema=route.include_in_schema, response_class=route.response_class,
                name=route.name)
            app.router.routes[i] = APIRoute(route.path, bound, **kwargs)
        elif isinstance(route, APIWebSocketRoute):
            app.router.routes[i] = APIWebSocketRoute(route.path, bound, name=route.name)


def ingress(app: Union[Any, Callable[[], Any]]):
    """Class decorator: requests to the deployment go to `app` (a FastAPI/Starlette app, or a function
    returning one)."""

    def decorate(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress decorates a class")

        def make(instance):
            asgi = app() if inspect.isfunction(app) else app  # a factory, or the app itself
            if hasattr(asgi, "router"):
                _bind_routes(asgi, cls, instance)
            return asgi

        cls.__ferry_ingress__ = staticmethod(make)
        return cls

    return decorate
