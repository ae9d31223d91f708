"""Task definitions: the built-in ones, the shipped examples (configs/tasks/), and bad task files, each
refused with one message naming the file, the key and the problem (exit status 2, nothing written)."""

from __future__ import annotations

import pytest
from helpers import ROOT

from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.tasks import builtin_names, get_task, load_task
from tunelab.tasks.base import parse_task

EXAMPLES = sorted((ROOT / "configs" / "tasks").glob("*.yaml"))
CLASSIFICATION = "kind: classification\nlabels: [a, b]\ndata: {splits: {dev: d.tsv}}\n"


def test_builtin_tasks_are_definitions_like_any_other():
    assert builtin_names() == ["sst2", "squad", "squad_v2"]
    sst2, squad, squad_v2 = (get_task(n) for n in builtin_names())
    assert sst2.kind == "classification" and sst2.labels == ("negative", "positive") and sst2.positive == 1
    assert (squad.version, squad_v2.version) == ("1.1", "2.0") and squad.for_version("2.0") is squad_v2
    assert not squad_v2.study_enabled and sst2.study_enabled
    # what the files are (../shared/data/SOURCES.md)
    assert squad.describe_file("/d/squad/v1.1-dev.json").official
    assert "rebuilt" in squad.describe_file("/d/squad/v1.1-train.json").name
    assert not squad_v2.describe_file("/d/squad/v2.0-dev.json").official
    assert "not comparable" in squad_v2.describe_file("/d/squad/v2.0-dev.json").note
    assert sst2.describe_file("/d/SST-2/dev.tsv").official


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_task_files_read_and_round_trip(path):
    task = load_task(str(path))
    assert task.source == str(path.resolve()) and task.name == path.stem.replace("qa-example", "my-qa")
    again = parse_task(task.to_dict(), where="copy", name=task.name, default_root=task.relative_to)
    assert again.splits.keys() == task.splits.keys() and again.zeroshot_options() == task.zeroshot_options()
    assert again.kind == task.kind and again.to_dict() == task.to_dict()
    task.prompt(None)  # the default template is valid


def test_a_study_key_renames_a_task_file_task():
    assert load_task(str(ROOT / "configs/tasks/trec.yaml"), name="questions").name == "questions"
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        load_task("nope")


