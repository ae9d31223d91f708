"""Classification metrics (scikit-learn), bootstrap intervals and paired significance tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mode_name(metrics: dict) -> str:
    """How a result's model was run, as reports say it: "zero-shot", "K-shot" (K solved examples in each
    prompt, never called zero-shot) or "fine-tuned"."""
    if metrics.get("mode") == "finetuned":
        return "fine-tuned"
    shots = int(metrics.get("shots") or 0)
    return f"{shots}-shot" if shots else "zero-shot"


def classification_metrics(
    gold,
    pred,
    *,
    labels: Sequence[str] = ("0", "1"),
    positive: int | None = 1,
) -> dict:
    """Accuracy with its exact 95% interval (`proportion_ci`), macro F1, per-class precision/recall/F1 and the
    confusion matrix (rows gold, columns predicted), as fractions in [0, 1]. With two labels, also the
    precision, recall and F1 of the `positive` class and how often it is predicted.

    Macro F1 averages over the classes the gold labels hold, so that every model scored on the same examples
    is averaged over the same classes (scikit-learn's default adds each model's own predicted classes)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    gold = np.asarray(gold)
    pred = np.asarray(pred)
    correct = (gold == pred).astype(float)
    classes = list(range(len(labels)))
    out: dict = {"n": len(gold), "accuracy": float(accuracy_score(gold, pred))}
    if len(labels) == 2 and positive is not None:
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, average="binary", pos_label=positive, zero_division=0
        )
        out.update(precision=float(p), recall=float(r), f1=float(f))
    present = sorted(set(gold.tolist()))
    out["macro_f1"] = (
        float(f1_score(gold, pred, labels=present, average="macro", zero_division=0)) if present else 0.0
    )
    out["confusion_matrix"] = confusion_matrix(gold, pred, labels=classes).tolist()
    out["accuracy_ci95"] = proportion_ci(int(np.sum(correct)), len(correct))
    if len(labels) == 2 and positive is not None:
        out["predicted_positive_rate"] = float((pred == positive).mean()) if len(pred) else 0.0
        out["positive_label"] = labels[positive]
    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=classes, zero_division=0)
    out["labels"] = list(labels)
    out["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(labels)
    }
    return out


def proportion_ci(k: int, n: int) -> list[float]:
    """The exact (Clopper-Pearson) 95% interval of a proportion k/n: never a point, even at 0 or n of n,
    where a bootstrap of the examples collapses to [1, 1] (16 of 16 right is 79-100%)."""
    if n == 0:
        return [0.0, 0.0]
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return [float(ci.low), float(ci.high)]


# The bootstraps are a few lines of numpy: scipy.stats.bootstrap gives intervals but no paired p-value, and a
# fixed seed keeps the report's numbers reproducible. McNemar uses scipy's exact binomial test.
def bootstrap_ci(values, *, n_boot: int = 1000, seed: int = 0, scale: float = 1.0) -> list[float]:
    """95% percentile-bootstrap interval of the mean of per-example values."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo * scale), float(hi * scale)]


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test (two-sided binomial on the discordant pairs) for paired per-example correctness,
    with the accuracy difference b - a and its 95% interval from the same binomial (Clopper-Pearson, given
    the discordant count), which excludes 0 exactly when p < 0.05: the interval never contradicts the test."""
    from scipy.stats import binomtest

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    m = only_a + only_b
    out = {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": 1.0}
    out["difference"] = (only_b - only_a) / len(a) if len(a) else 0.0
    out["ci95"] = [out["difference"]] * 2
    if m:
        test = binomtest(only_b, m, 0.5)
        lo, hi = test.proportion_ci(confidence_level=0.95, method="exact")
        out["p_value"] = float(test.pvalue)
        out["ci95"] = [float(m * (2 * lo - 1) / len(a)), float(m * (2 * hi - 1) / len(a))]
    return out


def paired_bootstrap(scores_a, scores_b, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap of mean(b) - mean(a): the interval of the difference and a two-sided p-value."""
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    diffs = (b[idx] - a[idx]).mean(axis=1)
    observed = float((b - a).mean())
    p = float(min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"difference": observed, "ci95": [float(lo), float(hi)], "p_value": p}
