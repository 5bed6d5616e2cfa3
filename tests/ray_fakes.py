"""Fault injection for the Ray executor tests (loadable from a pipeline file, like ``pipeline_fakes``).

``factory: "ray_fakes:crash_once_mt"`` with ``params: {marker: PATH, after: N}`` builds a
:class:`pipeline_fakes.FakeMT` direction whose process dies (``os._exit``) at its N-th forward
batch -- once per marker file: the first process to create ``marker`` dies, every later one (the
restarted actor, the other replicas, a local run with the marker already there) translates
normally. Ray workers import this module through ``PYTHONPATH`` (the tests' ``ray.init`` sets it).
"""
from __future__ import annotations

import os

from pipeline_fakes import FakeMT


class CrashOnceMT(FakeMT):
    """A :class:`FakeMT` direction that kills its own process once (see the module docstring)."""

    def __init__(self, source_lang: str, target_lang: str, *, marker: str, after: int = 2, delay: float = 0.0):
        super().__init__(source_lang, target_lang, delay=delay)
        self.marker = marker
        self.after = after
        self.calls = 0

    def translate_batch(self, batch):
        self.calls += 1
        if self.forward and self.calls >= self.after:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)  # the actor's process dies mid-batch, as on a lost node or an OOM kill
        return super().translate_batch(batch)


def crash_once_mt(source_lang: str, target_lang: str, marker: str, after: int = 2, delay: float = 0.0) -> CrashOnceMT:
    return CrashOnceMT(source_lang, target_lang, marker=marker, after=after, delay=delay)
