"""Classification end to end on the tiny random Llama (SST-2 as the task): label-word scoring, calibration,
prompts, zero-shot, fine-tuning, save -> load, evaluation, and the command line."""

import json

import numpy as np
import pytest
import torch
from helpers import PLAIN, PLAIN_SPEC, SST2, sst2_examples, tiny_train_config, zeroshot_options

from tunelab import runs
from tunelab.cli import main
from tunelab.data.table import TextExample
from tunelab.errors import UsageError
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.tasks.classification import Calibration, calibrate, encode, label_logprobs, verbalizer_ids


def test_zero_shot_scores_equal_direct_logprobs(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir).eval()
    sentences = [ex.text for ex in sst2_examples(7)]
    ids = verbalizer_ids(tok, PLAIN)
    got = label_logprobs(
        model, tok, [PLAIN.render(tok, s) for s in sentences], ids, batch_size=3, progress=False
    )
    for i, s in enumerate(sentences):
        enc = tok(PLAIN.render(tok, s), return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0, -1].double(), -1)
        for c, cls_ids in enumerate(ids):
            assert got[i, c] == pytest.approx(torch.logsumexp(logp[cls_ids], 0).item(), abs=1e-4)


def test_calibration_moves_a_biased_classifier(capsys):
    # every example prefers "positive" by a constant bias; the true signal is the small difference
    signal = np.array([-2.0, 2.0, -1.5, 1.5, -1.0, 1.0, -0.8, 0.8])
    raw = np.stack([np.zeros(8), 3.0 + signal], axis=1)
    assert (raw.argmax(1) == 1).all()
    batch = Calibration("batch")
    assert calibrate(raw, batch).argmax(1).tolist() == [0, 1] * 4
    # Zhou et al.: the bias is each class's mean probability (normalised over the classes), not a mean of logs
    p = np.exp(raw - np.logaddexp.reduce(raw, axis=1, keepdims=True))
    np.testing.assert_allclose(batch.offset, np.log(p.mean(0)), rtol=1e-12)
    cf = np.array([[0.0, 3.0]])  # content-free input shows the same bias
    ctx = calibrate(raw, Calibration("contextual"), cf).argmax(1)
    assert ctx.tolist() == [0, 1] * 4
    assert calibrate(raw, Calibration("none")).argmax(1).tolist() == [1] * 8
    # one input's mean is itself (every class would tie): below MIN_BATCH inputs nothing is applied
    few = Calibration("batch")
    assert calibrate(raw[:1], few).argmax(1).tolist() == [1] and few.offset == [0.0, 0.0]
    assert "batch calibration needs at least 8 inputs (1 given)" in capsys.readouterr().err


