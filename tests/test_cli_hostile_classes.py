"""Classes of hostile input (issue 14), each covered as a class through the command line: paths that are not
regular files, numbers that pass a loose check but overflow later, valid JSON that is not text, configs of
absurd size or another model family, and messages that must say what is really wrong. Each ends with exit
status 2, one clear message naming the file / record / option and the problem, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from tunelab.cli import main
from tunelab.options import (
    EVALUATE_OPTIONS,
    FINETUNE_EXTRAS,
    STUDY_OPTIONS,
    TRAIN_OPTIONS,
    ZEROSHOT_OPTIONS,
)


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return rc, cap.err


def no_output(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


SST2_ROWS = "sentence\tlabel\n" + "".join(
    f"{w} film {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 4)
)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    (d / "train.tsv").write_text(SST2_ROWS)
    (d / "dev.tsv").write_text(SST2_ROWS)
    return d.parent


# ---- paths that are not regular files ------------------------------------------------------------------

_CASES = r"""
import json, sys
from tunelab.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    out.append(rc)
print("RESULT " + json.dumps(out))
"""


def _cli_in_subprocess(cases: list[list[str]], timeout: float = 180) -> tuple[list[int], str]:
    """Run `tunelab` argument lists in a fresh interpreter under a timeout (a FIFO that is opened for reading
    blocks until a writer comes: in-process, the test itself would hang)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CASES, json.dumps(cases)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"tunelab hung on a path that is not a regular file (no answer in {timeout} s)")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(line[len("RESULT ") :]), done.stderr


def test_fifos_and_devices_are_refused_without_reading_them(tiny_model_dir, data_dir, tmp_path):
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    fifo_yaml = tmp_path / "pipe.yaml"
    os.mkfifo(fifo_yaml)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")  # read to the end, this never ends
    piped_dir = tmp_path / "piped"
    (piped_dir / "SST-2").mkdir(parents=True)
    (piped_dir / "SST-2" / "train.tsv").write_text(SST2_ROWS)
    os.mkfifo(piped_dir / "SST-2" / "dev.tsv")
    out = str(tmp_path / "o")
    m, d = tiny_model_dir, str(data_dir)
    cases = [
        ["data", "check", str(fifo)],
        ["data", "check", str(zero)],
        ["zeroshot", m, "--task", "sst2", "--data-file", str(fifo), "--out", out],
        ["finetune", m, "--task", "sst2", "--data-dir", d, "--train-file", str(zero), "--out", out],
        ["finetune", m, "--task", "sst2", "--data-dir", d, "--config", str(fifo_yaml), "--out", out],
        ["zeroshot", m, "--task", str(fifo_yaml), "--data-dir", d, "--out", out],
        ["zeroshot", m, "--task", "sst2", "--data-dir", str(piped_dir), "--out", out],
        ["study", "--config", str(fifo_yaml), "--out", out],
    ]
    codes, err = _cli_in_subprocess(cases)
    assert codes == [2] * len(cases), (codes, err)
    lines = [x for x in err.splitlines() if x.startswith("tunelab: error:")]
    assert len(lines) == len(cases), err
    assert f"{fifo}: is a FIFO (named pipe), not a regular file" in lines[0]
    assert f"{zero}: is a symlink to /dev/zero, a character device, not a regular file" in lines[1]
    assert "pipe.tsv: is a FIFO" in lines[2] and "zero.jsonl: is a symlink to /dev/zero" in lines[3]
    assert all("pipe.yaml" in x and "is a FIFO" in x for x in (lines[4], lines[5], lines[7])), lines
    assert "SST-2/dev.tsv: the SST-2 dev file is a FIFO (named pipe), not a regular file" in lines[6]
    assert no_output(Path(out))


