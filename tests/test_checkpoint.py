"""Checkpoints that belong to their run, one writer per output, interrupts that keep their word.

Each test reproduces a defect of issue 18 (on the code before it, a mismatched checkpoint was
silently reused, nothing was saved on SIGINT/SIGTERM, a second writer mixed results).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuitfind as cf
from circuitfind.checkpoint import (
    Checkpointer,
    Interrupted,
    OutputLock,
    atomic_write_bytes,
    atomic_write_text,
    default_out_dir,
    model_fingerprint,
    prepare_out_dir,
    run_fingerprint,
    task_fingerprint,
)
from circuitfind.errors import InputError
from circuitfind.patching import Ablation
from circuitfind.tasks import Task
from tests.factories import VOCAB, make_hf_model, method_scores


def _exact(model, task, ablation="resample", *, ckdir=None, batch_size=32, **kw):
    """Exact scores [S, R], checkpointing under ``ckdir`` (``exact_checkpoint.pt``)."""
    return method_scores(
        model, task, "exact", ablation, batch_size=batch_size, checkpoint_dir=ckdir, **kw
    ).edges


def _acdc(model, task, *, ckdir=None, **kw):
    """ACDC's (scores, kept), checkpointing under ``ckdir`` (``acdc_checkpoint.pt``)."""
    result = method_scores(model, task, "acdc", checkpoint_dir=ckdir, **kw)
    return result.edges, result.kept


def _task(n=6, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, T), generator=g)
    corrupted = torch.randint(0, VOCAB, (n, T), generator=g)
    answer = torch.randint(0, VOCAB, (n,), generator=g)
    wrong = torch.randint(0, VOCAB, (n,), generator=g)
    return Task.from_tokens(clean, corrupted, answer=answer, wrong=wrong)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = cf.load(make_hf_model("gpt_neox-sequential"))  # 46 edges: quick
    return model, cf.Graph.from_model(model)


