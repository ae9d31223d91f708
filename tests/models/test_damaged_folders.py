"""Model folders that are damaged, edited by hand or used for the wrong thing (an audit's findings): each
ends with exit status 2 and one message naming the folder and the problem, never a traceback, a random
head or the wrong base model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import SQUAD, SST2, qa_examples, sst2_examples, tiny_train_config

from tunelab import runs
from tunelab.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return rc, cap.out, cap.err


def finetuned(task, model, examples, out, **cfg) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        runs.finetune(task, model, examples[:-3], examples[-3:], "fixture", out, tiny_train_config(**cfg))
    return Path(out)


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory):
    """A full and a LoRA SST-2 folder and a LoRA SQuAD one, fine-tuned from a copy of the tiny model given
    by a relative path (as a user in the model's parent folder would)."""
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(tiny_model_dir, root / "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        full = finetuned(SST2, "tiny", sst2_examples(12), root / "full", epochs=1)
        lora = finetuned(SST2, "tiny", sst2_examples(12), root / "lora", method="lora", epochs=1)
        squad = finetuned(
            SQUAD,
            "tiny",
            qa_examples(6),
            root / "squad",
            method="lora",
            batch_size=4,
            max_length=64,
            epochs=1,
        )
    return {"root": root, "full": full, "lora": lora, "squad": squad}


def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\na great film\t1\nan awful film\t0\n"
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    return d.parent


def damaged(folders, name: str, tmp_path: Path) -> Path:
    copy = tmp_path / f"{name}-copy"
    shutil.copytree(folders[name], copy)
    return copy


def edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_a_lora_folder_finds_its_own_base_model_from_any_folder(folders, tmp_path, monkeypatch, capsys):
    """The base is recorded as an absolute path: from another folder holding a different `tiny`, predict
    still uses the model the adapter was trained on."""
    meta = json.loads((folders["lora"] / "tunelab.json").read_text())
    assert Path(meta["base_model_path"]) == (folders["root"] / "tiny").resolve()
    assert meta["base_model"] == "tiny"  # as the user gave it (the model card's name)
    monkeypatch.chdir(folders["root"])
    rc, here, _ = run(capsys, "predict", folders["lora"], "a great film", "--json")
    elsewhere = tmp_path / "other"
    shutil.copytree(folders["root"] / "tiny", elsewhere / "tiny")
    weights = elsewhere / "tiny" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights)  # another model named `tiny`
    monkeypatch.chdir(elsewhere)
    rc2, there, _ = run(capsys, "predict", folders["lora"], "a great film", "--json")
    assert rc == rc2 == 0 and json.loads(here) == json.loads(there)


def test_a_lora_folder_whose_base_is_gone_or_unreadable_says_so(folders, tmp_path, capsys):
    copy = damaged(folders, "lora", tmp_path)
    for base, words in [
        (str(tmp_path / "deleted"), "cannot load its base model"),
        (5, "does not name its base model (base_model_path: a folder or a Hub id, got 5)"),
    ]:
        edit_json(copy / "tunelab.json", base_model_path=base)
        for argv in (["predict", copy, "hi"], ["export", copy, "--out", tmp_path / "o"]):
            rc, _, err = run(capsys, *argv)
            assert rc == 2 and str(copy) in err and words in err, (argv, err)
            assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "damage, words",
    [
        (
            lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x00" * 100),
            "cannot load the LoRA adapter",
        ),
        (
            lambda f: (f / "adapter_config.json").write_text("{bad"),
            "adapter_config.json: broken model config",
        ),
        (lambda f: (f / "adapter_config.json").write_text("[1]"), "expected a JSON object, got list"),
        (lambda f: edit_json(f / "adapter_config.json", r=3), "cannot load the LoRA adapter"),
        (lambda f: edit_json(f / "adapter_config.json", peft_type="NOSUCH"), "cannot load the LoRA adapter"),
    ],
    ids=["truncated-weights", "bad-json", "json-list", "wrong-rank", "unknown-peft-type"],
)
def test_a_damaged_lora_adapter_is_one_clear_error(folders, tmp_path, capsys, damage, words):
    copy = damaged(folders, "lora", tmp_path)
    damage(copy)
    rc, _, err = run(capsys, "predict", copy, "a great film")
    assert rc == 2 and str(copy) in err and words in err, err


