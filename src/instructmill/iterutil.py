"""Small iteration helpers shared by methods that work chunk by chunk."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (the last may be shorter); streams its input."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class ChunkSizer:
    """Sizes chunks of work so that each takes about ``target_seconds``.

    Finished records reach the output only when their chunk (or pipeline window) is done, so a
    fixed chunk of 1,024 long records (minutes of translation) keeps a run's progress in memory
    for minutes, where a kill loses all of it. The sizer starts at ``min_size``, doubles the size
    while a chunk took under half the target, halves it when one took over twice the target, and
    never leaves ``[min_size, max_size]``. Short, fast records reach ``max_size`` (full engine
    batches) within a few chunks; long ones stay small. The learned size carries over from one
    call to the next (a pipeline stage calls its method once per window).

    Args:
        max_size: the largest chunk (the method's ``chunk_size`` option; >= 1).
        target_seconds: the wanted time per chunk.
        min_size: the smallest chunk (``min(min_size, max_size)`` is used).
        clock: monotonic seconds (tests).
    """

    def __init__(self, max_size: int, *, target_seconds: float = 2.0, min_size: int = 4,
                 clock: Callable[[], float] | None = None):
        import time

        self.max_size = max(1, int(max_size))
        self.min_size = max(1, min(min_size, self.max_size))
        self.target_seconds = target_seconds
        self.size = self.min_size
        self._now = clock or time.monotonic

    def observe(self, seconds: float) -> None:
        """Adjust the size after a chunk of the current size took ``seconds``."""
        if seconds < self.target_seconds / 2:
            self.size = min(self.max_size, self.size * 2)
        elif seconds > self.target_seconds * 2:
            self.size = max(self.min_size, self.size // 2)

    def chunks(self, items: Iterable[T]) -> Iterator[list[T]]:
        """Consecutive chunks of ``items`` (streamed; at most one chunk held), each sized from the
        time the consumer took for the one before (between handing it out and asking for the next).

        Yields:
            lists of 1..max_size items, in input order; every item exactly once.
        """
        chunk: list[T] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= self.size:
                started = self._now()
                yield chunk
                self.observe(self._now() - started)
                chunk = []
        if chunk:
            yield chunk


def timed_chunks(items: Iterable[T], max_size: int, **options: float) -> Iterator[list[T]]:
    """``ChunkSizer(max_size, **options).chunks(items)``: chunks that each take about 2 s."""
    return ChunkSizer(max_size, **options).chunks(items)
