"""The command line: render/evaluate/discover end to end, exit codes and one-line errors."""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import asdict, dataclass, field

import pytest
import torch

import circuitfind as cf
from circuitfind import commands
from circuitfind.circuit import Circuit
from circuitfind.cli import main
from circuitfind.tasks import Task
from tests.factories import make_hf_model
from tests.test_render import small_circuit

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")


def _one_line_error(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err.strip()
    assert code == expected, err
    assert err and "\n" not in err, f"not one line: {err!r}"
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------- render
@needs_dot
@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_render_command_writes_image_and_dot(tmp_path, capsys, suffix):
    path = small_circuit().to_json(tmp_path / "c.json")
    assert main(["render", str(path), "-o", str(tmp_path / f"out.{suffix}")]) == 0
    assert (tmp_path / f"out.{suffix}").stat().st_size > 500
    assert (tmp_path / "out.gv").read_text().startswith("digraph")
    assert "wrote" in capsys.readouterr().out


def test_render_uses_roles_saved_in_the_file(tmp_path):
    c = small_circuit()
    c.meta["roles"] = {"a0.h1": {"role": "induction", "score": 0.7}}
    path = c.to_json(tmp_path / "c.json")
    assert main(["render", str(path), "-o", str(tmp_path / "c.gv")]) == 0
    assert "induction" in (tmp_path / "c.gv").read_text()
    assert main(["render", str(path), "-o", str(tmp_path / "r.html")]) == 0
    assert "induction</span> 0.70" in (tmp_path / "r.html").read_text()


def test_render_without_dot_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda _: None)
    path = small_circuit().to_json(tmp_path / "c.json")
    code = main(["render", str(path), "-o", str(tmp_path / "c.svg")])
    err = _one_line_error(capsys, code)
    assert "apt-get install graphviz" in err and (tmp_path / "c.gv").is_file()


# ---------------------------------------------------------------------------- errors
def test_missing_circuit_file_is_one_line(tmp_path, capsys):
    code = main(["render", str(tmp_path / "nope.json")])
    assert "does not exist" in _one_line_error(capsys, code)
    code = main(["evaluate", str(tmp_path / "nope.json"), "--model", "x", "--task", "ioi"])
    assert "does not exist" in _one_line_error(capsys, code)


def test_not_a_circuit_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('{"cfg": 1')
    code = main(["render", str(tmp_path / "bad.json")])
    assert "not valid JSON" in _one_line_error(capsys, code)


def test_bad_method_name_is_one_line(capsys):
    code = main(["discover", "--model", "zoo:x", "--task", "ioi", "--method", "magic"])
    err = _one_line_error(capsys, code)
    assert "unknown method 'magic'" in err and "eap-ig-inputs" in err
    code = main(["discover", "--model", "zoo:x", "--task", "ioi", "--ablation", "nope"])
    assert "unknown ablation" in _one_line_error(capsys, code)


def test_unknown_zoo_model_is_one_line(tmp_path, capsys):
    code = main(["discover", "--model", "zoo:no-such-model", "--task", "induction"])
    assert "unknown zoo model 'no-such-model'" in _one_line_error(capsys, code)
    path = small_circuit().to_json(tmp_path / "c.json")
    code = main(["evaluate", str(path), "--model", "zoo:no-such-model", "--task", "induction"])
    assert "unknown zoo model" in _one_line_error(capsys, code)


def test_usage_errors_are_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--task", "ioi"])
    err = _one_line_error(capsys, exc.value.code)
    assert "--model" in err and "--help" in err
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--model", "m", "--task", "t", "--top-n", "3", "--threshold", "1"])
    assert "not allowed with" in _one_line_error(capsys, exc.value.code)


