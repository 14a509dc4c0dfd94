"""Shared fixtures: random-weight models of every supported family, built from HF configs."""

from __future__ import annotations

import pytest
import torch

from tests.factories import FAMILY_CONFIGS, make_hf_model


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(params=sorted(FAMILY_CONFIGS))
def family_config(request):
    """(config id, HF model) for every family configuration in the zoo of odd configs."""
    return request.param, make_hf_model(request.param)
