"""An on-disk cache of QA windows (`windows.Encoded`), so that the SQuAD training set (87,599 questions) is
tokenised and windowed once per tokenizer and window settings, not at every run.

A cache file is named by a key: the SHA-256 of everything the windows depend on — the examples' content (ids,
questions, passages, answers: a changed data file, or another sample of it, is another key), the tokenizer's
whole definition (its `tokenizer.json` serialisation, EOS and special-token count), max_length, stride, the
layout, the tunelab version and the cache format. The file holds a header line (format, key, payload length
and SHA-256) and the arrays as an `.npz` payload. Reading checks the key, the length, the checksum and that
the arrays fit together; anything else — a missing, stale, truncated or corrupted file — is a miss: the
windows are built again and the file rewritten. Files are written to a temporary name and renamed (a reader
never sees half a file); a cache that cannot be written only costs the rebuild.

`TUNELAB_WINDOW_CACHE=0` turns the cache off; files live in `$TUNELAB_CACHE/windows` (default
`~/.cache/tunelab/windows`); the `KEEP` most recently used are kept. Inputs of fewer than `MIN_EXAMPLES`
questions are not cached (windowing them is fast).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab import __version__
from tunelab.tasks.extractive_qa.windows import Encoded, encode

FORMAT = "tunelab-qa-windows/2"
MIN_EXAMPLES = 2000
KEEP = 8


def enabled() -> bool:
    return os.environ.get("TUNELAB_WINDOW_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_folder() -> Path:
    from tunelab.models.registry import cache_dir

    return cache_dir() / "windows"


def _field(h, data: bytes) -> None:
    """Hash `data` prefixed by its length, so that no two sequences of fields hash the same bytes."""
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's definition: its whole Rust `tokenizer.json` (vocabulary, merges,
    normalizer, pre-tokenizer, post-processor, added tokens) and what the windows take from the Python
    side."""
    h = hashlib.sha256()
    _field(h, tokenizer.backend_tokenizer.to_str().encode())
    extra = [type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.num_special_tokens_to_add(pair=True)]
    _field(h, json.dumps(extra).encode())
    return h.hexdigest()


def cache_key(examples: Sequence[Any], tokenizer, max_length: int, stride: int, question_first: bool) -> str:
    """SHA-256 of everything the windows depend on (each field length-prefixed)."""
    h = hashlib.sha256()
    settings = [FORMAT, __version__, tokenizer_fingerprint(tokenizer), max_length, stride, question_first]
    _field(h, json.dumps(settings).encode())
    seen: dict[str, int] = {}
    for ex in examples:  # each passage hashed once (SQuAD has ~5 questions per passage)
        j = seen.setdefault(ex.context, len(seen))
        row = [ex.id, ex.question, j, ex.answers, bool(getattr(ex, "is_impossible", False))]
        _field(h, json.dumps(row, ensure_ascii=False).encode())
    for context in seen:
        _field(h, context.encode())
    return h.hexdigest()


def _payload(enc: Encoded) -> bytes:
    buf = io.BytesIO()
    meta = np.array(
        json.dumps(
            {
                "question_first": enc.question_first,
                "prefix": enc.prefix,
                "middle": enc.middle,
                "suffix": enc.suffix,
                "eos": enc.eos,
            }
        )
    )
    np.savez(buf, meta=meta, **{k: getattr(enc, k) for k in Encoded.ARRAYS})
    return buf.getvalue()


def write(path: Path, key: str, enc: Encoded) -> None:
    """Write atomically: a temporary file in the same folder, renamed over `path`."""
    payload = _payload(enc)
    header = {
        "format": FORMAT,
        "key": key,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: Path, key: str) -> Encoded | None:
    """The windows in `path` if it is a complete, uncorrupted cache file for `key`; None otherwise."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        line, payload = data.split(b"\n", 1)
        header = json.loads(line)
        if (
            header.get("format") != FORMAT
            or header.get("key") != key
            or header.get("bytes") != len(payload)
            or header.get("sha256") != hashlib.sha256(payload).hexdigest()
        ):
            return None
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in Encoded.ARRAYS}
        enc = Encoded(
            bool(meta["question_first"]),
            [int(x) for x in meta["prefix"]],
            [int(x) for x in meta["middle"]],
            [int(x) for x in meta["suffix"]],
            int(meta["eos"]),
            **arrays,
        )
        enc.check()
        return enc
    except Exception:  # any undecodable or inconsistent file is a miss, never an error
        return None


def _prune(folder: Path, keep: int) -> None:
    try:
        files = sorted(folder.glob("*.windows"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def cached_encode(
    examples: Sequence[Any], tokenizer, max_length: int, stride: int, question_first: bool = True
) -> Encoded | None:
    """`windows.encode`, read from the cache when a valid file for exactly these inputs is there, else built
    and written to it."""
    examples = list(examples)
    if not enabled() or len(examples) < MIN_EXAMPLES:
        return encode(examples, tokenizer, max_length, stride, question_first)
    key = cache_key(examples, tokenizer, max_length, stride, question_first)
    path = cache_folder() / f"{key}.windows"
    enc = read(path, key)
    if enc is not None:
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass
        return enc
    enc = encode(examples, tokenizer, max_length, stride, question_first)
    if enc is not None:
        try:
            write(path, key, enc)
            _prune(path.parent, KEEP)
        except OSError as exc:
            print(f"tunelab: could not write the window cache {path}: {exc}", file=sys.stderr)
    return enc
