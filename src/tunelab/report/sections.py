"""Report sections every task has: parameter counts, the loss curve, and the sentences of the analysis that do
not depend on the kind of task."""

from __future__ import annotations

import numpy as np

from tunelab.models.heads import HEADS
from tunelab.report.document import Builder, H, P, Table
from tunelab.report.run_folder import ROWS_FILE, TaskRun
from tunelab.report.stats import SMALL_N, n_, signed


def param_section(b: Builder, t: TaskRun) -> None:
    b.add(H(3, "Parameters"))
    p = t.params
    if not p or "task_model" not in p:
        b.add(P("The parameter stage has not run for this task.", "note"))
        return
    base, tm = p["base"], p["task_model"]
    hidden = p.get("hidden_size")
    rows = [
        [
            f"Base causal LM ({p.get('model', tm.get('model'))})",
            n_(base["total"] if "total" in base else base["base_total"]),
            "",
            "input embeddings and LM head are one tied tensor, counted once"
            if p.get("tie_word_embeddings")
            else "input embeddings and a separate LM head",
        ]
    ]
    if p.get("tie_word_embeddings"):
        rows.append(["− lm_head", "0", "", "tied to the input embeddings: dropping it removes no parameters"])
    for name, cnt in tm.get("removed", {}).items():
        rows.append([f"− {name}", f"−{n_(cnt)}", "", "untied LM head, not used by the task model"])
    for name, cnt in tm.get("added", {}).items():
        rows.append([f"+ {name}", signed(cnt), "", _explain_head(name, cnt, hidden, p.get("num_labels"))])
    rows.append(
        [
            "= Task model (counted from the config)",
            n_(tm["total"]),
            signed(tm["delta"]),
            "base + head − unused LM head",
        ]
    )
    fin = p.get("finetuned")
    if fin:
        same = fin["total"] == tm["total"]
        how = "loaded from the saved folder and counted" + (
            " (LoRA adapter merged, as used for inference)" if fin.get("lora_adapter") is not None else ""
        )
        rows.append(
            [
                "Fine-tuned model (loaded)",
                n_(fin["total"]),
                signed(fin["total"] - base["total"]),
                how + ("; equals the task model" if same else "; DIFFERS from the task model"),
            ]
        )
    share = 100 * tm["trainable"] / max(tm["total"], 1)
    rows.append(
        [
            f"Trained during fine-tuning ({tm['method']})",
            n_(tm["trainable"]),
            f"{share:.2f}%",
            _trainable_note(tm),
        ]
    )
    if fin and fin.get("safetensors_numel"):
        saved = ", ".join(f"{k}: {n_(v)}" for k, v in fin["safetensors_numel"].items())
        rows.append(
            [
                "Tensors saved on disk",
                n_(sum(fin["safetensors_numel"].values())),
                "",
                f"{fin.get('saved')} ({saved})",
            ]
        )
    b.add(
        Table(
            ["", "parameters", "change", "where it comes from"],
            rows,
            "lrrl",
            caption="Exact counts (no rounding); shared tensors are counted once.",
        )
    )


def _explain_head(name: str, cnt: int, hidden: int | None, labels: int | None) -> str:
    if name == HEADS["classification"].module and hidden and labels and hidden * labels == cnt:
        return f"classification head: hidden size {hidden} × {labels} labels, no bias = {n_(cnt)}"
    if name == HEADS["span"].module and hidden and hidden * 2 + 2 == cnt:
        return f"span head: hidden size {hidden} × 2 (start, end) + 2 biases = {n_(cnt)}"
    return "new task head"


