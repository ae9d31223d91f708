"""`detokenize`: zero-shot classification inputs shown as ordinary text. Penn-Treebank tokenisation is undone,
an all-lowercase text gets its first letter and the pronoun "i" capitalised; the prompts (inputs, k-shot
examples) carry the detokenized text while predictions keep the text as read; SST-2 turns it on by default."""

from __future__ import annotations

import json

import pytest
from helpers import PLAIN_SPEC, SST2, sst2_examples, tiny_train_config, zeroshot_options

from tunelab import runs
from tunelab.cli import main
from tunelab.data.table import TextExample
from tunelab.errors import UsageError
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.tasks.base import load_task
from tunelab.tasks.classification import task as classification_task
from tunelab.tasks.classification.detokenize import detokenize


@pytest.mark.parametrize(
    "tokenised, plain",
    [
        ("it 's a charming and often affecting journey . ", "It's a charming and often affecting journey."),
        ("you do n't have to know about music , i 'd say .", "You don't have to know about music, I'd say."),
        ("a `` great '' film ( really ) !", 'A "great" film (really)!'),
        ("the self-caricature of ` analyze this ' ( 1999 )", "The self-caricature of 'analyze this' (1999)"),
        ("What county is Modesto , California in ?", "What county is Modesto, California in?"),
        ("What is `` Nine Inch Nails '' ?", 'What is "Nine Inch Nails"?'),
        ("unflinchingly bleak and desperate", "Unflinchingly bleak and desperate"),
        ("... the film suffers ( a lot ) ...", "... The film suffers (a lot)..."),  # the first letter
        ("12 monkeys , i think", "12 monkeys, I think"),  # a digit first: no sentence start to restore
        ("'s what i liked", "'s what I liked"),  # a phrase starting mid-word (SST-2's training phrases)
    ],
)
def test_treebank_text_becomes_ordinary_text(tokenised, plain):
    assert detokenize(tokenised) == plain


def test_cased_text_keeps_its_case_and_blank_text_stays():
    # a text with any capital letter is not recased: "i" stays, the first letter stays lowercase
    assert detokenize("iPhone reviews by i and Bob , mostly .") == "iPhone reviews by i and Bob, mostly."
    assert detokenize("   ") == "   " and detokenize("") == ""


def test_without_nltk_it_is_a_clear_usage_error(monkeypatch):
    import sys

    from tunelab.tasks.classification import detokenize as module

    module._detokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "nltk.tokenize.treebank", None)  # an import of it fails
    try:
        with pytest.raises(UsageError, match="detokenize needs nltk.*--no-detokenize.*finetune.detokenize"):
            detokenize("it 's")
    finally:
        module._detokenizer.cache_clear()


def test_sst2_defaults_to_detokenized_inputs_and_other_tasks_do_not():
    assert SST2.zeroshot_options()["detokenize"] is True
    assert load_task("configs/tasks/trec.yaml").zeroshot_options()["detokenize"] is False


