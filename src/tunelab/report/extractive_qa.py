"""The report's section and analysis for an extractive-QA task: EM and F1 with intervals, the v2 rows, paired
bootstrap tests, F1 by answer length and by question word, the loss curve and the most confident mistakes."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from tunelab.report.document import Builder, H, P, Table
from tunelab.report.plots import group_bars, score_bars
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
from tunelab.report.stats import ALPHA, TOP_MISTAKES, Paired, Test, ci, n_, num, pair_rows, pval
from tunelab.tasks.extractive_qa.metrics import question_type

TEST_NAME = "paired bootstrap"
KEY, SAME = "id", ("question",)  # a row's question id, and what makes it the same question


def _paired(t: TaskRun, key: str) -> Paired | None:
    return pair_rows(t.zs_rows, t.ft_rows, KEY, lambda r: float(r[key]) if key in r else None, SAME)


def tests(t: TaskRun) -> list[Test]:
    from tunelab.metrics import paired_bootstrap

    out = []
    for metric, key in (("F1", "f1"), ("EM", "em")):
        pr = _paired(t, key)
        if pr is None or pr.n < 2:  # the bootstrap of one question has no spread: no interval, no p-value
            continue
        boot = paired_bootstrap(100 * pr.a, 100 * pr.b)
        out.append(
            Test(
                "paired bootstrap (2,000 resamples)",
                metric,
                pr.n,
                boot["difference"],
                boot["ci95"],
                boot["p_value"],
                a=100 * float(pr.a.mean()),
                b=100 * float(pr.b.mean()),
            )
        )
    return out


def em_interval(rows: list[dict] | None) -> list[float] | None:
    """The exact (Clopper-Pearson) 95% interval of exact match, a proportion: a bootstrap collapses to a
    point when every answer is right or every one wrong. None without per-question rows."""
    from tunelab.metrics import proportion_ci

    if not rows:
        return None
    return [100.0 * x for x in proportion_ci(sum(bool(r["em"]) for r in rows), len(rows))]


def f1_interval(m: dict) -> list[float] | None:
    """The metrics' F1 interval; None where it comes from fewer than two questions."""
    return None if m.get("n", 2) < 2 else m.get("f1_ci95")


def _metric_rows(t: TaskRun, em_ci: dict) -> list[list[str]]:
    zs, ft = t.zs or {}, t.ft or {}

    def val(m, key):
        return num(m.get(key)) if m else "not run yet"

    def diff(key):
        return f"{ft[key] - zs[key]:+.1f}" if key in zs and key in ft else ""

    rows = [
        ["Exact match", val(zs, "exact_match"), val(ft, "exact_match"), diff("exact_match")],
        ["  95% interval (exact)", ci(em_ci.get("zs")), ci(em_ci.get("ft")), ""],
        ["F1", val(zs, "f1"), val(ft, "f1"), diff("f1")],
        ["  95% interval (bootstrap)", ci(f1_interval(zs)), ci(f1_interval(ft)), ""],
    ]
    for key, label in (
        ("HasAns_exact", "Exact match, answerable"),
        ("HasAns_f1", "F1, answerable"),
        ("NoAns_f1", "F1 (= accuracy), unanswerable"),
        ("best_f1", "F1 at the best no-answer threshold"),
    ):
        if key in zs or key in ft:
            rows.append([label, num(zs.get(key)), num(ft.get(key)), diff(key)])
    rows.append(
        [
            f"{t.task.unit.capitalize()} evaluated",
            n_(zs["n"]) if "n" in zs else "–",
            n_(ft["n"]) if "n" in ft else "–",
            "",
        ]
    )
    return rows


def section(b: Builder, t: TaskRun) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    b.add(H(3, f"{t.prompting.capitalize()} vs fine-tuned"))
    if not zs and not ft:
        b.add(P(f"Neither the {t.prompting} nor the fine-tuning stage has finished for this task.", "note"))
        return
    em_ci = {label: em_interval(rows_) for rows_, label in ((t.zs_rows, "zs"), (t.ft_rows, "ft"))}
    b.add(Table(["metric (%)", t.prompting, "fine-tuned", "difference (points)"], _metric_rows(t, em_ci)))
    found = tests(t)
    for test in found:
        b.add(
            P(
                f"{test.metric}: {test.name} on the {n_(test.n)} {t.task.unit} both models answered: "
                f"difference {test.diff:+.1f} points (95% interval {ci(test.diff_ci)}), {pval(test.p)}."
            )
        )
        if test.metric == "F1":
            b.summary_rows.append(
                [
                    t.title,
                    "F1",
                    t.prompting_label,
                    num(test.a),
                    num(test.b),
                    f"{test.diff:+.1f} {ci(test.diff_ci)}",
                    pval(test.p),
                    n_(test.n),
                ]
            )
    if not any(x.metric == "F1" for x in found):
        b.summary_rows.append(
            [
                t.title,
                "F1",
                t.prompting_label,
                num(zs.get("f1")) if zs else "not run",
                num(ft.get("f1")) if ft else "not run",
                "",
                "no paired test",
                "",
            ]
        )
    f1 = next((x for x in found if x.metric == "F1"), None)
    warning = changed_examples(t, KEY, SAME, f1.n if f1 else None)
    if warning:
        b.add(P(warning, "note"))
    b.add(P(data_note(t), "note"))
    _plots(b, t, em_ci)
    loss_section(b, t)
    mistakes(b, t)


