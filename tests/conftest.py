"""Shared fixtures: random-weight models of every supported family, built from HF configs."""

from __future__ import annotations

import pytest
import torch

from tests.factories import FAMILY_CONFIGS, make_hf_model


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def one_thread(_seed_and_threads):
    """One torch thread for a test of tiny models (threads only add overhead there), restored
    after it. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=sorted(FAMILY_CONFIGS))
def family_config(request):
    """(config id, HF model) for every family configuration in the zoo of odd configs."""
    return request.param, make_hf_model(request.param)


@pytest.fixture(scope="module")
def planted():
    """(model, task) of the planted previous-token -> induction circuit (8 prompts)."""
    import circuitfind
    from circuitfind.bench.planted import planted_model, planted_task

    return circuitfind.load(planted_model(0)), planted_task(n=8, seed=0)
