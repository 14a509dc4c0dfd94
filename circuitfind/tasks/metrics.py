"""Task metrics: functions of the logits at the readout positions, one value per prompt.

Every metric is a :class:`Metric`, called as::

    metric(logits, answer, wrong=None, clean_logits=None) -> Tensor[n]

- ``logits``: ``[n, vocab]``, the model's logits at each prompt's readout position;
- ``answer``: ``LongTensor[n]`` (one answer id a prompt) or ``[n, k]`` (a set of acceptable
  answers a prompt; rows shorter than ``k`` are padded with ``-1``, which is ignored);
- ``wrong``: the same shapes as ``answer``, or ``None`` for metrics that do not use it;
- ``clean_logits``: ``[n, vocab]``, the clean run's readout logits (only ``kl`` needs them).

The result is ``[n]``, one value a prompt, differentiable in ``logits`` (except ``accuracy``).
Averaging, subsets and gathering the readout position are the :class:`~circuitfind.tasks.Task`'s
job (``task.metric_fn``). Built-ins:

| name | value per prompt | higher is better |
| --- | --- | --- |
| ``logit_diff`` | mean logit over ``answer`` − mean logit over ``wrong`` | yes |
| ``logprob`` | log of the probability mass on the ``answer`` set | yes |
| ``prob_diff`` | probability mass on ``answer`` − mass on ``wrong`` (greater-than) | yes |
| ``kl`` | KL(clean ‖ this run) of the next-token distributions | no |
| ``accuracy`` | 1.0 where the answer set beats the wrong set (by probability mass), else 0.0;
  without ``wrong``: 1.0 where the top token is an answer | yes |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from circuitfind.errors import InputError

__all__ = [
    "ACCURACY",
    "KL",
    "LOGIT_DIFF",
    "LOGPROB",
    "METRICS",
    "PROB_DIFF",
    "Metric",
    "accuracy",
    "get_metric",
    "kl_divergence",
    "logit_diff",
    "logprob",
    "prob_diff",
]


def _as_sets(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Answer ids as ``[n, k]`` with a validity mask (``-1`` pads shorter rows)."""
    if ids.ndim == 1:
        ids = ids[:, None]
    mask = ids >= 0
    return ids.clamp(min=0), mask


