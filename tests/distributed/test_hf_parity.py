"""Hugging Face import at TP=2 and PP=2 (torchrun, gloo): logits equal transformers' within 1e-4 in fp32, and the
``.nemo`` saved at that layout exports back to the original Hugging Face weights bit for bit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from steerlm_test_helpers.launch import run_worker

pytest.importorskip("transformers")

WORKER = Path(__file__).with_name("_worker_hf_parity.py")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_hf_interop import make_hf_dir  # noqa: E402

ATOL = 1e-4


def _run(hf_dir: Path, kind: str, tp: int, pp: int, tmp: Path) -> dict:
    out, nemo = tmp / f"{kind}_tp{tp}pp{pp}.json", tmp / f"{kind}_tp{tp}pp{pp}.nemo"
    args = [
        "--hf",
        str(hf_dir),
        "--kind",
        kind,
        "--tp",
        str(tp),
        "--pp",
        str(pp),
        "--nemo",
        str(nemo),
        "--out",
        str(out),
    ]
    run_worker(WORKER, args, tp * pp, f"{kind} tp{tp} pp{pp}", timeout=420)
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
