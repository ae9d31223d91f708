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


def test_a_word_in_every_sentence_counts_less_than_a_rare_one():
    """Shared words weigh log((n + 1) / (df + 0.5)) over the passage's n sentences: the article's subject,
    in nearly every sentence, adds little; the question's rare word picks its sentence, though other
    sentences share more words."""
    passage = (
        "Chopin was born in Poland. "
        "Chopin lived in Paris. "
        "Chopin and Liszt played in Paris. "
        "Chopin taught in Paris. "
        "Mazurkas were his favourite form."
    )
    question = "What did Chopin compose in Paris, mazurkas?"
    # counted, "Chopin lived in Paris." (2 words) would win; weighed, chopin (df 4) + paris (df 3) is
    # log(6/4.5) + log(6/3.5) = 0.83 < mazurkas (df 1) log(6/1.5) = 1.39
    assert focus_passage(passage, question, 1) == "Mazurkas were his favourite form."
    assert focus_passage(passage, question, 2) == "Chopin lived in Paris. Mazurkas were his favourite form."
    assert focus_passage(passage, "Where was Chopin born?", 1) == "Chopin was born in Poland."
