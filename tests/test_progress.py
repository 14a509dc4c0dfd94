"""Progress on long work (issue 18 item 6): plain lines when stderr is not a terminal."""

from __future__ import annotations

import io

import torch

import circuitfind as cf
from circuitfind.methods import method_spec
from circuitfind.progress import PlainProgress, bar
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task
from tests.factories import VOCAB, make_hf_model


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_without_a_terminal():
    out = io.StringIO()
    p = bar(total=10, desc="pruning search", unit="circuits", file=out, interval=0.0)
    assert isinstance(p, PlainProgress)
    for _ in range(4):
        p.update(1)
    p.set_postfix_str("n=64")
    p.close()
    p.close()  # once
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in out.getvalue()
    assert lines[0].startswith("pruning search: 1/10 circuits (10%), 0 s")
    assert "left" in lines[0] and lines[-1].startswith("pruning search: 4/10 circuits (40%)")
    assert lines[-1].endswith("[n=64]")


def test_periodic_not_every_update():
    out = io.StringIO()
    with bar(total=1000, desc="curve", file=out, interval=3600.0) as p:
        for _ in range(1000):
            p.update(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert "1000/1000" in out.getvalue()


def test_iteration_and_disable():
    out = io.StringIO()
    assert list(bar(range(3), desc="roles", file=out)) == [0, 1, 2]
    assert "roles: 3/3" in out.getvalue()
    quiet = io.StringIO()
    with bar(total=3, desc="x", file=quiet, disable=True) as p:
        p.update(3)
    assert quiet.getvalue() == ""


def test_a_terminal_gets_tqdm():
    from tqdm.auto import tqdm

    p = bar(total=3, desc="x", file=_Tty())
    assert isinstance(p, tqdm)
    p.close()


def test_exact_reports_progress_in_logs(capsys):
    """Before: without a terminal nothing was printed during a long run."""
    model = cf.load(make_hf_model("gpt_neox-sequential"))
    graph = cf.Graph.from_model(model)
    g = torch.Generator().manual_seed(0)
    task = Task.from_tokens(
        torch.randint(0, VOCAB, (3, 5), generator=g),
        torch.randint(0, VOCAB, (3, 5), generator=g),
        answer=torch.randint(0, VOCAB, (3,), generator=g),
    )
    runs = PreparedRuns(model, task, "resample", progress=True)
    method_spec("exact").function()(runs)
    err = capsys.readouterr().err
    assert f"exact patching: {graph.n_edges}/{graph.n_edges} edge (100%)" in err
