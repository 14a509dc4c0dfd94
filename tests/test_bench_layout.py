"""The benchmarks' layout: small modules, no import cycles among the bench / zoo modules, the
auto-circuit runner free of circuitfind, the trainer free of the benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "circuitfind"
OWNED = [
    *sorted((PKG / "bench").rglob("*.py")),
    *sorted((PKG / "zoo").glob("*.py")),
    PKG / "machine.py",
    PKG / "inspect" / "sae.py",
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth: module level, functions, TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_module_over_600_lines() -> None:
    long = {_module(p): n for p in OWNED if (n := len(p.read_text().splitlines())) > 600}
    assert not long


def test_no_import_cycles_among_bench_and_zoo_modules() -> None:
    modules = {_module(p): p for p in OWNED}
    graph = {
        m: sorted(i for i in _imports(p) if i in modules and i != m) for m, p in modules.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, " -> ".join([*stack, m, n])
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_trainer_and_recipes_do_not_import_each_other() -> None:
    train = _imports(PKG / "zoo" / "train.py")
    assert not any(i.startswith("circuitfind.bench") for i in train)
    recipes = ("induction_2l", "ioi", "greater_than")
    assert not any(f"circuitfind.zoo.{r}" in train for r in recipes)
    for r in recipes:
        assert "circuitfind.zoo.train" not in _imports(PKG / "zoo" / f"{r}.py"), r
    assert not any(i.startswith("circuitfind.zoo.") for i in _imports(PKG / "zoo" / "recipe.py"))


def test_autocircuit_runner_imports_nothing_from_circuitfind() -> None:
    runner = ROOT / "benchmarks" / "autocircuit" / "run_autocircuit.py"
    found = [i for i in _imports(runner) if i == "circuitfind" or i.startswith("circuitfind.")]
    assert not found
