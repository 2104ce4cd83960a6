"""Session fixture: a real local SLURM cluster (scripts/slurm/start_local_cluster.sh), stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATE = os.environ.get("NEMO_STEERLM_SLURM_DIR", "/tmp/nemo-steerlm-slurm")


def _ping(env: dict[str, str]) -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], env=env, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def slurm_env() -> dict[str, str]:
    """Environment for SLURM client commands against the local cluster; starts it when it is not up."""
    env = {**os.environ, "NEMO_STEERLM_SLURM_DIR": STATE, "SLURM_CONF": f"{STATE}/etc/slurm.conf"}
    already_up = _ping(env)
    if not already_up:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts/slurm/start_local_cluster.sh"), STATE], capture_output=True, text=True
        )
        if done.returncode != 0:
            if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
                pytest.skip(f"slurmctld cannot be installed here: {done.stderr.strip()[-300:]}")
            pytest.fail(f"the local SLURM cluster did not start:\n{done.stdout}\n{done.stderr}")
    yield env
    if not already_up:
        subprocess.run(["bash", str(ROOT / "scripts/slurm/stop_local_cluster.sh"), STATE], check=False)