class _SignalAt:
    """A task whose metric sends ``signum`` to this process at its ``at``-th call."""

    def __init__(self, task, at, signum=signal.SIGINT):
        self.task, self.calls, self.at, self.signum = task, 0, at, signum

    def __len__(self):
        return len(self.task)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def metric_fn(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self.task.metric_fn(*args, **kwargs)


# ---------------------------------------------------------------------------- fingerprints
def test_fingerprints_see_weights_tokens_and_options(small):
    model, _ = small
    other = cf.load(make_hf_model("gpt_neox-sequential", seed=1))  # same shape, other weights
    assert model_fingerprint(model) == model_fingerprint(model)
    assert model_fingerprint(model) != model_fingerprint(other)
    with torch.no_grad():  # a fine-tune of one matrix
        p = next(other.hf_model.parameters())
        fp = model_fingerprint(other)
        p.add_(1e-4 * torch.randn_like(p))
        assert model_fingerprint(other) != fp
    assert task_fingerprint(_task(seed=0)) == task_fingerprint(_task(seed=0))
    assert task_fingerprint(_task(seed=0)) != task_fingerprint(_task(seed=1))
    a = run_fingerprint(model=model, task=_task(), method="exact", ablation="resample")
    b = run_fingerprint(model=model, task=_task(), method="exact", ablation="zero")
    assert [k for k in a if a[k] != b[k]] == ["ablation"]


@pytest.mark.parametrize("change", ["ablation", "task", "model", "metric"])
def test_exact_refuses_a_checkpoint_of_another_run(small, tmp_path, change):
    """Before: matched on the score shape and n only, so a zero-ablation or other-seed rerun
    into the same directory resumed the first run's sums and reported its scores."""
    model, _graph = small
    task = _task()
    ckpt = tmp_path / "exact_checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        _exact(model, _SignalAt(task, 5), batch_size=3, ckdir=tmp_path)
    assert ckpt.is_file()
    kw: dict = {"batch_size": 3, "ckdir": tmp_path}
    other_model, other_task, kind = model, task, "resample"
    if change == "ablation":
        kind = "zero"
    elif change == "task":
        other_task = _task(seed=4)
    elif change == "model":
        other_model = cf.load(make_hf_model("gpt_neox-sequential", seed=1))
    else:
        kw["metric"] = "logprob"
    with pytest.raises(InputError, match=rf"belongs to another run \(its .*{change}.* differ"):
        _exact(other_model, other_task, kind, **kw)


def test_acdc_refuses_a_checkpoint_of_another_task(small, tmp_path):
    model, _graph = small
    task = _task(n=4)
    ckpt = tmp_path / "acdc_checkpoint.pt"
    abl = Ablation(model, task, "resample")
    Checkpointer(
        ckpt,
        run_fingerprint(model=model, task=task, method="acdc", ablation=abl),
        total=1,
    ).save({"mask": torch.ones(1)}, 1)
    other = _task(n=4, seed=3)
    with pytest.raises(InputError, match="belongs to another run"):
        _acdc(model, other, tau=0.02, ckdir=tmp_path)


def test_a_corrupt_or_old_checkpoint_says_to_delete_it(small, tmp_path):
    model, _graph = small
    task = _task()
    ckpt = tmp_path / "exact_checkpoint.pt"
    ckpt.write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(InputError, match=r"delete it") as err:
        _exact(model, task, ckdir=tmp_path)
    assert str(ckpt) in str(err.value) and "weights_only" not in str(err.value)
    torch.save({"totals": torch.zeros(2), "batch": 0, "receiver": 0, "n": 6}, ckpt)  # old format
    with pytest.raises(InputError, match=r"older circuitfind .* delete it"):
        _exact(model, task, ckdir=tmp_path)


# ---------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_exact_saves_on_a_signal_and_resumes_to_the_same_scores(small, tmp_path, caplog, signum):
    """Before: nothing saved before the first batch finished, SIGTERM saved nothing at all."""
    model, graph = small
    task = _task()
    full = _exact(model, task, batch_size=3)
    ckpt = tmp_path / "exact_checkpoint.pt"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        # in the first batch: the clean run + 3 passes
        _exact(model, _SignalAt(task, 4, signum), batch_size=3, ckdir=tmp_path)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    message = str(err.value)
    kept = int(message.split(": ")[1].split(" of ")[0])
    assert 0 < kept < 2 * graph.n_edges and str(ckpt) in message and "resume" in message
    assert torch.load(ckpt, weights_only=True)["done"] == kept
    with caplog.at_level(logging.WARNING, logger="circuitfind.checkpoint"):
        resumed = _exact(model, task, batch_size=3, ckdir=tmp_path)
    assert any(f"{kept} of {2 * graph.n_edges}" in r.getMessage() for r in caplog.records)
    v = graph.valid
    assert torch.equal(resumed[v], full[v])
    assert not ckpt.exists()  # removed after success
    assert not list(tmp_path.iterdir())  # no lock or temp file left


def test_an_interrupt_before_anything_was_saved_says_nothing_was_kept(small, tmp_path):
    model, _graph = small
    task = _task()

    class Broken(_SignalAt):
        def metric_fn(self, *args, **kwargs):
            raise KeyboardInterrupt  # a hard interrupt in the clean run, before any edge

    ckpt = tmp_path / "exact_checkpoint.pt"
    with pytest.raises(Interrupted, match="nothing was kept") as err:
        _exact(model, Broken(task, 0), ckdir=tmp_path)
    assert "resume" not in str(err.value) and not ckpt.exists()


def test_acdc_saves_every_n_edges_and_on_sigint_and_resumes_to_the_same_circuit(small, tmp_path):
    """Before: ACDC saved every 60 s only, nothing on interrupt."""
    model, graph = small
    task = _task(n=4)
    scores, kept = _acdc(model, task, tau=0.02)

    import circuitfind.runs as runs_module

    calls = {"n": 0}
    original = runs_module.MaskEvaluator.__call__

    def signalling(self, mask, start_layer=0):
        calls["n"] += 1
        if calls["n"] == 17:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, mask, start_layer)

    ckpt = tmp_path / "acdc_checkpoint.pt"
    runs_module.MaskEvaluator.__call__ = signalling
    try:
        with pytest.raises(Interrupted, match=r"ACDC interrupted: 16 of \d+ edges tried kept"):
            _acdc(model, task, tau=0.02, ckdir=tmp_path)
    finally:
        runs_module.MaskEvaluator.__call__ = original
    resumed_scores, resumed = _acdc(model, task, tau=0.02, ckdir=tmp_path)
    assert torch.equal(resumed, kept)
    v = graph.valid & ~torch.isnan(scores)
    assert torch.equal(v, graph.valid & ~torch.isnan(resumed_scores))
    assert torch.equal(resumed_scores[v], scores[v])
    assert not ckpt.exists()


