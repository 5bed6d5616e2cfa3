"""Resolve a model argument to a local HF folder: a folder as is, a hub id through the HF cache.

Only the files a conversion needs are downloaded (config, tokenizer, generation config and the
weights: ``*.safetensors``, or ``*.bin`` only when the repository has no safetensors). Nothing in
the folder is executed here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConversionError, ModelNotFoundError

__all__ = ["ResolvedModel", "resolve_model", "check_pickle_weights", "missing_folder", "META_PATTERNS"]

#: Non-weight files fetched from the hub.
META_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "*.spm", "*.model",
    "sentencepiece*", "merges.txt",
]
_SAFETENSORS = ["*.safetensors", "*.safetensors.index.json"]
_BIN = ["*.bin", "*.bin.index.json"]
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to convert.

    Attributes:
        path: the local folder holding ``config.json``, tokenizer files and weights.
        source: what to record as the model's origin: the hub id, or the folder's absolute path.
        revision: the hub commit sha when known, else ``None`` (local folders).
        from_hub: whether ``source`` is a hub id.
    """

    path: Path
    source: str
    revision: str | None
    from_hub: bool


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else that does not exist is a bad path, and
    so is an ``owner/name`` whose ``owner`` is a folder here (``ct2/en-de`` beside a ``ct2/``)."""
    return (model.startswith(("/", ".", "~")) or model.endswith("/") or "\\" in model
            or model.count("/") > 1 or ("/" in model and Path(model.split("/", 1)[0]).expanduser().is_dir()))


def missing_folder(model: str) -> str:
    """``model folder ct2/en-de does not exist (ct2/ holds en-xx, xx-en)``: the deepest existing
    parent's entries help spot a typo. (``model file ...`` for a ``.gguf`` name.)"""
    path = Path(model).expanduser()
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir() and str(parent) not in ("", "."):
        try:
            names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
        except OSError:
            names = []
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hint = f" ({parent}/ holds {shown})" if names else f" ({parent}/ is empty)"
    kind = "file" if model.lower().endswith(".gguf") else "folder"
    return f"model {kind} {model} does not exist{hint}"


def _how_to_local(model: str) -> str:
    return (f"to convert without the hub, download or copy the model folder yourself (it needs "
            f"config.json, the tokenizer files and the weights) and pass its path instead of "
            f"{model!r}, e.g. `instructmill convert ./opus-mt-en-de OUTPUT_DIR`")


#: Pickle weight files transformers loads (``WEIGHTS_NAME`` and its shards).
_PICKLE_WEIGHTS = "pytorch_model*.bin"


