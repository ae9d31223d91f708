"""Extractive question answering from SQuAD-format files (v1.1, or v2.0 with unanswerable questions).

Zero-shot: greedy generation from a prompt, the answer cleaned up to a passage span (generation.py).
Fine-tuning:
a span head over sliding windows of question + passage (windows.py), answers by n-best search (postprocess.py,
spans.py). Metrics: the official SQuAD scripts' EM and F1 (metrics.py); a task is scored as v2.0 when its
version says so or any of its questions is unanswerable.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tunelab.data.squad import SquadExample, read_squad, read_squad_rows, summarize_squad
from tunelab.errors import DataError, UsageError
from tunelab.metrics import bootstrap_ci, mode_name
from tunelab.outputs import write_json, write_jsonl
from tunelab.tasks.base import Definition, FineTuning, Task, one_line
from tunelab.tasks.extractive_qa.focus import focus_passage
from tunelab.tasks.extractive_qa.generation import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    QAPrompt,
    generate_answers,
    load_prompt,
)
from tunelab.tasks.extractive_qa.metrics import per_example_scores, question_type, squad_v1, squad_v2
from tunelab.tasks.extractive_qa.spans import doc_stride, predict_spans
from tunelab.tasks.extractive_qa.windows import prepare_eval_features, prepare_train_features, span_loss

VERSIONS = ("1.1", "2.0")


@dataclass
class SpanAnswers:
    """Predictions of a QA model: the answer per question id ("" for no answer), n-best lists, no-answer
    scores (larger: more likely unanswerable) and the threshold above which a question counts as
    unanswered."""

    answers: dict[str, str]
    nbest: dict[str, list[dict]]
    na_scores: dict[str, float] | None = None
    na_threshold: float = 0.0

    def per_example(self) -> list:
        na = self.na_scores or {}
        return [(qid, a, self.nbest.get(qid), na.get(qid)) for qid, a in self.answers.items()]

    @classmethod
    def join(cls, parts: list) -> SpanAnswers:
        return cls(
            {q: a for q, a, _, _ in parts}, {q: n for q, _, n, _ in parts}, {q: s for q, _, _, s in parts}
        )


@dataclass(frozen=True, kw_only=True)
class ExtractiveQATask(Task):
    kind: ClassVar[str] = "extractive_qa"
    head: ClassVar[str] = "span"
    pipeline_tag: ClassVar[str] = "question-answering"
    zero_shot_padding_side: ClassVar[str] = "left"
    KIND_KEYS: ClassVar[tuple[str, ...]] = ("version", "versions", "prompts", "example")
    UNIT: ClassVar[str] = "questions"

    version: str = "1.1"  # the SQuAD version of the task's files; a file with unanswerable questions is v2.0
    versions: dict[str, str] = field(
        default_factory=dict
    )  # built-in tasks of other versions (squad -> squad_v2)
    prompts: dict[str, dict] = field(default_factory=lambda: dict(TEMPLATES))
    example: dict | None = None  # {question, context} shown in the model card

    @classmethod
    def parse_kind(cls, d: Definition, data: Definition) -> dict:
        version = d.get("version", (str, int, float), "1.1")
        version = version.lstrip("v") if isinstance(version, str) else f"{float(version):.1f}"
        if version not in VERSIONS:
            raise d.error("version", f"must be 1.1 or 2.0, got {d.mapping['version']!r}")
        versions = {}
        from tunelab.tasks.builtin import BUILTIN  # their definitions (get_task would parse them in turn)

        for v, name in d.get("versions", dict, {}).items():
            # read as `version:` is (2 and 2.0 mean "2.0")
            key = (
                f"{float(v):.1f}"
                if isinstance(v, int | float) and not isinstance(v, bool)
                else str(v).lstrip("v")
            )
            qa = [t for t, b in BUILTIN.items() if b["kind"] == cls.kind and b.get("version") == key]
            if key not in VERSIONS or name not in qa:
                expected = f"one of {', '.join(qa)}" if qa else "a built-in extractive-QA task"
                raise d.error(
                    f"versions.{v}",
                    f"maps a SQuAD version (1.1, 2.0) to the built-in task of that version ({expected}), "
                    f"got {name!r}",
                )
            versions[key] = name
        prompts = d.get("prompts", dict) or dict(TEMPLATES)
        for name, spec in prompts.items():
            try:
                QAPrompt.from_mapping(spec if isinstance(spec, dict) else {"text": spec})
            except UsageError as exc:
                raise d.error(f"prompts.{name}", str(exc)) from None
        example = d.get("example", dict)
        if example is not None and not (
            isinstance(example.get("question"), str) and isinstance(example.get("context"), str)
        ):
            raise d.error("example", "must be a mapping {question, context}")
        return {
            "version": version,
            "versions": versions,
            "prompts": prompts,
            "example": example,
        }

    def to_dict(self, *, with_data: bool = True) -> dict:
        out = super().to_dict(with_data=with_data)
        out["version"] = self.version
        return out

    # ---- versions ---------------------------------------------------------------------------------------

    @property
    def version_2(self) -> bool:
        return self.version == "2.0"

    def for_version(self, version: str) -> ExtractiveQATask:
        """This task scored as SQuAD `version`: the built-in task of that version when there is one (squad ->
        squad_v2, with its files), else this task with v2.0 scoring."""
        version = str(version).lstrip("v")
        if version not in VERSIONS:
            raise UsageError(f"unknown SQuAD version {version!r}: expected 1.1 or 2.0")
        if version == self.version:
            return self
        if version in self.versions:
            from tunelab.tasks.base import get_task

            return get_task(self.versions[version])
        return replace(self, version=version)

    def stage_definition(self) -> dict:
        """Also what a v1.1 task's dev file may be scored as (`for_data`): another built-in task (squad ->
        squad_v2, its prompts and zero-shot focus), which takes over the focus where the study's config holds
        this task's default (study.run's zero-shot stage)."""
        out = super().stage_definition()
        other = self.for_version("2.0")
        if other.name != self.name:
            out["scored_as"] = {
                "definition": other.to_dict(with_data=False),
                "default_focus": self.zeroshot_options().get("focus"),
            }
        return out

    def for_data(self, examples: list[SquadExample]) -> ExtractiveQATask:
        if not self.version_2 and any(ex.is_impossible for ex in examples):
            return self.for_version("2.0")
        return self

    def for_metrics(self, metrics: dict | None) -> ExtractiveQATask:
        return self.for_version("2.0") if metrics and "best_f1" in metrics else self

    def for_meta(self, meta: dict) -> ExtractiveQATask:
        return self.for_version(meta.get("version", self.version))

    # ---- prompts and data -------------------------------------------------------------------------------

    @property
    def default_prompt(self) -> str:
        prompt = self.zeroshot_defaults.get("prompt")
        return (
            prompt
            if isinstance(prompt, str)
            else (DEFAULT_TEMPLATE if DEFAULT_TEMPLATE in self.prompts else next(iter(self.prompts)))
        )

    def prompt(self, spec: str | dict | None = None) -> QAPrompt:
        return load_prompt(spec if spec is not None else self.default_prompt, self.prompts)

    def entry_defaults(self) -> dict:
        return {**super().entry_defaults(), "version": self.version}

    def __post_init__(self):
        spec = self.zeroshot_defaults.get("prompt")
        if isinstance(spec, str) and spec not in self.prompts:  # checked at load, as a classification task's
            raise UsageError(
                f"{self.source or 'built-in task ' + self.name}: zeroshot.prompt: {spec!r} is not one of the "
                f"task's prompts ({', '.join(self.prompts)})"
            )

    def check_prompts(self, zeroshot: str | dict | None, input_prompt: Any = None) -> None:
        self.prompt(zeroshot)

    def read(self, path: str | Path) -> list[SquadExample]:
        return read_squad(path)

    def summarize(self, examples: list[SquadExample]) -> dict:
        return summarize_squad(examples)

    def format_summary(self, summary: dict) -> str:
        return (
            f"{summary['file']}: SQuAD v{summary['version']}, {summary['articles']:,} articles, "
            f"{summary['paragraphs']:,} distinct paragraphs, {summary['questions']:,} questions, "
            f"{summary['unanswerable']:,} unanswerable"
        )

    def from_rows(self, rows: list[dict], where: str, columns: dict[str, str]) -> list[SquadExample]:
        return read_squad_rows(where, rows)

    def shot_key(self, ex: SquadExample) -> str:
        return ex.context  # a shot from an evaluated passage could give its answer away

    def check_eval(self, examples: list[SquadExample], data: str) -> None:
        pass  # every question has answers or is marked unanswerable (the reader checks)

    def training_examples(self, examples: list[SquadExample], data: str) -> list[SquadExample]:
        return examples

    def check_dev_labels(self, examples: list[SquadExample], data: str) -> None:
        pass

    # ---- zero-shot --------------------------------------------------------------------------------------

    def zero_shot(
        self, model, tokenizer, examples: list[SquadExample], options: Any, spread=None, shots: list = ()
    ) -> tuple[SpanAnswers, dict]:
        prompt = self.prompt(options.prompt)
        focus = getattr(options, "focus", 0)
        if focus:  # solved examples read as the questions do, each keeping its answer's sentences
            shots = [
                replace(s, context=focus_passage(s.context, s.question, focus, _answer_span(s)))
                for s in shots
            ]

        def answer(exs):  # per example: (generation, answer, no-answer probability)
            if focus:
                exs = [replace(ex, context=focus_passage(ex.context, ex.question, focus)) for ex in exs]
            raw, answers, na = generate_answers(
                model,
                tokenizer,
                exs,
                prompt,
                version_2=self.version_2,
                batch_size=options.batch_size,
                max_new_tokens=options.max_new_tokens,
                decoding=options.decoding,
                shots=shots,
                kv_cache=options.kv_cache,
                question_words=getattr(options, "question_words", "keep"),
            )
            return [(r, a, na[ex.id] if na else None) for r, a, ex in zip(raw, answers, exs, strict=True)]

        rows = spread(answer, examples) if spread else answer(examples)
        predictions = SpanAnswers(
            {ex.id: a for ex, (_, a, _) in zip(examples, rows, strict=True)},
            {ex.id: [{"text": a, "generated": r}] for ex, (r, a, _) in zip(examples, rows, strict=True)},
            {ex.id: p for ex, (_, _, p) in zip(examples, rows, strict=True)} if self.version_2 else None,
            na_threshold=0.5,
        )
        spec = options.prompt if options.prompt is not None else self.default_prompt
        extra = {
            "prompt": spec,
            "prompt_template": asdict(prompt),
            "max_new_tokens": options.max_new_tokens,
            "decoding": options.decoding,
            "kv_cache": options.kv_cache,
            "focus": focus,
            "question_words": getattr(options, "question_words", "keep"),
        }
        return predictions, extra

    # ---- fine-tuning ------------------------------------------------------------------------------------

    def prepare_fine_tuning(
        self, tokenizer, cfg, train: list[SquadExample], dev: list[SquadExample], options: dict
    ) -> FineTuning:
        stride = doc_stride(cfg.max_length)
        try:  # a question too long for max_length is the user's error, found before any loading
            f = prepare_train_features(train, tokenizer, cfg.max_length, stride)
            prepare_eval_features(dev, tokenizer, cfg.max_length, stride)
        except ValueError as exc:
            raise UsageError(
                f"max_length {cfg.max_length}: {exc} (--max-length, or finetune.max_length in a study; the "
                "overlap of the windows follows from it: a third of max_length, 128 tokens above 256)"
            ) from exc
        feats = [
            {"input_ids": x, "attention_mask": m, "start_positions": s, "end_positions": e}
            for x, m, s, e in zip(
                f["input_ids"], f["attention_mask"], f["start_positions"], f["end_positions"], strict=True
            )
        ]
        meta = {
            "version": self.version,
            "max_length": cfg.max_length,
            "stride": stride,
            "question_first": True,
        }
        stats = {
            "train_examples": len(train),
            "train_features": min(len(feats), cfg.max_train_samples or len(feats)),
            "max_length": cfg.max_length,
            "stride": stride,
        }
        return FineTuning(feats, meta, stats, loss_fn=span_loss)

    def predict(
        self,
        model,
        tokenizer,
        examples: list[SquadExample],
        meta: dict,
        batch_size: int | str = 64,
        progress: bool = True,
        bf16: bool = True,
    ) -> SpanAnswers:
        max_length = meta.get("max_length", 384)
        stride = meta.get("stride", doc_stride(max_length))
        try:
            preds, nbest, na = predict_spans(
                model,
                tokenizer,
                examples,
                max_length,
                stride,
                batch_size,
                version_2=self.version_2,
                progress=progress,
                bf16=bf16,
            )
        except ValueError as exc:  # a question too long for the windows the model was fine-tuned on
            if not str(exc).startswith("question of example"):
                raise
            msg = str(exc).removesuffix("; raise max_length")
            raise UsageError(
                f"{msg}: this model reads windows of {max_length} tokens (its fine-tuning's "
                "max_length); shorten the question"
            ) from None
        return SpanAnswers(preds, nbest, na, 0.0)

    join_predictions = staticmethod(SpanAnswers.join)

    def quick_scores(self, predictions: SpanAnswers, examples: list[SquadExample]) -> dict:
        references = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
        if self.version_2:
            m = squad_v2(predictions.answers, references, predictions.na_scores, 0.0)
        else:
            m = squad_v1(predictions.answers, references)
        return {"exact_match": m["exact_match"], "f1": m["f1"]}

    # ---- results ----------------------------------------------------------------------------------------

    def write_results(
        self,
        out: Path,
        *,
        model: str,
        mode: str,
        data: str,
        examples: list[SquadExample],
        predictions: SpanAnswers,
        extra: dict | None = None,
    ) -> dict:
        """metrics.json (official SQuAD numbers, F1 bootstrap interval), per_example.jsonl, predictions.json
        (id -> answer text, the official format), nbest_predictions.json and, for v2, na_probs.json."""
        v2, threshold = self.version_2, predictions.na_threshold
        na_probs = predictions.na_scores if v2 else None
        answers = predictions.answers
        references = {ex.id: [a["text"] for a in ex.answers] for ex in examples}
        if v2:
            scores = squad_v2(answers, references, na_probs=na_probs, na_threshold=threshold)
        else:
            scores = squad_v1(answers, references)
        scores.pop("n", None)
        per = per_example_scores(answers, references, version_2=v2, na_probs=na_probs, na_threshold=threshold)
        rows = [self._row(ex, references[ex.id], per[ex.id], answers, na_probs) for ex in examples]
        write_jsonl(out / "per_example.jsonl", rows)
        write_json(out / "predictions.json", {ex.id: answers.get(ex.id, "") for ex in examples})
        write_json(out / "nbest_predictions.json", predictions.nbest)
        if v2 and na_probs is not None:
            # strict JSON: a question with no possible span has an infinite no-answer score: the largest float
            write_json(
                out / "na_probs.json",
                {ex.id: min(float(na_probs[ex.id]), sys.float_info.max) for ex in examples},
            )
        metrics = {
            "task": self.name,
            "model": model,
            "mode": mode,
            "data": data,
            "n": len(examples),
            **scores,
            "f1_ci95": bootstrap_ci([100.0 * r["f1"] for r in rows]),
        }
        if v2:
            metrics["na_threshold"] = threshold
        metrics.update(extra or {})
        write_json(out / "metrics.json", metrics)
        return metrics

    def _row(self, ex: SquadExample, golds: list[str], scores: dict, answers: dict, na_probs) -> dict:
        row = {
            "id": ex.id,
            "em": scores["exact_match"],
            "f1": scores["f1"],
            "prediction": answers.get(ex.id, ""),
            "gold": golds,
            "question": ex.question,
            "question_type": question_type(ex.question),
            "answer_words": len(golds[0].split()) if golds else 0,
        }
        if self.version_2:
            row["is_impossible"] = ex.is_impossible
            row["na_prob"] = na_probs[ex.id] if na_probs else 0.0
        return row

    def summary_line(self, m: dict) -> str:
        ci = f" (95% CI {m['f1_ci95'][0]:.1f}-{m['f1_ci95'][1]:.1f})" if m.get("f1_ci95") else ""
        line = f"{self.title} {mode_name(m)}: EM {m['exact_match']:.2f}, F1 {m['f1']:.2f}{ci}, n={m['n']}"
        if "HasAns_f1" in m or "NoAns_f1" in m:  # v2.0; a subset may hold only one of the two kinds
            parts = [f"{name} F1 {m[f'{name}_f1']:.2f}" for name in ("HasAns", "NoAns") if f"{name}_f1" in m]
            parts.append(f"best F1 {m['best_f1']:.2f} at threshold {m['best_f1_thresh']:.3f}")
            line += f" ({', '.join(parts)})"
        return line

    def metric_rows(self, metrics: dict) -> list[tuple[str, str, float]]:
        keys = [("exact_match", "Exact match"), ("f1", "F1")]
        return [(k, name, round(float(metrics[k]), 2)) for k, name in keys if k in metrics]

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
        """[{"id", "question", "context"}] from --question/--context and/or a SQuAD JSON / JSONL file."""
        if texts or pairs:
            raise UsageError(
                f"this model answers questions ({self.name}): use --question and --context, or --file"
            )
        rows = []
        if questions or context is not None:
            if not questions or context is None:
                raise UsageError("--question and --context go together")
            if not context.strip():
                raise UsageError("--context is empty")
            for i, q in enumerate(questions, 1):
                if not q.strip():
                    raise UsageError("--question is empty")
                rows.append({"id": f"q{i}", "question": q, "context": context})
        if file:
            rows += self._file_inputs(file)
        if not rows:
            raise UsageError("nothing to answer: give --question and --context, or --file")
        return rows

    def _file_inputs(self, file: str) -> list[dict]:
        suffix = Path(file).suffix.lower()
        if file != "-" and suffix == ".json":
            questions = read_squad(file, require_answers=False)  # questions to answer: answers optional
            return [{"id": ex.id, "question": ex.question, "context": ex.context} for ex in questions]
        if file == "-" or suffix == ".jsonl":
            return _read_qa_jsonl(file)
        raise DataError(
            file,
            f"unknown file type {suffix or '(none)'!r}: expected SQuAD .json or .jsonl of "
            "{context, question}",
        )

    def predict_inputs(
        self, model, tokenizer, meta: dict, rows: list[dict], batch_size: int | str = 64
    ) -> list[dict]:
        """The best answer span per question. "score" is the span's start + end logit; "probability" is its
        share of a softmax over the n-best spans (and, for v2 models, the no-answer option); "" means no
        answer."""
        examples = [
            SquadExample(id=f"_{i}", title="", context=r["context"], question=r["question"], answers=[])
            for i, r in enumerate(rows)
        ]
        try:
            p = self.predict(model, tokenizer, examples, meta, batch_size, progress=False)
        except UsageError as exc:  # e.g. a question too long for the model's window
            msg = re.sub(r"example '_(\d+)'", lambda m: f"input {rows[int(m.group(1))]['id']!r}", str(exc))
            raise UsageError(msg) from None
        return [self._scored(r, ex.id, p) for r, ex in zip(rows, examples, strict=True)]

    def _scored(self, r: dict, qid: str, p: SpanAnswers) -> dict:
        cands = p.nbest.get(qid) or []
        na = (p.na_scores or {}).get(qid, np.inf)
        scores = np.array([c["score"] for c in cands], dtype=np.float64)
        row = {**r, "answer": p.answers.get(qid, "")}
        if self.version_2 and np.isfinite(na) and len(scores):
            scores = np.append(scores, float(na + scores[0]))  # na = null score - best span score
            row["na_score"] = float(na)
        if not len(cands):
            return {**row, "score": None, "probability": None}
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if row["answer"]:
            best = next(i for i, c in enumerate(cands) if c["text"] == row["answer"])
            row.update(
                score=float(cands[best]["score"]),
                probability=float(probs[best]),
                start=cands[best]["start"],
                end=cands[best]["end"],
            )
        else:
            row.update(
                score=float(scores[-1]) if self.version_2 else None,
                probability=float(probs[-1]) if self.version_2 else None,
            )
        return row

    def format_prediction(self, row: dict) -> str:
        answer = row["answer"] if row["answer"] else "(no answer)"
        p = "" if row.get("probability") is None else f"{row['probability']:.4f}"
        s = "" if row.get("score") is None else f"{row['score']:.2f}"
        return "\t".join([one_line(answer), p, s, one_line(row["question"])])


def _answer_span(ex: SquadExample) -> tuple[int, int] | None:
    """The characters of the first gold answer (the one a k-shot example is shown with), if any."""
    if not ex.answers:
        return None
    start = ex.answers[0]["answer_start"]
    return start, start + len(ex.answers[0]["text"])


def _read_qa_jsonl(path: str) -> list[dict]:
    """JSONL of {"context", "question"[, "id"]}; DataError names the line."""
    from tunelab.data.text import iter_jsonl_objects, read_utf8

    text = read_utf8(path)  # (- reads standard input)
    rows = []
    if (
        path == "-"
        and text.lstrip().startswith("{")
        and '"data"' in text[:200]
        and '"context"' not in text[:200]
    ):
        raise DataError(
            path,
            "standard input is read as JSONL of {context, question}; a SQuAD .json document "
            "is read from its file (--file FILE.json)",
        )
    for n, obj in iter_jsonl_objects(path, text):
        for key in ("context", "question"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                what = "missing" if key not in obj else "empty or not a string"
                raise DataError(path, f"{key!r} is {what}", line=n)
        rows.append(
            {"id": str(obj.get("id", f"line{n}")), "context": obj["context"], "question": obj["question"]}
        )
    if not rows:
        raise DataError(path, "no questions in the file")
    return rows
