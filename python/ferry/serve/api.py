"""serve.run, serve.start, serve.shutdown, serve.delete, serve.status and the handle getters (Ray's).

In a driver script these talk to a Ferry node's admin API ($FERRY_ADDRESS, else http://127.0.0.1:8265),
starting a local node (`ferry start`) when none answers, as Ray's serve.run starts a local Ray. Inside a
replica, the handle getters make handles on Ferry's data plane.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from . import context as _context
from .deployment import Application, Deployment
from .exceptions import RayServeException
from .handle import DeploymentHandle

_started_node = False


def _address() -> str:
    return os.environ.get("FERRY_ADDRESS", "http://127.0.0.1:8265").rstrip("/")


def _admin_headers() -> Dict[str, str]:
    token = os.environ.get("FERRY_ADMIN_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def _request(method: str, path: str, body: Optional[dict] = None, timeout: float = 30.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(_address() + path, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in _admin_headers().items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        try:
            parsed = json.loads(detail)
            detail = parsed.get("error", detail) + "".join("\n" + x for x in parsed.get("errors", []))
        except ValueError:
            pass
        raise RayServeException(f"the Ferry node at {_address()} answered {e.code}: {detail}") from None


def _reachable() -> bool:
    try:
        _request("GET", "/api/serve/applications/", timeout=2)
        return True
    except (urllib.error.URLError, OSError, RayServeException):
        return False


def _ferry_binary() -> str:
    explicit = os.environ.get("FERRY_BIN")
    if explicit:
        return explicit
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.path.join(os.path.dirname(here), "build", "ferry"), shutil.which("ferry")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RayServeException("cannot find the ferry binary: put it on PATH or set FERRY_BIN")


def start(http_options: Optional[dict] = None, **_ignored) -> None:
    """Makes sure a Ferry node answers at the admin address; starts a local one (with `http_options`'
    host and port; the port defaults to $FERRY_HTTP_PORT, else 8000) when none does."""
    global _started_node
    if _context._in_replica() or _reachable():
        return
    args = [_ferry_binary(), "start"]
    http_options = dict(http_options or {})
    if "port" not in http_options and os.environ.get("FERRY_HTTP_PORT"):
        http_options["port"] = os.environ["FERRY_HTTP_PORT"]
    if "host" in http_options:
        args += ["--http-host", str(http_options["host"])]
    if "port" in http_options:
        args += ["--http-port", str(http_options["port"])]
    port = _address().rsplit(":", 1)[-1]
    if port.isdigit():
        args += ["--admin-port", port]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RayServeException(f"could not start a Ferry node: {done.stderr.strip() or done.stdout.strip()}")
    _started_node = True
    for _ in range(100):
        if _reachable():
            return
        time.sleep(0.1)
    raise RayServeException("the Ferry node started but its admin API does not answer")


def _current_config() -> dict:
    config = _request("GET", "/api/ferry/config") or {}
    config.pop("http_options", None)
    config.setdefault("applications", [])
    return config


def _deployment_entry(node: Application, app_name: str, python_names) -> dict:
    import cloudpickle

    from ._private import build

    d: Deployment = node.deployment
    args = build.with_handles(node.init_args, app_name, python_names)
    kwargs = build.with_handles(node.init_kwargs, app_name, python_names)
    # Classes of the driver script (__main__) travel by value; importable ones by reference, as in Ray.
    payload = base64.b64encode(cloudpickle.dumps((d.func_or_class, args, kwargs))).decode()
    module = getattr(d.func_or_class, "__module__", "__main__")
    entry = {
        "name": d.name,
        "import_path": f"python:{module}:{d.func_or_class.__qualname__}",
        "args": {"python": {"pickled": payload, "deployment": d.name, "python_deployments": sorted(python_names),
                            "sys_path": [os.getcwd()]}},
    }
    entry.update(build.jsonable_options(d))
    return entry


def run(target: Application, blocking: bool = False, name: str = "default", route_prefix: Optional[str] = "/",
        logging_config: Any = None, _local_testing_mode: bool = False, **_ignored) -> DeploymentHandle:
    """Deploys `target` as application `name` (replacing one of that name) and waits until it is RUNNING;
    returns a handle to its ingress. `blocking=True` then serves until Ctrl-C."""
    from ._private import build

    if isinstance(target, Deployment):
        target = target.bind()
    if not isinstance(target, Application):
        raise TypeError(f"serve.run expects a bound application (.bind()), got {type(target).__name__}")
    start()
    nodes = build.walk(target)
    python_names = {n.deployment.name for n in nodes}
    app = {"name": name, "route_prefix": route_prefix or "/", "ingress": target.deployment.name,
           "deployments": [_deployment_entry(n, name, python_names) for n in nodes]}
    if logging_config is not None:
        app["logging_config"] = logging_config if isinstance(logging_config, dict) else dict(logging_config)
    config = _current_config()
    config["applications"] = [a for a in config["applications"] if a.get("name") != name] + [app]
    _request("PUT", "/api/serve/applications/", config)
    _wait_running(name)
    handle = DeploymentHandle(target.deployment.name, name)
    if blocking:
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return handle


def _wait_running(name: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        apps = (_request("GET", "/api/serve/applications/") or {}).get("applications", {})
        app = apps.get(name)
        if app is not None:
            if app.get("status") == "RUNNING":
                return
            if app.get("status") == "DEPLOY_FAILED":
                raise RayServeException(f"application {name} failed to deploy: {app.get('message', '')}")
        time.sleep(0.1)
    raise TimeoutError(f"application {name} was not RUNNING within {timeout_s} s")


def delete(name: str, _blocking: bool = True) -> None:
    """Deletes application `name` (its replicas stop after draining)."""
    config = _current_config()
    config["applications"] = [a for a in config["applications"] if a.get("name") != name]
    _request("PUT", "/api/serve/applications/", config)
    deadline = time.monotonic() + 120
    while _blocking and time.monotonic() < deadline:
        if name not in (_request("GET", "/api/serve/applications/") or {}).get("applications", {}):
            return
        time.sleep(0.1)


def shutdown() -> None:
    """Deletes every application; stops the node if serve.run/serve.start started it."""
    global _started_node
    if not _reachable():
        return
    _request("DELETE", "/api/serve/applications/")
    if _started_node:
        try:
            _request("POST", "/api/ferry/shutdown")
        except RayServeException:
            pass
        _started_node = False


@dataclass
class ApplicationStatusOverview:
    status: str
    message: str = ""
    last_deployed_time_s: float = 0
    deployments: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ServeStatus:
    proxies: Dict[str, str] = field(default_factory=dict)
    applications: Dict[str, ApplicationStatusOverview] = field(default_factory=dict)
    target_capacity: Optional[float] = None


def status() -> ServeStatus:
    """Ray's serve.status(): each application's status, message and deployments."""
    body = _request("GET", "/api/serve/applications/") or {}
    apps = {
        n: ApplicationStatusOverview(status=a.get("status", ""), message=a.get("message", ""),
                                     last_deployed_time_s=a.get("last_deployed_time_s", 0),
                                     deployments=a.get("deployments", {}))
        for n, a in body.get("applications", {}).items()
    }
    return ServeStatus(proxies=body.get("proxies", {}), applications=apps, target_capacity=body.get("target_capacity"))


def get_app_handle(name: str) -> DeploymentHandle:
    """A handle to application `name`'s ingress deployment."""
    if _context._in_replica() and name == _context.get_replica_context().app_name:
        from ._private import replica as _replica

        return DeploymentHandle(_replica.ingress_of_this_app(), name)
    apps = (_request("GET", "/api/serve/applications/") or {}).get("applications", {})
    if name not in apps:
        raise RayServeException(f"no application named {name!r}")
    ingress = apps[name].get("deployed_app_config", {}).get("ingress") or next(iter(apps[name]["deployments"]))
    return DeploymentHandle(ingress, name)


def get_deployment_handle(deployment_name: str, app_name: Optional[str] = None, **_ignored) -> DeploymentHandle:
    """A handle to deployment `deployment_name` of application `app_name` (default: the caller's own
    application inside a replica, else "default")."""
    if app_name is None:
        app_name = _context.get_replica_context().app_name if _context._in_replica() else "default"
    python = True
    if _context._in_replica() and app_name == _context.get_replica_context().app_name:
        from ._private import replica as _replica

        python = _replica.is_python_deployment(deployment_name)
    return DeploymentHandle(deployment_name, app_name, _python=python)