def test_checkpointer_saves_every_n_units(tmp_path):
    ckpt = Checkpointer(tmp_path / "c.pt", {"a": "1"}, total=10, every=3, every_s=1e9)
    saves = []
    with ckpt:
        for done in range(1, 11):
            ckpt.maybe_save(lambda d=done: {"d": d}, done)
            saves.append(ckpt.saved_done)
    assert saves == [0, 0, 3, 3, 3, 6, 6, 6, 9, 9]


@pytest.mark.slow
def test_a_real_cli_run_killed_by_sigterm_resumes_to_the_same_circuit(tmp_path):
    """A subprocess on a zoo model, sent SIGTERM after its first checkpoint; rerun to the end
    it writes the circuit an uninterrupted run writes."""
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    base = [sys.executable, "-m", "circuitfind", "-q", "discover", "--model", "zoo:induction-2l"]
    base += ["--task", "induction", "--n", "8", "--method", "acdc", "--tau", "0.05"]
    ref = tmp_path / "ref"
    subprocess.run([*base, "--out", str(ref)], env=env, check=True, capture_output=True)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*base, "--out", str(out)], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint/*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert b"kept" in err and b"resume" in err
    subprocess.run([*base, "--out", str(out)], env=env, check=True, capture_output=True)
    a = json.loads((ref / "circuit.json").read_text())["edges"]
    b = json.loads((out / "circuit.json").read_text())["edges"]
    assert a == b


# ---------------------------------------------------------------------------- locks
def test_a_live_lock_is_refused_naming_its_pid(tmp_path):
    """Before: two runs on one --out both wrote, the last writer won."""
    (tmp_path / ".circuitfind.lock").write_text(
        json.dumps({"pid": os.getppid(), "host": __import__("socket").gethostname()})
    )
    with pytest.raises(
        InputError, match=rf"in use by another circuitfind run \(pid {os.getppid()}"
    ):
        OutputLock(tmp_path).acquire()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".circuitfind.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname()}))
    with caplog.at_level(logging.WARNING), OutputLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(InputError, match=f"pid {os.getpid()}"):
            OutputLock(tmp_path).acquire()  # a second writer in this process: refused
    assert f"from pid {dead.pid}, which no longer runs" in caplog.text
    assert not lock.exists()


def test_a_lock_from_another_host_is_refused(tmp_path):
    (tmp_path / ".circuitfind.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(InputError, match="host elsewhere"):
        OutputLock(tmp_path).acquire()


# ---------------------------------------------------------------------------- output files
def test_atomic_writes_replace_whole_files_and_leave_nothing_behind(tmp_path):
    target = tmp_path / "circuit.json"
    atomic_write_text(target, "old")
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode  # not mkstemp's 0600
    plain.unlink()
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["circuit.json"]


def test_default_out_dir_names_every_run_parameter():
    """Before: circuits/{model}_{task}_{method}, shared by runs of other ablations, seeds, n."""
    a = default_out_dir("zoo:ioi", "ioi", "acdc", "resample", 0, 16)
    assert a == Path("circuits/zoo-ioi_ioi_acdc_resample_seed0_n16")
    assert a != default_out_dir("zoo:ioi", "ioi", "acdc", "zero", 4, 16)
    assert a != default_out_dir("zoo:ioi", "ioi", "acdc", "resample", 0, 32)


def test_prepare_out_dir_checks_before_the_work(tmp_path, caplog):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        prepare_out_dir(f)
    with pytest.raises(InputError, match="cannot write"):
        prepare_out_dir(f / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(InputError, match="cannot write"):
                prepare_out_dir(ro)
        finally:
            ro.chmod(0o700)
    out = prepare_out_dir(tmp_path / "new" / "dir", command="circuitfind discover a")
    (out / "circuit.json").write_text(json.dumps({"meta": {"command": "circuitfind discover a"}}))
    with caplog.at_level(logging.WARNING):
        prepare_out_dir(out, command="circuitfind discover a")
        assert not caplog.records
        prepare_out_dir(out, command="circuitfind discover b")
    assert "holds results of another run (circuitfind discover a)" in caplog.text
