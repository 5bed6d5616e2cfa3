"""Records in, records out, resume.

* :mod:`~instructmill.io.readers`: :func:`read_records` (JSONL, JSON array, CSV/TSV, stdin),
  :func:`detect_shape`, :func:`to_example`.
* :mod:`~instructmill.io.limits`: what inputs may be: :data:`MAX_JSON_DEPTH`,
  :func:`require_regular_file`, :class:`InputFileError` (unreadable / truncated gzip input).
* :mod:`~instructmill.io.writers`: :func:`format_record` (Alpaca, ShareGPT, OpenAI messages),
  :class:`JsonlWriter`.
* :mod:`~instructmill.io.run` / :mod:`~instructmill.io.resume`: :func:`open_run`, a run with
  output / discards / errors files that can be resumed after a crash.
* :mod:`~instructmill.io.tables` (Parquet / Arrow, needs pyarrow), :mod:`~instructmill.io.hf`
  (Hugging Face ``datasets`` in and out, ``Dataset.map``), :mod:`~instructmill.io.card` (dataset
  cards, ``--push-to-hub``): imported on use only.

Standard library only, so ``import instructmill.io`` stays cheap.
"""
from instructmill.io.readers import (
    MAX_JSON_DEPTH,
    READ_FORMATS,
    InputFileError,
    ReadError,
    content_id,
    detect_format,
    detect_shape,
    read_records,
    require_regular_file,
    to_example,
)
from instructmill.io.resume import RunPaths, repair_jsonl, run_paths
from instructmill.io.run import Run, open_run
from instructmill.io.writers import WRITE_FORMATS, JsonlWriter, example_fields, format_record

__all__ = [
    "MAX_JSON_DEPTH",
    "READ_FORMATS",
    "WRITE_FORMATS",
    "InputFileError",
    "JsonlWriter",
    "ReadError",
    "Run",
    "RunPaths",
    "content_id",
    "detect_format",
    "detect_shape",
    "example_fields",
    "format_record",
    "open_run",
    "read_records",
    "repair_jsonl",
    "require_regular_file",
    "run_paths",
    "to_example",
]
