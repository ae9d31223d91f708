"""Hostile input through the command line: bad configs and options, files that are not models, huge and
non-UTF-8 data, existing outputs. Each ends with exit status 2, one clear message, no traceback, and no output
folder (finished or partial)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import UsageError


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return rc, cap.err


def no_output(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".partial").exists()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(
        f"{w} film number {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 4)
    )
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    return d.parent


def finetune(model, data_dir, out, *extra, quick=True):
    """`tunelab finetune` arguments; `quick` adds options for a one-step run (they override a --config)."""
    args = [
        "finetune",
        model,
        "--task",
        "sst2",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--input-prompt",
        "none",
    ]
    return (
        args
        + (["--max-steps", "1", "--max-length", "16", "--batch-size", "4"] if quick else [])
        + list(extra)
    )


# ---- data files
# ---------------------------------------------------------------------------------------------


def test_non_utf8_training_file(tiny_model_dir, data_dir, tmp_path, capsys):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("sentence\tlabel\ngood film\t1\ncaf\xe9 cr\xe8me\t0\n".encode("latin-1"))
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--train-file", bad))
    assert rc == 2 and "latin1.tsv, line 3" in err and "UTF-8" in err
    assert no_output(out)


def test_100k_line_file_with_an_error_on_the_last_line(tiny_model_dir, data_dir, tmp_path, capsys):
    big = tmp_path / "big.tsv"
    big.write_text("sentence\tlabel\n" + "a fine film\t1\n" * 99_999 + "the last line\tmaybe\n")
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--train-file", big))
    assert rc == 2 and "big.tsv, line 100001" in err and "label must be 0 or 1 or a label name" in err
    assert no_output(out)
    rc, err = run(capsys, "data", "check", big)
    assert rc == 2 and "line 100001" in err


def test_a_one_megabyte_passage_is_refused_or_handled_cleanly(tmp_path, capsys):
    huge = tmp_path / "huge.tsv"
    huge.write_text("sentence\tlabel\n" + "a truly great film " * 55_000 + "\t1\nbad\t0\n")
    assert huge.stat().st_size > 1_000_000
    rc, err = run(capsys, "data", "check", huge)
    assert rc in (0, 2)
    if rc == 2:
        assert "huge.tsv, line 2" in err


@pytest.mark.slow
def test_a_one_megabyte_passage_trains_and_evaluates(tiny_model_dir, tmp_path, capsys):
    huge = tmp_path / "huge.jsonl"
    huge.write_text(
        json.dumps({"sentence": "a truly great film " * 55_000, "label": 1})
        + "\n"
        + json.dumps({"sentence": "an awful film", "label": 0})
        + "\n"
    )
    out = tmp_path.parent / f"{tmp_path.name}-o"  # (not inside --data-dir: that is an input)
    rc, err = run(capsys, *finetune(tiny_model_dir, tmp_path, out, "--train-file", huge, "--data-file", huge))
    assert rc == 0 and (out / "eval" / "metrics.json").is_file(), err


def test_unlabelled_training_file(tiny_model_dir, data_dir, tmp_path, capsys):
    nolabel = tmp_path / "nolabel.tsv"
    nolabel.write_text("sentence\ngood film\nbad film\n")
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--train-file", nolabel))
    assert rc == 2 and "nolabel.tsv" in err and "label" in err
    assert no_output(out)
    # partly labelled: refused (not trimmed to its labelled rows), naming the first unlabelled line
    partly = tmp_path / "partly.jsonl"
    partly.write_text(
        '{"sentence": "good", "label": 1}\n{"sentence": "bad"}\n{"sentence": "ok", "label": 1}\n'
    )
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--train-file", partly))
    assert rc == 2 and "partly.jsonl: 1 of 3 training rows have no label (the first at line 2)" in err, err
    assert no_output(out)
    # k-shot examples are solved training examples: an unlabelled training file cannot give them
    for train in (nolabel, partly):
        rc, err = run(
            capsys,
            "zeroshot",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data-dir",
            data_dir,
            "--train-file",
            train,
            "--shots",
            "1",
            "--out",
            out,
        )
        assert rc == 2 and train.name in err and "label" in err, err
        assert no_output(out)


# ---- configs and options
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("learning_rat: 0.001\n", "unknown keys ['learning_rat'] (did you mean 'learning_rate'?)"),
        ("batch_size: big\n", "batch_size must be an integer >= 1, got 'big'"),
        ("batch_size: 8.5\n", "batch_size must be an integer"),
        ("batch_size: true\n", "batch_size must be an integer"),
        ("epochs: .inf\n", "epochs must be a (finite) number"),
        ("learning_rate: [0.1]\n", "learning_rate must be a (finite) number"),
        ("learning_rate: 3\n", "learning_rate must be in (0, 1)"),
        ("warmup_ratio: lots\n", "warmup_ratio must be a (finite) number"),
        ("lr_schedule: 3\n", "lr_schedule must be one of linear, cosine, constant"),
        ("bf16: maybe\n", "bf16 must be true or false"),
        ("seed: -1\n", "seed must be an integer"),
        ("log_every: 0\n", "log_every must be an integer >= 1"),
        ("save_every: -2\n", "save_every must be an integer >= 0"),
        ("max_steps: 0\n", "max_steps must be an integer >= 1"),
        ("lora_dropout: 1.5\n", "lora_dropout must be in [0, 1)"),
        ("lora_targets: []\n", "lora_targets must be a non-empty list"),
        ("max_length: 100000000\n", "max_length must be at most"),
        ("- a list\n- of things\n", "mapping"),
        ("key: [unclosed\n", "cannot read config"),
        ("7: seven\n", "unknown keys ['7']"),
        ("epochs: 1\nepochs: 2\n", "the key 'epochs' is given twice"),
        ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        (
            "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
            + "".join(f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 30)),
            "its aliases expand it to more than 1,000,000 values",
        ),
    ],
)
def test_bad_config_files(tiny_model_dir, data_dir, tmp_path, capsys, yaml_text, message):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--config", cfg, quick=False))
    assert rc == 2 and message in err and "train.yaml" in err, err
    assert no_output(out)


def test_unreadable_config_files(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"method: \xe9\n")
    for cfg in (latin, tmp_path / "missing.yaml", tmp_path):
        rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--config", cfg))
        assert rc == 2 and "cannot read config" in err
    assert no_output(out)


def test_a_number_written_like_1e_4_is_read_as_a_number():
    from tunelab.options import TrainConfig

    # YAML 1.1 reads `1e-4` (no dot) as a string
    assert TrainConfig.from_dict({"learning_rate": "1e-4"}).learning_rate == 1e-4


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--max-length", "0", "--max-length must be an integer >= 1, got 0"),
        ("--batch-size", "0", "--batch-size must be an integer >= 1"),
        ("--grad-accum", "-1", "--grad-accum must be an integer >= 1"),
        ("--epochs", "0", "--epochs must be in (0, 1000]"),
        ("--learning-rate", "nan", "--learning-rate must be a (finite) number"),
        ("--warmup-ratio", "1", "--warmup-ratio must be in [0, 1)"),
        ("--limit", "0", "--limit must be an integer >= 1 or null, got 0"),  # `--limit null`: all
        ("--train-limit", "-3", "--train-limit must be an integer >= 1"),
        ("--lora-targets", "q_proj,", "--lora-targets must be a non-empty list"),
    ],
)
def test_impossible_option_values(tiny_model_dir, data_dir, tmp_path, capsys, option, value, message):
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, option, value))
    assert rc == 2 and message in err, err
    assert no_output(out)


def test_a_flag_is_blamed_by_its_own_name_not_the_config_file(tiny_model_dir, data_dir, tmp_path, capsys):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("epochs: 1\n")
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--config", cfg, "--grad-accum", "0"))
    assert rc == 2 and "--grad-accum must be an integer >= 1" in err and "train.yaml" not in err, err
    assert no_output(out)


def test_options_clashing_are_blamed_where_each_was_set(tiny_model_dir, data_dir, tmp_path, capsys):
    """packing from a flag and bidirectional from the --config file: the message names both, each where it
    was set; both from flags: the flags alone, not the config file."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text("bidirectional: true\n")
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--config", cfg, "--packing"))
    assert rc == 2 and f"--packing, {cfg}: packing and bidirectional cannot be used together" in err, err
    cfg.write_text("epochs: 1\n")
    rc, err = run(
        capsys, *finetune(tiny_model_dir, data_dir, out, "--config", cfg, "--packing", "--bidirectional")
    )
    assert (
        rc == 2 and "--packing, --bidirectional: packing and bidirectional" in err and "train.yaml" not in err
    )
    task = tmp_path / "packed.yaml"  # a task file's default: named by the file and its section
    task.write_text(
        "kind: classification\nlabels: ['0', '1']\ndata: {text: sentence, splits: {train: "
        f"{data_dir}/SST-2/train.tsv, dev: {data_dir}/SST-2/dev.tsv}}}}\nfinetune: {{packing: true}}\n"
    )
    argv = ["finetune", tiny_model_dir, "--task", task, "--out", out, "--bidirectional"]
    rc, err = run(capsys, *argv)
    assert rc == 2 and f"{task}: finetune, --bidirectional: packing and bidirectional" in err, err
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--share-prefix", "on", "--packing"))
    assert rc == 2 and "--share-prefix, --packing: share_prefix and packing cannot be used together" in err, (
        err
    )
    assert no_output(out)


