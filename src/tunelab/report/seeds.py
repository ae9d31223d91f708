"""The report's seeds section, for a study with several fine-tuning seeds (`seeds: [...]`): each seed's
scores and its paired test against the prompted (zero- or K-shot) model, their mean +- standard deviation, a
combined paired test (the per-example score averaged over the seeds, paired bootstrap), and a plot of the
spread.

The seeds' folders: RUN/<task>/finetune/ (the first seed) and RUN/<task>/finetune-seed<N>/."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tunelab.outputs import read_json, read_jsonl
from tunelab.report import classification, extractive_qa
from tunelab.report.document import Builder, H, P, Table
from tunelab.report.run_folder import ROWS_FILE, TaskRun
from tunelab.report.stats import ALPHA, Test, ci, pair_rows, pval

# the per-example value the combined test averages over seeds: (pairing key, value, the fields that make two
# rows the same example) by kind, paired as the kinds' own tests pair them
PER_EXAMPLE: dict[str, tuple[str, Callable[[dict], float | None], tuple[str, ...]]] = {
    "classification": (
        classification.KEY,
        lambda r: None if r.get("gold") is None else 100.0 * (r["prediction"] == r["gold"]),
        classification.SAME,
    ),
    "extractive_qa": (
        extractive_qa.KEY,
        lambda r: 100.0 * float(r["f1"]) if "f1" in r else None,
        extractive_qa.SAME,
    ),
}


@dataclass
class SeedRun:
    seed: int | None
    folder: Path
    metrics: dict
    rows: list[dict] | None


def seed_runs(t: TaskRun) -> list[SeedRun]:
    """The task's fine-tuned runs, one per seed (first seed first); empty unless there are several."""
    out = []
    seeded = [p for p in t.folder.glob("finetune-seed*") if re.fullmatch(r"finetune-seed\d+", p.name)]
    for folder in [t.folder / "finetune", *sorted(seeded)]:
        m = folder / "eval" / "metrics.json"
        if not m.is_file():
            continue
        cfg = folder / "training_config.json"
        seed = read_json(cfg).get("seed") if cfg.is_file() else None
        rows = folder / "eval" / ROWS_FILE[t.kind]
        out.append(SeedRun(seed, folder, read_json(m), read_jsonl(rows) if rows.is_file() else None))
    return out if len(out) > 1 else []


def combined_test(t: TaskRun, runs: list[SeedRun]) -> Test | None:
    """Paired bootstrap of the seed-mean per-example score against the prompted model, on the examples every
    seed and the prompted model were evaluated on."""
    from tunelab.metrics import paired_bootstrap

    key, value, same = PER_EXAMPLE[t.kind]
    pairs = [pair_rows(t.zs_rows, r.rows, key, value, same) for r in runs]
    if any(p is None for p in pairs):
        return None
    common = set.intersection(*(set(p.keys) for p in pairs))
    if len(common) < 2:  # the bootstrap of one example has no spread: no interval, no p-value
        return None
    keys = [k for k in pairs[0].keys if k in common]
    a = np.array([pairs[0].a[pairs[0].keys.index(k)] for k in keys])
    b = np.mean([[p.b[p.keys.index(k)] for k in keys] for p in pairs], axis=0)
    boot = paired_bootstrap(a, b)
    return Test(
        "paired bootstrap of the seed-mean",
        "per-example score",
        len(keys),
        boot["difference"],
        boot["ci95"],
        boot["p_value"],
    )


def section(b: Builder, t: TaskRun, tests: Callable[[TaskRun], list[Test]]) -> list[str]:
    """The seeds section (nothing with one seed); returns its analysis sentences."""
    runs = seed_runs(t)
    if not runs or not t.zs:
        return []
    keys = t.task.metric_rows(t.zs)
    per_seed = [{k: v for k, _, v in t.task.for_metrics(r.metrics).metric_rows(r.metrics)} for r in runs]
    b.add(H(3, f"Seeds ({len(runs)} fine-tuning runs)"))
    rows = []
    for r, vals in zip(runs, per_seed, strict=True):
        test = next(iter(tests(replace(t, ft=r.metrics, ft_rows=r.rows))), None)
        rows.append(
            [
                "–" if r.seed is None else str(r.seed),
                *[f"{vals.get(k, float('nan')):.1f}" for k, _, _ in keys],
            ]
            + (
                [f"{test.diff:+.1f} {ci(test.diff_ci)}", f"{test.name}: {pval(test.p)}"]
                if test
                else ["–", "–"]
            )
        )
    means = {k: statistics.fmean(v[k] for v in per_seed) for k, _, _ in keys}
    sds = {k: statistics.stdev(v[k] for v in per_seed) for k, _, _ in keys}
    combined = combined_test(t, runs)
    rows.append(
        ["mean ± sd", *[f"{means[k]:.1f} ± {sds[k]:.1f}" for k, _, _ in keys]]
        + (
            [f"{combined.diff:+.1f} {ci(combined.diff_ci)}", f"{combined.name}: {pval(combined.p)}"]
            if combined
            else ["–", "–"]
        )
    )
    zs_row = [t.prompting, *[f"{v:.1f}" for _, _, v in keys], "", ""]
    b.add(
        Table(
            [
                "seed",
                *[label for _, label, _ in keys],
                f"difference vs {t.prompting} (95% CI)",
                "paired test",
            ],
            [zs_row, *rows],
            "l" + "r" * (len(keys) + 2),
            caption=f"Each seed's paired test compares it with {t.prompting} on the same examples; the last "
            f"row averages each example's score over the seeds and tests that against {t.prompting}.",
        )
    )
    from tunelab.report.plots import seed_spread

    path = seed_spread(
        [label for _, label, _ in keys],
        [v for _, _, v in keys],
        [[v[k] for v in per_seed] for k, _, _ in keys],
        b.fig(f"{t.name}-seeds.png"),
        f"{t.title}: fine-tuned over {len(runs)} seeds",
        "score (%, or points)",
        t.prompting,
    )
    b.img(path, f"{t.title}: the spread over seeds")
    k0, label0, zs0 = keys[0]
    sentence = (
        f"{t.title}: over {len(runs)} seeds fine-tuned {label0} is {means[k0]:.1f}% ± {sds[k0]:.1f} points "
        f"({t.prompting} {zs0:.1f}%)"
    )
    if combined:
        verdict = "significant" if combined.p < ALPHA else "not significant"
        diff = f"{combined.diff:+.1f} points"
        sentence += f"; the seed-mean difference {diff} is {verdict} ({pval(combined.p)})"
    b.add(P(sentence + "."))
    return [sentence + "."]
