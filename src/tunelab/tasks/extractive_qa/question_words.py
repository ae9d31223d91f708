"""The question's own words in a zero-shot answer.

A small model often answers by copying the words of the passage that match the question ("Where in Antarctica
is Halley Station?" - "Antarctica"): an answer whose every content word is in the question (an **echo**) is
almost never right. `is_echo` finds them (they are answered again, constrained to start at and hold a word
the question does not: `tunelab.decoding`'s `avoid_words`), and `trim_answer` drops the question's words and
stop words from an answer's ends ("the Byzantine Emperor Alexios I Komnenos" for "What Byzantine Emperor's
request ...?" - "Alexios I Komnenos").

Words are compared lowercased, as `\\w+` runs, without scikit-learn's English stop words.
"""

from __future__ import annotations

import re
from functools import cache

WORD = re.compile(r"\w+")
# stop words that answer "how many" and "which" questions: never trimmed from an answer
QUANTITY_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty forty fifty sixty hundred "
    "first second third last few several many".split()
)


@cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, imported on first use: scikit-learn is slow to import, which
    commands that never compare words (`data check`, SST-2 alone) need not pay."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


@cache
def _trimmed_stop_words() -> frozenset[str]:
    return stop_words() - QUANTITY_WORDS


def content_words(text: str) -> set[str]:
    """The lowercased words of `text` that are not English stop words."""
    stop = stop_words()
    return {w for w in WORD.findall(text.lower()) if w not in stop}


def is_echo(answer: str, question: str) -> bool:
    """Whether `answer` says nothing the question does not: no content word outside the question's (an
    empty answer, or one of stop words only, included)."""
    return content_words(answer) <= content_words(question)


def trim_answer(answer: str, question: str) -> str:
    """`answer` without the question's words and stop words (quantities aside) at its start and end, and
    without the punctuation those leave at its edges; `answer` itself when nothing else would be left."""
    asked = content_words(question)
    trimmed_stop = _trimmed_stop_words()
    words = list(re.finditer(r"\S+", answer))

    def edge(token: str) -> bool:
        found = WORD.findall(token.lower())
        return bool(found) and all(w in asked or w in trimmed_stop for w in found)

    i, j = 0, len(words)
    while i < j and edge(words[i].group()):
        i += 1
    while j > i and edge(words[j - 1].group()):
        j -= 1
    if i == j or (i, j) == (0, len(words)):
        return answer
    trimmed = answer[words[i].start() : words[j - 1].end()].strip(" \t,;:")
    return trimmed or answer
