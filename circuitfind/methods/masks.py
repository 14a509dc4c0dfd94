"""Learned edge masks: Edge Pruning (hard-concrete L0 masks) and UGS (uniform gradient sampling).

Both learn one logit per edge so that the masked model — every edge's term replaced by its
ablated value where the mask is off, the same interpolation as
:func:`circuitfind.patching.masked_forward` with a float mask (receiver input
``A + sum_s m_sr (out_s - A_s)``, differentiable in ``m``) — matches the full model, while a
sparsity term pushes edges out. They share one training loop (:func:`_train`) and differ in how
a mask is drawn from the logits and how sparsity is paid for:

- ``edge-pruning`` (Bhaskar et al. 2024, "Finding Transformer Circuits with Edge Pruning"):
  hard-concrete masks (Louizos et al. 2018) with beta = 2/3, stretched to (l, r) = (-0.1, 1.1)
  and clipped to [0, 1]; the expected sparsity 1 - mean_e P(z_e > 0) is held to a target that
  ramps linearly from 0 to ``target_sparsity`` over the first ``ramp`` of the steps, by a
  Lagrangian ``l1 (s - t) + l2 (s - t)^2`` whose multipliers ascend while the logits descend.
  Score: P(z_e > 0); kept: the deterministic mask ``clip(sigmoid(log_alpha) (r - l) + l)`` > 0.5.
- ``ugs`` (uniform gradient sampling, Li & Janson 2024, "Optimal ablation for
  interpretability"; the continuous-sparsification baseline of the MIB benchmark): p_e =
  sigmoid(theta_e); a mask is drawn from u ~ U(0, 1) as ``clip((p - u) / w + 1/2, 0, 1)`` with
  window ``w = p (1 - p)`` (not differentiated): 1 or 0 outside a window of width w around p,
  linear in u inside it, so E[m] = p and the pathwise gradient 1 / w on the window's
  probability w is an unbiased estimate of d E[m] / dp. Penalty: ``mask_lambda`` times the
  expected density mean_e p_e. Score: p_e; kept: p_e > 0.5.

The fit term is KL(clean || masked) at the readout positions (``objective="kl"``) or the squared
change of the task metric per prompt (``objective="task"``). One step is one optimiser update
(Adam) on one batch of prompts (batches in turn) with one mask sample shared by the batch.

Warm start: ``init`` names any method of the table; its scores, turned into helpfulness by the
engine's one rule (:func:`circuitfind.scores.orientation`), set the starting logits by rank:
``2 init_logit q`` with q the edge's rank quantile (ties share their mean rank), so the least
helpful edge starts at 0 and the most helpful at ``2 init_logit``: the cold start's mean, in the
init method's order, so the sparsity pressure removes the least helpful edges first. (A start
spanning -init_logit .. +init_logit, half the edges off from the first step, gave edge-pruning
warm-started from EAP-IG on zoo:ioi a circuit of faithfulness 0.70; this one gives 0.88.)
Without it every logit starts at ``init_logit``.

Position-aware masks: when the prepared runs carry a position layout (``score(...,
positions=True)`` or span names; :mod:`circuitfind.positions`), both methods learn one logit per
(edge, column), [S, R, P], through the positional masked run
(:func:`circuitfind.patching_positions.masked_forward_positional`, differentiable in the mask):
the same estimators, objective, sparsity schedule, Lagrangian and seeds, with the density (and
so the sparsity target) taken over the valid (edge, column) terms. Scores and ``kept`` are then
[S, R, P]. A warm start from a method with a position-aware form (exact, EAP, EAP-IG, the
masks themselves) ranks its (edge, column) scores; one from a method without one (node
ablation, ACDC) ranks its position-free edges and gives every column of an edge that edge's
starting logit (the position-free warm start, broadcast over the columns).

Every random draw comes from a generator seeded with ``mask_seed``, so one seed gives the same
scores. With ``runs.checkpoint_dir`` the logits, multipliers, optimiser states and the
generator's state are saved (``edge-pruning_checkpoint.pt`` / ``ugs_checkpoint.pt``) every
``checkpoint_every`` steps, every ``checkpoint_every_s`` seconds and on SIGINT / SIGTERM; a
later call of the same run resumes to the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import rankdata
from torch import Tensor

from circuitfind.checkpoint import Checkpointer, run_fingerprint
from circuitfind.errors import InputError
from circuitfind.patching import masked_forward
from circuitfind.progress import bar as progress_bar
from circuitfind.pruning_positions import valid_like
from circuitfind.runs import PreparedBatch, PreparedRuns
from circuitfind.scores import Scores, helpfulness, orientation

__all__ = [
    "HC_BETA",
    "HC_L",
    "HC_R",
    "hard_concrete_keep_probability",
    "hard_concrete_sample",
    "score_edge_pruning",
    "score_ugs",
    "ugs_sample",
    "warm_start_logits",
]

logger = logging.getLogger(__name__)

HC_BETA, HC_L, HC_R = 2.0 / 3.0, -0.1, 1.1  # hard concrete: temperature, stretch interval
_EPS = 1e-6
OBJECTIVES = ("kl", "task")


# ---------------------------------------------------------------------------- estimators
def hard_concrete_sample(log_alpha: Tensor, u: Tensor) -> Tensor:
    """A hard-concrete mask from uniform noise ``u`` (same shape): the stretched, clipped
    sigmoid ``clip(sigmoid((log u - log(1 - u) + log_alpha) / beta) (r - l) + l, 0, 1)``."""
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / HC_BETA)
    return (s * (HC_R - HC_L) + HC_L).clamp(0.0, 1.0)


def hard_concrete_keep_probability(log_alpha: Tensor) -> Tensor:
    """P(z > 0) of a hard-concrete mask: sigmoid(log_alpha - beta log(-l / r)) (its expected
    L0 norm)."""
    return torch.sigmoid(log_alpha - HC_BETA * math.log(-HC_L / HC_R))


def hard_concrete_deterministic(log_alpha: Tensor) -> Tensor:
    """The noise-free mask clip(sigmoid(log_alpha) (r - l) + l, 0, 1)."""
    return (torch.sigmoid(log_alpha) * (HC_R - HC_L) + HC_L).clamp(0.0, 1.0)


def ugs_sample(theta: Tensor, u: Tensor) -> Tensor:
    """A UGS mask from uniform noise ``u``: clip((p - u) / w + 1/2, 0, 1), p = sigmoid(theta),
    window w = p (1 - p) held constant (its gradient 1 / w on the window is unbiased for
    d E[m] / dp)."""
    p = torch.sigmoid(theta)
    w = (p * (1 - p)).detach().clamp(min=_EPS)
    return ((p - u) / w + 0.5).clamp(0.0, 1.0)


@dataclass(frozen=True)
class _Estimator:
    """What distinguishes the two methods inside the shared loop."""

    name: str
    sample: Callable[[Tensor, Tensor], Tensor]  # (logits, uniform noise) -> mask
    keep_probability: Callable[[Tensor], Tensor]  # logits -> P(edge kept), the score
    kept: Callable[[Tensor], Tensor]  # logits -> bool, the chosen circuit
    noise_low: float  # uniform noise is drawn in (noise_low, 1 - noise_low)


_EDGE_PRUNING = _Estimator(
    "edge-pruning",
    hard_concrete_sample,
    hard_concrete_keep_probability,
    lambda la: hard_concrete_deterministic(la) > 0.5,
    _EPS,
)
_UGS = _Estimator("ugs", ugs_sample, torch.sigmoid, lambda th: torch.sigmoid(th) > 0.5, 0.0)


# ---------------------------------------------------------------------------- warm start
def warm_start_logits(
    runs: PreparedRuns, method: str, init_logit: float, options: dict[str, Any] | None = None
) -> Tensor:
    """Starting logits from ``method``'s scores (any method of the table, its default options
    unless ``options``), oriented by :func:`circuitfind.scores.orientation`: the rank quantile
    q of each valid edge's helpfulness maps to ``2 init_logit q``.

    Returns [S, R], or [S, R, P] when ``runs`` carry a position layout: then the quantiles are
    over the valid (edge, column) terms of the method's position-aware scores, or, for a method
    without a position-aware form, the position-free logits repeated over the columns.
    """
    from circuitfind.methods.positional import POSITIONAL_FORMS, positional_function
    from circuitfind.methods.table import method_options, method_spec

    graph = runs.graph
    spec = method_spec(method)
    layout = runs.layout
    fn = spec.function()
    source = runs
    if layout is not None:
        if spec.name in POSITIONAL_FORMS:
            fn = positional_function(spec.name, fn)
        else:  # no position-aware form: its position-free scores, broadcast over the columns
            logger.info(
                "warm start from %s, which has no position-aware form: every column of an edge "
                "starts from that edge's position-free rank",
                spec.name,
            )
            source = copy.copy(runs)
            source.layout = None
    result = fn(source, **method_options(spec, options))
    kind = result.orientation or spec.orientation
    sign = 1.0
    if kind != "helps-positive":
        m_full = float(runs.metric_of(graph.valid.float()).mean())
        m_empty = float(runs.metric_of(torch.zeros_like(graph.valid, dtype=torch.float32)).mean())
        sign = orientation(kind, m_full, m_empty)
    edges = result.edges.float()
    valid = valid_like(graph, edges)
    helps = helpfulness(edges, sign)[valid]
    ranks = torch.from_numpy(rankdata(helps.double().numpy(), method="average"))
    q = (ranks - 1) / max(1, len(ranks) - 1)
    out = torch.zeros(valid.shape)
    out[valid] = (2 * init_logit * q).float()
    if layout is not None and out.dim() == 2:
        out = out[..., None].expand(-1, -1, layout.n_columns).clone()
    return out


# ---------------------------------------------------------------------------- the loop
def _check(
    *,
    train_steps: Any,
    lr: Any,
    objective: Any,
    init: Any,
    init_logit: Any,
    mask_seed: Any,
    checkpoint_every: Any,
) -> str | None:
    """Options checked before any work; returns the canonical ``init`` method (or None)."""
    from circuitfind.methods.table import method_name

    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 0:
        raise InputError(f"train_steps must be a whole number >= 0; got {train_steps!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise InputError(f"lr (the mask learning rate) must be a number > 0; got {lr!r}")
    if objective not in OBJECTIVES:
        raise InputError(
            f"objective must be one of {', '.join(OBJECTIVES)} (kl: KL to the clean run; task: "
            f"the task metric's squared change); got {objective!r}"
        )
    if not isinstance(init_logit, (int, float)) or not math.isfinite(init_logit):
        raise InputError(f"init_logit must be a finite number; got {init_logit!r}")
    if isinstance(mask_seed, bool) or not isinstance(mask_seed, int):
        raise InputError(f"mask_seed must be a whole number; got {mask_seed!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise InputError(f"checkpoint_every must be a whole number >= 1; got {checkpoint_every!r}")
    if init is None or str(init).lower() in ("", "none"):
        return None
    return method_name(str(init))


def _fit_loss(runs: PreparedRuns, prep: PreparedBatch, mask: Tensor, objective: str) -> Tensor:
    """The masked run's distance from the clean run on one batch (mean over its prompts)."""
    batch = prep.batch
    columns = None
    if mask.dim() > 2:  # [S, R, P]: each token's column of the runs' layout
        columns = runs.layout.batch(batch.idx, batch.clean.shape[1], runs.model.device)
    logits = masked_forward(
        runs.model,
        runs.graph,
        batch.clean,
        batch.attention_mask,
        prep.ablated,
        mask,
        readout=batch.readout,
        columns=columns,
    )
    if objective == "kl":
        return prep.metric(runs.task, logits, "kl").mean()
    clean = prep.metric(runs.task, prep.clean_logits).detach()
    return ((prep.metric(runs.task, logits) - clean) ** 2).mean()


