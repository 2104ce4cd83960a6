"""Training logs written to a file (stdout captured, not a terminal): plain step lines, no carriage returns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from steerlm_test_helpers.cli import ok, steerlm

pytestmark = pytest.mark.integration

LINE = re.compile(
    r"^nemo-steerlm train: step (\d+)/6 loss (\d+\.\d{4}) lr (\S+) grad_norm (\d+\.\d{4}) tokens/s ([\d,]+) elapsed "
)


def test_train_sft_log_to_file_has_plain_lines(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = ok(steerlm("train-sft", f"output_dir={out}", "trainer.max_steps=6", "trainer.val_check_interval=3",
                     "log_lines.every_n_steps=2"))  # fmt: skip
    assert "\r" not in res.stdout and "\r" not in res.stderr  # no redrawn progress bar
    steps = [m for m in (LINE.match(x) for x in res.stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in steps] == [1, 2, 4, 6]  # the first step, every 2nd, the last
    assert all(int(m.group(5).replace(",", "")) > 0 for m in steps) and float(steps[-1].group(3)) > 0
    assert len({m.group(2) for m in steps}) > 1  # the loss changes while training
    assert sum("validation at step" in x and "val_loss" in x for x in res.stdout.splitlines()) == 2
    bad = steerlm("train-sft", f"output_dir={tmp_path / 'b'}", "log_lines.every_n_steps=0")
    assert bad.returncode == 2 and "log_lines.every_n_steps" in bad.stderr
