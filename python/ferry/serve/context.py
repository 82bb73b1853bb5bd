"""What a replica knows about itself and about the request it is handling."""

import contextvars
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class ReplicaContext:
    """Ray's serve.get_replica_context(): which replica this is."""

    app_name: str
    deployment: str
    replica_id: Any
    servable_object: Any = None
    rank: Optional[int] = None
    world_size: Optional[int] = None

    @property
    def replica_tag(self) -> str:
        return str(self.replica_id)


@dataclass
class ReplicaID:
    unique_id: str
    deployment_id: Any = None

    def to_full_id_str(self) -> str:
        return self.unique_id

    def __str__(self):
        return self.unique_id


@dataclass
class RequestContext:
    request_id: str = ""
    route: str = ""
    app_name: str = ""
    multiplexed_model_id: str = ""
    # The native request (a replica thread's RequestToken, or an async handler's deferred answer): calls made
    # while handling it inherit its deadline, request id and trace.
    token: Any = None


_replica_context: Optional[ReplicaContext] = None
_request_context: contextvars.ContextVar = contextvars.ContextVar("ferry_serve_request", default=RequestContext())


def _set_replica_context(context: ReplicaContext) -> None:
    global _replica_context
    _replica_context = context


def get_replica_context() -> ReplicaContext:
    from .exceptions import RayServeException

    if _replica_context is None:
        raise RayServeException(
            "`serve.get_replica_context()` may only be called from within a Serve deployment's code."
        )
    return _replica_context


def _get_serve_request_context() -> RequestContext:
    """Ray's (private, and used in its docs): the request being handled — its request_id, route,
    app_name and multiplexed_model_id."""
    return _request_context.get()


def get_multiplexed_model_id() -> str:
    """The model id of the request being handled (header serve_multiplexed_model_id, or the handle's
    multiplexed_model_id option); empty when it has none."""
    return _request_context.get().multiplexed_model_id


def _in_replica() -> bool:
    return _replica_context is not None
