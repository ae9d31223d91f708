"""The study report: report.md and a self-contained report.html from a run folder.

Both are rendered from one list of blocks (document.py). Every sentence of the analysis is generated from the
run's numbers under explicit conditions (significance only when p < ALPHA, a warning when n is small, ...).
The run folder is read by run_folder.py; each task gets the parameter section (sections.py) and its kind's
section and analysis (classification.py, extractive_qa.py), then its seeds and fine-tuning variants
(seeds.py, variants.py); stats.py formats numbers and pairs the examples.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import UsageError
from tunelab.outputs import read_json, write_text
from tunelab.report import classification, extractive_qa, seeds, variants
from tunelab.report.document import UL, Builder, H, Img, P, Table, render_html, render_md
from tunelab.report.run_folder import discover, load_task_run
from tunelab.report.sections import param_analysis, param_section
from tunelab.report.stats import ALPHA, SMALL_N

KINDS = {"classification": classification, "extractive_qa": extractive_qa}  # each: section(b, t), analysis(t)


def _json(path: Path):
    return read_json(path) if path.is_file() else None


def _read_config(run: Path) -> dict | None:
    from tunelab.config_files import read_mapping

    if not (run / "config.yaml").is_file():
        return None
    return read_mapping(run / "config.yaml", "study run's config.yaml", "model, tasks, ...")


def _intro(run: Path, model: str | None, env: dict) -> P:
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
    return P(intro + ".")


def _summary(
    b: Builder, summary_rows: list[list[str]], analysis: list[str], param_sentences: list[str]
) -> None:
    b.add(H(2, "Summary"))
    if summary_rows:
        b.add(
            Table(
                ["task", "metric", "prompting", "prompted", "fine-tuned", "difference (95% CI)", "test", "n"],
                summary_rows,
                "lllrrrrr",
                caption="Paired tests on the examples both models were evaluated on: McNemar (classification "
                f"accuracy), paired bootstrap (QA F1). Significant means p < {ALPHA}.",
            )
        )
    b.add(H(2, "Analysis"))
    b.add(
        P(
            "Each statement below is generated from this run's numbers, under fixed rules: a difference "
            f"is called significant only when its paired test gives p < {ALPHA}, and fewer than {SMALL_N} "
            "paired examples are flagged as a small sample."
        )
    )
    b.add(H(3, "Scores"))
    b.add(UL(analysis or ["No evaluation has finished yet."]))
    b.add(H(3, "Parameter counts"))
    b.add(UL(param_sentences or ["The parameter stages have not run yet."]))


def _run_section(b: Builder, stages: dict, env: dict) -> None:
    b.add(H(2, "Run"))
    rows = [[sid, f"{info.get('seconds', 0):.1f}", info.get("finished", "")] for sid, info in stages.items()]
    if rows:
        total = sum(float(v.get("seconds", 0)) for v in stages.values())
        rows.append(["total of the stage times", f"{total:.1f}", ""])
        b.add(Table(["stage", "seconds", "finished (UTC)"], rows, "lrl"))
    if env:
        pk = env.get("packages") or {}
        items = [f"{k} {v}" for k, v in pk.items() if v]
        b.add(
            P(
                "Environment: Python "
                + str(env.get("python", "?"))
                + ", "
                + ", ".join(items)
                + f"; seed {env.get('seed')}; {len(env.get('invocations', [])) or 1} invocation(s). Details "
                "in environment.json; the resolved configuration is config.yaml."
            )
        )


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write RUN/report.md and RUN/report.html (plots in RUN/figures/); returns their paths."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder")
    config = _read_config(run)
    outputs = ("tunelab.json", "eval/metrics.json", "metrics.json", "seeds.json")
    if config is None and any((run / f).is_file() for f in outputs):
        raise UsageError(
            f"{run}: not a study run folder but the output of one command (finetune, evaluate or zeroshot), "
            "whose results are in its metrics.json (finetune: eval/metrics.json, --seeds: seeds.json); "
            "`tunelab report` reads the folder of `tunelab study`"
        )
    names = discover(run, config)
    if not names:
        raise UsageError(f"{run}: not a study run folder (no task folders, no params/, no config.yaml tasks)")
    env = _json(run / "environment.json") or {}
    tasks = [load_task_run(run, n, config) for n in names]
    model = (config or {}).get("model") or next((t.params["model"] for t in tasks if t.params), None)

    body = Builder(run)  # the sections per task; they fill the summary rows
    analysis: list[str] = []
    for t in tasks:
        body.add(H(2, t.title))
        param_section(body, t)
        KINDS[t.kind].section(body, t)
        analysis += KINDS[t.kind].analysis(t)
        analysis += seeds.section(body, t, KINDS[t.kind].tests)  # several fine-tuning seeds
        analysis += variants.section(body, t, KINDS[t.kind].tests)  # other fine-tuning methods
    b = Builder(run)
    b.add(_intro(run, model, env))
    _summary(b, body.summary_rows, analysis, [s for t in tasks for s in param_analysis(t)])
    b.blocks += body.blocks
    _run_section(b, _json(run / "stages.json") or {}, env)

    title = "tunelab study: zero-shot vs fine-tuned" + (f" ({model})" if model else "")
    md_path, html_path = run / "report.md", run / "report.html"
    write_text(md_path, render_md(title, b.blocks))
    write_text(html_path, render_html(title, b.blocks))
    return md_path, html_path


__all__ = ["ALPHA", "UL", "H", "Img", "P", "Table", "build_report", "render_html", "render_md"]
