"""The `tunelab` command: every subcommand's flags (the option flags generated from tunelab.options) and what
it calls. A `--task` is a built-in task (sst2, squad, squad_v2) or a task file; user errors exit with 2.

argparse (the standard library) rather than click/typer: the flags are generated from tunelab.options, which
argparse takes as they are, and nothing here needs another dependency."""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys

from tunelab import __version__, signals
from tunelab.errors import DataError, UsageError
from tunelab.options import (
    ECO_RUN_OPTIONS,
    EVALUATE_OPTIONS,
    FINETUNE_EXTRAS,
    TRAIN_OPTIONS,
    ZEROSHOT_OPTIONS,
    add_flags,
    given,
)

MULTI_PROCESS = ("finetune", "zeroshot", "evaluate")  # the commands that can run under accelerate launch
LOADS_MODELS = (
    "params",
    "zeroshot",
    "finetune",
    "evaluate",
    "study",
    "predict",
    "export",
)  # take --trust-remote-code
TASK_HELP = "a built-in task (sst2, squad, squad_v2) or a task file (YAML) of your own"


def _add_data_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder laid out like ../shared/data (default: $TUNELAB_DATA_DIR)")
    p.add_argument("--data-file", help="one data file instead of the task's split")
    p.add_argument(
        "--dataset",
        metavar="ID[:CONFIG]",
        help="read the split through `datasets` instead of files: a Hub id with an optional config "
        "(nyu-mll/glue:sst2, rajpurkar/squad, rajpurkar/squad_v2) or a local dataset folder "
        "(DatasetDict.save_to_disk, or parquet/JSON/CSV files); dev is its `validation` split; "
        "pip install 'tunelab[hub]'",
    )
    p.add_argument("--split", default="dev", help="split of the task's data (default: dev)")
    p.add_argument(
        "--version",
        choices=["1.1", "2.0"],
        help="extractive QA: score as this SQuAD version (squad with 2.0 is squad_v2; a file with "
        "unanswerable questions is scored as 2.0 anyway)",
    )
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


VERBOSE_HELP = (
    "also show the libraries' progress bars, log messages and warnings (transformers, datasets, "
    "accelerate, ...); by default only tunelab's own bar per stage and its results"
)


def _add_model_parsers(sub) -> None:
    p = sub.add_parser(
        "params",
        help="exact parameter counts from the config alone (no weights, no download)",
        description="Count total and trainable parameters of a base model and its task model.",
    )
    p.add_argument(
        "model",
        help="alias (smollm2-135m, llama-3.2-1b), local folder or Hub id; a fine-tuned or exported folder "
        "counts the task model it holds (its base, task and method, from its tunelab.json)",
    )
    p.add_argument("--task", help="count the task model (adds its head): " + TASK_HELP)
    add_flags(p, TRAIN_OPTIONS, names=("method", "lora_r", "lora_alpha", "lora_targets"), defaults=True)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("data", help="inspect data files", description="Inspect data files.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser(
        "check",
        help="validate a file and say what it holds",
        description="Validate a data file and summarise it: by default an SST-2 (TSV/CSV/JSONL) "
        "or SQuAD (JSON) file; with --task, a file of that task. With --task alone, every split of the "
        "task's own data.",
    )
    c.add_argument("path", nargs="?", help="the data file (or give --dataset, or --task alone)")
    c.add_argument(
        "--task", help="read the file as this task's; alone, check the task's own data files: " + TASK_HELP
    )
    c.add_argument("--data-dir", help="with --task alone: the data folder (default: $TUNELAB_DATA_DIR)")
    c.add_argument(
        "--dataset",
        metavar="ID[:CONFIG]",
        help="check a split of a dataset read through `datasets` instead (a Hub id or a local folder; "
        "with --task, default: the built-in task whose Hub dataset it is)",
    )
    c.add_argument(
        "--split",
        help="with --dataset: the task's split (default: dev); with --task alone: one split (default: all)",
    )
    c.add_argument("--json", action="store_true", help="print one JSON object")
    # also after ACTION; SUPPRESS: when absent here, `data --verbose check` keeps its value
    c.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def _add_run_parsers(sub) -> None:
    p = sub.add_parser(
        "zeroshot",
        help="evaluate a base model zero-shot (prompting)",
        description="Zero-shot evaluation: classification by scoring label words, extractive QA "
        "by generation.",
    )
    p.add_argument("model")
    p.add_argument("--task", required=True, help=TASK_HELP)
    _add_data_opts(p)
    p.add_argument("--train-file", help="where --shots examples come from, instead of the task's train split")
    add_flags(p, ZEROSHOT_OPTIONS)
    add_flags(p, ECO_RUN_OPTIONS, names=("report_to",), default_note="")

    p = sub.add_parser(
        "finetune",
        help="fine-tune a task head (full, LoRA or head-only)",
        description="Fine-tune on the train split, evaluate on dev, save a Hugging Face folder.",
    )
    p.add_argument("model")
    p.add_argument("--task", required=True, help=TASK_HELP)
    _add_data_opts(p)
    p.add_argument("--train-file", help="training file instead of the task's train split")
    p.add_argument(
        "--config",
        help="YAML file of training options: keys as the training flags after --extra-train (learning_rate, "
        "epochs, method, ...; _ for -)",
    )
    add_flags(p, FINETUNE_EXTRAS)
    add_flags(p, TRAIN_OPTIONS)
    add_flags(p, ECO_RUN_OPTIONS, default_note="")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")

    p = sub.add_parser(
        "evaluate",
        help="evaluate a fine-tuned model folder",
        description="Evaluate a folder written by `tunelab finetune`.",
    )
    p.add_argument("model_dir")
    p.add_argument("--task", help="default: the task the folder was fine-tuned for; " + TASK_HELP)
    _add_data_opts(p)
    add_flags(p, EVALUATE_OPTIONS, defaults=True)
    add_flags(p, ECO_RUN_OPTIONS, names=("report_to",), default_note="")


