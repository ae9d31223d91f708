"""The one option schema (tunelab.options): every option once, and the command-line flags, the checks of
training-option files and study configs, and the documented schema all come from it."""

from __future__ import annotations

import pytest
from helpers import ROOT

from tunelab.cli import build_parser
from tunelab.errors import UsageError
from tunelab.options import (
    EVALUATE_OPTIONS,
    FINETUNE_EXTRAS,
    TRAIN_OPTIONS,
    ZEROSHOT_OPTIONS,
    TrainConfig,
    flag_name,
    schema_text,
)


def _flags(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return {s for a in sub._actions for s in a.option_strings}


def _flag(opt) -> str:
    """The flag of an option: --no-NAME for a boolean that defaults to true."""
    return ("--no-" + opt.name.replace("_", "-")) if opt.type == "bool" and opt.default else flag_name(opt)


def test_every_option_is_a_flag_of_its_command():
    finetune, zeroshot = _flags("finetune"), _flags("zeroshot")
    assert {_flag(o) for o in {**TRAIN_OPTIONS, **FINETUNE_EXTRAS}.values()} <= finetune
    assert {_flag(o) for o in ZEROSHOT_OPTIONS.values()} <= zeroshot
    assert {_flag(o) for o in EVALUATE_OPTIONS.values()} <= _flags("evaluate")
    assert "--no-bf16" in zeroshot
    # the flags users already type keep working
    assert {
        "--no-bf16",
        "--merge-lora",
        "--lora-targets",
        "--input-prompt",
        "--max-train-samples",
    } <= finetune


def test_one_rule_per_option_everywhere():
    lr = TRAIN_OPTIONS["learning_rate"]
    assert lr.rule() == "a number in (0, 1)"
    assert lr.check("3e-5", "f.yaml") == 3e-5  # YAML 1.1 reads 3e-5 as a string
    for bad in (0, 1, "fast", True, float("nan")):
        with pytest.raises(UsageError, match="f.yaml: learning_rate must be"):
            lr.check(bad, "f.yaml")
    assert TRAIN_OPTIONS["lora_targets"].check("q_proj, v_proj", None) == ["q_proj", "v_proj"]
    with pytest.raises(UsageError, match="seed must be below 4294967296"):
        TrainConfig.from_dict({"seed": 2**32})
    with pytest.raises(UsageError, match=r"unknown keys \['colour'\]"):
        TrainConfig.from_dict({"colour": "red"})
    cfg = TrainConfig(batch_size=0)  # built in code: validate() applies the same rules
    with pytest.raises(UsageError, match="batch_size must be an integer >= 1, got 0"):
        cfg.validate()


def test_the_documented_schema_is_the_generated_one():
    from tunelab.study.config import schema_doc

    text = schema_doc()
    assert schema_text() in text
    for name in [*TRAIN_OPTIONS, *ZEROSHOT_OPTIONS, *FINETUNE_EXTRAS, "file", "enabled", "data_dir"]:
        assert f"{name}:" in text, name
    doc = (ROOT / "docs" / "study-config.md").read_text()
    assert text in doc, "docs/study-config.md is out of date: paste `tunelab study --print-schema` into it"


def test_options_that_are_valid_alone_but_not_together_are_refused():
    with pytest.raises(UsageError, match="packing and bidirectional cannot be used together"):
        TrainConfig.from_dict({"packing": True, "bidirectional": True})
    with pytest.raises(UsageError, match="packing and bidirectional"):
        TrainConfig(packing=True, bidirectional=True).validate()
    for other in ("compile", "packing", "bidirectional"):
        with pytest.raises(UsageError, match=f"share_prefix and {other} cannot be used together"):
            TrainConfig.from_dict({"share_prefix": "on", other: True})
        assert TrainConfig.from_dict({"share_prefix": "auto", other: True}).share_prefix == "auto"


def test_a_size_option_keeps_its_upper_bound():
    assert TrainConfig.from_dict({"micro_batch_size": "auto"}).micro_batch_size == "auto"
    assert TrainConfig.from_dict({"micro_batch_size": 8}).micro_batch_size == 8
    with pytest.raises(UsageError, match=r"micro_batch_size must be an integer in \[1, 65536\] or auto"):
        TrainConfig.from_dict({"micro_batch_size": 99_999_999_999_999})


def test_on_and_off_read_by_yaml_as_booleans_are_the_choices_on_and_off():
    import yaml

    value = yaml.safe_load("share_prefix: on")["share_prefix"]
    assert value is True  # YAML 1.1
    assert TrainConfig.from_dict({"share_prefix": value}).share_prefix == "on"
    assert TrainConfig.from_dict({"share_prefix": False}).share_prefix == "off"
    with pytest.raises(UsageError, match="share_prefix must be one of auto, on, off"):
        TrainConfig.from_dict({"share_prefix": "maybe"})
    with pytest.raises(UsageError, match="method must be one of"):  # only where on/off are the choices
        TrainConfig.from_dict({"method": True})


def test_flag_help_says_what_each_flag_does_and_its_one_default():
    from tunelab.cli import build_parser

    parser = build_parser()
    helps = {
        a.option_strings[0]: a.help
        for a in parser._subparsers._group_actions[0].choices["finetune"]._actions
        if a.option_strings
    }
    assert helps["--no-bf16"].startswith("turn bf16 off; bf16: bfloat16 autocast")
    assert helps["--seeds"].endswith("(default: one model, of --seed)")
    assert helps["--lora-targets"].count("default") == 1
    assert not [f for f, h in helps.items() if h and "(default: ," in h]


def _finetune_with_task_file(tmp_path, sections: str):
    """(the task of a task file with these `zeroshot`/`finetune` sections, a `finetune` argv using it)"""
    from tunelab.tasks import load_task

    task_file = tmp_path / "t.yaml"
    task_file.write_text("kind: classification\nlabels: ['0', '1']\ndata: {text: sentence}\n" + sections)
    return load_task(str(task_file)), ["finetune", "m", "--task", str(task_file), "--out", "o"]


def test_a_nullable_flag_given_null_overrides_the_tasks_value(tmp_path, capsys):
    """`--limit null` sets the option to null (every example), where leaving the flag out keeps the task's
    value; a flag of an option that cannot be null refuses the word."""
    from tunelab.cli import _options, _train_config
    from tunelab.tasks import load_task

    task, argv = _finetune_with_task_file(
        tmp_path, "zeroshot: {limit: 50}\nfinetune: {limit: 50, max_steps: 9, train_limit: 100}\n"
    )
    parse = build_parser().parse_args
    args = parse([*argv, "--limit", "null", "--train-limit", "null", "--max-steps", "null"])
    assert _options(args, FINETUNE_EXTRAS, task) == {"limit": None, "train_limit": None}
    assert _train_config(args, task).max_steps is None
    args = parse(argv)
    assert {**task.finetune_extras(), **_options(args, FINETUNE_EXTRAS, task)}["limit"] == 50
    assert _train_config(args, task).max_steps == 9
    args = parse(["finetune", "m", "--task", "sst2", "--out", "o", "--input-prompt", "null"])
    assert _options(args, FINETUNE_EXTRAS, load_task("sst2")) == {"input_prompt": None}  # bare text
    args = parse(["zeroshot", *argv[1:], "--limit", "null"])
    assert _options(args, ZEROSHOT_OPTIONS, task) == {"limit": None}
    for bad in (["--limit", "few"], ["--epochs", "null"]):
        with pytest.raises(SystemExit):
            parse([*argv, *bad])
        assert "invalid" in capsys.readouterr().err


def test_a_boolean_flag_turns_the_option_either_way_over_the_tasks_value(tmp_path):
    """A task file's `bf16: false` or `packing: true` is undone on the command line by --bf16 or --no-packing;
    a flag left out keeps the task's value."""
    from tunelab.cli import _train_config

    task, argv = _finetune_with_task_file(tmp_path, "finetune: {bf16: false, packing: true}\n")
    parse = build_parser().parse_args
    cfg = _train_config(parse(argv), task)
    assert (cfg.bf16, cfg.packing) == (False, True)
    cfg = _train_config(parse([*argv, "--bf16", "--no-packing"]), task)
    assert (cfg.bf16, cfg.packing) == (True, False)
    cfg = _train_config(parse([*argv, "--no-bf16", "--packing"]), task)
    assert (cfg.bf16, cfg.packing) == (False, True)


def test_another_method_than_the_tasks_takes_that_methods_learning_rate(tmp_path):
    """The task's learning rate is for its own method (SST-2's 2e-5: full fine-tuning): `--method head` or
    `--method lora` without a learning rate takes that method's (1e-3, 3e-4) - with 2e-5 the head alone
    hardly moves from its start; a rate given by flag or --config, or a task written for that method, wins."""
    from tunelab.cli import _train_config
    from tunelab.tasks import load_task

    parse = build_parser().parse_args
    sst2 = load_task("sst2")
    argv = ["finetune", "m", "--task", "sst2", "--out", "o"]
    rates = {
        m: _train_config(parse([*argv, "--method", m]), sst2).learning_rate for m in ("full", "lora", "head")
    }
    assert rates == {"full": 2e-5, "lora": 3e-4, "head": 1e-3}
    assert _train_config(parse(argv), sst2).learning_rate == 2e-5
    assert (
        _train_config(parse([*argv, "--method", "head", "--learning-rate", "5e-3"]), sst2).learning_rate
        == 5e-3
    )
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 4.0e-4\n")
    cfg = _train_config(parse([*argv, "--method", "head", "--config", str(config)]), sst2)
    assert cfg.learning_rate == 4e-4
    task, own = _finetune_with_task_file(tmp_path, "finetune: {method: lora, learning_rate: 5.0e-4}\n")
    assert _train_config(parse(own), task).learning_rate == 5e-4  # the task's own method: its rate
    assert _train_config(parse([*own, "--method", "full"]), task).learning_rate == 2e-5
    config.write_text("method: head\n")  # a method from --config is another method too
    assert _train_config(parse([*argv, "--config", str(config)]), sst2).learning_rate == 1e-3
    # a task naming its method without a rate: the method's, not the general default's
    (tmp_path / "head").mkdir()
    task, own = _finetune_with_task_file(tmp_path / "head", "finetune: {method: head}\n")
    assert _train_config(parse(own), task).learning_rate == 1e-3
    assert _train_config(parse([*own, "--method", "lora"]), task).learning_rate == 3e-4
