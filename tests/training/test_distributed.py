"""Two CPU processes (torchrun, gloo) train like one process with the same global batch, split
evaluation work without duplicating or dropping examples, and share one output folder safely."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tunelab.distributed import shard_bounds
from tunelab.training import shard_batch

# the tests that launch processes run one at a time, also under pytest-xdist (tests/conftest.py)
takes_turns = pytest.mark.usefixtures("one_launch_at_a_time")

SCRIPT = textwrap.dedent("""
    import atexit, json, os, sys
    from pathlib import Path

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from tunelab.models import load_task_model
    from tunelab.outputs import atomic_output
    from tunelab.distributed import sharded_map
    from tunelab.training import TrainConfig, train

    model_dir, out, batch_size, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    # registered first, so it runs last: has tunelab destroyed the process group before the interpreter exits?
    atexit.register(lambda: out.with_name(f"{out.name}-exit-{os.environ.get('RANK', '0')}.txt").write_text(
        str(torch.distributed.is_initialized())))
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    feats = []
    for i in range(n):  # a shared 6-token start, as a prompt's: on a CPU each process runs it once a batch
        length = int(rng.integers(3, 12))
        ids = [301, 302, 303, 304, 305, 306] + rng.integers(5, 300, size=length).tolist()
        feats.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 2})
    torch.manual_seed(0)
    model = load_task_model(model_dir, "classification")
    model.config.pad_token_id = 0
    cfg = TrainConfig(method="full", learning_rate=1e-3, epochs=3, batch_size=batch_size, grad_accum=2,
                      warmup_ratio=0.2, max_length=32, seed=5, log_every=1, save_every=2, bf16=False)
    with atomic_output(out) as work:
        result = train(model, feats, cfg, pad_id=0, work_dir=work, progress=False)
        seen = sharded_map(lambda xs: [(x, x * x) for x in xs], list(range(7)))
        if result.accelerator.is_main_process:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(work / "weights.safetensors"))
            (work / "result.json").write_text(json.dumps({
                "steps": result.steps, "tokens": result.tokens, "log": result.log, "seen": seen,
                "processes": result.accelerator.num_processes}))
