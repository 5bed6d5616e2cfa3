"""Where converted models are kept.

``INSTRUCTMILL_CACHE`` overrides the folder (default ``~/.cache/instructmill``).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    root = Path(os.environ.get("INSTRUCTMILL_CACHE") or Path.home() / ".cache" / "instructmill")
    root.mkdir(parents=True, exist_ok=True)
    return root


def converted_model_dir(source: str, quantization: str, revision: str | None = None) -> Path:
    """Cache folder for ``source`` (hub id or folder) converted with ``quantization``.

    Folders are named from the id plus a short hash of the absolute source, so two local
    folders with the same name never share a conversion.
    """
    absolute = str(Path(source).resolve()) if Path(source).exists() else source
    digest = hashlib.sha1(f"{absolute}@{revision or ''}".encode()).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", source.strip("/").split("/")[-1] if Path(source).exists() else source)
    return cache_dir() / "ct2" / f"{name}-{quantization}-{digest}"