BAD = [
    ("- a list\n", "", "a task file is a mapping"),
    ("name: x\n", "kind", "missing (required)"),
    ("kind: regression\n", "kind", "must be one of classification, extractive_qa"),
    ("kind: classification\ndata: {splits: {dev: d.tsv}}\n", "labels", "missing (required)"),
    ("kind: classification\nlabels: [a]\ndata: {splits: {dev: d.tsv}}\n", "labels", "at least two distinct"),
    (
        "kind: classification\nlabels: [a, a]\ndata: {splits: {dev: d.tsv}}\n",
        "labels",
        "at least two distinct",
    ),
    (CLASSIFICATION + "colour: red\n", "colour", "unknown keys"),
    ("kind: classification\nlabels: [a, b]\ndata: {splits: {train: t.tsv}}\n", "data.splits.dev", "missing"),
    (CLASSIFICATION.replace("{splits", "{relative_to: here, splits"), "data.relative_to", "must be one of"),
    (CLASSIFICATION.replace("{splits", "{columns: [a], splits"), "data.columns", "unknown keys"),
    (CLASSIFICATION + "verbalizers: {c: [' c']}\n", "verbalizers", "not among the task's labels"),
    (CLASSIFICATION + "verbalizers: {a: []}\n", "verbalizers.a", "a word or a list of words"),
    (CLASSIFICATION + "prompts: {p: {text: no slot}}\n", "prompts.p", "must contain {text}"),
    (
        CLASSIFICATION.replace("{splits", "{text_pair: s2, splits") + "prompts: {p: {text: '{text}'}}\n",
        "prompts.p",
        "must contain {text_pair}",
    ),
    (CLASSIFICATION + "prompts: {p: {text: '{text}', colour: red}}\n", "prompts.p", "unknown keys"),
    (CLASSIFICATION + "zeroshot: {prompt: nope}\n", "zeroshot.prompt", "not one of the task's prompts"),
    (CLASSIFICATION + "zeroshot: {max_new_tokens: 3}\n", "zeroshot.max_new_tokens", "unknown keys"),
    (CLASSIFICATION + "finetune: {learning_rate: fast}\n", "finetune.learning_rate", "a (finite) number"),
    (CLASSIFICATION + "finetune: {batch_size: 0}\n", "finetune.batch_size", "an integer >= 1"),
    (CLASSIFICATION + "positive_label: c\n", "positive_label", "must be one of the labels"),
    (CLASSIFICATION.replace("[a, b]", "[a, b, c]") + "positive_label: c\n", "positive_label", "binary"),
    (CLASSIFICATION + "name: a/b\n", "name", "letters, digits"),
    (CLASSIFICATION + "hub: {dataset: [x]}\n", "hub.dataset", "must be a string"),
    ("kind: extractive_qa\nversion: '3.0'\ndata: {splits: {dev: d.json}}\n", "version", "must be 1.1 or 2.0"),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\nprompts: {p: {text: '{context}'}}\n",
        "prompts.p",
        "{context} and {question}",
    ),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\ninput_prompt: chat\n",
        "input_prompt",
        "unknown keys",
    ),
    ("kind: [unclosed\n", "", "cannot read task file"),
    (
        "kind: extractive_qa\nversion: 1\ndata: {splits: {dev: d.json}}\n",
        "version",
        "must be 1.1 or 2.0, got 1",
    ),
    (CLASSIFICATION + "labels: [b, c]\n", "", "the key 'labels' is given twice"),
    (CLASSIFICATION + "zeroshot: {prompt: none}\n", "zeroshot.prompt", "not one of the task's prompts"),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\nzeroshot: {prompt: nope}\n",
        "zeroshot.prompt",
        "not one of the task's prompts",
    ),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\nversions: {'2.0': nope}\n",
        "versions.2.0",
        "the built-in task of that version (one of squad_v2), got 'nope'",
    ),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\nversions: {'2.0': sst2}\n",
        "versions.2.0",
        "(one of squad_v2), got 'sst2'",
    ),
    (
        "kind: extractive_qa\ndata: {splits: {dev: d.json}}\nversions: {'1.1': squad_v2}\n",
        "versions.1.1",
        "(one of squad), got 'squad_v2'",
    ),
    (CLASSIFICATION.replace("[a, b]", "[yes, no]"), "labels", "unquoted yes/no/true/false/on/off"),
    (CLASSIFICATION.replace("{dev:", "{validation: v.tsv, dev:"), "data.splits.validation", "name it dev"),
    ("kind: classification\nlabels: [a, b]\ndata: {dataset: ':sst2'}\n", "data.dataset", "expected a Hub id"),
    (CLASSIFICATION + "positive_label: yes\n", "positive_label", "got a boolean (YAML reads an unquoted yes"),
    (CLASSIFICATION + "hub: {config: sst2}\n", "hub.config", "names a config of `dataset`"),
    (
        CLASSIFICATION + "hub: {dataset: a/b, columns: {txt: s}}\n",
        "hub.columns",
        "columns are text, text_pair",
    ),
    (
        CLASSIFICATION + "finetune: {packing: true, bidirectional: true}\n",
        "finetune",
        "packing and bidirectional cannot be used together",
    ),
    # a section of another type is an error even when YAML reads it as empty or false
    ("kind: classification\nlabels: [a, b]\ndata: []\n", "data", "must be a mapping, got []"),
    (CLASSIFICATION.replace("{splits: {dev: d.tsv}}", "{splits: []}"), "data.splits", "must be a mapping"),
    (CLASSIFICATION + "zeroshot: []\n", "", "expected a mapping of zero-shot options, got list"),
    (CLASSIFICATION + "finetune: 0\n", "", "expected a mapping of fine-tuning options, got int"),
    (CLASSIFICATION + "hub: false\n", "hub", "must be a mapping, got False"),
    (CLASSIFICATION + "card: ''\n", "card", "must be a mapping, got ''"),
    (CLASSIFICATION.replace("[a, b]", "['a ', b]"), "labels", "cannot start or end with a space"),
    (CLASSIFICATION.replace("[a, b]", "[' ', b]"), "labels", "at least two distinct, non-empty"),
    (
        CLASSIFICATION + "prompts: {p: {text: '{text}', system: Be brief.}}\n",
        "prompts.p",
        "needs `chat: true`",
    ),
    (CLASSIFICATION + "unit: ''\n", "unit", "must not be blank"),
    (CLASSIFICATION + "title: ' '\n", "title", "must not be blank"),
]


