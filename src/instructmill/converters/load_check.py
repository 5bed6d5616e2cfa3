"""Load-time check of a compute type other than the one a converted folder was verified with.

A folder converted as float32 is verified exact; running it with ``compute_type="int8"``
quantizes it on load, which verification never saw. :func:`checked_compute_type` measures that
combination once against the folder's own float32 run (:func:`~.fidelity.measure`, the limits
of :data:`~.fidelity.LIMITS`), records the result in the folder's manifest under
``compute_checks`` (key ``"<compute type>@<ISA>/ctranslate2-<version>"``: int8 numerics differ
by instruction set and CTranslate2 version) and then:

* passes the compute type through when the check passed;
* for an explicit compute type that failed: raises :class:`VerificationError` naming the
  alternatives (``float32``);
* for ``"auto"`` that failed: falls back to float32 with one warning.

No check runs when the requested type keeps at least the verified precision (an int8 folder run
as float32 computes with its stored int8 weights de-quantized: weight error only, less than
the verified int8 run), when the folder is unverified (the user allowed that), or when
``INSTRUCTMILL_SKIP_COMPUTE_CHECK=1``. A read-only folder keeps the result for the process only.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import VerificationError
from .fidelity import LIMITS, FidelityInputs, cpu_isa, measure

__all__ = ["checked_compute_type", "effective_compute_type"]

log = logging.getLogger(__name__)

#: Precision order of CTranslate2 compute types (higher = closer to float32).
_RANK = {"float32": 3, "float16": 2, "bfloat16": 2, "int16": 1}
_MEMORY: dict[tuple[str, str], dict[str, Any]] = {}
_LOCK = threading.Lock()


def effective_compute_type(compute_type: str, device: str, stored: str) -> str:
    """What CTranslate2 actually computes with on ``device`` for a requested type.

    ``"default"`` is the stored type; on CPU, types the CPU lacks map to the nearest it has
    (``int8`` runs as ``int8_float32``, ``float16`` as ``float32``; see
    :func:`~.verify.cpu_compute_type`).
    """
    from .verify import cpu_compute_type

    ct = stored if compute_type in ("default", "auto") else compute_type
    if device != "cpu":
        return ct
    ct = cpu_compute_type(ct)
    return "int8_float32" if ct == "int8" else ct


def _key(compute_type: str, device: str) -> str:
    import ctranslate2

    where = cpu_isa() if device == "cpu" else device
    return f"{compute_type}@{where}/ctranslate2-{ctranslate2.__version__}"


def checked_compute_type(model_dir: str | Path, manifest: dict[str, Any], compute_type: str,
                         *, requested: str, device: str,
                         inputs: Callable[[], FidelityInputs]) -> str:
    """The compute type to load ``model_dir`` with, checked as the module docstring says.

    Args:
        model_dir: the converted folder (its manifest is ``manifest``).
        manifest: the folder's manifest (updated in place with ``compute_checks``).
        compute_type: the concrete compute type resolved for ``device``.
        requested: what the user asked for (``"auto"`` falls back instead of refusing).
        device: ``"cpu"`` or ``"cuda"``.
        inputs: builds the tokenized verification inputs (called only when a check runs).

    Returns:
        ``compute_type``, or ``"float32"`` when ``requested`` is ``"auto"`` and the check failed.

    Raises:
        VerificationError: an explicit compute type failed the check.
    """
    ver = manifest.get("verification") or {}
    if ver.get("passed") is not True or os.environ.get("INSTRUCTMILL_SKIP_COMPUTE_CHECK") == "1":
        return compute_type
    stored = str(manifest.get("quantization") or "float32")
    verified = effective_compute_type(str(ver.get("compute_type") or stored), device, stored)
    wanted = effective_compute_type(compute_type, device, stored)
    if wanted == verified or _RANK.get(wanted, 0) > _RANK.get(verified, 0):
        return compute_type
    folder = Path(model_dir)
    key = _key(wanted, device)
    result = (manifest.get("compute_checks") or {}).get(key)
    if result is None:
        with _LOCK:
            result = _MEMORY.get((str(folder.resolve()), key))
            if result is None:
                result = _run_check(folder, manifest, wanted, device, inputs(), key)
    if result["passed"]:
        return compute_type
    why = (f"{folder} was verified as {verified}, and run with compute type {wanted} it "
           f"{result['detail']}")
    if requested == "auto":
        log.warning("%s; using float32 instead (set compute_type float32 to skip this check)",
                    why)
        return "float32"
    raise VerificationError(f"refusing compute type {compute_type}: {why}. Use "
                            "--compute-type float32 (or compute_type='float32'), or convert "
                            "the model with --quantization float32; int8_float32 computes like "
                            "int8 on CPU and would be refused too")


def _run_check(folder: Path, manifest: dict[str, Any], compute_type: str, device: str,
               inputs: FidelityInputs, key: str) -> dict[str, Any]:
    from .manifest import write_manifest

    kind = str(manifest.get("kind") or inputs.kind)
    fid = measure(folder, folder, compute_type, inputs, device=device)
    problems = fid.problems(LIMITS[kind])
    result = {"passed": not problems, **fid.to_dict(),
              "detail": ("is too far from float32: " + "; ".join(problems) + " (" +
                         fid.summary() + ")") if problems else fid.summary()}
    manifest.setdefault("compute_checks", {})[key] = result
    _MEMORY[(str(folder.resolve()), key)] = result
    try:
        write_manifest(folder, manifest)
    except OSError as exc:  # a read-only folder: keep the result for this process
        log.info("could not record the compute-type check in %s: %s", folder, exc)
    return result
