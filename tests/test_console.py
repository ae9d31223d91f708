"""The console of a tiny study, captured from a real subprocess: tunelab's own bar per stage (with its ETA),
the stage lines and the final summary table; none of the libraries' bars, logs or warnings unless verbose."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Loading weights", "Writing model shards", "Converting and de-quantizing", "Generating", "Warning")


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    env["TUNELAB_CACHE"] = str(tmp_path / "cache")
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, "-m", "tunelab", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )


def _data(tmp_path):
    root = tmp_path / "data" / "SST-2"
    root.mkdir(parents=True)
    rows = [("a good and great film", 1), ("a bad and awful film", 0)] * 6
    for name in ("train", "dev"):
        (root / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return root.parent


def test_study_console_is_quiet_and_ends_with_a_summary(tmp_path, tiny_model_dir):
    cfg = {
        "model": tiny_model_dir,
        "data_dir": str(_data(tmp_path)),
        "tasks": {
            "sst2": {
                "zeroshot": {"prompt": "plain", "batch_size": 4},
                "finetune": {
                    "input_prompt": "plain",
                    "batch_size": 4,
                    "max_length": 32,
                    "learning_rate": 1e-3,
                },
            },
            "squad": {"enabled": False},
        },
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg))
    r = _run(["study", "--config", "study.yaml", "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    for noise in NOISE:
        assert noise not in r.stderr and noise not in r.stdout, noise
    bars = {
        m.group(1)
        for m in re.finditer(r"(zero-shot scoring|fine-tune \(full\)|evaluating):\s+100%", r.stderr)
    }
    assert bars == {"zero-shot scoring", "fine-tune (full)", "evaluating"}
    assert re.search(r"fine-tune \(full\):.*\[\d\d:\d\d<\d\d:\d\d", r.stderr)  # elapsed<ETA
    # everything on stderr is a bar line (carriage-return updates), nothing else
    for line in r.stderr.replace("\r", "\n").splitlines():
        assert not line.strip() or re.match(r"(zero-shot scoring|fine-tune \(full\)|evaluating):", line), line
    out = r.stdout
    assert "[1/5] sst2: parameters (base and task model)" in out
    assert "zero-shot vs fine-tuned" in out and "params before" in out and "sst2" in out and "Accuracy" in out
    params = yaml.safe_load((tmp_path / "run" / "params" / "sst2.json").read_text())
    assert f"{params['base']['total']:,}" in out and f"{params['finetuned_total']:,}" in out
    assert "report:" in out and "report.html" in out


def test_verbose_brings_the_library_bars_back(tmp_path, tiny_model_dir):
    data = _data(tmp_path)
    args = ["zeroshot", tiny_model_dir, "--task", "sst2", "--data-dir", str(data), "--prompt", "plain"]
    quiet = _run([*args, "--out", "q"], tmp_path)
    loud = _run([*args, "--out", "v", "--verbose"], tmp_path)
    assert quiet.returncode == loud.returncode == 0
    assert "Loading weights" not in quiet.stderr and "Loading weights" in loud.stderr


def test_verbose_is_taken_before_or_after_a_subcommands_action():
    from tunelab.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["data", "check", "x.tsv", "--verbose"]).verbose
    assert parser.parse_args(["data", "--verbose", "check", "x.tsv"]).verbose
    assert not parser.parse_args(["data", "check", "x.tsv"]).verbose


@pytest.mark.slow
def test_gguf_conversion_is_quiet_and_parses_the_file_once(tmp_path):
    """The embedded SmolLM2 GGUF, converted for real (once: ~20 s of a test's time): no "Converting and
    de-quantizing" bar and no "Loading weights"; the file's metadata parsed once (transformers alone parses it
    for the tokenizer, the config and the weights). The verbose bar: the test below."""
    code = (
        "import sys\nimport gguf\nfrom tunelab.console import configure\n"
        "from tunelab.models.registry import resolve\n"
        "parses = []\ninit = gguf.GGUFReader.__init__\n"
        "gguf.GGUFReader.__init__ = lambda self, *a, **k: parses.append(a) or init(self, *a, **k)\n"
        "configure(False)\nprint(resolve('smollm2-135m'))\nprint('parses', len(parses))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    env["TUNELAB_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    folder, parses = r.stdout.splitlines()[-2:]
    assert parses == "parses 1", r.stdout
    assert Path(folder).is_relative_to(tmp_path) and (Path(folder) / "model.safetensors").is_file()
    assert "Converting and de-quantizing" not in r.stderr and "Loading weights" not in r.stderr, r.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_the_gguf_conversion_bar_shows_only_when_verbose(verbose, capsys):
    """transformers' GGUF conversion draws its bar with the tqdm its module imported (checked in its source,
    so a renamed bar cannot pass unseen); tunelab switches that bar off unless verbose, and puts it back."""
    import inspect

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from tunelab.console import configure, quiet_module_tqdm

    assert 'tqdm(reader.tensors, desc="Converting and de-quantizing' in inspect.getsource(gguf_utils)
    original = gguf_utils.tqdm
    configure(verbose)
    try:
        with quiet_module_tqdm(gguf_utils):
            list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        assert gguf_utils.tqdm is original
    finally:
        configure(False)
    shown = "Converting and de-quantizing" in capsys.readouterr().err
    assert shown == verbose


def test_hub_retry_logs_only_when_verbose():
    """huggingface_hub logs a line per retried request (a Hub id with no network): errors only, unless
    --verbose."""
    import logging

    from tunelab.console import configure

    try:
        configure(False, models=False)
        assert logging.getLogger("huggingface_hub").getEffectiveLevel() == logging.ERROR
        configure(True, models=False)
        assert logging.getLogger("huggingface_hub").getEffectiveLevel() == logging.WARNING
    finally:
        configure(False, models=False)
