"""Fine-tuning under FSDP (configs/accelerate/fsdp.yaml, two processes) saves whole weights that match one
process at the same global batch, evaluates what it saved, and resumes from its sharded checkpoints.

accelerate turns FSDP on only for GPU processes; FSDP2 itself also shards across CPU processes (gloo), so the
launched script forces accelerate's FSDP mode on CPU and then runs the real `tunelab` command line. Everything
else (accelerate launch, the FSDP settings from the YAML, the sharded module, the gathering of the weights) is
what a GPU run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import qa_examples, sst2_examples

# the tests that launch processes run one at a time, also under pytest-xdist (tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_launch_at_a_time")]

ROOT = Path(__file__).resolve().parents[2]
FSDP_YAML = ROOT / "configs" / "accelerate" / "fsdp.yaml"

LAUNCHED = textwrap.dedent("""
    import os, sys
    import accelerate, torch
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    torch.set_num_threads(1)

    class CPUFSDPAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.state.distributed_type = DistributedType.FSDP
            # the FSDP_* settings accelerate launch set
            self.state.fsdp_plugin = FullyShardedDataParallelPlugin()

    accelerate.Accelerator = CPUFSDPAccelerator

    from tunelab.training import checkpoint

    crash_after = int(os.environ.get("CRASH_AFTER_CHECKPOINT", "0"))
    if crash_after:  # a crash right after a checkpoint is complete, on every process
        save = checkpoint.save

        def save_then_crash(accelerator, ckpt_root, step, shared, own):
            save(accelerator, ckpt_root, step, shared, own)
            if step == crash_after:
                accelerator.wait_for_everyone()
                os._exit(17)

        checkpoint.save = save_then_crash

    from tunelab.cli import main
    code = main(sys.argv[1:])
    # before the interpreter's exit: has the command left the process group, together with the other process?
    with open(f"in-group-after-{os.environ['RANK']}.txt", "w") as f:
        f.write(str(torch.distributed.is_initialized()))
    sys.exit(code)