def test_lora_targets_that_name_no_layer(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    argv = finetune(tiny_model_dir, data_dir, out, "--method", "lora", "--lora-targets", "q_proj,nope_proj")
    rc, err = run(capsys, *argv)
    assert rc == 2 and "['nope_proj'] name no linear or embedding layer" in err and "q_proj" in err, err
    assert no_output(out)


def test_seed_and_seeds_together_are_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--seed", "1", "--seeds", "1,2"))
    assert rc == 2 and "--seed and --seeds: give one" in err, err
    assert no_output(out)


@pytest.mark.parametrize(
    "text,message",
    [
        ("txt: '{sentence}'\n", "unknown keys ['txt'] (did you mean 'text'?)"),
        ("text: no placeholder\n", "`text` must contain {text}"),
    ],
)
def test_a_bad_prompt_file_is_named(tiny_model_dir, data_dir, tmp_path, capsys, text, message):
    prompt = tmp_path / "my_prompt.yaml"
    prompt.write_text(text)
    out = tmp_path / "o"
    argv = ["zeroshot", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--prompt", prompt]
    rc, err = run(capsys, *argv, "--out", out)
    assert rc == 2 and f"{prompt}: prompt: {message}" in err, err
    assert no_output(out)


def test_option_of_the_wrong_type_is_an_argparse_error(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in finetune(tiny_model_dir, data_dir, out, "--batch-size", "big")])
    assert exc.value.code == 2 and "invalid int value: 'big'" in capsys.readouterr().err
    assert no_output(out)


def test_squad_max_length_too_short_for_the_question(tiny_model_dir, tmp_path, capsys):
    squad = tmp_path / "data" / "squad"
    squad.mkdir(parents=True)
    ctx = "The Denver Broncos won Super Bowl 50 in Santa Clara ."
    qas = [
        {
            "id": f"q{i}",
            "question": "Who won Super Bowl 50 at the end of that long season , and where ?",
            "answers": [{"text": "Denver Broncos", "answer_start": 4}],
        }
        for i in range(3)
    ]
    doc = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": qas}]}]}
    for split in ("train", "dev"):
        (squad / f"v1.1-{split}.json").write_text(json.dumps(doc))
    out = tmp_path / "o"
    rc, err = run(
        capsys,
        "finetune",
        tiny_model_dir,
        "--task",
        "squad",
        "--data-dir",
        squad.parent,
        "--out",
        out,
        "--max-length",
        "12",
        "--max-steps",
        "1",
    )
    assert rc == 2 and "max_length" in err
    assert no_output(out)


# ---- models
# -------------------------------------------------------------------------------------------------


def test_model_paths_that_are_not_models(tiny_model_dir, data_dir, tmp_path, capsys):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "weights.txt"
    a_file.write_text("not a model")
    no_weights = tmp_path / "no-weights"  # config and tokenizer, but the weights are missing
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    bad_config = tmp_path / "bad-config"
    shutil.copytree(tiny_model_dir, bad_config)
    (bad_config / "config.json").write_text("{not json")
    out = tmp_path / "o"
    for spec in (
        empty,
        a_file,
        tmp_path / "missing",
        "./relative/missing",
        no_weights,
        bad_config,
        "no-such-alias",
    ):
        rc, err = run(capsys, *finetune(str(spec), data_dir, out))
        assert rc == 2 and str(spec) in err, (spec, err)
        assert no_output(out), spec


# ---- output folders
# -----------------------------------------------------------------------------------------


def test_existing_output_needs_overwrite(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out))
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "o.partial").exists()
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--overwrite"))
    assert rc == 0, err
    assert not (out / "keep.txt").exists() and (out / "eval" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "o"]  # no .partial, no .old


