"""A set of record ids in 11-16 bytes each (twice that with a value), so a run's bookkeeping does not grow
with its input.

A run remembers every id it read or wrote (to refuse duplicates, to skip done records on resume
and to refuse writing one twice). As Python strings in a ``set`` that costs ~100-150 bytes per
id: 200,000 records added ~30 MB to a template run. :class:`IdSet` keeps a 64-bit BLAKE2b hash
of each id instead, in an open-addressing hash table (linear probing, load factor 1/2 to 3/4, grown x1.5)
held in :class:`array.array` buffers: no Python object per id, so nothing fragments the heap,
and no NumPy import.

Collisions: two different ids share a 64-bit hash with probability about n^2 / 2^65 over n ids
(birthday bound): 3e-8 for a million ids, 3e-4 for 100 million. A collision would make a run
treat a new id as a duplicate or as done; the risk is stated here rather than hidden.
"""
from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable

__all__ = ["IdSet", "id_hash"]

_START = 4093
#: The largest ``expected`` honoured up front (32 MiB of table); beyond it the table grows as ids come.
MAX_EXPECTED = 3_000_000


def id_hash(record_id: str) -> int:
    """64-bit BLAKE2b of the id's UTF-8 bytes (surrogates kept), as an unsigned int (never 0)."""
    digest = hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1  # 0 marks an empty slot


class IdSet:
    """A set of ids (strings), each with an optional integer (e.g. the line it was first seen on).

    Supports ``in``, :meth:`add`, :meth:`update`, :meth:`get` and ``len``.

    Args:
        ids: initial ids.
        with_values: keep an integer per id (16 bytes an id instead of 8); without,
            :meth:`get` gives 0 for every id present.
        expected: how many ids are likely (e.g. estimated from a file's size); the table starts
            that large (at most :data:`MAX_EXPECTED`), so it is not rebuilt while it fills.
    """

    def __init__(self, ids: Iterable[str] = (), *, with_values: bool = False, expected: int = 0):
        self.with_values = with_values
        # sized for `expected` ids at a load of 2/3: no rehash (and no old table beside the new one)
        # while the estimate holds
        capacity = max(_START, min(int(expected), MAX_EXPECTED) * 3 // 2 + 1)
        self._keys = array("Q", bytes(8 * capacity))
        self._values = array("q", bytes(8 * capacity)) if with_values else None
        self._size = 0
        self.update(ids)

    def _slot(self, h: int) -> int:
        """The slot holding ``h``, or the empty slot where it would go."""
        keys = self._keys
        n = len(keys)
        i = h % n
        while True:
            k = keys[i]
            if k == h or k == 0:
                return i
            i += 1
            if i == n:
                i = 0

    def _grow(self) -> None:
        old_keys, old_values = self._keys, self._values
        capacity = len(old_keys) * 3 // 2  # x1.5: the load stays between 1/2 and 3/4
        self._keys = array("Q", bytes(8 * capacity))
        self._values = array("q", bytes(8 * capacity)) if self.with_values else None
        for i, h in enumerate(old_keys):
            if h:
                j = self._slot(h)
                self._keys[j] = h
                if self._values is not None:
                    self._values[j] = old_values[i]

    def __contains__(self, record_id: object) -> bool:
        if not isinstance(record_id, str):
            return False
        return self._keys[self._slot(id_hash(record_id))] != 0

    def get(self, record_id: str) -> int | None:
        """The value stored with ``record_id`` (0 unless given to :meth:`add`), or ``None``."""
        i = self._slot(id_hash(record_id))
        if self._keys[i] == 0:
            return None
        return self._values[i] if self._values is not None else 0

    def add(self, record_id: str, value: int = 0) -> bool:
        """Add ``record_id`` (with ``value``); returns ``False`` if it was already there (kept as is)."""
        h = id_hash(record_id)
        i = self._slot(h)
        if self._keys[i]:
            return False
        self._keys[i] = h
        if self._values is not None:
            self._values[i] = value
        self._size += 1
        if 4 * self._size > 3 * len(self._keys):  # load factor at most 3/4
            self._grow()
        return True

    def update(self, ids: Iterable[str]) -> None:
        for record_id in ids:
            self.add(record_id)

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Memory held by the table (bytes)."""
        return self._keys.itemsize * len(self._keys) * (2 if self._values is not None else 1)
