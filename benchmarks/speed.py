"""tunelab's training loop against the Hugging Face baseline, on the same GPU, the same real data, in one run.

For each case (a model architecture x a task) it trains, one after the other in this process:

- the baseline: a real `transformers.Trainer` with the settings `run_glue.py` / `run_qa.py` use by default.
  SST-2: every sentence padded to max_length 128 (`padding="max_length"`), per-device batch 32, lr 2e-5.
  SQuAD: windows of max_length 384 with doc_stride 128, padded to 384, batch 12, lr 3e-5. Both with
  `bf16=True` on a GPU (fp32 weights under bf16 autocast; on a CPU float32, run_glue.py's default) and
  Trainer's default optimizer (`adamw_torch_fused`), no gradient checkpointing, no compilation;
- tunelab: `tunelab.training.train` (length-grouped batches, dynamic padding, fused AdamW, bf16 autocast
  through accelerate where bfloat16 is native: GPUs, CPUs with AVX512-BF16/AMX; tunelab.precision) with the
  same batch size and learning rate (`--tunelab-batch` to try another batch). Variant `fp32` is tunelab in
  float32, for the share of a CPU ratio that bfloat16 gives.

Rows. The baseline runs once per case; tunelab runs once per (inputs, variant), each row's `ratio` against
that same baseline run: for SST-2 two inputs, `bare` (the baseline's own inputs, the sentences alone) and
`prompt` (tunelab's default recipe: each sentence inside the chat input prompt, ~64 tokens instead of ~11;
needs the tokenizer's chat template), for SQuAD the windows; `--variants` picks sets of tunelab's speed
options (VARIANTS below: default, packing, compile, compile-packing, all, no-fused, fp32, ...). The case's
top-level `tunelab_s` / `ratio` are its first row's (bare inputs, first variant), `tunelab_rows` has every
row. `padded_tokens` counts what the loop computed on (padding, bucket padding, packing filler).

Both train on the SAME examples: the first (warm-up + steps) x batch examples of a seeded shuffle of SST-2
train sentences / SQuAD `v1.1-train.json` windows (tunelab's `prepare_train_features` windows, also used,
padded to 384, for the baseline). Each run is `--warmup` + `--steps` optimizer steps; only the last `--steps`
are timed (torch.cuda.synchronize() then perf_counter at the end of step `warmup` and of the last step). The
epoch time is extrapolated per example: timed seconds / timed examples x the epoch's examples (67,349
sentences; all the windows of v1.1-train.json); `extrapolation_factor` says by how much.

Models are built from their configs with random weights (`from_config`, sdpa attention, fp32 parameters):
speed does not depend on the weights. The Llama-3.2-1B architecture is the config tunelab ships
(`tunelab.models.load_config("llama-3.2-1b")`); SmolLM2-135M likewise. Token ids come from the SmolLM2
tokenizer for both models (Llama-3.2's own tokenizer is on the gated Hub; its token counts differ slightly;
SmolLM2's 49,152 ids are all valid in Llama's 128,256-entry vocabulary).

Reported per case: epoch seconds (baseline_s, tunelab_s, ratio = baseline_s / tunelab_s), real (non-pad) and
padded tokens per second, MFU, peak GPU memory. MFU = 6 x non-embedding parameters x real tokens / seconds /
peak (the embedding lookup does no matmul and these task heads have no LM head; attention FLOPs are not
counted); `mfu_padded` counts the padded tokens instead (work the GPU really did); with a shared prefix (run
once per piece) `mfu` counts token-equivalents (`mfu_basis`). A compiled row first runs its steps once
untimed, so that every shape its batches take is compiled before the clock; `compiles_in_timed_steps` checks
that none was compiled while timed. Quality is not measured
here (random weights): tunelab's SmolLM2 quality on the same data is benchmarks/gpu_study.py's job;
`--quality` copies its saved results (benchmarks/results/gpu-study-*.json) into the output.

Usage (GPU; see benchmarks/README.md for the device call):

    python benchmarks/speed.py --tokenizer DIR --steps 60 --out benchmarks/results/
    python benchmarks/speed.py --tokenizer DIR --steps 60 --variants default,packing,compile,all --out DIR/
    python benchmarks/speed.py --tiny --cases sst2-smollm2,squad-smollm2 --out /tmp/speed.json   # CPU check

The JSON (written again after every case, so a run cut short keeps what it finished) goes to --out: a file, or
a folder that gets speed-<gpu>.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))

from tunelab.precision import bf16_native  # noqa: E402

CASES = {
    "sst2-llama1b": ("llama-3.2-1b", "sst2"),
    "squad-llama1b": ("llama-3.2-1b", "squad"),
    "sst2-smollm2": ("smollm2-135m", "sst2"),
    "squad-smollm2": ("smollm2-135m", "squad"),
}
# The defaults of transformers' examples/pytorch/text-classification/run_glue.py and
# question-answering/run_qa.py (with --bf16, as their READMEs train on GPUs).
BASELINE = {
    "sst2": {"script": "run_glue.py", "max_length": 128, "batch_size": 32, "learning_rate": 2e-5},
    "squad": {
        "script": "run_qa.py",
        "max_length": 384,
        "doc_stride": 128,
        "batch_size": 12,
        "learning_rate": 3e-5,
    },
}
SST2_EPOCH = "SST-2/train.tsv"
SQUAD_FILE = "squad/v1.1-train.json"
TINY_EXAMPLES = 64
TINY_BATCH = 8
MFU_NOTE = (
    "mfu = 6 x non-embedding parameters x real (non-pad) tokens / seconds / peak; mfu_padded counts padded "
    "tokens; attention FLOPs are not counted; the embedding lookup does no matmul and the task heads have "
    "no LM head"
)
TOKENIZER_NOTE = (
    "token ids from the SmolLM2-135M tokenizer for both models (Llama-3.2's own tokenizer is on the "
    "gated Hub; its token counts differ slightly); SmolLM2's 49,152 ids are valid in Llama's "
    "128,256-entry vocabulary"
)
QUALITY_NOTE = (
    "speed only: models have random weights. tunelab's SmolLM2-135M quality on the same data comes from "
    "benchmarks/gpu_study.py (benchmarks/results/gpu-study-*.json); run with --quality to copy it here"
)


# ---- machine and output
# ---------------------------------------------------------------------------------------


def machine() -> dict:
    import torch
    import transformers

    info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import accelerate

        info["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            bf16=bf16_native(torch.device("cuda")),
        )
    else:
        info["gpu"] = None
    return info


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def gpu_slug(name: str) -> str:
    m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.lower().replace("nvidia", ""))
    return m.group(1) if m and name != "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def out_path(arg: str | None, tiny: bool) -> Path:
    name = f"speed-{gpu_slug(gpu_name())}{'-tiny' if tiny else ''}.json"
    if arg is None:
        return HERE / "results" / name
    path = Path(arg)
    if path.is_dir() or arg.endswith("/"):
        return path / name
    return path


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# ---- tokenizer and data
# --------------------------------------------------------------------------------------


def load_timing_tokenizer(folder: str | None):
    """SmolLM2's tokenizer: from a folder holding its tokenizer.json (a device call carries ~3.5 MB, not the
    model), else tunelab's cached conversion ($TUNELAB_CACHE/models/smollm2-135m), else
    tunelab.models.load_tokenizer (converts the embedded GGUF once, ~20 s). Returns (tokenizer, where)."""
    from tunelab.models.registry import cache_dir

    path = Path(folder) if folder else cache_dir() / "models" / "smollm2-135m"
    if (path / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        special = {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
        }
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text())
            special.update({k: cfg[k] for k in special if isinstance(cfg.get(k), str)})
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), **special)
        if (path / "chat_template.jinja").is_file():  # the default SST-2 recipe's prompt needs it
            tok.chat_template = (path / "chat_template.jinja").read_text()
        where = str(path)
    elif folder:
        raise SystemExit(f"--tokenizer {folder}: no tokenizer.json there")
    else:
        from tunelab.models import load_tokenizer

        tok = load_tokenizer("smollm2-135m", padding_side="right")
        where = "tunelab.models.load_tokenizer('smollm2-135m')"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok, where


def sst2_data(tok, n: int, seed: int, tiny: bool):
    """({inputs: features} for the first n of a seeded shuffle of SST-2 train, epoch size, source file).
    inputs `bare`: the sentences alone (the baseline's, run_glue.py's inputs); `prompt`: each sentence inside
    the task's default fine-tuning input prompt (tunelab's default recipe), truncated like it (max_length
    128, the start dropped); missing when the tokenizer has no chat template (PROMPT_MISSING says why)."""
    from tunelab.tasks import get_task
    from tunelab.tasks.classification import encode, format_input

    task = get_task("sst2")
    path = task.data_path("train")
    examples = [ex for ex in task.read(path) if ex.label is not None]
    order = np.random.default_rng(seed).permutation(len(examples))
    epoch = len(examples)
    if tiny:
        order, epoch = order[:TINY_EXAMPLES], TINY_EXAMPLES
    if n > len(order):
        raise SystemExit(f"sst2: {n} examples needed, {len(order)} available")
    chosen = [examples[i] for i in order[:n]]
    width = BASELINE["sst2"]["max_length"]

    def features(texts, special=True):
        ids = encode(tok, texts, width, special)
        return [
            {"input_ids": x, "attention_mask": [1] * len(x), "labels": ex.label}
            for x, ex in zip(ids, chosen, strict=True)
        ]

    feats = {"bare": features([ex.text for ex in chosen])}
    if tok.chat_template is not None:
        prompt = task.input_prompt(task.finetune_extras()["input_prompt"])
        texts = [format_input(prompt, tok, ex.text) for ex in chosen]
        feats["prompt"] = features(texts, prompt.add_special_tokens)
    return feats, epoch, str(path)


def squad_data(tok, n: int, seed: int, tiny: bool):
    """(the first n of a seeded shuffle of all SQuAD v1.1-train windows, number of windows, source file)."""
    from tunelab.tasks import get_task
    from tunelab.tasks.extractive_qa.windows import prepare_train_features

    b = BASELINE["squad"]
    task = get_task("squad")
    path = task.data_path("train")
    examples = task.read(path)
    if tiny:  # the first questions of a shuffle, so the tiny run tokenises little
        pick = np.random.default_rng(seed).permutation(len(examples))[:TINY_EXAMPLES]
        examples = [examples[i] for i in pick]
    f = prepare_train_features(examples, tok, b["max_length"], b["doc_stride"])
    windows = [
        {"input_ids": x, "attention_mask": m, "start_positions": s, "end_positions": e}
        for x, m, s, e in zip(
            f["input_ids"], f["attention_mask"], f["start_positions"], f["end_positions"], strict=True
        )
    ]
    order = np.random.default_rng(seed).permutation(len(windows))
    epoch = len(windows)
    if tiny:
        order, epoch = order[:TINY_EXAMPLES], min(TINY_EXAMPLES, len(windows))
    if n > len(order):
        raise SystemExit(f"squad: {n} windows needed, {len(order)} available")
    return {"windows": [windows[i] for i in order[:n]]}, epoch, str(path)


def pad_to(feats: list[dict], width: int, pad_id: int) -> list[dict]:
    """run_glue/run_qa's `padding="max_length"`: every example padded on the right to `width`."""
    out = []
    for f in feats:
        extra = width - len(f["input_ids"])
        out.append(
            {
                **f,
                "input_ids": f["input_ids"] + [pad_id] * extra,
                "attention_mask": f["attention_mask"] + [0] * extra,
            }
        )
    return out


