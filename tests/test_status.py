"""The one status vocabulary (instructmill.status): engine statuses become record statuses explicitly."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from instructmill import status
from instructmill.engine.llm import GenerationResult
from instructmill.records import OutputRecord, Example


def test_every_engine_status_translates_to_a_record_status():
    for name in status.ENGINE_STATUSES:
        assert status.record_status(name) in status.RECORD_STATUSES
    assert status.record_status(status.STATUS_PROMPT_TOO_LONG) == "prompt_too_long"
    assert status.record_status(status.STATUS_OK) == "ok"


def test_an_unknown_engine_status_is_refused_with_its_name():
    with pytest.raises(ValueError, match="'server_exploded'"):
        status.record_status("server_exploded")


def test_discards_are_every_record_status_but_ok_and_each_is_described():
    assert status.STATUS_OK not in status.DISCARD_STATUSES
    assert status.DISCARD_STATUSES | {status.STATUS_OK} == set(status.RECORD_STATUSES)
    assert all(text.strip() for text in status.RECORD_STATUSES.values())
    # every constant names a described status, and no two constants share a name
    constants = {k: v for k, v in vars(status).items() if k.startswith("STATUS_")}
    assert set(constants.values()) == set(status.RECORD_STATUSES)
    assert len(set(constants.values())) == len(constants)


def test_records_and_engine_results_default_to_the_shared_ok():
    assert OutputRecord("r1", Example("x")).status == status.STATUS_OK
    assert GenerationResult(0, status.STATUS_OK, 3).status == "ok"


def test_the_readme_discards_list_names_known_statuses():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if ".discards.jsonl" in line and "status" in line)
    named = re.findall(r"`([a-z_]+)`", line.split("(", 1)[1])
    assert named and set(named) <= status.DISCARD_STATUSES, set(named) - status.DISCARD_STATUSES
