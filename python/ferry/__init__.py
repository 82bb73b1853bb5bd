"""Ferry: a model-serving framework in C++. `from ferry import serve` is Ray Serve's API, served by Ferry."""

__all__ = ["serve"]
