"""One fine-tuning loop for every task, on a CPU, one GPU or many (`accelerate launch`).

Written by hand rather than with `transformers.Trainer` for what Trainer does not give: length-grouped batches
with dynamic padding and no per-step host synchronisation, checkpoints saved atomically, and exact resumption.

Batches and processes. `batch_size` is per process (as in Hugging Face): with N processes one optimizer step
sees `batch_size x N x grad_accum` examples. Every process builds the same global order of global batches of
`batch_size x N` (same seed everywhere) and takes its own contiguous slice of each, so N processes with batch
B train on exactly the batches one process with batch N x B would. An epoch's last global batch may be short;
it is split as evenly as the examples allow (no example dropped or repeated) and each process's mean loss is
weighted by its share, so the gradient DDP averages is still the mean over the global batch. (A process whose
slice is empty runs one example with weight 0 so the gradient all-reduce still lines up.)

Resumption (tunelab.training.checkpoint). `resume=True` continues from the newest complete checkpoint and
replays the data order up to it, so an interrupted and resumed run ends with the same weights and metrics as
an uninterrupted one (bit for bit on the same hardware and thread count).

Speed options (TrainConfig's last block; tunelab.training.speed), each leaving the step's arithmetic as it is:
`share_prefix` runs the tokens every example of a piece starts with (a prompt's template) once and serves
their key/value cache to every row (tunelab.prefix_cache); `packing` puts a micro-batch's examples into shared
rows and computes the same mean loss with `tunelab.packing.packed_loss` (each example pooled / span-softmaxed
on its own tokens); `compile` compiles the decoder layers and pads batches up to a few length buckets (masked
tokens: same loss); `micro_batch_size` runs each micro-batch in pieces (the out-of-memory mechanism below,
chosen up front; `auto` probes the longest batch on the GPU first); `fused_optimizer` picks fused (CUDA, CPU)
or foreach AdamW and foreach clipping; `pin_memory` copies batches through page-locked memory. The loss is
summed on the device and read back only every `log_every` steps: no host synchronisation per step.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tunelab import precision, signals
from tunelab.distributed import check_joined, launched_processes, on_joined
from tunelab.errors import UsageError
from tunelab.options import TrainConfig
from tunelab.outputs import read_json, write_json, write_text
from tunelab.packing import packed_loss
from tunelab.training import checkpoint, speed
from tunelab.training.batches import length_grouped_order, random_order, shard_batch

FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch.optim.AdamW(fused=True) has a kernel (torch >= 2.4)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    shared_prefix: bool = False  # whether pieces ran the tokens they all start with once (share_prefix)
    dtype: str = "float32"  # the autocast the steps ran under: bfloat16 or float32 (tunelab.precision)


class Trainer:
    """One run: set up (accelerator, the step plan, optimizer and schedule), restore (a checkpoint or a clean
    start), then run the optimizer steps, logging, evaluating and saving when they are due."""

    def __init__(
        self,
        model,
        features: list[dict],
        cfg: TrainConfig,
        *,
        pad_id: int,
        work_dir: Path,
        evaluate: Callable[[object], dict] | None = None,
        loss_fn: Callable[[object, dict], torch.Tensor] | None = None,
        accelerator=None,
        progress: bool = True,
        on_log: Callable[[str, dict], None] | None = None,
    ):
        cfg.validate()
        self.on_log = on_log  # ("start" | "train" | "eval", entry) on the main process: experiment trackers
        self.cfg, self.pad_id, self.work_dir = cfg, pad_id, Path(work_dir)
        self.evaluate_fn, self.loss_fn, self.progress = evaluate, loss_fn, progress
        set_seed(cfg.seed)
        self.accelerator = self._accelerator(accelerator)
        self.dtype = "bfloat16" if self.accelerator.mixed_precision == "bf16" else "float32"
        self._plan(features)
        self.kind = speed.head_kind(self.feats) if cfg.packing else None
        self.compiled = speed.compile_layers(model, cfg.compile_mode) if cfg.compile else []
        self._optimizer(model)
        self.share_prefix = self._shares_prefix()
        self.ckpt_root = self.work_dir / "checkpoints"
        self.log_path = self.work_dir / "train_log.jsonl"
        self.fingerprint = checkpoint.fingerprint(cfg, self.feats, self.world) if cfg.save_every else None
        self._started_over = False  # restore: a checkpoint of other settings or data was set aside
        self.log: list[dict] = []
        self.evals: list[dict] = []
        self.start_micro = 0
        self.seconds_before = 0.0
        self.tokens = 0  # this process, from the start of training (a resume recounts the replayed batches)
        self.running = torch.zeros((), device=self.accelerator.device)  # summed on the device: no host sync
        self.running_n = 0
        # each micro-batch runs in this many pieces: from micro_batch_size, doubled on out-of-memory
        micro = cfg.micro_batch_size
        self.chunks = math.ceil(cfg.batch_size / micro) if isinstance(micro, int) else 1

    # ---- setup ------------------------------------------------------------------------------------------

    def _accelerator(self, accelerator):
        from accelerate import Accelerator

        cfg = self.cfg
        launched = launched_processes()
        if accelerator is None:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            # bfloat16 autocast on GPUs (CPUs: with TUNELAB_CPU_BF16=on; tunelab.precision); the weights and
            # optimizer state stay float32.
            mixed = "bf16" if precision.bf16_autocast(dev, cfg.bf16) else "no"
            _forget_other_precision(mixed)
            # Without a GPU, accelerate joins the launched processes (gloo) only when told to use the CPU.
            accelerator = Accelerator(
                mixed_precision=mixed,
                gradient_accumulation_steps=cfg.grad_accum,
                cpu=launched > 1 and not torch.cuda.is_available(),
            )
        elif accelerator.gradient_accumulation_steps != cfg.grad_accum:
            raise ValueError(
                f"accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches, "
                f"the config {cfg.grad_accum}"
            )
        check_joined(accelerator.num_processes, launched)
        on_joined()
        return accelerator

    def _plan(self, features: list[dict]) -> None:
        cfg = self.cfg
        self.feats = features[: cfg.max_train_samples] if cfg.max_train_samples else features
        if not self.feats:
            raise UsageError("no training examples")
        self.lengths = [len(f["input_ids"]) for f in self.feats]
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.global_batch = cfg.batch_size * self.world
        self.per_epoch = math.ceil(
            len(self.feats) / self.global_batch
        )  # micro-steps per epoch, every process
        total = max(1, int(self.per_epoch * cfg.epochs) // cfg.grad_accum)
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.micro_total = self.total_steps * cfg.grad_accum  # whole optimizer steps: no gradient left over

    def _optimizer(self, model) -> None:
        from accelerate.utils import DistributedType
        from transformers import get_scheduler

        cfg = self.cfg
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UsageError(f"method {cfg.method!r} left no trainable parameters")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.fsdp = self.accelerator.distributed_type == DistributedType.FSDP
        # fused: one kernel for every parameter's update (torch has it for CUDA and CPU; not under FSDP's
        # sharded parameters); foreach: one call per group of tensors instead of one per tensor; neither
        # changes the arithmetic. Trainer's default (adamw_torch_fused) is fused on a CPU too.
        fused = cfg.fused_optimizer and self.accelerator.device.type in FUSED_ADAMW_DEVICES and not self.fsdp
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
            betas=(0.9, 0.999),
            eps=1e-8,
            fused=fused,
            foreach=cfg.fused_optimizer and not fused,
        )
        self.params = params
        # The schedule is stepped here, once per optimizer step. (Passed through `accelerator.prepare` it
        # would step once per process per optimizer step: N times too fast under N processes, since
        # total_steps is already counted per process.) Its state is saved in trainer_state.json.
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.lr_schedule]
        self.scheduler = get_scheduler(
            name,
            optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    # ---- restore ----------------------------------------------------------------------------------------

    def restore(self, resume: bool | str) -> None:
        """Continue from the newest complete checkpoint that is sound (`resume`), or start clean (also when
        `resume` finds no checkpoint yet): an earlier run's log and checkpoints must not mix with this
        one's. A checkpoint of other settings or data is an error, except with resume="matching" (a study's
        stage, which must compute what its config says): then training starts over, saying why."""
        acc = self.accelerator
        resumed = bool(resume) and self._resume(matching_only=resume == "matching")
        if not resumed and acc.is_main_process:
            # (a study's stage resumes where it can: on its first run there is nothing to say)
            leftovers = self.ckpt_root.exists() or self.log_path.exists()
            if resume and not self._started_over and (resume is True or leftovers):
                acc.print(f"{self.ckpt_root}: no complete checkpoint yet: training starts from the beginning")
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.unlink(missing_ok=True)
            if self.ckpt_root.exists():
                shutil.rmtree(self.ckpt_root)
        acc.wait_for_everyone()
        acc.step = self.start_micro  # accumulation boundaries follow the micro-step count
        if self.on_log and acc.is_main_process:  # where training starts (trackers drop what came after)
            self.on_log("start", {"step": self.start_micro // self.cfg.grad_accum})

    def _resume(self, matching_only: bool = False) -> bool:
        """Load the newest complete checkpoint; one whose files are missing, of the wrong size or damaged is
        skipped, saying what is broken, for the one before (two are kept). All broken: a clear error. False:
        there is none, or (`matching_only`) it was written with other settings or data."""
        acc, broken = self.accelerator, []
        for ckpt in checkpoint.complete_checkpoints(self.ckpt_root):
            found = checkpoint.problems(ckpt)
            if not found and matching_only:
                changes = self._changes(ckpt)
                if changes is not None:
                    acc.print(
                        f"{ckpt} was written with other settings or data ({changes}): training starts over"
                    )
                    self._started_over = True
                    return False
            if not found:
                try:
                    self._load(ckpt)
                    return True
                except UsageError:
                    raise  # other settings: an older checkpoint has them too
                except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the loaders raise
                    if self.world > 1:  # the processes must agree on one checkpoint: no fallback
                        raise UsageError(f"{ckpt}: cannot be loaded: {type(exc).__name__}: {exc}") from None
                    found = [f"cannot be loaded: {type(exc).__name__}: {exc}"]
            broken.append(f"{ckpt.name}: {'; '.join(found)}")
            acc.print(f"tunelab: warning: the checkpoint {ckpt} is broken ({'; '.join(found)})")
        if broken:
            raise UsageError(
                f"{self.ckpt_root}: cannot resume: no sound checkpoint is left ({' | '.join(broken)}); "
                "start over with --overwrite instead of --resume"
            )
        return False

    def _fingerprint_like(self, saved: dict) -> dict:
        """This run's fingerprint, its data digest computed as the checkpoint's was (an earlier version's)."""
        if self.fingerprint is None:
            self.fingerprint = checkpoint.fingerprint(self.cfg, self.feats, self.world)
        if saved.get("data_digest", 1) == self.fingerprint["data_digest"]:
            return self.fingerprint
        return checkpoint.fingerprint(self.cfg, self.feats, self.world, saved.get("data_digest", 1))

    def _changes(self, ckpt: Path) -> str | None:
        """What differs between the checkpoint's settings and data and this run's, or None."""
        saved = read_json(ckpt / "trainer_state.json", "the checkpoint's state").get("fingerprint", {})
        return checkpoint.fingerprint_changes(saved, self._fingerprint_like(saved))

    def _load(self, ckpt: Path) -> None:
        acc = self.accelerator
        shared = read_json(ckpt / "trainer_state.json", "the checkpoint's state")
        saved = shared.get("fingerprint", {})
        checkpoint.check_fingerprint(ckpt, saved, self._fingerprint_like(saved))
        own = read_json(ckpt / f"rank-{self.rank}.json", "the checkpoint's process state")
        acc.load_state(str(ckpt))
        self.scheduler.load_state_dict(shared["scheduler"])
        # accelerate restores RNG states too, but a failure there is only logged; ours is checked.
        checkpoint.set_rng_state(own["rng"])
        self.start_micro = shared["micro_step"]
        self.log, self.evals = shared["log"], shared["evals"]
        self.seconds_before = shared["train_seconds"]
        self.running.fill_(own["running"])
        self.running_n = shared["running_n"]
        if acc.is_main_process:  # drop lines the interrupted run logged after this checkpoint
            write_text(self.log_path, "".join(json.dumps(e) + "\n" for e in self.log))
        acc.print(
            f"resumed from {ckpt} (step {self.start_micro // self.cfg.grad_accum} of {self.total_steps})"
        )

    # ---- the steps --------------------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[tuple[int, int, list[int], float, int]]:
        """(epoch, micro-step number, this process's example indices, loss weight, global batch size), from
        the first micro-step, the same on every process: a resume replays the order and skips what was
        done."""
        cfg, micro, epoch = self.cfg, 0, 0
        while micro < self.micro_total:
            # epoch 0 keeps the seed's own order; a later epoch's must not be seed + epoch's first (the
            # seeds 1, 2, 3 of a study would then share batch orders across their epochs)
            seed = cfg.seed if epoch == 0 else (cfg.seed, epoch)
            order = (
                length_grouped_order(self.lengths, self.global_batch, seed)
                if cfg.group_by_length
                else random_order(len(self.feats), self.global_batch, seed)
            )
            for gb in order:
                if micro >= self.micro_total:
                    break
                micro += 1
                yield (epoch, micro, *shard_batch(gb, self.world, self.rank), len(gb))
            epoch += 1

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.model.train()
        if cfg.micro_batch_size == "auto" and self.accelerator.device.type == "cuda":
            self.chunks = self._auto_chunks()
        self.tokens_run = 0  # this process, this session (for throughput)
        self.t0 = time.perf_counter()
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_micro // cfg.grad_accum,
            desc=f"fine-tune ({cfg.method})",
            unit="step",
            disable=not (self.progress and self.accelerator.is_local_main_process),
        )
        try:
            with signals.deferred():  # SIGINT/SIGTERM: finish the step, checkpoint it, stop (_after_step)
                self._steps(bar)
        finally:
            bar.close()
        return self._finish()

    def _steps(self, bar) -> None:
        cfg = self.cfg
        pending: list[tuple[list[int], float]] = []  # this optimizer step's micro-batches
        sizes: list[int] = []  # and their global batch sizes
        for epoch, micro, batch_idx, weight, size in self._micro_batches():
            n_tokens = sum(sum(self.feats[i]["attention_mask"]) for i in batch_idx) if weight else 0
            self.tokens += n_tokens
            if micro <= self.start_micro:  # resuming: replay the data order without computing
                continue
            self.tokens_run += n_tokens
            pending.append((batch_idx, weight))
            sizes.append(size)
            if micro % cfg.grad_accum:
                continue
            # accumulation averages the micro-batches' mean losses: weigh each by its share of the step's
            # examples, so an epoch's short last batch counts per example, as in one large batch
            total = sum(sizes)
            share = [len(sizes) * n / total for n in sizes]  # all 1.0 when the batches are the same size
            pending = [(b, w * s) for (b, w), s in zip(pending, share, strict=True)]
            self.running += self._optimizer_step(pending, micro - len(pending))
            self.running_n += len(pending)
            pending, sizes = [], []
            step = micro // cfg.grad_accum
            bar.update(1)
            self._after_step(step, micro, epoch, bar)

    def _forward_backward(self, batch_idx: list[int], weight: float) -> torch.Tensor:
        """One micro-batch's forward and backward, in `chunks` pieces whose losses are weighted by their share
        of examples (the losses are means over examples), so the gradient is the micro-batch's."""
        device = self.accelerator.device
        size = math.ceil(len(batch_idx) / self.chunks)
        total = torch.zeros((), device=device)
        for s in range(0, len(batch_idx), size):
            part = batch_idx[s : s + size]
            loss = self._loss([self.feats[i] for i in part])
            share = weight * len(part) / len(batch_idx)
            if share != 1.0:
                loss = loss * share
            self.accelerator.backward(loss)
            total += loss.detach()
        return total

    def _loss(self, feats: list[dict]) -> torch.Tensor:
        """The mean loss over these examples: packed (`packing`), with their shared prefix run once
        (`share_prefix`), or padded to their longest (to its bucket under `compile`) and computed by
        `loss_fn` or the model's own loss."""
        cfg, device = self.cfg, self.accelerator.device
        if self.kind:
            batch = speed.packed(feats, self.pad_id, cfg.max_length, static=cfg.compile)
            return packed_loss(self.model, speed.to_device(batch, device, cfg.pin_memory), self.kind)
        if self.share_prefix:
            loss = self._prefix_loss(feats)
            if loss is not None:
                return loss
        batch = speed.padded(feats, self.pad_id, cfg.max_length, static=cfg.compile)
        batch = speed.to_device(batch, device, cfg.pin_memory)
        # No KV cache (Llama configs say use_cache=True): unused in training, and under `compile` the cache's
        # per-layer state would make dynamo compile the shared layer once per layer and shape.
        batch["use_cache"] = False
        return self.loss_fn(self.model, batch) if self.loss_fn else self.model(**batch).loss

    def _shares_prefix(self) -> bool:
        """Whether micro-batches run their shared prefix once (`share_prefix`): only where the rows' own
        forward is the model's plain causal one and its own loss pools each row's last token."""
        cfg = self.cfg
        if cfg.share_prefix == "off" or (
            cfg.share_prefix == "auto" and self.accelerator.device.type != "cpu"
        ):
            return False
        # compile: fixed shapes; packing: rows hold several examples; bidirectional: the prefix would see
        # the rest; FSDP: one forward per step; loss_fn (the span head) indexes whole-input positions
        return not (cfg.compile or cfg.packing or cfg.bidirectional or self.fsdp or self.loss_fn)

    def _prefix_loss(self, feats: list[dict]) -> torch.Tensor | None:
        """The model's loss with the tokens every row starts with run once (tunelab.prefix_cache), or None
        where these rows share too little: the same loss as the padded path, up to float rounding."""
        from tunelab.prefix_cache import prefix_inputs

        with self.accelerator.autocast():  # the prefix runs outside the prepared model's own forward
            batch = prefix_inputs(self.model, feats, self.pad_id, self.accelerator.device)
            return None if batch is None else self.model(**batch).loss

    def _auto_chunks(self) -> int:
        """micro_batch_size auto: the fewest pieces in which a forward and backward of the batch_size longest
        examples fits the GPU's memory (halving the piece on out-of-memory), found before the first step; the
        probe's gradients are dropped and the random state restored, so training is as if it had not run.
        Out-of-memory halving during training stays the fallback (e.g. for memory fragmentation)."""
        if self.world > 1:
            raise UsageError(
                "micro_batch_size auto needs one process (processes cannot probe their memory apart "
                "without their collectives going out of step): give a number"
            )
        longest = sorted(range(len(self.feats)), key=lambda i: -self.lengths[i])[: self.cfg.batch_size]
        state = checkpoint.rng_state()
        chunks = self.chunks
        try:
            while True:
                self.chunks = chunks
                try:
                    self._forward_backward(longest, 1.0)
                    break
                except torch.cuda.OutOfMemoryError:
                    if math.ceil(len(longest) / chunks) <= 1:
                        raise UsageError(
                            "out of GPU memory with one example at a time: lower --max-length, or use "
                            "--method lora"
                        ) from None
                chunks *= 2  # outside the handler, so the failed attempt's tensors are free
                self.model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
        finally:
            self.model.zero_grad(set_to_none=True)
            checkpoint.set_rng_state(state)
        size = math.ceil(len(longest) / chunks)
        self.accelerator.print(f"micro_batch_size auto: pieces of {size} examples ({chunks} per micro-batch)")
        return chunks

    def _clip(self) -> None:
        acc, cfg = self.accelerator, self.cfg
        if cfg.fused_optimizer and not self.fsdp:  # what accelerate does here, with foreach asked for
            acc.unscale_gradients()
            torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=True)
        else:
            acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)

    def _optimizer_step(self, pending: list[tuple[list[int], float]], first_micro: int) -> torch.Tensor:
        """The micro-batches of one optimizer step. On out-of-memory in a forward or backward pass the step's
        partial gradients are dropped and the step is redone with each micro-batch in twice as many pieces:
        the same examples, the same global batch, the same update (an automatic batch-size halving that does
        not change the recipe). Under several processes it stops with a clear error instead: one process
        cannot change its pieces alone without the others' collectives going out of step."""
        largest = max(len(b) for b, _ in pending)
        while True:
            try:
                total = self._accumulate(pending, first_micro)
                break
            except torch.cuda.OutOfMemoryError:
                if self.world > 1:
                    raise UsageError(
                        f"out of GPU memory with micro-batches of {largest} examples per process: "
                        "lower --batch-size and raise --grad-accum to keep the global batch"
                    ) from None
                if math.ceil(largest / self.chunks) <= 1:
                    raise UsageError(
                        "out of GPU memory with one example at a time: lower --max-length, or use "
                        "--method lora, or shard the model with FSDP"
                    ) from None
            self.chunks *= 2  # outside the handler, so the failed attempt's tensors are free
            self.model.zero_grad(
                set_to_none=True
            )  # (the prepared optimizer's zero_grad skips non-sync steps)
            if self.accelerator.device.type == "cuda":
                torch.cuda.empty_cache()
            self.accelerator.print(
                f"out of memory: micro-batches of {largest} examples now run in {self.chunks} "
                "pieces (same global batch, same update)"
            )
        # once, outside the retries: an update half applied when memory ran out must not be applied twice
        try:
            self._update()
        except torch.cuda.OutOfMemoryError:
            raise UsageError(
                "out of GPU memory in the optimizer's update (its state takes two copies of the trainable "
                "weights): use --method lora, or shard the model with FSDP"
            ) from None
        return total

    def _accumulate(self, pending: list[tuple[list[int], float]], first_micro: int) -> torch.Tensor:
        """The forward and backward passes of one optimizer step's micro-batches; the gradients sync after the
        last one (accelerate's accumulate())."""
        acc = self.accelerator
        acc.step = first_micro  # accumulate() decides where gradients sync from this count
        total = torch.zeros((), device=acc.device)
        for batch_idx, weight in pending:
            with acc.accumulate(self.model):
                total += self._forward_backward(batch_idx, weight)
        return total

    def _update(self) -> None:
        """Clip, step the optimizer and the schedule, clear the gradients: after `_accumulate`, whose last
        micro-batch synced the gradients."""
        assert self.accelerator.sync_gradients
        if self.cfg.max_grad_norm:
            self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- log, evaluate, save ----------------------------------------------------------------------------

    def _after_step(self, step: int, micro: int, epoch: int, bar) -> None:
        cfg = self.cfg
        last = step == self.total_steps
        if step % cfg.log_every == 0 or last:
            self._log(step, micro, bar)
        eval_due = bool(self.evaluate_fn and cfg.eval_every and step % cfg.eval_every == 0 and not last)
        signum = self._signalled()
        if signum is not None:
            # Stopped by a signal during this step: checkpoint the state after it, unless an evaluation was
            # due (its result belongs to the state; the checkpoint before is kept instead).
            if cfg.save_every and not eval_due:
                self._save(step, micro, epoch)
            raise signals.stop(signum)
        if eval_due:
            with signals.immediate():  # may be long; a signal abandons it (the last checkpoint is kept)
                self._evaluate(step)
        if cfg.save_every and step % cfg.save_every == 0 and not last:
            self._save(step, micro, epoch)

    def _signalled(self) -> int | None:
        """The signal received during this step, if any. Under several processes every process stops at the
        same step: the flag is summed over them (one small all-reduce per step)."""
        mine = signals.pending()
        if self.world == 1:
            return mine
        acc = self.accelerator
        anyone = acc.reduce(torch.tensor(float(mine is not None), device=acc.device), "sum").item()
        return (mine or signal.SIGTERM) if anyone else None  # (a process that got no signal itself)

    def _log(self, step: int, micro: int, bar) -> None:
        acc = self.accelerator
        mean_loss = acc.reduce(self.running, "mean").item() / self.running_n
        seen = acc.reduce(torch.tensor(float(self.tokens_run), device=acc.device), "sum").item()
        elapsed = time.perf_counter() - self.t0
        entry = {
            "step": step,
            "epoch": round(micro / self.per_epoch, 4),
            "loss": mean_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": seen / max(elapsed, 1e-9),
        }
        self.log.append(entry)
        if acc.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            if self.on_log:
                self.on_log("train", entry)
        bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}")
        self.running.zero_()
        self.running_n = 0

    def _evaluate(self, step: int) -> None:
        self.model.eval()
        # eager for evaluation: its batches' shapes would each compile anew
        with torch.compiler.set_stance("force_eager"):
            result = self.evaluate_fn(self.model if self.fsdp else self.accelerator.unwrap_model(self.model))
        self.model.train()
        self.evals.append({"step": step, **result})
        if self.on_log and self.accelerator.is_main_process:
            self.on_log("eval", self.evals[-1])

    def _save(self, step: int, micro: int, epoch: int) -> None:
        shared = {
            "micro_step": micro,
            "epoch": epoch,
            "scheduler": self.scheduler.state_dict(),
            "log": self.log,
            "evals": self.evals,
            "running_n": self.running_n,
            "train_seconds": self.seconds_before + time.perf_counter() - self.t0,
            "fingerprint": self.fingerprint,
        }
        own = {"rng": checkpoint.rng_state(), "running": self.running.item()}
        checkpoint.save(self.accelerator, self.ckpt_root, step, shared, own)

    def _finish(self) -> TrainResult:
        acc = self.accelerator
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = self.seconds_before + time.perf_counter() - self.t0
        total_tokens = int(
            acc.reduce(torch.tensor(self.tokens, device=acc.device, dtype=torch.long), "sum").item()
        )
        acc.wait_for_everyone()
        speed.uncompile(self.compiled)
        prepared = self.model
        model = acc.unwrap_model(self.model)
        model.eval()
        return TrainResult(
            self.total_steps,
            seconds,
            total_tokens,
            self.log,
            self.evals,
            self.start_micro // self.cfg.grad_accum,
            acc,
            prepared,
            self.chunks,
            self.share_prefix,
            self.dtype,
        )


