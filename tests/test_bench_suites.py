"""The smaller suites (sae, zoo, pass-size) run through the one runner and write their reports
with the one header."""

from __future__ import annotations

import json
from pathlib import Path

from circuitfind.bench.cli import run_suites
from circuitfind.bench.speed import Shape


def _header_ok(md: str, name: str) -> None:
    lines = md.splitlines()
    assert lines[0].startswith("# ")
    assert lines[2].startswith("Command: `") and lines[3].startswith("Seed: ")
    assert lines[4].startswith("Machine: ") and lines[5].startswith("Versions: ")
    assert f"[`{name}.json`]({name}.json)" in lines[6]


def test_sae_suite_quick(tmp_path: Path) -> None:
    r = run_suites(
        ["sae"],
        tmp_path,
        quick=True,
        seed=0,
        options={"toy_steps": 60, "sae_steps": 60, "sweep": [0.05], "model_steps": 20},
    )["sae"]
    assert r["status"] == "ok", r
    md = (tmp_path / "sae_superposition.md").read_text()
    _header_ok(md, "sae_superposition")
    data = json.loads((tmp_path / "sae_superposition.json").read_text())
    assert data["config"]["sae_steps"] == 60 and len(data["sweep"]) == 1
    assert set(data["results"]) == {"ReLU+L1", "TopK (k=2)"}
    assert (tmp_path / "sae_superposition.png").is_file()
    on_model = data["on_model"]
    assert on_model["model"] == "zoo:induction-2l" and on_model["train_steps"] == 20
    assert on_model["loss_zero"] > on_model["loss_clean"]  # its own data: "recovered" is defined
    assert on_model["loss_recovered"] is not None and "## On a model: zoo:induction-2l" in md


def test_zoo_suite_quick(tmp_path: Path) -> None:
    r = run_suites(["zoo"], tmp_path, quick=True, seed=0)["zoo"]
    assert r["status"] == "ok", r
    assert r["summary"]["models"] == ["induction-2l"]
    md = (tmp_path / "zoo.md").read_text()
    _header_ok(md, "zoo")
    assert "## zoo:induction-2l" in md and "seed 2024" in md
    data = json.loads((tmp_path / "zoo.json").read_text())
    scores = data["induction-2l"]["scores"]
    targets = data["induction-2l"]["targets"]
    assert all(scores[k] >= v for k, v in targets.items())  # the shipped model meets its card


def test_pass_size_suite(tmp_path: Path) -> None:
    from circuitfind.bench import pass_size

    r = pass_size.run(
        tmp_path, quick=True, seed=0, repeat=1, budgets=(96, 384), shape=Shape(3, 2, 32)
    )
    md = (tmp_path / "exact_pass_size.md").read_text()
    _header_ok(md, "exact_pass_size")
    data = json.loads((tmp_path / "exact_pass_size.json").read_text())
    assert set(data["per_edge_s"]) == {f"a{l}.h0<q>@{b}" for l in (0, 2) for b in (96, 384)}
    assert r["hf_forward_s"] > 0
    shared = data["shared_prefix"]
    assert set(shared) == {f"a{l}.h0<q>@{k}" for l in (0, 2) for k in (0, 4, 8, 12)}
    assert all(len(v["plain_s"]) == len(v["skip_s"]) == 1 for v in shared.values())
    assert "Corrupted prompts that share a clean prefix" in md
