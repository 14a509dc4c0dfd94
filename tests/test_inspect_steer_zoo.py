"""Steering on a trained zoo model moves the next-token distribution the intended way."""

from __future__ import annotations

import torch

import circuitfind as cf
from circuitfind.inspect.steer import steering, steering_vector


def test_steering_the_ioi_model_toward_one_name():
    model = cf.load("zoo:ioi")
    task = cf.get_task("ioi", model, n=96, seed=3)
    assert task.prompts is not None
    answers = task.answer if task.answer.dim() == 1 else task.answer[:, 0]
    # Contrast prompts whose answer is the most frequent name with the others: the difference
    # of means at the last layer's input points toward saying that name.
    target = int(answers.mode().values)
    is_target = (answers == target).tolist()
    texts = [clean for clean, _ in task.prompts]
    pos = [t for t, keep in zip(texts, is_target) if keep]
    neg = [t for t, keep in zip(texts, is_target) if not keep]
    assert len(pos) >= 2 and len(neg) >= 2
    last = model.cfg.n_layers - 1
    vec = steering_vector(model, pos, neg, layer=last)
    others = task[torch.nonzero(answers != target).flatten()]
    with torch.no_grad():
        before = others.run(model).log_softmax(-1)[:, target]
        with steering(model, vec, layer=last, coeff=1.0):
            after = others.run(model).log_softmax(-1)[:, target]
        untouched = others.run(model).log_softmax(-1)[:, target]
    assert (after - before).mean() > 1.0  # nats toward the steered name
    assert (after > before).float().mean() > 0.9
    torch.testing.assert_close(untouched, before)  # the hook came off
