"""Fine-tuning variants (`tasks.<task>.variants`): a tiny-model study with LoRA and head-only beside the main
full fine-tuning: their folders, stage records, parameter counts, report rows and summary rows, a rerun that
skips them, and the config errors that name the key path."""

import json
import re
import shutil

import pytest
import yaml

from tunelab import runs
from tunelab.cli import main
from tunelab.study import config as study_config
from tunelab.study import run as study_run
from tunelab.study.summary import summary_rows

POS = ["a good and great film", "truly wonderful , a great movie"]
NEG = ["a bad and awful film", "truly terrible , an awful movie"]


def _data(tmp_path):
    root = tmp_path / "data"
    (root / "SST-2").mkdir(parents=True)
    for split, n, tail in (("train", 16, ""), ("dev", 8, " indeed")):
        rows = [(POS[i % 2] + tail, 1) if i % 2 else (NEG[i % 2] + tail, 0) for i in range(n)]
        (root / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows)
        )
    (root / "squad").mkdir()
    for split, prefix, n in (("train", "tr", 2), ("dev", "dv", 2)):
        data = []
        for a in range(n):
            ctx = f"The Denver Broncos won Super Bowl {50 + a} in Santa Clara ."
            qas = [
                {
                    "id": f"{prefix}-{a}-{q}",
                    "question": question,
                    "answers": [{"text": ans, "answer_start": ctx.index(ans)}],
                }
                for q, (question, ans) in enumerate(
                    [("Who won ?", "Denver Broncos"), ("Where ?", "Santa Clara")]
                )
            ]
            data.append({"title": f"A{a}", "paragraphs": [{"context": ctx, "qas": qas}]})
        (root / "squad" / f"v1.1-{split}.json").write_text(json.dumps({"version": "1.1", "data": data}))
    return root


