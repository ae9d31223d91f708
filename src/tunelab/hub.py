"""Share a fine-tuned model: `tunelab export` writes a Hub-ready folder (merged safetensors weights, tokenizer,
model card with a `model-index` of the measured metrics); `tunelab push` uploads such a folder.

The export needs no network. The push reads the token from `--token`-less sources only (the `token` argument,
HF_TOKEN, or the user's `hf auth login`), never prints or logs it, and turns Hub errors into one clear message.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tunelab.errors import UsageError

TASK_INFO = {
    "sst2": {"pipeline_tag": "text-classification", "auto_class": "AutoModelForSequenceClassification",
             "what": "binary sentiment classification (GLUE SST-2)"},
    "squad": {"pipeline_tag": "question-answering", "auto_class": "AutoModelForQuestionAnswering",
              "what": "extractive question answering (SQuAD)"},
}
SQUAD_HUB = {"1.1": ("rajpurkar/squad", "plain_text"), "2.0": ("rajpurkar/squad_v2", "squad_v2")}
SST2_HUB = "nyu-mll/glue"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# Never uploaded: hidden files and folders (.git, .cache, editor droppings). huggingface_hub adds its own
# DEFAULT_IGNORE_PATTERNS; the dry run applies both, exactly as upload_folder does.
HIDDEN_PATTERNS = (".*", "*/.*")
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


# ---------------------------------------------------------------------------------------------------------------
# Model card metadata


def base_hub_id(spec: str | None) -> str | None:
    """The Hub id of the base model a fine-tune started from: an alias's Hub id, a Hub id as given, or (for a
    local folder) the alias whose cached conversion it is; None when it cannot be told."""
    from tunelab.models.registry import ALIASES, cache_dir

    if not spec:
        return None
    if spec in ALIASES:
        return ALIASES[spec].hub_id
    path = Path(spec).expanduser()
    if path.exists():
        for alias in ALIASES.values():
            cached = cache_dir() / "models" / alias.name
            if cached.exists() and path.resolve() == cached.resolve():
                return alias.hub_id
        return None
    return spec if REPO_ID.fullmatch(spec) and ".." not in spec and "--" not in spec else None


def license_for(hub_id: str | None) -> str:
    """The licence a fine-tune inherits from its base: apache-2.0 for SmolLM2, llama3.2 for Llama 3.2, else
    `other` (the card tells the user to check the base model's licence)."""
    low = (hub_id or "").lower()
    if low.startswith("huggingfacetb/smollm2"):
        return "apache-2.0"
    if "llama-3.2" in low or "llama3.2" in low:
        return "llama3.2"
    return "other"


def _data_name(data: str | None) -> str:
    """A data path as shown on a card: its last two components, never the user's whole local path."""
    if not data:
        return "unknown"
    p = Path(data)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def eval_dataset(meta: dict, metrics: dict) -> dict:
    """What the metrics were measured on: Hub dataset id, config, split, display name, and whether these are
    tunelab's article-level SQuAD splits (see ../shared/data/SOURCES.md) or a user's own file."""
    data = Path(metrics.get("data") or "")
    if meta["task"] == "sst2":
        if data.name == "dev.tsv" and data.parent.name.lower() in ("sst-2", "sst2"):
            return {"type": SST2_HUB, "config": "sst2", "split": "validation", "name": "GLUE SST-2",
                    "local_split": False, "custom": False}
        return {"type": SST2_HUB, "config": "sst2", "split": data.stem or "unknown",
                "name": f"SST-2 format file {data.name}", "local_split": False, "custom": True}
    version = str(meta.get("version", "1.1")).lstrip("v")
    hub_id, config = SQUAD_HUB.get(version, SQUAD_HUB["1.1"])
    if data.name == f"dev-v{version}.json":  # the official file
        return {"type": hub_id, "config": config, "split": "validation", "name": f"SQuAD v{version}",
                "local_split": False, "custom": False}
    if data.name == f"v{version}-dev.json":  # tunelab's data folder: held-out articles of the official dev set
        return {"type": hub_id, "config": config, "split": "validation",
                "name": f"SQuAD v{version} (article-level split of the official dev set)",
                "local_split": True, "custom": False}
    return {"type": hub_id, "config": config, "split": data.stem or "unknown",
            "name": f"SQuAD v{version} format file {data.name}", "local_split": False, "custom": True}


def metric_rows(task: str, metrics: dict) -> list[tuple[str, str, float]]:
    """(metric type, display name, value in %) for the model-index; empty when the eval had no labels."""
    if task == "sst2":
        keys = [("accuracy", "Accuracy"), ("f1", "F1 (positive class)")]
        return [(k, name, round(100.0 * metrics[k], 2)) for k, name in keys if k in metrics]
    keys = [("exact_match", "Exact match"), ("f1", "F1")]
    return [(k, name, round(float(metrics[k]), 2)) for k, name in keys if k in metrics]


def card_data(meta: dict, metrics: dict, name: str, base_model: str | None = None):
    from huggingface_hub import EvalResult, ModelCardData

    task = meta["task"]
    hub_id = base_model or base_hub_id(meta.get("base_model"))
    ds = eval_dataset(meta, metrics)
    datasets = [ds["type"]]
    results = [
        EvalResult(task_type=TASK_INFO[task]["pipeline_tag"], task_name=TASK_INFO[task]["what"],
                   dataset_type=ds["type"], dataset_name=ds["name"], dataset_config=ds["config"],
                   dataset_split=ds["split"], metric_type=mtype, metric_name=mname, metric_value=value)
        for mtype, mname, value in metric_rows(task, metrics)
    ]
    tags = ["tunelab", task, {"full": "full-fine-tuning", "lora": "lora", "head": "head-only"}.get(
        meta.get("method", "full"), meta.get("method", "full"))]
    return ModelCardData(
        base_model=hub_id, datasets=datasets, license=license_for(hub_id), language=["en"],
        library_name="transformers", pipeline_tag=TASK_INFO[task]["pipeline_tag"], tags=tags,
        model_name=name, eval_results=results or None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Model card body


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "—" if v is None else str(v)


def _table(rows: list[tuple[str, str]], head=("", "")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _usage_sst2(meta: dict, name: str) -> str:
    prompt = meta.get("input_prompt")
    lines = [
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        f'model_id = "YOUR-USER/{name}"  # or the path of this folder',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        "model = AutoModelForSequenceClassification.from_pretrained(model_id).eval()",
        "",
    ]
    if prompt:
        lines += [
            "# The model was trained on sentences wrapped in this prompt; give it the same input.",
            f"TEMPLATE = {prompt['text']!r}",
        ]
        if prompt.get("chat"):
            lines += [
                f"SYSTEM = {prompt.get('system')!r}",
                f"ANSWER_PREFIX = {prompt.get('answer_prefix', '')!r}",
                "",
                "def format_input(sentence):",
                '    messages = [{"role": "system", "content": SYSTEM}] if SYSTEM else []',
                '    messages.append({"role": "user", "content": TEMPLATE.replace("{sentence}", sentence)})',
                ("    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)"
                 " + ANSWER_PREFIX"),
            ]
        else:
            lines += ["", "def format_input(sentence):", '    return TEMPLATE.replace("{sentence}", sentence)']
    else:
        lines += ["def format_input(sentence):  # trained on bare sentences", "    return sentence"]
    lines += [
        "",
        'sentence = "a gorgeous , witty , seductive movie ."  # SST-2 style: lower-cased, PTB-tokenised',
        (f"enc = tokenizer(format_input(sentence), truncation=True, max_length={meta.get('max_length', 128)},"
         ' return_tensors="pt")'),
        "with torch.no_grad():",
        "    probs = model(**enc).logits.softmax(-1)[0]",
        "print(model.config.id2label[int(probs.argmax())], float(probs.max()))",
        "```",
    ]
    return "\n".join(lines)


def _usage_squad(meta: dict, name: str) -> str:
    max_length = meta.get("max_length", 384)
    return "\n".join([
        "```python",
        "import torch",
        "from transformers import AutoModelForQuestionAnswering, AutoTokenizer",
        "",
        f'model_id = "YOUR-USER/{name}"  # or the path of this folder',
        "tokenizer = AutoTokenizer.from_pretrained(model_id)",
        "model = AutoModelForQuestionAnswering.from_pretrained(model_id).eval()",
        "",
        'question, context = "Who won Super Bowl 50?", "The Denver Broncos won Super Bowl 50 in Santa Clara."',
        "# Input as in training: question then passage (one pair encoding), then EOS appended as the last token",
        "# (the no-answer position). Long passages need sliding windows: `tunelab predict` does them.",
        f"enc = tokenizer(question, context, truncation=\"only_second\", max_length={max_length - 1},",
        "                return_offsets_mapping=True)",
        "ids = torch.tensor([enc.input_ids + [tokenizer.eos_token_id]])",
        "with torch.no_grad():",
        "    out = model(input_ids=ids)",
        "ctx = [i for i, s in enumerate(enc.sequence_ids()) if s == 1]",
        "start = max(ctx, key=lambda i: out.start_logits[0, i])",
        "end = max((i for i in ctx if start <= i < start + 30), key=lambda i: out.end_logits[0, i])",
        "print(context[enc.offset_mapping[start][0]:enc.offset_mapping[end][1]].strip())",
        "```",
    ])


def card_body(meta: dict, metrics: dict, train_cfg: dict, params: dict | None, name: str,
              hub_id: str | None) -> str:
    task = meta["task"]
    method = meta.get("method", "full")
    ds = eval_dataset(meta, metrics)
    base_link = (f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id
                 else f"A local model (`{Path(str(meta.get('base_model'))).name}`)")
    how = {"full": "full fine-tuning (every weight trained)",
           "lora": "LoRA (low-rank adapters on the attention and MLP projections, the new head trained in full); "
                   "the adapters are merged into the weights here, so this is a plain transformers model",
           "head": "head-only training (the pretrained body frozen)"}.get(method, method)
    out = [f"# {name}", ""]
    out.append(f"{base_link} fine-tuned for {TASK_INFO[task]['what']} with "
               f"tunelab by {how}. "
               f"A `{TASK_INFO[task]['auto_class'].replace('AutoModelFor', '')}` head reads the hidden state of the "
               "last token (a decoder-only model: the last token is the one that has seen the whole input).")
    if task == "squad":
        out.append("")
        out.append(f"SQuAD v{meta.get('version', '1.1')}: the model predicts an answer span in the passage"
                   + (", or no answer (the appended EOS position) when the passage does not hold one."
                      if str(meta.get("version")) == "2.0" else "."))
    out += ["", "## How to use", "", _usage_sst2(meta, name) if task == "sst2" else _usage_squad(meta, name)]
    out += ["", "With tunelab installed: `tunelab predict ./this-folder " +
            ("\"a gorgeous , witty , seductive movie .\"`" if task == "sst2" else
             "--question \"...\" --context \"...\"`") + "."]

    out += ["", "## Evaluation", ""]
    rows = metric_rows(task, metrics)
    if rows:
        table = [(mname, f"{value:.2f}") for _, mname, value in rows]
        if task == "sst2":
            for key, label in (("precision", "Precision (positive class)"), ("recall", "Recall (positive class)")):
                if key in metrics:
                    table.append((label, f"{100 * metrics[key]:.2f}"))
            if "accuracy_ci95" in metrics:
                lo, hi = metrics["accuracy_ci95"]
                table.append(("Accuracy 95% CI (bootstrap)", f"{100 * lo:.1f} – {100 * hi:.1f}"))
        else:
            for key, label in (("HasAns_f1", "F1 on answerable"), ("NoAns_f1", "F1 on unanswerable")):
                if key in metrics:
                    table.append((label, f"{metrics[key]:.2f}"))
            if "f1_ci95" in metrics:
                lo, hi = metrics["f1_ci95"]
                table.append(("F1 95% CI (bootstrap)", f"{lo:.1f} – {hi:.1f}"))
        table.append(("Examples", str(metrics.get("n", "?"))))
        out.append(f"Measured by tunelab on {ds['name']} (`{_data_name(metrics.get('data'))}`, split "
                   f"`{ds['split']}`), in percent:")
        out += ["", _table(table, ("metric", "value"))]
    else:
        out.append("No labelled evaluation was recorded for this model.")
    if ds["local_split"]:
        out += ["", ("**Note:** these SQuAD numbers are on tunelab's *article-level splits of the official dev "
                     "set*: the official training file was not available offline, so training used some dev-set "
                     "articles and evaluation held out other, whole articles (no paragraph in both). They are not "
                     "comparable with published SQuAD dev scores (less training data, other test articles).")]
    elif ds["custom"]:
        out += ["", (f"**Note:** measured on a user-supplied file (`{_data_name(metrics.get('data'))}`), not an "
                     "official split.")]

    out += ["", "## Training", ""]
    facts = [("Base model", base_link), ("Method", method),
             ("Weights", "LoRA adapter merged into the base weights" if method == "lora" else "full weights")]
    for key in ("train_examples", "train_features", "train_steps", "train_tokens", "train_seconds", "device"):
        if key in metrics:
            v = metrics[key]
            facts.append((key.replace("_", " ").capitalize(), f"{v:.0f}" if key == "train_seconds" else _fmt(v)))
    if task == "sst2":
        p = meta.get("input_prompt")
        facts.append(("Input format", "sentence wrapped in a prompt (see How to use)" if p else "bare sentence"))
    else:
        facts.append(("Window", f"{meta.get('max_length')} tokens, stride {meta.get('stride')}, question first"))
    out.append(_table(facts, ("", "")))
    if train_cfg:
        keep = [k for k in train_cfg if method == "lora" or not k.startswith(("lora_", "merge_lora"))]
        out += ["", "Training options (`training_config.json`):", "",
                _table([(f"`{k}`", _fmt(train_cfg[k])) for k in keep], ("option", "value"))]

    if params:
        out += ["", "## Parameters", "",
                _table([("Total (as exported)", f"{params['total']:,}"),
                        ("Base causal LM", f"{params['base_total']:,}"),
                        ("Trained during fine-tuning", (f"{params['trainable']:,} "
                                                        f"({100 * params['trainable'] / max(params['total'], 1):.2f}%)"))]
                       + ([("of which LoRA adapter (merged)", f"{params['adapter']:,}")] if params.get("adapter")
                          else []), ("", "count"))]
        out.append("")
        out.append("Counted exactly from the config (`tunelab params`); tied embeddings count once.")

    lic = license_for(hub_id)
    out += ["", "## Limitations", ""]
    lim = []
    if task == "sst2":
        lim.append("Trained on SST-2 movie-review sentences (lower-cased, PTB-tokenised: `it 's`, `-lrb-`); "
                   "other domains and text styles will score lower.")
        lim.append("Two labels only (negative/positive): neutral or mixed text is forced into one of them.")
        if meta.get("input_prompt"):
            lim.append("Inputs must be wrapped in the training prompt (see How to use); the Hub widget and "
                       "`pipeline()` pass bare text and will give different scores.")
    else:
        lim.append("Answers are spans of the given passage; the head was trained with tunelab's input layout "
                   "(question first, EOS appended as the no-answer slot), which the `question-answering` "
                   "pipeline does not reproduce: use the snippet above or `tunelab predict`.")
        lim.append("English Wikipedia passages; other domains will score lower.")
    lim.append("The numbers above come from one fine-tuning run (one seed) on the evaluation data named there; "
               "the bootstrap interval covers sampling of that data only, not run-to-run variation.")
    if lic == "other":
        lim.append("Licence: inherits the base model's licence; check it before use.")
    out += [f"- {x}" for x in lim]
    out.append("")
    return "\n".join(out)


def _param_counts(config_dir: Path, meta: dict, train_cfg: dict) -> dict | None:
    """param_report of the task model on this architecture's config (the exported config: the base's, plus
    the head's label fields), with the fine-tuning method's LoRA options."""
    from tunelab.models.params import DEFAULT_LORA_TARGETS, LoraOptions, param_report
    from tunelab.models.registry import load_config

    method = meta.get("method", "full")
    lora = LoraOptions(train_cfg.get("lora_r", 16), train_cfg.get("lora_alpha", 32), 0.0,
                       tuple(train_cfg.get("lora_targets") or DEFAULT_LORA_TARGETS))
    try:
        report = param_report(str(meta.get("base_model")), load_config(str(config_dir)), meta["task"], method,
                              lora)
    except Exception:  # noqa: BLE001 - counts are a nicety on the card, never a reason to fail the export
        return None
    return report.to_dict()


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc}") from exc


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


# ---------------------------------------------------------------------------------------------------------------
# export


def export(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
           base_model: str | None = None) -> Path:
    """Write a Hub-ready folder for a folder written by `tunelab finetune`: safetensors weights (a LoRA adapter
    merged into full weights), config, tokenizer files, tunelab.json, training_config.json, eval_results.json and
    a model card README.md. `base_model` overrides the card's base model Hub id. Returns the folder."""
    from huggingface_hub import ModelCard
    from peft import PeftModel

    from tunelab.outputs import atomic_output, write_json
    from tunelab.recipes.common import META_FILE, load_finetuned, read_meta

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = read_meta(model_dir)
    task = meta.get("task")
    if task not in TASK_INFO:
        raise UsageError(f"{model_dir}: {META_FILE} names task {task!r}; export knows sst2 and squad")
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(f"{model_dir}: no weights (expected model.safetensors or adapter_model.safetensors)")
    metrics_file = model_dir / "eval" / "metrics.json"
    if not metrics_file.is_file():
        raise UsageError(f"{model_dir}: no eval/metrics.json; export a folder written by `tunelab finetune`")
    if _overlaps(model_dir, out_dir):
        raise UsageError(f"{out_dir}: the export must go to a folder outside {model_dir} (and not contain it)")
    if base_model is not None and not (REPO_ID.fullmatch(base_model) and ".." not in base_model):
        raise UsageError(f"--base-model {base_model!r}: expected a Hub id, owner/name")
    metrics = _read_json(metrics_file, "the evaluation metrics")
    cfg_file = model_dir / "training_config.json"
    train_cfg = _read_json(cfg_file, "the training options") if cfg_file.is_file() else {}

    with atomic_output(out_dir, overwrite=overwrite) as work:
        model, tokenizer, _ = load_finetuned(model_dir, task)
        saved = meta.get("saved", "full")
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
            saved = "merged"
        # Tensor names as the exported architecture names them: a span-QA model loaded from a causal-LM
        # checkpoint through a key mapping would otherwise be saved under the checkpoint's names (`model.` instead
        # of `transformer.`), and `AutoModelForQuestionAnswering.from_pretrained` would leave its body random.
        model.save_pretrained(work, safe_serialization=True, save_original_format=False)
        tokenizer.save_pretrained(work)
        hub_id = base_model or base_hub_id(meta.get("base_model"))
        # tunelab can use the export again (`tunelab predict/evaluate`); no local paths go into a shared folder
        out_meta = {k: v for k, v in meta.items() if k != "base_model_path"}
        spec = str(meta.get("base_model") or "")
        if hub_id or Path(spec).expanduser().exists():
            out_meta["base_model"] = hub_id or Path(spec).name
        out_meta.update(saved=saved, base_model_hub_id=hub_id)
        write_json(work / META_FILE, out_meta)
        if train_cfg:
            write_json(work / "training_config.json", train_cfg)
        shared_metrics = {k: v for k, v in metrics.items() if k not in ("model", "evals_during_training")}
        shared_metrics["data"] = _data_name(metrics.get("data"))
        write_json(work / "eval_results.json", shared_metrics)

        name = out_dir.name
        params = _param_counts(work, meta, train_cfg)
        data = card_data(meta, metrics, name, base_model=hub_id)
        body = card_body(meta, metrics, train_cfg, params, name, hub_id)
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
        card.save(work / "README.md")
        # The card must parse back exactly as written (the Hub rejects a push whose metadata does not).
        check = ModelCard.load(work / "README.md")
        if check.data.to_dict() != data.to_dict():
            raise RuntimeError("model card metadata did not round-trip")
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# push


def validate_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise UsageError(f"--repo-id {repo_id!r}: expected USER/NAME (or ORG/NAME): letters, digits, '-', '_', '.'")
    try:
        hub_validate(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--repo-id {repo_id!r}: {exc}") from None
    return repo_id


def upload_plan(folder: str | Path) -> list[dict]:
    """The files `upload_folder` will send, listed and filtered exactly as it does: [{"path", "size"}]."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder).expanduser().resolve()
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    keep = filter_repo_objects(files, ignore_patterns=list(HIDDEN_PATTERNS) + list(DEFAULT_IGNORE_PATTERNS))
    return [{"path": rel, "size": files[rel].stat().st_size} for rel in keep]


def check_folder(folder: str | Path) -> Path:
    """A folder fit to push: a README.md model card with YAML metadata, and weights."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    readme = folder / "README.md"
    if not readme.is_file():
        raise UsageError(f"{folder}: no README.md model card; make the folder with `tunelab export`")
    try:
        card = ModelCard.load(readme)
    except Exception as exc:  # noqa: BLE001 - ValueError for bad YAML, and whatever a broken file raises
        raise UsageError(f"{readme}: not a valid model card: {exc}") from None
    if not card.data.to_dict():
        raise UsageError(f"{readme}: the model card has no YAML metadata (--- block); make it with `tunelab export`")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(f"{folder}: no weights (model.safetensors or adapter_model.safetensors)")
    return folder


def _token(token: str | None) -> str | None:
    if token:
        return token
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no login is the common case
        return None


def _hub_error(exc: BaseException, repo_id: str, token: str | None) -> UsageError:
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): unset it to push"
    elif status == 401:
        msg = ("the Hub refused the token (HTTP 401): log in again with `hf auth login` or set HF_TOKEN to a token "
               "with write access")
    elif status == 403:
        msg = (f"not allowed to write to {repo_id} (HTTP 403): the token needs write access, and the namespace "
               "must be your user or an organisation you can write to")
    elif status == 404:
        msg = f"{repo_id} not found (HTTP 404): check the user or organisation name"
    elif status is not None:
        msg = f"the Hub answered HTTP {status}: {exc}"
    elif isinstance(exc, (OSError, ConnectionError)) or "connect" in type(exc).__name__.lower():
        msg = f"cannot reach the Hub ({type(exc).__name__}): {exc}"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    msg = f"push to {repo_id} failed: {msg}"
    if token:
        msg = msg.replace(token, "***")
    return UsageError(msg)


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi()


def push(folder: str | Path, repo_id: str, *, private: bool = False, dry_run: bool = False,
         token: str | None = None, api=None) -> dict:
    """Upload an exported folder to the Hub model repo `repo_id` (created if missing; `private` applies only
    then). The token comes from `token`, HF_TOKEN or the user's login, and is never printed. `dry_run`: only
    say which files would go where, touching neither the network nor the token.

    Returns {"repo_id", "url", "private", "dry_run", "files": [{"path", "size"}], "total_bytes"} (+ "commit")."""
    validate_repo_id(repo_id)
    folder = check_folder(folder)
    files = upload_plan(folder)
    result = {"repo_id": repo_id, "url": f"https://huggingface.co/{repo_id}", "private": private,
              "dry_run": dry_run, "folder": str(folder), "files": files,
              "total_bytes": sum(f["size"] for f in files)}
    if dry_run:
        return result
    token = _token(token)
    if not token:
        raise UsageError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    api = api if api is not None else _hub_api()
    try:
        repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder), token=token,
                                 ignore_patterns=list(HIDDEN_PATTERNS),
                                 commit_message=f"Upload {folder.resolve().name} with tunelab")
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - HTTP, network and validation errors of huggingface_hub alike
        raise _hub_error(exc, repo_id, token) from None
    url = getattr(repo, "url", None)
    result["url"] = str(url) if url else result["url"]
    commit_url = getattr(info, "commit_url", None)
    if commit_url:
        result["commit"] = str(commit_url)
    return result


