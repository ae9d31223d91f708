"""Every option a user sets, described once: type, range or choices, default and help text.

The option groups are dataclasses whose fields carry an `Option` in their metadata. From them come the flags
of `tunelab zeroshot/finetune/evaluate` (`add_flags`), the validation of training-option files and of the
study configuration (`Option.check`, `from_mapping`) and the documented schema (`schema_text`, printed by
`tunelab study --print-schema` and kept in docs/study-config.md). Per-task defaults live in the task
definitions (tunelab.tasks), which override the defaults here.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

from tunelab.errors import UsageError

KINDS = ("classification", "extractive_qa")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Null:
    """A nullable option's flag given the word `null`: set to null, unlike a flag left out (None), which
    keeps the task's or the config file's value."""

    def __repr__(self) -> str:
        return "null"

    __str__ = __repr__


NULL = _Null()


# Hand-written rather than pydantic / jsonschema: one description gives the CLI flags, the checks and the
# documented schema, and every message names the file, the dotted key and the rule (a library's does not).
@dataclass(frozen=True)
class Option:
    """One option. `type` is int, float, str, bool, list (of strings), prompt (a template name, a file or a
    mapping) or version (a SQuAD version: 1.1 or 2.0, also written as a YAML number)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    nullable: bool = False
    kinds: tuple[str, ...] | None = None  # task kinds it applies to; None: every kind
    flag: str | None = None  # the command-line flag, when not --name-with-dashes
    default_note: str | None = None  # what the default is, when each task sets it

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def rule(self) -> str:
        """What a valid value is, as the schema documents it."""
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = {
                "int": "an integer",
                "float": "a number",
                "str": "a string",
                "bool": "true or false",
                "list": "a list of strings (or one comma-separated string)",
                "prompt": "a template name, a prompt file or a mapping",
                "version": "1.1 or 2.0",
                "size": f"an integer in [{_num(self.low or 1)}, {_num(self.high)}] or auto"
                if self.high is not None
                else f"an integer >= {_num(self.low or 1)} or auto",
                **_ECO_RULES,
            }[self.type]
            bounds = self._bounds() if self.type != "size" else ""  # (its rule names the bound)
            if bounds:
                text += " " + bounds
        return text + (" or null" if self.nullable else "")

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None and self.type == "float":
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_num(self.low)}, {_num(self.high)}{right}"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_num(self.high)}")
        return ", ".join(parts)

    def check(self, value: Any, where: str | None, key: str | None = None) -> Any:
        """The value, checked (and coerced: YAML 1.1 reads `3e-5` as a string, `version: 1.1` as a number);
        a UsageError names `where`, the key and the rule otherwise."""
        key = key or self.name
        prefix = f"{where}: " if where else ""

        def bad(rule: str | None = None) -> UsageError:
            return UsageError(f"{prefix}{key} must be {rule or self.rule()}, got {value!r}")

        if value is NULL:
            value = None
        if value is None:
            if self.nullable:
                return None
            raise bad()
        value = _COERCE[self.type](self, value, bad)
        if self.choices and value not in self.choices:
            raise bad()
        if self.type in ("int", "float"):
            self._check_range(value, bad)
        return value

    def _check_range(self, value: float, bad) -> None:
        low_fails = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        high_fails = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if self.type == "int":
            if low_fails:
                raise bad(f"an integer >= {_num(self.low)}" + (" or null" if self.nullable else ""))
            if high_fails:
                raise bad(f"{'below' if self.high_open else 'at most'} {_num(self.high)}")
        elif low_fails or high_fails:
            raise bad(self._bounds())


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _as_int(opt: Option, value: Any, bad) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"an integer >= {_num(opt.low)}" if opt.low is not None else "an integer")
    return value


def _as_float(opt: Option, value: Any, bad) -> float:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad("a (finite) number")
    return float(value)


def _as_str(opt: Option, value: Any, bad) -> str:
    if isinstance(value, bool) and opt.choices and {"on", "off"} <= set(opt.choices):
        return "on" if value else "off"  # YAML 1.1 reads `on` and `off` as booleans
    if not isinstance(value, str):
        raise bad()
    return value


