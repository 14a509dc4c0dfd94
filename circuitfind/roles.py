"""Automatic roles for attention heads, from attention patterns and direct logit attribution.

Roles (each with the score that justified it, a number in [0, 1] for attention roles):

- ``previous-token``: attends from each position to the one before it. Score: mean attention
  to position q-1.
- ``duplicate-token``: attends from a token to earlier copies of the same token. Score: mean
  attention mass on earlier occurrences, over positions whose token occurred before.
- ``induction``: attends from a token to the token *after* its earlier occurrence (``A B ... A``
  -> ``B``). Score: mean attention mass on those positions.
- ``name-mover`` (IOI-style tasks): attends from the readout position to the answer (indirect
  object) name and writes it: its direct logit attribution (DLA) to answer minus wrong is
  positive. Score: attention to the answer name; the DLA is in the evidence.
- ``negative-name-mover``: the same attention, negative DLA.
- ``s-inhibition`` (IOI-style tasks): attends from the readout position to the repeated subject
  name (S2) and feeds the name movers' queries: removing its output from their query input
  lowers their preference for the answer name over the subject (``q_effect`` > 0).
- ``unlabelled``: nothing above fits.

Where a role sits far from the layers its paper found it in (:data:`PAPER_DEPTHS`, scaled to
the model's depth: an S-inhibition head in layer 0, say), the pattern alone is weak evidence.
Such a role is marked ``by pattern only`` unless the circuit's patched edges confirm the
mechanism the role names (:func:`confirm_roles`): a name mover's edge to the logits, an
S-inhibition head's edge into a name mover's query, a previous-token head's edge into an
induction head's key, an induction head's key fed by a previous-token head, a duplicate-token
head's edge into an S-inhibition head.

The pure scoring functions (``previous_token_score`` ...) take pattern tensors
``[batch, head, q, k]`` so inspection tools can reuse them on any cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitfind.patterns import (
    DLA_FRACTION,
    PAPER_DEPTHS,
    ROLE_COLOURS,
    ROLES,
    THRESHOLDS,
    _real,
    duplicate_token_score,
    far_from_paper,
    induction_score,
    induction_targets,
    pick_role,
    previous_token_score,
    repeated_tokens,
)

__all__ = [
    "DLA_FRACTION",
    "PAPER_DEPTHS",
    "ROLES",
    "ROLE_COLOURS",
    "THRESHOLDS",
    "Role",
    "confirm_roles",
    "detect_roles",
    "role_names",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Role:
    """A head's role, the score that justified it and every diagnostic that was measured.

    Attributes:
        head: canonical head name (``a9.h6``).
        name: one of :data:`ROLES`.
        score: the deciding score (0 for ``unlabelled``).
        evidence: all scores measured for this head (``previous-token``, ``induction``,
            ``attn_io``, ``dla`` ...), for tables and tooltips.
        by_pattern_only: the head sits far from where the role's paper found it and no
            patched edge of the circuit confirms the role's mechanism.
        note: why, in words (the paper's layers, what was looked for), or ``""``.
    """

    head: str
    name: str
    score: float = 0.0
    evidence: dict[str, float] = field(default_factory=dict)
    by_pattern_only: bool = False
    note: str = ""

    @property
    def colour(self) -> str:
        return ROLE_COLOURS.get(self.name, ROLE_COLOURS["unlabelled"])

    def __str__(self) -> str:
        if self.name == "unlabelled":
            return "unlabelled"
        caveat = ", by pattern only" if self.by_pattern_only else ""
        return f"{self.name} ({self.score:.2f}{caveat})"

    @property
    def label(self) -> str:
        """The role as a diagram shows it: ``s-inhibition?`` when by pattern only."""
        return f"{self.name}?" if self.by_pattern_only else self.name


# ---------------------------------------------------------------------------- detection
def _first_col(x: Tensor) -> Tensor:
    return x if x.dim() == 1 else x[:, 0]


def _ioi_positions(task: Any, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Masks [batch, pos] for the answer name, the subject (all copies) and S2, when IOI-style.

    IOI-style: the task has a wrong answer, and in most prompts the answer token occurs before
    the readout and the wrong token occurs at least twice.
    """
    if getattr(task, "wrong", None) is None:
        return None
    answer = _first_col(task.answer)[: tokens.shape[0]].to(tokens.device)
    wrong = _first_col(task.wrong)[: tokens.shape[0]].to(tokens.device)
    readout = task.readout[: tokens.shape[0]].to(tokens.device)
    t = tokens.shape[1]
    before = torch.arange(t, device=tokens.device)[None, :] < readout[:, None]
    io = (tokens == answer[:, None]) & before
    s = (tokens == wrong[:, None]) & before
    ok = io.any(-1) & (s.sum(-1) >= 2)
    if ok.float().mean() < 0.5:
        return None
    last_s = torch.where(s, torch.arange(t, device=tokens.device), -1).max(-1).values
    s2 = torch.zeros_like(s)
    s2[torch.arange(len(s2)), last_s.clamp_min(0)] = True
    s2 &= s
    keep = ok[:, None]
    return io & keep, s & keep, s2 & keep


def _enough_repeats(tokens: Tensor, real: Tensor) -> bool:
    target = induction_targets(tokens, real)
    return bool(target.any(-1).sum(-1).float().mean() >= 4)


def _dla(model: Any, cache: Any, readout: Tensor, direction: Tensor) -> Tensor:
    """Direct logit attribution of every head at the readout along ``direction`` [batch, d_model].

    The final norm is linearised around the run's own final residual stream (its scale is
    frozen), the standard DLA. Returns [layer, head] (mean over prompts).
    """
    from circuitfind.inspect.dla import additive_readout, direct_map

    if not additive_readout(model):  # no DLA through post-norms: no name-mover verdicts
        logger.warning(
            "%s: no DLA-based roles (post-norms or soft-capped logits)", model.cfg.family
        )
        return torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    rows = torch.arange(len(readout), device=readout.device)
    through = direct_map(model, cache.resid_final[rows, readout], direction)
    out = [
        through(cache.heads[layer][rows, readout]).mean(0) for layer in range(model.cfg.n_layers)
    ]
    return torch.stack(out)  # [layer, head]


def _attn_from_readout(pattern: Tensor, readout: Tensor, where: Tensor) -> Tensor:
    """Mean attention mass from the readout position onto positions ``where``. -> [head]"""
    rows = torch.arange(len(readout), device=readout.device)
    at = pattern[rows, :, readout].float()  # [batch, head, k]
    mass = (at * where[:, None, :].float()).sum(-1)  # [batch, head]
    valid = where.any(-1)
    if not bool(valid.any()):
        return torch.full((pattern.shape[1],), float("nan"))
    return mass[valid].mean(0)


@torch.no_grad()
def detect_roles(
    model: Any,
    task: Any,
    *,
    heads: list[str] | None = None,
    max_prompts: int = 32,
    thresholds: dict[str, float] | None = None,
    seed: int = 0,
    circuit: Any = None,
) -> dict[str, Role]:
    """Roles of attention heads from the model's behaviour on the task's clean prompts.

    Args:
        model: a circuitfind ``Model``.
        task: a task (``clean``, ``readout``, ``answer``, ``wrong``, ``attention_mask``).
        heads: head names to report (any spelling; default: every head). Roles are measured
            on the whole model either way (name movers decide S-inhibition).
        max_prompts: how many prompts to run (the first ones).
        thresholds: override :data:`THRESHOLDS` entries.
        seed: seed of the repeated-token probe used when the prompts have too few repeats.
        circuit: the circuit whose patched edges may confirm roles found far from their
            paper's layers (:func:`confirm_roles`); without one such roles are by pattern only.

    Returns:
        ``{head name: Role}`` for every requested head, ``unlabelled`` where nothing fits.
    """
    from circuitfind.names import parse_node

    thr = {**THRESHOLDS, **(thresholds or {})}
    cfg = model.cfg
    device = model.device
    n = min(max_prompts, task.clean.shape[0])
    tokens = task.clean[:n].to(device)
    mask = None if task.attention_mask is None else task.attention_mask[:n].to(device)
    real = _real(mask, tokens)
    _, cache = model.run_with_cache(tokens, mask, patterns=True)

    L, H = cfg.n_layers, cfg.n_heads
    scores: dict[str, Tensor] = {}  # role -> [layer, head]
    scores["previous-token"] = torch.stack([previous_token_score(p, mask) for p in cache.patterns])
    if _enough_repeats(tokens, real):
        rep_patterns, rep_tokens, rep_mask = cache.patterns, tokens, mask
    else:
        vocab = sorted(set(tokens[real].tolist()))
        length = min(16, max(4, len(vocab)), (cfg.n_ctx or 10**9) // 2)
        rep_tokens = repeated_tokens(vocab, n=16, length=length, seed=seed).to(device)
        _, rep_cache = model.run_with_cache(rep_tokens, None, patterns=True)
        rep_patterns, rep_mask = rep_cache.patterns, None
    scores["duplicate-token"] = torch.stack(
        [duplicate_token_score(p, rep_tokens, rep_mask) for p in rep_patterns]
    )
    scores["induction"] = torch.stack(
        [induction_score(p, rep_tokens, rep_mask) for p in rep_patterns]
    )

    ioi = _ioi_positions(task, tokens)
    extra: dict[str, Tensor] = {}
    if ioi is not None:
        extra = _ioi_scores(model, task, tokens, mask, cache, ioi, thr)
        for key in ("name-mover", "negative-name-mover", "s-inhibition"):
            scores[key] = extra.pop(key)

    wanted = (
        [f"a{layer}.h{h}" for layer in range(L) for h in range(H)]
        if heads is None
        else [parse_node(h, cfg) for h in heads]
    )
    roles: dict[str, Role] = {}
    for name in wanted:
        if not name.startswith("a"):
            continue
        layer, head = (int(x) for x in name[1:].split(".h"))
        evidence = {
            key: round(float(val[layer, head]), 4)
            for key, val in {**scores, **extra}.items()
            if not torch.isnan(val[layer, head])
        }
        role, value = pick_role({k: float(v[layer, head]) for k, v in scores.items()}, thr)
        roles[name] = Role(name, role, value, evidence)
    return confirm_roles(roles, circuit, n_layers=L)


def _ioi_scores(
    model: Any,
    task: Any,
    tokens: Tensor,
    mask: Tensor | None,
    cache: Any,
    ioi: tuple[Tensor, Tensor, Tensor],
    thr: dict[str, float],
) -> dict[str, Tensor]:
    """Name-mover, negative name-mover and S-inhibition scores [layer, head] (NaN = no role)."""
    io, s, s2 = ioi
    n = tokens.shape[0]
    readout = task.readout[:n].to(tokens.device)
    answer = _first_col(task.answer)[:n].to(tokens.device)
    wrong = _first_col(task.wrong)[:n].to(tokens.device)
    W_U = model.w.W_U.float()
    direction = (W_U[:, answer] - W_U[:, wrong]).T  # [batch, d_model]
    dla = _dla(model, cache, readout, direction)  # [layer, head]
    attn_io = torch.stack([_attn_from_readout(p, readout, io) for p in cache.patterns])
    attn_s = torch.stack([_attn_from_readout(p, readout, s) for p in cache.patterns])
    attn_s2 = torch.stack([_attn_from_readout(p, readout, s2) for p in cache.patterns])
    big = dla.abs().max().clamp_min(1e-12)
    attends = (attn_io >= thr["name-mover"]) & (attn_io > attn_s)
    nan = torch.full_like(dla, float("nan"))
    name_mover = torch.where(attends & (dla >= DLA_FRACTION * big), attn_io, nan)
    negative = torch.where(attends & (dla <= -DLA_FRACTION * big), attn_io, nan)

    # S-inhibition: attends to S2 and helps name movers' queries prefer IO over S.
    q_effect = torch.full_like(dla, float("nan"))
    movers = [(int(a), int(b)) for a, b in (~torch.isnan(name_mover)).nonzero().tolist()]
    candidates = (attn_s2 >= thr["s-inhibition"]).nonzero().tolist()
    if movers and candidates:
        ctx = model.context(tokens, mask)
        rows = torch.arange(n, device=tokens.device)

        def preference(layer: int, x_q: Tensor) -> Tensor:  # [head]: attn to IO minus to S
            _, pattern = model.attention(
                layer,
                x_q,
                cache.resid_pre[layer],
                cache.resid_pre[layer],
                ctx,
                return_pattern=True,
            )
            at = pattern[rows, :, readout].float()  # [batch, head, k]
            return ((at * io[:, None]).sum(-1) - (at * s[:, None]).sum(-1)).mean(0)

        base = {layer: preference(layer, cache.resid_pre[layer]) for layer, _ in movers}
        for c_layer, c_head in candidates:
            effects = []
            for m_layer, m_head in movers:
                if m_layer <= c_layer:
                    continue
                x_q = cache.resid_pre[m_layer] - cache.heads[c_layer][:, :, c_head]
                effects.append(float(base[m_layer][m_head] - preference(m_layer, x_q)[m_head]))
            if effects:
                q_effect[c_layer, c_head] = sum(effects) / len(effects)
    s_inhibition = torch.where(q_effect > 0, attn_s2, nan)
    return {
        "name-mover": name_mover,
        "negative-name-mover": negative,
        "s-inhibition": s_inhibition,
        "attn_io": attn_io,
        "attn_s": attn_s,
        "attn_s2": attn_s2,
        "dla": dla,
        "q_effect": q_effect,
    }


# What confirms each role in a circuit: (edge direction, partner roles, receiver input).
# "out": an edge from the head to a partner's input; "in": an edge from a partner into the head.
_MECHANISMS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "name-mover": ("out", ("logits",), ""),
    "negative-name-mover": ("out", ("logits",), ""),
    "s-inhibition": ("out", ("name-mover", "negative-name-mover"), "q"),
    "previous-token": ("out", ("induction",), "k"),
    "induction": ("in", ("previous-token",), "k"),
    "duplicate-token": ("out", ("s-inhibition",), ""),
}
_LOOKED_FOR = {
    "name-mover": "an edge from it to the logits",
    "negative-name-mover": "an edge from it to the logits",
    "s-inhibition": "an edge from it into a name mover's query",
    "previous-token": "an edge from it into an induction head's key",
    "induction": "an edge from a previous-token head into its key",
    "duplicate-token": "an edge from it into an S-inhibition head",
}


def _confirmed(head: str, role: str, names: dict[str, str], circuit: Any) -> bool:
    """Whether a kept edge of the circuit realises the mechanism ``role`` names for ``head``."""
    direction, partners, qkv = _MECHANISMS[role]
    for edge in circuit.edge_names:
        sender, receiver = edge.split("->")
        node, _, rest = receiver.partition("<")
        port = rest.rstrip(">")
        if qkv and port != qkv:
            continue
        if direction == "out" and sender == head:
            partner = node if node == "logits" else names.get(node, "")
        elif direction == "in" and node == head:
            partner = names.get(sender, "")
        else:
            continue
        if partner in partners:
            return True
    return False


def confirm_roles(
    roles: dict[str, Role], circuit: Any = None, *, n_layers: int | None = None
) -> dict[str, Role]:
    """Mark roles found far from their paper's layers as by pattern only, unless a kept edge of
    ``circuit`` realises the role's mechanism (see the module docstring).

    Args:
        roles: ``{head: Role}`` (canonical head names).
        circuit: a ``Circuit`` (its kept edges are read), or ``None``: nothing is confirmed.
        n_layers: the model's depth (default: the circuit's).

    Returns:
        The roles, with ``by_pattern_only`` and ``note`` set.
    """
    from dataclasses import replace

    if n_layers is None:
        if circuit is None:
            raise ValueError("confirm_roles needs n_layers or a circuit")
        n_layers = circuit.graph.cfg.n_layers
    names = {head: role.name for head, role in roles.items()}
    out: dict[str, Role] = {}
    for head, role in roles.items():
        layer = int(head[1:].split(".h")[0])
        if not far_from_paper(role.name, layer, n_layers):
            out[head] = replace(role, by_pattern_only=False, note="")
            continue
        where = f"found in layer {layer} of {n_layers}; {PAPER_DEPTHS[role.name][2]}"
        if circuit is not None and _confirmed(head, role.name, names, circuit):
            note = f"{where}; confirmed by {_LOOKED_FOR[role.name]} in the circuit"
            out[head] = replace(role, by_pattern_only=False, note=note)
        else:
            note = f"{where}; by pattern only: no {_LOOKED_FOR[role.name]} in the circuit"
            out[head] = replace(role, by_pattern_only=True, note=note)
    return out


def role_names(roles: dict[str, Any] | None) -> dict[str, str]:
    """``{head: role name}`` from ``{head: Role}`` or ``{head: str}`` (any head spelling)."""
    from circuitfind.names import parse_node

    out: dict[str, str] = {}
    for head, role in (roles or {}).items():
        out[parse_node(head)] = role.name if isinstance(role, Role) else str(role)
    return out
