"""SQuAD-format reader: v1.1 and v2.0 schema, answer spans checked, every kind of broken file, and the Hub."""

import copy
import json
import os
import sys
from pathlib import Path

import pytest

from tunelab.data import SquadExample, read_squad, summarize_squad
from tunelab.errors import DataError, UsageError
from tunelab.tasks import get_task


def load_squad_hub(version, split):
    return get_task("squad").for_version(version).from_hub(split)


CONTEXT = "Southern California, often abbreviated SoCal, is a region."
V2 = {
    "version": "v2.0",
    "data": [
        {
            "title": "Southern_California",
            "paragraphs": [
                {
                    "context": CONTEXT,
                    "qas": [
                        {
                            "id": "q1",
                            "question": "How is Southern California abbreviated?",
                            "answers": [
                                {"text": "SoCal", "answer_start": 39},
                                {"text": "SoCal", "answer_start": 39},
                            ],
                            "is_impossible": False,
                        },
                        {
                            "id": "q2",
                            "question": "What is Northern California abbreviated as?",
                            "answers": [],
                            "is_impossible": True,
                            "plausible_answers": [{"text": "SoCal", "answer_start": 39}],
                        },
                    ],
                },
                {
                    "context": "It is a region.",
                    "qas": [
                        {
                            "id": "q3",
                            "question": "What is it?",
                            "answers": [{"text": "a region", "answer_start": 6}],
                        },
                    ],
                },
            ],
        },
        {
            "title": "Other",
            "paragraphs": [
                {
                    "context": "Nothing here.",
                    "qas": [
                        {"id": "q4", "question": "Is there anything?", "answers": [], "is_impossible": True},
                    ],
                },
            ],
        },
    ],
}


def write(tmp_path, doc, name="squad.json"):
    path = tmp_path / name
    if isinstance(doc, bytes):
        path.write_bytes(doc)
    elif isinstance(doc, str):
        path.write_text(doc, encoding="utf-8")
    else:
        path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_v2_file(tmp_path):
    examples = read_squad(write(tmp_path, V2))
    assert [ex.id for ex in examples] == ["q1", "q2", "q3", "q4"]
    q1, q2 = examples[0], examples[1]
    assert q1 == SquadExample(
        "q1",
        "Southern_California",
        CONTEXT,
        "How is Southern California abbreviated?",
        [{"text": "SoCal", "answer_start": 39}] * 2,
        False,
        [],
    )
    assert (
        q2.is_impossible
        and q2.answers == []
        and q2.plausible_answers == [{"text": "SoCal", "answer_start": 39}]
    )
    assert summarize_squad(examples) == {
        "articles": 2,
        "paragraphs": 3,
        "questions": 4,
        "unanswerable": 2,
        "version": "2.0",
    }


def test_v1_file_without_is_impossible(tmp_path):
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "abc def",
                        "qas": [
                            {"id": "a", "question": "q?", "answers": [{"text": "def", "answer_start": 4}]}
                        ],
                    }
                ],
            }
        ],
    }
    examples = read_squad(write(tmp_path, doc))
    assert examples == [SquadExample("a", "T", "abc def", "q?", [{"text": "def", "answer_start": 4}])]
    assert summarize_squad(examples)["version"] == "1.1"


def test_questions_to_predict_may_omit_answers(tmp_path):
    doc = broken(lambda d: [qa(d).pop("answers"), qa(d, paragraph=1).update(answers=[])])
    with pytest.raises(DataError, match="has no answers"):
        read_squad(write(tmp_path, doc))  # training and evaluation data must have them
    examples = read_squad(write(tmp_path, doc), require_answers=False)
    assert [(ex.id, ex.answers) for ex in examples][::2] == [("q1", []), ("q3", [])]
    # answers that are given are still checked
    doc = broken(lambda d: [qa(d).pop("answers"), qa(d, paragraph=1).update(answers=[{"text": "x"}])])
    with pytest.raises(DataError, match="answer_start must be an integer") as info:
        read_squad(write(tmp_path, doc), require_answers=False)
    assert info.value.record == "q3"


def qa(doc, article=0, paragraph=0, question=0):
    return doc["data"][article]["paragraphs"][paragraph]["qas"][question]


def broken(change):
    doc = copy.deepcopy(V2)
    change(doc)
    return doc


