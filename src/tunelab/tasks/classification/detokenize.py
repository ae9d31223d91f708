"""Inputs shown to a zero-shot model as ordinary text (the `detokenize` option).

SST-2 and TREC come Penn-Treebank tokenised (`it 's slow -- very , very slow .`) and SST-2 also lowercased; a
language model has read little text like that. `detokenize` undoes the tokenisation with nltk's
TreebankWordDetokenizer (`it's slow--very, very slow.`; PTB's single opening quote ` becomes '), and, in a
text without any capital letter, capitalises the pronoun "i" and the first letter (unless a digit or a
clitic such as "'s" comes first), the casing lowercasing surely removed (names it cannot know are left).
"""

from __future__ import annotations

import re
import sys
from functools import cache

from tunelab.errors import UsageError

PRONOUN_I = re.compile(r"\bi\b")
# a fragment starting mid-word ("'s a sad movie": SST-2's training phrases): no sentence start to restore
CLITIC = re.compile(r"(?:'(?:s|re|ll|d|m|ve)|n't)\b")
FIRST_LETTER = re.compile(r"^(\W*)([^\W\d_])")  # after any "...", "(" or quote; not after a digit
OPENING_QUOTE = re.compile(r"(^|\s)`\s+(?=\S)")  # PTB's single opening quote, which nltk leaves as it is


@cache
def _detokenizer():
    try:
        from nltk.tokenize.treebank import TreebankWordDetokenizer  # a 1 s import: only when asked for
    except ImportError as exc:
        raise UsageError(
            "detokenize needs nltk, one of tunelab's dependencies: `pip install nltk`, or turn it off "
            "(--no-detokenize; a task's zeroshot.detokenize or finetune.detokenize: false); a model "
            "fine-tuned with it (its tunelab.json says detokenize: true) needs nltk to read its inputs"
        ) from exc
    return TreebankWordDetokenizer()


def detokenize(text: str) -> str:
    """`text` with Penn-Treebank tokenisation undone and, if it is all lowercase, the pronoun "i" and its
    first letter (when no digit comes before it) capitalised; a text of whitespace only comes back as it
    is."""
    if not text.strip():
        return text
    try:
        out = OPENING_QUOTE.sub(r"\1'", _detokenizer().detokenize(text.split()))
    except TimeoutError:  # nltk's guard against slow regexes (a wall-clock limit), on a huge text
        print(
            f"tunelab: warning: detokenize: nltk gave up on a text of {len(text)} characters: shown as read",
            file=sys.stderr,
        )
        return text
    if out == out.lower():
        out = PRONOUN_I.sub("I", out)
        if not CLITIC.match(out):
            out = FIRST_LETTER.sub(lambda m: m[1] + m[2].upper(), out)
    return out
