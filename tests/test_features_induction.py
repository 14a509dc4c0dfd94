"""The done criterion on zoo:induction-2l: the previous-token -> induction path in the graph.

The zoo model is attention-only (its MLPs are zeroed), so its transcoders sit on the attention
outputs (sites a0, a1: ``sites="auto"`` picks them). On a prompt ``A B`` where ``B`` repeats
the first half of ``A`` (positions 0-9 random distinct tokens, 10-14 a copy of 0-4), the model
predicts at position 14 the token at position 5. The test decides "the path is shown" by:

* OV side (the graph's edges): the top path back from the target logit is
  logit <- a layer-1 feature at 14 <- the token at 5 (the one after the previous occurrence of
  the current token), and that edge passes through the induction head (>= 90% of its per-head
  split), and pruning keeps that path;
* QK side (why the induction head looks at 5; the graph freezes patterns, ``attention_drivers``
  splits the score exactly): the top key-side node of the induction head's score 14 -> 5 is a
  layer-0 node at position 5 whose top incoming edge is the token at 4 through the
  previous-token head, and the top query-side node is the current token at 14.

The heads are found from their attention patterns (``circuitfind.patterns``), not named.
Also: completeness to 1e-4, and the intervention check's Pearson r >= 0.9 on the 15 most
influential features of each of 5 prompts (attention frozen, pooled n = 75).
"""

from __future__ import annotations

import pytest
import torch

import circuitfind as cf
from circuitfind.features import attribution_graph, train_transcoders
from circuitfind.features.intervene import intervention_check, pearson
from circuitfind.features.qk import attention_drivers
from circuitfind.patterns import induction_score, previous_token_score, repeated_tokens

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = cf.load("zoo:induction-2l")
    tcs = train_transcoders(model, sites="auto", steps=1000, d_sae=256, k=8, n=256, lr=1e-2)
    probe = repeated_tokens(range(128), n=32, length=10, seed=0)
    _, cache = model.run_with_cache(probe, patterns=True)
    prev = int(previous_token_score(cache.patterns[0]).argmax())
    ind = int(induction_score(cache.patterns[1], probe).argmax())
    return model, tcs, prev, ind


