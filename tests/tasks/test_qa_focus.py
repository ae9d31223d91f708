"""Passage focus (zero-shot QA `focus: K`): the K sentences sharing the most question words, in passage
order (the zero-shot run that reads only them: tests/test_runs_qa.py)."""

from __future__ import annotations

import pytest

from tunelab.tasks.extractive_qa.focus import focus_passage, sentence_spans

PASSAGE = (
    'He said "Go home." Then it rained in Paris. In 1999 (a dry year) the river fell! '
    "Mr. Smith left the U.S. Army in 1990. The rain in Paris stopped in May."
)


def test_sentences_split_at_ends_not_at_abbreviations():
    assert [PASSAGE[a:b] for a, b in sentence_spans(PASSAGE)] == [
        'He said "Go home."',
        "Then it rained in Paris.",
        "In 1999 (a dry year) the river fell!",
        "Mr. Smith left the U.S. Army in 1990.",
        "The rain in Paris stopped in May.",
    ]


def test_focus_keeps_the_sentences_sharing_most_question_words_in_passage_order():
    # "rain", "Paris", "stopped" (3 words) beat "Paris" (1); stop words ("when", "did", "the") do not count
    assert focus_passage(PASSAGE, "When did the rain in Paris stop? It stopped", 1) == (
        "The rain in Paris stopped in May."
    )
    assert focus_passage(PASSAGE, "When did the rain in Paris stop? It stopped", 2) == (
        "Then it rained in Paris. The rain in Paris stopped in May."
    )
    # a tie goes to the earlier sentence; no shared word at all: the first sentences
    assert focus_passage(PASSAGE, "Who left the army?", 1) == "Mr. Smith left the U.S. Army in 1990."
    assert focus_passage(PASSAGE, "What?", 1) == 'He said "Go home."'


@pytest.mark.parametrize("k", [0, 5, 9])
def test_no_focus_or_no_fewer_sentences_is_the_passage_itself(k):
    assert focus_passage(PASSAGE, "When did the rain stop?", k) == PASSAGE


def test_a_kept_span_keeps_its_sentences_first():
    """k-shot examples keep the sentences of their answer, then the nearest others up to K; a span across
    two sentences keeps both, even beyond K."""
    at = PASSAGE.index("1999")
    question = "When did the rain in Paris stop? It stopped"
    assert focus_passage(PASSAGE, question, 2, (at, at + 4)) == (
        "In 1999 (a dry year) the river fell! The rain in Paris stopped in May."
    )
    across = (PASSAGE.index("river fell"), PASSAGE.index("Smith") + 5)
    assert focus_passage(PASSAGE, question, 1, across) == (
        "In 1999 (a dry year) the river fell! Mr. Smith left the U.S. Army in 1990."
    )
