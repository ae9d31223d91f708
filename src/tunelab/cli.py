"""The `tunelab` command. Each subcommand parses its options and calls one recipe; user errors exit with 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tunelab import __version__
from tunelab.config_files import read_mapping
from tunelab.errors import UsageError

TASKS = ("sst2", "squad")
MULTI_PROCESS = ("finetune", "zeroshot", "evaluate")  # the commands that can run under accelerate launch
LOADS_MODELS = ("params", "zeroshot", "finetune", "evaluate", "study", "predict", "export")  # take --trust-remote-code


def _add_data_opts(p):
    p.add_argument("--data-dir", help="data folder laid out like ../shared/data (default: $TUNELAB_DATA_DIR)")
    p.add_argument("--data-file", help="one data file instead of the data folder's split")
    p.add_argument("--split", default="dev", help="split of the data folder (default: dev)")
    p.add_argument("--version", choices=["1.1", "2.0"],
                   help="SQuAD version (default: 1.1 for the data folder; a --data-file with unanswerable "
                   "questions is scored as 2.0)")
    p.add_argument("--limit", type=int, help="use only the first N examples")
    p.add_argument("--out", required=True, help="output folder (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _add_train_opts(p):
    p.add_argument("--config", help="YAML file of training options (keys as below, with _ for -)")
    p.add_argument("--method", choices=["full", "lora", "head"])
    for name, typ in [("learning-rate", float), ("epochs", float), ("batch-size", int), ("grad-accum", int),
                      ("warmup-ratio", float), ("weight-decay", float), ("max-length", int), ("seed", int),
                      ("eval-every", int), ("save-every", int), ("log-every", int),
                      ("max-train-samples", int), ("max-steps", int), ("lora-r", int), ("lora-alpha", int),
                      ("lora-dropout", float)]:
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--lr-schedule", choices=["linear", "cosine", "constant"])
    p.add_argument("--lora-targets", help="comma-separated module names (default: all attention and MLP)")
    p.add_argument("--merge-lora", action="store_true", default=None, help="save LoRA merged into the weights")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="train in float32 on GPU")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunelab",
        description="How much does fine-tuning a small decoder LLM buy over prompting it zero-shot? "
        "Parameter accounting, zero-shot and fine-tuned SST-2 and SQuAD.",
    )
    parser.add_argument("--version", action="version", version=f"tunelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", help="exact parameter counts from the config alone (no weights, no download)",
                       description="Count total and trainable parameters of a base model and its task model.")
    p.add_argument("model", help="alias (smollm2-135m, llama-3.2-1b), local folder or Hub id")
    p.add_argument("--task", choices=TASKS, help="count the task model (adds its head)")
    p.add_argument("--method", choices=["full", "lora", "head"], default="full")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-targets", help="comma-separated module names")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("data", help="inspect data files", description="Inspect data files.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = dsub.add_parser("check", help="validate a file and say what it holds",
                        description="Validate an SST-2 (TSV/CSV/JSONL) or SQuAD (JSON) file and summarise it.")
    c.add_argument("path")
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("zeroshot", help="evaluate a base model zero-shot (prompting)",
                       description="Zero-shot evaluation: SST-2 by scoring label words, SQuAD by generation.")
    p.add_argument("model")
    p.add_argument("--task", choices=TASKS, required=True)
    _add_data_opts(p)
    p.add_argument("--prompt", default=None, help="template name (sst2: chat, plain, harness; squad: chat, plain)"
                   " or a YAML/JSON file defining one")
    p.add_argument("--calibration", default="batch", choices=["batch", "contextual", "none"],
                   help="SST-2 score calibration (default batch)")
    p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser("finetune", help="fine-tune a task head (full, LoRA or head-only)",
                       description="Fine-tune on the train split, evaluate on dev, save a Hugging Face folder.")
    p.add_argument("model")
    p.add_argument("--task", choices=TASKS, required=True)
    _add_data_opts(p)
    p.add_argument("--train-file", help="training file instead of the data folder's train split")
    p.add_argument("--input-prompt", default=None, help="sst2: wrap sentences in this zero-shot template "
                   "(default chat; 'none' for bare sentences)")
    _add_train_opts(p)

    p = sub.add_parser("evaluate", help="evaluate a fine-tuned model folder",
                       description="Evaluate a folder written by `tunelab finetune`.")
    p.add_argument("model_dir")
    p.add_argument("--task", choices=TASKS, required=True)
    _add_data_opts(p)
    p.add_argument("--batch-size", type=int, default=64)

    from tunelab import hub, predict, study

    for module in (study, predict, hub):
        module.add_parsers(sub)
    for name in LOADS_MODELS:
        sub.choices[name].add_argument(
            "--trust-remote-code", action="store_true",
            help="run Python code a model ships with it (transformers' trust_remote_code; off by default: "
                 "pass it only for a source you trust)")
    return parser


def cmd_params(args) -> int:
    from tunelab.models import LoraOptions, load_config, param_report
    from tunelab.models.params import DEFAULT_LORA_TARGETS, format_report

    targets = tuple(args.lora_targets.split(",")) if args.lora_targets else DEFAULT_LORA_TARGETS
    report = param_report(args.model, load_config(args.model), args.task, args.method,
                          LoraOptions(args.lora_r, args.lora_alpha, 0.0, targets))
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


def cmd_data(args) -> int:
    from tunelab.data.check import check_file, format_summary

    summary = check_file(args.path)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _train_config(args, defaults: dict):
    from tunelab.training import TrainConfig

    values = dict(defaults)
    if args.config:
        values.update(read_mapping(args.config, "config", "training options: learning_rate, epochs, ..."))
    for key in ["method", "learning_rate", "epochs", "batch_size", "grad_accum", "warmup_ratio", "weight_decay",
                "max_length", "seed", "eval_every", "save_every", "log_every", "max_train_samples", "max_steps",
                "lora_r", "lora_alpha", "lora_dropout", "lr_schedule", "merge_lora", "bf16"]:
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    if args.lora_targets:
        values["lora_targets"] = args.lora_targets.split(",")
    return TrainConfig.from_dict(values, where=args.config or "options")


def _check_batch_size(n: int) -> None:
    if n < 1:
        raise UsageError(f"--batch-size must be >= 1, got {n}")


def _limit(examples, n):
    if n is not None and n < 1:
        raise UsageError(f"--limit must be >= 1, got {n}")
    return examples[:n] if n else examples


def _sst2_prompt(name: str | None):
    from tunelab.tasks.classification import Prompt

    return Prompt.load(name)


def cmd_zeroshot(args) -> int:
    _check_batch_size(args.batch_size)
    if args.task == "sst2":
        from tunelab.recipes import sst2
        from tunelab.tasks.classification import Calibration

        examples, data = sst2.load_split(args.data_file, args.data_dir, args.split)
        m = sst2.run_zeroshot(args.model, _limit(examples, args.limit), data, args.out,
                              prompt=_sst2_prompt(args.prompt), calibration=Calibration(args.calibration),
                              batch_size=args.batch_size, overwrite=args.overwrite)
    else:
        from tunelab.recipes import squad

        examples, data = squad.load_split(args.data_file, args.data_dir, args.version or "1.1", args.split)
        m = squad.run_zeroshot(args.model, _limit(examples, args.limit), data, args.out, prompt=args.prompt,
                               batch_size=args.batch_size, overwrite=args.overwrite, version=args.version)
    return _report(args, m)


def cmd_finetune(args) -> int:
    if args.task == "sst2":
        from tunelab.recipes import sst2

        cfg = _train_config(args, {"learning_rate": 2e-5, "batch_size": 32, "max_length": 128})
        train_ex, train_data = sst2.load_split(args.train_file, args.data_dir, "train")
        if not any(ex.label is not None for ex in train_ex):
            raise UsageError(f"{train_data}: training data needs labels (a `label` column of 0/1)")
        dev_ex, dev_data = sst2.load_split(args.data_file, args.data_dir, args.split)
        prompt = None if args.input_prompt == "none" else _sst2_prompt(args.input_prompt)
        m = sst2.run_finetune(args.model, train_ex, _limit(dev_ex, args.limit), dev_data, args.out, cfg,
                              input_prompt=prompt, resume=args.resume, overwrite=args.overwrite)
        if m is None:  # not the main process of a multi-process run
            return 0
        _print_sst2(m)
        print(f"wrote {args.out} (evaluation in {args.out}/eval)")
    else:
        from tunelab.recipes import squad

        cfg = _train_config(args, {"learning_rate": 3e-5, "batch_size": 12, "epochs": 2, "max_length": 384})
        train_ex, _ = squad.load_split(args.train_file, args.data_dir, args.version or "1.1", "train")
        dev_ex, dev_data = squad.load_split(args.data_file, args.data_dir, args.version or "1.1", args.split)
        version = args.version or ("2.0" if any(ex.is_impossible for ex in train_ex + dev_ex) else "1.1")
        m = squad.run_finetune(args.model, train_ex, _limit(dev_ex, args.limit), dev_data, args.out, cfg,
                               version=version, resume=args.resume, overwrite=args.overwrite)
        if m is None:  # not the main process of a multi-process run
            return 0
        _print_squad(m)
        print(f"wrote {args.out} (evaluation in {args.out}/eval)")
    return 0


def cmd_evaluate(args) -> int:
    _check_batch_size(args.batch_size)
    if args.task == "sst2":
        from tunelab.recipes import sst2

        examples, data = sst2.load_split(args.data_file, args.data_dir, args.split)
        m = sst2.run_evaluate(args.model_dir, _limit(examples, args.limit), data, args.out,
                              batch_size=args.batch_size, overwrite=args.overwrite)
    else:
        from tunelab.recipes import squad

        examples, data = squad.load_split(args.data_file, args.data_dir, args.version or "1.1", args.split)
        m = squad.run_evaluate(args.model_dir, _limit(examples, args.limit), data, args.out,
                               batch_size=args.batch_size, overwrite=args.overwrite)
    return _report(args, m)


def _report(args, m: dict | None) -> int:
    if m is None:  # not the main process of a multi-process run: the main one writes and prints
        return 0
    (_print_sst2 if args.task == "sst2" else _print_squad)(m)
    print(f"wrote {args.out}/metrics.json")
    return 0


def _print_sst2(m: dict) -> None:
    if "accuracy" not in m:
        print(f"{m['n']} predictions (no labels in {m['data']})")
        return
    lo, hi = m["accuracy_ci95"]
    print(f"SST-2 {m['mode']}: accuracy {100 * m['accuracy']:.2f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}), "
          f"F1 {100 * m['f1']:.2f}, precision {100 * m['precision']:.2f}, recall {100 * m['recall']:.2f}, "
          f"n={m['n']}")


def _print_squad(m: dict) -> None:
    line = f"SQuAD {m['mode']}: EM {m['exact_match']:.2f}, F1 {m['f1']:.2f}, n={m['n']}"
    if "HasAns_f1" in m or "NoAns_f1" in m:
        line += f" (HasAns F1 {m.get('HasAns_f1', float('nan')):.2f}, NoAns F1 {m.get('NoAns_f1', float('nan')):.2f}"
        line += f", best F1 {m['best_f1']:.2f} at threshold {m['best_f1_thresh']:.3f})"
    print(line)


def _commands() -> dict:
    from tunelab import hub, predict, study

    return {"params": cmd_params, "data": cmd_data, "zeroshot": cmd_zeroshot, "finetune": cmd_finetune,
            "evaluate": cmd_evaluate, **study.COMMANDS, **predict.COMMANDS, **hub.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from tunelab.models.loading import trust_remote_code
    from tunelab.outputs import launched_processes

    trust_remote_code(getattr(args, "trust_remote_code", False))  # set on every call: off unless asked
    try:
        if launched_processes() > 1 and args.command not in MULTI_PROCESS:
            raise UsageError(f"`tunelab {args.command}` runs in one process: start it without accelerate launch or "
                             f"torchrun (these use several: {', '.join(MULTI_PROCESS)})")
        return _commands()[args.command](args)
    except UsageError as exc:
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tunelab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
