"""The report's fine-tuning variants section, for a task with `variants` (other fine-tuning methods, e.g.
LoRA and head-only, beside the main fine-tuning): one row per fine-tuned model with its scores and their 95%
intervals, the parameters it trained, its training time and its paired test against the prompted model; a
summary row per variant; and the parameters of each model's saved folder.

The variants' folders: RUN/<task>/finetune-<variant>/; their counts: params/<task>.json `variants`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tunelab.report.document import Builder, H, Table
from tunelab.report.run_folder import TaskRun, VariantRun
from tunelab.report.stats import Test, ci, n_, num, pct, pval

# per kind: the summary table's metric (its label, the metrics key, how it is shown) and the paired test's
SUMMARY = {
    "classification": ("accuracy (%)", "accuracy", pct, "accuracy"),
    "extractive_qa": ("F1", "f1", num, "F1"),
}


def _scores(t: TaskRun, m: dict | None, rows: list[dict] | None) -> list[str]:
    """The headline scores of one model, each with its 95% interval ("not run yet" when it has none)."""
    if not m:
        return ["not run yet"] * len(_score_labels(t))
    if t.kind == "classification":
        return [f"{pct(m.get('accuracy'))} {ci(m.get('accuracy_ci95'), 100)}"]
    from tunelab.report.extractive_qa import em_interval, f1_interval

    return [
        f"{num(m.get('exact_match'))} {ci(em_interval(rows))}",
        f"{num(m.get('f1'))} {ci(f1_interval(m))}",
    ]


def _score_labels(t: TaskRun) -> list[str]:
    if t.kind == "classification":
        return ["accuracy % (95% CI)"]
    return ["exact match % (95% CI)", "F1 (95% CI)"]


def _test(t: TaskRun, m: dict | None, rows, tests: Callable[[TaskRun], list[Test]]) -> Test | None:
    if not m or not t.zs:
        return None
    found = tests(replace(t, ft=m, ft_rows=rows))
    want = SUMMARY[t.kind][3]
    return next((x for x in found if x.metric == want), next(iter(found), None))


def _seconds(m: dict | None) -> str:
    s = (m or {}).get("train_seconds")
    return "–" if s is None else f"{s:.1f}"


def _trained(task_model: dict | None) -> str:
    if not task_model:
        return "–"
    share = 100 * task_model["trainable"] / max(task_model["total"], 1)
    return f"{n_(task_model['trainable'])} ({share:.2f}%)"


def _main_method(t: TaskRun) -> str:
    return (t.ft or {}).get("method") or ((t.params or {}).get("task_model") or {}).get("method") or "?"


def _models(t: TaskRun) -> list[tuple[str, str, dict | None, list | None, dict | None]]:
    """(label, method, metrics, rows, params {task_model, finetuned}) of every fine-tuned model."""
    p = t.params or {}
    main = {"task_model": p.get("task_model"), "finetuned": p.get("finetuned")}
    out = [("fine-tuned (main)", _main_method(t), t.ft, t.ft_rows, main)]
    for v in t.variants:
        out.append((f"variant {v.name}", v.method or "?", v.metrics, v.rows, v.params))
    return out


def section(b: Builder, t: TaskRun, tests: Callable[[TaskRun], list[Test]]) -> list[str]:
    """The variants section (nothing without variants); returns its analysis sentences."""
    if not t.variants:
        return []
    b.add(H(3, f"Fine-tuning methods ({len(t.variants) + 1} fine-tuned models)"))
    labels = _score_labels(t)
    rows = [[t.prompting, "prompting", *_scores(t, t.zs, t.zs_rows), "0", "–", "", ""]]
    for label, method, m, ex_rows, params in _models(t):
        test = _test(t, m, ex_rows, tests)
        rows.append(
            [
                label,
                method,
                *_scores(t, m, ex_rows),
                _trained((params or {}).get("task_model")),
                _seconds(m),
                f"{test.diff:+.1f} {ci(test.diff_ci)}" if test else "–",
                f"{test.name}: {pval(test.p)}" if test else "–",
            ]
        )
    b.add(
        Table(
            [
                "model",
                "method",
                *labels,
                "trained parameters (share)",
                "train time (s)",
                f"difference vs {t.prompting} (95% CI)",
                "paired test",
            ],
            rows,
            "ll" + "r" * (len(labels) + 4),
            caption=f"Every model is evaluated on the same dev {t.task.unit}; each paired test compares it "
            f"with the {t.prompting} model on the examples both were evaluated on. Variants are trained "
            "with the first seed.",
        )
    )
    _summary_rows(b, t, tests)
    _param_table(b, t)
    return [s for v in t.variants if (s := _sentence(t, v, tests))]


def _summary_rows(b: Builder, t: TaskRun, tests) -> None:
    label, key, shown, _ = SUMMARY[t.kind]
    zs = t.zs or {}
    for v in t.variants:
        m = v.metrics or {}
        test = _test(t, v.metrics, v.rows, tests)
        b.summary_rows.append(
            [
                f"{t.title}, variant {v.name} ({v.method or '?'})",
                label,
                t.prompting_label,
                shown(zs.get(key)) if zs else "not run",
                shown(m.get(key)) if m else "not run",
                f"{test.diff:+.1f} {ci(test.diff_ci)}" if test else "",
                pval(test.p) if test else "no paired test",
                n_(test.n) if test else "",
            ]
        )


def _param_table(b: Builder, t: TaskRun) -> None:
    rows = []
    for label, method, _, _, params in _models(t):
        tm, fin = (params or {}).get("task_model"), (params or {}).get("finetuned")
        adapter = (fin or {}).get("lora_adapter")
        disk = (fin or {}).get("safetensors_numel")
        rows.append(
            [
                label,
                method,
                _trained(tm),
                n_(fin["total"]) if fin else "not counted yet",
                n_(adapter) if adapter is not None else "",
                n_(sum(disk.values())) if disk else "–",
            ]
        )
    b.add(
        Table(
            ["model", "method", "trained (share)", "loaded from its folder", "LoRA adapter", "saved on disk"],
            rows,
            "llrrrr",
            caption="Trained: counted from the config for the model's method; loaded: each saved folder "
            "loaded and counted (a LoRA adapter merged, as used for inference); saved: the tensors in its "
            "safetensors files.",
        )
    )


def _sentence(t: TaskRun, v: VariantRun, tests) -> str | None:
    if not v.metrics:
        return f"{t.title}: the fine-tuning variant {v.name} has not finished yet."
    _, key, shown, metric = SUMMARY[t.kind]
    unit = "%" if t.kind == "classification" else ""
    value = shown(v.metrics.get(key)) + unit
    s = f"{t.title}: variant {v.name} ({v.method} fine-tuning) reached {metric} {value}"
    test = _test(t, v.metrics, v.rows, tests)
    if test:
        verdict = "significant" if test.significant else "not significant"
        s += (
            f", {test.diff:+.1f} points against {t.prompting} (95% interval {ci(test.diff_ci)}; {test.name}, "
            f"{pval(test.p)}: {verdict})"
        )
    if t.ft and key in t.ft:
        s += f"; the main fine-tuned model ({_main_method(t)}) reached {shown(t.ft[key])}{unit}"
    tm = (v.params or {}).get("task_model")
    if tm:
        s += f"; it trained {_trained(tm)} parameters"
    if v.metrics.get("train_seconds") is not None:
        s += f" in {v.metrics['train_seconds']:.1f} s"
    return s + "."
