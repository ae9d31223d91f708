"""One fine-tuning loop for both tasks, on a CPU, one GPU or many (`accelerate launch`).

Reads top to bottom like a recipe: batches → model → optimizer/schedule → loop (log, evaluate, checkpoint) → save.
Written by hand rather than with `transformers.Trainer` for what Trainer does not give: length-grouped batches
with dynamic padding and no per-step host synchronisation, checkpoints saved atomically, and exact resumption.

Batches and processes. `batch_size` is per process (as in Hugging Face): with N processes one optimizer step
sees `batch_size x N x grad_accum` examples. Every process builds the same global order of global batches of
`batch_size x N` (same seed everywhere) and takes its own contiguous slice of each, so N processes with batch B
train on exactly the batches one process with batch N x B would. An epoch's last global batch may be short; it is
split as evenly as the examples allow (no example dropped or repeated) and each process's mean loss is weighted
by its share, so the gradient DDP averages is still the mean over the global batch. (A process whose slice is
empty runs one example with weight 0 so the gradient all-reduce still lines up.)

Resumption. Every `save_every` steps the model, optimizer, LR schedule, every process's RNG states (Python,
NumPy, torch CPU and CUDA), the data position, the running loss and the log so far go into
`work_dir/checkpoints/step-N`, written in a temporary folder, flushed to disk, marked COMPLETE and renamed.
`resume=True` continues from the newest complete checkpoint and replays the data order up to it, so an
interrupted and resumed run ends with the same weights and metrics as an uninterrupted one (bit for bit on
the same hardware and thread count).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tunelab.errors import UsageError
from tunelab.outputs import check_joined, distributed_state, launched_processes

_INTS_MIN_1 = ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "log_every")
_INTS_MIN_0 = ("eval_every", "save_every")
_OPTIONAL_INTS = ("max_train_samples", "max_steps")
_FLOATS = ("learning_rate", "epochs", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_dropout")
_BOOLS = ("bf16", "group_by_length", "merge_lora")
# Options that change what is trained: a checkpoint only resumes a run that agrees on all of them.
_NOT_TRAINING = ("eval_every", "log_every", "save_every", "merge_lora")


@dataclass
class TrainConfig:
    method: str = "full"  # full | lora | head
    learning_rate: float = 2e-5
    epochs: float = 1.0
    batch_size: int = 32  # per process
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    lr_schedule: str = "linear"  # linear | cosine | constant
    max_length: int = 128
    seed: int = 42
    bf16: bool = True  # used on GPUs that support it; CPUs train in float32
    eval_every: int = 0  # steps; 0 = only at the end
    log_every: int = 20
    save_every: int = 0  # steps; 0 = no intermediate checkpoints
    max_train_samples: int | None = None
    max_steps: int | None = None
    group_by_length: bool = True
    max_grad_norm: float = 1.0  # 0 = no clipping
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_lora: bool = False

    @classmethod
    def from_dict(cls, d: dict, where: str = "training config") -> TrainConfig:
        if not isinstance(d, dict):
            raise UsageError(f"{where}: expected a mapping of training options, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise UsageError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        for name in _FLOATS:
            # YAML 1.1 reads `1e-4` (no dot) as a string; accept any string that is plainly a number.
            if isinstance(d.get(name), str):
                try:
                    d[name] = float(d[name])
                except ValueError:
                    pass
        if isinstance(d.get("lora_targets"), str):
            d["lora_targets"] = [t.strip() for t in d["lora_targets"].split(",")]
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "training config") -> None:
        """Types and ranges of every option; a UsageError names the option, the rule and the value."""

        def need(ok: bool, msg: str):
            if not ok:
                raise UsageError(f"{where}: {msg}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v) -> bool:
            return is_int(v) or (isinstance(v, float) and math.isfinite(v))

        for name in _FLOATS:
            v = getattr(self, name)
            need(is_real(v), f"{name} must be a (finite) number, got {v!r}")
        for name in _INTS_MIN_1:
            v = getattr(self, name)
            need(is_int(v) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        for name in _INTS_MIN_0:
            v = getattr(self, name)
            need(is_int(v) and v >= 0, f"{name} must be an integer >= 0 (0 = never), got {v!r}")
        for name in _OPTIONAL_INTS:
            v = getattr(self, name)
            need(v is None or (is_int(v) and v >= 1), f"{name} must be an integer >= 1 (or unset), got {v!r}")
        for name in _BOOLS:
            v = getattr(self, name)
            need(isinstance(v, bool), f"{name} must be true or false, got {v!r}")
        need(isinstance(self.method, str) and self.method in ("full", "lora", "head"),
             f"method must be full, lora or head, got {self.method!r}")
        need(isinstance(self.lr_schedule, str) and self.lr_schedule in ("linear", "cosine", "constant"),
             f"lr_schedule must be linear, cosine or constant, got {self.lr_schedule!r}")
        need(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        need(self.epochs > 0, f"epochs must be > 0, got {self.epochs!r}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm!r}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        need(is_int(self.seed) and 0 <= self.seed < 2**32, f"seed must be an integer in [0, 2^32), got {self.seed!r}")
        need(self.max_length <= 1_000_000, f"max_length must be at most 1000000 tokens, got {self.max_length!r}")
        targets = self.lora_targets
        need(isinstance(targets, (list, tuple)) and len(targets) > 0
             and all(isinstance(t, str) and t.strip() for t in targets),
             f"lora_targets must be a non-empty list of module names, got {targets!r}")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length in random order: shuffle, sort inside mega-batches of 50 batches, cut.
    Dynamic padding then pads each batch to its own longest example (SST-2's ~13-token sentences padded to 128
    would be ~90% padding). Only the last batch can be short."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * 50
    batches = []
    for s in range(0, len(perm), mega):
        chunk = sorted(perm[s : s + mega].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def random_order(n: int, batch_size: int, seed: int) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous slice [lo, hi) of n items that process `rank` of `world` takes: sizes differ by at most
    one, every item belongs to exactly one process (np.array_split's rule)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_batch(global_batch: list[int], world: int, rank: int) -> tuple[list[int], float]:
    """This process's part of a global batch and the weight of its mean loss, world x share, so that the
    average DDP takes over processes equals the mean over the whole global batch. An empty part (a global batch
    shorter than the number of processes) becomes one example with weight 0."""
    lo, hi = shard_bounds(len(global_batch), world, rank)
    if hi == lo:
        return global_batch[:1], 0.0
    return global_batch[lo:hi], world * (hi - lo) / len(global_batch)


def sharded_map(fn: Callable[[list], object], items: list) -> list:
    """Evaluate `fn` (a list of items -> a sequence of per-item results) across the processes of an
    `accelerate launch`: each process takes a contiguous slice (`shard_bounds`), and every process gets all
    results back in the original order, none duplicated or dropped however unevenly `len(items)` divides.
    One process: just `list(fn(items))`. Meant for models that are not sharded (single device, DDP)."""
    state = distributed_state()
    if state is None:
        return list(fn(items))
    from accelerate.utils import gather_object

    lo, hi = shard_bounds(len(items), state.num_processes, state.process_index)
    part = list(fn(items[lo:hi])) if hi > lo else []
    if len(part) != hi - lo:
        raise ValueError(f"sharded_map: fn returned {len(part)} results for {hi - lo} items")
    return gather_object(part)


def pad_batch(features: list[dict], pad_id: int, keys_to_pad=("input_ids", "attention_mask")) -> dict:
    """Right-pad token lists to the batch's longest; other keys become tensors as they are."""
    width = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        if key in keys_to_pad:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in vals], dtype=torch.long)
        else:
            out[key] = torch.tensor(vals)
    return out


