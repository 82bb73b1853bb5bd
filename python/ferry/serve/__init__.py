"""Ray Serve's API, served by Ferry: `from ferry import serve` in place of `from ray import serve`.

Inside a replica, everything runs on Ferry's data plane (handles are Ferry's handle calls). From a driver
script, serve.run() deploys to a Ferry node through its admin API (starting a local node when none runs),
shipping classes defined in the script by value (cloudprickle), as Ray does.
"""

from . import context, exceptions, handle, metrics  # noqa: F401
from .api import (delete, get_app_handle, get_deployment_handle, run, shutdown, start, status)  # noqa: F401
from .batching import batch  # noqa: F401
from .context import ReplicaContext, get_multiplexed_model_id, get_replica_context  # noqa: F401
from .deployment import Application, Deployment, deployment  # noqa: F401
from .handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator  # noqa: F401
from .ingress import ingress  # noqa: F401
from .multiplex import multiplexed  # noqa: F401

__all__ = [
    "Application", "Deployment", "DeploymentHandle", "DeploymentResponse", "DeploymentResponseGenerator",
    "ReplicaContext", "batch", "delete", "deployment", "exceptions", "get_app_handle", "get_deployment_handle",
    "get_multiplexed_model_id", "get_replica_context", "handle", "ingress", "metrics", "multiplexed", "run", "shutdown",
    "start", "status",
]
