"""``circuitfind.load``: a hub name, a local directory, an in-memory HF model or ``zoo:NAME``."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from circuitfind.errors import ModelLoadError
from circuitfind.families import adapt
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
        source: a Hugging Face hub name (``"gpt2"``), a local model directory, an in-memory
            ``PreTrainedModel`` (converted in place: its parameters are shared, not copied), or
            ``"zoo:NAME"`` for a bundled zoo model.
        device: where to put the model (``"cpu"``, ``"cuda"``, ...); default: where it is.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (or a torch dtype).
        tokenizer: a tokenizer to attach (loaded from the source when it is a name or path).
        trust_remote_code: passed to ``transformers`` for hub/local sources.

    Returns:
        The canonical ``Model``; ``model(tokens)`` equals the HF model's logits.
    """
    torch_dtype = parse_dtype(dtype)
    name = str(source) if isinstance(source, (str, os.PathLike)) else None
    if isinstance(source, (str, os.PathLike)):
        hf_model, tok = _from_pretrained(str(source), torch_dtype, trust_remote_code)
        tokenizer = tokenizer if tokenizer is not None else tok
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
    cfg, weights = adapt(hf_model)
    if name is not None:  # how the user named it ("zoo:ioi", "gpt2"), not a resolved path
        cfg = replace(cfg, name=name)
    return Model(hf_model, cfg, weights, tokenizer=tokenizer)


def _from_pretrained(
    source: str, dtype: torch.dtype | None, trust_remote_code: bool
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.startswith("zoo:"):
        from circuitfind.zoo import resolve

        source = str(resolve(source[4:]))
    path = Path(source).expanduser()
    local = path.is_dir()
    looks_like_path = source.startswith((".", "/", "~")) or source.strip("/").count("/") > 1
    if not local and looks_like_path:  # hub names are "name" or "org/name"
        raise ModelLoadError(f"model directory {source!r} does not exist")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(path) if local else source, attn_implementation="eager", **kwargs
        )
    except pickle.UnpicklingError:  # torch's message suggests the unsafe weights_only=False
        raise ModelLoadError(
            f"could not load {source!r}: its pickled weights (pytorch_model.bin) hold objects "
            "other than tensors, which circuitfind never unpickles; get the model as "
            "safetensors (model.safetensors) from a source you trust"
        ) from None
    except (OSError, ValueError) as exc:
        where = f"directory {source!r}" if local else f"hub model {source!r}"
        hint = (
            "check that it holds config.json and weights"
            if local
            else "it could not be reached or is not cached (no network?); download it where "
            "there is network access and pass the local directory instead"
        )
        raise ModelLoadError(f"could not load {where}: {hint} ({_first_line(exc)})") from exc
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if local else source)
    except (OSError, ValueError) as exc:
        logger.warning("no tokenizer loaded for %s: %s", source, _first_line(exc))
        tok = None
    if tok is not None and tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return hf_model, tok


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
