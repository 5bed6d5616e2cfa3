"""One stage call on a window of items, shared by both executors.

The local runtime's stage threads call :func:`process_rows` with their window as one row; the
Ray executor's actors call it with a batch of rows (one per source record). Either way the stage
sees the same wanted items, ``stage.window`` at a time, so both executors write the same records.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ..status import STATUS_OK
from .checkpoint import decode_record, encode_line, encode_record
from .stages import Item, MapStage

__all__ = ["RowsResult", "process_rows"]


@dataclass
class RowsResult:
    """What :func:`process_rows` gives back.

    Attributes:
        rows: per input row, the stage's items for that row (outputs and pass-throughs, in order).
        passed: per input row, items passed through unchanged.
        lines: checkpoint lines, one per input item (``{"in": id, "out": [...]}`` or
            ``{"in": id, "pass": 1}``), as the local runtime writes them.
        produced: the records the stage produced (not the pass-throughs), in order.
        discards: per input row, the produced records whose status is not ``ok``, by status.
        busy_seconds: seconds spent inside the method.
    """

    rows: list[list[Item]]
    passed: list[int]
    lines: list[bytes]
    produced: list[Any]
    discards: list[dict[str, int]]
    busy_seconds: float


def process_rows(stage: MapStage, rows: list[list[Item]]) -> RowsResult:
    """Run ``stage`` on the items of ``rows`` (see the module docstring).

    The wanted items go to the method ``stage.window`` at a time; the result does not depend
    on how rows are batched (the methods seed per record).

    Raises:
        whatever the stage raises.
    """
    flat = [(r, item) for r, items in enumerate(rows) for item in items]
    wants = [stage.wants(item) for _, item in flat]
    wanted = [item for (_, item), w in zip(flat, wants) if w]
    started = time.perf_counter()
    outputs: list[Any] = []
    for start in range(0, len(wanted), stage.window):
        outputs.extend(stage.process(wanted[start:start + stage.window]))
    busy = time.perf_counter() - started
    k = stage.fanout
    out_rows: list[list[Item]] = [[] for _ in rows]
    passed = [0] * len(rows)
    discards: list[dict[str, int]] = [{} for _ in rows]
    lines: list[bytes] = []
    produced: list[Any] = []
    pos = 0
    for (r, item), w in zip(flat, wants):
        if not w:
            lines.append(encode_line({"in": item.record.id, "pass": 1}))
            out_rows[r].append(item)
            passed[r] += 1
            continue
        group = outputs[pos * k:(pos + 1) * k]
        pos += 1
        line = encode_line({"in": item.record.id, "out": [encode_record(rec) for rec in group]})
        lines.append(line)
        # pass on exactly what a checkpoint holds, as the local runtime does
        decoded = [decode_record(d) for d in json.loads(line)["out"]]
        produced.extend(decoded)
        out_rows[r].extend(Item(rec) for rec in decoded)
        for rec in decoded:
            if rec.status != STATUS_OK:
                discards[r][rec.status] = discards[r].get(rec.status, 0) + 1
    return RowsResult(out_rows, passed, lines, produced, discards, busy)