# ---------------------------------------------------------------------------------------------------------------
# CLI


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="write a Hub-ready folder (merged weights, model card) for a fine-tuned model",
                       description="Export a folder written by `tunelab finetune` for the Hugging Face Hub: "
                       "safetensors weights (LoRA merged), tokenizer, and a model card with the measured metrics.")
    p.add_argument("model_dir", help="a folder written by `tunelab finetune`")
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--base-model", help="Hub id of the base model for the card (default: from the alias)")

    p = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub",
                       description="Upload a folder written by `tunelab export` to a Hub model repo (created "
                       "if missing). The token comes from HF_TOKEN or `hf auth login`.")
    p.add_argument("folder", help="a folder written by `tunelab export`")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                   "visibility)")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded; send nothing")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_export(args) -> int:
    out = export(args.model_dir, args.out, overwrite=args.overwrite, base_model=getattr(args, "base_model", None))
    files = upload_plan(out)
    print(f"wrote {out}: {len(files)} files, {_size(sum(f['size'] for f in files))} (model card {out}/README.md)")
    print(f"push it with: tunelab push {out} --repo-id USER/{out.name}")
    return 0


def cmd_push(args) -> int:
    r = push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    vis = "private" if r["private"] else "public"
    if r["dry_run"]:
        print(f"dry run: would upload {len(r['files'])} files ({_size(r['total_bytes'])}) from {r['folder']} "
              f"to {r['url']} ({vis} if created)")
        for f in r["files"]:
            print(f"  {f['size']:>14,}  {f['path']}")
    else:
        print(f"uploaded {len(r['files'])} files ({_size(r['total_bytes'])}) to {r['url']}")
        if "commit" in r:
            print(f"commit: {r['commit']}")
    return 0


COMMANDS = {"export": cmd_export, "push": cmd_push}
