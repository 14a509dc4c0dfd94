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
    monkeypatch.setitem(bench.SUITES, "fake", ("circuitfind.bench._fake_ok", "test"))
    monkeypatch.setitem(bench.SUITES, "gone", ("circuitfind.bench._not_there", "test"))
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
    monkeypatch.setitem(bench.SUITES, "bad", ("circuitfind.bench._fake_bad", "test"))
    assert main(["benchmark", "--suite", "bad", "--out", str(tmp_path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["bad"]["status"] == "failed" and "boom" in result["bad"]["error"]


def test_speed_suite_is_registered_lazily() -> None:
    assert bench.SUITES["speed"][0] == "circuitfind.bench.speed"


def test_suites_that_take_a_command_get_the_real_one(monkeypatch, tmp_path) -> None:
    from circuitfind.bench import common

    fake = ModuleType("circuitfind.bench._fake_cmd")
    fake.run = lambda out_dir, *, quick, seed, command=None: {"command": command}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "circuitfind.bench._fake_cmd", fake)
    monkeypatch.setitem(bench.SUITES, "cmd", ("circuitfind.bench._fake_cmd", "test"))
    monkeypatch.setattr(common, "_COMMAND", [])
    assert main(["benchmark", "--suite", "cmd", "--out", str(tmp_path), "--json"]) == 0
    assert common.command_line() == f"circuitfind benchmark --suite cmd --out {tmp_path} --json"
