"""Fixtures of the checkpoint-format tests (helpers: checkpoint_helpers.py)."""

import pytest
import torch


@pytest.fixture
def ids():
    return torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(3))
