"""docs/config.md is generated from the YAML files; it must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_up_to_date() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_config_reference.py"), "--check"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
