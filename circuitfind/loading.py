"""``circuitfind.load``: a hub name, a local directory, an in-memory HF model or ``zoo:NAME``."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitfind.errors import ModelLoadError, UnsupportedModelError
from circuitfind.families import adapt, supported_families
from circuitfind.model import Model

__all__ = ["load"]

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ModelLoadError(
            f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}"
        ) from None


def load(
    source: str | os.PathLike[str] | Any,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load a model into circuitfind's canonical form.

    Args:
        source: a Hugging Face hub name (``"gpt2"``, ``"owner/name"``), a local model
            directory, an in-memory ``PreTrainedModel`` (converted in place: its parameters are
            shared, not copied), or ``"zoo:NAME"`` for a bundled zoo model. A source that looks
            like a path (starts with ``./``, ``../``, ``/`` or ``~``, or has more than one
            ``/``) must exist: it is never looked up on the hub.
        device: where to put the model (``"cpu"``, ``"cuda"``, ...); default: where it is.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (or a torch dtype).
        tokenizer: a tokenizer to attach, or the directory / hub name of one (default: the
            source's own, when it has one).
        trust_remote_code: allow a model whose config needs its own Python code (its
            ``auto_map``); that code runs. Off by default.

    Returns:
        The canonical ``Model``; ``model(tokens)`` equals the HF model's logits.

    Raises:
        ModelLoadError: the source does not exist, cannot be reached, has no weights, needs
            remote code without the opt-in, or holds pickled weights that are not plain
            tensors (never unpickled).
        UnsupportedModelError: the model's family has no adapter.
    """
    torch_dtype = parse_dtype(dtype)
    name = str(source) if isinstance(source, (str, os.PathLike)) else None
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _tokenizer_from(str(tokenizer))
    if isinstance(source, (str, os.PathLike)):
        hf_model, tok = _from_pretrained(str(source), torch_dtype, trust_remote_code)
        tokenizer = tokenizer if tokenizer is not None else tok
        if tokenizer is None:
            logger.warning(_no_tokenizer_message(str(source)))
    else:
        hf_model = source
        if not hasattr(hf_model, "config") or not isinstance(hf_model, torch.nn.Module):
            raise ModelLoadError(
                f"cannot load a {type(source).__name__}: pass a hub name, a local directory, "
                "'zoo:NAME' or a transformers PreTrainedModel"
            )
        if torch_dtype is not None:
            hf_model.to(torch_dtype)
    if device is not None:
        hf_model.to(device)
    hf_model.eval()
    check_one_device(hf_model)
    cfg, weights = adapt(hf_model)
    if name is not None:  # how the user named it ("zoo:ioi", "gpt2"), not a resolved path
        cfg = replace(cfg, name=name)
    return Model(hf_model, cfg, weights, tokenizer=tokenizer)


def check_one_device(hf_model: Any) -> None:
    """Refuse a model whose weights span several devices (an accelerate ``device_map``).

    Every method runs each layer on the stream of the layer before, and keeps its caches and
    score sums on one device: none of them (exact, acdc, eap, eap-ig-inputs,
    eap-ig-activations, node) moves activations between devices, so such a model fails here,
    naming its devices and the fix, rather than mid-run with a device-mismatch error.
    """
    devices = sorted({str(p.device) for p in hf_model.parameters()})
    if len(devices) > 1:
        from circuitfind.methods.table import METHODS

        device_map = getattr(hf_model, "hf_device_map", None)
        how = " (an accelerate device_map)" if device_map else ""
        raise UnsupportedModelError(
            f"the model's weights are on several devices: {', '.join(devices)}{how}; no method "
            f"({', '.join(METHODS)}) runs a model split across devices: load it onto one "
            "device (device='cuda:0', or from_pretrained without device_map) and pass it to "
            "circuitfind.load, or use a smaller dtype (bfloat16) to make it fit"
        )


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


def looks_local(source: str) -> bool:
    """Whether ``source`` reads as a filesystem path rather than a hub id (``name`` or
    ``owner/name``): it starts with ``./``, ``../``, ``/`` or ``~``, or holds a path
    separator without being of the ``owner/name`` shape."""
    seps = tuple({"/", os.sep})
    if source.startswith(("~", *seps)) or source in (".", ".."):
        return True
    if source.startswith(tuple(f"{d}{s}" for d in (".", "..") for s in seps)):
        return True
    has_sep = any(s in source for s in seps)
    return has_sep and _HUB_ID.fullmatch(source) is None