def _add_study_parsers(sub) -> None:
    from tunelab.study.config import PRESETS

    p = sub.add_parser(
        "study",
        help="the whole comparison: parameters, zero-shot, fine-tuning, evaluation, report",
        description="Run, for each task of the configuration, parameter counts, zero-shot evaluation, "
        "fine-tuning and evaluation of the fine-tuned model into one run folder, then write report.md and "
        "report.html. Rerunning the same command skips finished stages and resumes the unfinished one.",
    )
    p.add_argument("--config", help="study YAML file (schema: `tunelab study --print-schema`)")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        help="built-in configuration (default smoke when no --config is given; a --config file alone goes "
        "over the built-in defaults, whole splits; with both, the file's options go over the preset's)",
    )
    p.add_argument("--out", help="run folder (default runs/<preset or config name>)")
    p.add_argument(
        "--set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one option, e.g. sst2.finetune.learning_rate=1e-4 (value read as YAML; repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--print-schema", action="store_true", help="print the configuration schema and exit")
    p.add_argument(
        "--report-to",
        metavar="TRACKERS",
        help="experiment trackers (tensorboard, wandb, mlflow, trackio or none; = --set report_to=...); "
        "TensorBoard logs go to RUN/tracking/",
    )
    p.add_argument("--seeds", metavar="A,B,...", help="fine-tune once per seed (= --set seeds=[A,B,...])")
    p.add_argument(
        "--redo",
        action="append",
        default=[],
        metavar="STAGES",
        help="redo these stages even if finished and up to date: a stage id or pattern, e.g. sst2/zeroshot, "
        "'sst2/*', '*' (repeatable; each stage's new output replaces its old one; ids as in stages.json)",
    )

    p = sub.add_parser(
        "report",
        help="rebuild report.md and report.html of a study run folder",
        description="Rebuild report.md and a self-contained report.html from a study run folder.",
    )
    p.add_argument("run_dir", help="the run folder written by `tunelab study`")