def _prompt(seed: int) -> torch.Tensor:
    seq = torch.randperm(128, generator=torch.Generator().manual_seed(seed))[:10]
    return torch.cat([seq, seq[:5]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_previous_token_to_induction_path(setup, seed):
    model, tcs, prev, ind = setup
    assert sorted(tcs) == ["a0", "a1"]
    prompt = _prompt(seed)
    g = attribution_graph(model, tcs, prompt)
    assert g.target["token"] == int(prompt[5]) and g.target["pos"] == 14
    assert float(g.completeness().max()) < 1e-4

    # OV side
    path = g.top_path()
    names = [g.nodes[i] for i in path]
    assert names[0].kind == "logit"
    assert names[1].kind == "feature" and names[1].site == "a1" and names[1].pos == 14
    assert names[2].id == "tok@5"
    split = g.heads_of(path[1], path[2]).abs()
    assert int(split.argmax()) == ind and float(split[ind] / split.sum()) >= 0.9
    pr = g.pruning
    assert pr is not None and all(bool(pr.node_mask[i]) for i in path)
    assert bool(pr.edge_mask[path[0], path[1]]) and bool(pr.edge_mask[path[1], path[2]])

    # QK side
    qk = attention_drivers(model, g, 1, ind, 14, 5)
    assert qk["score"] == pytest.approx(qk["real_score"], abs=1e-4)
    assert qk["query_side"][0]["node"] == "tok@14"
    key = g.index(qk["key_side"][0]["node"])
    assert g.nodes[key].layer == 0 and g.nodes[key].pos == 5
    src = int(g.adjacency[key].abs().argmax())
    assert g.nodes[src].id == "tok@4"
    hs = g.heads_of(key, src).abs()
    assert int(hs.argmax()) == prev and float(hs[prev] / hs.sum()) >= 0.9


def test_intervention_correlation(setup):
    """Ablating each of the 15 most influential features of 5 prompts in the spliced model
    (attention frozen) against the graph's prediction: pooled Pearson r >= 0.9 (n = 75), and
    the median prompt's r >= 0.9. With attention live the frozen graph misses the QK path; a
    first-order prediction through live attention recovers most of it (r > 0.6)."""
    model, tcs, _, _ = setup
    pred, frozen, first, live, per_prompt = [], [], [], [], []
    for seed in range(5):
        check = intervention_check(model, attribution_graph(model, tcs, _prompt(seed)), top=15)
        pred += check["predicted"]
        frozen += check["measured_frozen"]
        first += check["first_order_attention_live"]
        live += check["measured_attention_unfrozen"]
        per_prompt.append(check["pearson_frozen"]["r"])
    r = pearson(torch.tensor(pred), torch.tensor(frozen))
    assert r["n"] == 75 and r["r"] >= 0.9
    assert sorted(per_prompt)[2] >= 0.9
    assert pearson(torch.tensor(first), torch.tensor(live))["r"] > 0.6


def test_feature_explorer_of_the_induction_graph(setup, tmp_path):
    """The explorer of the README's prompt with these transcoders (the `features train`
    defaults): the top path's nodes are on its first view, the induction feature has its top
    examples, and the page stays small (its size printed)."""
    from circuitfind.features import write_feature_explorer
    from tests.test_explorer import payload_of

    model, tcs, _, _ = setup
    prompt = torch.tensor([17, 95, 3, 60, 44, 12, 81, 100, 7, 29, 17, 95, 3, 60, 44])
    g = attribution_graph(model, tcs, prompt)
    path = write_feature_explorer(g, tmp_path / "feature_explorer.html", model=model,
                                  transcoders=tcs)  # fmt: skip
    data = payload_of(path.read_text())
    own = data["points"][data["initial_point"]]
    shown = {data["nodes"][i]["id"]: data["nodes"][i] for i in own["nodes"]}
    path_ids = [g.nodes[i].id for i in g.top_path()]
    assert set(path_ids) <= set(shown)
    feature = shown[path_ids[1]]
    assert feature["kind"] == "feature" and len(data["examples"][feature["key"]]) == 5
    size = path.stat().st_size
    print(f"induction feature explorer: {size / 1e3:.1f} kB, {len(data['nodes'])} nodes, "
          f"{len(data['edges'])} edges, {len(data['points'])} thresholds")  # fmt: skip
    assert size < 60_000


def test_dataset_circuit_edges_route_layer0_through_layer1(setup):
    """The dataset-level (Marks et al.) circuit of the induction task over 128 prompts, 100
    nodes: the layer-0 (previous-token) features reach the metric only through layer-1
    features (their direct edges to the metric are < 1% of their edges into layer 1), the
    metric's incoming edges come from layer 1, and the circuit is faithful (> 0.7)."""
    from circuitfind.features.dataset import feature_circuit

    model, tcs, _, _ = setup
    task = cf.get_task("induction", model, n=128, seed=0)
    fc = feature_circuit(model, tcs, task, top_n=100, n_boot=200)
    assert fc.faithfulness.value > 0.7
    total: dict[tuple[str, str], float] = {}
    for u, v, w in fc.edges:
        key = (u.split(".")[0], v.split(".")[0])
        total[key] = total.get(key, 0.0) + abs(w)
    a0_a1, a0_metric = total.get(("a0", "a1"), 0.0), total.get(("a0", "metric"), 0.0)
    assert a0_a1 > 0 and a0_metric < 0.01 * a0_a1
    into_metric = sum(v for (u, d), v in total.items() if d == "metric")
    assert total[("a1", "metric")] > 0.5 * into_metric