def _as_bool(opt: Option, value: Any, bad) -> bool:
    if not isinstance(value, bool):
        raise bad()
    return value


def _as_list(opt: Option, value: Any, bad) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise bad("a non-empty list of names")
    return value


def _as_size(opt: Option, value: Any, bad) -> int | str:
    """An integer >= low, or the word auto (also from the command line, where every value is a string)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    whole = isinstance(value, int) and not isinstance(value, bool)
    if value == "auto" or (whole and (opt.low or 1) <= value <= (opt.high or value)):
        return value
    raise bad()


def _as_prompt(opt: Option, value: Any, bad) -> str | dict:
    if not isinstance(value, (str, dict)):
        raise bad()
    return value


def _as_version(opt: Option, value: Any, bad) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"{float(value):.1f}"
    if not isinstance(value, str):
        raise bad()
    return value.strip().lstrip("v")


_COERCE = {
    "int": _as_int,
    "float": _as_float,
    "str": _as_str,
    "bool": _as_bool,
    "list": _as_list,
    "prompt": _as_prompt,
    "version": _as_version,
    "size": _as_size,
}  # + the ecosystem block's types (below)


def option(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field that carries its Option (the name and type are filled in by `options_of`)."""
    meta = {"help": help, "rules": rules}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_TYPES = {
    "int": "int",
    "float": "float",
    "str": "str",
    "bool": "bool",
    "list[str]": "list",
    "str | dict": "prompt",
    "list[int]": "seeds",
}


def _option(f: Field) -> Option:
    annotation = str(f.type).replace(" | None", "")
    rules = dict(f.metadata["rules"])
    kind = rules.pop("type", None) or _TYPES[annotation]
    default = f.default if f.default is not MISSING else f.default_factory()
    return Option(f.name, kind, default, f.metadata["help"], nullable="None" in str(f.type), **rules)


def options_of(cls: type) -> dict[str, Option]:
    """The Options of an option group (a dataclass declared with `option` fields), by name."""
    return {f.name: _option(f) for f in fields(cls)}


def did_you_mean(unknown: list[str], known) -> str:
    """ " (did you mean 'learning_rate'?)" for misspelt keys close to a known one, else ""."""
    import difflib

    close = [m[0] for k in unknown if (m := difflib.get_close_matches(k, [str(x) for x in known], n=1))]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def check_mapping(
    values: Any, opts: dict[str, Option], where: str, *, prefix: str = "", what: str = "options"
) -> dict:
    """A mapping of option values checked key by key: unknown keys and bad values are UsageErrors that name
    `where` and the key (with `prefix`)."""
    if not isinstance(values, dict):
        raise UsageError(f"{where}: expected a mapping of {what}, got {type(values).__name__}")
    unknown = sorted(str(k) for k in values if k not in opts)
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {[prefix + k for k in unknown]}{did_you_mean(unknown, opts)}; "
            f"known: {sorted(opts)}"
        )
    return {k: opts[k].check(v, where, prefix + k) for k, v in values.items()}


# ------------------------------------------------------------------------------------------------------------
# The option groups


# Upper bounds far above any real use, so that a value that passes cannot overflow or hang later (`--epochs
# 1e308` overflowed turning the step count into an integer; `--grad-accum 1e20` spun for ever on one step).
MAX_EPOCHS = 1000
MAX_BATCH = 65_536  # examples per batch, micro-batches per step, LoRA rank and alpha
MAX_COUNT = 1_000_000_000  # steps, examples, limits
MAX_NEW_TOKENS = 4096
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Options that do not change what is trained: a checkpoint resumes a run that differs only in these.
NOT_TRAINING = ("eval_every", "log_every", "save_every", "merge_lora")
# The speed options (issue 11; the block at the end of TrainConfig) change how the steps run, not what they
# compute: a checkpoint resumes under other values of them too.
SPEED_OPTIONS = (
    "compile",
    "compile_mode",
    "packing",
    "share_prefix",
    "micro_batch_size",
    "fused_optimizer",
    "pin_memory",
)


