"""Length-aware batching under a token budget, in pure Python.

The scheduler turns a stream of work items into engine batches. It imports no
engine: it only sees ``(index, length, payload)`` items, so it is shared by the
CTranslate2 and Bergamot translation backends and the CTranslate2 / transformers LLM backends
(:class:`~instructmill.engine.llm.LLMBackend` with ``budget_batching``), and is property-tested
on its own. :func:`budget_windows` cuts a record stream into consecutive windows under a token
budget, for methods that must hand work over in pieces small enough to stream their output.

What it guarantees (see ``tests/test_scheduler.py``):

* every item pushed comes out in exactly one batch (nothing dropped or doubled);
* a batch has at most ``max_batch_size`` items and its *padded* cost
  (``len(batch) * max(length)``, the number of token slots an engine computes on
  for a padded batch) is at most ``max_batch_tokens`` -- except a single item
  longer than the budget, which travels alone rather than being dropped;
* items are sorted by length only inside a bounded window of ``sort_window``
  items, so memory stays bounded for inputs of any size;
* every item keeps its ``index``, so callers put results back in input order by index, never by
  text (duplicate texts are common in this work).

Sorting by length before batching is what CTranslate2 itself does inside one
``translate_batch`` call (``rebatch_input`` in ``src/batch_reader.cc``) and what
fairseq/Marian call "maxi-batch sorting": it cuts padding, which is most of the
wasted work in a padded batch of sentences of mixed lengths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from ..errors import OptionError

P = TypeVar("P")


@dataclass(frozen=True)
class BatchingOptions:
    """How work is cut into engine batches.

    Attributes:
        max_batch_size: most items (examples) in one batch.
        max_batch_tokens: most padded token slots (``items * longest item``, in tokens) in one batch.
        sort_window: how many items are buffered and sorted by length before batches are cut.
            Bigger windows waste less padding; memory grows with it (items, not tokens).

    Raises:
        OptionError: a value is not a positive integer, or ``sort_window < max_batch_size``.
    """

    max_batch_size: int = 64
    max_batch_tokens: int = 3072
    sort_window: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_batch_tokens", "sort_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OptionError(name, value, "must be a positive integer")
        if self.sort_window < self.max_batch_size:
            raise OptionError("sort_window", self.sort_window,
                              f"must be at least max_batch_size ({self.max_batch_size})")


@dataclass(frozen=True)
class WorkItem(Generic[P]):
    """One unit of engine work.

    Attributes:
        index: position used to put results back in order (any hashable int, unique per stream).
        length: cost in tokens (source tokens for translation, prompt tokens for LLMs); >= 0.
        payload: what the engine needs (token list, text...); opaque to the scheduler.
    """

    index: int
    length: int
    payload: P


def padded_cost(batch: list[WorkItem]) -> int:
    """Token slots a padded batch occupies: ``len(batch) * max(item.length)`` (at least 1 per item)."""
    if not batch:
        return 0
    return len(batch) * max(1, max(item.length for item in batch))


class Batcher(Generic[P]):
    """Incremental length-sorting batcher.

    ``push`` items as they arrive, take ``ready()`` batches whenever you like, and
    ``flush()`` at the end of the stream. A batch is *ready* once the buffer holds a
    full window: the window is sorted by length and cut; complete batches are
    released and the last, partial batch waits for more items (so the engine gets
    full batches while work keeps arriving). The buffer never holds more than
    ``sort_window + max_batch_size`` items.
    """

    def __init__(self, options: BatchingOptions | None = None):
        self.options = options or BatchingOptions()
        self._buffer: list[WorkItem[P]] = []
        self._ready: list[list[WorkItem[P]]] = []
        self.items_in = 0
        self.items_out = 0

    def __len__(self) -> int:
        """Items held (buffered or in ready batches), not yet handed out."""
        return self.items_in - self.items_out

    def push(self, item: WorkItem[P]) -> None:
        if item.length < 0:
            raise OptionError("length", item.length, f"item {item.index} has a negative length")
        self._buffer.append(item)
        self.items_in += 1
        if len(self._buffer) >= self.options.sort_window:
            self._cut(final=False)

    def extend(self, items: Iterable[WorkItem[P]]) -> None:
        for item in items:
            self.push(item)

    def ready(self) -> list[WorkItem[P]] | None:
        """The next complete batch, or ``None`` if none is ready yet."""
        if not self._ready:
            return None
        batch = self._ready.pop(0)
        self.items_out += len(batch)
        return batch

    def flush(self) -> Iterator[list[WorkItem[P]]]:
        """Cut everything held into batches (end of stream); yields ready batches first."""
        self._cut(final=True)
        while self._ready:
            yield self.ready()  # type: ignore[misc]

    def _cut(self, *, final: bool) -> None:
        items = sorted(self._buffer, key=lambda it: (it.length, it.index))
        self._buffer = []
        batches = list(_cut_sorted(items, self.options))
        if not final and batches:
            last = batches[-1]
            if len(last) < self.options.max_batch_size and not _budget_full(last, self.options):
                self._buffer = batches.pop()
        self._ready.extend(batches)


def _budget_full(batch: list[WorkItem], options: BatchingOptions) -> bool:
    # Full when even the shortest possible next item (as long as the batch's longest,
    # since items arrive sorted) would exceed the budget.
    longest = max(1, max(item.length for item in batch))
    return (len(batch) + 1) * longest > options.max_batch_tokens


def _cut_sorted(items: list[WorkItem[P]], options: BatchingOptions) -> Iterator[list[WorkItem[P]]]:
    batch: list[WorkItem[P]] = []
    longest = 0
    for item in items:
        new_longest = max(longest, item.length, 1)
        if batch and (len(batch) + 1 > options.max_batch_size
                      or (len(batch) + 1) * new_longest > options.max_batch_tokens):
            yield batch
            batch, new_longest = [], max(item.length, 1)
        batch.append(item)
        longest = new_longest
    if batch:
        yield batch


def make_batches(items: Iterable[WorkItem[P]], options: BatchingOptions | None = None
                 ) -> Iterator[list[WorkItem[P]]]:
    """Stream ``items`` into batches (see :class:`Batcher`); memory is bounded by the window."""
    batcher: Batcher[P] = Batcher(options)
    for item in items:
        batcher.push(item)
        while (batch := batcher.ready()) is not None:
            yield batch
    yield from batcher.flush()


T = TypeVar("T")


def budget_windows(items: Iterable[T], cost: Callable[[T], int], *, max_items: int,
                   max_cost: int | None = None) -> Iterator[list[T]]:
    """Consecutive windows of ``items`` in input order (nothing dropped, reordered or doubled).

    A window holds at most ``max_items`` items and, when ``max_cost`` is given, items whose
    ``cost`` sums to at most ``max_cost`` (tokens of engine work, say); an item costing more than
    ``max_cost`` on its own travels alone. ``cost`` is called once per item, as items arrive, so
    memory is bounded by one window whatever the stream's length.

    Raises:
        OptionError: ``max_items`` or ``max_cost`` is not a positive integer.
    """
    if not isinstance(max_items, int) or max_items < 1:
        raise OptionError("max_items", max_items, "must be a positive integer")
    if max_cost is not None and (not isinstance(max_cost, int) or max_cost < 1):
        raise OptionError("max_cost", max_cost, "must be a positive integer")
    window: list[T] = []
    total = 0
    for item in items:
        item_cost = max(0, cost(item)) if max_cost is not None else 0
        if window and (len(window) >= max_items or (max_cost is not None and total + item_cost > max_cost)):
            yield window
            window, total = [], 0
        window.append(item)
        total += item_cost
    if window:
        yield window