def _plots(b: Builder, t: TaskRun, em_ci: dict) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    path = score_bars(
        ["exact match", "F1"],
        [zs.get("exact_match"), zs.get("f1")],
        [ft.get("exact_match"), ft.get("f1")],
        [em_ci.get("zs"), f1_interval(zs)],
        [em_ci.get("ft"), f1_interval(ft)],
        b.fig(f"{t.name}-scores.png"),
        f"{t.title}: {t.prompting} vs fine-tuned (error bars: 95% CI)",
        "%",
        t.prompting,
    )
    b.img(path, f"{t.title} scores, {t.prompting} vs fine-tuned")
    if t.zs_rows and t.ft_rows:
        for key, xlabel, fname in (
            ("length", "gold answer length (words)", "f1-by-length"),
            ("qtype", "question word", "f1-by-question"),
        ):
            groups, counts, a, c = breakdown(t, key)
            if groups:
                path = group_bars(
                    groups,
                    counts,
                    a,
                    c,
                    b.fig(f"{t.name}-{fname}.png"),
                    f"{t.title}: F1 by {xlabel}",
                    xlabel,
                    t.prompting,
                )
                b.img(path, f"{t.title} F1 by {xlabel}")


def _length_bucket(r: dict) -> str:
    words = r.get("answer_words")
    if words is None:
        words = len(r["gold"][0].split()) if r.get("gold") else 0
    if words == 0:
        return "no answer"
    return {1: "1", 2: "2", 3: "3"}.get(words, "4-5" if words <= 5 else "6+")


def breakdown(t: TaskRun, key: str) -> tuple[list[str], list[int], list[float], list[float]]:
    """F1 per group (answer length bucket or question word) on the paired questions."""
    ft = {r["id"]: r for r in t.ft_rows}
    acc: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])
    for r in t.zs_rows:
        if r["id"] not in ft or any(r.get(f) != ft[r["id"]].get(f) for f in SAME):
            continue
        g = (
            _length_bucket(r)
            if key == "length"
            else (r.get("question_type") or question_type(r.get("question", "")))
        )
        acc[g][0] += 1
        acc[g][1] += 100 * r["f1"]
        acc[g][2] += 100 * ft[r["id"]]["f1"]
    if key == "length":
        order = [g for g in ("no answer", "1", "2", "3", "4-5", "6+") if g in acc]
    else:
        order = sorted(acc, key=lambda g: (-acc[g][0], g))
    return (
        order,
        [acc[g][0] for g in order],
        [acc[g][1] / acc[g][0] for g in order],
        [acc[g][2] / acc[g][0] for g in order],
    )


def _span_confidence(nbest: list[dict] | None) -> float | None:
    scores = [e["score"] for e in (nbest or []) if isinstance(e.get("score"), (int, float))]
    if not scores or not math.isfinite(scores[0]):
        return None
    s = np.asarray(scores, float)
    s = np.exp(s - s.max())
    return float(s[0] / s.sum())


def mistakes(b: Builder, t: TaskRun) -> None:
    b.add(H(3, "Most confident mistakes"))
    for rows_, label in ((t.zs_rows, t.prompting), (t.ft_rows, "fine-tuned")):
        if not rows_:
            continue
        wrong = [r for r in rows_ if not r["em"]]
        if not wrong:
            b.add(P(f"{label}: no mistakes: {_all_exact(len(rows_))}."))
            continue
        conf = {}
        if label == "fine-tuned" and t.ft_nbest:
            conf = {r["id"]: _span_confidence(t.ft_nbest.get(r["id"])) for r in wrong}
        if any(v is not None for v in conf.values()):
            wrong.sort(key=lambda r: -(conf.get(r["id"]) or 0.0))
            how = (
                "the ones the model was surest of (confidence: softmax of the span scores over its n-best "
                "list)"
            )
        else:
            wrong.sort(key=lambda r: r["f1"])
            how = (
                "greedy generation keeps no confidence score, so these are the lowest-F1 ones in file order"
                if label == t.prompting
                else "lowest F1 first"
            )
        b.add(
            P(
                f"{label}: {len(wrong)} of {len(rows_)} answers are not an exact match; "
                f"{min(TOP_MISTAKES, len(wrong))} shown, {how}:"
            )
        )
        b.add(
            Table(
                ["question", "gold answer(s)", "prediction", "F1", "confidence"],
                [
                    [
                        r.get("question", r["id"]),
                        " / ".join(dict.fromkeys(r.get("gold") or ["(no answer)"])),
                        r["prediction"] or "(no answer)",
                        f"{100 * r['f1']:.0f}",
                        "–" if conf.get(r["id"]) is None else f"{conf[r['id']]:.3f}",
                    ]
                    for r in wrong[:TOP_MISTAKES]
                ],
                "lllrr",
            )
        )
    unlisted = no_mistakes_listed(t)
    if unlisted:
        b.add(P(unlisted, "note"))


