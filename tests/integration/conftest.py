"""Tiny models trained once per test session through the real CLI (shared by the annotate and generate tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm


@pytest.fixture(scope="session")
def tiny_apm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train-apm` run folder (4 steps on the shipped sample): apm.nemo and data/{sft,regression}/."""
    out = tmp_path_factory.mktemp("tiny_apm") / "run"
    ok(steerlm("train-apm", f"output_dir={out}", "trainer.max_steps=4", "trainer.val_check_interval=4"))
    return out


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train-sft` run folder (4 steps on the shipped sample): sft.nemo and data/sft/."""
    out = tmp_path_factory.mktemp("tiny_sft") / "run"
    ok(steerlm("train-sft", f"output_dir={out}", "trainer.max_steps=4", "trainer.val_check_interval=4"))
    return out
