"""Tasks of one's own need only a task file: TREC (6 classes) and RTE (sentence pairs) from configs/tasks/ on
small samples of the real files in $TUNELAB_DATA_DIR/extra, and an extractive-QA task from a small
SQuAD-format file, from zero-shot through fine-tuning to the report, the export with its model card, and
predict — on the tiny random Llama (the real SmolLM2 model: the slow test at the end)."""

from __future__ import annotations

import json

import pytest
from helpers import DATA, ROOT

from tunelab.cli import main

pytestmark = pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set (the TREC and RTE files)")
TREC = ROOT / "configs" / "tasks" / "trec.yaml"
RTE = ROOT / "configs" / "tasks" / "rte.yaml"
TREC_LABELS = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
# The tiny test tokenizer splits the task files' label words into shared first tokens; one letter each does
# not.
TINY_TREC = {"text": "Q: {text}\nType:", "verbalizers": {k: [k[0].lower()] for k in TREC_LABELS}}
TINY_RTE = {
    "text": "{text}\nQ: {text_pair}\nA:",
    "verbalizers": {"entailment": ["y"], "not_entailment": ["n"]},
}


def qa_task(folder) -> str:
    """A task file beside its own SQuAD-format files (two unanswerable questions: scored as v2.0)."""
    folder.mkdir(parents=True, exist_ok=True)
    articles = []
    for a in range(4):
        ctx = f"Team {a} won the cup in the city of Lima {a} . The final was played in {2000 + a} ."
        qas = [
            {
                "id": f"{a}-{q}",
                "question": question,
                "answers": [{"text": ans, "answer_start": ctx.index(ans)}],
            }
            for q, (question, ans) in enumerate(
                [
                    ("Who won the cup ?", f"Team {a}"),
                    ("Where was it ?", f"Lima {a}"),
                    ("When ?", f"{2000 + a}"),
                ]
            )
        ]
        if a < 2:
            qas.append(
                {"id": f"{a}-x", "question": "Who lost the cup ?", "answers": [], "is_impossible": True}
            )
        articles.append({"title": f"Cup_{a}", "paragraphs": [{"context": ctx, "qas": qas}]})
    (folder / "train.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    (folder / "dev.json").write_text(json.dumps({"version": "v2.0", "data": articles[:2]}))
    task = folder / "cup-qa.yaml"
    task.write_text(
        "title: Cup QA\nkind: extractive_qa\ndata:\n  splits: {train: train.json, dev: dev.json}\n"
        "card: {limitations: [Made-up cup finals.]}\n"
    )
    return str(task)


def _study_config(tmp_path, model) -> str:
    tiny = {"learning_rate": 3e-3, "epochs": 1, "batch_size": 8, "warmup_ratio": 0.0, "log_every": 1}
    cfg = {
        "model": model,
        "data_dir": DATA,
        "seed": 0,
        "tasks": {
            "sst2": {"enabled": False},
            "squad": {"enabled": False},
            "trec": {
                "file": str(TREC),
                "zeroshot": {"limit": 24, "prompt": TINY_TREC, "batch_size": 8},
                "finetune": {
                    "limit": 24,
                    "train_limit": 48,
                    "input_prompt": TINY_TREC,
                    "max_length": 40,
                    **tiny,
                },
            },
            "rte": {
                "file": str(RTE),
                "zeroshot": {"limit": 16, "prompt": TINY_RTE, "batch_size": 8},
                "finetune": {
                    "limit": 16,
                    "train_limit": 32,
                    "input_prompt": TINY_RTE,
                    "max_length": 96,
                    **tiny,
                },
            },
            "cup": {
                "file": qa_task(tmp_path / "qa"),
                "zeroshot": {"prompt": "plain", "batch_size": 4, "max_new_tokens": 4},
                "finetune": {"max_length": 64, **tiny},
            },
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


@pytest.fixture(scope="module")
def study_run(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("user-tasks")
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
        assert main(["study", "--config", _study_config(tmp_path, tiny_model_dir), "--out", str(run)]) == 0
    return run


def metrics(run, task, stage="finetune/eval"):
    return json.loads((run / task / stage / "metrics.json").read_text())


def test_study_runs_every_stage_of_tasks_of_ones_own(study_run):
    for task in ("trec", "rte", "cup"):
        assert (study_run / task / "task.json").is_file()
        for stage in ("zeroshot", "finetune/eval"):
            assert metrics(study_run, task, stage)["task"] == task
    trec = metrics(study_run, "trec")
    assert trec["labels"] == TREC_LABELS and set(trec["per_class"]) == set(TREC_LABELS)
    assert len(trec["confusion_matrix"]) == 6 and all(len(r) == 6 for r in trec["confusion_matrix"])
    assert "macro_f1" in trec and "f1" not in trec and trec["n"] == 24  # no positive class of six
    assert trec["train_examples"] == 48 and trec["data"].endswith("extra/TREC/test.tsv")
    rte = metrics(study_run, "rte", "zeroshot")
    assert rte["positive_label"] == "entailment" and {"precision", "recall", "f1"} <= set(rte)
    row = json.loads((study_run / "rte" / "zeroshot" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["text_pair"] and set(row["scores"]) == {"entailment", "not_entailment"}
    cup = metrics(study_run, "cup", "zeroshot")
    assert cup["n"] == 8 and "NoAns_f1" in cup and "best_f1" in cup  # unanswerable questions: v2.0 scoring
    params = json.loads((study_run / "params" / "trec.json").read_text())
    assert params["num_labels"] == 6 and params["task_model"]["added"] == {"score": 32 * 6}


def test_report_has_a_section_per_kind(study_run):
    md = (study_run / "report.md").read_text()
    for title in ("## TREC-6", "## RTE", "## Cup QA"):
        assert title in md, title
    assert "| F1, class ABBR (%) |" in md and "| F1, entailment class (%) |" in md
    assert "hidden size 32 × 6 labels" in md
    assert "TREC-6: the evaluation data are TREC-6 test set (500 questions), the official split" in md
    assert "Cup QA: the evaluation data are the dev file dev.json, not an official split" in md
    figures = study_run / "figures"
    for name in ("trec-confusion-zero-shot", "trec-confusion-fine-tuned", "rte-scores", "cup-f1-by-length"):
        assert (figures / f"{name}.png").is_file(), name


def test_export_and_predict_a_six_class_model(study_run, tmp_path, capsys):
    from huggingface_hub import ModelCard

    folder = study_run / "trec" / "finetune"
    out = tmp_path / "trec-export"
    assert main(["export", str(folder), "--out", str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == ["CogComp/trec"]
    results = {r.metric_type: r for r in card.data.eval_results}
    assert set(results) == {"accuracy", "macro_f1"}
    # the study scored the first 24 of the test file's 500 questions (its limit): the card says so
    assert results["accuracy"].dataset_split == "test[:24]"
    assert results["accuracy"].dataset_name.endswith("(first 24 of 500 examples)")
    assert "F1, class NUM" in card.text and "six answer types" in card.text
    assert json.loads((out / "config.json").read_text())["id2label"] == {
        str(i): n for i, n in enumerate(TREC_LABELS)
    }
    meta = json.loads((out / "tunelab.json").read_text())
    assert (
        meta["task_definition"]["labels"] == TREC_LABELS and "splits" not in meta["task_definition"]["data"]
    )
    assert str(DATA) not in (out / "tunelab.json").read_text()
    capsys.readouterr()
    for model_dir in (folder, out):  # the fine-tuned folder and its export answer alike
        assert main(["predict", str(model_dir), "what is the capital of peru ?", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["predictions"][0]
        assert row["label"] in TREC_LABELS and set(row["scores"]) == set(TREC_LABELS)
    # evaluate needs no --task: the folder knows its task
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--data-file",
                f"{DATA}/extra/TREC/test.tsv",
                "--limit",
                "5",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["task"] == "trec"


def test_predict_sentence_pairs_and_questions(study_run, capsys):
    rte = study_run / "rte" / "finetune"
    assert main(["predict", str(rte), "A cat sat on the mat .", "--pair", "An animal sat .", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert row["text_pair"] == "An animal sat ." and row["label"] in ("entailment", "not_entailment")
    assert main(["predict", str(rte), "A cat sat on the mat ."]) == 2
    assert "--pair" in capsys.readouterr().err
    cup = study_run / "cup" / "finetune"
    ctx = "Team 7 won the cup in the city of Lima 7 . The final was played in 2007 ."
    assert main(["predict", str(cup), "--question", "Who won the cup ?", "--context", ctx, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert row["answer"] == "" or row["answer"] in ctx


def test_export_a_qa_task_of_ones_own(study_run, tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "cup-export"
    assert main(["export", str(study_run / "cup" / "finetune"), "--out", str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "question-answering" and not card.data.datasets
    assert {r.metric_type for r in card.data.eval_results} == {"exact_match", "f1"}
    assert "Made-up cup finals." in card.text and "no answer" in card.text  # v2: it can abstain


def test_commands_take_a_task_file(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    prompts = {}
    for name, spec in (("rte", TINY_RTE), ("trec", TINY_TREC)):
        prompts[name] = tmp_path / f"{name}-prompt.yaml"
        prompts[name].write_text(json.dumps(spec))
    assert (
        main(
            [
                "finetune",
                tiny_model_dir,
                "--task",
                str(RTE),
                "--train-limit",
                "16",
                "--limit",
                "8",
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--max-length",
                "64",
                "--input-prompt",
                str(prompts["rte"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "RTE fine-tuned: accuracy" in capsys.readouterr().out
    assert json.loads((out / "tunelab.json").read_text())["input_prompt"]["text"] == TINY_RTE["text"]
    assert (
        main(
            [
                "zeroshot",
                tiny_model_dir,
                "--task",
                str(TREC),
                "--limit",
                "6",
                "--calibration",
                "contextual",
                "--prompt",
                str(prompts["trec"]),
                "--out",
                str(tmp_path / "zs"),
            ]
        )
        == 0
    )
    assert "TREC-6 zero-shot: accuracy" in capsys.readouterr().out
    assert (
        main(
            [
                "zeroshot",
                tiny_model_dir,
                "--task",
                str(TREC),
                "--max-new-tokens",
                "3",
                "--out",
                str(tmp_path / "zs2"),
            ]
        )
        == 2
    )
    assert "--max-new-tokens applies to extractive_qa tasks" in capsys.readouterr().err


def test_data_check_of_a_task_alone_checks_each_of_its_splits(tmp_path, capsys):
    """`data check --task T` with no file: every split of the task's own data, or --split's; a bad row names
    its file and line; a task without data files says to give one."""
    assert main(["data", "check", "--task", str(TREC), "--data-dir", DATA]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["train", "dev"]
    assert lines[1].endswith("; 10 of its questions also in train")  # TREC's test set repeats 10 of train's
    assert (
        "extra/TREC/train.tsv: TREC-6, 5,452 rows" in lines[0]
        and "TREC/test.tsv: TREC-6, 500 rows" in lines[1]
    )

    qa = qa_task(tmp_path / "qa")
    assert main(["data", "check", "--task", qa, "--split", "validation", "--json"]) == 0  # (means dev)
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["splits"]) == ["dev"]
    assert summary["splits"]["dev"]["questions"] == 8 and summary["splits"]["dev"]["unanswerable"] == 2
    assert main(["data", "check", "--task", qa, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["splits"]
    assert "in_train" not in summary["train"] and summary["dev"]["in_train"] == 2  # its 2 passages

    own = tmp_path / "own"
    own.mkdir()
    (own / "train.tsv").write_text("text\tlabel\nfine\tyes\nodd\tmaybe\n")
    (own / "dev.tsv").write_text("text\tlabel\nfine\tyes\n")
    task = own / "yn.yaml"
    task.write_text(
        "kind: classification\nlabels: ['no', 'yes']\ndata:\n  text: text\n"
        "  splits: {train: train.tsv, dev: dev.tsv}\n"
    )
    assert main(["data", "check", "--task", str(task)]) == 2
    err = capsys.readouterr().err
    assert "train.tsv, line 3" in err and "maybe" in err

    bare = own / "bare.yaml"
    bare.write_text("kind: classification\nlabels: ['no', 'yes']\n")
    assert main(["data", "check", "--task", str(bare)]) == 2
    assert "names no data files" in capsys.readouterr().err
    assert main(["data", "check"]) == 2
    assert "or --task TASK alone" in capsys.readouterr().err


def test_shipped_label_words_are_told_apart_by_the_smollm2_tokenizer(monkeypatch):
    import os
    from pathlib import Path

    from tunelab.models import load_tokenizer
    from tunelab.tasks import load_task
    from tunelab.tasks.classification import verbalizer_ids

    monkeypatch.setenv(
        "TUNELAB_CACHE", os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab"))
    )
    tok = load_tokenizer("smollm2-135m")
    for path in (TREC, RTE):
        task = load_task(str(path))
        for name in task.prompts:
            ids = verbalizer_ids(tok, task.prompt(name))  # raises when two labels share a first token
            assert len(ids) == len(task.labels), (path, name)


@pytest.mark.slow
def test_real_model_learns_trec_and_rte(tmp_path):
    """SmolLM2-135M on subsets of the real files: zero-shot and fine-tuned well above the majority class on
    TREC (with these 64 test / 96 training questions, on 2 CPU cores: majority 28%, zero-shot 52%, fine-tuned
    73%), and RTE's sentence pairs through every stage (about 1.5 minutes on 2 CPU cores)."""
    import os
    from pathlib import Path

    cfg = {
        "model": "smollm2-135m",
        "data_dir": DATA,
        "seed": 0,
        "tasks": {
            "sst2": {"enabled": False},
            "squad": {"enabled": False},
            "trec": {
                "file": str(TREC),
                "zeroshot": {"limit": 64},
                "finetune": {"limit": 64, "train_limit": 96},
            },
            "rte": {
                "file": str(RTE),
                "zeroshot": {"limit": 12},
                "finetune": {"limit": 12, "train_limit": 16, "max_length": 128},
            },
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(cfg))
    real_cache = os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_CACHE", real_cache)
        assert main(["study", "--config", str(path), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    zs, ft = metrics(run, "trec", "zeroshot"), metrics(run, "trec")
    majority = max(map(sum, zs["confusion_matrix"])) / zs["n"]
    assert zs["accuracy"] > majority + 0.1, zs
    assert ft["accuracy"] > majority + 0.1, ft
    rte = metrics(run, "rte")
    assert rte["n"] == 12 and 0 <= rte["accuracy"] <= 1 and rte["positive_label"] == "entailment"
    md = (run / "report.md").read_text()
    assert "## TREC-6" in md and "## RTE" in md