def test_internal_error_is_one_line_exit_1_and_debug_raises(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise ValueError("something\nbroke")

    monkeypatch.setattr(importlib.import_module("circuitfind.render"), "render", boom)
    path = small_circuit().to_json(tmp_path / "c.json")
    code = main(["render", str(path)])
    err = _one_line_error(capsys, code, expected=1)
    assert "ValueError: something broke" in err and "--debug" in err
    with pytest.raises(ValueError):
        main(["--debug", "render", str(path)])


def test_ctrl_c_exits_130_and_says_so(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("circuitfind.render"), "render", interrupted)
    code = main(["render", str(small_circuit().to_json(tmp_path / "c.json"))])
    assert code == 130 and "interrupted" in capsys.readouterr().err


def test_help_of_every_subcommand(capsys):
    for command in ("discover", "evaluate", "render", "doctor"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--target-faithfulness" in out and "eap-ig-inputs" in out and ".png" in out


def test_plugin_subcommands_are_wired(capsys):
    assert main(["tasks", "--json"]) == 0
    assert "ioi" in json.loads(capsys.readouterr().out)["tasks"]


# ---------------------------------------- discover (CLI wiring, engine faked; end to end below)
@dataclass
class FakeEvaluation:
    faithfulness: float = 0.9
    metric_full: float = 2.0
    metric_circuit: float = 1.8
    metric_empty: float = 0.0
    curve: list = field(default_factory=lambda: [(1.0, 0.2), (10.0, 0.8), (100.0, 1.0)])
    cpr: float = 0.7
    cmd: float = 0.2

    def to_dict(self):
        return asdict(self)


@pytest.fixture
def fake_engine(monkeypatch):
    """A random GPT-2 model, a toy task, and stand-ins for discover() and evaluate()."""
    model = cf.load(make_hf_model("gpt2"))
    seq = torch.randint(0, 100, (4, 5))
    clean = torch.cat([seq, seq], 1)
    task = Task.from_tokens(
        clean, clean.flip(1), torch.full((4,), 9), seq[:, 0], name="toy", description="toy repeat"
    )
    calls = {}

    def fake_discover(model, task, **kwargs):
        calls["discover"] = kwargs
        graph = cf.Graph.from_model(model)
        scores = torch.randn(graph.n_senders, graph.n_receivers)
        keep = graph.valid & (scores.abs() > 2.0)
        meta = {
            "model": "toy",
            "task": task.name,
            "method": kwargs["method"],
            "time_s": 0.1,
            "evaluation": FakeEvaluation().to_dict(),
        }
        return Circuit(graph, scores, keep, meta)

    def fake_evaluate(model, task, circuit, **kwargs):
        calls["evaluate"] = kwargs
        return FakeEvaluation()

    monkeypatch.setattr(commands, "_load_model_and_task", lambda args: (model, task))
    monkeypatch.setattr(cf, "discover", fake_discover, raising=False)
    monkeypatch.setattr(cf, "evaluate", fake_evaluate, raising=False)
    return calls


def test_discover_writes_everything_and_prints_a_summary(tmp_path, capsys, fake_engine):
    out = tmp_path / "run"
    argv = ["discover", "--model", "m", "--task", "toy", "--method", "eap-ig", "--out", str(out)]
    assert main([*argv, "--top-n", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert fake_engine["discover"]["method"] == "eap-ig-inputs"
    assert fake_engine["discover"]["top_n"] == 20
    assert fake_engine["discover"]["checkpoint_dir"] == out / "checkpoint"
    assert summary["faithfulness"] == 0.9 and summary["n_edges"] > 0
    assert summary["n_edges_total"] > summary["n_edges"]
    assert all(t["role"] for t in summary["top_heads"])
    assert (out / "circuit.json").is_file() and (out / "report.html").is_file()
    assert (out / "circuit.gv").is_file()
    if shutil.which("dot"):
        assert (out / "circuit.svg").is_file()
    saved = Circuit.from_json(out / "circuit.json")
    assert saved.meta["command"].startswith("circuitfind discover --model m")
    assert set(saved.meta["roles"]) == {n for n in saved.nodes if n.startswith("a")}
    assert "circuitfind discover --model m" in (out / "report.html").read_text()
    # the human summary
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "edges" in text and "faithfulness: 0.900" in text and "top heads:" in text


def test_evaluate_prints_json(tmp_path, capsys, fake_engine):
    c = cf.Circuit  # the saved circuit must fit the model's shape
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    keep = graph.valid.clone()
    path = c(graph, torch.ones(keep.shape), keep).to_json(tmp_path / "c.json")
    assert main(["evaluate", str(path), "--model", "m", "--task", "t", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["faithfulness"] == 0.9 and result["n_edges"] == graph.n_edges
    assert main(["evaluate", str(path), "--model", "m", "--task", "t"]) == 0
    assert "faithfulness: 0.900" in capsys.readouterr().out
    # a circuit of another model's shape is refused in one line
    other = small_circuit().to_json(tmp_path / "other.json")
    code = main(["evaluate", str(other), "--model", "m", "--task", "t"])
    assert "2 layers x 2 heads" in _one_line_error(capsys, code)


# ---------------------------------------------------------------------------- zoo, end to end
def _zoo_model_for(task: str) -> str:
    if not callable(getattr(cf, "discover", None)) or not callable(getattr(cf, "evaluate", None)):
        pytest.skip("circuitfind.discover / evaluate are not in this build yet")
    from circuitfind.zoo import list_zoo

    names = list_zoo()
    if not names:
        pytest.skip("no zoo model is bundled yet")
    return next((n for n in names if task in n), names[0])


def test_zoo_end_to_end_discover_render_evaluate(tmp_path, capsys):
    name = _zoo_model_for("induction")
    out = tmp_path / "run"
    src = f"zoo:{name}"
    common = ["--model", src, "--task", "induction", "--n", "16"]
    code = main(["-q", "discover", *common, "--method", "eap", "--top-n", "30", "--out", str(out),
                 "--json"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < summary["n_edges"] <= 30
    assert isinstance(summary["faithfulness"], float)
    assert main(["render", str(out / "circuit.json"), "-o", str(tmp_path / "c.png")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), *common, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["faithfulness"] == pytest.approx(summary["faithfulness"], abs=0.05)


def test_real_engine_end_to_end_on_a_random_model(tmp_path, capsys):
    """discover -> render -> evaluate through the real engine, on a random GPT-2 saved with a
    word-level tokenizer (the zoo test below does the same on a trained model)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.task_helpers import word_tokenizer

    tok = word_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).eval().save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    out = tmp_path / "run"
    common = ["--model", str(tmp_path / "model"), "--task", "ioi", "--n", "6"]
    argv = ["-q", "discover", *common, "--method", "eap", "--top-n", "12", "--out", str(out)]
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert 0 < summary["n_edges"] <= 12 and summary["n_edges_total"] > 12
    assert isinstance(summary["faithfulness"], float)
    for name in ("circuit.json", "circuit.gv", "report.html"):
        assert (out / name).is_file()
    assert main(["render", str(out / "circuit.json"), "-o", str(tmp_path / "c.gv")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "circuit.json"), *common, "--no-curve", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["faithfulness"] == pytest.approx(summary["faithfulness"], abs=1e-4)
    assert result["n_edges"] == summary["n_edges"]
