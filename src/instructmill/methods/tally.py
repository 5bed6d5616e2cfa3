"""Thread-safe counters for a method's ``summary``.

A pipeline stage may run several windows of one method at once (``concurrency``), so the same
method object counts from several threads; ``d[k] += n`` on a plain dict is a read, an add and
a store, and two threads can lose an update between them.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ["Tally"]


class Tally(dict):
    """A ``dict`` of counters (numbers, and ``{name: count}`` sub-dicts) updated under a lock.

    It reads, prints, copies and serializes as the plain dict it is; update it only through
    :meth:`add` and :meth:`add_to`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def add(self, key: str, n: float = 1) -> None:
        """``self[key] += n``, atomically."""
        with self._lock:
            self[key] = self.get(key, 0) + n

    def add_to(self, key: str, name: Any, n: int = 1) -> None:
        """``self[key][name] += n`` (the sub-dict and the entry created at 0), atomically."""
        with self._lock:
            sub = self.setdefault(key, {})
            sub[name] = sub.get(name, 0) + n

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (multiprocessing, Ray) as a plain dict
        return (dict, (dict(self),))