BROKEN = [
    # (document, record id or None, words the message must hold)
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal", "answer_start": 38}])),
        "q1",
        (
            "answers[0]: answer_start 38 does not point at the answer text 'SoCal'"
            " (the context there reads ' SoCa')"
        ),
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal", "answer_start": 500}])),
        "q1",
        "answer_start 500 is past the end of the context (",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal", "answer_start": -1}])),
        "q1",
        "answer_start -1 is negative (it is the answer's character offset in the context, 0 or more)",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal", "answer_start": "39"}])),
        "q1",
        'answer_start must be an integer, got "39"',
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal", "answer_start": 39.0}])),
        "q1",
        "answer_start must be an integer, got 39.0",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "SoCal"}])),
        "q1",
        "answer_start must be an integer, got null",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": "", "answer_start": 0}])),
        "q1",
        "answer text is missing or empty",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": " ", "answer_start": 0}])),
        "q1",
        "answer text is missing or empty",
    ),
    (
        broken(lambda d: qa(d).update(answers=[{"text": 5, "answer_start": 0}])),
        "q1",
        "answers[0]: answer text must be a string, got 5",
    ),
    (broken(lambda d: qa(d).update(answers=["SoCal"])), "q1", "answers[0] must be an object, got str"),
    (broken(lambda d: qa(d).update(answers="SoCal")), "q1", "'answers' must be a list, got str"),
    (
        broken(lambda d: qa(d).update(answers=[])),
        "q1",
        "answerable question (is_impossible false or absent) has no answers",
    ),
    (broken(lambda d: qa(d).pop("answers")), "q1", "has no answers"),
    (
        broken(lambda d: qa(d, question=1).update(answers=[{"text": "SoCal", "answer_start": 39}])),
        "q2",
        "question is marked is_impossible but has 1 answer(s)",
    ),
    (
        broken(lambda d: qa(d, question=1).update(plausible_answers=[{"text": "SoCal", "answer_start": 0}])),
        "q2",
        "plausible_answers[0]: answer_start 0 does not point",
    ),
    (
        broken(lambda d: qa(d).update(is_impossible="no")),
        "q1",
        'is_impossible must be true or false, got "no"',
    ),
    (
        broken(lambda d: qa(d).update(question="   ")),
        "q1",
        "question is empty (at data[0].paragraphs[0].qas[0])",
    ),
    (broken(lambda d: qa(d).pop("question")), "q1", "question is missing"),
    (broken(lambda d: qa(d).update(question=7)), "q1", "question is not a string"),
    (
        broken(lambda d: qa(d, paragraph=1).update(id="q1")),
        "q1",
        (
            "duplicate question id (first seen at data[0].paragraphs[0].qas[0],"
            " again at data[0].paragraphs[1].qas[0])"
        ),
    ),
    (
        broken(lambda d: qa(d, question=1).pop("id")),
        None,
        "data[0].paragraphs[0].qas[1]: question id is missing",
    ),
    (
        broken(lambda d: qa(d, article=1).update(id="")),
        None,
        "data[1].paragraphs[0].qas[0]: question id is empty",
    ),
    (
        broken(lambda d: qa(d).update(id=12)),
        None,
        "data[0].paragraphs[0].qas[0]: question id must be a string, got 12",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"][1].pop("context")),
        None,
        "data[0].paragraphs[1]: context is missing",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"][1].update(context=" ")),
        None,
        "data[0].paragraphs[1]: context is empty",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"][1].update(context=["x"])),
        None,
        "data[0].paragraphs[1]: context is not a string",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"][1].pop("qas")),
        None,
        "data[0].paragraphs[1]: 'qas' is missing",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"].__setitem__(0, "text")),
        None,
        "data[0].paragraphs[0]: expected an object, got str",
    ),
    (
        broken(lambda d: d["data"][0]["paragraphs"][0]["qas"].__setitem__(0, [])),
        None,
        "data[0].paragraphs[0].qas[0]: expected an object, got list",
    ),
    (
        broken(lambda d: d["data"][1].update(paragraphs={})),
        None,
        "data[1]: 'paragraphs' is a dict, not a list",
    ),
    (broken(lambda d: d["data"][1].update(title=None)), None, "data[1]: 'title' must be a string"),
    (broken(lambda d: d["data"].__setitem__(1, 5)), None, "data[1]: expected an object, got int"),
    (broken(lambda d: d.pop("data")), None, "top-level 'data' is missing (is this a SQuAD file?)"),
    (broken(lambda d: d.update(data={})), None, "top-level 'data' is a dict, not a list"),
    (broken(lambda d: d.update(data=[])), None, "no questions in the file"),
    ([1, 2], None, "top level must be a JSON object with a 'data' list, got list"),
]


