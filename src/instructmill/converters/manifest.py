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

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "FIELD_TYPES", "check_field_types", "read_manifest",
           "write_manifest", "load_verified_manifest"]

MANIFEST_NAME = "instructmill.json"
MANIFEST_FORMAT = "instructmill-ct2/1"
_REQUIRED = ("format", "kind", "architecture", "source", "quantization", "tokenizer", "decoding",
             "verification")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


_STR = ("a string", lambda v: isinstance(v, str))
_OPT_STR = ("a string or null", _optional(lambda v: isinstance(v, str)))
_OBJECT = ("an object", lambda v: isinstance(v, dict))
_OPT_OBJECT = ("an object or null", _optional(lambda v: isinstance(v, dict)))
_INT = ("an integer", _is_int)
_OPT_INT = ("an integer or null", _optional(_is_int))
_NUMBER = ("a number", _is_number)
_OPT_BOOL = ("true, false or null", _optional(lambda v: isinstance(v, bool)))
_STR_LIST = ("a list of strings", _is_str_list)
_TOKEN_SEQUENCES = ("a list of lists of strings", lambda v: isinstance(v, list) and all(map(_is_str_list, v)))

#: The type of every manifest field a reader uses ("parent.child" for nested ones): a field that
#: is present must have it. Readers rely on these types, so a hand-edited or damaged manifest is
#: refused with one line naming the field, not with a TypeError deep inside an engine.
FIELD_TYPES: dict[str, tuple[str, Any]] = {
    "format": _STR, "kind": _STR, "architecture": _STR, "source": _STR, "revision": _OPT_STR,
    "quantization": _STR, "tokenizer": _OBJECT, "languages": _OPT_OBJECT, "decoding": _OBJECT,
    "max_input_tokens": _OPT_INT, "verification": _OBJECT,
    "tokenizer.type": _STR, "tokenizer.source_spm": _STR, "tokenizer.target_spm": _STR,
    "tokenizer.source_prefix": _STR_LIST, "tokenizer.source_suffix": _STR_LIST,
    "tokenizer.language_tokens": _STR, "tokenizer.source_lang_token": _OPT_STR,
    "tokenizer.target_lang_token": _OPT_STR,
    "languages.source": _OPT_STR, "languages.target": _OPT_STR,
    "decoding.beam_size": _INT, "decoding.max_decoding_length": _INT, "decoding.length_penalty": _NUMBER,
    "decoding.suppress_sequences": _TOKEN_SEQUENCES, "decoding.end_token": _STR_LIST,
    "decoding.repetition_penalty": _NUMBER, "decoding.no_repeat_ngram_size": _INT,
    "decoding.sampling": _OBJECT,
    "verification.passed": _OPT_BOOL, "verification.detail": _OPT_STR, "verification.reference": _OPT_STR,
}


def check_field_types(data: dict[str, Any], where: str | Path) -> None:
    """Check every field of :data:`FIELD_TYPES` that ``data`` has (nested ones when their parent is
    an object).

    Raises:
        ConversionError: ``<where>: field 'decoding.beam_size' must be an integer, not '4' (str);
            ...`` for the first field of the wrong type.
    """
    for name, (expected, check) in FIELD_TYPES.items():
        parent, _, key = name.rpartition(".")
        holder = data.get(parent) if parent else data
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder[key]
        if not check(value):
            raise ConversionError(
                f"{where}: field {name!r} must be {expected}, not {value!r} ({type(value).__name__}); "
                "the manifest was edited or damaged: convert the model again (`instructmill convert`)")


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
    ``format``, lacks required keys or has a field of the wrong type (:data:`FIELD_TYPES`).
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
    check_field_types(data, path)
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
