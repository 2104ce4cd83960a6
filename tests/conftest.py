"""Shared pytest fixtures."""

from __future__ import annotations

import random
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def reset_torch_state():
    """Seed every RNG and restore the default dtype before a test; tear down process groups after it.

    megatron-core is only touched when a test already imported it (importing it costs seconds).
    """
    dtype = torch.get_default_dtype()
    random.seed(0)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(dtype)
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
