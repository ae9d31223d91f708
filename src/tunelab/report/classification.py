"""The report's section and analysis for a classification task: accuracy with its interval, F1s, per-class
scores, the McNemar test on the paired examples, confusion matrices, the loss curve and the most confident
mistakes."""

from __future__ import annotations

from tunelab.report.document import Builder, H, P, Table
from tunelab.report.plots import confusion, score_bars
from tunelab.report.run_folder import TaskRun
from tunelab.report.sections import (
    changed_examples,
    data_note,
    loss_section,
    missing,
    moved,
    n_mismatch,
    no_mistakes_listed,
    small_sample,
    train_sentence,
)
from tunelab.report.stats import ALPHA, TOP_MISTAKES, Test, ci, n_, pair_rows, pct, plural, pval

TEST_NAME = "McNemar"
KEY, SAME = "line", ("text", "text_pair")  # a row's line, and what makes it the same example


def _correct(r: dict) -> float | None:
    return None if r.get("gold") is None else float(r["prediction"] == r["gold"])


def tests(t: TaskRun) -> list[Test]:
    from tunelab.metrics import mcnemar

    pr = pair_rows(t.zs_rows, t.ft_rows, KEY, _correct, SAME)
    if pr is None:
        return []
    mc = mcnemar(pr.a, pr.b)
    unit = t.task.unit_singular
    return [
        Test(
            "McNemar exact test",
            "accuracy",
            pr.n,
            100 * mc["difference"],
            [100 * x for x in mc["ci95"]],
            mc["p_value"],
            f"{plural(mc['only_b_correct'], unit)} right only after fine-tuning, "
            f"{plural(mc['only_a_correct'], unit)} right only {t.prompting}",
            a=100 * float(pr.a.mean()),
            b=100 * float(pr.b.mean()),
        )
    ]


def _diff_points(a, b) -> str:
    return "" if a is None or b is None else f"{100 * (b - a):+.1f}"


def _metric_rows(t: TaskRun) -> list[list[str]]:
    zs, ft = t.zs or {}, t.ft or {}

    def row(label, key):
        return [
            label,
            pct(zs.get(key)) if zs else "not run yet",
            pct(ft.get(key)) if ft else "not run yet",
            _diff_points(zs.get(key), ft.get(key)),
        ]

    rows = [
        row("Accuracy (%)", "accuracy"),
        [
            "  95% interval (exact)",
            ci(zs.get("accuracy_ci95"), 100),
            ci(ft.get("accuracy_ci95"), 100),
            "",
        ],
    ]
    if "uncalibrated_accuracy" in zs:
        rows.append(["  accuracy before calibration (%)", pct(zs["uncalibrated_accuracy"]), "", ""])
    positive = t.task.labels[t.task.positive] if t.task.positive is not None else None
    if positive is not None:
        rows.append(row(f"F1, {positive} class (%)", "f1"))
    rows.append(row("Macro F1 (%)", "macro_f1"))
    if positive is not None:
        rows += [
            row("Precision (%)", "precision"),
            row("Recall (%)", "recall"),
            row(f"Predicted {positive} (%)", "predicted_positive_rate"),
        ]
    else:
        for label in t.task.labels:
            rows.append([f"F1, class {label} (%)", *_class_f1(zs, ft, label)])
    rows.append(
        [
            f"{t.task.unit.capitalize()} evaluated",
            n_(zs["n"]) if "n" in zs else "–",
            n_(ft["n"]) if "n" in ft else "–",
            "",
        ]
    )
    return rows


def _class_f1(zs: dict, ft: dict, label: str) -> list[str]:
    """A class's F1 for each model; "–" where the evaluated examples hold none of it (F1 undefined)."""
    a, b = (((m.get("per_class") or {}).get(label) or {}) for m in (zs, ft))
    a, b = (c.get("f1") if c.get("support", 1) else None for c in (a, b))
    return [pct(a), pct(b), _diff_points(a, b)]


