"""The ``instructmill.json`` manifest written next to a converted CTranslate2 model.

Shape (format ``instructmill-ct2/1``; readers rely on these keys)::

    {"format": "instructmill-ct2/1", "kind": "translation", "architecture": "MarianMTModel",
     "source": "<hub id or absolute path>", "revision": "<commit sha or null>",
     "quantization": "int8",
     "tokenizer": {"type": "sentencepiece", "source_spm": "source.spm",
                   "target_spm": "target.spm", "source_suffix": ["</s>"]}   # Marian
                  | {"type": "hf", ...},                                     # M2M100 / NLLB
     "languages": {"source": "en", "target": "de"} | null,
     "decoding": {"beam_size": 4, "max_decoding_length": 512, "length_penalty": 1.0,
                  "suppress_sequences": [...]},
     "max_input_tokens": 512,
     "verification": {"passed": true, "reference": "transformers", "compute_type": "int8",
                      "sentences": 6, "exact_matches": 6, "token_agreement": 1.0,
                      "detail": "...", ...},
     "versions": {"ctranslate2": "...", "transformers": "...", "instructmill": "..."},
     "created": "2026-11-29T21:14:00Z"}

``verification.passed`` is ``true`` (verified), ``false`` (verification failed: the model is
refused) or ``null`` (conversion ran with ``verify=False``). A quantized conversion's
``verification`` also holds ``fidelity`` and ``limits`` (:mod:`.fidelity`). Loaders add
``compute_checks`` (``{"int8_float32@AVX2/ctranslate2-4.8.5": {"passed": ..., ...}}``) when the
folder runs with a compute type other than the verified one (:mod:`.load_check`).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConversionError, VerificationError

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "read_manifest", "write_manifest",
           "load_verified_manifest"]

MANIFEST_NAME = "instructmill.json"
MANIFEST_FORMAT = "instructmill-ct2/1"
_REQUIRED = ("format", "kind", "architecture", "source", "quantization", "tokenizer", "decoding",
             "verification")


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as ``folder/instructmill.json`` atomically (temp file + rename).

    Returns the manifest path. Raises ``OSError`` if the folder is not writable.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".instructmill-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/instructmill.json``.

    Returns the manifest dict. Raises :class:`ConversionError` if the folder or the manifest is
    missing (the folder was not made by ``instructmill convert``), is not valid JSON, has another
    ``format`` or lacks required keys.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder (expected a converted model folder)")
    if not path.is_file():
        raise ConversionError(
            f"{folder} has no {MANIFEST_NAME}: it was not made by `instructmill convert`; "
            f"convert the model first (`instructmill convert MODEL {folder}`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object")
    if data.get("format") != MANIFEST_FORMAT:
        raise ConversionError(f"{path} has format {data.get('format')!r}; this version of "
                              f"instructmill reads {MANIFEST_FORMAT!r} (convert the model again)")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConversionError(f"{path} lacks required keys: {', '.join(missing)}")
    if not isinstance(data["verification"], dict):
        raise ConversionError(f"{path}: 'verification' must be an object")
    return data


def load_verified_manifest(folder: str | Path, allow_unverified: bool = False) -> dict[str, Any]:
    """Read the manifest and refuse a model whose verification did not pass.

    Args:
        folder: a converted model folder.
        allow_unverified: accept a model whose verification failed or was skipped.

    Returns:
        The manifest dict.

    Raises:
        ConversionError: as :func:`read_manifest`.
        VerificationError: ``verification.passed`` is not ``true`` and ``allow_unverified`` is
            false; the message says why (the recorded ``detail``).
    """
    data = read_manifest(folder)
    ver = data["verification"]
    passed = ver.get("passed")
    if passed is True or allow_unverified:
        return data
    if passed is None:
        reason = ("it was converted without verification (verify=False / --no-verify); "
                  "convert it again with verification, or allow unverified models explicitly")
    else:
        detail = ver.get("detail") or "no detail recorded"
        reason = (f"its output did not match the {ver.get('reference', 'reference')} model "
                  f"when it was converted: {detail}")
    raise VerificationError(f"refusing to use {folder} because {reason}")


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