def _train(
    runs: PreparedRuns,
    est: _Estimator,
    *,
    train_steps: int,
    lr: float,
    objective: str,
    init: str | None,
    init_logit: float,
    mask_seed: int,
    penalty: Callable[[Tensor, int, Tensor], Tensor],
    n_multipliers: int,
    options: dict[str, Any],
    checkpoint_every: int,
    checkpoint_every_s: float,
) -> Scores:
    """Train the edge logits, [S, R] or, when ``runs`` carry a position layout, [S, R, P];
    ``penalty(density, step, multipliers)`` is the sparsity term (``density``: the expected
    fraction of valid edges, or valid (edge, column) terms, kept), ``multipliers`` the
    ``n_multipliers`` Lagrange multipliers it may use (they ascend)."""
    graph, model = runs.graph, runs.model
    layout = runs.layout
    shape: tuple[int, ...] = (graph.n_senders, graph.n_receivers)
    if layout is not None:
        shape = (*shape, layout.n_columns)
        columns = hashlib.sha256(layout.columns.cpu().numpy().tobytes()).hexdigest()[:16]
        options = {**options, "positions": [*layout.names, columns]}  # the checkpoint's run
    logits = torch.full(shape, float(init_logit))
    valid = valid_like(graph, logits)  # [S, R] or [S, R, P]
    n_valid = int(valid.sum())
    device = model.device
    mult = torch.zeros(max(n_multipliers, 1))
    gen = torch.Generator().manual_seed(mask_seed)
    ckpt = Checkpointer(
        runs.checkpoint_dir / f"{est.name}_checkpoint.pt" if runs.checkpoint_dir else None,
        run_fingerprint(
            model=model,
            task=runs.task,
            method=est.name,
            options={**options, "batch_size": runs.batch_size},
            ablation=runs.ablation,
            seed=mask_seed,
        ),
        total=train_steps,
        unit="training steps",
        what=est.name,
        every=checkpoint_every,
        every_s=checkpoint_every_s,
    )
    with ckpt:
        state = ckpt.load()
        start = 0
        if state is None and init is not None:
            logits = warm_start_logits(runs, init, float(init_logit))
            assert tuple(logits.shape) == shape
        theta = logits.to(device).requires_grad_(True)
        lam = mult.to(device).requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=lr)
        opt_lam = torch.optim.Adam([lam], lr=lr, maximize=True)
        if state is not None:
            with torch.no_grad():
                theta.copy_(state["theta"].to(device))
                lam.copy_(state["lam"].to(device))
            opt.load_state_dict(state["opt"])
            opt_lam.load_state_dict(state["opt_lam"])
            gen.set_state(state["generator"])
            start = int(state["step"])

        def snapshot(step: int) -> dict[str, Any]:
            return {
                "theta": theta.detach().cpu().clone(),
                "lam": lam.detach().cpu().clone(),
                "opt": opt.state_dict(),
                "opt_lam": opt_lam.state_dict(),
                "generator": gen.get_state(),
                "step": step,
            }

        valid_d = valid.to(device)
        bar = progress_bar(
            total=train_steps,
            initial=start,
            desc=est.name,
            disable=not runs.progress,
            unit="step",
        )
        for step in range(start, train_steps):
            prep = runs.batches[step % len(runs)]
            low = est.noise_low
            u = torch.rand(theta.shape, generator=gen) * (1 - 2 * low) + low
            mask = est.sample(theta, u.to(device)) * valid_d
            fit = _fit_loss(runs, prep, mask, objective)
            density = est.keep_probability(theta)[valid_d].sum() / n_valid
            loss = fit + penalty(density, step, lam)
            opt.zero_grad(set_to_none=True)
            opt_lam.zero_grad(set_to_none=True)
            loss.backward()
            fit, density = fit.detach(), density.detach()
            opt.step()
            if n_multipliers:
                opt_lam.step()
            bar.update(1)
            bar.set_postfix_str(f"fit {fit.item():.4g}, density {density.item():.3f}")
            ckpt.maybe_save(lambda s=step + 1: snapshot(s), step + 1)  # type: ignore[misc]
        bar.close()
    ckpt.done()
    with torch.no_grad():
        final = theta.detach().float().cpu()
        scores = est.keep_probability(final)
        kept = est.kept(final) & valid
    scores[~valid] = float("nan")
    return Scores(scores, kept=kept, orientation="helps-positive")


