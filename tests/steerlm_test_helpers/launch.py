"""Run a test worker script in a fresh process, or in several under ``torchrun`` (gloo, a free local port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: variables of an enclosing launcher that would make the worker join the wrong world
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_worker(script: Path, args: list[str], nproc: int, what: str, timeout: int = 600) -> None:
    """Runs ``script ARGS``: plainly for one process, else under ``torchrun``; fails the test with the logs' tails.

    Args:
        script: the worker file.
        args: its command-line arguments.
        nproc: processes (1 = a plain ``python`` process, a world of one).
        what: names the run in the failure message.
        timeout: seconds before the run is killed.
    """
    command = [sys.executable, str(script), *args]
    if nproc > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
        command[1:1] = [*launcher, "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"worker failed ({proc.returncode}) for {what}:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}")