BF16_HELP = (
    "bfloat16 {how} on GPUs that support it{cpu} (tunelab.precision; TUNELAB_CPU_BF16=on|off "
    "overrides the CPU default); false: float32"
)
BF16_CPU_AUTOCAST = ", on CPUs only with TUNELAB_CPU_BF16=on (measured: faster but a little less accurate)"


# a method's learning rate where the task's (meant for its own method, full unless it says) does not apply
METHOD_LEARNING_RATES = {"full": 2e-5, "lora": 3e-4, "head": 1e-3}


@dataclass
class TrainConfig:
    """Fine-tuning options (`tunelab finetune` flags, `--config` files, a study task's `finetune` section)."""

    method: str = option(
        "full",
        "what is trained: every weight, LoRA adapters and the head, or the head alone",
        choices=("full", "lora", "head"),
    )
    learning_rate: float = option(
        2e-5,
        "peak learning rate (AdamW). A task's rate is for its own method (full unless its finetune section "
        "says); `tunelab finetune` with another method (--method or --config) and no rate given (flag or "
        "--config) takes that method's: 3e-4 for LoRA, 1e-3 for the head alone (the full preset's "
        "variants), 2e-5 for full (a study's variants give their own rates)",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    epochs: float = option(
        1.0, "passes over the training data (a fraction stops early)", low=0, low_open=True, high=MAX_EPOCHS
    )
    batch_size: int = option(32, "examples per micro-batch and process", low=1, high=MAX_BATCH)
    grad_accum: int = option(1, "micro-batches per optimizer step", low=1, high=MAX_BATCH)
    warmup_ratio: float = option(
        0.06, "share of the steps with a linear warm-up", low=0, high=1, high_open=True
    )
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)", low=0, high=10)
    lr_schedule: str = option(
        "linear", "learning-rate decay after the warm-up", choices=("linear", "cosine", "constant")
    )
    max_length: int = option(
        128, "tokens per input (longer inputs lose their beginning; QA: window size)", low=1, high=1_000_000
    )
    seed: int = option(
        42, "seeds the new head, LoRA, dropout and the data order", low=0, high=2**32, high_open=True
    )
    bf16: bool = option(
        True, BF16_HELP.format(how="autocast (float32 weights and optimizer state)", cpu=BF16_CPU_AUTOCAST)
    )
    eval_every: int = option(
        0, "steps between evaluations on the dev examples (0: only at the end)", low=0, high=MAX_COUNT
    )
    log_every: int = option(20, "steps between lines of train_log.jsonl", low=1, high=MAX_COUNT)
    save_every: int = option(0, "steps between checkpoints, for --resume (0: none)", low=0, high=MAX_COUNT)
    max_train_samples: int | None = option(
        None,
        "train on the first N features only (the inputs after preprocessing, as in run_glue.py / "
        "run_qa.py: a SQuAD question gives one per window); to train on a random sample of examples, use "
        "train_limit",
        low=1,
        high=MAX_COUNT,
    )
    max_steps: int | None = option(None, "stop after N optimizer steps", low=1, high=MAX_COUNT)
    group_by_length: bool = option(True, "batches of similar length (less padding)")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: no clipping)", low=0, high=1e6)
    lora_r: int = option(16, "LoRA rank", low=1, high=MAX_BATCH)
    lora_alpha: int = option(
        32, "LoRA scaling numerator (alpha / r scales the update)", low=1, high=MAX_BATCH
    )
    lora_dropout: float = option(0.05, "dropout on the LoRA input", low=0, high=1, high_open=True)
    lora_targets: list[str] = option(
        LORA_TARGETS,
        "the layers LoRA adapts: names, or ends of names (self_attn.q_proj), as peft matches them",
    )
    merge_lora: bool = option(False, "save LoRA merged into the weights instead of as an adapter")
    # bidirectional attention (the span head; SQuAD experiments)
    bidirectional: bool = option(
        False,
        "no causal mask in the task model while fine-tuning and evaluating: every token attends to the whole "
        "input (for the span head: passage tokens see what follows them); kept by the saved model",
    )

    # Speed: how the steps run, never what they compute. Each is off unless measured faster
    # with equal quality (benchmarks/speed.py); the loop's docstring says how each keeps the loss the same.
    compile: bool = option(
        False,
        "torch.compile each decoder layer; batches are padded up to a few length buckets (static shapes: "
        "no recompiles after warm-up)",
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode when compile is on (reduce-overhead adds CUDA graphs)",
        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
    )
    packing: bool = option(
        False,
        "padding-free packing: a micro-batch's examples share rows of max_length tokens, each attending to "
        "itself; same examples and loss (tunelab.packing)",
    )
    share_prefix: str = option(
        "auto",
        "the tokens every example of a micro-batch starts with (a prompt's chat template and instruction) "
        "run once, their key/value cache serving every row; same loss and gradients (tunelab.prefix_cache). "
        "auto: on a CPU (measured faster there), off on GPUs until measured; never with compile, packing or "
        "bidirectional (on with one of them is refused); auto and on pass over FSDP and the span head",
        choices=("auto", "on", "off"),
    )
    micro_batch_size: int | str | None = option(
        None,
        "examples per forward/backward piece of a micro-batch (same update); auto: the largest that fits "
        "the GPU's memory, found before training (out-of-memory halving stays the fallback); null: the "
        "whole batch",
        type="size",
        low=1,
        high=MAX_BATCH,
    )
    fused_optimizer: bool = option(
        True,
        "fused AdamW on CUDA and CPU (foreach elsewhere), foreach gradient clipping; false: per-tensor loops",
    )
    pin_memory: bool = option(False, "page-locked host memory for batches on CUDA (copies overlap compute)")

    @classmethod
    def from_dict(
        cls, values: Any, where: str = "training options", origin: Callable[[str], str] | None = None
    ) -> TrainConfig:
        """`origin(key)`: where a key's value came from, named by a cross-option error (default: `where`)."""
        cfg = cls(**check_mapping(values, TRAIN_OPTIONS, where, what="training options"))
        cfg.check_together(origin or (lambda key: where))
        return cfg

    def validate(self, where: str = "training options") -> None:
        """Every field against its Option (for configs built in code rather than read from a file)."""
        for name, opt in TRAIN_OPTIONS.items():
            opt.check(getattr(self, name), where)
        self.check_together(lambda key: where)

    def check_together(self, origin: Callable[[str], str]) -> None:
        """Options that are valid alone but not together; `origin(key)` names where a key was set."""

        def refuse(a: str, b: str, why: str) -> None:
            where = ", ".join(dict.fromkeys([origin(a), origin(b)]))
            raise UsageError(f"{where}: {a} and {b} cannot be used together ({why}); turn one of them off")

        if self.packing and self.bidirectional:
            refuse(
                "packing",
                "bidirectional",
                "without the causal mask the examples packed into one row would see each other",
            )
        if self.share_prefix == "on":  # auto quietly turns it off where it cannot run
            for other, why in [
                ("compile", "a shared prefix changes the fixed shapes compile pads to"),
                ("packing", "a packed row holds several examples, not one prefix and its rest"),
                ("bidirectional", "without the causal mask the prefix would see the tokens after it"),
            ]:
                if getattr(self, other):
                    refuse("share_prefix", other, why)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ZeroShotOptions:
    """A study task's `zeroshot` section and the `tunelab zeroshot` flags."""

    limit: int | None = option(None, "evaluate on the first N examples (null: all)", low=1, high=MAX_COUNT)
    prompt: str | dict | None = option(
        None,
        "one of the task's template names or a YAML/JSON prompt file (in a config file, also the mapping "
        "itself)",
        type="prompt",
        default_note="the task's default template",
    )
    calibration: str = option(
        "batch",
        "label-score calibration: batch (by each class's mean probability over the evaluated inputs, "
        "at least 8), contextual (content-free inputs) or none",
        choices=("batch", "contextual", "none"),
        kinds=("classification",),
    )
    detokenize: bool = option(
        False,
        "show the model each input as ordinary text: Penn-Treebank tokenisation undone (nltk's "
        "TreebankWordDetokenizer) and, in a text without capitals, the first letter and the pronoun i "
        'capitalised ("it \'s good , i think ." becomes "It\'s good, I think."). SST-2\'s default is true: '
        "chosen on training sentences, then +1.9 points on its dev set "
        "(benchmarks/results/zeroshot-detokenize-cpu.json)",
        kinds=("classification",),
    )
    batch_size: int | str = option(
        32,
        "examples per forward pass / generation batch; auto: batches filled up to a budget of tokens, as "
        "large as memory allows (halved on out-of-memory)",
        type="size",
        low=1,
        high=MAX_BATCH,
    )
    max_new_tokens: int = option(
        32, "tokens generated per answer", low=1, high=MAX_NEW_TOKENS, kinds=("extractive_qa",)
    )
    # decoding and k-shot prompting
    decoding: str = option(
        "grounded",
        "how answers are generated: free greedy generation; extractive (greedy, constrained to spans of the "
        "passage); or grounded (free, then each answer replaced by the passage span closest to it; "
        "extractive for answers sharing no word with the passage); grounded is the default: it had the "
        "highest F1 on SQuAD training questions and then on every 20th official v1.1 dev question "
        "(benchmarks/results/squad-zeroshot-decoding-*.json)",
        choices=("free", "extractive", "grounded"),
        kinds=("extractive_qa",),
    )
    kv_cache: str = option(
        "dynamic",
        "the key/value cache of generation: dynamic (grows token by token), or static (preallocated to the "
        "prompt and max_new_tokens, prompts padded to a power-of-two width so that there are few shapes; "
        "transformers' cache_implementation=static, which generate compiles on a GPU); the same answers",
        choices=("dynamic", "static"),
        kinds=("extractive_qa",),
    )
    focus: int = option(
        0,
        "show the model only the K sentences of the passage sharing the most words with the question, in "
        "passage order (0: the whole passage); answers come from those sentences. SQuAD v1.1's default is 2: "
        "chosen on training questions, +5.0 F1 on every 20th official dev question "
        "(benchmarks/results/squad-zeroshot-focus-cpu.json, with each shared word counted 1; now each "
        "weighs its rarity among the passage's sentences: squad-zeroshot-question-words-cpu.json)",
        low=0,
        high=64,
        kinds=("extractive_qa",),
    )
    question_words: str = option(
        "avoid",
        "the question's words in answers: avoid (an answer made only of them is answered again, constrained "
        "to whole words of the passage that start at and hold a word the question does not; every answer "
        "loses them and stop words at its ends) or keep; avoid is the default: it had the higher F1 on SQuAD "
        "training questions and then on every 20th official v1.1 dev question "
        "(benchmarks/results/squad-zeroshot-question-words-cpu.json)",
        choices=("avoid", "keep"),
        kinds=("extractive_qa",),
    )
    shots: int = option(
        0,
        "K solved examples from the task's training split (drawn with shot_seed, never from the evaluated "
        "file) shown before each input; 0: zero-shot",
        low=0,
        high=64,
    )
    shot_seed: int = option(1234, "seeds the draw of the k-shot examples", low=0, high=2**32, high_open=True)
    bf16: bool = option(
        True, BF16_HELP.format(how="weights", cpu=" and on CPUs with native bfloat16 (AVX512-BF16, AMX)")
    )


