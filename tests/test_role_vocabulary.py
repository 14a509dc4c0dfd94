"""One role vocabulary: the diagrams' roles and ``circuitfind attention`` name a head the same."""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.inspect.attention import head_pattern_scores, head_roles
from circuitfind.patterns import ROLES, THRESHOLDS, pick_role
from circuitfind.roles import detect_roles

ZOO = [("induction-2l", "induction"), ("ioi", "ioi"), ("greater-than", "greater-than")]


@pytest.mark.parametrize(("name", "task_name"), ZOO)
def test_diagram_roles_and_attention_roles_agree_on_every_zoo_head(name, task_name):
    model = cf.load(f"zoo:{name}")
    task = cf.get_task(task_name, model, n=16, seed=0)
    roles = detect_roles(model, task)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    grids = {role: torch.full((L, H), float("nan")) for role in ROLES[:-1]}
    for head, role in roles.items():
        layer, h = (int(x) for x in head[1:].split(".h"))
        for key, value in role.evidence.items():
            if key in grids:
                grids[key][layer, h] = value
    expected = {h: r.name for h, r in roles.items() if r.name != "unlabelled"}
    assert head_roles(grids) == expected


def test_attention_scores_use_the_role_vocabulary():
    model = cf.load("zoo:induction-2l")
    scores = head_pattern_scores(model, n=4, seq_len=8)
    assert set(scores) <= set(ROLES)
    # negative name movers pass name-mover's attention threshold with a negative DLA
    assert set(THRESHOLDS) | {"negative-name-mover"} == set(ROLES) - {"unlabelled"}
    # the trained model's textbook heads, by the same rule the diagrams use
    roles = head_roles(scores)
    assert roles.get("a0.h3") == "previous-token" and roles.get("a1.h0") == "induction"


def test_pick_role_takes_the_first_role_that_passes_in_priority_order():
    assert pick_role({"previous-token": 0.9, "induction": 0.35}) == ("induction", 0.35)
    assert pick_role({"previous-token": 0.9, "induction": 0.1}) == ("previous-token", 0.9)
    assert pick_role({"copying": 0.9, "duplicate-token": float("nan")}) == ("copying", 0.9)
    assert pick_role({"previous-token": 0.1}) == ("unlabelled", 0.0)
    assert pick_role({"induction": 0.35}, {"induction": 0.5}) == ("unlabelled", 0.0)
