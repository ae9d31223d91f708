"""Safe loading and no leaked secrets: weights only from safetensors (a pickle is never unpickled), no remote
code unless asked for, and a Hugging Face token in the environment is never written to any output."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import ModelError

SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"


class _SideEffect:
    """Unpickling this creates a folder: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_only_model(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """A model folder whose weights are a (booby-trapped) pytorch_model.bin and no safetensors."""
    folder = tmp_path / "pickle-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_SideEffect(marker)))
    return folder, marker


def test_pytorch_model_bin_is_refused_and_never_unpickled(tiny_model_dir, tmp_path, capsys):
    from tunelab.models import load_causal_lm, load_task_model

    folder, marker = _pickle_only_model(tiny_model_dir, tmp_path)
    for load in (
        lambda: load_causal_lm(str(folder)),
        lambda: load_task_model(str(folder), "classification"),
        lambda: load_task_model(str(folder), "span"),
    ):
        with pytest.raises(ModelError, match="safetensors"):
            load()
    data = _write_sst2(tmp_path / "data")
    out = tmp_path / "o"
    rc = main(
        [
            "finetune",
            str(folder),
            "--task",
            "sst2",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "safetensors" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    assert not marker.exists(), "a pickle was executed"


def test_remote_code_is_never_run_by_default(tiny_model_dir, tmp_path):
    from tunelab.models import load_causal_lm, load_task_model, load_tokenizer

    folder, marker = _model_with_code(tiny_model_dir, tmp_path)  # its code leaves a marker when imported
    for load in (lambda: load_causal_lm(str(folder)), lambda: load_task_model(str(folder), "classification")):
        with pytest.raises(ModelError, match="ships its own Python code.*--trust-remote-code"):
            load()
    try:
        load_tokenizer(str(folder))
    except ModelError:
        pass
    assert not marker.exists(), "code shipped with a model ran"


def test_trust_remote_code_is_off_unless_the_command_line_asks(tiny_model_dir, tmp_path):
    """Every loader takes trust_remote_code from the one switch, which starts off and which every `tunelab`
    call sets from its own arguments (an earlier call's --trust-remote-code does not carry over)."""
    from tunelab.models.remote_code import remote_code_trusted, trust_remote_code

    uses = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        uses += re.findall(r"trust_remote_code\s*=\s*([\w.]+\(?\)?)", text)
    assert len(uses) >= 3 and set(uses) == {"remote_code_trusted()"}, uses
    assert not remote_code_trusted()
    folder, marker = _model_with_code(tiny_model_dir, tmp_path)
    trust_remote_code(True)
    try:
        assert main(["params", str(folder)]) == 2  # this call did not pass the flag
    finally:
        trust_remote_code(False)
    assert not remote_code_trusted() and not marker.exists()


def test_no_pickle_loading_in_the_code():
    """Weights come from safetensors; checkpoints' own state (RNG, schedule, position) is JSON."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"weights_only\s*=\s*False", r"pickle\.loads?\(", r"use_safetensors\s*=\s*False"):
            offenders += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
    assert not offenders, offenders


FAKE_TOKEN = "hf_FAKE_SECRET_123"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


def test_hf_token_never_written_anywhere(tiny_model_dir, tmp_path, monkeypatch, capfd):
    from tunelab.models import load_task_model
    from tunelab.training import TrainConfig, last_checkpoint, train

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(var, FAKE_TOKEN)
    data = _write_sst2(tmp_path / "data")
    runs = tmp_path / "runs"
    ft = runs / "ft"
    common = ["--task", "sst2", "--data-dir", str(data)]
    assert (
        main(
            [
                "finetune",
                tiny_model_dir,
                *common,
                "--out",
                str(ft),
                "--method",
                "lora",
                "--lora-r",
                "4",
                "--lora-alpha",
                "8",
                "--max-steps",
                "3",
                "--save-every",
                "1",
                "--eval-every",
                "1",
                "--batch-size",
                "4",
                "--max-length",
                "32",
                "--input-prompt",
                "none",
            ]
        )
        == 0
    )
    assert main(["evaluate", str(ft), *common, "--out", str(runs / "ev")]) == 0
    assert main(["zeroshot", tiny_model_dir, *common, "--out", str(runs / "zs")]) == 0
    assert main(["data", "check", str(data / "SST-2" / "train.tsv")]) == 0
    assert main(["params", tiny_model_dir, "--task", "sst2", "--json"]) == 0

    # A run that stops after writing checkpoints (they are deleted when a run finishes).
    model = load_task_model(tiny_model_dir, "classification")
    model.config.pad_token_id = 0
    feats = [{"input_ids": [5 + i, 6, 7], "attention_mask": [1, 1, 1], "labels": i % 2} for i in range(8)]

    def stop(_model):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            model,
            feats,
            TrainConfig(batch_size=2, save_every=1, eval_every=2, learning_rate=1e-3),
            pad_id=0,
            work_dir=runs / "stopped",
            evaluate=stop,
            progress=False,
        )
    assert last_checkpoint(runs / "stopped" / "checkpoints") is not None

    cap = capfd.readouterr()
    assert FAKE_TOKEN not in cap.out + cap.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20  # outputs, evaluation, checkpoint, cache: all scanned
    assert _files_containing(tmp_path, FAKE_TOKEN.encode()) == []


def _write_sst2(folder: Path) -> Path:
    d = folder / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(
        f"{w} film {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 6)
    )
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    return folder


def _model_with_code(tiny_model_dir, tmp_path) -> tuple[Path, Path]:
    """A working model folder whose classes come from code it ships (a config's auto_map); importing that code
    appends to a marker file."""
    folder = tmp_path / "model-with-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "CODE_RAN"
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(
        model_type="friendly_llama",
        architectures=["FriendlyForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_friendly.FriendlyConfig",
            "AutoModel": "modeling_friendly.FriendlyModel",
            "AutoModelForCausalLM": "modeling_friendly.FriendlyForCausalLM",
            "AutoModelForSequenceClassification": "modeling_friendly.FriendlyForSequenceClassification",
        },
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "configuration_friendly.py").write_text(
        "from transformers import LlamaConfig\n"
        f"open({str(marker)!r}, 'a').write('config\\n')\n\n\n"
        "class FriendlyConfig(LlamaConfig):\n    model_type = 'friendly_llama'\n"
    )
    (folder / "modeling_friendly.py").write_text(
        "import torch\n"
        "from transformers import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel\n"
        "from transformers.models.llama.modeling_llama import LlamaPreTrainedModel\n\n"
        "from .configuration_friendly import FriendlyConfig\n\n"
        f"open({str(marker)!r}, 'a').write('model\\n')\n\n\n"
        "class FriendlyModel(LlamaModel):\n    config_class = FriendlyConfig\n\n\n"
        "class FriendlyForCausalLM(LlamaForCausalLM):\n    config_class = FriendlyConfig\n\n\n"
        "class FriendlyForSequenceClassification(LlamaForSequenceClassification):\n"
        "    config_class = FriendlyConfig\n\n"
        # its own body, as shipped code does (transformers' generic head builds it with AutoModel, which
        # does not pass trust_remote_code on)
        "    def __init__(self, config):\n"
        "        LlamaPreTrainedModel.__init__(self, config)\n"
        "        self.num_labels = config.num_labels\n"
        "        self.model = FriendlyModel(config)\n"
        "        self.score = torch.nn.Linear(config.hidden_size, config.num_labels, bias=False)\n"
        "        self.post_init()\n"
    )
    return folder, marker


@pytest.mark.slow
def test_trust_remote_code_flag_runs_the_shipped_code(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    folder, marker = _model_with_code(tiny_model_dir, tmp_path)
    data = _write_sst2(tmp_path / "data")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        TUNELAB_DATA_DIR=str(data),
        CUDA_VISIBLE_DEVICES="",
    )

    def tunelab(*args):
        return subprocess.run(
            [sys.executable, "-m", "tunelab", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    refused = tunelab("params", str(folder), "--task", "sst2")
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and not marker.exists()

    counted = tunelab("params", str(folder), "--task", "sst2", "--trust-remote-code")
    assert counted.returncode == 0, counted.stderr
    assert "config" in marker.read_text()

    out = tmp_path / "ft"
    done = tunelab(
        "finetune",
        str(folder),
        "--task",
        "sst2",
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--input-prompt",
        "none",
        "--trust-remote-code",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model" in marker.read_text()  # the shipped model class was used
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "FriendlyForSequenceClassification"
    ]

    # the fine-tuned folder keeps the shipped code, so using it again needs the flag again
    refused = tunelab("evaluate", str(out), "--task", "sst2", "--out", str(tmp_path / "ev"))
    assert refused.returncode == 2 and "--trust-remote-code" in refused.stderr, refused.stderr
    assert not (tmp_path / "ev").exists()
    again = tunelab(
        "evaluate", str(out), "--task", "sst2", "--out", str(tmp_path / "ev"), "--trust-remote-code"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 12


def test_a_lora_adapter_without_safetensors_is_refused_before_peft_unpickles_it(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """A real peft-saved adapter whose adapter_model.safetensors was converted to adapter_model.bin: peft
    would `torch.load` the pickle; tunelab refuses the folder first, in every command that loads one."""
    import peft
    import torch
    from helpers import SST2, sst2_examples, tiny_train_config
    from safetensors.torch import load_file

    from tunelab.runs import finetune, load_finetuned

    folder = tmp_path / "lora"
    examples = sst2_examples(8)
    finetune(SST2, tiny_model_dir, examples, examples, "dev", folder, tiny_train_config(method="lora"))
    weights = folder / "adapter_model.safetensors"
    assert weights.is_file() and (folder / "adapter_config.json").is_file()
    torch.save(load_file(str(weights)), folder / "adapter_model.bin")
    weights.unlink()

    calls = []
    real = peft.utils.save_and_load.torch_load
    monkeypatch.setattr(
        peft.utils.save_and_load, "torch_load", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    with pytest.raises(
        ModelError, match=r"without adapter_model\.safetensors \(it holds adapter_model\.bin\)"
    ):
        load_finetuned(folder)
    data = _write_sst2(tmp_path / "data")
    out = tmp_path / "o"
    for argv in (
        ["evaluate", folder, "--task", "sst2", "--data-dir", data, "--out", out],
        ["predict", folder, "a great film"],
        ["export", folder, "--out", out],
    ):
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2 and "adapter_model.safetensors" in err and "Traceback" not in err, (argv, err)
        assert not out.exists() and not (tmp_path / "o.partial").exists()
    assert calls == [], "peft unpickled the adapter"