def test_weights_without_the_trained_head_are_refused_not_given_a_random_one(
    folders, tiny_model_dir, tmp_path, capsys
):
    copy = damaged(folders, "full", tmp_path)
    shutil.copy(Path(tiny_model_dir) / "model.safetensors", copy / "model.safetensors")  # body only
    for argv in (["predict", copy, "a great film"], ["export", copy, "--out", tmp_path / "o"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and "the trained head would be random" in err and "score.weight" in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_a_fine_tuned_folder_as_the_base_of_another_kind_of_task_says_what_it_is(folders, tmp_path, capsys):
    merged = tmp_path / "squad-export"
    rc, _, err = run(capsys, "export", folders["squad"], "--out", merged)
    assert rc == 0, err
    rc, _, err = run(
        capsys,
        "finetune",
        merged,
        "--task",
        "sst2",
        "--data-dir",
        data_dir(tmp_path),
        "--out",
        tmp_path / "o",
    )
    assert rc == 2 and "a model fine-tuned with a span head, not a classification one" in err, err


def test_push_refuses_a_fine_tuning_output_folder(folders, capsys):
    rc, _, err = run(capsys, "push", folders["lora"], "--repo-id", "someone/model", "--dry-run")
    assert rc == 2 and "a fine-tuning output folder" in err and "tunelab export" in err, err


@pytest.mark.parametrize(
    "change, words",
    [
        ({"max_length": "long"}, "max_length must be an integer >= 1, got 'long'"),
        ({"max_length": 0}, "max_length must be an integer >= 1, got 0"),
        ({"bidirectional": "no"}, "bidirectional must be true or false, got 'no'"),
        ({"input_prompt": 5}, "input_prompt must be a prompt mapping or null, got 5"),
        ({"input_prompt": {"text": "Review: {nosuchfield}"}}, "must contain {text}"),
    ],
)
def test_tunelab_json_values_tunelab_never_writes_are_refused(folders, tmp_path, capsys, change, words):
    copy = damaged(folders, "full", tmp_path)
    edit_json(copy / "tunelab.json", **change)
    for argv in (["predict", copy, "a great film"], ["export", copy, "--out", tmp_path / "o"]):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and "tunelab.json" in err and words in err, (argv, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "file, content, words",
    [
        ("eval/metrics.json", "[1, 2]", "metrics.json: expected a JSON object, got list"),
        ("training_config.json", "[1]", "training_config.json: expected a JSON object, got list"),
        ("eval/metrics.json", None, "does not hold what `tunelab finetune` writes"),
    ],
)
def test_export_checks_what_the_metrics_and_options_hold(folders, tmp_path, capsys, file, content, words):
    copy = damaged(folders, "full", tmp_path)
    if content is None:
        edit_json(copy / file, accuracy="high", precision="high")
    else:
        (copy / file).write_text(content)
    rc, _, err = run(capsys, "export", copy, "--out", tmp_path / "o")
    assert rc == 2 and words in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


@pytest.mark.parametrize(
    "file, change, words",
    [
        (
            "chat_template.jinja",
            "{% for %}",
            "its chat template (chat_template.jinja or tokenizer_config.json)",
        ),
        ("config.json", {"architectures": 5}, "'architectures' must be a list of class names, got 5"),
        ("config.json", {"hidden_act": "nosuchact"}, "hidden_act 'nosuchact' is not an activation"),
        ("config.json", {"rope_scaling": {"rope_type": "nosuch", "factor": 2.0}}, "rope_type 'nosuch'"),
        ("config.json", {"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads 3"),
        ("config.json", {"hidden_size": 64}, "do not match its config.json"),
        (
            "config.json",
            {"hidden_size": "32"},
            "cannot load its config: Validation error for field 'hidden_size'",
        ),
    ],
)
def test_a_damaged_base_model_is_one_clear_error(tiny_model_dir, tmp_path, capsys, file, change, words):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if isinstance(change, dict):
        edit_json(model / file, **change)
    else:
        (model / file).write_text(change)
    out = tmp_path / "o"
    data = data_dir(tmp_path)
    for command, extra in (("zeroshot", ()), ("finetune", ("--max-steps", 1))):
        if command == "zeroshot" and "architectures" in change:
            continue  # a causal LM is loaded by its model_type; only a task model reads architectures
        rc, _, err = run(capsys, command, model, "--task", "sst2", "--data-dir", data, "--out", out, *extra)
        # (a broken config is reported as the config's fault, not as the tokenizer's)
        assert rc == 2 and words in err and "tokenizer:" not in err, (command, err)
        assert not out.exists() and not (tmp_path / "o.partial").exists()


def test_params_of_a_damaged_config_or_an_adapter_folder(folders, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    edit_json(model / "config.json", hidden_act="nosuchact")
    rc, _, err = run(capsys, "params", model)
    assert rc == 2 and "hidden_act 'nosuchact'" in err, err
    rc, out, err = run(capsys, "params", folders["lora"])  # tunelab's folder: the task model it holds
    assert rc == 0 and "method     lora" in out, err
    bare = tmp_path / "adapter"  # an adapter alone: no base, task or method to count from
    shutil.copytree(folders["lora"], bare)
    (bare / "tunelab.json").unlink()
    rc, _, err = run(capsys, "params", bare)
    assert rc == 2 and "a LoRA adapter folder (adapter_config.json, no config.json)" in err, err


def test_a_tokenizer_without_eos_or_pad_is_one_clear_error(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    rc, _, err = run(
        capsys, "zeroshot", model, "--task", "sst2", "--data-dir", data_dir(tmp_path), "--out", tmp_path / "o"
    )
    assert rc == 2 and "neither a pad token nor an end-of-sequence token" in err, err