def _add_use_parsers(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="run a fine-tuned model on new texts or questions",
        description="Classify texts or answer questions about a passage with a folder written by "
        "`tunelab finetune` or `tunelab export` (its task says which). Output: one tab-separated "
        "line per input: label, probability, text (classification) or answer, probability, score, "
        "question (QA), with tabs, line breaks and backslashes in them written \\t, \\n, \\r, \\\\; "
        "--json prints one JSON object instead.",
    )
    p.add_argument("model_dir", help="a folder written by `tunelab finetune` or `tunelab export`")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="classification: texts to classify")
    p.add_argument(
        "--pair", action="append", help="sentence-pair tasks: the second text of each TEXT (repeat)"
    )
    p.add_argument(
        "--file",
        help="classification: one text a line (a tab between a pair's texts), or the task's "
        ".tsv/.csv/.jsonl; QA: a SQuAD .json or a .jsonl of {context, question}; - reads stdin",
    )
    p.add_argument("--question", action="append", help="QA: a question (repeat for several on one context)")
    p.add_argument("--context", help="QA: the passage the answer is taken from")
    p.add_argument("--batch-size", default=64, metavar="N|auto", help="inputs per forward pass (default: 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser(
        "export",
        help="write a Hub-ready folder (merged weights, model card) for a fine-tuned model",
        description="Export a folder written by `tunelab finetune` for the Hugging Face Hub: "
        "safetensors weights (LoRA merged), tokenizer, and a model card with the measured metrics.",
    )
    p.add_argument("model_dir", help="a folder written by `tunelab finetune`")
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--base-model", help="Hub id of the base model for the card (default: from the alias)")

    p = sub.add_parser(
        "push",
        help="upload an exported folder to the Hugging Face Hub",
        description="Upload a folder written by `tunelab export` to a Hub model repo (created "
        "if missing). The token comes from HF_TOKEN or `hf auth login`.",
    )
    p.add_argument("folder", help="a folder written by `tunelab export`")
    p.add_argument("--repo-id", required=True, help="USER/NAME or ORG/NAME")
    p.add_argument(
        "--private",
        action="store_true",
        help="create the repo private (an existing repo keeps its visibility)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the files that would be uploaded; send nothing"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="How much does fine-tuning a small decoder LLM buy over prompting it zero-shot? "
        "Parameter accounting, zero-shot and fine-tuned classification and extractive QA (SST-2, SQuAD, or "
        "tasks of your own).",
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_model_parsers, _add_run_parsers, _add_study_parsers, _add_use_parsers):
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    for name in LOADS_MODELS:
        sub.choices[name].add_argument(
            "--trust-remote-code",
            action="store_true",
            help="run Python code a model ships with it (transformers' trust_remote_code; off by default: "
            "pass it only for a source you trust)",
        )
    return parser


# ------------------------------------------------------------------------------------------------------------
# Commands


def _task(args):
    from tunelab.tasks import load_task

    task = load_task(args.task)
    return task.for_version(args.version) if getattr(args, "version", None) else task


def _options(args, opts: dict, task) -> dict:
    """The options of `opts` given on the command line, checked, and refused for a task of another kind."""
    values = given(args, opts)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if not opts[name].applies_to(task.kind):
            raise UsageError(
                f"{flag} applies to {' and '.join(opts[name].kinds)} tasks; {task.name} is a {task.kind} task"
            )
        values[name] = opts[name].check(value, None, flag)
    return values


def _inputs(args, task) -> list[tuple[str, str | None]]:
    """What a command reads besides its model and data files (runs.* add those), for `--out` to keep
    apart from: the data folder, a training-options file, a task file, a training file, a local dataset
    folder."""
    from tunelab.data.folder import ENV_VAR, resolve_data_dir

    read = [
        ("training-options file", getattr(args, "config", None)),
        ("task file", task.source),
        ("training file", getattr(args, "train_file", None)),
        ("dataset folder", getattr(args, "dataset", None)),  # (a Hub id is no path: nothing to protect)
    ]
    if args.data_dir or (task.needs_data_dir() and os.environ.get(ENV_VAR)):
        try:
            read.append(("data folder", str(resolve_data_dir(args.data_dir))))
        except UsageError:
            pass  # not a folder: nothing there to protect (loading the data says what is wrong)
    return read


