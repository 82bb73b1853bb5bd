"""Deployments and applications: `@serve.deployment`, `Deployment.options()`, `.bind()` (Ray Serve's)."""

import inspect
from typing import Any, Callable, Dict, Optional, Union

# Ray Serve's deployment options and their defaults. Only the options a user set travel to the config (as
# Ray's "user configured" options do), so the config file's values and Ferry's defaults apply otherwise.
DEFAULTS: Dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 5,
    "max_queued_requests": -1,
    "user_config": None,
    "autoscaling_config": None,
    "health_check_period_s": 10.0,
    "health_check_timeout_s": 30.0,
    "graceful_shutdown_wait_loop_s": 2.0,
    "graceful_shutdown_timeout_s": 20.0,
    "ray_actor_options": None,
    "placement_group_bundles": None,
    "placement_group_strategy": None,
    "max_replicas_per_node": None,
    "logging_config": None,
    "request_router_config": None,
    "max_constructor_retry_count": 20,
}
# Accepted for compatibility and ignored, as Ray ignores them today.
_IGNORED = {"version", "route_prefix", "is_driver_deployment", "_internal", "init_args", "init_kwargs"}


def _check_options(options: Dict[str, Any]) -> None:
    for key, value in options.items():
        if key not in DEFAULTS and key not in _IGNORED and key != "name":
            raise TypeError(f"serve.deployment got an unexpected option {key!r}")
        if key == "num_replicas" and not (value == "auto" or value is None or (isinstance(value, int) and value >= 0)):
            raise ValueError(f'num_replicas must be a non-negative integer or "auto", got {value!r}')
        if key == "max_ongoing_requests" and not (isinstance(value, int) and value > 0):
            raise ValueError(f"max_ongoing_requests must be a positive integer, got {value!r}")
        if key == "max_queued_requests" and not (isinstance(value, int) and (value == -1 or value > 0)):
            raise ValueError(f"max_queued_requests must be -1 or a positive integer, got {value!r}")
        if key == "autoscaling_config" and value is not None and not isinstance(value, dict):
            if hasattr(value, "dict"):
                continue
            raise TypeError(f"autoscaling_config must be a dict, got {type(value).__name__}")


class Deployment:
    """A class or function made a deployment by `@serve.deployment`. Bind it to get an Application."""

    def __init__(self, func_or_class: Union[Callable, type], name: str, options: Dict[str, Any]):
        self._func_or_class = func_or_class
        self._name = name
        self._options = dict(options)

    @property
    def name(self) -> str:
        return self._name

    @property
    def func_or_class(self):
        return self._func_or_class

    @property
    def num_replicas(self):
        return self._options.get("num_replicas", DEFAULTS["num_replicas"])

    @property
    def max_ongoing_requests(self):
        return self._options.get("max_ongoing_requests", DEFAULTS["max_ongoing_requests"])

    @property
    def max_queued_requests(self):
        return self._options.get("max_queued_requests", DEFAULTS["max_queued_requests"])

    @property
    def user_config(self):
        return self._options.get("user_config")

    @property
    def ray_actor_options(self):
        return self._options.get("ray_actor_options")

    @property
    def user_configured_options(self) -> Dict[str, Any]:
        """The options set in code (the decorator and .options()), without the defaults."""
        return {k: v for k, v in self._options.items() if k not in _IGNORED}

    def options(self, *, name: Optional[str] = None, **options) -> "Deployment":
        """A copy with these options changed (Ray's Deployment.options)."""
        _check_options(options)
        merged = dict(self._options)
        merged.update(options)
        return Deployment(self._func_or_class, name or self._name, merged)

    def bind(self, *args, **kwargs) -> "Application":
        """This deployment with its constructor's arguments: an Application. Applications among the arguments
        become DeploymentHandles in the constructor."""
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "Deployments cannot be constructed directly: use `.bind()` and `serve.run()` (or a config file)."
        )

    def __repr__(self):
        return f"Deployment(name={self._name})"


class Application:
    """A deployment bound to its constructor's arguments: the graph `serve.run` and config files deploy.
    Its root deployment is the application's ingress."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict):
        self._deployment = deployment
        self._args = args
        self._kwargs = kwargs

    @property
    def deployment(self) -> Deployment:
        return self._deployment

    @property
    def init_args(self) -> tuple:
        return self._args

    @property
    def init_kwargs(self) -> dict:
        return self._kwargs

    def __repr__(self):
        return f"Application(ingress={self._deployment.name})"


def deployment(_func_or_class=None, name: Optional[str] = None, **options):
    """Ray Serve's `@serve.deployment`, bare or with options (num_replicas, max_ongoing_requests, ...)."""
    _check_options(options)

    def decorate(func_or_class):
        if not (inspect.isclass(func_or_class) or inspect.isfunction(func_or_class)):
            raise TypeError("@serve.deployment must decorate a class or a function")
        return Deployment(func_or_class, name or func_or_class.__name__, options)

    if _func_or_class is not None and callable(_func_or_class):
        return decorate(_func_or_class)
    return decorate
