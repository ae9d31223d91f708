"""Passage focus for zero-shot QA: the model reads only the K sentences of the passage nearest the question
(kept in passage order), not the whole passage. A small model answers a short text better than a long one;
the price is the questions whose answer lies in a sentence left out.

A sentence's score is the sum, over the question's words it holds, of the word's inverse frequency among the
passage's sentences, log((n + 1) / (df + 0.5)): a word in every sentence (the article's subject) counts
little. On every 50th question of SQuAD v1.1 train (rebuilt), the two sentences so chosen held the answer for
91.6% of the questions, against 89.9% when each shared word counted 1
(benchmarks/results/squad-zeroshot-question-words-cpu.json).

Sentences are split by a regex on end punctuation (hand-written: no sentence splitter among the
dependencies, and SQuAD's passages are edited prose); words are compared as in `question_words`.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from tunelab.tasks.extractive_qa.question_words import content_words

# a sentence ends at . ! or ? (optionally followed by a closing quote or bracket) before whitespace and an
# upper-case letter, a digit or an opening quote/bracket
_SENTENCE_END = re.compile(r"(?<=[.!?])(?P<close>[\"')\]]?)\s+(?=[\"'(\[]?[A-Z0-9])")
# a period that ends these is no sentence end: titles, "No.", "U.S.", initials ("J. R. R. Tolkien")
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Sgt|Capt|Rev|Gov|Sen|Rep|No|Vol|Fig|Inc|Ltd|Co|Corp|vs|etc)"
    r"|\b[A-Z](?:\.[A-Z])*)\.$"
)


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


def focus_passage(passage: str, question: str, sentences: int, keep: tuple[int, int] | None = None) -> str:
    """The `sentences` sentences of `passage` with the highest score (see the module docstring), in
    passage order, joined by one space (ties: the earlier sentence; an answer may then run across a join,
    which is no text of the passage); the passage itself when it has no more sentences than that (or
    `sentences` is 0). `keep`: a character span (a k-shot example's answer) whose sentences are kept first."""
    spans = sentence_spans(passage)
    if sentences <= 0 or len(spans) <= sentences:
        return passage
    words = content_words(question)
    held = [content_words(passage[a:b]) for a, b in spans]
    df = Counter(w for s in held for w in s)
    n = len(spans)
    score = [sum(math.log((n + 1) / (df[w] + 0.5)) for w in words & s) for s in held]
    first = [i for i, (a, b) in enumerate(spans) if keep and a < keep[1] and keep[0] < b]
    rest = sorted((i for i in range(len(spans)) if i not in first), key=lambda i: -score[i])
    chosen = sorted(first + rest[: max(0, sentences - len(first))])
    return " ".join(passage[spans[i][0] : spans[i][1]] for i in chosen)
