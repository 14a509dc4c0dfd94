import math

import pytest
import torch

from circuitfind.errors import InputError
from circuitfind.tasks import Task, get_metric
from circuitfind.tasks.metrics import accuracy, kl_divergence, logit_diff, logprob, prob_diff

LOGITS = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]])  # [n=2, vocab=4]


def softmax(row):
    z = sum(math.exp(v) for v in row)
    return [math.exp(v) / z for v in row]


def test_logit_diff_single_and_sets():
    out = logit_diff(LOGITS, torch.tensor([1, 2]), torch.tensor([0, 3]))
    assert out.tolist() == pytest.approx([2.0 - 1.0, 3.0 - 0.0])
    # sets padded with -1: mean over the real entries only
    answer = torch.tensor([[1, 2], [2, -1]])
    wrong = torch.tensor([[0, -1], [0, 1]])
    out = logit_diff(LOGITS, answer, wrong)
    assert out.tolist() == pytest.approx([(2.0 + 0.0) / 2 - 1.0, 3.0 - 0.5])


def test_logprob_is_log_softmax_and_set_mass():
    out = logprob(LOGITS, torch.tensor([1, 2]))
    p0, p1 = softmax(LOGITS[0].tolist()), softmax(LOGITS[1].tolist())
    assert out.tolist() == pytest.approx([math.log(p0[1]), math.log(p1[2])], rel=1e-5)
    out = logprob(LOGITS, torch.tensor([[0, 1], [2, -1]]))
    assert out.tolist() == pytest.approx([math.log(p0[0] + p0[1]), math.log(p1[2])], rel=1e-5)


def test_prob_diff_over_answer_sets():
    answer = torch.tensor([[2, 3], [2, 3]])
    wrong = torch.tensor([[0, 1], [0, 1]])
    out = prob_diff(LOGITS, answer, wrong)
    p0, p1 = softmax(LOGITS[0].tolist()), softmax(LOGITS[1].tolist())
    expected = [p0[2] + p0[3] - p0[0] - p0[1], p1[2] + p1[3] - p1[0] - p1[1]]
    assert out.tolist() == pytest.approx(expected, rel=1e-5)


def test_kl_divergence_hand_value_and_zero():
    clean = torch.tensor([[0.0, 0.0]])
    run = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kl_divergence(run, torch.tensor([0]), None, clean).item() == pytest.approx(expected)
    assert kl_divergence(LOGITS, torch.tensor([0, 0]), None, LOGITS).abs().max() < 1e-6
    with pytest.raises(InputError, match="clean"):
        kl_divergence(LOGITS, torch.tensor([0, 0]))


def test_accuracy_with_and_without_wrong():
    assert accuracy(LOGITS, torch.tensor([1, 0]), torch.tensor([0, 2])).tolist() == [1.0, 0.0]
    assert accuracy(LOGITS, torch.tensor([1, 0])).tolist() == [1.0, 0.0]  # top-1 is 1, 2
    # sets: mass on {2, 3} vs {0, 1}
    acc = accuracy(LOGITS, torch.tensor([[2, 3], [2, 3]]), torch.tensor([[0, 1], [0, 1]]))
    assert acc.tolist() == [0.0, 1.0]


def test_metrics_are_differentiable():
    x = LOGITS.clone().requires_grad_(True)
    for name in ("logit_diff", "logprob", "prob_diff", "kl"):
        x.grad = None
        m = get_metric(name)
        m(x, torch.tensor([1, 2]), torch.tensor([0, 3]), LOGITS.flip(-1)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, name


def test_get_metric_aliases_and_errors():
    assert get_metric("logit-diff").name == "logit_diff"
    assert get_metric("acc").name == "accuracy"
    with pytest.raises(InputError, match="choose one of"):
        get_metric("bogus")
    with pytest.raises(InputError, match="wrong"):
        logit_diff(LOGITS, torch.tensor([0, 1]))


def test_task_metric_fn_gathers_readout_and_subsets():
    clean = torch.tensor([[5, 6, 7], [5, 6, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    task = Task.from_tokens(
        clean, clean.clone(), [1, 2], [0, 3], attention_mask=mask, readout=[2, 1]
    )
    logits = torch.zeros(2, 3, 4)
    logits[0, 2] = LOGITS[0]
    logits[1, 1] = LOGITS[1]
    per = task.metric_fn(logits, reduce="none")
    assert per.tolist() == pytest.approx([1.0, 3.0])
    assert task.metric_fn(logits).item() == pytest.approx(2.0)
    # a subset: logits of prompt 1 only, addressed by index
    assert task.metric_fn(logits[1:], [1]).item() == pytest.approx(3.0)
    assert task.metric_fn(LOGITS[1:], torch.tensor([1])).item() == pytest.approx(3.0)
    # the KL metric takes the stored clean logits of the same subset
    kl_task = task.with_metric("kl").with_clean_logits(LOGITS)
    assert kl_task.metric_fn(LOGITS[1:], [1]).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_task[1:].metric_fn(LOGITS[1:]).item() == pytest.approx(0.0, abs=1e-6)
    assert task.metric_fn(logits, metric="accuracy").item() == 1.0
