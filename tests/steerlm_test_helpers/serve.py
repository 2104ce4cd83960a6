"""Start the real `nemo-steerlm serve` CLI on a free local port in a subprocess, and stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

LISTENING = re.compile(r"listening on (http://\S+)")
#: a TP/PP server names the process that serves HTTP (global rank 0; the launched process is torchrun)
RANK_ZERO = re.compile(r"rank 0 pid (\d+)")


@contextmanager
def serve(model: Path, output_dir: Path, *overrides: str, start_timeout: float = 600.0) -> Iterator[str]:
    """Runs `nemo-steerlm serve model=MODEL port=0 ...` until the block ends; yields its base URL.

    The server binds port 0 (the kernel picks a free one) and prints the URL once it answers. On exit it gets SIGINT
    and must stop cleanly (exit 0, `serve.summary.json` written). A TP/PP server (`trainer.devices=2 ...`) is
    stopped the same way through its rank 0 (the process it names), and every process of the job must be gone.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir.parent / f"{output_dir.name}.log"
    with open(log, "w", encoding="utf-8") as sink:
        args = [
            sys.executable,
            "-m",
            "nemo_steerlm.cli",
            "serve",
            f"model={model}",
            "port=0",
            f"output_dir={output_dir}",
        ]
        proc = subprocess.Popen([*args, *overrides], stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ))
    family: list[psutil.Process] = []
    try:
        url = _wait_for_url(proc, log, start_timeout)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        yield url
    finally:
        if proc.poll() is None:
            found = RANK_ZERO.search(log.read_text(encoding="utf-8"))
            os.kill(int(found.group(1)) if found else proc.pid, signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                for p in [proc, *family]:
                    p.kill()
                proc.wait()
    assert proc.returncode == 0, log.read_text(encoding="utf-8")[-4000:]
    assert (output_dir / "serve.summary.json").is_file()
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"processes of the server outlived it: {alive}"


def _wait_for_url(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text(encoding='utf-8')[-4000:]}")
        time.sleep(0.2)
    raise AssertionError(f"serve did not start in {timeout:.0f} s:\n{log.read_text(encoding='utf-8')[-4000:]}")