@pytest.mark.parametrize("doc, record, problem", BROKEN)
def test_broken_files_name_file_record_and_problem(tmp_path, doc, record, problem):
    path = write(tmp_path, doc)
    with pytest.raises(DataError) as info:
        read_squad(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert problem in message
    assert info.value.record == record
    if record is not None:
        assert f"record {record!r}:" in message


@pytest.mark.parametrize(
    "content, line, problem",
    [
        (
            '{"version": "1.1",\n "data": [\n  {"title": "x",}\n]}',
            3,
            "not valid JSON: Expecting property name",
        ),
        ('{"data": []', 1, "not valid JSON"),
        ('{"version": "1.1", "data": [], "data": []}', None, "the key 'data' is given twice"),
        (b'{"version": "1.1",\n"data": ["\xc3\x28"]}', 2, "not valid UTF-8 (byte 0xc3)"),
        ("", None, "file is empty"),
        ("  \n", None, "file is empty"),
    ],
)
def test_unreadable_files_name_the_line(tmp_path, content, line, problem):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as info:
        read_squad(path)
    assert str(info.value).startswith(str(path))
    assert problem in str(info.value)
    assert info.value.line == line
    if line is not None:
        assert f"line {line}:" in str(info.value)


def test_json_error_gives_the_column(tmp_path):
    path = write(tmp_path, '{"data": [}')
    with pytest.raises(DataError, match=r"line 1: not valid JSON: .*\(column 11\)"):
        read_squad(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_squad(tmp_path / "missing.json")


# --- Hub datasets: the split and id mapping, and rows in the Hub's layout read by the real `datasets` ---

HUB_ROWS = [
    {
        "id": "a",
        "title": "T",
        "context": "abc def",
        "question": "q?",
        "answers": {"text": ["def"], "answer_start": [4]},
    },
    {
        "id": "b",
        "title": "T",
        "context": "abc def",
        "question": "r?",
        "answers": {"text": [], "answer_start": []},
    },
]


def test_hub_ids_and_splits():
    from tunelab.data.hub import DatasetRef

    v2, v1 = get_task("squad").for_version("2.0"), get_task("squad")
    assert (v2.hub.dataset, v2.hub.config) == ("rajpurkar/squad_v2", "squad_v2")
    assert v2.dataset_split("dev", DatasetRef("rajpurkar/squad_v2")) == "validation"
    assert (v1.hub.dataset, v1.dataset_split("train", DatasetRef("rajpurkar/squad"))) == (
        "rajpurkar/squad",
        "train",
    )


def test_hub_rows_convert(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(HUB_ROWS)}).save_to_disk(
        str(tmp_path / "d")
    )
    examples, _ = get_task("squad").load_split("dev", dataset=str(tmp_path / "d"))
    assert examples == [
        SquadExample("a", "T", "abc def", "q?", [{"text": "def", "answer_start": 4}], False),
        SquadExample("b", "T", "abc def", "r?", [], True),
    ]
    bad = [{**HUB_ROWS[0], "answers": {"text": ["xyz"], "answer_start": [4]}}]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "b"))
    with pytest.raises(DataError, match=r"\[validation\], record 'a': answers\[0\]: answer_start 4"):
        get_task("squad").load_split("dev", dataset=str(tmp_path / "b"))


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(UsageError, match="needs the `datasets` package"):
        load_squad_hub("1.1", "dev")


@pytest.mark.parametrize(
    "version, split, problem",
    [("3.0", "dev", "unknown SQuAD version"), ("2.0", "test", "unknown SQuAD v2.0 split .test.")],
)
def test_hub_bad_arguments(version, split, problem):
    with pytest.raises(UsageError, match=problem):
        load_squad_hub(version, split)


# --- the real files, when the data folder is known ---

DATA = os.environ.get("TUNELAB_DATA_DIR")


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
@pytest.mark.parametrize(
    "name, articles, questions, unanswerable, version",
    [
        ("v1.1-dev.json", 48, 10_570, 0, "1.1"),  # the official dev-v1.1.json
        ("v1.1-train.json", 442, 87_599, 0, "1.1"),  # SQuAD v1.1 train (rebuilt)
        ("v2.0-dev.json", 7, 2_650, 1_204, "2.0"),
        ("v2.0-train.json", 28, 9_223, 4_741, "2.0"),
    ],
)
def test_real_files(name, articles, questions, unanswerable, version):
    summary = summarize_squad(read_squad(Path(DATA) / "squad" / name))
    assert (summary["articles"], summary["questions"], summary["unanswerable"], summary["version"]) == (
        articles,
        questions,
        unanswerable,
        version,
    )
