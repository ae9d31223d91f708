import json

import pytest
import torch

from tunelab.cli import main
from tunelab.errors import ModelError, UsageError
from tunelab.models import (
    LoraOptions,
    align_pad_token,
    load_causal_lm,
    load_config,
    load_task_model,
    load_tokenizer,
    param_report,
)
from tunelab.models.params import apply_method, count


@pytest.mark.parametrize("spec,total", [("llama-3.2-1b", 1_235_814_400), ("smollm2-135m", 134_515_008)])
def test_base_counts_from_shipped_config(spec, total):
    r = param_report(spec, load_config(spec))
    assert r.base_total == r.total == r.trainable == total


@pytest.mark.parametrize(
    "task,head,n", [("classification", "score", 2048 * 2), ("span", "qa_outputs", 2048 * 2 + 2)]
)
def test_llama_task_heads(task, head, n):
    r = param_report("llama-3.2-1b", load_config("llama-3.2-1b"), task)
    assert r.added == {head: n}
    assert r.removed == {}  # tied embeddings: dropping lm_head removes nothing
    assert r.total - r.base_total == n
    head_only = param_report("llama-3.2-1b", load_config("llama-3.2-1b"), task, "head")
    assert head_only.trainable == n


def test_lora_count_matches_formula():
    cfg = load_config("llama-3.2-1b")
    r = param_report(
        "llama-3.2-1b", cfg, "classification", "lora", LoraOptions(r=8, target_modules=("q_proj", "v_proj"))
    )
    # q: 2048->2048, v: 2048->512; LoRA adds r*(in+out) per matrix, 16 layers
    expected = 16 * 8 * ((2048 + 2048) + (2048 + 512))
    assert r.adapter == expected
    assert r.trainable == expected + 4096
    # while training, peft's "all params": + the adapter and modules_to_save's trainable copy of the head
    assert r.training_total == r.total + expected + 4096


def test_params_lora_gives_peft_s_share_and_the_exported_total(capsys):
    assert (
        main(["params", "llama-3.2-1b", "--task", "sst2", "--method", "lora", "--lora-targets", "q_proj"])
        == 0
    )
    out = capsys.readouterr().out
    adapter = 16 * 16 * (2048 + 2048)
    trainable, training = adapter + 4096, 1_235_818_496 + adapter + 4096
    assert f"trainable  {trainable:>15,}  ({100 * trainable / training:.4f}% of {training:,}," in out
    assert (
        f"LoRA adapter {adapter:>11,}  (+ a trainable copy of the head, 4,096; merged on export: total "
        in out
    )
    assert main(["params", "llama-3.2-1b", "--task", "sst2", "--method", "head"]) == 0
    assert "trainable            4,096  (0.0003% of 1,235,818,496)\n" in capsys.readouterr().out


def test_lora_targets_by_a_dotted_suffix_as_peft_matches_them():
    """peft matches a target against the end of a module's full name: `self_attn.q_proj` is a layer (the same
    adapters as `q_proj`), `attn.q_proj` is not (no whole-name suffix)."""
    cfg = load_config("llama-3.2-1b")
    plain = param_report(
        "llama-3.2-1b", cfg, "classification", "lora", LoraOptions(r=8, target_modules=("q_proj",))
    )
    dotted = param_report(
        "llama-3.2-1b", cfg, "classification", "lora", LoraOptions(r=8, target_modules=("self_attn.q_proj",))
    )
    assert dotted.adapter == plain.adapter == 16 * 8 * (2048 + 2048)
    with pytest.raises(UsageError, match=r"\['attn.q_proj'\] name no linear or embedding layer"):
        param_report(
            "llama-3.2-1b", cfg, "classification", "lora", LoraOptions(r=8, target_modules=("attn.q_proj",))
        )