def _all_exact(n: int) -> str:
    return "its one answer is an exact match" if n == 1 else f"all {n} of its answers are exact matches"


def _f1_sentences(t: TaskRun) -> list[str]:
    """The paired F1 comparison, or what is missing for one."""
    found = {x.metric: x for x in tests(t)}
    warning = [w for w in [changed_examples(t, KEY, SAME, found["F1"].n if "F1" in found else None)] if w]
    if "F1" not in found:
        pr = _paired(t, "f1")
        return [missing(t, t.task.unit, pr.n if pr else 0), *warning]
    x = found["F1"]
    s = (
        f"{t.title}: fine-tuning {moved(x.diff, 'F1', num(x.a), num(x.b))} "
        f"({x.diff:+.1f} points, 95% interval {ci(x.diff_ci)}) on {x.n} dev {t.task.unit}"
    )
    if "EM" in found:
        s += f", and exact match from {num(found['EM'].a)} to {num(found['EM'].b)}"
    s += "."
    if x.significant:
        s += f" The F1 difference is statistically significant (paired bootstrap, {pval(x.p)})."
    else:
        s += (
            f" The F1 difference is not statistically significant (paired bootstrap, {pval(x.p)} ≥ "
            f"{ALPHA}); this run does not show that either model is better."
        )
    out = [s, *[m for m in [n_mismatch(t, x.n, t.task.unit)] if m], *warning]
    small = small_sample(x.n, x.diff_ci[1] - x.diff_ci[0], t.task.unit)
    if small:
        out.append(f"{t.title}: " + small[0].lower() + small[1:])
    return out


def _answer_sentences(t: TaskRun) -> list[str]:
    """How long the answers are against the gold ones, and how many are empty."""
    out = []
    for rows_, label in ((t.zs_rows, t.prompting), (t.ft_rows, "fine-tuned")):
        answered = [r for r in rows_ or [] if r.get("prediction") and r.get("gold")]
        if len(answered) >= 5:
            pred_len = float(np.mean([len(r["prediction"].split()) for r in answered]))
            gold_len = float(np.mean([min(len(g.split()) for g in r["gold"]) for r in answered]))
            lengths = (
                f"{t.title} {label}: answers average {pred_len:.1f} words against {gold_len:.1f} "
                "for the shortest gold answer"
            )
            if pred_len > 1.5 * gold_len:
                out.append(lengths + ", so extra words cost exact match even when the answer is inside.")
            elif pred_len < gold_len / 1.5:
                out.append(lengths + ": they tend to be cut short.")
        empty = [r for r in rows_ or [] if not r.get("prediction")]
        if rows_ and empty and not t.task.version_2:
            out.append(f"{t.title} {label}: {len(empty)} of {len(rows_)} answers are empty (score 0).")
    return out


def _question_word_sentence(t: TaskRun) -> list[str]:
    if not (t.zs_rows and t.ft_rows):
        return []
    groups, counts, a, c = breakdown(t, "qtype")
    big = [(g, n, y - x) for g, n, x, y in zip(groups, counts, a, c, strict=True) if n >= 10]
    if len(big) < 2:
        return []
    hi = max(big, key=lambda z: z[2])
    lo = min(big, key=lambda z: z[2])
    if round(hi[2], 1) == round(lo[2], 1):
        return [
            f"{t.title}: the F1 change is {hi[2]:+.1f} points for every question word with at least 10 "
            "questions."
        ]
    return [
        f"{t.title}: among question words with at least 10 questions, the F1 change is largest for "
        f"'{hi[0]}' ({hi[2]:+.1f} points, n={hi[1]}) and smallest for '{lo[0]}' ({lo[2]:+.1f}, n={lo[1]}); "
        "with groups this small these are descriptive, not tested."
    ]


def analysis(t: TaskRun) -> list[str]:
    zs, ft = t.zs or {}, t.ft or {}
    if not zs and not ft:
        return []
    out = _f1_sentences(t) + _answer_sentences(t) + _question_word_sentence(t)
    if t.task.version_2 and "NoAns_f1" in zs and "NoAns_f1" in ft:
        out.append(
            f"{t.title}: on unanswerable questions the {t.prompting} model abstained correctly on "
            f"{num(zs['NoAns_f1'])}% and the fine-tuned model on {num(ft['NoAns_f1'])}%."
        )
    train = train_sentence(t)
    if train:
        out.append(
            train + " Its span head was new (randomly initialised) and learnt only from these examples."
        )
    out.append(data_note(t))
    return out
