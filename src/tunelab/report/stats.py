"""Numbers as the report writes them, and the paired comparison of the zero-shot and the fine-tuned model on
the examples both were evaluated on (the tests themselves: tunelab.metrics)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
SMALL_N = 300  # below this many paired examples the report says the intervals are wide
TOP_MISTAKES = 5


def n_(x) -> str:
    return f"{int(x):,}"


def plural(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def signed(x: int) -> str:
    return f"{int(x):+,}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def pval(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def ci(lo_hi, scale: float = 1.0, digits: int = 1) -> str:
    if not lo_hi:
        return "–"
    return f"[{lo_hi[0] * scale:.{digits}f}, {lo_hi[1] * scale:.{digits}f}]"


@dataclass
class Paired:
    n: int
    a: np.ndarray  # zero-shot per-example scores
    b: np.ndarray  # fine-tuned
    keys: list


@dataclass
class Mismatch:
    """Rows of the two models that share a key (line, question id) but are not the same example."""

    key: str
    count: int
    first: object  # the first such key
    zs: dict  # its identity fields in the zero-shot rows
    ft: dict


def _identity(row: dict, same: tuple[str, ...]) -> dict:
    return {f: row.get(f) for f in same}


def mismatched(zs_rows, ft_rows, key: str, same: tuple[str, ...]) -> Mismatch | None:
    """Rows with the same `key` whose `same` fields (the text, the question) differ: the data changed between
    the two evaluations, so the key no longer names one example."""
    if not zs_rows or not ft_rows:
        return None
    ft = {r[key]: r for r in ft_rows}
    bad = [r for r in zs_rows if r[key] in ft and _identity(r, same) != _identity(ft[r[key]], same)]
    if not bad:
        return None
    k = bad[0][key]
    return Mismatch(key, len(bad), k, _identity(bad[0], same), _identity(ft[k], same))


def pair_rows(
    zs_rows, ft_rows, key: str, value: Callable[[dict], float | None], same: tuple[str, ...] = ()
) -> Paired | None:
    """Per-example values of both models on the examples both were evaluated on: matched by `key` and, so that
    a position never stands in for an example, only where the `same` fields (the example's text) agree too."""
    if not zs_rows or not ft_rows:
        return None
    ft = {r[key]: r for r in ft_rows}
    keys, a, b = [], [], []
    for r in zs_rows:
        other = ft.get(r[key])
        if other is not None and _identity(r, same) == _identity(other, same):
            va, vb = value(r), value(other)
            if va is None or vb is None:
                continue
            keys.append(r[key])
            a.append(va)
            b.append(vb)
    if not keys:
        return None
    return Paired(len(keys), np.asarray(a, float), np.asarray(b, float), keys)


@dataclass
class Test:
    name: str
    metric: str
    n: int
    diff: float  # fine-tuned minus zero-shot, in points
    diff_ci: list[float]
    p: float
    detail: str = ""
    a: float | None = None  # zero-shot score on the n paired examples (percent / points)
    b: float | None = None  # fine-tuned score on them: b - a == diff

    @property
    def significant(self) -> bool:
        return self.p < ALPHA
