"""Method summaries count right when a stage runs several windows at once."""
import json
import pickle
import threading

from instructmill.methods.tally import Tally


def test_tally_counts_every_update_from_many_threads():
    tally = Tally({"records": 0, "discarded": {}})
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(5000):
            tally.add("records")
            tally.add_to("discarded", f"s{(i + k) % 3}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally["records"] == 40000
    assert sum(tally["discarded"].values()) == 40000
    assert set(tally["discarded"]) == {"s0", "s1", "s2"}


def test_tally_reads_and_serializes_as_a_plain_dict():
    tally = Tally({"ok": 1})
    tally.add("ok", 2)
    tally.add_to("scores", 5)
    assert tally == {"ok": 3, "scores": {5: 1}}
    back = pickle.loads(pickle.dumps(tally))
    assert type(back) is dict and back == {"ok": 3, "scores": {5: 1}}
    assert json.loads(json.dumps(tally)) == {"ok": 3, "scores": {"5": 1}}