def _gather(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """``values[i, ids[i, j]]`` as ``[n, k]`` plus the mask of real (non-padding) entries."""
    idx, mask = _as_sets(ids.to(values.device))
    return values.gather(-1, idx), mask.to(values.device)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _masked_logsumexp(x: Tensor, mask: Tensor) -> Tensor:
    return x.masked_fill(~mask, float("-inf")).logsumexp(-1)


def _need_wrong(name: str, wrong: Tensor | None) -> Tensor:
    if wrong is None:
        raise InputError(
            f"metric {name!r} needs wrong-answer ids; this task has none "
            "(use 'logprob' or 'kl', or give 'wrong' in the prompts)"
        )
    return wrong


def logit_diff(
    logits: Tensor, answer: Tensor, wrong: Tensor | None = None, clean_logits: Tensor | None = None
) -> Tensor:
    """Mean logit of the answer set minus mean logit of the wrong set, ``[n]``."""
    wrong = _need_wrong("logit_diff", wrong)
    a, am = _gather(logits, answer)
    w, wm = _gather(logits, wrong)
    return _masked_mean(a, am) - _masked_mean(w, wm)


def logprob(
    logits: Tensor, answer: Tensor, wrong: Tensor | None = None, clean_logits: Tensor | None = None
) -> Tensor:
    """Log-probability of the answer (log of the mass on the answer set), ``[n]``."""
    logp = logits.float().log_softmax(-1)
    a, am = _gather(logp, answer)
    return _masked_logsumexp(a, am)


def prob_diff(
    logits: Tensor, answer: Tensor, wrong: Tensor | None = None, clean_logits: Tensor | None = None
) -> Tensor:
    """Probability mass on the answer set minus the mass on the wrong set, ``[n]``."""
    wrong = _need_wrong("prob_diff", wrong)
    p = logits.float().softmax(-1)
    a, am = _gather(p, answer)
    w, wm = _gather(p, wrong)
    return (a * am).sum(-1) - (w * wm).sum(-1)


def kl_divergence(
    logits: Tensor, answer: Tensor, wrong: Tensor | None = None, clean_logits: Tensor | None = None
) -> Tensor:
    """KL(clean ‖ this run) of the next-token distributions at the readout, ``[n]``."""
    if clean_logits is None:
        raise InputError(
            "metric 'kl' needs the clean run's readout logits: pass clean_logits=... "
            "or use task.with_clean_logits(model)"
        )
    clean_logp = clean_logits.to(logits.device).float().log_softmax(-1)
    logp = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


def accuracy(
    logits: Tensor, answer: Tensor, wrong: Tensor | None = None, clean_logits: Tensor | None = None
) -> Tensor:
    """1.0 where the answer set has more probability than the wrong set (else the top-1 is an
    answer), 0.0 elsewhere, ``[n]``."""
    logits = logits.detach().float()
    a, am = _gather(logits, answer)
    if wrong is None:
        top = logits.argmax(-1, keepdim=True)
        idx, mask = _as_sets(answer.to(logits.device))
        return ((idx == top) & mask).any(-1).float()
    w, wm = _gather(logits, wrong)
    return (_masked_logsumexp(a, am) > _masked_logsumexp(w, wm)).float()


@dataclass(frozen=True)
class Metric:
    """A named per-prompt metric; see the module docstring for the call signature."""

    name: str
    fn: Callable[..., Tensor]
    higher_is_better: bool = True
    needs_wrong: bool = False
    needs_clean: bool = False
    differentiable: bool = True
    description: str = ""

    def __call__(
        self,
        logits: Tensor,
        answer: Tensor,
        wrong: Tensor | None = None,
        clean_logits: Tensor | None = None,
    ) -> Tensor:
        if logits.ndim != 2:
            raise InputError(
                f"metric {self.name!r} takes readout logits [n, vocab], got shape "
                f"{tuple(logits.shape)} (use task.metric_fn for [n, pos, vocab] logits)"
            )
        if answer.shape[0] != logits.shape[0]:
            raise InputError(
                f"metric {self.name!r}: {logits.shape[0]} rows of logits but "
                f"{answer.shape[0]} answers"
            )
        return self.fn(logits, answer, wrong, clean_logits)


LOGIT_DIFF = Metric(
    "logit_diff", logit_diff, needs_wrong=True, description="logit(answer) - logit(wrong)"
)
LOGPROB = Metric("logprob", logprob, description="log p(answer)")
PROB_DIFF = Metric(
    "prob_diff", prob_diff, needs_wrong=True, description="p(answer set) - p(wrong set)"
)
KL = Metric(
    "kl",
    kl_divergence,
    higher_is_better=False,
    needs_clean=True,
    description="KL(clean || run) at the readout",
)
ACCURACY = Metric(
    "accuracy",
    accuracy,
    differentiable=False,
    description="fraction of prompts where the answer beats the wrong answer",
)

METRICS: dict[str, Metric] = {m.name: m for m in (LOGIT_DIFF, LOGPROB, PROB_DIFF, KL, ACCURACY)}
_ALIASES = {
    "logit-diff": "logit_diff",
    "logitdiff": "logit_diff",
    "log_prob": "logprob",
    "log-prob": "logprob",
    "prob-diff": "prob_diff",
    "kl_divergence": "kl",
    "acc": "accuracy",
}


def get_metric(metric: str | Metric) -> Metric:
    """The built-in metric NAME (``logit_diff``, ``logprob``, ``prob_diff``, ``kl``,
    ``accuracy``), or ``metric`` itself when it already is a :class:`Metric`."""
    if isinstance(metric, Metric):
        return metric
    key = _ALIASES.get(metric.lower(), metric.lower())
    if key not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return METRICS[key]
