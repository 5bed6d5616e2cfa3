"""translate_chain: dedup, order, pass-through and pipelining, with fake backends."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import FakeBackend, fake_pair
from instructmill.engine.chain import translate_chain
from instructmill.engine.scheduler import BatchingOptions


def test_identical_segments_translated_once_and_order_kept():
    fwd, bwd = fake_pair()
    texts = ["The garden is quiet.", "Boil the water.", "The garden is quiet.", "Boil the water."] * 5
    outputs, stats = translate_chain(texts, [fwd, bwd])
    assert [o[-1] for o in outputs] == ["The yard is calm.", "heat the water.", "The yard is calm.",
                                        "heat the water."] * 5
    assert sorted(fwd.texts_seen) == ["Boil the water.", "The garden is quiet."]
    assert stats.unique_per_hop == [2, 2]


def test_whitespace_passes_through_without_model_call():
    fwd, bwd = fake_pair()
    outputs, _ = translate_chain(["", "  ", "Fill the kettle."], [fwd, bwd])
    assert [o[-1] for o in outputs] == ["", "  ", "top up the pot."]
    assert fwd.texts_seen == ["Fill the kettle."]


def test_hop_two_starts_before_hop_one_finishes():
    fwd, bwd = fake_pair(delay=0.01, parallel_batches=1)
    texts = [f"sentence number {i} is here" for i in range(64)]
    outputs, stats = translate_chain(texts, [fwd, bwd],
                                     batching=BatchingOptions(max_batch_size=4, max_batch_tokens=1000,
                                                              sort_window=8), max_workers=1)
    assert [o[-1] for o in outputs] == texts
    events = fwd.log
    first_back = next(i for i, e in enumerate(events) if e[1] == "xx-en")
    last_forward = max(i for i, e in enumerate(events) if e[1] == "en-xx")
    assert first_back < last_forward, "hop 2 waited for the whole of hop 1"
    assert stats.batches_per_hop == [16, 16]


@given(st.lists(st.sampled_from(["a b", "c", "", "d e f", "garden", " "]), max_size=60),
       st.integers(1, 8), st.integers(2, 40))
@settings(max_examples=60, deadline=None)
def test_outputs_match_inputs_for_any_batching(texts, size, tokens):
    fwd, bwd = fake_pair()
    outputs, _ = translate_chain(texts, [fwd, bwd], batching=BatchingOptions(size, tokens, size))
    assert len(outputs) == len(texts)
    for text, (pivot, final) in zip(texts, outputs):
        assert final == (FakeBackend("xx-en")._one(FakeBackend("en-xx")._one(text)) if text.strip() else text)
