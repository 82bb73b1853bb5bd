"""Ray Serve's ray.serve.metrics: a deployment's own Counter, Gauge and Histogram, exported on the node's
/metrics beside Ferry's.

Inside a replica every series carries the replica's ``application``, ``deployment`` and ``replica`` labels
(reserved: a tag key of those names is a ValueError, as in Ray), and a ``route`` tag, when declared in
``tag_keys``, is filled from the request being handled. Counters are exported with a ``_total`` suffix.
Ray exports ``ray_``-prefixed names; Ferry exports the name as given (``my_counter`` ->
``my_counter_total``). Recording outside a replica (a driver script, a unit test of the class) keeps
nothing: there is no node process to export it.
"""

import re
import warnings
from typing import Dict, List, Optional, Tuple, Union

from . import context as _context

DEPLOYMENT_TAG = "deployment"
REPLICA_TAG = "replica"
APPLICATION_TAG = "application"
ROUTE_TAG = "route"
_RESERVED = (DEPLOYMENT_TAG, REPLICA_TAG, APPLICATION_TAG)
_VALID_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 2  # FERRY_METRIC_* of <ferry/abi.h>


def _host():
    if not _context._in_replica():
        return None
    import _ferry  # the replica's embedded module: present only inside a replica
    return _ferry


class Metric:
    """What Counter, Gauge and Histogram share: name, description, tag keys and default tags."""

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None,
                 _kind: int = _COUNTER, _boundaries: Optional[List[float]] = None):
        if not isinstance(name, str) or len(name) == 0:
            raise ValueError("Empty name is not allowed. Please provide a metric name.")
        tag_keys = tag_keys or tuple()
        if not isinstance(tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(tag_keys)}")
        for key in tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
        if _context._in_replica():
            for key in _RESERVED:
                if key in tag_keys:
                    raise ValueError(f"'{key}' tag is reserved for Ray Serve metrics")
        self._name = name
        self._description = description
        self._tag_keys = tag_keys
        self._default_tags: Dict[str, str] = {}
        self._id = None
        # As Ray: a name Prometheus cannot carry is discarded with a warning, not an error.
        self._discard = not _VALID_METRIC_NAME.match(name)
        if self._discard:
            warnings.warn(f"Invalid metric name: {name}. Metric will be discarded and data will not be collected "
                          "or published. Metric names can only contain letters, numbers, _, and :. Metric names "
                          "cannot start with numbers.", UserWarning)
            return
        host = _host()
        if host is not None:
            self._id = host.metric_define(name, description or "", _kind, list(_boundaries or []))

    def set_default_tags(self, default_tags: Dict[str, str]):
        """Tags every record gets unless it passes its own; returns the metric."""
        for key, val in default_tags.items():
            if key in _RESERVED and _context._in_replica():
                raise ValueError(f"'{key}' tag is reserved for Ray Serve metrics")
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = dict(default_tags)
        return self

    @property
    def info(self) -> Dict:
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": self._default_tags}

    def _record(self, value: Union[int, float], tags: Optional[Dict[str, str]]) -> None:
        if tags:
            for val in tags.values():
                if not isinstance(val, str):
                    raise TypeError(f"Tag values must be str, got {type(val)}.")
            final = {**self._default_tags, **tags}
        else:
            final = dict(self._default_tags)
        if ROUTE_TAG in self._tag_keys and ROUTE_TAG not in final:
            final[ROUTE_TAG] = _context._request_context.get().route
        missing = [key for key in self._tag_keys if key not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}.")
        unknown = [key for key in final if key not in self._tag_keys]
        if unknown:
            raise ValueError(f"Unrecognized tag key(s): {','.join(unknown)}.")
        if self._discard or self._id is None:
            return
        _host().metric_record(self._id, list(final.items()), float(value))


def _check_number(value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")


class Counter(Metric):
    """A cumulative metric that only goes up (Prometheus' counter, exported as NAME_total)."""

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None):
        super().__init__(name, description, tag_keys, _COUNTER)

    def inc(self, value: Union[int, float] = 1.0, tags: Dict[str, str] = None):
        """Increments the counter by `value` (> 0, default 1)."""
        _check_number(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self._record(value, tags)

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self._tag_keys)


class Gauge(Metric):
    """The last value set (Prometheus' gauge)."""

    def __init__(self, name: str, description: str = "", tag_keys: Optional[Tuple[str, ...]] = None):
        super().__init__(name, description, tag_keys, _GAUGE)

    def set(self, value: Optional[Union[int, float]], tags: Dict[str, str] = None):
        """Sets the gauge to `value`; None does nothing."""
        if value is None:
            return
        _check_number(value)
        self._record(value, tags)

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self._tag_keys)


class Histogram(Metric):
    """Observations counted in buckets with these upper bounds (Prometheus' histogram)."""

    def __init__(self, name: str, description: str = "", boundaries: List[float] = None,
                 tag_keys: Optional[Tuple[str, ...]] = None):
        if boundaries is None or len(boundaries) == 0:
            raise ValueError("boundaries argument should be provided when using the Histogram class. e.g., "
                             'Histogram("name", boundaries=[1.0, 2.0])')
        for i, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries}. Use positive values "
                                 "for the arguments.")
        self.boundaries = list(boundaries)
        super().__init__(name, description, tag_keys, _HISTOGRAM, sorted(set(float(b) for b in boundaries)))

    def observe(self, value: Union[int, float], tags: Dict[str, str] = None):
        """Counts `value` in its bucket."""
        _check_number(value)
        self._record(value, tags)

    @property
    def info(self) -> Dict:
        info = super().info
        info["boundaries"] = self.boundaries
        return info

    def __reduce__(self):
        return self.__class__, (self._name, self._description, self.boundaries, self._tag_keys)


__all__ = ["Counter", "Gauge", "Histogram"]