def _trainable_note(tm: dict) -> str:
    if tm["method"] == "full":
        return "every parameter"
    if tm["method"] == "head":
        return "the new head only; the body is frozen"
    if tm["method"] == "lora":
        return (
            f"LoRA adapter {n_(tm.get('adapter', 0))} + the head; the adapter is extra to the model's "
            "count (merged into the weights on export)"
        )
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
    s = (
        f"{t.title}: the task model has {n_(tm['total'])} parameters, exactly {signed(tm['delta'])} "
        f"against the base model's {n_(base_total)}; the difference is {parts}"
    )
    if removed:
        s += " minus the unused LM head (" + ", ".join(f"−{n_(v)}" for v in removed.values()) + ")"
    elif p.get("tie_word_embeddings"):
        s += "; the LM head is tied to the embeddings, so dropping it removes nothing"
    out.append(s + ".")
    fin = p.get("finetuned")
    if fin:
        if fin["total"] == tm["total"]:
            total = n_(fin["total"])
            out.append(
                f"{t.title}: the fine-tuned model, loaded from disk, has {total} parameters, the same "
                "as the task model: fine-tuning changed the values of the weights, not their number."
            )
        else:
            out.append(
                f"{t.title}: the fine-tuned model loaded from disk has {n_(fin['total'])} parameters, "
                f"{signed(fin['total'] - tm['total'])} against the count from the config; check the "
                "saved folder."
            )
    if tm["method"] == "lora":
        training = tm.get("training_total")  # absent from run folders written before it was recorded
        peft = (
            f"; {100 * tm['trainable'] / training:.2f}% of the {n_(training)} of the model while training"
            if training
            else ""
        )
        out.append(
            f"{t.title}: LoRA trained {n_(tm['trainable'])} parameters "
            f"({100 * tm['trainable'] / max(tm['total'], 1):.2f}% of the task model's count{peft}), of "
            f"which {n_(tm.get('adapter', 0))} are adapter matrices."
        )
    elif tm["method"] == "full":
        out.append(f"{t.title}: full fine-tuning updated all {n_(tm['trainable'])} parameters.")
    return out


def loss_section(b: Builder, t: TaskRun) -> None:
    if not t.train_log:
        return
    from tunelab.report.plots import loss_curve

    method = (t.ft_meta or {}).get("method") or (t.train_cfg or {}).get("method", "")
    path = loss_curve(t.train_log, b.fig(f"{t.name}-loss.png"), title=f"{t.title} {method} fine-tuning: loss")
    b.img(path, f"{t.title} training loss")


def small_sample(n: int, width: float | None, unit: str) -> str | None:
    if n >= SMALL_N:
        return None
    if not width:  # no interval, or one of zero width: nothing to measure the differences against
        return (
            f"Only {n} {unit} were compared: the numbers are a check of the pipeline more than a measurement."
        )
    return (
        f"Only {n} {unit} were compared (the 95% interval of the difference spans {width:.1f} points): "
        "differences much smaller than that interval cannot be told apart from sampling noise, and the "
        "numbers are a check of the pipeline more than a measurement."
    )


