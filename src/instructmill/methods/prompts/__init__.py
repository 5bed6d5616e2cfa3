"""Prompt texts of the LLM methods (Self-Instruct, Alpaca, Humpback, Evol-Instruct).

Each ``*.txt`` file is a :class:`string.Template` (``$name`` placeholders: values are inserted
literally, so an instruction holding ``$`` or ``{}`` is safe). The texts follow the authors'
releases; each method's module names its source.
"""
from __future__ import annotations

import functools
from importlib import resources
from string import Template
from typing import Any

import yaml

__all__ = ["load_prompt", "load_yaml", "render"]


@functools.lru_cache(maxsize=None)
def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load_prompt(name: str) -> Template:
    """The template ``prompts/<name>.txt`` (trailing newline kept)."""
    return Template(_read(f"{name}.txt"))


def load_yaml(name: str) -> Any:
    """``prompts/<name>.yaml`` parsed with ``yaml.safe_load``."""
    return yaml.safe_load(_read(f"{name}.yaml"))


def render(name: str, **values: str) -> str:
    """``load_prompt(name)`` filled with ``values`` (a missing value raises ``KeyError``)."""
    return load_prompt(name).substitute(**values)