def cmd_params(args) -> int:
    from pathlib import Path

    from tunelab.models import LoraOptions, load_config, param_report
    from tunelab.models.params import format_report

    meta_file = Path(args.model).expanduser() / "tunelab.json"
    if meta_file.is_file() and not args.task:  # a fine-tuned folder: the task model it holds
        from tunelab.outputs import read_json
        from tunelab.tasks import task_from_meta

        meta = read_json(meta_file, "the folder's tunelab.json")
        trained = Path(args.model).expanduser() / "training_config.json"
        for key, value in (read_json(trained, "training_config.json") if trained.is_file() else {}).items():
            if key in ("method", "lora_r", "lora_alpha", "lora_targets"):
                setattr(args, key, value)
        args.method = meta.get("method", args.method)
        base = meta.get("base_model_path")  # (the folder's own machine: elsewhere, the base it names)
        base = base if isinstance(base, str) and Path(base).exists() else meta.get("base_model")
        if not isinstance(base, str) or not base:
            raise UsageError(f"{meta_file}: names no base_model, so there is no model to count: give --task")
        args.model, task = base, task_from_meta(meta, str(meta_file))
    else:
        task = _task(args) if args.task else None
    targets = TRAIN_OPTIONS["lora_targets"].check(args.lora_targets, None, "--lora-targets")
    for name in ("lora_r", "lora_alpha"):  # the schema's bounds, as for finetune
        TRAIN_OPTIONS[name].check(getattr(args, name), None, "--" + name.replace("_", "-"))
    labels = task.head_options().get("labels") if task else None
    report = param_report(
        args.model,
        load_config(args.model),
        task.head if task else None,
        args.method,
        LoraOptions(args.lora_r, args.lora_alpha, 0.0, tuple(targets)),
        len(labels or ()) or 2,
    )
    name = task.name if task else None
    print(
        json.dumps({"task": name, **report.to_dict()}, indent=2) if args.json else format_report(report, name)
    )
    return 0


def cmd_data(args) -> int:
    from tunelab.tasks.builtin import task_for_file

    if args.path is not None and args.dataset is not None:
        raise UsageError("data check: give a data file or --dataset ID[:CONFIG], not both")
    if args.path is None and args.dataset is None:
        if not args.task:
            raise UsageError("data check: give a data file, --dataset ID[:CONFIG], or --task TASK alone")
        return _check_task_data(_task(args), args)
    if args.data_dir:
        raise UsageError("data check: --data-dir goes with --task alone (a data file is read as given)")
    if args.dataset is not None:
        task = _task(args) if args.task else _task_of_dataset(args.dataset)
        examples, where = task.load_split(args.split or "dev", dataset=args.dataset)
        summary = {"task": task.name, "file": where, **task.summarize(examples)}
    else:
        if args.split:
            raise UsageError("data check: --split goes with --dataset or --task alone, not with a data file")
        task = _task(args) if args.task else task_for_file(args.path)
        try:
            summary = task.check_file(args.path)
        except DataError as exc:
            if args.task or not os.path.isfile(args.path):  # (a missing file was read as nothing)
                raise
            # without --task the file is read as the built-in task of its suffix: say so
            hint = (
                f" [read as {task.title}, the built-in task of its suffix; another task's file: give --task]"
            )
            raise DataError(exc.path, exc.problem + hint, line=exc.line, record=exc.record) from None
    print(json.dumps(summary, indent=2) if args.json else task.format_summary(summary))
    return 0


def _check_task_data(task, args) -> int:
    """`data check --task TASK`: every split of the task's own data (files or dataset), or --split's."""
    if not task.splits and task.dataset is None:
        raise UsageError(
            f"data check: task {task.name} names no data files (its definition has no data.splits): "
            "give the data file"
        )
    split = "dev" if args.split == "validation" else args.split  # (validation means dev: load_split)
    splits = [split] if split else list(task.splits)
    summaries, seen = {}, {}
    for split in splits:
        examples, where = task.load_split(split, args.data_dir)
        summaries[split] = {"task": task.name, "file": where, **task.summarize(examples)}
        seen[split] = [task.shot_key(ex) for ex in examples]
    if "train" in seen:  # leakage: evaluated inputs (QA: distinct passages) that training also holds
        train = set(seen["train"])
        for split in seen.keys() - {"train"}:
            keys = set(seen[split]) if task.kind == "extractive_qa" else seen[split]
            summaries[split]["in_train"] = sum(key in train for key in keys)
    if args.json:
        print(json.dumps({"task": task.name, "splits": summaries}, indent=2))
        return 0
    unit = "passages" if task.kind == "extractive_qa" else task.unit
    for split, summary in summaries.items():
        line = f"{split}: {task.format_summary(summary)}"
        if "in_train" in summary:
            line += f"; {summary['in_train']:,} of its {unit} also in train"
        print(line)
    return 0