""")


def _env():
    # CPU processes joined with gloo, also on a machine with GPUs (two processes on one GPU would clash).
    e = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        ACCELERATE_DISABLE_RICH="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONFAULTHANDLER="1",  # a process that aborts prints its threads' stacks
    )
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def _run(cmd, cwd) -> str:
    done = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


@takes_turns
def test_two_processes_match_one_with_the_same_global_batch(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    # 19 examples, global batch 6: batches of 6, 6, 6 and 1 per epoch; under 2 processes the last one leaves
    # one process with nothing (it runs a weight-0 example) and the other with a weight-2 example.
    n = "19"
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), tiny_model_dir, str(one), "6", n], tmp_path)
    # torchrun, as `accelerate launch --multi_gpu` does (`accelerate launch --cpu` starts a single process
    # unless given an MPI hostfile); without GPUs tunelab joins the processes with gloo.
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(script),
            tiny_model_dir,
            str(two),
            "3",
            n,
        ],
        tmp_path,
    )

    for out in (one, two):
        assert out.is_dir() and not out.with_name(out.name + ".partial").exists()
        assert not (out / "checkpoints").exists() or list((out / "checkpoints").glob("step-*"))
    # gloo left to interpreter finalization can abort a finished process (pytorch/pytorch#190489)
    assert [(tmp_path / f"two-exit-{r}.txt").read_text() for r in (0, 1)] == ["False", "False"]
    r1 = json.loads((one / "result.json").read_text())
    r2 = json.loads((two / "result.json").read_text())
    assert r1["processes"] == 1 and r2["processes"] == 2
    assert r1["steps"] == r2["steps"] == 6  # 4 micro-batches x 3 epochs / grad_accum 2
    assert r1["tokens"] == r2["tokens"]  # every example once per epoch, none dropped or repeated
    for a, b in zip(r1["log"], r2["log"], strict=True):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)  # the schedule steps once per optimizer step
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    assert r1["seen"] == r2["seen"] == [[x, x * x] for x in range(7)]
    w1, w2 = load_file(str(one / "weights.safetensors")), load_file(str(two / "weights.safetensors"))
    assert w1.keys() == w2.keys()
    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    moved = 0
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=2e-6, msg=k)
        key = k if k in base else None
        if key and not torch.equal(base[key], w1[k]):
            moved += 1
    assert moved > 0  # it did train


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n,world", [(6, 2), (7, 2), (1, 2), (5, 3), (8, 4), (3, 1)])
def test_a_global_batch_is_split_without_loss_or_repeat(n, world):
    batch = list(range(100, 100 + n))
    parts = [shard_batch(batch, world, r) for r in range(world)]
    real = [idx for idx, w in parts if w > 0]
    assert [i for idx in real for i in idx] == batch
    # the weighted mean of per-process mean losses is the mean over the global batch
    assert sum(w for _, w in parts) / world == pytest.approx(1.0)
    for idx, w in parts:
        if w:
            assert w == pytest.approx(world * len(idx) / n)
        else:
            assert len(idx) == 1  # an idle process still runs one example, with weight 0
    sizes = [shard_bounds(n, world, r)[1] - shard_bounds(n, world, r)[0] for r in range(world)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_ready_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    folder = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
    want = {
        "single_gpu.yaml": (DistributedType.NO, 1),
        "multi_gpu_ddp.yaml": (DistributedType.MULTI_GPU, 1),
        "fsdp.yaml": (DistributedType.FSDP, 1),
        "multi_node.yaml": (DistributedType.MULTI_GPU, 2),
    }
    for name, (kind, machines) in want.items():
        cfg = load_config_from_file(str(folder / name))
        assert cfg.distributed_type == kind and cfg.num_machines == machines, name
    fsdp = load_config_from_file(str(folder / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"


def _tunelab_twice(args: list[str], tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    """`tunelab ARGS --out` in one process and in two (torchrun, gloo); returns both output folders and the
    two-process run's console output."""
    one, two = tmp_path / f"{name}-one", tmp_path / f"{name}-two"
    _run([sys.executable, "-m", "tunelab", *args, "--out", str(one)], tmp_path)
    console = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "-m",
            "tunelab",
            *args,
            "--out",
            str(two),
        ],
        tmp_path,
    )
    assert not two.with_name(two.name + ".partial").exists()
    return one, two, console


def _evaluate_finetuned_twice(model: str, task: str, data: Path, tmp_path: Path, *options: str):
    """Fine-tune briefly on `data` (one process), then `tunelab evaluate` it in one process and in two."""
    folder = tmp_path / f"ft-{task}"
    _run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "finetune",
            model,
            "--task",
            task,
            "--train-file",
            str(data),
            "--data-file",
            str(data),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            *options,
            "--out",
            str(folder),
        ],
        tmp_path,
    )
    one, two, _ = _tunelab_twice(
        ["evaluate", str(folder), "--task", task, "--data-file", str(data), "--batch-size", "4"],
        tmp_path,
        f"ev-{task}",
    )
    return one, two


def _same_metrics(one: Path, two: Path, keys):
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["n"] == m2["n"]
    for k in keys:
        assert m2[k] == pytest.approx(m1[k], abs=1e-9), k