def check_pickle_weights(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose only weights are pickles holding more than tensors.

    A folder with ``*.safetensors`` is fine (loaders take those). Otherwise every
    ``pytorch_model*.bin`` is read with ``torch.load(weights_only=True)``, PyTorch's restricted
    unpickler, which builds tensors and plain containers and refuses any other Python object
    instead of running it, so nothing in the file is executed here either.

    Raises:
        ConversionError: a pickle holds other objects (the message names the file and what torch
            refused, and says that nothing was run).
    """
    import pickle

    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(folder.glob(_PICKLE_WEIGHTS))
    if not pickles:
        return
    import torch

    for path in pickles:
        try:
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (non-zip) format cannot be memory-mapped
                torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = next((line for line in lines if line.lower().startswith(("trying to load", "unsupported"))),
                       lines[-1] if lines else "")
            raise ConversionError(
                f"{path} is a pickle holding Python objects besides tensors ({why}); nothing in it was run. "
                "instructmill loads safetensors weights, tensor-only pickles and CTranslate2 folders: use a "
                "copy of the model saved as safetensors (save_pretrained(..., safe_serialization=True) where "
                "you trust the file)") from None


def resolve_model(model: str | os.PathLike, *, revision: str | None = None,
                  local_files_only: bool | None = None) -> ResolvedModel:
    """Find ``model`` locally or fetch it from the Hugging Face hub.

    Args:
        model: a local folder, or a hub id such as ``"Helsinki-NLP/opus-mt-en-de"``.
        revision: hub branch, tag or commit (ignored for local folders).
        local_files_only: use only the HF cache. ``None``: follow ``HF_HUB_OFFLINE``.

    Returns:
        A :class:`ResolvedModel`.

    Raises:
        ModelNotFoundError: the folder does not exist or has no ``config.json``; the hub id is
            invalid, unknown, gated, or cannot be fetched (offline / unreachable hub). The
            message says how to pass a local folder instead.
        ConversionError: the only weights are pickles holding more than tensors
            (:func:`check_pickle_weights`).
    """
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: it is not a Hugging Face "
                                     "model folder")
        check_pickle_weights(path)
        return ResolvedModel(path.resolve(), str(path.resolve()), None, False)
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass a model folder or a hub id")
    if _looks_like_path(text):
        raise ModelNotFoundError(missing_folder(text))

    import huggingface_hub
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except hf_errors.HFValidationError as exc:
        raise ModelNotFoundError(f"{text!r} is neither an existing folder nor a valid hub id "
                                 f"({exc})") from exc

    offline = bool(local_files_only) if local_files_only is not None else (
        _env_true("HF_HUB_OFFLINE") or bool(getattr(hf_constants, "HF_HUB_OFFLINE", False)))
    sha: str | None = None
    patterns = META_PATTERNS + _SAFETENSORS + _BIN
    try:
        if not offline:
            info = huggingface_hub.HfApi().model_info(text, revision=revision)
            sha = getattr(info, "sha", None)
            names = [s.rfilename for s in (info.siblings or [])]
            has_st = any(n.endswith(".safetensors") for n in names)
            patterns = META_PATTERNS + (_SAFETENSORS if has_st else _BIN)
        folder = huggingface_hub.snapshot_download(
            text, revision=sha or revision, allow_patterns=patterns,
            local_files_only=offline)
    except hf_errors.GatedRepoError as exc:
        raise ModelNotFoundError(f"{text} is a gated repository: accept its terms on the hub and "
                                 f"log in (`hf auth login`), or {_how_to_local(text)}") from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"no model {text!r} on the Hugging Face hub (or it is private); "
                                 f"{_how_to_local(text)}") from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"{text} has no revision {revision!r}") from exc
    except Exception as exc:  # noqa: BLE001 - network boundary: HTTP client errors vary by version
        # (huggingface_hub raises httpx / httpx2 / requests errors depending on its version).
        folder = None
        if not offline:  # hub unreachable: a copy in the local cache still serves
            try:
                folder = huggingface_hub.snapshot_download(
                    text, revision=revision, allow_patterns=META_PATTERNS + _SAFETENSORS + _BIN,
                    local_files_only=True)
            except Exception:  # noqa: BLE001 - not cached either; report the first error
                folder = None
        if folder is None:
            why = ("the hub is offline (HF_HUB_OFFLINE=1 / local_files_only) and the model is "
                   "not in the local Hugging Face cache" if offline
                   else f"the hub could not be reached ({type(exc).__name__}: {exc}) and the "
                   "model is not in the local Hugging Face cache")
            raise ModelNotFoundError(
                f"cannot get model {text!r}: there is no folder {text} here, and as a hub id: {why}; "
                f"{_how_to_local(text)}") from exc
    folder_path = Path(folder)
    if sha is None and _SHA_RE.match(folder_path.name):
        sha = folder_path.name  # cache layout: .../snapshots/<commit sha>/
    if not (folder_path / "config.json").is_file():
        raise ModelNotFoundError(f"{text} (revision {sha or revision or 'main'}) has no "
                                 "config.json: it is not a transformers model")
    check_pickle_weights(folder_path)
    return ResolvedModel(folder_path, text, sha, True)