def test_verbalizers_sharing_a_first_token_are_refused(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    p = SST2.prompt({"text": "{sentence}", "verbalizers": {"negative": [" review"], "positive": [" review"]}})
    with pytest.raises(
        UsageError, match=r"'negative' \(' review'\) and 'positive' \(' review'\) start with the same token"
    ):
        verbalizer_ids(tok, p)


def test_prompt_validation():
    with pytest.raises(UsageError, match="sentence"):
        SST2.prompt({"text": "no slot"})
    with pytest.raises(UsageError, match="unknown keys"):
        SST2.prompt({"text": "{sentence}", "colour": "red"})
    with pytest.raises(UsageError, match="text_pair"):  # SST-2 has no second text
        SST2.prompt({"text": "{text} and {text_pair}"})
    assert SST2.prompt({"text": "T: {text}"}).render(None, "a b") == "T: a b"  # {text} and {sentence} alike


def test_zero_shot_recipe_writes_metrics(tiny_model_dir, tmp_path):
    examples = sst2_examples(10)
    m = runs.zeroshot(
        SST2,
        tiny_model_dir,
        examples,
        "fixture",
        tmp_path / "zs",
        zeroshot_options(prompt=PLAIN_SPEC, calibration="batch", batch_size=4),
    )
    saved = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    for key in [
        "task",
        "model",
        "mode",
        "data",
        "n",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "macro_f1",
        "confusion_matrix",
        "accuracy_ci95",
        "predicted_positive_rate",
        "per_class",
        "labels",
    ]:
        assert key in saved
    assert saved["mode"] == "zeroshot" and saved["n"] == 10 and 0 <= saved["accuracy"] <= 1
    assert m["accuracy"] == saved["accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and set(rows[0]) == {"line", "text", "gold", "prediction", "scores"}
    assert sum(rows[0]["scores"].values()) == pytest.approx(1.0)


def test_unlabelled_file_gets_predictions_only(tiny_model_dir, tmp_path):
    examples = [TextExample("a great film", None, 2), TextExample("awful", None, 3)]
    m = runs.zeroshot(
        SST2,
        tiny_model_dir,
        examples,
        "test",
        tmp_path / "zs",
        zeroshot_options(prompt=PLAIN_SPEC, calibration="none"),
    )
    assert "accuracy" not in m and m["n"] == 2
    assert len((tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()) == 2


def test_existing_output_is_not_overwritten(tiny_model_dir, tmp_path):
    out = tmp_path / "zs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        runs.zeroshot(SST2, tiny_model_dir, sst2_examples(2), "x", out, zeroshot_options(prompt=PLAIN_SPEC))
    assert (out / "keep.txt").read_text() == "mine"


def test_failed_run_leaves_no_output(tiny_model_dir, tmp_path):
    bad = {"text": "{sentence}", "chat": False, "verbalizers": {"negative": [" x"], "positive": [" x"]}}
    with pytest.raises(UsageError):
        runs.zeroshot(
            SST2, tiny_model_dir, sst2_examples(2), "x", tmp_path / "zs", zeroshot_options(prompt=bad)
        )
    assert not (tmp_path / "zs").exists() and not (tmp_path / "zs.partial").exists()


def test_finetune_learns_a_small_sst2_examples(tiny_model_dir, tmp_path):
    train = sst2_examples(48)
    dev = sst2_examples(24, seed=1)
    m = runs.finetune(
        SST2,
        tiny_model_dir,
        train,
        dev,
        "fixture",
        tmp_path / "ft",
        tiny_train_config(epochs=8),
        {"input_prompt": None},
    )
    assert m["accuracy"] >= 0.9, m
    log = [json.loads(line) for line in (tmp_path / "ft" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    assert (tmp_path / "ft" / "loss.png").is_file()
    assert (tmp_path / "ft" / "model.safetensors").is_file()
    assert not (tmp_path / "ft.partial").exists()


@pytest.mark.parametrize("method,merge", [("full", False), ("lora", False), ("lora", True), ("head", False)])
def test_save_load_gives_identical_predictions(tiny_model_dir, tmp_path, method, merge):
    train, dev = sst2_examples(16), sst2_examples(12, seed=2)
    out = tmp_path / "ft"
    m = runs.finetune(
        SST2,
        tiny_model_dir,
        train,
        dev,
        "fixture",
        out,
        tiny_train_config(method=method, merge_lora=merge, epochs=1),
        {"input_prompt": PLAIN_SPEC},
    )
    if method == "lora" and not merge:
        assert (out / "adapter_model.safetensors").is_file()
    else:
        assert (out / "model.safetensors").is_file()
    again = runs.evaluate(str(out), dev, "fixture", tmp_path / "ev")
    a = [json.loads(x)["scores"] for x in (out / "eval" / "predictions.jsonl").read_text().splitlines()]
    b = [json.loads(x)["scores"] for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    for x, y in zip(a, b, strict=True):
        assert x["positive"] == pytest.approx(y["positive"], abs=1e-6)
    assert again["accuracy"] == m["accuracy"]


def test_head_only_trains_only_the_head(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    runs.finetune(
        SST2,
        tiny_model_dir,
        sst2_examples(16),
        sst2_examples(4),
        "f",
        tmp_path / "ft",
        tiny_train_config(method="head", epochs=1),
        {"input_prompt": "none"},
    )
    before = load_file(f"{tiny_model_dir}/model.safetensors")
    after = load_file(str(tmp_path / "ft" / "model.safetensors"))
    assert torch.equal(
        before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"]
    )


def test_classifier_is_padding_side_independent(tiny_model_dir):
    from tunelab.models import load_task_model

    tok = load_tokenizer(tiny_model_dir)
    model = load_task_model(tiny_model_dir, "classification").eval()
    model.config.pad_token_id = tok.pad_token_id
    texts = ["a great film", "an awful , truly terrible movie review"]
    outs = {}
    for side in ("right", "left"):
        tok.padding_side = side
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            outs[side] = model(**enc).logits
    torch.testing.assert_close(outs["right"], outs["left"], atol=1e-5, rtol=1e-4)


def test_head_init_from_verbalizers_reproduces_zero_shot(tiny_model_dir):
    """Initialised from the label words, the classifier's logit difference equals the LM's next-token one."""
    from tunelab.models import load_task_model
    from tunelab.tasks.classification import head_init_from_verbalizers

    tok = load_tokenizer(tiny_model_dir)
    p = SST2.prompt(
        {
            "text": "{sentence}\nSentiment:",
            "verbalizers": {"negative": [" negative"], "positive": [" positive"]},
        }
    )
    cls = load_task_model(
        tiny_model_dir, "classification", head_init=head_init_from_verbalizers(tok, p)
    ).eval()
    lm = load_causal_lm(tiny_model_dir).eval()
    ids = verbalizer_ids(tok, p)
    enc = tok(p.render(tok, "a great film"), return_tensors="pt")
    with torch.no_grad():
        lm_logits = lm(**enc).logits[0, -1]
        cls_logits = cls(**enc).logits[0]
    assert cls_logits[1] - cls_logits[0] == pytest.approx(
        (lm_logits[ids[1][0]] - lm_logits[ids[0][0]]).item(), abs=1e-4
    )


def test_cli_zeroshot_bad_data_exits_2(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t7\n")
    rc = main(
        ["zeroshot", tiny_model_dir, "--task", "sst2", "--data-file", str(bad), "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.tsv" in err and "line 2" in err
    assert not (tmp_path / "o").exists()


def test_cli_finetune_config_errors(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rat: 0.1\n")
    rc = main(
        [
            "finetune",
            tiny_model_dir,
            "--task",
            "sst2",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "unknown keys" in capsys.readouterr().err
    rc = main(
        [
            "finetune",
            tiny_model_dir,
            "--task",
            "sst2",
            "--batch-size",
            "0",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 2 and "--batch-size must be an integer >= 1" in capsys.readouterr().err


def test_over_long_inputs_keep_their_end(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    text = "a good film " * 40 + "Sentiment:"
    ids = encode(tok, [text], 16)[0]
    assert len(ids) == 16 and ids == tok(text).input_ids[-16:]


def test_prompt_load_from_a_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "text: 'Movie: {sentence}\\nVerdict:'\nverbalizers: {negative: [' bad'], positive: [' good']}\n"
    )
    p = SST2.prompt(str(f))
    assert p.text.startswith("Movie:") and p.verbalizers["positive"] == [" good"]
    assert SST2.prompt(None).chat and SST2.prompt("plain").text.startswith("Review:")
    f.write_text("- a list\n")
    with pytest.raises(UsageError, match="mapping"):
        SST2.prompt(str(f))
    with pytest.raises(UsageError, match="not a template name"):
        SST2.prompt(str(tmp_path / "missing.yaml"))