@takes_turns
@pytest.mark.slow
def test_zeroshot_and_evaluate_split_across_processes(tiny_model_dir, tmp_path):
    """Two processes each take a share of the examples (11: an uneven split) and the first writes what one
    process writes: every example once, in order, with the same scores."""
    from helpers import qa_examples, sst2_examples

    sst2_file = tmp_path / "dev.tsv"
    sst2_file.write_text(
        "sentence\tlabel\n" + "".join(f"{ex.text}\t{ex.label}\n" for ex in sst2_examples(11))
    )
    one, two, console = _tunelab_twice(
        [
            "zeroshot",
            tiny_model_dir,
            "--task",
            "sst2",
            "--data-file",
            str(sst2_file),
            "--prompt",
            "plain",
            "--batch-size",
            "4",
        ],
        tmp_path,
        "zs-sst2",
    )
    # the progress bars show the split: one process scored 6 sentences, the other 5
    assert "| 6/6 " in console and "| 5/5 " in console and "| 11/11 " not in console, console[-2000:]
    _same_metrics(one, two, ["accuracy", "f1", "uncalibrated_accuracy"])
    rows1, rows2 = ((d / "predictions.jsonl").read_text().splitlines() for d in (one, two))
    assert len(rows2) == 11
    for a, b in zip(rows1, rows2, strict=True):
        a, b = json.loads(a), json.loads(b)
        assert (a["line"], a["prediction"]) == (b["line"], b["prediction"])
        assert b["scores"]["positive"] == pytest.approx(a["scores"]["positive"], rel=1e-5)

    one, two = _evaluate_finetuned_twice(
        tiny_model_dir, "sst2", sst2_file, tmp_path, "--input-prompt", "none"
    )
    _same_metrics(one, two, ["accuracy", "f1"])

    paragraphs = [
        {"context": ex.context, "qas": [{"id": ex.id, "question": ex.question, "answers": ex.answers}]}
        for ex in qa_examples(11)
    ]
    squad_file = tmp_path / "squad.json"
    squad_file.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    one, two, _ = _tunelab_twice(
        ["zeroshot", tiny_model_dir, "--task", "squad", "--data-file", str(squad_file), "--batch-size", "4"],
        tmp_path,
        "zs-squad",
    )
    _same_metrics(one, two, ["exact_match", "f1"])
    assert (one / "predictions.json").read_text() == (two / "predictions.json").read_text()

    one, two = _evaluate_finetuned_twice(tiny_model_dir, "squad", squad_file, tmp_path, "--max-length", "48")
    _same_metrics(one, two, ["exact_match", "f1"])
    assert json.loads((one / "predictions.json").read_text()) == json.loads(
        (two / "predictions.json").read_text()
    )


def test_single_process_commands_refuse_a_multi_process_launch(tiny_model_dir, monkeypatch, capsys):
    from tunelab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["params", tiny_model_dir]) == 2
    err = capsys.readouterr().err
    assert "`tunelab params` runs in one process" in err and "finetune, zeroshot, evaluate" in err


REFUSED = textwrap.dedent("""
    import sys
    from tunelab.distributed import distributed_state
    from tunelab.errors import UsageError
    from tunelab.outputs import atomic_output

    state = distributed_state()
    try:
        with atomic_output(sys.argv[1]):
            pass
    except UsageError as exc:
        print(f"process {state.process_index} refused: {exc}", flush=True)
        sys.exit(2)
""")


@takes_turns
def test_every_process_stops_when_the_output_folder_is_refused(tmp_path):
    """Only the first process takes the lock and looks at the work folder; when it cannot go on, the others
    must stop too rather than wait for it forever."""
    from tunelab.outputs import output_lock

    script = tmp_path / "refused.py"
    script.write_text(REFUSED)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(script), str(out)]
    with output_lock(out):  # another run holds it
        done = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    for rank in (0, 1):
        assert f"process {rank} refused: {out} is being written by another tunelab run" in said, said[-3000:]


FINISH = textwrap.dedent("""
    import datetime, os, sys, time
    import torch.distributed as dist
    from tunelab.distributed import finish_together, on_joined

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=2))
    on_joined()  # as tunelab does once it has joined
    if dist.get_rank() == 0:
        time.sleep(6)  # the main process evaluates and writes alone, for longer than the group's timeout
    if sys.argv[1] == "plain":
        dist.barrier()
    else:
        finish_together()
    print(f"process {dist.get_rank() if dist.is_initialized() else os.environ['RANK']} left the group "
          f"{'' if dist.is_initialized() else 'together'}", flush=True)
""")


@takes_turns
def test_the_processes_wait_for_the_main_one_past_the_group_timeout(tmp_path):
    """At the end of a command the others wait for the main process, however long it still works alone,
    and then every process leaves the process group; a plain barrier would give up at the group's timeout."""
    script = tmp_path / "finish.py"
    script.write_text(FINISH)

    def launch(how: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        cmd += ["--master_port", str(_free_port()), str(script), how]
        return subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)

    done = launch("together")
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-3000:]
    assert "process 0 left the group together" in said and "process 1 left the group together" in said
    plain = launch("plain")  # the control: the waiting process's barrier times out
    said = plain.stdout + plain.stderr
    assert plain.returncode != 0 and "Timed out waiting 2000ms" in said and "process 1 left" not in said
