"""instructmill: high-throughput construction of instruction-tuning data.

The Python API (everything the CLI does):

* :class:`~instructmill.methods.backtranslation.BackTranslator` -- paraphrase by round-trip translation;
* :class:`~instructmill.methods.template.TemplateFiller` / :func:`~instructmill.methods.template.load_template`;
* :func:`~instructmill.converters.convert_model` -- HF -> CTranslate2 with verification;
* :func:`~instructmill.io.readers.read_records` / :func:`~instructmill.io.run.open_run` -- records in and out.

Heavy engines (CTranslate2, transformers, torch) are imported only when used.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["BackTranslator", "BackTranslationOptions", "TemplateFiller", "load_template", "convert_model",
           "read_records", "open_run", "BatchingOptions", "CTranslate2Options", "__version__"]

_LAZY = {
    "BackTranslator": "instructmill.methods.backtranslation",
    "BackTranslationOptions": "instructmill.methods.backtranslation",
    "TemplateFiller": "instructmill.methods.template",
    "load_template": "instructmill.methods.template",
    "convert_model": "instructmill.converters",
    "read_records": "instructmill.io.readers",
    "open_run": "instructmill.io.run",
    "BatchingOptions": "instructmill.engine.scheduler",
    "CTranslate2Options": "instructmill.engine.ctranslate2_backend",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'instructmill' has no attribute {name!r}")