@dataclass
class FinetuneExtras:
    """A study task's `finetune` keys besides the training options (the CLI has flags for them too)."""

    limit: int | None = option(
        None,
        "dev examples the fine-tuned model is evaluated on (null: all); keep "
        "it equal to zeroshot.limit so that the paired tests compare the same "
        "examples",
        low=1,
        high=MAX_COUNT,
    )
    train_limit: int | None = option(
        None,
        "a random sample (seeded by `seed`) of N training examples (null: the whole split)",
        low=1,
        high=MAX_COUNT,
    )
    input_prompt: str | dict | None = option(
        None,
        "the zero-shot template that wraps each input (its label words "
        "also initialise the head); none or null: bare text",
        type="prompt",
        kinds=("classification",),
        default_note="the task's default template",
    )
    detokenize: bool = option(
        False,
        "train on each input as ordinary text, as zero-shot's `detokenize` shows it (Penn-Treebank "
        "tokenisation undone, an all-lowercase text capitalised); the fine-tuned model's evaluation and "
        "`tunelab predict` then read their inputs so too (its tunelab.json records it). SST-2's default is "
        "true: head-only fine-tuning on 2,000 training sentences gained 1.7 points on dev over three seeds "
        "(0.3 to 2.8 a seed; benchmarks/results/finetune-detokenize-cpu.json)",
        kinds=("classification",),
        default_note="the task's zero-shot detokenize",
    )

    # more training data
    extra_train: list[str] | None = option(
        None,
        "more training data read with the task's reader, each TASK:SPLIT (a built-in task's split in the "
        "same data folder, e.g. squad:train to add SQuAD v1.1 train to squad_v2) or a file; refused when "
        "it shares a passage or an input with the evaluated split",
        kinds=("extractive_qa", "classification"),
    )