def test_task_file_details_yaml_would_blur(tmp_path):
    """Label words keyed by numbers (YAML reads `1:` as an int) are the task's words, not the defaults; a
    version written as an int is that version; a name taken from the file name says so when it is bad."""
    numbered = tmp_path / "stars.yaml"
    numbered.write_text(
        "kind: classification\nlabels: [1, 20]\nverbalizers: {1: [' low'], 20: [' high']}\n"
        "data: {splits: {dev: d.tsv}}\n"
    )
    assert load_task(str(numbered)).verbalizers == {"1": [" low"], "20": [" high"]}
    numbered.write_text(  # a prompt's own words read the same way (keys as numbers, one word as a string)
        "kind: classification\nlabels: [1, 20]\ndata: {splits: {dev: d.tsv}}\n"
        "prompts: {p: {text: '{text}', verbalizers: {1: ' low', 20: [' high', ' top']}}}\n"
    )
    assert load_task(str(numbered)).prompt("p").verbalizers == {"1": [" low"], "20": [" high", " top"]}
    many = tmp_path / "many.yaml"  # positive_label: null is its default, as any null key is
    many.write_text(
        "kind: classification\nlabels: [a, b, c]\npositive_label: null\ndata: {splits: {dev: d.tsv}}\n"
    )
    assert load_task(str(many)).positive is None
    hub = tmp_path / "hub.yaml"  # data.dataset: ID:CONFIG, as --dataset reads it
    hub.write_text("kind: classification\nlabels: [a, b]\ndata: {dataset: 'nyu-mll/glue:sst2'}\n")
    assert (load_task(str(hub)).dataset.id, load_task(str(hub)).dataset.config) == ("nyu-mll/glue", "sst2")
    qa = tmp_path / "qa.yaml"
    qa.write_text("kind: extractive_qa\nversion: 2\ndata: {splits: {dev: d.json}}\n")
    assert load_task(str(qa)).version == "2.0"
    qa.write_text("kind: extractive_qa\nversions: {2: squad_v2}\ndata: {splits: {dev: d.json}}\n")
    assert load_task(str(qa)).versions == {"2.0": "squad_v2"}
    spaced = tmp_path / "my task.yaml"
    spaced.write_text(CLASSIFICATION)
    with pytest.raises(
        UsageError, match=r"got 'my task' \(from the file's name: give the task a `name:` key\)"
    ):
        load_task(str(spaced))


@pytest.mark.parametrize("text,key,problem", BAD, ids=[f"{i}-{b[1] or 'file'}" for i, b in enumerate(BAD)])
def test_bad_task_files_exit_2_naming_file_key_and_problem(
    tiny_model_dir, tmp_path, capsys, text, key, problem
):
    task = tmp_path / "bad-task.yaml"
    task.write_text(text)
    out = tmp_path / "out"
    rc = main(["zeroshot", tiny_model_dir, "--task", str(task), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "bad-task.yaml" in err and key in err and problem in err, err
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_missing_task_file_and_missing_data(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["zeroshot", tiny_model_dir, "--task", str(tmp_path / "none.yaml"), "--out", str(out)]) == 2
    assert "none.yaml" in capsys.readouterr().err
    task = tmp_path / "t.yaml"
    task.write_text(CLASSIFICATION)  # d.tsv, relative to the task file, is not there
    assert main(["zeroshot", tiny_model_dir, "--task", str(task), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no t dev file found" in err and str(tmp_path / "d.tsv") in err
    assert not out.exists()


@pytest.mark.parametrize("data", [[1], "d.tsv", {"splits": [1]}])
def test_a_damaged_stored_task_definition_is_one_message(data):
    from tunelab.errors import ModelError
    from tunelab.tasks import task_from_meta

    meta = {"task": "mine", "task_definition": {"kind": "classification", "labels": ["a", "b"], "data": data}}
    with pytest.raises(ModelError, match=r"ft/tunelab\.json: .*task_definition.*data"):
        task_from_meta(meta, "ft/tunelab.json")


def test_a_task_without_splits_is_stored_so_that_it_reads_back(tmp_path):
    """A task file may leave its files to --train-file / --data-file: the definition a fine-tuned folder
    stores then has no splits, and predict / evaluate / export read it back (an empty mapping did not)."""
    from tunelab.tasks import load_task, task_from_meta

    path = tmp_path / "pair.yaml"
    path.write_text("kind: classification\nlabels: [entail, other]\ndata: {text: s1, text_pair: s2}\n")
    stored = load_task(str(path)).to_dict()
    assert "splits" not in stored["data"]
    back = task_from_meta({"task": "pair", "task_definition": stored}, "ft/tunelab.json")
    assert list(back.labels) == ["entail", "other"] and back.pairs
