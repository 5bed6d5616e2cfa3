"""Sample seeds derived from record ids, so results do not depend on processing order."""
from __future__ import annotations

import zlib
from typing import Any


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from ``parts``: CRC-32 of ``":".join(map(str, parts))``.

    The same parts always give the same seed (across processes and Python hash seeds), so a record
    is sampled the same way in a resumed run, a reordered run and an uninterrupted one.
    """
    return zlib.crc32(":".join(map(str, parts)).encode("utf-8", "surrogatepass")) & 0x7FFFFFFF