def test_what_is_read_from_one_file_is_bounded(tmp_path, capsys, monkeypatch):
    from tunelab.data import text

    big = tmp_path / "big.tsv"
    big.write_text(SST2_ROWS * 50)
    monkeypatch.setattr(text, "MAX_FILE_BYTES", 1000)
    rc, err = run(capsys, "data", "check", big)
    assert rc == 2 and f"{big}: larger than 1,000 bytes, the most tunelab reads from one file" in err
    small = tmp_path / "small.tsv"
    small.write_text(SST2_ROWS)
    assert run(capsys, "data", "check", small)[0] == 0


# ---- numbers that pass a loose check but overflow later -------------------------------------------------


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--epochs", "1e308", "--epochs must be in (0, 1000], got 1e+308"),
        ("--epochs", "inf", "--epochs must be a (finite) number"),
        ("--learning-rate", "inf", "--learning-rate must be a (finite) number"),
        ("--learning-rate=-inf", None, "--learning-rate must be a (finite) number"),
        ("--max-steps", "1" + "0" * 24, "--max-steps must be at most 1000000000"),
        ("--batch-size", "100000000000000", "--batch-size must be at most 65536"),
        ("--grad-accum", "100000000000000000000", "--grad-accum must be at most 65536"),
        ("--log-every", "1" + "0" * 30, "--log-every must be at most 1000000000"),
        ("--weight-decay", "1e300", "--weight-decay must be in [0, 10]"),
        ("--lora-r", "10000000000", "--lora-r must be at most 65536"),
        ("--limit", "1" + "0" * 20, "--limit must be at most 1000000000"),
    ],
)
def test_absurd_numbers_are_refused_before_any_work(
    tiny_model_dir, data_dir, tmp_path, capsys, option, value, message
):
    out = tmp_path / "o"
    argv = ["finetune", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", out]
    rc, err = run(capsys, *argv, option, *([value] if value is not None else []))
    assert rc == 2 and message in err, err
    assert no_output(out)


def test_absurd_numbers_in_the_other_commands_and_the_study(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    big = "1" + "0" * 20
    rc, err = run(capsys, "zeroshot", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", out,
                  "--batch-size", big)  # fmt: skip
    assert rc == 2 and "--batch-size must be an integer in [1, 65536] or auto" in err
    rc, err = run(capsys, "zeroshot", tiny_model_dir, "--task", "squad", "--data-dir", data_dir, "--out", out,
                  "--max-new-tokens", big)  # fmt: skip
    assert rc == 2 and "--max-new-tokens must be at most 4096" in err
    rc, err = run(capsys, "params", tiny_model_dir, "--task", "sst2", "--method", "lora", "--lora-r", big)
    assert rc == 2 and "--lora-r must be at most 65536" in err
    rc, err = run(capsys, "predict", tiny_model_dir, "a film", "--batch-size", "0")
    assert rc == 2 and "--batch-size must be an integer in [1, 65536] or auto, got '0'" in err
    rc, err = run(capsys, "study", "--out", out, "--set", "sst2.finetune.epochs=1e308")
    assert rc == 2 and "epochs must be in (0, 1000]" in err
    rc, err = run(capsys, "study", "--out", out, "--set", "squad.zeroshot.batch_size=" + big)
    assert rc == 2 and "zeroshot.batch_size must be an integer in [1, 65536] or auto" in err
    assert no_output(out)


def test_every_number_option_has_finite_bounds():
    """The class, not the examples: every integer or number a user sets has an upper bound in the schema
    (the one description that makes the flags and checks study configs)."""
    groups = (TRAIN_OPTIONS, ZEROSHOT_OPTIONS, FINETUNE_EXTRAS, EVALUATE_OPTIONS, STUDY_OPTIONS)
    for opts in groups:
        for opt in opts.values():
            if opt.type in ("int", "float"):
                assert opt.low is not None and opt.high is not None, opt.name
                assert float(opt.high) <= 2**32, opt.name


# ---- valid JSON that is not text ------------------------------------------------------------------------


def _squad_doc(question: str, qid: str = "q1") -> dict:
    ctx = "The Denver Broncos won Super Bowl 50 ."
    qa = {"id": qid, "question": question, "answers": [{"text": "Denver Broncos", "answer_start": 4}]}
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [qa]}]}]}


