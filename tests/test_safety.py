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
    for load in (lambda: load_causal_lm(str(folder)), lambda: load_task_model(str(folder), "sst2"),
                 lambda: load_task_model(str(folder), "squad")):
        with pytest.raises(ModelError, match="safetensors"):
            load()
    data = _write_sst2(tmp_path / "data")
    out = tmp_path / "o"
    rc = main(["finetune", str(folder), "--task", "sst2", "--data-dir", str(data), "--out", str(out),
               "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "safetensors" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "o.partial").exists()
    assert not marker.exists(), "a pickle was executed"


def test_remote_code_is_never_run_by_default(tiny_model_dir, tmp_path):
    from tunelab.models import load_causal_lm, load_task_model, load_tokenizer

    folder = tmp_path / "remote-code"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
               auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                         "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                         "AutoModelForSequenceClassification": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    payload = f"import os\nos.mkdir({str(marker)!r})\n"
    (folder / "configuration_evil.py").write_text(payload)
    (folder / "modeling_evil.py").write_text(payload)
    for load in (lambda: load_causal_lm(str(folder)), lambda: load_task_model(str(folder), "sst2")):
        with pytest.raises(ModelError, match="custom code|trust_remote_code"):
            load()
    try:
        load_tokenizer(str(folder))
    except ModelError:
        pass
    assert not marker.exists(), "code shipped with a model ran"


def test_trust_remote_code_defaults_to_false_everywhere():
    calls_true = []
    defaults = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        calls_true += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"trust_remote_code\s*=\s*True", text)]
        defaults += re.findall(r"trust_remote_code\s*:\s*bool\s*=\s*(\w+)", text)
    assert not calls_true, calls_true
    assert defaults and set(defaults) == {"False"}


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
    assert main(["finetune", tiny_model_dir, *common, "--out", str(ft), "--method", "lora", "--lora-r", "4",
                 "--lora-alpha", "8", "--max-steps", "3", "--save-every", "1", "--eval-every", "1",
                 "--batch-size", "4", "--max-length", "32", "--input-prompt", "none"]) == 0
    assert main(["evaluate", str(ft), *common, "--out", str(runs / "ev")]) == 0
    assert main(["zeroshot", tiny_model_dir, *common, "--out", str(runs / "zs")]) == 0
    assert main(["data", "check", str(data / "SST-2" / "train.tsv")]) == 0
    assert main(["params", tiny_model_dir, "--task", "sst2", "--json"]) == 0

    # A run that stops after writing checkpoints (they are deleted when a run finishes).
    model = load_task_model(tiny_model_dir, "sst2")
    model.config.pad_token_id = 0
    feats = [{"input_ids": [5 + i, 6, 7], "attention_mask": [1, 1, 1], "labels": i % 2} for i in range(8)]

    def stop(_model):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, feats, TrainConfig(batch_size=2, save_every=1, eval_every=2, learning_rate=1e-3), pad_id=0,
              work_dir=runs / "stopped", evaluate=stop, progress=False)
    assert last_checkpoint(runs / "stopped" / "checkpoints") is not None

    cap = capfd.readouterr()
    assert FAKE_TOKEN not in cap.out + cap.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20  # outputs, evaluation, checkpoint, cache: all scanned
    assert _files_containing(tmp_path, FAKE_TOKEN.encode()) == []


def _write_sst2(folder: Path) -> Path:
    d = folder / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(f"{w} film {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 6))
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    return folder
