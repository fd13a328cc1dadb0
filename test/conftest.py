"""Shared pytest fixtures: numeric tests run in float32 and float64, with a tolerance each."""

from __future__ import annotations

import pytest
import torch

#: Absolute tolerance per dtype for maths that should be exact up to round-off.
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def tol(dtype) -> float:
    return TOLERANCE[dtype]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
