"""Llama 3.1-style rope scaling (``rope_type: llama3``) against transformers on a tiny random model, both ways.

Import: our logits equal ``LlamaForCausalLM``'s within 1e-4 over 160 positions, where the scaling matters (the same
weights without the scaling differ by far more). Export: the folder holds the scaling in the transformers 4 and 5
forms and reloads into transformers with the original logits; import → export keeps the weights bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hf_export_readers import FLOOR  # noqa: E402
from test_hf_interop import GPT2, our_logits, restore  # noqa: E402

ATOL = 1e-4
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}  # fmt: skip
LENGTH = 160


def make_llama3_dir(path: Path, scaling: dict | None = SCALING) -> Path:
    tok = transformers.AutoTokenizer.from_pretrained(str(GPT2))
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16384, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=scaling, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
        model.model.layers[0].self_attn.q_proj.weight.mul_(20.0)  # sharp attention: position errors show in logits
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_llama3_import_matches_transformers_and_exports_back(tmp_path):
    from safetensors.torch import load_file

    from nemo_steerlm.interop.convert import export_hf, import_hf

    hf_dir = make_llama3_dir(tmp_path / "hf")
    nemo = import_hf(hf_dir, "sft", tmp_path / "sft.nemo", layout={"seq_length": 256})
    ours = restore(nemo, "sft")
    assert ours.gpt_config.rope_scaling_factor == 8.0
    tokens = torch.randint(0, 50257, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    original = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir)).eval()
    with torch.no_grad():
        theirs = original(input_ids=tokens).logits
    mine = our_logits(ours, tokens)
    assert (mine - theirs).abs().max().item() <= ATOL

    unscaled = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**original.config.to_dict(),
                                                                         "rope_scaling": None,
                                                                         "rope_parameters": None}))  # fmt: skip
    unscaled.load_state_dict(original.state_dict())
    with torch.no_grad():
        plain = unscaled.eval()(input_ids=tokens).logits
    assert (plain - theirs).abs().max().item() > 100 * ATOL  # the test would catch a model that ignores the scaling

    export_hf(nemo, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["rope_scaling"]["factor"] == 8.0
    assert config["rope_parameters"]["rope_type"] == "llama3" and config["rope_theta"] == 500000.0
    exported = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        again = exported(input_ids=tokens).logits
    assert (again - theirs).abs().max().item() <= ATOL
    before, after = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    if (FLOOR / "transformers").is_dir():  # the oldest transformers we declare reads the scaling too
        script = (
            "import sys, json, torch, transformers; m = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1]); "
            "t = torch.tensor(json.loads(sys.argv[2]))\n"
            "with torch.no_grad(): print(json.dumps(m(input_ids=t).logits.tolist()))"
        )
        env = {**os.environ, "PYTHONPATH": str(FLOOR), "TRANSFORMERS_VERBOSITY": "error"}
        args = [sys.executable, "-c", script, str(tmp_path / "out"), json.dumps(tokens.tolist())]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        old = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
        assert (old - theirs).abs().max().item() <= ATOL