def test_existing_output_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.write_text("a file, not a folder")
    rc, err = run(capsys, "zeroshot", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", out)
    assert rc == 2 and "already exists" in err and out.read_text() == "a file, not a folder"


def test_output_under_a_file_is_a_clear_error(tiny_model_dir, data_dir, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, blocker / "o"))
    assert rc == 2 and "cannot create the output folder" in err


def test_launched_processes_that_did_not_join_are_refused(monkeypatch):
    from tunelab.distributed import check_joined, launched_processes

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_processes() == 2
    with pytest.raises(UsageError, match="started as 2 processes"):
        check_joined(1, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        launched_processes()


def test_batch_size_below_one_and_partly_labelled_data_are_refused(
    tiny_model_dir, data_dir, tmp_path, capsys
):
    out = tmp_path / "o"
    for task in ("sst2", "squad"):
        rc, err = run(
            capsys,
            "zeroshot",
            tiny_model_dir,
            "--task",
            task,
            "--data-dir",
            data_dir,
            "--out",
            out,
            "--batch-size",
            "0",
        )
        assert rc == 2 and "--batch-size" in err and no_output(out)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad"}\n')
    rc, err = run(capsys, "zeroshot", tiny_model_dir, "--task", "sst2", "--data-file", mixed, "--out", out)
    assert rc == 2 and str(mixed) in err and "label every row or none" in err and no_output(out)


@pytest.mark.parametrize("content", ["{not json", '["a list"]'])
def test_a_broken_tunelab_json_is_a_clear_error(tiny_model_dir, data_dir, tmp_path, capsys, content):
    import shutil

    folder = tmp_path / "ft"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tunelab.json").write_text(content)
    out = tmp_path / "o"
    for argv in (
        ["evaluate", folder, "--task", "sst2", "--data-dir", data_dir, "--out", out],
        ["predict", folder, "a sentence"],
        ["export", folder, "--out", out],
    ):
        rc, err = run(capsys, *argv)
        assert rc == 2 and "tunelab.json" in err, (argv, err)
        assert no_output(out)


def test_data_check_without_task_says_how_it_read_the_file(tmp_path, capsys):
    """A file of another task checked without --task: the message says it was read as the built-in task of
    its suffix and to give --task."""
    trec = tmp_path / "trec.tsv"
    trec.write_text("question\tlabel\nWhat is a cat ?\tENTY\n")
    rc, err = run(capsys, "data", "check", trec)
    assert rc == 2 and "header must name a 'sentence' column" in err
    assert "read as SST-2, the built-in task of its suffix; another task's file: give --task" in err, err
