"""Devices: every method keeps its work on the model's device.

Without a GPU the check is a spy at the method boundary: a ``TorchFunctionMode`` records every
tensor circuitfind creates without naming a device (it lands on the default device, the CPU,
whatever device the model is on) and every copy to the host (``.cpu()``, ``.tolist()``,
``.numpy()``), with its size. On a GPU run those are the tensors that would sit on the CPU; the
test asserts that all of them are score- or index-sized (at most [senders x receivers]), never
activation-sized, for every method. Where CUDA exists, every method also runs there and agrees
with the CPU. A model split across devices (an accelerate ``device_map``) is refused at load,
naming the devices and the methods.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import circuitfind as cf
from circuitfind.errors import UnsupportedModelError
from circuitfind.methods import METHODS, method_spec
from circuitfind.runs import PreparedRuns
from circuitfind.tasks import Task
from tests.factories import make_hf_model

_FACTORIES = {
    torch.zeros, torch.empty, torch.ones, torch.full, torch.arange, torch.tensor,
    torch.as_tensor, torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye,
}  # fmt: skip
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy}


class HostSpy(TorchFunctionMode):
    """Records (what, file:line, elements) for tensors made on the default device and copies
    to the host, from circuitfind's own code."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, int]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        what = None
        if func in _FACTORIES and "device" not in kwargs:
            what, numel = func.__name__, out.numel()
        elif func in _TO_HOST and isinstance(args[0], torch.Tensor):
            what, numel = func.__name__, args[0].numel()
        if what is not None:
            frames = [f for f in traceback.extract_stack()[:-1] if "/circuitfind/" in f.filename]
            if frames:
                where = f"{frames[-1].filename.split('circuitfind/')[-1]}:{frames[-1].lineno}"
                self.events.append((what, where, numel))
        return out


def _task(n: int, p: int, V: int) -> Task:
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, V, (n, p), generator=g)
    corrupted = torch.randint(0, V, (n, p), generator=g)
    answer = torch.randint(0, V, (n,), generator=g)
    wrong = torch.randint(0, V, (n,), generator=g)
    return Task.from_tokens(clean, corrupted, answer, wrong)


