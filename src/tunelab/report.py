"""The study report: report.md and a self-contained report.html (plots embedded as base64) from a run folder.

Both files are rendered from one list of blocks (headings, paragraphs, tables, images, lists), so they say the
same thing. Every sentence of the analysis is generated from this run's numbers under explicit conditions
(significance only when p < ALPHA, a warning when n is small, ...).

What the report reads, per task folder RUN/<task>/ (every part optional; a missing part is reported):
  zeroshot/metrics.json, finetune/eval/metrics.json
  SST-2: zeroshot/predictions.jsonl, finetune/eval/predictions.jsonl (paired by `line`)
  SQuAD: zeroshot/per_example.jsonl, finetune/eval/per_example.jsonl (paired by `id`),
         finetune/eval/nbest_predictions.json (span scores: the fine-tuned model's confidence)
  finetune/train_log.jsonl, finetune/tunelab.json, finetune/training_config.json
and RUN/params/<task>.json, RUN/config.yaml, RUN/environment.json, RUN/stages.json.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunelab.errors import UsageError

ALPHA = 0.05
SMALL_N = 300  # below this many paired examples the report says the intervals are wide
TOP_MISTAKES = 5
KNOWN_TASKS = ("sst2", "squad", "squad_v2")
TITLES = {"sst2": "SST-2", "squad": "SQuAD v1.1", "squad_v2": "SQuAD v2.0"}
LABELS = ("negative", "positive")

# ------------------------------------------------------------------------------------------------------------
# Document blocks, rendered to Markdown and to HTML


@dataclass
class H:
    level: int
    text: str


@dataclass
class P:
    text: str
    cls: str = ""  # "note" renders as a side note in HTML


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # one of l/r per column; default: first left, others right
    caption: str = ""


@dataclass
class Img:
    path: Path  # the PNG file
    rel: str  # path relative to the run folder (Markdown link)
    alt: str


@dataclass
class UL:
    items: list[str]


_MD_ALWAYS = re.compile(r"([\\`*|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword _ never emphasises
_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # only < that could open an HTML tag


def md_escape(text: str, block: bool = False) -> str:
    """Text as Markdown shows it literally: no emphasis, links, tags or table cells out of data text."""
    text = _MD_ALWAYS.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    text = _MD_TAG.sub("&lt;", text).replace("](", "]\\(")
    if block and text.startswith(("#", ">", "-", "+", "=")):  # would start a heading, quote or list
        text = "\\" + text
    return text


def render_md(title: str, blocks: list) -> str:
    out = [f"# {md_escape(title)}", ""]
    for b in blocks:
        if isinstance(b, H):
            out += ["#" * b.level + " " + md_escape(b.text), ""]
        elif isinstance(b, P):
            out += [("> " if b.cls == "note" else "") + md_escape(b.text, block=True), ""]
        elif isinstance(b, UL):
            out += [f"- {md_escape(i)}" for i in b.items] + [""]
        elif isinstance(b, Table):
            align = b.align or ("l" + "r" * (len(b.headers) - 1))
            out.append("| " + " | ".join(md_escape(h) for h in b.headers) + " |")
            out.append("|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|")
            for row in b.rows:
                out.append("| " + " | ".join(md_escape(c) for c in row) + " |")
            if b.caption:
                out += ["", "*" + md_escape(b.caption) + "*"]
            out.append("")
        elif isinstance(b, Img):
            out += [f"![{md_escape(b.alt)}]({b.rel})", ""]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1060px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #c8c8c8; padding: 4px 9px; vertical-align: top; }
th { background: #eee; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; font-size: 13px; color: #555; text-align: left; padding-top: 4px; }
img { max-width: 100%; border: 1px solid #ddd; margin: .4em .4em .4em 0; }
p.note { background: #f6f3e8; border-left: 4px solid #c9a400; padding: .4em .8em; }
"""


def render_html(title: str, blocks: list) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, H):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, P):
            cls = f' class="{b.cls}"' if b.cls else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, UL):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            align = b.align or ("l" + "r" * (len(b.headers) - 1))
            cls = [' class="r"' if a == "r" else "" for a in align]
            rows = ["<tr>" + "".join(f"<th{c}>{e(h)}</th>" for c, h in zip(cls, b.headers)) + "</tr>"]
            for row in b.rows:
                rows.append("<tr>" + "".join(f"<td{c}>{e(str(v))}</td>" for c, v in zip(cls, row)) + "</tr>")
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}" + "".join(rows) + "</table>")
        elif isinstance(b, Img):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{e(b.alt, quote=True)}">')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Reading a run folder


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc


def _jsonl(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON lines: {exc}") from exc


@dataclass
class TaskRun:
    name: str
    kind: str  # sst2 | squad
    v2: bool
    params: dict | None
    zs: dict | None  # metrics
    ft: dict | None
    zs_rows: list[dict] | None
    ft_rows: list[dict] | None
    train_log: list[dict] | None
    ft_meta: dict | None
    train_cfg: dict | None
    ft_nbest: dict | None
    folder: Path = field(default_factory=Path)

    @property
    def title(self) -> str:
        if self.name in TITLES:
            return TITLES[self.name]
        return ("SQuAD v2.0" if self.v2 else "SQuAD") if self.kind == "squad" else self.name


def _discover(run: Path, config: dict | None) -> list[str]:
    names: list[str] = []
    if config and isinstance(config.get("tasks"), dict):
        names = [t for t, c in config["tasks"].items() if isinstance(c, dict) and c.get("enabled")]
    for p in sorted(run.iterdir()):
        if p.is_dir() and p.name not in names and ((p / "zeroshot").is_dir() or (p / "finetune").is_dir()):
            names.append(p.name)
    for p in sorted((run / "params").glob("*.json")) if (run / "params").is_dir() else []:
        if p.stem not in names:
            names.append(p.stem)
    order = {t: i for i, t in enumerate(KNOWN_TASKS)}
    return sorted(names, key=lambda t: (order.get(t, len(order)), t))


def load_task(run: Path, name: str) -> TaskRun:
    d = run / name
    zs = _json(d / "zeroshot" / "metrics.json")
    ft = _json(d / "finetune" / "eval" / "metrics.json")
    kind_hint = (zs or ft or {}).get("task")
    if name == "sst2" or kind_hint == "sst2":
        kind, v2 = "sst2", False
    else:
        kind, v2 = "squad", name == "squad_v2" or kind_hint == "squad_v2"
    rows_file = "predictions.jsonl" if kind == "sst2" else "per_example.jsonl"
    return TaskRun(
        name=name, kind=kind, v2=v2, params=_json(run / "params" / f"{name}.json"), zs=zs, ft=ft,
        zs_rows=_jsonl(d / "zeroshot" / rows_file), ft_rows=_jsonl(d / "finetune" / "eval" / rows_file),
        train_log=_jsonl(d / "finetune" / "train_log.jsonl"), ft_meta=_json(d / "finetune" / "tunelab.json"),
        train_cfg=_json(d / "finetune" / "training_config.json"),
        ft_nbest=_json(d / "finetune" / "eval" / "nbest_predictions.json") if kind == "squad" else None,
        folder=d,
    )


# ------------------------------------------------------------------------------------------------------------
# Numbers


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


def pair_rows(zs_rows, ft_rows, key: str, value) -> Paired | None:
    """Per-example values of both models on the examples both were evaluated on, matched by `key`."""
    if not zs_rows or not ft_rows:
        return None
    ft = {r[key]: r for r in ft_rows}
    keys, a, b = [], [], []
    for r in zs_rows:
        if r[key] in ft:
            va, vb = value(r), value(ft[r[key]])
            if va is None or vb is None:
                continue
            keys.append(r[key])
            a.append(va)
            b.append(vb)
    if not keys:
        return None
    return Paired(len(keys), np.asarray(a, float), np.asarray(b, float), keys)


def _sst2_correct(r):
    return None if r.get("gold") is None else float(r["prediction"] == r["gold"])


@dataclass
class Test:
    name: str
    metric: str
    n: int
    diff: float  # fine-tuned minus zero-shot, in points
    diff_ci: list[float]
    p: float
    detail: str = ""

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def sst2_tests(t: TaskRun) -> list[Test]:
    from tunelab.metrics import mcnemar, paired_bootstrap

    pr = pair_rows(t.zs_rows, t.ft_rows, "line", _sst2_correct)
    if pr is None:
        return []
    mc = mcnemar(pr.a, pr.b)
    boot = paired_bootstrap(100 * pr.a, 100 * pr.b)
    return [Test("McNemar exact test", "accuracy", pr.n, boot["difference"], boot["ci95"], mc["p_value"],
                 f"{plural(mc['only_b_correct'], 'sentence')} right only after fine-tuning, "
                 f"{plural(mc['only_a_correct'], 'sentence')} right only zero-shot")]


def squad_tests(t: TaskRun) -> list[Test]:
    from tunelab.metrics import paired_bootstrap

    out = []
    for metric, key in (("F1", "f1"), ("EM", "em")):
        pr = pair_rows(t.zs_rows, t.ft_rows, "id", lambda r, k=key: float(r[k]) if k in r else None)
        if pr is None:
            continue
        boot = paired_bootstrap(100 * pr.a, 100 * pr.b)
        out.append(Test("paired bootstrap (2,000 resamples)", metric, pr.n, boot["difference"], boot["ci95"],
                        boot["p_value"]))
    return out


def _bootstrap(values) -> list[float]:
    from tunelab.metrics import bootstrap_ci

    return bootstrap_ci(values)


# ------------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _plt():
    import matplotlib.pyplot as plt

    from tunelab import plots  # noqa: F401 - selects the Agg backend

    return plt


ZS_COLOR, FT_COLOR = "#9a9a9a", "#d9822b"  # grey for zero-shot, orange for fine-tuned


def score_bars(metrics: list[str], zs: list[float | None], ft: list[float | None], zs_err, ft_err, path: Path,
               title: str, ylabel: str) -> Path:
    """Zero-shot vs fine-tuned bars per metric, with 95% intervals as error bars (err: [lo, hi] or None)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(metrics), 3.6))
    width = 0.38
    for k, (vals, errs, label, color) in enumerate(((zs, zs_err, "zero-shot", ZS_COLOR),
                                                    (ft, ft_err, "fine-tuned", FT_COLOR))):
        xs = [i + (k - 0.5) * width for i in range(len(metrics))]
        ys = [v if v is not None else 0.0 for v in vals]
        yerr = [[max(0.0, y - e[0]) if e else 0 for y, e in zip(ys, errs)],
                [max(0.0, e[1] - y) if e else 0 for y, e in zip(ys, errs)]]
        ax.bar(xs, ys, width, label=label, color=color, yerr=yerr, capsize=4, error_kw={"lw": 1})
        for x, v in zip(xs, vals):
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


def group_bars(groups: list[str], counts: list[int], zs: list[float], ft: list[float], path: Path, title: str,
               xlabel: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.0 + 0.9 * len(groups)), 3.6))
    width = 0.38
    for k, (vals, label, color) in enumerate(((zs, "zero-shot", ZS_COLOR), (ft, "fine-tuned", FT_COLOR))):
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        ax.bar(xs, vals, width, label=label, color=color)
    ax.set_xticks(range(len(groups)), [f"{g}\n(n={c})" for g, c in zip(groups, counts)], fontsize=8)
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


# ------------------------------------------------------------------------------------------------------------
# Sections


class Builder:
    def __init__(self, run: Path):
        self.run = run
        self.fig_dir = run / "figures"
        self.blocks: list = []
        self.analysis: list[str] = []  # bullet sentences of the analysis section
        self.summary_rows: list[list[str]] = []

    def add(self, *blocks):
        self.blocks.extend(blocks)

    def img(self, path: Path | None, alt: str):
        if path is not None and Path(path).is_file():
            self.add(Img(Path(path), os.path.relpath(path, self.run), alt))

    def fig(self, name: str) -> Path:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        return self.fig_dir / name


def param_section(b: Builder, t: TaskRun) -> None:
    b.add(H(3, "Parameters"))
    p = t.params
    if not p or "task_model" not in p:
        b.add(P("The parameter stage has not run for this task.", "note"))
        return
    base, tm = p["base"], p["task_model"]
    hidden = p.get("hidden_size")
    rows = [[f"Base causal LM ({p.get('model', tm.get('model'))})", n_(base["total"] if "total" in base
                                                                       else base["base_total"]), "",
             "input embeddings and LM head are one tied tensor, counted once" if p.get("tie_word_embeddings")
             else "input embeddings and a separate LM head"]]
    if p.get("tie_word_embeddings"):
        rows.append(["− lm_head", "0", "", "tied to the input embeddings: dropping it removes no parameters"])
    for name, cnt in tm.get("removed", {}).items():
        rows.append([f"− {name}", f"−{n_(cnt)}", "", "untied LM head, not used by the task model"])
    for name, cnt in tm.get("added", {}).items():
        rows.append([f"+ {name}", signed(cnt), "", _explain_head(name, cnt, hidden, p.get("num_labels"))])
    rows.append(["= Task model (counted from the config)", n_(tm["total"]), signed(tm["delta"]),
                 "base + head − unused LM head"])
    fin = p.get("finetuned")
    if fin:
        same = fin["total"] == tm["total"]
        how = "loaded from the saved folder and counted" + (
            " (LoRA adapter merged, as used for inference)" if fin.get("lora_adapter") is not None else "")
        rows.append(["Fine-tuned model (loaded)", n_(fin["total"]), signed(fin["total"] - base["total"]),
                     how + ("; equals the task model" if same else "; DIFFERS from the task model")])
    share = 100 * tm["trainable"] / max(tm["total"], 1)
    rows.append([f"Trained during fine-tuning ({tm['method']})", n_(tm["trainable"]), f"{share:.2f}%",
                 _trainable_note(tm)])
    if fin and fin.get("safetensors_numel"):
        saved = ", ".join(f"{k}: {n_(v)}" for k, v in fin["safetensors_numel"].items())
        rows.append(["Tensors saved on disk", n_(sum(fin["safetensors_numel"].values())), "",
                     f"{fin.get('saved')} ({saved})"])
    b.add(Table(["", "parameters", "change", "where it comes from"], rows, "lrrl",
                caption="Exact counts (no rounding); shared tensors are counted once."))


def _explain_head(name: str, cnt: int, hidden: int | None, labels: int | None) -> str:
    if name == "score" and hidden and labels and hidden * labels == cnt:
        return f"classification head: hidden size {hidden} × {labels} labels, no bias = {n_(cnt)}"
    if name == "qa_outputs" and hidden and hidden * 2 + 2 == cnt:
        return f"span head: hidden size {hidden} × 2 (start, end) + 2 biases = {n_(cnt)}"
    return "new task head"


def _trainable_note(tm: dict) -> str:
    if tm["method"] == "full":
        return "every parameter"
    if tm["method"] == "head":
        return "the new head only; the body is frozen"
    if tm["method"] == "lora":
        return (f"LoRA adapter {n_(tm.get('adapter', 0))} + the head; the adapter is extra to the model's "
                "count (merged into the weights on export)")
    return ""


def param_analysis(t: TaskRun) -> list[str]:
    p = t.params
    if not p or "task_model" not in p:
        return []
    base, tm = p["base"], p["task_model"]
    base_total = base.get("total", base.get("base_total"))
    out = []
    added = tm.get("added", {})
    removed = tm.get("removed", {})
    parts = " and ".join(f"{k} ({signed(v)})" for k, v in added.items()) or "no new module"
    s = (f"{t.title}: the task model has {n_(tm['total'])} parameters, exactly {signed(tm['delta'])} "
         f"against the base model's {n_(base_total)}; the difference is {parts}")
    if removed:
        s += " minus the unused LM head (" + ", ".join(f"−{n_(v)}" for v in removed.values()) + ")"
    elif p.get("tie_word_embeddings"):
        s += "; the LM head is tied to the embeddings, so dropping it removes nothing"
    out.append(s + ".")
    fin = p.get("finetuned")
    if fin:
        if fin["total"] == tm["total"]:
            total = n_(fin["total"])
            out.append(f"{t.title}: the fine-tuned model, loaded from disk, has {total} parameters, the same "
                       "as the task model: fine-tuning changed the values of the weights, not their number.")
        else:
            out.append(f"{t.title}: the fine-tuned model loaded from disk has {n_(fin['total'])} parameters, "
                       f"{signed(fin['total'] - tm['total'])} against the count from the config; check the "
                       "saved folder.")
    if tm["method"] == "lora":
        out.append(f"{t.title}: LoRA trained {n_(tm['trainable'])} parameters "
                   f"({100 * tm['trainable'] / max(tm['total'], 1):.2f}% of the task model's count), of "
                   f"which {n_(tm.get('adapter', 0))} are adapter matrices.")
    elif tm["method"] == "full":
        out.append(f"{t.title}: full fine-tuning updated all {n_(tm['trainable'])} parameters.")
    return out


def _status(m: dict | None) -> str:
    return "" if m else "not run yet"


def sst2_section(b: Builder, t: TaskRun) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    b.add(H(3, "Zero-shot vs fine-tuned"))
    if not zs and not ft:
        b.add(P("Neither the zero-shot nor the fine-tuning stage has finished for this task.", "note"))
        return

    def row(label, key, fmt=pct):
        return [label, fmt(zs.get(key)) if zs else _status(zs), fmt(ft.get(key)) if ft else _status(ft),
                _diff_points(zs.get(key), ft.get(key))]

    def n_or(m):
        return n_(m["n"]) if m and "n" in m else "–"

    rows = [
        ["Accuracy (%)", pct(zs.get("accuracy")) if zs else "not run yet",
         pct(ft.get("accuracy")) if ft else "not run yet",
         _diff_points(zs.get("accuracy"), ft.get("accuracy"))],
        ["  95% interval (bootstrap)", ci(zs.get("accuracy_ci95"), 100), ci(ft.get("accuracy_ci95"), 100),
         ""],
        row("F1, positive class (%)", "f1"),
        row("Macro F1 (%)", "macro_f1"),
        row("Precision (%)", "precision"),
        row("Recall (%)", "recall"),
        row("Predicted positive (%)", "predicted_positive_rate"),
        ["Sentences evaluated", n_or(zs), n_or(ft), ""],
    ]
    if "uncalibrated_accuracy" in zs:
        rows.insert(2, ["  accuracy before calibration (%)", pct(zs["uncalibrated_accuracy"]), "", ""])
    b.add(Table(["metric", "zero-shot", "fine-tuned", "difference (points)"], rows))
    tests = sst2_tests(t)
    for test in tests:
        b.add(P(f"{test.name} on the {n_(test.n)} sentences both models labelled: accuracy difference "
                f"{test.diff:+.1f} points (95% paired-bootstrap interval {ci(test.diff_ci)}), "
                f"{pval(test.p)}; {test.detail}."))
        b.summary_rows.append([t.title, "accuracy (%)", pct(zs.get("accuracy")), pct(ft.get("accuracy")),
                               f"{test.diff:+.1f} {ci(test.diff_ci)}", pval(test.p), n_(test.n)])
    if not tests:
        b.summary_rows.append([t.title, "accuracy (%)", pct(zs.get("accuracy")) if zs else "not run",
                               pct(ft.get("accuracy")) if ft else "not run", "", "no paired test", ""])
    if zs.get("accuracy") is not None or ft.get("accuracy") is not None:
        keys = [("accuracy", "accuracy"), ("F1", "f1"), ("macro F1", "macro_f1")]

        def err(m):
            return [[100 * v for v in m["accuracy_ci95"]] if "accuracy_ci95" in m else None, None, None]

        path = score_bars([k for k, _ in keys],
                          [100 * zs[k] if k in zs else None for _, k in keys],
                          [100 * ft[k] if k in ft else None for _, k in keys], err(zs), err(ft),
                          b.fig(f"{t.name}-scores.png"),
                          f"{t.title}: zero-shot vs fine-tuned (error bars: 95% CI)", "%")
        b.img(path, f"{t.title} scores, zero-shot vs fine-tuned")
    from tunelab.plots import confusion

    for m, label in ((zs, "zero-shot"), (ft, "fine-tuned")):
        if m.get("confusion_matrix"):
            path = confusion(m["confusion_matrix"], b.fig(f"{t.name}-confusion-{label}.png"),
                             f"{t.title} {label} (n={m.get('n')})")
            b.img(path, f"{t.title} confusion matrix, {label}")
    loss_section(b, t)
    b.add(H(3, "Most confident mistakes"))
    for rows_, label in ((t.zs_rows, "zero-shot"), (t.ft_rows, "fine-tuned")):
        if not rows_:
            continue
        wrong = [r for r in rows_ if r.get("gold") is not None and r["prediction"] != r["gold"]]
        wrong.sort(key=lambda r: -r["scores"][LABELS[r["prediction"]]])
        b.add(P(f"{label}: {len(wrong)} mistakes of {len(rows_)} sentences; the "
                f"{min(TOP_MISTAKES, len(wrong))} the model was surest of:"))
        if wrong:
            b.add(Table(["line", "sentence", "gold", "predicted", "confidence"],
                        [[str(r["line"]), r["text"].strip(), LABELS[r["gold"]], LABELS[r["prediction"]],
                          f"{r['scores'][LABELS[r['prediction']]]:.3f}"] for r in wrong[:TOP_MISTAKES]],
                        "rlllr"))


def _diff_points(a, b) -> str:
    return "" if a is None or b is None else f"{100 * (b - a):+.1f}"


def loss_section(b: Builder, t: TaskRun) -> None:
    if not t.train_log:
        return
    from tunelab.plots import loss_curve

    method = (t.ft_meta or {}).get("method") or (t.train_cfg or {}).get("method", "")
    path = loss_curve(t.train_log, b.fig(f"{t.name}-loss.png"), title=f"{t.title} {method} fine-tuning: loss")
    b.img(path, f"{t.title} training loss")


def squad_section(b: Builder, t: TaskRun) -> None:
    zs, ft = t.zs or {}, t.ft or {}
    b.add(H(3, "Zero-shot vs fine-tuned"))
    if not zs and not ft:
        b.add(P("Neither the zero-shot nor the fine-tuning stage has finished for this task.", "note"))
        return
    em_ci = {}
    for rows_, label in ((t.zs_rows, "zs"), (t.ft_rows, "ft")):
        if rows_:
            em_ci[label] = _bootstrap([100.0 * r["em"] for r in rows_])

    def val(m, key):
        return num(m.get(key)) if m else "not run yet"

    def diff(key):
        return f"{ft[key] - zs[key]:+.1f}" if key in zs and key in ft else ""

    rows = [["Exact match", val(zs, "exact_match"), val(ft, "exact_match"), diff("exact_match")],
            ["  95% interval (bootstrap)", ci(em_ci.get("zs")), ci(em_ci.get("ft")), ""],
            ["F1", val(zs, "f1"), val(ft, "f1"), diff("f1")],
            ["  95% interval (bootstrap)", ci(zs.get("f1_ci95")), ci(ft.get("f1_ci95")), ""]]
    for key, label in (("HasAns_exact", "Exact match, answerable"), ("HasAns_f1", "F1, answerable"),
                       ("NoAns_f1", "F1 (= accuracy), unanswerable"),
                       ("best_f1", "F1 at the best no-answer threshold")):
        if key in zs or key in ft:
            rows.append([label, num(zs.get(key)), num(ft.get(key)), diff(key)])
    rows.append(["Questions evaluated", n_(zs["n"]) if "n" in zs else "–", n_(ft["n"]) if "n" in ft else "–",
                 ""])
    b.add(Table(["metric (%)", "zero-shot", "fine-tuned", "difference (points)"], rows))
    tests = squad_tests(t)
    for test in tests:
        b.add(P(f"{test.metric}: {test.name} on the {n_(test.n)} questions both models answered: difference "
                f"{test.diff:+.1f} points (95% interval {ci(test.diff_ci)}), {pval(test.p)}."))
        if test.metric == "F1":
            b.summary_rows.append([t.title, "F1", num(zs.get("f1")), num(ft.get("f1")),
                                   f"{test.diff:+.1f} {ci(test.diff_ci)}", pval(test.p), n_(test.n)])
    if not any(x.metric == "F1" for x in tests):
        b.summary_rows.append([t.title, "F1", num(zs.get("f1")) if zs else "not run",
                               num(ft.get("f1")) if ft else "not run", "", "no paired test", ""])
    b.add(P(f"The {t.title} data are article-level splits of the official dev set (training questions come "
            "from other articles of the same dev set): these scores are not comparable to published SQuAD "
            "numbers.", "note"))
    if zs or ft:
        path = score_bars(["exact match", "F1"], [zs.get("exact_match"), zs.get("f1")],
                          [ft.get("exact_match"), ft.get("f1")], [em_ci.get("zs"), zs.get("f1_ci95")],
                          [em_ci.get("ft"), ft.get("f1_ci95")], b.fig(f"{t.name}-scores.png"),
                          f"{t.title}: zero-shot vs fine-tuned (error bars: 95% CI)", "%")
        b.img(path, f"{t.title} scores, zero-shot vs fine-tuned")
    if t.zs_rows and t.ft_rows:
        for key, xlabel, fname in (("length", "gold answer length (words)", "f1-by-length"),
                                   ("qtype", "question word", "f1-by-question")):
            groups, counts, a, c = breakdown(t, key)
            if groups:
                path = group_bars(groups, counts, a, c, b.fig(f"{t.name}-{fname}.png"),
                                  f"{t.title}: F1 by {xlabel}", xlabel)
                b.img(path, f"{t.title} F1 by {xlabel}")
    loss_section(b, t)
    squad_mistakes(b, t)


def _length_bucket(r: dict) -> str:
    words = r.get("answer_words")
    if words is None:
        words = len(r["gold"][0].split()) if r.get("gold") else 0
    if words == 0:
        return "no answer"
    return {1: "1", 2: "2", 3: "3"}.get(words, "4-5" if words <= 5 else "6+")


def _qtype(r: dict) -> str:
    if r.get("question_type"):
        return r["question_type"]
    for w in r.get("question", "").lower().replace("?", " ").split():
        if w in ("what", "which", "who", "whom", "whose", "when", "where", "why", "how"):
            return w
    return "other"


def breakdown(t: TaskRun, key: str):
    """F1 per group (answer length bucket or question word) on the paired questions."""
    ft = {r["id"]: r for r in t.ft_rows}
    acc: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0])
    for r in t.zs_rows:
        if r["id"] not in ft:
            continue
        g = _length_bucket(r) if key == "length" else _qtype(r)
        acc[g][0] += 1
        acc[g][1] += 100 * r["f1"]
        acc[g][2] += 100 * ft[r["id"]]["f1"]
    if key == "length":
        order = [g for g in ("no answer", "1", "2", "3", "4-5", "6+") if g in acc]
    else:
        order = sorted(acc, key=lambda g: (-acc[g][0], g))
    return (order, [acc[g][0] for g in order], [acc[g][1] / acc[g][0] for g in order],
            [acc[g][2] / acc[g][0] for g in order])


def _span_confidence(nbest: list[dict] | None) -> float | None:
    scores = [e["score"] for e in (nbest or []) if isinstance(e.get("score"), (int, float))]
    if not scores or not math.isfinite(scores[0]):
        return None
    s = np.asarray(scores, float)
    s = np.exp(s - s.max())
    return float(s[0] / s.sum())


def squad_mistakes(b: Builder, t: TaskRun) -> None:
    b.add(H(3, "Most confident mistakes"))
    for rows_, label in ((t.zs_rows, "zero-shot"), (t.ft_rows, "fine-tuned")):
        if not rows_:
            continue
        wrong = [r for r in rows_ if not r["em"]]
        conf = {}
        if label == "fine-tuned" and t.ft_nbest:
            conf = {r["id"]: _span_confidence(t.ft_nbest.get(r["id"])) for r in wrong}
        if any(v is not None for v in conf.values()):
            wrong.sort(key=lambda r: -(conf.get(r["id"]) or 0.0))
            how = ("the ones the model was surest of (confidence: softmax of the span scores over its n-best "
                   "list)")
        else:
            wrong.sort(key=lambda r: r["f1"])
            how = ("greedy generation keeps no confidence score, so these are the lowest-F1 ones in file "
                   "order" if label == "zero-shot" else "lowest F1 first")
        b.add(P(f"{label}: {len(wrong)} of {len(rows_)} answers are not an exact match; "
                f"{min(TOP_MISTAKES, len(wrong))} shown, {how}:"))
        if wrong:
            b.add(Table(["question", "gold answer(s)", "prediction", "F1", "confidence"],
                        [[r.get("question", r["id"]),
                          " / ".join(dict.fromkeys(r.get("gold") or ["(no answer)"])),
                          r["prediction"] or "(no answer)", f"{100 * r['f1']:.0f}",
                          "–" if conf.get(r["id"]) is None else f"{conf[r['id']]:.3f}"]
                         for r in wrong[:TOP_MISTAKES]], "lllrr"))


# ------------------------------------------------------------------------------------------------------------
# Analysis: sentences from this run's numbers


def _small(n: int, width: float | None, unit: str) -> str | None:
    if n >= SMALL_N:
        return None
    w = f" (the 95% interval of the difference spans {width:.1f} points)" if width is not None else ""
    return (f"Only {n} {unit} were compared{w}: differences much smaller than that interval cannot be told "
            "apart from sampling noise, and the numbers are a check of the pipeline more than a measurement.")


def _train_sentence(t: TaskRun) -> str | None:
    ft = t.ft or {}
    if not ft:
        return None
    parts = []
    if ft.get("train_examples") is not None and ft.get("train_steps") is not None:
        parts.append(f"the fine-tuned model was trained on {n_(ft['train_examples'])} examples for "
                     f"{n_(ft['train_steps'])} optimizer steps ({ft.get('method', '?')} fine-tuning)")
    log = [e for e in t.train_log or [] if isinstance(e.get("loss"), (int, float))]
    if len(log) >= 2:
        k = max(1, len(log) // 4)  # average a quarter of the logged values at each end: one value is noisy
        first = float(np.mean([e["loss"] for e in log[:k]]))
        last = float(np.mean([e["loss"] for e in log[-k:]]))
        trend = ("fell" if last < 0.9 * first else "barely moved" if last <= 1.1 * first else "rose")
        if k == 1:
            where = f"from {first:.3f} (step {log[0]['step']}) to {last:.3f} (step {log[-1]['step']})"
        else:
            where = (f"from {first:.3f} (mean of steps {log[0]['step']}-{log[k - 1]['step']}) to {last:.3f} "
                     f"(mean of steps {log[-k]['step']}-{log[-1]['step']})")
        parts.append(f"its training loss {trend} {where}")
    if not parts:
        return None
    return f"{t.title}: " + "; ".join(parts) + "."


def _moved(diff: float, metric: str, a: str, b: str) -> str:
    if a == b:
        return f"left {metric} unchanged at {a}"
    return f"{'raised' if diff > 0 else 'lowered'} {metric} from {a} to {b}"


def _missing(t: TaskRun, unit: str) -> str:
    if not t.zs:
        return f"{t.title}: the zero-shot stage has not finished, so there is nothing to compare yet."
    if not t.ft:
        return f"{t.title}: the fine-tuning stage has not finished, so there is nothing to compare yet."
    return f"{t.title}: the two models were not evaluated on the same {unit}, so there is no paired test."


def _n_mismatch(t: TaskRun, n_paired: int, unit: str) -> str | None:
    nz, nf = (t.zs or {}).get("n"), (t.ft or {}).get("n")
    if nz is None or nf is None or nz == nf == n_paired:
        return None
    return (f"{t.title}: the zero-shot model was evaluated on {nz} {unit} and the fine-tuned one on {nf}; "
            f"the comparison and its test use the {n_paired} both saw.")


def sst2_analysis(t: TaskRun) -> list[str]:
    zs, ft = t.zs or {}, t.ft or {}
    out = []
    tests = sst2_tests(t)
    if tests:
        x = tests[0]
        moved = _moved(x.diff, "accuracy", pct(zs.get("accuracy")) + "%", pct(ft.get("accuracy")) + "%")
        s = (f"SST-2: fine-tuning {moved} ({x.diff:+.1f} points, 95% interval {ci(x.diff_ci)}) on {x.n} dev "
             "sentences.")
        if x.significant:
            s += (f" The difference is statistically significant (McNemar, {pval(x.p)}): {x.detail}.")
        else:
            s += (f" The difference is not statistically significant (McNemar, {pval(x.p)} ≥ {ALPHA}); this "
                  "run does not show that either model is better.")
        out.append(s)
        out += [m for m in [_n_mismatch(t, x.n, "sentences")] if m]
        small = _small(x.n, x.diff_ci[1] - x.diff_ci[0], "sentences")
        if small:
            out.append("SST-2: " + small[0].lower() + small[1:])
    elif zs or ft:
        out.append(_missing(t, "sentences"))
    if "uncalibrated_accuracy" in zs and "accuracy" in zs:
        d = 100 * (zs["accuracy"] - zs["uncalibrated_accuracy"])
        method = (zs.get("calibration") or {}).get("method", "calibration")
        if abs(d) >= 0.05:
            out.append(f"SST-2 zero-shot: {method} calibration of the label-word scores moved accuracy from "
                       f"{pct(zs['uncalibrated_accuracy'])}% to {pct(zs['accuracy'])}% ({d:+.1f} points).")
    for m, label in ((zs, "zero-shot"), (ft, "fine-tuned")):
        cm = m.get("confusion_matrix")
        if cm and sum(map(sum, cm)):
            gold_pos = (cm[1][0] + cm[1][1]) / sum(map(sum, cm))
            pred_pos = m.get("predicted_positive_rate", (cm[0][1] + cm[1][1]) / sum(map(sum, cm)))
            if abs(pred_pos - gold_pos) >= 0.10:
                lean = "positive" if pred_pos > gold_pos else "negative"
                out.append(f"SST-2 {label}: predictions lean {lean} ({pct(pred_pos)}% predicted positive, "
                           f"{pct(gold_pos)}% of the gold labels are positive).")
    train = _train_sentence(t)
    if train:
        if (t.ft_meta or {}).get("input_prompt"):
            train = train[:-1] + ("; its classification head started from the zero-shot prompt's label "
                                  "words, so training started from the zero-shot classifier.")
        out.append(train)
    return out


def squad_analysis(t: TaskRun) -> list[str]:
    zs, ft = t.zs or {}, t.ft or {}
    if not zs and not ft:
        return []
    out = []
    tests = {x.metric: x for x in squad_tests(t)}
    if "F1" in tests:
        x = tests["F1"]
        s = (f"{t.title}: fine-tuning {_moved(x.diff, 'F1', num(zs.get('f1')), num(ft.get('f1')))} "
             f"({x.diff:+.1f} points, 95% interval {ci(x.diff_ci)}) on {x.n} dev questions")
        if "EM" in tests:
            s += f", and exact match from {num(zs.get('exact_match'))} to {num(ft.get('exact_match'))}"
        s += "."
        if x.significant:
            s += f" The F1 difference is statistically significant (paired bootstrap, {pval(x.p)})."
        else:
            s += (f" The F1 difference is not statistically significant (paired bootstrap, {pval(x.p)} ≥ "
                  f"{ALPHA}); this run does not show that either model is better.")
        out.append(s)
        out += [m for m in [_n_mismatch(t, x.n, "questions")] if m]
        small = _small(x.n, x.diff_ci[1] - x.diff_ci[0], "questions")
        if small:
            out.append(f"{t.title}: " + small[0].lower() + small[1:])
    elif zs or ft:
        out.append(_missing(t, "questions"))
    for rows_, label in ((t.zs_rows, "zero-shot"), (t.ft_rows, "fine-tuned")):
        answered = [r for r in rows_ or [] if r.get("prediction") and r.get("gold")]
        if len(answered) >= 5:
            pred_len = float(np.mean([len(r["prediction"].split()) for r in answered]))
            gold_len = float(np.mean([min(len(g.split()) for g in r["gold"]) for r in answered]))
            lengths = (f"{t.title} {label}: answers average {pred_len:.1f} words against {gold_len:.1f} "
                       "for the shortest gold answer")
            if pred_len > 1.5 * gold_len:
                out.append(lengths + ", so extra words cost exact match even when the answer is inside.")
            elif pred_len < gold_len / 1.5:
                out.append(lengths + ": they tend to be cut short.")
        empty = [r for r in rows_ or [] if not r.get("prediction")]
        if rows_ and empty and not t.v2:
            out.append(f"{t.title} {label}: {len(empty)} of {len(rows_)} answers are empty (score 0).")
    if t.zs_rows and t.ft_rows:
        groups, counts, a, c = breakdown(t, "qtype")
        big = [(g, n, y - x) for g, n, x, y in zip(groups, counts, a, c) if n >= 10]
        if len(big) >= 2:
            hi = max(big, key=lambda z: z[2])
            lo = min(big, key=lambda z: z[2])
            out.append(f"{t.title}: among question words with at least 10 questions, the F1 change is "
                       f"largest for '{hi[0]}' ({hi[2]:+.1f} points, n={hi[1]}) and smallest for '{lo[0]}' "
                       f"({lo[2]:+.1f}, n={lo[1]}); with groups this small these are descriptive, not "
                       "tested.")
    if t.v2 and "NoAns_f1" in zs and "NoAns_f1" in ft:
        out.append(f"{t.title}: on unanswerable questions the zero-shot model abstained correctly on "
                   f"{num(zs['NoAns_f1'])}% and the fine-tuned model on {num(ft['NoAns_f1'])}%.")
    train = _train_sentence(t)
    if train:
        out.append(train + " Its span head was new (randomly initialised) and learnt only from these "
                   "examples.")
    out.append(f"{t.title}: the data are article-level splits of the official dev set, so the scores are not "
               "comparable to published SQuAD results.")
    return out


# ------------------------------------------------------------------------------------------------------------
# The report


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN/report.md and RUN/report.html (plots in RUN/figures/); returns their paths."""
    import yaml

    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) \
            if (run / "config.yaml").is_file() else None
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{run / 'config.yaml'}: cannot read: {exc}") from exc
    names = _discover(run, config)
    if not names:
        raise UsageError(f"{run}: not a study run folder (no task folders, no params/, no config.yaml tasks)")
    env = _json(run / "environment.json") or {}
    stages = _json(run / "stages.json") or {}
    tasks = [load_task(run, n) for n in names]

    b = Builder(run)
    model = (config or {}).get("model") or next((t.params["model"] for t in tasks if t.params), None)
    intro = f"Run folder {run.name}"
    if model:
        intro += f"; base model {model}"
    dev = env.get("device") or {}
    if dev:
        intro += f"; device {dev.get('type')} ({dev.get('name')})"
    git = env.get("git") or {}
    if git.get("commit"):
        intro += f"; tunelab commit {git['commit'][:12]}"
        intro += " with local changes" if git.get("dirty") else ""
    b.add(P(intro + "."))

    # sections per task (fills b.summary_rows and the analysis)
    body = Builder(run)
    analysis: list[str] = []
    for t in tasks:
        body.add(H(2, t.title))
        param_section(body, t)
        (sst2_section if t.kind == "sst2" else squad_section)(body, t)
        analysis += (sst2_analysis(t) if t.kind == "sst2" else squad_analysis(t))
    param_sentences = [s for t in tasks for s in param_analysis(t)]

    b.add(H(2, "Summary"))
    if body.summary_rows:
        b.add(Table(["task", "metric", "zero-shot", "fine-tuned", "difference (95% CI)", "test", "n"],
                    body.summary_rows, "llrrrrr",
                    caption="Paired tests on the examples both models were evaluated on: McNemar (SST-2), "
                            f"paired bootstrap (SQuAD F1). Significant means p < {ALPHA}."))
    b.add(H(2, "Analysis"))
    b.add(P("Each statement below is generated from this run's numbers, under fixed rules: a difference "
            f"is called significant only when its paired test gives p < {ALPHA}, and fewer than {SMALL_N} "
            "paired examples are flagged as a small sample."))
    b.add(H(3, "Scores"))
    b.add(UL(analysis or ["No evaluation has finished yet."]))
    b.add(H(3, "Parameter counts"))
    b.add(UL(param_sentences or ["The parameter stages have not run yet."]))
    b.blocks += body.blocks

    b.add(H(2, "Run"))
    rows = []
    for sid, info in stages.items():
        rows.append([sid, f"{info.get('seconds', 0):.1f}", info.get("finished", "")])
    if rows:
        total = sum(float(v.get("seconds", 0)) for v in stages.values())
        rows.append(["total of the stage times", f"{total:.1f}", ""])
        b.add(Table(["stage", "seconds", "finished (UTC)"], rows, "lrl"))
    if env:
        pk = env.get("packages") or {}
        items = [f"{k} {v}" for k, v in pk.items() if v]
        b.add(P("Environment: Python " + str(env.get("python", "?")) + ", " + ", ".join(items)
                + f"; seed {env.get('seed')}; {len(env.get('invocations', [])) or 1} invocation(s). Details "
                  "in environment.json; the resolved configuration is config.yaml."))

    title = "tunelab study: zero-shot vs fine-tuned" + (f" ({model})" if model else "")
    md_path, html_path = run / "report.md", run / "report.html"
    _write(md_path, render_md(title, b.blocks))
    _write(html_path, render_html(title, b.blocks))
    return md_path, html_path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["ALPHA", "UL", "H", "Img", "P", "Table", "build_report", "render_html", "render_md"]