def _task_of_dataset(spec: str):
    from tunelab.data.hub import DatasetRef
    from tunelab.tasks import builtin_names, get_task

    ref = DatasetRef.parse(spec)
    for name in builtin_names():
        task = get_task(name)
        if task.hub.dataset == ref.id:
            return task
    raise UsageError(f"--dataset {spec}: not the Hub dataset of a built-in task; give --task")


def cmd_zeroshot(args) -> int:
    from tunelab import runs
    from tunelab.options import ZeroShotOptions

    task = _task(args)
    flags = _options(args, ZEROSHOT_OPTIONS, task)
    report_to = _trackers(args)
    examples, data = task.load_split(args.split, args.data_dir, args.data_file, args.dataset)
    split_size = len(examples)
    limit = {**task.zeroshot_options(), **flags}.get("limit")
    examples = examples[:limit] if limit else examples
    # the defaults of the task as it scores these examples (squad given v2.0 questions: squad_v2's)
    options = ZeroShotOptions(**{**task.for_data(examples).zeroshot_options(), **flags})
    pool = None
    if options.shots:  # k-shot examples: solved training examples
        pool = task.training_examples(*task.load_split("train", args.data_dir, args.train_file, args.dataset))
    return _report(
        task.for_data(examples),
        args,
        runs.zeroshot(
            task,
            args.model,
            examples,
            data,
            args.out,
            options,
            shot_pool=pool,
            overwrite=args.overwrite,
            report_to=report_to,
            inputs=_inputs(args, task),
            data_examples=split_size,
        ),
    )


def _train_config(args, task):
    from tunelab.config_files import read_mapping
    from tunelab.options import METHOD_LEARNING_RATES, TrainConfig

    own = task.training_defaults()
    values = dict(own)
    from_file = (
        read_mapping(args.config, "config", "training options: learning_rate, epochs, ...")
        if args.config
        else {}
    )
    values.update(from_file)
    # each flag checked under its own name, so that a bad flag is not blamed on the --config file
    flags = {
        k: TRAIN_OPTIONS[k].check(v, None, "--" + k.replace("_", "-"))
        for k, v in given(args, TRAIN_OPTIONS).items()
    }

    # a task's learning rate is for its own method; a rate given nowhere is the method's
    method = {**values, **flags}.get("method", TRAIN_OPTIONS["method"].default)
    if "learning_rate" not in {**from_file, **flags} and (
        "learning_rate" not in own or method != own.get("method", TRAIN_OPTIONS["method"].default)
    ):
        values["learning_rate"] = METHOD_LEARNING_RATES[method]

    def origin(key: str) -> str:
        if key in flags:
            return "--" + key.replace("_", "-")
        if key in from_file:
            return args.config
        return f"{task.source}: finetune" if task.source else f"the built-in task {task.name}'s defaults"

    return TrainConfig.from_dict({**values, **flags}, where=args.config or "options", origin=origin)


def cmd_finetune(args) -> int:
    from tunelab import runs

    task = _task(args)
    cfg = _train_config(args, task)
    extras = {**task.finetune_extras(), **_options(args, FINETUNE_EXTRAS, task)}
    report_to = _trackers(args)
    seeds = ECO_RUN_OPTIONS["seeds"].check(args.seeds, None, "--seeds")
    if seeds and "seed" in given(args, TRAIN_OPTIONS):
        raise UsageError("--seed and --seeds: give one (--seeds trains one model per seed it lists)")
    train_ex, train_data = task.load_split("train", args.data_dir, args.train_file, args.dataset)
    dev_ex, dev_data = task.load_split(args.split, args.data_dir, args.data_file, args.dataset)
    split_size = len(dev_ex)
    dev_ex = dev_ex[: extras["limit"]] if extras["limit"] else dev_ex
    more, more_data = task.extra_training(extras.get("extra_train"), args.data_dir, dev_ex)
    if more:
        train_ex, train_data = train_ex + more, f"{train_data} + {more_data}"
    options = {k: v for k, v in extras.items() if k not in ("limit", "train_limit", "extra_train")}
    if seeds:
        return _finetune_seeds(
            args, task, cfg, seeds, train_ex, dev_ex, dev_data, train_data, extras, report_to, split_size
        )
    m = runs.finetune(
        task,
        args.model,
        runs.sample(train_ex, extras["train_limit"], cfg.seed),
        dev_ex,
        dev_data,
        args.out,
        cfg,
        options,
        train_data=train_data,
        resume=args.resume,
        overwrite=args.overwrite,
        report_to=report_to,
        inputs=_inputs(args, task),
        data_examples=split_size,
    )
    if m is None:  # not the main process of a multi-process run
        return 0
    print(task.for_data(train_ex + dev_ex).summary_line(m))
    print(f"wrote {args.out} (evaluation in {args.out}/eval)")
    return 0