def _config(tmp_path, model, data) -> str:
    cfg = {
        "model": model,
        "data_dir": str(data),
        "seed": 0,
        "tasks": {
            "sst2": {
                "zeroshot": {"limit": 8, "prompt": "plain", "batch_size": 8},
                "finetune": {
                    "limit": 8,
                    "input_prompt": "plain",
                    "method": "full",
                    "learning_rate": 3e-3,
                    "batch_size": 8,
                    "max_length": 32,
                    "log_every": 1,
                },
                "variants": {
                    "lora": {"method": "lora", "learning_rate": 3e-3, "lora_r": 4},
                    "head-only": {"method": "head", "learning_rate": 1e-2},
                },
            },
            "squad": {
                "zeroshot": {"limit": 4, "prompt": "plain", "batch_size": 4, "max_new_tokens": 4},
                "finetune": {
                    "limit": 4,
                    "learning_rate": 1e-3,
                    "batch_size": 4,
                    "max_length": 64,
                    "log_every": 1,
                },
                "variants": {"head-only": {"method": "head"}},
            },
            "squad_v2": {"enabled": False},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rows(md: str, start: str, n: int = 1) -> list[str]:
    rows = [line for line in md.splitlines() if line.startswith(start)]
    assert len(rows) == n, (start, rows)
    return rows


def _fail(*args, **kwargs):
    raise AssertionError("a finished stage was recomputed")


def test_study_with_variants(tmp_path, tiny_model_dir, capsys, monkeypatch):
    cfg = _config(tmp_path, tiny_model_dir, _data(tmp_path))
    run = tmp_path / "run"
    assert main(["study", "--config", cfg, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "sst2: fine-tune variant lora (lora) and evaluate" in out
    assert "sst2: fine-tune variant head-only (head) and evaluate" in out
    assert "squad: fine-tune variant head-only (head) and evaluate" in out
    assert re.search(r"│ \+ lora +│ Accuracy", out)  # the console summary's row of the variant

    # each variant's folder, trained with its own method, and its data recorded like the main fine-tuning
    stages = json.loads((run / "stages.json").read_text())
    params = json.loads((run / "params/sst2.json").read_text())
    main_trained = params["task_model"]["trainable"]
    for task, variant, method in (
        ("sst2", "lora", "lora"),
        ("sst2", "head-only", "head"),
        ("squad", "head-only", "head"),
    ):
        folder = run / task / f"finetune-{variant}"
        assert json.loads((folder / "tunelab.json").read_text())["method"] == method
        assert json.loads((folder / "eval/metrics.json").read_text())["method"] == method
        data = stages[f"{task}/finetune-{variant}"]["data"]
        assert data["train"]["sha256"] and data["dev"]["examples"] == (8 if task == "sst2" else 4)
        assert f"{task}/params-{variant}" in stages
    lora, head = params["variants"]["lora"], params["variants"]["head-only"]
    assert lora["task_model"]["method"] == "lora" and head["task_model"]["method"] == "head"
    assert head["task_model"]["trainable"] == 32 * 2  # the classification head alone: hidden 32 x 2 labels
    assert 0 < lora["task_model"]["trainable"] < main_trained
    assert lora["finetuned"]["lora_adapter"] > 0  # the adapter folder, loaded onto its base and merged
    assert lora["finetuned_total"] == head["finetuned_total"] == params["finetuned_total"]

    # the report: each variant a row of its task's table, its numbers those of its metrics.json
    md = (run / "report.md").read_text()
    sst2 = next(part for part in md.split("\n## ") if part.startswith("SST-2"))  # the task's section
    for variant in ("lora", "head-only"):
        m = json.loads((run / f"sst2/finetune-{variant}/eval/metrics.json").read_text())
        lo, hi = m["accuracy_ci95"]
        row, counts = _rows(sst2, f"| variant {variant} |", 2)  # the scores table, the parameters table
        assert f"| {100 * m['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |" in row
        assert f"| {m['train_seconds']:.1f} |" in row
        trained = params["variants"][variant]["task_model"]["trainable"]
        assert f"| {trained:,} (" in row and f"| {trained:,} (" in counts
        assert f"| {params['variants'][variant]['finetuned_total']:,} |" in counts
        (summary,) = _rows(md, f"| SST-2, variant {variant} (")
        assert f"| {100 * m['accuracy']:.1f} |" in summary and "p " in summary
    sq = json.loads((run / "squad/finetune-head-only/eval/metrics.json").read_text())
    assert f"{sq['f1']:.1f} [{sq['f1_ci95'][0]:.1f}, {sq['f1_ci95'][1]:.1f}]" in md
    m = json.loads((run / "sst2/finetune-lora/eval/metrics.json").read_text())
    assert f"variant lora (lora fine-tuning) reached accuracy {100 * m['accuracy']:.1f}%" in md

    # the console summary lists them
    study = study_run.Study(study_config.resolve_config(config=cfg), run)
    rows = summary_rows(study)
    got = {(r["task"], r["variant"], r["key"]): r for r in rows}
    m = json.loads((run / "sst2/finetune-lora/eval/metrics.json").read_text())
    assert got[("sst2", "lora", "accuracy")]["finetuned"] == round(100 * m["accuracy"], 2)
    assert got[("sst2", "lora", "accuracy")]["params_finetuned"] == lora["finetuned_total"]
    assert got[("squad", "head-only", "f1")]["finetuned"] == round(sq["f1"], 2)

    # a rerun skips every finished stage, the variants' too
    monkeypatch.setattr(runs, "finetune", _fail)
    monkeypatch.setattr(study_run, "count_finetuned", _fail)
    monkeypatch.setattr(runs, "zeroshot", _fail)
    assert main(["study", "--config", cfg, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "sst2: fine-tune variant lora (lora) and evaluate: done earlier, skipped" in out
    assert "sst2: parameters (variant head-only): done earlier, skipped" in out
    total = int(re.search(r"\[\d+/(\d+)\] report", out).group(1))
    assert total == 2 * 4 + 3 * 2 + 1 and len(re.findall("done earlier, skipped", out)) == total - 1

    # an unfinished variant is continued (from its checkpoints, if any) into its own folder; nothing else runs
    shutil.rmtree(run / "sst2" / "finetune-lora")
    (run / "sst2" / "finetune-lora.partial").mkdir()
    calls = []

    def fake(*a, **k):
        calls.append((a[5], a[6].method, k["resume"]))
        (a[5] / "eval").mkdir(parents=True)
        (a[5] / "eval" / "metrics.json").write_text(json.dumps({**m, "accuracy": 0.25}))

    monkeypatch.setattr(runs, "finetune", fake)
    monkeypatch.setattr(study_run, "count_finetuned", lambda folder: {"total": 7, "folder": str(folder)})
    assert main(["study", "--config", cfg, "--out", str(run)]) == 0
    assert calls == [(run / "sst2" / "finetune-lora", "lora", "matching")]
    assert json.loads((run / "params/sst2.json").read_text())["variants"]["lora"]["finetuned_total"] == 7
    row = "| SST-2, variant lora (lora) | accuracy (%) | zero-shot, inputs detokenized |"
    assert row in (run / "report.md").read_text()
    assert "| 25.0 [" in _rows((run / "report.md").read_text(), "| variant lora |", 2)[0]


@pytest.mark.parametrize(
    "text,key,problem",
    [
        ("sst2:\n  variants:\n    lora: {metod: lora}\n", "tasks.sst2.variants.lora.metod", "unknown key"),
        ("sst2:\n  variants:\n    lora: {method: half}\n", "tasks.sst2.variants.lora.method", "one of full"),
        ("sst2:\n  variants:\n    lora: {lora_r: 0}\n", "tasks.sst2.variants.lora.lora_r", ">= 1"),
        (
            "squad:\n  variants:\n    x: {input_prompt: chat}\n",
            "tasks.squad.variants.x.input_prompt",
            "unknown",
        ),
        ("sst2:\n  variants: [lora]\n", "tasks.sst2.variants", "must be a mapping of variant names"),
        ("sst2:\n  variants:\n    lora: 3\n", "tasks.sst2.variants.lora", "must be a mapping"),
        ("sst2:\n  variants:\n    Lora: {}\n", "tasks.sst2.variants.Lora", "a variant's name"),
        ("sst2:\n  variants:\n    seed7: {}\n", "tasks.sst2.variants.seed7", "not seed<N>"),
        ("sst2:\n  variants:\n    base: {}\n", "tasks.sst2.variants.base", "base or finetuned"),
        ("sst2:\n  variants:\n    finetuned: {}\n", "tasks.sst2.variants.finetuned", "base or finetuned"),
    ],
)
def test_bad_variant_keys_exit_2_naming_the_key(tmp_path, capsys, text, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text("tasks:\n" + "".join("  " + line + "\n" for line in text.splitlines()))
    rc = main(["study", "--config", str(path), "--out", str(tmp_path / "run"), "--print-config"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(path) in err and key in err and problem in err, err
    assert not (tmp_path / "run").exists()


def test_variants_layer_like_other_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(_data(tmp_path)))
    cfg = study_config.resolve_config(preset="full", sets=["sst2.variants.lora.lora_r=4"])
    v = cfg.task("sst2")["variants"]
    assert list(v) == ["lora", "head-only"]
    assert v["lora"]["method"] == "lora" and v["lora"]["lora_r"] == 4 and v["lora"]["learning_rate"] == 3e-4
    # the rest of a variant is the task's finetune section
    assert v["head-only"]["batch_size"] == cfg.task("sst2")["finetune"]["batch_size"]
    assert v["head-only"]["method"] == "head"
    # a null variant removes one a lower layer defined; the smoke preset has none
    cfg = study_config.resolve_config(preset="full", sets=["sst2.variants.lora=null"])
    assert list(cfg.task("sst2")["variants"]) == ["head-only"]
    cfg = study_config.resolve_config(preset="full", sets=["sst2.variants=null", "sst2.variants.x.lora_r=2"])
    assert (
        list(cfg.task("sst2")["variants"]) == ["x"] and cfg.task("sst2")["variants"]["x"]["method"] == "full"
    )
    smoke = study_config.resolve_config(preset="smoke")
    assert all(not smoke.task(t)["variants"] for t in smoke.data["tasks"])
    with pytest.raises(study_config.UsageError, match=r"tasks\.sst2\.variants\.lora\.method must be one of"):
        study_config.resolve_config(preset="full", sets=["sst2.variants.lora.method=half"])


def test_run_folder_from_before_variants_continues(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, _data(tmp_path))
    old = study_config.resolve_config(config=cfg, sets=["sst2.variants=null", "squad.variants=null"])
    assert all(not entry["variants"] for entry in old.data["tasks"].values())
    before = json.loads(json.dumps(old.data))
    for entry in before["tasks"].values():
        del entry["variants"]  # config.yaml as a study before variants wrote it
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(before))
    study_run.Study(old, run).prepare()  # no variants then, none now: accepted
    with pytest.raises(study_config.UsageError, match=r"another configuration.*tasks\.sst2\.variants\.lora"):
        study_run.Study(study_config.resolve_config(config=cfg), run).prepare()


def test_a_variant_named_like_a_seed_is_not_a_seed(tmp_path):
    """seed_runs reads finetune-seed<N>/ folders only: a variant `seedless` is not a second seed."""
    from tunelab.report.run_folder import TaskRun
    from tunelab.report.seeds import seed_runs
    from tunelab.tasks import get_task

    for name in ("finetune", "finetune-seedless"):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics.json").write_text('{"accuracy": 0.5}')
    t = TaskRun("sst2", get_task("sst2"), *[None] * 9, folder=tmp_path)
    assert seed_runs(t) == []
    (tmp_path / "finetune-seed7" / "eval").mkdir(parents=True)
    (tmp_path / "finetune-seed7" / "eval" / "metrics.json").write_text('{"accuracy": 0.6}')
    assert [r.folder.name for r in seed_runs(t)] == ["finetune", "finetune-seed7"]
