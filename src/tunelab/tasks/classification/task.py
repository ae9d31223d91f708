"""Text classification with any number of labels, single texts or sentence pairs.

Zero-shot: label-word scoring of one prompt per example, calibrated (zero_shot.py). Fine-tuning: an N-way
classification head on the last token of a zero-shot template (the input prompt), initialised from its label
words' embedding rows, so that training starts from that template's zero-shot classifier (head.py).
Metrics: accuracy with a bootstrap interval,
macro-F1, per-class precision/recall/F1 and the confusion matrix; binary tasks add the positive class's
precision/recall/F1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tunelab.data.table import SUFFIXES, Columns, LabelSet, TextExample, read_records, read_table, summarize
from tunelab.data.text import read_lines
from tunelab.errors import DataError, UsageError
from tunelab.metrics import mode_name
from tunelab.outputs import write_json, write_jsonl
from tunelab.tasks.base import Definition, FineTuning, Task, one_line
from tunelab.tasks.classification.detokenize import detokenize
from tunelab.tasks.classification.head import classify, encode, format_input, head_init_from_verbalizers
from tunelab.tasks.classification.zero_shot import (
    CONTENT_FREE,
    Calibration,
    ClassificationPrompt,
    zero_shot,
)
from tunelab.tasks.prompt import build_prompt


@dataclass
class ClassScores:
    """Predictions of a classifier: class log-probabilities, one row per example."""

    log_probs: np.ndarray

    def per_example(self) -> list:
        return list(self.log_probs)

    @classmethod
    def join(cls, parts: list) -> ClassScores:
        return cls(np.array(parts))


def generic_templates(labels: tuple[str, ...], pairs: bool) -> dict[str, dict]:
    """Templates for a task that brings none: its labels named in the question, answered by a label word."""
    options = ", ".join(labels)
    inputs = "Text: {text}\nSecond text: {text_pair}" if pairs else "Text: {text}"
    return {
        "chat": {
            "text": f"Which of these labels fits the text best: {options}? "
            f"Answer with the label.\n\n{inputs}",
            "chat": True,
            "answer_prefix": "Label:",
        },
        "plain": {"text": f"{inputs}\nLabel ({options}):", "chat": False},
    }


@dataclass(frozen=True, kw_only=True)
class ClassificationTask(Task):
    kind: ClassVar[str] = "classification"
    head: ClassVar[str] = "classification"
    pipeline_tag: ClassVar[str] = "text-classification"
    zero_shot_padding_side: ClassVar[str] = "right"
    KIND_KEYS: ClassVar[tuple[str, ...]] = ("labels", "positive_label", "verbalizers", "prompts", "example")
    DATA_KEYS: ClassVar[tuple[str, ...]] = ("text", "text_pair", "label")

    labels: tuple[str, ...]
    positive: int | None = None  # binary tasks: the class whose precision/recall/F1 are reported
    columns: Columns = field(default_factory=Columns)
    verbalizers: dict[str, list[str]] = field(default_factory=dict)
    prompts: dict[str, dict] = field(default_factory=dict)  # the task's named templates
    example: str | list[str] | None = None  # an input shown in the model card (a pair task's: two texts)

    @classmethod
    def parse_kind(cls, d: Definition, data: Definition) -> dict:
        labels = _labels(d)
        positive = None
        if len(labels) == 2:
            if isinstance(d.mapping.get("positive_label"), bool):
                raise d.error(
                    "positive_label", f"must be one of the labels {list(labels)}, got a boolean" + YAML_BOOL
                )
            name = str(d.get("positive_label", (str, int), labels[1]))
            if name not in labels:
                raise d.error("positive_label", f"must be one of the labels {list(labels)}, got {name!r}")
            positive = labels.index(name)
        elif d.mapping.get("positive_label") is not None:
            raise d.error("positive_label", "only binary tasks have a positive class")
        columns = Columns(
            data.get("text", str, "text"), data.get("text_pair", str), data.get("label", str, "label")
        )
        hub = d.section("hub")
        unknown = sorted(set(hub.get("columns", dict, {})) - {"text", "text_pair", "label"})
        if unknown:
            raise hub.error("columns", f"{unknown}: the task's columns are text, text_pair and label")
        verbalizers = _verbalizers(d, labels)
        prompts = d.get("prompts", dict) or generic_templates(labels, columns.text_pair is not None)
        for name, spec in prompts.items():
            if not isinstance(spec, dict):
                raise d.error(f"prompts.{name}", f"a template is a mapping (text, chat, ...), got {spec!r}")
            try:
                ClassificationPrompt.from_mapping(spec, labels, verbalizers, columns.text_pair is not None)
            except UsageError as exc:
                raise d.error(f"prompts.{name}", str(exc)) from None
        example = d.get("example", (str, list))
        if (
            example is not None
            and (columns.text_pair is not None) != isinstance(example, list)
            or (
                isinstance(example, list)
                and not (len(example) == 2 and all(isinstance(x, str) for x in example))
            )
        ):
            raise d.error("example", "must be one text, or for sentence pairs a list of two texts")
        return {
            "labels": labels,
            "positive": positive,
            "columns": columns,
            "verbalizers": verbalizers,
            "prompts": prompts,
            "example": example,
        }

    def __post_init__(self):
        for key, spec in (
            ("zeroshot.prompt", self.zeroshot_defaults.get("prompt")),
            ("finetune.input_prompt", self.finetune_defaults.get("input_prompt")),
        ):
            none_ok = (
                key == "finetune.input_prompt"
            )  # input_prompt none: the bare text; no zero-shot prompt is
            if isinstance(spec, str) and spec not in self.prompts and not (none_ok and spec == "none"):
                raise UsageError(
                    f"{self.source or 'built-in task ' + self.name}: {key}: {spec!r} is not one of "
                    f"the task's prompts ({', '.join(self.prompts)})"
                )

    # ---- prompts ----------------------------------------------------------------------------------------

    @property
    def default_prompt(self) -> str:
        prompt = self.zeroshot_defaults.get("prompt")
        return prompt if isinstance(prompt, str) else next(iter(self.prompts))

    @property
    def pairs(self) -> bool:
        return self.columns.text_pair is not None

    def prompt(self, spec: str | dict | None = None) -> ClassificationPrompt:
        """A zero-shot prompt: one of the task's template names (None: its default), a mapping or a file."""
        return build_prompt(
            spec,
            self.prompts,
            self.default_prompt,
            lambda m: ClassificationPrompt.from_mapping(m, self.labels, self.verbalizers, self.pairs),
        )

    def input_prompt(self, spec: str | dict | None) -> ClassificationPrompt | None:
        """The prompt that wraps fine-tuning inputs: `none` for bare text."""
        return None if spec in (None, "none") else self.prompt(spec)

    def check_prompts(self, zeroshot: str | dict | None, input_prompt: str | dict | None) -> None:
        self.prompt(zeroshot)
        self.input_prompt(input_prompt)

    # ---- data -------------------------------------------------------------------------------------------

    def read(self, path: str | Path) -> list[TextExample]:
        return read_table(path, self.columns, LabelSet(self.labels), what=self.title)

    def summarize(self, examples: list[TextExample]) -> dict:
        return summarize(examples, LabelSet(self.labels))

    def format_summary(self, summary: dict) -> str:
        counts = summary["labels"]
        if summary["labelled"] == 0:
            text = "no labels"
        else:
            text = f"labels {'/'.join(counts)}: {' / '.join(f'{n:,}' for n in counts.values())}"
            if summary["labelled"] < summary["rows"]:
                text += f" ({summary['rows'] - summary['labelled']:,} unlabelled)"
        return f"{summary['file']}: {self.title}, {summary['rows']:,} rows, {text}"

    def from_rows(self, rows: list[dict], where: str, columns: dict[str, str]) -> list[TextExample]:
        mapped = Columns(
            **{k: columns.get(k, getattr(self.columns, k)) for k in ("text", "text_pair", "label")}
        )
        if not self.pairs:
            mapped = Columns(mapped.text, None, mapped.label)
        # GLUE marks unlabelled (test) rows with -1, unless -1 is one of the task's labels
        unlabelled = None if "-1" in self.labels else -1
        return read_records(where, rows, mapped, LabelSet(self.labels), unlabelled=unlabelled)

    def check_eval(self, examples: list[TextExample], data: str) -> None:
        """Evaluation data is labelled on every row (metrics) or on none (predictions only), never partly."""
        labelled = sum(ex.label is not None for ex in examples)
        if 0 < labelled < len(examples):
            raise UsageError(
                f"{data}: {labelled} of {len(examples)} rows have a label: label every row or none"
            )

    def training_examples(self, examples: list[TextExample], data: str) -> list[TextExample]:
        labelled = [ex for ex in examples if ex.label is not None]
        if not labelled:
            raise UsageError(
                f"{data}: training data needs labels (a {self.columns.label!r} column of "
                f"{LabelSet(self.labels).rule()})"
            )
        if len(labelled) < len(examples):
            first = next(ex for ex in examples if ex.label is None)
            raise UsageError(
                f"{data}: {len(examples) - len(labelled)} of {len(examples)} training rows have no label "
                f"(the first at line {first.line}): label every training row"
            )
        return labelled

    def check_dev_labels(self, examples: list[TextExample], data: str) -> None:
        if any(ex.label is None for ex in examples):
            raise UsageError(f"{data}: evaluation data needs a label on every row")

    # ---- zero-shot --------------------------------------------------------------------------------------

    def shot_key(self, ex: TextExample) -> tuple:
        return (ex.text.strip(), (ex.text_pair or "").strip())

    def zero_shot(
        self, model, tokenizer, examples: list[TextExample], options: Any, spread=None, shots: list = ()
    ) -> tuple[ClassScores, dict]:
        prompt = self.prompt(options.prompt)
        calibration = Calibration(options.calibration)
        plain = getattr(options, "detokenize", False)
        if plain:
            examples, shots = _detokenized(examples), _detokenized(shots)
        texts = [prompt.render(tokenizer, ex.text, ex.text_pair, shots) for ex in examples]
        content_free = [
            prompt.render(tokenizer, s, s if self.pairs else None, shots) for s in calibration.content_free
        ]
        raw, cal = zero_shot(
            model,
            tokenizer,
            texts,
            prompt,
            calibration,
            options.batch_size,
            spread=spread,
            content_free=content_free,
            shots=len(shots),
        )
        extra: dict = {
            "prompt": asdict(prompt),
            "calibration": {"method": calibration.method, "offset": calibration.offset},
            "detokenize": plain,
        }
        if all(ex.label is not None for ex in examples):
            extra["uncalibrated_accuracy"] = float(
                (raw.argmax(1) == np.array([ex.label for ex in examples])).mean()
            )
        return ClassScores(cal), extra

    # ---- fine-tuning ------------------------------------------------------------------------------------

    def prepare_fine_tuning(
        self, tokenizer, cfg, train: list[TextExample], dev: list[TextExample], options: dict
    ) -> FineTuning:
        extras = self.finetune_extras()
        prompt = self.input_prompt(options.get("input_prompt", extras["input_prompt"]))
        plain = bool(options.get("detokenize", extras["detokenize"]))
        if plain:
            train = _detokenized(train)
        texts = [format_input(prompt, tokenizer, ex.text, ex.text_pair) for ex in train]
        ids = encode(tokenizer, texts, cfg.max_length, prompt is None or prompt.add_special_tokens)
        feats = [
            {"input_ids": x, "attention_mask": [1] * len(x), "labels": ex.label}
            for x, ex in zip(ids, train, strict=True)
        ]
        meta = {
            "input_prompt": asdict(prompt) if prompt else None,
            "detokenize": plain,
            "max_length": cfg.max_length,
            "labels": list(self.labels),
        }
        stats = {"train_examples": min(len(feats), cfg.max_train_samples or len(feats))}
        head_init = head_init_from_verbalizers(tokenizer, prompt) if prompt else None
        return FineTuning(feats, meta, stats, head_init=head_init)

    def predict(
        self,
        model,
        tokenizer,
        examples: list[TextExample],
        meta: dict,
        batch_size: int | str = 64,
        progress: bool = True,
        bf16: bool = True,
    ) -> ClassScores:
        """Class log-probabilities of a fine-tuned classifier, with the input format it was trained on."""
        prompt = self.input_prompt(meta.get("input_prompt"))
        if meta.get("detokenize"):
            examples = _detokenized(examples)
        texts = [format_input(prompt, tokenizer, ex.text, ex.text_pair) for ex in examples]
        return ClassScores(
            classify(
                model,
                tokenizer,
                texts,
                meta.get("max_length", 128),
                batch_size,
                progress=progress,
                bf16=bf16,
                add_special_tokens=prompt is None or prompt.add_special_tokens,
            )
        )

    join_predictions = staticmethod(ClassScores.join)

    def quick_scores(self, predictions: ClassScores, examples: list[TextExample]) -> dict:
        gold = np.array([ex.label for ex in examples])
        return {"accuracy": float((predictions.log_probs.argmax(1) == gold).mean())}

    def head_options(self) -> dict:
        return {"labels": self.labels}

    def check_meta(self, meta: dict) -> None:
        super().check_meta(meta)
        prompt = meta.get("input_prompt")
        if prompt is not None and not isinstance(prompt, dict):
            raise UsageError(f"input_prompt must be a prompt mapping or null, got {prompt!r}")
        if not isinstance(meta.get("detokenize", False), bool):
            raise UsageError(f"detokenize must be true or false, got {meta['detokenize']!r}")
        self.input_prompt(prompt)  # the checks a prompt given by the user gets

    def compatible(self, other: Task) -> str | None:
        why = super().compatible(other)
        if why is None and tuple(getattr(other, "labels", ())) != self.labels:
            why = f"its labels are {list(getattr(other, 'labels', []))}, this task's {list(self.labels)}"
        return why

    # ---- results ----------------------------------------------------------------------------------------

    def write_results(
        self,
        out: Path,
        *,
        model: str,
        mode: str,
        data: str,
        examples: list[TextExample],
        predictions: ClassScores,
        extra: dict | None = None,
    ) -> dict:
        """metrics.json (when the data has labels) and predictions.jsonl (text, gold, prediction, class
        scores; gold and prediction are label numbers, the scores are keyed by label name)."""
        probs = np.exp(predictions.log_probs)
        pred = predictions.log_probs.argmax(1)
        rows = []
        for i, (ex, p) in enumerate(zip(examples, pred, strict=True)):
            row = {"line": ex.line, "text": ex.text}
            if self.pairs:
                row["text_pair"] = ex.text_pair
            row.update(
                gold=ex.label,
                prediction=int(p),
                scores={name: float(probs[i, c]) for c, name in enumerate(self.labels)},
            )
            rows.append(row)
        write_jsonl(out / "predictions.jsonl", rows)
        metrics: dict = {"task": self.name, "model": model, "mode": mode, "data": data, "n": len(examples)}
        labelled = [ex.label is not None for ex in examples]
        if all(labelled):
            from tunelab.metrics import classification_metrics

            metrics.update(
                classification_metrics(
                    [ex.label for ex in examples], pred, labels=self.labels, positive=self.positive
                )
            )
        elif any(labelled):
            raise UsageError(f"{data}: some rows have labels and some do not")
        else:
            metrics["note"] = "no gold labels in this file: predictions only"
        metrics.update(extra or {})
        write_json(out / "metrics.json", metrics)
        return metrics

    def summary_line(self, m: dict) -> str:
        """One line for the console."""
        if "accuracy" not in m:
            return f"{m['n']} predictions (no labels in {m['data']})"
        lo, hi = m["accuracy_ci95"]
        line = (
            f"{self.title} {mode_name(m)}: accuracy {100 * m['accuracy']:.2f}% (95% CI {100 * lo:.1f}-"
            f"{100 * hi:.1f})"
        )
        if "f1" in m:
            line += (
                f", F1 {100 * m['f1']:.2f}, precision {100 * m['precision']:.2f}, recall "
                f"{100 * m['recall']:.2f}"
            )
        else:
            line += f", macro-F1 {100 * m['macro_f1']:.2f}"
        return line + f", n={m['n']}"

    def metric_rows(self, metrics: dict) -> list[tuple[str, str, float]]:
        """(metric type, display name, value in %) for a model card's model-index."""
        keys = [("accuracy", "Accuracy")]
        keys.append(
            ("f1", f"F1 ({self.labels[self.positive]} class)")
            if self.positive is not None
            else ("macro_f1", "Macro F1")
        )
        return [(k, name, round(100.0 * metrics[k], 2)) for k, name in keys if k in metrics]

    # ---- `tunelab predict` ------------------------------------------------------------------------------

    def prediction_inputs(
        self,
        texts: list[str],
        *,
        pairs: list[str] | None = None,
        file: str | None = None,
        questions: list[str] | None = None,
        context: str | None = None,
    ) -> list[dict]:
        """[{"text", "text_pair"?, "gold"?}] from positional texts and/or a file (the task's TSV/CSV/JSONL,
        else one text a line; a pair task's lines hold the two texts separated by a tab)."""
        if questions or context is not None:
            raise UsageError(
                f"this model classifies texts ({self.name}): give texts, not --question/--context"
            )
        if self.pairs != bool(pairs) and (texts or pairs):
            raise UsageError(
                f"{self.name} classifies sentence pairs: give each TEXT with a --pair"
                if self.pairs
                else f"{self.name} classifies single texts: --pair has no use here"
            )
        if pairs and len(pairs) != len(texts):
            raise UsageError(
                f"{len(texts)} texts but {len(pairs)} --pair texts: give one --pair for each TEXT"
            )
        rows = [
            {"text": t, **({"text_pair": p} if self.pairs else {})}
            for t, p in zip(texts, pairs or texts, strict=True)
        ]
        if file:
            rows += self._file_inputs(file)
        if not rows:
            raise UsageError("nothing to classify: give texts as arguments or --file")
        for r in rows:
            if not r["text"].strip() or (self.pairs and not r["text_pair"].strip()):
                raise UsageError("an empty text was given (as an argument or --pair)")
        return rows

    def _file_inputs(self, file: str) -> list[dict]:
        if file != "-" and Path(file).suffix.lower() in SUFFIXES:
            return [
                {
                    "text": ex.text,
                    **({"text_pair": ex.text_pair} if self.pairs else {}),
                    **({"gold": self.labels[ex.label]} if ex.label is not None else {}),
                }
                for ex in self.read(file)
            ]
        rows = []
        for n, line in read_lines(file):
            if self.pairs:
                parts = line.split("\t")
                if len(parts) != 2:
                    raise DataError(file, "expected two tab-separated texts (a sentence pair)", line=n)
                if not parts[0].strip() or not parts[1].strip():
                    raise DataError(
                        file, f"the {'first' if not parts[0].strip() else 'second'} text is empty", line=n
                    )
                rows.append({"text": parts[0], "text_pair": parts[1]})
            else:
                rows.append({"text": line})
        return rows

    def predict_inputs(
        self, model, tokenizer, meta: dict, rows: list[dict], batch_size: int | str = 64
    ) -> list[dict]:
        """Each row with "label", "probability" (of that label) and "scores" (every label), scored as
        tunelab's evaluation scores (same input format, same classifier; a model trained on detokenized
        texts reads every text detokenized, as its evaluation did: `detokenize`)."""
        examples = [TextExample(r["text"], None, i, r.get("text_pair")) for i, r in enumerate(rows)]
        probs = np.exp(self.predict(model, tokenizer, examples, meta, batch_size, progress=False).log_probs)
        out = []
        for r, p in zip(rows, probs, strict=True):
            k = int(p.argmax())
            out.append(
                {
                    **r,
                    "label": self.labels[k],
                    "probability": float(p[k]),
                    "scores": {name: float(p[c]) for c, name in enumerate(self.labels)},
                }
            )
        return out

    def format_prediction(self, row: dict) -> str:
        texts = [row["text"], row["text_pair"]] if self.pairs else [row["text"]]
        return "\t".join([row["label"], f"{row['probability']:.4f}", *map(one_line, texts)])