@dataclass
class EvaluateOptions:
    """`tunelab evaluate` flags."""

    limit: int | None = option(None, "evaluate on the first N examples", low=1, high=MAX_COUNT)
    batch_size: int | str = option(
        64,
        "examples per forward pass; auto: batches filled up to a budget of tokens, as large as memory allows "
        "(halved on out-of-memory)",
        type="size",
        low=1,
        high=MAX_BATCH,
    )
    bf16: bool = option(True, BF16_HELP.format(how="autocast", cpu=BF16_CPU_AUTOCAST))


@dataclass
class StudyOptions:
    """The top level of a study configuration."""

    model: str = option(
        "smollm2-135m", "alias (smollm2-135m, llama-3.2-1b), local Hugging Face folder or Hub id"
    )
    data_dir: str | None = option(None, "folder laid out like ../shared/data; null: $TUNELAB_DATA_DIR")
    seed: int = option(
        42,
        "seeds fine-tuning (unless finetune.seed is given) and the training sample",
        low=0,
        high=2**32,
        high_open=True,
    )


@dataclass
class StudyTaskOptions:
    """One entry of a study configuration's `tasks` mapping (besides its zeroshot and finetune sections)."""

    enabled: bool = option(True, "run this task (built-in defaults: sst2 and squad on, squad_v2 off)")
    file: str | None = option(
        None, "a task file (YAML) defining a task of your own; the key is its name in this study"
    )
    version: str | None = option(
        None,
        "extractive QA: the SQuAD version of the task's files (must match "
        "the task: 1.1 for squad, 2.0 for squad_v2)",
        type="version",
        choices=("1.1", "2.0"),
        kinds=("extractive_qa",),
    )