def _no_tokenizer_message(source: str) -> str:
    return (
        f"no tokenizer found with {source}: prompts given as text cannot be encoded. Attach one "
        "with load(..., tokenizer=DIR_OR_NAME) (CLI: --tokenizer DIR), or give prompts as token "
        "ids: a JSONL task whose clean/corrupted/answer/wrong are id lists (see `circuitfind "
        "tasks`), or --tokens for the inspect commands."
    )


def _tokenizer_from(source: str) -> Any:
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    if not path.exists() and looks_local(source):
        raise ModelLoadError(f"tokenizer directory {source!r} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load a tokenizer from {source!r}: give a directory holding "
            f"tokenizer.json or tokenizer_config.json ({_first_line(exc)})"
        ) from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _check_local(path: Path, source: str, trust_remote_code: bool) -> None:
    """Refuse, before anything is loaded, a directory that cannot give a supported model."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"directory {source!r} has no config.json: pass the directory a Hugging Face model "
            "was saved to (model.save_pretrained(DIR))"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON: {_first_line(exc)}") from None
    model_type = config.get("model_type")
    from transformers import CONFIG_MAPPING

    from circuitfind.families import supported_families

    native = model_type in CONFIG_MAPPING
    families = ", ".join(supported_families())
    if config.get("auto_map") and not native and not trust_remote_code:
        raise ModelLoadError(
            f"{source!r} is a {model_type!r} model built by its own Python code (config.json "
            "auto_map), which circuitfind does not run unless you opt in: "
            "load(..., trust_remote_code=True), on the command line --trust-remote-code, and "
            f"only for code you trust; circuitfind analyses these families: {families}"
        )
    if native and model_type not in supported_families():
        raise UnsupportedModelError(
            f"{source!r} is a {model_type!r} model, a family circuitfind cannot analyse yet; "
            f"supported families: {families}"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(
            f"directory {source!r} has config.json but no weights ({', '.join(WEIGHT_FILES[::2])}"
            "): save the model there with model.save_pretrained(DIR)"
        )


def _from_pretrained(
    source: str, dtype: torch.dtype | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("zoo:"):
        from circuitfind.zoo import resolve

        source = str(resolve(source[4:]))
    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or looks_local(source)):
        what = "is a file, not a model directory" if path.exists() else "does not exist"
        raise ModelLoadError(
            f"model directory {source!r} {what}: pass a directory holding config.json and the "
            "weights, a hub name (owner/name) or zoo:NAME"
        )
    if local:
        _check_local(path, source, trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(path) if local else source, attn_implementation="eager", **kwargs
        )
    except Exception as exc:
        error = _load_error(exc, source, local)
        if error is exc:
            raise
        raise error from exc
    tok = None
    if not local or any((path / f).is_file() for f in TOKENIZER_FILES):
        try:
            tok = AutoTokenizer.from_pretrained(str(path) if local else source)
        except (OSError, ValueError, KeyError) as exc:
            logger.debug("no tokenizer loaded for %s: %s", source, exc)
    if tok is not None and len(tok) == 0:  # transformers builds an empty one from config alone
        tok = None
    if tok is not None and tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return hf_model, tok


def _load_error(exc: Exception, source: str, local: bool) -> Exception:
    """The one-line error for a failed ``from_pretrained``, naming what is wrong and the fix."""
    text = str(exc)
    where = f"directory {source!r}" if local else f"hub model {source!r}"
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return ModelLoadError(
            f"the weights of {where} are a pickle holding more than tensors, which circuitfind "
            "does not unpickle (unpickling can run code): convert them to safetensors where you "
            "trust their source, or use a model saved with safetensors"
        )
    if "trust_remote_code" in text:
        return ModelLoadError(
            f"{where} is built by its own Python code, which circuitfind does not run unless you "
            "opt in: load(..., trust_remote_code=True), on the command line --trust-remote-code"
        )
    if "does not recognize this architecture" in text:
        return UnsupportedModelError(
            f"{where} has a model type this version of transformers does not know; circuitfind "
            f"analyses these families: {', '.join(supported_families())}"
        )
    if local:
        return ModelLoadError(f"could not load {where}: {_first_line(exc)}")
    if isinstance(exc, (OSError, ValueError)):
        return ModelLoadError(
            f"could not load {where}: it could not be reached or is not cached (no network?); "
            "download it where there is network access and pass the local directory instead "
            f"({_first_line(exc)})"
        )
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if "weights_only" not in line else type(exc).__name__
