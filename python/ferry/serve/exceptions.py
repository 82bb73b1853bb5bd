"""Ray Serve's exceptions (ray.serve.exceptions), with the cases Ferry raises them in."""


class RayServeException(Exception):
    """Base of Serve's errors; also what a handle raises for a callee's exception it cannot rebuild."""


class BackPressureError(RayServeException):
    """The callee has max_queued_requests waiting already (HTTP 503 through the proxy)."""

    def __init__(self, *, num_queued_requests: int = -1, max_queued_requests: int = -1, message: str = ""):
        self._message = message or (
            f"Request dropped due to backpressure (num_queued_requests={num_queued_requests}, "
            f"max_queued_requests={max_queued_requests})."
        )
        super().__init__(self._message)

    @property
    def message(self) -> str:
        return self._message


class RequestCancelledError(RayServeException):
    """The request (or the call) was cancelled: its client left, its caller cancelled it, or a
    DeploymentResponse.cancel()."""

    def __init__(self, request_id: str = "", message: str = ""):
        self._request_id = request_id
        super().__init__(message or (f"Request {request_id} was cancelled." if request_id else
                                     "The request was cancelled (its client left, its deadline passed, or its "
                                     "caller cancelled it)."))


class DeploymentUnavailableError(RayServeException):
    """The deployment cannot take the call: it does not exist, or none of its replicas answers."""

    def __init__(self, deployment_id: str = "", message: str = ""):
        self._deployment_id = deployment_id
        super().__init__(message or f"{deployment_id} is unavailable.")

    @property
    def deployment_id(self):
        return self._deployment_id


class DeploymentTimeoutError(RayServeException, TimeoutError):
    """A call's deadline passed before its answer came (HTTP 504)."""


class RayServeCallError(RayServeException):
    """A callee raised an exception whose class cannot be rebuilt here: carries its type, message and
    traceback (the callee's), which `str()` shows."""

    def __init__(self, type_name: str, message: str, traceback: str):
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback
        super().__init__(f"{type_name}: {message}\n\nThe callee's traceback:\n{traceback}")
