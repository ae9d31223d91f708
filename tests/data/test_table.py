"""Classification files (tunelab.data.table) as SST-2 reads them: the GLUE TSV layout, CSV and JSONL, every
kind of broken file, and the Hub."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tunelab.data.table import Columns, LabelSet, TextExample, read_table
from tunelab.errors import DataError, UsageError
from tunelab.tasks import get_task

SST2 = get_task("sst2")
SST2Example = TextExample
read_sst2 = SST2.read
summarize_sst2 = SST2.summarize
LABEL_RULE = "label must be 0 or 1 or a label name (negative, positive)"


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_glue_tsv(tmp_path):
    # GLUE style: trailing space after the sentence, bare quotes, header sentence<TAB>label.
    path = write(tmp_path, "dev.tsv", 'sentence\tlabel\nit \'s a "charming" journey . \t1\nbleak \t0\n')
    assert read_sst2(path) == [SST2Example('it \'s a "charming" journey .', 1, 2), SST2Example("bleak", 0, 3)]


def test_tsv_columns_in_other_order_with_index(tmp_path):
    path = write(tmp_path, "x.tsv", "label\tindex\tsentence\n0\t7\tdull .\n\n1\t8\tfun .\n")
    assert read_sst2(path) == [SST2Example("dull .", 0, 2), SST2Example("fun .", 1, 4)]


def test_tsv_test_file_without_labels(tmp_path):
    path = write(
        tmp_path,
        "test.tsv",
        "index\tsentence\n0\tuneasy mishmash .\n1\ta poor -- if durable -- imitation .\n",
    )
    examples = read_sst2(path)
    assert [ex.label for ex in examples] == [None, None]
    assert summarize_sst2(examples) == {"rows": 2, "labelled": 0, "labels": {"negative": 0, "positive": 0}}


def test_tsv_crlf_and_bom(tmp_path):
    path = write(tmp_path, "x.tsv", "\ufeffsentence\tlabel\r\ngood\t1\r\n".encode())
    assert read_sst2(path) == [SST2Example("good", 1, 2)]


def test_csv_with_quotes_and_multiline_field(tmp_path):
    path = write(tmp_path, "x.csv", 'label,sentence\n1,"a ""great"", film"\n0,"two\nlines"\n1,last\n')
    assert read_sst2(path) == [
        SST2Example('a "great", film', 1, 2),
        SST2Example("two\nlines", 0, 3),
        SST2Example("last", 1, 5),
    ]


def test_csv_lines_count_newlines_only_as_grep_does(tmp_path):
    # a lone \r inside a quoted field (or a CRLF) is no extra line: line numbers agree with grep -n
    path = write(tmp_path, "x.csv", 'sentence,label\r\n"a\rb",1\r\n"c\r\nd",0\nlast,7\n')
    with pytest.raises(DataError, match=rf"x\.csv, line 5: {re.escape(LABEL_RULE)}, got '7'"):
        read_sst2(path)
    path = write(tmp_path, "y.csv", 'sentence,label\n"a\rb",1\n"c\r\nd",0\nlast,1\n')
    assert [ex.line for ex in read_sst2(path)] == [2, 3, 5]


def test_jsonl(tmp_path):
    lines = [{"sentence": " good ", "label": 1}, {"text": "bad", "label": "0"}, {"sentence": "unlabelled"}]
    path = write(tmp_path, "x.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    examples = read_sst2(path)
    assert examples == [
        SST2Example("good", 1, 1),
        SST2Example("bad", 0, 2),
        SST2Example("unlabelled", None, 3),
    ]
    assert summarize_sst2(examples) == {"rows": 3, "labelled": 2, "labels": {"negative": 1, "positive": 1}}


BROKEN = [
    # (file name, content, line or None, words the message must hold)
    ("a.tsv", "sentence\tlabel\ngood\t2\n", 2, f"{LABEL_RULE}, got '2'"),
    ("a.tsv", "sentence\tlabel\ngood\t1\nbad\tpos\n", 3, f"{LABEL_RULE}, got 'pos'"),
    ("a.tsv", "sentence\tlabel\ngood\t\n", 2, f"{LABEL_RULE}, got ''"),
    ("a.tsv", "sentence\tlabel\n \t1\n", 2, "sentence is empty"),
    ("a.tsv", "sentence\tlabel\ngood\t1\nsplit\tby\ta tab\t0\n", 3, "expected 2 tab-separated fields"),
    ("a.tsv", "sentence\tlabel\nno label column here\n", 2, "expected 2 tab-separated fields"),
    ("a.tsv", "good movie\t1\nbad movie\t0\n", 1, "header must name a 'sentence' column"),
    ("a.tsv", "text\tlabel\ngood\t1\n", 1, "header must name a 'sentence' column"),
    ("a.tsv", "sentence\tsentence\na\tb\n", 1, "column 'sentence' appears twice"),
    ("a.tsv", "", None, "file is empty"),
    ("a.tsv", "\n\n", None, "file is empty"),
    ("a.tsv", "sentence\tlabel\n", None, "no rows after the header"),
    ("a.tsv", b"sentence\tlabel\ngood\t1\ncaf\xe9\t0\n", 3, "not valid UTF-8 (byte 0xe9)"),
    ("a.csv", "sentence,label\ngood,1\nbad,3\n", 3, f"{LABEL_RULE}, got '3'"),
    ("a.csv", "sentence,label\ngood,1,extra\n", 2, "expected 2 comma-separated fields"),
    ("a.csv", 'sentence,label\n"unclosed,1\n', 2, "cannot parse the row"),
    ("a.csv", 'sentence,label\n"a"b,1\n', 2, "cannot parse the row"),
    ("a.csv", "label\n1\n", 1, "header must name a 'sentence' column"),
    ("a.jsonl", '{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": 1\n', 2, "not valid JSON"),
    ("a.jsonl", '{"sentence": "good", "label": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    ("a.jsonl", '"just a string"\n', 1, "expected a JSON object, got str"),
    ("a.jsonl", '{"sentence": "a", "label": 1, "label": 0}\n', 1, "the key 'label' is given twice"),
    ("a.jsonl", '{"label": 1}\n', 1, "no 'sentence' (or 'text') field"),
    ("a.jsonl", '{"sentence": 5, "label": 1}\n', 1, "'sentence' must be a string, got int"),
    ("a.jsonl", '{"sentence": "x", "label": 2}\n', 1, f"{LABEL_RULE}, got '2'"),
    ("a.jsonl", '{"sentence": "x", "label": "pos"}\n', 1, f"{LABEL_RULE}, got 'pos'"),
    ("a.jsonl", '{"sentence": "x", "label": true}\n', 1, f"{LABEL_RULE}, got true"),
    ("a.jsonl", '{"sentence": "x", "label": 1.0}\n', 1, f"{LABEL_RULE}, got 1.0"),
    ("a.jsonl", '{"sentence": "x", "label": [1]}\n', 1, f"{LABEL_RULE}, got list"),
    ("a.jsonl", '{"text": "  ", "label": 1}\n', 1, "sentence is empty"),
    ("a.jsonl", b'{"text": "ok", "label": 1}\n\n{"text": "\xff", "label": 1}\n', 3, "not valid UTF-8"),
    ("a.jsonl", "\n \n", None, "file is empty"),
    ("a.txt", "sentence\tlabel\ngood\t1\n", None, "unknown SST-2 file type '.txt'"),
    ("a.tsv", "sentence\tlabel\ngood\tneutral\n", 2, f"{LABEL_RULE}, got 'neutral'"),
]


@pytest.mark.parametrize("name, content, line, problem", BROKEN)
def test_broken_files_name_file_line_and_problem(tmp_path, name, content, line, problem):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_sst2(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert problem in message
    assert info.value.line == line
    if line is not None:
        assert f"line {line}:" in message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        read_sst2(tmp_path / "nope.tsv")
    assert str(tmp_path / "nope.tsv") in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.tsv").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        read_sst2(tmp_path / "d.tsv")


# --- the Hugging Face Hub (real `datasets` reads: tests/data/test_hub_datasets.py) ---


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(UsageError, match="needs the `datasets` package"):
        SST2.from_hub("validation")


def test_hub_maps_dev_to_validation():
    from tunelab.data.hub import DatasetRef

    assert (SST2.hub.dataset, SST2.hub.config) == ("nyu-mll/glue", "sst2")
    assert SST2.dataset_split("dev", DatasetRef("nyu-mll/glue", "sst2")) == "validation"
    # rows read by the real `datasets`: tests/data/test_hub_datasets.py


def test_hub_unknown_split():
    with pytest.raises(UsageError, match="unknown SST-2 split 'eval'"):
        SST2.from_hub("eval")


# --- the real GLUE files, when the data folder is known ---

DATA = os.environ.get("TUNELAB_DATA_DIR")
real = pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")


@real
@pytest.mark.parametrize(
    "split, rows, labels",
    [
        ("dev", 872, {"0": 428, "1": 444}),
        ("train", 67_349, {"0": 29_780, "1": 37_569}),
        ("test", 1_821, {"0": 0, "1": 0}),
    ],
)
def test_real_glue_files(split, rows, labels):
    examples = read_sst2(Path(DATA) / "SST-2" / f"{split}.tsv")
    summary = summarize_sst2(examples)
    assert summary == {
        "rows": rows,
        "labelled": labels["0"] + labels["1"],
        "labels": {"negative": labels["0"], "positive": labels["1"]},
    }
    assert all(ex.text == ex.text.strip() and ex.text for ex in examples)
    assert examples[0].line == 2 and examples[-1].line == rows + 1


# --- what SST-2 does not use: label names, sentence pairs, other columns, many labels ---


def test_names_numbers_pairs_and_many_labels(tmp_path):
    labels = LabelSet(("ABBR", "DESC", "ENTY"))
    path = write(
        tmp_path, "t.tsv", "question\tlabel\nwhat is it ?\tDESC\nwho ?\t2\nhm\t\n".replace("\t\n", "\tABBR\n")
    )
    assert read_table(path, Columns("question"), labels) == [
        TextExample("what is it ?", 1, 2),
        TextExample("who ?", 2, 3),
        TextExample("hm", 0, 4),
    ]
    bad = write(tmp_path, "b.tsv", "question\tlabel\nx\tHUM\n")
    with pytest.raises(
        DataError, match=r"line 2: label must be 0-2 or a label name \(ABBR, DESC, ENTY\), got 'HUM'"
    ):
        read_table(bad, Columns("question"), labels)
    pairs = Columns("sentence1", "sentence2")
    rte = LabelSet(("entailment", "not_entailment"))
    path = write(
        tmp_path, "p.jsonl", json.dumps({"sentence1": "a", "sentence2": "b", "label": "entailment"}) + "\n"
    )
    assert read_table(path, pairs, rte) == [TextExample("a", 0, 1, "b")]
    path = write(tmp_path, "p.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError, match="header must name a 'sentence2' column"):
        read_table(path, pairs, rte)
    path = write(tmp_path, "q.jsonl", json.dumps({"sentence1": "a", "label": 0}) + "\n")
    with pytest.raises(DataError, match="line 1: object has no 'sentence2' field"):
        read_table(path, pairs, rte)
    path = write(tmp_path, "e.tsv", "sentence1\tsentence2\tlabel\na\t \t1\n")
    with pytest.raises(DataError, match="line 2: sentence2 is empty"):
        read_table(path, pairs, rte)


def test_label_numbers_are_ascii_indices_and_never_indices_when_the_names_are_numbers(tmp_path):
    """A label is a name, or an index written in ASCII digits: "²" and "٣" pass str.isdigit but are no
    index, and 5,000 nines are refused, not handed to int(). Where the names are numbers themselves
    ([-1, 1], star ratings), a number is a name only: an undeclared 0 is an error, not the first label."""
    trec = LabelSet(("ABBR", "DESC", "ENTY", "HUM"))
    for value in ("²", "٣", "１", "9" * 5000, "-1"):
        path = write(tmp_path, "t.tsv", f"question\tlabel\nwhat ?\t{value}\n")
        with pytest.raises(DataError, match=r"line 2: label must be 0-3 or a label name"):
            read_table(path, Columns("question"), trec)
    assert trec.parse("03") == 3
    polarity = LabelSet(("-1", "1"))
    assert polarity.rule() == "one of -1, 1"
    path = write(tmp_path, "p.tsv", "text\tlabel\ngood\t1\nbad\t-1\nso-so\t0\n")
    with pytest.raises(DataError, match=r"line 4: label must be one of -1, 1, got '0'"):
        read_table(path, Columns("text"), polarity)
    stars = LabelSet(("1", "2", "3", "4", "5"))
    assert [stars.parse(v) for v in ("1", "5", "0")] == [0, 4, None]


def test_a_label_column_the_task_does_not_name_is_an_error_not_an_unlabelled_file(tmp_path):
    """The task reads labels from 'coarse', the file calls them 'label': reading it as unlabelled would
    silently score nothing. A file with no label-like column at all is unlabelled, as before."""
    columns = Columns("question", None, "coarse")
    labels = LabelSet(("ABBR", "DESC"))
    for name, content, line in [
        ("t.tsv", "question\tlabel\nwhat ?\tDESC\n", 1),
        ("t.csv", "question,Label\nwhat ?,DESC\n", 1),
        ("t.jsonl", '{"question": "what ?", "coarse": "DESC"}\n{"question": "who ?", "label": "ABBR"}\n', 2),
    ]:
        path = write(tmp_path, name, content)
        with pytest.raises(DataError, match=rf"line {line}: the task's label column is 'coarse'.*data.label"):
            read_table(path, columns, labels)
    path = write(tmp_path, "u.tsv", "index\tquestion\n0\twhat ?\n")
    assert read_table(path, columns, labels) == [TextExample("what ?", None, 2)]


def test_a_dataset_whose_labels_include_minus_one_keeps_its_minus_one_rows(tmp_path):
    """GLUE marks unlabelled rows with -1; a task whose labels are -1 and 1 reads -1 as a label."""
    from tunelab.tasks import load_task

    spec = write(
        tmp_path, "polarity.yaml", "kind: classification\nlabels: [-1, 1]\ndata: {splits: {dev: x.tsv}}\n"
    )
    task = load_task(str(spec))
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": -1}]
    assert [ex.label for ex in task.from_rows(rows, "ds", {"text": "text"})] == [1, 0]
    assert [ex.label for ex in SST2.from_rows([{"sentence": "x", "label": -1}], "ds", {})] == [None]