def train_sentence(t: TaskRun) -> str | None:
    ft = t.ft or {}
    if not ft:
        return None
    parts = []
    if ft.get("train_examples") is not None and ft.get("train_steps") is not None:
        parts.append(
            f"the fine-tuned model was trained on {n_(ft['train_examples'])} examples for "
            f"{n_(ft['train_steps'])} optimizer steps ({ft.get('method', '?')} fine-tuning)"
        )
    log = [e for e in t.train_log or [] if isinstance(e.get("loss"), (int, float))]
    if len(log) >= 2:
        k = max(1, len(log) // 4)  # average a quarter of the logged values at each end: one value is noisy
        first = float(np.mean([e["loss"] for e in log[:k]]))
        last = float(np.mean([e["loss"] for e in log[-k:]]))
        trend = "fell" if last < 0.9 * first else "barely moved" if last <= 1.1 * first else "rose"
        if k == 1:
            where = f"from {first:.3f} (step {log[0]['step']}) to {last:.3f} (step {log[-1]['step']})"
        else:
            where = (
                f"from {first:.3f} (mean of steps {log[0]['step']}-{log[k - 1]['step']}) to {last:.3f} "
                f"(mean of steps {log[-k]['step']}-{log[-1]['step']})"
            )
        parts.append(f"its training loss {trend} {where}")
    if not parts:
        return None
    return f"{t.title}: " + "; ".join(parts) + "."


def moved(diff: float, metric: str, a: str, b: str) -> str:
    if a == b:
        return f"left {metric} unchanged at {a}"
    return f"{'raised' if diff > 0 else 'lowered'} {metric} from {a} to {b}"


def without_rows(t: TaskRun) -> list[str]:
    """The finished models whose per-example results are not in the run folder."""
    models = ((t.zs, t.zs_rows, t.prompting), (t.ft, t.ft_rows, "fine-tuned"))
    return [label for m, rows, label in models if m and not rows]


def _no_rows(t: TaskRun, who: list[str]) -> str:
    models = " and the ".join(who) + (" models" if len(who) > 1 else " model")
    return f"the run folder has no per-example results ({ROWS_FILE[t.kind]}) of the {models}"


def no_mistakes_listed(t: TaskRun) -> str | None:
    """Why the mistakes of a finished model are not listed: its per-example results are missing."""
    who = without_rows(t)
    if not who:
        return None
    said = _no_rows(t, who) + f", so {'their' if len(who) > 1 else 'its'} mistakes are not listed."
    return said[0].upper() + said[1:]


def missing(t: TaskRun, unit: str, n_paired: int = 0) -> str:
    """Why there is no paired test; `n_paired`: the examples both models were evaluated on."""
    if not t.zs:
        return f"{t.title}: the {t.prompting} stage has not finished, so there is nothing to compare yet."
    if not t.ft:
        return f"{t.title}: the fine-tuning stage has not finished, so there is nothing to compare yet."
    who = without_rows(t)
    if who:
        return f"{t.title}: {_no_rows(t, who)}, so there is no paired test."
    if n_paired == 1:
        return (
            f"{t.title}: the two models were evaluated on only one {t.task.unit_singular} in common, too few "
            "for a paired test."
        )
    return f"{t.title}: the two models were not evaluated on the same {unit}, so there is no paired test."


def n_mismatch(t: TaskRun, n_paired: int, unit: str) -> str | None:
    nz, nf = (t.zs or {}).get("n"), (t.ft or {}).get("n")
    if nz is None or nf is None or nz == nf:  # the same count but fewer pairs: see changed_examples
        return None
    return (
        f"{t.title}: the {t.prompting} model was evaluated on {nz} {unit} and the fine-tuned one on {nf}; "
        f"the comparison and its test use the {n_paired} both saw."
    )


def _shown(identity: dict) -> str:
    parts = [repr(v if not isinstance(v, str) or len(v) <= 60 else v[:57] + "...") for v in identity.values()]
    return " / ".join(p for p in parts if p != "None")


def changed_examples(t: TaskRun, key: str, same: tuple[str, ...], n_paired: int | None) -> str | None:
    """A warning when rows of the two models share a line (question id) but not the example: the data file
    changed between the prompted (zero- or K-shot) and the fine-tuning stage."""
    from tunelab.report.stats import mismatched, plural

    m = mismatched(t.zs_rows, t.ft_rows, key, same)
    if m is None:
        return None
    unit, what = t.task.unit, {"line": "line", "id": "question id"}.get(key, key)
    s = (
        f"{t.title}: WARNING: {plural(m.count, t.task.unit_singular)} carry the same {what} in the "
        f"{t.prompting} and the fine-tuned results but are different examples ({what} {m.first}: "
        f"{_shown(m.zs)} {t.prompting}, {_shown(m.ft)} fine-tuned): the evaluation data changed between the "
        "two stages. "
        "They are left out of the paired comparison"
    )
    if n_paired:
        s += f", which uses only the {n_paired} {unit} that are the same in both"
    else:
        s += f"; no {t.task.unit_singular} is the same in both, so there is no paired test"
    return s + ". Rerun the study with the data you mean: it redoes the stages whose data changed."


def data_note(t: TaskRun) -> str:
    """What the evaluation data are (the task's description of its files), and what follows for comparing the
    scores with published ones."""
    from pathlib import Path

    m = t.ft or t.zs or {}
    data = m.get("data")
    file, split = t.task.describe_file(data), t.task.split_of(data)
    if file is None:
        shown = f" ({Path(data).name})" if data else ""
        return (
            f"{t.title}: the evaluation data{shown} are a file of your own, not one of the task's "
            "splits: the scores are not comparable with published results."
        )
    name = file.name or f"the {split} file {Path(file.path).name}"
    if file.note:
        return f"{t.title}: the evaluation data are {name}: {file.note}."
    if not file.official:
        return (
            f"{t.title}: the evaluation data are {name}, not an official split: the scores are not "
            "comparable with published results."
        )
    said = f"{t.title}: the evaluation data are {name}, the official split"
    train = t.task.describe_file((t.ft or {}).get("train_data"))
    if train is not None and train.note:
        said += f"; the training data are {train.name}: {train.note}"
    n = (t.ft or {}).get("train_examples")
    if n is not None:
        said += (
            f". Published scores come from training on the whole training set; this model trained on "
            f"{n_(n)} examples"
        )
    return said + "."
