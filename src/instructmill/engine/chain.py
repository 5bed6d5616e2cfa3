"""Run texts through a chain of translation hops (e.g. en->de->en) with full batches.

This is the engine glue of back-translation. For every hop it

* translates each distinct segment once (duplicates share one result; order is
  restored by slot index, never by text),
* cuts length-sorted batches under a token budget with the pure-Python
  :class:`~instructmill.engine.scheduler.Batcher`,
* feeds hop *k+1* as soon as hop-*k* batches finish (it does not wait for the whole
  hop), preferring later hops so finished work leaves memory early,
* keeps ``parallel_batches`` batches in flight on a thread pool; CTranslate2 runs
  concurrent ``translate_batch`` calls on its ``inter_threads`` replicas, the
  Bergamot engine releases the GIL, so every core stays busy.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass
from typing import Sequence

from .scheduler import Batcher, BatchingOptions, WorkItem
from .translation import TranslationBackend


@dataclass
class ChainStats:
    """What one :func:`translate_chain` call did.

    Attributes:
        segments_in: texts given (with duplicates).
        unique_per_hop: distinct texts each hop translated (model inputs).
        batches_per_hop: batches each hop ran.
    """

    segments_in: int
    unique_per_hop: list[int]
    batches_per_hop: list[int]


class _Hop:
    def __init__(self, backend: TranslationBackend, batching: BatchingOptions):
        self.backend = backend
        self.batcher: Batcher[int] = Batcher(batching)
        self.slot_of: dict[str, int] = {}
        self.texts: list[str] = []
        self.outputs: list[str | None] = []
        self.in_flight = 0
        self.closed = False  # no more texts will be added
        self.flushed = False
        self.pending: list[list[WorkItem]] = []
        self.batches = 0

    def add(self, texts: list[str]) -> list[int]:
        """Register texts, queue the new non-empty ones; returns their slots."""
        slots: list[int] = []
        new_texts: list[str] = []
        new_slots: list[int] = []
        for text in texts:
            slot = self.slot_of.get(text)
            if slot is None:
                slot = len(self.texts)
                self.slot_of[text] = slot
                self.texts.append(text)
                if text.strip():
                    self.outputs.append(None)
                    new_texts.append(text)
                    new_slots.append(slot)
                else:  # nothing to translate: whitespace passes through, no model call
                    self.outputs.append(text)
            slots.append(slot)
        if new_texts:
            for slot, encoded in zip(new_slots, self.backend.encode(new_texts)):
                self.batcher.push(WorkItem(slot, encoded.length, encoded))
        return slots

    def flush_if_closed(self) -> None:
        if self.closed and not self.flushed:
            self.pending.extend(self.batcher.flush())
            self.flushed = True

    def next_batch(self) -> list[WorkItem] | None:
        batch = self.batcher.ready()
        if batch is None and self.pending:
            batch = self.pending.pop(0)
        return batch

    @property
    def drained(self) -> bool:
        """Closed, flushed, nothing queued or running: no more outputs will appear."""
        return self.closed and self.flushed and not self.pending and self.in_flight == 0


def translate_chain(texts: Sequence[str], hops: Sequence[TranslationBackend], *,
                    batching: BatchingOptions | None = None,
                    max_workers: int | None = None) -> tuple[list[list[str]], ChainStats]:
    """Translate every text through ``hops`` in sequence.

    Args:
        texts: segments (sentences); empty or whitespace-only ones are passed through unchanged
            without a model call.
        hops: backends, e.g. ``[en->de, de->en]``; hop *k*'s output is hop *k+1*'s input.
        batching: batch size / token budget / sort window (shared by all hops).
        max_workers: batches in flight at once; default: the largest ``parallel_batches`` of the hops.

    Returns:
        ``(outputs, stats)`` where ``outputs[i]`` lists hop outputs for ``texts[i]``
        (``outputs[i][-1]`` is the final text), in input order.

    Raises:
        whatever a backend raises for a batch (the other batches are cancelled).
    """
    if not hops:
        raise ValueError("translate_chain needs at least one hop")
    batching = batching or BatchingOptions()
    chain = [_Hop(backend, batching) for backend in hops]
    workers = max_workers or max(h.parallel_batches for h in hops)
    first_slots = chain[0].add(list(texts))
    chain[0].closed = True
    # slot in hop k -> slot in hop k+1, filled as hop k finishes
    links: list[dict[int, int]] = [dict() for _ in hops[:-1]]

    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="instructmill-hop") as pool:
        in_flight: dict[cf.Future, tuple[int, list[WorkItem]]] = {}
        try:
            while True:
                while len(in_flight) < workers:
                    picked = _pick(chain)
                    if picked is None:
                        break
                    k, batch = picked
                    chain[k].in_flight += 1
                    chain[k].batches += 1
                    future = pool.submit(chain[k].backend.translate_batch, [it.payload for it in batch])
                    in_flight[future] = (k, batch)
                if not in_flight:
                    break
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    k, batch = in_flight.pop(future)
                    hop = chain[k]
                    hop.in_flight -= 1
                    outputs = future.result()
                    if len(outputs) != len(batch):
                        raise RuntimeError(f"{hop.backend.name} returned {len(outputs)} translations "
                                           f"for a batch of {len(batch)}")
                    for item, out in zip(batch, outputs):
                        hop.outputs[item.index] = out
                    if k + 1 < len(chain):
                        next_slots = chain[k + 1].add(outputs)
                        for item, nxt in zip(batch, next_slots):
                            links[k][item.index] = nxt
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    # Hops whose input was empty text: link them too (no model call happened).
    for k in range(len(chain) - 1):
        for slot, out in enumerate(chain[k].outputs):
            if slot not in links[k]:
                assert out is not None
                links[k][slot] = chain[k + 1].add([out])[0]

    results: list[list[str]] = []
    for slot in first_slots:
        path = []
        for k, hop in enumerate(chain):
            out = hop.outputs[slot]
            assert out is not None, "a segment was never translated"
            path.append(out)
            if k + 1 < len(chain):
                slot = links[k][slot]
        results.append(path)
    stats = ChainStats(segments_in=len(texts),
                       unique_per_hop=[sum(1 for t in h.texts if t.strip()) for h in chain],
                       batches_per_hop=[h.batches for h in chain])
    return results, stats


def _pick(chain: list[_Hop]) -> tuple[int, list[WorkItem]] | None:
    # Close hops whose upstream is drained (cascading in one pass), then pick the
    # latest hop with a batch: its results complete records and free memory early.
    for k, hop in enumerate(chain):
        if k > 0 and chain[k - 1].drained:
            hop.closed = True
        hop.flush_if_closed()
    for k in range(len(chain) - 1, -1, -1):
        batch = chain[k].next_batch()
        if batch is not None:
            return k, batch
    return None
