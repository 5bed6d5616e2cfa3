"""Limits on input files, so a hostile or broken input is one clear error, never a hang.

* :func:`require_regular_file`: reading or hashing a FIFO blocks until a writer appears
  (forever, for a forgotten pipe), and a device or folder fails half-way;
* :func:`json_too_deep` / :data:`MAX_JSON_DEPTH`: JSON nested 100,000 deep makes ``json.loads``
  raise ``RecursionError`` (which ends a run) and anything nested a few hundred deep makes the
  later ``json.dumps`` calls do so;
* :class:`InputFileError` / :func:`read_failure`: a ``.gz`` file that is not gzip, truncated or
  corrupt (and any other read error), named with the file and the records read before it.

Standard library only, like :mod:`instructmill.io.readers`, which uses these.
"""
from __future__ import annotations

import gzip
import itertools
import os
import re
import stat
import zlib

from instructmill.errors import InstructmillError, OptionError

__all__ = ["MAX_JSON_DEPTH", "InputFileError", "json_too_deep", "read_failure", "require_regular_file"]

#: Deepest nesting of arrays/objects accepted in one record. Deeper JSON makes Python's parser
#: and every later ``json.dumps`` recurse until ``RecursionError``; 128 is serde_json's default
#: recursion limit, far above any instruction data (ShareGPT nests 3 levels).
MAX_JSON_DEPTH = 128


class InputFileError(InstructmillError):
    """An input file cannot be read to its end: not gzip although named ``.gz``, a truncated
    or corrupt gzip stream, or an I/O error.

    Records read before the failure have been yielded (and processed by the caller); the
    message names the file, the last line read and how many records were read.

    Attributes:
        source: the file.
        line: the last line (JSON array: element) read before the failure, 0 if none.
        records: records yielded before the failure.
    """

    def __init__(self, source: str, reason: str, *, line: int, records: int):
        self.source = source
        self.line = line
        self.records = records
        where = f"after line {line}" if line else "before the first line"
        super().__init__(f"{source}: {reason} ({where}; {records} record"
                         f"{'' if records == 1 else 's'} read before it)")


def read_failure(name: str, exc: BaseException, *, line: int, records: int) -> InputFileError:
    """The :class:`InputFileError` for an exception raised while reading ``name``."""
    if isinstance(exc, gzip.BadGzipFile):
        reason = "not a gzip file, although its name ends in .gz"
    elif isinstance(exc, EOFError):
        reason = "the gzip data ends early: the file is truncated"
    elif isinstance(exc, zlib.error):
        reason = f"corrupt gzip data ({exc})"
    else:
        reason = f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    return InputFileError(name, reason, line=line, records=records)


def require_regular_file(path: str | os.PathLike[str], option: str = "input") -> None:
    """Refuse anything but an existing regular file (``"-"`` is the caller's business).

    Reading or hashing a FIFO blocks until a writer appears (forever, for a forgotten pipe),
    and a device or folder fails half-way, so they are refused before the file is opened.

    Raises:
        OptionError: no such file, or a folder / FIFO / device / socket (named in the message).
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise OptionError(option, name, "no such file") from None
    except OSError as exc:
        raise OptionError(option, name, f"cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    kind = next((label for test, label in kinds if test(mode)), "not a regular file")
    hint = "; to read from a pipe, give - and pipe the data to stdin" if option == "input" else ""
    raise OptionError(option, name, f"is {kind}, not a regular file{hint}")


# A JSON string, escapes included; removed before brackets are counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Depth change per bracket byte, indexed by the byte's value.
_BRACKET_STEP = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsing the JSON text ``data`` would nest deeper than ``limit`` arrays/objects.

    The count of opening brackets bounds the depth from above and costs two C-speed scans, so
    almost every line stops there. Otherwise strings are removed, only the brackets kept, and
    the running depth's maximum taken, all in C loops (regex, ``translate``, ``accumulate``);
    unclosed brackets count too, since ``json.loads`` recurses into them before it fails.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit
