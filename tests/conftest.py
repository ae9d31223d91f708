"""Shared fixtures: a tiny random Llama and a byte-level BPE tokenizer built in memory (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# float32 on every CPU, whether or not it has native bfloat16 (tunelab.precision), so that the tests compare
# the same arithmetic on any machine (launched processes inherit it); the bfloat16 tests turn it on.
os.environ["TUNELAB_CPU_BF16"] = "off"
# Two threads (the CI machine's cores); under pytest-xdist each worker its share of them, for oversubscribed
# OpenMP threads spin.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "a good and great film , truly wonderful",
    "a bad and awful film , truly terrible",
    "Review: positive negative Positive Negative Sentiment: movie review sentiment",
    "Is the sentiment of this movie review positive or negative? Answer with one word.",
    "The Denver Broncos won Super Bowl 50 in Santa Clara . Who won ? Where was it ?",
    "café naïve 中文 😀",
    "the of and to in is was it that",
]


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model_dir(path, seed: int = 0, tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(make_model_dir(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def one_launch_at_a_time(tmp_path_factory):
    """The tests that launch several processes (torchrun, accelerate launch) take turns across pytest-xdist
    workers: a lock file in the session's base folder, which the workers' folders share (xdist's loadgroup
    does not group tests under pytest 9)."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    lock = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "tunelab-launches.lock"
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
