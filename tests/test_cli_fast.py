"""A fast, quiet command line: --help without torch, threads from the available cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuitfind import cli, cli_base

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "numpy", "matplotlib", "circuitfind.zoo.train")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_and_parser_load_nothing_heavy():
    code = (
        "import sys, json, circuitfind, circuitfind.cli as c; c.build_parser();"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert json.loads(_python(code)) == []


def test_lazy_names_are_the_real_ones_even_after_their_modules_are_imported():
    import circuitfind as cf
    import circuitfind.discovery
    import circuitfind.evaluation
    import circuitfind.inspect.dla
    import circuitfind.render

    assert callable(cf.discover) and cf.discover.__name__ == "discover"
    assert callable(cf.evaluate) and callable(cf.render) and callable(cf.inspect.dla)
    assert callable(cf.score) and callable(cf.prune)
    assert set(cf.__all__) <= set(dir(cf))
    for name in cf.__all__:
        assert getattr(cf, name) is not None
    with pytest.raises(AttributeError):
        _ = cf.no_such_name


def _help_seconds(command: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``circuitfind COMMAND --help``, the best of three runs.

    CPU time (user + system of the child) is what the command costs; wall time also holds
    the waits of a shared machine, so it gets a looser bound below."""
    import resource

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    best_cpu = best_wall = float("inf")
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "circuitfind", *command, "--help"],
            capture_output=True,
            env=env,
            timeout=120,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert done.returncode == 0, done.stderr
        best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
        if best_wall < 1.0:
            break
    return best_cpu, best_wall


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)  # type: ignore[arg-type]


def test_every_help_answers_under_a_second():
    for command in [[], *[[c] for c in _subcommands()], ["zoo", "train"]]:
        cpu, wall = _help_seconds(command)
        name = f"circuitfind {' '.join(command)} --help"
        assert cpu < 1.0, f"{name} used {cpu:.2f} s of CPU"
        assert wall < 3.0, f"{name} took {wall:.2f} s"  # torch alone takes 2-15 s to import


def test_help_tables_match_the_engine():
    import circuitfind.patching  # noqa: F401
    from circuitfind.methods import METHODS
    from circuitfind.tasks import METRICS, TASKS

    assert set(cli._methods()) == set(METHODS)
    assert tuple(cli.ABLATIONS) == tuple(sys.modules["circuitfind.patching"].ABLATIONS)
    assert set(cli.TASKS) == set(TASKS)
    assert set(cli.METRICS) == set(METRICS)
    for name, spec in TASKS.items():
        assert f"metric: {spec.metric}" in cli.TASKS[name]


def test_threads_follow_the_affinity_mask_and_the_flag(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(cli_base, "_cgroup_cpus", lambda: None)
    assert cli.available_cpus() == 3 and cli.thread_count(None) == 3
    monkeypatch.setattr(cli_base, "_cgroup_cpus", lambda: 2)
    assert cli.thread_count(None) == 2
    assert cli.thread_count(7) == 7
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.thread_count(None) == 1


def test_threads_flag_sets_torch_anywhere_on_the_line(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert cli.main(["doctor", "--json", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert json.loads(capsys.readouterr().out)["threads"].startswith("1 ")
        assert cli.main(["--threads", "2", "doctor", "--json"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert (
        "--threads"
        in subprocess.run(
            [sys.executable, "-m", "circuitfind", "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout
    )


def test_progress_bars_obey_quiet_and_third_party_bars_are_silenced(monkeypatch):
    import argparse

    import transformers

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli._progress(argparse.Namespace(quiet=False)) is True
    assert cli._progress(argparse.Namespace(quiet=True)) is False
    transformers.logging.enable_progress_bar()
    cli.quiet_third_party(verbose=False)
    assert not transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.enable_progress_bar()
    cli.quiet_third_party(verbose=True)
    assert transformers.utils.logging.is_progress_bar_enabled()