# ---------------------------------------------------------------------------- the methods
def score_edge_pruning(
    runs: PreparedRuns,
    *,
    train_steps: int = 200,
    lr: float = 0.3,
    target_sparsity: float = 0.95,
    ramp: float = 0.5,
    objective: str = "kl",
    init: str | None = "none",
    init_logit: float = 2.0,
    mask_seed: int = 0,
    checkpoint_every: int = 50,
    checkpoint_every_s: float = 60.0,
) -> Scores:
    """Edge Pruning (Bhaskar et al. 2024): hard-concrete edge masks trained to keep the masked
    model's outputs close to the full model's at a target sparsity (see the module's docstring).

    Returns scores [S, R] = each edge's keep probability P(z > 0) (NaN outside ``graph.valid``)
    and ``kept`` = the deterministic mask > 0.5; [S, R, P], one per (edge, column), when the
    runs carry a position layout.
    """
    init_method = _check(
        train_steps=train_steps,
        lr=lr,
        objective=objective,
        init=init,
        init_logit=init_logit,
        mask_seed=mask_seed,
        checkpoint_every=checkpoint_every,
    )
    if not isinstance(target_sparsity, (int, float)) or not 0 <= target_sparsity < 1:
        raise InputError(
            f"target_sparsity (the fraction of edges to remove) must be in [0, 1); "
            f"got {target_sparsity!r}"
        )
    if not isinstance(ramp, (int, float)) or not 0 <= ramp <= 1:
        raise InputError(
            f"ramp (the fraction of the steps over which the target sparsity grows) must be "
            f"in [0, 1]; got {ramp!r}"
        )
    ramp_steps = ramp * train_steps

    def lagrangian(density: Tensor, step: int, lam: Tensor) -> Tensor:
        target = target_sparsity * (min(1.0, (step + 1) / ramp_steps) if ramp_steps > 0 else 1.0)
        gap = (1 - density) - target
        return lam[0] * gap + lam[1] * gap**2

    return _train(
        runs,
        _EDGE_PRUNING,
        train_steps=train_steps,
        lr=float(lr),
        objective=objective,
        init=init_method,
        init_logit=float(init_logit),
        mask_seed=mask_seed,
        penalty=lagrangian,
        n_multipliers=2,
        options={
            "train_steps": train_steps,
            "lr": lr,
            "target_sparsity": target_sparsity,
            "ramp": ramp,
            "objective": objective,
            "init": init_method,
            "init_logit": init_logit,
        },
        checkpoint_every=checkpoint_every,
        checkpoint_every_s=checkpoint_every_s,
    )