# ---- models
# -----------------------------------------------------------------------------------------------------


def build_model(alias: str, task: str, *, tiny: bool, device, pad_id: int, seed: int):
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    from tunelab.models.registry import load_config

    cfg = load_config(alias)
    if tiny:
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    cfg.pad_token_id = pad_id
    if task == "sst2":
        cfg.num_labels = 2
        cls = AutoModelForSequenceClassification
    else:
        cls = AutoModelForQuestionAnswering
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls.from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device)


def param_counts(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return total, total - embed


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib():
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


# ---- the two runs
# -------------------------------------------------------------------------------------------


def run_baseline(model, feats, *, task, warmup, steps, seed, pad_id, work) -> dict:
    """transformers.Trainer as run_glue/run_qa drive it; times steps warmup+1 .. warmup+steps."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    b = BASELINE[task]
    total = warmup + steps
    batches: list[tuple[int, int, int]] = []  # (real tokens, padded tokens, examples) per collated batch

    def collate(rows):
        batches.append(
            (sum(sum(r["attention_mask"]) for r in rows), sum(len(r["input_ids"]) for r in rows), len(rows))
        )
        return default_data_collator(rows)

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warmup, total):
                sync()
                marks[state.global_step] = time.perf_counter()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(padded)

        def __getitem__(self, i):
            return padded[i]

    padded = pad_to(feats, b["max_length"], pad_id)
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=b["batch_size"],
        learning_rate=b["learning_rate"],
        num_train_epochs=1,
        max_steps=total,
        bf16=cuda and bf16_native(torch.device("cuda")),  # as tunelab decides
        use_cpu=not cuda,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=Rows(), data_collator=collate, callbacks=[Clock()]
    )
    trainer.train()
    if set(marks) != {warmup, total}:
        raise RuntimeError(f"baseline: step clock saw {sorted(marks)}, expected {warmup} and {total}")
    timed = batches[warmup:total]
    settings = {
        "script": b["script"],
        "padding": f"max_length ({b['max_length']})",
        "optim": getattr(args.optim, "value", str(args.optim)),
        "bf16": args.bf16,
        "learning_rate": b["learning_rate"],
        "lr_scheduler": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
    }
    if "doc_stride" in b:
        settings["doc_stride"] = b["doc_stride"]
    del trainer
    return {
        "timed_s": marks[total] - marks[warmup],
        "batch_size": b["batch_size"],
        "real_tokens": sum(t[0] for t in timed),
        "padded_tokens": sum(t[1] for t in timed),
        "timed_examples": sum(t[2] for t in timed),
        "settings": settings,
    }


# tunelab's speed options (tunelab.options.TrainConfig's last block), by the name --variants uses. `default`
# is TrainConfig's defaults (fused AdamW on CUDA and CPU, share_prefix auto: on a CPU, the rest off); each
# other variant sets options over it.
VARIANTS = {
    "default": {},
    "packing": {"packing": True},
    "compile": {"compile": True},
    "compile-packing": {"compile": True, "packing": True},
    "all": {"compile": True, "packing": True, "pin_memory": True, "micro_batch_size": "auto"},
    "no-fused": {"fused_optimizer": False},
    "share-prefix": {"share_prefix": "on"},
    "no-share-prefix": {"share_prefix": "off"},
    "fp32": {"bf16": False},  # float32 where the default is bfloat16 (GPUs, CPUs with native bf16)
}


def computed_tokens(
    feats: list[dict], batches: list[list[int]], cfg, chunks: int, pad_id: int, shared: bool = False
) -> tuple[int, int]:
    """(tokens the loop computed on for these micro-batches, padding and packing filler included; real tokens
    it did not compute because a shared prefix ran once), built by the loop's own functions
    (tunelab.training.speed) with the pieces the run ended with; `shared`: pieces ran their shared prefix once
    (the loop's rule: tunelab.prefix_cache, at least MIN_PREFIX tokens)."""
    from tunelab.prefix_cache import MIN_PREFIX, shared_prefix
    from tunelab.training import speed

    total = saved = 0
    for bt in batches:
        size = -(-len(bt) // chunks)
        for s in range(0, len(bt), size):
            part = [feats[i] for i in bt[s : s + size]]
            start = shared_prefix([f["input_ids"] for f in part]) if shared else 0
            if start >= MIN_PREFIX:  # the prefix once, then each row's own tokens padded to the longest
                total += start + len(part) * (max(len(f["input_ids"]) for f in part) - start)
                saved += (len(part) - 1) * start
            elif cfg.packing:
                total += speed.packed(part, pad_id, cfg.max_length, static=cfg.compile).input_ids.numel()
            else:
                total += speed.padded(part, pad_id, cfg.max_length, static=cfg.compile)["input_ids"].numel()
    return total, saved


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled so far in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_tunelab(model, feats, *, task, batch_size, warmup, steps, seed, pad_id, work, options=None) -> dict:
    """tunelab.training.train on the same examples; times steps warmup+1 .. warmup+steps (the end of step
    `warmup` is marked by the evaluate hook, the end of the last step after train() returns). `options`:
    TrainConfig speed options (VARIANTS)."""
    from tunelab.models.heads import head
    from tunelab.options import SPEED_OPTIONS
    from tunelab.precision import float32_head
    from tunelab.tasks.extractive_qa.windows import span_loss
    from tunelab.training import TrainConfig, length_grouped_order, train

    b = BASELINE[task]
    total = warmup + steps
    cfg = TrainConfig(
        **{
            "batch_size": batch_size,
            "learning_rate": b["learning_rate"],
            "epochs": 1.0,
            "max_steps": total,
            "group_by_length": True,
            "max_length": b["max_length"],
            "log_every": total,
            "eval_every": warmup,
            "seed": seed,
            **(options or {}),
        }
    )
    marks: dict[str, float] = {}
    # the head in float32, as tunelab.models.load_task_model gives it
    float32_head(getattr(model, head("classification" if task == "sst2" else "span").module))
    loss_fn = span_loss if task == "squad" else None  # the loss `tunelab finetune` trains with
    if cfg.compile:
        # Compile every shape these batches take before the clock: the timed steps can meet a bucket the
        # warm-up steps did not (a compile costs seconds, a step milliseconds). One untimed run of the same
        # steps does it (the compiled layers keep their graphs); the timed run then trains on.
        train(model, feats, cfg, pad_id=pad_id, work_dir=work / "compile", progress=False, loss_fn=loss_fn)

    def evaluate(_model):  # called after steps warmup, 2 x warmup, ...: only the first marks the clock
        if "warm" not in marks:
            sync()
            marks["warm"] = time.perf_counter()
            marks["graphs"] = compiled_graphs()
        return {}

    result = train(
        model,
        feats,
        cfg,
        pad_id=pad_id,
        work_dir=work,
        evaluate=evaluate,
        progress=False,
        loss_fn=loss_fn,
    )
    sync()
    end = time.perf_counter()
    if "warm" not in marks:
        raise RuntimeError("tunelab: the warm-up mark was not reached")
    # the batches train() formed (one process, epoch 0): the same function, the same seed
    lengths = [len(f["input_ids"]) for f in feats]
    timed = length_grouped_order(lengths, batch_size, cfg.seed)[warmup:total]
    computed, saved = computed_tokens(feats, timed, cfg, result.chunks, pad_id, result.shared_prefix)
    return {
        "timed_s": end - marks["warm"],
        "compiles_in_timed_steps": compiled_graphs() - marks["graphs"],  # should be 0
        "batch_size": batch_size,
        "real_tokens": sum(sum(feats[i]["attention_mask"]) for bt in timed for i in bt),
        "padded_tokens": computed,
        "prefix_tokens_shared": saved,  # real tokens not computed: a shared prefix ran once per piece
        "shared_prefix": result.shared_prefix,
        "timed_examples": sum(len(bt) for bt in timed),
        "micro_batch_pieces": result.chunks,
        "settings": {
            "padding": "packed rows" if cfg.packing else "dynamic, length-grouped batches",
            "optim": "torch.optim.AdamW(fused=True on CUDA and CPU)"
            if cfg.fused_optimizer
            else "torch.optim.AdamW(for-loop)",
            "bf16": f"autocast {result.dtype} (bfloat16 where native: GPUs, CPUs with AVX512-BF16/AMX)",
            "learning_rate": b["learning_rate"],
            "lr_scheduler": cfg.lr_schedule,
            "warmup_ratio": cfg.warmup_ratio,
            "weight_decay": cfg.weight_decay,
            "max_grad_norm": cfg.max_grad_norm,
            "speed_options": {k: getattr(cfg, k) for k in SPEED_OPTIONS},
        },
    }


def summarise(
    run: dict, *, steps: int, epoch: int, nonembed: int, peak_tflops: float, cuda: bool, mem
) -> dict:
    s = run["timed_s"]
    factor = epoch / run["timed_examples"]
    shared = run.get("prefix_tokens_shared", 0)
    out = {
        **{k: v for k, v in run.items() if k != "settings"},
        "s_per_step": s / steps,
        "epoch_s": s * factor,
        "extrapolation_factor": factor,
        "real_tokens_per_s": run["real_tokens"] / s,
        "padded_tokens_per_s": run["padded_tokens"] / s,
        # of the tokens computed, those that are padding (a shared prefix, run once, counted once)
        "padding_fraction": 1 - (run["real_tokens"] - shared) / run["padded_tokens"],
        # with a shared prefix `mfu` counts token-equivalents: the work of the rows without the sharing
        "mfu_basis": "token-equivalent (a shared prefix ran once)" if shared else "real tokens",
        "mfu": (6 * nonembed * run["real_tokens"] / s / (peak_tflops * 1e12)) if cuda else None,
        "mfu_padded": (6 * nonembed * run["padded_tokens"] / s / (peak_tflops * 1e12)) if cuda else None,
        "peak_memory_gib": mem,
        "settings": run["settings"],
    }
    return out


_DATA: dict[tuple[str, int], tuple[list[dict], int, str]] = {}


INPUTS_NOTE = {
    "bare": "the baseline's inputs: the bare sentences (run_glue.py)",
    "prompt": "tunelab's default SST-2 recipe: each sentence inside the chat input prompt",
    "windows": "SQuAD windows, the same for both",
}
PROMPT_MISSING = "the tokenizer has no chat template (chat_template.jinja beside tokenizer.json)"


def one_run(who: str, case: dict, args, run_fn, *, nonembed_from, epoch: int, cuda: bool) -> dict:
    """Build a fresh model, run `run_fn(model, work)` on it, and summarise the timing."""
    import torch

    free_memory()
    left = round(torch.cuda.memory_allocated() / 2**30, 3) if cuda else None  # > 0: an earlier run leaked
    model = nonembed_from()
    total, nonembed = param_counts(model)
    case["params"], case["nonembedding_params"] = total, nonembed
    with tempfile.TemporaryDirectory(prefix=f"speed-{who}-") as work:
        run = run_fn(model, Path(work))
    out = summarise(
        run,
        steps=args.steps,
        epoch=epoch,
        nonembed=nonembed,
        peak_tflops=args.peak_tflops,
        cuda=cuda,
        mem=peak_gib(),
    )
    out["allocated_before_gib"] = left
    del model
    free_memory()
    took = f"{run['timed_s']:.3f} s for {args.steps} steps"
    print(f"  {case['case']} {who}: {took}, epoch ~{out['epoch_s']:.1f} s", flush=True)
    return out


def run_case(name: str, args, tok, tok_where: str) -> dict:
    """The baseline once, then one tunelab row per (inputs, variant): SST-2 with the baseline's bare
    sentences and with tunelab's default prompt recipe; each variant a set of speed options. Every row's
    ratio is against the same baseline run."""
    import torch

    alias, task = CASES[name]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    b = BASELINE[task]
    tb = args.tunelab_batch or b["batch_size"]
    n = (args.warmup + args.steps) * max(b["batch_size"], tb)
    t_case = time.perf_counter()
    key = (task, n)
    if key not in _DATA:  # both models of a task train on the same token ids: tokenise once
        loader = sst2_data if task == "sst2" else squad_data
        _DATA[key] = loader(tok, n, args.seed, args.tiny)
    inputs, epoch, source = _DATA[key]
    base_inputs = "bare" if task == "sst2" else "windows"
    case = {
        "case": name,
        "model": alias + (" (tiny: 2 layers, hidden 64)" if args.tiny else ""),
        "task": task,
        "gpu": gpu_name(),
        "data": source,
        "epoch_examples": epoch,
        "examples_used": n,
        "warmup_steps": args.warmup,
        "steps_timed": args.steps,
        "batch_size": {"baseline": b["batch_size"], "tunelab": tb},
        "same_batch": tb == b["batch_size"],
        "tokenizer": tok_where,
        "baseline_inputs": INPUTS_NOTE[base_inputs],
    }
    pad = tok.pad_token_id
    common = {"task": task, "warmup": args.warmup, "steps": args.steps, "seed": args.seed, "pad_id": pad}

    def build():
        return build_model(alias, task, tiny=args.tiny, device=device, pad_id=pad, seed=args.seed)

    size = (args.warmup + args.steps) * b["batch_size"]
    base = one_run(
        "baseline",
        case,
        args,
        lambda model, work: run_baseline(model, inputs[base_inputs][:size], work=work, **common),
        nonembed_from=build,
        epoch=epoch,
        cuda=cuda,
    )
    rows, skipped = [], []
    wanted = ["bare", "prompt"] if task == "sst2" else ["windows"]
    for kind in wanted:
        if kind not in inputs:
            skipped.append({"inputs": kind, "why": PROMPT_MISSING})
            continue
        feats = inputs[kind][: (args.warmup + args.steps) * tb]
        for variant in args.variants:
            label = f"tunelab {variant}, {kind}"
            try:
                row = one_run(
                    label,
                    case,
                    args,
                    lambda model, work, feats=feats, variant=variant: run_tunelab(
                        model, feats, batch_size=tb, work=work, options=VARIANTS[variant], **common
                    ),
                    nonembed_from=build,
                    epoch=epoch,
                    cuda=cuda,
                )
            except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
                traceback.print_exc()
                free_memory()
                error = f"{type(exc).__name__}: {exc}"[:2000]
                rows.append(
                    {"label": label, "inputs": kind, "variant": variant, "status": "error", "error": error}
                )
                continue
            ratio = base["epoch_s"] / row["epoch_s"]
            row.update(label=label, inputs=kind, inputs_note=INPUTS_NOTE[kind], variant=variant)
            row.update(options=VARIANTS[variant], ratio=ratio, status="ok")
            rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise RuntimeError(f"every tunelab row failed: {[r.get('error') for r in rows]}")
    first = ok[0]  # the baseline's own inputs with the first variant: the apples-to-apples figure
    case.update(
        baseline_s=base["epoch_s"],
        tunelab_s=first["epoch_s"],
        ratio=base["epoch_s"] / first["epoch_s"],
        headline_row=first["label"],
        real_tokens_per_s={"baseline": base["real_tokens_per_s"], "tunelab": first["real_tokens_per_s"]},
        padded_tokens_per_s={
            "baseline": base["padded_tokens_per_s"],
            "tunelab": first["padded_tokens_per_s"],
        },
        mfu={"baseline": base["mfu"], "tunelab": first["mfu"]},
        peak_memory_gib={"baseline": base["peak_memory_gib"], "tunelab": first["peak_memory_gib"]},
        extrapolation_factor={
            "baseline": base["extrapolation_factor"],
            "tunelab": first["extrapolation_factor"],
        },
        baseline=base,
        tunelab=first,
        tunelab_rows=rows,
        skipped_rows=skipped,
        wall_s=time.perf_counter() - t_case,
        status="ok",
    )
    return case


def quality_results() -> list[dict]:
    """tunelab's SmolLM2 fine-tuning metrics saved by benchmarks/gpu_study.py."""
    found = []
    for f in sorted((HERE / "results").glob("gpu-study-*.json")):
        s = json.loads(f.read_text())
        found.append(
            {
                "file": str(f.relative_to(REPO)),
                "gpu": s.get("machine", {}).get("gpu"),
                "stages": [
                    {k: st[k] for k in ("stage", "metrics") if k in st}
                    for st in s.get("stages", [])
                    if "metrics" in st
                ],
            }
        )
    return found


def parse_variants(ap, text: str) -> list[str]:
    variants = [v.strip() for v in text.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: of {', '.join(VARIANTS)}, got {variants}")
    return variants


def print_rows(case: dict) -> None:
    for row in case["tunelab_rows"]:
        if row["status"] == "ok":
            print(
                f"{case['case']}: baseline {case['baseline_s']:.1f} s/epoch, {row['label']} "
                f"{row['epoch_s']:.1f} s/epoch, ratio {row['ratio']:.2f}x",
                flush=True,
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=60, help="timed optimizer steps per run (default 60)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed optimizer steps before them (default 10)")
    ap.add_argument(
        "--tunelab-batch",
        type=int,
        default=None,
        help="tunelab's batch size (default: the baseline's, for an apples-to-apples ratio)",
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="the GPU's dense bf16 peak for MFU (default 989: H100/H200 SXM)",
    )
    ap.add_argument(
        "--tokenizer", help="a folder with SmolLM2's tokenizer.json (default: tunelab's model cache)"
    )
    ap.add_argument(
        "--variants",
        default="default",
        help=f"tunelab rows, comma-separated, of: {', '.join(VARIANTS)} (default: default, i.e. the "
        "options' defaults)",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", help="a .json file or a folder (default benchmarks/results/speed-<gpu>.json)")
    ap.add_argument(
        "--quality", action="store_true", help="copy gpu_study.py's saved SmolLM2 metrics into the JSON"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="2-layer hidden-64 models, 1+3 steps of batch <= 8, 64 examples, SQuAD windows of 128 "
        "tokens: checks the script on a CPU in seconds",
    )
    args = ap.parse_args(argv)

    import torch

    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown or not names:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    if args.tiny:
        args.steps, args.warmup = 3, 1
        torch.set_num_threads(1)  # light on a shared CPU (and no OpenMP barrier stalls when it is busy)
    args.variants = parse_variants(ap, args.variants)
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1")
    if args.tiny:  # CPU-sized: batches of at most 8, SQuAD windows of 128 tokens (stride 32)
        for b in BASELINE.values():
            b["batch_size"] = min(b["batch_size"], TINY_BATCH)
        BASELINE["squad"].update(max_length=128, doc_stride=32)
        if args.tunelab_batch:
            args.tunelab_batch = min(args.tunelab_batch, TINY_BATCH)
    out = out_path(args.out, args.tiny)
    tok, tok_where = load_timing_tokenizer(args.tokenizer)
    report = {
        "benchmark": "tunelab vs Hugging Face Trainer (run_glue.py / run_qa.py defaults): training speed",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "steps_timed": args.steps,
            "warmup_steps": args.warmup,
            "seed": args.seed,
            "peak_tflops": args.peak_tflops,
            "tiny": args.tiny,
            "tunelab_batch": args.tunelab_batch,
            "variants": {v: VARIANTS[v] for v in args.variants},
            "baseline": BASELINE,
        },
        "method": (
            "both runs train on the same examples (the first (warmup+steps) x batch of a seeded shuffle); "
            "the last `steps` optimizer steps are timed (cuda synchronize + perf_counter); epoch seconds = "
            "timed seconds / timed examples x epoch examples; models have random weights (from_config, "
            "sdpa, fp32 parameters); ratio = baseline_s / tunelab_s (above 1: tunelab is faster)"
        ),
        "tokenizer": TOKENIZER_NOTE,
        "mfu_definition": MFU_NOTE,
        "quality": QUALITY_NOTE,
        "cases": [],
    }
    if args.quality:
        report["quality_results"] = quality_results()
    print(f"speed: {', '.join(names)} on {gpu_name()} -> {out}", flush=True)
    failed = 0
    for name in names:
        try:
            case = run_case(name, args, tok, tok_where)
        except Exception as exc:  # noqa: BLE001 - one case failing (e.g. out of memory) must not lose the others
            failed += 1
            traceback.print_exc()
            case = {
                "case": name,
                "model": CASES[name][0],
                "task": CASES[name][1],
                "gpu": gpu_name(),
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}"[:2000],
            }
        free_memory()  # here, once the exception (and the model its frames hold) is gone
        report["cases"].append(case)
        write_json(out, report)
        if case["status"] == "ok":
            print_rows(case)
    write_json(out, report)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