def _schedule(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


# ---- checkpoints --------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states as plain JSON (no pickle to load back)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _write_json_durably(path: Path, obj) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(obj))
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush every file under root and the folders themselves, so a rename after this publishes data that is
    on disk (a power cut cannot leave a COMPLETE checkpoint with empty files)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def _atomic_save_state(accelerator, ckpt_root: Path, step: int, shared: dict, own: dict) -> None:
    """Save into a temporary folder, flush it, write COMPLETE last, then rename: a crash mid-save never leaves a
    checkpoint that looks complete. `shared` (trainer_state.json) is the main process's; `own` (rank-R.json:
    RNG states, running loss) is each process's."""
    tmp = ckpt_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a save that was killed
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    tmp.mkdir(parents=True, exist_ok=True)
    _write_json_durably(tmp / f"rank-{accelerator.process_index}.json", own)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_durably(tmp / "trainer_state.json", {"step": step, **shared})
        _fsync_tree(tmp)
        _write_json_durably(tmp / "COMPLETE", {"step": step})
        _fsync_dir(tmp)
        final = ckpt_root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        for old in list(ckpt_root.glob("step-*")) + list(ckpt_root.glob(".tmp-step-*")):  # keep the newest
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint marked COMPLETE (folders without the marker are half-written and ignored)."""
    done = []
    for p in Path(ckpt_root).glob("step-*"):
        suffix = p.name.split("-", 1)[1]
        if suffix.isdigit() and (p / "COMPLETE").is_file() and (p / "trainer_state.json").is_file():
            done.append((int(suffix), p))
    return max(done, default=(None, None))[1]


def _fingerprint(cfg: TrainConfig, feats: list[dict], world: int) -> dict:
    """What a checkpoint must agree on to be resumed: the training options, the number of processes and the
    training data (a digest of every feature's length, label keys and first and last tokens)."""
    h = hashlib.sha256()
    for f in feats:
        ids = f["input_ids"]
        rest = [(k, v) for k, v in sorted(f.items()) if k not in ("input_ids", "attention_mask")]
        h.update(repr((len(ids), ids[:8], ids[-8:], rest)).encode())
    options = {k: v for k, v in asdict(cfg).items() if k not in _NOT_TRAINING}
    fp = {"options": options, "processes": world, "examples": len(feats), "data_sha256": h.hexdigest()}
    return json.loads(json.dumps(fp))  # as it reads back from trainer_state.json (tuples become lists)


def _check_fingerprint(ckpt: Path, saved: dict, now: dict) -> None:
    if saved == now:
        return
    diffs = []
    for key in ("processes", "examples", "data_sha256"):
        if saved.get(key) != now[key]:
            diffs.append(f"{key} {saved.get(key)!r} -> {now[key]!r}" if key != "data_sha256" else "training data")
    old = saved.get("options", {})
    diffs += [f"{k} {old.get(k)!r} -> {v!r}" for k, v in now["options"].items() if old.get(k) != v]
    raise UsageError(
        f"{ckpt}: cannot resume: this checkpoint was written by a run with other settings ({'; '.join(diffs)}). "
        "Resume with the original settings, or start over without --resume."
    )


# ---- the loop -----------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    steps: int
    train_seconds: float  # including the time before a resume
    tokens: int  # non-padding tokens trained on, all processes together
    log: list[dict]
    evals: list[dict]
    resumed_from: int = 0  # the optimizer step training continued from (0 = from the start)
    accelerator: object = None  # the Accelerator used (is_main_process, get_state_dict for FSDP)
    prepared_model: object = None  # the model as `accelerator.prepare` returned it (DDP/FSDP wrapper)
    chunks: int = 1  # pieces each micro-batch ran in at the end (> 1 after out-of-memory)


def train(
    model,
    train_features: list[dict],
    cfg: TrainConfig,
    *,
    pad_id: int,
    work_dir: Path,
    evaluate: Callable[[object], dict] | None = None,
    loss_fn: Callable[[object, dict], torch.Tensor] | None = None,
    resume: bool = False,
    accelerator=None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune `model` (already wrapped for LoRA / frozen for head-only) on tokenised features.

    Each feature is a dict of lists/ints: input_ids, attention_mask, and the task's label keys. The loss,
    `loss_fn(model, batch)` or else the model's own, must be a mean over the batch's examples (as Hugging Face
    task heads compute it). Under several processes every process must call this with the same features and
    config; `evaluate` runs on every process (with the DDP-unwrapped model; with FSDP, the sharded one, which
    every process must call alike).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    cfg.validate()
    work_dir = Path(work_dir)
    set_seed(cfg.seed)
    launched = launched_processes()
    if accelerator is None:
        use_bf16 = cfg.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        # Without a GPU, accelerate joins the launched processes (gloo) only when told to use the CPU.
        accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no",
                                  gradient_accumulation_steps=cfg.grad_accum,
                                  cpu=launched > 1 and not torch.cuda.is_available())
    elif accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(f"accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches, "
                         f"the config {cfg.grad_accum}")
    check_joined(accelerator.num_processes, launched)
    feats = train_features[: cfg.max_train_samples] if cfg.max_train_samples else train_features
    if not feats:
        raise UsageError("no training examples")
    lengths = [len(f["input_ids"]) for f in feats]
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world
    per_epoch = math.ceil(len(feats) / global_batch)  # micro-steps per epoch, the same on every process
    total_steps = max(1, int(per_epoch * cfg.epochs) // cfg.grad_accum)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    micro_total = total_steps * cfg.grad_accum  # whole optimizer steps only: no gradients left unapplied

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError(f"method {cfg.method!r} left no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    fused = accelerator.device.type == "cuda" and not fsdp
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused,
    )
    # The schedule is stepped here, once per optimizer step. (Passed through `accelerator.prepare` it would
    # step once per process per optimizer step: N times too fast under N processes, since total_steps is
    # already counted per process.) Its state is saved in trainer_state.json.
    scheduler = _schedule(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    ckpt_root = work_dir / "checkpoints"
    log_path = work_dir / "train_log.jsonl"
    fingerprint = _fingerprint(cfg, feats, world) if (cfg.save_every or resume) else None
    log: list[dict] = []
    evals: list[dict] = []
    start_micro = 0
    seconds_before = 0.0
    tokens = 0  # this process, from the start of training (a resume recounts the replayed batches)
    running = torch.zeros((), device=accelerator.device)  # summed on the device: no host sync per step
    running_n = 0
    if resume and (ckpt := last_checkpoint(ckpt_root)) is not None:
        shared = json.loads((ckpt / "trainer_state.json").read_text())
        _check_fingerprint(ckpt, shared.get("fingerprint", {}), fingerprint)
        own = json.loads((ckpt / f"rank-{rank}.json").read_text())
        accelerator.load_state(str(ckpt))
        scheduler.load_state_dict(shared["scheduler"])
        # accelerate restores RNG states too, but a failure there is only logged; ours is checked.
        set_rng_state(own["rng"])
        start_micro = shared["micro_step"]
        log, evals = shared["log"], shared["evals"]
        seconds_before = shared["train_seconds"]
        running.fill_(own["running"])
        running_n = shared["running_n"]
        if accelerator.is_main_process:  # drop lines the interrupted run logged after this checkpoint
            tmp_log = log_path.with_name(log_path.name + ".tmp")
            tmp_log.write_text("".join(json.dumps(e) + "\n" for e in log))
            os.replace(tmp_log, log_path)
        accelerator.print(f"resumed from {ckpt} (step {start_micro // cfg.grad_accum} of {total_steps})")
    elif accelerator.is_main_process:
        work_dir.mkdir(parents=True, exist_ok=True)
        log_path.unlink(missing_ok=True)
        if ckpt_root.exists():  # checkpoints of an earlier run must not mix with this one's
            shutil.rmtree(ckpt_root)
    accelerator.wait_for_everyone()
    accelerator.step = start_micro  # accumulation boundaries follow the micro-step count

    model.train()
    device = accelerator.device
    tokens_run = 0  # this process, this session (for throughput)
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_micro // cfg.grad_accum, desc=f"fine-tune ({cfg.method})",
               unit="step", disable=not (progress and accelerator.is_local_main_process))
    chunks = 1  # each micro-batch runs in this many pieces; doubled on out-of-memory (one process only)

    def forward_backward(batch_idx: list[int], weight: float) -> torch.Tensor:
        """One micro-batch's forward and backward, in `chunks` pieces whose losses are weighted by their share
        of examples (the losses are means over examples), so the gradient is the micro-batch's."""
        size = math.ceil(len(batch_idx) / chunks)
        total = torch.zeros((), device=device)
        for s in range(0, len(batch_idx), size):
            part = batch_idx[s : s + size]
            batch = pad_batch([feats[i] for i in part], pad_id)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            share = weight * len(part) / len(batch_idx)
            if share != 1.0:
                loss = loss * share
            accelerator.backward(loss)
            total += loss.detach()
        return total

    def optimizer_step(pending: list[tuple[list[int], float]], first_micro: int) -> torch.Tensor:
        """The micro-batches of one optimizer step. On out-of-memory in a forward or backward pass the step's
        partial gradients are dropped and the step is redone with each micro-batch in twice as many pieces:
        the same examples, the same global batch, the same update (an automatic batch-size halving that does
        not change the recipe). Under several processes it stops with a clear error instead: one process
        cannot change its pieces alone without the others' collectives going out of step."""
        nonlocal chunks
        largest = max(len(b) for b, _ in pending)
        while True:
            accelerator.step = first_micro  # accumulate() decides where gradients sync from this count
            total = torch.zeros((), device=device)
            try:
                for batch_idx, weight in pending:
                    with accelerator.accumulate(model):
                        total += forward_backward(batch_idx, weight)
                        if accelerator.sync_gradients and cfg.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()  # accelerate steps only where gradients sync: after the last one
                        if accelerator.sync_gradients:
                            scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                return total
            except torch.cuda.OutOfMemoryError:
                if world > 1:
                    raise UsageError(f"out of GPU memory with micro-batches of {largest} examples per process: "
                                     "lower --batch-size and raise --grad-accum to keep the global batch") from None
                if math.ceil(largest / chunks) <= 1:
                    raise UsageError("out of GPU memory with one example at a time: lower --max-length, or use "
                                     "--method lora, or shard the model with FSDP") from None
            chunks *= 2  # outside the handler, so the failed attempt's tensors are free
            model.zero_grad(set_to_none=True)  # (the prepared optimizer's zero_grad skips non-sync micro-steps)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            accelerator.print(f"out of memory: micro-batches of {largest} examples now run in {chunks} pieces "
                              "(same global batch, same update)")

    micro = 0
    epoch = 0
    pending: list[tuple[list[int], float]] = []  # this optimizer step's micro-batches
    while micro < micro_total:
        order = (length_grouped_order(lengths, global_batch, cfg.seed + epoch) if cfg.group_by_length
                 else random_order(len(feats), global_batch, cfg.seed + epoch))
        for gb in order:
            if micro >= micro_total:
                break
            batch_idx, weight = shard_batch(gb, world, rank)
            n_tokens = sum(sum(feats[i]["attention_mask"]) for i in batch_idx) if weight else 0
            tokens += n_tokens
            micro += 1
            if micro <= start_micro:  # resuming: replay the data order without computing
                continue
            tokens_run += n_tokens
            pending.append((batch_idx, weight))
            if micro % cfg.grad_accum:
                continue
            running += optimizer_step(pending, micro - len(pending))
            running_n += len(pending)
            pending = []
            step = micro // cfg.grad_accum
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(running, "mean").item() / running_n
                seen = accelerator.reduce(torch.tensor(float(tokens_run), device=device), "sum").item()
                elapsed = time.perf_counter() - t0
                entry = {"step": step, "epoch": round(micro / per_epoch, 4), "loss": mean_loss,
                         "lr": scheduler.get_last_lr()[0], "tokens_per_s": seen / max(elapsed, 1e-9)}
                log.append(entry)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                running.zero_()
                running_n = 0
            if evaluate and cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                model.eval()
                result = evaluate(model if fsdp else accelerator.unwrap_model(model))
                model.train()
                evals.append({"step": step, **result})
            if cfg.save_every and step % cfg.save_every == 0 and step != total_steps:
                shared = {"micro_step": micro, "epoch": epoch, "scheduler": scheduler.state_dict(),
                          "log": log, "evals": evals, "running_n": running_n,
                          "train_seconds": seconds_before + time.perf_counter() - t0,
                          "fingerprint": fingerprint}
                own = {"rng": rng_state(), "running": running.item()}
                _atomic_save_state(accelerator, ckpt_root, step, shared, own)
        epoch += 1
    bar.close()
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = seconds_before + time.perf_counter() - t0
    total_tokens = int(accelerator.reduce(torch.tensor(tokens, device=device, dtype=torch.long), "sum").item())
    accelerator.wait_for_everyone()
    prepared = model
    model = accelerator.unwrap_model(model)
    model.eval()
    return TrainResult(total_steps, seconds, total_tokens, log, evals, start_micro // cfg.grad_accum,
                       accelerator, prepared, chunks)


def whole_model(result: TrainResult, rebuild: Callable[[], torch.nn.Module]):
    """The trained model, whole and unwrapped, on the main process (None on the others), ready to save and
    evaluate. Every process must call it. Under FSDP the module is sharded across the processes and can neither
    run nor save alone: the processes gather its full state dict (onto the main process's CPU), which is loaded,
    strictly, into a fresh copy of the model that `rebuild()` makes (the same construction as before training)."""
    from accelerate.utils import DistributedType

    acc = result.accelerator
    if acc.distributed_type != DistributedType.FSDP:
        return acc.unwrap_model(result.prepared_model) if acc.is_main_process else None
    state = acc.get_state_dict(result.prepared_model)  # a collective: every process takes part
    if not acc.is_main_process:
        return None
    model = rebuild()
    model.load_state_dict(state, strict=True)
    return model.to(acc.device).eval()


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(asdict(cfg), indent=2))
