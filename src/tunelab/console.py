"""What the console shows: by default tunelab's own progress bar per stage (tqdm, with its ETA) and its result
lines, nothing else; `--verbose` brings back the libraries' bars ("Loading weights", "Writing model shards",
GGUF conversion, `datasets`), their log messages and warnings. Uses each library's own switch
(transformers.utils.logging, huggingface_hub / datasets `disable_progress_bars`)."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from collections.abc import Iterator

_verbose = False
_LIBRARIES = ("transformers", "peft", "accelerate", "torch", "datasets", "huggingface_hub")


def verbose() -> bool:
    return _verbose


def configure(verbose: bool, *, models: bool = True) -> None:
    """Set the libraries' bars, logs and warnings for this process; `models`: the command loads transformers
    (the others skip its import)."""
    global _verbose
    _verbose = verbose
    import huggingface_hub.utils as hub_utils

    (hub_utils.enable_progress_bars if verbose else hub_utils.disable_progress_bars)()
    # its logs include a retry line per failed Hub request (a Hub id with no network: ~30 s of them)
    (hub_utils.logging.set_verbosity_warning if verbose else hub_utils.logging.set_verbosity_error)()
    if models:
        import transformers.utils.logging as hf_logging

        if verbose:
            hf_logging.enable_progress_bar()
            hf_logging.set_verbosity_warning()
        else:
            hf_logging.disable_progress_bar()
            hf_logging.set_verbosity_error()
    if "datasets" in sys.modules:  # otherwise tunelab.data.hub applies it when it imports datasets
        datasets_bars(sys.modules["datasets"])
    for name in ("accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    action = "default" if verbose else "ignore"
    for name in _LIBRARIES:
        warnings.filterwarnings(action, module=rf"{name}(\.|$)")


def datasets_bars(datasets) -> None:
    """`datasets`' progress bars ("Generating train split", ...) as the console is set."""
    (datasets.enable_progress_bars if _verbose else datasets.disable_progress_bars)()


@contextlib.contextmanager
def quiet_module_tqdm(module) -> Iterator[None]:
    """A module that calls tqdm directly (transformers' GGUF conversion) without its bar, unless verbose."""
    original = getattr(module, "tqdm", None)
    if _verbose or original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original
