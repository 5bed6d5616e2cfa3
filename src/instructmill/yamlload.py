"""Bounded YAML for the files a user writes (pipeline files, template files).

``yaml.safe_load`` is safe from code execution but not from size: a 600-byte file of nested
aliases ("billion laughs") expands to 9**9 nodes for every walker that follows the aliases, a
file of 100,000 ``[`` recurses until ``RecursionError``, and an alias to its own anchor makes a
cycle. :class:`BoundedSafeLoader` checks all three while composing, in time linear in the
file: each node's expanded size (aliases counted once per use) and depth are computed from its
children's, which are already known.

Limits: :data:`MAX_NODES` expanded nodes, :data:`MAX_DEPTH` levels, :data:`MAX_FILE_BYTES` per
file (checked by :func:`config_file_problem` before the file is read).
"""
from __future__ import annotations

import os
import stat
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "BoundedSafeLoader", "YAMLLimitError",
           "config_file_problem", "compose_bounded", "yaml_problem"]

#: Nodes a document may expand to, aliases counted once per use. A pipeline or template
#: file has a few hundred; 100,000 leaves room and keeps every walk over the data short.
MAX_NODES = 100_000
#: Nesting levels of mappings/sequences (through aliases too). PyYAML's composer recurses
#: about three Python frames per level, so 1,000 frames allow ~300; configs need under 10.
MAX_DEPTH = 64
#: Largest pipeline or template file read (10 MiB).
MAX_FILE_BYTES = 10 * 2**20


class YAMLLimitError(yaml.MarkedYAMLError):
    """A document is over :data:`MAX_NODES`, :data:`MAX_DEPTH`, or has a recursive alias.

    ``problem`` is the one-line reason, ``problem_mark`` where it was found (as for every
    :class:`yaml.MarkedYAMLError`), so callers print it like any other YAML error.
    """


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents over :data:`MAX_NODES` expanded nodes or
    :data:`MAX_DEPTH` levels, and aliases to an anchor that is still being composed (cycles).

    Raises (from ``get_single_node`` / ``get_data``):
        YAMLLimitError: a limit is passed; its ``problem`` names the limit.
    """

    max_nodes = MAX_NODES
    max_depth = MAX_DEPTH

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._level = 0
        # id(node) -> (expanded nodes, depth), for composed nodes; nodes stay alive (the tree
        # and the anchors hold them), so their ids are not reused during the load.
        self._sizes: dict[int, tuple[int, int]] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self.anchors:
            target = self.anchors[event.anchor]
            if id(target) not in self._sizes:
                raise YAMLLimitError(problem=f"alias *{event.anchor} refers to its own anchor "
                                     "(a recursive structure)", problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        self._level += 1
        if self._level > self.max_depth:
            raise YAMLLimitError(problem=f"nested deeper than {self.max_depth} levels",
                                 problem_mark=event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._level -= 1
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        known = [self._sizes[id(child)] for child in children]
        size = 1 + sum(s for s, _ in known)
        depth = 1 + max((d for _, d in known), default=0)
        if size > self.max_nodes:
            raise YAMLLimitError(problem=f"aliases expand to more than {self.max_nodes} nodes",
                                 problem_mark=node.start_mark)
        if depth > self.max_depth:
            raise YAMLLimitError(problem=f"aliases expand to more than {self.max_depth} levels",
                                 problem_mark=node.start_mark)
        self._sizes[id(node)] = (size, depth)
        return node


def compose_bounded(text: str) -> tuple[Any, Any]:
    """Compose and construct one YAML document with :class:`BoundedSafeLoader`.

    Returns:
        ``(data, node)``: the constructed data (as ``yaml.safe_load``) and the root node (for
        line numbers), both ``None`` for an empty document.

    Raises:
        yaml.YAMLError: invalid YAML, or :class:`YAMLLimitError`.
    """
    loader = BoundedSafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, int | None]:
    """One-line reason and 1-based line of a YAML error (``str(exc)`` spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return " ".join(str(problem).split()), line


def config_file_problem(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """Why a pipeline/template file cannot be read, or ``None`` when it can.

    A FIFO would block the read forever and a huge file would be parsed whole, so anything but
    a regular file of at most ``max_bytes`` is refused before it is opened.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a FIFO, device or socket)"
    if info.st_size > max_bytes:
        return f"is {info.st_size} bytes; pipeline and template files may hold at most {max_bytes}"
    return None
