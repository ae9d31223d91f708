"""Several seeds: a real multi-seed smoke-size study on the tiny model (one model per seed, the report's mean
+- sd, each seed's and the combined paired test, the spread plot) and `tunelab finetune --seeds`."""

import json
import statistics

import pytest
import yaml

from tunelab.cli import main


def _tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))


def _data(tmp_path):
    pos, neg = (
        ["a good and great film", "truly wonderful movie"],
        ["a bad and awful film", "truly terrible movie"],
    )
    root = tmp_path / "data" / "SST-2"
    root.mkdir(parents=True)
    _tsv(root / "train.tsv", [(pos[i % 2], 1) if i % 2 else (neg[i % 2], 0) for i in range(16)])
    _tsv(
        root / "dev.tsv",
        [(pos[i % 2] + " indeed", 1) if i % 2 else (neg[i % 2] + " indeed", 0) for i in range(8)],
    )
    return root.parent


def _study(tmp_path, model, data, **top):
    cfg = {
        "model": model,
        "data_dir": str(data),
        "tasks": {
            "sst2": {
                "zeroshot": {"limit": 8, "prompt": "plain", "batch_size": 8},
                "finetune": {
                    "limit": 8,
                    "train_limit": 12,
                    "input_prompt": "plain",
                    "learning_rate": 3e-3,
                    "batch_size": 4,
                    "max_length": 32,
                    "log_every": 1,
                },
            },
            "squad": {"enabled": False},
        },
        **top,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_multi_seed_study(tmp_path, tiny_model_dir, capsys):
    data = _data(tmp_path)
    run = tmp_path / "run"
    cfg = _study(tmp_path, tiny_model_dir, data)
    args = ["study", "--config", cfg, "--seeds", "1,2,3", "--report-to", "tensorboard", "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fine-tune (full) and evaluate, seed 3" in out
    folders = [run / "sst2" / f for f in ("finetune", "finetune-seed2", "finetune-seed3")]
    seeds = [json.loads((f / "training_config.json").read_text())["seed"] for f in folders]
    assert seeds == [1, 2, 3]
    accs = [100 * json.loads((f / "eval" / "metrics.json").read_text())["accuracy"] for f in folders]
    md = (run / "report.md").read_text()
    assert "Seeds (3 fine-tuning runs)" in md
    assert f"{statistics.fmean(accs):.1f} ± {statistics.stdev(accs):.1f}" in md
    assert "paired bootstrap of the seed-mean" in md and md.count("McNemar exact test: p") >= 3
    assert (run / "figures" / "sst2-seeds.png").stat().st_size > 1000
    assert yaml.safe_load((run / "config.yaml").read_text())["seeds"] == [1, 2, 3]
    # the trackers: each seed's run logged its train_log.jsonl; the summary run the final table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(folder, tag):
        out = []
        for f in sorted(folder.rglob("events.out.tfevents.*")):
            acc = EventAccumulator(str(f))
            acc.Reload()
            out += [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
        return out

    for seed, folder in zip((1, 2, 3), folders, strict=True):
        log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
        got = scalars(run / "tracking" / f"sst2-seed{seed}", "train/loss")
        assert got == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in log]
    zs = 100 * json.loads((run / "sst2/zeroshot/metrics.json").read_text())["accuracy"]
    assert scalars(run / "tracking" / "summary", "summary/sst2/accuracy/zeroshot") == [
        (0, pytest.approx(round(zs, 2)))
    ]
    tuned = scalars(run / "tracking" / "summary", "summary/sst2/accuracy/finetuned")
    assert tuned == [(0, pytest.approx(statistics.fmean(round(a, 2) for a in accs), rel=1e-5))]


def test_finetune_seeds(tmp_path, tiny_model_dir, capsys):
    data = _data(tmp_path)
    out = tmp_path / "ft"
    args = ["finetune", tiny_model_dir, "--task", "sst2", "--data-dir", str(data), "--out", str(out)]
    args += ["--input-prompt", "plain", "--batch-size", "8", "--max-length", "32", "--seeds", "5,6"]
    assert main(args) == 0
    summary = json.loads((out / "seeds.json").read_text())
    accs = [json.loads((out / f"seed-{s}" / "eval" / "metrics.json").read_text())["accuracy"] for s in (5, 6)]
    assert summary["seeds"] == [5, 6]
    assert summary["summary"]["accuracy"]["mean"] == statistics.fmean(accs)
    for s in (5, 6):  # the model's folder where it ended up, not the temporary one it was trained in
        assert summary["per_seed"][str(s)]["model"] == str(out / f"seed-{s}")
        assert json.loads((out / f"seed-{s}" / "eval" / "metrics.json").read_text())["model"] == str(
            out / f"seed-{s}"
        )
    out_text = capsys.readouterr().out  # in % as each seed's line shows it, not as a fraction
    mean = statistics.fmean(round(100 * a, 2) for a in accs)
    assert f"Accuracy: {mean:.2f} ± " in out_text and "over seeds [5, 6]" in out_text, out_text
    assert main([*args[:-1], "5,5"]) == 2  # repeats refused


def _interrupted_at_seed_6(tmp_path, model, monkeypatch):
    """`finetune --seeds 5,6` interrupted (Ctrl-C) once seed 5 is done; returns its arguments and the real
    runs.finetune."""
    from tunelab import runs

    data = _data(tmp_path)
    args = ["finetune", model, "--task", "sst2", "--data-dir", str(data), "--out", str(tmp_path / "ft")]
    args += ["--input-prompt", "plain", "--batch-size", "8", "--max-length", "32", "--seeds", "5,6"]
    real = runs.finetune

    def crash_on_6(*a, **k):
        if str(a[5]).endswith("seed-6"):
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runs, "finetune", crash_on_6)
    assert main(args) == 130
    return args, real


def test_finetune_seeds_resume_keeps_finished_seeds(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from tunelab import runs

    args, real = _interrupted_at_seed_6(tmp_path, tiny_model_dir, monkeypatch)
    out = tmp_path / "ft"
    finished = tmp_path / "ft.partial" / "seed-5" / "eval" / "metrics.json"
    assert not out.exists() and finished.is_file()
    assert "kept the finished runs" in capsys.readouterr().err
    # the same command without --resume must not discard the finished seed
    assert main(args) == 2
    assert "holds finished runs" in capsys.readouterr().err and finished.is_file()
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: pytest.fail("nothing may be trained"))
    assert main([*args, "--resume", "--learning-rate", "1e-2"]) == 2  # seed 5 was trained otherwise
    assert "seed-5 was trained with other options (learning_rate)" in capsys.readouterr().err
    trained = []
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: trained.append(str(a[5])) or real(*a, **k))
    assert main([*args, "--resume"]) == 0
    assert [p.rsplit("/", 1)[1] for p in trained] == ["seed-6"]
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [5, 6]


def test_finetune_seeds_resume_on_a_process_that_does_not_write(tmp_path, tiny_model_dir, monkeypatch):
    """Under `accelerate launch` the other processes see the seeds finished before an interruption too, but
    train the rest without results (runs.finetune returns None there): they leave the summary to the main
    process rather than summarise a partial set."""
    from tunelab import distributed, runs

    args, _ = _interrupted_at_seed_6(tmp_path, tiny_model_dir, monkeypatch)
    monkeypatch.setattr(runs, "finetune", lambda *a, **k: None)  # seed 6, on a process that does not write
    monkeypatch.setattr(distributed, "main_process", lambda: False)
    assert main([*args, "--resume"]) == 0
    assert not list(tmp_path.glob("ft*/seeds.json"))


def test_one_seed_in_a_study_seeds_its_training(tmp_path, tiny_model_dir):
    """`seeds: [7]` trains with seed 7 (not the study's `seed`)."""
    data = _data(tmp_path)
    run = tmp_path / "run"
    config = _study(tmp_path, tiny_model_dir, data, seeds=[7])
    assert main(["study", "--config", config, "--out", str(run)]) == 0
    assert json.loads((run / "sst2" / "finetune" / "training_config.json").read_text())["seed"] == 7
