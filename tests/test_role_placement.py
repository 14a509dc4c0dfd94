"""Roles found far from their paper's layers are "by pattern only" unless the circuit confirms
them (issue 19, item 6)."""

from __future__ import annotations

import pytest
import torch

from circuitfind.circuit import Circuit, graph_from_shape
from circuitfind.commands import _roles_from_meta, _roles_to_meta
from circuitfind.patterns import far_from_paper
from circuitfind.render import dot_source
from circuitfind.roles import Role, confirm_roles


@pytest.mark.parametrize(
    ("role", "layer", "n_layers", "far"),
    [
        ("s-inhibition", 0, 12, True),  # the case: the paper has layers 7-8 of 12
        ("s-inhibition", 7, 12, False),
        ("s-inhibition", 4, 12, True),  # 3 layers below 7 > 0.25 * 11 = 2.75
        ("s-inhibition", 5, 12, False),
        ("s-inhibition", 0, 4, True),
        ("s-inhibition", 2, 4, False),
        ("s-inhibition", 0, 2, True),  # the zoo IOI model's case: depth 0 vs 0.64-0.73
        ("name-mover", 1, 2, False),
        ("name-mover", 0, 4, True),
        ("name-mover", 3, 4, False),
        ("induction", 0, 2, True),  # needs a head before it to compose with
        ("induction", 1, 2, False),  # the textbook 2-layer induction circuit
        ("induction", 11, 12, False),
        ("previous-token", 0, 2, False),
        ("previous-token", 11, 12, True),
        ("copying", 0, 12, False),  # no paper places it
        ("unlabelled", 0, 12, False),
    ],
)
def test_far_from_paper(role, layer, n_layers, far):
    assert far_from_paper(role, layer, n_layers) is far


def _circuit(edges: list[str]) -> Circuit:
    g = graph_from_shape(4, 2)
    keep = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.bool)
    for name in edges:
        sender, receiver = name.split("->")
        i = [s.name for s in g.senders].index(sender)
        j = [r.name for r in g.receivers].index(receiver)
        keep[i, j] = True
    scores = torch.where(keep, -1.0, 0.0)
    return Circuit(g, scores, keep)


ROLES = {
    "a0.h1": Role("a0.h1", "s-inhibition", 0.6),  # far: layer 0 of 4
    "a3.h0": Role("a3.h0", "name-mover", 0.7),  # where the paper has it
    "a2.h1": Role("a2.h1", "s-inhibition", 0.5),  # where the paper has it
}


def test_far_role_is_by_pattern_only_without_its_mechanism():
    # An edge into the name mover's key is not the S-inhibition mechanism (queries).
    out = confirm_roles(ROLES, _circuit(["a0.h1->a3.h0<k>", "a3.h0->logits"]))
    assert out["a0.h1"].by_pattern_only
    assert "layer 0 of 4" in out["a0.h1"].note and "layers 7-8 of 12" in out["a0.h1"].note
    assert "name mover's query" in out["a0.h1"].note
    assert not out["a3.h0"].by_pattern_only and out["a3.h0"].note == ""
    assert not out["a2.h1"].by_pattern_only and out["a2.h1"].note == ""
    assert str(out["a0.h1"]) == "s-inhibition (0.60, by pattern only)"
    assert out["a0.h1"].label == "s-inhibition?"


def test_far_role_confirmed_by_a_kept_edge_of_its_mechanism():
    out = confirm_roles(ROLES, _circuit(["a0.h1->a3.h0<q>", "a3.h0->logits"]))
    assert not out["a0.h1"].by_pattern_only
    assert "confirmed" in out["a0.h1"].note
    # Without a circuit nothing can confirm it.
    alone = confirm_roles(ROLES, None, n_layers=4)
    assert alone["a0.h1"].by_pattern_only and not alone["a3.h0"].by_pattern_only


def test_name_mover_far_needs_an_edge_to_the_logits():
    roles = {"a0.h0": Role("a0.h0", "name-mover", 0.5)}
    assert confirm_roles(roles, _circuit(["a0.h0->m0"]))["a0.h0"].by_pattern_only
    assert not confirm_roles(roles, _circuit(["a0.h0->logits"]))["a0.h0"].by_pattern_only


def test_diagram_and_meta_carry_the_caveat():
    circuit = _circuit(["a0.h1->a3.h0<k>", "a3.h0->logits"])
    roles = confirm_roles(ROLES, circuit)
    dot = dot_source(circuit, roles=roles).source
    assert "s-inhibition?" in dot and "by pattern only" in dot
    assert "name-mover?" not in dot
    back = _roles_from_meta(
        Circuit(
            circuit.graph,
            circuit.score_matrix,
            circuit.in_graph,
            meta={"roles": _roles_to_meta(roles)},
        )
    )
    assert back is not None
    assert back["a0.h1"].by_pattern_only and back["a0.h1"].note == roles["a0.h1"].note
    assert not back["a3.h0"].by_pattern_only
