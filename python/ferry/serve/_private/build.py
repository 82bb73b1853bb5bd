"""From an import path to the deployments of an application: what the node runs (in a subprocess) when a
config names `import_path: module:attr`, and what each Python replica runs to find its own class and
constructor arguments.

    /usr/bin/python3 -m ferry.serve._private.build '{"import_path": ..., "args": {...}}'

prints {"ingress": NAME, "deployments": [{"name": NAME, "options": {...}}], "code_version": HASH} (the
options set in code; a hash of the code, so that deploying changed code makes new replicas, as Ray's hash
of the working_dir does), or exits 1 with the traceback on standard error.
"""

import hashlib
import importlib
import inspect
import json
import os
import sys
from typing import Any, Dict, List

from ..deployment import Application, Deployment
from ..handle import DeploymentHandle


def load_attr(import_path: str):
    """`module:attr` (or `module.attr`, Ray's older form) to the object it names."""
    if ":" in import_path:
        module_name, _, attr = import_path.partition(":")
    else:
        module_name, _, attr = import_path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f'expected an import path "module:attribute", got {import_path!r}')
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def application_of(target: Any, args: Dict[str, Any]) -> Application:
    """The Application an import path's object makes: an Application as it is, a Deployment bound with no
    arguments, or an application builder called with the config's `args` (Ray's)."""
    if isinstance(target, Application):
        if args:
            raise ValueError("`args` are given, but the import path names a bound application, not a builder")
        return target
    if isinstance(target, Deployment):
        return target.bind()
    if callable(target):
        params = list(inspect.signature(target).parameters.values())
        if params and params[0].annotation not in (inspect.Parameter.empty, dict, Dict) and hasattr(
                params[0].annotation, "parse_obj"):
            app = target(params[0].annotation.parse_obj(args or {}))  # a pydantic model of the args
        else:
            app = target(args or {})
        if not isinstance(app, Application):
            raise TypeError(f"the application builder returned {type(app).__name__}, not a bound application")
        return app
    raise TypeError(f"the import path names a {type(target).__name__}, not an application or a builder")


def walk(app: Application) -> List[Application]:
    """Every bound deployment of the graph, the ingress first, each name once (a name bound twice to
    different code is an error, as in Ray)."""
    seen: Dict[str, Application] = {}
    order: List[Application] = []

    def visit(node):
        if isinstance(node, Application):
            name = node.deployment.name
            if name in seen:
                if seen[name] is not node and seen[name].deployment.func_or_class is not node.deployment.func_or_class:
                    raise ValueError(f'two different deployments are named "{name}" in one application')
                if seen[name] is node:
                    return
            else:
                seen[name] = node
                order.append(node)
            for a in node.init_args:
                visit(a)
            for a in node.init_kwargs.values():
                visit(a)
        elif isinstance(node, (list, tuple, set)):
            for a in node:
                visit(a)
        elif isinstance(node, dict):
            for a in node.values():
                visit(a)

    visit(app)
    return order


def with_handles(value: Any, app_name: str, python: set) -> Any:
    """The constructor argument `value` with every bound deployment in it replaced by a handle to it."""
    if isinstance(value, Application):
        return DeploymentHandle(value.deployment.name, app_name, _python=value.deployment.name in python)
    if isinstance(value, list):
        return [with_handles(v, app_name, python) for v in value]
    if isinstance(value, tuple):
        return tuple(with_handles(v, app_name, python) for v in value)
    if isinstance(value, dict):
        return {k: with_handles(v, app_name, python) for k, v in value.items()}
    return value


def jsonable_options(d: Deployment) -> Dict[str, Any]:
    out = {}
    for k, v in d.user_configured_options.items():
        if hasattr(v, "dict"):  # a pydantic AutoscalingConfig and the like
            v = v.dict(exclude_unset=True)
        try:
            json.dumps(v)
        except TypeError:
            raise TypeError(f"deployment {d.name}: option {k} is not JSON-serializable: {v!r}") from None
        out[k] = v
    return out


def describe(app: Application) -> Dict[str, Any]:
    nodes = walk(app)
    return {
        "ingress": app.deployment.name,
        "deployments": [{"name": n.deployment.name, "options": jsonable_options(n.deployment)} for n in nodes],
    }


_MAX_HASHED_FILES = 20000


def _source_files(sys_path: List[str]):
    """(path, name within its root) of each .py file under the runtime_env's paths, in a stable order,
    at most _MAX_HASHED_FILES of them: the walk stops there, so a huge working_dir costs a bounded time."""
    count = 0
    for root in sys_path:
        if os.path.isfile(root):
            walked = [(os.path.dirname(root), [], [os.path.basename(root)])]
            base = os.path.dirname(root)
        else:
            walked, base = os.walk(root), root
        for dirpath, dirnames, filenames in walked:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                count += 1
                if count > _MAX_HASHED_FILES:
                    return
                path = os.path.join(dirpath, name)
                yield path, os.path.relpath(path, base)


def code_version(sys_path: List[str], import_path: str) -> str:
    """A hash of the Python source an application runs: every .py file under the runtime_env's directories
    (working_dir, py_modules), or the imported module's own file when there are none."""
    h = hashlib.sha256()
    files = list(_source_files(sys_path))
    if not sys_path:
        module = sys.modules.get(import_path.partition(":")[0] if ":" in import_path
                                 else import_path.rpartition(".")[0])
        path = getattr(module, "__file__", None)
        if path and os.path.isfile(path):
            files = [(path, os.path.basename(path))]
    for path, name in files:
        try:
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
        except OSError:
            continue
    return h.hexdigest()[:16]


def main(argv: List[str]) -> int:
    from .errors import user_traceback

    request = json.loads(argv[1])
    for p in reversed(request.get("sys_path", [])):
        sys.path.insert(0, p)
    try:
        app = application_of(load_attr(request["import_path"]), request.get("args") or {})
        described = describe(app)
        described["code_version"] = code_version(request.get("sys_path", []), request["import_path"])
    except Exception as e:
        sys.stderr.write(user_traceback(e))
        return 1
    sys.stdout.write(json.dumps(described))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
