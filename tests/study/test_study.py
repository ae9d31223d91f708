"""`tunelab study` end to end on the tiny random Llama and a tiny data folder: stages, resume, config
errors."""

import json
import re
import shutil

import pytest
import yaml

from tunelab import runs
from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.study import config as study_config
from tunelab.study import run as study_run

POS = ["a good and great film", "truly wonderful , a great movie", "the film was good", "great and wonderful"]
NEG = ["a bad and awful film", "truly terrible , an awful movie", "the film was bad", "awful and terrible"]


def _squad_doc(prefix: str, n_articles: int) -> dict:
    data = []
    for a in range(n_articles):
        ctx = (
            f"The Denver Broncos won Super Bowl {50 + a} in Santa Clara . The game was played in the year "
            f"{2016 + a} and the Broncos were the winners ."
        )
        qas = []
        pairs = [
            ("Who won ?", "Denver Broncos"),
            ("Where was it ?", "Santa Clara"),
            ("Which Super Bowl was won ?", f"Super Bowl {50 + a}"),
        ]
        for q, (question, answer) in enumerate(pairs):
            qas.append(
                {
                    "id": f"{prefix}-{a}-{q}",
                    "question": question,
                    "answers": [{"text": answer, "answer_start": ctx.index(answer)}],
                }
            )
        data.append({"title": f"Article_{a}", "paragraphs": [{"context": ctx, "qas": qas}]})
    return {"version": "1.1", "data": data}


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "SST-2").mkdir(parents=True)
    (root / "squad").mkdir()
    train = [(POS[i % 4], 1) if i % 2 else (NEG[i % 4], 0) for i in range(32)]
    dev = [(POS[i % 4] + " indeed", 1) if i % 2 else (NEG[i % 4] + " indeed", 0) for i in range(12)]
    for name, rows in (("train", train), ("dev", dev)):
        body = "".join(f"{s} \t{y}\n" for s, y in rows)
        (root / "SST-2" / f"{name}.tsv").write_text("sentence\tlabel\n" + body)
    (root / "squad" / "v1.1-train.json").write_text(json.dumps(_squad_doc("tr", 3)))
    (root / "squad" / "v1.1-dev.json").write_text(json.dumps(_squad_doc("dv", 2)))
    return root


def _config(tmp_path, model, data_dir, **extra) -> str:
    cfg = {
        "model": model,
        "data_dir": str(data_dir),
        "seed": 0,
        "tasks": {
            "sst2": {
                "zeroshot": {"limit": 8, "prompt": "plain", "batch_size": 4},
                "finetune": {
                    "limit": 8,
                    "train_limit": 16,
                    "input_prompt": "plain",
                    "method": "full",
                    "learning_rate": "3e-3",
                    "epochs": 1,
                    "batch_size": 8,
                    "max_length": 32,
                    "log_every": 1,
                    "warmup_ratio": 0.0,
                },
            },
            "squad": {
                "version": 1.1,  # a YAML float: read as "1.1"
                "zeroshot": {"limit": 4, "prompt": "plain", "batch_size": 4, "max_new_tokens": 4},
                "finetune": {
                    "limit": 4,
                    "train_limit": 6,
                    "method": "full",
                    "learning_rate": 1e-3,
                    "epochs": 1,
                    "batch_size": 4,
                    "max_length": 64,
                    "log_every": 1,
                },
            },
            "squad_v2": {"enabled": False},
        },
    }
    cfg.update(extra)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _fail(*args, **kwargs):
    raise AssertionError("a finished stage was recomputed")


