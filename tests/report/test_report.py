"""report.md / report.html from a run folder built by hand: tables, numbers, embedded plots, escaping,
analysis claims that follow the p-values, and the HTML as a real browser renders it."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.metrics import classification_metrics
from tunelab.report import build_report

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>alert(1)</script> a | pipe & "quotes"'


def _write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _sst2_model(folder: Path, gold, correct, mode: str, conf_seed: int, extra=None):
    rng = np.random.default_rng(conf_seed)
    pred = [g if c else 1 - g for g, c in zip(gold, correct, strict=True)]
    rows = []
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        conf = float(rng.uniform(0.5, 0.99))
        text = EVIL if i == 0 else f"sentence number {i} ."  # the same examples for both models
        scores = {"negative": conf if p == 0 else 1 - conf, "positive": conf if p == 1 else 1 - conf}
        rows.append({"line": i + 2, "text": text, "gold": g, "prediction": p, "scores": scores})
    _write_jsonl(folder / "predictions.jsonl", rows)
    m = {
        "task": "sst2",
        "mode": mode,
        "n": len(gold),
        "data": "/data/SST-2/dev.tsv",
        **classification_metrics(gold, pred, labels=("negative", "positive")),
        **(extra or {}),
    }
    _write_json(folder / "metrics.json", m)
    return m


def _squad_model(folder: Path, ids, f1s, mode: str, predictions=None, nbest=False):
    rows = []
    for i, (qid, f) in enumerate(zip(ids, f1s, strict=True)):
        gold = ["Denver Broncos"] if i % 3 else ["Santa Clara in California state"]
        pred = predictions[i] if predictions else (gold[0] if f == 1 else "the wrong answer")
        rows.append(
            {
                "id": qid,
                "em": int(f == 1),
                "f1": f,
                "prediction": pred,
                "gold": gold,
                "question": f"Who won game {i}?" if i % 2 else f"What was game {i}?",
                "question_type": "who" if i % 2 else "what",
                "answer_words": len(gold[0].split()),
            }
        )
    _write_jsonl(folder / "per_example.jsonl", rows)
    f1 = 100 * float(np.mean(f1s))
    em = 100 * float(np.mean([r["em"] for r in rows]))
    _write_json(
        folder / "metrics.json",
        {
            "task": "squad",
            "mode": mode,
            "n": len(ids),
            "exact_match": em,
            "data": "/data/squad/v1.1-dev.json",
            "f1": f1,
            "f1_ci95": [f1 - 5, f1 + 5],
        },
    )
    if nbest:
        _write_json(
            folder / "nbest_predictions.json",
            {
                qid: [{"text": "x", "score": 3.0 + (i % 5)}, {"text": "y", "score": 1.0}]
                for i, qid in enumerate(ids)
            },
        )


def _params(run: Path, task: str, head: str, added: int, finetuned_total=None):
    base = {
        "model": "tiny",
        "task": None,
        "method": "full",
        "base_total": 10_000,
        "total": 10_000,
        "trainable": 10_000,
        "added": {},
        "removed": {},
        "adapter": 0,
        "delta": 0,
    }
    tm = {
        "model": "tiny",
        "task": task,
        "method": "full",
        "base_total": 10_000,
        "total": 10_000 + added,
        "trainable": 10_000 + added,
        "added": {head: added},
        "removed": {},
        "adapter": 0,
        "delta": added,
    }
    doc = {
        "task": task,
        "model": "tiny",
        "method": "full",
        "hidden_size": 32,
        "tie_word_embeddings": True,
        "num_labels": 2 if task == "sst2" else None,
        "base": base,
        "task_model": tm,
        "finetuned": {
            "total": finetuned_total or 10_000 + added,
            "saved": "full",
            "safetensors_numel": {"model.safetensors": 10_000 + added},
        },
    }
    _write_json(run / "params" / f"{task}.json", doc)


def make_run(root: Path, *, significant: bool, n_sst2: int = 100, n_squad: int = 60) -> Path:
    run = root / ("run-sig" if significant else "run-null")
    gold = [i % 2 for i in range(n_sst2)]
    if significant:  # zero-shot 60% right, fine-tuned 95%
        zs_c = [i % 5 < 3 for i in range(n_sst2)]
        ft_c = [i % 20 != 0 for i in range(n_sst2)]
    else:  # the same 80% right, on different sentences: balanced discordant pairs
        zs_c = [i % 5 != 0 for i in range(n_sst2)]
        ft_c = [i % 5 != 1 for i in range(n_sst2)]
    _sst2_model(
        run / "sst2" / "zeroshot",
        gold,
        zs_c,
        "zeroshot",
        1,
        {"uncalibrated_accuracy": 0.5, "calibration": {"method": "batch"}},
    )
    _sst2_model(
        run / "sst2" / "finetune" / "eval",
        gold,
        ft_c,
        "finetuned",
        2,
        {"method": "full", "train_examples": 256, "train_steps": 16},
    )
    _write_jsonl(
        run / "sst2" / "finetune" / "train_log.jsonl",
        [{"step": s, "loss": 0.7 / s, "lr": 1e-5} for s in range(1, 9)],
    )
    _write_json(
        run / "sst2" / "finetune" / "tunelab.json",
        {"task": "sst2", "method": "full", "input_prompt": {"text": "{sentence}"}},
    )
    _params(run, "sst2", "score", 64)

    ids = [f"q{i}" for i in range(n_squad)]
    zs_f1 = [0.0 if i % 2 else 0.5 for i in range(n_squad)]
    ft_f1 = [1.0 if i % 4 else 0.0 for i in range(n_squad)] if significant else zs_f1[::-1]
    _squad_model(
        run / "squad" / "zeroshot",
        ids,
        zs_f1,
        "zeroshot",
        predictions=["a long answer with many extra words in it"] * n_squad,
    )
    _squad_model(run / "squad" / "finetune" / "eval", ids, ft_f1, "finetuned", nbest=True)
    _write_jsonl(
        run / "squad" / "finetune" / "train_log.jsonl",
        [{"step": s, "loss": 5.0 - 0.3 * s, "lr": 1e-5} for s in range(1, 6)],
    )
    _params(run, "squad", "qa_outputs", 66)
    (run / "config.yaml").write_text(
        "model: tiny\ntasks:\n  sst2: {enabled: true}\n"
        "  squad: {enabled: true}\n  squad_v2: {enabled: false}\n"
    )
    _write_json(
        run / "environment.json",
        {
            "python": "3.11",
            "packages": {"torch": "2.x"},
            "seed": 42,
            "device": {"type": "cpu", "name": "test"},
            "git": {"commit": "abcdef1234567890", "dirty": False},
        },
    )
    _write_json(run / "stages.json", {"sst2/zeroshot": {"seconds": 12.5, "finished": "2026-01-01T00:00:00"}})
    return run


def analysis_of(md: str) -> str:
    return md.split("## Analysis", 1)[1].split("\n## ", 1)[0]


def test_report_tables_numbers_and_images(tmp_path):
    run = make_run(tmp_path, significant=True)
    md_path, html_path = build_report(run)
    md, page = md_path.read_text(), html_path.read_text()
    # parameter table: exact counts and where the delta comes from
    assert "| + score | +64 |" in md and "hidden size 32 × 2 labels, no bias = 64" in md
    assert "| + qa_outputs | +66 |" in md and "32 × 2 (start, end) + 2 biases = 66" in md
    assert "| = Task model (counted from the config) | 10,064 | +64 |" in md
    assert "| Fine-tuned model (loaded) | 10,064 | +64 |" in md and "equals the task model" in md
    # metric tables with intervals
    assert "| Accuracy (%) | 60.0 | 95.0 | +35.0 |" in md
    assert "95% interval (exact)" in md and "95% interval (bootstrap)" in md  # accuracy and EM; F1
    assert re.search(
        r"\| SST-2 \| accuracy \(%\) \| zero-shot \| 60\.0 \| 95\.0 \| \+35\.0 \[[\d.]+, [\d.]+\] "
        r"\| p < 0\.001 \| 100 \|",
        md,
    )
    assert "| F1 | 25.0 | 75.0 | +50.0 |" in md
    # the embedded plots: every <img> is a PNG data URI, and the Markdown links the same files
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 8
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    for name in [
        "sst2-scores",
        "sst2-confusion-zero-shot",
        "sst2-confusion-fine-tuned",
        "sst2-loss",
        "squad-scores",
        "squad-f1-by-length",
        "squad-f1-by-question",
        "squad-loss",
    ]:
        assert f"](figures/{name}.png)" in md and (run / "figures" / f"{name}.png").is_file()
    assert 'src="figures/' not in page  # self-contained
    # error analysis: most confident mistakes with their text, escaped in both formats
    assert "Most confident mistakes" in md
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "\\| pipe" in md and "<script>" not in md
    assert "&quot;quotes&quot;" in page
    # what the data are: both dev sets are the official ones
    assert "SQuAD v1.1: the evaluation data are SQuAD v1.1, the official split" in md
    assert "SST-2: the evaluation data are GLUE SST-2, the official split" in md
    assert "Run folder run-sig" in md and "abcdef123456" in md


def test_analysis_claims_follow_the_p_values(tmp_path):
    sig = analysis_of(build_report(make_run(tmp_path, significant=True))[0].read_text())
    null = analysis_of(build_report(make_run(tmp_path, significant=False))[0].read_text())
    assert "SST-2: fine-tuning raised accuracy from 60.0% to 95.0%" in sig
    assert "statistically significant (McNemar, p < 0.001)" in sig
    assert "not statistically significant" not in sig
    assert "The F1 difference is statistically significant" in sig
    assert "SST-2: fine-tuning left accuracy unchanged at 80.0%" in null
    assert "not statistically significant (McNemar, p = 1.000" in null
    assert "The F1 difference is not statistically significant" in null
    assert " is statistically significant" not in null and "The difference is statistically" not in null
    for text in (sig, null):
        assert "only 100 sentences were compared" in text and "only 60 questions were compared" in text
        assert "calibration of the label-word scores moved accuracy from 50.0% to" in text
        assert "exactly +64 against the base model's 10,000" in text
        assert "the same as the task model: fine-tuning changed the values" in text
        assert "answers average 9.0 words" in text  # the verbose zero-shot answers
        assert "training loss fell from 0.525 (mean of steps 1-2) to 0.094 (mean of steps 7-8)" in text


def test_large_n_has_no_small_sample_warning_and_mismatch_is_reported(tmp_path):
    run = make_run(tmp_path, significant=True, n_sst2=400, n_squad=30)
    p = json.loads((run / "params" / "sst2.json").read_text())
    p["finetuned"]["total"] = 10_065
    (run / "params" / "sst2.json").write_text(json.dumps(p))
    md = build_report(run)[0].read_text()
    assert "only 400 sentences" not in md and "only 30 questions were compared" in md
    assert "DIFFERS from the task model" in md and "+1 against the count from the config" in md


def test_partial_run_reports_what_is_missing(tmp_path):
    run = make_run(tmp_path, significant=True)
    shutil.rmtree(run / "squad")
    (run / "params" / "squad.json").unlink()
    shutil.rmtree(run / "sst2" / "finetune")
    md = build_report(run)[0].read_text()
    assert "not run yet" in md and "has not run for this task" in md
    assert "SQuAD v1.1: the evaluation data" not in analysis_of(md)


def test_report_command(tmp_path, capsys):
    run = make_run(tmp_path, significant=False)
    assert main(["report", str(run)]) == 0
    assert "report.html" in capsys.readouterr().out and (run / "report.md").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 2


def _chromium(args, tmp_path, timeout=120):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_html_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    run = make_run(tmp_path, significant=True)
    _, html_path = build_report(run)
    url = html_path.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert '<td class="r">10,064</td>' in page  # parameter table
    assert "<td>Accuracy (%)</td>" in page and '<td class="r">95.0</td>' in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 8
    assert "&lt;script&gt;alert(1)" in page  # the escaped text stayed text

    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1100,3000", "--hide-scrollbars", url], tmp_path)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.std() > 10  # not blank
    # the plots' bar colours are on screen: the images were decoded and drawn, not just present in the DOM
    grey = (np.abs(img - [0x9A, 0x9A, 0x9A]).sum(-1) < 12).sum()
    orange = (np.abs(img - [0xD9, 0x82, 0x2B]).sum(-1) < 12).sum()
    assert grey > 500 and orange > 500, (grey, orange)


def test_different_example_counts_are_paired_and_said(tmp_path):
    run = make_run(tmp_path, significant=True)
    zs = run / "sst2" / "zeroshot"
    rows = zs.joinpath("predictions.jsonl").read_text().splitlines()[:80]
    zs.joinpath("predictions.jsonl").write_text("\n".join(rows) + "\n")
    m = json.loads(zs.joinpath("metrics.json").read_text())
    m["n"] = 80
    zs.joinpath("metrics.json").write_text(json.dumps(m))
    md = build_report(run)[0].read_text()
    assert (
        "the zero-shot model was evaluated on 80 sentences and the fine-tuned one on 100; the comparison "
        "and its test use the 80 both saw"
    ) in md
    assert "McNemar exact test on the 80 sentences both models labelled" in md


def _rewrite_rows(path: Path, change) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(i, r)) + "\n" for i, r in enumerate(rows)))


def test_rows_that_share_a_line_but_not_the_text_are_never_paired(tmp_path):
    """Item 5 of issue 14: the dev file changed between the stages (ten sentences edited): rows are paired by
    line *and* text, the ten are left out of McNemar and the report says why."""
    run = make_run(tmp_path, significant=True)
    _rewrite_rows(
        run / "sst2" / "finetune" / "eval" / "predictions.jsonl",
        lambda i, r: {**r, "text": f"an edited sentence {i}"} if 10 <= i < 20 else r,
    )
    md = build_report(run)[0].read_text()
    assert "McNemar exact test on the 90 sentences both models labelled" in md
    assert (
        "SST-2: WARNING: 10 sentences carry the same line in the zero-shot and the fine-tuned results but "
        "are different examples (line 12: 'sentence number 10 .' zero-shot, 'an edited sentence 10' "
        "fine-tuned): the evaluation data changed between the two stages"
    ) in md
    assert "which uses only the 90 sentences that are the same in both" in analysis_of(md)
    assert "evaluated on 100 sentences and the fine-tuned one on 100" not in md

    # every sentence changed: no paired test at all (before, McNemar compared them by position)
    _rewrite_rows(
        run / "sst2" / "finetune" / "eval" / "predictions.jsonl", lambda i, r: {**r, "text": f"new {i}"}
    )
    md = build_report(run)[0].read_text()
    assert "McNemar exact test" not in md
    assert "no sentence is the same in both, so there is no paired test" in analysis_of(md)


def test_questions_that_share_an_id_but_not_the_question_are_never_paired(tmp_path):
    run = make_run(tmp_path, significant=True)
    _rewrite_rows(
        run / "squad" / "zeroshot" / "per_example.jsonl",
        lambda i, r: {**r, "question": "Which team lost?"} if i < 6 else r,
    )
    md = build_report(run)[0].read_text()
    assert "F1: paired bootstrap (2,000 resamples) on the 54 questions both models answered" in md
    assert (
        "SQuAD v1.1: WARNING: 6 questions carry the same question id in the zero-shot and the fine-tuned "
        "results but are different examples (question id q0: 'Which team lost?' zero-shot, "
        "'What was game 0?' fine-tuned)"
    ) in md


def test_squad_v2_rows_and_abstention(tmp_path):
    run = make_run(tmp_path, significant=True)
    ids = [f"v{i}" for i in range(20)]
    for mode, sub, noans in (("zeroshot", "zeroshot", 30.0), ("finetuned", "finetune/eval", 80.0)):
        folder = run / "squad_v2" / sub
        rows = [
            {
                "id": q,
                "em": i % 2,
                "f1": float(i % 2),
                "prediction": "" if i % 2 else "x",
                "gold": [] if i < 10 else ["Santa Clara"],
                "question": "Who?",
                "is_impossible": i < 10,
                "na_prob": 0.5,
            }
            for i, q in enumerate(ids)
        ]
        _write_jsonl(folder / "per_example.jsonl", rows)
        _write_json(
            folder / "metrics.json",
            {
                "task": "squad_v2",
                "mode": mode,
                "n": 20,
                "exact_match": 50.0,
                "data": "/data/squad/v2.0-dev.json",
                "f1": 50.0,
                "HasAns_exact": 40.0,
                "HasAns_f1": 45.0,
                "NoAns_exact": noans,
                "NoAns_f1": noans,
                "best_f1": 55.0,
                "f1_ci95": [30.0, 70.0],
            },
        )
    md = build_report(run)[0].read_text()
    assert "## SQuAD v2.0" in md
    assert "| F1 (= accuracy), unanswerable | 30.0 | 80.0 | +50.0 |" in md
    assert "| F1 at the best no-answer threshold | 55.0 | 55.0 | +0.0 |" in md
    assert (
        "SQuAD v2.0: on unanswerable questions the zero-shot model abstained correctly on 30.0% and the "
        "fine-tuned model on 80.0%"
    ) in md
    assert "(no answer)" in md and (run / "figures" / "squad_v2-f1-by-length.png").is_file()
    assert "an article-level split of the official SQuAD v2.0 dev set" in md and "not comparable" in md


def test_k_shot_rows_are_labelled_k_shot_and_decoding_is_shown(tmp_path):
    """A prompted stage run with `shots: 3` is reported as 3-shot (never as zero-shot), with its decoding."""
    run = make_run(tmp_path, significant=True)
    for task, extra in (("sst2", {}), ("squad", {"decoding": "extractive"})):
        f = run / task / "zeroshot" / "metrics.json"
        _write_json(f, {**json.loads(f.read_text()), "shots": 3, **extra})
    md = build_report(run)[0].read_text()
    assert re.search(r"\| SST-2 \| accuracy \(%\) \| 3-shot \| 60\.0 \|", md)
    assert re.search(r"\| SQuAD v1\.1 \| F1 \| 3-shot, extractive decoding \|", md)
    assert "### 3-shot vs fine-tuned" in md
    body = md.split("## Summary", 1)[1].splitlines()
    assert not [line for line in body if "zero-shot" in line and line.startswith(("|", "#"))]
    assert "right only 3-shot" in md


def test_focus_and_avoided_question_words_are_shown_with_the_decoding(tmp_path):
    run = make_run(tmp_path, significant=True)
    f = run / "squad" / "zeroshot" / "metrics.json"
    m = json.loads(f.read_text())
    _write_json(f, {**m, "decoding": "grounded", "focus": 2, "question_words": "avoid"})
    md = build_report(run)[0].read_text()
    label = "zero-shot, grounded decoding, passage focused to 2 sentences, question's words avoided"
    assert re.search(rf"\| SQuAD v1\.1 \| F1 \| {label} \|", md)
    _write_json(f, {**m, "decoding": "grounded", "focus": 1, "question_words": "keep"})
    md = build_report(run)[0].read_text()
    assert re.search(
        r"\| SQuAD v1\.1 \| F1 \| zero-shot, grounded decoding, passage focused to 1 sentence \|", md
    )


def test_detokenized_inputs_are_shown_in_the_prompted_label(tmp_path):
    run = make_run(tmp_path, significant=True)
    f = run / "sst2" / "zeroshot" / "metrics.json"
    m = json.loads(f.read_text())
    _write_json(f, {**m, "detokenize": True})
    assert re.search(
        r"\| SST-2 \| accuracy \(%\) \| zero-shot, inputs detokenized \|", build_report(run)[0].read_text()
    )
    _write_json(f, {**m, "detokenize": False})
    assert re.search(r"\| SST-2 \| accuracy \(%\) \| zero-shot \|", build_report(run)[0].read_text())


def test_analysis_says_whether_training_started_from_the_zero_shot_classifier(tmp_path):
    """The head starts from its input prompt's label words: the analysis calls that the zero-shot classifier
    only when the zero-shot run used the same prompt (SST-2's defaults differ: chat-sentiment-is zero-shot,
    chat as the fine-tuning input)."""
    run = make_run(tmp_path, significant=True)
    metrics = run / "sst2" / "zeroshot" / "metrics.json"
    said = {}
    for case, prompt in (("same", {"text": "{sentence}"}), ("other", {"text": "Review: {sentence}"})):
        _write_json(metrics, {**json.loads(metrics.read_text()), "prompt": prompt})
        said[case] = analysis_of(build_report(run)[0].read_text())
    assert "so training started from the zero-shot classifier." in said["same"]
    assert "not the zero-shot prompt" not in said["same"]
    assert "which is not the zero-shot prompt, so training started from that prompt's" in said["other"]
    assert "so training started from the zero-shot classifier." not in said["other"]
    # the same prompt, but zero-shot read the texts detokenized: the analysis says so
    _write_json(
        metrics, {**json.loads(metrics.read_text()), "prompt": {"text": "{sentence}"}, "detokenize": True}
    )
    detok = analysis_of(build_report(run)[0].read_text())
    assert "zero-shot classifier (on the texts as written; zero-shot read them detokenized)." in detok
    # fine-tuning read them detokenized too (its tunelab.json says so), or it alone did
    meta = run / "sst2" / "finetune" / "tunelab.json"
    _write_json(meta, {**json.loads(meta.read_text()), "detokenize": True})
    assert "zero-shot classifier (both read the texts detokenized)." in analysis_of(
        build_report(run)[0].read_text()
    )
    _write_json(metrics, {**json.loads(metrics.read_text()), "detokenize": False})
    assert "(on the texts detokenized; zero-shot read them as written)." in analysis_of(
        build_report(run)[0].read_text()
    )
    # another input prompt, or none: the analysis still says fine-tuning read the texts detokenized
    for prompt in ({"text": "Review: {sentence}"}, None):
        _write_json(meta, {**json.loads(meta.read_text()), "input_prompt": prompt})
        assert "It read the texts detokenized." in analysis_of(build_report(run)[0].read_text())
    _write_json(meta, {**json.loads(meta.read_text()), "detokenize": False})
    assert "detokenized" not in analysis_of(build_report(run)[0].read_text())


def test_lora_parameter_sentence_gives_both_shares():
    """LoRA's trained share is given of the task model's count and, where recorded, of the model while
    training (peft's figure); an older run folder without the latter still reads."""
    from types import SimpleNamespace

    from tunelab.report.sections import param_analysis

    tm = {
        "method": "lora",
        "total": 1_000,
        "delta": 10,
        "trainable": 60,
        "adapter": 50,
        "added": {"score": 10},
    }
    params = {"base": {"total": 990}, "task_model": tm}
    old = param_analysis(SimpleNamespace(title="SST-2", params=params))[-1]
    assert old == (
        "SST-2: LoRA trained 60 parameters (6.00% of the task model's count), of which 50 are adapter "
        "matrices."
    )
    tm["training_total"] = 1_060
    new = param_analysis(SimpleNamespace(title="SST-2", params=params))[-1]
    assert "(6.00% of the task model's count; 5.66% of the 1,060 of the model while training)" in new


def test_the_compared_scores_are_those_of_the_paired_sentences(tmp_path):
    """The fine-tuned model saw only the 60 sentences the zero-shot model got right (100% on them, 60%
    overall) and got 54 of them right: accuracy fell on the sentences both saw, though its overall 90% is
    above zero-shot's overall 60%. Words, values and difference all speak of the 60."""
    run = make_run(tmp_path, significant=True)
    zs_rows = [
        json.loads(x) for x in (run / "sst2" / "zeroshot" / "predictions.jsonl").read_text().splitlines()
    ]
    right = [r for r in zs_rows if r["prediction"] == r["gold"]]
    ft_dir = run / "sst2" / "finetune" / "eval"
    ft_rows = [dict(r, prediction=1 - r["gold"] if i % 10 == 0 else r["gold"]) for i, r in enumerate(right)]
    _write_jsonl(ft_dir / "predictions.jsonl", ft_rows)
    m = json.loads((ft_dir / "metrics.json").read_text())
    m.update(n=len(ft_rows), accuracy=0.9)
    _write_json(ft_dir / "metrics.json", m)
    md = build_report(run)[0].read_text()
    assert "SST-2: fine-tuning lowered accuracy from 100.0% to 90.0% (-10.0 points" in analysis_of(md)
    assert "| SST-2 | accuracy (%) | zero-shot | 100.0 | 90.0 | -10.0" in md


def test_accuracy_interval_agrees_with_mcnemar(tmp_path):
    """3 sentences right only zero-shot, 10 only fine-tuned, of 100: McNemar p = 0.09, so the interval holds 0
    (a paired bootstrap's, [1, 14], would not)."""
    run = make_run(tmp_path, significant=False)
    gold = [i % 2 for i in range(100)]
    zs_c = [i >= 10 for i in range(100)]  # wrong on 0-9
    ft_c = [not 10 <= i < 13 for i in range(100)]  # wrong on 10-12
    _sst2_model(run / "sst2" / "zeroshot", gold, zs_c, "zeroshot", 1)
    _sst2_model(run / "sst2" / "finetune" / "eval", gold, ft_c, "finetuned", 2, {"method": "full"})
    text = analysis_of(build_report(run)[0].read_text())
    found = re.search(
        r"SST-2: fine-tuning raised accuracy from 90.0% to 97.0% "
        r"\(\+7.0 points, 95% interval \[([-\d.]+), ([-\d.]+)\]\)",
        text,
    )
    assert found and float(found[1]) < 0 < float(found[2])
    assert "not statistically significant (McNemar, p = 0.092" in text


def test_a_class_the_data_lacks_has_no_f1():
    from tunelab.report.classification import _class_f1

    none = {"per_class": {"ABBR": {"f1": 0.0, "support": 0}}}
    some = {"per_class": {"ABBR": {"f1": 0.5, "support": 4}}}
    assert _class_f1(none, none, "ABBR") == ["–", "–", ""]
    assert _class_f1(some, some, "ABBR") == ["50.0", "50.0", "+0.0"]


def test_seeds_of_a_k_shot_study_are_compared_with_k_shot(tmp_path):
    run = make_run(tmp_path, significant=True)
    for task in ("sst2", "squad"):
        f = run / task / "zeroshot" / "metrics.json"
        _write_json(f, {**json.loads(f.read_text()), "shots": 3})
        shutil.copytree(run / task / "finetune", run / task / "finetune-seed2")
    md = build_report(run)[0].read_text()
    seeds = [s.split("\n## ", 1)[0] for s in md.split("### Seeds (2 fine-tuning runs)")[1:]]
    assert len(seeds) == 2
    for section in seeds:
        assert "difference vs 3-shot (95% CI)" in section and "(3-shot " in section
        assert re.search(
            r"over 2 seeds fine-tuned \w[\w ]* is [\d.]+% ± [\d.]+ points \(3-shot [\d.]+%\)", section
        )
        assert re.search(r"the seed-mean difference [-+][\d.]+ points is", section)
        assert "zero-shot" not in section


def test_question_words_that_all_moved_alike_are_one_sentence(monkeypatch):
    from types import SimpleNamespace

    from tunelab.report import extractive_qa as qa

    t = SimpleNamespace(zs_rows=[{}], ft_rows=[{}], title="SQuAD")
    monkeypatch.setattr(
        qa, "breakdown", lambda t, key: (["who", "what"], [20, 30], [40.0, 50.0], [60.0, 70.0])
    )
    assert qa._question_word_sentence(t) == [
        "SQuAD: the F1 change is +20.0 points for every question word with at least 10 questions."
    ]
    monkeypatch.setattr(
        qa, "breakdown", lambda t, key: (["who", "what"], [20, 30], [40.0, 50.0], [60.0, 55.0])
    )
    assert (
        "largest for 'who' (+20.0 points, n=20) and smallest for 'what' (+5.0"
        in qa._question_word_sentence(t)[0]
    )


def _all_right_run(tmp_path) -> Path:
    """Both models right on all 10 SST-2 sentences and all 6 SQuAD questions."""
    run = make_run(tmp_path, significant=True)
    gold = [i % 2 for i in range(10)]
    _sst2_model(run / "sst2" / "zeroshot", gold, [True] * 10, "zeroshot", 1)
    _sst2_model(run / "sst2" / "finetune" / "eval", gold, [True] * 10, "finetuned", 2, {"method": "full"})
    ids = [f"q{i}" for i in range(6)]
    _squad_model(run / "squad" / "zeroshot", ids, [1.0] * 6, "zeroshot")
    _squad_model(run / "squad" / "finetune" / "eval", ids, [1.0] * 6, "finetuned", nbest=True)
    return run


def test_a_model_without_mistakes_says_so(tmp_path):
    """Before, "0 mistakes of 10 sentences; the 0 the model was surest of:" and "0 shown, ...:" led to
    nothing."""
    md = build_report(_all_right_run(tmp_path))[0].read_text()
    assert "zero-shot: no mistakes on its 10 sentences." in md
    assert "fine-tuned: no mistakes on its 10 sentences." in md
    assert "zero-shot: no mistakes: all 6 of its answers are exact matches." in md
    assert "fine-tuned: no mistakes: all 6 of its answers are exact matches." in md
    assert "0 mistakes" not in md and "surest of" not in md and "0 shown" not in md


def test_a_small_sample_with_a_zero_width_interval_names_no_interval(tmp_path):
    """No sentence changed, so the interval is [0.0, 0.0]: "differences much smaller than that interval (0.0
    points)" said nothing."""
    text = analysis_of(build_report(_all_right_run(tmp_path))[0].read_text())
    assert "SST-2: only 10 sentences were compared: the numbers are a check of the pipeline" in text
    assert "SQuAD v1.1: only 6 questions were compared: the numbers are a check of the pipeline" in text
    assert "spans 0.0 points" not in text


def test_missing_per_example_files_are_said(tmp_path):
    """Without per-example files both models ran on the same examples: the analysis said they had not, and the
    mistakes heading was followed by nothing."""
    run = make_run(tmp_path, significant=True)
    for f in ("sst2/zeroshot/predictions.jsonl", "sst2/finetune/eval/predictions.jsonl"):
        (run / f).unlink()
    (run / "squad" / "finetune" / "eval" / "per_example.jsonl").unlink()
    md = build_report(run)[0].read_text()
    text = analysis_of(md)
    assert (
        "SST-2: the run folder has no per-example results (predictions.jsonl) of the zero-shot and the "
        "fine-tuned models, so there is no paired test."
    ) in text
    assert (
        "SQuAD v1.1: the run folder has no per-example results (per_example.jsonl) of the fine-tuned model, "
        "so there is no paired test."
    ) in text
    assert "not evaluated on the same" not in md
    sst2 = md.split("## SST-2", 1)[1].split("\n## ", 1)[0]
    assert sst2.rstrip().endswith(
        "### Most confident mistakes\n\n> The run folder has no per-example results (predictions.jsonl) of "
        "the zero-shot and the fine-tuned models, so their mistakes are not listed."
    )
    squad = md.split("## SQuAD v1.1", 1)[1].split("\n## ", 1)[0]
    assert "zero-shot: 60 of 60 answers are not an exact match" in squad
    assert "of the fine-tuned model, so its mistakes are not listed." in squad


def test_one_paired_question_has_no_test_and_no_interval(tmp_path):
    """A bootstrap of one question has no spread: it gave the interval [100.0, 100.0] and "statistically
    significant (p < 0.001)"."""
    run = make_run(tmp_path, significant=True)
    _squad_model(run / "squad" / "zeroshot", ["q0"], [0.0], "zeroshot")
    _squad_model(run / "squad" / "finetune" / "eval", ["q0"], [1.0], "finetuned", nbest=True)
    shutil.copytree(run / "squad" / "finetune", run / "squad" / "finetune-head")  # a variant, as one question
    md = build_report(run)[0].read_text()
    assert (
        "SQuAD v1.1: the two models were evaluated on only one question in common, too few for a paired test."
    ) in analysis_of(md)
    assert "The F1 difference is statistically significant" not in md
    assert "paired bootstrap (2,000 resamples) on the 1 questions" not in md
    assert re.search(r"\| SQuAD v1\.1 \| F1 \| zero-shot \| 0\.0 \| 100\.0 \|  \| no paired test \|", md)
    squad = md.split("## SQuAD v1.1", 1)[1].split("\n## ", 1)[0]
    assert squad.count("|   95% interval (bootstrap) | – | – |  |") == 1  # F1
    # exact match is a proportion: its exact interval exists for one question too (1 of 1: 2.5-100%)
    assert "|   95% interval (exact) | [0.0, 97.5] | [2.5, 100.0] |  |" in squad
    assert "| variant head | ? | 100.0 [2.5, 100.0] | 100.0 – |" in squad


def test_exact_match_interval_is_exact_when_every_answer_is_wrong(tmp_path):
    """A bootstrap of exact match collapsed to [0.0, 0.0] when no answer was exact; EM is a proportion, so
    its interval is Clopper-Pearson's (0 of 4: 0-60.2%)."""
    run = make_run(tmp_path, significant=True)
    _squad_model(run / "squad" / "zeroshot", ["q0", "q1", "q2", "q3"], [0.0] * 4, "zeroshot")
    _squad_model(run / "squad" / "finetune" / "eval", ["q0", "q1", "q2", "q3"], [1.0] * 4, "finetuned")
    squad = build_report(run)[0].read_text().split("## SQuAD v1.1", 1)[1].split("\n## ", 1)[0]
    assert "|   95% interval (exact) | [0.0, 60.2] | [39.8, 100.0] |  |" in squad


def test_a_seed_mean_over_one_example_has_no_test(tmp_path):
    """Two seeds on one sentence: the seed-mean bootstrap called +100 points significant (p < 0.001)."""
    run = make_run(tmp_path, significant=True)
    _sst2_model(run / "sst2" / "zeroshot", [1], [False], "zeroshot", 1)
    _sst2_model(run / "sst2" / "finetune" / "eval", [1], [True], "finetuned", 2, {"method": "full"})
    shutil.copytree(run / "sst2" / "finetune", run / "sst2" / "finetune-seed2")
    md = build_report(run)[0].read_text()
    seeds = md.split("### Seeds (2 fine-tuning runs)", 1)[1].split("\n## ", 1)[0]
    assert "| mean ± sd | 100.0 ± 0.0 | 100.0 ± 0.0 | – | – |" in seeds
    assert "seed-mean difference" not in md and "paired bootstrap of the seed-mean:" not in md


def test_a_seed_without_its_training_config_is_not_called_none(tmp_path):
    run = make_run(tmp_path, significant=True)
    shutil.copytree(run / "sst2" / "finetune", run / "sst2" / "finetune-seed2")  # no training_config.json
    md = build_report(run)[0].read_text()
    seeds = md.split("### Seeds (2 fine-tuning runs)", 1)[1].split("\n## ", 1)[0]
    assert "None" not in seeds and seeds.count("| – | 95.0 | 95.2 |") == 2