def test_lone_surrogates_are_refused_naming_file_and_line_or_record(
    tiny_model_dir, data_dir, tmp_path, capsys
):
    ok = '{"sentence": "a great film \\ud83d\\ude00", "label": 1}\n'  # a real pair: an emoji
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ok + '{"sentence": "an awful \\ud800 film", "label": 0}\n')
    rc, err = run(capsys, "data", "check", bad)
    assert rc == 2 and f"{bad}, line 2: 'sentence' holds a lone surrogate U+D800" in err, err
    assert "not text that can be encoded as UTF-8" in err
    out = tmp_path / "o"
    argv = ["finetune", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", out]
    rc, err = run(capsys, *argv, "--train-file", bad)
    assert rc == 2 and "bad.jsonl, line 2" in err and no_output(out)
    low = tmp_path / "low.jsonl"  # a low surrogate alone, in a field tunelab does not even use
    low.write_text(ok + '{"sentence": "fine", "label": 0, "note": ["x", "\\udc00"]}\n')
    rc, err = run(capsys, "data", "check", low)
    assert rc == 2 and "line 2: 'note[1]' holds a lone surrogate U+DC00" in err

    good = tmp_path / "good.jsonl"
    good.write_text(ok + '{"sentence": "a \\\\ud800 that is only a backslash and letters", "label": 0}\n')
    assert run(capsys, "data", "check", good)[0] == 0

    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps(_squad_doc("Who won \ud800 ?", "q7")))  # json.dumps writes the escape
    rc, err = run(capsys, "data", "check", squad)
    assert rc == 2 and f"{squad}, record 'q7': 'data[0].paragraphs[0].qas[0].question' holds" in err, err
    rc, err = run(capsys, "zeroshot", tiny_model_dir, "--task", "squad", "--data-file", squad, "--out", out)
    assert rc == 2 and "record 'q7'" in err and no_output(out)


def test_a_lone_surrogate_in_a_yaml_file_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text('lora_targets: ["q_proj", "v\\ud800"]\n')
    out = tmp_path / "o"
    argv = ["finetune", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", out]
    rc, err = run(capsys, *argv, "--config", cfg)
    assert rc == 2 and f"{cfg}: 'lora_targets[1]' holds a lone surrogate U+D800" in err, err
    assert no_output(out)


# ---- configs of absurd size or of another model family --------------------------------------------------


def test_params_refuses_another_model_family(tmp_path, capsys):
    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2
    ).save_pretrained(bert)
    for argv in (["params", bert], ["params", bert, "--task", "sst2"], ["params", bert, "--task", "squad"]):
        rc, err = run(capsys, *argv)
        assert rc == 2 and f"{bert}/config.json: not a Llama-architecture model (model_type 'bert'" in err, (
            err
        )


def test_configs_of_absurd_size_are_refused_without_building_them(tiny_model_dir, tmp_path):
    cases, folders = [], {}
    for key, value in (("num_hidden_layers", 1_000_000_000), ("hidden_size", 10**12), ("vocab_size", 0)):
        folder = tmp_path / key
        folder.mkdir()
        cfg = json.loads((Path(tiny_model_dir) / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, key: value}))
        folders[key] = (folder, value)
        cases.append(["params", str(folder), "--task", "sst2"])
    cases.append(["zeroshot", str(folders["num_hidden_layers"][0]), "--task", "sst2", "--data-file",
                  str(tmp_path / "none.tsv"), "--out", str(tmp_path / "o")])  # fmt: skip
    codes, err = _cli_in_subprocess(cases, timeout=240)  # before: counting 10^9 layers never ended
    assert codes == [2] * len(cases), (codes, err)
    for key, (folder, value) in folders.items():
        assert f"{folder}/config.json: {key} must be an integer from 1 to" in err and f"got {value}" in err


