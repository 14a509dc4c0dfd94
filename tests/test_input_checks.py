"""Inputs checked before the work (issue 18 item 4): each test is a defect seen on main."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch

import circuitfind as cf
from circuitfind import cli, commands
from circuitfind.checks import (
    CostEstimate,
    check_context,
    check_effect,
    check_options,
    check_task,
    confirm_cost,
    estimate_cost,
)
from circuitfind.circuit import Circuit
from circuitfind.errors import InputError, ModelLoadError
from circuitfind.evaluation import baseline
from circuitfind.runs import PreparedRuns
from circuitfind.strict_json import dumps
from circuitfind.tasks import Task
from tests.factories import VOCAB, make_hf_model
from tests.task_helpers import word_tokenizer


def _task(n=4, T=6, seed=0, same=False, answer_is_wrong=False):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, T), generator=g)
    corrupted = clean.clone() if same else torch.randint(0, VOCAB, (n, T), generator=g)
    answer = torch.randint(0, VOCAB, (n,), generator=g)
    wrong = answer.clone() if answer_is_wrong else (answer + 1) % VOCAB
    return Task.from_tokens(clean, corrupted, answer=answer, wrong=wrong)


def _strict_loads(text):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [
        ("batch_size", 0, "--batch-size"),
        ("batch_size", -3, "--batch-size"),
        ("steps", 0, "--steps"),
        ("n", 0, "--n"),
        ("threshold", -1.0, "--threshold"),
        ("threshold", math.nan, "--threshold"),
        ("target_faithfulness", -1.0, "--target-faithfulness"),
        ("target_faithfulness", 0.0, "--target-faithfulness"),
        ("tau", -0.1, "--tau"),
        ("top_n", -1, "--top-n"),
    ],
)
def test_impossible_options_are_refused(option, value, flag):
    with pytest.raises(InputError, match=flag):
        check_options(**{option: value})


def test_good_options_pass():
    check_options(batch_size=1, steps=1, n=1, top_n=0, threshold=0.0, target_faithfulness=0.9)


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-size", "0"],
        ["--steps", "0"],
        ["--threshold", "-1"],
        ["--target-faithfulness", "-1"],
    ],
)
def test_cli_refuses_bad_options_before_loading_anything(extra, capsys, monkeypatch, tmp_path):
    """Before: --batch-size 0 ended as "internal error"; -1 thresholds ran."""
    monkeypatch.setattr(
        commands, "_load_model_and_task", lambda args: pytest.fail("loaded a model")
    )
    argv = ["discover", "--model", "m", "--task", "ioi", "--out", str(tmp_path / "o"), *extra]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # refused by the parser itself, as a usage error
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "error: " in err and extra[0] in err and len(err.strip().splitlines()) == 1


def test_cli_checks_the_output_directory_before_the_work(capsys, monkeypatch, tmp_path):
    """Before: the directory was written only at the end, throwing a finished run away."""
    monkeypatch.setattr(
        commands, "_load_model_and_task", lambda args: pytest.fail("loaded a model")
    )
    target = tmp_path / "a-file"
    target.write_text("x")
    assert cli.main(["discover", "--model", "m", "--task", "ioi", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_refuses_a_second_writer(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(
        commands, "_load_model_and_task", lambda args: pytest.fail("loaded a model")
    )
    out = tmp_path / "o"
    out.mkdir()
    (out / ".circuitfind.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": __import__("socket").gethostname()})
    )
    assert cli.main(["discover", "--model", "m", "--task", "ioi", "--out", str(out)]) == 2
    assert f"pid {os.getppid()}" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the metric
def test_a_metric_that_cannot_move_is_refused():
    """Before: clean == corrupted gave faithfulness 1.0 on noise of 2e-6, or NaN."""
    model = cf.load(make_hf_model("gpt2"))
    for task in (_task(same=True), _task(answer_is_wrong=True)):
        runs = PreparedRuns(model, task, "resample")
        full, empty = baseline(runs)
        with pytest.raises(InputError, match="cannot move"):
            check_effect(full, empty)
    full, empty = baseline(PreparedRuns(model, _task(), "resample"))
    check_effect(full, empty)  # a task that moves
    with pytest.raises(InputError, match="not finite"):
        check_effect(full * math.nan, empty)


def test_tasks_that_cannot_move_are_refused_before_the_work(caplog):
    with pytest.raises(InputError, match="equals its clean prompt"):
        check_task(_task(same=True), "resample")
    check_task(_task(same=True), "zero")  # zero ablation still moves the metric
    with pytest.raises(InputError, match="equals its wrong answer"):
        check_task(_task(answer_is_wrong=True))
    check_task(_task())
    half = _task()
    half.corrupted[0] = half.clean[0]
    check_task(half)
    assert "1 of 4 corrupted prompts" in caplog.text


def test_prompts_beyond_a_rotary_models_context_are_refused():
    """Before: RoPE models took prompts past max_position_embeddings silently."""
    model = cf.load(make_hf_model("llama-gqa-llama3rope"))  # max_position_embeddings 64
    assert model.cfg.positional == "rotary" and model.cfg.n_ctx == 64
    model(torch.randint(0, VOCAB, (1, 70)))  # the model itself runs it...
    with pytest.raises(InputError, match="70 tokens, more than the model's context of 64"):
        check_context(model, _task(T=70))  # ...the check refuses it
    check_context(model, _task(T=64))


# ---------------------------------------------------------------------------- JSON
def test_circuit_json_is_strict_and_written_atomically(tmp_path):
    """Before: a NaN faithfulness was written as a bare NaN that strict parsers reject."""
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    scores = torch.randn(graph.n_senders, graph.n_receivers)
    scores[0, 0] = float("nan")
    meta = {"faithfulness": float("nan"), "metrics": {"full": float("inf")}, "x": [1.0, math.nan]}
    path = Circuit(graph, scores, graph.valid, meta).to_json(tmp_path / "c.json")
    data = _strict_loads(path.read_text())
    assert data["meta"] == {"faithfulness": None, "metrics": {"full": None}, "x": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]
    assert _strict_loads(dumps({"f": float("nan"), "t": torch.tensor(2.5)})) == {
        "f": None,
        "t": 2.5,
    }


def _file(**cfg):
    return {"cfg": {"n_layers": 1, "n_heads": 1, **cfg}, "edges": {}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_file(n_layers=-1), r"n_layers = -1 is outside"),
        (_file(n_layers=0), r"n_layers = 0 is outside"),
        (_file(n_layers=3000), r"n_layers = 3000 is outside"),
        (_file(n_layers=1000, n_heads=1000), "more than circuitfind holds"),
        (_file(n_layers="2"), "n_layers must be an integer"),
        (_file(n_layers=True), "n_layers must be an integer"),
        (_file(n_layers=1.5), "n_layers must be an integer"),
        (_file(parallel_attn_mlp="yes"), "parallel_attn_mlp"),
        ({"cfg": {"n_layers": 1, "n_heads": 1}, "edges": []}, "'edges' must be an object"),
        ({"edges": {}}, "not a circuit file"),
        ({**_file(), "edges": {"input->logits": {"score": "abc"}}}, "score must be a number"),
        ({**_file(), "edges": {"input->logits": {"score": True}}}, "score must be a number"),
        ({**_file(), "edges": {"input->logits": {"score": 1e999}}}, "infinite"),
        ({**_file(), "edges": {"input->a7.h0<q>": 0.1}}, "c.json: .*layer 7"),
        ({**_file(), "edges": {"input->logits": {"in_graph": "no"}}}, "in_graph must be"),
    ],
)
def test_circuit_files_are_validated_before_allocation(data, match):
    """Before: n_layers -1 rendered, 3000 tried to allocate 451 GB, "abc" was a deep error."""
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=match):
        Circuit.from_dict(data, source="c.json")
    assert time.perf_counter() - t0 < 1.0


def test_unscored_circuits_say_so():
    """MIB / EAP-IG files with null scores: has_scores is False (evaluate gives no CPR/CMD)."""
    edges = {"input->logits": {"score": None, "in_graph": True}, "m0->logits": {"score": None}}
    unscored = Circuit.from_dict({**_file(), "edges": edges})
    assert not unscored.has_scores and unscored.n_edges == 1
    scored = Circuit.from_dict({**_file(), "edges": {"input->logits": {"score": 0.5}}})
    assert scored.has_scores


def test_circuit_files_with_a_bom_load_and_bad_bytes_name_the_line(tmp_path):
    graph = cf.Graph.from_model(cf.load(make_hf_model("gpt2")))
    path = Circuit(graph, torch.zeros(graph.n_senders, graph.n_receivers), graph.valid).to_json(
        tmp_path / "c.json"
    )
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert Circuit.from_json(path).n_edges == graph.n_edges
    path.write_bytes(b'{"cfg":\n{"n_layers": 1,\n"x": "\xff"}}')
    with pytest.raises(InputError, match="line 3 is not UTF-8"):
        Circuit.from_json(path)


# ---------------------------------------------------------------------------- JSONL
def _row(**kw):
    base = {"clean": "Then , Mary and John", "corrupted": "Then , Alice and Bob", "answer": " Tom"}
    return json.dumps({**base, **kw})


def test_jsonl_non_utf8_names_the_line_and_a_bom_is_accepted(tmp_path):
    """Before: a byte offset instead of the line; a BOM was rejected as invalid JSON."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{_row()}\n{_row()}\n".encode())
    assert len(Task.from_jsonl(path, word_tokenizer())) == 2
    path.write_bytes(f"{_row()}\n".encode() + b'{"clean": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"p.jsonl line 2: not UTF-8 text \(byte 0xe9"):
        Task.from_jsonl(path, word_tokenizer())


def test_jsonl_answer_equal_to_wrong_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_row(wrong=" Bob") + "\n" + _row(wrong=" Tom") + "\n")
    with pytest.raises(InputError, match=r"p\.jsonl line 2: 'wrong' equals 'answer'"):
        Task.from_jsonl(path, word_tokenizer())


