"""Passage focus for zero-shot QA: the model reads only the K sentences of the passage that share the most
words with the question (kept in passage order), not the whole passage. A small model answers a short text
better than a long one; the price is the questions whose answer lies in a sentence left out.

Sentences are split by a regex on end punctuation (hand-written: no sentence splitter among the
dependencies, and SQuAD's passages are edited prose); words are compared lowercased, without scikit-learn's
English stop words.
"""

from __future__ import annotations

import re

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

# a sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace and an
# upper-case letter, a digit or an opening quote/bracket
_SENTENCE_END = re.compile(r"(?<=[.!?])(?P<close>[\"')\]]?)\s+(?=[\"'(\[]?[A-Z0-9])")
# a period that ends these is no sentence end: titles, "No.", "U.S.", initials ("J. R. R. Tolkien")
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Sgt|Capt|Rev|Gov|Sen|Rep|No|Vol|Fig|Inc|Ltd|Co|Corp|vs|etc)"
    r"|\b[A-Z](?:\.[A-Z])*)\.$"
)
_WORD = re.compile(r"\w+")


def sentence_spans(passage: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the passage's sentences, without the whitespace between them."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(passage):
        if _ABBREVIATION.search(passage[start : m.start()]):
            continue
        spans.append((start, m.start() + len(m.group("close"))))  # a closing quote stays with its sentence
        start = m.end()
    spans.append((start, len(passage)))
    return [(a, b) for a, b in spans if passage[a:b].strip()]


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS}


def focus_passage(passage: str, question: str, sentences: int, keep: tuple[int, int] | None = None) -> str:
    """The `sentences` sentences of `passage` sharing the most distinct content words with `question`, in
    passage order, joined by one space (ties: the earlier sentence; an answer may then run across a join,
    which is no text of the passage); the passage itself when it has no more sentences than that (or
    `sentences` is 0). `keep`: a character span (a k-shot example's answer) whose sentences are kept first."""
    spans = sentence_spans(passage)
    if sentences <= 0 or len(spans) <= sentences:
        return passage
    words = content_words(question)
    overlap = [len(words & content_words(passage[a:b])) for a, b in spans]
    first = [i for i, (a, b) in enumerate(spans) if keep and a < keep[1] and keep[0] < b]
    rest = sorted((i for i in range(len(spans)) if i not in first), key=lambda i: -overlap[i])
    chosen = sorted(first + rest[: max(0, sentences - len(first))])
    return " ".join(passage[spans[i][0] : spans[i][1]] for i in chosen)