# ------------------------------------------------------------------------------------------------------------
# Ecosystem options (issue 15): Hub datasets, experiment trackers, several seeds. Kept in one block (their
# types, groups and registration) so that other option additions merge cleanly.

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # accelerate's names; `none` logs to none
_ECO_RULES = {
    "seeds": "a list of integers in [0, 2^32) (or one comma-separated string)",
    "trackers": f"none, or a list of {', '.join(TRACKERS)} (or one comma-separated string)",
}


def _as_seeds(opt: Option, value: Any, bad) -> list[int]:
    if isinstance(value, str):
        parts = [v.strip() for v in value.split(",")]
        value = [int(v) if v.isdigit() else v for v in parts]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ok = isinstance(value, (list, tuple)) and value
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in value)
    if not ok or len(set(value)) != len(value):
        raise bad(_ECO_RULES["seeds"] + ", without repeats")
    return list(value)


def _as_trackers(opt: Option, value: Any, bad) -> list[str]:
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if isinstance(names, (list, tuple)) and not names:
        return []  # as a resolved config.yaml writes "none"
    if not isinstance(names, (list, tuple)) or not all(isinstance(v, str) for v in names):
        raise bad()
    names = [v.strip().lower() for v in names]
    if names == ["none"]:
        return []
    if any(v not in TRACKERS for v in names):
        raise bad()
    return list(dict.fromkeys(names))