# ---------------------------------------------------------------------------- models
def test_a_pickled_model_is_refused_without_suggesting_weights_only_false(tmp_path):
    """Before: torch's UnpicklingError (an "internal error") advised weights_only=False."""
    hf = make_hf_model("gpt2")
    hf.config.save_pretrained(tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({**hf.state_dict(), "evil": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as err:
        cf.load(str(tmp_path))
    assert "weights_only" not in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()


# ---------------------------------------------------------------------------- cost
def test_estimate_cost_scales_with_the_work_and_asks_before_a_big_run():
    model = cf.load(make_hf_model("gpt2"))
    small, big = _task(n=8), _task(n=800)
    a = estimate_cost(model, small, "exact", batch_size=8, seconds_per_forward=0.01)
    b = estimate_cost(model, big, "exact", batch_size=8, seconds_per_forward=0.01)
    assert b.seconds == pytest.approx(100 * a.seconds) and b.bytes > a.bytes
    eap = estimate_cost(model, small, "eap", batch_size=8, seconds_per_forward=0.01)
    assert eap.seconds < a.seconds
    from circuitfind.plan import make_plan

    for method, cost in (("exact", a), ("eap", eap)):  # one memory figure: the plan's
        assert cost.bytes == make_plan(model, small, method, batch_size=8).total
    timed = estimate_cost(model, small, "eap", batch_size=8)
    assert timed.seconds > 0 and timed.bytes > sum(
        p.numel() * 4 for p in model.hf_model.parameters()
    )
    cheap = CostEstimate(10.0, 1000, 10.0, "eap")
    confirm_cost(cheap)  # under the threshold: no question
    huge = CostEstimate(3600.0, 1000, 10.0, "acdc")
    with pytest.raises(InputError, match="--yes"):
        confirm_cost(huge, ask=None)  # no terminal in tests: refused, naming --yes
    confirm_cost(huge, yes=True)
    confirm_cost(huge, ask=lambda q: "y")
    with pytest.raises(InputError, match="stopped"):
        confirm_cost(huge, ask=lambda q: "n")
    with pytest.raises(InputError, match="memory"):
        confirm_cost(CostEstimate(1.0, 10**15, 1.0, "exact"), max_bytes=10**12)