def score_ugs(
    runs: PreparedRuns,
    *,
    train_steps: int = 200,
    lr: float = 0.1,
    mask_lambda: float = 1.0,
    objective: str = "kl",
    init: str | None = "none",
    init_logit: float = 2.0,
    mask_seed: int = 0,
    checkpoint_every: int = 50,
    checkpoint_every_s: float = 60.0,
) -> Scores:
    """UGS (uniform gradient sampling): edge masks sampled around p = sigmoid(theta) and trained
    to keep the masked model close to the full one, with ``mask_lambda`` times the expected
    fraction of edges kept as the penalty (see the module's docstring).

    Returns scores [S, R] = each edge's keep probability p (NaN outside ``graph.valid``) and
    ``kept`` = p > 0.5; [S, R, P], one per (edge, column), when the runs carry a position
    layout.
    """
    init_method = _check(
        train_steps=train_steps,
        lr=lr,
        objective=objective,
        init=init,
        init_logit=init_logit,
        mask_seed=mask_seed,
        checkpoint_every=checkpoint_every,
    )
    if not isinstance(mask_lambda, (int, float)) or not mask_lambda >= 0:
        raise InputError(f"mask_lambda (the sparsity penalty) must be >= 0; got {mask_lambda!r}")

    def l0(density: Tensor, step: int, lam: Tensor) -> Tensor:
        return float(mask_lambda) * density

    return _train(
        runs,
        _UGS,
        train_steps=train_steps,
        lr=float(lr),
        objective=objective,
        init=init_method,
        init_logit=float(init_logit),
        mask_seed=mask_seed,
        penalty=l0,
        n_multipliers=0,
        options={
            "train_steps": train_steps,
            "lr": lr,
            "mask_lambda": mask_lambda,
            "objective": objective,
            "init": init_method,
            "init_logit": init_logit,
        },
        checkpoint_every=checkpoint_every,
        checkpoint_every_s=checkpoint_every_s,
    )