def section(b: Builder, t: TaskRun) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    b.add(H(3, f"{t.prompting.capitalize()} vs fine-tuned"))
    if not zs and not ft:
        b.add(P(f"Neither the {t.prompting} nor the fine-tuning stage has finished for this task.", "note"))
        return
    b.add(Table(["metric", t.prompting, "fine-tuned", "difference (points)"], _metric_rows(t)))
    found = tests(t)
    for test in found:
        b.add(
            P(
                f"{test.name} on the {n_(test.n)} {t.task.unit} both models labelled: accuracy difference "
                f"{test.diff:+.1f} points (95% exact interval {ci(test.diff_ci)}), "
                f"{pval(test.p)}; {test.detail}."
            )
        )
        b.summary_rows.append(
            [
                t.title,
                "accuracy (%)",
                t.prompting_label,
                f"{test.a:.1f}",
                f"{test.b:.1f}",
                f"{test.diff:+.1f} {ci(test.diff_ci)}",
                pval(test.p),
                n_(test.n),
            ]
        )
    warning = changed_examples(t, KEY, SAME, found[0].n if found else None)
    if warning:
        b.add(P(warning, "note"))
    if not found:
        b.summary_rows.append(
            [
                t.title,
                "accuracy (%)",
                t.prompting_label,
                pct(zs.get("accuracy")) if zs else "not run",
                pct(ft.get("accuracy")) if ft else "not run",
                "",
                "no paired test",
                "",
            ]
        )
    _plots(b, t)
    loss_section(b, t)
    mistakes(b, t)


def _plots(b: Builder, t: TaskRun) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    if zs.get("accuracy") is not None or ft.get("accuracy") is not None:
        keys = [("accuracy", "accuracy")] + ([("F1", "f1")] if t.task.positive is not None else [])
        keys.append(("macro F1", "macro_f1"))

        def err(m):
            return [[100 * v for v in m["accuracy_ci95"]] if "accuracy_ci95" in m else None] + [None] * (
                len(keys) - 1
            )

        path = score_bars(
            [k for k, _ in keys],
            [100 * zs[k] if k in zs else None for _, k in keys],
            [100 * ft[k] if k in ft else None for _, k in keys],
            err(zs),
            err(ft),
            b.fig(f"{t.name}-scores.png"),
            f"{t.title}: {t.prompting} vs fine-tuned (error bars: 95% CI)",
            "%",
            t.prompting,
        )
        b.img(path, f"{t.title} scores, {t.prompting} vs fine-tuned")
    for m, label in ((zs, t.prompting), (ft, "fine-tuned")):
        if m.get("confusion_matrix"):
            path = confusion(
                m["confusion_matrix"],
                b.fig(f"{t.name}-confusion-{label}.png"),
                f"{t.title} {label} (n={m.get('n')})",
                labels=t.task.labels,
            )
            b.img(path, f"{t.title} confusion matrix, {label}")


def mistakes(b: Builder, t: TaskRun) -> None:
    labels = t.task.labels
    b.add(H(3, "Most confident mistakes"))
    for rows_, label in ((t.zs_rows, t.prompting), (t.ft_rows, "fine-tuned")):
        if not rows_:
            continue
        wrong = [r for r in rows_ if r.get("gold") is not None and r["prediction"] != r["gold"]]
        if not wrong:
            b.add(P(f"{label}: no mistakes on its {plural(len(rows_), t.task.unit_singular)}."))
            continue
        wrong.sort(key=lambda r: -r["scores"][labels[r["prediction"]]])
        b.add(
            P(
                f"{label}: {len(wrong)} mistakes of {len(rows_)} {t.task.unit}; the "
                f"{min(TOP_MISTAKES, len(wrong))} the model was surest of:"
            )
        )
        pairs = t.task.pairs
        b.add(
            Table(
                [
                    "line",
                    "text" + (" (and its pair)" if pairs else ""),
                    "gold",
                    "predicted",
                    "confidence",
                ],
                [
                    [
                        str(r["line"]),
                        r["text"].strip() + (f" / {r['text_pair']}" if pairs else ""),
                        labels[r["gold"]],
                        labels[r["prediction"]],
                        f"{r['scores'][labels[r['prediction']]]:.3f}",
                    ]
                    for r in wrong[:TOP_MISTAKES]
                ],
                "rlllr",
            )
        )
    unlisted = no_mistakes_listed(t)
    if unlisted:
        b.add(P(unlisted, "note"))