# ---- messages that must say what is wrong ---------------------------------------------------------------


def test_a_broken_config_json_is_reported_as_such(tiny_model_dir, data_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 32,,\n}')
    out = tmp_path / "o"
    for argv in (
        ["finetune", folder, "--task", "sst2", "--data-dir", data_dir, "--out", out],
        ["zeroshot", folder, "--task", "sst2", "--data-dir", data_dir, "--out", out],
        ["params", folder],
    ):
        rc, err = run(capsys, *argv)
        assert rc == 2 and f"{folder}/config.json: broken model config: not valid JSON" in err, err
        assert "line 2, column 21" in err and "tokenizer" not in err
        assert no_output(out)
    (folder / "config.json").write_text("[1, 2]")
    rc, err = run(capsys, "params", folder)
    assert rc == 2 and "broken model config: expected a JSON object, got list" in err


def _squad_with_answer(tmp_path: Path, context: str, text: str, start: int) -> Path:
    qa = {"id": "q1", "question": "What ?", "answers": [{"text": text, "answer_start": start}]}
    doc = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def test_answer_start_messages_say_what_is_wrong(tmp_path, capsys):
    path = _squad_with_answer(tmp_path, "The café opened in 1900 .", "The", -3)
    rc, err = run(capsys, "data", "check", path)
    assert rc == 2 and "record 'q1': answers[0]: answer_start -3 is negative" in err, err
    assert "context there reads" not in err

    nfd, nfc = "cafe\u0301", "caf\u00e9"  # print alike: "café"
    path = _squad_with_answer(tmp_path, f"The {nfc} opened in 1900 .", nfd, 4)
    rc, err = run(capsys, "data", "check", path)
    assert rc == 2 and "differ only in Unicode normalization" in err, err
    assert "answer NFD: U+0063 U+0061 U+0066 U+0065 U+0301; context NFC: U+0063 U+0061 U+0066 U+00E9" in err
    path = _squad_with_answer(tmp_path, f"The {nfd} opened in 1900 .", nfc, 4)  # the other way round
    rc, err = run(capsys, "data", "check", path)
    assert rc == 2 and "answer NFC: U+0063 U+0061 U+0066 U+00E9; context NFD:" in err, err

    path = _squad_with_answer(tmp_path, "The cafe opened in 1900 .", "cake", 4)  # a plain mismatch
    rc, err = run(capsys, "data", "check", path)
    assert rc == 2 and "does not point at the answer text 'cake' (the context there reads 'cafe')" in err


def test_the_squad_max_length_hint_names_only_options_that_exist(tiny_model_dir, tmp_path, capsys):
    import re

    squad = tmp_path / "data" / "squad"
    squad.mkdir(parents=True)
    ctx = "The Denver Broncos won Super Bowl 50 in Santa Clara ."
    qas = [
        {
            "id": f"q{i}",
            "question": "Who won Super Bowl 50 at the end of that long season , and where ?",
            "answers": [{"text": "Denver Broncos", "answer_start": 4}],
        }
        for i in range(2)
    ]
    doc = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": qas}]}]}
    for split in ("train", "dev"):
        (squad / f"v1.1-{split}.json").write_text(json.dumps(doc))
    argv = [
        "finetune",
        tiny_model_dir,
        "--task",
        "squad",
        "--data-dir",
        squad.parent,
        "--out",
        tmp_path / "o",
    ]
    rc, err = run(capsys, *argv, "--max-length", "12", "--max-steps", "1")
    assert rc == 2 and "raise max_length" in err and "no passage token fits" in err, err
    flags = set(re.findall(r"--[a-z][a-z-]+", err))
    keys = {k for k in re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", err)}
    assert flags <= {"--" + k.replace("_", "-") for k in TRAIN_OPTIONS} and "--max-length" in flags
    assert keys <= set(TRAIN_OPTIONS) and "lower stride" not in err and "stride" not in TRAIN_OPTIONS
