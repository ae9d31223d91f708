"""The window cache (tasks/extractive_qa/window_cache.py): a hit gives the same windows without windowing
again; any change of what the windows depend on is a miss; a corrupted, truncated or foreign file is a miss
that is rebuilt and rewritten, never an error; TUNELAB_WINDOW_CACHE=0 writes nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tunelab.tasks.extractive_qa import window_cache
from tunelab.tasks.extractive_qa.windows import prepare_eval_features, prepare_train_features

CORPUS = ["The Denver Broncos won Super Bowl 50 in Santa Clara.", "Who won? Where was it? café 😀"] * 3


def make_tok(vocab_size: int = 300):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def examples(n: int = 12, answer: str = "Denver Broncos"):
    out = []
    for i in range(n):
        context = f"Game {i // 3}: The {answer} won Super Bowl 50 in Santa Clara, {i // 3} times. " * 3
        start = context.index(answer)
        out.append(
            SimpleNamespace(
                id=f"q{i}",
                title="t",
                context=context,
                question="Who won?" if i % 2 else "Where was it?",
                answers=[{"text": answer, "answer_start": start}],
                is_impossible=False,
            )
        )
    return out


@pytest.fixture
def counted(monkeypatch):
    """Cache every input (no minimum size) and count the windowings really done."""
    monkeypatch.setattr(window_cache, "MIN_EXAMPLES", 0)
    calls = []
    real = window_cache.encode

    def encode(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(window_cache, "encode", encode)
    return calls


def features(exs, tok, max_length=32, stride=8):
    return prepare_train_features(exs, tok, max_length, stride), prepare_eval_features(
        exs, tok, max_length, stride
    )


def cache_files():
    return sorted(window_cache.cache_folder().glob("*.windows"))


def test_second_call_reads_the_cache_and_gives_the_same_windows(counted):
    tok, exs = make_tok(), examples()
    first = features(exs, tok)
    assert len(counted) == 1 and len(cache_files()) == 1  # train and eval windows are one file
    second = features(exs, tok)
    assert len(counted) == 1  # both read from the cache
    assert second == first
    assert len(first[0]["input_ids"]) > len(exs)  # really several windows per question


def changed(e, **kw):
    return SimpleNamespace(**{**vars(e), **kw})


def uncached(exs, tok, monkeypatch, max_length=32, stride=8):
    with monkeypatch.context() as m:
        m.setenv("TUNELAB_WINDOW_CACHE", "0")
        return features(exs, tok, max_length, stride)


CHANGES = {
    "answer": lambda exs: examples(answer="Santa Clara"),
    "question": lambda exs: [*exs[:3], changed(exs[3], question="Who?"), *exs[4:]],
    "passage": lambda exs: [changed(exs[0], context=exs[0].context + " More."), *exs[1:]],
    "id": lambda exs: [*exs[:5], changed(exs[5], id="other"), *exs[6:]],
    "impossible": lambda exs: [*exs[:5], changed(exs[5], answers=[], is_impossible=True), *exs[6:]],
    "fewer": lambda exs: exs[:-1],
}


@pytest.mark.parametrize("change", [*CHANGES, "tokenizer", "max_length", "stride", "version"])
def test_any_changed_input_is_recomputed(counted, monkeypatch, change):
    tok, exs = make_tok(), examples()
    features(exs, tok)
    max_length, stride = 32, 8
    if change in CHANGES:
        exs = CHANGES[change](exs)
    elif change == "tokenizer":
        tok = make_tok(vocab_size=280)
    elif change == "max_length":
        max_length = 33
    elif change == "stride":
        stride = 7
    elif change == "version":
        monkeypatch.setattr(window_cache, "__version__", "999")
    after = features(exs, tok, max_length, stride)
    assert len(counted) == 2  # windowed again (the eval call then reads the new file)
    assert len(cache_files()) == 2
    assert after == uncached(exs, tok, monkeypatch, max_length, stride)


def corrupt_flip(data: bytes) -> bytes:
    i = len(data) - 100
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def corrupt_consistent_checksum(data: bytes) -> bytes:
    """A file whose checksum matches but whose arrays do not fit together (say, a bug in an old writer)."""
    import hashlib
    import io
    import json

    import numpy as np

    header, payload = data.split(b"\n", 1)
    with np.load(io.BytesIO(payload)) as z:
        arrays = dict(z)
    arrays["w_stop"] = arrays["w_stop"] + 10_000
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    h = json.loads(header)
    h.update(bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    return json.dumps(h).encode() + b"\n" + payload


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_flip,
        lambda d: d[: len(d) // 2],  # truncated
        lambda d: b"",
        lambda d: b"not a cache file",
        lambda d: b'{"format": "%s"}\n' % window_cache.FORMAT.encode() + d.split(b"\n", 1)[1],  # no key
        corrupt_consistent_checksum,
    ],
    ids=["flipped-byte", "truncated", "empty", "garbage", "no-key", "inconsistent-arrays"],
)
def test_a_corrupted_cache_file_is_rebuilt_not_used(counted, corrupt):
    tok, exs = make_tok(), examples()
    good = features(exs, tok)
    (path,) = cache_files()
    intact = path.read_bytes()
    path.write_bytes(corrupt(intact))
    n = len(counted)
    again = features(exs, tok)
    assert again == good
    assert len(counted) == n + 1  # rebuilt once, then read back
    assert window_cache.read(path, path.stem) is not None  # and the file rewritten whole


def test_a_nul_moved_between_two_passages_is_another_key(counted, monkeypatch):
    """Passages are hashed length-prefixed, not NUL-joined: "P\0" + "Q" and "P" + "\0Q" are other inputs
    (the second passage's questions unanswerable, so that no answer offset tells them apart)."""
    tok, exs = make_tok(), examples(6)
    exs = [e if i < 3 else changed(e, answers=[], is_impossible=True) for i, e in enumerate(exs)]
    a = [changed(e, context=e.context + "\0") if i < 3 else e for i, e in enumerate(exs)]
    b = [changed(e, context="\0" + e.context) if i >= 3 else e for i, e in enumerate(exs)]
    assert window_cache.cache_key(a, tok, 32, 8, True) != window_cache.cache_key(b, tok, 32, 8, True)
    features(a, tok)
    got = features(b, tok)
    assert len(counted) == 2  # b windowed, not read from a's file
    assert got == uncached(b, tok, monkeypatch)


def test_a_file_of_other_inputs_under_this_key_is_not_used(counted, monkeypatch):
    """The key is checked inside the file too: a file renamed (or copied) to another key is a miss."""
    tok, other = make_tok(), examples(answer="Santa Clara")
    features(examples(), tok)
    (a,) = cache_files()
    features(other, tok)
    b = next(p for p in cache_files() if p != a)
    b.write_bytes(a.read_bytes())
    again = features(other, tok)
    assert len(counted) == 3  # rebuilt
    assert again == uncached(other, tok, monkeypatch)


def test_cache_off_writes_nothing(counted, monkeypatch):
    monkeypatch.setenv("TUNELAB_WINDOW_CACHE", "0")
    tok, exs = make_tok(), examples()
    features(exs, tok)
    features(exs, tok)
    assert len(counted) == 4 and cache_files() == []  # windowed at every call


def test_small_inputs_are_not_cached(monkeypatch):
    tok, exs = make_tok(), examples()
    assert len(exs) < window_cache.MIN_EXAMPLES
    features(exs, tok)
    assert cache_files() == []


def test_an_unwritable_cache_folder_only_costs_the_rebuild(counted, monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(
        window_cache, "cache_folder", lambda: blocker / "windows"
    )  # under a file: cannot exist
    tok, exs = make_tok(), examples()
    assert features(exs, tok) == uncached(exs, tok, monkeypatch)
    assert "could not write the window cache" in capsys.readouterr().err


def test_only_the_most_recent_files_are_kept(counted, monkeypatch):
    monkeypatch.setattr(window_cache, "KEEP", 2)
    tok = make_tok()
    for n in (9, 10, 11):
        features(examples(n), tok)
    assert len(cache_files()) == 2
