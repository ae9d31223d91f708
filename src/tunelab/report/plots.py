"""The report's plots and the fine-tuning loss curve (matplotlib, headless Agg backend).

Plain matplotlib, no seaborn: a handful of bar, line and strip plots does not need another dependency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def loss_curve(log: list[dict], path: Path, title: str = "training loss") -> Path | None:
    if not log:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["step"] for e in log], [e["loss"] for e in log], lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(
    matrix: list[list[int]], path: Path, title: str, labels: Sequence[str] = ("negative", "positive")
) -> Path:
    """Counts per gold (rows) and predicted (columns) label."""
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(3.6, 0.75 * n + 2.2), max(3.2, 0.7 * n + 1.8)))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=12 if n <= 4 else 9)
    ax.set_xticks(range(n), labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


ZS_COLOR, FT_COLOR = "#9a9a9a", "#d9822b"  # grey for zero-shot, orange for fine-tuned


def score_bars(
    metrics: list[str],
    zs: list[float | None],
    ft: list[float | None],
    zs_err,
    ft_err,
    path: Path,
    title: str,
    ylabel: str,
    prompting: str = "zero-shot",
) -> Path:
    """Prompted (`prompting`: "zero-shot" or "K-shot") vs fine-tuned bars per metric, with 95% intervals as
    error bars (err: [lo, hi] or None)."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(metrics), 3.6))
    width = 0.38
    for k, (vals, errs, label, color) in enumerate(
        ((zs, zs_err, prompting, ZS_COLOR), (ft, ft_err, "fine-tuned", FT_COLOR))
    ):
        xs = [i + (k - 0.5) * width for i in range(len(metrics))]
        ys = [v if v is not None else 0.0 for v in vals]
        yerr = [
            [max(0.0, y - e[0]) if e else 0 for y, e in zip(ys, errs, strict=True)],
            [max(0.0, e[1] - y) if e else 0 for y, e in zip(ys, errs, strict=True)],
        ]
        ax.bar(xs, ys, width, label=label, color=color, yerr=yerr, capsize=4, error_kw={"lw": 1})
        for x, v in zip(xs, vals, strict=True):
            ax.text(x, 1, "n/a" if v is None else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def group_bars(
    groups: list[str],
    counts: list[int],
    zs: list[float],
    ft: list[float],
    path: Path,
    title: str,
    xlabel: str,
    prompting: str = "zero-shot",
) -> Path:
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(groups)), 3.6))
    width = 0.38
    for k, (vals, label, color) in enumerate(((zs, prompting, ZS_COLOR), (ft, "fine-tuned", FT_COLOR))):
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        ax.bar(xs, vals, width, label=label, color=color)
    ax.set_xticks(
        range(len(groups)), [f"{g}\n(n={c})" for g, c in zip(groups, counts, strict=True)], fontsize=8
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def seed_spread(
    metrics: list[str],
    zs: list[float],
    per_seed: list[list[float]],
    path: Path,
    title: str,
    ylabel: str,
    prompting: str = "zero-shot",
) -> Path:
    """Each seed's fine-tuned score as a dot, their mean +- sd as a bar, and the prompted model's score
    (`prompting`: "zero-shot" or "K-shot") as a line."""
    import statistics

    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(metrics), 3.6))
    for i, (z, vals) in enumerate(zip(zs, per_seed, strict=True)):
        ax.hlines(z, i - 0.3, i + 0.3, color=ZS_COLOR, lw=2, label=prompting if i == 0 else None)
        ax.scatter(
            [i] * len(vals),
            vals,
            color=FT_COLOR,
            s=18,
            zorder=3,
            label="fine-tuned seeds" if i == 0 else None,
        )
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        ax.errorbar(
            i + 0.12,
            statistics.fmean(vals),
            yerr=sd,
            fmt="D",
            color="black",
            capsize=4,
            ms=4,
            label="mean ± sd" if i == 0 else None,
        )
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
