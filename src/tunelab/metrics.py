"""Classification metrics (scikit-learn), bootstrap intervals and paired significance tests."""

from __future__ import annotations

import numpy as np


def classification_metrics(gold, pred, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy, precision/recall/F1 of the positive class, macro F1 (fractions in [0, 1]), the confusion
    matrix (rows gold, columns predicted) and a 95% percentile-bootstrap interval for accuracy."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    gold = np.asarray(gold)
    pred = np.asarray(pred)
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average="binary", pos_label=1, zero_division=0)
    correct = (gold == pred).astype(float)
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "confusion_matrix": confusion_matrix(gold, pred, labels=[0, 1]).tolist(),
        "accuracy_ci95": bootstrap_ci(correct, n_boot=n_boot, seed=seed),
        "predicted_positive_rate": float(pred.mean()) if len(pred) else 0.0,
    }


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
    """Exact McNemar test (two-sided binomial on the discordant pairs) for paired per-example correctness."""
    from scipy.stats import binomtest

    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p}


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