def _lean(t: TaskRun) -> list[str]:
    """Predictions that lean towards a class: predicted 10 points more (or, binary, less) often than it is
    gold."""
    out = []
    labels, positive = t.task.labels, t.task.positive
    for m, label in ((t.zs or {}, t.prompting), (t.ft or {}, "fine-tuned")):
        cm = m.get("confusion_matrix")
        total = sum(map(sum, cm)) if cm else 0
        if not total:
            continue
        gold = [sum(row) / total for row in cm]
        pred = [sum(row[j] for row in cm) / total for j in range(len(cm))]
        if positive is not None:
            k = positive
            pred[k] = m.get("predicted_positive_rate", pred[k])
            if abs(pred[k] - gold[k]) >= 0.10:
                lean = labels[k] if pred[k] > gold[k] else labels[1 - k]
                out.append(
                    f"{t.title} {label}: predictions lean {lean} ({pct(pred[k])}% predicted {labels[k]}, "
                    f"{pct(gold[k])}% of the gold labels are {labels[k]})."
                )
            continue
        k = max(range(len(cm)), key=lambda j: pred[j] - gold[j])
        if pred[k] - gold[k] >= 0.10:
            out.append(
                f"{t.title} {label}: {labels[k]} is predicted for {pct(pred[k])}% of the {t.task.unit}, "
                f"against {pct(gold[k])}% of the gold labels."
            )
    return out


def analysis(t: TaskRun) -> list[str]:
    zs, ft = t.zs or {}, t.ft or {}
    out = []
    found = tests(t)
    if found:
        x = found[0]
        change = moved(x.diff, "accuracy", f"{x.a:.1f}%", f"{x.b:.1f}%")
        s = (
            f"{t.title}: fine-tuning {change} ({x.diff:+.1f} points, 95% interval {ci(x.diff_ci)}) "
            f"on {x.n} dev {t.task.unit}."
        )
        if x.significant:
            s += f" The difference is statistically significant (McNemar, {pval(x.p)}): {x.detail}."
        else:
            s += (
                f" The difference is not statistically significant (McNemar, {pval(x.p)} ≥ {ALPHA}); this "
                "run does not show that either model is better."
            )
        out.append(s)
        out += [m for m in [n_mismatch(t, x.n, t.task.unit)] if m]
        small = small_sample(x.n, x.diff_ci[1] - x.diff_ci[0], t.task.unit)
        if small:
            out.append(f"{t.title}: " + small[0].lower() + small[1:])
    elif zs or ft:
        out.append(missing(t, t.task.unit))
    out += [w for w in [changed_examples(t, KEY, SAME, found[0].n if found else None)] if w]
    if "uncalibrated_accuracy" in zs and "accuracy" in zs:
        d = 100 * (zs["accuracy"] - zs["uncalibrated_accuracy"])
        method = (zs.get("calibration") or {}).get("method", "calibration")
        if abs(d) >= 0.05:
            out.append(
                f"{t.title} {t.prompting}: {method} calibration of the label-word scores moved accuracy from "
                f"{pct(zs['uncalibrated_accuracy'])}% to {pct(zs['accuracy'])}% ({d:+.1f} points)."
            )
    out += _lean(t)
    train = train_sentence(t)
    if train:
        input_prompt = (t.ft_meta or {}).get("input_prompt")
        plain = " It read the texts detokenized." if (t.ft_meta or {}).get("detokenize") else ""
        if input_prompt and zs.get("prompt") not in (None, input_prompt):
            train = train[:-1] + (
                "; its classification head started from the label words of its input prompt, which is "
                "not the zero-shot prompt, so training started from that prompt's zero-shot classifier."
                + plain
            )
        elif not input_prompt:
            train += plain
        else:
            train = train[:-1] + (
                "; its classification head started from the zero-shot prompt's label "
                "words, so training started from the zero-shot classifier"
                + _texts_read(bool(zs.get("detokenize")), bool((t.ft_meta or {}).get("detokenize")))
            )
        out.append(train)
    if zs or ft:
        out.append(data_note(t))
    return out


def _texts_read(zero_shot: bool, fine_tuned: bool) -> str:
    """The end of the sentence on where training started: how each side read the texts (`detokenize`)."""
    if zero_shot and fine_tuned:
        return " (both read the texts detokenized)."
    if zero_shot:
        return " (on the texts as written; zero-shot read them detokenized)."
    if fine_tuned:
        return " (on the texts detokenized; zero-shot read them as written)."
    return "."