""")


def _env(**extra):
    e = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        ACCELERATE_DISABLE_RICH="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONFAULTHANDLER="1",  # a process that aborts prints its threads' stacks
        **extra,
    )
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(key, None)
    return e


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd, *, fsdp: bool, crash: bool = False, **env):
    if fsdp:
        script = cwd / "launched.py"
        script.write_text(LAUNCHED)
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(FSDP_YAML),
            "--num_processes",
            "2",
            "--main_process_port",
            str(_free_port()),
            str(script),
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "tunelab", *args]
    done = subprocess.run(
        cmd, env=_env(**env), cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    output = (done.stdout + done.stderr)[-4000:]
    if crash:  # the launcher fails (status 1) because the processes ended with the planted crash's status
        assert done.returncode != 0 and "exitcode  : 17" in output, output
    else:
        assert done.returncode == 0, output


def _sst2_files(tmp_path: Path) -> tuple[Path, Path]:
    files = []
    for name, n, seed in (("train", 40, 0), ("dev", 12, 1)):
        f = tmp_path / f"{name}.tsv"
        f.write_text(
            "sentence\tlabel\n" + "".join(f"{ex.text}\t{ex.label}\n" for ex in sst2_examples(n, seed))
        )
        files.append(f)
    return files[0], files[1]


def _squad_file(tmp_path: Path, n: int) -> Path:
    paragraphs = [
        {"context": ex.context, "qas": [{"id": ex.id, "question": ex.question, "answers": ex.answers}]}
        for ex in qa_examples(n)
    ]
    f = tmp_path / "squad.json"
    f.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return f


def _args(task: str, model: str, tmp_path: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    common = [
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--learning-rate",
        "3e-3",
        "--warmup-ratio",
        "0",
        "--log-every",
        "1",
        "--seed",
        "3",
        "--no-bf16",
        *extra,
    ]
    if task == "sst2":
        train, dev = _sst2_files(tmp_path)
        return [
            "finetune",
            model,
            "--task",
            "sst2",
            "--train-file",
            str(train),
            "--data-file",
            str(dev),
            "--max-length",
            "32",
            "--input-prompt",
            "none",
            *common,
        ]
    squad_file = _squad_file(tmp_path, 16)
    return [
        "finetune",
        model,
        "--task",
        "squad",
        "--train-file",
        str(squad_file),
        "--data-file",
        str(squad_file),
        "--max-length",
        "48",
        *common,
    ]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    name = (
        "adapter_model.safetensors"
        if (folder / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return load_file(str(folder / name))


def _assert_same_run(one: Path, two: Path, *, exact: bool = False):
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys() and w1
    for k in w1:
        if k == "qa_outputs.bias" and not exact:
            # A constant added to every start (or end) logit leaves the softmax unchanged: this bias's
            # gradient is zero but for rounding, which Adam scales up to steps of +-lr. Only its size is
            # comparable.
            assert w1[k].abs().max() < 1e-2 and w2[k].abs().max() < 1e-2
            continue
        if exact:
            assert torch.equal(w1[k], w2[k]), k
        else:
            torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=2e-6, msg=k)
    log1 = [json.loads(x) for x in (one / "train_log.jsonl").read_text().splitlines()]
    log2 = [json.loads(x) for x in (two / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log1] == [e["step"] for e in log2]
    for a, b in zip(log1, log2, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    m1 = json.loads((one / "eval" / "metrics.json").read_text())
    m2 = json.loads((two / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "f1", "exact_match"):
        if key in m1:
            assert m1[key] == pytest.approx(m2[key], abs=1e-9), key


@pytest.mark.parametrize("task,method", [("sst2", "full"), ("sst2", "lora"), ("squad", "full")])
def test_fsdp_saves_the_whole_model_and_matches_one_process(tiny_model_dir, tmp_path, task, method):
    one, two = tmp_path / "one", tmp_path / "two"
    # no LoRA dropout: its masks come from each process's own random stream, so they differ with the split
    extra = ("--method", method, "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0")
    _run(_args(task, tiny_model_dir, tmp_path, one, 8, *extra), tmp_path, fsdp=False)
    # 2 processes x batch 4 = the same global batch of 8; evaluation during training runs on the sharded model
    _run(_args(task, tiny_model_dir, tmp_path, two, 4, *extra, "--eval-every", "2"), tmp_path, fsdp=True)
    assert not two.with_name("two.partial").exists()
    assert [(tmp_path / f"in-group-after-{r}.txt").read_text() for r in (0, 1)] == ["False", "False"]
    _assert_same_run(one, two)
    assert json.loads((two / "tunelab.json").read_text())["method"] == method
    # the saved folder is a complete model: `tunelab evaluate` reloads it and scores it as training's end did
    data = ["--data-file", str(tmp_path / ("dev.tsv" if task == "sst2" else "squad.json"))]
    _run(
        ["evaluate", str(two), "--task", task, *data, "--out", str(tmp_path / "again")], tmp_path, fsdp=False
    )
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    saved = json.loads((two / "eval" / "metrics.json").read_text())
    key = "accuracy" if task == "sst2" else "f1"
    assert again[key] == pytest.approx(saved[key], abs=1e-9)


def test_fsdp_resumes_from_its_sharded_checkpoint(tiny_model_dir, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    extra = ("--epochs", "2", "--save-every", "2")
    _run(_args("sst2", tiny_model_dir, tmp_path, straight, 4, *extra), tmp_path, fsdp=True)
    _run(
        _args("sst2", tiny_model_dir, tmp_path, crashed, 4, *extra),
        tmp_path,
        fsdp=True,
        crash=True,
        CRASH_AFTER_CHECKPOINT="4",
    )
    partial = tmp_path / "crashed.partial"
    assert not crashed.exists() and (partial / "checkpoints" / "step-4").is_dir()
    # FSDP checkpoints hold the model and optimizer in shards (torch.distributed.checkpoint), one per process
    shards = [p.name for p in (partial / "checkpoints" / "step-4").iterdir()]
    assert any(name.startswith("pytorch_model_fsdp") for name in shards), shards
    _run(_args("sst2", tiny_model_dir, tmp_path, crashed, 4, *extra, "--resume"), tmp_path, fsdp=True)
    assert not partial.exists()
    _assert_same_run(straight, crashed, exact=True)