_COERCE.update(seeds=_as_seeds, trackers=_as_trackers)


@dataclass
class EcoStudyOptions:
    """The study's top-level ecosystem options."""

    seeds: list[int] | None = option(
        None,
        "fine-tune one model per seed (seeding the head, LoRA, dropout, data order and the training sample); "
        "the report gives mean +- sd and each seed; null: the one `seed`",
        type="seeds",
    )
    report_to: list[str] = option(
        [],
        "experiment trackers (accelerate's): training loss, learning rate, tokens/s, evaluation metrics, "
        "the resolved config and the final zero-shot vs fine-tuned table",
        type="trackers",
        default_note="none",
    )


@dataclass
class EcoStudyTaskOptions:
    """A study task entry's ecosystem options."""

    dataset: str | None = option(
        None,
        "read the task's data through `datasets` instead of files: a Hub id with an optional config "
        "(nyu-mll/glue:sst2, rajpurkar/squad) or a local dataset folder",
    )


@dataclass
class EcoRunOptions:
    """`tunelab finetune` ecosystem flags (the study's are `report_to` and `seeds` in its config)."""

    report_to: list[str] = option(
        [], "experiment trackers: " + ", ".join(TRACKERS) + " or none", type="trackers", default_note="none"
    )
    seeds: list[int] | None = option(
        None,
        "fine-tune one model per seed into OUT/seed-N/ (with a mean +- sd summary)",
        type="seeds",
        default_note="one model, of --seed",
    )


ECO_RUN_OPTIONS = options_of(EcoRunOptions)

# ------------------------------------------------------------------------------------------------------------

TRAIN_OPTIONS = options_of(TrainConfig)
ZEROSHOT_OPTIONS = options_of(ZeroShotOptions)
FINETUNE_EXTRAS = options_of(FinetuneExtras)
EVALUATE_OPTIONS = options_of(EvaluateOptions)
STUDY_OPTIONS = {**options_of(StudyOptions), **options_of(EcoStudyOptions)}
STUDY_TASK_OPTIONS = {**options_of(StudyTaskOptions), **options_of(EcoStudyTaskOptions)}


def for_kind(opts: dict[str, Option], kind: str) -> dict[str, Option]:
    return {k: o for k, o in opts.items() if o.applies_to(kind)}


# ------------------------------------------------------------------------------------------------------------
# Command-line flags


def flag_name(opt: Option) -> str:
    return opt.flag or "--" + opt.name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    opts: dict[str, Option],
    *,
    names: tuple[str, ...] | None = None,
    defaults: bool = False,
    default_note: str = "the task's",
) -> None:
    """One flag per option. With `defaults`, a flag left out gives the option's default; without, None (so
    that per-task defaults and config files apply: see `given`). A boolean has --NAME and --no-NAME (either
    may override a task's or a config file's value); its help sits on the one that changes the default."""
    for name in names or tuple(opts):
        opt = opts[name]
        default = opt.default if defaults else None
        if defaults or not default_note:
            shown = _show(opt.default) if defaults else opt.default_note or _show(opt.default)
        else:
            shown = opt.default_note or f"{default_note}, else {_show(opt.default)}"
        only = f"; {' and '.join(opt.kinds)} tasks only" if opt.kinds else ""
        text = f"{opt.help} (default: {shown}{only})"
        if opt.type == "bool" and opt.default:  # --no-NAME: say that it turns the option off
            text = f"turn {name} off; {name}: {text}"
        if opt.type == "bool":
            on, off = flag_name(opt), "--no-" + name.replace("_", "-")
            flags = [(on, "store_true", "turn {} on"), (off, "store_false", "turn {} off")]
            for flag, action, other in flags if not opt.default else flags[::-1]:
                parser.add_argument(
                    flag,
                    dest=name,
                    action=action,
                    default=opt.default if defaults else None,
                    help=text if text else other.format(name),
                )
                text = ""
            continue
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": text}
        if opt.choices:
            kwargs["choices"] = opt.choices
        if opt.type in ("int", "float"):
            kwargs["type"] = int if opt.type == "int" else float
        if opt.type == "list":
            kwargs["metavar"] = "A,B,..."
        if opt.type == "size":
            kwargs["metavar"] = "N|auto"
        if opt.nullable:  # `--limit null` overrides a task's limit; a flag left out keeps it
            kwargs["type"] = _or_null(kwargs.get("type", str))
        parser.add_argument(flag_name(opt), **kwargs)


