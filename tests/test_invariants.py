"""Word-level invariants of a paraphrase (methods/invariants.py), on the errors read in real output."""
from __future__ import annotations

import pytest

from instructmill.methods.invariants import invariant_issue


@pytest.mark.parametrize("source, paraphrase, broken", [
    ("Undiscovered dragon eggs could still be hidden throughout the world",
     "Dragon eggs discovered can still be hidden around the world", "negation"),
    ("Inability to process the request.", "Ability to process the request.", "negation"),
    ("Do not delete the file.", "Delete the file.", "negation"),
    ("Should I ask him what he thinks of your theory?", "Should I ask him what he thinks of his theory?", "person"),
    ("I freed him.", "I free you.", "person"),
    ("The Internet Assigned Numbers Authority manages it.", "The Assigned Numbers Authority manages it.", "name"),
    ("Use the Closure Library here.", "Use the Library here.", "name"),
    ("What is an IQP in chess?", "What is an IQ in chess?", "name"),
])
def test_meaning_flips_are_caught(source, paraphrase, broken):
    assert invariant_issue(source, paraphrase) == broken


@pytest.mark.parametrize("source, paraphrase", [
    ("The garden is quiet in the morning.", "The yard is calm in the morning."),
    ("You could try increasing the value to give the engine more time.",
     "You can try to increase the value to give the engine more time."),
    ("Can you add a test?", "You can add a test?"),
    ("It is not working on my Linux server.", "It doesn't work on my Linux server."),
    ("There could be several reasons for this.", "There may be several reasons for this."),
])
def test_rewordings_pass(source, paraphrase):
    assert invariant_issue(source, paraphrase) is None


def test_other_languages_are_not_checked():
    assert invariant_issue("Não faça isso.", "Faça isso.", "pt") is None
