"""`tunelab predict`: labels and probabilities from tiny fine-tuned SST-2 folders, answers from SQuAD ones."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import PLAIN_SPEC, SQUAD, SST2, qa_examples, sst2_examples, tiny_train_config

from tunelab import runs
from tunelab.cli import COMMANDS, build_parser
from tunelab.data.squad import SquadExample
from tunelab.errors import DataError, UsageError
from tunelab.runs import load_finetuned
from tunelab.tasks.classification import ClassificationPrompt, classify, format_input
from tunelab.tasks.extractive_qa.spans import predict_spans

LABELS = SST2.labels

TEXTS = ["a great film", "an awful , truly awful movie", "the review", "café naïve 中文 😀"]


@pytest.fixture(scope="module")
def sst2_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "sst2"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        runs.finetune(
            SST2,
            tiny_model_dir,
            sst2_examples(24),
            sst2_examples(6, seed=1),
            "fixture",
            out,
            tiny_train_config(epochs=2),
            {"input_prompt": PLAIN_SPEC, "detokenize": False},  # texts as given (detokenize: its own tests)
        )
    return str(out)


@pytest.fixture(scope="module")
def squad_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "squad"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        runs.finetune(
            SQUAD,
            tiny_model_dir,
            qa_examples(9),
            qa_examples(3),
            "fixture",
            out,
            tiny_train_config(method="lora", batch_size=4, max_length=64, epochs=1),
        )
    return str(out)


def cli(argv):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def reference_probs(model_dir, texts):
    model, tok, meta, _ = load_finetuned(model_dir, SST2)
    prompt = ClassificationPrompt(**meta["input_prompt"])
    return np.exp(
        classify(
            model, tok, [format_input(prompt, tok, t) for t in texts], meta["max_length"], progress=False
        )
    )


# ------------------------------------------------------------------------------------------------------------
# SST-2


def test_text_output_matches_classify(sst2_dir, capsys):
    assert cli(["predict", sst2_dir, *TEXTS]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == len(TEXTS)
    probs = reference_probs(sst2_dir, TEXTS)
    for line, text, p in zip(lines, TEXTS, probs, strict=True):
        label, prob, shown = line.split("\t")
        assert shown == text
        assert label == LABELS[int(p.argmax())]
        assert float(prob) == pytest.approx(p.max(), abs=1e-4)


def test_json_output_parses_and_matches(sst2_dir, capsys):
    assert cli(["predict", sst2_dir, *TEXTS, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "sst2" and len(doc["predictions"]) == len(TEXTS)
    probs = reference_probs(sst2_dir, TEXTS)
    for row, text, p in zip(doc["predictions"], TEXTS, probs, strict=True):
        assert row["text"] == text and row["label"] == LABELS[int(p.argmax())]
        assert row["probability"] == pytest.approx(p.max(), abs=1e-6)
        assert row["scores"]["positive"] == pytest.approx(p[1], abs=1e-6)
        assert sum(row["scores"].values()) == pytest.approx(1.0)


def test_batch_size_auto_gives_the_same_predictions(sst2_dir, squad_dir, capsys):
    for folder, argv in ((sst2_dir, TEXTS), (squad_dir, ["--question", "Who?", "--context", "Ann met Bob."])):
        assert cli(["predict", folder, *argv, "--json"]) == 0
        fixed = json.loads(capsys.readouterr().out)["predictions"]
        assert cli(["predict", folder, *argv, "--json", "--batch-size", "auto"]) == 0
        auto = json.loads(capsys.readouterr().out)["predictions"]
        key = "label" if folder == sst2_dir else "answer"
        assert [r[key] for r in auto] == [r[key] for r in fixed]
    with pytest.raises(UsageError, match=r"--batch-size must be an integer in \[1, 65536\] or auto"):
        cli(["predict", sst2_dir, "x", "--batch-size", "lots"])


def test_file_inputs(sst2_dir, tmp_path, capsys):
    lines = tmp_path / "sentences.txt"
    lines.write_text("a great film\n\n  \nthe awful review\n")
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\na great film\t1\nthe awful review\t0\n")
    assert cli(["predict", sst2_dir, "--file", str(lines), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["text"] for r in rows] == ["a great film", "the awful review"] and "gold" not in rows[0]
    assert cli(["predict", sst2_dir, "extra one", "--file", str(tsv), "--json"]) == 0
    rows2 = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["text"] for r in rows2] == ["extra one", "a great film", "the awful review"]
    assert [r.get("gold") for r in rows2] == [None, "positive", "negative"]
    assert rows2[1]["probability"] == pytest.approx(rows[0]["probability"], abs=1e-6)


def test_standard_input_is_read_as_strict_utf8(sst2_dir, squad_dir, monkeypatch, capsys):
    """`--file -` reads standard input as a file is read: bad bytes are refused with the line, not handed
    to the tokenizer as surrogates."""
    import io

    def stdin(data: bytes):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    stdin(b"a great film\n\nthe awful review\n")
    assert cli(["predict", sst2_dir, "--file", "-", "--json"]) == 0
    assert [r["text"] for r in json.loads(capsys.readouterr().out)["predictions"]] == [
        "a great film",
        "the awful review",
    ]
    stdin(b"fine\ncaf\xe9 ?\n")
    with pytest.raises(DataError, match=r"^-, line 2: not valid UTF-8 \(byte 0xe9\)"):
        cli(["predict", sst2_dir, "--file", "-"])
    stdin(b'{"context": "caf\xe9", "question": "q"}\n')
    with pytest.raises(DataError, match=r"^-, line 1: not valid UTF-8"):
        cli(["predict", squad_dir, "--file", "-"])
    stdin(b'{\n  "version": "1.1",\n  "data": []\n}\n')
    with pytest.raises(DataError, match=r"a SQuAD .json document is read from its file \(--file FILE.json\)"):
        cli(["predict", squad_dir, "--file", "-"])


def test_sst2_input_errors(sst2_dir, tmp_path):
    with pytest.raises(UsageError, match="nothing to classify"):
        cli(["predict", sst2_dir])
    with pytest.raises(UsageError, match="not --question"):
        cli(["predict", sst2_dir, "--question", "q", "--context", "c"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t7\n")
    with pytest.raises(DataError, match="line 2"):
        cli(["predict", sst2_dir, "--file", str(bad)])
    with pytest.raises(UsageError, match="tunelab.json"):
        cli(["predict", str(tmp_path), "a sentence"])
    with pytest.raises(UsageError, match=r"missing: no such folder$"):
        cli(["predict", str(tmp_path / "missing"), "a sentence"])
    with pytest.raises(UsageError, match=r"bad.tsv: not a folder$"):
        cli(["predict", str(bad), "a sentence"])
    with pytest.raises(UsageError, match="batch-size"):
        cli(["predict", sst2_dir, "x", "--batch-size", "0"])


# ------------------------------------------------------------------------------------------------------------
# SQuAD


def test_squad_question_context(squad_dir, capsys):
    ctx = qa_examples(1)[0].context
    assert (
        cli(
            [
                "predict",
                squad_dir,
                "--question",
                "Who won ?",
                "--question",
                "What was it ?",
                "--context",
                ctx,
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["question"] for r in rows] == ["Who won ?", "What was it ?"]
    model, tok, meta, _ = load_finetuned(squad_dir, SQUAD)
    exs = [
        SquadExample(id=f"x{i}", title="", context=ctx, question=q, answers=[])
        for i, q in enumerate(["Who won ?", "What was it ?"])
    ]
    preds, nbest, _ = predict_spans(model, tok, exs, meta["max_length"], meta["stride"], progress=False)
    for row, ex in zip(rows, exs, strict=True):
        assert row["answer"] == preds[ex.id] and row["answer"] in ctx
        assert row["score"] == pytest.approx(nbest[ex.id][0]["score"], abs=1e-4)
        assert ctx[row["start"] : row["end"]] == row["answer"]
        assert 0 < row["probability"] <= 1
    assert cli(["predict", squad_dir, "--question", "Who won ?", "--context", ctx]) == 0
    answer, prob, _score, question = capsys.readouterr().out.rstrip("\n").split("\t")
    assert answer == rows[0]["answer"] and question == "Who won ?"
    assert float(prob) == pytest.approx(rows[0]["probability"], abs=1e-4)


def test_squad_files(squad_dir, tmp_path, capsys):
    ctx = qa_examples(1)[0].context
    jsonl = tmp_path / "qs.jsonl"
    jsonl.write_text(
        json.dumps({"id": "mine", "context": ctx, "question": "Who won ?"})
        + "\n\n"
        + json.dumps({"context": ctx, "question": "What was it ?"})
        + "\n"
    )
    squad_json = tmp_path / "dev.json"
    squad_json.write_text(
        json.dumps(
            {
                "version": "1.1",
                "data": [
                    {
                        "title": "t",
                        "paragraphs": [
                            {
                                "context": ctx,
                                "qas": [
                                    {
                                        "id": "s1",
                                        "question": "Who won ?",
                                        "answers": [
                                            {"text": "Denver Broncos", "answer_start": ctx.index("Denver")}
                                        ],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    assert cli(["predict", squad_dir, "--file", str(jsonl), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["id"] for r in rows] == ["mine", "line3"]
    assert cli(["predict", squad_dir, "--file", str(squad_json), "--json"]) == 0
    rows2 = json.loads(capsys.readouterr().out)["predictions"]
    assert rows2[0]["id"] == "s1" and rows2[0]["answer"] == rows[0]["answer"]


def test_a_squad_file_of_questions_without_answers(squad_dir, tmp_path, capsys):
    ctx = qa_examples(1)[0].context
    qas = [{"id": "s1", "question": "Who won ?"}, {"id": "s2", "question": "Where ?", "answers": []}]
    doc = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": qas}]}]}
    path = tmp_path / "questions.json"
    path.write_text(json.dumps(doc))
    assert cli(["predict", squad_dir, "--file", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["id"] for r in rows] == ["s1", "s2"]
    qas[0]["answers"] = [{"text": "nowhere in it", "answer_start": 0}]  # answers given are still checked
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="does not point at the answer text") as info:
        cli(["predict", squad_dir, "--file", str(path)])
    assert info.value.record == "s1"


def test_squad_input_errors(squad_dir, tmp_path):
    with pytest.raises(UsageError, match="--question and --context"):
        cli(["predict", squad_dir, "--question", "q"])
    with pytest.raises(UsageError, match="answers questions"):
        cli(["predict", squad_dir, "a sentence"])
    with pytest.raises(UsageError, match="nothing to answer"):
        cli(["predict", squad_dir])
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"context": "c", "question": "q"}\n{"context": "c"}\n')
    with pytest.raises(DataError, match="line 2.*question"):
        cli(["predict", squad_dir, "--file", str(bad)])
    txt = tmp_path / "q.txt"
    txt.write_text("x\n")
    with pytest.raises(DataError, match="unknown file type"):
        cli(["predict", squad_dir, "--file", str(txt)])
    with pytest.raises(
        UsageError, match="input 'q1'.*max_length"
    ):  # a question longer than the model's window
        cli(["predict", squad_dir, "--question", "why " * 80, "--context", "some passage ."])


def test_evaluate_with_a_question_too_long_for_the_windows_is_one_message(squad_dir, tmp_path, capsys):
    """`tunelab evaluate` on a question longer than the windows the model was fine-tuned on: exit 2 with one
    message saying the model's window (it cannot raise max_length), as predict and finetune do."""
    from tunelab.cli import main

    qas = [{"id": "long", "question": "why " * 80, "answers": [{"text": "some", "answer_start": 0}]}]
    doc = {
        "version": "1.1",
        "data": [{"title": "t", "paragraphs": [{"context": "some passage .", "qas": qas}]}],
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "ev"
    assert main(["evaluate", squad_dir, "--data-file", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "question of example 'long' takes" in err and "this model reads windows of 64 tokens" in err, err
    assert "Traceback" not in err and not out.exists()


def test_every_input_is_one_line_of_columns(sst2_dir, squad_dir, tmp_path, capsys):
    """Tabs, line breaks and backslashes inside a text or question are escaped in the text output, so each
    input stays one tab-separated line (--json keeps them as they are)."""
    odd = tmp_path / "odd.jsonl"
    odd.write_text(
        json.dumps({"text": "first line\nsecond\tpart \\ end"}) + "\n" + json.dumps({"text": "ok"}) + "\n"
    )
    assert cli(["predict", sst2_dir, "--file", str(odd)]) == 0
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert len(lines) == 2 and lines[0].split("\t")[2] == "first line\\nsecond\\tpart \\\\ end"
    assert cli(["predict", sst2_dir, "--file", str(odd), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["text"] == "first line\nsecond\tpart \\ end"
    assert cli(["predict", squad_dir, "--question", "Who\nwon?", "--context", "Ann won the race ."]) == 0
    (line,) = capsys.readouterr().out.rstrip("\n").split("\n")
    assert line.split("\t")[3] == "Who\\nwon?"


def test_a_reader_that_goes_away_ends_predict_quietly(sst2_dir, tmp_path):
    """`tunelab predict ... | head -1`: a broken pipe is no traceback; the exit status is 141 (SIGPIPE)."""
    import os
    import subprocess
    import sys

    many = tmp_path / "many.txt"
    many.write_text("a fine film\n" * 3000)
    env = {**os.environ, "TUNELAB_CPU_BF16": "off"}
    cmd = f"{sys.executable} -m tunelab predict {sst2_dir} --file {many} | head -1; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 141


def test_an_empty_text_in_a_pair_file_names_its_line(tiny_model_dir, tmp_path):
    from tunelab.tasks import load_task

    task = tmp_path / "pair.yaml"
    task.write_text("kind: classification\nlabels: [same, other]\ndata: {text: a, text_pair: b}\n")
    pairs = tmp_path / "p.txt"
    pairs.write_text("one\ttwo\n\tthree\n")
    with pytest.raises(DataError, match=r"p\.txt, line 2: the first text is empty"):
        load_task(str(task)).prediction_inputs([], file=str(pairs))


def test_zero_shot_refuses_a_fine_tuned_folder(sst2_dir, squad_dir, capsys):
    """A fine-tuned folder given to zeroshot would load as a causal LM without its trained head (no error,
    made-up scores): one message, exit 2, naming what to do instead."""
    from tunelab.cli import main

    for folder in (sst2_dir, squad_dir):
        assert main(["zeroshot", folder, "--task", "sst2", "--limit", "2", "--out", folder + "-zs"]) == 2
        err = capsys.readouterr().err
        assert "a fine-tuned task model, not a causal LM" in err and "tunelab evaluate" in err, err


def test_params_of_a_fine_tuned_folder_counts_the_task_model_it_holds(sst2_dir, capsys):
    """`tunelab params FOLDER` on a fine-tuned folder: its base, task and method from its tunelab.json (it
    counted the bare causal LM, without the trained head)."""
    from tunelab.cli import main

    meta = json.loads((Path(sst2_dir) / "tunelab.json").read_text())
    assert main(["params", sst2_dir, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["task"] == "sst2" and got["method"] == meta["method"]
    assert got["total"] == got["base_total"] + 32 * 2 and got["added"] == {"score": 64}  # hidden 32 x 2
