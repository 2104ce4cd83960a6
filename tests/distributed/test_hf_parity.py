"""Hugging Face import at TP=2 and PP=2 (torchrun, gloo): logits equal transformers' within 1e-4 in fp32, and the
``.nemo`` saved at that layout exports back to the original Hugging Face weights bit for bit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

WORKER = Path(__file__).with_name("_worker_hf_parity.py")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_hf_interop import make_hf_dir  # noqa: E402

ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(hf_dir: Path, kind: str, tp: int, pp: int, tmp: Path) -> dict:
    out, nemo = tmp / f"{kind}_tp{tp}pp{pp}.json", tmp / f"{kind}_tp{tp}pp{pp}.nemo"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp * pp),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
        "--hf", str(hf_dir), "--kind", kind, "--tp", str(tp), "--pp", str(pp), "--nemo", str(nemo), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        pytest.fail(f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return {**json.loads(out.read_text(encoding="utf-8")), "nemo": nemo}


@pytest.mark.distributed
@pytest.mark.parametrize(
    "tp, pp, tie",
    [(2, 1, False), (2, 1, True), (1, 2, False), (1, 2, True)],
    ids=["tp2-untied", "tp2-tied", "pp2-untied", "pp2-tied"],
)
def test_sft_import_matches_transformers_and_exports_exactly(tmp_path, tp, pp, tie):
    from safetensors.torch import load_file

    from nemo_steerlm.interop.convert import export_hf

    hf_dir = make_hf_dir(tmp_path / "hf", tie=tie, bias=tie)
    result = _run(hf_dir, "sft", tp, pp, tmp_path)
    assert result["max_abs_diff"] <= ATOL, result
    assert result["shape"] == [2, 16, 50257]
    export_hf(result["nemo"], tmp_path / "export")  # in this process, at TP=1
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "export" / "model.safetensors")
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(exported[key], value), key


@pytest.mark.distributed
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_apm_import_scores_match_transformers(tmp_path, tp, pp):
    hf_dir = make_hf_dir(tmp_path / "hf", tie=False, bias=True)
    result = _run(hf_dir, "apm", tp, pp, tmp_path)
    assert result["max_abs_diff"] <= ATOL, result
    assert result["shape"] == [2, 9]