def test_study_end_to_end_then_resume(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    rc = main(["study", "--config", cfg, "--out", str(run), "--set", "sst2.zeroshot.limit=6"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[3/9] sst2: fine-tune (full) and evaluate" in out
    assert "[9/9] report" in out
    for path in [
        "config.yaml",
        "environment.json",
        "stages.json",
        "params/sst2.json",
        "params/squad.json",
        "sst2/zeroshot/metrics.json",
        "sst2/zeroshot/predictions.jsonl",
        "sst2/finetune/config.json",
        "sst2/finetune/eval/metrics.json",
        "sst2/finetune/train_log.jsonl",
        "squad/zeroshot/per_example.jsonl",
        "squad/finetune/eval/per_example.jsonl",
        "report.md",
        "report.html",
    ]:
        assert (run / path).is_file(), path
    # the --set override reached the stage and the recorded config
    assert json.loads((run / "sst2/zeroshot/metrics.json").read_text())["n"] == 6
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["tasks"]["sst2"]["zeroshot"]["limit"] == 6
    assert resolved["tasks"]["sst2"]["finetune"]["learning_rate"] == 3e-3  # "3e-3" read as a number
    assert resolved["tasks"]["squad"]["version"] == "1.1"
    assert resolved["tasks"]["sst2"]["finetune"]["seed"] == 0  # the study seed
    env = json.loads((run / "environment.json").read_text())
    assert {"packages", "device", "seed", "git"} <= set(env) and env["packages"]["torch"]
    params = json.loads((run / "params/sst2.json").read_text())
    assert params["task_model"]["delta"] == 32 * 2  # hidden 32 x 2 labels
    assert params["finetuned"]["total"] == params["finetuned_total"] == params["task_model"]["total"]
    sq = json.loads((run / "params/squad.json").read_text())
    assert sq["task_model"]["delta"] == 32 * 2 + 2 and sq["finetuned"]["total"] == sq["task_model"]["total"]
    md = (run / "report.md").read_text()
    assert "+64" in md and "+66" in md and "SQuAD v1.1, the official split" in md

    # rerun: every finished stage is skipped (the recipes would fail if called)
    monkeypatch.setattr(runs, "zeroshot", _fail)
    monkeypatch.setattr(runs, "finetune", _fail)
    monkeypatch.setattr(study_run, "count_finetuned", _fail)
    args = ["study", "--config", cfg, "--out", str(run), "--set", "sst2.zeroshot.limit=6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"done earlier, skipped", out)) == 8

    # an unfinished stage is continued, the others still skipped
    import shutil

    shutil.rmtree(run / "squad" / "finetune")
    (run / "squad" / "finetune.partial").mkdir()
    calls = []
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: calls.append(k) or _fake_finetune(a[5]))
    monkeypatch.setattr(study_run, "count_finetuned", lambda folder: {"total": 1, "folder": str(folder)})
    p = json.loads((run / "params/squad.json").read_text())
    del p["finetuned"]
    (run / "params/squad.json").write_text(json.dumps(p))
    assert main(args) == 0
    assert calls and calls[0]["resume"] == "matching"
    assert json.loads((run / "params/squad.json").read_text())["finetuned"]["total"] == 1


def test_a_rerun_whose_data_changed_redoes_the_stages_that_read_it(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """Item 5 of issue 14: each stage records a digest of the data it read; after the dev file is edited, a
    rerun redoes zero-shot, fine-tuning and the fine-tuned count (saying why) instead of reusing results of
    the old sentences, and the report pairs the same sentences."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    assert main(args) == 0
    dev = data_dir / "SST-2" / "dev.tsv"
    stages = json.loads((run / "stages.json").read_text())
    assert stages["sst2/zeroshot"]["data"] == {
        "dev": {"file": str(dev), "sha256": study_run.file_digest(dev), "examples": 8}
    }
    assert stages["sst2/finetune"]["data"]["train"]["examples"] == 16
    assert stages["sst2/finetune"]["data"]["dev"]["examples"] == 8
    capsys.readouterr()

    before = dev.read_text()
    dev.write_text(before.replace("truly wonderful , a great movie indeed", "a fixed , great film"))
    assert dev.read_text() != before
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sst2: parameters (base and task model): done earlier, skipped" in out
    assert re.search(r"sst2: zero-shot: done earlier, but the dev file \S+dev\.tsv changed since", out), out
    assert "fine-tune (full) and evaluate: done earlier, but the dev file" in out
    assert "parameters (fine-tuned model): done earlier, but sst2/finetune was redone: redoing it" in out
    for rows in ("zeroshot/predictions.jsonl", "finetune/eval/predictions.jsonl"):
        texts = [json.loads(line)["text"] for line in (run / "sst2" / rows).read_text().splitlines()]
        assert "a fixed , great film" in texts and "truly wonderful , a great movie indeed" not in texts, rows
    stages = json.loads((run / "stages.json").read_text())
    assert stages["sst2/zeroshot"]["data"]["dev"]["sha256"] == study_run.file_digest(dev)
    env = json.loads((run / "environment.json").read_text())  # what this invocation ran, redone stages too
    ran = ["sst2/zeroshot", "sst2/finetune", "sst2/params-finetuned", "report"]
    assert env["stages_run"] == env["invocations"][-1]["stages_run"] == ran
    assert "WARNING" not in (run / "report.md").read_text()

    # the same data again: everything is reused
    monkeypatch.setattr(runs, "zeroshot", _fail)
    monkeypatch.setattr(runs, "finetune", _fail)
    monkeypatch.setattr(study_run, "count_finetuned", _fail)
    assert main(args) == 0
    assert len(re.findall(r"done earlier, skipped", capsys.readouterr().out)) == 4


def test_redo_redoes_the_stages_it_names_and_refuses_a_pattern_naming_none(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """`--redo PATTERN`: finished, up-to-date stages matching it run again (and the stages built on them);
    a pattern matching no stage is refused before anything is written."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setattr(runs, "zeroshot", _fail)
    assert main([*args, "--redo", "sst2/finetune*"]) == 0
    out = capsys.readouterr().out
    assert "sst2: fine-tune (full) and evaluate: done earlier, but --redo asks for it: redoing it" in out
    assert "parameters (fine-tuned model): done earlier, but sst2/finetune was redone" in out
    assert "zero-shot: done earlier, skipped" in out
    env = json.loads((run / "environment.json").read_text())
    assert env["invocations"][-1]["stages_run"] == ["sst2/finetune", "sst2/params-finetuned", "report"]

    fresh = tmp_path / "fresh"
    assert (
        main(
            ["study", "--config", cfg, "--out", str(fresh), "--set", "squad.enabled=false", "--redo", "sst/*"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--redo sst/*: no stage matches it; the stages are: sst2/params-base, sst2/zeroshot" in err
    assert not fresh.exists()


def test_a_changed_extra_training_file_redoes_the_fine_tuning(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """extra_train files are recorded with their digest like the splits; editing one redoes fine-tuning."""
    extra = tmp_path / "more.tsv"
    extra.write_text("sentence\tlabel\nan extra good line\t1\nan extra bad line\t0\n")
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    args += ["--set", f"sst2.finetune.extra_train=[{extra}]"]
    assert main(args) == 0
    data = json.loads((run / "stages.json").read_text())["sst2/finetune"]["data"]
    record = data["extra_train"]
    assert record["file"] == str(extra) and 0 <= record["examples"] <= 2 and record["sha256"]
    assert (
        data["train"]["examples"] + record["examples"] == 16
    )  # train_limit's sample of both, each counted once
    capsys.readouterr()
    monkeypatch.setattr(runs, "zeroshot", _fail)  # zero-shot does not read the extra data
    extra.write_text("sentence\tlabel\nanother good line\t1\nanother bad line\t0\n")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot: done earlier, skipped" in out
    assert f"fine-tune (full) and evaluate: done earlier, but the extra training data {extra} changed" in out


def _fake_finetune(out):
    from pathlib import Path

    (Path(out) / "eval").mkdir(parents=True)
    (Path(out) / "eval" / "metrics.json").write_text("{}")


def test_changed_config_on_existing_run_is_refused(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    resolved = study_config.resolve_config(config=cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(resolved.data))
    rc = main(["study", "--config", cfg, "--out", str(run), "--set", "sst2.finetune.learning_rate=1e-4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "tasks.sst2.finetune.learning_rate" in err


def test_existing_non_run_folder_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["study", "--config", cfg, "--out", str(tmp_path / "other")]) == 2
    assert "not a study run folder" in capsys.readouterr().err


def test_a_refused_out_writes_nothing(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    """--out . and --out inside an input are refused (exit 2, one message) before the lock file or any folder
    is written."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["study", "--config", cfg, "--out", "."]) == 2
    err = capsys.readouterr().err
    assert "--out . " in err and "is the current folder" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    inside = data_dir / "new" / "deeper" / "run"
    assert main(["study", "--config", cfg, "--out", str(inside)]) == 2
    assert "lies inside the data folder" in capsys.readouterr().err
    assert not (data_dir / "new").exists()


@pytest.mark.parametrize(
    "text,key,problem",
    [
        ("tasks:\n  sst2:\n    zeroshot:\n      limt: 3\n", "tasks.sst2.zeroshot.limt", "unknown key"),
        (
            "tasks:\n  sst2:\n    zeroshot:\n      limit: lots\n",
            "tasks.sst2.zeroshot.limit",
            "must be an integer",
        ),
        (
            "tasks:\n  squad:\n    zeroshot:\n      calibration: batch\n",
            "tasks.squad.zeroshot.calibration",
            "unknown key",
        ),
        (
            "tasks:\n  sst2:\n    finetune:\n      learning_rate: fast\n",
            "tasks.sst2.finetune.learning_rate",
            "must be a (finite) number",
        ),
        (
            "tasks:\n  sst2:\n    finetune:\n      max_new_tokens: 3\n",
            "tasks.sst2.finetune.max_new_tokens",
            "unknown key",
        ),
        (
            "tasks:\n  squad:\n    finetune:\n      input_prompt: chat\n",
            "tasks.squad.finetune.input_prompt",
            "unknown key",
        ),
        ("tasks:\n  trec: {enabled: true}\n", "trec", "a task of your own needs `file:"),
        ("tasks:\n  trec: {file: nowhere.yaml}\n", "tasks.trec.file", "cannot read task file"),
        ("tasks:\n  params: {file: t.yaml}\n", "tasks.params", "the study's run folder uses for its own"),
        (
            "tasks:\n  report.md: {file: t.yaml}\n",
            "tasks.report.md",
            "the study's run folder uses for its own",
        ),
        ("tasks:\n  summary: {file: t.yaml}\n", "tasks.summary", "the study's run folder uses for its own"),
        (
            "tasks:\n  sst2:\n    zeroshot:\n      prompt: nope\n",
            "tasks.sst2.zeroshot.prompt",
            "not a template name",
        ),
        (
            "tasks:\n  sst2:\n    finetune:\n      method: half\n",
            "tasks.sst2.finetune.method",
            "one of full, lora",
        ),
        ("tasks:\n  sst2:\n    enabled: yes please\n", "tasks.sst2.enabled", "true or false"),
        ("seed: -1\n", "seed", ">= 0"),
        ("modle: x\n", "modle", "unknown key"),
        ("tasks:\n  squad:\n    version: '2.0'\n", "tasks.squad.version", "must be 1.1"),
        ("tasks:\n  sst2:\n    finetune:\n      batch_size: 0\n", "batch_size", ">= 1"),
        ("- a list\n", "", "a study config is a mapping"),
        ("tasks: [1, 2]\n", "tasks", "must be a mapping"),
        ("tasks:\n  sst2: {enabled: false}\n  squad: {enabled: false}\n", "tasks", "no task is enabled"),
    ],
)
def test_config_errors_exit_2_naming_file_and_key(tmp_path, data_dir, capsys, text, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc = main(["study", "--config", str(path), "--out", str(tmp_path / "run"), "--print-config"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and key in err and problem in err, err
    assert not (tmp_path / "run").exists()


def test_set_overrides_and_errors(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(data_dir))
    rc = main(
        [
            "study",
            "--preset",
            "smoke",
            "--print-config",
            "--set",
            "sst2.finetune.learning_rate=1e-4",
            "--set",
            "tasks.squad.zeroshot.limit=null",
            "--set",
            "squad_v2.enabled=true",
            "--set",
            "sst2.finetune.lora_targets=q_proj,v_proj",
        ]
    )
    assert rc == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["tasks"]["sst2"]["finetune"]["learning_rate"] == 1e-4
    assert cfg["tasks"]["squad"]["zeroshot"]["limit"] is None
    assert cfg["tasks"]["squad_v2"]["enabled"] is True
    assert cfg["tasks"]["sst2"]["finetune"]["lora_targets"] == ["q_proj", "v_proj"]
    assert cfg["data_dir"] == str(data_dir.resolve())
    for bad, msg in [
        ("sst2.finetune.learning_rate", "KEY.PATH=VALUE"),
        ("sst2.nope=1", "unknown key"),
        ("sst2.zeroshot.batch_size=1.5", "must be an integer"),
        ("sst2.finetune.learnig_rate=1", "(did you mean 'learning_rate'?)"),
        ("sst2=null", "tasks.sst2 is a group of keys, which null would leave as it is"),
        ("sst2=", "e.g. --set sst2.enabled=false to leave the task out"),
        ("sst2.finetune=null", "set one of its keys (batch_size, "),
        ("seed=042", "leading zero is read as octal"),  # YAML 1.1 would make it 34
        ("sst2.zeroshot.limit=010", "leading zero is read as octal"),
        ("seeds=[010, 2]", "leading zero is read as octal"),
    ]:
        assert main(["study", "--print-config", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert f"--set {bad}" in err and msg in err


def test_presets_are_valid_and_documented(data_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(data_dir))
    smoke = study_config.resolve_config(preset="smoke")
    assert smoke.enabled == ["sst2", "squad"] and smoke.data["model"] == "smollm2-135m"
    full = study_config.resolve_config(preset="full")
    assert full.enabled == ["sst2", "squad", "squad_v2"]
    ft = full.data["tasks"]["sst2"]["finetune"]
    assert (ft["method"], ft["batch_size"], ft["learning_rate"], ft["epochs"]) == ("full", 64, 3e-5, 1)
    sq = full.data["tasks"]["squad"]["finetune"]
    assert (sq["method"], sq["batch_size"], sq["learning_rate"], sq["epochs"]) == ("full", 16, 5e-5, 2)
    assert full.data["tasks"]["squad"]["zeroshot"]["limit"] is None
    text = study_config.preset_path("smoke").read_text()
    for key in ("train_limit", "calibration", "input_prompt", "--set"):
        assert key in text


def test_missing_data_is_a_usage_error(tmp_path, tiny_model_dir, capsys, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir, tmp_path / "nowhere")
    assert main(["study", "--config", cfg, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "(from data_dir)" in err and "--data-dir" not in err, err
    monkeypatch.delenv("TUNELAB_DATA_DIR", raising=False)
    assert main(["study", "--preset", "smoke", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "no data folder: give data_dir: DIR in the config (or --set data_dir=DIR) or set" in err, err


@pytest.mark.parametrize("split", ["train", "dev"])
def test_a_bad_line_of_any_split_stops_the_study_before_it_starts(
    tmp_path, tiny_model_dir, data_dir, capsys, split
):
    tsv = data_dir / "SST-2" / f"{split}.tsv"
    lines = tsv.read_text().splitlines()
    lines[3] = "a film\tmaybe"
    tsv.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["study", "--config", _config(tmp_path, tiny_model_dir, data_dir), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{split}.tsv, line 4" in err and "maybe" in err, err
    assert not run.exists()  # no stage ran


def test_report_command_on_a_non_run_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a study run folder" in capsys.readouterr().err
    ft = tmp_path / "ft"  # a `tunelab finetune` output: its tracking/finetune is no task folder
    (ft / "eval").mkdir(parents=True)
    (ft / "eval" / "metrics.json").write_text('{"accuracy": 0.5}')
    (ft / "tracking" / "finetune").mkdir(parents=True)
    assert main(["report", str(ft)]) == 2
    err = capsys.readouterr().err
    assert "not a study run folder but the output of one command" in err and "tracking" not in err, err
    assert not (ft / "report.md").exists()
    broken = tmp_path / "ft-broken"  # an interrupted finetune: no metrics, a tracking/finetune folder
    (broken / "tracking" / "finetune").mkdir(parents=True)
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "not a study run folder (no task folders" in err and "tracking" not in err, err
    seeds = tmp_path / "ft-seeds"  # a `finetune --seeds` output
    (seeds / "seed-1" / "eval").mkdir(parents=True)
    (seeds / "seeds.json").write_text('{"seeds": [1]}')
    assert main(["report", str(seeds)]) == 2
    assert "not a study run folder but the output of one command" in capsys.readouterr().err
    with pytest.raises(UsageError):
        study_config.resolve_config(preset="huge")


def test_parsers_and_schema(capsys):
    from tunelab.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["study", "--preset", "full", "--out", "runs/x", "--set", "a.b=1", "--set", "c=2"]
    )
    assert args.set == ["a.b=1", "c=2"] and args.preset == "full"
    assert parser.parse_args(["report", "runs/x"]).run_dir == "runs/x"
    assert main(["study", "--print-schema"]) == 0
    schema = capsys.readouterr().out
    for key in (
        "learning_rate: a number in (0, 1)",
        "train_limit:",
        "calibration: one of batch, contextual, none",
        "file:",
        "max_new_tokens:",
    ):
        assert key in schema, key


@pytest.mark.parametrize("method", ["lora", "head"])
def test_count_finetuned_loads_the_saved_model(tiny_model_dir, tmp_path, method):
    from tunelab.data.table import TextExample
    from tunelab.models import LoraOptions, load_config, param_report
    from tunelab.tasks import get_task
    from tunelab.training import TrainConfig

    ex = [TextExample(POS[i % 4], 1, i + 2) if i % 2 else TextExample(NEG[i % 4], 0, i + 2) for i in range(8)]
    cfg = TrainConfig(method=method, epochs=1, batch_size=4, max_length=32, lora_r=4, lora_alpha=8)
    runs.finetune(
        get_task("sst2"), tiny_model_dir, ex, ex[:4], "x", tmp_path / "ft", cfg, {"input_prompt": None}
    )
    counted = study_run.count_finetuned(tmp_path / "ft")
    expected = param_report(
        tiny_model_dir,
        load_config(tiny_model_dir),
        "classification",
        method,
        LoraOptions(4, 8, cfg.lora_dropout, tuple(cfg.lora_targets)),
    )
    assert counted["total"] == expected.total
    if method == "lora":
        assert counted["saved"] == "lora-adapter"
        assert counted["lora_adapter"] == expected.adapter > 0
        # the adapter file holds the LoRA matrices and the trained head, not the base model
        assert sum(counted["safetensors_numel"].values()) == expected.adapter + 32 * 2
    else:
        assert sum(counted["safetensors_numel"].values()) == expected.total


def test_run_folder_from_before_seeds_and_trackers_continues(tiny_model_dir, data_dir, tmp_path):
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    old = study_config.resolve_config(config=cfg).data
    (run / "config.yaml").write_text(
        yaml.safe_dump({k: v for k, v in old.items() if k not in ("seeds", "report_to")})
    )
    study_run.Study(study_config.resolve_config(config=cfg), run).prepare()  # the defaults match: accepted
    with pytest.raises(UsageError, match="another configuration.*seeds"):
        study_run.Study(study_config.resolve_config(config=cfg, sets=["seeds=[1,2]"]), run).prepare()


def test_run_folder_from_before_focus_continues_at_the_whole_passage(tiny_model_dir, data_dir, tmp_path):
    """A run folder written before zero-shot QA's `focus` answered from the whole passage: it is read as
    focus 0, so it continues with `--set squad.zeroshot.focus=0` and is refused (naming focus) at the new
    default 2, whose zero-shot answers would differ."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    old = study_config.resolve_config(config=cfg).data
    assert old["tasks"]["squad"]["zeroshot"]["focus"] == 2
    del old["tasks"]["squad"]["zeroshot"]["focus"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    study_run.Study(study_config.resolve_config(config=cfg, sets=["squad.zeroshot.focus=0"]), run).prepare()
    with pytest.raises(UsageError, match="another configuration.*tasks.squad.zeroshot.focus"):
        study_run.Study(study_config.resolve_config(config=cfg), run).prepare()


def test_run_folder_from_before_question_words_continues_keeping_them(tiny_model_dir, data_dir, tmp_path):
    """A run folder written before zero-shot QA's `question_words` kept them: it is read as keep, continues
    with `--set squad.zeroshot.question_words=keep`, and is refused (naming the option) at the default."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    old = study_config.resolve_config(config=cfg).data
    assert old["tasks"]["squad"]["zeroshot"]["question_words"] == "avoid"
    del old["tasks"]["squad"]["zeroshot"]["question_words"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    keep = ["squad.zeroshot.question_words=keep"]
    study_run.Study(study_config.resolve_config(config=cfg, sets=keep), run).prepare()
    with pytest.raises(UsageError, match="another configuration.*tasks.squad.zeroshot.question_words"):
        study_run.Study(study_config.resolve_config(config=cfg), run).prepare()


def test_run_folder_from_before_detokenize_continues_with_the_texts_as_read(
    tiny_model_dir, data_dir, tmp_path
):
    """A run folder written before classification's `detokenize` (zero-shot, then fine-tuning) read the texts
    as written: each missing key is read as false, the folder continues with `--set ...detokenize=false`
    for both, and is refused (naming the key) at SST-2's defaults."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    run.mkdir()
    variant = ["sst2.variants={lora: {method: lora}}"]  # a variant holds the whole finetune section
    old = study_config.resolve_config(config=cfg, sets=variant).data
    sst2 = old["tasks"]["sst2"]
    assert sst2["zeroshot"]["detokenize"] is sst2["finetune"]["detokenize"] is True
    assert sst2["variants"]["lora"]["detokenize"] is True
    del sst2["zeroshot"]["detokenize"], sst2["finetune"]["detokenize"], sst2["variants"]["lora"]["detokenize"]
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    both = [*variant, "sst2.zeroshot.detokenize=false", "sst2.finetune.detokenize=false"]
    study_run.Study(study_config.resolve_config(config=cfg, sets=both), run).prepare()
    with pytest.raises(UsageError, match="another configuration.*tasks.sst2.zeroshot.detokenize"):
        study_run.Study(study_config.resolve_config(config=cfg, sets=[*variant, both[2]]), run).prepare()
    with pytest.raises(UsageError, match="another configuration.*tasks.sst2.finetune.detokenize"):
        study_run.Study(study_config.resolve_config(config=cfg, sets=both[:2]), run).prepare()


def test_run_folder_from_before_new_options_that_did_not_run_a_task_takes_todays_values(
    tiny_model_dir, data_dir, tmp_path
):
    """An earlier run folder's config.yaml holds every built-in task, the disabled ones too: a task it did not
    run takes today's values of the options added since, so the folder continues without a --set for it."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    added = {"sst2": ["detokenize"], "squad": ["focus", "question_words"]}
    for ran, skipped in (("sst2", "squad"), ("squad", "sst2")):
        sets = [f"{skipped}.enabled=false"]
        run = tmp_path / f"run-{ran}"
        run.mkdir()
        old = study_config.resolve_config(config=cfg, sets=sets).data
        for key in added[skipped]:
            del old["tasks"][skipped]["zeroshot"][key]
        if skipped == "sst2":
            del old["tasks"]["sst2"]["finetune"]["detokenize"]
        (run / "config.yaml").write_text(yaml.safe_dump(old))
        study_run.Study(study_config.resolve_config(config=cfg, sets=sets), run).prepare()
        # a task it ran computed with the earlier values: today's defaults differ from them
        for key in added[ran]:
            del old["tasks"][ran]["zeroshot"][key]
        (run / "config.yaml").write_text(yaml.safe_dump(old))
        with pytest.raises(UsageError, match=f"another configuration.*tasks.{ran}.zeroshot"):
            study_run.Study(study_config.resolve_config(config=cfg, sets=sets), run).prepare()


def test_stage_records_of_earlier_task_digests_are_not_redone(tiny_model_dir, data_dir, tmp_path, capsys):
    """A stage's record holds a digest of its task's definition without the option defaults (config.yaml's
    differences guard those); a record an earlier version wrote - the digest of the whole definition, before
    SST-2's `detokenize` default - still counts as the same definition, so continuing such a run folder with
    the options it ran redoes nothing. A definition that really changed is still redone."""
    import hashlib

    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    args += ["--set", "sst2.zeroshot.detokenize=false"]
    assert main(args) == 0
    capsys.readouterr()
    whole = study_config.resolve_config(config=cfg).tasks["sst2"].to_dict(with_data=False)
    del whole["zeroshot"]["detokenize"]
    earlier = hashlib.sha256(json.dumps(whole, sort_keys=True, default=str).encode()).hexdigest()
    stages = json.loads((run / "stages.json").read_text())
    recorded = [r["definition"] for r in stages.values() if (r.get("definition") or {}).get("task")]
    assert recorded and len({d["task"] for d in recorded}) == 1 and recorded[0]["task"] != earlier
    for d in recorded:
        d["task"] = earlier
    (run / "stages.json").write_text(json.dumps(stages))
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["tasks"]["sst2"]["zeroshot"]["detokenize"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "changed since" not in out and "redoing" not in out, out
    for d in recorded:
        d["task"] = "0" * 64  # a definition that is none of today's
    (run / "stages.json").write_text(json.dumps(stages))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sst2: zero-shot: done earlier, but the definition of task sst2 changed since: redoing it" in out


def test_stage_digests_leave_option_defaults_out_and_follow_what_squad_may_be_scored_as(monkeypatch):
    """A task's option defaults are config.yaml's to guard, so they leave a stage's digest alone (the whole
    definition's digest, kept for earlier records, does change); squad's digest also holds squad_v2's
    definition, which scores squad's dev file when it has unanswerable questions."""
    from tunelab.tasks import get_task

    squad, v2 = get_task("squad"), get_task("squad_v2")
    before = study_run._task_digests(squad)
    monkeypatch.setitem(squad.definition["zeroshot"], "batch_size", 7)
    now = study_run._task_digests(squad)
    assert now[0] == before[0] and now[1] != before[1]
    monkeypatch.setitem(v2.definition["zeroshot"], "focus", 3)
    assert study_run._task_digests(squad)[0] != before[0]


def test_squad_given_v2_questions_zero_shot_takes_squad_v2s_focus(tiny_model_dir, data_dir, tmp_path):
    """A study's squad task reading a dev file with unanswerable questions is scored as squad_v2, and its
    zero-shot then uses squad_v2's default focus (the whole passage), as `tunelab zeroshot` does."""
    dev = data_dir / "squad" / "v1.1-dev.json"
    doc = json.loads(dev.read_text())
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "none", "question": "Who lost ?", "answers": [], "is_impossible": True}
    )
    dev.write_text(json.dumps(doc))
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "sst2.enabled=false"]
    assert main(args) == 0
    m = json.loads((run / "squad" / "zeroshot" / "metrics.json").read_text())
    assert m["task"] == "squad_v2" and m["focus"] == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["tasks"]["squad"]["zeroshot"]["focus"] == 2


def test_the_runs_own_config_yaml_is_accepted_back_as_config(tiny_model_dir, data_dir, tmp_path):
    """config.yaml writes report_to as [] (no trackers); given back as --config it must be read as such."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    study_run.Study(study_config.resolve_config(config=cfg), run).prepare()
    assert yaml.safe_load((run / "config.yaml").read_text())["report_to"] == []
    again = study_config.resolve_config(config=str(run / "config.yaml"))
    assert again.data["report_to"] == []
    study_run.Study(again, run).prepare()  # the same configuration: accepted


def test_an_out_that_is_a_file_or_a_damaged_config_yaml(tiny_model_dir, data_dir, tmp_path, capsys):
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    assert main(["study", "--config", cfg, "--out", str(mine)]) == 2
    assert f"--out {mine} is a file, not a folder" in capsys.readouterr().err
    assert mine.read_text() == "mine"
    run = tmp_path / "run"
    run.mkdir()
    for text, problem in [("tasks: [\n", "cannot read"), ("seed: 1\nseed: 2\n", "'seed' is given twice")]:
        (run / "config.yaml").write_text(text)
        assert main(["study", "--config", cfg, "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"{run / 'config.yaml'}" in err and problem in err and "Traceback" not in err, err
        assert (run / "config.yaml").read_text() == text


def test_a_half_deleted_stage_is_redone_and_a_damaged_result_is_named(
    tiny_model_dir, data_dir, tmp_path, capsys
):
    """A stage whose result file is gone (the rest of its folder still there) is redone on a rerun, without
    asking for an --overwrite the study does not have; `report` names a metrics file tunelab did not write."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    assert main(args) == 0
    (run / "sst2/zeroshot/metrics.json").unlink()
    (run / "sst2/finetune/eval/metrics.json").unlink()
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert (
        "sst2: zero-shot: done earlier" not in out and "parameters (base and task model): done earlier" in out
    )
    for path in ("sst2/zeroshot/metrics.json", "sst2/finetune/eval/metrics.json", "report.md"):
        assert (run / path).is_file(), path
    # a stage whose output was published but not recorded (the run stopped in between) is not trusted
    stages = json.loads((run / "stages.json").read_text())
    del stages["sst2/zeroshot"]
    (run / "stages.json").write_text(json.dumps(stages))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "zero-shot: done earlier, but it has no record in stages.json of what it read: redoing it" in out
    assert "sst2/zeroshot" in json.loads((run / "stages.json").read_text())

    metrics = run / "sst2/zeroshot/metrics.json"
    good = metrics.read_text()
    for bad, problem in [
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"accuracy": "high"}', "accuracy"),
    ]:
        metrics.write_text(bad)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert str(metrics) in err and problem in err, err
    metrics.write_text(good.replace('"accuracy": ', '"accuracy": NaN, "was": '))
    assert main(["report", str(run)]) == 2
    assert "accuracy must be a finite number, got nan" in capsys.readouterr().err
    metrics.write_text(good)

    (run / "report.md").unlink()
    (run / "report.md").mkdir()  # a folder where the report goes
    assert main(["report", str(run)]) == 2
    assert "report.md: is a folder" in capsys.readouterr().err
    assert not (run / "report.md.tmp").exists()


def test_a_lora_target_naming_no_layer_fails_before_the_run_folder_exists(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """The study builds each LoRA task model (on the meta device) before writing config.yaml: a bad target is
    one error naming its section, and the corrected command then runs into the same --out."""
    monkeypatch.setattr(study_run.Study, "execute", lambda self: [])
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    base = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    args = [
        *base,
        "--set",
        "sst2.variants.lora.method=lora",
        "--set",
        "sst2.variants.lora.lora_targets=nope_proj",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tasks.sst2.variants.lora: lora_targets: ['nope_proj'] name no linear or embedding layer" in err, (
        err
    )
    assert not run.exists()
    fixed = [
        *base,
        "--set",
        "sst2.variants.lora.method=lora",
        "--set",
        "sst2.variants.lora.lora_targets=self_attn.q_proj",
    ]
    assert main(fixed) == 0, capsys.readouterr().err


def test_a_changed_task_file_prompt_file_or_model_redoes_the_stages_that_used_it(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """Besides data, each stage records digests of the task's definition, the prompt files it renders and
    the model's files: editing any of them redoes the stages that used it (and task.json follows the task
    file); the run's own config.yaml, task file and all, is accepted back as --config."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfgdir = tmp_path / "cfg"
    (cfgdir / "tasks").mkdir(parents=True)
    task_file = cfgdir / "tasks" / "mine.yaml"
    sst = data_dir / "SST-2"
    task_file.write_text(
        "kind: classification\nlabels: ['0', '1']\ndata: {text: sentence, splits: {train: "
        f"{sst}/train.tsv, dev: {sst}/dev.tsv}}}}\nverbalizers: {{'0': [' bad'], '1': [' good']}}\n"
    )
    prompt = cfgdir / "p.yaml"
    prompt.write_text("text: 'Movie: {text}\\nVerdict:'\nverbalizers: {'0': [' bad'], '1': [' good']}\n")
    cfg = yaml.safe_load(open(_config(tmp_path, str(model), data_dir)).read())
    mine = {**cfg["tasks"]["sst2"], "file": "tasks/mine.yaml"}
    mine["zeroshot"] = {**mine["zeroshot"], "prompt": str(prompt)}
    del mine["finetune"]["input_prompt"]
    cfg["tasks"] = {"sst2": {"enabled": False}, "squad": {"enabled": False}, "mine": mine}
    (cfgdir / "study.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["study", "--config", str(cfgdir / "study.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()
    # config.yaml names the task file as found: read back from the run folder, it is the same study
    assert yaml.safe_load((run / "config.yaml").read_text())["tasks"]["mine"]["file"] == str(task_file)
    again = ["study", "--config", str(run / "config.yaml"), "--out", str(run)]
    assert main(again) == 0
    assert len(re.findall(r"done earlier, skipped", capsys.readouterr().out)) == 4
    # a run folder of the version before, which kept the path as given (relative to the config's folder)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace(f"file: {task_file}", "file: tasks/mine.yaml"))
    assert "file: tasks/mine.yaml" in (run / "config.yaml").read_text()
    assert main(["study", "--config", str(cfgdir / "study.yaml"), "--out", str(run)]) == 0
    assert len(re.findall(r"done earlier, skipped", capsys.readouterr().out)) == 4

    args = ["study", "--config", str(cfgdir / "study.yaml"), "--out", str(run)]
    prompt.write_text(prompt.read_text().replace("Verdict:", "Opinion:"))
    monkeypatch.setattr(runs, "finetune", _fail)  # fine-tuning does not render the zero-shot prompt
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"mine: zero-shot: done earlier, but the prompt file {prompt} changed since: redoing it" in out
    assert "fine-tune (full) and evaluate: done earlier, skipped" in out
    monkeypatch.undo()

    task_file.write_text(task_file.read_text() + "description: my own sentiment task\n")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"done earlier, but the definition of task mine changed since", out)) == 3, out
    assert json.loads((run / "mine" / "task.json").read_text())["description"] == "my own sentiment task"

    from conftest import make_model_dir

    make_model_dir(model, seed=1)  # other weights at the same path
    assert main(args) == 0
    out = capsys.readouterr().out
    assert len(re.findall(rf"done earlier, but the model's files \({model}\) changed since", out)) == 3, out
    monkeypatch.setattr(runs, "zeroshot", _fail)
    monkeypatch.setattr(runs, "finetune", _fail)
    monkeypatch.setattr(study_run, "count_finetuned", _fail)
    assert main(args) == 0  # nothing changed since: all reused
    assert len(re.findall(r"done earlier, skipped", capsys.readouterr().out)) == 4


def test_a_redone_stage_does_not_read_the_model_again(
    tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch
):
    """The model's files are digested once per run folder: a rerun that redoes a stage compares their names,
    sizes and times with the record and reads no weights while they agree."""
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    run = tmp_path / "run"
    args = ["study", "--config", cfg, "--out", str(run), "--set", "squad.enabled=false"]
    assert main(args) == 0
    shutil.rmtree(run / "sst2" / "zeroshot")
    read = []
    real = study_run.file_digest
    monkeypatch.setattr(study_run, "file_digest", lambda p: read.append(str(p)) or real(p))
    assert main(args) == 0
    assert "[2/5] sst2: zero-shot\n" in capsys.readouterr().out
    assert not [p for p in read if p.startswith(str(tiny_model_dir))], read


def test_two_fine_tunings_logging_to_one_tracker_run_are_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    """A variant `lora` of sst2 and a task named sst2-lora would share RUN/tracking/sst2-lora."""
    task = tmp_path / "t.yaml"
    sst = data_dir / "SST-2"
    task.write_text(
        "kind: classification\nlabels: ['0', '1']\nverbalizers: {'0': [' bad'], '1': [' good']}\n"
        f"data: {{text: sentence, splits: {{train: {sst}/train.tsv, dev: {sst}/dev.tsv}}}}\n"
    )
    cfg = _config(tmp_path, tiny_model_dir, data_dir)
    args = ["study", "--config", cfg, "--out", str(tmp_path / "run"), "--set", "squad.enabled=false"]
    args += ["--set", "sst2.variants={lora: {method: lora}}", "--set", f"sst2-lora.file={task}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "sst2-lora/finetune and sst2/finetune-lora would log to the same tracker run sst2-lora" in err, err
    assert not (tmp_path / "run").exists()
