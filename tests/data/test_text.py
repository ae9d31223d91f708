"""tunelab.data.text: the lone-surrogate check of JSON text, exact against a parse and a walk."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.data.text import find_surrogate, may_hold_lone_surrogates


def _lone(text: str) -> bool:
    return find_surrogate(json.loads(text)) is not None


def test_pairs_escaped_backslashes_and_lone_halves():
    cases = {
        '{"a": "x \\ud83d\\ude00 y"}': False,  # an emoji
        '{"a": "\\uD83D\\uDE00\\ud83d\\ude01"}': False,  # two, upper case
        '{"a": "\\\\ud800"}': False,  # a backslash, then letters
        '{"a": "\\\\\\ud800"}': True,  # a backslash, then a lone surrogate
        '{"a": "\\ud800"}': True,
        '{"a": "\\udc00"}': True,  # a low half alone
        '{"a": "\\ude00\\ud83d"}': True,  # the halves the wrong way round
        '{"a": "\\ud83d\\ud83d\\ude00"}': True,  # two highs, one low
        '{"a": "\\ud83d x\\ude00"}': True,  # not adjacent
        '{"\\ud800": 1}': True,  # in a key
        '{"a": "\\ud83d", "b": "\\ude00"}': True,  # halves of different strings
        '{"a": "plain"}': False,
    }
    for text, lone in cases.items():
        assert _lone(text) == lone, text  # the cases mean what they say
        assert may_hold_lone_surrogates(text) == lone, text


_pieces = st.sampled_from(["\\", "u", "d", "D", "8", "3", "e", "0", "x", '"', "\ud83d", "\ude00", "\ud800"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_pieces, max_size=12).map("".join), max_size=4), st.booleans())
def test_the_check_agrees_with_a_parse_and_a_walk(strings, ascii_only):
    text = json.dumps(
        {f"k{i}": s for i, s in enumerate(strings)} | {"list": strings}, ensure_ascii=ascii_only
    )
    if not ascii_only and any(find_surrogate(s) for s in strings):
        return  # such a str cannot be written as UTF-8 text at all
    assert may_hold_lone_surrogates(text) == _lone(text), text