def _same_recipe(seed_dir, cfg, train_data: str) -> None:
    """A finished seed is reused by --resume only when it was trained with these options and data."""
    from tunelab.options import NOT_TRAINING, SPEED_OPTIONS
    from tunelab.outputs import read_json

    was = read_json(seed_dir / "training_config.json")
    now = cfg.to_dict()
    differ = [k for k in now if k not in (*NOT_TRAINING, *SPEED_OPTIONS) and was.get(k) != now[k]]
    data_was = read_json(seed_dir / "eval" / "metrics.json").get("train_data", train_data)
    if data_was != train_data:
        differ.append(f"training data ({data_was} -> {train_data})")
    if differ:
        raise UsageError(
            f"{seed_dir} was trained with other options ({', '.join(differ)}): rerun with the options it was "
            "started with, or pass --overwrite instead of --resume to start over"
        )


def _finetune_seeds(
    args, task, cfg, seeds, train_ex, dev_ex, dev_data, train_data, extras, report_to, split_size: int
) -> int:
    """`--seeds`: one model per seed in OUT/seed-N/, and OUT/seeds.json with each seed's metrics and their
    mean and standard deviation; `split_size`: the dev split's size (dev_ex may be its first few)."""
    import dataclasses
    import statistics
    from pathlib import Path

    from tunelab import runs
    from tunelab.distributed import main_process
    from tunelab.models.registry import local_files
    from tunelab.outputs import atomic_output, read_json, write_json

    options = {k: v for k, v in extras.items() if k not in ("limit", "train_limit", "extra_train")}
    per_seed = {}

    def resumable(work: Path) -> bool:  # a finished seed, or a seed's checkpoint
        return any(work.glob("seed-*/eval/metrics.json")) or any(
            work.glob("seed-*.partial/checkpoints/step-*/COMPLETE")
        )

    trained_on = [("training file", p) for p in str(train_data).split(" + ")]  # (+: extra_train's files)
    read = [local_files(args.model), *trained_on, ("data file", dev_data)]
    with atomic_output(
        args.out,
        overwrite=args.overwrite,
        keep_partial=resumable,
        resume=args.resume,
        inputs=read + _inputs(args, task),
    ) as work:
        for seed in seeds:
            done = Path(work) / f"seed-{seed}" / "eval" / "metrics.json"
            if args.resume and done.is_file():  # finished before the interruption
                _same_recipe(done.parent.parent, dataclasses.replace(cfg, seed=seed), train_data)
                per_seed[seed] = read_json(done)
                continue
            m = runs.finetune(
                task,
                args.model,
                runs.sample(train_ex, extras["train_limit"], seed),
                dev_ex,
                dev_data,
                Path(work) / f"seed-{seed}",
                dataclasses.replace(cfg, seed=seed),
                options,
                train_data=train_data,
                resume=args.resume,
                report_to=report_to,
                tracking_dir=Path(work) / "tracking",
                run_name=f"seed-{seed}",
                final_out=Path(args.out) / f"seed-{seed}",
                data_examples=split_size,
            )
            if m is None:
                continue
            per_seed[seed] = m
            print(task.for_data(train_ex + dev_ex).summary_line(m) + f" (seed {seed})")
        if not main_process():  # the main one writes the summary (the others skip their finished seeds too)
            return 0
        rows = {s: task.for_metrics(per_seed[s]).metric_rows(per_seed[s]) for s in seeds}  # (key, name, %)
        summary = {}
        for i, (key, name, _) in enumerate(rows[seeds[0]]):
            vals = [float(per_seed[s][key]) for s in seeds]
            summary[key] = {
                "mean": statistics.fmean(vals),
                "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            }
            shown = [rows[s][i][2] for s in seeds]  # as the console line and the model card show it
            sd = statistics.stdev(shown) if len(shown) > 1 else 0.0
            print(f"{name}: {statistics.fmean(shown):.2f} ± {sd:.2f} over seeds {seeds}")
        write_json(Path(work) / "seeds.json", {"seeds": seeds, "summary": summary, "per_seed": per_seed})
    print(f"wrote {args.out} (one model per seed: {args.out}/seed-N)")
    return 0


def cmd_evaluate(args) -> int:
    from tunelab import runs
    from tunelab.tasks import task_from_meta

    options = {
        k: EVALUATE_OPTIONS[k].check(getattr(args, k), None, "--" + k.replace("_", "-"))
        for k in EVALUATE_OPTIONS
    }
    report_to = _trackers(args)
    task = _task(args) if args.task else None
    meta = runs.read_meta(args.model_dir)
    trained_for = task_from_meta(meta, f"{args.model_dir}/{runs.META_FILE}")
    if task is None and args.version:  # the folder's own task, at another SQuAD version
        task = trained_for.for_version(args.version)
    data_task = task or trained_for
    examples, data = data_task.load_split(args.split, args.data_dir, args.data_file, args.dataset)
    split_size = len(examples)
    examples = examples[: options["limit"]] if options["limit"] else examples
    m = runs.evaluate(
        args.model_dir,
        examples,
        data,
        args.out,
        task=task,
        batch_size=options["batch_size"],
        bf16=options["bf16"],
        overwrite=args.overwrite,
        report_to=report_to,
        inputs=_inputs(args, data_task),
        data_examples=split_size,
    )
    return _report(data_task.for_meta(meta).for_data(examples), args, m)


def _trackers(args) -> list[str]:
    """--report-to's trackers, each one's package checked before any work."""
    from tunelab.tracking import check_available

    report_to = ECO_RUN_OPTIONS["report_to"].check(args.report_to or "none", None, "--report-to")
    check_available(report_to)
    return report_to


def _report(task, args, m: dict | None) -> int:
    if m is None:  # not the main process of a multi-process run: the main one writes and prints
        return 0
    print(task.summary_line(m))
    print(f"wrote {args.out}/metrics.json")
    return 0


def cmd_study(args) -> int:
    import time
    from pathlib import Path

    import yaml

    from tunelab.study import resolve_config, run_study
    from tunelab.study.config import schema_doc

    if args.print_schema:
        print(schema_doc(), end="")
        return 0
    sets = list(args.set)
    if args.report_to is not None:
        sets.append(f"report_to={args.report_to}")
    if args.seeds is not None:
        sets.append(f"seeds={args.seeds}")
    cfg = resolve_config(config=args.config, preset=args.preset, sets=sets)
    if args.print_config:
        print(yaml.safe_dump(cfg.data, sort_keys=False, allow_unicode=True), end="")
        return 0
    out = Path(args.out or Path("runs") / cfg.name)
    t0 = time.perf_counter()
    study = run_study(cfg, out, inputs=[("study config file", args.config)], redo=tuple(args.redo))
    from tunelab.study.summary import print_summary, summary_rows

    print_summary(summary_rows(study), out / "report.html")
    print(f"study finished in {time.perf_counter() - t0:.0f} s: {out}/report.md, {out}/report.html")
    return 0


def cmd_report(args) -> int:
    from tunelab.report import build_report

    md, html = build_report(args.run_dir)
    print(f"wrote {md} and {html}")
    return 0


def cmd_predict(args) -> int:
    from tunelab.predict import predict, print_predictions

    task, rows = predict(
        args.model_dir,
        texts=args.texts,
        pairs=args.pair,
        questions=args.question,
        context=args.context,
        file=args.file,
        batch_size=args.batch_size,
    )
    print_predictions(task, args.model_dir, rows, args.json)
    return 0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_export(args) -> int:
    from tunelab.hub.export import export
    from tunelab.hub.push import upload_plan

    out = export(args.model_dir, args.out, overwrite=args.overwrite, base_model=args.base_model)
    files = upload_plan(out)
    size = _size(sum(f["size"] for f in files))
    print(f"wrote {out}: {len(files)} files, {size} (model card {out}/README.md)")
    print(f"push it with: tunelab push {out} --repo-id USER/{out.name}")
    return 0


def cmd_push(args) -> int:
    from tunelab.hub.push import push

    r = push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    vis = "private" if r["private"] else "public"
    if r["dry_run"]:
        print(
            f"dry run: would upload {len(r['files'])} files ({_size(r['total_bytes'])}) from {r['folder']} "
            f"to {r['url']} ({vis} if created)"
        )
        for f in r["files"]:
            print(f"  {f['size']:>14,}  {f['path']}")
    else:
        print(f"uploaded {len(r['files'])} files ({_size(r['total_bytes'])}) to {r['url']}")
        if "commit" in r:
            print(f"commit: {r['commit']}")
    return 0


COMMANDS = {
    "params": cmd_params,
    "data": cmd_data,
    "zeroshot": cmd_zeroshot,
    "finetune": cmd_finetune,
    "evaluate": cmd_evaluate,
    "study": cmd_study,
    "report": cmd_report,
    "predict": cmd_predict,
    "export": cmd_export,
    "push": cmd_push,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from tunelab.distributed import finish_together, launched_processes
    from tunelab.models.remote_code import trust_remote_code

    trust_remote_code(getattr(args, "trust_remote_code", False))  # set on every call: off unless asked
    from tunelab.console import configure

    configure(args.verbose, models=args.command in LOADS_MODELS)
    if launched_processes() > 1 and not faulthandler.is_enabled():
        # one of several processes dying of a signal (an abort in a C++ library) then prints where each
        # of its threads was, rather than torchrun's bare "Signal 6 (SIGABRT) received"
        faulthandler.enable(file=sys.__stderr__ or sys.stderr)
    try:
        with signals.handled():  # SIGTERM ends a run as Ctrl-C does (tunelab.signals)
            if launched_processes() > 1 and args.command not in MULTI_PROCESS:
                raise UsageError(
                    f"`tunelab {args.command}` runs in one process: start it without accelerate launch or "
                    f"torchrun (these use several: {', '.join(MULTI_PROCESS)})"
                )
            code = COMMANDS[args.command](args)
            finish_together()
            return code
    except UsageError as exc:
        _say(f"tunelab: error: {exc}", exc)
        return exc.exit_code
    except (
        BrokenPipeError
    ):  # the reader went away (`tunelab predict ... | head -1`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush writes nowhere)
        return 141  # 128 + SIGPIPE
    except Exception as exc:
        from tunelab.outputs import full_disk

        cause = full_disk(exc)  # outside an output folder (a study's own files): the same clear message
        if cause is None:
            raise
        _say(f"tunelab: error: {_no_space(cause)}", exc)
        return 2
    except KeyboardInterrupt as exc:  # tunelab.signals.Interrupted, or a KeyboardInterrupt raised elsewhere
        name = getattr(exc, "signame", "SIGINT")
        _say(f"tunelab: interrupted by {name}", exc)
        return getattr(exc, "exit_code", 130)  # 128 + the signal's number: 130 SIGINT, 143 SIGTERM


def _no_space(cause: BaseException) -> str:
    import shutil
    from pathlib import Path

    written = getattr(cause, "filename", None)
    place = next((p for p in Path(os.path.abspath(written or ".")).parents if p.exists()), Path("/"))
    free = shutil.disk_usage(place).free / 2**20
    return (
        f"no space left on the device while writing {written or 'a file'} ({free:.1f} MB free on the file "
        f"system of {place}): free some space and run the same command again"
    )


def _say(message: str, exc: BaseException) -> None:
    """The message and the notes added on the way out (what was kept, how to continue)."""
    print("\n".join([message, *(f"tunelab: {n}" for n in getattr(exc, "__notes__", ()))]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
