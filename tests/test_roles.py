"""Head roles: the scoring functions on patterns we can predict, and detection on a real model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import circuitfind as cf
from circuitfind.roles import (
    ROLE_COLOURS,
    ROLES,
    THRESHOLDS,
    Role,
    detect_roles,
    duplicate_token_score,
    induction_score,
    previous_token_score,
)
from tests.factories import make_hf_model


def _uniform(b: int, h: int, t: int) -> torch.Tensor:
    causal = torch.ones(t, t).tril()
    return (causal / causal.sum(-1, keepdim=True)).expand(b, h, t, t).clone()


def _previous(t: int) -> torch.Tensor:
    p = torch.zeros(t, t)
    p[0, 0] = 1
    p[torch.arange(1, t), torch.arange(t - 1)] = 1
    return p


def _repeat_tokens(b: int = 3, length: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    first = torch.stack([torch.randperm(50, generator=g)[:length] for _ in range(b)])
    return torch.cat([first, first], dim=1)  # [b, 2*length]


def _induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """Attend to the token after the earlier copy where there is one, else to yourself."""
    b, t = tokens.shape
    p = torch.zeros(b, t, t)
    for i in range(b):
        for q in range(t):
            earlier = [k for k in range(q - 1) if tokens[i, k] == tokens[i, q]]
            p[i, q, earlier[0] + 1 if earlier else q] = 1
    return p


def test_previous_token_score_on_synthetic_patterns():
    t = 8
    pattern = _uniform(2, 3, t)
    pattern[:, 1] = _previous(t)
    score = previous_token_score(pattern)
    assert score[1] == pytest.approx(1.0)
    assert score[0] < 0.5 and score[2] < 0.5
    # padded positions do not count
    mask = torch.ones(2, t, dtype=torch.long)
    mask[:, 5:] = 0
    pattern[:, 2, 5:] = 0  # rubbish on padding
    assert previous_token_score(pattern, mask)[1] == pytest.approx(1.0)


def test_duplicate_and_induction_scores_on_synthetic_patterns():
    tokens = _repeat_tokens()
    b, t = tokens.shape
    length = t // 2
    dup = torch.zeros(b, t, t)
    for q in range(t):
        dup[:, q, q - length if q >= length else q] = 1
    pattern = _uniform(b, 3, t)
    pattern[:, 0] = dup
    pattern[:, 1] = _induction_pattern(tokens)
    d = duplicate_token_score(pattern, tokens)
    ind = induction_score(pattern, tokens)
    assert d[0] == pytest.approx(1.0) and ind[0] < 0.2
    assert ind[1] == pytest.approx(1.0) and d[1] < 0.2
    assert d[2] < 0.3 and ind[2] < 0.3
    # no repeats at all: the scores are undefined (NaN), not zero
    fresh = torch.arange(t).expand(b, t)
    assert torch.isnan(duplicate_token_score(pattern, fresh)).all()


@dataclass
class ToyTask:
    clean: torch.Tensor
    corrupted: torch.Tensor
    readout: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    name: str = "toy"
    description: str = "toy task"
    prompts: list | None = None


@pytest.fixture(scope="module")
def model():
    return cf.load(make_hf_model("gpt2"))


def _ioi_task() -> ToyTask:
    # "A B ... B x ->" A: IO at 0, subject at 1 and 3, readout at the end
    clean = torch.tensor([[10 + i, 20 + i, 40, 20 + i, 41, 42] for i in range(6)])
    corrupted = torch.tensor([[30 + i, 50 + i, 40, 60 + i, 41, 42] for i in range(6)])
    return ToyTask(clean, corrupted, torch.full((6,), 5), clean[:, 0].clone(), clean[:, 1].clone())


def test_every_head_gets_a_role_with_its_evidence(model):
    roles = detect_roles(model, _ioi_task())
    assert len(roles) == model.cfg.n_layers * model.cfg.n_heads
    for name, role in roles.items():
        assert role.head == name and role.name in ROLES
        assert {"previous-token", "duplicate-token", "induction", "attn_io", "dla"} <= set(
            role.evidence
        )
        if role.name != "unlabelled":
            assert role.score >= THRESHOLDS[role.name.removeprefix("negative-")]
            assert role.evidence[role.name] == pytest.approx(role.score, abs=1e-3)
        assert role.colour == ROLE_COLOURS[role.name]
    only = detect_roles(model, _ioi_task(), heads=["L1H2", "a0.h0"])
    assert set(only) == {"a1.h2", "a0.h0"}
    none = detect_roles(model, _ioi_task(), thresholds=dict.fromkeys(THRESHOLDS, 1.01))
    assert {r.name for r in none.values()} == {"unlabelled"}


def test_planted_patterns_are_recognised(model, monkeypatch):
    """Real caches with three heads' patterns replaced by textbook ones."""
    task = _ioi_task()
    tokens = task.clean
    # the last-layer head that writes answer-minus-wrong most strongly becomes a name mover
    plain = detect_roles(model, task)
    last = model.cfg.n_layers - 1
    mover = max(range(model.cfg.n_heads), key=lambda h: plain[f"a{last}.h{h}"].evidence["dla"])
    assert plain[f"a{last}.h{mover}"].evidence["dla"] > 0
    t = tokens.shape[1]
    real_run = model.run_with_cache

    def planted(toks, mask=None, *, patterns=False, z=False):
        logits, c = real_run(toks, mask, patterns=patterns, z=z)
        b, n = toks.shape
        c.patterns[0][:, 1] = _previous(n)
        c.patterns[1][:, 2] = _induction_pattern(toks)
        if n == t:
            p = torch.zeros(b, n, n)
            p[:, :, 0] = 1  # everything attends to the indirect object's position
            c.patterns[last][:, mover] = p
        return logits, c

    monkeypatch.setattr(model, "run_with_cache", planted)
    roles = detect_roles(model, task)
    assert roles["a0.h1"].name == "previous-token" and roles["a0.h1"].score == pytest.approx(1)
    # the IOI prompts have one repeat each; the induction head is found on the repeated probe
    assert roles["a1.h2"].name == "induction" and roles["a1.h2"].score == pytest.approx(1)
    assert roles[f"a{last}.h{mover}"].name == "name-mover"
    assert str(roles["a0.h1"]) == "previous-token (1.00)"


def test_not_ioi_style_without_wrong_answers(model):
    task = _ioi_task()
    task.wrong = None
    roles = detect_roles(model, task)
    assert all("attn_io" not in r.evidence for r in roles.values())
    assert all(r.name not in ("name-mover", "s-inhibition") for r in roles.values())


def test_role_str():
    assert str(Role("a0.h0", "unlabelled")) == "unlabelled"


def test_render_detects_roles_when_given_model_and_task(model, tmp_path):
    from circuitfind.render import render

    graph = cf.Graph.from_model(model)
    keep = torch.zeros_like(graph.valid)
    for name in ("input->a0.h1<q>", "a0.h1->a2.h3<k>", "a2.h3->logits"):
        e = graph.edges[name]
        keep[e.sender_index, e.receiver_index] = True
    circuit = cf.Circuit(graph, torch.ones(keep.shape), keep)
    task = _ioi_task()
    expected = detect_roles(model, task, heads=["a0.h1", "a2.h3"])
    source = render(circuit, tmp_path / "c.gv", model=model, task=task).read_text()
    for role in expected.values():
        if role.name != "unlabelled":
            assert role.name in source
        assert ROLE_COLOURS[role.name] in source