YAML_BOOL = " (YAML reads an unquoted yes/no/true/false/on/off as a boolean: quote it)"


def _labels(d: Definition) -> tuple[str, ...]:
    raw = d.get("labels", list, required=True)
    if any(isinstance(x, bool) or not isinstance(x, (str, int)) for x in raw):
        raise d.error(
            "labels",
            f"must be a list of label names, got {raw!r}"
            + (YAML_BOOL if any(isinstance(x, bool) for x in raw) else ""),
        )
    labels = tuple(str(x) for x in raw)
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(x.strip() for x in labels):
        raise d.error("labels", f"needs at least two distinct, non-empty labels, got {raw!r}")
    spaced = [x for x in labels if x != x.strip()]
    if spaced:  # the data files' values are read stripped, so such a label could never match
        raise d.error("labels", f"label names cannot start or end with a space, got {spaced!r}")
    return labels


def _detokenized(examples: list) -> list:
    """Copies of `examples` with their texts as ordinary text (`detokenize`)."""
    return [
        replace(ex, text=detokenize(ex.text), text_pair=ex.text_pair and detokenize(ex.text_pair))
        for ex in examples
    ]


def _verbalizers(d: Definition, labels: tuple[str, ...]) -> dict[str, list[str]]:
    """Each label's words: given, else the label itself with a leading space (" positive")."""
    given = {str(k): v for k, v in d.get("verbalizers", dict, {}).items()}  # (YAML reads `1:` as a number)
    unknown = sorted(k for k in given if k not in labels)
    if unknown:
        raise d.error("verbalizers", f"labels {unknown} are not among the task's labels {list(labels)}")
    out = {}
    for label in labels:
        words = given.get(label, [" " + label])
        if isinstance(words, str):
            words = [words]
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            raise d.error(f"verbalizers.{label}", f"must be a word or a list of words, got {words!r}")
        out[label] = list(words)
    return out


__all__ = ["CONTENT_FREE", "ClassScores", "ClassificationTask", "generic_templates"]