def rendered_texts(monkeypatch) -> list[list[str]]:
    """The prompts the label scorer receives, call by call."""
    seen: list[list[str]] = []
    real = classification_task.zero_shot

    def spy(model, tokenizer, texts, *args, **kwargs):
        seen.append(list(texts))
        return real(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(classification_task, "zero_shot", spy)
    return seen


def test_prompts_hold_the_detokenized_inputs_and_shots(tiny_model_dir, monkeypatch):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    examples = [TextExample(f"it 's film number {i} , i think .", i % 2, i + 1) for i in range(8)]
    shots = [TextExample("a `` great '' movie", 1, 1)]
    seen = rendered_texts(monkeypatch)
    for on in (True, False):
        options = zeroshot_options(prompt=PLAIN_SPEC, detokenize=on, batch_size=4)
        _, extra = SST2.zero_shot(model, tok, examples, options, shots=shots)
        assert extra["detokenize"] is on
    on, off = seen
    assert (
        on[3]
        == 'Review: A "great" movie\nSentiment: positive\n\nReview: It\'s film number 3, I think.\nSentiment:'
    )
    as_read = "Review: a `` great '' movie\nSentiment: positive\n\nReview: it 's film number 3 , i think ."
    assert off[3] == as_read + "\nSentiment:"
    assert examples[3].text == "it 's film number 3 , i think ."  # the caller's examples are not changed


def test_zeroshot_records_it_and_predictions_keep_the_text_as_read(tiny_model_dir, tmp_path):
    examples = [
        TextExample(ex.text.replace("film", "film 's"), ex.label, ex.line) for ex in sst2_examples(10)
    ]
    runs.zeroshot(SST2, tiny_model_dir, examples, "fixture", tmp_path / "zs", zeroshot_options(batch_size=4))
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["detokenize"] is True
    rows = [json.loads(line) for line in (tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [ex.text for ex in examples]


def test_cli_flag_turns_the_tasks_default_off(tiny_model_dir, tmp_path):
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\n" + "".join(f"{ex.text} .\t{ex.label}\n" for ex in sst2_examples(8)))
    args = ["zeroshot", tiny_model_dir, "--task", "sst2", "--data-file", str(dev)]
    assert main([*args, "--out", str(tmp_path / "off"), "--no-detokenize"]) == 0
    assert json.loads((tmp_path / "off" / "metrics.json").read_text())["detokenize"] is False
    assert main([*args, "--out", str(tmp_path / "on")]) == 0
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["detokenize"] is True


# ---- fine-tuning ------------------------------------------------------------------------------------------


def test_fine_tuning_follows_the_tasks_zero_shot_default_unless_set(tmp_path):
    assert SST2.finetune_extras()["detokenize"] is True
    assert load_task("configs/tasks/trec.yaml").finetune_extras()["detokenize"] is False
    own = tmp_path / "own.yaml"
    own.write_text(
        "name: own\nkind: classification\nlabels: [negative, positive]\n"
        "data: {splits: {train: train.tsv, dev: dev.tsv}}\n"
        "zeroshot: {detokenize: true}\nfinetune: {detokenize: false}\n"
    )
    task = load_task(str(own))
    assert task.zeroshot_options()["detokenize"] is True and task.finetune_extras()["detokenize"] is False


def test_fine_tuning_trains_and_predicts_on_detokenized_inputs(tiny_model_dir, monkeypatch):
    from tunelab.tasks.classification import task as module

    tok = load_tokenizer(tiny_model_dir)
    train = [TextExample("it 's a film , i think .", 1, 1), TextExample("i did n't like it", 0, 2)]
    cfg = tiny_train_config(max_length=256)
    spec = {"input_prompt": PLAIN_SPEC}
    on = SST2.prepare_fine_tuning(tok, cfg, train, [], {**spec, "detokenize": True})
    off = SST2.prepare_fine_tuning(tok, cfg, train, [], {**spec, "detokenize": False})
    assert on.meta["detokenize"] is True and off.meta["detokenize"] is False
    assert SST2.prepare_fine_tuning(tok, cfg, train, [], spec).meta["detokenize"] is True  # SST-2's default
    decoded = [tok.decode(f["input_ids"]) for f in on.features]
    assert "Review: It's a film, I think." in decoded[0] and "Review: I didn't like it" in decoded[1]
    assert "Review: it 's a film , i think ." in tok.decode(off.features[0]["input_ids"])
    assert train[0].text == "it 's a film , i think ."  # the caller's examples are not changed

    seen: list[list[str]] = []
    monkeypatch.setattr(module, "classify", lambda model, tok, texts, *a, **k: seen.append(texts) or [])
    for meta in (on.meta, off.meta, {k: v for k, v in on.meta.items() if k != "detokenize"}):
        SST2.predict(None, tok, train, meta, progress=False)
    assert "It's a film, I think." in seen[0][0]
    assert "it 's a film , i think ." in seen[1][0] and seen[2] == seen[1]  # a folder from before: as read


def test_a_fine_tuned_folders_detokenize_must_be_a_bool():
    meta = {"labels": ["negative", "positive"], "input_prompt": None, "max_length": 128}
    SST2.check_meta({**meta, "detokenize": True})
    with pytest.raises(UsageError, match="detokenize must be true or false, got 'yes'"):
        SST2.check_meta({**meta, "detokenize": "yes"})


def test_cli_finetune_records_it_and_evaluate_reads_it(tiny_model_dir, tmp_path):
    from helpers import sst2_tsv

    (tmp_path / "data" / "SST-2").mkdir(parents=True)
    sst2_tsv(sst2_examples(16), tmp_path / "data" / "SST-2" / "train.tsv")
    sst2_tsv(sst2_examples(8, seed=1), tmp_path / "data" / "SST-2" / "dev.tsv")
    data = ["--task", "sst2", "--data-dir", str(tmp_path / "data")]
    train = ["--epochs", "1", "--batch-size", "8", "--max-length", "64", "--method", "head"]
    for flag, on in (([], True), (["--no-detokenize"], False)):
        ft = tmp_path / f"ft{len(flag)}"
        assert main(["finetune", tiny_model_dir, *data, *train, *flag, "--out", str(ft)]) == 0
        assert json.loads((ft / "tunelab.json").read_text())["detokenize"] is on
        out = tmp_path / f"ev{len(flag)}"
        assert main(["evaluate", str(ft), *data, "--out", str(out)]) == 0
        assert (out / "predictions.jsonl").read_text() == (ft / "eval" / "predictions.jsonl").read_text()
    # evaluate reads the folder's setting: the same model told otherwise scores other texts
    meta = tmp_path / "ft0" / "tunelab.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "detokenize": False}))
    assert main(["evaluate", str(tmp_path / "ft0"), *data, "--out", str(tmp_path / "ev-told-off")]) == 0

    def scores(folder):
        return [json.loads(r)["scores"] for r in (folder / "predictions.jsonl").read_text().splitlines()]

    assert scores(tmp_path / "ev-told-off") != scores(tmp_path / "ev0")