@pytest.mark.parametrize(
    "family", ["gpt2", pytest.param("llama-gqa-llama3rope", marks=pytest.mark.slow)]
)
def test_no_method_makes_activation_sized_tensors_off_the_model_device(family: str) -> None:
    model = cf.load(make_hf_model(family))
    b, p = 4, 16
    task = _task(b, p, model.cfg.d_vocab)
    graph = cf.Graph.from_model(model)
    score_sized = graph.n_senders * graph.n_receivers
    activation = b * p * model.cfg.d_model
    assert activation > 2 * score_sized  # so that the bound tells them apart
    runs_of = [(m, False) for m in METHODS]
    runs_of += [(m, True) for m in METHODS if method_spec(m).streams]  # streaming runs too
    for method, streaming in runs_of:
        spy = HostSpy()
        options = {"steps": 2} if method.startswith("eap-ig") else {}
        with spy:
            runs = PreparedRuns(model, task, "resample", batch_size=b // 2, streaming=streaming)
            method_spec(method).function()(runs, **options)
        # the checkpoint fingerprint (once a run, before any pass) hashes sampled weights
        # (at most 16384 values each) and the task's tokens on the host
        big = [
            e
            for e in spy.events
            if e[2] > (16384 if e[1].startswith("checkpoint.py") else score_sized)
        ]
        assert not big, (method, streaming, big)
        assert spy.events, "the spy saw nothing: it did not fire"


def test_the_spy_sees_a_tensor_made_without_a_device() -> None:
    spy = HostSpy()
    with spy:
        from circuitfind.methods import eap  # noqa: F401  (any circuitfind frame will do)

        def make() -> torch.Tensor:
            return torch.zeros(10)

        make.__code__ = make.__code__.replace(co_filename="/x/circuitfind/fake.py")
        make()
        torch.zeros(3, device="cpu")  # named: not recorded
    assert [(w, n) for w, _, n in spy.events] == [("zeros", 10)]


def _split_model() -> Any:
    hf = make_hf_model("gpt2")
    hf.transformer.h[1].to("meta")  # a second device, as a device_map would place a layer
    return hf


def test_a_model_split_across_devices_is_refused_naming_devices_and_methods() -> None:
    with pytest.raises(UnsupportedModelError) as info:
        cf.load(_split_model())
    message = str(info.value)
    assert "cpu, meta" in message
    for method in METHODS:
        assert method in message
    assert "one device" in message
    hf = _split_model()
    hf.hf_device_map = {"transformer.h.0": "cpu", "transformer.h.1": "meta"}
    with pytest.raises(UnsupportedModelError, match="accelerate device_map"):
        cf.load(hf)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_cuda_like_on_cpu(method: str) -> None:
    hf = make_hf_model("llama-gqa-llama3rope")
    task = _task(4, 8, hf.config.vocab_size)
    options = {"steps": 2} if method.startswith("eap-ig") else {}
    cpu = cf.score(cf.load(hf), task, method=method, progress=False, batch_size=2, **options)
    gpu_model = cf.load(hf, device="cuda")
    assert gpu_model.device.type == "cuda"
    gpu = cf.score(gpu_model, task, method=method, progress=False, batch_size=2, **options)
    if method == "acdc":
        assert torch.equal(cpu.in_graph, gpu.in_graph)
    torch.testing.assert_close(
        gpu.score_matrix.cpu(), cpu.score_matrix, rtol=1e-3, atol=1e-5, equal_nan=True
    )


def test_feature_engine_makes_no_activation_sized_tensors_off_the_model_device() -> None:
    """The same spy over the feature engine: transcoder training and its metrics, an
    attribution graph with its intervention check and QK split, top examples, and a dataset
    circuit with edges. Tensors made without a device and copies to the host stay below half a
    batch's activations (transcoders are initialised on the host, then moved: parameter-sized);
    the attribution graph's adjacency and its total effects, results kept on the host, are
    allowed [nodes x nodes] and nothing larger."""
    from circuitfind.features import attribution_graph, feature_circuit, train_transcoders
    from circuitfind.features.examples import top_examples
    from circuitfind.features.intervene import intervention_check
    from circuitfind.features.qk import attention_drivers

    model = cf.load(make_hf_model("llama-gqa-llama3rope"))
    b, p = 8, 16
    task = _task(b, p, model.cfg.d_vocab)
    data = task.clean
    activation = b * p * model.cfg.d_model
    spy = HostSpy()
    with spy:
        tcs = train_transcoders(model, data, sites=["a0", "m1"], d_sae=48, k=4, steps=3)
        graph = attribution_graph(model, tcs, data[0], batch_size=16)
        intervention_check(model, graph, top=4)
        attention_drivers(model, graph, 1, 0, p - 1, 0)
        top_examples(model, tcs, data, k=2)
        feature_circuit(model, tcs, task, top_n=6, batch_size=4, n_boot=10)
    graph_sized = len(graph.nodes) ** 2
    host_graph = ("features/graph.py", "features/intervene.py", "features/prune.py")
    big = [
        e
        for e in spy.events
        if e[2] > (graph_sized if e[1].startswith(host_graph) else activation // 2)
    ]
    assert not big, big
    assert spy.events, "the spy saw nothing: it did not fire"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_feature_engine_runs_on_cuda_like_on_cpu() -> None:
    from circuitfind.features import attribution_graph, feature_circuit
    from tests.test_features import _tcs

    hf = make_hf_model("llama-gqa-llama3rope")
    task = _task(6, 10, hf.config.vocab_size)
    out = {}
    for device in ("cpu", "cuda"):
        model = cf.load(hf, device=device)
        tcs = _tcs(model, ["a0", "m1"], d_sae=32, k=4)
        graph = attribution_graph(model, tcs, task.clean[0], node_threshold=None)
        fc = feature_circuit(model, tcs, task, top_n=6, batch_size=3, n_boot=10)
        out[device] = (graph, fc)
    (g_cpu, fc_cpu), (g_gpu, fc_gpu) = out["cpu"], out["cuda"]
    torch.testing.assert_close(g_gpu.adjacency, g_cpu.adjacency, rtol=1e-4, atol=1e-6)
    for site in fc_cpu.scores:
        torch.testing.assert_close(fc_gpu.scores[site], fc_cpu.scores[site], rtol=1e-3, atol=1e-6)
    assert fc_gpu.faithfulness.value == pytest.approx(fc_cpu.faithfulness.value, abs=1e-3)