def _forget_other_precision(mixed: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator of another mixed
    precision (a study whose variants differ in `bf16`, --seeds after such a run): forget the state then. The
    process group (PartialState) stays."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()


def train(
    model,
    train_features: list[dict],
    cfg: TrainConfig,
    *,
    pad_id: int,
    work_dir: Path,
    evaluate: Callable[[object], dict] | None = None,
    loss_fn: Callable[[object, dict], torch.Tensor] | None = None,
    resume: bool | str = False,
    accelerator=None,
    progress: bool = True,
    on_log: Callable[[str, dict], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` (already wrapped for LoRA / frozen for head-only) on tokenised features.

    Each feature is a dict of lists/ints: input_ids, attention_mask, and the task's label keys. The loss,
    `loss_fn(model, batch)` or else the model's own, must be a mean over the batch's examples (as Hugging Face
    task heads compute it). Under several processes every process must call this with the same features and
    config; `evaluate` runs on every process (with the DDP-unwrapped model; with FSDP, the sharded one, which
    every process must call alike).
    """
    trainer = Trainer(
        model,
        train_features,
        cfg,
        pad_id=pad_id,
        work_dir=work_dir,
        evaluate=evaluate,
        loss_fn=loss_fn,
        accelerator=accelerator,
        progress=progress,
        on_log=on_log,
    )
    trainer.restore(resume)
    return trainer.run()


def whole_model(result: TrainResult, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The trained model, whole and unwrapped, on the main process (None on the others), ready to save and
    evaluate. Every process must call it. Under FSDP the module is sharded across the processes and can
    neither run nor save alone: the processes gather its full state dict (onto the main process's CPU), which
    is loaded, strictly, into a fresh copy of the model that `rebuild()` makes (the same construction as
    before training)."""
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
    write_json(path, asdict(cfg))
