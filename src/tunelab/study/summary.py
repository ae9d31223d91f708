"""The study's final zero-shot vs fine-tuned table, for the console (with `rich`) and trackers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tunelab.metrics import mode_name
from tunelab.outputs import read_json, write_text


def summary_rows(study) -> list[dict]:
    """One row per task, fine-tuned model and headline metric (the model card's): zero-shot, fine-tuned (mean
    and sd over the seeds when there are several) and the parameters before and after; the main fine-tuning
    first, then each of the task's variants (`variant` names it; None for the main one)."""
    rows = []
    for name in study.cfg.enabled:
        task = study.cfg.tasks[name]
        zs_file = study.task_dir(name) / "zeroshot" / "metrics.json"
        ft = [read_json(f) for f in study.finetune_metrics_files(name) if f.is_file()]
        if not zs_file.is_file() or not ft:
            continue
        zs = read_json(zs_file)
        params = read_json(study.params_file(name)) if study.params_file(name).is_file() else {}
        models = [(None, study.c["tasks"][name]["finetune"]["method"], ft, params)]
        for v in study.variants(name):
            f = study.variant_dir(name, v) / "eval" / "metrics.json"
            if f.is_file():
                method = study.c["tasks"][name]["variants"][v]["method"]
                models.append((v, method, [read_json(f)], (params.get("variants") or {}).get(v) or {}))
        zs_task = task.for_metrics(zs)
        for variant, method, metrics, counts in models:
            for key, label, value in zs_task.metric_rows(zs):
                tuned = [v for m in metrics for k, _, v in task.for_metrics(m).metric_rows(m) if k == key]
                rows.append(
                    {
                        "task": name,
                        "variant": variant,
                        "method": method,
                        "metric": label,
                        "key": key,
                        "zeroshot": value,
                        "prompting": mode_name(zs),  # zero-shot, or K-shot
                        "finetuned": statistics.fmean(tuned) if tuned else None,
                        "finetuned_sd": statistics.stdev(tuned) if len(tuned) > 1 else None,
                        "seeds": len(tuned),
                        "params_base": (params.get("base") or {}).get("total"),
                        "params_finetuned": counts.get("finetuned_total"),
                    }
                )
    return rows


def _model(row: dict) -> str:
    """The fine-tuned model of a row: its method, and the variant's name for a variant."""
    v, method = row.get("variant"), str(row.get("method", "-"))
    return method if not v else v if v == method else f"{v} ({method})"


def _tuned(row: dict) -> str:
    if row["finetuned"] is None:
        return "-"
    sd = f" ± {row['finetuned_sd']:.2f}" if row["finetuned_sd"] is not None else ""
    return f"{row['finetuned']:.2f}{sd}"


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else "-"


def _prompted(rows: list[dict]) -> str:
    """The prompted column's name: zero-shot, or K-shot; "prompted" when tasks differ (each cell says)."""
    kinds = set(r.get("prompting", "zero-shot") for r in rows) or {"zero-shot"}
    return kinds.pop() if len(kinds) == 1 else "prompted"


def _prompted_cell(row: dict, column: str) -> str:
    """A row's prompted score; where the column mixes zero-shot and K-shot, with how it was prompted."""
    mixed = column == "prompted"
    return f"{row['zeroshot']:.2f}" + (f" ({row.get('prompting', 'zero-shot')})" if mixed else "")


def markdown_table(rows: list[dict]) -> str:
    column = _prompted(rows)
    lines = [
        f"| task | model | metric | {column} | fine-tuned | params before | params after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {_model(r)} | {r['metric']} | {_prompted_cell(r, column)} | {_tuned(r)} "
            f"| {_count(r['params_base'])} | {_count(r['params_finetuned'])} |"
        )
    return "\n".join(lines)


def print_summary(rows: list[dict], report: Path) -> None:
    """The table in the terminal with rich (aligned columns that fit the terminal; a printed Markdown table
    is hard to read). A task's variants follow its main rows, named `+ <variant> (<method>)`."""
    from rich.console import Console
    from rich.table import Table

    column = _prompted(rows)
    table = Table(title=f"{column} vs fine-tuned")
    table.add_column("task", overflow="fold")  # in a narrow terminal text folds; numbers are never cut
    table.add_column("metric", overflow="fold")
    table.add_column(column, justify="right", no_wrap=True)
    table.add_column("fine-tuned", justify="right")  # "mean ±" / "sd" may wrap
    for col in ("params before", "params after"):
        table.add_column(col, justify="right", no_wrap=True)
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["task"] != r["task"]  # a task's name and parameters once
        new_model = first or rows[i - 1].get("variant") != r.get("variant")  # a variant's name once
        table.add_row(
            r["task"] if first else f"+ {r['variant']}" if new_model else "",
            r["metric"],
            _prompted_cell(r, column),
            _tuned(r),
            _count(r["params_base"]) if first else "",
            _count(r["params_finetuned"]) if new_model else "",
            end_section=i + 1 < len(rows) and rows[i + 1]["task"] != r["task"],
        )
    console = Console()
    console.print(table)
    console.print(f"report: {report}", highlight=False, soft_wrap=True)


def log_summary(names: list[str], logging_dir: Path, config: dict, rows: list[dict]) -> None:
    """The table to the experiment trackers as the run `summary`: one scalar per task, metric and model, and
    the table as text. The report stage runs on every invocation of the study, so the table is logged only
    when it differs from the one logged last (LOGGING_DIR/summary.json), and then replaces it in TensorBoard
    (Tracking.start): a rerun that recomputed nothing logs nothing."""
    if not names:
        return
    from tunelab.tracking import Tracking

    values: dict = {"summary/table": markdown_table(rows)}
    for r in rows:
        tuned = "finetuned" + (f"-{r['variant']}" if r.get("variant") else "")
        values[f"summary/{r['task']}/{r['key']}/zeroshot"] = r["zeroshot"]
        if r["finetuned"] is not None:
            values[f"summary/{r['task']}/{r['key']}/{tuned}"] = r["finetuned"]
    logged, text = Path(logging_dir) / "summary.json", json.dumps(values, sort_keys=True, indent=1) + "\n"
    if logged.is_file() and logged.read_text(encoding="utf-8") == text:
        return
    tracker = Tracking(names, logging_dir, "summary", config)
    try:
        tracker.start()
        tracker.log(values, step=0)
    finally:
        tracker.finish()
    write_text(logged, text)  # once logged: a failure above logs it again next time
