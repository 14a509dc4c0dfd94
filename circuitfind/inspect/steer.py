"""Steering and editing: add a direction, project it out at inference, or out of the weights.

- ``steering_vector``: difference of mean activations between contrastive prompt sets (CAA,
  ActAdd) at a hook point; a probe direction works just as well.
- ``steering``: a context manager that adds ``coeff * vector`` at a hook point (chosen positions
  or all) in every forward the model runs inside it, and always removes it.
- ``directional_ablation``: a context manager that projects a direction out of every write to
  the residual stream (embedding, every attention output incl. ``b_O``, every MLP output).
- ``orthogonalize_weights``: the same edit made permanent, ``W' = W (I - d dᵀ)`` on every matrix
  and bias that writes to the stream, applied in place to the HF parameters (the canonical
  weights are views of them) and optionally saved as a plain HF model directory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuitfind.errors import InputError
from circuitfind.inspect._common import TokensLike, as_tokens, readout_positions

if TYPE_CHECKING:
    from circuitfind.model import Model

__all__ = [
    "activations_at",
    "compare_generations",
    "directional_ablation",
    "generate",
    "hooked",
    "orthogonalize_weights",
    "steering",
    "steering_vector",
    "write_points",
]

logger = logging.getLogger(__name__)

Hook = Callable[[Tensor], Tensor]


def _compose(first: Hook, second: Hook) -> Hook:
    return lambda x: second(first(x))


@contextmanager
def hooked(model: Model, hooks: dict[str, Hook]) -> Iterator[Model]:
    """Apply ``hooks`` to every run of ``model`` inside the block (forward, run_with_cache).

    Hooks given to a call are applied after these. Nested blocks compose; leaving a block
    always restores the model, also on errors.
    """
    with model.hooked(hooks):
        yield model


def activations_at(
    model: Model,
    tokens: TokensLike,
    point: str,
    *,
    attention_mask: Tensor | None = None,
    position: int | Tensor | None = None,
) -> Tensor:
    """The activation at hook ``point`` at the readout position of each row: [batch, d_model].

    The readout position defaults to each row's last real token; ``position="all"`` is not
    supported here (use ``model.run_with_cache``).
    """
    ids, mask = as_tokens(model, tokens, attention_mask)
    seen: list[Tensor] = []

    def capture(x: Tensor) -> Tensor:
        seen.append(x.detach())
        return x

    with torch.no_grad():
        model(ids, mask, hooks={point: capture})
    pos = readout_positions(ids, mask, position)
    return seen[0][torch.arange(ids.shape[0], device=ids.device), pos]


def steering_vector(
    model: Model,
    positive: TokensLike,
    negative: TokensLike,
    *,
    layer: int,
    point: str = "resid_pre",
    position: int | None = None,
) -> Tensor:
    """Difference of mean activations (positive − negative) at ``{point}.{layer}``: [d_model].

    Args:
        model: the model.
        positive, negative: the contrastive prompt sets (text or token ids).
        layer: the layer whose hook point to read (``resid_pre.{layer}`` by default).
        point: ``resid_pre``, ``resid_mid``, ``attn_out`` or ``mlp_out``.
        position: the position to read (default: each prompt's last token).
    """
    name = f"{point}.{layer}"
    pos = activations_at(model, positive, name, position=position).float().mean(0)
    neg = activations_at(model, negative, name, position=position).float().mean(0)
    return (pos - neg).to(model.dtype)


@contextmanager
def steering(
    model: Model,
    vector: Tensor,
    *,
    layer: int | Sequence[int],
    coeff: float = 1.0,
    point: str = "resid_pre",
    positions: int | Sequence[int] | None = None,
) -> Iterator[Model]:
    """Add ``coeff * vector`` at ``{point}.{layer}`` in every run inside the block.

    Args:
        model: the model.
        vector: [d_model] the steering direction (``steering_vector``, a probe direction, ...).
        layer: one layer or several.
        coeff: the multiplier (negative steers away).
        point: ``resid_pre`` (default), ``resid_mid``, ``attn_out`` or ``mlp_out``.
        positions: positions to steer (negative counts from the end); default: all.
    """
    vector = torch.as_tensor(vector).to(model.device, model.dtype).reshape(-1)
    if vector.numel() != model.cfg.d_model:
        raise InputError(
            f"steering vector has {vector.numel()} entries; the model's d_model is "
            f"{model.cfg.d_model}"
        )
    layers = [layer] if isinstance(layer, int) else list(layer)
    pos_list = (
        None
        if positions is None
        else ([positions] if isinstance(positions, int) else list(positions))
    )

    def add(x: Tensor) -> Tensor:
        if pos_list is None:
            return x + coeff * vector
        out = x.clone()
        out[:, pos_list] = out[:, pos_list] + coeff * vector
        return out

    with hooked(model, {f"{point}.{ly}": add for ly in layers}) as m:
        yield m


def write_points(model: Model) -> list[str]:
    """Hook points of every write to the residual stream: embed, attn_out.L, mlp_out.L."""
    points = ["embed"]
    for layer in range(model.cfg.n_layers):
        points += [f"attn_out.{layer}", f"mlp_out.{layer}"]
    return points


def _unit(model: Model, direction: Tensor) -> Tensor:
    d = torch.as_tensor(direction).to(model.device, torch.float32).reshape(-1)
    if d.numel() != model.cfg.d_model:
        raise InputError(f"direction has {d.numel()} entries; d_model is {model.cfg.d_model}")
    norm = d.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise InputError("direction is zero or not finite")
    return d / norm


@contextmanager
def directional_ablation(model: Model, direction: Tensor) -> Iterator[Model]:
    """Project ``direction`` out of every write to the residual stream inside the block."""
    d = _unit(model, direction).to(model.dtype)

    def project(x: Tensor) -> Tensor:
        return x - (x @ d)[..., None] * d

    with hooked(model, dict.fromkeys(write_points(model), project)) as m:
        yield m


def orthogonalize_weights(
    model: Model, direction: Tensor, out_dir: str | Path | None = None
) -> Path | None:
    """Remove ``direction`` from every weight that writes to the residual stream, in place.

    Edits ``W_E`` (and learned ``W_pos``), every head's ``W_O`` and ``b_O``, every MLP's
    ``W_out`` and ``b_out`` — views of the HF parameters, so ``model.hf_model`` changes too.
    With tied embeddings the unembedding changes with ``W_E`` (the stream has no component
    along the direction any more, so what the unembedding reads along it no longer matters,
    but the final norm can mix it back in: logits then differ slightly from
    ``directional_ablation``).

    Args:
        model: the model (edited in place).
        direction: [d_model].
        out_dir: if given, save the edited model (and tokenizer) there with
            ``save_pretrained``; it loads in plain ``transformers``.

    Returns:
        ``out_dir`` as a Path, or None.
    """
    d = _unit(model, direction)

    def edit(w: Tensor | None) -> None:
        if w is None:
            return
        d_w = d.to(w.dtype)
        w.sub_((w @ d_w)[..., None] * d_w)

    with torch.no_grad():
        edit(model.w.W_E)
        edit(model.w.W_pos)
        for lw in model.w.layers:
            edit(lw.W_O)
            edit(lw.b_O)
            edit(lw.W_out)
            edit(lw.b_out)
    if out_dir is None:
        return None
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.hf_model.save_pretrained(str(path))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(path))
    logger.info("saved the orthogonalized model to %s", path)
    return path


def generate(
    model: Model,
    tokens: TokensLike,
    *,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
) -> Tensor:
    """Continue one prompt (greedy, or sampled at ``temperature``): [1, pos + new] token ids.

    Recomputes the whole sequence each step (no key/value cache), so any hooks installed with
    ``hooked`` / ``steering`` apply to every generated token; meant for small models.
    """
    ids, _ = as_tokens(model, tokens)
    if ids.shape[0] != 1:
        raise InputError("generate continues one prompt at a time; pass a single prompt")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    limit = model.cfg.n_ctx if model.cfg.positional == "learned" else None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if limit is not None and ids.shape[1] >= limit:
                break
            logits = model(ids)[0, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, -1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen).to(ids.device)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt[None]], dim=1)
    return ids


def compare_generations(
    model: Model,
    prompt: TokensLike,
    vector: Tensor,
    *,
    layer: int | Sequence[int],
    coeffs: Sequence[float] = (0.0, 1.0),
    max_new_tokens: int = 20,
    point: str = "resid_pre",
) -> dict[float, str | list[int]]:
    """Generations with each steering coefficient, side by side (0 = unsteered).

    Returns ``{coeff: continuation}``, decoded text when the model has a tokenizer, else ids.
    """
    ids, _ = as_tokens(model, prompt)
    out: dict[float, str | list[int]] = {}
    for c in coeffs:
        with steering(model, vector, layer=layer, coeff=c, point=point):
            new = generate(model, ids, max_new_tokens=max_new_tokens)[0, ids.shape[1] :].tolist()
        out[c] = model.tokenizer.decode(new) if model.tokenizer is not None else new
    return out