def _or_null(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return NULL if text.strip() == "null" else convert(text)

    parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'"
    return parse


def given(args: argparse.Namespace, opts: dict[str, Option]) -> dict:
    """The options set on the command line (flags made by `add_flags` without defaults); `null` is None."""
    values = {name: getattr(args, name) for name in opts if getattr(args, name, None) is not None}
    return {name: None if v is NULL else v for name, v in values.items()}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value)


# ------------------------------------------------------------------------------------------------------------
# The documented schema


def _schema_lines(opts: dict[str, Option], indent: str) -> list[str]:
    import textwrap

    lines = []
    for opt in opts.values():
        only = f" [{', '.join(opt.kinds)} only]" if opt.kinds else ""
        default = opt.default_note or _show(opt.default)
        lines.append(f"{indent}{opt.name}: {opt.rule()}; default {default}{only}")
        lines += textwrap.wrap(
            opt.help, 110, initial_indent=indent + "    ", subsequent_indent=indent + "    "
        )
    return lines


def schema_text(task_defaults: dict[str, dict] | None = None) -> str:
    """The study configuration's schema, generated from the option groups (YAML comment lines); with the
    defaults each named task sets (name -> {section: {option: value}})."""
    lines = [
        "# Study configuration schema (generated from tunelab/options.py: `tunelab study --print-schema`).",
        "# Every key is optional; unknown keys and wrong types are refused with a message naming the file",
        "# and the key. Layers, each over the one before: defaults < --preset < --config FILE < --set",
        "# KEY.PATH=VALUE (the `tasks.` prefix may be left out).",
        "#",
    ]
    lines += _schema_lines(STUDY_OPTIONS, "#   ")
    lines += [
        "#   tasks:",
        "#     <name>:     sst2, squad, squad_v2, or any name with `file:` (a task of your own)",
    ]
    lines += _schema_lines(STUDY_TASK_OPTIONS, "#       ")
    lines += ["#       zeroshot:"] + _schema_lines(ZEROSHOT_OPTIONS, "#         ")
    lines += ["#       finetune:"] + _schema_lines(FINETUNE_EXTRAS, "#         ")
    lines += ["#         ... and the training options:"] + _schema_lines(TRAIN_OPTIONS, "#         ")
    lines += [
        "#       variants: a mapping; default {} (none)",
        "#         <variant>:  a name (lower-case letters, digits, - and _; not seed<N>, base or finetuned):",
        "#             an extra fine-tuned model, trained into <task>/finetune-<variant>/, reported beside",
        "#             the main one; its keys are any of finetune's, over the task's finetune section; null",
        "#             removes a variant a lower layer defined (variants: null, all of them)",
    ]
    if task_defaults:
        lines += [
            "#",
            "# What each built-in task sets over these defaults (its definition in tunelab/tasks/builtin.py;",
            "# a task file of your own sets its own in `zeroshot:` and `finetune:`):",
        ]
        for name, sections in task_defaults.items():
            for section, values in sections.items():
                shown = ", ".join(f"{k}: {_show(v)}" for k, v in values.items())
                lines.append(f"#   {name}.{section}: {shown}")
    return "\n".join(lines) + "\n"