def test_untied_model_reports_removed_lm_head(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    r = param_report("x", cfg, "classification")
    assert r.removed == {"lm_head": 1600}
    assert r.added == {"score": 32}
    assert r.delta == 32 - 1600


def test_params_cli_json(capsys):
    assert main(["params", "llama-3.2-1b", "--task", "squad", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"model", "task", "method", "base_total", "total", "trainable", "added"} <= set(out)
    assert (
        out["base_total"] == 1_235_814_400 and out["added"] == {"qa_outputs": 4098} and out["task"] == "squad"
    )


def test_params_cli_text(capsys):
    assert main(["params", "llama-3.2-1b"]) == 0
    assert "1,235,814,400" in capsys.readouterr().out


def test_lora_trainable_equals_real_peft_model(tiny_model_dir):
    cfg = load_config(tiny_model_dir)
    r = param_report(tiny_model_dir, cfg, "classification", "lora", LoraOptions(r=4))
    model = load_task_model(tiny_model_dir, "classification")
    peft_model = apply_method(model, "classification", "lora", LoraOptions(r=4))
    assert count(peft_model, trainable_only=True) == r.trainable


@pytest.mark.parametrize("task", ["classification", "span"])
def test_task_model_body_is_pretrained(tiny_model_dir, task):
    lm = load_causal_lm(tiny_model_dir)
    model = load_task_model(tiny_model_dir, task)
    body = getattr(model, model.base_model_prefix)
    for (name, p), (name2, q) in zip(body.named_parameters(), lm.model.named_parameters(), strict=True):
        assert name == name2
        assert torch.equal(p, q), name


def test_task_model_refuses_a_checkpoint_without_body(tmp_path, tiny_model_dir):
    # a folder whose weights do not match the architecture: every body tensor missing
    import shutil

    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    save_file({"something.else": torch.zeros(2)}, str(bad / "model.safetensors"))
    with pytest.raises(ModelError, match="not found in the checkpoint|lacks weights|cannot load"):
        load_task_model(str(bad), "span")


def test_pad_token_on_tokenizer_and_config(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    assert load_tokenizer(tiny_model_dir, padding_side="left").padding_side == "left"
    model = load_task_model(tiny_model_dir, "classification")
    align_pad_token(model, tok)
    assert model.config.pad_token_id == tok.pad_token_id


def test_bad_specs(tmp_path):
    with pytest.raises(ModelError, match="not a model folder"):
        load_config(str(tmp_path))
    with pytest.raises(ModelError, match="not a known alias"):
        load_config("no-such-model")


def test_gated_model_without_token_is_a_clear_error(monkeypatch):
    from tunelab.models import resolve

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ModelError, match="gated"):
        resolve("llama-3.2-1b")


def test_cli_bad_model_exits_2(tmp_path, capsys):
    assert main(["params", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_a_missing_or_broken_gguf_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """TUNELAB_GGUF naming no file, or a file that is no GGUF: one message naming it, no half-converted
    folder left in the cache."""
    from tunelab.models import resolve

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELAB_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match=r"TUNELAB_GGUF=.*missing\.gguf: no such file"):
        resolve("smollm2-135m")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a GGUF file")
    monkeypatch.setenv("TUNELAB_GGUF", str(broken))
    with pytest.raises(ModelError, match=r"smollm2-135m: cannot convert .*broken\.gguf: .*not a GGUF file"):
        resolve("smollm2-135m")
    # the wait is announced: its progress bar is hidden by default
    assert "tunelab: converting broken.gguf once into" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [".smollm2-135m.lock"]


def test_a_stale_tunelab_gguf_does_not_block_a_converted_folder(tmp_path, monkeypatch):
    """TUNELAB_GGUF naming a file since removed: the folder converted from it earlier is used as it is; the
    missing file matters only when a conversion needs it."""
    from tunelab.models import resolve
    from tunelab.models.registry import local_files

    converted = tmp_path / "cache" / "models" / "smollm2-135m"
    converted.mkdir(parents=True)
    (converted / "model.safetensors").write_bytes(b"x")
    (converted / "tokenizer.json").write_text("{}")
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELAB_GGUF", str(tmp_path / "removed.gguf"))
    assert resolve("smollm2-135m") == str(converted)
    assert local_files("smollm2-135m")[1] == str(converted)


def test_params_cli_of_a_task_file_counts_its_labels(tmp_path, capsys):
    task = tmp_path / "six.yaml"
    task.write_text("kind: classification\nlabels: [a, b, c, d, e, f]\ndata: {splits: {dev: x.tsv}}\n")
    assert main(["params", "llama-3.2-1b", "--task", str(task), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "six" and out["added"] == {"score": 2048 * 6} and out["num_labels"] == 6
    assert main(["params", "llama-3.2-1b", "--task", str(task)]) == 0
    assert "six  (sequence classification, 6 labels)" in capsys.readouterr().out


@pytest.mark.parametrize("finished", [True, False])
def test_a_conversion_waits_for_the_process_converting_and_reuses_its_folder(monkeypatch, finished):
    """The processes of a first `accelerate launch` convert the embedded GGUF once: a second one waits on
    the lock, then takes the folder the first wrote (or converts, if the first died without one)."""
    import fcntl
    import os
    import threading
    import time
    from pathlib import Path

    from tunelab.models import registry

    alias = registry.ALIASES["smollm2-135m"]
    target = registry.cache_dir() / "models" / alias.name
    target.parent.mkdir(parents=True)
    converted = []

    def convert(alias, gguf, target, complete):
        converted.append(gguf)
        return target

    monkeypatch.setattr(registry, "_convert", convert)
    holder = os.open(target.parent / f".{alias.name}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    got = []
    waiter = threading.Thread(target=lambda: got.append(registry.convert_gguf(alias, Path("x.gguf"))))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not converted  # waiting for the holder
    if finished:
        target.mkdir()
        (target / "model.safetensors").write_bytes(b"w")
        (target / "tokenizer.json").write_text("{}")
    os.close(holder)
    waiter.join(10)
    assert got == [target]
    assert converted == ([] if finished else [Path("x.gguf")])


def test_an_unreachable_hub_is_said_in_tunelab_words():
    from tunelab.models.remote_code import load_error

    exc = OSError(
        "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the "
        "cached files."
    )
    message = str(load_error("owner/name", "its tokenizer", exc))
    assert message.startswith("owner/name: cannot load its tokenizer: the Hub cannot be reached")
    assert "HF_HUB_OFFLINE=1" in message
