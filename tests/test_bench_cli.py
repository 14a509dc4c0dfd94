"""``circuitfind benchmark`` / ``python -m benchmarks`` wiring and the suite registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from circuitfind import bench
from circuitfind.bench.cli import run_suites
from circuitfind.cli import main
from circuitfind.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_the_suites(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("known", "compare", "gpt2", "speed", "--quick", "--out"):
        assert name in out


def test_unknown_suite_is_one_line_exit_2(capsys, tmp_path) -> None:
    assert main(["benchmark", "--suite", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "known" in err
    assert not any(tmp_path.iterdir())


def test_python_dash_m_benchmarks_is_the_same_entry_point(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--suite", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown benchmark suite" in proc.stderr


def test_missing_suite_module_is_reported_and_others_run(monkeypatch, tmp_path) -> None:
    fake = ModuleType("circuitfind.bench._fake_ok")
    fake.run = lambda out_dir, *, quick, seed: {"ran": [quick, seed]}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "circuitfind.bench._fake_ok", fake)
    monkeypatch.setitem(
        bench.SUITES, "fake", bench.Suite("fake", "test", "circuitfind.bench._fake_ok:run")
    )
    monkeypatch.setitem(
        bench.SUITES, "gone", bench.Suite("gone", "test", "circuitfind.bench._not_there:run")
    )
    lines: list[str] = []
    results = run_suites(["gone", "fake"], tmp_path, quick=True, seed=3, echo=lines.append)
    assert results["gone"]["status"] == "missing"
    assert "not in this build" in results["gone"]["error"]
    assert results["fake"] == {"status": "ok", "summary": {"ran": [True, 3]}, "seconds": 0.0}
    assert any("[gone] missing" in line for line in lines)


def test_a_failing_suite_sets_exit_1(monkeypatch, tmp_path, capsys) -> None:
    fake = ModuleType("circuitfind.bench._fake_bad")

    def run(out_dir, *, quick, seed):
        raise RuntimeError("boom")

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "circuitfind.bench._fake_bad", fake)
    monkeypatch.setitem(
        bench.SUITES, "bad", bench.Suite("bad", "test", "circuitfind.bench._fake_bad:run")
    )
    assert main(["benchmark", "--suite", "bad", "--out", str(tmp_path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["bad"]["status"] == "failed" and "boom" in result["bad"]["error"]


def test_speed_suite_is_registered_lazily() -> None:
    assert bench.SUITES["speed"].module == "circuitfind.bench.speed"


def test_suites_that_take_a_command_get_the_real_one(monkeypatch, tmp_path) -> None:
    from circuitfind.bench import common

    fake = ModuleType("circuitfind.bench._fake_cmd")
    fake.run = lambda out_dir, *, quick, seed, command=None: {"command": command}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "circuitfind.bench._fake_cmd", fake)
    monkeypatch.setitem(
        bench.SUITES, "cmd", bench.Suite("cmd", "test", "circuitfind.bench._fake_cmd:run")
    )
    monkeypatch.setattr(common, "_COMMAND", [])
    assert main(["benchmark", "--suite", "cmd", "--out", str(tmp_path), "--json"]) == 0
    assert common.command_line() == f"circuitfind benchmark --suite cmd --out {tmp_path} --json"


def test_every_suite_is_in_the_one_table() -> None:
    for name in ("known", "compare", "gpt2", "speed", "sae", "zoo", "pass-size"):
        suite = bench.get_suite(name)
        assert suite.name == name and suite.summary and ":" in str(suite.fn)
    assert bench.default_suites() == ("known", "compare", "gpt2", "speed")
    assert bench.get_suite("pass_size") is bench.SUITES["pass-size"]
    assert bench.SUITES["sae"].options(quick=True)["sae_steps"] == 400


def test_the_table_refuses_duplicates(monkeypatch) -> None:
    monkeypatch.setattr(bench, "SUITES", dict(bench.SUITES))
    with pytest.raises(InputError, match="already registered"):
        bench.add_suite(bench.Suite("speed", "again", "x:run"))
    with pytest.raises(InputError, match="kebab-case"):
        bench.add_suite(bench.Suite("pass_size", "again", "x:run"))
    added = bench.add_suite(bench.Suite("toy", "a toy", lambda out_dir, *, quick, seed: {}))
    assert bench.get_suite("toy") is added and added.load()(None, quick=True, seed=0) == {}


def test_suite_options_reach_the_suite(monkeypatch, tmp_path) -> None:
    seen: dict = {}

    def fn(out_dir, *, quick, seed, steps=1, depth=0):
        seen.update(quick=quick, seed=seed, steps=steps, depth=depth)
        return {}

    suite = bench.Suite("opt", "test", fn, quick={"steps": 2}, full={"steps": 9}, default=False)
    monkeypatch.setitem(bench.SUITES, "opt", suite)
    main(["benchmark", "--suite", "opt", "--quick", "--out", str(tmp_path), "--set", "depth=3"])
    assert seen == {"quick": True, "seed": 0, "steps": 2, "depth": 3}
    main(["benchmark", "--suite", "opt", "--out", str(tmp_path)])
    assert seen["steps"] == 9 and seen["depth"] == 0


def test_an_option_no_suite_takes_is_one_line_exit_2(monkeypatch, capsys, tmp_path) -> None:
    fn = lambda out_dir, *, quick, seed: {}  # noqa: E731
    monkeypatch.setitem(bench.SUITES, "plain", bench.Suite("plain", "test", fn))
    assert main(["benchmark", "--suite", "plain", "--out", str(tmp_path), "--set", "x=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--set x" in err


def test_importing_the_table_imports_no_suite() -> None:
    code = (
        "import sys, circuitfind.bench, circuitfind.bench.cli; "
        "assert not [m for m in sys.modules if m.startswith('circuitfind.bench.') "
        "and m not in ('circuitfind.bench.cli',)], sorted(sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
