"""Property: whatever bytes a data file holds, reading it succeeds or raises DataError, nothing else."""

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.errors import DataError
from tunelab.tasks.builtin import task_for_file

SUFFIXES = st.sampled_from([".tsv", ".csv", ".jsonl", ".json"])

# Text that looks a little like the real formats, so the fuzzing gets past the first check.
PIECES = st.sampled_from(
    [
        "sentence",
        "label",
        "index",
        "text",
        "\t",
        ",",
        "\n",
        "\r\n",
        '"',
        "0",
        "1",
        "2",
        " ",
        "{",
        "}",
        "[",
        "]",
        ":",
        '"data"',
        '"sentence"',
        '"label"',
        '"qas"',
        '"context"',
        '"id"',
        '"answers"',
        '"answer_start"',
        '"text"',
        '"paragraphs"',
        "\x00",
        "\ufeff",
        "é",
    ]
)
LIKELY = st.lists(PIECES, max_size=40).map("".join)

# JSON values built from the SQuAD keys, so the validator sees many wrong shapes.
KEYS = st.sampled_from(
    [
        "version",
        "data",
        "title",
        "paragraphs",
        "context",
        "qas",
        "id",
        "question",
        "answers",
        "text",
        "answer_start",
        "is_impossible",
        "plausible_answers",
        "sentence",
        "label",
    ]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 60) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


def check(suffix: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        try:
            task = task_for_file(path)
            task.read(path)
            task.check_file(path)
        except DataError:
            pass


@settings(max_examples=150, deadline=None)
@given(SUFFIXES, st.binary(max_size=300))
def test_random_bytes(suffix, content):
    check(suffix, content)


@settings(max_examples=150, deadline=None)
@given(SUFFIXES, st.text(max_size=200) | LIKELY)
def test_random_text(suffix, text):
    check(suffix, text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(JSON, st.booleans())
def test_random_json_shapes(value, as_jsonl):
    if as_jsonl:
        check(
            ".jsonl",
            "\n".join(json.dumps(v) for v in (value if isinstance(value, list) else [value])).encode(),
        )
    else:
        check(".json", json.dumps(value).encode())
